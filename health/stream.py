"""The live change stream's engine side: one timeline tail per process, shared by every stream.

Each Server-Sent Events stream (``core.views.HealthEventsView``) waits on
:class:`TimelineTail`'s condition variable; it never queries the database while it waits.
One poller thread per process, alive only while a stream is open, reads the rows added
since the last poll (``id`` greater than what it has seen, with a small look-back for
transactions that committed out of id order) every :data:`POLL_INTERVAL` seconds, or at
once when this process's recorder wrote a row. Fifty streams cost one small indexed query
per interval, not fifty.

The number of open streams per process is bounded by ``HEALTH_STREAM_MAX``
(:meth:`TimelineTail.open_stream` raises :class:`StreamsFull` beyond it): a stream holds
a server thread while it is open, and the server is given that many threads on top of the
ones that answer probes (see ``gunicorn.conf.py``), so streams never take a probe's place.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.db import DatabaseError, connection

from health.models import TimelineEvent

#: Seconds between two polls of the timeline while a stream is open.
POLL_INTERVAL = 0.25
#: Rows below the highest id seen that are read again, for transactions still committing.
LOOK_BACK = 200
#: Rows kept in memory for streams that fall behind between two waits.
RECENT = 2000


class StreamsFull(Exception):
    """This process already serves ``HEALTH_STREAM_MAX`` streams."""


@dataclass(frozen=True)
class Entry:
    seq: int
    event: TimelineEvent


class TimelineTail:
    """New timeline rows, fanned out to every stream of this process."""

    def __init__(self, *, poll_interval: float = POLL_INTERVAL) -> None:
        self.poll_interval = poll_interval
        self._condition = threading.Condition()
        self._recent: deque[Entry] = deque(maxlen=RECENT)
        self._seen: deque[int] = deque(maxlen=RECENT)
        self._seen_set: set[int] = set()
        self._seq = 0
        self._high = -1  # the highest id seen; -1 until the first stream opens
        self._floor = 0  # rows up to this id predate the tail
        self._streams = 0
        self._woken = False
        self._closed = False
        self._poller: threading.Thread | None = None

    @property
    def streams(self) -> int:
        return self._streams

    @contextmanager
    def open_stream(self, limit: int) -> Iterator[int]:
        """Count a stream for as long as it is open; the position to read from.

        The first stream of the process reads the newest id first (on its own thread), so
        the tail delivers what is written from then on and nothing older.
        """
        if self._high < 0:
            newest = TimelineEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
            with self._condition:
                if self._high < 0:
                    self._high = self._floor = newest
        with self._condition:
            if self._closed or self._streams >= limit:
                raise StreamsFull
            self._streams += 1
            if self._poller is None or not self._poller.is_alive():
                self._poller = threading.Thread(target=self._poll_loop, name="health-stream-tail", daemon=True)
                self._poller.start()
            position = self._seq
        try:
            yield position
        finally:
            with self._condition:
                self._streams -= 1
                self._condition.notify_all()

    def wake(self) -> None:
        """A row was just written by this process: poll now, not at the next interval."""
        with self._condition:
            self._woken = True
            self._condition.notify_all()

    def wait(self, position: int, timeout: float) -> tuple[int, list[TimelineEvent]]:
        """Rows after ``position``, waiting up to ``timeout`` s for one; the new position."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._seq <= position and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            events = [entry.event for entry in self._recent if entry.seq > position]
            return self._seq, events

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """End every stream (the process is stopping)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    # -- the poller thread -----------------------------------------------------------

    def _poll_loop(self) -> None:
        try:
            while True:
                with self._condition:
                    if not self._woken and self._streams and not self._closed:
                        self._condition.wait(self.poll_interval)
                    self._woken = False
                    if not self._streams or self._closed:
                        return
                self._poll()
        finally:
            connection.close()

    def _poll(self) -> None:
        try:
            since = max(self._floor, self._high - LOOK_BACK)
            rows = list(TimelineEvent.objects.filter(id__gt=since).order_by("id")[:RECENT])
            high = max([self._high, *(row.id for row in rows)])
        except DatabaseError:
            connection.close()  # the next poll reconnects; streams keep their keep-alives meanwhile
            return
        with self._condition:
            self._high = high
            fresh = [row for row in rows if row.id not in self._seen_set]
            for row in fresh:
                if len(self._seen) == self._seen.maxlen:
                    self._seen_set.discard(self._seen[0])
                self._seen.append(row.id)
                self._seen_set.add(row.id)
                self._seq += 1
                self._recent.append(Entry(self._seq, row))
            if fresh:
                self._condition.notify_all()


def events_after(last_id: int, *, limit: int = RECENT) -> list[TimelineEvent]:
    """The rows a stream resuming after ``last_id`` (its ``Last-Event-ID``) missed."""
    return list(TimelineEvent.objects.filter(id__gt=last_id).order_by("id")[:limit])


_tail: TimelineTail | None = None
_tail_lock = threading.Lock()


def get_timeline_tail() -> TimelineTail:
    """This process's tail, made on first use."""
    global _tail
    with _tail_lock:
        if _tail is None:
            _tail = TimelineTail()
        return _tail
