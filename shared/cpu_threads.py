"""`--threads` and `--cpu-wait`: how many threads the models compute with on a CPU, and what those threads do
while they wait for each other.

PyTorch's CPU kernels run on an OpenMP pool. By default its threads spin at every barrier (libgomp:
300,000 turns; 30 billion with OMP_WAIT_POLICY=active) before they sleep. That is the fastest choice on
an idle machine and the worst on a busy one: when another multi-threaded process (our own other server,
a second model, a backup job) holds one of the cores, a spinning thread burns the time slice its
partner needs, and every operator waits for the slowest thread. `script/bench cpu-load` at the real
0.6B shape, 2 threads on 2 cores, settings taking turns, beside a 2-thread matrix-multiply neighbour
with spinning threads, loaded time / quiet time: PyTorch's default TTS 33, ASR 4.1; brief (10,000
turns, then sleep) 2.9 and 2.9; passive (sleep at once, the default) 1.5 and 1.9. Passive costs about
10% against spinning on the idle machine (TTS 0.91, ASR 0.88 of its time spinning).

Both settings reach OpenMP through the environment, which it reads once when PyTorch is first imported,
so `apply` runs before any import of torch, in the process the user starts; a worker process inherits
the environment from its gateway.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Optional

_LOGGER = logging.getLogger(__name__)

WAIT_POLICIES = ("passive", "brief", "active")
BRIEF_SPINS = "10000"  # libgomp turns before a waiting thread sleeps: some microseconds
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The CPUs this process may run on: its affinity, lowered by a cgroup CPU quota (`docker run --cpus`,
    a NAS's container limit), which the affinity does not show."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_quota(root: str) -> Optional[float]:
    """CPUs granted by the cgroup (v2 `cpu.max`, or v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`); None: no
    limit."""
    try:
        with open(os.path.join(root, "cpu.max"), encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us"), encoding="ascii") as f:
            quota_us = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us"), encoding="ascii") as f:
            period_us = int(f.read())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 else quota_us / period_us


def apply(threads: int, wait_policy: str, environ=os.environ) -> int:
    """Set the thread count (0: `usable_cpus()`) and the OpenMP wait policy for this process and the
    workers it starts. Returns the thread count. Must run before torch is imported."""
    if wait_policy not in WAIT_POLICIES:
        raise ValueError(f"--cpu-wait must be one of {', '.join(WAIT_POLICIES)}, not {wait_policy!r}")
    if threads < 0:
        raise ValueError(f"--threads must be 0 (all usable CPUs) or more, not {threads}")
    count = threads or usable_cpus()
    for name in THREAD_VARIABLES:
        environ[name] = str(count)
    if wait_policy == "brief":
        environ.pop("OMP_WAIT_POLICY", None)
        environ.setdefault("GOMP_SPINCOUNT", BRIEF_SPINS)  # a count the user set is kept
    else:
        environ["OMP_WAIT_POLICY"] = wait_policy.upper()
        if wait_policy == "passive":
            # libgomp lets GOMP_SPINCOUNT, where it is set, override the policy
            environ["GOMP_SPINCOUNT"] = "0"
    return count


def torch_threads(count: int) -> None:
    """Make the already imported torch use `count` threads (it read OMP_NUM_THREADS when imported; this
    also covers a torch imported before `apply`, as in tests)."""
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
