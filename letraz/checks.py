"""Checks of the project's own settings: ranges always, the production secret at deploy."""

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


@register("letraz")
def check_ranges(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    errors = []
    rate = getattr(settings, "SENTRY_TRACES_SAMPLE_RATE", 0.0)
    if not 0 <= rate <= 1:
        errors.append(Error("SENTRY_TRACES_SAMPLE_RATE must be between 0 and 1.", id="letraz.E002"))
    for name in ("PORT", "GRPC_PORT", "METRICS_PORT"):
        if not 0 < getattr(settings, name, 1) < 65536:
            errors.append(Error(f"{name} must be a port number between 1 and 65535.", id="letraz.E003"))
    return errors
