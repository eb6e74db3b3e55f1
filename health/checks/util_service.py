"""Does the gRPC util service say it is healthy?"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from health.checks.base import CheckFailed, Verdict
from health.checks.reasons import grpc_reason
from health.conf import GrpcTarget
from health.proto import util_health_pb2, util_health_pb2_grpc
from health.status import Component, UtilServiceStatus

#: The defaults back off up to 120 s after the peer restarts; a second is enough
#: for a health check that runs once per cache period anyway.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
)

#: Codes that mean "we could not reach it", as opposed to "it answered badly".
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass
class UtilServiceCheck:
    """``letraz.v1.HealthService/HealthCheck`` (or ``grpc.health.v1`` ``Check``).

    One long-lived channel per process, created on first use so that it is created
    after gunicorn forks the worker.
    """

    target: GrpcTarget | None
    tls: bool = True
    protocol: str = "letraz"
    component: Component = field(default=Component.UTIL_SERVICE, init=False)
    timeout_status: UtilServiceStatus = field(default=UtilServiceStatus.DISCONNECTED, init=False)
    error_status: UtilServiceStatus = field(default=UtilServiceStatus.FAILED, init=False)
    _channel: grpc.Channel | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

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
            if code == grpc.StatusCode.UNAVAILABLE:
                # A channel that failed to connect fails every RPC at once until its
                # reconnect backoff ends: a refresh landing there would keep
                # DISCONNECTED cached for another TTL although the peer is back.
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
            if self._channel is not channel:
                return
            self._channel = None
        channel.close()

    def close(self) -> None:
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
