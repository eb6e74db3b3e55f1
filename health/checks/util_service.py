"""Does the gRPC util service say it is healthy?"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from health.checks.base import CheckFailed, Verdict
from health.checks.reasons import grpc_reason
from health.conf import GrpcTarget
from health.proto import util_health_pb2, util_health_pb2_grpc
from health.status import Component, UtilServiceStatus

#: The defaults back off up to 120 s after the peer restarts; a second is enough
#: for a health check that runs once per cache period anyway. Not
#: ``grpc.min_reconnect_backoff_ms``: despite its name, grpc-core takes it as the least
#: time a connection attempt (TCP, TLS, the server's HTTP/2 SETTINGS) may take before it
#: is given up as UNAVAILABLE. At 200 ms a peer 250 ms away, or a loaded host, read as
#: unreachable while it would have answered within the check's limit; at its default
#: (20 s) the call's own deadline bounds the attempt. Keepalive pings notice a
#: connection whose peer vanished without FIN or RST (the kernel alone takes up to two
#: hours idle, or 15 minutes of retransmits): no PING ack within 5 s closes it and the
#: next call connects anew. Every 5 minutes, also between calls, is the most gRPC
#: servers accept by default (grpc-core's ``grpc.http2.min_ping_interval_without_data_ms``
#: and Go's ``keepalive.EnforcementPolicy.MinTime``); more often and they answer GOAWAY
#: ``too_many_pings``. A check's own call needs no ping: its deadline ends it, and the
#: channel is dropped after it (see ``UtilServiceCheck``).
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Channels otherwise share connections through a process-wide subchannel pool: a
    # rebuilt channel could pick up the very connection it was rebuilt to get rid of.
    ("grpc.use_local_subchannel_pool", 1),
)

#: Codes that mean "we could not reach it", as opposed to "it answered badly".
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass
class UtilServiceCheck:
    """``letraz.v1.HealthService/HealthCheck`` (or ``grpc.health.v1`` ``Check``).

    One long-lived channel per process, created on first use so that it is created
    after gunicorn forks the worker. A call that fails with ``UNAVAILABLE`` or
    ``DEADLINE_EXCEEDED`` drops the channel (a connection that stopped answering is never
    asked again), at most once per ``rebuild_interval`` seconds (the cache TTL): no
    reconnect storm however often it fails. Failing runs are a TTL plus their time
    limit apart (the runner caches a failure for a TTL), so each of them rebuilds.
    """

    target: GrpcTarget | None
    tls: bool = True
    protocol: str = "letraz"
    rebuild_interval: float = 0.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    component: Component = field(default=Component.UTIL_SERVICE, init=False)
    timeout_status: UtilServiceStatus = field(default=UtilServiceStatus.DISCONNECTED, init=False)
    error_status: UtilServiceStatus = field(default=UtilServiceStatus.FAILED, init=False)
    _channel: grpc.Channel | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _dropped_at: float | None = field(default=None, init=False, repr=False)

    def run(self, timeout: float) -> Verdict:
        if self.target is None:
            raise CheckFailed(UtilServiceStatus.DISCONNECTED, "UTIL_GRPC_HOST is not set")
        channel = self._get_channel(self.target)
        try:
            if self.protocol == "grpc":
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout
                )
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                healthy = answer.status == health_pb2.HealthCheckResponse.SERVING
            else:
                reply = util_health_pb2_grpc.HealthServiceStub(channel).HealthCheck(  # type: ignore[no-untyped-call]
                    util_health_pb2.HealthCheckRequest(), timeout=timeout
                )
                status, healthy = reply.status, reply.status == "healthy"
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            if code in UNREACHABLE:
                # UNAVAILABLE: a channel that failed to connect fails every RPC at once
                # until its reconnect backoff ends, so a refresh landing there would keep
                # DISCONNECTED cached for another TTL although the peer is back.
                # DEADLINE_EXCEEDED: the connection may be dead without FIN or RST (a
                # stalled peer); every later call would go down it again.
                self._drop_channel(channel)
            state = UtilServiceStatus.DISCONNECTED if code in UNREACHABLE else UtilServiceStatus.FAILED
            raise CheckFailed(state, grpc_reason(code, exc.details() if isinstance(exc, grpc.Call) else None)) from exc
        if not healthy:
            raise CheckFailed(UtilServiceStatus.FAILED, f"peer says {status[:40]!r}")
        return Verdict(UtilServiceStatus.OPERATIONAL)

    def _get_channel(self, target: GrpcTarget) -> grpc.Channel:
        with self._lock:
            if self._channel is None:
                if self.tls:
                    credentials = grpc.ssl_channel_credentials()
                    self._channel = grpc.secure_channel(target.address, credentials, options=CHANNEL_OPTIONS)
                else:
                    self._channel = grpc.insecure_channel(target.address, options=CHANNEL_OPTIONS)
            return self._channel

    def _drop_channel(self, channel: grpc.Channel) -> None:
        with self._lock:
            now = self.clock()
            recent = self._dropped_at is not None and now - self._dropped_at < self.rebuild_interval
            if self._channel is not channel or recent:
                return
            self._channel, self._dropped_at = None, now
        channel.close()

    def close(self) -> None:
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
