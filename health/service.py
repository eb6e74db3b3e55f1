"""The one :class:`HealthService` every face asks: the HTTP API, the CLI and gRPC."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from health.checks import HealthCheck, build_checks
from health.conf import HealthSettings, health_settings
from health.listeners import LogListener, SentryListener
from health.runner import (
    CheckResult,
    Clock,
    ComponentMonitor,
    ComponentSnapshot,
    DaemonThreadExecutor,
    HealthListener,
    Notifier,
    PendingRun,
)
from health.status import FAILURE_STATUS, OPERATIONAL, Component, OverallStatus

logger = logging.getLogger("health")

__all__ = [
    "CheckResult",
    "ComponentSnapshot",
    "HealthListener",
    "HealthReport",
    "HealthService",
    "build_service",
    "default_listeners",
    "failure_body",
    "get_health_service",
    "reset_health_service",
]


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
    """Asks every check concurrently, each cached and bounded by the same time limit.

    ``listeners`` hear of every observation and change on one notifier thread, never on
    the caller's (see ``health/runner.py``).
    """

    checks: Sequence[HealthCheck]
    instance_id: str
    critical: frozenset[Component]
    timeout: float = 0.5
    ttl: float = 5.0
    max_staleness: float = 30.0
    drain_file: Path | None = None
    clock: Clock = time.monotonic
    listeners: Sequence[HealthListener] = ()
    #: Per-component TTLs (``HEALTH_CACHE_TTL_<COMPONENT>``); others use ``ttl``.
    ttls: Mapping[Component, float] = field(default_factory=dict)
    _monitors: dict[Component, ComponentMonitor] = field(init=False, repr=False)
    _notifier: Notifier = field(init=False, repr=False)
    _was_draining: bool = field(default=False, init=False, repr=False)
    _drain_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        # At most two runs per component at any time (the current and one abandoned).
        executor = DaemonThreadExecutor()
        self._notifier = Notifier(self.listeners)
        self._monitors = {
            check.component: ComponentMonitor(
                check,
                executor,
                timeout=self.timeout,
                ttl=self.ttls.get(check.component, self.ttl),
                max_staleness=self.max_staleness,
                notifier=self._notifier,
                clock=self.clock,
            )
            for check in self.checks
        }

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

    def snapshot(self) -> dict[Component, ComponentSnapshot]:
        """What is known of each component now, without asking any dependency."""
        return {component: monitor.snapshot() for component, monitor in self._monitors.items()}

    @property
    def draining(self) -> bool:
        """True while the drain file exists: readiness says no, liveness still yes.

        The first answer after the file appears or goes logs one line (per process).
        """
        draining = self.drain_file is not None and self.drain_file.exists()
        with self._drain_lock:
            changed, self._was_draining = draining != self._was_draining, draining
        if changed:
            if draining:
                logger.warning("Draining: readiness answers 503 while HEALTH_DRAIN_FILE exists")
            else:
                logger.info("Draining ended: readiness answers for this instance again")
        return draining

    def warm_up(self) -> None:
        """Start every check in the background so the first probe finds results."""
        for monitor in self._monitors.values():
            monitor.refresh()

    def flush_notifications(self, timeout: float) -> bool:
        """Wait until the listeners heard everything so far (a one-shot CLI before exit)."""
        return self._notifier.flush(timeout)

    def close(self) -> None:
        """Release the checks' clients and channels (they are made again if asked)."""
        self._notifier.close()
        for check in self.checks:
            check.close()


def is_ready(report: HealthReport, readiness_components: Iterable[Component]) -> bool:
    """Readiness is about this instance, not the dependencies every instance shares.

    No only when taking this one pod out of rotation can help: while it drains, and
    when a component named in ``HEALTH_READINESS_COMPONENTS`` (none by default) is not
    OPERATIONAL. A Clerk outage marks every pod alike; failing readiness on it would
    empty the Service. Warming up needs no rule here: a report exists only once every
    component has a verdict (its first run answered, or its time limit passed), and
    before that there is no report to be ready with (gRPC says NOT_SERVING until then).
    """
    if report.draining:
        return False
    return all(report.results[c].operational for c in readiness_components if c in report.results)


def failure_body(instance_id: str) -> dict[str, object]:
    """The contract's body when no report could be made at all: every component failed."""
    return {
        "instance_id": instance_id,
        "status": OverallStatus.DEGRADED.value,
        "details": {component.value: status.value for component, status in FAILURE_STATUS.items()},
    }


def default_listeners(conf: HealthSettings = health_settings) -> list[HealthListener]:
    """The server's policy: a log line per change, Sentry at most once per interval."""
    return [LogListener(), SentryListener(interval=conf.event_interval)]


def build_service(
    conf: HealthSettings = health_settings,
    *,
    cached: bool = True,
    listeners: Sequence[HealthListener] | None = None,
) -> HealthService:
    """The configured service (the composition root); ``cached=False`` for one-shot callers."""
    return HealthService(
        checks=build_checks(conf, cached=cached),
        instance_id=conf.instance_id,
        critical=conf.critical_components,
        timeout=conf.check_timeout,
        ttl=conf.cache_ttl if cached else 0.0,
        max_staleness=conf.max_staleness if cached else 0.0,
        drain_file=conf.drain_file,
        listeners=default_listeners(conf) if listeners is None else listeners,
        ttls=conf.cache_ttls if cached else {},
    )


def configured_listeners() -> list[HealthListener]:
    """The listeners named in ``HEALTH_LISTENERS``: dotted paths of zero-argument factories.

    The project (``letraz/settings.py``) names its metrics listener there, so the engine
    never imports the project package.
    """
    return [import_string(dotted)() for dotted in getattr(settings, "HEALTH_LISTENERS", ())]


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

                _service = build_service(
                    listeners=[*default_listeners(), *configured_listeners(), *timeline_listeners()]
                )
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
        "HEALTH_CACHE_TTL_OVERRIDES",
        "HEALTH_MAX_STALENESS",
        "HEALTH_DRAIN_FILE",
        "HEALTH_EVENT_INTERVAL",
        "HEALTH_LISTENERS",
        "HEALTH_HISTORY_DAYS",
        "HEALTH_HEARTBEAT_INTERVAL",
        "INSTANCE_ID",
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
