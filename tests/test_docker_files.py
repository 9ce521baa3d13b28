"""The deployment files, offline: hadolint, shellcheck and yamllint; every server option the Dockerfile and the
compose files pass is a real option of that server, with a value it accepts; the build context keeps what the
install needs; and the image's HEALTHCHECK command, run here, tells a live server from a wrong or absent one."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import wyoming_qwen_asr.options as asr_options
import wyoming_qwen_tts.options as tts_options

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
SYNOLOGY = ROOT / "addon" / "synology" / "docker-compose.yml"
SYNOLOGY_GUIDE = ROOT / "addon" / "synology" / "README.md"
HA_BASE = ROOT / "tests" / "images" / "ha-base"
OPTIONS = {"asr": asr_options, "tts": tts_options}
PROGRAMS = {"asr": "qwen3-asr", "tts": "qwen3-tts"}
# environment variables the files may set besides the servers' own QWEN_<KIND>_* options
OTHER_ENV = {"HOME", "HF_HOME", "NUMBA_CACHE_DIR", "PATH", "PYTHONUNBUFFERED", "TZ"}
OTHER_ENV_PREFIXES = ("NVIDIA_", "HF_")
YAMLLINT_CONFIG = (
    "{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}}}"
)


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=ROOT, **kwargs)


# -- linters ----------------------------------------------------------------------------------------------


def test_dockerfiles_build_with_the_classic_builder_and_offline():
    """Debian's docker has no buildx, so the classic builder is all it has, and it rejects `RUN --mount`;
    a `# syntax=` line makes BuildKit fetch a frontend image from Docker Hub, which fails offline."""
    for dockerfile in [ROOT / "Dockerfile", *sorted(ROOT.glob("addon/*/Dockerfile")), HA_BASE / "Dockerfile"]:
        text = dockerfile.read_text()
        assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE), dockerfile
        assert not re.search(r"^RUN\s+--mount", text, re.MULTILINE), dockerfile


def test_hadolint_is_clean():
    result = run(BIN / "hadolint", DOCKERFILE, HA_BASE / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_is_clean_on_every_script():
    """script/install-server and the other scripts of the repository, and script/test-images' stand-in for
    Home Assistant's base image (the add-on's scripts are in test_addon.py)."""
    stand_in = [path for path in sorted((HA_BASE / "rootfs").rglob("*")) if path.is_file()]
    scripts = [*sorted((ROOT / "script").iterdir()), ROOT / ".ci" / "run", *stand_in]
    assert ROOT / "script" / "install-server" in scripts and len(scripts) >= 8 and len(stand_in) == 5
    result = run(BIN / "shellcheck", "--shell=bash", *scripts)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_is_clean_on_the_compose_files():
    result = run(BIN / "yamllint", "--strict", "-d", YAMLLINT_CONFIG, COMPOSE, COMPOSE_GPU, SYNOLOGY)
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_server_refuses_bad_arguments_before_doing_anything(tmp_path):
    for args, message in [
        ([], "name the server"),
        (["asr", "tts"], "one server at a time"),
        (["stt"], "unknown argument: stt"),
        (["asr", "--venv"], "--venv needs a directory"),
    ]:
        result = run(ROOT / "script" / "install-server", *args, env={**os.environ, "WYOMING_QWEN_VENV": str(tmp_path)})
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
    assert list(tmp_path.iterdir()) == []
    usage = run(ROOT / "script" / "install-server", "--help")
    assert usage.returncode == 0 and "--torch-spec" in usage.stderr and "set -euo" not in usage.stderr


def fake_torch_index(root: Path, cuda: str) -> str:
    """A local package index (file://) holding one `torch` wheel whose `torch.version.cuda` is `cuda`."""
    import zipfile

    folder = root / "simple" / "torch"
    folder.mkdir(parents=True)
    files = {
        "torch/__init__.py": "from . import version\n__version__ = '9.9.9'\n",
        "torch/version.py": f"cuda = {cuda!r}\n",
        "torch-9.9.9.dist-info/METADATA": "Metadata-Version: 2.1\nName: torch\nVersion: 9.9.9\n",
        "torch-9.9.9.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    with zipfile.ZipFile(folder / "torch-9.9.9-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
        wheel.writestr(
            "torch-9.9.9.dist-info/RECORD",
            "".join(f"{name},,\n" for name in files) + "torch-9.9.9.dist-info/RECORD,,\n",
        )
    (folder / "index.html").write_text('<a href="torch-9.9.9-py3-none-any.whl">torch-9.9.9-py3-none-any.whl</a>')
    return f"file://{root / 'simple'}"


def test_a_cpu_install_refuses_a_cuda_build_of_torch_saying_why(tmp_path):
    """torch from PyPI is the CUDA build: a CPU image got 6.96 GB instead of 2.23 GB without a word. A CPU
    install now stops there and names both ways out."""
    index = fake_torch_index(tmp_path / "index", cuda="12.8")
    result = run(
        ROOT / "script" / "install-server",
        "asr",
        "--venv",
        str(tmp_path / "venv"),
        "--torch-index",
        index,
        "--torch-spec",
        "torch",
        "--no-check",
        # this index only: not the machine's own pip indexes and wheel folders
        env={
            **{k: v for k, v in os.environ.items() if k not in ("CUDA", "ALLOW_CUDA_TORCH", "VIRTUAL_ENV")},
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_FIND_LINKS": "",
        },
    )
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    assert "error: a CPU install needs torch's CPU build" in error and "CUDA 12.8" in error, result.stderr
    assert "--torch-index" in error and "--allow-cuda-build" in error
    assert "installing the project" not in result.stderr.lower()


# -- the Dockerfile, read as Docker reads it -------------------------------------------------------------------


def dockerfile_stages(path: Path = DOCKERFILE) -> dict:
    """{stage: {"from": ..., "args": set, "env": {...}, "healthcheck": str|None, "entrypoint": list|None}};
    the ARGs before the first FROM are under the stage name None."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    )
    stages = {None: {"from": None, "args": set(), "env": {}, "healthcheck": None, "entrypoint": None}}
    current = None
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = rest.split()
            current = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"stage{len(stages)}"
            stages[current] = {"from": words[0], "args": set(), "env": {}, "healthcheck": None, "entrypoint": None}
        elif instruction == "ARG":
            stages[current]["args"].add(rest.split("=", 1)[0].strip())
        elif instruction == "ENV":
            for word in shlex.split(rest):
                name, _, value = word.partition("=")
                stages[current]["env"][name] = value
        elif instruction == "HEALTHCHECK":
            command = rest[rest.index("CMD") + 3 :].strip()
            stages[current]["healthcheck"] = json.loads(command)
        elif instruction == "ENTRYPOINT":
            stages[current]["entrypoint"] = json.loads(rest)
    return stages


def stage_chain(stages: dict, name: str) -> list:
    chain = []
    while name in stages and name is not None:
        chain.append(name)
        name = stages[name]["from"]
    return chain


def check_server_env(kind: str, env: dict, args: list, where: str, monkeypatch) -> None:
    """Every QWEN_<KIND>_* variable names a real option of that server, and the server accepts the values."""
    parser = OPTIONS[kind].build_parser()
    prefix = f"QWEN_{kind.upper()}_"
    for name in env:
        if name.startswith("QWEN_"):
            assert name.startswith(prefix), f"{where}: {name} is not an option of the {kind} server"
            flag = "--" + name[len(prefix) :].lower().replace("_", "-")
            assert flag in parser._option_string_actions and flag not in ("--help", "--version"), (
                f"{where}: {name} maps to {flag}, which wyoming-qwen-{kind} does not have"
            )
            check_value(parser._option_string_actions[flag], str(env[name]), f"{where}: {name}")
        else:
            assert name in OTHER_ENV or name.startswith(OTHER_ENV_PREFIXES), f"{where}: unexpected variable {name}"
    for arg in args:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            assert flag in parser._option_string_actions, f"{where}: wyoming-qwen-{kind} has no option {flag}"
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("QWEN_"):
                patch.delenv(name)
        for name, value in env.items():
            if name.startswith("QWEN_"):
                patch.setenv(name, str(value))
        try:
            OPTIONS[kind].parse_args(list(args))
        except (SystemExit, ValueError) as err:
            raise AssertionError(f"{where}: wyoming-qwen-{kind} rejects {env} {args}") from err


SWITCH_VALUES = {"true", "false", "1", "0", "yes", "no", "on", "off"}


def check_value(action, value: str, where: str) -> None:
    """What argparse checks on the command line but not in a default taken from the environment: a switch's
    spelling (anything but true/1/yes/on silently means false) and the choices."""
    if action.nargs == 0:
        assert value.lower() in SWITCH_VALUES, f"{where}={value!r}: a switch takes true or false"
    if action.choices is not None:
        assert value in action.choices, f"{where}={value!r}: not one of {sorted(action.choices)}"


def test_dockerfile_targets_set_only_real_options(monkeypatch):
    stages = dockerfile_stages()
    assert not any(name.startswith("QWEN_") for name in stages["base"]["env"])
    for kind in ("asr", "tts"):
        stage = stages[kind]
        assert stage_chain(stages, kind) == [kind, "base"]
        assert stage["entrypoint"] == [f"wyoming-qwen-{kind}"]
        check_server_env(kind, {**stages["base"]["env"], **stage["env"]}, [], f"Dockerfile target {kind}", monkeypatch)
        uri = stage["env"][f"QWEN_{kind.upper()}_URI"]
        assert uri == f"tcp://0.0.0.0:{OPTIONS[kind].build_parser().get_default('uri').rsplit(':', 1)[1]}"
        assert PROGRAMS[kind] in stage["healthcheck"][-1]
        # the build arguments install-server reads, and the user's numbers
        assert {"CUDA", "TORCH_INDEX", "TORCH_SPEC", "UID", "GID"} <= stage["args"]
    assert "BASE" in stages[None]["args"] and stages["base"]["from"] == "${BASE}"


def compose_services(*paths: Path) -> dict:
    """The services of compose files merged as `docker compose -f a -f b` does (maps merged, the rest replaced)."""

    def merge(a, b):
        if isinstance(a, dict) and isinstance(b, dict):
            return {**a, **{k: merge(a[k], v) if k in a else v for k, v in b.items()}}
        return b

    merged: dict = {}
    for path in paths:
        merged = merge(merged, yaml.safe_load(path.read_text()))
    return merged["services"]


def environment(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def command(service: dict) -> list:
    value = service.get("command") or []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def dva_variant(path: Path) -> str:
    """The Synology file with the lines after each `# DVA` marker uncommented."""
    lines, out, marker = path.read_text().splitlines(), [], None
    for line in lines:
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if marker is not None and indent == marker and stripped.startswith("# "):
            out.append(" " * indent + stripped[2:])
            continue
        marker = indent if re.match(r"# DVA(:|$)", stripped) else None
        out.append(line)
    return "\n".join(out)


COMPOSE_SETS = {
    "docker-compose.yml": [COMPOSE],
    "docker-compose.yml + docker-compose.gpu.yml": [COMPOSE, COMPOSE_GPU],
    "addon/synology/docker-compose.yml": [SYNOLOGY],
}


@pytest.mark.parametrize("name", sorted(COMPOSE_SETS))
def test_compose_files_pass_only_real_options(name, monkeypatch):
    stages = dockerfile_stages()
    services = compose_services(*COMPOSE_SETS[name])
    assert sorted(services) == ["asr", "tts"]
    for service_name, service in services.items():
        kind = service["build"]["target"]
        assert kind == service_name
        where = f"{name}, service {service_name}"
        check_server_env(kind, environment(service), command(service), where, monkeypatch)
        assert service["network_mode"] == "host", "zeroconf needs host networking"
        assert environment(service)[f"QWEN_{kind.upper()}_ZEROCONF"] == "true"
        declared = set().union(*(stages[s]["args"] for s in stage_chain(stages, kind)), stages[None]["args"])
        assert set(service["build"].get("args", {})) <= declared, f"{where}: build args the Dockerfile lacks"
        for volume in service.get("volumes", []):
            assert volume.split(":")[1] in ("/data", "/voices"), f"{where}: {volume}"
    if "gpu" in name:
        for service in services.values():
            (device,) = service["deploy"]["resources"]["reservations"]["devices"]
            assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
            assert service["build"]["args"]["CUDA"] == "1" and service["build"]["args"]["BASE"].startswith(
                "nvidia/cuda:"
            )


def test_synology_dva_variant_is_valid_too(tmp_path, monkeypatch):
    variant = tmp_path / "docker-compose.yml"
    variant.write_text(dva_variant(SYNOLOGY))
    stages = dockerfile_stages()
    for kind, service in compose_services(variant).items():
        env = environment(service)
        assert service["runtime"] == "nvidia" and env["NVIDIA_VISIBLE_DEVICES"] == "all"
        assert env[f"QWEN_{kind.upper()}_DEVICE"] == "cuda" and service["build"]["args"]["CUDA"] == "1"
        assert f"QWEN_{kind.upper()}_LANGUAGE" not in env  # an ordinary comment stays a comment
        check_server_env(kind, env, command(service), f"Synology DVA variant, {kind}", monkeypatch)
        declared = set().union(*(stages[s]["args"] for s in stage_chain(stages, kind)), stages[None]["args"])
        assert set(service["build"]["args"]) <= declared
    plain = compose_services(SYNOLOGY)
    for service in plain.values():
        assert service["build"]["args"] == {"UID": "1026", "GID": "100"} and "runtime" not in service
        assert all(v.startswith("/volume1/docker/wyoming-qwen/") for v in service["volumes"])
        assert service["build"]["context"] == "/volume1/docker/wyoming-qwen/src"


def test_variables_named_in_the_docs_are_real_options():
    texts = [DOCKERFILE, COMPOSE, COMPOSE_GPU, SYNOLOGY, SYNOLOGY_GUIDE, ROOT / "README.md"]
    parsers = {kind: module.build_parser() for kind, module in OPTIONS.items()}
    found = 0
    for path in texts:
        for kind, option in re.findall(r"\bQWEN_(ASR|TTS)_([A-Z][A-Z0-9_]*)", path.read_text()):
            flag = "--" + option.lower().replace("_", "-")
            assert flag in parsers[kind.lower()]._option_string_actions, f"{path.name}: QWEN_{kind}_{option}"
            found += 1
    assert found > 10


# -- the build context --------------------------------------------------------------------------------------


def dockerignore_excludes(path: str, patterns: list) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""

    def regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        expression = regex(os.path.normpath(pattern.lstrip("!").strip()).lstrip("/"))
        if any(expression.match(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_install_needs_and_nothing_heavy():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv")]
        files += [os.path.relpath(os.path.join(folder, n), ROOT) for n in names]
    kept = {f for f in files if not dockerignore_excludes(f, patterns)}
    needed = {"pyproject.toml", "README.md", "script/install-server"}
    needed |= {f for f in files if f.split("/")[0] in ("shared", "wyoming_qwen_asr", "wyoming_qwen_tts")}
    needed = {f for f in needed if "__pycache__" not in f}
    assert needed <= kept, sorted(needed - kept)
    assert all(f.split("/")[0] not in ("tests", "bench", "addon") and "__pycache__" not in f for f in kept), kept
    assert dockerignore_excludes(".venv/bin/python", patterns) and dockerignore_excludes(".git/HEAD", patterns)


# -- the HEALTHCHECK, run here against real gateways -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def healthcheck(kind: str, port: int) -> int:
    command = dockerfile_stages()[kind]["healthcheck"]
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        f"QWEN_{kind.upper()}_URI": f"tcp://0.0.0.0:{port}",
    }
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), 60)


@pytest.mark.asyncio
async def test_healthcheck_passes_on_its_server_and_fails_otherwise(server_process, tiny_dir):
    ports = {kind: free_port() for kind in ("asr", "tts")}
    for kind, model in (("asr", "asr"), ("tts", "tts-custom-voice")):
        uri = f"tcp://127.0.0.1:{ports[kind]}"
        await server_process(f"wyoming_qwen_{kind}", "--model", str(tiny_dir / model), uri=uri)
    assert await healthcheck("asr", ports["asr"]) == 0
    assert await healthcheck("tts", ports["tts"]) == 0
    assert await healthcheck("asr", ports["tts"]) != 0  # a server, but not speech-to-text
    assert await healthcheck("tts", free_port()) != 0  # nothing listening


def test_images_and_compose_files_ask_for_no_extra_privileges():
    compose_files = [
        ROOT / "docker-compose.yml",
        ROOT / "docker-compose.gpu.yml",
        ROOT / "addon/synology/docker-compose.yml",
    ]
    for path in compose_files:
        text = path.read_text()
        for setting in ("privileged", "cap_add", "security_opt", "pid:", "userns_mode", "user: root", 'user: "0'):
            assert setting not in text, f"{path.name} asks for {setting}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    # every stage an image is built from ends as the unprivileged user
    for stage in re.split(r"^FROM ", dockerfile, flags=re.M)[1:]:
        if " AS asr" in stage.splitlines()[0] or " AS tts" in stage.splitlines()[0]:
            users = re.findall(r"^USER (.+)$", stage, flags=re.M)
            assert users and users[-1] == "${UID}:${GID}", stage.splitlines()[0]
