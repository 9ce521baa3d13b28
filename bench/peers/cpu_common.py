"""What the runners of `script/bench cpu-peers` share: a clock that also measures other processes' load, and
the one line each runner prints. Standard library only: the runners run in the peers' environments too.
"""

from __future__ import annotations

import json
import os
import time
import traceback


def busy_seconds() -> float:
    """CPU seconds that the whole machine has been busy, all cores (the first line of /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


class Clock:
    """Wall time of one measured run, and `foreign`: the share of the cores that other processes kept busy
    meanwhile. With every core in use, each runtime here slows down several times when another process
    is busy (their threads wait for each other), so a run with `foreign` above a few hundredths measured
    the machine, not the runtime."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()
        self.busy_started = busy_seconds()

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def record(self, **values) -> dict:
        """`values` plus this run's wall time, own CPU seconds (all threads) and foreign share."""
        wall = self.seconds()
        own = time.process_time() - self.cpu_started
        other = max(0.0, busy_seconds() - self.busy_started - own)
        foreign = other / (wall * (os.cpu_count() or 1))
        return dict(values, total_s=round(wall, 4), cpu_s=round(own, 3), foreign=round(foreign, 3))


def memory_mib() -> dict:
    """This process's memory now, after its runs (MiB): resident, its anonymous and file-backed parts
    (smaps_rollup), and the peak resident size (VmHWM)."""
    values = {}
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if parts[0] in ("Rss:", "Anonymous:"):
                values[parts[0][:-1].lower()] = int(parts[1]) / 1024
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    rss, anonymous = values["rss"], values["anonymous"]
    return dict(rss=round(rss), anonymous=round(anonymous), file=round(rss - anonymous), peak=round(peak))


def report(**row) -> None:
    """The runner's result, one line on stdout that the driver picks out of the native libraries' output,
    with the process's memory."""
    print("RESULT " + json.dumps(dict(row, memory_mib=memory_mib())), flush=True)


def run_reported(row: dict, measure) -> int:
    """`measure()` (a task's list of runs) and the result line, with `row`; an error is the result line too,
    so that one failing system never hides the others. Returns the runner's exit status."""
    try:
        runs = measure()
    except Exception as error:
        traceback.print_exc()
        report(**row, error=f"{type(error).__name__}: {error}")
        return 1
    report(**row, runs=runs)
    return 0
