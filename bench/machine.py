"""The machine the benchmark runs on, and CPU time read from /proc.

CPU time is user + system time from ``/proc/<pid>/stat`` (clock ticks, usually
10 ms), so it counts a process's threads and is readable for processes that
are not our children (PostgreSQL's, as root). PostgreSQL's CPU is the sum over
every process whose ``comm`` is ``postgres``: the backends serving the
deliverers and the producers, and the WAL writer, checkpointer, background
writer and autovacuum working for them. Processes that exit between two
readings are missed, and other databases' activity on a shared server is
counted: readings on a shared server are an upper bound.
"""

import os
import platform
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()  # comm may contain spaces
    return (int(fields[11]) + int(fields[12])) / _TICK


def postgres_cpu() -> dict[int, float]:
    """CPU seconds per pid of every process named ``postgres``."""
    usage = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if Path(entry.path, "comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue
        usage[int(entry.name)] = process_cpu(int(entry.name))
    return usage


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings of :func:`postgres_cpu`, counting processes born in between from 0."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(pg_version: str) -> dict[str, object]:
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "architecture": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": pg_version,
    }
