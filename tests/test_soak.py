"""A short soak: `script/bench soak`'s own code (bench/soak.py) with 60 mixed requests, bad inputs among
them, against one ASR and one TTS server process each."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import soak

pytestmark = pytest.mark.asyncio

REQUESTS = 60  # every third is bad: 20 bad inputs, one round of all 20 kinds


async def test_soak_60_mixed_requests(tiny_dir, tmp_path):
    lines = []

    def log(line: str) -> None:
        lines.append(line)
        print(line)

    report = await soak.soak(REQUESTS, seed=0, tiny_dir=str(tiny_dir), workdir=tmp_path, log=log, progress_every=0)

    assert not report.real_failures, "\n".join(report.real_failures)
    real = sum(n for kind, counts in report.outcomes.items() if not kind.startswith("bad:") for n in counts.values())
    assert real == REQUESTS - REQUESTS // soak.BAD_EVERY
    # every kind of bad input was tried, each got what it should
    tried = set(report.bad_seen)
    assert tried == {f"{name}@{server}" for name, server, _expected, _run in soak.BAD_INPUTS}
    assert not report.unexpected, "\n".join(report.unexpected)
    assert report.final_check == {"asr": "ok", "tts": "ok"}
    assert report.workers_kept, "a worker was restarted during the soak"
    # the memory figures are printed; 60 requests say nothing of a leak, so only a sanity bound: a
    # worker that doubled its memory (it keeps one tiny model) or a gateway past 1.5x is wrong
    assert any("gateway RSS growth" in line for line in lines) and any("worker RSS growth" in line for line in lines)
    for name in ("asr", "tts"):
        first, last = report.memory[name]["first"], report.memory[name]["last"]
        assert last.worker_kib <= 1.5 * first.worker_kib, (name, first, last)
        assert last.gateway_kib <= 1.5 * first.gateway_kib, (name, first, last)
    assert report.passed
