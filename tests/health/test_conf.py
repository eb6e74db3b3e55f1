"""Misconfiguration is a clear system-check error at deploy time, never a 500 later."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.core.checks import Error, run_checks
from django.test import override_settings

from health.conf import GrpcTarget, default_instance_id, parse_grpc_target


def health_errors() -> dict[str, str]:
    return {m.id: m.msg for m in run_checks(tags=["health"]) if isinstance(m, Error) and m.id}


def test_the_default_configuration_passes_every_check() -> None:
    assert health_errors() == {}


@pytest.mark.parametrize(
    ("overrides", "check_id", "message"),
    [
        (
            {"HEALTH_CHECK_TIMEOUT": -1.0},
            "health.E001",
            "HEALTH_CHECK_TIMEOUT is -1: expected a positive number of seconds, such as 0.5.",
        ),
        (
            {"HEALTH_CHECK_TIMEOUT": 0.0},
            "health.E001",
            "HEALTH_CHECK_TIMEOUT is 0: expected a positive number of seconds, such as 0.5.",
        ),
        (
            {"HEALTH_DB_SLOW_MS": 0.0},
            "health.E002",
            "HEALTH_DB_SLOW_MS is 0: expected a positive number of milliseconds, such as 250.",
        ),
        (
            {"UTIL_GRPC_HOST": "nonsense"},
            "health.E003",
            "UTIL_GRPC_HOST is 'nonsense': expected host:port, such as util:8080 ([::1]:8080 for IPv6).",
        ),
        (
            {"UTIL_GRPC_HOST": "util:99999"},
            "health.E003",
            "UTIL_GRPC_HOST is 'util:99999': expected host:port with a port from 1 to 65535.",
        ),
        (
            {"UTIL_GRPC_HOST": "[zz::1]:80"},
            "health.E003",
            "UTIL_GRPC_HOST is '[zz::1]:80': expected host:port with a valid IPv6 address in the brackets.",
        ),
        (
            {"UTIL_GRPC_HOST": "a b:80"},
            "health.E003",
            "UTIL_GRPC_HOST is 'a b:80': expected host:port, such as util:8080 ([::1]:8080 for IPv6); "
            "the host is not a valid host name.",
        ),
        (
            {"HEALTH_CRITICAL_COMPONENTS": ("clerk", "redis")},
            "health.E004",
            "HEALTH_CRITICAL_COMPONENTS is 'clerk,redis': expected comma-separated names among "
            "sentry, clerk, db, util_service; unknown: 'redis'.",
        ),
        (
            {"UTIL_GRPC_HEALTH_PROTOCOL": "http"},
            "health.E005",
            "UTIL_GRPC_HEALTH_PROTOCOL is 'http': expected letraz or grpc.",
        ),
        (
            {"HEALTH_CACHE_TTL": -1.0},
            "health.E006",
            "HEALTH_CACHE_TTL is -1: expected zero or more seconds, such as 5.",
        ),
        (
            {"HEALTH_CACHE_TTL": 10.0, "HEALTH_MAX_STALENESS": 5.0},
            "health.E007",
            "HEALTH_MAX_STALENESS is 5: expected at least HEALTH_CACHE_TTL (10) seconds.",
        ),
        (
            {"CLERK_API_URL": "api.clerk.com"},
            "health.E008",
            "CLERK_API_URL is 'api.clerk.com': expected an http(s) URL, such as https://api.clerk.com/v1.",
        ),
        (
            {"CLERK_API_URL": "http://[::1/v1"},
            "health.E008",
            "CLERK_API_URL is 'http://[::1/v1': expected an http(s) URL, such as https://api.clerk.com/v1.",
        ),
        (
            {"CLERK_API_URL": "ftp://user:pw@api.clerk.com/v1"},
            "health.E008",
            "CLERK_API_URL is <30 characters, masked: it has credentials>: expected an http(s) URL, "
            "such as https://api.clerk.com/v1.",
        ),
        (
            {"HEALTH_EVENT_INTERVAL": -1.0},
            "health.E009",
            "HEALTH_EVENT_INTERVAL is -1: expected zero or more seconds, such as 600.",
        ),
    ],
)
def test_each_malformed_setting_is_one_error_saying_what_to_fix(
    overrides: dict[str, object], check_id: str, message: str
) -> None:
    with override_settings(**overrides):
        errors = health_errors()
    assert errors == {check_id: message}


def test_no_critical_component_is_a_warning() -> None:
    with override_settings(HEALTH_CRITICAL_COMPONENTS=()):
        ids = {m.id for m in run_checks(tags=["health"])}
    assert "health.W002" in ids


def test_an_unknown_critical_component_is_an_error_and_not_also_empty() -> None:
    with override_settings(HEALTH_CRITICAL_COMPONENTS=("foo",)):
        ids = [m.id for m in run_checks(tags=["health"])]
    assert ids == ["health.E004"]


def test_manage_py_check_reports_a_bad_util_host_and_fails() -> None:
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SECRET_KEY": "x", "UTIL_GRPC_HOST": "nonsense"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "health.E003" in result.stderr
    assert (
        "?: (health.E003) UTIL_GRPC_HOST is 'nonsense': expected host:port, such as util:8080 ([::1]:8080 for IPv6)."
    ) in result.stderr.splitlines()


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("util:8080", GrpcTarget("util", 8080)),
        ("util.letraz.internal:443", GrpcTarget("util.letraz.internal", 443)),
        ("127.0.0.1:50051", GrpcTarget("127.0.0.1", 50051)),
        ("[::1]:8080", GrpcTarget("::1", 8080)),
    ],
)
def test_grpc_targets_parse(text: str, target: GrpcTarget) -> None:
    assert parse_grpc_target(text) == target


def test_ipv6_targets_are_bracketed_again_for_grpc() -> None:
    assert GrpcTarget("::1", 8080).address == "[::1]:8080"
    assert GrpcTarget("util", 8080).address == "util:8080"


@pytest.mark.parametrize("text", ["nonsense", ":8080", "util:", "util:0", "util:http", "a b:80", "[::1:80"])
def test_malformed_grpc_targets_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_grpc_target(text)


def test_the_instance_id_is_stable_and_does_not_reveal_the_host_name() -> None:
    import socket

    assert default_instance_id() == default_instance_id()
    assert socket.gethostname() not in default_instance_id()


def test_instance_id_from_the_environment_wins() -> None:
    from health.conf import health_settings

    with override_settings(INSTANCE_ID="web-7f9c"):
        assert health_settings.instance_id == "web-7f9c"


def test_readiness_components_default_to_none_and_unknown_names_are_an_error() -> None:
    from health.conf import health_settings

    assert health_settings.readiness_components == frozenset()
    with override_settings(HEALTH_READINESS_COMPONENTS=("clerk", "redis")):
        assert health_errors()["health.E010"] == (
            "HEALTH_READINESS_COMPONENTS is 'clerk,redis': expected comma-separated names among "
            "sentry, clerk, db, util_service; unknown: 'redis'."
        )
        assert {c.value for c in health_settings.readiness_components} == {"clerk"}


def test_each_component_takes_its_own_ttl_or_the_global_one() -> None:
    from health.conf import health_settings
    from health.status import Component

    with override_settings(HEALTH_CACHE_TTL=5.0, HEALTH_MAX_STALENESS=90.0, HEALTH_CACHE_TTL_OVERRIDES={"clerk": 60.0}):
        assert health_settings.cache_ttls == {
            Component.SENTRY: 5.0,
            Component.CLERK: 60.0,
            Component.DB: 5.0,
            Component.UTIL_SERVICE: 5.0,
        }
        assert "health.E011" not in health_errors()


@pytest.mark.parametrize("ttl", [-1.0, 120.0])
def test_a_component_ttl_outside_zero_to_the_staleness_bound_is_an_error(ttl: float) -> None:
    with override_settings(HEALTH_MAX_STALENESS=90.0, HEALTH_CACHE_TTL_OVERRIDES={"clerk": ttl}):
        assert health_errors()["health.E011"] == (
            f"HEALTH_CACHE_TTL_CLERK is {ttl:g}: expected 0 to HEALTH_MAX_STALENESS (90) seconds."
        )
