"""Is Sentry initialised with a DSN and a transport that can send events?"""

from __future__ import annotations

from dataclasses import dataclass, field

import sentry_sdk

from health.checks.base import CheckFailed, Verdict
from health.status import Component, SentryStatus
from letraz import sentry as sentry_setup


@dataclass
class SentryCheck:
    """Reads the SDK's state; no I/O, so it never times out in practice."""

    dsn: str = field(repr=False)
    component: Component = field(default=Component.SENTRY, init=False)
    timeout_status: SentryStatus = field(default=SentryStatus.FAILED, init=False)
    error_status: SentryStatus = field(default=SentryStatus.FAILED, init=False)

    def run(self, timeout: float) -> Verdict:
        if not self.dsn:
            return Verdict(SentryStatus.UNINITIALIZED, "SENTRY_DSN is not set")
        if sentry_setup.setup.error:
            raise CheckFailed(SentryStatus.FAILED, f"init raised {sentry_setup.setup.error}")
        client = sentry_sdk.get_client()
        if not client.is_active() or not client.dsn or client.transport is None:
            raise CheckFailed(SentryStatus.FAILED, "client has no transport")
        return Verdict(SentryStatus.OPERATIONAL)

    def close(self) -> None:
        """Nothing to release: the SDK's client belongs to the process."""
