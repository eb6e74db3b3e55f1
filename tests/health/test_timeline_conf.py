"""The timeline's, fleet's, stream's and status page's settings are checked with ids (issue 11)."""

from __future__ import annotations

import pytest
from django.test import override_settings

from health.system_checks import check_health_settings


def test_the_defaults_pass() -> None:
    with override_settings(HEALTH_HISTORY_DAYS=30):
        assert not [m for m in check_health_settings() if m.id.startswith("health.E1")]


@pytest.mark.parametrize(
    ("overrides", "check_id", "fragment"),
    [
        ({"HEALTH_HISTORY_DAYS": -1.0}, "health.E101", "HEALTH_HISTORY_DAYS"),
        ({"HEALTH_HEARTBEAT_INTERVAL": 0.0}, "health.E102", "HEALTH_HEARTBEAT_INTERVAL"),
        ({"HEALTH_HEARTBEAT_INTERVAL": 10.0, "HEALTH_FLEET_GONE_AFTER": 10.0}, "health.E103", "GONE_AFTER"),
        ({"HEALTH_STREAM_MAX": -1}, "health.E104", "HEALTH_STREAM_MAX"),
        ({"HEALTH_STATUS_PAGE": "private"}, "health.E105", "public, token, off"),
        ({"HEALTH_STATUS_PAGE": "token", "HEALTH_DIAGNOSTICS_TOKEN": ""}, "health.E106", "HEALTH_DIAGNOSTICS_TOKEN"),
    ],
)
def test_each_malformed_setting_is_an_error(overrides: dict[str, object], check_id: str, fragment: str) -> None:
    with override_settings(**overrides):
        messages = [m for m in check_health_settings() if m.id == check_id]
    assert len(messages) == 1, check_id
    assert fragment in messages[0].msg
