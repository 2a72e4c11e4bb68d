"""The machine the benchmark runs on, and CPU time read from /proc.

CPU time is user + system time from ``/proc/<pid>/stat`` (clock ticks, usually
10 ms), so it counts a process's threads and is readable for processes that
are not our children (PostgreSQL's, as root). PostgreSQL's CPU is the sum over
every process whose ``comm`` is ``postgres`` and, once :func:`use_server` has
named the benchmark's server, whose parent is that server's postmaster: the
backends serving the deliverers and the producers, and the WAL writer,
checkpointer, background writer and autovacuum working for them, but not
another PostgreSQL running on the same machine. Processes that exit between
two readings are missed, and other databases' activity on a shared server is
counted: readings on a shared server are an upper bound.
"""

import os
import platform
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_server: int | None = None  # the postmaster whose processes postgres_cpu counts; None: every postgres


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, …), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2:].split()  # comm may contain spaces


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``; 0 if it is gone."""
    fields = _stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / _TICK


def parent(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def use_server(backend_pid: int) -> None:
    """Count only the server that runs backend ``backend_pid`` (its postmaster's processes) from now on.

    A remote server's backends are not in /proc: then every local postgres is counted, as before.
    """
    global _server
    try:
        local = Path(f"/proc/{backend_pid}/comm").read_text().strip() == "postgres"
    except OSError:
        local = False
    _server = parent(backend_pid) if local else None


def peak_rss_mib(pid: int) -> float:
    """The most memory process ``pid`` has had resident (VmHWM), in MiB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def postgres_cpu() -> dict[int, float]:
    """CPU seconds per pid of every process named ``postgres`` (of the server named by use_server)."""
    usage = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if Path(entry.path, "comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue
        pid = int(entry.name)
        if _server is not None and pid != _server and parent(pid) != _server:
            continue
        usage[pid] = process_cpu(pid)
    return usage


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings of :func:`postgres_cpu`, counting processes born in between from 0."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def postgres_kind(pid: int) -> str:
    """What a postgres process is, from its title: "walwriter", "autovacuum worker", "io worker"…, or "backend"."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "gone"
    if not title.startswith("postgres: "):
        return "postmaster"
    words = title[len("postgres: "):].split()
    for kind in ("checkpointer", "background writer", "walwriter", "autovacuum launcher", "autovacuum worker",
                 "io worker", "logical replication launcher", "walsummarizer", "archiver", "startup"):
        if " ".join(words[:len(kind.split())]) == kind:
            return kind
    return "backend"


def cpu_delta_by_kind(before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """:func:`cpu_delta` split by :func:`postgres_kind` (kinds taken now: run it right after ``after``)."""
    kinds: dict[str, float] = {}
    for pid, cpu in after.items():
        kind = postgres_kind(pid)
        kinds[kind] = kinds.get(kind, 0.0) + cpu - before.get(pid, 0.0)
    return kinds


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
