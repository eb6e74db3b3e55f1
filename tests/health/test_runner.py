"""The runner: time limits, single flight, the cache and stale-while-revalidate.

The check here is a real object that blocks on an event the test controls, so each
interleaving is decided by the test, not by timing luck. A fake clock drives ages.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from health.checks.base import CheckFailed, Verdict
from health.runner import CheckResult, ComponentMonitor, PendingRun
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


@dataclass
class Harness:
    check: GatedCheck
    monitor: ComponentMonitor
    clock: FakeClock
    changes: list[tuple[CheckResult | None, CheckResult]]

    def finish(self, pending: CheckResult | PendingRun) -> CheckResult:
        """Let the run answer and collect it."""
        assert isinstance(pending, PendingRun)
        self.check.gate.set()
        pending.future.result(timeout=5)
        return self.monitor.collect(pending)


@pytest.fixture
def harness(executor: ThreadPoolExecutor) -> Iterator[Harness]:
    check, clock = GatedCheck(), FakeClock()
    changes: list[tuple[CheckResult | None, CheckResult]] = []
    monitor = ComponentMonitor(
        check,
        executor,
        timeout=0.5,
        ttl=5.0,
        max_staleness=30.0,
        on_change=lambda before, after: changes.append((before, after)),
        clock=clock,
    )
    yield Harness(check, monitor, clock, changes)
    check.gate.set()


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


def test_a_stale_result_is_served_at_once_while_one_refresh_runs(harness: Harness) -> None:
    first = harness.finish(harness.monitor.poll())
    harness.check.gate.clear()
    harness.clock.now += 6
    served = [harness.monitor.poll() for _ in range(5)]
    assert all(s is first for s in served)
    assert harness.check.started.acquire(timeout=5)
    assert harness.monitor.runs_started == 2  # one refresh for five stale polls
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


def test_a_hung_run_is_not_started_twice_and_its_verdict_never_goes_stale(harness: Harness) -> None:
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
    assert harness.monitor.runs_started == 1
    assert harness.check.runs == 1


def test_an_answer_that_arrives_after_the_deadline_still_counts_as_a_timeout(
    executor: ThreadPoolExecutor,
) -> None:
    clock = FakeClock()

    class LateCheck(GatedCheck):
        def run(self, timeout: float) -> Verdict:
            clock.now += 2 * timeout
            return Verdict(ClerkStatus.OPERATIONAL)

    monitor = ComponentMonitor(
        LateCheck(), executor, timeout=0.5, ttl=5, max_staleness=30, on_change=lambda *_: None, clock=clock
    )
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
    monitor = ComponentMonitor(
        check, executor, timeout=0.5, ttl=0, max_staleness=30, on_change=lambda *_: None, clock=clock
    )
    for status in (ClerkStatus.OPERATIONAL, ClerkStatus.DOWN):
        check.status = status
        clock.now += 0.001
        pending = monitor.poll()
        assert isinstance(pending, PendingRun)
        pending.future.result(timeout=5)
        assert monitor.collect(pending).status == status


def test_a_slow_change_listener_never_blocks_other_probes(executor: ThreadPoolExecutor) -> None:
    check, clock = GatedCheck(), FakeClock()
    check.gate.set()
    in_listener, release = threading.Event(), threading.Event()

    def slow_listener(before: CheckResult | None, after: CheckResult) -> None:
        in_listener.set()
        assert release.wait(10)

    monitor = ComponentMonitor(
        check, executor, timeout=0.5, ttl=5, max_staleness=30, on_change=slow_listener, clock=clock
    )
    pending = monitor.poll()
    assert isinstance(pending, PendingRun)
    pending.future.result(timeout=5)
    first = threading.Thread(target=monitor.collect, args=(pending,))
    first.start()
    assert in_listener.wait(5)
    # While the first caller sits in the listener, another probe is served at once.
    served = monitor.poll()
    assert isinstance(served, CheckResult) and served.status == ClerkStatus.OPERATIONAL
    release.set()
    first.join(5)
    assert not first.is_alive()


def test_a_failing_change_listener_is_logged_and_the_probe_still_answers(
    executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    check, clock = GatedCheck(), FakeClock()
    check.gate.set()

    def broken(before: CheckResult | None, after: CheckResult) -> None:
        raise RuntimeError("listener bug")

    monitor = ComponentMonitor(check, executor, timeout=0.5, ttl=5, max_staleness=30, on_change=broken, clock=clock)
    pending = monitor.poll()
    assert isinstance(pending, PendingRun)
    pending.future.result(timeout=5)
    assert monitor.collect(pending).status == ClerkStatus.OPERATIONAL
    assert any("change listener failed" in r.getMessage() for r in caplog.records)


def test_runs_happen_on_daemon_threads_so_a_hung_check_never_blocks_exit() -> None:
    from health.runner import DaemonThreadExecutor

    seen: list[bool] = []
    DaemonThreadExecutor().submit(lambda: seen.append(threading.current_thread().daemon)).result(timeout=5)
    assert seen == [True]
