"""The gRPC face under every call a client can make, and its shutdown with streams open (issue #8)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.peers.clerk import FakeClerkAPI
from tests.peers.sentry import SentryReceiver
from tests.peers.util_service import FakeUtilService, UtilMode
from tests.process.support import ServerProcess, base_env, grpcserver_args, migrated_database, peer_env, poll, running

pytestmark = pytest.mark.process

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def server(
    tmp_path: Path, clerk_api: FakeClerkAPI, util_service: FakeUtilService, sentry_receiver: SentryReceiver
) -> Iterator[tuple[ServerProcess, str]]:
    with migrated_database(tmp_path) as database_url:
        env = base_env(
            DATABASE_URL=database_url,
            HEALTH_CACHE_TTL="0.2",
            HEALTH_MAX_STALENESS="1",
            HEALTH_CHECK_TIMEOUT="0.9",
            HEALTH_DB_SLOW_MS="5000",
            SENTRY_DSN=sentry_receiver.dsn,
            **peer_env(clerk_api, util_service),
        )
        with running(grpcserver_args(), env, tmp_path / "grpcserver.log") as process:
            match = process.wait_for_line(r"gRPC server listening on (127\.0\.0\.1:\d+)", timeout=30)
            yield process, match.group(1)


@pytest.fixture
def channel(server: tuple[ServerProcess, str]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server[1]) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel


def advertised_methods(channel: grpc.Channel) -> list[tuple[str, bool, bool]]:
    """(full method path, client streaming, server streaming) for every method reflection lists."""
    database = ProtoReflectionDescriptorDatabase(channel)
    methods = []
    for service_name in database.get_services():
        file = database.FindFileContainingSymbol(service_name)
        [service] = [s for s in file.service if f"{file.package}.{s.name}" == service_name]
        for method in service.method:
            methods.append((f"/{service_name}/{method.name}", method.client_streaming, method.server_streaming))
    return methods


def call_with(channel: grpc.Channel, method: tuple[str, bool, bool], payload: bytes) -> grpc.StatusCode:
    """One call with ``payload`` as the raw request; its status code (a stream: after its first answer)."""
    path, client_streaming, server_streaming = method
    try:
        if not client_streaming and not server_streaming:
            channel.unary_unary(path)(payload, timeout=5)
        elif not client_streaming:
            stream = channel.unary_stream(path)(payload, timeout=5)
            next(stream)
            stream.cancel()
        else:
            stream = channel.stream_stream(path)(iter([payload]), timeout=5)
            next(stream)
            stream.cancel()
    except grpc.RpcError as error:
        code = error.code()
        assert isinstance(code, grpc.StatusCode)
        return code
    return grpc.StatusCode.OK


def test_every_advertised_method_answers_without_an_error_line_or_a_sentry_event(
    server: tuple[ServerProcess, str],
    channel: grpc.Channel,
    sentry_receiver: SentryReceiver,
    util_service: FakeUtilService,
) -> None:
    process, _ = server
    methods = advertised_methods(channel)
    assert "/grpc.health.v1.Health/List" in {m[0] for m in methods}
    assert len(methods) == 5, methods  # HealthCheck, Check, Watch, List, ServerReflectionInfo
    for method in methods:
        assert call_with(channel, method, b"") == grpc.StatusCode.OK, method
        # A request that is not the message the method takes: a clean status, never UNKNOWN.
        assert call_with(channel, method, b"\xff\xff\xff") not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN)
    unknown = channel.unary_unary("/grpc.health.v1.Health/Nothing")
    with pytest.raises(grpc.RpcError) as raised:
        unknown(b"", timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED

    listed = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=5)
    assert {name: r.status for name, r in listed.statuses.items()} == dict.fromkeys(
        ("", "letraz_server.CORE.CoreController", "liveness", "sentry", "clerk", "db", "util_service"), SERVING
    )
    output = process.output
    assert " ERROR " not in output and "Traceback" not in output, output
    garbage = [line for line in output.splitlines() if "deserializ" in line]
    assert garbage and all(" WARNING grpc._common " in line for line in garbage), output

    # The control: a real change of state is an event, so no event above means none was made.
    util_service.mode = UtilMode.UNHEALTHY
    assert sentry_receiver.wait_for(lambda r: len(r.events) >= 1, timeout=15), process.output
    assert all("util_service" in str(event) for event in sentry_receiver.events), sentry_receiver.events


def test_sigterm_with_two_watch_streams_open_sends_not_serving_ends_them_and_exits_in_under_2_s(
    server: tuple[ServerProcess, str], channel: grpc.Channel
) -> None:
    process, _ = server
    stub = health_pb2_grpc.HealthStub(channel)
    assert (
        poll(
            lambda: stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status,
            lambda s: s == SERVING,
            timeout=10,
        )
        == SERVING
    )
    seen: dict[str, list[int]] = {"": [], "liveness": []}
    ended: dict[str, str] = {}
    first = threading.Barrier(3)

    def watch(service: str) -> None:
        stream = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=30)
        try:
            for response in stream:
                seen[service].append(response.status)
                if len(seen[service]) == 1:
                    first.wait(timeout=10)
            ended[service] = "OK"
        except grpc.RpcError as error:
            ended[service] = str(error.code())

    threads = [threading.Thread(target=watch, args=(name,)) for name in seen]
    for thread in threads:
        thread.start()
    first.wait(timeout=10)  # both streams are open and have their first status

    stopping = time.monotonic()
    process.terminate()
    exit_code = process.wait(timeout=10)
    took = time.monotonic() - stopping
    for thread in threads:
        thread.join(timeout=5)
    assert exit_code == 0, process.output
    assert took < 2.0, f"exited after {took:.1f} s: the streams held the grace period"
    assert ended == {"": "OK", "liveness": "OK"}, ended
    assert seen[""][-1] == NOT_SERVING and seen["liveness"][-1] == NOT_SERVING, seen
