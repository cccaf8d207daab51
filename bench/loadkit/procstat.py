"""What the kernel says about a process: resident memory and CPU time, from /proc."""

from __future__ import annotations

import asyncio
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


def parse_machine_busy_ticks(text: str) -> int:
    """Busy clock ticks of all cores from the `cpu` line of /proc/stat (idle, iowait out)."""
    fields = [int(x) for x in text.splitlines()[0].split()[1:]]
    return sum(fields[:8]) - fields[3] - fields[4]


def machine_busy_seconds() -> float:
    return parse_machine_busy_ticks(Path("/proc/stat").read_text()) / CLOCK_TICKS


class CpuMeter:
    """CPU use of named processes over a window, in percent of one core, plus `machine`
    (every process on the box) and `others` (machine minus ours: the background load of a
    shared machine, which the numbers must be read against)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}
        self._machine = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._machine = machine_busy_seconds()
        self._start = {name: _cpu_or_nan(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        used = {
            name: 100.0 * (_cpu_or_nan(pid) - self._start[name]) / elapsed
            for name, pid in self.pids.items()
        }
        machine = 100.0 * (machine_busy_seconds() - self._machine) / elapsed
        ours = sum(v for v in used.values() if v == v)  # NaN != NaN: skip dead processes
        used["machine"] = machine
        used["others"] = max(machine - ours, 0.0)
        return {name: round(value, 1) for name, value in used.items()}


async def wait_for_quiet(
    below_percent: float, window_s: float = 3.0, timeout_s: float = 600.0
) -> tuple[float, float]:
    """On a shared machine, wait (bounded) until everything else running uses less than
    `below_percent` (of one core) over a window; (busy percent last seen, seconds waited)."""
    started = time.monotonic()
    busy = float("nan")
    while time.monotonic() - started < timeout_s:
        before = machine_busy_seconds()
        await asyncio.sleep(window_s)
        busy = 100.0 * (machine_busy_seconds() - before) / window_s
        if busy < below_percent:
            break
    return busy, time.monotonic() - started


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
