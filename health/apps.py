from __future__ import annotations

from django.apps import AppConfig


class HealthConfig(AppConfig):
    name = "health"
    verbose_name = "Health engine"

    def ready(self) -> None:
        from health import system_checks  # noqa: F401  (registers the checks)
