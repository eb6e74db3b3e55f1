from __future__ import annotations

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Core APIs"

    def ready(self) -> None:
        from letraz import checks  # noqa: F401  (registers the project's deploy checks)
