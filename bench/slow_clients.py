"""Slow and idle clients, and probes timed while they hold their connections (issue #8).

:class:`SlowClients` opens ``idle`` connections that send nothing and ``trickling`` ones
that send a request's headers one byte every ``trickle_interval`` seconds, from one
thread with a selector. Whenever the server closes one (its header-read deadline), a
new one takes its place, so the pressure stays constant for as long as the block runs.

:func:`time_probes` then sends probes on fresh connections, one at a time, and records
each latency (or the error). Used by ``make bench`` (goal 6) and by
``tests/process/test_hostile.py`` (that every probe answers; no speed is asserted there).
"""

from __future__ import annotations

import contextlib
import http.client
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

#: The request the trickling clients never finish sending.
TRICKLE = b"GET /api/v1/health/live/ HTTP/1.1\r\nHost: localhost\r\nUser-Agent: slow-client\r\nX-Pad: " + b"a" * 4000


@dataclass
class SlowClientStats:
    opened: int = 0
    closed_by_server: int = 0
    connect_errors: int = 0


class SlowClients:
    """``idle`` silent connections and ``trickling`` byte-a-time ones to ``host:port``."""

    def __init__(
        self, port: int, *, idle: int, trickling: int, trickle_interval: float = 0.1, host: str = "127.0.0.1"
    ) -> None:
        self.address = (host, port)
        self.idle, self.trickling = idle, trickling
        self.trickle_interval = trickle_interval
        self.stats = SlowClientStats()
        self._selector = selectors.DefaultSelector()
        self._progress: dict[socket.socket, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    def _open(self, kind: str) -> None:
        try:
            sock = socket.create_connection(self.address, timeout=2)
        except OSError:
            self.stats.connect_errors += 1
            return
        sock.setblocking(False)
        self.stats.opened += 1
        self._progress[sock] = 0 if kind == "trickle" else -1
        self._selector.register(sock, selectors.EVENT_READ, kind)

    def _close(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        self._progress.pop(sock, None)
        sock.close()

    def _run(self) -> None:
        next_byte = time.monotonic()
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=max(0.0, next_byte - time.monotonic())):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # The server closed it: keep the pressure up with a new one.
                    kind = key.data
                    self._close(sock)
                    self.stats.closed_by_server += 1
                    self._open(kind)
            if time.monotonic() >= next_byte:
                next_byte = time.monotonic() + self.trickle_interval
                for sock, sent in list(self._progress.items()):
                    if sent < 0:
                        continue
                    with contextlib.suppress(OSError):
                        sock.send(TRICKLE[sent % len(TRICKLE) : sent % len(TRICKLE) + 1])
                        self._progress[sock] = sent + 1

    def __enter__(self) -> SlowClients:
        for _ in range(self.idle):
            self._open("idle")
        for _ in range(self.trickling):
            self._open("trickle")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in list(self._progress):
            self._close(sock)
        self._selector.close()

    @property
    def open_connections(self) -> int:
        return len(self._progress)


@dataclass
class ProbeTimes:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def percentile(self, path: str, fraction: float) -> float:
        values = sorted(self.latencies.get(path, []))
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(fraction * len(values)))]


def probe_once(port: int, path: str, *, timeout: float, host: str = "127.0.0.1") -> int:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def time_probes(
    port: int, paths: list[str], *, rounds: int, timeout: float = 1.0, expect: dict[str, int] | None = None
) -> ProbeTimes:
    """``rounds`` of one GET per path on a new connection each; a failure is recorded, not raised."""
    times = ProbeTimes({path: [] for path in paths})
    for _ in range(rounds):
        for path in paths:
            started = time.perf_counter()
            try:
                status = probe_once(port, path, timeout=timeout)
            except (OSError, http.client.HTTPException) as exc:
                times.failures.append(f"{path}: {type(exc).__name__}")
                continue
            times.latencies[path].append(time.perf_counter() - started)
            wanted = (expect or {}).get(path, 200)
            if status != wanted:
                times.failures.append(f"{path}: HTTP {status}")
    return times


@contextlib.contextmanager
def slow_clients(port: int, *, idle: int, trickling: int) -> Iterator[SlowClients]:
    with SlowClients(port, idle=idle, trickling=trickling) as clients:
        yield clients
