"""The incident timeline's writer: a listener that never makes a probe wait for the database.

:class:`TimelineRecorder` is a :class:`~health.runner.HealthListener`. ``on_change`` only
appends an :class:`Observation` (with the wall-clock time the change was observed) to a
bounded in-memory buffer and wakes the recorder's own writer thread, so a slow or dead
database never holds the notifier (or the listeners after this one).

The writer drains the buffer in one transaction per batch. When the database does not
answer (it may be the very component that failed), the observations stay buffered and
are written, with their original times, once it answers again; retries back off up to
:data:`MAX_RETRY_DELAY`. When the buffer is full, newer observations are not kept but
counted: once the database answers, a ``gap`` row records how many were lost and when,
followed by the last lost state of each component, so the timeline ends in the true
state and nothing disappears silently. One log line when writing starts failing, one
when it recovers, one when changes start being lost.

Rows are deduplicated per instance under a row lock on the instance's fleet row: every
worker process of an instance observes the same dependencies, and the first to record a
state wins. ``previous_duration`` comes from the timeline itself (the instance's row
before this one), so durations stay right across restarts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import DatabaseError, connection, transaction

from health.models import INSTANCE, FleetInstance, TimelineEvent, TimelineKind, TimelineRollup
from health.runner import CheckResult

logger = logging.getLogger("health.timeline")

#: Changes kept in memory while the database does not answer.
BUFFER_CAPACITY = 1000
#: Retries after a failed write wait twice as long each time, up to this many seconds.
MAX_RETRY_DELAY = 5.0
FIRST_RETRY_DELAY = 0.2
#: What ``reason`` may hold; the checks' reasons are short and carry no secrets.
MAX_REASON = 200
HOUR = 3600.0
STARTED = "STARTED"
LOST = "LOST"

#: One id per start of the server: made when the app loads, which gunicorn's master does
#: (``on_starting`` runs ``django.setup()``) before it forks, so every worker of one
#: start shares it and a restart makes a new one. Tells "a sibling worker" from "a restart".
BOOT_ID = uuid.uuid4().hex


def wall_time(observed_at: float, *, monotonic: Callable[[], float] = time.monotonic) -> float:
    """The wall-clock time of a result whose ``observed_at`` is on the monotonic clock."""
    return time.time() - max(0.0, monotonic() - observed_at)


def as_datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@dataclass(frozen=True)
class Observation:
    """A change as the instance saw it, waiting to be written."""

    component: str
    status: str
    at: float
    reason: str = ""
    kind: str = TimelineKind.CHANGE


@dataclass
class Losses:
    """What did not fit in the buffer: counted, and the last state of each component kept."""

    count: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    latest: dict[str, Observation] = field(default_factory=dict)

    def add(self, observation: Observation) -> None:
        if not self.count:
            self.first_at = observation.at
        self.count += 1
        self.last_at = observation.at
        if observation.kind == TimelineKind.CHANGE:
            self.latest[observation.component] = observation

    def then(self, later: Losses) -> Losses:
        """These losses followed by ``later`` ones (a write that failed puts its own back)."""
        if not later.count:
            return self
        if not self.count:
            return later
        return Losses(self.count + later.count, self.first_at, later.last_at, self.latest | later.latest)


class TimelineRecorder:
    """Writes each change of state to the timeline from its own thread (a HealthListener)."""

    def __init__(
        self,
        instance_id: str,
        *,
        boot_id: str = BOOT_ID,
        capacity: int = BUFFER_CAPACITY,
        on_written: Callable[[], None] | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.boot_id = boot_id
        self.capacity = capacity
        self._on_written = on_written
        self._buffer: deque[Observation] = deque()
        self._losses = Losses()
        self._condition = threading.Condition()
        self._writing = False
        self._stopping = False
        self._failing = False
        self._losing = False
        self._thread: threading.Thread | None = None

    # -- the listener side: never blocks ------------------------------------------------

    def on_result(self, result: CheckResult) -> None:
        """Every observation: nothing to record unless the state changed."""

    def on_change(self, previous: CheckResult | None, result: CheckResult) -> None:
        self.record(
            Observation(
                result.component.value,
                str(result.status),
                wall_time(result.observed_at),
                reason=result.reason[:MAX_REASON],
            )
        )

    def record_start(self) -> None:
        """This process started; written as a ``start`` row unless a sibling worker already did."""
        self.record(Observation(INSTANCE, STARTED, time.time(), kind=TimelineKind.START))

    def record(self, observation: Observation) -> None:
        with self._condition:
            if len(self._buffer) >= self.capacity:
                if not self._losing:
                    self._losing = True
                    logger.warning(
                        "timeline: %d changes wait for the database; further changes are counted and recorded as a gap",
                        self.capacity,
                    )
                self._losses.add(observation)
            else:
                self._buffer.append(observation)
            self._condition.notify_all()

    @property
    def pending(self) -> int:
        """Changes not written yet (buffered plus lost)."""
        with self._condition:
            return len(self._buffer) + self._losses.count

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> TimelineRecorder:
        with self._condition:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="health-timeline", daemon=True)
                self._thread.start()
        return self

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until everything recorded so far is written."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._buffer or self._losses.count or self._writing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Write what is buffered if the database answers within ``timeout``, then stop."""
        self.flush(timeout)
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._write_until_stopped()
        finally:
            connection.close()

    def _write_until_stopped(self) -> None:
        delay = FIRST_RETRY_DELAY
        while True:
            with self._condition:
                while not (self._buffer or self._losses.count or self._stopping):
                    self._condition.wait()
                if self._stopping:
                    return
                batch = list(self._buffer)
                losses, self._losses = self._losses, Losses()
                self._writing = True
            try:
                written = write_observations(self.instance_id, self.boot_id, batch, losses)
            except DatabaseError as exc:
                # This thread keeps one connection while it works (Django's request cycle never
                # closes it); a failed one is dropped and the retry connects again.
                connection.close()
                self._failed(exc, len(batch))
                with self._condition:
                    self._losses = losses.then(self._losses)
                    self._writing = False
                    self._condition.notify_all()
                    if not self._stopping:
                        self._condition.wait(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                continue
            delay = FIRST_RETRY_DELAY
            with self._condition:
                for _ in batch:
                    self._buffer.popleft()
                if losses.count and not self._losses.count:
                    self._losing = False
                self._writing = False
                self._condition.notify_all()
            if self._failing:
                self._failing = False
                logger.info("timeline: the database answers again; wrote %d buffered change(s)", len(batch))
            if written and self._on_written is not None:
                self._on_written()

    def _failed(self, exc: DatabaseError, count: int) -> None:
        if not self._failing:
            self._failing = True
            logger.warning(
                "timeline: the database did not take %d change(s) (%s); keeping them in memory until it answers",
                count,
                type(exc).__name__,
            )


# -- writing -------------------------------------------------------------------------------


def write_observations(
    instance_id: str, boot_id: str, observations: Iterable[Observation], losses: Losses | None = None
) -> int:
    """Write ``observations`` (then any losses) in one transaction; the rows added."""
    observations = list(observations)
    written = 0
    with transaction.atomic():
        instance = lock_instance(instance_id)
        current = dict(instance.current)
        for observation in observations:
            if observation.kind == TimelineKind.START:
                written += _record_start(instance, boot_id, observation)
            elif insert_change(instance_id, observation, current) is not None:
                written += 1
        if losses is not None and losses.count:
            TimelineEvent.objects.create(
                instance_id=instance_id,
                component=INSTANCE,
                kind=TimelineKind.GAP,
                to_status=LOST,
                at=as_datetime(losses.first_at),
                previous_duration=losses.last_at - losses.first_at,
                reason=f"{losses.count} change(s) not recorded: the buffer was full while the database did not answer",
            )
            written += 1
            for observation in losses.latest.values():
                written += insert_change(instance_id, observation, current) is not None
        if current != instance.current:
            FleetInstance.objects.filter(instance_id=instance_id).update(current=current)
    return written


def lock_instance(instance_id: str) -> FleetInstance:
    """The instance's fleet row, created if need be and locked until the transaction ends.

    Every writer of one instance takes this lock first, so deduplication is race-free.
    """
    now = as_datetime(time.time())
    FleetInstance.objects.get_or_create(instance_id=instance_id, defaults={"started_at": now, "last_seen": now})
    return FleetInstance.objects.select_for_update().get(instance_id=instance_id)


def _record_start(instance: FleetInstance, boot_id: str, observation: Observation) -> int:
    if instance.boot_id == boot_id:
        return 0  # a sibling worker of the same start wrote it already
    at = as_datetime(observation.at)
    TimelineEvent.objects.create(
        instance_id=instance.instance_id, component=INSTANCE, kind=TimelineKind.START, to_status=STARTED, at=at
    )
    FleetInstance.objects.filter(instance_id=instance.instance_id).update(boot_id=boot_id, started_at=at)
    return 1


def insert_change(
    instance_id: str, observation: Observation, current: dict[str, list[Any]] | None = None
) -> TimelineEvent | None:
    """One ``change`` row unless the instance's timeline already says this state at that time.

    Buffered observations can arrive after rows another worker wrote later in time; the
    row after this one then gets its ``from_status`` and duration corrected (and is
    dropped if it said the same state, which really began here). The state this row ends
    goes into the hourly rollup; ``current`` (the fleet row's open states) is updated
    when this is the component's newest row.
    """
    at = as_datetime(observation.at)
    rows = TimelineEvent.objects.filter(instance_id=instance_id, component=observation.component, kind="change")
    previous = rows.filter(at__lte=at).order_by("-at", "-id").first()
    if previous is not None and previous.to_status == observation.status:
        return None
    row = TimelineEvent.objects.create(
        instance_id=instance_id,
        component=observation.component,
        from_status=previous.to_status if previous is not None else "",
        to_status=observation.status,
        at=at,
        previous_duration=(at - previous.at).total_seconds() if previous is not None else None,
        reason=observation.reason[:MAX_REASON],
    )
    component = observation.component
    following = rows.filter(at__gt=at).order_by("at", "id").first()
    if following is None:
        if previous is not None:  # the previous state ends here
            add_to_rollup(component, previous.to_status, previous.at.timestamp(), observation.at)
        if current is not None:
            current[component] = [observation.status, observation.at]
    else:
        # [at, following) was counted for the previous state (or not at all before the first row).
        if previous is not None:
            add_to_rollup(component, previous.to_status, observation.at, following.at.timestamp(), sign=-1.0)
        add_to_rollup(component, observation.status, observation.at, following.at.timestamp())
        if following.to_status == observation.status:
            following.delete()
            following = rows.filter(at__gt=at).order_by("at", "id").first()
            if following is None and current is not None:  # the state now open began here
                current[component] = [observation.status, observation.at]
        if following is not None:
            following.from_status = observation.status
            following.previous_duration = (following.at - at).total_seconds()
            following.save(update_fields=["from_status", "previous_duration"])
    return row


def add_to_rollup(component: str, status: str, start: float, end: float, *, sign: float = 1.0) -> None:
    """Add (or with ``sign=-1`` take back) the seconds of ``[start, end)`` to each hour they cover."""
    pieces: list[tuple[Any, str, str, float]] = []
    moment = start
    adapt = connection.ops.adapt_datetimefield_value
    while moment < end:
        hour = math.floor(moment / HOUR) * HOUR
        stop = min(end, hour + HOUR)
        pieces.append((adapt(as_datetime(hour)), component, status, sign * (stop - moment)))
        moment = stop
    if not pieces:
        return
    table = TimelineRollup._meta.db_table
    with connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {table} (hour, component, status, seconds) VALUES (%s, %s, %s, %s)"  # noqa: S608 (a model's table)
            f" ON CONFLICT (hour, component, status) DO UPDATE SET seconds = {table}.seconds + excluded.seconds",
            pieces,
        )


def prune_timeline(days: float, *, batch: int = 1000, pause: Callable[[], bool] = lambda: False) -> int:
    """Delete rows older than ``days`` in small batches; the number deleted.

    Each batch is its own short statement on rows nobody writes any more (writers only
    add rows near now), so writers never wait on it. ``pause()`` runs between batches and
    stops the pruning when it returns True (the heartbeat's stop event).
    """
    cutoff = as_datetime(time.time()) - timedelta(days=days)
    deleted = 0
    while True:
        ids = list(TimelineEvent.objects.filter(at__lt=cutoff).order_by("at").values_list("id", flat=True)[:batch])
        if ids:
            deleted += TimelineEvent.objects.filter(id__in=ids).delete()[0]
        if len(ids) < batch or pause():
            break
    TimelineRollup.objects.filter(hour__lt=cutoff - timedelta(hours=1)).delete()
    FleetInstance.objects.filter(last_seen__lt=cutoff).delete()
    return deleted
