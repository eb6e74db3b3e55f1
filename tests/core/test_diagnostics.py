"""``/api/v1/health/diagnostics/`` and ``manage.py health -v 2``: why, for the token holder only."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client, override_settings

from core.diagnostics import Redactor
from health.checks import build_checks
from health.checks.base import CheckFailed, Verdict
from health.service import HealthService, get_health_service
from health.status import ClerkStatus, Component
from tests.leaks import mentions
from tests.peers.clerk import FakeClerkAPI

pytestmark = pytest.mark.django_db

DIAGNOSTICS = "/api/v1/health/diagnostics/"
TOKEN = "diag-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def patient_checks() -> Iterator[None]:
    """A loaded 2-core machine can take longer than 0.5 s for a first call; time limits are not tested here."""
    with override_settings(HEALTH_CHECK_TIMEOUT=3.0):
        yield


def diagnose(client: Client) -> dict[str, Any]:
    response = client.get(DIAGNOSTICS, headers=AUTH)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    body: dict[str, Any] = json.loads(response.content)
    return body


def test_without_a_configured_token_the_endpoint_does_not_exist(client: Client) -> None:
    for headers in ({}, AUTH, {"Authorization": "Bearer "}):
        response = client.get(DIAGNOSTICS, headers=headers)
        assert response.status_code == 404, headers
        assert b"component" not in response.content


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer", f"Bearer {TOKEN[:-1]}"],
)
def test_a_missing_or_wrong_token_is_a_401(client: Client, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with override_settings(HEALTH_DIAGNOSTICS_TOKEN=TOKEN):
        response = client.get(DIAGNOSTICS, headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="diagnostics"'
    assert set(json.loads(response.content)) == {"detail"}


def test_the_token_holder_sees_every_component_the_settings_and_the_instance(client: Client, peers: Any) -> None:
    clerk, _ = peers
    client.get("/api/v1/health/")
    clerk.mode = "unauthorized"
    client.get("/api/v1/health/")
    client.get("/api/v1/health/")
    with override_settings(HEALTH_DIAGNOSTICS_TOKEN=TOKEN, HEALTH_CHECK_TIMEOUT=2.5):
        client.get("/api/v1/health/")
        body = diagnose(client)
        assert client.head(DIAGNOSTICS, headers=AUTH).status_code == 200
        assert client.post(DIAGNOSTICS, headers=AUTH).status_code == 405

    assert set(body["components"]) == {c.value for c in Component}
    clerk_now = body["components"]["clerk"]
    assert clerk_now["state"] == "DOWN"
    assert clerk_now["reason"] == "HTTP 401 (key rejected: check CLERK_SECRET_KEY)"
    assert clerk_now["consecutive_failures"] == 1  # the settings change rebuilt the service: one run since
    assert clerk_now["runs_in_flight"] == 0
    assert clerk_now["duration_seconds"] >= 0
    assert clerk_now["since"] == clerk_now["last_checked"]
    db = body["components"]["db"]
    assert db["state"] == "OPERATIONAL"
    assert db["consecutive_failures"] == 0
    assert db["last_success"] == db["last_checked"]

    settings = body["settings"]
    assert settings["check_timeout_seconds"] == 2.5
    assert settings["critical_components"] == ["clerk", "db", "util_service"]
    assert set(settings["cache_ttl_seconds"]) == {c.value for c in Component}
    assert settings["configured"] == {
        "sentry_dsn": False,
        "clerk_secret_key": True,
        "util_grpc_host": True,
        "drain_file": False,
    }
    assert body["version"] and body["version"] != "unknown"
    assert body["uptime_seconds"] >= 0
    assert body["draining"] is False


def test_since_stays_and_failures_add_up_until_a_success_resets_them(client: Client, peers: Any) -> None:
    clerk, _ = peers
    with override_settings(HEALTH_DIAGNOSTICS_TOKEN=TOKEN):
        client.get("/api/v1/health/")
        clerk.mode = "server_error"
        client.get("/api/v1/health/")
        first = diagnose(client)["components"]["clerk"]
        client.get("/api/v1/health/")
        client.get("/api/v1/health/")
        later = diagnose(client)["components"]["clerk"]
        clerk.mode = "ok"
        client.get("/api/v1/health/")
        healed = diagnose(client)["components"]["clerk"]
    assert (first["state"], first["consecutive_failures"]) == ("DOWN", 1)
    assert (later["state"], later["consecutive_failures"], later["since"]) == ("DOWN", 3, first["since"])
    assert later["last_checked"] > first["last_checked"]
    assert (healed["state"], healed["consecutive_failures"]) == ("OPERATIONAL", 0)
    assert healed["last_success"] == healed["last_checked"] == healed["since"]


def test_asking_for_diagnostics_runs_no_check(client: Client, peers: Any) -> None:
    clerk, util = peers
    with override_settings(HEALTH_DIAGNOSTICS_TOKEN=TOKEN):
        client.get("/api/v1/health/")
        calls = clerk.requests, util.requests
        for _ in range(10):
            diagnose(client)
    assert (clerk.requests, util.requests) == calls


def test_a_warm_up_run_that_finished_shows_without_any_probe(client: Client, peers: Any) -> None:
    clerk, util = peers
    with override_settings(HEALTH_DIAGNOSTICS_TOKEN=TOKEN):
        get_health_service().warm_up()
        deadline = time.monotonic() + 10
        body = diagnose(client)
        while None in {c["state"] for c in body["components"].values()}:
            assert time.monotonic() < deadline, body
            time.sleep(0.02)
            body = diagnose(client)
    assert {name: c["state"] for name, c in body["components"].items()} == {
        "sentry": "UNINITIALIZED",
        "clerk": "OPERATIONAL",
        "db": "OPERATIONAL",
        "util_service": "OPERATIONAL",
    }
    assert {c["runs_in_flight"] for c in body["components"].values()} == {0}
    assert (clerk.requests, util.requests) == (1, 1)


def test_before_any_check_the_states_are_null(client: Client) -> None:
    with override_settings(HEALTH_DIAGNOSTICS_TOKEN=TOKEN):
        body = diagnose(client)
    assert {c["state"] for c in body["components"].values()} == {None}


# -- nothing secret, even here --------------------------------------------------------------------


@dataclass
class QuotingCheck:
    """A Clerk check whose reason quotes everything a careless driver message could."""

    quote: str
    component: Component = field(default=Component.CLERK, init=False)
    timeout_status: ClerkStatus = field(default=ClerkStatus.DOWN, init=False)
    error_status: ClerkStatus = field(default=ClerkStatus.DOWN, init=False)

    def run(self, timeout: float) -> Verdict:
        raise CheckFailed(ClerkStatus.DOWN, self.quote)

    def close(self) -> None:
        pass


SECRETS = {
    "CLERK_SECRET_KEY": "sk_live_VerySecretClerkKey42",
    "SENTRY_DSN": "https://dsnpublickey0123@o77.ingest.example.io:8443/99",
    "UTIL_GRPC_HOST": "util.internal.example:7443",
}


def test_diagnostics_reasons_are_scrubbed_of_credentials_and_hosts(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    quote = (
        "connect to https://user:dbpass-s3cret@db.internal.example:6543/letraz failed; "
        "util.internal.example:7443 said no; key sk_live_VerySecretClerkKey42 rejected by "
        "o77.ingest.example.io (dsnpublickey0123); peer 10.20.30.40:9000 and [fd00::1]:443; "
        'server at "db.internal.example", port 6543'
    )
    databases = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "x", "USER": "u"}}
    databases["default"] |= {"PASSWORD": "dbpass-s3cret", "HOST": "db.internal.example", "PORT": "6543"}
    with override_settings(HEALTH_DIAGNOSTICS_TOKEN=TOKEN, **SECRETS):
        scrub = Redactor.from_settings()
        scrubbed = Redactor.from_settings(databases=databases)(quote)
        checks = [QuotingCheck(quote) if c.component == Component.CLERK else c for c in build_checks()]
        service = HealthService(checks, instance_id="i", critical=frozenset(), ttl=0, max_staleness=0)
        monkeypatch.setattr("core.diagnostics.get_health_service", lambda: service)
        service.check()
        text = client.get(DIAGNOSTICS, headers=AUTH).content.decode()
        service.close()
    reason = json.loads(text)["components"]["clerk"]["reason"]
    assert reason == scrub(quote)
    for leak in ("VerySecretClerkKey42", "dsnpublickey0123", "util.internal.example", "7443", "o77.ingest", "dbpass"):
        assert not mentions(text, leak), (leak, text)
    for leak in ("dbpass-s3cret", "db.internal.example", "6543", "10.20.30.40", "fd00::1", "9000"):
        assert not mentions(scrubbed, leak), (leak, scrubbed)
    assert TOKEN not in text
    assert "[redacted]" in scrubbed and "[host]" in scrubbed


def test_the_redactor_leaves_ordinary_reasons_alone() -> None:
    with override_settings(**SECRETS):
        scrub = Redactor.from_settings()
    for reason in ("HTTP 401", "timeout after 0.5 s", "RPC UNAVAILABLE", "SELECT 1 took 5432 ms", "14 unapplied"):
        assert scrub(reason) == reason


# -- the command line ----------------------------------------------------------------------------


def test_manage_py_health_v2_prints_the_same_diagnostics(clerk_api: FakeClerkAPI, peers: Any) -> None:
    clerk_api.mode = "unauthorized"
    out, err = io.StringIO(), io.StringIO()
    started = time.time()
    with pytest.raises(SystemExit) as exited:
        call_command("health", verbosity=2, stdout=out, stderr=err)
    assert exited.value.code == 1
    report = json.loads(out.getvalue())  # stdout stays the one-line contract body
    assert report["details"]["clerk"] == "DOWN"
    diagnostics = json.loads(err.getvalue()[err.getvalue().index("{") :])
    assert diagnostics["components"]["clerk"]["state"] == "DOWN"
    assert diagnostics["components"]["clerk"]["reason"] == "HTTP 401 (key rejected: check CLERK_SECRET_KEY)"
    assert diagnostics["components"]["db"]["state"] == "OPERATIONAL"
    assert diagnostics["settings"]["configured"]["clerk_secret_key"] is True
    assert clerk_api.secret_key not in err.getvalue()
    assert diagnostics["components"]["clerk"]["last_checked"] >= time.strftime(
        "%Y-%m-%dT%H:%M:%S", time.gmtime(started - 1)
    )


def test_manage_py_health_without_v2_prints_no_diagnostics(peers: Any) -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command("health", stdout=out, stderr=err)
    assert json.loads(out.getvalue())["status"] == "OPERATIONAL"
    assert err.getvalue() == ""
