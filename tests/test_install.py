"""script/install-server, as the Docker image runs it: one server into a fresh virtual environment, then its
installed console script answers a real request over a socket.

Each install takes minutes (most of it unpacking torch), so both start at once when the module's first test
needs them and each test waits for its own. pip's cache is the user's usual one, so wheels built from source
are built once; the large wheels (torch, the CUDA libraries) come from the machine's local indexes. The
environments (2 GB and 6.4 GB) are deleted after the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wyoming.asr import Transcribe
from wyoming.client import AsyncClient
from wyoming.tts import Synthesize

from wyoming_helpers import read_until, send_audio, speechlike

ROOT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 1500  # seconds for one install (about 2 and 3.5 minutes alone, more side by side)

# What each install gets here. The defaults of install-server are PyTorch's CPU index, which this machine
# cannot reach: ASR takes the CPU wheel of torch 2.13.0 that lies on disk. PyPI's torchaudio wheels are
# built against the CUDA build of torch and do not load beside a CPU build, so TTS takes the pair the dev
# environment uses (the CUDA build of torch 2.14.1, which runs on the CPU too).
SERVERS = {
    "asr": dict(
        torch_spec="torch==2.13.0",
        qwen="qwen_asr",
        other="qwen_tts",
        transformers="4.57.6",
        program="qwen3-asr",
        model="asr",
    ),
    "tts": dict(
        torch_spec="torch==2.14.1 torchaudio==2.11.0",
        cuda_build=True,  # see above: accepted on purpose (install-server refuses it otherwise)
        qwen="qwen_tts",
        other="qwen_asr",
        transformers="4.57.3",
        program="qwen3-tts",
        model="tts-custom-voice",
    ),
}
# Settings of the machine that pip needs (its indexes, certificates, proxies), and nothing else of ours:
# no PYTHONPATH, no VIRTUAL_ENV, no PATH entry of the dev environment.
PASSED_ON = {"HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"}
PROXIES = {"http_proxy", "https_proxy", "no_proxy", "all_proxy"}
NOT_PASSED = {"PIP_USER", "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PIP_REQUIRE_VIRTUALENV"}


def clean_env(**extra: str) -> dict:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    for name, value in os.environ.items():
        if name in PASSED_ON or name.lower() in PROXIES or (name.startswith("PIP_") and name not in NOT_PASSED):
            env[name] = value
    env.setdefault("HOME", str(Path.home()))
    return {**env, **extra}


def base_python() -> str:
    """The interpreter the dev environment was made from (not the dev environment's own python)."""
    return getattr(sys, "_base_executable", None) or str(Path(sys.base_prefix) / "bin" / "python3")


class Install:
    def __init__(self, server: str, venv: Path, log_path: Path):
        self.server, self.venv, self.log_path = server, venv, log_path
        self.started = time.monotonic()
        self.seconds = None
        command = [
            str(ROOT / "script" / "install-server"),
            server,
            "--venv",
            str(venv),
            "--torch-index",
            "",
            "--torch-spec",
            SERVERS[server]["torch_spec"],
            *(["--allow-cuda-build"] if SERVERS[server].get("cuda_build") else []),
        ]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=venv.parent,
                env=clean_env(PYTHON=base_python()),
                start_new_session=True,
            )

    def log(self, tail: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    async def ready(self) -> Path:
        try:
            code = await asyncio.to_thread(self.process.wait, INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"install-server {self.server} took over {INSTALL_TIMEOUT} s:\n{self.log()}") from None
        if self.seconds is None:
            self.seconds = time.monotonic() - self.started
            print(f"install-server {self.server}: {self.seconds:.0f} s")
        assert code == 0, f"install-server {self.server} exited with {code}:\n{self.log()}"
        return self.venv

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def installs(request, tmp_path_factory):
    """Start install-server for every server this module's selected tests use, all at once."""
    wanted = sorted(
        {
            item.callspec.params["server"]
            for item in request.session.items
            if item.path == request.path and "server" in getattr(getattr(item, "callspec", None), "params", {})
        }
    )
    base = tmp_path_factory.mktemp("install")
    started = {}
    for server in wanted:
        (base / server).mkdir()
        started[server] = Install(server, base / server / "venv", base / f"{server}.log")
    yield started
    for install in started.values():
        install.stop()
        shutil.rmtree(install.venv, ignore_errors=True)


PROBE = """
import importlib.util, json, site, sys
from importlib import metadata
other = sys.argv[1]
try:
    __import__(other)
    other_imports = True
except ModuleNotFoundError:
    other_imports = False
print(json.dumps(dict(
    prefix=sys.prefix,
    base_prefix=sys.base_prefix,
    path=sys.path[1:],
    enable_user_site=site.ENABLE_USER_SITE,
    flags=dict(no_site=sys.flags.no_site, ignore_environment=sys.flags.ignore_environment),
    other_imports=other_imports,
    qwen=importlib.util.find_spec(sys.argv[2]) is not None,
    ours=[importlib.util.find_spec(m).origin for m in ("wyoming_qwen_asr", "wyoming_qwen_tts", "shared")],
    transformers=metadata.version("transformers"),
    distributions=sorted((d.metadata["Name"] or "").lower() for d in metadata.distributions()),
)))
"""


def check_isolation(venv: Path, spec: dict, cwd: Path) -> None:
    """The installed environment sees only itself and the standard library: not the dev .venv, not the
    system or user site-packages, not this source tree; and not the other server's Qwen package."""
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", PROBE, spec["other"], spec["qwen"]],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(),
        timeout=120,
        check=True,
    ).stdout
    probe = json.loads(out)
    venv = venv.resolve()
    assert Path(probe["prefix"]).resolve() == venv and probe["base_prefix"] != probe["prefix"]
    assert probe["enable_user_site"] is False and probe["flags"] == dict(no_site=0, ignore_environment=0)
    base = Path(probe["base_prefix"]).resolve()
    for entry in probe["path"]:
        where = Path(entry).resolve()
        assert where.is_relative_to(venv) or (where.is_relative_to(base) and "site-packages" not in where.parts), (
            f"{entry} on sys.path of {venv}"
        )
    assert all(Path(origin).resolve().is_relative_to(venv / "lib") for origin in probe["ours"]), probe["ours"]
    assert probe["qwen"] and not probe["other_imports"], f"{spec['other']} is importable in the {venv} environment"
    assert spec["other"].replace("_", "-") not in probe["distributions"]
    assert probe["transformers"] == spec["transformers"]


async def start_server(venv: Path, server: str, args: list, tmp_path: Path):
    uri = f"unix://{tmp_path}/{server}.sock"
    log_path = tmp_path / f"{server}-server.log"
    env = clean_env(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        NUMBA_CACHE_DIR=str(tmp_path / "numba"),
    )
    with open(log_path, "wb") as log:
        process = await asyncio.create_subprocess_exec(
            str(venv / "bin" / f"wyoming-qwen-{server}"),
            "--uri",
            uri,
            "--device",
            "cpu",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=tmp_path,
            env=env,
            start_new_session=True,
        )
    for _ in range(1200):
        if process.returncode is not None:
            raise AssertionError(f"the {server} server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            client = AsyncClient.from_uri(uri)
            await client.connect()
            await client.disconnect()
            return process, uri, log_path
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"the {server} server did not listen on {uri}:\n{log_path.read_text()}")


async def stop_server(process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except asyncio.TimeoutError:
            pass
    # the worker is the gateway's child, in the same new session
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def request(server: str, uri: str):
    async with AsyncClient.from_uri(uri) as client:
        if server == "asr":
            await client.write_event(Transcribe(language="en").event())
            await send_audio(client, speechlike(1.0))
            return await read_until(client, "transcript-stop", "error", timeout=300)
        await client.write_event(Synthesize(text="Hello world.").event())
        return await read_until(client, "audio-stop", "error", timeout=300)


@pytest.mark.timeout(INSTALL_TIMEOUT + 600)
@pytest.mark.parametrize("server", sorted(SERVERS))
async def test_installed_server_answers_a_real_request(server, installs, tiny_dir, tmp_path):
    spec = SERVERS[server]
    venv = await installs[server].ready()
    await asyncio.to_thread(check_isolation, venv, spec, tmp_path)

    process, uri, log_path = await start_server(venv, server, ["--model", str(tiny_dir / spec["model"])], tmp_path)
    try:
        # the Dockerfile's HEALTHCHECK: the installed client describes the server
        described = await asyncio.create_subprocess_exec(
            str(venv / "bin" / "wyoming-qwen-client"),
            "describe",
            "--uri",
            uri,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
            env=clean_env(),
        )
        output = (await asyncio.wait_for(described.communicate(), 60))[0].decode()
        assert described.returncode == 0 and spec["program"] in output, output

        events = await request(server, uri)
        types = [event.type for event in events]
        assert events[-1].type != "error", f"{events[-1].data}\n{log_path.read_text()[-4000:]}"
        if server == "asr":
            assert types[-2:] == ["transcript", "transcript-stop"], types
        else:
            assert types[0] == "audio-start" and types[-1] == "audio-stop", types
            assert sum(len(event.payload or b"") for event in events if event.type == "audio-chunk") > 0
    finally:
        await stop_server(process)
