"""The project's own system checks: ranges, and the production secret at deploy."""

from __future__ import annotations

import pytest
from django.core.checks import run_checks
from django.test import override_settings


def letraz_errors(*, deploy: bool = False) -> set[str]:
    return {m.id for m in run_checks(tags=["letraz"], include_deployment_checks=deploy) if m.id}


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
