"""Runs one component's check: time limit, cache, single flight, abandonment, listeners.

A :class:`ComponentMonitor` keeps the component's last result. Asked for it, it

* answers at once with a result younger than the TTL;
* answers at once with an older one (up to the maximum staleness) and starts one
  refresh in the background (stale-while-revalidate);
* otherwise hands back the run in flight, starting one if there is none, for the
  caller to wait on until the run's deadline.

A run that passes its deadline counts as the check's ``timeout_status``; that verdict is
re-observed on every look while the run still hangs, so it never goes stale. A run still
hanging at ``abandon_after`` (a few times the time limit) is *abandoned*: its thread is
left to finish on its own, its answer is ignored, and the next look starts a new run.
At most :data:`MAX_RUNS` runs of one component exist at any moment (the current one and
one abandoned), so a dependency that hangs forever holds at most two threads, whatever
the probe rate; and a dependency that answers again is seen within one run of its first
good answer instead of after the hang's length plus a TTL. A run that answers after its
limit is the timeout state too; one that hung (over twice the limit) is fresh for a TTL
from when it was asked, not from its answer, so the next look asks again.

Runs happen on daemon threads (:class:`DaemonThreadExecutor`): a check stuck in a
driver call must never keep a worker or the CLI from exiting.

Nothing but the answer happens on the probe's thread: every observation and every change
of state is put on the :class:`Notifier`'s bounded queue (never blocking), and one
notifier thread hands them, in order, to the :class:`HealthListener` objects wired in
``health.service.build_service`` (the log line, Sentry, metrics). A slow, failing or
stuck listener never delays or breaks a probe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import ParamSpec, Protocol, TypeVar

from health.checks.base import CheckFailed, HealthCheck
from health.status import OPERATIONAL, Component, ComponentStatus

logger = logging.getLogger("health")

Clock = Callable[[], float]
P = ParamSpec("P")
T = TypeVar("T")

#: Runs of one component that may exist at once: the current one and one abandoned.
MAX_RUNS = 2
#: A run still hanging after this many time limits is abandoned.
ABANDON_FACTOR = 4.0


def abandon_bound(timeout: float) -> float:
    """Seconds after which a hanging run is abandoned (never under 2 s: libpq's floor)."""
    return max(ABANDON_FACTOR * timeout, 2.0)


class DaemonThreadExecutor(Executor):
    """One daemon thread per submitted run.

    ``ThreadPoolExecutor`` joins its threads when the interpreter exits, so one check
    hanging in a driver call would hold up a gunicorn worker's or the CLI's exit until
    the driver gives up. Runs are rare (at most one per component per TTL) and never
    more than :data:`MAX_RUNS` per component at a time, so a thread per run costs nothing.
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


@dataclass(eq=False)
class PendingRun:
    """A run in flight, the moment its caller stops waiting, and when it is abandoned."""

    future: Future[CheckResult]
    deadline: float
    abandon_at: float
    overdue_seen: bool = field(default=False, repr=False)


class HealthListener(Protocol):
    """Told about observations and changes; called by ONE notifier thread, in order.

    Never called on a probe's thread, so it may be slow; an exception it raises is
    logged and the next notification still goes out.
    """

    def on_result(self, result: CheckResult) -> None:
        """Every observation: a finished run, a run past its deadline, an abandoned run."""
        ...

    def on_change(self, previous: CheckResult | None, result: CheckResult) -> None:
        """A change of status (or a new unexpected error); ``previous`` is None at first."""
        ...


@dataclass(frozen=True)
class ComponentSnapshot:
    """What the monitor knows of one component now (diagnostics, metrics; never bodies)."""

    component: Component
    status: ComponentStatus | None
    reason: str
    duration: float | None
    checked_at: float | None
    since: float | None
    consecutive_failures: int
    runs_in_flight: int
    last_success_at: float | None


_Notification = tuple[CheckResult | None, CheckResult, bool]  # previous, result, is a change
_notifiers: weakref.WeakSet[Notifier] = weakref.WeakSet()


class Notifier:
    """One daemon thread calling the listeners, fed by a bounded queue.

    ``publish`` never blocks: when the queue is full (listeners far behind) the
    notification is dropped and counted, and the count is logged by the notifier thread
    once it catches up. The thread starts on first use in the process that uses it
    (so a service built before a fork gets its own thread in the child), is a daemon
    (a stuck listener never holds up exit), and stops with :meth:`close`.
    """

    def __init__(self, listeners: Sequence[HealthListener], *, maxsize: int = 1000) -> None:
        self.listeners = tuple(listeners)
        self._maxsize = maxsize
        self._reset()
        _notifiers.add(self)

    def _reset(self) -> None:
        self._queue: queue.Queue[_Notification | None] = queue.Queue(self._maxsize)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._dropped = 0
        self._closed = False

    @property
    def dropped(self) -> int:
        """Notifications lost to a full queue since the start (also logged)."""
        return self._dropped

    def publish(self, previous: CheckResult | None, result: CheckResult, *, changed: bool) -> None:
        """Queue one notification for the listeners; never blocks, never raises."""
        if not self.listeners or self._closed:
            return
        self._ensure_thread()
        try:
            self._queue.put_nowait((previous, result, changed))
        except queue.Full:
            self._dropped += 1  # a lost increment under a race only makes the count low

    def flush(self, timeout: float) -> bool:
        """Wait until every queued notification was handled (the CLI, tests)."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def close(self) -> None:
        """Stop the thread after what is queued (without waiting for it)."""
        self._closed = True
        if self._thread is not None:
            # When full, the thread (a daemon) stays until the process ends.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="health-notifier", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        reported = 0
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._dropped != reported:
                    reported = self._dropped
                    logger.warning("health notifications dropped (queue full): %d so far", reported)
                self._deliver(*item)
            finally:
                self._queue.task_done()

    def _deliver(self, previous: CheckResult | None, result: CheckResult, changed: bool) -> None:
        for listener in self.listeners:
            try:
                listener.on_result(result)
                if changed:
                    listener.on_change(previous, result)
            except Exception:
                logger.exception("The health listener %s failed for %s", type(listener).__name__, result.component)


def _renew_notifiers_after_fork() -> None:
    # The parent's notifier thread does not exist in the child, and its queue's lock may
    # have been held by it at the fork: the child starts clean, on first use.
    for notifier in list(_notifiers):
        notifier._reset()


os.register_at_fork(after_in_child=_renew_notifiers_after_fork)


class ComponentMonitor:
    """The cached, single-flight (plus one abandoned), time-limited view of one check."""

    def __init__(
        self,
        check: HealthCheck,
        executor: Executor,
        *,
        timeout: float,
        ttl: float,
        max_staleness: float,
        notifier: Notifier | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        abandon_after: float | None = None,
    ) -> None:
        self.check = check
        self._executor = executor
        self._timeout = timeout
        self._ttl = ttl
        self._abandon_after = abandon_bound(timeout) if abandon_after is None else abandon_after
        # A TTL of zero means live: nothing is served from before this request. Else a
        # result is served stale only while it stays within the bound even if the
        # request then waits the whole time limit for other components.
        self._serve_stale_until = 0.0 if ttl <= 0 else max(max_staleness - timeout, ttl)
        self._notifier = notifier or Notifier(())
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._result: CheckResult | None = None
        self._fresh_until = float("-inf")
        self._run: PendingRun | None = None
        self._abandoned: list[PendingRun] = []
        # For snapshot(): wall-clock times and counters.
        self._checked_at: float | None = None
        self._since: float | None = None
        self._last_success_at: float | None = None
        self._consecutive_failures = 0

    @property
    def component(self) -> Component:
        return self.check.component

    @property
    def in_flight(self) -> PendingRun | None:
        """The current run, if any (settled on the next poll; abandoned ones excluded)."""
        return self._run

    def poll(self) -> CheckResult | PendingRun:
        """A result good enough to serve now, or the run to wait for."""
        with self._lock:
            now = self._clock()
            self._settle(now)
            result = self._result
            if result is not None and now <= self._fresh_until:
                return result
            run = self._start(now)
            if run is None:
                # Two runs hang already: say so at once, re-observed now, never waiting.
                return self._record(self._hung(now), fresh_until=now, observation=False)
            if result is not None and now - result.observed_at <= self._serve_stale_until:
                return result
            return run

    def collect(self, pending: PendingRun) -> CheckResult:
        """The outcome of ``pending`` once it finished or its deadline passed."""
        with self._lock:
            now = self._clock()
            self._settle(now)
            if self._run is pending and not pending.future.done():
                # The caller waited until the deadline; the clock may read a hair less.
                self._overdue(pending, now)
            assert self._result is not None
            return self._result

    def refresh(self) -> None:
        """Start a run unless one is in flight or the result is still fresh, without waiting.

        Warm-up calls it while another caller (the fleet heartbeat) may already have had a
        fresh answer: asking again then would cost the dependency a call the TTL forbids.
        """
        with self._lock:
            now = self._clock()
            self._settle(now)
            if self._result is not None and now <= self._fresh_until:
                return
            if self._run is None:
                self._start(now)

    def snapshot(self) -> ComponentSnapshot:
        """The last result and its history, without running anything."""
        with self._lock:
            self._settle(self._clock())
            result = self._result
            return ComponentSnapshot(
                component=self.component,
                status=result.status if result else None,
                reason=result.reason if result else "",
                duration=result.duration if result else None,
                checked_at=self._checked_at,
                since=self._since,
                consecutive_failures=self._consecutive_failures,
                runs_in_flight=self._runs_alive(),
                last_success_at=self._last_success_at,
            )

    # -- under self._lock ------------------------------------------------------------

    def _runs_alive(self) -> int:
        self._abandoned = [run for run in self._abandoned if not run.future.done()]
        return len(self._abandoned) + (self._run is not None)

    def _start(self, now: float) -> PendingRun | None:
        if self._run is None:
            if self._runs_alive() >= MAX_RUNS:
                return None
            future = self._executor.submit(self._execute)
            self._run = PendingRun(future, now + self._timeout, now + self._abandon_after)
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
            # A run that hung (over twice its limit) is fresh for a TTL from when it was
            # asked, not from its answer: after a long hang the next look asks again at
            # once. One that ended near its limit (a driver's own timeout) is cached as
            # usual, so failing runs stay a TTL apart.
            late = result.duration > 2 * self._timeout
            asked_at = result.observed_at - result.duration
            self._record(result, fresh_until=(asked_at if late else result.observed_at) + self._ttl)
        elif now >= run.abandon_at:
            self._run = None
            self._abandoned.append(run)
            reason = f"no answer within {self._abandon_after:g} s, run abandoned"
            abandoned = CheckResult(self.component, self.check.timeout_status, reason, now, self._abandon_after)
            self._record(abandoned, fresh_until=float("-inf"))
        elif now >= run.deadline:
            self._overdue(run, now)

    def _overdue(self, run: PendingRun, now: float) -> None:
        result = CheckResult(
            self.component,
            self.check.timeout_status,
            f"no answer within {self._timeout:g} s",
            observed_at=now,
            duration=self._timeout,
        )
        # Re-observed on every look while the run hangs; an observation only once per run.
        self._record(result, fresh_until=now, observation=not run.overdue_seen)
        run.overdue_seen = True

    def _hung(self, now: float) -> CheckResult:
        reason = f"no answer; {MAX_RUNS} runs still hanging"
        return CheckResult(self.component, self.check.timeout_status, reason, now, 0.0)

    def _failed(self, now: float, exc: BaseException) -> CheckResult:
        return CheckResult(self.component, self.check.error_status, f"unexpected {type(exc).__name__}", now, 0.0, exc)

    def _record(self, result: CheckResult, *, fresh_until: float, observation: bool = True) -> CheckResult:
        previous, self._result = self._result, result
        self._fresh_until = fresh_until
        changed = previous is None or previous.status != result.status
        new_error = result.error is not None and (previous is None or previous.reason != result.reason)
        if not observation and not changed:
            return result
        wall = self._wall()
        self._checked_at = wall
        if changed:
            self._since = wall
        if result.operational:
            self._last_success_at = wall
            self._consecutive_failures = 0
        else:
            self._consecutive_failures += 1
        # Queued under the lock, so each component's notifications keep their order.
        self._notifier.publish(previous, result, changed=changed or new_error)
        return result

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
