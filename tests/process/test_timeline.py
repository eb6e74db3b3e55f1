"""The timeline, the fleet and the change stream under the real gunicorn, on the real PostgreSQL.

Each server records into a database of its own (``migrated_database``); the tests read
the rows straight from PostgreSQL. Every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.peers.clerk import ClerkMode, FakeClerkAPI
from tests.peers.relay import TcpRelay
from tests.peers.util_service import FakeUtilService
from tests.process.support import (
    LOOPBACK,
    UNHURRIED,
    base_env,
    http_request,
    migrated_database,
    on_postgres,
    peer_env,
    poll,
    running_gunicorn,
)

pytestmark = [pytest.mark.process, pytest.mark.postgres]

FLEET, HEALTH, EVENTS = "/api/v1/health/fleet/", "/api/v1/health/", "/api/v1/health/events/"
#: Generous bounds for a loaded 2-core machine; none of them is a speed goal.
SETTLE = 20.0
#: core.timeline_views.KEEP_ALIVE: a gone client must not wait for it.
KEEP_ALIVE = 15.0


@dataclass(frozen=True)
class Row:
    id: int
    instance_id: str
    component: str
    kind: str
    from_status: str
    to_status: str
    at: datetime
    previous_duration: float | None


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    if not on_postgres():
        pytest.skip("needs DATABASE_URL pointing at PostgreSQL")
    with migrated_database(tmp_path) as url:
        yield url


def timeline(url: str, instance: str | None = None) -> list[Row]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT id, instance_id, component, kind, from_status, to_status, at, previous_duration"
            " FROM health_timelineevent WHERE %s::text IS NULL OR instance_id = %s ORDER BY at, id",
            [instance, instance],
        ).fetchall()
    return [Row(*row) for row in rows]


def states(rows: list[Row], component: str) -> list[tuple[str, str]]:
    return [(r.from_status, r.to_status) for r in rows if r.component == component]


def latest(rows: list[Row], component: str) -> str:
    """The state the timeline holds for ``component`` now ("" before its first row)."""
    return ([to for _, to in states(rows, component)] or [""])[-1]


def server_env(
    url: str, instance: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService, **extra: str
) -> dict[str, str]:
    """Two workers, a heartbeat every 0.5 s, gone after 3 s; ``extra`` wins."""
    settings = {
        "DATABASE_URL": url,
        "INSTANCE_ID": instance,
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "4",
        "HEALTH_STREAM_MAX": "4",
        "HEALTH_CHECK_TIMEOUT": "0.9",
        # Not about slowness: a query slowed by a loaded machine must not make db DEGRADED
        # between the states a test waits for.
        "HEALTH_DB_SLOW_MS": UNHURRIED["HEALTH_DB_SLOW_MS"],
        # Changes are noticed within a heartbeat plus half a second, not a 5 s TTL.
        "HEALTH_CACHE_TTL": "0.5",
        "HEALTH_MAX_STALENESS": "1",
        "HEALTH_HEARTBEAT_INTERVAL": "0.5",
        "HEALTH_FLEET_GONE_AFTER": "3",
    }
    return base_env(**(settings | peer_env(clerk_api, util_service) | extra))


def wait_for_rows(url: str, until: Any, what: str, *, instance: str | None = None) -> list[Row]:
    rows = poll(lambda: timeline(url, instance), until, timeout=SETTLE, interval=0.1)
    assert until(rows), f"{what} not in the timeline within {SETTLE} s: {rows}"
    return rows


def test_changes_are_recorded_once_per_instance_with_durations_that_hold_across_a_restart(
    database_url: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService, tmp_path: Path
) -> None:
    env = server_env(database_url, "pod-restart", clerk_api, util_service)
    with running_gunicorn(env, tmp_path / "first.log"):
        wait_for_rows(database_url, lambda rows: ("", "OPERATIONAL") in states(rows, "clerk"), "clerk OPERATIONAL")
        clerk_api.mode = ClerkMode.UNAUTHORIZED
        rows = wait_for_rows(database_url, lambda rows: "DOWN" in [s for _, s in states(rows, "clerk")], "DOWN")
    stopped = time.time()
    down = next(r for r in rows if r.component == "clerk" and r.to_status == "DOWN")
    clerk_api.mode = ClerkMode.OK
    with running_gunicorn(env, tmp_path / "second.log"):
        rows = wait_for_rows(database_url, lambda rows: len(states(rows, "clerk")) >= 3, "the way back up")
    assert states(rows, "clerk") == [("", "OPERATIONAL"), ("OPERATIONAL", "DOWN"), ("DOWN", "OPERATIONAL")], (
        "two workers each saw every change: the timeline must hold each once"
    )
    back = [r for r in rows if r.component == "clerk"][-1]
    assert back.previous_duration == pytest.approx((back.at - down.at).total_seconds(), abs=0.01)
    assert back.previous_duration > stopped - down.at.timestamp(), "DOWN lasted through the restart"
    starts = [r for r in rows if r.kind == "start"]
    assert len(starts) == 2, f"one start row per server start, not per worker: {starts}"
    assert starts[1].at.timestamp() >= stopped


def test_changes_wait_in_memory_while_the_database_is_down_and_keep_their_times(
    database_url: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService, tmp_path: Path
) -> None:
    parts = urlsplit(database_url)
    with TcpRelay(parts.hostname or LOOPBACK, parts.port or 5432) as relay:
        relayed = urlunsplit(parts._replace(netloc=f"{parts.username}@{LOOPBACK}:{relay.port}"))
        env = server_env(relayed, "pod-buffer", clerk_api, util_service)
        with running_gunicorn(env, tmp_path / "gunicorn.log") as (server, port):
            wait_for_rows(database_url, lambda rows: latest(rows, "db") == "OPERATIONAL", "db OPERATIONAL")
            relay.cut()
            cut_at = time.time()
            clerk_api.mode = ClerkMode.UNAUTHORIZED

            def report() -> dict[str, Any]:
                return json.loads(http_request(port, HEALTH)[2])["details"]

            seen = poll(report, lambda d: d["db"] == "FATAL" and d["clerk"] == "DOWN", timeout=SETTLE)
            assert seen["db"] == "FATAL" and seen["clerk"] == "DOWN", seen
            seen_at = time.time()
            assert not [r for r in timeline(database_url) if r.to_status in ("DOWN", "FATAL")], "written while cut?"
            relay.restore()
            restored_at = time.time()

            # Each worker writes its own buffer when the database answers, and the instance
            # keeps the earliest observation of a change (health/timeline.py). A worker that
            # saw a change later can write first, so the rows are final only once the worker
            # whose answer the test saw has written its buffer too: wait for that. A change
            # written with its write time instead of its observed time never gets there.
            def written_as_seen(rows: list[Row]) -> bool:
                return (
                    ("OPERATIONAL", "DOWN") in states(rows, "clerk")
                    and ("FATAL", "OPERATIONAL") in states(rows, "db")
                    and all(
                        any(r.component == c and r.to_status == s and r.at.timestamp() <= seen_at for r in rows)
                        for c, s in (("clerk", "DOWN"), ("db", "FATAL"))
                    )
                )

            rows = wait_for_rows(database_url, written_as_seen, "the buffered changes, at or before they were seen")
            server.wait_for_line(r"timeline: the database did not take", timeout=SETTLE)
            server.wait_for_line(r"timeline: the database answers again", timeout=SETTLE)
    down = next(r for r in rows if r.component == "clerk" and r.to_status == "DOWN")
    fatal = next(r for r in rows if r.component == "db" and r.to_status == "FATAL")
    for row in (down, fatal):
        assert cut_at - 1 <= row.at.timestamp() <= seen_at, f"{row} was not written with the time it was observed"
        assert row.at.timestamp() < restored_at
    assert [r.kind for r in rows].count("gap") == 0, "nothing overflowed: no gap"


def test_two_instances_are_both_in_the_fleet_and_the_timeline_and_a_stopped_one_is_gone(
    database_url: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService, tmp_path: Path
) -> None:
    env_a = server_env(database_url, "pod-a", clerk_api, util_service)
    env_b = server_env(database_url, "pod-b", clerk_api, util_service)
    with (
        running_gunicorn(env_a, tmp_path / "a.log") as (_, port_a),
        running_gunicorn(env_b, tmp_path / "b.log") as (server_b, _),
    ):

        def fleet() -> dict[str, Any]:
            body = json.loads(http_request(port_a, FLEET)[2])
            return {member["instance_id"]: member for member in body["instances"]}

        # The row exists from the first write; its states from the first heartbeat.
        members = poll(
            fleet, lambda m: {"pod-a", "pod-b"} <= set(m) and all(x["states"] for x in m.values()), timeout=SETTLE
        )
        assert set(members) == {"pod-a", "pod-b"}, members
        assert all(m["states"]["clerk"] == "OPERATIONAL" and not m["gone"] for m in members.values())
        assert "host" not in json.dumps(members).lower()
        rows = wait_for_rows(
            database_url,
            lambda rows: {r.instance_id for r in rows if r.component == "clerk"} == {"pod-a", "pod-b"},
            "both instances' clerk rows",
        )
        assert {r.instance_id for r in rows if r.kind == "start"} == {"pod-a", "pod-b"}
        server_b.kill()
        members = poll(fleet, lambda m: m["pod-b"]["gone"], timeout=SETTLE)
        assert members["pod-b"]["gone"] and not members["pod-a"]["gone"], members


class EventReader:
    """A raw SSE client: reads events as they arrive, with a deadline on every read."""

    def __init__(self, port: int, last_event_id: int | None = None) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=5)
        resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id is not None else ""
        self.sock.sendall(
            f"GET {EVENTS} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n{resume}\r\n".encode()
        )
        self.buffer = b""
        head = self._until(b"\r\n\r\n", deadline=time.monotonic() + 10)
        self.status = int(head.split(b" ", 2)[1])
        self.headers = head.decode("latin-1").lower()

    def _until(self, marker: bytes, *, deadline: float) -> bytes:
        while marker not in self.buffer:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"the stream ended: {self.buffer!r}")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def next_event(self, timeout: float) -> dict[str, Any]:
        """The next ``change``/``start``/``gap`` event (chunked framing and comments skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            block = self._until(b"\n\n", deadline=deadline).decode()
            fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0].isalpha())
            if "data" in fields:
                return {"id": int(fields["id"]), "event": fields["event"], **json.loads(fields["data"])}

    def body(self) -> bytes:
        """The rest of a short (non-stream) answer: what arrives until the server goes quiet or closes."""
        self.sock.settimeout(5)
        with contextlib.suppress(TimeoutError):
            while b"}" not in self.buffer and (chunk := self.sock.recv(4096)):
                self.buffer += chunk
        return self.buffer

    def next_change_of(self, component: str, timeout: float) -> dict[str, Any]:
        """The next event about ``component``; others (db turning DEGRADED on a loaded machine) are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.next_event(max(0.01, deadline - time.monotonic()))
            if event["component"] == component:
                return event

    def close(self) -> None:
        self.sock.close()


def test_the_stream_delivers_a_change_and_resumes_from_last_event_id(
    database_url: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService, tmp_path: Path
) -> None:
    env = server_env(database_url, "pod-sse", clerk_api, util_service, WEB_CONCURRENCY="1", HEALTH_STREAM_MAX="2")
    with running_gunicorn(env, tmp_path / "gunicorn.log") as (_, port):
        wait_for_rows(database_url, lambda rows: ("", "OPERATIONAL") in states(rows, "clerk"), "clerk OPERATIONAL")
        reader = EventReader(port)
        try:
            assert reader.status == 200 and "text/event-stream" in reader.headers
            clerk_api.mode = ClerkMode.UNAUTHORIZED
            # The instance notices within a heartbeat (0.5 s) plus a check. The goal (within 1 s of
            # that) is measured by `make bench BENCH_ARGS=--fleet`; here a bound that never fails by chance.
            seen = poll(
                lambda: json.loads(http_request(port, HEALTH)[2])["details"]["clerk"],
                lambda s: s == "DOWN",
                timeout=SETTLE,
            )
            assert seen == "DOWN"
            event = reader.next_change_of("clerk", timeout=SETTLE)
            assert (event["event"], event["component"], event["to_status"]) == ("change", "clerk", "DOWN")
            assert "reason" not in event, "reasons only with the diagnostics token"
        finally:
            reader.close()

        # The reader's place is freed only when a write to it fails (at the latest at a
        # keep-alive); the bound of two leaves room for the resumed stream meanwhile.
        resumed = EventReader(port, last_event_id=event["id"] - 1)
        try:
            assert resumed.status == 200
            missed = resumed.next_event(timeout=SETTLE)
            assert missed["id"] == event["id"], "Last-Event-ID resumes with the missed event"
            clerk_api.mode = ClerkMode.OK
            after = resumed.next_change_of("clerk", timeout=SETTLE)
            assert after["id"] > event["id"] and after["to_status"] == "OPERATIONAL"
            assert after["previous_duration"] > 0

            # Two streams is this process's bound: with the resumed one open, at most one more
            # (if the closed reader's place was freed already) and then a clear 503.
            extra = [EventReader(port) for _ in range(2)]
            try:
                refused = [r for r in extra if r.status == 503]
                assert refused, [r.status for r in extra]
                assert "retry-after: 5" in refused[0].headers
                assert b"already serves 2 streams" in refused[0].body(), refused[0].buffer
                assert http_request(port, "/api/v1/health/live/", timeout=5)[0] == 200, "probes still answer"
            finally:
                for r in extra:
                    r.close()
        finally:
            resumed.close()

        # Closed streams give their places back within about a second (each quiet stream looks at
        # its socket every second), long before a keep-alive would have found them gone.
        started = time.monotonic()
        again = poll(lambda: EventReader(port), lambda r: r.status == 200, timeout=SETTLE, interval=0.2)
        try:
            assert again.status == 200
            assert time.monotonic() - started < KEEP_ALIVE, "places were freed only by a failing keep-alive"
        finally:
            again.close()


def test_sigterm_ends_open_streams_at_once_and_the_server_exits_0(
    database_url: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService, tmp_path: Path
) -> None:
    env = server_env(database_url, "pod-stop", clerk_api, util_service, WEB_CONCURRENCY="1", HEALTH_STREAM_MAX="2")
    with running_gunicorn(env, tmp_path / "gunicorn.log") as (server, port):
        readers = [EventReader(port), EventReader(port)]
        try:
            assert [r.status for r in readers] == [200, 200]
            started = time.monotonic()
            server.terminate()
            # graceful_timeout is 20 s: a stream that held the stop would reach it.
            assert server.wait(timeout=SETTLE) == 0, server.output
            assert time.monotonic() - started < 10, "open streams held the graceful stop"
        finally:
            for reader in readers:
                reader.close()
