"""Misconfiguration shows in ``manage.py check`` (and stops gunicorn at start)."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, Warning, register

from health.conf import configuration_errors, health_settings


@register("health")
def check_health_settings(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    messages: list[Error | Warning] = [Error(message, id=check_id) for check_id, message in configuration_errors()]
    if health_settings.check_timeout >= 1:
        messages.append(
            Warning(
                "HEALTH_CHECK_TIMEOUT is 1 s or more: probes with Kubernetes' default 1 s timeout will fail.",
                id="health.W001",
            )
        )
    if not health_settings.critical_components:
        messages.append(
            Warning(
                "HEALTH_CRITICAL_COMPONENTS is empty: the status is always OPERATIONAL.",
                id="health.W002",
            )
        )
    return messages
