"""The one :class:`HealthService` every face asks: the HTTP API, the CLI and gRPC."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import sentry_sdk
from django.core.signals import setting_changed
from django.dispatch import receiver

from health.checks import HealthCheck, build_checks
from health.conf import HealthSettings, health_settings
from health.runner import (
    ChangeListener,
    CheckResult,
    Clock,
    ComponentMonitor,
    DaemonThreadExecutor,
    HealthListener,
    PendingRun,
)
from health.status import FAILURE_STATUS, OPERATIONAL, Component, OverallStatus, SentryStatus

logger = logging.getLogger("health")


@dataclass(frozen=True)
class HealthReport:
    """The answer to "is this instance fit to serve?" at one moment."""

    instance_id: str
    status: OverallStatus
    results: dict[Component, CheckResult]
    draining: bool = False

    @property
    def details(self) -> dict[str, str]:
        return {component.value: str(result.status) for component, result in self.results.items()}

    def as_dict(self) -> dict[str, object]:
        """The contract's body (``HealthCheck`` in ``openapi.yaml``)."""
        return {"instance_id": self.instance_id, "status": self.status.value, "details": self.details}


@dataclass
class HealthService:
    """Asks every check concurrently, each cached and bounded by the same time limit."""

    checks: Sequence[HealthCheck]
    instance_id: str
    critical: frozenset[Component]
    timeout: float = 0.5
    ttl: float = 5.0
    max_staleness: float = 30.0
    drain_file: Path | None = None
    clock: Clock = time.monotonic
    on_change: ChangeListener = field(default_factory=lambda: log_and_report_change)
    listeners: Sequence[HealthListener] = ()
    _monitors: dict[Component, ComponentMonitor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # A component never has two runs in flight, so this is at most one thread each.
        executor = DaemonThreadExecutor()
        self._monitors = {
            check.component: ComponentMonitor(
                check,
                executor,
                timeout=self.timeout,
                ttl=self.ttl,
                max_staleness=self.max_staleness,
                on_change=self._changed,
                clock=self.clock,
            )
            for check in self.checks
        }

    def _changed(self, previous: CheckResult | None, result: CheckResult) -> None:
        self.on_change(previous, result)
        for listener in self.listeners:
            try:
                listener.on_change(previous, result)
            except Exception:
                logger.exception("A listener failed for %s", result.component)

    @property
    def components(self) -> tuple[Component, ...]:
        return tuple(self._monitors)

    @property
    def monitors(self) -> dict[Component, ComponentMonitor]:
        return dict(self._monitors)

    def check(self, components: Iterable[Component] | None = None) -> HealthReport:
        """A report on ``components`` (all by default), within the time limit."""
        wanted = self.components if components is None else tuple(components)
        polled = {c: self._monitors[c].poll() for c in wanted}
        pending = [p for p in polled.values() if isinstance(p, PendingRun)]
        if pending:
            deadline = max(p.deadline for p in pending)
            futures.wait([p.future for p in pending], timeout=max(0.0, deadline - self.clock()))
        results = {c: self._monitors[c].collect(p) if isinstance(p, PendingRun) else p for c, p in polled.items()}
        healthy = all(results[c].status == OPERATIONAL for c in self.critical if c in results)
        return HealthReport(
            self.instance_id,
            OverallStatus.OPERATIONAL if healthy else OverallStatus.DEGRADED,
            results,
            draining=self.draining,
        )

    @property
    def draining(self) -> bool:
        """True while the drain file exists: readiness says no, liveness still yes."""
        return self.drain_file is not None and self.drain_file.exists()

    def warm_up(self) -> None:
        """Start every check in the background so the first probe finds results."""
        for monitor in self._monitors.values():
            monitor.refresh()

    def close(self) -> None:
        """Release the checks' clients and channels (they are made again if asked)."""
        for check in self.checks:
            check.close()


def describe_change(previous: CheckResult | None, result: CheckResult) -> str:
    """``clerk OPERATIONAL -> DOWN (HTTP 401)``: component, states, the reason for logs."""
    before = previous.status if previous is not None else "UNKNOWN"
    because = f" ({result.reason})" if result.reason else ""
    return f"{result.component} {before} -> {result.status}{because}"


def log_change(previous: CheckResult | None, result: CheckResult) -> None:
    """One log line per change of state: warning into a failure, info out of it."""
    message = describe_change(previous, result)
    if is_failure(result):
        logger.warning(message, exc_info=result.error)
    else:
        logger.info(message)


def report_change_to_sentry(previous: CheckResult | None, result: CheckResult) -> None:
    """A change to a failure state is one Sentry event (a no-op while Sentry is off)."""
    if not is_failure(result) or (previous is not None and previous.status == result.status):
        return
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("health.component", result.component.value)
        scope.set_tag("health.status", result.status)
        scope.fingerprint = ["health-change", result.component.value, result.status]
        if result.error is not None:
            sentry_sdk.capture_exception(result.error)
        else:
            sentry_sdk.capture_message(describe_change(previous, result), level="warning")


def log_and_report_change(previous: CheckResult | None, result: CheckResult) -> None:
    log_change(previous, result)
    report_change_to_sentry(previous, result)


def is_failure(result: CheckResult) -> bool:
    # UNINITIALIZED is Sentry's expected state without a DSN, not a failure.
    return result.status not in (OPERATIONAL, SentryStatus.UNINITIALIZED)


def failure_body(instance_id: str) -> dict[str, object]:
    """The contract's body when no report could be made at all: every component failed."""
    return {
        "instance_id": instance_id,
        "status": OverallStatus.DEGRADED.value,
        "details": {component.value: status.value for component, status in FAILURE_STATUS.items()},
    }


def build_service(
    conf: HealthSettings = health_settings,
    *,
    cached: bool = True,
    on_change: ChangeListener | None = None,
    listeners: Sequence[HealthListener] = (),
) -> HealthService:
    """The configured service; ``cached=False`` for one-shot callers such as the CLI."""
    return HealthService(
        checks=build_checks(conf),
        instance_id=conf.instance_id,
        critical=conf.critical_components,
        timeout=conf.check_timeout,
        ttl=conf.cache_ttl if cached else 0.0,
        max_staleness=conf.max_staleness if cached else 0.0,
        drain_file=conf.drain_file,
        on_change=on_change or log_and_report_change,
        listeners=listeners,
    )


_service: HealthService | None = None
_service_lock = threading.Lock()


def get_health_service() -> HealthService:
    """This process's service, built on first use (after gunicorn forks the worker)."""
    global _service
    service = _service
    if service is None:
        with _service_lock:
            if _service is None:
                from health.recording import start_recording, timeline_listeners

                _service = build_service(listeners=timeline_listeners())
                start_recording(_service)
            service = _service
    return service


def reset_health_service() -> None:
    """Drop this process's service; the next call builds one from current settings."""
    global _service
    from health.recording import stop_recording

    with _service_lock:
        service, _service = _service, None
    stop_recording()
    if service is not None:
        service.close()


def _forget_after_fork() -> None:
    # Threads and channels do not survive fork(); the child builds its own service.
    global _service, _service_lock
    _service, _service_lock = None, threading.Lock()
    from health.recording import forget_after_fork

    forget_after_fork()


os.register_at_fork(after_in_child=_forget_after_fork)

_HEALTH_SETTINGS = frozenset(
    {
        "HEALTH_CHECK_TIMEOUT",
        "HEALTH_DB_SLOW_MS",
        "HEALTH_CRITICAL_COMPONENTS",
        "HEALTH_CACHE_TTL",
        "HEALTH_MAX_STALENESS",
        "HEALTH_DRAIN_FILE",
        "INSTANCE_ID",
        "HEALTH_HISTORY_DAYS",
        "HEALTH_HEARTBEAT_INTERVAL",
        "SENTRY_DSN",
        "CLERK_SECRET_KEY",
        "CLERK_API_URL",
        "UTIL_GRPC_HOST",
        "UTIL_GRPC_TLS",
        "UTIL_GRPC_HEALTH_PROTOCOL",
        "DATABASES",
    }
)


@receiver(setting_changed)
def _rebuild_on_setting_change(*, setting: str, **kwargs: object) -> None:
    if setting in _HEALTH_SETTINGS:
        reset_health_service()
