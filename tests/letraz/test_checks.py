"""The project's own system checks: ranges, and the production secret at deploy."""

from __future__ import annotations

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from letraz.env import Problem


def letraz_errors(*, deploy: bool = False) -> set[str]:
    return {m.id for m in run_checks(tags=["letraz"], include_deployment_checks=deploy) if m.id}


def letraz_messages() -> list[str]:
    return [f"{m.id} {m.msg}" for m in run_checks(tags=["letraz"])]


def test_the_test_settings_pass() -> None:
    assert letraz_errors(deploy=True) == set()


@pytest.mark.parametrize("rate", [-0.1, 1.5, 5.0])
def test_a_sample_rate_outside_0_to_1_is_an_error(rate: float) -> None:
    with override_settings(SENTRY_TRACES_SAMPLE_RATE=rate):
        assert "letraz.E002" in letraz_errors()


@pytest.mark.parametrize(("name", "port"), [("PORT", -5), ("PORT", 0), ("GRPC_PORT", 70000), ("METRICS_PORT", 0)])
def test_a_port_outside_the_range_is_an_error(name: str, port: int) -> None:
    with override_settings(**{name: port}):
        assert "letraz.E003" in letraz_errors()


def test_an_empty_secret_key_fails_the_deploy_check_only() -> None:
    with override_settings(SECRET_KEY=""):
        assert "letraz.E001" not in letraz_errors()
        assert "letraz.E001" in letraz_errors(deploy=True)


def test_each_range_message_shows_the_value_and_what_is_expected() -> None:
    with override_settings(SENTRY_TRACES_SAMPLE_RATE=1.5, GRPC_PORT=70000):
        assert letraz_messages() == [
            "letraz.E002 SENTRY_TRACES_SAMPLE_RATE is 1.5: expected a number from 0 to 1.",
            "letraz.E003 GRPC_PORT is 70000: expected a port number from 1 to 65535.",
        ]


def test_each_malformed_variable_is_reported_with_its_own_line() -> None:
    problems = (
        Problem("HEALTH_CACHE_TTL", "'x'", "a number of seconds, such as 5"),
        Problem("UTIL_GRPC_TLS", "'maybe'", "true or false (also 1/0, yes/no, on/off)"),
    )
    with override_settings(ENVIRONMENT_PROBLEMS=problems):
        assert letraz_messages() == [
            "letraz.E004 HEALTH_CACHE_TTL is 'x': expected a number of seconds, such as 5.",
            "letraz.E004 UTIL_GRPC_TLS is 'maybe': expected true or false (also 1/0, yes/no, on/off).",
        ]


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        (
            "https://o0.ingest.sentry.io/1",
            "letraz.E005 SENTRY_DSN is 'https://o0.ingest.sentry.io/1': expected a DSN such as "
            "https://PUBLIC_KEY@o0.ingest.sentry.io/PROJECT_ID (Missing public key).",
        ),
        (
            "not a dsn at all",
            "letraz.E005 SENTRY_DSN is <16 characters, masked>: expected a DSN such as "
            "https://PUBLIC_KEY@o0.ingest.sentry.io/PROJECT_ID (Unsupported scheme '').",
        ),
    ],
)
def test_a_malformed_sentry_dsn_is_an_error_that_never_shows_the_key(dsn: str, message: str) -> None:
    with override_settings(SENTRY_DSN=dsn):
        assert letraz_messages() == [message]


def test_a_valid_sentry_dsn_passes() -> None:
    with override_settings(SENTRY_DSN="https://abc@o0.ingest.sentry.io/1"):
        assert letraz_messages() == []
