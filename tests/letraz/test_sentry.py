"""Sentry: one initialisation, unhandled errors reported, probes never traced, one event per change."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from django.test import Client, override_settings

from letraz import sentry as sentry_setup
from letraz.sentry import traces_sampler_for
from tests.peers.sentry import SentryReceiver
from tests.peers.util_service import FakeUtilService


@pytest.fixture
def sentry_on(sentry_receiver: SentryReceiver) -> Iterator[SentryReceiver]:
    outcome = sentry_setup.init_sentry(sentry_receiver.dsn, environment="test")
    assert outcome.error is None
    yield sentry_receiver
    sentry_sdk.init()  # no DSN: nothing leaves the process after this test
    sentry_setup.init_sentry("")


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/health/",
        "/api/v1/health/live/",
        "/api/v1/health/ready/",
        "/api/v1/health",
        "/api/v1/health/live",
        "/api/v1/health/ready",
    ],
)
def test_health_probes_are_never_sampled_slash_or_no_slash(path: str) -> None:
    sampler = traces_sampler_for(1.0)
    assert sampler({"wsgi_environ": {"PATH_INFO": path}, "parent_sampled": True}) == 0.0


@pytest.mark.parametrize("path", ["/api/v1/health/elsewhere/", "/api/v2/health/", "/api/v1/healthz"])
def test_a_path_that_only_looks_like_a_probe_is_sampled(path: str) -> None:
    # What a probe is comes from core/urls.py by URL name, not from a pattern of its own.
    assert traces_sampler_for(1.0)({"wsgi_environ": {"PATH_INFO": path}}) == 1.0


def test_other_requests_are_sampled_at_the_configured_rate_or_as_their_parent() -> None:
    sampler = traces_sampler_for(0.25)
    assert sampler({"wsgi_environ": {"PATH_INFO": "/api/v1/resume/"}}) == 0.25
    assert sampler({"wsgi_environ": {"PATH_INFO": "/api/v1/resume/"}, "parent_sampled": True}) == 1.0
    assert sampler({}) == 0.25


def test_an_unhandled_error_is_reported_to_sentry(sentry_on: SentryReceiver) -> None:
    client = Client(raise_request_exception=False)
    with override_settings(ROOT_URLCONF="tests.letraz.boom_urls"):
        assert client.get("/boom/").status_code == 500
    sentry_sdk.flush(timeout=5)
    assert sentry_on.wait_for(
        lambda r: any(
            v.get("type") == "ZeroDivisionError" for e in r.events for v in e.get("exception", {}).get("values", [])
        ),
        timeout=5,
    )
    [event] = sentry_on.events
    assert event["environment"] == "test"


@pytest.mark.django_db
def test_a_change_to_a_failure_state_is_reported_once_not_per_probe(
    sentry_on: SentryReceiver, util_service: FakeUtilService
) -> None:
    client = Client()

    def changes() -> list[dict[str, Any]]:
        return [e for e in sentry_on.events if e.get("tags", {}).get("health.component") == "util_service"]

    with override_settings(
        UTIL_GRPC_HOST=util_service.target, UTIL_GRPC_TLS=False, SENTRY_DSN=sentry_on.dsn, HEALTH_CHECK_TIMEOUT=3.0
    ):
        for _ in range(3):
            assert client.get("/api/v1/health/").json()["details"]["util_service"] == "OPERATIONAL"
        util_service.mode = "unhealthy"
        for _ in range(5):
            assert client.get("/api/v1/health/").json()["details"]["util_service"] == "FAILED"
        util_service.mode = "healthy"
        for _ in range(3):
            client.get("/api/v1/health/")
        sentry_sdk.flush(timeout=5)
        assert sentry_on.wait_for(lambda r: len(changes()) >= 1, timeout=5)
    [event] = changes()
    assert event["level"] == "warning"
    assert event["tags"]["health.status"] == "FAILED"
    assert event["message"] == "util_service OPERATIONAL -> FAILED (peer says 'unhealthy')"
    # Clerk and util were unconfigured from the start: their first state is one event each.
    others = [e["tags"]["health.component"] for e in sentry_on.events if "health.component" in e.get("tags", {})]
    assert sorted(others) == ["clerk", "util_service"]


def test_credentials_in_vendor_frames_never_reach_sentry(sentry_on: SentryReceiver) -> None:
    secret = f"sk_live_{uuid.uuid4().hex}"  # made at run time: not in any source line Sentry quotes

    def vendor_call(request: dict[str, object]) -> None:
        raise ConnectionError("vendor failure")

    def check() -> None:
        headers = {"Authorization": f"Bearer {secret}"}
        vendor_call({"url": "https://api.clerk.com/v1/jwks", "headers": headers})

    try:
        check()
    except ConnectionError as exc:
        sentry_sdk.capture_exception(exc)
    sentry_sdk.flush(timeout=5)
    assert sentry_on.wait_for(lambda r: len(r.events) >= 1, timeout=5)
    import json

    sent = json.dumps(sentry_on.events)
    assert "vendor failure" in sent  # the event did arrive, with its exception
    assert secret not in sent
