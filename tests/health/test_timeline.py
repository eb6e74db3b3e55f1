"""The timeline recorder against the real PostgreSQL: rows, durations, dedup, starts, gaps."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from health.models import INSTANCE, FleetInstance, TimelineEvent, TimelineKind
from health.timeline import (
    LOST,
    STARTED,
    Observation,
    TimelineRecorder,
    as_datetime,
    prune_timeline,
    write_observations,
)

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

T0 = 1_700_000_000.0


def rows(instance: str = "pod-a", component: str = "clerk") -> list[TimelineEvent]:
    return list(TimelineEvent.objects.filter(instance_id=instance, component=component).order_by("at", "id"))


def summary(events: list[TimelineEvent]) -> list[tuple[str, str, float | None]]:
    return [(e.from_status, e.to_status, e.previous_duration) for e in events]


def test_a_change_is_a_row_with_the_previous_states_duration() -> None:
    write_observations("pod-a", "boot-1", [Observation("clerk", "OPERATIONAL", T0)])
    write_observations("pod-a", "boot-1", [Observation("clerk", "DOWN", T0 + 90, reason="HTTP 401")])
    write_observations("pod-a", "boot-1", [Observation("clerk", "OPERATIONAL", T0 + 150)])
    events = rows()
    assert summary(events) == [("", "OPERATIONAL", None), ("OPERATIONAL", "DOWN", 90.0), ("DOWN", "OPERATIONAL", 60.0)]
    assert events[1].at == as_datetime(T0 + 90)
    assert events[1].reason == "HTTP 401"


def test_a_sibling_worker_seeing_the_same_state_adds_no_row() -> None:
    write_observations("pod-a", "boot-1", [Observation("clerk", "DOWN", T0)])
    write_observations("pod-a", "boot-1", [Observation("clerk", "DOWN", T0 + 0.3)])
    assert summary(rows()) == [("", "DOWN", None)]


def test_durations_hold_across_a_restart() -> None:
    """A new process (new boot) first sees OPERATIONAL: the row says DOWN lasted since before the restart."""
    write_observations("pod-a", "boot-1", [Observation(INSTANCE, STARTED, T0, kind=TimelineKind.START)])
    write_observations("pod-a", "boot-1", [Observation("clerk", "DOWN", T0 + 10)])
    write_observations("pod-a", "boot-2", [Observation(INSTANCE, STARTED, T0 + 100, kind=TimelineKind.START)])
    write_observations("pod-a", "boot-2", [Observation("clerk", "OPERATIONAL", T0 + 110)])
    assert summary(rows())[-1] == ("DOWN", "OPERATIONAL", 100.0)
    starts = rows(component=INSTANCE)
    assert [(e.kind, e.to_status, e.at) for e in starts] == [
        ("start", STARTED, as_datetime(T0)),
        ("start", STARTED, as_datetime(T0 + 100)),
    ]
    assert FleetInstance.objects.get(instance_id="pod-a").boot_id == "boot-2"


def test_sibling_workers_of_one_start_record_it_once() -> None:
    for worker_started in (T0, T0 + 0.2):
        write_observations("pod-a", "boot-1", [Observation(INSTANCE, STARTED, worker_started, kind=TimelineKind.START)])
    assert len(rows(component=INSTANCE)) == 1


def test_a_late_buffered_observation_is_put_in_its_place() -> None:
    """Worker B recorded DOWN at T0+20; worker A's buffered DOWN at T0+5 is when it really began."""
    write_observations("pod-a", "b", [Observation("clerk", "OPERATIONAL", T0)])
    write_observations("pod-a", "b", [Observation("clerk", "DOWN", T0 + 20)])
    write_observations("pod-a", "b", [Observation("clerk", "OPERATIONAL", T0 + 50)])
    write_observations("pod-a", "b", [Observation("clerk", "DOWN", T0 + 5)])
    assert summary(rows()) == [("", "OPERATIONAL", None), ("OPERATIONAL", "DOWN", 5.0), ("DOWN", "OPERATIONAL", 45.0)]


def test_the_recorder_writes_from_its_own_thread_with_the_observed_time() -> None:
    recorder = TimelineRecorder("pod-r", boot_id="boot-r").start()
    try:
        recorder.record_start()
        recorder.record(Observation("db", "FATAL", T0, reason="OperationalError"))
        assert recorder.flush(10), "the writer did not empty its buffer"
    finally:
        recorder.close()
    assert [(e.to_status, e.at, e.reason) for e in rows("pod-r", "db")] == [
        ("FATAL", as_datetime(T0), "OperationalError")
    ]
    assert [e.kind for e in rows("pod-r", INSTANCE)] == ["start"]


def test_what_overflows_the_buffer_is_counted_as_a_gap_and_the_last_state_kept() -> None:
    recorder = TimelineRecorder("pod-g", boot_id="boot-g", capacity=2)
    states = ["DOWN", "OPERATIONAL", "DOWN", "OPERATIONAL", "DOWN"]
    for offset, state in enumerate(states):
        recorder.record(Observation("clerk", state, T0 + offset))
    assert recorder.pending == 5
    recorder.start()
    try:
        assert recorder.flush(10), "the writer did not empty its buffer"
    finally:
        recorder.close()
    gap = TimelineEvent.objects.get(instance_id="pod-g", kind=TimelineKind.GAP)
    assert (gap.to_status, gap.at, gap.previous_duration) == (LOST, as_datetime(T0 + 2), 2.0)
    assert gap.reason.startswith("3 change(s) not recorded")
    # The two buffered changes, then the last lost state: the timeline ends in the true state.
    assert summary(rows("pod-g")) == [("", "DOWN", None), ("DOWN", "OPERATIONAL", 1.0), ("OPERATIONAL", "DOWN", 3.0)]


def test_pruning_deletes_only_rows_past_the_retention_in_batches() -> None:
    now = time.time()
    old = [
        TimelineEvent(instance_id="pod-p", component="db", to_status="FATAL", at=as_datetime(now) - timedelta(days=31))
        for _ in range(25)
    ]
    TimelineEvent.objects.bulk_create(old)
    write_observations("pod-p", "b", [Observation("db", "OPERATIONAL", now)])
    assert prune_timeline(30, batch=10) == 25
    # The row written now keeps what it said when written: FATAL had lasted 31 days.
    assert summary(rows("pod-p", "db")) == [("FATAL", "OPERATIONAL", pytest.approx(31 * 86400, abs=5))]
