"""One check object per component; ``build_checks`` says the list once."""

from __future__ import annotations

from health.checks.base import CheckFailed, HealthCheck, Verdict
from health.checks.clerk import ClerkCheck
from health.checks.database import DatabaseCheck
from health.checks.sentry import SentryCheck
from health.checks.util_service import UtilServiceCheck
from health.conf import HealthSettings, health_settings


def build_checks(conf: HealthSettings = health_settings, *, cached: bool = True) -> list[HealthCheck]:
    """The checks of this instance, in the contract's order of ``details``.

    ``cached`` is the service's: with a cache, the util channel is rebuilt at most once
    per TTL; without one (the CLI), whenever a call finds it dead.
    """
    return [
        SentryCheck(dsn=conf.sentry_dsn),
        ClerkCheck(secret_key=conf.clerk_secret_key, api_url=conf.clerk_api_url),
        DatabaseCheck(slow_ms=conf.db_slow_ms),
        UtilServiceCheck(
            target=conf.util_grpc_target,
            tls=conf.util_grpc_tls,
            protocol=conf.util_grpc_health_protocol,
            rebuild_interval=conf.cache_ttl if cached else 0.0,
        ),
    ]


__all__ = [
    "CheckFailed",
    "ClerkCheck",
    "DatabaseCheck",
    "HealthCheck",
    "SentryCheck",
    "UtilServiceCheck",
    "Verdict",
    "build_checks",
]
