"""Deploy-time checks of the project's own settings (``manage.py check --deploy``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register
from django.core.exceptions import ImproperlyConfigured


@register("letraz", deploy=True)
def check_secret_key(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    try:
        configured = bool(settings.SECRET_KEY)
    except ImproperlyConfigured:  # Django refuses to hand out an empty key
        configured = False
    if configured:
        return []
    return [
        Error(
            "DJANGO_SECRET_KEY must be set in production (or DJANGO_DEBUG=true for development).",
            id="letraz.E001",
        )
    ]
