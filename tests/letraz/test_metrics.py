"""Prometheus metrics in one process: real peers, the real request cycle, the real exposition.

The web's multi-process mode and the gRPC process's own port are exercised against real
servers in ``tests/process``.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, override_settings
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from health.service import get_health_service
from health.status import STATUS_TYPES, Component
from letraz.metrics import MetricsServer

pytestmark = pytest.mark.django_db

HEALTH, LIVE, READY, METRICS = "/api/v1/health/", "/api/v1/health/live/", "/api/v1/health/ready/", "/metrics"
PROBE_NAMES = {"health", "health-live", "health-ready"}


@pytest.fixture(autouse=True)
def patient_checks() -> Iterator[None]:
    """A loaded 2-core machine can take longer than 0.5 s for a first call; time limits are not tested here."""
    with override_settings(HEALTH_CHECK_TIMEOUT=3.0):
        yield


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def state_of(component: Component) -> dict[str, float]:
    return {
        s.value: sample("letraz_health_component_state", component=component.value, state=s.value)
        for s in STATUS_TYPES[component]
    }


def scrape(client: Client, **headers: str) -> str:
    response = client.get(METRICS, headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return response.content.decode()


def label_values(text: str) -> dict[str, set[str]]:
    """Every label of every ``letraz_health_*`` series, with the values it takes."""
    values: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("letraz_health_"):
            continue
        for s in family.samples:
            for label, value in s.labels.items():
                values.setdefault(label, set()).add(value)
    return values


def probe(client: Client) -> Any:
    """``GET /api/v1/health/``, then wait until the listeners heard its results.

    Metrics are written by the notifier thread, never on the probe's own.
    """
    response = client.get(HEALTH)
    assert get_health_service().flush_notifications(10)
    return response


def test_each_result_sets_exactly_one_state_and_failures_are_counted_by_state(client: Client, peers: Any) -> None:
    clerk, _ = peers
    before = time.time()
    assert probe(client).status_code == 200
    assert state_of(Component.CLERK) == {"OPERATIONAL": 1.0, "DOWN": 0.0}
    assert sample("letraz_health_last_success_timestamp_seconds", component="clerk") >= before - 1

    failures = sample("letraz_health_check_failures_total", component="clerk", state="DOWN")
    runs = sample("letraz_health_check_duration_seconds_count", component="clerk")
    clerk.mode = "unauthorized"
    assert probe(client).status_code == 503
    assert probe(client).status_code == 503
    assert state_of(Component.CLERK) == {"OPERATIONAL": 0.0, "DOWN": 1.0}
    assert sample("letraz_health_check_failures_total", component="clerk", state="DOWN") == failures + 2
    assert sample("letraz_health_check_duration_seconds_count", component="clerk") == runs + 2
    # Every component has exactly one state at 1.
    for component in Component:
        assert sorted(state_of(component).values())[-2:] == [0.0, 1.0], component


def test_sentry_without_a_dsn_is_no_failure(client: Client, peers: Any) -> None:
    before = sample("letraz_health_check_failures_total", component="sentry", state="UNINITIALIZED")
    probe(client)
    assert state_of(Component.SENTRY)["UNINITIALIZED"] == 1.0
    assert sample("letraz_health_check_failures_total", component="sentry", state="UNINITIALIZED") == before


def test_probes_are_counted_and_timed_by_url_name_and_code(client: Client, peers: Any) -> None:
    def count(name: str, code: str) -> float:
        return sample("letraz_health_probe_requests_total", path=name, code=code)

    live_200, live_405 = count("health-live", "200"), count("health-live", "405")
    ready_200 = count("health-ready", "200")
    timed = sample("letraz_health_probe_request_duration_seconds_count", path="health-live", code="200")
    client.get(LIVE)
    client.get(LIVE.rstrip("/"))  # the slash-less alias counts under the same name
    client.head(LIVE)
    client.post(LIVE)
    client.get(READY)
    assert count("health-live", "200") == live_200 + 3
    assert count("health-live", "405") == live_405 + 1
    assert count("health-ready", "200") == ready_200 + 1
    assert sample("letraz_health_probe_request_duration_seconds_count", path="health-live", code="200") == timed + 3

    # Other requests (unknown paths, the schema, /metrics itself) make no series at all.
    client.get("/api/v1/health/nope/")
    client.get("/api/v1/schema/")
    assert label_values(scrape(client))["path"] <= PROBE_NAMES


def test_label_values_are_only_enum_values_url_names_and_codes(client: Client, peers: Any) -> None:
    clerk, util = peers
    clerk.mode, util.mode = "server_error", "internal"
    probe(client)
    client.post(HEALTH)
    labels = label_values(scrape(client))
    assert labels["component"] <= {c.value for c in Component}
    assert labels["state"] <= {s.value for t in STATUS_TYPES.values() for s in t}
    assert labels["path"] <= PROBE_NAMES
    assert all(code.isdigit() for code in labels["code"])
    assert set(labels) == {"component", "state", "path", "code", "le"}


def test_scraping_costs_no_upstream_call_and_runs_no_check(client: Client, peers: Any) -> None:
    clerk, util = peers
    probe(client)  # HEALTH_CACHE_TTL is 0 in tests: any check run would be a new call
    calls = clerk.requests, util.requests
    runs = {c: sample("letraz_health_check_duration_seconds_count", component=c.value) for c in Component}
    for _ in range(25):
        scrape(client)
        client.head(METRICS)
    assert (clerk.requests, util.requests) == calls
    assert {c: sample("letraz_health_check_duration_seconds_count", component=c.value) for c in Component} == runs


def test_metrics_answer_prometheus_at_a_pod_ip_that_allowed_hosts_refuses(client: Client) -> None:
    pod = "10.12.0.7:8000"
    assert client.get("/api/v1/schema/", HTTP_HOST=pod).status_code == 400  # the API keeps its Host check
    response = client.get(METRICS, HTTP_HOST=pod)
    assert response.status_code == 200
    assert b"letraz_health_probe_requests_total" in response.content


def test_a_metrics_token_closes_metrics_to_everyone_else(client: Client) -> None:
    with override_settings(METRICS_TOKEN="scrape-me-please"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic c2NyYXBlLW1lLXBsZWFzZQ=="}):
            response = client.get(METRICS, headers=headers)
            assert response.status_code == 401, headers
            assert response["WWW-Authenticate"].startswith("Bearer")
            assert b"letraz_health" not in response.content
        assert "letraz_health_probe_requests" in scrape(client, Authorization="Bearer scrape-me-please")
    assert client.post(METRICS).status_code == 405


_WORKER = """
import sys
from prometheus_client import Counter
Counter("letraz_test_worker_requests", "Requests a worker answered.").inc(int(sys.argv[1]))
"""


def test_a_scrape_reads_every_worker_past_a_file_a_worker_has_not_sized_yet(client: Client, tmp_path: Path) -> None:
    """A worker creates its file, then sizes it: a scrape between the two read 0 bytes and answered 500.

    The empty file here is that moment, and what a worker killed in it leaves for good.
    """
    for requests in (3, 4):  # two real worker processes write their own files
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
        subprocess.run([sys.executable, "-c", _WORKER, str(requests)], env=env, check=True, timeout=60)
    (tmp_path / "counter_4194304.db").touch()
    with override_settings(PROMETHEUS_MULTIPROC_DIR=str(tmp_path)):
        text = scrape(client)
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["letraz_test_worker_requests_total"] == 7, text


# -- the gRPC process's endpoint, in this process -------------------------------------------------------


@pytest.fixture
def metrics_server() -> Iterator[MetricsServer]:
    server = MetricsServer("127.0.0.1", 0)
    server.start()
    yield server
    server.stop()


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_the_standalone_metrics_endpoint_serves_the_same_series(
    metrics_server: MetricsServer, client: Client, peers: Any
) -> None:
    probe(client)
    status, headers, body = get(metrics_server.port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    assert 'letraz_health_component_state{component="clerk",state="OPERATIONAL"} 1.0' in body.decode()
    assert get(metrics_server.port, "/")[0] == 404
    assert get(metrics_server.port, "/metrics/x")[0] == 404


def test_the_standalone_metrics_endpoint_honours_the_token(metrics_server: MetricsServer) -> None:
    with override_settings(METRICS_TOKEN="grpc-scrape"):
        status, headers, body = get(metrics_server.port, "/metrics")
        assert (status, headers["www-authenticate"]) == (401, 'Bearer realm="metrics"')
        assert b"letraz_health" not in body
        assert get(metrics_server.port, "/metrics", {"Authorization": "Bearer nope"})[0] == 401
        assert get(metrics_server.port, "/metrics", {"Authorization": "Bearer grpc-scrape"})[0] == 200


def test_a_failing_listener_never_breaks_a_probe(
    client: Client, peers: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Any, result: Any) -> None:
        raise RuntimeError("listener bug")

    monkeypatch.setattr("letraz.metrics.MetricsListener.on_result", broken)
    with caplog.at_level("ERROR", logger="health"):
        assert probe(client).status_code == 200
    assert any("listener MetricsListener failed" in r.getMessage() for r in caplog.records)


def test_the_state_follows_the_util_service_there_and_back(client: Client, peers: Any) -> None:
    _, util = peers
    assert probe(client).status_code == 200
    util.mode = "unhealthy"
    assert probe(client).status_code == 503
    assert state_of(Component.UTIL_SERVICE) == {"OPERATIONAL": 0.0, "DISCONNECTED": 0.0, "FAILED": 1.0}
    util.mode = "healthy"
    assert probe(client).status_code == 200
    assert state_of(Component.UTIL_SERVICE) == {"OPERATIONAL": 1.0, "DISCONNECTED": 0.0, "FAILED": 0.0}
