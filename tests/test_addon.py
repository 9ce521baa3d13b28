"""The Home Assistant apps in addon/: their config, translations, s6 services, Dockerfiles and linters.

The s6 scripts run for real, with bash, under a stand-in for bashio (options served from the test, the
discovery call recorded) and a stand-in server on PATH that records the command line it was started with.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Callable, Dict, List, Optional

import pytest
import yaml

from shared.languages import ASR_LANGUAGES, TTS_LANGUAGES
from wyoming_qwen_asr import info as asr_info
from wyoming_qwen_asr import options as asr_options
from wyoming_qwen_tts import info as tts_info
from wyoming_qwen_tts import options as tts_options

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "addon"
TOOLS = Path(sys.executable).parent  # yamllint, shellcheck and hadolint come with the dev extra
S6 = PurePath("rootfs/etc/s6-overlay/s6-rc.d")
SHEBANG = "#!/command/with-contenv bashio"
REPOSITORY_URL = "https://github.com/wyoming-qwen/wyoming-qwen"


@dataclass(frozen=True)
class App:
    kind: str  # asr or tts
    slug: str  # the app's folder, slug and s6 service name
    port: int
    program: str  # the server's command
    program_name: str  # the program name `describe` answers with (the health check greps for it)
    default_model: str
    languages: List[str]  # the server's language codes
    parser: Callable  # build_parser of the server
    parse_args: Callable
    # each option of config.yaml and the server flag it becomes
    option_flags: Dict[str, str]
    # flags every start passes, whatever the options
    fixed_argv: List[str]


COMMON_OPTION_FLAGS = {
    "model": "--model",
    "custom_model": "--model",
    "language": "--language",
    "idle_unload": "--idle-unload",
    "idle_exit": "--idle-exit",
    "threads": "--threads",
    "preload": "--preload",
    "debug_logging": "--debug",
    "http_api": "--http",
    "api_key": "--api-key",
}

APPS = {
    "asr": App(
        kind="asr",
        slug="qwen_asr",
        port=10300,
        program="wyoming-qwen-asr",
        program_name=asr_info.PROGRAM_NAME,
        default_model="Qwen/Qwen3-ASR-0.6B",
        languages=list(ASR_LANGUAGES.codes),
        parser=asr_options.build_parser,
        parse_args=asr_options.parse_args,
        option_flags={**COMMON_OPTION_FLAGS, "vad_endpointing": "--vad-endpointing"},
        fixed_argv=["--uri", "tcp://0.0.0.0:10300", "--data-dir", "/data", "--device", "cpu"],
    ),
    "tts": App(
        kind="tts",
        slug="qwen_tts",
        port=10200,
        program="wyoming-qwen-tts",
        program_name=tts_info.PROGRAM_NAME,
        default_model="Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice",
        languages=list(TTS_LANGUAGES.codes),
        parser=tts_options.build_parser,
        parse_args=tts_options.parse_args,
        option_flags={**COMMON_OPTION_FLAGS, "voice": "--voice"},
        fixed_argv=["--uri", "tcp://0.0.0.0:10200", "--data-dir", "/data", "--device", "cpu"],
    ),
}
KINDS = list(APPS)


def app_dir(app: App) -> Path:
    return ADDON / app.slug


def load_yaml(path: Path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def config(app: App) -> dict:
    return load_yaml(app_dir(app) / "config.yaml")


def service_dir(app: App, service: str) -> Path:
    return app_dir(app) / S6 / service


def script_flags(path: Path) -> set:
    """The long options a script passes (comments left out)."""
    code = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", code))


def tool(name: str) -> str:
    path = TOOLS / name
    assert path.exists(), f"{path} is missing: install the dev extra (pip install -e '.[dev]')"
    return str(path)


# --- repository and config.yaml ---------------------------------------------------------------------------


def test_repository_yaml():
    repository = load_yaml(ADDON / "repository.yaml")
    assert repository["url"] == REPOSITORY_URL
    assert repository["name"] and repository["maintainer"]


@pytest.mark.parametrize("kind", KINDS)
def test_config_basics(kind):
    app = APPS[kind]
    cfg = config(app)
    assert cfg["slug"] == app.slug
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(cfg["version"]))
    assert cfg["url"].startswith(REPOSITORY_URL)
    assert cfg["arch"] == ["amd64", "aarch64"]
    assert cfg["init"] is False
    assert cfg["discovery"] == ["wyoming"]
    # Wyoming, and the HTTP API (off until a host port is set)
    assert cfg["ports"] == {f"{app.port}/tcp": None, f"{app.port + 1}/tcp": None}
    assert "app_config:rw" in cfg["map"]
    # Supervisor builds the image locally; `image` would make it pull one that is never published
    assert "image" not in cfg
    extra_privileges = {
        "privileged",
        "full_access",
        "host_network",
        "host_pid",
        "host_ipc",
        "host_dbus",
        "host_uts",
        "docker_api",
        "hassio_api",
        "homeassistant_api",
        "devices",
        "usb",
        "uart",
        "gpio",
        "kernel_modules",
        "apparmor",
    }
    assert not extra_privileges & set(cfg), f"extra privileges: {extra_privileges & set(cfg)}"


@pytest.mark.parametrize("kind", KINDS)
def test_version_agrees_with_build_files(kind):
    """The app's version names the source archive its image installs: config.yaml, build.yaml and the
    Dockerfile's default must agree."""
    app = APPS[kind]
    version = str(config(app)["version"])
    build = load_yaml(app_dir(app) / "build.yaml")
    assert str(build["args"]["WYOMING_QWEN_VERSION"]) == version
    assert set(build["build_from"]) == set(config(app)["arch"])
    dockerfile = (app_dir(app) / "Dockerfile").read_text()
    assert f"ARG WYOMING_QWEN_VERSION={version}\n" in dockerfile


def _schema_accepts(rule: str, value) -> bool:
    """Supervisor's option types that these apps use: bool, int(min,max), str, list(a|b), `?` optional."""
    rule = rule.strip().rstrip("?")
    if rule == "bool":
        return isinstance(value, bool)
    if rule in ("str", "password"):
        return isinstance(value, str)
    if match := re.fullmatch(r"int(?:\((-?\d+)?,(-?\d+)?\))?", rule):
        low, high = match.groups()
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and (low is None or value >= int(low))
            and (high is None or value <= int(high))
        )
    if match := re.fullmatch(r"float(?:\((-?[\d.]+)?,(-?[\d.]+)?\))?", rule):
        low, high = match.groups()
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (low is None or value >= float(low))
            and (high is None or value <= float(high))
        )
    if match := re.fullmatch(r"list\((.+)\)", rule):
        return value in match.group(1).split("|")
    raise AssertionError(f"unknown schema type {rule!r}")


@pytest.mark.parametrize("kind", KINDS)
def test_options_defaults_fit_the_schema(kind):
    app = APPS[kind]
    cfg = config(app)
    for name, value in cfg["options"].items():
        assert _schema_accepts(cfg["schema"][name], value), f"{name}: {value!r} does not fit {cfg['schema'][name]}"
    assert cfg["options"]["model"] == app.default_model
    assert cfg["options"]["language"] == "auto"
    assert cfg["options"]["idle_unload"] == 300
    assert _schema_accepts(cfg["schema"]["idle_unload"], -1)
    assert not _schema_accepts(cfg["schema"]["idle_unload"], -2)
    assert cfg["options"]["idle_exit"] == -1  # standby until memory runs short (shared/idle_policy.py)
    assert _schema_accepts(cfg["schema"]["idle_exit"], 0) and not _schema_accepts(cfg["schema"]["idle_exit"], -2)
    assert cfg["options"]["preload"] is False and cfg["options"]["debug_logging"] is False
    assert cfg["options"]["threads"] == 0
    assert _schema_accepts(cfg["schema"]["threads"], 4)
    assert not _schema_accepts(cfg["schema"]["threads"], -1)
    if kind == "tts":
        assert cfg["options"]["voice"] == "ryan"


@pytest.mark.parametrize("kind", KINDS)
def test_language_list_is_the_servers(kind):
    app = APPS[kind]
    listed = re.fullmatch(r"list\((.+)\)", config(app)["schema"]["language"]).group(1).split("|")
    assert listed == ["auto", *app.languages]


@pytest.mark.parametrize("kind", KINDS)
def test_model_list(kind):
    app = APPS[kind]
    listed = re.fullmatch(r"list\((.+)\)", config(app)["schema"]["model"]).group(1).split("|")
    assert listed[0] == app.default_model
    assert listed[-1] == "custom"
    assert config(app)["schema"]["custom_model"] == "str?"


@pytest.mark.parametrize("kind", KINDS)
def test_options_schema_and_translations_match(kind):
    app = APPS[kind]
    cfg = config(app)
    translations = load_yaml(app_dir(app) / "translations" / "en.yaml")
    options, schema, translated = set(cfg["options"]), set(cfg["schema"]), set(translations["configuration"])
    assert options <= schema, f"options without a schema entry: {options - schema}"
    unset_optional = {name for name in schema - options if not str(cfg["schema"][name]).endswith("?")}
    assert not unset_optional, f"required schema entries without a default: {unset_optional}"
    assert schema == translated, f"schema only: {schema - translated}; translations only: {translated - schema}"
    for name, text in translations["configuration"].items():
        assert text.get("name") and text.get("description"), f"{name} lacks a name or description"
    assert set(translations["network"]) == set(cfg["ports"])


@pytest.mark.parametrize("kind", KINDS)
def test_docs_explain_every_option(kind):
    app = APPS[kind]
    docs = (app_dir(app) / "DOCS.md").read_text()
    for name in config(app)["schema"]:
        assert f"### Option: `{name}`" in docs, f"DOCS.md does not explain {name}"


@pytest.mark.parametrize("kind", KINDS)
def test_backup_leaves_out_models(kind):
    """Supervisor matches each path it backs up with PurePath.match and skips a matching folder whole."""
    app = APPS[kind]
    patterns = config(app)["backup_exclude"]

    def excluded(path: str) -> bool:
        return any(PurePath(path).match(pattern) for pattern in patterns)

    hub_folder = "models--" + app.default_model.replace("/", "--")
    assert excluded(f"/data/{hub_folder}")
    assert excluded("/config/models")
    for kept in ("/data/options.json", "/data", "/config", "/config/voices", "/config/voices/bob/reference.wav"):
        assert not excluded(kept), kept
    if kind == "tts":
        assert excluded("/config/voices/bob/.clone-prompt-Qwen--Qwen3-TTS-12Hz-0.6B-Base.safetensors")


# --- options to server flags ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_option_maps_to_a_real_flag(kind):
    app = APPS[kind]
    actions = app.parser()._option_string_actions
    run_flags = script_flags(service_dir(app, app.slug) / "run")
    assert set(app.option_flags) == set(config(app)["schema"]), "an option without a known flag (or the reverse)"
    for option, flag in app.option_flags.items():
        assert flag in actions, f"{option}: {flag} is not an option of {app.program}"
        assert flag in run_flags, f"{option}: the run script never passes {flag}"


@pytest.mark.parametrize("kind", KINDS)
def test_run_script_flags_are_real(kind):
    app = APPS[kind]
    actions = app.parser()._option_string_actions
    unknown = {flag for flag in script_flags(service_dir(app, app.slug) / "run") if flag not in actions}
    assert not unknown, f"not options of {app.program}: {unknown}"


# --- s6-overlay services -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_s6_services(kind):
    app = APPS[kind]
    server, discovery = service_dir(app, app.slug), service_dir(app, "discovery")
    assert (server / "type").read_text().strip() == "longrun"
    assert (server / "dependencies.d" / "base").is_file()
    assert (discovery / "type").read_text().strip() == "oneshot"
    assert (discovery / "dependencies.d" / app.slug).is_file()
    assert (discovery / "up").read_text().strip() == "/" + (S6 / "discovery" / "run").relative_to("rootfs").as_posix()
    contents = {p.name for p in (app_dir(app) / S6 / "user" / "contents.d").iterdir()}
    assert contents == {app.slug, "discovery"}
    for script in (server / "run", server / "finish", discovery / "run"):
        assert script.read_text().splitlines()[0] == SHEBANG, script
        assert os.access(script, os.X_OK), f"{script} is not executable"


def _scripts() -> List[Path]:
    return sorted(p for p in ADDON.rglob("*") if p.is_file() and p.name in ("run", "finish", "up"))


def test_shellcheck():
    scripts = _scripts()
    assert len(scripts) >= 6
    result = subprocess.run(
        [tool("shellcheck"), "--shell=bash", "--exclude=SC1008", *map(str, scripts)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint():
    """Every YAML file in addon/. The apps' files must be free of warnings too; other files there (the
    Synology compose file) of errors."""
    files = sorted(p for p in ADDON.rglob("*") if p.suffix in (".yaml", ".yml") or p.name == ".yamllint")
    app_files = [p for p in files if p.parent == ADDON or p.relative_to(ADDON).parts[0] in ("qwen_asr", "qwen_tts")]
    assert len(app_files) >= 9
    for group, strict in ((app_files, ["--strict"]), (sorted(set(files) - set(app_files)), [])):
        if not group:
            continue
        result = subprocess.run(
            [tool("yamllint"), *strict, "--config-file", str(ADDON / ".yamllint"), *map(str, group)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_hadolint(kind):
    dockerfile = app_dir(APPS[kind]) / "Dockerfile"
    result = subprocess.run(
        [tool("hadolint"), "--config", str(ADDON / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_dockerfile_installs_and_checks_the_server(kind):
    app = APPS[kind]
    dockerfile = (app_dir(app) / "Dockerfile").read_text()
    words = shlex.split(dockerfile.replace("\\\n", " "), comments=True)
    assert words[:4] == ["ARG", "BUILD_FROM=ghcr.io/home-assistant/base-debian:trixie", "FROM", "${BUILD_FROM}"]
    archive = REPOSITORY_URL + "/archive/refs/tags/v${WYOMING_QWEN_VERSION}.tar.gz"
    assert f"WYOMING_QWEN_SOURCE={archive}" in words  # the release by default (script/test-images serves its own)
    assert '"${WYOMING_QWEN_SOURCE}"' in dockerfile
    install = words.index("/usr/src/wyoming-qwen/script/install-server")
    assert words[install + 1 : install + 4] == [app.kind, "--venv", "/opt/wyoming-qwen"]
    assert "--cuda" not in words
    assert 'ENV PATH="/opt/wyoming-qwen/bin:${PATH}"' in dockerfile
    assert "COPY rootfs /" in dockerfile
    healthcheck = dockerfile[dockerfile.index("HEALTHCHECK") :]
    assert re.search(r"--start-period=(\d+)m", healthcheck) and int(re.search(r"=(\d+)m", healthcheck).group(1)) >= 10
    assert f"nc -w 1 localhost {app.port}" in healthcheck
    assert f'grep -q "{app.program_name}"' in healthcheck


# --- the scripts, run under a stand-in bashio ---------------------------------------------------------------

# bashio: the stand-in of script/test-images' base image (options from a JSON file as the Supervisor writes it,
# discovery calls recorded as JSON lines), with mkdir recorded instead of run: the TTS run script creates its
# voices folder in /config
STAND_IN = Path(__file__).resolve().parent / "images" / "ha-base" / "rootfs"
FAKE_BASHIO_LIB = f"""
source "{STAND_IN / "usr" / "lib" / "bashio" / "bashio.sh"}"
mkdir() {{ printf '%s\\n' "$*" >> "${{FAKE_MKDIR_LOG}}"; }}
"""

# the server: record its command line and process id, then exit
FAKE_SERVER = """#!{python}
import json, os, sys
with open(os.environ["FAKE_ARGV_LOG"], "w") as f:
    json.dump({{"argv": sys.argv[1:], "pid": os.getpid()}}, f)
"""

FAKE_HOSTNAME = "abcd1234-qwen"


@pytest.fixture
def fake_bashio(tmp_path):
    """Run an s6 script as with-contenv would (`bashio SCRIPT`), with stand-ins for bashio, the server and
    hostname. Returns a function: (script, options) -> the finished or running process and its logs."""
    fake = tmp_path / "fake"
    bin_dir = fake / "bin"
    bin_dir.mkdir(parents=True)
    (fake / "bashio.sh").write_text(FAKE_BASHIO_LIB)
    shutil.copy(STAND_IN / "usr" / "bin" / "bashio", bin_dir / "bashio")
    executables = {
        bin_dir / "hostname": f"#!/bin/sh\necho {FAKE_HOSTNAME}\n",
        **{bin_dir / app.program: FAKE_SERVER.format(python=sys.executable) for app in APPS.values()},
    }
    for path, text in executables.items():
        path.write_text(text)
        path.chmod(0o755)
    logs = {name: tmp_path / f"{name}.log" for name in ("argv", "discovery", "mkdir")}
    base_env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "BASHIO_LIB": str(fake / "bashio.sh"),
        "BASHIO_OPTIONS": str(fake / "options.json"),
        "BASHIO_DISCOVERY": str(logs["discovery"]),
        "FAKE_ARGV_LOG": str(logs["argv"]),
        "FAKE_MKDIR_LOG": str(logs["mkdir"]),
    }

    def start(script: Path, options: Optional[dict] = None, wait: bool = True):
        env = dict(base_env)
        # the Supervisor leaves unset optional options out of options.json
        options = {name: value for name, value in (options or {}).items() if value is not None}
        (fake / "options.json").write_text(json.dumps(options))
        proc = subprocess.Popen(
            [str(bin_dir / "bashio"), str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        if wait:
            proc.output, proc.errors = proc.communicate(timeout=30)
        return proc, logs

    return start


def run_server_script(fake_bashio, app: App, **overrides):
    """Run the app's `run` script with its default options changed by `overrides`: (argv, logs)."""
    options = {**config(app)["options"], **overrides}
    proc, logs = fake_bashio(service_dir(app, app.slug) / "run", options)
    assert proc.returncode == 0, proc.errors
    record = json.loads(logs["argv"].read_text())
    # exec: the server replaces the script's shell, so s6 supervises and signals the server itself
    assert record["pid"] == proc.pid, "the run script does not exec the server"
    app.parse_args(record["argv"])  # the server accepts this command line
    return record["argv"], logs


def test_asr_run_defaults(fake_bashio):
    argv, _ = run_server_script(fake_bashio, APPS["asr"])
    assert argv == [
        *APPS["asr"].fixed_argv,
        "--model",
        "Qwen/Qwen3-ASR-0.6B",
        "--idle-unload",
        "300",
        "--idle-exit",
        "-1",
        "--threads",
        "0",
    ]


def test_asr_run_all_options(fake_bashio):
    argv, _ = run_server_script(
        fake_bashio,
        APPS["asr"],
        model="Qwen/Qwen3-ASR-1.7B",
        language="de",
        idle_unload=-1,
        idle_exit=600,
        threads=2,
        preload=True,
        debug_logging=True,
    )
    assert argv == [
        *APPS["asr"].fixed_argv,
        "--model",
        "Qwen/Qwen3-ASR-1.7B",
        "--idle-unload",
        "-1",
        "--idle-exit",
        "600",
        "--threads",
        "2",
        "--language",
        "de",
        "--preload",
        "--debug",
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_run_custom_model(fake_bashio, kind):
    app = APPS[kind]
    argv, _ = run_server_script(fake_bashio, app, model="custom", custom_model="/config/models/my model", idle_unload=0)
    assert argv[argv.index("--model") + 1] == "/config/models/my model"
    assert argv[argv.index("--idle-unload") + 1] == "0"


@pytest.mark.parametrize("kind", KINDS)
def test_run_custom_model_missing(fake_bashio, kind):
    app = APPS[kind]
    proc, logs = fake_bashio(service_dir(app, app.slug) / "run", {**config(app)["options"], "model": "custom"})
    assert proc.returncode != 0
    assert not logs["argv"].exists(), "the server started without a model"
    assert "no custom model is set" in proc.errors


def test_tts_run_defaults(fake_bashio):
    argv, logs = run_server_script(fake_bashio, APPS["tts"])
    assert argv == [
        *APPS["tts"].fixed_argv,
        "--model",
        "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice",
        "--voices-dir",
        "/config/voices",
        "--idle-unload",
        "300",
        "--idle-exit",
        "-1",
        "--threads",
        "0",
        "--voice",
        "ryan",
    ]
    assert logs["mkdir"].read_text().split() == ["-p", "/config/voices"]


def test_tts_run_voice_language_and_switches(fake_bashio):
    argv, _ = run_server_script(
        fake_bashio, APPS["tts"], voice="grandma", language="it", idle_unload=60, preload=True, debug_logging=True
    )
    assert argv == [
        *APPS["tts"].fixed_argv,
        "--model",
        "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice",
        "--voices-dir",
        "/config/voices",
        "--idle-unload",
        "60",
        "--idle-exit",
        "-1",
        "--threads",
        "0",
        "--voice",
        "grandma",
        "--language",
        "it",
        "--preload",
        "--debug",
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_run_with_the_http_api_and_its_key(fake_bashio, kind):
    app = APPS[kind]
    argv, _ = run_server_script(fake_bashio, app, http_api=True, api_key="s3cret")
    assert argv[argv.index("--http") + 1] == f"tcp://0.0.0.0:{app.port + 1}"
    assert argv[argv.index("--api-key") + 1] == "s3cret"
    assert f"{app.port + 1}/tcp" in config(app)["ports"]
    argv, _ = run_server_script(fake_bashio, app)
    assert "--http" not in argv and "--api-key" not in argv


def test_asr_run_with_endpointing(fake_bashio, monkeypatch):
    monkeypatch.delenv("QWEN_ASR_VAD", raising=False)  # the tests' default (tests/wyoming_helpers.py), not the app's
    argv, _ = run_server_script(fake_bashio, APPS["asr"], vad_endpointing=0.8)
    assert argv[argv.index("--vad-endpointing") + 1] == "0.8"
    assert "--vad-endpointing" not in run_server_script(fake_bashio, APPS["asr"])[0]


def test_tts_run_without_voice_leaves_the_servers_default(fake_bashio):
    argv, _ = run_server_script(fake_bashio, APPS["tts"], voice=None)
    assert "--voice" not in argv


@pytest.mark.parametrize("kind", KINDS)
def test_discovery_waits_for_the_port_then_announces(fake_bashio, tmp_path, kind):
    app = APPS[kind]
    script = service_dir(app, "discovery") / "run"
    text = script.read_text()
    target = f"/dev/tcp/localhost/{app.port}"
    assert target in text
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        # bound but not listening yet: connections are refused, as while the server starts
        server.bind(("127.0.0.1", 0))
        test_copy = tmp_path / "discovery-run"
        test_copy.write_text(text.replace(target, f"/dev/tcp/127.0.0.1/{server.getsockname()[1]}"))
        proc, logs = fake_bashio(test_copy, wait=False)
        try:
            time.sleep(0.8)
            assert proc.poll() is None, "discovery did not wait for the server"
            assert not logs["discovery"].exists()
            server.listen(1)
            _, errors = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, errors
        assert "Successfully sent discovery information" in errors
        connection, _ = server.accept()
        with connection:
            connection.settimeout(5)
            assert json.loads(connection.recv(200).decode()) == {"type": "describe"}
    calls = [json.loads(line) for line in logs["discovery"].read_text().splitlines()]
    assert calls == [{"service": "wyoming", "config": {"uri": f"tcp://{FAKE_HOSTNAME}:{app.port}"}}]
