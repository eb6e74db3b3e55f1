"""What happens on a change of state: the listeners ``build_service`` wires to the engine.

The runner knows only the :class:`~health.runner.HealthListener` protocol; the policy
(one log line per change, Sentry at most once per component per interval) lives here and
is chosen in the composition root. Every listener runs on the one notifier thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import sentry_sdk

from health.runner import CheckResult, Clock
from health.status import OPERATIONAL, Component, SentryStatus

logger = logging.getLogger("health")


def describe_change(previous: CheckResult | None, result: CheckResult) -> str:
    """``clerk OPERATIONAL -> DOWN (HTTP 401)``: component, states, the reason for logs."""
    before = previous.status if previous is not None else "UNKNOWN"
    because = f" ({result.reason})" if result.reason else ""
    return f"{result.component} {before} -> {result.status}{because}"


def change_fields(previous: CheckResult | None, result: CheckResult) -> dict[str, str]:
    """The change as log-record fields, for structured (JSON) logs: one key per fact."""
    return {
        "component": result.component.value,
        "previous_state": str(previous.status) if previous is not None else "UNKNOWN",
        "state": str(result.status),
        "reason": result.reason,
    }


def is_failure(result: CheckResult) -> bool:
    # UNINITIALIZED is Sentry's expected state without a DSN, not a failure.
    return result.status not in (OPERATIONAL, SentryStatus.UNINITIALIZED)


class LogListener:
    """One log line per change of state: warning into a failure, info out of it."""

    def on_result(self, result: CheckResult) -> None:
        """Observations are not logged: only changes are."""

    def on_change(self, previous: CheckResult | None, result: CheckResult) -> None:
        message, fields = describe_change(previous, result), change_fields(previous, result)
        if is_failure(result):
            logger.warning(message, exc_info=result.error, extra=fields)
        else:
            logger.info(message, extra=fields)


@dataclass
class SentryListener:
    """At most one Sentry event per component per ``interval`` seconds, however it flaps.

    A change into a failure state is an event when the component's last event is at
    least ``interval`` old (or there was none); otherwise it is counted, and the next
    event carries ``health.changes``: the number of changes (both ways) since the last
    event, this one included. The log keeps one line per change; Sentry gets the summary.
    A no-op while Sentry is off.
    """

    interval: float
    clock: Clock = time.monotonic
    _last_event: dict[Component, float] = field(default_factory=dict, init=False, repr=False)
    _changes: dict[Component, int] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def on_result(self, result: CheckResult) -> None:
        """Observations are not events."""

    def on_change(self, previous: CheckResult | None, result: CheckResult) -> None:
        component = result.component
        with self._lock:
            if previous is not None and previous.status != result.status:
                self._changes[component] = self._changes.get(component, 0) + 1
            if not is_failure(result) or (previous is not None and previous.status == result.status):
                return
            now = self.clock()
            last = self._last_event.get(component)
            if last is not None and now - last < self.interval:
                return
            self._last_event[component] = now
            changes = max(1, self._changes.pop(component, 0))
        self._send(previous, result, changes)

    @staticmethod
    def _send(previous: CheckResult | None, result: CheckResult, changes: int) -> None:
        with sentry_sdk.new_scope() as scope:
            scope.set_tag("health.component", result.component.value)
            scope.set_tag("health.status", result.status)
            scope.set_extra("health.changes", changes)
            scope.fingerprint = ["health-change", result.component.value, result.status]
            if result.error is not None:
                sentry_sdk.capture_exception(result.error)
            else:
                message = describe_change(previous, result)
                if changes > 1:
                    message += f"; {changes} changes since the last event"
                sentry_sdk.capture_message(message, level="warning")
