"""Each check against a real peer on loopback: what it says for every way things go."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sentry_sdk
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from django.db.migrations.recorder import MigrationRecorder

from health.checks import ClerkCheck, DatabaseCheck, SentryCheck, UtilServiceCheck
from health.checks.base import CheckFailed, HealthCheck, Verdict
from health.conf import parse_grpc_target
from health.service import HealthService
from health.status import ClerkStatus, Component, DatabaseStatus, SentryStatus, UtilServiceStatus
from letraz import sentry as sentry_setup
from tests.peers.clerk import FakeClerkAPI
from tests.peers.sentry import SentryReceiver
from tests.peers.tcp import BlackholeListener
from tests.peers.util_service import FakeUtilService

TIMEOUT = 0.5


def verdict_of(check: HealthCheck, timeout: float = TIMEOUT) -> tuple[str, str]:
    """Run the check directly: its state and reason, raised or returned."""
    try:
        verdict: Verdict = check.run(timeout)
    except CheckFailed as failure:
        return failure.status, failure.reason
    return verdict.status, verdict.reason


def through_service(check: HealthCheck, timeout: float = TIMEOUT) -> tuple[str, str]:
    """Run the check as production does: in the runner's thread, under its time limit."""
    service = HealthService([check], instance_id="test", critical=frozenset(), timeout=timeout, ttl=0, max_staleness=0)
    try:
        result = service.check().results[check.component]
        return result.status, result.reason
    finally:
        service.close()


# --- Clerk ----------------------------------------------------------------------------------


@pytest.fixture
def clerk_check(clerk_api: FakeClerkAPI) -> Iterator[ClerkCheck]:
    check = ClerkCheck(secret_key=clerk_api.secret_key, api_url=clerk_api.url)
    yield check
    check.close()


def test_clerk_is_operational_when_jwks_answers_200(clerk_check: ClerkCheck, clerk_api: FakeClerkAPI) -> None:
    assert verdict_of(clerk_check) == (ClerkStatus.OPERATIONAL, "")
    assert clerk_api.requests == 1


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("unauthorized", "HTTP 401 (key rejected: check CLERK_SECRET_KEY)"),
        ("server_error", "HTTP 500 (Clerk's own error)"),
        ("malformed", "unreadable answer"),
        ("wrong_shape", "unreadable answer"),
    ],
)
def test_clerk_is_down_when_the_api_answers_badly(
    clerk_check: ClerkCheck, clerk_api: FakeClerkAPI, mode: str, reason: str
) -> None:
    clerk_api.mode = mode
    assert verdict_of(clerk_check) == (ClerkStatus.DOWN, reason)
    assert clerk_api.requests == 1, "the SDK must not retry inside a health check"


def test_clerk_is_down_with_a_wrong_secret_key(clerk_api: FakeClerkAPI) -> None:
    check = ClerkCheck(secret_key="sk_test_wrong", api_url=clerk_api.url)
    assert verdict_of(check) == (ClerkStatus.DOWN, "HTTP 401 (key rejected: check CLERK_SECRET_KEY)")


def test_clerk_is_down_without_a_secret_key_and_is_never_called(clerk_api: FakeClerkAPI) -> None:
    assert verdict_of(ClerkCheck(secret_key="", api_url=clerk_api.url)) == (
        ClerkStatus.DOWN,
        "CLERK_SECRET_KEY is not set",
    )
    assert clerk_api.requests == 0


def test_clerk_is_down_when_the_port_is_closed(closed_port: int) -> None:
    check = ClerkCheck(secret_key="sk", api_url=f"http://127.0.0.1:{closed_port}/v1")
    assert verdict_of(check) == (ClerkStatus.DOWN, "connection refused")


def test_clerk_is_down_with_a_malformed_api_url() -> None:
    assert verdict_of(ClerkCheck(secret_key="sk", api_url="http://[::1/v1")) == (ClerkStatus.DOWN, "InvalidURL")


def test_clerk_is_down_when_the_api_is_slow_and_the_check_is_bounded(
    clerk_check: ClerkCheck, clerk_api: FakeClerkAPI
) -> None:
    clerk_api.mode, clerk_api.delay = "slow", 30
    started = time.monotonic()
    status, reason = verdict_of(clerk_check, timeout=0.3)
    assert (status, reason) == (ClerkStatus.DOWN, "no answer within 0.3 s")
    assert time.monotonic() - started < 5  # generous: proves "does not hang"


def test_clerk_is_down_when_a_peer_accepts_and_never_answers(blackhole: BlackholeListener) -> None:
    check = ClerkCheck(secret_key="sk", api_url=f"http://{blackhole.target}/v1")
    status, reason = through_service(check)
    assert status == ClerkStatus.DOWN
    assert reason == "no answer within 0.5 s"  # whichever limit fires first says so


def test_one_clerk_client_serves_every_run(clerk_check: ClerkCheck, clerk_api: FakeClerkAPI) -> None:
    verdict_of(clerk_check)
    client = clerk_check._client
    verdict_of(clerk_check)
    assert client is not None and clerk_check._client is client
    assert clerk_api.requests == 2


def test_the_clerk_key_is_never_in_the_checks_repr(clerk_check: ClerkCheck, clerk_api: FakeClerkAPI) -> None:
    assert clerk_api.secret_key not in repr(clerk_check)


# --- util service -------------------------------------------------------------------------


def util_check(target: str, protocol: str = "letraz", tls: bool = False) -> UtilServiceCheck:
    return UtilServiceCheck(target=parse_grpc_target(target), tls=tls, protocol=protocol)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("healthy", (UtilServiceStatus.OPERATIONAL, "")),
        ("unhealthy", (UtilServiceStatus.FAILED, "peer says 'unhealthy'")),
        (
            "unimplemented",
            (UtilServiceStatus.FAILED, "RPC UNIMPLEMENTED (no such health method: check UTIL_GRPC_HEALTH_PROTOCOL)"),
        ),
        ("internal", (UtilServiceStatus.FAILED, "RPC INTERNAL (its own error)")),
    ],
)
def test_util_service_states_follow_the_letraz_health_answer(
    util_service: FakeUtilService, mode: str, expected: tuple[str, str]
) -> None:
    util_service.mode = mode
    check = util_check(util_service.target)
    try:
        assert verdict_of(check) == expected
    finally:
        check.close()


@pytest.mark.parametrize(
    ("serving", "expected"),
    [(True, (UtilServiceStatus.OPERATIONAL, "")), (False, (UtilServiceStatus.FAILED, "peer says 'NOT_SERVING'"))],
)
def test_util_service_can_be_asked_with_the_standard_grpc_health_protocol(
    util_service: FakeUtilService, serving: bool, expected: tuple[str, str]
) -> None:
    util_service.mode = "unimplemented"  # the letraz method is not what is asked
    util_service.set_grpc_health(serving)
    check = util_check(util_service.target, protocol="grpc")
    try:
        assert verdict_of(check) == expected
        assert util_service.grpc_health_requests == 1
    finally:
        check.close()


def test_util_service_is_disconnected_when_unset() -> None:
    check = UtilServiceCheck(target=None)
    assert verdict_of(check) == (UtilServiceStatus.DISCONNECTED, "UTIL_GRPC_HOST is not set")


def test_util_service_is_disconnected_when_the_port_is_closed(closed_port: int) -> None:
    check = util_check(f"127.0.0.1:{closed_port}")
    try:
        assert verdict_of(check) == (UtilServiceStatus.DISCONNECTED, "RPC UNAVAILABLE (unreachable)")
    finally:
        check.close()


def test_util_service_is_disconnected_when_the_peer_never_speaks(blackhole: BlackholeListener) -> None:
    check = util_check(blackhole.target)
    try:
        status, _ = through_service(check)
        assert status == UtilServiceStatus.DISCONNECTED
    finally:
        check.close()


def test_util_service_with_tls_does_not_talk_to_a_plaintext_peer(util_service: FakeUtilService) -> None:
    check = util_check(util_service.target, tls=True)
    try:
        assert verdict_of(check)[0] == UtilServiceStatus.DISCONNECTED
        assert util_service.requests == 0
    finally:
        check.close()


def test_util_service_is_operational_on_the_first_check_after_the_peer_restarts(
    util_service: FakeUtilService,
) -> None:
    check = util_check(util_service.target)
    try:
        assert verdict_of(check)[0] == UtilServiceStatus.OPERATIONAL
        util_service.stop()
        assert verdict_of(check)[0] == UtilServiceStatus.DISCONNECTED
        util_service.start()
        # The failed channel was dropped: no reconnect backoff to sit out (up to 1 s
        # with our cap, 120 s with gRPC's default), so the TTL alone decides recovery.
        assert verdict_of(check) == (UtilServiceStatus.OPERATIONAL, "")
    finally:
        check.close()


# --- Sentry ---------------------------------------------------------------------------------


@pytest.fixture
def clean_sentry() -> Iterator[None]:
    yield
    sentry_sdk.init()  # no DSN: no transport, nothing leaves
    sentry_setup.init_sentry("")


def test_sentry_is_uninitialized_without_a_dsn(clean_sentry: None) -> None:
    assert verdict_of(SentryCheck(dsn=""))[0] == SentryStatus.UNINITIALIZED


def test_sentry_is_operational_with_a_loopback_dsn(
    clean_sentry: None, sentry_receiver: SentryReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    outcome = sentry_setup.init_sentry(sentry_receiver.dsn)
    # Once in many runs the SDK's init raised a KeyError; the log line carries its traceback.
    assert outcome.error is None, f"sentry_sdk.init raised {outcome.error}:\n{caplog.text}"
    assert verdict_of(SentryCheck(dsn=sentry_receiver.dsn)) == (SentryStatus.OPERATIONAL, "")
    sentry_sdk.capture_message("health-check-probe")
    sentry_sdk.flush(timeout=5)
    assert sentry_receiver.wait_for(lambda r: any(e.get("message") == "health-check-probe" for e in r.events), 5)


def test_a_malformed_dsn_is_failed_and_never_stops_start_up(clean_sentry: None) -> None:
    dsn = "not-a-dsn-at-all"
    outcome = sentry_setup.init_sentry(dsn)
    assert outcome.error == "BadDsn"
    assert verdict_of(SentryCheck(dsn=dsn)) == (SentryStatus.FAILED, "init raised BadDsn")


def test_a_dsn_without_an_active_client_is_failed(clean_sentry: None, sentry_receiver: SentryReceiver) -> None:
    sentry_setup.init_sentry("")
    sentry_sdk.init()
    assert verdict_of(SentryCheck(dsn=sentry_receiver.dsn)) == (SentryStatus.FAILED, "client has no transport")


def test_the_dsn_is_never_in_the_checks_repr() -> None:
    assert "secretkey" not in repr(SentryCheck(dsn="https://secretkey@o1.ingest.sentry.io/1"))


# --- database -------------------------------------------------------------------------------


@contextmanager
def extra_database(alias: str, settings_dict: dict[str, Any]) -> Iterator[None]:
    """A database alias that exists for the length of one test."""
    configured = connections.configure_settings({"default": connections.settings["default"], alias: settings_dict})
    connections.settings[alias] = configured[alias]
    try:
        yield
    finally:
        del connections.settings[alias]


@pytest.mark.django_db
def test_the_database_is_operational_when_select_1_is_fast_and_migrations_applied() -> None:
    assert through_service(DatabaseCheck(slow_ms=settings.HEALTH_DB_SLOW_MS)) == (DatabaseStatus.OPERATIONAL, "")


@pytest.mark.django_db
def test_the_database_is_degraded_when_select_1_is_slower_than_the_threshold() -> None:
    status, reason = through_service(DatabaseCheck(slow_ms=0.000001))
    assert status == DatabaseStatus.DEGRADED
    assert reason.startswith("SELECT 1 took")


@pytest.mark.django_db(transaction=True)
def test_the_database_is_degraded_while_a_migration_is_unapplied() -> None:
    recorder = MigrationRecorder(connections["default"])
    recorder.record_unapplied("auth", "0012_alter_user_first_name_max_length")
    try:
        assert through_service(DatabaseCheck(slow_ms=settings.HEALTH_DB_SLOW_MS)) == (
            DatabaseStatus.DEGRADED,
            "1 unapplied migration(s)",
        )
    finally:
        recorder.record_applied("auth", "0012_alter_user_first_name_max_length")
    assert through_service(DatabaseCheck(slow_ms=settings.HEALTH_DB_SLOW_MS))[0] == DatabaseStatus.OPERATIONAL


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_query_stuck_behind_a_lock_ends_at_the_time_limit_and_frees_its_thread() -> None:
    import psycopg

    settings_dict = connections["default"].settings_dict
    locker = psycopg.connect(
        host=settings_dict["HOST"],
        port=settings_dict["PORT"] or 5432,
        user=settings_dict["USER"],
        dbname=settings_dict["NAME"],
        connect_timeout=5,
    )
    try:
        locker.execute("LOCK TABLE django_migrations IN ACCESS EXCLUSIVE MODE")  # held until rollback
        check = DatabaseCheck(slow_ms=250)
        service = HealthService([check], instance_id="t", critical=frozenset(), timeout=0.4, ttl=0, max_staleness=0)
        result = service.check().results[Component.DB]
        assert result.status == DatabaseStatus.FATAL
        run = service.monitors[Component.DB].in_flight
        if run is not None:  # the deadline fired first; the server cancels the query right after
            run.future.result(timeout=3)
        started = time.monotonic()
        assert through_service(check, timeout=0.4)[0] == DatabaseStatus.FATAL
        assert time.monotonic() - started < 2
    finally:
        locker.rollback()
        locker.close()


def test_a_fresh_sqlite_database_is_degraded_until_migrated(tmp_path: Any, django_db_blocker: Any) -> None:
    settings_dict = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "fresh.sqlite3")}
    with django_db_blocker.unblock(), extra_database("fresh", settings_dict):
        check = DatabaseCheck(slow_ms=settings.HEALTH_DB_SLOW_MS, alias="fresh")
        status, reason = through_service(check)
        assert status == DatabaseStatus.DEGRADED
        assert "unapplied migration(s)" in reason
        call_command("migrate", database="fresh", verbosity=0)
        connections["fresh"].close()
        assert through_service(check) == (DatabaseStatus.OPERATIONAL, "")


def test_the_database_is_fatal_when_postgres_refuses(closed_port: int, django_db_blocker: Any) -> None:
    settings_dict = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": "127.0.0.1",
        "PORT": closed_port,
        "NAME": "x",
        "USER": "x",
    }
    with django_db_blocker.unblock(), extra_database("refused", settings_dict):
        assert through_service(DatabaseCheck(slow_ms=250, alias="refused")) == (
            DatabaseStatus.FATAL,
            "connection refused",
        )


def test_the_database_is_fatal_in_time_when_postgres_hangs(
    blackhole: BlackholeListener, django_db_blocker: Any
) -> None:
    settings_dict = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": "127.0.0.1",
        "PORT": blackhole.port,
        "NAME": "x",
        "USER": "x",
        "OPTIONS": {"connect_timeout": 2},
    }
    with django_db_blocker.unblock(), extra_database("hung", settings_dict):
        started = time.monotonic()
        status, reason = through_service(DatabaseCheck(slow_ms=250, alias="hung"), timeout=0.3)
        elapsed = time.monotonic() - started
    # The runner's deadline and the check's own (on the socket) fall at the same moment.
    assert (status, reason) in {
        (DatabaseStatus.FATAL, "no answer within 0.3 s"),
        (DatabaseStatus.FATAL, "connect timed out"),
    }
    assert elapsed < 1.5  # the driver would wait 2 s; the runner does not


def test_every_check_names_its_component_and_states() -> None:
    checks: list[HealthCheck] = [
        SentryCheck(dsn=""),
        ClerkCheck(secret_key="", api_url="http://127.0.0.1:1/v1"),
        DatabaseCheck(slow_ms=1),
        UtilServiceCheck(target=None),
    ]
    assert [c.component for c in checks] == list(Component)
    assert [c.timeout_status for c in checks] == ["FAILED", "DOWN", "FATAL", "DISCONNECTED"]
