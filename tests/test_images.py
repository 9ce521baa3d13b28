"""The Docker images, built and run for real by script/test-images (tests/images/check_images.py): the `asr`
and `tts` targets and both add-ons, each run with a tiny checkpoint mounted read-only, answering
`wyoming-qwen-client` from outside, `healthy`, and stopped with exit code 0 within the grace period.

It needs a Docker engine, debootstrap and about 15 GB of free disk, and takes about 10 minutes. Where the
first two cannot be had, the test is skipped with the script's reason; CI sets WYOMING_QWEN_REQUIRE_IMAGES=1
(.ci/run installs both), so there it fails instead."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wyoming_helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
SKIPPED = 77
IMAGES = ("asr", "tts", "addon-asr", "addon-tts")


@pytest.mark.timeout(3600)  # 9 to 15 minutes here; the suite's default is 10
def test_images_build_run_answer_and_stop(tmp_path):
    report = tmp_path / "images.md"
    result = subprocess.run(
        [
            sys.executable,
            ROOT / "tests" / "images" / "check_images.py",
            "--report",
            report,
            "--work",
            tmp_path / "work",
        ],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    output = result.stdout + result.stderr
    if result.returncode == SKIPPED and os.environ.get("WYOMING_QWEN_REQUIRE_IMAGES") != "1":
        pytest.skip(output.strip().splitlines()[-1])
    print(output)
    assert result.returncode == 0, output[-8000:]
    rows = {line.split("|")[1].strip(): line for line in report.read_text().splitlines() if line.startswith("| ")}
    for image in IMAGES:
        cells = [cell.strip() for cell in rows[image].split("|")[1:-1]]
        assert cells[-1] == "0", rows[image]  # exit code after docker stop
        assert float(re.match(r"[\d.]+", cells[5]).group()) <= 10, rows[image]  # the stop, within the grace
    if "starting dockerd" in output:
        # the engine started for the check kept its layers and build cache in the check's folder: all gone
        assert not (tmp_path / "work" / "docker-data").exists(), "the check's Docker data root was left behind"
        assert "could not delete" not in output, output[-2000:]


def test_a_build_without_room_fails_before_it_starts_saying_how_much_it_needs(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tests" / "images"))
    import check_images

    engine = check_images.Engine(tmp_path)
    engine.data_root = tmp_path  # as when the check starts its own dockerd
    checker = check_images.Checker(engine, tmp_path, tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:1/s", False)
    monkeypatch.setattr(check_images, "free_gb", lambda path: 2.0)
    built = []
    monkeypatch.setattr(checker, "build", lambda image, result: built.append(image.name))
    tts = check_images.images(free_port(), free_port())["tts"]
    with pytest.raises(check_images.Failed, match=r"about 15 GB of free disk .*only 2\.0 GB are free"):
        checker.check(tts)
    assert built == []
    monkeypatch.setattr(check_images, "free_gb", lambda path: 100.0)
    checker.check_disk(tts)  # room enough: no complaint
