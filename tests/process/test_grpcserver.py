"""``manage.py grpcserver`` as its own process, asked by real gRPC clients."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from core.proto import core_health_pb2_grpc
from tests.peers.clerk import FakeClerkAPI
from tests.peers.util_service import FakeUtilService, UtilMode
from tests.process.support import (
    ServerProcess,
    base_env,
    grpcserver_args,
    manage,
    migrated_database,
    peer_env,
    poll,
    running,
)

pytestmark = pytest.mark.process

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: The command's grace period (10 s) plus margin.
GRACEFUL_EXIT = 15.0
#: How long a change of a peer may take to show: the cache (0.2 s) plus the maximum
#: staleness (1 s) plus the publishing interval, with margin for a loaded machine.
FOLLOWS_WITHIN = 5.0


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database(tmp_path_factory.mktemp("grpc-db")) as url:
        yield url


@pytest.fixture
def grpc_env(
    tmp_path: Path, database_url: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService
) -> dict[str, str]:
    return base_env(
        DATABASE_URL=database_url,
        HEALTH_DRAIN_FILE=str(tmp_path / "drain"),
        HEALTH_CACHE_TTL="0.2",
        HEALTH_MAX_STALENESS="1",
        HEALTH_CHECK_TIMEOUT="0.9",
        # A loaded CI machine must not make SELECT 1 "slow" and flap readiness.
        HEALTH_DB_SLOW_MS="5000",
        INSTANCE_ID="grpc-test-instance",
        **peer_env(clerk_api, util_service),
    )


@pytest.fixture
def server(grpc_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    """The server and its address, read from its "listening" line."""
    with running(grpcserver_args(), grpc_env, tmp_path / "grpcserver.log") as process:
        match = process.wait_for_line(r"gRPC server listening on (127\.0\.0\.1:\d+)", timeout=30)
        yield process, match.group(1)


@pytest.fixture
def channel(server: tuple[ServerProcess, str]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server[1]) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel


def check(channel: grpc.Channel, service: str) -> int:
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return int(answer.status)


def eventually(channel: grpc.Channel, service: str, status: int) -> int:
    return poll(lambda: check(channel, service), lambda s: s == status, timeout=FOLLOWS_WITHIN)


def test_core_controller_answers_with_the_report(channel: grpc.Channel) -> None:
    stub = core_health_pb2_grpc.CoreControllerStub(channel)
    answer = poll(
        lambda: stub.HealthCheck(empty_pb2.Empty(), timeout=2),
        lambda a: a.status == "OPERATIONAL",
        timeout=FOLLOWS_WITHIN,
    )
    assert answer.instance_id == "grpc-test-instance"
    assert answer.status == "OPERATIONAL"
    assert (answer.details.sentry, answer.details.clerk, answer.details.db, answer.details.util_service) == (
        "UNINITIALIZED",
        "OPERATIONAL",
        "OPERATIONAL",
        "OPERATIONAL",
    )


def test_standard_health_says_serving_for_readiness_liveness_and_each_component(channel: grpc.Channel) -> None:
    assert eventually(channel, "", SERVING) == SERVING
    assert check(channel, "liveness") == SERVING
    assert check(channel, "letraz_server.CORE.CoreController") == SERVING
    for component in ("clerk", "db", "util_service"):
        assert check(channel, component) == SERVING, component
    # Sentry without a DSN is UNINITIALIZED, its expected state: not a failure.
    assert check(channel, "sentry") == SERVING


def test_an_unknown_service_is_not_found(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        check(channel, "no-such-service")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_util_service_follows_the_peer(channel: grpc.Channel, util_service: FakeUtilService) -> None:
    assert eventually(channel, "util_service", SERVING) == SERVING
    util_service.mode = UtilMode.UNHEALTHY
    assert eventually(channel, "util_service", NOT_SERVING) == NOT_SERVING
    assert check(channel, "") == SERVING  # readiness is about this instance, not a shared dependency
    assert check(channel, "liveness") == SERVING
    assert check(channel, "clerk") == SERVING

    stub = core_health_pb2_grpc.CoreControllerStub(channel)
    answer = stub.HealthCheck(empty_pb2.Empty(), timeout=2)
    assert (answer.status, answer.details.util_service) == ("DEGRADED", "FAILED")

    util_service.mode = UtilMode.HEALTHY
    assert eventually(channel, "util_service", SERVING) == SERVING
    assert eventually(channel, "", SERVING) == SERVING


class Watcher:
    """``Watch(service)`` read by a thread into a queue, so each read has a deadline."""

    def __init__(self, channel: grpc.Channel, service: str) -> None:
        self.call: Any = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=60
        )
        self.updates: queue.Queue[int | BaseException] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for update in self.call:
                self.updates.put(int(update.status))
        except grpc.RpcError as exc:
            self.updates.put(exc)

    def next(self, timeout: float) -> int | BaseException:
        return self.updates.get(timeout=timeout)

    def cancel(self) -> None:
        self.call.cancel()
        self._thread.join(timeout=5)


@pytest.fixture
def watch(channel: grpc.Channel) -> Iterator[Any]:
    watchers: list[Watcher] = []

    def start(service: str) -> Watcher:
        watchers.append(Watcher(channel, service))
        return watchers[-1]

    yield start
    for watcher in watchers:
        watcher.cancel()


def test_watch_streams_each_change_of_a_component(
    channel: grpc.Channel, util_service: FakeUtilService, watch: Any
) -> None:
    assert eventually(channel, "util_service", SERVING) == SERVING
    watcher = watch("util_service")
    assert watcher.next(timeout=5) == SERVING

    util_service.mode = UtilMode.UNHEALTHY
    assert watcher.next(timeout=FOLLOWS_WITHIN) == NOT_SERVING
    util_service.mode = UtilMode.HEALTHY
    assert watcher.next(timeout=FOLLOWS_WITHIN) == SERVING
    # Only changes are sent: the publisher asks every 0.2 s, and nothing changed since.
    with pytest.raises(queue.Empty):
        watcher.next(timeout=1)


def test_the_drain_file_makes_readiness_not_serving_while_liveness_stays(
    channel: grpc.Channel, grpc_env: dict[str, str], tmp_path: Path
) -> None:
    assert eventually(channel, "", SERVING) == SERVING
    drained = manage(["drain"], grpc_env)
    assert drained.returncode == 0, drained.stderr
    assert (tmp_path / "drain").exists()
    assert eventually(channel, "", NOT_SERVING) == NOT_SERVING
    assert check(channel, "liveness") == SERVING
    assert check(channel, "db") == SERVING

    undone = manage(["drain", "--undo"], grpc_env)
    assert undone.returncode == 0, undone.stderr
    assert eventually(channel, "", SERVING) == SERVING


def test_reflection_lists_the_services(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    assert set(database.get_services()) == {
        "letraz_server.CORE.CoreController",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    method = database.FindFileContainingSymbol("letraz_server.CORE.CoreController")
    assert method.package == "letraz_server.CORE"


def test_sigterm_turns_everything_not_serving_and_exits_0(
    server: tuple[ServerProcess, str], channel: grpc.Channel, watch: Any
) -> None:
    process, _ = server
    assert eventually(channel, "liveness", SERVING) == SERVING
    watcher = watch("liveness")
    assert watcher.next(timeout=5) == SERVING

    process.terminate()
    assert watcher.next(timeout=5) == NOT_SERVING
    # The client hangs up as told; with no call left, the server need not wait its grace out.
    watcher.cancel()
    assert process.wait(timeout=GRACEFUL_EXIT) == 0
    assert "gRPC server stopped" in process.output


def test_a_busy_port_is_an_error_at_start(grpc_env: dict[str, str], tmp_path: Path) -> None:
    with running(grpcserver_args(), grpc_env, tmp_path / "first.log") as first:
        address = first.wait_for_line(r"listening on (127\.0\.0\.1:\d+)", timeout=30).group(1)
        second = manage(["grpcserver", "--bind", address, "--metrics-port", "0"], grpc_env)
    assert second.returncode == 1
    assert "could not listen on" in second.stderr
