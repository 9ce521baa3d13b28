"""The shared package: CLI and environment variables, model resolution, the environment itself."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.model_store import ModelNotAvailable, resolve_model

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, **kwargs) -> subprocess.CompletedProcess:
    """`python -c code` in a fresh interpreter (what it imports is its own); it must succeed."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_every_option_reads_its_environment_variable(monkeypatch):
    from wyoming_qwen_asr.options import parse_args

    monkeypatch.setenv("QWEN_ASR_IDLE_UNLOAD", "5")
    monkeypatch.setenv("QWEN_ASR_PRELOAD", "true")
    monkeypatch.setenv("QWEN_ASR_DATA_DIR", "/a,/b")
    monkeypatch.setenv("QWEN_ASR_LANGUAGE", "de")
    monkeypatch.setenv("QWEN_ASR_CHUNK_SECONDS", "1.5")
    args = parse_args([])
    assert args.idle_unload == 5 and args.preload is True and args.data_dir == ["/a", "/b"]
    assert args.language == "de" and args.chunk_seconds == 1.5
    assert args.uri == "tcp://0.0.0.0:10300"
    # the command line wins over the environment
    assert parse_args(["--idle-unload", "-1", "--data-dir", "/c", "--data-dir", "/d"]).data_dir == ["/c", "/d"]
    assert parse_args(["--idle-unload", "-1"]).idle_unload == -1


def test_bad_options_fail_with_a_message(capsys):
    from wyoming_qwen_asr.options import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--language", "tlh"])
    assert "not supported" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--chunk-seconds", "0"])


def test_auto_model_follows_the_device():
    from wyoming_qwen_asr.info import choose_model

    assert choose_model("auto", "cpu") == "Qwen/Qwen3-ASR-0.6B"
    assert choose_model("auto", "cuda:1") == "Qwen/Qwen3-ASR-1.7B"
    assert choose_model("/models/asr", "cuda") == "/models/asr"


def test_local_directory_is_used_as_is(tmp_path):
    assert resolve_model(str(tmp_path)) == tmp_path


def test_local_files_only_says_how_to_fix_a_missing_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotAvailable, match="--local-files-only"):
        resolve_model("Qwen/Qwen3-ASR-0.6B", [str(tmp_path / "data")], local_files_only=True)


def test_model_in_a_data_dir_is_found_without_download(tmp_path):
    snapshot = tmp_path / "models--Qwen--Qwen3-ASR-0.6B" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--Qwen--Qwen3-ASR-0.6B" / "refs").mkdir()
    (tmp_path / "models--Qwen--Qwen3-ASR-0.6B" / "refs" / "main").write_text("abc123")
    found = resolve_model("Qwen/Qwen3-ASR-0.6B", [str(tmp_path / "elsewhere"), str(tmp_path)], local_files_only=True)
    assert found == snapshot


def test_download_goes_to_first_data_dir_with_progress_in_the_log(tmp_path, monkeypatch, caplog):
    """The hub cannot be reached here, so its download function is replaced (a mock of the hub only)."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, cache_dir=None, local_files_only=False, tqdm_class=None, **_kw):
        calls.append((repo_id, cache_dir, local_files_only))
        if local_files_only:
            raise FileNotFoundError(repo_id)
        target = Path(cache_dir) / "snap"
        target.mkdir(parents=True)
        (target / "model.safetensors").write_bytes(b"0" * 1000)
        bar = tqdm_class(total=3, unit="files")
        for _ in range(3):
            bar.update(1)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with caplog.at_level(logging.INFO, logger="shared.model_store"):
        path = resolve_model("Qwen/Qwen3-ASR-0.6B", [str(tmp_path / "one"), str(tmp_path / "two")])
    assert path == tmp_path / "one" / "snap"
    assert calls[-1] == ("Qwen/Qwen3-ASR-0.6B", str(tmp_path / "one"), False)
    assert "Downloading Qwen/Qwen3-ASR-0.6B: 3/3 files" in caplog.text
    assert "Downloaded Qwen/Qwen3-ASR-0.6B" in caplog.text


def test_both_qwen_packages_work_in_this_environment(tmp_path):
    """qwen-asr and qwen-tts pin different transformers; script/setup installs both (README)."""
    code = (
        "import qwen_asr, qwen_tts, transformers, torch, torchaudio\n"
        "from qwen_asr import Qwen3ASRModel\n"
        "from qwen_tts import Qwen3TTSModel\n"
        "print(transformers.__version__)\n"
    )
    result = run_python(code, timeout=300)
    assert result.stdout.strip().endswith("4.57.6")


def test_describe_path_never_imports_torch():
    code = (
        "import sys\n"
        "from wyoming_qwen_asr.options import parse_args\n"
        "from wyoming_qwen_asr.app import create_app\n"
        "from wyoming_qwen_asr.handler import AsrEventHandler\n"
        "from wyoming_qwen_asr.kind import KIND\n"
        "app = create_app(parse_args(['--model', 'Qwen/Qwen3-ASR-0.6B']))\n"
        "app.describe()\n"
        "KIND.describer(KIND.parse_args(['--model', 'Qwen/Qwen3-ASR-0.6B']))()\n"
        "heavy = [m for m in ('torch', 'transformers', 'qwen_asr', 'qwen_tts') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = run_python(code, cwd=ROOT, timeout=120)
    assert result.stdout.strip() == "[]"


def test_tts_describe_path_stays_light_for_a_hub_model(tmp_path):
    """The gateway's TTS describe finds a cached model's speakers without torch or huggingface_hub."""
    repo = tmp_path / "models--Qwen--Qwen3-TTS-12Hz-0.6B-CustomVoice"
    (repo / "snapshots" / "rev1").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("rev1")
    (repo / "snapshots" / "rev1" / "config.json").write_text(
        '{"talker_config": {"spk_id": {"zed": 1}, "codec_language_id": {"english": 2}}}'
    )
    code = (
        "import sys\n"
        "from wyoming_qwen_tts.kind import KIND\n"
        "from wyoming.info import Info\n"
        f"args = KIND.parse_args(['--device', 'cpu', '--data-dir', {str(tmp_path)!r}])\n"
        "voices = [v.name for v in Info.from_event(KIND.describer(args)()).tts[0].voices]\n"
        "heavy = [m for m in ('torch', 'numpy', 'huggingface_hub', 'qwen_tts') if m in sys.modules]\n"
        "print(voices, heavy)\n"
    )
    result = run_python(code, cwd=ROOT, timeout=120)
    assert result.stdout.strip() == "['zed'] []"


@pytest.mark.parametrize(
    "variables",
    [
        {},
        {"XDG_CACHE_HOME": "{tmp}/xdg"},
        {"HF_HOME": "{tmp}/hf-home", "XDG_CACHE_HOME": "{tmp}/xdg"},
        {"HUGGINGFACE_HUB_CACHE": "{tmp}/legacy", "HF_HOME": "{tmp}/hf-home"},
        {"HF_HUB_CACHE": "{tmp}/hub", "HUGGINGFACE_HUB_CACHE": "{tmp}/legacy", "HF_HOME": "{tmp}/hf-home"},
        {"HF_HOME": "~/hf-tilde"},
    ],
    ids=["default", "XDG_CACHE_HOME", "HF_HOME", "HUGGINGFACE_HUB_CACHE", "HF_HUB_CACHE", "tilde"],
)
def test_cache_lookup_follows_huggingface_hub(variables, tmp_path):
    """Our torch-free cache lookup names the folder huggingface_hub itself uses, for each variable."""
    names = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update({k: v.format(tmp=tmp_path) for k, v in variables.items()})
    code = (
        "import sys\n"
        "from shared.hub_cache import default_hub_cache\n"
        "ours = str(default_hub_cache())\n"
        "assert 'huggingface_hub' not in sys.modules\n"
        "from huggingface_hub import constants\n"
        "print(ours == constants.HF_HUB_CACHE, ours)\n"
    )
    result = run_python(code, env=env, timeout=60)
    assert result.stdout.startswith("True "), result.stdout
    if variables:
        assert str(tmp_path) in result.stdout or "hf-tilde" in result.stdout


def test_a_model_in_the_default_cache_is_found_by_describe_and_the_loader(tmp_path, monkeypatch):
    """The gateway's describe and the worker's loader look in the same cache (HF_HOME here)."""
    from wyoming_qwen_tts.voices import read_model_config

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / "hub" / "models--Qwen--Qwen3-TTS-12Hz-0.6B-CustomVoice"
    (repo / "snapshots" / "r1").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("r1")
    (repo / "snapshots" / "r1" / "config.json").write_text('{"talker_config": {"spk_id": {"zed": 1}}}')
    model = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
    assert read_model_config(model)["talker_config"]["spk_id"] == {"zed": 1}
    assert resolve_model(model, [str(tmp_path / "empty")], local_files_only=True) == repo / "snapshots" / "r1"


async def test_a_worker_keeps_its_last_model_and_unloads_the_others_on_their_timers():
    """Behind the gateway the worker's last model goes with the worker (one owner per decision);
    with --no-gateway every model is unloaded on its own timer."""
    import asyncio

    from shared.model_manager import ModelManager

    for behind_gateway in (True, False):
        manager = ModelManager(keep_last_loaded=behind_gateway)
        for key in ("one", "two"):
            manager.register(key, lambda: object(), idle_unload=0.2)
        for key in ("one", "two"):
            async with manager.use(key) as handle:
                await handle.run(lambda model: model)
        await asyncio.sleep(1.0)
        loaded = [key for key in ("one", "two") if manager.is_loaded(key)]
        assert len(loaded) == (1 if behind_gateway else 0), (behind_gateway, loaded)
        await manager.close()


async def test_the_memory_malloc_kept_goes_back_once_requests_stop(monkeypatch):
    """TRIM_AFTER seconds after the last request, malloc's kept memory is handed back, on the inference
    thread; a request that comes first puts it off."""
    import asyncio
    import threading

    from shared import model_manager

    trims = []
    real = model_manager.trim_host_memory
    monkeypatch.setattr(model_manager, "TRIM_AFTER", 0.3)
    monkeypatch.setattr(model_manager, "trim_host_memory", lambda: trims.append(threading.current_thread()) or real())
    manager = model_manager.ModelManager()
    manager.register("one", lambda: object(), idle_unload=-1)
    async with manager.use("one") as handle:
        inference_thread = await handle.run(lambda _model: threading.current_thread())
    await asyncio.sleep(0.1)
    async with manager.use("one") as handle:  # within TRIM_AFTER: the trim waits for this one to end
        await asyncio.sleep(0.4)
        assert trims == []
    await asyncio.sleep(0.6)
    assert trims == [inference_thread]
    await manager.close()


async def test_a_model_settles_once_idle_with_its_kernels_ready(monkeypatch):
    """A loaded model's `settle()` (its weights to file pages) runs once, on the inference thread, when the
    server has been idle for TRIM_AFTER seconds and the model's kernels are prepared; not again after."""
    import asyncio
    import threading

    from shared import model_manager

    monkeypatch.setattr(model_manager, "TRIM_AFTER", 0.2)

    class Packing:
        done = False

    class Model:
        packing = Packing()
        settled_on = []

        def prepare_step(self) -> bool:
            return False

        def settle(self) -> str:
            self.settled_on.append(threading.current_thread().name)
            return "settled"

    manager = model_manager.ModelManager()
    manager.register("one", Model, idle_unload=-1)
    async with manager.use("one") as handle:
        await handle.run(lambda _model: None)
    await asyncio.sleep(0.6)
    assert Model.settled_on == []  # its kernels are not ready yet
    Packing.done = True
    for _ in range(2):
        async with manager.use("one") as handle:
            await handle.run(lambda _model: None)
        await asyncio.sleep(0.6)
    assert len(Model.settled_on) == 1 and Model.settled_on[0].startswith("inference")
    await manager.close()


async def test_a_stopping_server_queues_no_more_background_work():
    """On SIGTERM (shared/server.py) the kernels' preparation stops after its current step: a step that
    started while the interpreter exits would abort the process."""
    import asyncio
    import time

    from shared.model_manager import ModelManager

    steps = []

    class Model:
        def prepare_step(self) -> bool:
            steps.append(time.monotonic())
            time.sleep(0.05)
            return True  # never done

    manager = ModelManager()
    manager.register("one", Model, idle_unload=-1)
    async with manager.use("one") as handle:
        await handle.run(lambda _model: None)
    await asyncio.sleep(0.3)
    assert len(steps) >= 3 and manager.background_busy
    manager.stop_background_work()
    while manager.background_busy:
        await asyncio.sleep(0.01)
    stopped = len(steps)
    await asyncio.sleep(0.3)
    assert len(steps) == stopped
    await manager.close()


def test_reply_trackers_say_when_a_client_waits():
    from shared.gateway import ReplyTracker
    from wyoming_qwen_asr.kind import KIND as ASR
    from wyoming_qwen_tts.kind import KIND as TTS

    def waits(tracker, *events):
        """Whether the client waits after each event: client events plain, worker events as '<name'."""
        state, states = False, []
        for event in events:
            if event.startswith("<"):
                state = state and not tracker.worker_sent(event[1:])
            else:
                state = state or tracker.client_sent(event)
            states.append(state)
        return states

    assert waits(ReplyTracker(), "ping", "<pong", "make-coffee") == [True, False, False]
    assert waits(ASR.reply_tracker(), "transcribe", "audio-start", "audio-stop", "<transcript", "<transcript-stop") == [
        False,
        False,
        True,
        True,
        False,
    ]
    # one-shot: audio-stop ends it; streamed: the compat `synthesize` does not start the wait, and the
    # stream's audio-stop does not end it
    assert waits(TTS.reply_tracker(), "synthesize", "<audio-start", "<audio-stop") == [True, True, False]
    assert waits(
        TTS.reply_tracker(),
        "synthesize-start",
        "synthesize",
        "synthesize-stop",
        "<audio-stop",
        "<synthesize-stopped",
        "synthesize",
    ) == [False, False, True, True, False, True]


CPUINFO = "processor\t: 0\nmodel name\t: Intel(R) Celeron(R) J4125 CPU @ 2.00GHz\nflags\t\t: fpu sse sse2 {extra}\n"
SIGILL_PROBE = (sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")


def test_a_cpu_that_cannot_run_torch_is_named_in_one_line(tmp_path):
    from shared.cpu_check import check_cpu, missing_instructions

    assert missing_instructions(CPUINFO.format(extra="avx avx2 avx512f")) == []
    assert missing_instructions(CPUINFO.format(extra="avx")) == ["avx2"]
    problem = check_cpu(CPUINFO.format(extra="sse4_2"), probe=SIGILL_PROBE)
    assert problem is not None and "\n" not in problem
    assert "Celeron(R) J4125" in problem and "lacks AVX and AVX2" in problem and "Illegal instruction" in problem
    # a probe that runs: only slower, no refusal
    assert check_cpu(CPUINFO.format(extra="avx"), probe=(sys.executable, "-c", "pass")) is None
    # with AVX2 present no probe runs at all
    marker = tmp_path / "probed"
    probe = (sys.executable, "-c", f"open({str(marker)!r}, 'w')")
    assert check_cpu(CPUINFO.format(extra="avx avx2"), probe=probe) is None and not marker.exists()


def test_the_server_refuses_to_start_on_such_a_cpu_with_that_line(monkeypatch, caplog):
    import shared.cpu_check
    from shared.launcher import main
    from wyoming_qwen_asr.kind import KIND

    monkeypatch.setattr(shared.cpu_check, "check_cpu", lambda: "This CPU lacks AVX2, which this PyTorch build needs")
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        main(KIND, ["--uri", "tcp://127.0.0.1:0"])
    assert exit_info.value.code == 1
    assert "lacks AVX2" in caplog.text


async def test_a_worker_killed_by_an_illegal_instruction_is_explained(tmp_path, monkeypatch):
    from shared.supervisor import WorkerSupervisor, WorkerUnavailable

    (tmp_path / "sigill_worker.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    supervisor = WorkerSupervisor("sigill_worker", [])
    with pytest.raises(WorkerUnavailable, match="Illegal instruction"):
        await supervisor.start()


def test_auto_dtype_is_bfloat16_only_where_the_gpu_computes_it(monkeypatch):
    """The GPU is mocked (there is none here): its compute capability decides."""
    import torch

    from shared.devices import resolve_dtype

    assert resolve_dtype("auto", "cpu") == torch.float32
    for capability, expected in (((9, 0), torch.bfloat16), ((8, 6), torch.bfloat16), ((7, 5), torch.float16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert resolve_dtype("auto", "cuda:0") == expected, capability
    assert resolve_dtype("float32", "cuda:0") == torch.float32


def test_attention_is_flash_only_where_it_can_run(monkeypatch):
    import importlib.util

    import torch

    from shared.devices import attention_implementation

    real_find_spec = importlib.util.find_spec
    for installed in (False, True):
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a, i=installed: object() if name == "flash_attn" and i else real_find_spec(name, *a),
        )
        assert attention_implementation("cpu", torch.float32) == "sdpa"
        assert attention_implementation("cuda:0", torch.float32) == "sdpa"
        assert attention_implementation("cuda:0", torch.bfloat16) == ("flash_attention_2" if installed else "sdpa")
