"""A clear start-up message where this CPU cannot run PyTorch, instead of "Illegal instruction".

PyTorch's x86 builds pick AVX2 or AVX-512 kernels at run time, but parts of them have needed AVX or AVX2
unconditionally (pytorch#37577, #43300), and some NAS CPUs (Celeron, Atom, older Pentium) have neither.
Reading /proc/cpuinfo costs nothing; only when AVX2 is missing does a short torch probe run in a child
process, because a process killed by SIGILL cannot report anything itself.
"""

from __future__ import annotations

import logging
import platform
import signal
import subprocess
import sys
from typing import List, Optional, Sequence

_LOGGER = logging.getLogger(__name__)

NEEDED = ("avx", "avx2")  # what PyTorch's x86 kernels use; AVX-512 is optional
PROBE = "import torch; (torch.ones(256, 256) @ torch.ones(256, 256)).sum().item()"


def read_cpuinfo(path: str = "/proc/cpuinfo") -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def missing_instructions(cpuinfo: str) -> List[str]:
    """The x86 instruction sets PyTorch uses that this CPU lacks ([] where unknown or not x86)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return [name for name in NEEDED if name not in flags]
    return []


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "this CPU"


def sigill_explanation(cpuinfo: Optional[str] = None) -> str:
    cpuinfo = read_cpuinfo() if cpuinfo is None else cpuinfo
    missing = missing_instructions(cpuinfo) or ["an instruction set"]
    return (
        f"{cpu_model(cpuinfo)} lacks {' and '.join(m.upper() for m in missing)}, which this PyTorch build needs "
        "(it stopped with 'Illegal instruction'): the models cannot run on this machine. Run the server on "
        "a machine whose CPU has AVX2 (most x86 CPUs since 2013) and add it to Home Assistant by host and port."
    )


def check_cpu(cpuinfo: Optional[str] = None, probe: Sequence[str] = (sys.executable, "-c", PROBE)) -> Optional[str]:
    """None when PyTorch can run here, else one line that says why not."""
    if platform.machine().lower() not in ("x86_64", "amd64") and cpuinfo is None:
        return None
    cpuinfo = read_cpuinfo() if cpuinfo is None else cpuinfo
    missing = missing_instructions(cpuinfo)
    if not missing:
        return None
    try:
        result = subprocess.run(list(probe), capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None  # the probe could not run: let the worker start and report for itself
    if result.returncode == -signal.SIGILL:
        return sigill_explanation(cpuinfo)
    _LOGGER.warning(
        "%s lacks %s: PyTorch runs on its generic kernels here, which are several times slower",
        cpu_model(cpuinfo),
        " and ".join(m.upper() for m in missing),
    )
    return None
