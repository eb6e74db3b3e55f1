"""Metrics, JSON logs and secrecy against the real servers: gunicorn with two workers, grpcserver.

* A metric counted in one gunicorn worker shows in a scrape answered by the other. Which
  worker answered what is read from the JSON access log (its ``process`` field), so the
  test proves both workers took part rather than hoping they did.
* A dead worker's live gauges go, its counters stay (``child_exit``).
* With a Clerk key, a Sentry DSN with its key, a database password and every peer
  failing in each way the peers can, no public answer carries any of them, a configured
  host or port, or a traceback.
* The gRPC process serves its own ``/metrics``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from health.status import STATUS_TYPES, Component
from tests.leaks import mentions
from tests.peers.clerk import FakeClerkAPI
from tests.peers.sentry import SentryReceiver
from tests.peers.tcp import BlackholeListener
from tests.peers.util_service import FakeUtilService
from tests.process.support import (
    LOOPBACK,
    ServerProcess,
    base_env,
    free_port,
    grpcserver_args,
    gunicorn_args,
    http_request,
    migrated_database,
    peer_env,
    poll,
    raw_http,
    running,
    running_gunicorn,
)

pytestmark = pytest.mark.process

HEALTH, LIVE, READY, METRICS = "/api/v1/health/", "/api/v1/health/live/", "/api/v1/health/ready/", "/metrics"
DB_PASSWORD = "Pg-Pass-4f9c2e"
CLERK_KEY = "sk_live_NeverShowThisKey77"
DSN_KEY = "0123abcdDsnPublicKey"
TOKEN = "diagnostics-token-e3b0c442"
#: Enough fresh connections that the kernel hands some to each of two workers.
MAX_ATTEMPTS = 300
GRACEFUL_EXIT = 30.0


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database whose URL carries a password (ignored by a trust-auth server)."""
    with migrated_database(tmp_path_factory.mktemp("observability-db")) as url:
        parts = urlsplit(url)
        if parts.scheme.startswith("postgres"):
            user = parts.username or "postgres"
            netloc = f"{user}:{DB_PASSWORD}@{parts.hostname}:{parts.port or 5432}"
            url = urlunsplit(parts._replace(netloc=netloc))
        yield url


@pytest.fixture
def clerk_api() -> Iterator[FakeClerkAPI]:
    """Clerk, accepting only a key that looks like a real one."""
    with FakeClerkAPI(secret_key=CLERK_KEY) as api:
        yield api


def web_env(database_url: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService, **extra: str) -> dict[str, str]:
    settings = {
        "DATABASE_URL": database_url,
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "4",
        "HEALTH_CHECK_TIMEOUT": "0.9",
        "HEALTH_DB_SLOW_MS": "5000",
        "LOG_FORMAT": "json",
        # Set, so that no derived id can happen to contain a port's digits.
        "INSTANCE_ID": "observability-test",
    }
    return base_env(**(settings | peer_env(clerk_api, util_service) | extra))


def json_lines(server: ServerProcess) -> list[dict[str, Any]]:
    lines = []
    for line in server.complete_output.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def answered_by(server: ServerProcess, path: str, query: str) -> int:
    """The pid of the worker whose access line says it answered ``path?query``."""

    def find() -> int | None:
        for line in json_lines(server):
            if line.get("logger") == "gunicorn.access" and line.get("path") == path and line.get("query") == query:
                return int(line["process"])
        return None

    pid = poll(find, lambda p: p is not None, timeout=10)
    assert pid is not None, f"no access line for {path}?{query}:\n{server.output[-3000:]}"
    return pid


def scrape(port: int, query: str = "", server: ServerProcess | None = None) -> str:
    status, headers, body = http_request(port, f"{METRICS}?{query}" if query else METRICS)
    assert status == 200, f"{status} {body[:200]!r}\n{server.output[-3000:] if server else ''}"
    assert headers["content-type"].startswith("text/plain; version=")
    return body.decode()


def value(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def states(text: str, component: Component) -> dict[str, float | None]:
    return {
        s.value: value(text, "letraz_health_component_state", component=component.value, state=s.value)
        for s in STATUS_TYPES[component]
    }


def worker_pids(server: ServerProcess) -> set[int]:
    """Every worker gunicorn booted, from its own JSON log lines."""
    booted = set()
    for line in json_lines(server):
        if match := re.match(r"Booting worker with pid: (\d+)", str(line.get("message", ""))):
            booted.add(int(match.group(1)))
    return booted


# -- two workers, one picture --------------------------------------------------------------------


def test_a_count_made_in_one_worker_shows_in_a_scrape_answered_by_the_other(
    database_url: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService, tmp_path: Path
) -> None:
    env = web_env(database_url, clerk_api, util_service, GUNICORN_LOG_HEALTH_PROBES="true")
    with running_gunicorn(env, tmp_path / "two-workers.log") as (server, port):
        metrics_dir = poll(lambda: _metrics_dir(server), lambda d: d is not None, timeout=10)
        assert metrics_dir is not None and metrics_dir.is_dir(), server.output[-3000:]
        # Live probes, each on a new connection, until both workers have answered some.
        answered: dict[int, int] = {}
        sent = 0
        while len(answered) < 2:
            assert sent < MAX_ATTEMPTS, f"one worker took all {sent} connections: {answered}"
            assert http_request(port, f"{LIVE}?n={sent}")[0] == 200
            pid = answered_by(server, LIVE, f"n={sent}")
            answered[pid] = answered.get(pid, 0) + 1
            sent += 1

        # Scrapes, each on a new connection, until both workers have answered one: each
        # must count every live probe, including those the other worker answered.
        seen: dict[int, float | None] = {}
        scrapes = 0
        while len(seen) < 2:
            assert scrapes < MAX_ATTEMPTS, f"one worker took all {scrapes} scrapes: {seen}"
            text = scrape(port, f"s={scrapes}", server)
            pid = answered_by(server, METRICS, f"s={scrapes}")
            seen[pid] = value(text, "letraz_health_probe_requests_total", path="health-live", code="200")
            scrapes += 1
        assert set(seen) == set(answered), (seen, answered)
        for pid, counted in seen.items():
            assert counted == sent, f"worker {pid} scraped {counted}, sent {sent}; answered {answered}"
            assert answered[pid] < sent  # so the scrape included the other worker's count

        # Results (recorded when a report is asked for) show as one state per component.
        assert poll(lambda: http_request(port, HEALTH)[0], lambda status: status == 200, timeout=15) == 200
        text = scrape(port, server=server)
        assert (value(text, "letraz_health_check_duration_seconds_count", component="clerk") or 0) >= 1
        assert states(text, Component.CLERK) == {"OPERATIONAL": 1.0, "DOWN": 0.0}
        for component in Component:
            assert sorted(v or 0.0 for v in states(text, component).values())[-2:] == [0.0, 1.0], component

        # A worker that dies: its live gauges go (child_exit), its counts stay, a new one takes over.
        with_gauges = [pid for pid in answered if list(metrics_dir.glob(f"gauge_live*_{pid}.db"))]
        assert with_gauges, "the worker that answered 200 has no live gauge file"
        victim = with_gauges[0]
        os.kill(victim, signal.SIGKILL)
        replaced = poll(lambda: worker_pids(server) - set(answered), lambda new: bool(new), timeout=15)
        assert replaced, f"no new worker after killing {victim}:\n{server.output[-3000:]}"
        leftovers = poll(
            lambda: list(metrics_dir.glob(f"gauge_live*_{victim}.db")), lambda files: not files, timeout=10
        )
        assert not leftovers, leftovers
        after = scrape(port, server=server)
        assert value(after, "letraz_health_probe_requests_total", path="health-live", code="200") == sent
        for component in Component:
            assert [v for v in states(after, component).values() if v].count(1.0) <= 1, states(after, component)

        server.terminate()
        assert server.wait(timeout=GRACEFUL_EXIT) == 0

    # LOG_FORMAT=json: every line the server wrote is one JSON object with the agreed fields.
    output = server.output.splitlines()
    assert output, "gunicorn wrote nothing"
    not_json = [line for line in output if not line.startswith("{")]
    assert not not_json, not_json[:5]
    for line in json_lines(server):
        assert {"time", "level", "logger", "message", "instance_id", "process"} <= set(line), line
    assert any(
        line["logger"] == "gunicorn.error" and "Booting worker" in line["message"] for line in json_lines(server)
    )
    access = [line for line in json_lines(server) if line["logger"] == "gunicorn.access"]
    assert access and all({"method", "path", "status", "duration_ms"} <= set(line) for line in access)
    # The multi-process directory was gunicorn.conf.py's own: gone with the server.
    assert not metrics_dir.exists()


def _metrics_dir(server: ServerProcess) -> Path | None:
    """This gunicorn's multi-process directory: where its workers' memory-mapped files are."""
    for pid in worker_pids(server):
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for match in re.finditer(rf"(/\S+)/\w+_{pid}\.db$", maps, re.MULTILINE):
            return Path(match.group(1))
    return None


def test_the_metrics_directory_is_emptied_at_start_and_removed_at_exit(
    database_url: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService, tmp_path: Path
) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    stale = directory / "counter_999999.db"
    stale.write_bytes(b"left over by an earlier run")
    cached = {"HEALTH_CACHE_TTL": "60", "HEALTH_MAX_STALENESS": "120"}
    env = web_env(database_url, clerk_api, util_service, PROMETHEUS_MULTIPROC_DIR=str(directory), **cached)
    clerk_api.reset_count()
    util_service.reset_count()
    with running_gunicorn(env, tmp_path / "given-dir.log") as (server, port):
        assert not stale.exists()
        assert http_request(port, LIVE)[0] == 200
        text = scrape(port, server=server)
        assert value(text, "letraz_health_probe_requests_total", path="health-live", code="200") == 1.0
        assert list(directory.glob("*.db"))  # the workers write here

        # Scraping costs no upstream call: once both workers' warm-up calls are in, many
        # scrapes (answered by either worker) add none.
        assert clerk_api.wait_for_requests(2, timeout=15) and util_service.wait_for_requests(2, timeout=15)
        calls = clerk_api.requests, util_service.requests
        for _ in range(40):
            scrape(port, server=server)
        assert (clerk_api.requests, util_service.requests) == calls == (2, 2)
        server.terminate()
        assert server.wait(timeout=GRACEFUL_EXIT) == 0
    assert directory.exists()  # given, so not ours to remove


def test_a_configuration_error_leaves_no_metrics_directory_behind(
    database_url: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService, tmp_path: Path
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = web_env(database_url, clerk_api, util_service, HEALTH_CHECK_TIMEOUT="soon", TMPDIR=str(temp))
    with running(gunicorn_args(free_port()), env, tmp_path / "bad.log") as server:
        assert server.wait(timeout=30) == 2
    assert "HEALTH_CHECK_TIMEOUT is 'soon': expected a number of seconds" in server.output
    assert not list(temp.iterdir())  # gunicorn.conf.py made its directory here, and removed it


def test_a_metrics_token_closes_the_web_metrics(
    database_url: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService, tmp_path: Path
) -> None:
    env = web_env(database_url, clerk_api, util_service, METRICS_TOKEN="web-scrape-token", WEB_CONCURRENCY="1")
    with running_gunicorn(env, tmp_path / "token.log") as (_, port):
        status, headers, body = http_request(port, METRICS)
        assert (status, headers["www-authenticate"]) == (401, 'Bearer realm="metrics"')
        assert b"letraz_health" not in body


# -- nothing secret leaves -------------------------------------------------------------------------


def public_answers(port: int) -> list[tuple[str, int, str]]:
    """Every public answer: probes (GET, HEAD, no slash), errors (404, 405, 400), /metrics."""
    answers = []
    for path in (HEALTH, LIVE, READY, HEALTH.rstrip("/"), READY.rstrip("/"), METRICS):
        for method in ("GET", "HEAD"):
            status, headers, body = http_request(port, path, method=method)
            answers.append((f"{method} {path}", status, _shown(headers, body)))
    for method, path in (
        ("POST", HEALTH),
        ("DELETE", READY),
        ("OPTIONS", LIVE),
        ("GET", "/api/v1/nope/"),
        ("GET", "/nope"),
        ("GET", "/api/v1/health/diagnostics/"),
        ("POST", METRICS),
    ):
        status, headers, body = http_request(port, path, method=method)
        answers.append((f"{method} {path}", status, _shown(headers, body)))
    bad_host = raw_http(
        port, b"GET " + HEALTH.encode() + b" HTTP/1.1\r\nHost: evil.invalid\r\nConnection: close\r\n\r\n"
    )
    answers.append(("GET with a bad Host", int(bad_host.split()[1]), bad_host.decode(errors="replace")))
    return answers


def _shown(headers: dict[str, str], body: bytes) -> str:
    # Content-Length is a number of bytes: it may equal a port by chance, and says nothing.
    return json.dumps({k: v for k, v in headers.items() if k != "content-length"}) + body.decode(errors="replace")


def assert_nothing_leaks(answers: list[tuple[str, int, str]], secrets: set[str], ports: set[int]) -> None:
    for label, status, text in answers:
        assert status != 500, (label, text[:500])
        for fragment in (*secrets, *ports):
            assert not mentions(text, fragment), (label, fragment, text[:2000])
        for marker in ("Traceback", 'File "', "Error:", "psycopg", "httpx", "grpc._channel"):
            assert marker not in text, (label, marker, text[:2000])


def metric_labels_are_clean(text: str) -> None:
    allowed = {c.value for c in Component} | {s.value for t in STATUS_TYPES.values() for s in t}
    allowed |= {"health", "health-live", "health-ready"}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("letraz_health_"):
            for sample in family.samples:
                for label, label_value in sample.labels.items():
                    ok = label_value in allowed or (
                        label in ("code", "le") and re.fullmatch(r"[\d.+Inf]+", label_value)
                    )
                    assert ok, (sample.name, label, label_value)


def diagnostics_with_token(port: int) -> str:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        connection.request("GET", "/api/v1/health/diagnostics/", headers={"Authorization": f"Bearer {TOKEN}"})
        response = connection.getresponse()
        body = response.read().decode()
        assert response.status == 200, body
        return body
    finally:
        connection.close()


def failing_health(port: int, *components: str) -> dict[str, Any]:
    def ask() -> dict[str, Any]:
        status, _, body = http_request(port, HEALTH)
        answer: dict[str, Any] = json.loads(body)
        return answer | {"_status": status}

    answer = poll(ask, lambda a: all(a["details"][c] != "OPERATIONAL" for c in components), timeout=15)
    assert all(answer["details"][c] != "OPERATIONAL" for c in components), answer
    return answer


CLERK_FAILURES = ["unauthorized", "server_error", "malformed", "wrong_shape", "slow", "stopped"]
UTIL_FAILURES = ["unhealthy", "unimplemented", "internal", "slow", "slow", "stopped"]


def test_no_public_answer_carries_a_secret_a_host_a_port_or_a_traceback_while_peers_fail(
    database_url: str,
    clerk_api: FakeClerkAPI,
    util_service: FakeUtilService,
    sentry_receiver: SentryReceiver,
    tmp_path: Path,
) -> None:
    dsn = _dsn_with_key(sentry_receiver.dsn)
    env = web_env(
        database_url, clerk_api, util_service, SENTRY_DSN=dsn, HEALTH_CACHE_TTL="0", HEALTH_DIAGNOSTICS_TOKEN=TOKEN
    )
    db = urlsplit(database_url)
    secrets = {CLERK_KEY, DSN_KEY, dsn, DB_PASSWORD, LOOPBACK}
    ports = {clerk_api.port, util_service.port, sentry_receiver.port} | ({db.port or 5432} if db.port else set())
    clerk_api.delay = util_service.delay = 3.0
    with running_gunicorn(env, tmp_path / "secrets.log") as (server, port):
        for clerk_mode, util_mode in zip(CLERK_FAILURES, UTIL_FAILURES, strict=True):
            if clerk_mode == "stopped":
                clerk_api.stop()
            else:
                clerk_api.mode = clerk_mode
            if util_mode == "stopped":
                util_service.stop()
            else:
                util_service.mode = util_mode
            answer = failing_health(port, "clerk", "util_service")
            assert answer["_status"] == 503, answer
            answers = public_answers(port)
            assert ("GET /api/v1/health/diagnostics/", 401) in {(label, status) for label, status, _ in answers}
            assert_nothing_leaks(answers, secrets, ports)
            metric_labels_are_clean(scrape(port, server=server))
            # The token holder learns why, still without a secret, host or port.
            diagnosed = diagnostics_with_token(port)
            assert_nothing_leaks([("diagnostics", 200, diagnosed)], secrets - {LOOPBACK} | {TOKEN}, set())
            assert LOOPBACK not in diagnosed
            # (a pid may equal a port by chance, so ports are looked for as a host would carry them)
            assert not [p for p in ports if f":{p}" in diagnosed or f"port {p}" in diagnosed], diagnosed
        # The reasons exist, and say more than the public body: in the logs, not in answers.
        assert "HTTP 401" in server.output
        assert DB_PASSWORD not in server.output


def test_no_public_answer_leaks_when_the_database_and_sentry_fail(
    database_url: str,
    clerk_api: FakeClerkAPI,
    util_service: FakeUtilService,
    blackhole: BlackholeListener,
    closed_port: int,
    tmp_path: Path,
) -> None:
    # A malformed DSN stops the server at start (letraz.E005); a well-formed one whose
    # receiver is gone is what a running server can meet: its key must not leak either.
    bad_dsn = f"http://{DSN_KEY}@{LOOPBACK}:{closed_port}/7"
    for db_port, util_target in ((blackhole.port, f"{LOOPBACK}:{closed_port}"), (closed_port, blackhole.target)):
        db_url = f"postgres://postgres:{DB_PASSWORD}@{LOOPBACK}:{db_port}/letraz"
        env = web_env(db_url, clerk_api, util_service, SENTRY_DSN=bad_dsn, UTIL_GRPC_HOST=util_target)
        env |= {"CLERK_API_URL": f"http://{LOOPBACK}:{closed_port}/v1", "HEALTH_CHECK_TIMEOUT": "0.5"}
        with running_gunicorn(env, tmp_path / f"db-{db_port}.log") as (_, port):
            answer = failing_health(port, "db", "clerk", "util_service")
            assert (answer["details"]["db"], answer["details"]["sentry"]) == ("FATAL", "OPERATIONAL"), answer
            secrets = {CLERK_KEY, DSN_KEY, bad_dsn, DB_PASSWORD, LOOPBACK}
            assert_nothing_leaks(public_answers(port), secrets, {db_port, closed_port, blackhole.port})
            metric_labels_are_clean(scrape(port))


def _dsn_with_key(dsn: str) -> str:
    """The receiver's DSN with our recognisable public key in place of its own."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{DSN_KEY}@{parts.hostname}:{parts.port}"))


# -- the gRPC process ------------------------------------------------------------------------------


def test_the_grpc_process_serves_its_own_metrics_and_scraping_costs_no_upstream_call(
    database_url: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService, tmp_path: Path
) -> None:
    env = base_env(
        DATABASE_URL=database_url,
        HEALTH_CACHE_TTL="60",
        HEALTH_MAX_STALENESS="120",
        HEALTH_CHECK_TIMEOUT="0.9",
        HEALTH_DB_SLOW_MS="5000",
        METRICS_TOKEN="grpc-metrics-token",
        **peer_env(clerk_api, util_service),
    )
    with running(grpcserver_args(), env, tmp_path / "grpcserver.log") as process:
        metrics_port = int(process.wait_for_line(r"metrics on 127\.0\.0\.1:(\d+)/metrics", timeout=30).group(1))
        address = process.wait_for_line(r"gRPC server listening on (127\.0\.0\.1:\d+)", timeout=30).group(1)
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            serving = health_pb2.HealthCheckResponse.SERVING
            ready = health_pb2.HealthCheckRequest(service="")
            poll(lambda: stub.Check(ready, timeout=2).status, lambda status: status == serving, timeout=15)
            with pytest.raises(grpc.RpcError):
                stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=2)

        assert http_request(metrics_port, METRICS)[0] == 401
        calls = clerk_api.requests, util_service.requests

        def scrape_grpc() -> str:
            connection = http.client.HTTPConnection(LOOPBACK, metrics_port, timeout=5)
            try:
                connection.request("GET", METRICS, headers={"Authorization": "Bearer grpc-metrics-token"})
                response = connection.getresponse()
                assert response.status == 200
                return response.read().decode()
            finally:
                connection.close()

        for _ in range(20):
            text = scrape_grpc()
        assert (clerk_api.requests, util_service.requests) == calls
        assert states(text, Component.CLERK) == {"OPERATIONAL": 1.0, "DOWN": 0.0}
        assert states(text, Component.UTIL_SERVICE)["OPERATIONAL"] == 1.0
        check = "/grpc.health.v1.Health/Check"
        assert (value(text, "letraz_health_probe_requests_total", path=check, code="OK") or 0) >= 1
        assert value(text, "letraz_health_probe_requests_total", path=check, code="NOT_FOUND") == 1.0
        assert (value(text, "letraz_health_check_duration_seconds_count", component="db") or 0) >= 1
        assert CLERK_KEY not in text and LOOPBACK not in text
