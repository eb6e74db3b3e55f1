"""History, fleet, events and the status page through Django's request cycle, on PostgreSQL."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client, override_settings

from health.models import FleetInstance
from health.timeline import INSTANCE, STARTED, Observation, TimelineKind, write_observations

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

HISTORY, FLEET, EVENTS, STATUS = (
    "/api/v1/health/history/",
    "/api/v1/health/fleet/",
    "/api/v1/health/events/",
    "/status/",
)
TOKEN = "diagnostics-secret"
AUTH = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}


@pytest.fixture
def recorded() -> float:
    """pod-a: started, clerk OPERATIONAL, DOWN (HTTP 401) 60 s later, up again after 30 s; heartbeat now."""
    now = time.time()
    t0 = now - 600
    write_observations("pod-a", "boot", [Observation(INSTANCE, STARTED, t0, kind=TimelineKind.START)])
    for offset, state, reason in ((0, "OPERATIONAL", ""), (60, "DOWN", "HTTP 401"), (90, "OPERATIONAL", "")):
        write_observations("pod-a", "boot", [Observation("clerk", state, t0 + offset, reason=reason)])
    FleetInstance.objects.filter(instance_id="pod-a").update(
        status="DEGRADED", states={"sentry": "UNINITIALIZED", "clerk": "OPERATIONAL", "db": "OPERATIONAL"}
    )
    return t0


def body(response: Any) -> dict[str, Any]:
    assert response["Content-Type"] == "application/json", response.content
    return json.loads(response.content)


def test_history_lists_the_changes_newest_first_and_the_time_in_each_state(client: Client, recorded: float) -> None:
    response = client.get(HISTORY, {"component": "clerk"})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    data = body(response)
    assert [(c["from_status"], c["to_status"]) for c in data["changes"]] == [
        ("DOWN", "OPERATIONAL"),
        ("OPERATIONAL", "DOWN"),
        ("", "OPERATIONAL"),
    ]
    assert data["changes"][0]["previous_duration"] == pytest.approx(30)
    clerk = data["components"]["clerk"]
    assert clerk["seconds"]["DOWN"] == pytest.approx(30)
    assert clerk["seconds"]["OPERATIONAL"] == pytest.approx(570, abs=5)
    assert clerk["availability"] == pytest.approx(570 / 600, abs=0.01)
    assert list(data["components"]) == ["clerk"]


def test_reasons_are_only_shown_with_the_diagnostics_token(client: Client, recorded: float) -> None:
    with override_settings(HEALTH_DIAGNOSTICS_TOKEN=TOKEN):
        public = body(client.get(HISTORY, {"component": "clerk"}))
        wrong = body(client.get(HISTORY, {"component": "clerk"}, HTTP_AUTHORIZATION="Bearer nope"))
        with_token = body(client.get(HISTORY, {"component": "clerk"}, **AUTH))
    assert all("reason" not in change for change in public["changes"] + wrong["changes"])
    assert [c["reason"] for c in with_token["changes"]] == ["", "HTTP 401", ""]


def test_history_pages_with_a_cursor(client: Client, recorded: float) -> None:
    first = body(client.get(HISTORY, {"page_size": 2}))
    assert len(first["changes"]) == 2 and first["next"]
    second = body(client.get(first["next"]))
    assert [c["id"] for c in second["changes"]] and not second["next"]
    ids = [c["id"] for c in first["changes"] + second["changes"]]
    assert len(ids) == len(set(ids)) == 4  # three clerk rows and the start


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ({"since": "yesterday"}, "since must be an ISO 8601"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since must not be after until"),
        ({"component": "redis"}, "component must be one of"),
        ({"buckets": "0"}, "buckets must be"),
        ({"buckets": "x" * 10}, "buckets must be"),
        ({"instance": "i" * 65}, "instance is an instance id"),
    ],
)
def test_a_malformed_query_is_a_short_400(client: Client, query: dict[str, str], fragment: str) -> None:
    response = client.get(HISTORY, query)
    assert response.status_code == 400
    assert fragment in body(response)["detail"]


def test_the_fleet_lists_instances_by_id_and_says_which_are_gone(client: Client, recorded: float) -> None:
    with override_settings(HEALTH_FLEET_GONE_AFTER=30.0):
        data = body(client.get(FLEET))
    [member] = data["instances"]
    assert member["instance_id"] == "pod-a" and member["gone"] is False
    assert member["states"]["clerk"] == "OPERATIONAL"
    FleetInstance.objects.update(last_seen=FleetInstance.objects.get().last_seen.replace(year=2020))
    assert body(client.get(FLEET))["instances"][0]["gone"] is True


def test_the_stream_sends_the_missed_rows_after_last_event_id(client: Client, recorded: float) -> None:
    first = body(client.get(HISTORY, {"component": "clerk"}))["changes"][-1]["id"]
    response = client.get(EVENTS, HTTP_LAST_EVENT_ID=str(first))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    chunks = iter(response.streaming_content)
    try:
        assert next(chunks).startswith(b"retry: ")
        events = [next(chunks).decode() for _ in range(2)]
    finally:
        response.close()
    assert [e.splitlines()[0] for e in events] == [f"id: {first + 1}", f"id: {first + 2}"]
    assert all('"reason"' not in e for e in events)


def test_streams_beyond_the_bound_are_a_clear_503(client: Client) -> None:
    with override_settings(HEALTH_STREAM_MAX=0):
        response = client.get(EVENTS)
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert "already serves 0 streams" in body(response)["detail"]
    assert client.get(EVENTS, HTTP_LAST_EVENT_ID="12; DROP").status_code == 400
    assert client.head(EVENTS).status_code == 405


def test_the_status_page_shows_states_bars_incidents_and_the_fleet_but_no_reasons(
    client: Client, recorded: float
) -> None:
    response = client.get(STATUS)
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-component="clerk" data-state="OPERATIONAL"' in page
    assert "Last 24 hours" in page and "Last 7 days" in page
    assert 'aria-label="clerk, last 24 hours: 95 % available"' in page
    assert "30 s" in page  # the incident's duration
    assert "pod-a" in page
    assert "HTTP 401" not in page
    assert '<script src="/static/core/status.js"' in page
    assert "://" not in page, "no external asset"


@pytest.mark.parametrize("path", [STATUS, HISTORY, FLEET, EVENTS])
def test_status_page_modes_guard_the_page_and_its_apis(client: Client, path: str) -> None:
    with override_settings(HEALTH_STATUS_PAGE="off"):
        assert client.get(path).status_code == 404
    with override_settings(HEALTH_STATUS_PAGE="token", HEALTH_DIAGNOSTICS_TOKEN=TOKEN, HEALTH_STREAM_MAX=0):
        refused = client.get(path)
        assert refused.status_code == 401
        assert refused["WWW-Authenticate"] == "Bearer"
        assert client.get(path, **AUTH).status_code in (200, 503)  # 503: the stream's bound of 0


def test_manage_py_health_history_prints_the_timeline(recorded: float, capsys: pytest.CaptureFixture[str]) -> None:
    call_command("health", "--history", "--since", "1h", "--component", "clerk")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Timeline from ")
    changes = [line for line in lines if "pod-a  clerk" in line]
    assert [line.split("  clerk  ")[1] for line in changes] == [
        "? -> OPERATIONAL",
        "OPERATIONAL -> DOWN (OPERATIONAL lasted 1 min) [HTTP 401]",
        "DOWN -> OPERATIONAL (DOWN lasted 30 s)",
    ]
    assert any(line.startswith("clerk: 95 % available") for line in lines), lines
