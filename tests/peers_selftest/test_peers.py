"""Self-tests of the loopback peers, driven by the real client libraries."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import grpc
import httpx
import pytest
import sentry_sdk
from clerk_backend_api import Clerk
from clerk_backend_api.models import ClerkBaseError, ResponseValidationError, SDKError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from health.proto import util_health_pb2, util_health_pb2_grpc
from tests.peers.clerk import FakeClerkAPI
from tests.peers.sentry import SentryReceiver, parse_envelope
from tests.peers.tcp import BlackholeListener
from tests.peers.util_service import FakeUtilService

#: Keeps a restarted peer's reconnect under a second (see REFERENCE.md). Without
#: ``grpc.min_reconnect_backoff_ms``, which bounds each connection attempt, not the
#: backoff: see ``health.checks.util_service.CHANNEL_OPTIONS``.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 200),
]


def _handler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "process_request_thread" in t.name]


def _clerk(api: FakeClerkAPI, key: str | None = None, timeout_ms: int = 2000) -> Clerk:
    return Clerk(
        bearer_auth=key or api.secret_key,
        server_url=api.url,
        retry_config=None,
        timeout_ms=timeout_ms,
    )


# -- Clerk ---------------------------------------------------------------------------


def test_clerk_ok_returns_jwks(clerk_api: FakeClerkAPI) -> None:
    assert clerk_api.url == f"http://127.0.0.1:{clerk_api.port}/v1"
    jwks = _clerk(clerk_api).jwks.get_jwks(retries=None)
    assert jwks.keys is not None and len(jwks.keys) == 1
    key = jwks.keys[0]
    assert (key.kty, key.alg, key.use, key.e) == ("RSA", "RS256", "sig", "AQAB")
    assert clerk_api.requests == 1
    clerk_api.reset_count()
    assert clerk_api.requests == 0


def test_clerk_wrong_key_is_401(clerk_api: FakeClerkAPI) -> None:
    with pytest.raises(SDKError) as info:
        _clerk(clerk_api, key="sk_test_wrong").jwks.get_jwks(retries=None)
    assert info.value.status_code == 401
    assert json.loads(info.value.body)["errors"][0]["code"] == "authentication_invalid"


def test_clerk_unauthorized_mode_is_401_even_with_right_key(clerk_api: FakeClerkAPI) -> None:
    clerk_api.mode = "unauthorized"
    with pytest.raises(SDKError) as info:
        _clerk(clerk_api).jwks.get_jwks(retries=None)
    assert info.value.status_code == 401


def test_clerk_server_error_is_500_without_retries(clerk_api: FakeClerkAPI) -> None:
    clerk_api.mode = "server_error"
    with pytest.raises(SDKError) as info:
        _clerk(clerk_api).jwks.get_jwks(retries=None)
    assert info.value.status_code == 500
    assert clerk_api.requests == 1


@pytest.mark.parametrize("mode", ["malformed", "wrong_shape"])
def test_clerk_malformed_body_raises(clerk_api: FakeClerkAPI, mode: str) -> None:
    clerk_api.mode = mode
    # Not an SDKError: code catching only SDKError misses a garbled 200.
    with pytest.raises(ResponseValidationError) as info:
        _clerk(clerk_api).jwks.get_jwks(retries=None)
    assert isinstance(info.value, ClerkBaseError)
    assert not isinstance(info.value, SDKError)
    assert clerk_api.requests == 1


def test_clerk_slow_times_out_client_and_stops_fast() -> None:
    api = FakeClerkAPI("slow").start()
    try:
        started = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            _clerk(api, timeout_ms=300).jwks.get_jwks(retries=None)
        assert time.monotonic() - started < 2
        assert api.wait_for_requests(1, timeout=2)
    finally:
        started = time.monotonic()
        api.stop()
        assert time.monotonic() - started < 1
    assert not _handler_threads()


def test_clerk_slow_answers_after_delay(clerk_api: FakeClerkAPI) -> None:
    clerk_api.mode = "slow"
    clerk_api.delay = 0.3
    started = time.monotonic()
    assert _clerk(clerk_api).jwks.get_jwks(retries=None).keys
    assert time.monotonic() - started >= 0.3


def test_clerk_keep_alive_without_nagle_delay_and_404(clerk_api: FakeClerkAPI) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", clerk_api.port, timeout=2)
    try:
        headers = {"Authorization": f"Bearer {clerk_api.secret_key}"}
        started = time.monotonic()
        for _ in range(20):  # one connection; ~40 ms each if Nagle were on
            conn.request("GET", "/v1/jwks", headers=headers)
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200
            assert response.getheader("Content-Length") == str(len(body))
            assert response.getheader("Content-Type") == "application/json"
            assert not response.will_close
        assert time.monotonic() - started < 0.5
        conn.request("GET", "/v1/users", headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 404
    finally:
        conn.close()
    assert clerk_api.requests == 20


def test_clerk_stop_closes_idle_keep_alive_connections() -> None:
    api = FakeClerkAPI().start()
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=2)
    try:
        conn.request("GET", "/v1/jwks")
        conn.getresponse().read()  # 401, connection stays open and idle
        started = time.monotonic()
        api.stop()
        assert time.monotonic() - started < 1
        assert not _handler_threads()
        assert not api.running
    finally:
        conn.close()
        api.stop()


def test_clerk_stop_then_start_reuses_port(clerk_api: FakeClerkAPI) -> None:
    port, url = clerk_api.port, clerk_api.url
    clerk_api.stop()
    with pytest.raises(httpx.ConnectError):
        _clerk(clerk_api).jwks.get_jwks(retries=None)
    clerk_api.start()
    assert (clerk_api.port, clerk_api.url) == (port, url)
    assert _clerk(clerk_api).jwks.get_jwks(retries=None).keys


def test_clerk_rejects_unknown_mode(clerk_api: FakeClerkAPI) -> None:
    with pytest.raises(ValueError):
        clerk_api.mode = "bogus"


# -- util service (gRPC) -------------------------------------------------------------


@pytest.fixture
def channel(util_service: FakeUtilService) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(util_service.target, options=FAST_RECONNECT) as ch:
        yield ch


def _letraz(channel: grpc.Channel) -> util_health_pb2.HealthCheckResponse:
    stub = util_health_pb2_grpc.HealthServiceStub(channel)
    return stub.HealthCheck(util_health_pb2.HealthCheckRequest(), timeout=2)


def _std(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status


def test_util_healthy(util_service: FakeUtilService, channel: grpc.Channel) -> None:
    assert util_service.target == f"127.0.0.1:{util_service.port}"
    response = _letraz(channel)
    assert response.status == "healthy"
    assert response.version == "test"
    assert response.uptime_seconds >= 0
    assert dict(response.checks)
    assert datetime.fromisoformat(response.timestamp).tzinfo is not None
    assert _std(channel) == health_pb2.HealthCheckResponse.SERVING
    assert (util_service.requests, util_service.grpc_health_requests) == (1, 1)


def test_util_unhealthy(util_service: FakeUtilService, channel: grpc.Channel) -> None:
    util_service.mode = "unhealthy"
    assert _letraz(channel).status == "unhealthy"


@pytest.mark.parametrize(
    ("mode", "code"),
    [("unimplemented", grpc.StatusCode.UNIMPLEMENTED), ("internal", grpc.StatusCode.INTERNAL)],
)
def test_util_error_modes(
    util_service: FakeUtilService, channel: grpc.Channel, mode: str, code: grpc.StatusCode
) -> None:
    util_service.mode = mode
    with pytest.raises(grpc.RpcError) as info:
        _letraz(channel)
    assert info.value.code() == code
    assert _std(channel) == health_pb2.HealthCheckResponse.SERVING  # still answers
    assert util_service.requests == 1


def test_util_grpc_health_not_serving(util_service: FakeUtilService, channel: grpc.Channel) -> None:
    util_service.set_grpc_health(False)
    assert _std(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    util_service.set_grpc_health(True)
    assert _std(channel) == health_pb2.HealthCheckResponse.SERVING
    assert util_service.grpc_health_requests == 2


def test_util_without_grpc_health_is_unimplemented() -> None:
    with (
        FakeUtilService(grpc_health=False) as service,
        grpc.insecure_channel(service.target) as ch,
    ):
        assert _letraz(ch).status == "healthy"
        with pytest.raises(grpc.RpcError) as info:
            _std(ch)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_util_slow_deadline_and_fast_stop() -> None:
    service = FakeUtilService("slow").start()
    try:
        with grpc.insecure_channel(service.target) as ch:
            stub = util_health_pb2_grpc.HealthServiceStub(ch)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stub.HealthCheck(util_health_pb2.HealthCheckRequest(), timeout=0.3)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 2
            # A call still in flight when the server stops ends at once.
            future = stub.HealthCheck.future(util_health_pb2.HealthCheckRequest(), timeout=10)
            assert service.wait_for_requests(2, timeout=2)
            started = time.monotonic()
            service.stop()
            assert time.monotonic() - started < 1
            with pytest.raises(grpc.RpcError):
                future.result(timeout=2)
    finally:
        service.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("FakeUtilService")]


def test_util_slow_answers_after_delay(util_service: FakeUtilService, channel: grpc.Channel) -> None:
    util_service.mode = "slow"
    util_service.delay = 0.2
    started = time.monotonic()
    assert _letraz(channel).status == "healthy"
    assert time.monotonic() - started >= 0.2


def test_util_stop_then_start_reuses_port(util_service: FakeUtilService, channel: grpc.Channel) -> None:
    port = util_service.port
    util_service.set_grpc_health(False)
    assert _letraz(channel).status == "healthy"

    util_service.stop(grace=0)
    with pytest.raises(grpc.RpcError) as info:
        _letraz(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    util_service.start()
    assert util_service.port == port
    with grpc.insecure_channel(util_service.target) as fresh:
        assert _letraz(fresh).status == "healthy"
        assert _std(fresh) == health_pb2.HealthCheckResponse.NOT_SERVING  # setting survived
    # The long-lived channel (capped backoff) reconnects on its own.
    grpc.channel_ready_future(channel).result(timeout=3)
    assert _letraz(channel).status == "healthy"


def test_util_second_server_cannot_share_a_running_port(util_service: FakeUtilService) -> None:
    # The port is exclusive while running (no SO_REUSEPORT sharing).
    other = FakeUtilService(rebind_timeout=0.1)
    other._port = util_service.port  # force the clash
    with pytest.raises(RuntimeError):
        other.start()
    assert not other.running


# -- raw TCP -------------------------------------------------------------------------


def test_blackhole_accepts_and_never_answers(blackhole: BlackholeListener) -> None:
    assert blackhole.target == f"127.0.0.1:{blackhole.port}"
    with socket.create_connection(("127.0.0.1", blackhole.port), timeout=2) as sock:
        assert blackhole.wait_for_accepted(1, timeout=2)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)
    assert blackhole.accepted == 1


def test_blackhole_grpc_runs_to_deadline(blackhole: BlackholeListener) -> None:
    with grpc.insecure_channel(blackhole.target) as ch:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            util_health_pb2_grpc.HealthServiceStub(ch).HealthCheck(util_health_pb2.HealthCheckRequest(), timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started >= 0.4


def test_blackhole_stop_closes_accepted_sockets() -> None:
    listener = BlackholeListener().start()
    try:
        sock = socket.create_connection(("127.0.0.1", listener.port), timeout=2)
        assert listener.wait_for_accepted(1, timeout=2)
        started = time.monotonic()
        listener.stop()
        assert time.monotonic() - started < 1
        assert not [t for t in threading.enumerate() if t.name.startswith("BlackholeListener")]
        with sock:
            sock.settimeout(2)
            with contextlib.suppress(ConnectionResetError):  # RST is as good as EOF
                assert sock.recv(1) == b""  # EOF
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", listener.port), timeout=2)
    finally:
        listener.stop()


def test_closed_port_refuses(closed_port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", closed_port), timeout=2)


def test_grpc_to_closed_port_fails_fast(closed_port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{closed_port}") as ch:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            _letraz(ch)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 1


# -- Sentry --------------------------------------------------------------------------


def test_sentry_sdk_delivers_event_and_transaction(sentry_receiver: SentryReceiver) -> None:
    assert sentry_receiver.dsn == f"http://publickey@127.0.0.1:{sentry_receiver.port}/1"
    try:
        sentry_sdk.init(
            dsn=sentry_receiver.dsn,
            traces_sample_rate=1.0,
            # Keep the SDK from patching Django & co. for the rest of the session.
            default_integrations=False,
            auto_enabling_integrations=False,
        )
        sentry_sdk.capture_message("x")
        with sentry_sdk.start_transaction(name="peers-selftest", op="test"):
            pass
        sentry_sdk.flush(timeout=5)
        assert sentry_receiver.wait_for(
            lambda r: any(e.get("message") == "x" for e in r.events) and bool(r.transactions),
            timeout=5,
        )
    finally:
        sentry_sdk.init()
    assert sentry_receiver.transactions[0]["transaction"] == "peers-selftest"
    assert sentry_receiver.envelopes >= 2
    assert sentry_receiver.projects[0] == "1"
    headers = {k.lower(): v for k, v in sentry_receiver.request_headers[0].items()}
    assert headers.get("content-encoding") == "gzip"
    assert "sentry_key=publickey" in headers["x-sentry-auth"]
    assert not sentry_receiver.rejected


def test_sentry_receiver_parses_raw_envelopes(sentry_receiver: SentryReceiver) -> None:
    payload = b'{"message":"multi\\nline","level":"info"}'
    body = (
        b'{"event_id":"abc"}\n'
        + b'{"type":"attachment","length":5}\nab\ncd\n'
        + b'{"type":"event","length":%d}\n' % len(payload)
        + payload
        + b'\n{"type":"transaction"}\n{"transaction":"t"}\n'
    )
    headers, items = parse_envelope(body)
    assert headers == {"event_id": "abc"}
    assert [i.type for i in items] == ["attachment", "event", "transaction"]
    assert items[0].raw == b"ab\ncd"

    conn = http.client.HTTPConnection("127.0.0.1", sentry_receiver.port, timeout=2)
    try:
        conn.request(
            "POST",
            "/api/1/envelope/",
            body=gzip.compress(body),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/x-sentry-envelope"},
        )
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read()) == {"id": "abc"}
        conn.request("POST", "/api/1/store/", body=b'{"event_id":"def","message":"stored"}')
        response = conn.getresponse()
        assert response.status == 200
        response.read()
        conn.request("POST", "/api/1/envelope/", body=b"{not json")
        response = conn.getresponse()
        assert response.status == 400
        response.read()
    finally:
        conn.close()
    assert sentry_receiver.wait_for(lambda r: len(r.events) == 2, timeout=2)
    assert [e["message"] for e in sentry_receiver.events] == ["multi\nline", "stored"]
    assert sentry_receiver.transactions == [{"transaction": "t"}]
    assert (sentry_receiver.envelopes, sentry_receiver.rejected) == (2, 1)
    assert not sentry_receiver.wait_for(lambda r: len(r.events) > 2, timeout=0.1)
    sentry_receiver.clear()
    assert sentry_receiver.events == []
