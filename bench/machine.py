"""CPU accounting from Linux ``/proc``: the server's, PostgreSQL's, and everybody else's.

On a shared 2-core machine another process's burst moves req/s by tens of percent; the
report shows it so that a noisy run is recognised as one, and the server's CPU per
request, which such bursts barely move. PostgreSQL is counted apart: django-health-check
makes it start a backend per request, which is work the bench causes, not noise.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Usage:
    """CPU seconds at one moment: the server's session, PostgreSQL, and the whole machine."""

    server: float
    database: float
    own: float
    machine: float

    @classmethod
    def now(cls, server_sid: int | None) -> Usage:
        server = database = 0.0
        processes = _processes()
        for _pid, (comm, ppid, sid, times) in processes.items():
            utime, stime, cutime, cstime = times
            if server_sid is not None and sid == server_sid:
                server += utime + stime
            elif comm == "postgres":
                parent_is_postgres = processes.get(ppid, ("",))[0] == "postgres"
                # The postmaster's children's times include every backend that exited.
                database += utime + stime + (0 if parent_is_postgres else cutime + cstime)
        return cls(server, database, _own_seconds(), _busy_seconds())

    def until(self, later: Usage) -> tuple[float, float, float]:
        """(server, database, everything else outside the bench) CPU seconds from self to later."""
        server, database = later.server - self.server, later.database - self.database
        rest = (later.machine - self.machine) - server - database - (later.own - self.own)
        return server, database, max(0.0, rest)


def _processes() -> dict[int, tuple[str, int, int, tuple[float, float, float, float]]]:
    """pid -> (comm, ppid, session id, (utime, stime, cutime, cstime) in seconds)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        times = tuple(int(v) / _TICK for v in fields[11:15])
        found[int(entry.name)] = (comm, int(fields[1]), int(fields[3]), times)
    return found  # type: ignore[return-value]


def _busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields)
    return (user + nice + system + irq + softirq + steal) / _TICK


def _own_seconds() -> float:
    """This process (the peers run in it) and its reaped children (wrk, manage.py)."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


@dataclass
class CpuMeter:
    """CPU used between :meth:`start` and :meth:`stop`; see :meth:`Usage.until`."""

    server_sid: int | None
    _start: Usage | None = None

    def start(self) -> CpuMeter:
        self._start = Usage.now(self.server_sid)
        return self

    def stop(self) -> tuple[float, float, float]:
        assert self._start is not None, "start() first"
        return self._start.until(Usage.now(self.server_sid))
