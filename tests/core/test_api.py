"""``/api/v1/health/`` and its probes, through Django's request cycle, with real peers."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, override_settings

from health.checks import ClerkCheck, build_checks
from health.checks.base import Verdict
from health.listeners import LogListener
from health.service import HealthService, build_service, get_health_service
from health.status import STATUS_TYPES, Component, SentryStatus
from tests.peers.clerk import FakeClerkAPI
from tests.peers.tcp import BlackholeListener

HEALTH, LIVE, READY = "/api/v1/health/", "/api/v1/health/live/", "/api/v1/health/ready/"
pytestmark = pytest.mark.django_db


def body(response: Any) -> dict[str, Any]:
    assert response["Content-Type"] == "application/json"
    return json.loads(response.content)


def test_all_green_is_200_with_the_contracts_body(client: Client, peers: Any) -> None:
    response = client.get(HEALTH)
    assert response.status_code == 200
    assert body(response) == {
        "instance_id": body(response)["instance_id"],
        "status": "OPERATIONAL",
        "details": {
            "sentry": "UNINITIALIZED",
            "clerk": "OPERATIONAL",
            "db": "OPERATIONAL",
            "util_service": "OPERATIONAL",
        },
    }
    assert response["Cache-Control"] == "no-store"


def test_a_fresh_clone_without_clerk_or_util_is_degraded_with_503(client: Client) -> None:
    response = client.get(HEALTH)
    assert response.status_code == 503
    assert body(response)["status"] == "DEGRADED"
    assert body(response)["details"] == {
        "sentry": "UNINITIALIZED",
        "clerk": "DOWN",
        "db": "OPERATIONAL",
        "util_service": "DISCONNECTED",
    }


@pytest.mark.parametrize("accept", ["*/*", "text/html", "application/xml", "text/html,application/xhtml+xml;q=0.9"])
def test_the_answer_is_json_whatever_the_accept_header(client: Client, peers: Any, accept: str) -> None:
    response = client.get(HEALTH, HTTP_ACCEPT=accept)
    assert response.status_code == 200
    assert body(response)["status"] == "OPERATIONAL"


@pytest.mark.parametrize("path", [HEALTH, LIVE, READY])
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete", "options"])
def test_other_methods_get_405_with_a_json_body(client: Client, method: str, path: str) -> None:
    response = getattr(client, method)(path)
    assert response.status_code == 405
    assert body(response) == {"detail": f'Method "{method.upper()}" not allowed.'}
    assert response["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("path", [HEALTH, LIVE, READY])
def test_each_probe_answers_without_the_trailing_slash_too_never_a_redirect(
    client: Client, peers: Any, path: str
) -> None:
    with_slash, without = client.get(path), client.get(path.rstrip("/"))
    assert without.status_code == with_slash.status_code == 200
    assert body(without).keys() == body(with_slash).keys()


def test_unknown_query_parameters_are_ignored(client: Client, peers: Any) -> None:
    response = client.get(HEALTH, {"verbose": "1", "format": "xml", "x": "<script>"})
    assert response.status_code == 200
    assert set(body(response)) == {"instance_id", "status", "details"}


def test_head_gives_the_same_status_and_headers_and_no_body(client: Client, peers: Any) -> None:
    for path in (HEALTH, LIVE, READY):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code
        assert head.content == b""
        for header in ("Content-Type", "Cache-Control", "Content-Length"):
            assert head[header] == got[header], (path, header)


def test_an_unhealthy_util_service_is_503_with_the_full_body(client: Client, peers: Any) -> None:
    _, util = peers
    util.mode = "unhealthy"
    response = client.get(HEALTH)
    assert response.status_code == 503
    assert body(response)["status"] == "DEGRADED"
    assert body(response)["details"]["util_service"] == "FAILED"
    assert body(response)["details"]["clerk"] == "OPERATIONAL"


def test_live_means_live_each_change_of_a_peer_shows_in_the_next_answer(client: Client, peers: Any) -> None:
    clerk, util = peers
    assert client.get(HEALTH).status_code == 200
    util.mode = "unhealthy"
    assert body(client.get(HEALTH))["details"]["util_service"] == "FAILED"
    util.stop()
    assert body(client.get(HEALTH))["details"]["util_service"] == "DISCONNECTED"
    clerk.mode = "unauthorized"
    assert body(client.get(HEALTH))["details"]["clerk"] == "DOWN"
    clerk.mode = "ok"
    util.mode = "healthy"
    util.start()
    deadline = time.monotonic() + 5
    while (response := client.get(HEALTH)).status_code != 200:
        assert time.monotonic() < deadline, body(response)
    assert body(response)["status"] == "OPERATIONAL"


def test_every_dependency_hanging_still_answers_within_the_time_limit(
    client: Client, clerk_api: FakeClerkAPI, blackhole: BlackholeListener
) -> None:
    clerk_api.mode, clerk_api.delay = "slow", 30
    with override_settings(
        CLERK_SECRET_KEY=clerk_api.secret_key,
        CLERK_API_URL=clerk_api.url,
        UTIL_GRPC_HOST=blackhole.target,
        UTIL_GRPC_TLS=False,
        HEALTH_CHECK_TIMEOUT=0.5,
    ):
        started = time.monotonic()
        response = client.get(HEALTH)
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert body(response)["details"]["clerk"] == "DOWN"
    assert body(response)["details"]["util_service"] == "DISCONNECTED"
    assert elapsed < 2.0  # 0.5 s limit, concurrently; generous bound that proves "no hang"


def test_public_bodies_carry_no_secret_host_or_exception_text(
    client: Client, clerk_api: FakeClerkAPI, closed_port: int
) -> None:
    clerk_api.mode = "server_error"
    with override_settings(
        CLERK_SECRET_KEY=clerk_api.secret_key,
        CLERK_API_URL=clerk_api.url,
        UTIL_GRPC_HOST=f"127.0.0.1:{closed_port}",
        UTIL_GRPC_TLS=False,
        SENTRY_DSN="https://verysecretkey@o1.ingest.sentry.io/1",
    ):
        text = client.get(HEALTH).content.decode()
    for leak in (clerk_api.secret_key, "verysecretkey", "127.0.0.1", "Error", "Traceback", "HTTP"):
        assert leak not in text
    assert set(json.loads(text)) == {"instance_id", "status", "details"}
    details = json.loads(text)["details"]
    for component, status_type in STATUS_TYPES.items():
        assert details[component.value] in {s.value for s in status_type}


def test_critical_components_decide_the_status(client: Client, peers: Any) -> None:
    clerk, _ = peers
    clerk.mode = "unauthorized"
    assert client.get(HEALTH).status_code == 503
    with override_settings(HEALTH_CRITICAL_COMPONENTS=("db", "util_service")):
        response = client.get(HEALTH)
    assert response.status_code == 200
    assert body(response)["details"]["clerk"] == "DOWN"


def test_sentry_never_decides_the_status_by_default(client: Client, peers: Any) -> None:
    with override_settings(SENTRY_DSN="not-a-dsn"):
        response = client.get(HEALTH)
    assert body(response)["details"]["sentry"] == "FAILED"
    assert response.status_code == 200


def test_the_instance_id_is_the_configured_one_or_a_stable_host_id(client: Client) -> None:
    derived = body(client.get(LIVE))["instance_id"]
    assert uuid.UUID(derived).version == 5
    assert body(client.get(HEALTH))["instance_id"] == derived
    with override_settings(INSTANCE_ID="web-7f9c-abcde"):
        assert body(client.get(HEALTH))["instance_id"] == "web-7f9c-abcde"


def test_liveness_touches_no_dependency(client: Client, peers: Any) -> None:
    clerk, util = peers
    clerk.mode, util.mode = "server_error", "unhealthy"
    response = client.get(LIVE, HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert body(response) == {"instance_id": body(response)["instance_id"], "status": "OPERATIONAL"}
    assert response["Cache-Control"] == "no-store"
    assert (clerk.requests, util.requests) == (0, 0)


def test_readiness_shows_every_component_but_a_shared_dependency_does_not_fail_it(client: Client, peers: Any) -> None:
    _, util = peers
    assert client.get(READY).status_code == 200
    assert body(client.get(READY)) == body(client.get(HEALTH)) | {"instance_id": body(client.get(READY))["instance_id"]}
    util.mode = "internal"
    assert client.get(HEALTH).status_code == 503
    response = client.get(READY)
    assert response.status_code == 200, "a util outage hits every pod alike: readiness must not empty the Service"
    assert body(response)["details"]["util_service"] == "FAILED"
    assert body(response)["status"] == "OPERATIONAL"


@pytest.mark.parametrize("path", [READY, READY.rstrip("/")])
def test_a_readiness_component_that_fails_takes_readiness_down_with_a_matching_status(
    client: Client, peers: Any, path: str
) -> None:
    _, util = peers
    with override_settings(HEALTH_READINESS_COMPONENTS=("util_service",)):
        assert client.get(path).status_code == 200
        util.mode = "internal"
        response = client.get(path)
    assert response.status_code == 503
    assert body(response)["status"] == "DEGRADED"
    assert set(body(response)["details"]) == {"sentry", "clerk", "db", "util_service"}


def test_draining_takes_readiness_down_and_keeps_liveness_up(client: Client, peers: Any, tmp_path: Path) -> None:
    drain = tmp_path / "drain"
    with override_settings(HEALTH_DRAIN_FILE=str(drain)):
        assert client.get(READY).status_code == 200
        drain.touch()
        response = client.get(READY)
        assert response.status_code == 503
        assert body(response)["status"] == "DEGRADED"
        assert client.get(LIVE).status_code == 200
        assert client.get(HEALTH).status_code == 200  # the report itself is unchanged
        drain.unlink()
        assert client.get(READY).status_code == 200


# --- never a 500 ------------------------------------------------------------------------------


class ExplodingCheck:
    component = Component.CLERK
    timeout_status = error_status = STATUS_TYPES[Component.CLERK].DOWN

    def run(self, timeout: float) -> Verdict:
        raise KeyError("internal detail that must not leak")

    def close(self) -> None:
        pass


def test_a_check_that_raises_gives_its_failure_state_and_a_logged_traceback(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    checks = [ExplodingCheck() if c.component == Component.CLERK else c for c in build_checks()]
    service = HealthService(
        checks,
        instance_id="i",
        critical=frozenset({Component.CLERK}),
        ttl=0,
        max_staleness=0,
        listeners=[LogListener()],
    )
    monkeypatch.setattr("core.views.get_health_service", lambda: service)
    with caplog.at_level(logging.WARNING, logger="health"):
        response = client.get(HEALTH)
        assert service.flush_notifications(10)  # the log line is written by the notifier thread
    service.close()
    assert response.status_code == 503
    assert body(response)["details"]["clerk"] == "DOWN"
    assert "internal detail" not in response.content.decode()
    [record] = [r for r in caplog.records if "unexpected KeyError" in r.getMessage()]
    assert record.exc_info is not None


def test_an_engine_failure_is_still_a_defined_503(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> HealthService:
        raise RuntimeError("engine bug")

    monkeypatch.setattr("core.views.get_health_service", broken)
    response = client.get(HEALTH)
    assert response.status_code == 503
    assert body(response)["details"] == {"sentry": "FAILED", "clerk": "DOWN", "db": "FATAL", "util_service": "FAILED"}
    assert "engine bug" not in response.content.decode()


# --- cached, single flight ---------------------------------------------------------------------


def test_probes_within_the_ttl_cost_one_upstream_call_per_dependency(client: Client, peers: Any) -> None:
    clerk, util = peers
    with override_settings(HEALTH_CACHE_TTL=60.0, HEALTH_MAX_STALENESS=120.0):
        statuses = {client.get(path).status_code for path in (HEALTH, READY) * 25}
        statuses |= {client.head(path).status_code for path in (HEALTH, READY) * 25}
    assert statuses == {200}
    assert (clerk.requests, util.requests) == (1, 1)


def test_readiness_waits_for_the_first_verdict_and_a_hanging_dependency_is_a_verdict(
    client: Client, peers: Any
) -> None:
    # A new pod's first readiness answer comes after every component has a verdict; one
    # that hangs past the time limit has one (its failure state), so a Clerk that hangs
    # keeps no new pod out of rotation, and a pod that opts Clerk in stays out.
    clerk, _ = peers
    clerk.mode, clerk.delay = "slow", 1.0
    with override_settings(HEALTH_CHECK_TIMEOUT=0.3):
        first = client.get(READY)
        assert first.status_code == 200
        assert body(first)["details"]["clerk"] == "DOWN"
    with override_settings(HEALTH_CHECK_TIMEOUT=0.3, HEALTH_READINESS_COMPONENTS=("clerk",)):
        assert client.get(READY).status_code == 503
        clerk.mode = "ok"
        deadline = time.monotonic() + 5
        while (response := client.get(READY)).status_code != 200:
            assert time.monotonic() < deadline, body(response)


def test_concurrent_probes_wait_for_one_run_instead_of_starting_their_own(client: Client, peers: Any) -> None:
    clerk, util = peers
    clerk.mode, clerk.delay = "slow", 0.3
    with override_settings(HEALTH_CACHE_TTL=60.0, HEALTH_MAX_STALENESS=120.0, HEALTH_CHECK_TIMEOUT=2.0):
        build = threading.Barrier(16)

        def probe(_: int) -> int:
            build.wait(5)
            return Client().get(HEALTH).status_code

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(probe, range(16)))
    assert codes == [200] * 16
    assert clerk.requests == 1
    assert util.requests == 1


def test_a_stale_result_is_served_at_once_and_refreshed_in_the_background(clerk_api: FakeClerkAPI) -> None:
    now = [1000.0]
    check = ClerkCheck(secret_key=clerk_api.secret_key, api_url=clerk_api.url)
    service = HealthService(
        [check], instance_id="t", critical=frozenset(), timeout=2.0, ttl=5, max_staleness=30, clock=lambda: now[0]
    )
    try:
        assert service.check().results[Component.CLERK].status == "OPERATIONAL"
        clerk_api.mode, clerk_api.delay = "slow", 10
        now[0] += 6  # past the TTL, well within the staleness bound
        started = time.monotonic()
        served = service.check().results[Component.CLERK]
        assert time.monotonic() - started < 1.0  # answered from the cache, not after the 10 s refresh
        assert served.status == "OPERATIONAL"
        assert clerk_api.wait_for_requests(2, 5)  # and the refresh did go out
    finally:
        clerk_api.stop()
        service.close()


# --- one log line and one Sentry event per change -----------------------------------------------


def test_a_change_of_state_is_logged_once_and_a_probe_that_changes_nothing_logs_nothing(
    client: Client, peers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, util = peers
    # A generous limit: one check missing it on a loaded machine would add a state.
    with caplog.at_level(logging.INFO, logger="health"), override_settings(HEALTH_CHECK_TIMEOUT=3.0):
        client.get(HEALTH)
        util.mode = "unhealthy"
        for _ in range(5):
            client.get(HEALTH)
        util.mode = "healthy"
        for _ in range(5):
            client.get(HEALTH)
        assert get_health_service().flush_notifications(10)  # lines come from the notifier thread
    util_lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.getMessage().startswith("util_service")]
    assert util_lines == [
        ("INFO", "util_service UNKNOWN -> OPERATIONAL"),
        ("WARNING", "util_service OPERATIONAL -> FAILED (peer says 'unhealthy')"),
        ("INFO", "util_service FAILED -> OPERATIONAL"),
    ]


def test_no_django_request_error_is_logged_for_a_503(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="django.request"):
        for _ in range(3):
            assert client.get(HEALTH).status_code == 503
    assert [r for r in caplog.records if r.name == "django.request"] == []


def test_the_default_service_is_built_from_settings() -> None:
    service = build_service()
    try:
        assert service.components == tuple(Component)
        assert service.critical == {Component.CLERK, Component.DB, Component.UTIL_SERVICE}
        assert re.fullmatch(r"[0-9a-f-]{36}", service.instance_id)
    finally:
        service.close()


def test_sentry_uninitialized_is_no_failure_in_the_logs(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="health"):
        client.get(HEALTH)
        assert get_health_service().flush_notifications(10)
    [line] = [r for r in caplog.records if r.getMessage().startswith("sentry")]
    assert (line.levelname, line.getMessage()) == (
        "INFO",
        f"sentry UNKNOWN -> {SentryStatus.UNINITIALIZED} (SENTRY_DSN is not set)",
    )
