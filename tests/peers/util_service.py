"""A loopback stand-in for the Letraz util service's gRPC API.

Serves ``/letraz.v1.HealthService/HealthCheck`` (the util service's own health
RPC) and, unless disabled, the standard ``grpc.health.v1.Health`` service. It
can be stopped and started again on the *same* port, to simulate the util
service going away and coming back.
"""

from __future__ import annotations

import enum
import threading
import time
from concurrent import futures
from datetime import UTC, datetime
from typing import Any, Self

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from health.proto import util_health_pb2, util_health_pb2_grpc

__all__ = ["FakeUtilService", "UtilMode"]

_LOOPBACK = "127.0.0.1"
_LETRAZ_SERVICE = "letraz.v1.HealthService"

#: Server options. ``grpc.so_reuseport`` is grpc's default (on) everywhere else,
#: but with it on a second server can bind the very same port while the first
#: still runs and the kernel silently load-balances between them. Off, a stale
#: listener makes the restart fail loudly instead; grpc always sets
#: ``SO_REUSEADDR`` so re-binding right after ``stop()`` still works.
_SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.so_reuseport", 0),)


class UtilMode(enum.StrEnum):
    """How :class:`FakeUtilService` answers ``letraz.v1.HealthService/HealthCheck``."""

    HEALTHY = "healthy"
    """OK, ``status="healthy"``."""
    UNHEALTHY = "unhealthy"
    """OK, ``status="unhealthy"`` (a failed entry in ``checks``)."""
    UNIMPLEMENTED = "unimplemented"
    """Abort with ``UNIMPLEMENTED`` (``grpc.health.v1`` still answers)."""
    INTERNAL = "internal"
    """Abort with ``INTERNAL``."""
    SLOW = "slow"
    """Wait :attr:`FakeUtilService.delay` seconds (cut short by stop or client cancel), then healthy."""


class _LetrazHealthServicer(util_health_pb2_grpc.HealthServiceServicer):
    """``letraz.v1.HealthService``; delegates to the owning fake."""

    def __init__(self, owner: FakeUtilService, stopping: threading.Event) -> None:
        self._owner = owner
        self._stopping = stopping

    def HealthCheck(  # generated gRPC naming
        self, request: util_health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> util_health_pb2.HealthCheckResponse:
        """Answer according to the owner's mode."""
        return self._owner._health_check(context, self._stopping)


class _CountingHealthServicer(health.HealthServicer):
    """Standard ``grpc.health.v1`` servicer that counts ``Check`` calls."""

    def __init__(self, owner: FakeUtilService) -> None:
        super().__init__()
        self._owner = owner

    def Check(  # generated gRPC naming
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        """Count, then answer from the status table."""
        self._owner._record_grpc_health_request()
        return super().Check(request, context)


class FakeUtilService:
    """A real insecure gRPC server on 127.0.0.1 mimicking the Letraz util service.

    Attributes (all thread-safe):
        target: ``"127.0.0.1:PORT"``; port: the bound port (kept across restarts).
        mode: a :class:`UtilMode` (plain strings such as ``"internal"`` are accepted).
        delay: seconds the ``slow`` mode waits (default 5).
        requests: ``letraz.v1.HealthService/HealthCheck`` calls received.
        grpc_health_requests: ``grpc.health.v1.Health/Check`` calls received.
        wait_for_requests(count, timeout): block until ``requests >= count``.

    ``set_grpc_health(serving)`` switches the standard health status of service
    ``""`` (and of ``"letraz.v1.HealthService"``) between SERVING and NOT_SERVING.
    Pass ``grpc_health=False`` to leave ``grpc.health.v1`` unregistered, as in the
    real (Go) util service, whose only health RPC is the ``letraz.v1`` one.
    """

    def __init__(
        self,
        mode: UtilMode | str = UtilMode.HEALTHY,
        *,
        delay: float = 5.0,
        grpc_health: bool = True,
        max_workers: int = 16,
        rebind_timeout: float = 1.0,
    ) -> None:
        """Create a stopped fake; call :meth:`start` or use it as a context manager."""
        self._lifecycle_lock = threading.Lock()
        self._state_lock = threading.Condition()
        self._mode = UtilMode(mode)
        self._delay = float(delay)
        self._serving = True
        self._grpc_health_enabled = grpc_health
        self._max_workers = max_workers
        #: How long ``start()`` retries re-binding the remembered port if it is busy.
        self.rebind_timeout = rebind_timeout
        self._requests = 0
        self._grpc_health_requests = 0
        self._port: int | None = None
        self._started_at = time.monotonic()
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._health_servicer: _CountingHealthServicer | None = None
        self._stopping: threading.Event | None = None
        self._waiters: set[threading.Event] = set()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> Self:
        """Bind (the remembered port after a previous start) and serve; returns ``self``."""
        with self._lifecycle_lock:
            if self._server is not None:
                raise RuntimeError("FakeUtilService is already running")
            deadline = time.monotonic() + self.rebind_timeout
            while True:
                try:
                    self._start_once()
                    break
                except RuntimeError:
                    # Only a re-bind of our own, just released port is retried.
                    if self._port is None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        return self

    def stop(self, grace: float | None = 0) -> None:
        """Stop serving (cancelling in-flight RPCs after ``grace`` s) and join workers. Idempotent."""
        with self._lifecycle_lock:
            server, executor, stopping = self._server, self._executor, self._stopping
            self._server = self._executor = self._health_servicer = self._stopping = None
        if server is None or executor is None or stopping is None:
            return
        stopping.set()
        with self._state_lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.set()
        server.stop(grace).wait(timeout=(grace or 0) + 5)
        executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        """Start the server."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server."""
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is currently serving."""
        with self._lifecycle_lock:
            return self._server is not None

    # -- configuration and observation ---------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (kept after ``stop()``; ``start()`` re-binds it)."""
        if self._port is None:
            raise RuntimeError("FakeUtilService has not been started")
        return self._port

    @property
    def target(self) -> str:
        """``"127.0.0.1:PORT"``: the gRPC target (the app's ``UTIL_GRPC_HOST``)."""
        return f"{_LOOPBACK}:{self.port}"

    @property
    def mode(self) -> UtilMode:
        """The current answering mode of the letraz HealthCheck."""
        with self._state_lock:
            return self._mode

    @mode.setter
    def mode(self, value: UtilMode | str) -> None:
        mode = UtilMode(value)
        with self._state_lock:
            self._mode = mode

    @property
    def delay(self) -> float:
        """Seconds the ``slow`` mode waits before answering."""
        with self._state_lock:
            return self._delay

    @delay.setter
    def delay(self, value: float) -> None:
        with self._state_lock:
            self._delay = float(value)

    @property
    def requests(self) -> int:
        """``letraz.v1.HealthService/HealthCheck`` calls received."""
        with self._state_lock:
            return self._requests

    @property
    def grpc_health_requests(self) -> int:
        """``grpc.health.v1.Health/Check`` calls received."""
        with self._state_lock:
            return self._grpc_health_requests

    def reset_count(self) -> None:
        """Reset both request counters to zero."""
        with self._state_lock:
            self._requests = 0
            self._grpc_health_requests = 0

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` letraz HealthCheck calls have arrived; return whether they did."""
        with self._state_lock:
            return self._state_lock.wait_for(lambda: self._requests >= count, timeout=timeout)

    def set_grpc_health(self, serving: bool) -> None:
        """Set the ``grpc.health.v1`` status of service ``""`` to SERVING or NOT_SERVING.

        The setting survives ``stop()``/``start()``.
        """
        with self._state_lock:
            self._serving = serving
        with self._lifecycle_lock:
            servicer = self._health_servicer
        if servicer is not None:
            self._apply_grpc_health(servicer, serving)

    # -- internals -----------------------------------------------------------------

    def _start_once(self) -> None:
        executor = futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="FakeUtilService")
        server = grpc.server(executor, options=_SERVER_OPTIONS)
        stopping = threading.Event()
        util_health_pb2_grpc.add_HealthServiceServicer_to_server(_LetrazHealthServicer(self, stopping), server)
        servicer: _CountingHealthServicer | None = None
        if self._grpc_health_enabled:
            servicer = _CountingHealthServicer(self)
            with self._state_lock:
                serving = self._serving
            self._apply_grpc_health(servicer, serving)
            health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        try:
            port = server.add_insecure_port(f"{_LOOPBACK}:{self._port or 0}")
            if port == 0:  # older grpcio reports a failed bind this way
                raise RuntimeError("failed to bind")
            server.start()
        except BaseException:
            server.stop(None)
            executor.shutdown(wait=False)
            raise
        self._port = port
        self._started_at = time.monotonic()
        self._server, self._executor = server, executor
        self._health_servicer, self._stopping = servicer, stopping

    @staticmethod
    def _apply_grpc_health(servicer: health.HealthServicer, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        servicer.set("", status)
        servicer.set(_LETRAZ_SERVICE, status)

    def _record_grpc_health_request(self) -> None:
        with self._state_lock:
            self._grpc_health_requests += 1
            self._state_lock.notify_all()

    def _response(self, healthy: bool) -> util_health_pb2.HealthCheckResponse:
        checks = {"grpc": "ok", "http": "ok"}
        if not healthy:
            checks["scrapper"] = "failed: dependency unreachable"
        return util_health_pb2.HealthCheckResponse(
            status="healthy" if healthy else "unhealthy",
            timestamp=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            version="test",
            uptime_seconds=int(time.monotonic() - self._started_at),
            checks=checks,
        )

    def _health_check(
        self, context: grpc.ServicerContext, stopping: threading.Event
    ) -> util_health_pb2.HealthCheckResponse:
        with self._state_lock:
            self._requests += 1
            self._state_lock.notify_all()
            mode, delay = self._mode, self._delay

        if mode is UtilMode.SLOW:
            woken = threading.Event()
            with self._state_lock:
                self._waiters.add(woken)
            try:
                context.add_callback(woken.set)  # client cancel / deadline
                if stopping.is_set():
                    woken.set()
                woken.wait(delay)
            finally:
                with self._state_lock:
                    self._waiters.discard(woken)
            if stopping.is_set():
                context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            return self._response(healthy=True)
        if mode is UtilMode.UNIMPLEMENTED:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "method HealthCheck not implemented")
        if mode is UtilMode.INTERNAL:
            context.abort(grpc.StatusCode.INTERNAL, "internal error")
        return self._response(healthy=mode is UtilMode.HEALTHY)
