"""Runs one component's check: time limit, cache, single flight, change log.

A :class:`ComponentMonitor` keeps the component's last result. Asked for it, it

* answers at once with a result younger than the TTL;
* answers at once with an older one (up to the maximum staleness) and starts one
  refresh in the background (stale-while-revalidate);
* otherwise hands back the run in flight, starting one if there is none, for the
  caller to wait on until the run's deadline.

There is never more than one run in flight per component, so a dependency that hangs
holds one thread, whatever the probe rate. A run that passes its deadline counts as the
check's ``timeout_status``; that verdict is re-observed on every later look for as long
as the run is still hanging, so it never goes stale.

Runs happen on daemon threads (:class:`DaemonThreadExecutor`): a check stuck in a
driver call must never keep a worker or the CLI from exiting. Change listeners (logs,
Sentry) are called after the monitor's lock is released, so a slow or failing listener
never delays or breaks a probe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import ParamSpec, Protocol, TypeVar

from health.checks.base import CheckFailed, HealthCheck
from health.status import OPERATIONAL, Component, ComponentStatus

logger = logging.getLogger("health")

Clock = Callable[[], float]
P = ParamSpec("P")
T = TypeVar("T")


class DaemonThreadExecutor(Executor):
    """One daemon thread per submitted run.

    ``ThreadPoolExecutor`` joins its threads when the interpreter exits, so one check
    hanging in a driver call would hold up a gunicorn worker's or the CLI's exit until
    the driver gives up. Runs are rare (at most one per component per TTL) and never
    more than one per component at a time, so a thread per run costs nothing.
    """

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, name="health-check", daemon=True).start()
        return future


@dataclass(frozen=True)
class CheckResult:
    """One observation of a component. ``reason`` is for logs, never for bodies."""

    component: Component
    status: ComponentStatus
    reason: str
    observed_at: float
    duration: float
    error: BaseException | None = None

    @property
    def operational(self) -> bool:
        return self.status == OPERATIONAL


@dataclass(frozen=True)
class PendingRun:
    """A run in flight, and the moment its caller stops waiting for it."""

    future: Future[CheckResult]
    deadline: float


#: Called on every change of state: (previous result or None, new result).
ChangeListener = Callable[[CheckResult | None, CheckResult], None]


class HealthListener(Protocol):
    """A consumer of changes (stand-in for issue 7's notifier interface)."""

    def on_result(self, result: CheckResult) -> None: ...

    def on_change(self, previous: CheckResult | None, result: CheckResult) -> None: ...


class ComponentMonitor:
    """The cached, single-flight, time-limited view of one check."""

    def __init__(
        self,
        check: HealthCheck,
        executor: Executor,
        *,
        timeout: float,
        ttl: float,
        max_staleness: float,
        on_change: ChangeListener,
        clock: Clock = time.monotonic,
    ) -> None:
        self.check = check
        self._executor = executor
        self._timeout = timeout
        self._ttl = ttl
        # A TTL of zero means live: nothing is served from before this request. Else a
        # result is served stale only while it stays within the bound even if the
        # request then waits the whole time limit for other components.
        self._serve_stale_until = 0.0 if ttl <= 0 else max(max_staleness - timeout, ttl)
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._notify_lock = threading.Lock()
        self._changes: list[tuple[CheckResult | None, CheckResult]] = []
        self._result: CheckResult | None = None
        self._run: PendingRun | None = None
        self.runs_started = 0

    @property
    def component(self) -> Component:
        return self.check.component

    @property
    def in_flight(self) -> PendingRun | None:
        """The run in progress, if any (settled on the next poll)."""
        return self._run

    def poll(self) -> CheckResult | PendingRun:
        """A result good enough to serve now, or the run to wait for."""
        try:
            with self._lock:
                now = self._clock()
                self._settle(now)
                result = self._result
                if result is not None:
                    age = now - result.observed_at
                    if age <= self._ttl:
                        return result
                    if age <= self._serve_stale_until:
                        self._start(now)
                        return result
                return self._start(now)
        finally:
            self._notify()

    def collect(self, pending: PendingRun) -> CheckResult:
        """The outcome of ``pending`` once it finished or its deadline passed."""
        try:
            with self._lock:
                now = self._clock()
                self._settle(now)
                if self._run is pending and not pending.future.done():
                    # The caller waited until the deadline; the clock may read a hair less.
                    self._record(self._overdue(now))
                assert self._result is not None
                return self._result
        finally:
            self._notify()

    def refresh(self) -> None:
        """Start a run unless one is in flight, without waiting (warm-up)."""
        try:
            with self._lock:
                self._settle(self._clock())
                self._start(self._clock())
        finally:
            self._notify()

    def _notify(self) -> None:
        """Hand recorded changes to the listener, outside the monitor's lock, in order.

        Whoever holds the notify lock drains the queue; a thread that finds it held
        moves on at once (its change goes out with the holder's or the next poll's).
        """
        while self._changes and self._notify_lock.acquire(blocking=False):
            try:
                with self._lock:
                    changes, self._changes = self._changes, []
                for previous, result in changes:
                    try:
                        self._on_change(previous, result)
                    except Exception:
                        logger.exception("The change listener failed for %s", self.component)
            finally:
                self._notify_lock.release()

    # -- under self._lock ------------------------------------------------------------

    def _start(self, now: float) -> PendingRun:
        if self._run is None:
            self.runs_started += 1
            self._run = PendingRun(self._executor.submit(self._execute), now + self._timeout)
        return self._run

    def _settle(self, now: float) -> None:
        run = self._run
        if run is None:
            return
        if run.future.done():
            self._run = None
            try:
                result = run.future.result()
            except BaseException as exc:  # _execute lets nothing through; this is the belt.
                result = self._failed(now, exc)
            self._record(result)
        elif now >= run.deadline:
            self._record(self._overdue(now))

    def _overdue(self, now: float) -> CheckResult:
        return CheckResult(
            self.component,
            self.check.timeout_status,
            f"no answer within {self._timeout:g} s",
            observed_at=now,
            duration=self._timeout,
        )

    def _failed(self, now: float, exc: BaseException) -> CheckResult:
        return CheckResult(self.component, self.check.error_status, f"unexpected {type(exc).__name__}", now, 0.0, exc)

    def _record(self, result: CheckResult) -> None:
        previous, self._result = self._result, result
        changed = previous is None or previous.status != result.status
        new_error = result.error is not None and (previous is None or previous.reason != result.reason)
        if changed or new_error:
            self._changes.append((previous, result))

    # -- in the executor's thread ----------------------------------------------------

    def _execute(self) -> CheckResult:
        started = self._clock()
        error: BaseException | None = None
        try:
            verdict = self.check.run(self._timeout)
            status, reason = verdict.status, verdict.reason
            late = self._clock() - started > self._timeout
            if late:
                status, reason = self.check.timeout_status, f"answered after the {self._timeout:g} s limit"
        except CheckFailed as exc:
            status, reason = exc.status, exc.reason
        except BaseException as exc:  # A bug, an untranslated vendor error, even SystemExit: never a 500.
            status, reason, error = self.check.error_status, f"unexpected {type(exc).__name__}", exc
        finished = self._clock()
        return CheckResult(self.component, status, reason, finished, finished - started, error)
