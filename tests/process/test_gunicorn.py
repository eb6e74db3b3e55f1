"""The real web server: gunicorn with the repository's ``gunicorn.conf.py``, real peers on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.peers.clerk import FakeClerkAPI
from tests.peers.tcp import BlackholeListener
from tests.peers.util_service import FakeUtilService
from tests.process.support import (
    ServerProcess,
    base_env,
    free_port,
    gunicorn_args,
    http_request,
    manage,
    migrated_database,
    peer_env,
    poll,
    raw_http,
    running,
    running_gunicorn,
)

pytestmark = pytest.mark.process

HEALTH, LIVE, READY = "/api/v1/health/", "/api/v1/health/live/", "/api/v1/health/ready/"
#: gunicorn.conf.py's graceful_timeout (20 s) plus margin.
GRACEFUL_EXIT = 30.0
START_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database(tmp_path_factory.mktemp("gunicorn-db")) as url:
        yield url


@pytest.fixture
def web_env(
    tmp_path: Path, database_url: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService
) -> dict[str, str]:
    """Every peer healthy, two workers of four threads, a drain file in ``tmp_path``."""
    return base_env(
        DATABASE_URL=database_url,
        WEB_CONCURRENCY="2",
        GUNICORN_THREADS="4",
        HEALTH_DRAIN_FILE=str(tmp_path / "drain"),
        # Headroom for a loaded test machine; still under Kubernetes' 1 s probe timeout.
        HEALTH_CHECK_TIMEOUT="0.9",
        **peer_env(clerk_api, util_service),
    )


@pytest.fixture
def web(web_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[ServerProcess, int]]:
    with running_gunicorn(web_env, tmp_path / "gunicorn.log") as started:
        yield started


def status_of(port: int, path: str) -> int:
    return http_request(port, path)[0]


def body_of(port: int, path: str) -> tuple[int, dict[str, Any]]:
    status, _, raw = http_request(port, path)
    return status, json.loads(raw)


def test_live_ready_drain_and_a_graceful_stop(
    web: tuple[ServerProcess, int], web_env: dict[str, str], tmp_path: Path
) -> None:
    server, port = web
    assert status_of(port, LIVE) == 200
    # The first checks are still warming up in a fresh worker: ready within a bounded time.
    assert poll(lambda: body_of(port, READY), lambda answer: answer[0] == 200, timeout=10)[0] == 200

    drained = manage(["drain"], web_env)
    assert drained.returncode == 0, drained.stderr
    assert (tmp_path / "drain").exists()
    # Every worker reads the file on each request: no worker keeps saying "ready".
    for _ in range(8):
        status, body = body_of(port, READY)
        assert (status, body["status"]) == (503, "DEGRADED")
        assert status_of(port, LIVE) == 200

    undone = manage(["drain", "--undo"], web_env)
    assert undone.returncode == 0, undone.stderr
    assert not (tmp_path / "drain").exists()
    # Ready again as soon as the file is gone (polled: a check refreshing under load may
    # take a moment to agree).
    assert poll(lambda: body_of(port, READY), lambda answer: answer[0] == 200, timeout=10)[0] == 200

    server.terminate()
    assert server.wait(timeout=GRACEFUL_EXIT) == 0


def test_head_sends_gets_status_and_headers_and_no_body(web_env: dict[str, str], tmp_path: Path) -> None:
    # One worker: with two, the GET could reach a worker still caching a slow warm-up.
    with running_gunicorn(web_env | {"WEB_CONCURRENCY": "1"}, tmp_path / "head.log") as (_, port):
        poll(lambda: status_of(port, HEALTH), lambda s: s == 200, timeout=15)
        _assert_head_matches_get(port)


def _assert_head_matches_get(port: int) -> None:
    get_status, get_headers, get_body = http_request(port, HEALTH)
    assert get_status == 200

    raw = raw_http(port, b"HEAD " + HEALTH.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}

    assert status_line.split()[1] == "200"
    assert body == b""
    assert headers["content-type"] == get_headers["content-type"] == "application/json"
    assert headers["cache-control"] == get_headers["cache-control"] == "no-store"
    assert headers["content-length"] == str(len(get_body))


def test_the_access_log_leaves_probes_out_but_not_other_requests(web: tuple[ServerProcess, int]) -> None:
    server, port = web
    for path in (HEALTH, LIVE, READY):
        http_request(port, path)
    assert status_of(port, "/api/v1/schema/") == 200
    server.wait_for_line(r"GET /api/v1/schema/ ", timeout=5)

    server.terminate()
    assert server.wait(timeout=GRACEFUL_EXIT) == 0
    access_lines = [line for line in server.output.splitlines() if '"GET /' in line or '"HEAD /' in line]
    assert any("/api/v1/schema/" in line for line in access_lines)
    assert not [line for line in access_lines if "/api/v1/health/" in line]


def test_probe_access_lines_can_be_switched_back_on(web_env: dict[str, str], tmp_path: Path) -> None:
    env = web_env | {"GUNICORN_LOG_HEALTH_PROBES": "true", "WEB_CONCURRENCY": "1"}
    with running_gunicorn(env, tmp_path / "verbose.log") as (server, port):
        http_request(port, LIVE)
        server.wait_for_line(r'"GET /api/v1/health/live/ HTTP/1\.1" 200', timeout=10)


def test_upstream_calls_stay_one_per_ttl_per_worker_under_threaded_load(
    web_env: dict[str, str], tmp_path: Path, clerk_api: FakeClerkAPI, util_service: FakeUtilService
) -> None:
    workers, ttl = 2, 1.0
    env = web_env | {"WEB_CONCURRENCY": str(workers), "GUNICORN_THREADS": "8", "HEALTH_CACHE_TTL": str(ttl)}
    clerk_api.reset_count()
    util_service.reset_count()
    started = time.monotonic()
    with running_gunicorn(env, tmp_path / "load.log") as (_, port):
        deadline = time.monotonic() + 3.0

        def hammer(_: int) -> int:
            sent = 0
            while time.monotonic() < deadline:
                http_request(port, HEALTH if sent % 2 else READY)
                sent += 1
            return sent

        with ThreadPoolExecutor(8) as pool:
            requests = sum(pool.map(hammer, range(8)))
        window = time.monotonic() - started
    bound = workers * (window / ttl + 1)
    assert requests > 100  # enough probes that per-request checks would blow the bound
    assert clerk_api.requests <= bound, (clerk_api.requests, bound, requests)
    assert util_service.requests <= bound, (util_service.requests, bound, requests)
    assert clerk_api.requests >= workers  # every worker did ask, at start


def test_a_malformed_util_grpc_host_stops_gunicorn_at_start(web_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    with running(gunicorn_args(port), web_env | {"UTIL_GRPC_HOST": "nonsense"}, tmp_path / "bad.log") as server:
        assert server.wait(timeout=START_TIMEOUT) == 2  # gunicorn.conf.py: SystemExit(2)
        assert "UTIL_GRPC_HOST" in server.output
        assert "health.E003" in server.output


def test_a_malformed_number_stops_gunicorn_with_a_one_line_reason(web_env: dict[str, str], tmp_path: Path) -> None:
    env = web_env | {"HEALTH_CHECK_TIMEOUT": "soon"}
    with running(gunicorn_args(free_port()), env, tmp_path / "badnumber.log") as server:
        assert server.wait(timeout=START_TIMEOUT) == 2
        assert (
            "(letraz.E004) HEALTH_CHECK_TIMEOUT is 'soon': expected a number of seconds, such as 0.5." in server.output
        )
        assert "Traceback" not in server.output


def test_gunicorn_refuses_to_start_in_production_without_a_secret_key(web_env: dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in web_env.items() if k != "DJANGO_SECRET_KEY"}
    with running(gunicorn_args(free_port()), env, tmp_path / "nokey.log") as server:
        assert server.wait(timeout=START_TIMEOUT) == 2
        assert "letraz.E001" in server.output


def test_a_silent_database_gives_503_with_db_fatal_within_the_time_limit(
    web_env: dict[str, str], blackhole: BlackholeListener, tmp_path: Path
) -> None:
    env = web_env | {
        "DATABASE_URL": f"postgres://u@127.0.0.1:{blackhole.port}/x",
        "HEALTH_CHECK_TIMEOUT": "0.5",
    }
    with running_gunicorn(env, tmp_path / "blackhole.log") as (_, port):
        assert status_of(port, LIVE) == 200
        started = time.monotonic()
        status, body = body_of(port, HEALTH)
        elapsed = time.monotonic() - started
        assert status == 503
        assert body["status"] == "DEGRADED"
        assert body["details"]["db"] == "FATAL"
        assert elapsed < 1.0 + 0.5
        # The other components are unaffected by the hung database (polled: on a loaded
        # machine a first warm-up call may itself miss the 0.5 s limit and be cached).
        details = poll(
            lambda: body_of(port, HEALTH)[1]["details"],
            lambda d: d["clerk"] == d["util_service"] == "OPERATIONAL",
            timeout=15,
        )
        assert details["clerk"] == details["util_service"] == "OPERATIONAL"
        assert details["db"] == "FATAL"
