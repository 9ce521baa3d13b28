"""`--threads` and `--cpu-wait` (shared/cpu_threads.py): the count and the OpenMP wait policy reach the
process that computes, before torch is imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shared import cpu_threads


def _cgroup(tmp_path, v2=None, v1=None):
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(str(v1[0]))
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(str(v1[1]))
    return str(tmp_path)


@pytest.mark.parametrize(
    ("v2", "v1", "cap"),
    [
        ("max 100000\n", None, None),
        ("150000 100000\n", None, 2),  # --cpus 1.5: two threads, the second one part-time
        ("50000 100000\n", None, 1),
        (None, (100000, 100000), 1),
        (None, (-1, 100000), None),
        (None, None, None),
    ],
)
def test_usable_cpus_follows_a_cgroup_quota(tmp_path, monkeypatch, v2, v1, cap):
    monkeypatch.setattr(cpu_threads.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    expected = 4 if cap is None else cap
    assert cpu_threads.usable_cpus(_cgroup(tmp_path, v2, v1)) == expected


def test_apply_sets_the_count_and_the_policy_for_openmp():
    env = {"GOMP_SPINCOUNT": "30000000000"}
    assert cpu_threads.apply(3, "passive", env) == 3
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "3"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["GOMP_SPINCOUNT"] == "0"
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert cpu_threads.apply(0, "brief", env) == cpu_threads.usable_cpus()
    assert "OMP_WAIT_POLICY" not in env and env["GOMP_SPINCOUNT"] == cpu_threads.BRIEF_SPINS
    env = {"GOMP_SPINCOUNT": "500"}  # the user's own count stays
    cpu_threads.apply(1, "brief", env)
    assert env["GOMP_SPINCOUNT"] == "500"
    env = {}
    cpu_threads.apply(1, "active", env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in env
    with pytest.raises(ValueError, match="--cpu-wait must be one of passive, brief, active"):
        cpu_threads.apply(1, "spin", {})
    with pytest.raises(ValueError, match="--threads must be 0"):
        cpu_threads.apply(-1, "passive", {})


def test_torch_imported_after_apply_computes_with_that_many_threads():
    probe = (
        "import json, os, sys\n"
        "from shared import cpu_threads\n"
        "cpu_threads.apply(1, 'passive')\n"
        "import torch\n"
        "print(json.dumps([torch.get_num_threads(), os.environ['OMP_WAIT_POLICY']]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.splitlines()[-1]) == [1, "PASSIVE"]


def test_the_options_parse_from_flags_and_environment(monkeypatch):
    from wyoming_qwen_tts.options import parse_args

    args = parse_args(["--model", "x"])
    assert (args.threads, args.cpu_wait) == (0, "passive")
    monkeypatch.setenv("QWEN_TTS_THREADS", "2")
    monkeypatch.setenv("QWEN_TTS_CPU_WAIT", "active")
    args = parse_args(["--model", "x"])
    assert (args.threads, args.cpu_wait) == (2, "active")
