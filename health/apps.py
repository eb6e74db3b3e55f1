from __future__ import annotations

from django.apps import AppConfig


class HealthConfig(AppConfig):
    name = "health"
    verbose_name = "Health engine"

    def ready(self) -> None:
        # BOOT_ID is made here, so in gunicorn's master before it forks: one per server start.
        from health import (
            system_checks,  # noqa: F401  (registers the checks)
            timeline,  # noqa: F401
        )
