"""No leaks: 10,000 probes against a real gunicorn worker while its dependencies change.

Healthy, failing, hanging and healthy again, in turn; the worker's threads, open file
descriptors and database connections must stay bounded throughout. The cache is made
short (50 ms) so the checks really run hundreds of times, not once.
"""

from __future__ import annotations

import http.client
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.peers.clerk import FakeClerkAPI
from tests.peers.util_service import FakeUtilService
from tests.process.support import (
    LOOPBACK,
    ServerProcess,
    base_env,
    configured_database_url,
    migrated_database,
    on_postgres,
    peer_env,
    poll,
    running_gunicorn,
)

pytestmark = pytest.mark.process

PROBES_PER_PHASE = 2_500
CLIENTS = 4
# /ready/ and /live/ answer 200 whatever the dependencies (issue #8): the report decides most answers.
PATHS = ("/api/v1/health/", "/api/v1/health/ready/", "/api/v1/health/live/", "/api/v1/health/", "/api/v1/health/")


@dataclass(frozen=True)
class Sample:
    phase: str
    threads: int
    fds: int
    db_connections: int


def worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, f"expected one worker, found {children}"
    return int(children[0])


def db_connections(database_url: str) -> int:
    """Connections to the worker's database, this probe's own excluded."""
    if not on_postgres():
        return 0
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(configured_database_url(), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def probe_many(port: int, count: int) -> dict[int, int]:
    """``count`` requests over ``CLIENTS`` keep-alive connections; status code tally."""

    def client(share: int) -> dict[int, int]:
        tally: dict[int, int] = {}
        connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
        try:
            for i in range(share):
                connection.request("GET", PATHS[i % len(PATHS)])
                response = connection.getresponse()
                response.read()
                tally[response.status] = tally.get(response.status, 0) + 1
        finally:
            connection.close()
        return tally

    total: dict[int, int] = {}
    with ThreadPoolExecutor(CLIENTS) as pool:
        for tally in pool.map(client, [count // CLIENTS] * CLIENTS):
            for status, n in tally.items():
                total[status] = total.get(status, 0) + n
    return total


@pytest.fixture
def soak_server(
    tmp_path: Path, clerk_api: FakeClerkAPI, util_service: FakeUtilService
) -> Iterator[tuple[ServerProcess, int, str]]:
    with migrated_database(tmp_path) as database_url:
        env = base_env(
            DATABASE_URL=database_url,
            WEB_CONCURRENCY="1",
            GUNICORN_THREADS="4",
            # No change streams: their threads (gunicorn.conf.py adds HEALTH_STREAM_MAX) would let
            # the pool grow past the four this test counts on.
            HEALTH_STREAM_MAX="0",
            HEALTH_CHECK_TIMEOUT="0.2",
            HEALTH_CACHE_TTL="0.05",
            HEALTH_MAX_STALENESS="1.0",
            **peer_env(clerk_api, util_service),
        )
        with running_gunicorn(env, tmp_path / "soak.log") as (server, port):
            yield server, port, database_url


def test_ten_thousand_probes_leak_no_threads_files_or_connections(
    soak_server: tuple[ServerProcess, int, str], clerk_api: FakeClerkAPI, util_service: FakeUtilService
) -> None:
    server, port, database_url = soak_server
    worker = poll(lambda: _maybe_worker(server.popen.pid), lambda pid: pid is not None, timeout=10)
    assert worker is not None

    def sample(phase: str) -> Sample:
        return Sample(
            phase,
            threads=len(os.listdir(f"/proc/{worker}/task")),
            fds=len(os.listdir(f"/proc/{worker}/fd")),
            db_connections=db_connections(database_url),
        )

    def healthy() -> None:
        clerk_api.mode, util_service.mode = "ok", "healthy"

    def failing() -> None:
        clerk_api.mode, util_service.mode = "server_error", "unhealthy"

    def hanging() -> None:
        clerk_api.mode, util_service.mode = "slow", "slow"
        clerk_api.delay = util_service.delay = 30

    phases: list[tuple[str, Callable[[], None], int]] = [
        ("healthy", healthy, 200),
        ("failing", failing, 503),
        ("hanging", hanging, 503),
        ("healthy again", healthy, 200),
    ]
    probe_many(port, 400)  # warm-up: every thread and connection the worker needs exists now
    baseline = sample("baseline")
    samples = [baseline]
    total = 400
    for name, arrange, expected in phases:
        arrange()
        # Sampled while the load runs too, so a leak released when it stops still shows.
        done = threading.Event()
        during: list[Sample] = []

        def sample_meanwhile(phase: str = name, stop: threading.Event = done, into: list[Sample] = during) -> None:
            while not stop.wait(0.05):
                into.append(sample(f"{phase} (under load)"))

        sampler = threading.Thread(target=sample_meanwhile)
        sampler.start()
        try:
            tally = probe_many(port, PROBES_PER_PHASE)
        finally:
            done.set()
            sampler.join(10)
        total += sum(tally.values())
        assert tally.get(expected, 0) > PROBES_PER_PHASE // 2, (name, tally)
        assert set(tally) <= {200, 503}, (name, tally)  # never a 500
        assert during, "no sample was taken under load"
        samples.append(max(during, key=lambda s: (s.threads, s.fds, s.db_connections)))
        samples.extend(during)
        samples.append(sample(name))
    assert total >= 10_000
    print("\n".join(str(s) for s in samples if "under load" not in s.phase))  # -s: the numbers behind the bounds
    print(
        "peak under load:",
        max(s.threads for s in samples),
        "threads,",
        max(s.fds for s in samples),
        "fds,",
        max(s.db_connections for s in samples),
        "db connections",
    )
    assert server.running()
    assert worker_pid(server.popen.pid) == worker, "the worker was replaced: it hung or died"
    for s in samples:
        # Four checks, at most one run in flight each: four executor threads at most.
        assert s.threads <= baseline.threads + 4, samples
        assert s.fds <= baseline.fds + 16, samples
        # The db check closes its connection after every run, one run at a time per
        # process: one connection, plus at most one backend still exiting after a close;
        # and the timeline's writer and heartbeat keep one connection each (issue 11).
        assert s.db_connections <= 2 + 2, samples


def _maybe_worker(master: int) -> int | None:
    try:
        return worker_pid(master)
    except (AssertionError, FileNotFoundError):
        return None
