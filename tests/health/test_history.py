"""Time in each state and availability: exact per instance, from the hourly rollup for the fleet."""

from __future__ import annotations

import pytest

from health.history import component_history, fleet
from health.models import FleetInstance, TimelineRollup
from health.timeline import Observation, as_datetime, write_observations

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

H = 3600.0
T0 = 1_700_000_000.0 - 1_700_000_000.0 % H  # on the hour: the fleet's figures are hour-grained


def at(offset: float) -> object:
    return as_datetime(T0 + offset)


def record(instance: str, component: str, *changes: tuple[float, str]) -> None:
    for offset, state in changes:
        write_observations(instance, "boot", [Observation(component, state, T0 + offset)])


def test_the_fleet_sums_closed_states_by_hour_and_open_ones_up_to_now() -> None:
    # pod-a: OPERATIONAL from an hour before, DOWN at 0:30, OPERATIONAL at 1:10. pod-b: DOWN from 0:00 on.
    record("pod-a", "clerk", (-H, "OPERATIONAL"), (H / 2, "DOWN"), (H + 600, "OPERATIONAL"))
    record("pod-b", "clerk", (0, "DOWN"))
    FleetInstance.objects.update(last_seen=at(2 * H))
    history = component_history(at(0), at(2 * H), now=at(2 * H), gone_after=30, components=["clerk", "db"], buckets=2)
    clerk = history["clerk"]
    # Hour 0: pod-a up 1800 and down 1800, pod-b down 3600. Hour 1: pod-a down 600 and up 3000, pod-b down 3600.
    assert clerk.seconds == {"OPERATIONAL": pytest.approx(4800), "DOWN": pytest.approx(9600)}
    assert clerk.availability == pytest.approx(4800 / 14400)
    assert clerk.buckets == [pytest.approx(1800 / 7200), pytest.approx(3000 / 7200)]
    assert history["db"].seconds == {} and history["db"].availability is None


def test_one_instance_is_exact_to_the_second() -> None:
    record("pod-a", "clerk", (-100, "OPERATIONAL"), (30, "DOWN"), (60, "OPERATIONAL"))
    record("pod-b", "clerk", (0, "DOWN"))
    FleetInstance.objects.update(last_seen=at(100))
    only_a = component_history(at(0), at(100), now=at(100), gone_after=30, components=["clerk"], instance="pod-a")
    assert only_a["clerk"].seconds == {"OPERATIONAL": pytest.approx(70), "DOWN": pytest.approx(30)}
    only_b = component_history(at(0), at(100), now=at(100), gone_after=30, components=["clerk"], instance="pod-b")
    assert only_b["clerk"].seconds == {"DOWN": pytest.approx(100)}


def test_a_late_observation_moves_its_seconds_in_the_rollup() -> None:
    """OPERATIONAL 0-2 h then DOWN was recorded; a buffered DOWN at 1 h arrives: an hour moves to DOWN."""
    record("pod-a", "db", (0, "OPERATIONAL"), (2 * H, "FATAL"), (3 * H, "OPERATIONAL"), (H, "FATAL"))
    hours = {
        (row.hour.timestamp() - T0, row.status): row.seconds
        for row in TimelineRollup.objects.filter(component="db")
        if row.seconds
    }
    assert hours == {(0, "OPERATIONAL"): pytest.approx(H), (H, "FATAL"): pytest.approx(H), (2 * H, "FATAL"): H}


def test_a_gone_instance_counts_only_until_its_last_heartbeat() -> None:
    record("pod-a", "db", (0, "OPERATIONAL"))
    FleetInstance.objects.update(last_seen=at(40))
    history = component_history(at(0), at(100), now=at(100), gone_after=30, components=["db"])
    assert history["db"].seconds == {"OPERATIONAL": pytest.approx(40)}
    assert history["db"].buckets == [pytest.approx(1.0)]
    assert [(m.instance_id, m.gone) for m in fleet(at(100), gone_after=30)] == [("pod-a", True)]
    assert fleet(at(60), gone_after=30)[0].gone is False


@pytest.mark.parametrize(("days", "buckets"), [(1, 24), (7, 28), (1, 1)])
def test_postgresql_spreads_the_open_states_over_the_buckets_as_python_does(days: int, buckets: int) -> None:
    """The status page's statement against the plain loop, on a fleet of every shape.

    States opened before the window, inside it, on a bucket's edge and after its end;
    instances live and gone (their states end at the last heartbeat); a component absent.
    """
    from random import Random

    from health.history import _open_states_by_bucket, _open_states_in_python

    rng = Random(20261130)  # fixed: the same fleet on every run
    now = T0 + 30 * 24 * H
    start, stop = now - days * 24 * H, now
    width = (stop - start) / buckets
    statuses = ["OPERATIONAL", "DOWN", "DEGRADED"]
    for number in range(300):
        opened = {
            name: rng.choice(
                [
                    start - rng.uniform(0, 5 * 24 * H),  # before the window
                    rng.uniform(start, stop),  # inside it
                    start + rng.randrange(buckets) * width,  # on a bucket's edge
                    stop + rng.uniform(1, H),  # after it (a clock ahead)
                ]
            )
            for name in ("clerk", "db", "util_service")
            if rng.random() < 0.9
        }
        seen = now - rng.choice([0.0, 5.0, 120.0, rng.uniform(0, days * 24 * H)])  # live, or gone a while
        FleetInstance.objects.create(
            instance_id=f"pod-{number:03d}",
            current={name: [rng.choice(statuses), at] for name, at in opened.items()},
            started_at=as_datetime(start - 10 * 24 * H),
            last_seen=as_datetime(seen),
        )

    def summed(pieces: list[tuple[str, int, str, float]]) -> dict[tuple[str, int, str], float]:
        total: dict[tuple[str, int, str], float] = {}
        for name, index, status, seconds in pieces:
            total[(name, int(index), status)] = total.get((name, int(index), status), 0.0) + seconds
        return {key: value for key, value in total.items() if abs(value) > 1e-6}

    arguments = (["clerk", "db", "util_service", "sentry"], start, stop, width, buckets, as_datetime(now), now - 30)
    expected = summed(_open_states_in_python(*arguments))
    got = summed(_open_states_by_bucket(*arguments))
    assert len(expected) > buckets  # the fleet covers many buckets and states
    assert got.keys() == expected.keys()
    for key, seconds in expected.items():
        assert got[key] == pytest.approx(seconds, rel=1e-9, abs=1e-3), key


@pytest.mark.parametrize(("days", "buckets"), [(1, 24), (7, 28)])
def test_postgresql_sums_the_rollup_by_bucket_as_python_does(days: int, buckets: int) -> None:
    from random import Random

    from health.history import _closed_states_by_bucket, _closed_states_in_python

    rng = Random(20261130)
    now = T0 + 30 * 24 * H + 1234.5  # not on the hour: the window's first hour starts before it
    start = now - days * 24 * H
    for hour in range(-2, days * 24 + 2):  # a little before and after the window too
        for name in ("clerk", "db"):
            for status in ("OPERATIONAL", "DOWN"):
                if rng.random() < 0.7:
                    TimelineRollup.objects.create(
                        hour=as_datetime(T0 + 30 * 24 * H - days * 24 * H + hour * H),
                        component=name,
                        status=status,
                        seconds=rng.choice([0.0, rng.uniform(1, 3600 * 50)]),
                    )
    arguments = (["clerk", "db", "sentry"], start, as_datetime(now), (now - start) / buckets)

    def summed(pieces: list[tuple[str, int, str, float]]) -> dict[tuple[str, int, str], float]:
        total: dict[tuple[str, int, str], float] = {}
        for name, index, status, seconds in pieces:
            total[(name, int(index), status)] = total.get((name, int(index), status), 0.0) + seconds
        return total

    expected, got = summed(_closed_states_in_python(*arguments)), summed(_closed_states_by_bucket(*arguments))
    assert len(expected) >= buckets  # many buckets and states, not a trivial case
    assert got == pytest.approx(expected)
