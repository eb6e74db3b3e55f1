"""Readiness for a fleet and a polling budget per dependency, against the real gunicorn (issue #8)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.clerk import FakeClerkAPI
from tests.peers.util_service import FakeUtilService
from tests.process.support import UNHURRIED, base_env, http_request, migrated_database, peer_env, poll, running_gunicorn

pytestmark = pytest.mark.process

HEALTH, LIVE, READY = "/api/v1/health/", "/api/v1/health/live/", "/api/v1/health/ready/"


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database(tmp_path_factory.mktemp("readiness-db")) as url:
        yield url


def answer(port: int, path: str) -> tuple[int, dict[str, Any]]:
    status, _, raw = http_request(port, path)
    return status, json.loads(raw)


@pytest.mark.parametrize(("readiness_components", "ready_status"), [("", 200), ("clerk", 503)])
def test_clerk_and_util_down_fail_the_report_but_readiness_only_when_opted_in(
    tmp_path: Path,
    database_url: str,
    clerk_api: FakeClerkAPI,
    util_service: FakeUtilService,
    readiness_components: str,
    ready_status: int,
) -> None:
    clerk_api.mode, util_service.mode = "server_error", "unhealthy"
    env = base_env(
        DATABASE_URL=database_url,
        WEB_CONCURRENCY="2",
        GUNICORN_THREADS="4",
        HEALTH_CHECK_TIMEOUT="0.9",
        HEALTH_READINESS_COMPONENTS=readiness_components,
        **peer_env(clerk_api, util_service),
    )
    with running_gunicorn(env, tmp_path / "gunicorn.log") as (server, port):
        status, report = answer(port, HEALTH)
        assert (status, report["status"]) == (503, "DEGRADED"), server.output
        assert (report["details"]["clerk"], report["details"]["util_service"]) == ("DOWN", "FAILED")
        for _ in range(6):  # both workers, whichever accepts
            status, body = answer(port, READY)
            assert status == ready_status, (body, server.output)
            assert body["status"] == ("OPERATIONAL" if status == 200 else "DEGRADED")
            assert body["details"] == report["details"]  # every component is still shown
        assert answer(port, LIVE)[0] == 200


def test_each_dependency_is_polled_at_its_own_ttl(
    tmp_path: Path, database_url: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService
) -> None:
    workers, requests = 2, 30
    env = base_env(
        DATABASE_URL=database_url,
        WEB_CONCURRENCY=str(workers),
        HEALTH_CHECK_TIMEOUT="0.9",
        HEALTH_CACHE_TTL="0",  # every other dependency is asked on every request
        HEALTH_CACHE_TTL_CLERK="600",
        HEALTH_MAX_STALENESS="900",
        **peer_env(clerk_api, util_service),
    )
    with running_gunicorn(env, tmp_path / "gunicorn.log") as (server, port):
        # Both workers answered at least once (each asks Clerk once, at warm-up).
        assert clerk_api.wait_for_requests(workers, timeout=15), server.output
        clerk_api.reset_count()
        util_service.reset_count()
        statuses = {http_request(port, HEALTH)[0] for _ in range(requests)}
    assert statuses == {200}
    assert clerk_api.requests == 0, "Clerk's TTL (600 s) had not run out"
    assert util_service.requests >= requests, "util's TTL is 0: one call per report"


def test_readiness_follows_the_drain_file_at_once(
    tmp_path: Path, database_url: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService
) -> None:
    drain = tmp_path / "drain"
    env = base_env(
        DATABASE_URL=database_url, HEALTH_DRAIN_FILE=str(drain), **UNHURRIED, **peer_env(clerk_api, util_service)
    )
    with running_gunicorn(env, tmp_path / "gunicorn.log") as (_, port):
        assert answer(port, READY)[0] == 200
        drain.touch()
        status, body = poll(lambda: answer(port, READY), lambda a: a[0] == 503, timeout=5)
        assert (status, body["status"]) == (503, "DEGRADED")
        assert answer(port, HEALTH)[0] == 200
