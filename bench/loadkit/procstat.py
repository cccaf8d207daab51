"""What the kernel says about a process: resident memory and CPU time, from /proc."""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Mapping
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_status_kib(text: str, field: str) -> int:
    """A `VmRSS:  1234 kB` style line of /proc/<pid>/status, in KiB."""
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def parse_stat_cpu_ticks(text: str) -> int:
    """utime + stime (clock ticks) from /proc/<pid>/stat; the name may contain spaces."""
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is the state (field 3 of the man page): utime and stime are fields 14, 15.
    return int(fields[11]) + int(fields[12])


def rss_kib(pid: int) -> int:
    return parse_status_kib(Path(f"/proc/{pid}/status").read_text(), "VmRSS")


def peak_rss_kib(pid: int) -> int:
    return parse_status_kib(Path(f"/proc/{pid}/status").read_text(), "VmHWM")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) used by a live process so far."""
    return parse_stat_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / CLOCK_TICKS


class CpuMeter:
    """CPU use of named processes over a window, in percent of one core."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = {name: _cpu_or_nan(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        return {
            name: round(100.0 * (_cpu_or_nan(pid) - self._start[name]) / elapsed, 1)
            for name, pid in self.pids.items()
        }


def _cpu_or_nan(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except (OSError, ValueError):
        return float("nan")


def machine() -> dict[str, str | int]:
    meminfo = Path("/proc/meminfo").read_text()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count() or 0,
        "memory_mib": parse_status_kib(meminfo, "MemTotal") // 1024,
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def raise_nofile(wanted: int = 65536) -> int:
    """Lift the soft open-files limit as far as the hard limit allows (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft
