"""The fleet heartbeat: each instance keeps one row with its states, version and last beat.

:class:`Heartbeat` runs on its own thread in every server process, never on a probe's.
Every ``HEALTH_HEARTBEAT_INTERVAL`` seconds it asks the service for a report (cached like
a probe's, so it costs the dependencies nothing more, and it means changes are noticed
and recorded even when nothing probes the instance) and upserts the instance's row.

Several worker processes serve one instance; the update only touches the row when it is
older than half an interval or the states changed, so the database sees about one write
per instance per interval, whatever the number of workers. Once an hour (spread at random
over the fleet) it prunes the timeline past ``HEALTH_HISTORY_DAYS`` in small batches.
"""

from __future__ import annotations

import importlib.metadata
import logging
import random
import threading
import time
import tomllib
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from django.db import DatabaseError, connection
from django.db.models import Q

from health.models import FleetInstance
from health.timeline import as_datetime, prune_timeline

if TYPE_CHECKING:
    from health.service import HealthService

logger = logging.getLogger("health.timeline")

#: Seconds between two prunes of the timeline by one process (the first is at random).
PRUNE_EVERY = 3600.0


@cache
def current_version() -> str:
    """This build's version (the package's, else ``pyproject.toml``'s), for the fleet table."""
    try:
        return importlib.metadata.version("letraz-health")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        with (Path(__file__).resolve().parent.parent / "pyproject.toml").open("rb") as file:
            return str(tomllib.load(file)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def upsert_instance(instance_id: str, status: str, states: dict[str, str], version: str, interval: float) -> None:
    """Record a heartbeat; a no-op write when a sibling worker beat less than half an interval ago."""
    now = as_datetime(time.time())
    changed = (
        FleetInstance.objects.filter(instance_id=instance_id)
        .filter(
            Q(last_seen__lt=now - timedelta(seconds=interval / 2))
            | ~Q(states=states)
            | ~Q(status=status)
            | ~Q(version=version)
        )
        .update(status=status, states=states, version=version, last_seen=now)
    )
    if not changed:
        FleetInstance.objects.get_or_create(
            instance_id=instance_id,
            defaults={"status": status, "states": states, "version": version, "started_at": now, "last_seen": now},
        )


class Heartbeat:
    """The process's heartbeat thread (and its share of the pruning)."""

    def __init__(self, service: HealthService, *, interval: float, history_days: float) -> None:
        self.service = service
        self.interval = interval
        self.history_days = history_days
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._next_prune = time.monotonic() + random.uniform(0, PRUNE_EVERY)  # noqa: S311 (spreading, not secrecy)

    def start(self) -> Heartbeat:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="health-heartbeat", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def beat(self) -> None:
        """One heartbeat: a report, then the instance's row."""
        report = self.service.check()
        try:
            upsert_instance(report.instance_id, report.status.value, report.details, current_version(), self.interval)
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + PRUNE_EVERY
                prune_timeline(self.history_days, pause=lambda: self._stop.wait(0.05))
        except DatabaseError as exc:
            # This thread keeps one connection across beats (a new one per beat would be a
            # database session every interval per worker); a failed one is dropped here.
            connection.close()
            if not self._failing:
                self._failing = True
                logger.warning("fleet: the heartbeat could not be written (%s); retrying", type(exc).__name__)
            return
        if self._failing:
            self._failing = False
            logger.info("fleet: the heartbeat is written again")

    def _run(self) -> None:
        try:
            while True:
                try:
                    self.beat()
                except Exception:  # a bug must not end the heartbeat for the life of the process
                    logger.exception("fleet: the heartbeat failed")
                if self._stop.wait(self.interval):
                    return
        finally:
            connection.close()
