"""Reasons an operator can act on: each real failure gets its own words, and no secret.

The database cases fail for real: against the PostgreSQL of DATABASE_URL (missing
database, unknown role, a session terminated by the server, a statement timeout), a
closed port, a listener that never answers, and a stand-in that speaks PostgreSQL's
wire protocol for the two refusals the shared server cannot give (it trusts 127.0.0.1,
so a wrong password is accepted; and it must not be shut down).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import psycopg
import pytest
from django.db import OperationalError, connections

from health.checks import ClerkCheck, DatabaseCheck, UtilServiceCheck
from health.checks.base import CheckFailed
from health.checks.reasons import database_reason, grpc_reason, http_status_reason
from health.conf import parse_grpc_target
from health.status import ClerkStatus, DatabaseStatus, UtilServiceStatus
from tests.peers.clerk import FakeClerkAPI
from tests.peers.postgres import SHUTTING_DOWN, WRONG_PASSWORD, RefusingPostgres
from tests.peers.tcp import BlackholeListener
from tests.peers.util_service import FakeUtilService

SECRET_PASSWORD = "pw-7f3c-never-shown"  # noqa: S105


@contextmanager
def database(alias: str, **settings_dict: Any) -> Iterator[DatabaseCheck]:
    """A DatabaseCheck on an alias that exists for the length of one test."""
    settings_dict = {"ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1"} | settings_dict
    configured = connections.configure_settings({"default": connections.settings["default"], alias: settings_dict})
    connections.settings[alias] = configured[alias]
    try:
        yield DatabaseCheck(slow_ms=250, alias=alias)
    finally:
        connections[alias].close()
        del connections.settings[alias]


def failure_of(check: DatabaseCheck | ClerkCheck | UtilServiceCheck, timeout: float = 0.5) -> CheckFailed:
    with pytest.raises(CheckFailed) as caught:
        check.run(timeout)
    return caught.value


def assert_no_secret(reason: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in reason, f"{secret!r} leaked into the reason {reason!r}"


def real_postgres() -> dict[str, Any]:
    default = connections["default"].settings_dict
    return {"HOST": default["HOST"], "PORT": default["PORT"] or 5432, "USER": default["USER"]}


# --- the database, against real failures ------------------------------------------------------


@pytest.mark.postgres
def test_a_missing_database_is_named_as_such(django_db_blocker: Any) -> None:
    name = f"letraz_missing_{uuid.uuid4().hex[:8]}"
    with django_db_blocker.unblock(), database("missing", NAME=name, **real_postgres()) as check:
        failure = failure_of(check, timeout=3)
    assert (failure.status, failure.reason) == (DatabaseStatus.FATAL, "database missing")
    assert_no_secret(failure.reason, name)


@pytest.mark.postgres
def test_an_unknown_role_is_an_authentication_failure(django_db_blocker: Any) -> None:
    role = f"letraz_nobody_{uuid.uuid4().hex[:8]}"
    postgres = real_postgres() | {"USER": role}
    with django_db_blocker.unblock(), database("norole", NAME="postgres", **postgres) as check:
        failure = failure_of(check, timeout=3)
    assert failure.reason == "authentication failed: role unknown or not allowed by pg_hba.conf"
    assert_no_secret(failure.reason, role)


def test_a_wrong_password_is_an_authentication_failure(django_db_blocker: Any) -> None:
    with (
        RefusingPostgres(WRONG_PASSWORD) as server,
        django_db_blocker.unblock(),
        database("wrongpw", PORT=server.port, NAME="letraz", USER="letraz_app", PASSWORD=SECRET_PASSWORD) as check,
    ):
        failure = failure_of(check, timeout=3)
    assert server.sessions >= 1, "the stand-in was never asked"
    assert (failure.status, failure.reason) == (DatabaseStatus.FATAL, "authentication failed: wrong password")
    assert_no_secret(failure.reason, SECRET_PASSWORD, "letraz_app")


def test_a_server_shutting_down_says_so(django_db_blocker: Any) -> None:
    with (
        RefusingPostgres(SHUTTING_DOWN) as server,
        django_db_blocker.unblock(),
        database("stopping", PORT=server.port, NAME="letraz", USER="letraz_app") as check,
    ):
        failure = failure_of(check, timeout=3)
    assert failure.reason == "server shutting down"


def test_a_closed_port_is_connection_refused(closed_port: int, django_db_blocker: Any) -> None:
    with django_db_blocker.unblock(), database("refused", PORT=closed_port, NAME="x", USER="x") as check:
        assert failure_of(check).reason == "connection refused"


def test_a_server_that_never_answers_is_a_connect_timeout(blackhole: BlackholeListener, django_db_blocker: Any) -> None:
    # The check alone, without the runner's deadline: the driver's connect_timeout ends it.
    options = {"connect_timeout": 2}
    with (
        django_db_blocker.unblock(),
        database("hung", PORT=blackhole.port, NAME="x", USER="x", OPTIONS=options) as check,
    ):
        assert failure_of(check).reason == "connect timed out"


@pytest.mark.postgres
def test_a_session_the_server_terminates_is_a_server_shutting_down() -> None:
    params = real_postgres()
    dbname = "postgres"  # always there; the test database exists only inside django_db tests
    victim = psycopg.connect(host=params["HOST"], port=params["PORT"], user=params["USER"], dbname=dbname)
    try:
        pid = victim.info.backend_pid
        with psycopg.connect(
            host=params["HOST"], port=params["PORT"], user=params["USER"], dbname=dbname, autocommit=True
        ) as killer:
            killer.execute("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(psycopg.OperationalError) as caught:
            victim.execute("SELECT 1")
    finally:
        victim.close()
    assert database_reason(caught.value) in {"server shutting down", "connection closed by the server"}
    # The server's own words arrive with SQLSTATE 57P01 whenever libpq reads them in time.
    if caught.value.sqlstate == "57P01":
        assert database_reason(caught.value) == "server shutting down"


@pytest.mark.postgres
def test_a_statement_timeout_is_named() -> None:
    params = real_postgres()
    dbname = "postgres"  # always there; the test database exists only inside django_db tests
    with psycopg.connect(host=params["HOST"], port=params["PORT"], user=params["USER"], dbname=dbname) as conn:
        conn.execute("SET statement_timeout = '10ms'")
        with pytest.raises(psycopg.errors.QueryCanceled) as caught:
            conn.execute("SELECT pg_sleep(5)")
    wrapped = OperationalError("wrapped as Django does")
    wrapped.__cause__ = caught.value
    assert database_reason(wrapped) == "query timed out (statement_timeout)"


@pytest.mark.parametrize(
    ("libpq_text", "reason"),
    [
        ("failed to resolve host 'db.internal': [Errno -2] Name or service not known", "host name not resolved"),
        (
            'connection to server at "10.0.0.5", port 5432 failed: could not translate host name "db" to address',
            "host name not resolved",
        ),
        (
            'connection to server at "db", port 5432 failed: FATAL:  no pg_hba.conf entry for host "10.1.2.3"',
            "authentication failed: not allowed by pg_hba.conf",
        ),
        (
            'connection to server at "db", port 5432 failed: FATAL:  sorry, too many clients already',
            "too many connections",
        ),
    ],
)
def test_libpq_texts_without_a_sqlstate_are_recognised(libpq_text: str, reason: str) -> None:
    # Name resolution cannot fail for real here without a resolver that may hang: these
    # are libpq's exact texts, wrapped as Django wraps them.
    wrapped = OperationalError(libpq_text)
    wrapped.__cause__ = psycopg.OperationalError(libpq_text)
    assert database_reason(wrapped) == reason


def test_an_unknown_failure_is_its_class_name_never_its_text() -> None:
    assert database_reason(OperationalError('host "secret.internal" said no')) == "OperationalError"


# --- Clerk -------------------------------------------------------------------------------------


def test_clerk_over_tls_to_a_plaintext_peer_is_a_tls_failure(clerk_api: FakeClerkAPI) -> None:
    check = ClerkCheck(secret_key=clerk_api.secret_key, api_url=clerk_api.url.replace("http://", "https://"))
    try:
        failure = failure_of(check, timeout=2)
    finally:
        check.close()
    assert (failure.status, failure.reason) == (ClerkStatus.DOWN, "TLS failed")
    assert_no_secret(failure.reason, clerk_api.secret_key, "127.0.0.1")


def test_clerk_at_a_wrong_path_says_check_the_url(clerk_api: FakeClerkAPI) -> None:
    check = ClerkCheck(secret_key=clerk_api.secret_key, api_url=f"{clerk_api.url}/nowhere")
    try:
        failure = failure_of(check, timeout=2)
    finally:
        check.close()
    assert failure.reason == "HTTP 404 (not found: check CLERK_API_URL)"


@pytest.mark.parametrize(
    ("status", "reason"),
    [(401, "HTTP 401 (key rejected: check CLERK_SECRET_KEY)"), (429, "HTTP 429 (rate limited)"), (418, "HTTP 418")],
)
def test_clerk_status_codes_are_explained(status: int, reason: str) -> None:
    assert http_status_reason(status) == reason


# --- the util service ----------------------------------------------------------------------------


def test_util_service_with_tls_against_a_plaintext_peer_says_check_tls(util_service: FakeUtilService) -> None:
    check = UtilServiceCheck(target=parse_grpc_target(util_service.target), tls=True)
    try:
        failure = failure_of(check, timeout=2)
    finally:
        check.close()
    assert failure.status == UtilServiceStatus.DISCONNECTED
    assert failure.reason == "TLS failed: check UTIL_GRPC_TLS (UNAVAILABLE)"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "RPC DEADLINE_EXCEEDED (no answer in time)"),
        (grpc.StatusCode.PERMISSION_DENIED, "RPC PERMISSION_DENIED (permission denied)"),
        (grpc.StatusCode.ABORTED, "RPC ABORTED"),
    ],
)
def test_grpc_codes_are_explained(code: grpc.StatusCode, reason: str) -> None:
    assert grpc_reason(code) == reason
