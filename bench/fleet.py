"""``python -m bench --fleet``: the timeline and the fleet at the scale of a large fleet (issue 11).

In a database of its own on the bench's PostgreSQL (created, then dropped):

1. 1,000 instances in the fleet table and 1,000,000 timeline rows over 31 days
   (1,000 instances x 4 components x 250 changes), made by SQL, then ``ANALYZE``;
2. the history, availability, fleet and stream-tail queries, each run ``--fleet-runs``
   times through the real code (``health.history``, ``health.stream``): p50 and p99,
   with ``EXPLAIN`` naming the indexes they use;
3. heartbeats: two worker processes per instance beating every interval for 1,000
   instances at the real rate; how many row writes PostgreSQL actually did per instance
   per interval, and the upsert's latency;
4. pruning the day past ``HEALTH_HISTORY_DAYS`` (about 32,000 rows) while a writer
   records changes: the writer's latency during the prune against before it;
5. the table's size per row, for the README's growth figures.

Then, against the real gunicorn: 50 open change streams, and ``/api/v1/health/`` p99
with few connections, against the same run with no stream open.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

INSTANCES = 1000
COMPONENTS = (("sentry", "FAILED"), ("clerk", "DOWN"), ("db", "FATAL"), ("util_service", "DISCONNECTED"))
CHANGES_PER_COMPONENT = 250
DAYS = 31
GOAL_MS = 50.0


@dataclass(frozen=True)
class Timing:
    name: str
    p50_ms: float
    p99_ms: float
    runs: int
    plan: str = ""

    def row(self) -> str:
        return f"  {self.name:<58} {self.p50_ms:>8.2f} {self.p99_ms:>8.2f} {self.runs:>6}"


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def timed(name: str, runs: int, call: Callable[[], object], plan: str = "") -> Timing:
    call()  # once to warm the caches, as a server that has run a while has them
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return Timing(name, statistics.median(samples), percentile(samples, 0.99), runs, plan)


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    name = f"letraz_bench_fleet_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def populate(url: str, log: Callable[[str], None]) -> dict[str, Any]:
    """1,000 instances and 1,000,000 rows over 31 days, ordered by time as real ones are."""
    values = ", ".join(f"('{name}', '{bad}')" for name, bad in COMPONENTS)
    span = DAYS * 86400.0
    step = span / (CHANGES_PER_COMPONENT + 1)
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO health_fleetinstance
                (instance_id, status, states, version, boot_id, current, started_at, last_seen)
            SELECT 'pod-' || lpad(i::text, 4, '0'), 'OPERATIONAL',
                   '{"sentry": "OPERATIONAL", "clerk": "OPERATIONAL", "db": "OPERATIONAL",
                     "util_service": "OPERATIONAL"}'::jsonb,
                   '0.1.0', 'bench', '{}'::jsonb, now() - interval '31 days', now()
            FROM generate_series(1, %s) i
            """,
            [INSTANCES],
        )
        conn.execute(
            f"""
            INSERT INTO health_timelineevent
                (instance_id, component, kind, from_status, to_status, at, previous_duration, reason)
            SELECT instance_id, component, 'change', from_status, to_status, at, previous_duration, ''
            FROM (
                SELECT 'pod-' || lpad(i::text, 4, '0') AS instance_id, c.name AS component,
                       CASE WHEN k = 1 THEN '' WHEN k %% 2 = 0 THEN 'OPERATIONAL' ELSE c.bad END AS from_status,
                       CASE WHEN k %% 2 = 1 THEN 'OPERATIONAL' ELSE c.bad END AS to_status,
                       now() - make_interval(secs => {span}) + make_interval(secs => k * {step} + random() * 600) AS at,
                       CASE WHEN k = 1 THEN NULL ELSE {step} END AS previous_duration
                FROM generate_series(1, %s) i
                CROSS JOIN (VALUES {values}) AS c(name, bad)
                CROSS JOIN generate_series(1, %s) k
            ) rows
            ORDER BY at
            """,
            [INSTANCES, CHANGES_PER_COMPONENT],
        )
        # What the writer keeps as it goes: each state's seconds per hour, and the states still open.
        conn.execute(
            """
            INSERT INTO health_timelinerollup (hour, component, status, seconds)
            SELECT h, component, status, SUM(EXTRACT(EPOCH FROM LEAST(e, h + interval '1 hour') - GREATEST(s, h)))
            FROM (
                SELECT component, to_status AS status, at AS s,
                       LEAD(at) OVER (PARTITION BY instance_id, component ORDER BY at) AS e
                FROM health_timelineevent
            ) seg
            CROSS JOIN LATERAL generate_series(date_trunc('hour', s), e - interval '1 microsecond', interval '1 hour') h
            WHERE e IS NOT NULL
            GROUP BY h, component, status
            """
        )
        conn.execute(
            """
            UPDATE health_fleetinstance f SET current = c.current
            FROM (
                SELECT instance_id, jsonb_object_agg(component, jsonb_build_array(to_status, EXTRACT(EPOCH FROM at)))
                       AS current
                FROM (
                    SELECT DISTINCT ON (instance_id, component) instance_id, component, to_status, at
                    FROM health_timelineevent ORDER BY instance_id, component, at DESC
                ) last
                GROUP BY instance_id
            ) c
            WHERE f.instance_id = c.instance_id
            """
        )
        conn.execute("ANALYZE health_timelinerollup")
        conn.execute("ANALYZE health_timelineevent")
        conn.execute("ANALYZE health_fleetinstance")
        count = conn.execute("SELECT count(*) FROM health_timelineevent").fetchone()
        size = conn.execute(
            "SELECT pg_table_size('health_timelineevent'), pg_indexes_size('health_timelineevent')"
        ).fetchone()
    assert count is not None and size is not None
    seconds = time.monotonic() - started
    log(f"fleet: {INSTANCES:,} instances and {count[0]:,} timeline rows in {seconds:.1f} s")
    return {
        "rows": count[0],
        "instances": INSTANCES,
        "populate_s": seconds,
        "table_bytes": size[0],
        "index_bytes": size[1],
        "bytes_per_row": (size[0] + size[1]) / count[0],
    }


def explain(query: Any) -> str:
    """The plan's node lines that name a scan (which index, or a sequential scan)."""
    text = query.explain()
    return "; ".join(line.strip().split("  (")[0] for line in text.splitlines() if "Scan" in line or "scan" in line)


def explain_sql(statement: str, params: Any) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + statement, params)
        lines = [row[0] for row in cursor.fetchall()]
    return "; ".join(sorted({line.strip().split("  (")[0].lstrip("-> ") for line in lines if "Scan" in line}))


def queries(runs: int, log: Callable[[str], None]) -> list[Timing]:
    """The reads behind the history API, the status page, the fleet view and the stream."""
    from django.db import connection

    from health.history import changes, component_history, fleet_json
    from health.models import FleetInstance, TimelineEvent
    from health.timeline import as_datetime

    now = as_datetime(time.time())
    day, week = now - timedelta(days=1), now - timedelta(days=7)

    def history_sql(**kwargs: Any) -> Callable[[], object]:
        def run() -> object:
            return component_history(now=now, gone_after=30, **kwargs)

        return run

    # The availability statement's plan, caught as it runs.
    def plan_of(name: str, call: Callable[[], object]) -> str:
        statements: list[tuple[str, Any]] = []

        def capture(execute: Any, statement: str, params: Any, many: bool, context: Any) -> Any:
            statements.append((statement, params))  # a list or, by name, a dict
            return execute(statement, params, many, context)

        with connection.execute_wrapper(capture):
            call()
        return " | ".join(explain_sql(*statement) for statement in statements)

    out = []
    page = lambda **kw: list(changes(**kw)[:100])  # noqa: E731
    out.append(
        timed(
            "history page: one component, last 24 h (100 rows)",
            runs,
            lambda: page(component="clerk", since=day, until=now),
            explain(changes(component="clerk", since=day, until=now)[:100]),
        )
    )
    out.append(
        timed(
            "history page: one instance, last 7 days (100 rows)",
            runs,
            lambda: page(instance="pod-0042", since=week, until=now),
            explain(changes(instance="pod-0042", since=week, until=now)[:100]),
        )
    )
    out.append(
        timed(
            "history page: everything, last 24 h (100 rows)",
            runs,
            lambda: page(since=day, until=now),
            explain(changes(since=day, until=now)[:100]),
        )
    )
    for name, kwargs in (
        ("availability: one component, 24 h, fleet-wide", {"since": day, "until": now, "components": ["clerk"]}),
        ("availability: 4 components, 24 h x 24 slices (status page)", {"since": day, "until": now, "buckets": 24}),
        ("availability: 4 components, 7 d x 28 slices (status page)", {"since": week, "until": now, "buckets": 28}),
        ("availability: one instance, 4 components, 7 d", {"since": week, "until": now, "instance": "pod-0042"}),
    ):
        call = history_sql(**kwargs)
        out.append(timed(name, runs, call, plan_of(name, call)))
    out.append(
        timed(
            f"fleet: all {INSTANCES:,} instances (the API's JSON)",
            runs,
            lambda: fleet_json(now, 30),
            explain(FleetInstance.objects.order_by("instance_id")),
        )
    )
    newest = TimelineEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    out.append(
        timed(
            "stream tail: rows after the newest - 200",
            runs,
            lambda: list(TimelineEvent.objects.filter(id__gt=newest - 200).order_by("id")[:2000]),
            explain(TimelineEvent.objects.filter(id__gt=newest - 200).order_by("id")[:2000]),
        )
    )
    for timing in out:
        log(f"         {timing.name}: p50 {timing.p50_ms:.2f} ms, p99 {timing.p99_ms:.2f} ms")
    return out


def heartbeats(url: str, interval: float, seconds: float, log: Callable[[str], None]) -> dict[str, Any]:
    """Two workers per instance beat every ``interval`` for ``seconds``; row writes actually done."""
    from django.db import connection

    from health.fleet import upsert_instance

    states = {"sentry": "OPERATIONAL", "clerk": "OPERATIONAL", "db": "OPERATIONAL", "util_service": "OPERATIONAL"}
    ids = [f"pod-{i:04d}" for i in range(1, INSTANCES + 1)]

    def updates() -> int:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_force_next_flush()")
            row = conn.execute(
                "SELECT n_tup_upd + n_tup_ins FROM pg_stat_user_tables WHERE relname = 'health_fleetinstance'"
            ).fetchone()
        return int(row[0]) if row else 0

    before = updates()
    latencies: list[float] = []
    lock = threading.Lock()
    rounds = max(1, round(seconds / interval))

    def worker() -> None:
        try:
            for round_index in range(rounds):
                start = time.monotonic()
                for instance in ids:
                    t = time.perf_counter()
                    upsert_instance(instance, "OPERATIONAL", states, "0.1.0", interval)
                    with lock:
                        latencies.append((time.perf_counter() - t) * 1000)
                spent = time.monotonic() - start
                if round_index < rounds - 1:
                    time.sleep(max(0.0, interval - spent))
        finally:
            connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(2)]  # two workers per instance
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    writes = updates() - before
    per = writes / (INSTANCES * rounds)
    log(
        f"fleet: {len(latencies):,} heartbeats ({INSTANCES:,} instances x 2 workers x {rounds} intervals of"
        f" {interval:g} s) in {elapsed:.1f} s: {writes:,} row writes = {per:.2f} per instance per interval;"
        f" upsert p50 {statistics.median(latencies):.2f} ms, p99 {percentile(latencies, 0.99):.2f} ms"
    )
    return {
        "beats": len(latencies),
        "rounds": rounds,
        "interval_s": interval,
        "elapsed_s": elapsed,
        "row_writes": writes,
        "writes_per_instance_per_interval": per,
        "upsert_p50_ms": statistics.median(latencies),
        "upsert_p99_ms": percentile(latencies, 0.99),
    }


def prune_while_writing(url: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Prune the day past retention while a writer records a change every 20 ms; its latencies."""
    from django.db import connection

    from health.timeline import Observation, prune_timeline, write_observations

    samples: dict[str, list[float]] = {"before": [], "during": []}
    phase = ["before"]
    stop = threading.Event()

    def writer() -> None:
        try:
            states = ["OPERATIONAL", "DOWN"]
            n = 0
            while not stop.is_set():
                n += 1
                t = time.perf_counter()
                write_observations(
                    f"pod-{(n % INSTANCES) + 1:04d}", "bench", [Observation("clerk", states[n % 2], time.time())]
                )
                samples[phase[0]].append((time.perf_counter() - t) * 1000)
                stop.wait(0.02)
        finally:
            connection.close()

    lock_waits = [0, 0]  # samples taken, samples in which some backend waited for a lock

    def sampler() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not done.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                ).fetchone()
                lock_waits[0] += 1
                lock_waits[1] += bool(row and row[0])
                done.wait(0.005)

    done = threading.Event()
    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(3)
    phase[0] = "during"
    watcher = threading.Thread(target=sampler)
    watcher.start()
    started = time.monotonic()
    try:
        # As the heartbeat prunes: batches of 1,000 with a short pause between them.
        deleted = prune_timeline(30, pause=lambda: stop.wait(0.05))
    finally:
        connection.close()
    prune_s = time.monotonic() - started
    done.set()
    watcher.join()
    stop.set()
    thread.join()
    result = {
        "deleted": deleted,
        "prune_s": prune_s,
        "writes_before": len(samples["before"]),
        "writes_during": len(samples["during"]),
        "writer_p99_before_ms": percentile(samples["before"], 0.99),
        "writer_p99_during_ms": percentile(samples["during"], 0.99),
        "writer_max_during_ms": max(samples["during"]),
        "lock_wait_samples": lock_waits[1],
        "samples": lock_waits[0],
    }
    log(
        f"fleet: pruned {deleted:,} rows (a day past retention) in {prune_s:.1f} s while a writer recorded"
        f" {len(samples['during'])} changes: its p99 {result['writer_p99_during_ms']:.2f} ms during,"
        f" {result['writer_p99_before_ms']:.2f} ms before (max during {result['writer_max_during_ms']:.1f} ms);"
        f" a backend waited for a lock in {lock_waits[1]} of {lock_waits[0]} samples of pg_stat_activity"
    )
    return result


def open_streams(port: int, count: int, timeout: float) -> tuple[list[socket.socket], int]:
    """``count`` open event streams (503s are retried, as browsers do); and how many 503s were seen."""
    opened: list[socket.socket] = []
    refused = 0
    deadline = time.monotonic() + timeout
    while len(opened) < count and time.monotonic() < deadline:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /api/v1/health/events/ HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        if head.startswith(b"HTTP/1.1 200"):
            opened.append(sock)
        else:
            refused += 1
            sock.close()
            time.sleep(0.1)
    return opened, refused


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fleet", action="store_true", help="run the fleet-scale timeline bench (issue 11) instead of the load bench"
    )
    parser.add_argument("--fleet-runs", type=int, default=200, help="runs of each query (200)")
    parser.add_argument("--streams", type=int, default=50, help="open change streams during the probe run (50)")
    parser.add_argument("--heartbeat-seconds", type=float, default=15, help="seconds of simulated heartbeats (15)")


def setup_django(url: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "letraz.settings"
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SECRET_KEY", f"bench-{secrets.token_hex(16)}")
    os.environ["HEALTH_HISTORY_DAYS"] = "30"
    import django

    django.setup()


def change_reaches_streams(
    port: int, streams: list[socket.socket], flip: Callable[[], None], timeout: float = 10.0
) -> dict[str, Any]:
    """Seconds from the server's first answer showing clerk DOWN until each open stream has the event."""
    import http.client
    import json
    import selectors

    flip()
    seen_at: float | None = None
    deadline = time.monotonic() + timeout
    while seen_at is None and time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/api/v1/health/")
            if json.loads(conn.getresponse().read())["details"]["clerk"] == "DOWN":
                seen_at = time.monotonic()
        finally:
            conn.close()
        time.sleep(0.02)
    if seen_at is None:
        return {"seen": False, "delivered": 0, "max_s": None}
    selector = selectors.DefaultSelector()
    buffers = dict.fromkeys(streams, b"")
    arrived: dict[socket.socket, float] = {}
    for sock in streams:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    while len(arrived) < len(streams) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            buffers[sock] += chunk
            if b'"component":"clerk"' in buffers[sock] and b'"to_status":"DOWN"' in buffers[sock]:
                arrived.setdefault(sock, time.monotonic())
    selector.close()
    delays = [at - seen_at for at in arrived.values()]
    return {
        "seen": True,
        "delivered": len(arrived),
        "max_s": max(delays) if delays else None,
        "median_s": statistics.median(delays) if delays else None,
    }
