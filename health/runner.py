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
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from health.checks.base import CheckFailed, HealthCheck
from health.status import OPERATIONAL, Component, ComponentStatus

logger = logging.getLogger("health")

Clock = Callable[[], float]


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
        self._max_staleness = max(max_staleness, ttl)
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._result: CheckResult | None = None
        self._run: PendingRun | None = None
        self.runs_started = 0

    @property
    def component(self) -> Component:
        return self.check.component

    @property
    def last_result(self) -> CheckResult | None:
        return self._result

    @property
    def in_flight(self) -> PendingRun | None:
        """The run in progress, if any (settled on the next poll)."""
        return self._run

    def poll(self) -> CheckResult | PendingRun:
        """A result good enough to serve now, or the run to wait for."""
        with self._lock:
            now = self._clock()
            self._settle(now)
            result = self._result
            if result is not None:
                age = now - result.observed_at
                if age <= self._ttl:
                    return result
                if age <= self._max_staleness:
                    self._start(now)
                    return result
            return self._start(now)

    def collect(self, pending: PendingRun) -> CheckResult:
        """The outcome of ``pending`` once it finished or its deadline passed."""
        with self._lock:
            now = self._clock()
            self._settle(now)
            if self._run is pending and not pending.future.done():
                # The caller waited until the deadline; the clock may read a hair less.
                self._record(self._overdue(now))
            assert self._result is not None
            return self._result

    def refresh(self) -> None:
        """Start a run unless one is in flight, without waiting (warm-up)."""
        with self._lock:
            self._settle(self._clock())
            self._start(self._clock())

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
            self._record(run.future.result())
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

    def _record(self, result: CheckResult) -> None:
        previous, self._result = self._result, result
        changed = previous is None or previous.status != result.status
        new_error = result.error is not None and (previous is None or previous.reason != result.reason)
        if changed or new_error:
            self._on_change(previous, result)

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
        except Exception as exc:  # A bug or an untranslated vendor error: never a 500.
            status, reason, error = self.check.error_status, f"unexpected {type(exc).__name__}", exc
        finished = self._clock()
        return CheckResult(self.component, status, reason, finished, finished - started, error)
