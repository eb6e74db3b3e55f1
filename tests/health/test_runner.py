"""The runner: time limits, single flight, the cache and stale-while-revalidate.

The check here is a real object that blocks on an event the test controls, so each
interleaving is decided by the test, not by timing luck. A fake clock drives ages.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from health.checks.base import CheckFailed, Verdict
from health.runner import CheckResult, ComponentMonitor, Notifier, PendingRun
from health.status import ClerkStatus, Component, ComponentStatus


@dataclass
class GatedCheck:
    """Answers ``status`` once the test opens the gate; counts its runs."""

    status: ComponentStatus = ClerkStatus.OPERATIONAL
    raises: BaseException | None = None
    component: Component = Component.CLERK
    timeout_status: ComponentStatus = ClerkStatus.DOWN
    error_status: ComponentStatus = ClerkStatus.DOWN
    gate: threading.Event = field(default_factory=threading.Event)
    started: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    runs: int = 0

    def run(self, timeout: float) -> Verdict:
        self.runs += 1
        self.started.release()
        assert self.gate.wait(10), "the test never opened the gate"
        if self.raises is not None:
            raise self.raises
        return Verdict(self.status, "gated")

    def close(self) -> None:
        self.gate.set()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=4)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


class Recorder:
    """A listener that keeps what it heard, in order."""

    def __init__(self) -> None:
        self.results: list[CheckResult] = []
        self.changes: list[tuple[CheckResult | None, CheckResult]] = []

    def on_result(self, result: CheckResult) -> None:
        self.results.append(result)

    def on_change(self, previous: CheckResult | None, result: CheckResult) -> None:
        self.changes.append((previous, result))


def monitor_for(check: GatedCheck, executor: ThreadPoolExecutor, clock: FakeClock, **kwargs: Any) -> ComponentMonitor:
    options: dict[str, Any] = {"timeout": 0.5, "ttl": 5.0, "max_staleness": 30.0} | kwargs
    return ComponentMonitor(check, executor, clock=clock, **options)


@dataclass
class Harness:
    check: GatedCheck
    monitor: ComponentMonitor
    clock: FakeClock
    notifier: Notifier
    recorder: Recorder

    @property
    def changes(self) -> list[tuple[CheckResult | None, CheckResult]]:
        assert self.notifier.flush(10), "the listeners did not catch up"
        return self.recorder.changes

    def finish(self, pending: CheckResult | PendingRun) -> CheckResult:
        """Let the run answer and collect it."""
        assert isinstance(pending, PendingRun)
        self.check.gate.set()
        pending.future.result(timeout=5)
        return self.monitor.collect(pending)


@pytest.fixture
def harness(executor: ThreadPoolExecutor) -> Iterator[Harness]:
    check, clock, recorder = GatedCheck(), FakeClock(), Recorder()
    notifier = Notifier([recorder])
    monitor = monitor_for(check, executor, clock, notifier=notifier)
    yield Harness(check, monitor, clock, notifier, recorder)
    check.gate.set()
    notifier.close()


def test_the_first_poll_starts_a_run_to_wait_for(harness: Harness) -> None:
    pending = harness.monitor.poll()
    assert isinstance(pending, PendingRun)
    assert pending.deadline == harness.clock.now + 0.5
    assert harness.finish(pending).status == ClerkStatus.OPERATIONAL


def test_concurrent_callers_share_one_run(harness: Harness) -> None:
    first, second = harness.monitor.poll(), harness.monitor.poll()
    assert first is second
    harness.finish(first)
    assert harness.check.runs == 1


def test_a_fresh_result_is_served_without_running_the_check(harness: Harness) -> None:
    harness.finish(harness.monitor.poll())
    harness.clock.now += 4.9
    served = harness.monitor.poll()
    assert isinstance(served, CheckResult)
    assert harness.check.runs == 1


def test_warm_up_after_another_caller_got_a_fresh_answer_asks_nothing(harness: Harness) -> None:
    # The fleet heartbeat may have asked first; warm-up must not ask again within the TTL.
    harness.finish(harness.monitor.poll())
    harness.monitor.refresh()
    assert harness.monitor.in_flight is None
    assert harness.check.runs == 1
    harness.clock.now += 5.1  # past the TTL: warm-up (or any refresh) asks again
    harness.monitor.refresh()
    assert harness.monitor.in_flight is not None


def test_a_stale_result_is_served_at_once_while_one_refresh_runs(harness: Harness) -> None:
    first = harness.finish(harness.monitor.poll())
    harness.check.gate.clear()
    harness.clock.now += 6
    served = [harness.monitor.poll() for _ in range(5)]
    assert all(s is first for s in served)
    assert harness.check.started.acquire(timeout=5) and harness.check.started.acquire(timeout=5)
    assert harness.check.runs == 2  # one refresh for five stale polls
    refresh = harness.monitor.in_flight
    assert refresh is not None
    harness.check.status = ClerkStatus.DOWN
    harness.check.gate.set()
    refresh.future.result(timeout=5)
    # The refresh's answer is what the next poll serves, at once.
    result = harness.monitor.poll()
    assert isinstance(result, CheckResult)
    assert result.status == ClerkStatus.DOWN
    assert harness.check.runs == 2


def test_a_result_older_than_the_maximum_staleness_is_never_served(harness: Harness) -> None:
    harness.finish(harness.monitor.poll())
    harness.check.gate.clear()
    harness.clock.now += 31
    pending = harness.monitor.poll()
    assert isinstance(pending, PendingRun)
    assert harness.finish(pending).observed_at >= harness.clock.now


def test_a_run_past_its_deadline_counts_as_the_timeout_state(harness: Harness) -> None:
    pending = harness.monitor.poll()
    assert isinstance(pending, PendingRun)
    harness.clock.now += 0.5
    result = harness.monitor.collect(pending)
    assert result.status == ClerkStatus.DOWN
    assert "no answer within 0.5 s" in result.reason


def test_hung_runs_are_at_most_two_and_their_verdict_never_goes_stale(harness: Harness) -> None:
    pending = harness.monitor.poll()
    assert isinstance(pending, PendingRun)
    harness.clock.now += 0.5
    harness.monitor.collect(pending)
    for _ in range(3):
        harness.clock.now += 40  # far past the maximum staleness
        answer = harness.monitor.poll()
        assert isinstance(answer, CheckResult)  # answered at once, never waited on
        assert answer.status == ClerkStatus.DOWN
        assert answer.observed_at == harness.clock.now
    assert harness.check.started.acquire(timeout=5) and harness.check.started.acquire(timeout=5)
    # Two runs at most: the first, abandoned after 2 s, and one more; both still hang.
    assert not harness.check.started.acquire(timeout=0.2)
    assert harness.check.runs == 2
    assert harness.monitor.snapshot().runs_in_flight == 2


def test_an_answer_that_arrives_after_the_deadline_still_counts_as_a_timeout(
    executor: ThreadPoolExecutor,
) -> None:
    clock = FakeClock()

    class LateCheck(GatedCheck):
        def run(self, timeout: float) -> Verdict:
            clock.now += 2 * timeout
            return Verdict(ClerkStatus.OPERATIONAL)

    monitor = monitor_for(LateCheck(), executor, clock)
    pending = monitor.poll()
    assert isinstance(pending, PendingRun)
    pending.future.result(timeout=5)
    result = monitor.collect(pending)
    assert result.status == ClerkStatus.DOWN
    assert "after the 0.5 s limit" in result.reason


def test_a_known_failure_keeps_its_state_and_reason(harness: Harness) -> None:
    harness.check.raises = CheckFailed(ClerkStatus.DOWN, "HTTP 401")
    result = harness.finish(harness.monitor.poll())
    assert (result.status, result.reason, result.error) == (ClerkStatus.DOWN, "HTTP 401", None)


def test_an_unexpected_exception_gives_the_error_state_and_keeps_the_exception(harness: Harness) -> None:
    boom = ZeroDivisionError("secret detail")
    harness.check.raises = boom
    result = harness.finish(harness.monitor.poll())
    assert result.status == ClerkStatus.DOWN
    assert result.reason == "unexpected ZeroDivisionError"
    assert result.error is boom


def test_only_changes_of_state_are_reported(harness: Harness) -> None:
    harness.finish(harness.monitor.poll())
    for status in (ClerkStatus.OPERATIONAL, ClerkStatus.DOWN, ClerkStatus.DOWN, ClerkStatus.OPERATIONAL):
        harness.check.status = status
        harness.clock.now += 31
        harness.finish(harness.monitor.poll())
    seen = [(before.status if before else None, after.status) for before, after in harness.changes]
    assert seen == [
        (None, ClerkStatus.OPERATIONAL),
        (ClerkStatus.OPERATIONAL, ClerkStatus.DOWN),
        (ClerkStatus.DOWN, ClerkStatus.OPERATIONAL),
    ]


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
def test_even_a_base_exception_from_a_check_is_its_error_state(harness: Harness, exc: BaseException) -> None:
    harness.check.raises = exc
    result = harness.finish(harness.monitor.poll())
    assert result.status == ClerkStatus.DOWN
    assert result.reason == f"unexpected {type(exc).__name__}"


def test_a_result_is_never_served_stale_if_waiting_could_age_it_past_the_bound(harness: Harness) -> None:
    harness.finish(harness.monitor.poll())
    harness.check.gate.clear()
    harness.clock.now += 29.4  # + the 0.5 s a request may then wait: still within 30 s
    assert isinstance(harness.monitor.poll(), CheckResult)
    harness.check.gate.set()
    harness.finish(harness.monitor.in_flight)  # type: ignore[arg-type]
    harness.check.gate.clear()
    harness.clock.now += 29.6
    assert isinstance(harness.monitor.poll(), PendingRun)


def test_a_ttl_of_zero_means_live_nothing_is_served_from_before(executor: ThreadPoolExecutor) -> None:
    check, clock = GatedCheck(), FakeClock()
    check.gate.set()
    monitor = monitor_for(check, executor, clock, ttl=0)
    for status in (ClerkStatus.OPERATIONAL, ClerkStatus.DOWN):
        check.status = status
        clock.now += 0.001
        pending = monitor.poll()
        assert isinstance(pending, PendingRun)
        pending.future.result(timeout=5)
        assert monitor.collect(pending).status == status


def test_runs_happen_on_daemon_threads_so_a_hung_check_never_blocks_exit() -> None:
    from health.runner import DaemonThreadExecutor

    seen: list[bool] = []
    DaemonThreadExecutor().submit(lambda: seen.append(threading.current_thread().daemon)).result(timeout=5)
    assert seen == [True]


# -- hangs end: abandonment, at most two runs, recovery ------------------------------------


class HangingDependency:
    """Every run started while ``hung`` is set blocks until it is cleared; counts overlap."""

    component = Component.CLERK
    timeout_status = ClerkStatus.DOWN
    error_status = ClerkStatus.DOWN

    def __init__(self) -> None:
        self.released = threading.Event()
        self.hung = True
        self._lock = threading.Lock()
        self.active = self.most_active = self.runs = 0

    def run(self, timeout: float) -> Verdict:
        with self._lock:
            self.runs += 1
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            hung = self.hung
        try:
            if hung:
                assert self.released.wait(60), "the test never released the dependency"
            return Verdict(ClerkStatus.OPERATIONAL)
        finally:
            with self._lock:
                self.active -= 1

    def release(self) -> None:
        self.hung = False
        self.released.set()

    def close(self) -> None:
        self.release()


def test_an_abandoned_run_lets_the_next_look_ask_again_and_see_the_dependency_back(
    executor: ThreadPoolExecutor,
) -> None:
    dependency, clock = HangingDependency(), FakeClock()
    monitor = monitor_for(dependency, executor, clock)  # type: ignore[arg-type]
    try:
        first = monitor.poll()
        assert isinstance(first, PendingRun)
        clock.now += 0.5
        assert monitor.collect(first).status == ClerkStatus.DOWN
        clock.now += 1.5  # the abandonment bound: 4 x 0.5 s, at least 2 s
        dependency.hung = False  # the dependency answers again; the first run still hangs
        abandoned = monitor.poll()
        assert isinstance(abandoned, CheckResult)
        assert "abandoned" in abandoned.reason
        second = monitor.in_flight
        assert second is not None and second is not first
        second.future.result(timeout=5)
        assert monitor.collect(second).status == ClerkStatus.OPERATIONAL
        assert monitor.snapshot().runs_in_flight == 1  # the abandoned run, still hanging
    finally:
        dependency.release()


def test_a_late_answer_is_not_cached_past_a_ttl_from_when_it_was_asked(executor: ThreadPoolExecutor) -> None:
    dependency, clock = HangingDependency(), FakeClock()
    monitor = monitor_for(dependency, executor, clock, abandon_after=1000.0)
    first = monitor.poll()
    assert isinstance(first, PendingRun)
    clock.now += 10  # hung for 10 s, then it answers
    dependency.release()
    first.future.result(timeout=5)
    late = monitor.collect(first)
    assert (late.status, late.reason) == (ClerkStatus.DOWN, "answered after the 0.5 s limit")
    # Asked 10 s ago with a TTL of 5 s: the next look asks again instead of serving it.
    again = monitor.poll()
    assert isinstance(again, CheckResult) and again is late  # served stale while refreshing
    refresh = monitor.in_flight
    assert refresh is not None
    refresh.future.result(timeout=5)
    assert monitor.collect(refresh).status == ClerkStatus.OPERATIONAL


def test_a_run_hung_for_10_s_holds_at_most_two_threads_and_recovery_is_within_the_ttl() -> None:
    """Real threads and the real clock: the behaviour under test is threads."""
    from health.service import HealthService

    hang, ttl = 10.0, 1.0
    dependency = HangingDependency()
    service = HealthService(
        [dependency],  # type: ignore[list-item]
        instance_id="t",
        critical=frozenset({Component.CLERK}),
        timeout=0.5,
        ttl=ttl,
        max_staleness=ttl,
    )
    try:
        seen: list[str] = []
        most_in_flight = 0
        end = time.monotonic() + hang
        while time.monotonic() < end:
            report = service.check()
            seen.append(report.results[Component.CLERK].reason)
            most_in_flight = max(most_in_flight, service.snapshot()[Component.CLERK].runs_in_flight)
            time.sleep(0.05)
        assert dependency.most_active <= 2, dependency.most_active
        assert most_in_flight <= 2
        assert any("abandoned" in reason for reason in seen), seen
        released_at = time.monotonic()
        dependency.release()
        while service.check().results[Component.CLERK].status != ClerkStatus.OPERATIONAL:
            assert time.monotonic() - released_at < ttl + 1.0, service.snapshot()[Component.CLERK]
            time.sleep(0.02)
        assert dependency.most_active <= 2
    finally:
        dependency.release()
        service.close()


# -- listeners: one notifier thread, in order, never on the probe's thread --------------


class BlockingListener(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def on_change(self, previous: CheckResult | None, result: CheckResult) -> None:
        self.entered.set()
        assert self.release.wait(30)
        super().on_change(previous, result)


def test_a_stuck_listener_never_delays_a_probe(executor: ThreadPoolExecutor) -> None:
    check, clock, listener = GatedCheck(), FakeClock(), BlockingListener()
    check.gate.set()
    notifier = Notifier([listener])
    monitor = monitor_for(check, executor, clock, ttl=0, notifier=notifier)
    try:
        for status in (ClerkStatus.OPERATIONAL, ClerkStatus.DOWN, ClerkStatus.OPERATIONAL):
            check.status = status
            clock.now += 1
            pending = monitor.poll()
            assert isinstance(pending, PendingRun)
            pending.future.result(timeout=5)
            assert monitor.collect(pending).status == status  # answered while the listener is stuck
        assert listener.entered.wait(5)
        assert listener.changes == []  # still in its first call
    finally:
        listener.release.set()
    assert notifier.flush(10)
    assert [after.status for _, after in listener.changes] == [
        ClerkStatus.OPERATIONAL,
        ClerkStatus.DOWN,
        ClerkStatus.OPERATIONAL,
    ]
    assert listener.results == [after for _, after in listener.changes]  # every observation, in order
    notifier.close()


def test_listeners_run_on_one_notifier_thread_not_the_callers() -> None:
    threads: list[str] = []

    class Where(Recorder):
        def on_result(self, result: CheckResult) -> None:
            threads.append(threading.current_thread().name)

    notifier = Notifier([Where()])
    result = CheckResult(Component.CLERK, ClerkStatus.DOWN, "r", 0.0, 0.0)
    callers = [
        threading.Thread(target=notifier.publish, args=(None, result), kwargs={"changed": True}) for _ in range(5)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(5)
    assert notifier.flush(10)
    assert threads == ["health-notifier"] * 5
    notifier.close()


def test_a_full_queue_drops_and_counts_never_blocks_and_the_count_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    listener = BlockingListener()
    notifier = Notifier([listener], maxsize=2)
    result = CheckResult(Component.CLERK, ClerkStatus.DOWN, "r", 0.0, 0.0)
    notifier.publish(None, result, changed=True)
    assert listener.entered.wait(5)  # the thread holds the first; two more fit the queue
    for _ in range(5):
        notifier.publish(None, result, changed=True)  # returns at once even when full
    assert notifier.dropped == 3
    listener.release.set()
    assert notifier.flush(10)
    notifier.publish(None, result, changed=True)  # handled once it caught up, with the news
    assert notifier.flush(10)
    assert any("dropped (queue full): 3" in r.getMessage() for r in caplog.records)
    notifier.close()


def test_a_failing_listener_is_logged_and_the_next_one_still_hears(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Recorder):
        def on_change(self, previous: CheckResult | None, result: CheckResult) -> None:
            raise RuntimeError("listener bug")

    after = Recorder()
    notifier = Notifier([Broken(), after])
    notifier.publish(None, CheckResult(Component.CLERK, ClerkStatus.DOWN, "r", 0.0, 0.0), changed=True)
    assert notifier.flush(10)
    assert len(after.changes) == 1
    assert any("listener Broken failed for clerk" in r.getMessage() for r in caplog.records)
    notifier.close()


def test_the_notifier_works_in_a_forked_child() -> None:
    """gunicorn forks: a notifier whose thread ran in the parent starts a new one in the child."""
    read_end, write_end = os.pipe()

    class ToPipe(Recorder):
        def on_result(self, result: CheckResult) -> None:
            os.write(write_end, f"{os.getpid()} {result.reason}\n".encode())

    notifier = Notifier([ToPipe()])
    notifier.publish(None, CheckResult(Component.CLERK, ClerkStatus.DOWN, "parent", 0.0, 0.0), changed=False)
    assert notifier.flush(10)
    pid = os.fork()
    if pid == 0:  # the child: publish, wait for the listener, leave without pytest's teardown
        notifier.publish(None, CheckResult(Component.CLERK, ClerkStatus.DOWN, "child", 0.0, 0.0), changed=False)
        os._exit(0 if notifier.flush(10) else 1)
    _, status = os.waitpid(pid, 0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        lines = pipe.read().splitlines()
    assert os.waitstatus_to_exitcode(status) == 0
    assert lines == [f"{os.getpid()} parent", f"{pid} child"]
    notifier.close()


def test_the_snapshot_says_what_is_known_without_running_anything(harness: Harness) -> None:
    assert harness.monitor.snapshot().status is None
    harness.finish(harness.monitor.poll())
    harness.check.raises = CheckFailed(ClerkStatus.DOWN, "HTTP 401")
    for _ in range(2):
        harness.clock.now += 31
        harness.finish(harness.monitor.poll())
    snapshot = harness.monitor.snapshot()
    assert (snapshot.status, snapshot.reason, snapshot.consecutive_failures) == (ClerkStatus.DOWN, "HTTP 401", 2)
    assert snapshot.runs_in_flight == 0
    assert snapshot.last_success_at is not None and snapshot.since is not None and snapshot.checked_at is not None
    assert snapshot.last_success_at <= snapshot.since <= snapshot.checked_at
    assert harness.check.runs == 3
