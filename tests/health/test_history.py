"""Time in each state and availability, computed by one SQL statement on PostgreSQL."""

from __future__ import annotations

import pytest

from health.history import component_history, fleet
from health.models import FleetInstance
from health.timeline import Observation, as_datetime, write_observations

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

T0 = 1_700_000_000.0


def at(offset: float) -> object:
    return as_datetime(T0 + offset)


def test_time_in_each_state_is_cut_to_the_window_and_summed_over_instances() -> None:
    # pod-a: OPERATIONAL from -100, DOWN at 30, OPERATIONAL at 60. pod-b: DOWN from 0 on.
    for offset, state in ((-100, "OPERATIONAL"), (30, "DOWN"), (60, "OPERATIONAL")):
        write_observations("pod-a", "a", [Observation("clerk", state, T0 + offset)])
    write_observations("pod-b", "b", [Observation("clerk", "DOWN", T0)])
    FleetInstance.objects.update(last_seen=at(100))
    history = component_history(at(0), at(100), now=at(100), gone_after=30, components=["clerk", "db"], buckets=2)
    clerk = history["clerk"]
    assert clerk.seconds == {"OPERATIONAL": pytest.approx(70), "DOWN": pytest.approx(130)}
    assert clerk.availability == pytest.approx(70 / 200)
    # First half: pod-a up 30 of 50, pod-b down 50; second half: pod-a up 40, pod-b down 50.
    assert clerk.buckets == [pytest.approx(30 / 100), pytest.approx(40 / 100)]
    assert history["db"].seconds == {} and history["db"].availability is None
    only_b = component_history(at(0), at(100), now=at(100), gone_after=30, components=["clerk"], instance="pod-b")
    assert only_b["clerk"].seconds == {"DOWN": pytest.approx(100)}


def test_a_gone_instance_counts_only_until_its_last_heartbeat() -> None:
    write_observations("pod-a", "a", [Observation("db", "OPERATIONAL", T0)])
    FleetInstance.objects.update(last_seen=at(40))
    history = component_history(at(0), at(100), now=at(100), gone_after=30, components=["db"])
    assert history["db"].seconds == {"OPERATIONAL": pytest.approx(40)}
    members = fleet(at(100), gone_after=30)
    assert [(m.instance_id, m.gone) for m in members] == [("pod-a", True)]
    assert fleet(at(60), gone_after=30)[0].gone is False
    assert history["db"].buckets == [pytest.approx(1.0)]
