"""script/test-images: build the Docker images for real and run them as a user would.

    script/test-images [asr] [tts] [addon-asr] [addon-tts] [--keep] [--report FILE]

For each image (all four by default): build it, run it with a tiny checkpoint mounted read-only and its options
given both as QWEN_* variables and as arguments, wait until Docker calls it `healthy`, transcribe or synthesize
with `wyoming-qwen-client` from outside the container, stop it and check that it exits 0 within the servers'
grace period, then print its size and remove it (`--keep` keeps it).

Nothing here reaches Docker Hub, ghcr.io or GitHub, which these machines cannot reach:
- the base is Debian bookworm made with debootstrap and `docker import`, with this machine's certificate
  authorities and pip settings, so pip and apt inside a build work as they do here (../shared/notes/docker.md);
- the add-ons' base is a stand-in for Home Assistant's (tests/images/ha-base: s6-overlay's entry points and the
  few bashio functions the add-ons call), and their source tarball, normally the GitHub release, is this tree,
  served on 127.0.0.1;
- torch comes from a small index on 127.0.0.1 made of wheels that lie on this machine: the CPU build of torch
  2.13.0 for speech-to-text; for text-to-speech the CUDA build of torch 2.14.1 with PyPI's torchaudio, accepted
  with ALLOW_CUDA_TORCH=1, because PyPI's torchaudio does not load beside a CPU torch and PyTorch's CPU index
  cannot be reached from here. A user's CPU build takes torch and torchaudio from PyTorch's CPU index instead.

It needs a Docker engine: a running one, or Debian's dockerd (package docker.io), which it starts itself when it
runs as root, and debootstrap. Without them it exits 77 saying why (the test suite skips then, unless
WYOMING_QWEN_REQUIRE_IMAGES=1, as in CI).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from wyoming_helpers import espeak, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
EXIT_SKIP = 77
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wyoming-qwen" / "images"
DEBIAN = "wyoming-qwen-test/debian:bookworm"
HA_BASE = "wyoming-qwen-test/ha-base:bookworm"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GRACE = 10  # the servers' default --stop-grace
STOP_TIMEOUT = 15  # what docker compose and the add-on give them (stop_grace_period, timeout)
HEALTHY_TIMEOUT = 240
CPU_TORCH = "torch==2.13.0"
# free disk a build needs where Docker keeps its layers: the most it used at once here (asr 3 GB with BuildKit,
# 5 with the classic builder; tts 8.4 and 13, the classic builder's commit copying the 7 GB layer), plus a
# margin. The tts images hold the CUDA build of torch (see above).
BUILD_DISK_GB = {"asr": 6, "tts": 15}
CUDA_TORCH = "torch==2.14.1 torchaudio==2.11.0"


def say(message: str) -> None:
    print(f"test-images: {message}", flush=True)


class Skip(Exception):
    """No Docker engine can be had here."""


class Failed(Exception):
    pass


def run(*command, check: bool = True, quiet: bool = False, **kwargs) -> subprocess.CompletedProcess:
    command = [str(part) for part in command]
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise Failed(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-4000:]}{result.stderr[-4000:]}")
    if not quiet and result.returncode != 0:
        say(f"{' '.join(command[:3])}... exited {result.returncode}")
    return result


def stream(*command, log: Path, **kwargs) -> None:
    """Run a long command with its output in `log`; on failure, raise with the log's tail."""
    command = [str(part) for part in command]
    with open(log, "w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, text=True, **kwargs)
    if result.returncode != 0:
        raise Failed(f"{' '.join(command)} exited {result.returncode}:\n{log.read_text()[-6000:]}")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


# -- the engine ---------------------------------------------------------------------------------------------


class Engine:
    """A running Docker engine: the one already there, or Debian's dockerd started here with its own data root,
    exec root and socket, stopped at the end and its data root deleted, so that no layer or build cache outlives
    the check (a TTS build leaves about 7 GB of build cache behind otherwise)."""

    def __init__(self, work: Path):
        self.work = work
        self.started: Optional[subprocess.Popen] = None
        self.data_root: Optional[Path] = None
        self.exec_root: Optional[Path] = None

    @property
    def private(self) -> bool:
        return self.started is not None

    def __enter__(self) -> "Engine":
        if shutil.which("docker") is None:
            raise Skip("no docker command (Debian: apt-get install docker.io)")
        if self._answers():
            return self
        dockerd = shutil.which("dockerd") or ("/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").exists() else None)
        if dockerd is None:
            raise Skip("no Docker engine answers and there is no dockerd to start (Debian: apt-get install docker.io)")
        if os.geteuid() != 0:
            raise Skip("no Docker engine answers, and only root can start dockerd")
        self.data_root = self.work / "docker-data"
        # a short path: the engine's and containerd's sockets live here, and a socket's path has at most 107 bytes
        self.exec_root = Path(tempfile.mkdtemp(prefix="wq-docker-", dir="/tmp"))
        socket_path = self.exec_root / "docker.sock"
        say(f"starting dockerd (data root {self.data_root})")
        log = open(self.work / "dockerd.log", "w")
        # as ../shared/notes/docker.md: no iptables and no bridge on these machines; builds and containers use
        # the host's network
        self.started = subprocess.Popen(
            [
                dockerd,
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=overlay2",
                f"--data-root={self.data_root}",
                f"--exec-root={self.exec_root}",
                f"--pidfile={self.exec_root / 'dockerd.pid'}",
                f"--host=unix://{socket_path}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # every docker command of this process and its children talks to this engine
        os.environ["DOCKER_HOST"] = f"unix://{socket_path}"
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.started.poll() is not None or time.monotonic() > deadline:
                tail = (self.work / "dockerd.log").read_text()[-2000:]
                self.__exit__()
                raise Skip(f"dockerd did not start:\n{tail}")
            time.sleep(0.5)
        return self

    def _answers(self) -> bool:
        return run("docker", "version", "--format", "{{.Server.Version}}", check=False, quiet=True).returncode == 0

    def forget_builds(self) -> None:
        """Between images: the build cache of the engine started here (the image itself is removed already).
        An engine that was already running is the user's, and its cache is theirs to prune."""
        if self.private:
            run("docker", "builder", "prune", "--all", "--force", check=False, quiet=True)
            run("docker", "container", "prune", "--force", check=False, quiet=True)
            run("docker", "image", "prune", "--force", check=False, quiet=True)

    def __exit__(self, *exc) -> None:
        if self.started is None:
            return
        say("stopping the dockerd started here and deleting its data root")
        self.started.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.started.wait(timeout=60)
        if self.started.poll() is None:
            self.started.kill()
            self.started.wait()
        os.environ.pop("DOCKER_HOST", None)
        for folder in (self.data_root, self.exec_root):
            if folder is not None and folder.exists():
                # whatever dockerd left mounted under it, so that the folder can go
                for mount in reversed(_mounts_under(folder)):
                    run("umount", "-l", mount, check=False, quiet=True)
                shutil.rmtree(folder, ignore_errors=True)
                if folder.exists():
                    say(f"could not delete {folder}: delete it by hand")


def _mounts_under(folder: Path) -> list:
    prefix = str(folder.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]


def free_gb(path: Path) -> float:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free / 1e9


@functools.lru_cache(maxsize=None)
def buildkit_cli() -> Optional[str]:
    """A docker command that builds with BuildKit: the first on PATH, else Debian's (20.10 has it built in,
    while a newer CLI without its buildx plugin has not)."""
    for cli in dict.fromkeys(filter(None, [shutil.which("docker"), "/usr/bin/docker"])):
        if Path(cli).exists():
            probe = run(cli, "build", "--help", check=False, quiet=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
            if probe.returncode == 0:
                return cli
    return None


def image_exists(tag: str) -> bool:
    return run("docker", "image", "inspect", tag, check=False, quiet=True).returncode == 0


def image_size(tag: str) -> int:
    return int(run("docker", "image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


# -- the bases ----------------------------------------------------------------------------------------------


def debian_base(work: Path) -> str:
    """Debian bookworm from this machine's Debian mirror, trusting its certificate authorities and using its pip
    settings. The root file system is cached as a tarball (debootstrap takes a minute or two)."""
    if image_exists(DEBIAN):
        return DEBIAN
    tarball = CACHE / "debian-bookworm-rootfs.tar"
    if not tarball.exists():
        if shutil.which("debootstrap") is None:
            raise Skip("no debootstrap to make the Debian base (Debian: apt-get install debootstrap)")
        rootfs = work / "rootfs"
        say("making the Debian base with debootstrap")
        started = time.monotonic()
        stream(
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,python3-pip,ca-certificates",
            "bookworm",
            rootfs,
            log=work / "debootstrap.log",
        )
        # the intercepting proxy's authority, so that pip and apt reach their indexes from a build
        for crt in Path("/usr/local/share/ca-certificates").glob("**/*.crt"):
            shutil.copy(crt, rootfs / "usr/local/share/ca-certificates" / crt.name)
        run("chroot", rootfs, "update-ca-certificates")
        if Path("/etc/pip.conf").exists():
            # only the settings that hold inside a container: no local file:// indexes of this machine
            lines = [line for line in Path("/etc/pip.conf").read_text().splitlines() if "file://" not in line]
            (rootfs / "etc/pip.conf").write_text("\n".join(lines) + "\n")
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        run("tar", "-C", rootfs, "-cf", partial, ".")
        partial.rename(tarball)
        shutil.rmtree(rootfs, ignore_errors=True)
        say(f"Debian base made in {time.monotonic() - started:.0f} s")
    run("docker", "import", "--change", f"ENV PATH={DEFAULT_PATH}", "--change", 'CMD ["/bin/bash"]', tarball, DEBIAN)
    return DEBIAN


def ha_base(work: Path) -> str:
    """The stand-in for Home Assistant's base-debian image (tests/images/ha-base)."""
    if not image_exists(HA_BASE):
        say("building the stand-in for Home Assistant's base image")
        stream(
            "docker",
            "build",
            "--network",
            "host",
            "--build-arg",
            f"BASE={debian_base(work)}",
            "-t",
            HA_BASE,
            HERE / "ha-base",
            log=work / "ha-base.log",
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )
    return HA_BASE


# -- what the builds download from 127.0.0.1 ---------------------------------------------------------------


def wheels(work: Path) -> Path:
    """torch's two builds and everything they need, as this machine's pip resolves them. Wheels that pip finds
    on this disk (the big ones: torch and NVIDIA's libraries, about 3.5 GB) are linked, not copied; the few it
    would download are downloaded once and cached."""
    folder = work / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    downloaded = CACHE / "wheels"
    say("resolving the torch wheels for the local index")
    for spec in (CPU_TORCH, CUDA_TORCH):
        report = work / "pip-report.json"
        stream(
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--report",
            report,
            *spec.split(),
            log=work / "pip-resolve.log",
        )
        remote = []
        for item in json.loads(report.read_text())["install"]:
            url = item["download_info"]["url"]
            name = urllib.parse.unquote(url.rsplit("/", 1)[-1].split("#", 1)[0])
            if url.startswith("file://"):
                target = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
            else:
                target = downloaded / name
                if not target.exists():
                    remote.append(f"{item['metadata']['name']}=={item['metadata']['version']}")
            link = folder / name
            if not link.exists():
                link.symlink_to(target)
        if remote:
            downloaded.mkdir(parents=True, exist_ok=True)
            stream(
                sys.executable,
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                "--no-deps",
                "--dest",
                downloaded,
                *remote,
                log=work / "pip-download.log",
            )
    broken = [link.name for link in folder.iterdir() if not link.exists()]
    if broken:
        raise Failed(f"wheels that pip resolved but that are not on disk: {', '.join(broken)}")
    return folder


def write_simple_index(wheel_folder: Path, index: Path) -> None:
    """A PEP 503 index of the wheels: /simple/<project>/ lists that project's files."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    projects: dict = {}
    for wheel in sorted(wheel_folder.glob("*.whl")):
        projects.setdefault(canonicalize_name(parse_wheel_filename(wheel.name)[0]), []).append(wheel)
    for project, files in projects.items():
        page = index / "simple" / project
        page.mkdir(parents=True, exist_ok=True)
        links = "".join(f'<a href="/files/{f.name}">{f.name}</a><br>\n' for f in files)
        (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    (index / "files").symlink_to(wheel_folder)


def source_tarball(destination: Path) -> None:
    """This tree as the add-ons' Dockerfiles expect their release tarball: one top folder, no .git, no venvs."""
    run(
        "tar",
        "-C",
        ROOT.parent,
        "--exclude-tag-all=pyvenv.cfg",
        "--exclude=.git",
        "--exclude=__pycache__",
        "--exclude=*.egg-info",
        "--exclude=.pytest_cache",
        "--exclude=.ruff_cache",
        "--exclude=build",
        "--transform",
        f"s,^{ROOT.name},wyoming-qwen-src,",
        "-czf",
        destination,
        ROOT.name,
    )


class LocalServer:
    """A static file server on 127.0.0.1 for the builds (they use the host's network)."""

    def __init__(self, folder: Path):
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


# -- the images ----------------------------------------------------------------------------------------------


@dataclass
class Image:
    name: str
    server: str  # asr or tts
    addon: bool
    port: int  # the port the server listens on inside the container (the network is the host's)
    build_args: dict = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return f"wyoming-qwen-test/{self.name}:latest"

    @property
    def model(self) -> str:
        return "asr" if self.server == "asr" else "tts-custom-voice"


ALL = ("asr", "tts", "addon-asr", "addon-tts")


def images(port_asr: int, port_tts: int) -> dict:
    return {
        "asr": Image("asr", "asr", False, port_asr, {"TORCH_SPEC": CPU_TORCH}),
        "tts": Image("tts", "tts", False, port_tts, {"TORCH_SPEC": CUDA_TORCH, "ALLOW_CUDA_TORCH": "1"}),
        # the add-ons' run scripts listen on the default ports: those must be free here
        "addon-asr": Image("addon-asr", "asr", True, 10300, {"TORCH_SPEC": CPU_TORCH}),
        "addon-tts": Image("addon-tts", "tts", True, 10200, {"TORCH_SPEC": CUDA_TORCH, "ALLOW_CUDA_TORCH": "1"}),
    }


@dataclass
class Result:
    name: str
    build_s: float = 0.0
    size: int = 0
    healthy_s: float = 0.0
    request_s: float = 0.0
    stop_s: float = 0.0
    exit_code: Optional[int] = None
    notes: list = field(default_factory=list)


class Checker:
    def __init__(self, engine: Engine, work: Path, models: Path, index_url: str, source_url: str, keep: bool):
        self.engine = engine
        self.work = work
        self.models = models
        self.index_url = index_url
        self.source_url = source_url
        self.keep = keep

    def build(self, image: Image, result: Result) -> None:
        args = {**image.build_args, "TORCH_INDEX": f"{self.index_url}/simple"}
        env = dict(os.environ)
        if image.addon:
            args.update(BUILD_FROM=ha_base(self.work), WYOMING_QWEN_SOURCE=self.source_url)
            context, dockerfile = ROOT / "addon" / f"qwen_{image.server}", None
            env["DOCKER_BUILDKIT"] = "0"
        else:
            args["BASE"] = debian_base(self.work)
            context, dockerfile = ROOT, ROOT / "Dockerfile"
            # the project's Dockerfile with BuildKit where a docker command has it built in (Debian's 20.10;
            # the CLI 28 here has no buildx plugin), the add-ons' with the classic builder: both builders must
            # take these files offline
            env["DOCKER_BUILDKIT"] = "1" if buildkit_cli() else "0"
        cli = buildkit_cli() if env["DOCKER_BUILDKIT"] == "1" else "docker"
        command = [cli, "build", "--network", "host", "-t", image.tag]
        if env["DOCKER_BUILDKIT"] == "0":
            command.append("--force-rm")  # a failed step's container holds gigabytes otherwise
        if dockerfile is not None:
            command += ["-f", dockerfile, "--target", image.server]
        for key, value in args.items():
            command += ["--build-arg", f"{key}={value}"]
        builder = "BuildKit" if env["DOCKER_BUILDKIT"] == "1" else "the classic builder"
        say(f"{image.name}: building with {builder}")
        started = time.monotonic()
        stream(*command, context, log=self.work / f"build-{image.name}.log", env=env)
        result.build_s = time.monotonic() - started
        result.size = image_size(image.tag)
        result.notes.append(f"built with {builder}")
        say(f"{image.name}: built in {result.build_s:.0f} s, {result.size / 1e9:.2f} GB")

    def run_container(self, image: Image, data: Path) -> str:
        name = f"wyoming-qwen-test-{image.name}-{os.getpid()}"
        run("docker", "rm", "-f", name, check=False, quiet=True)
        prefix = f"QWEN_{image.server.upper()}"
        command = [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            # the image's own health check, run every 2 s instead of every 30 s so that the test need not wait
            "--health-interval",
            "2s",
            "-v",
            f"{self.models}:/models:ro",
        ]
        model = f"/models/{image.model}"
        if image.addon:
            # what the Supervisor does: the add-on's options in /data/options.json, its config folder in /config
            config = data / "config"
            config.mkdir(parents=True, exist_ok=True)
            options = {**self._addon_defaults(image), "model": "custom", "custom_model": model, "idle_unload": 60}
            (data / "data").mkdir(parents=True, exist_ok=True)
            (data / "data" / "options.json").write_text(json.dumps(options))
            command += ["-v", f"{data / 'data'}:/data", "-v", f"{config}:/config", image.tag]
        else:
            volume = data / "data"
            volume.mkdir(parents=True, exist_ok=True)
            os.chmod(volume, 0o777)  # the server runs as uid 1000
            # options both ways: the address (which the health check reads too) and the model as variables,
            # the rest as arguments after the image name
            command += [
                "-v",
                f"{volume}:/data",
                "-e",
                f"{prefix}_URI=tcp://0.0.0.0:{image.port}",
                "-e",
                f"{prefix}_MODEL={model}",
                image.tag,
                "--idle-unload",
                "60",
                "--stop-grace",
                str(GRACE),
                "--threads",
                "2",
            ]
        run(*command)
        return name

    def _addon_defaults(self, image: Image) -> dict:
        import yaml

        return yaml.safe_load((ROOT / "addon" / f"qwen_{image.server}" / "config.yaml").read_text())["options"]

    def wait_healthy(self, name: str, image: Image, result: Result) -> None:
        started = time.monotonic()
        while True:
            state = json.loads(run("docker", "inspect", "--format", "{{json .State}}", name).stdout)
            health = (state.get("Health") or {}).get("Status")
            if health == "healthy":
                result.healthy_s = time.monotonic() - started
                say(f"{image.name}: healthy after {result.healthy_s:.0f} s")
                return
            if not state.get("Running"):
                raise Failed(f"{image.name}: the container stopped (exit {state.get('ExitCode')}):\n{self.logs(name)}")
            if time.monotonic() - started > HEALTHY_TIMEOUT:
                raise Failed(
                    f"{image.name}: not healthy after {HEALTHY_TIMEOUT} s (health: {health}):\n{self.logs(name)}"
                )
            time.sleep(1)

    def logs(self, name: str) -> str:
        result = run("docker", "logs", "--tail", "80", name, check=False, quiet=True)
        return (result.stdout + result.stderr)[-6000:]

    def request(self, name: str, image: Image, result: Result) -> None:
        """A real request from outside the container, with the client users check a server with."""
        client = BIN / "wyoming-qwen-client"
        uri = f"tcp://127.0.0.1:{image.port}"
        describe = run(client, "describe", "--uri", uri, "--timeout", "20")
        expected = "qwen3-asr" if image.server == "asr" else "qwen3-tts"
        if expected not in describe.stdout:
            raise Failed(f"{image.name}: describe does not list {expected}:\n{describe.stdout}")
        started = time.monotonic()
        if image.server == "asr":
            audio = self.work / "speech.wav"
            if shutil.which("espeak-ng") is None:  # .ci/run installs it
                raise Failed("espeak-ng is needed for a spoken request (apt-get install espeak-ng)")
            # real speech: the server's voice-activity detector gives noise an empty transcript and no decode
            _write_wav(audio, espeak("Turn on the kitchen lights"))
            answer = run(client, "transcribe", "--uri", uri, "--fast", "--timeout", "240", audio, check=False)
            ok = answer.returncode == 0
            what = "a transcript"
        else:
            out = self.work / f"{image.name}.wav"
            answer = run(client, "synthesize", "--uri", uri, "--timeout", "240", "-o", out, "Hello there.", check=False)
            ok = answer.returncode == 0 and out.exists() and _frames(out) > 0
            what = f"{_frames(out) if out.exists() else 0} frames of audio"
        result.request_s = time.monotonic() - started
        if not ok:
            raise Failed(
                f"{image.name}: the request failed (exit {answer.returncode}):\n{answer.stdout}{answer.stderr}\n"
                f"{self.logs(name)}"
            )
        say(f"{image.name}: {what} in {result.request_s:.1f} s (cold: the model loads first)")

    def check_int8_cache_note(self, name: str, image: Image, result: Result) -> None:
        """The model is mounted read-only: the int8 cache must go to the data volume, and the log must say so."""
        logs = self.logs(name)
        if "cannot be written; the int8 cache of" not in logs:
            raise Failed(f"{image.name}: the log does not say where the int8 cache of a read-only model went:\n{logs}")
        result.notes.append("int8 cache of the read-only model: logged where it went")

    def stop(self, name: str, image: Image, result: Result) -> None:
        started = time.monotonic()
        run("docker", "stop", "-t", str(STOP_TIMEOUT), name)
        result.stop_s = time.monotonic() - started
        state = json.loads(run("docker", "inspect", "--format", "{{json .State}}", name).stdout)
        result.exit_code = state.get("ExitCode")
        say(f"{image.name}: stopped in {result.stop_s:.1f} s, exit code {result.exit_code}")
        if result.stop_s > GRACE:
            raise Failed(
                f"{image.name}: the stop took {result.stop_s:.1f} s, past the {GRACE} s grace:\n{self.logs(name)}"
            )
        if result.exit_code != 0:
            raise Failed(f"{image.name}: exit code {result.exit_code} after docker stop:\n{self.logs(name)}")

    def check(self, image: Image) -> Result:
        result = Result(image.name)
        if not port_is_free(image.port):
            raise Failed(f"{image.name}: port {image.port} is taken on this machine; the container needs it")
        self.check_disk(image)
        self.build(image, result)
        data = self.work / f"data-{image.name}"
        name = self.run_container(image, data)
        try:
            self.wait_healthy(name, image, result)
            self.request(name, image, result)
            self.check_int8_cache_note(name, image, result)
            if image.addon:
                self.check_discovery(name, image, result)
            self.stop(name, image, result)
        finally:
            (self.work / f"container-{image.name}.log").write_text(self.logs(name))
            run("docker", "rm", "-f", name, check=False, quiet=True)
            if not self.keep:
                run("docker", "rmi", "-f", image.tag, check=False, quiet=True)
            # the container ran as root (add-on) or uid 1000: files in the data folder may not be ours to delete
            run(
                "docker",
                "run",
                "--rm",
                "-v",
                f"{data}:/d",
                DEBIAN,
                "rm",
                "-rf",
                "/d/data",
                "/d/config",
                check=False,
                quiet=True,
            )
            if not self.keep:
                self.engine.forget_builds()
        return result

    def check_disk(self, image: Image) -> None:
        """A build that runs out of disk fails deep in pip's output, and may leave others without room: say
        first, plainly, when there is not enough."""
        where = self.engine.data_root or Path("/var/lib/docker")
        need = BUILD_DISK_GB[image.server]
        free = free_gb(where)
        if free < need:
            raise Failed(
                f"{image.name}: building it takes about {need} GB of free disk where Docker keeps its layers "
                f"({where}); only {free:.1f} GB are free. Free some (docker system df; docker builder prune) and "
                "run it again."
            )

    def check_discovery(self, name: str, image: Image, result: Result) -> None:
        """The add-on announced itself to the (stand-in) Supervisor with the right port."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = run("docker", "exec", name, "cat", "/run/discovery.json", check=False, quiet=True)
            if found.returncode == 0 and found.stdout.strip():
                sent = json.loads(found.stdout)
                if sent["service"] != "wyoming" or not sent["config"]["uri"].endswith(f":{image.port}"):
                    raise Failed(f"{image.name}: discovery sent {sent}")
                result.notes.append(f"discovery: {sent['config']['uri']}")
                return
            time.sleep(1)
        raise Failed(f"{image.name}: the add-on sent no discovery:\n{self.logs(name)}")


def _write_wav(path: Path, pcm: bytes, rate: int = 16000) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)


def _frames(path: Path) -> int:
    with wave.open(str(path), "rb") as audio:
        return audio.getnframes()


def report(results: list) -> str:
    lines = [
        "| image | build | size | healthy after | first request | stop | exit |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.build_s:.0f} s | {r.size / 1e9:.2f} GB | {r.healthy_s:.0f} s | {r.request_s:.1f} s "
            f"| {r.stop_s:.1f} s | {r.exit_code} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="asr, tts, addon-asr, addon-tts (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the images (default: removed after their check)")
    parser.add_argument("--report", type=Path, help="also write the table of results here")
    parser.add_argument("--work", type=Path, help="keep the logs in this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    chosen = args.images or list(ALL)
    for name in chosen:
        if name not in ALL:
            parser.error(f"no image {name!r}: choose from {', '.join(ALL)}")

    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="test-images-")))
        work.mkdir(parents=True, exist_ok=True)
        os.chmod(work, 0o755)
        try:
            engine = stack.enter_context(Engine(work))
            debian_base(work)
        except Skip as why:
            say(f"skipped: {why}")
            return EXIT_SKIP
        models = work / "models"
        if not (models / "asr" / "config.json").exists():
            say("building the tiny checkpoints")
            only = sorted({"asr" if n.endswith("asr") else "tts-custom-voice" for n in chosen})
            stream(
                sys.executable,
                ROOT / "tests" / "tiny_models.py",
                models,
                *sum((["--only", o] for o in only), []),
                log=work / "tiny-models.log",
            )
        run("chmod", "-R", "a+rX", models)
        served = work / "served"
        served.mkdir(exist_ok=True)
        write_simple_index(wheels(work), served)
        source_tarball(served / "wyoming-qwen-src.tar.gz")
        server = LocalServer(served)
        stack.callback(server.close)
        port_asr, port_tts = free_port(), free_port()
        checker = Checker(engine, work, models, server.url, f"{server.url}/wyoming-qwen-src.tar.gz", args.keep)
        results, failures = [], []
        for name in chosen:
            try:
                results.append(checker.check(images(port_asr, port_tts)[name]))
            except Failed as error:
                failures.append(str(error))
                say(f"FAILED {error}")
        table = report(results)
        print(table)
        for r in results:
            if r.notes:
                print(f"{r.name}: {'; '.join(r.notes)}")
        if args.report:
            args.report.write_text(table + "\n")
        if failures:
            say(f"{len(failures)} of {len(chosen)} images failed")
            return 1
        say(f"all {len(chosen)} images passed")
        return 0


if __name__ == "__main__":
    sys.exit(main())
