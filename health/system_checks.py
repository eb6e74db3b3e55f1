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
                f"HEALTH_CHECK_TIMEOUT is {health_settings.check_timeout:g}: probes with Kubernetes' default "
                "1 s timeout will fail; expected less than 1 second, such as 0.5.",
                id="health.W001",
            )
        )
    # Only when truly empty: unknown names are health.E004, and "empty" would contradict it.
    if not health_settings.critical_component_names:
        messages.append(
            Warning(
                "HEALTH_CRITICAL_COMPONENTS is empty: the status is always OPERATIONAL; "
                "expected the components that decide it, such as clerk,db,util_service.",
                id="health.W002",
            )
        )
    return messages
