"""Checks of the project's own settings, each message one line that says what to fix.

Ranges always; malformed environment variables (``letraz/env.py`` kept them instead of
raising at import) and a malformed ``SENTRY_DSN``; the production secret at deploy.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register
from django.core.exceptions import ImproperlyConfigured

from letraz.env import Problem, masked
from letraz.sentry import dsn_problem


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
            "DJANGO_SECRET_KEY is not set: expected a long random secret in production "
            "(or DJANGO_DEBUG=true for development, which uses a throwaway key).",
            id="letraz.E001",
        )
    ]


@register("letraz")
def check_ranges(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    errors = []
    rate = getattr(settings, "SENTRY_TRACES_SAMPLE_RATE", 0.0)
    if not 0 <= rate <= 1:
        errors.append(Error(f"SENTRY_TRACES_SAMPLE_RATE is {rate:g}: expected a number from 0 to 1.", id="letraz.E002"))
    for name in ("PORT", "GRPC_PORT", "METRICS_PORT"):
        port = getattr(settings, name, 1)
        if not 0 < port < 65536:
            errors.append(Error(f"{name} is {port}: expected a port number from 1 to 65535.", id="letraz.E003"))
    return errors


@register("letraz")
def check_environment(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Variables that did not parse; each fell back to its default, which must not serve."""
    problems: tuple[Problem, ...] = getattr(settings, "ENVIRONMENT_PROBLEMS", ())
    return [Error(problem.message, id="letraz.E004") for problem in problems]


@register("letraz")
def check_sentry_dsn(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    dsn: str = getattr(settings, "SENTRY_DSN", "")
    problem = dsn_problem(dsn) if dsn else None
    if problem is None:
        return []
    return [
        Error(
            f"SENTRY_DSN is {masked(dsn)}: expected a DSN such as https://PUBLIC_KEY@o0.ingest.sentry.io/PROJECT_ID "
            f"({problem}).",
            id="letraz.E005",
        )
    ]
