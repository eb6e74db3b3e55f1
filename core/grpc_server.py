"""The gRPC face of the health service (``manage.py grpcserver``).

One server, three services, all answered from the same :class:`HealthService` as the
HTTP API:

* ``letraz_server.CORE.CoreController/HealthCheck``: the report, as the original
  server sent it (``core/proto/core_health.proto``).
* ``grpc.health.v1.Health`` (``Check``, ``Watch`` and ``List``), for Kubernetes'
  native gRPC probes and for clients. Its services:

  - ``""`` (and ``letraz_server.CORE.CoreController``): readiness, as ``/ready/``
    (``health.service.is_ready``): NOT_SERVING only while draining, before the first
    report, or when a component of ``HEALTH_READINESS_COMPONENTS`` fails;
  - ``"liveness"``: SERVING while the process runs (NOT_SERVING once it stops);
  - ``"sentry"``, ``"clerk"``, ``"db"``, ``"util_service"``: SERVING iff that
    component is OPERATIONAL. Sentry's UNINITIALIZED (no ``SENTRY_DSN``) also counts
    as SERVING: Sentry is optional and UNINITIALIZED is its expected state without a
    DSN, not a failure (the change log treats it the same way).

  A background thread asks the service about once a second (the service caches, so
  this costs the dependencies nothing more) and sets a status only when it changes,
  so ``Watch`` streams see each change once.
* Server reflection, listing the three. Every method it advertises is implemented.

No RPC a client can send makes an ERROR line or a Sentry event: a request that cannot
be parsed is logged as one WARNING line (:class:`ClientErrorLogFilter`). On SIGTERM,
every ``Watch`` stream gets NOT_SERVING and then ends, so none holds the grace period.

Build it in the process that serves it: gRPC's threads do not survive ``fork()``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import empty_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core.grpc_version import VersionMetadataInterceptor
from core.proto import core_health_pb2, core_health_pb2_grpc
from health.conf import health_settings
from health.service import HealthReport, HealthService, failure_body, get_health_service, is_ready
from health.status import OPERATIONAL, Component, SentryStatus

logger = logging.getLogger("health.grpc")

CORE_SERVICE_NAME: str = core_health_pb2.DESCRIPTOR.services_by_name["CoreController"].full_name
#: The readiness service, as gRPC's health protocol names the whole server.
OVERALL = health.OVERALL_HEALTH
LIVENESS = "liveness"

SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING

#: One thread per concurrent unary call; Watch streams hold no thread (non-blocking).
MAX_WORKERS = 16
#: Calls beyond this (running or queued for a thread) fail at once with
#: RESOURCE_EXHAUSTED instead of queueing without bound. Watch streams do not count.
MAX_CONCURRENT_RPCS = 64
#: Off, a second server on the same port fails to start instead of silently sharing it.
SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.so_reuseport", 0),)

ServiceProvider = Callable[[], HealthService]


def report_body(service_provider: ServiceProvider = get_health_service) -> dict[str, object]:
    """The contract's body; a defined DEGRADED answer if the engine itself fails."""
    try:
        return service_provider().check().as_dict()
    except Exception:  # A bug in the engine must still give a defined answer.
        logger.exception("The health report could not be made")
        return failure_body(health_settings.instance_id)


def as_message(body: dict[str, object]) -> core_health_pb2.HealthCheckResponse:
    details = body["details"]
    assert isinstance(details, dict)
    return core_health_pb2.HealthCheckResponse(
        instance_id=str(body["instance_id"]),
        status=str(body["status"]),
        details=core_health_pb2.HealthDetailsResponse(**{c.value: str(details.get(c.value, "")) for c in Component}),
    )


def component_serving(component: Component, status: str) -> bool:
    return status == OPERATIONAL or (component is Component.SENTRY and status == SentryStatus.UNINITIALIZED)


def serving_statuses(report: HealthReport) -> dict[str, int]:
    """The ``grpc.health.v1`` status of every service name, from one report."""
    ready = is_ready(report, health_settings.readiness_components)
    statuses = {OVERALL: ready, CORE_SERVICE_NAME: ready, LIVENESS: True}
    statuses |= {c.value: component_serving(c, r.status) for c, r in report.results.items()}
    return {name: SERVING if ok else NOT_SERVING for name, ok in statuses.items()}


def unknown_statuses() -> dict[str, int]:
    """Before the first report, or when one could not be made: alive, nothing else."""
    names = (OVERALL, CORE_SERVICE_NAME, *(c.value for c in Component))
    return dict.fromkeys(names, NOT_SERVING) | {LIVENESS: SERVING}


class CoreControllerServicer(core_health_pb2_grpc.CoreControllerServicer):
    """``HealthCheck``: the same report as ``GET /api/v1/health/`` (draining not applied)."""

    def __init__(self, service_provider: ServiceProvider = get_health_service) -> None:
        self._service_provider = service_provider

    def HealthCheck(  # noqa: N802 (the generated base class's name)
        self, request: empty_pb2.Empty, context: grpc.ServicerContext
    ) -> core_health_pb2.HealthCheckResponse:
        return as_message(report_body(self._service_provider))


class ClientErrorLogFilter(logging.Filter):
    """grpcio logs a request it cannot parse at ERROR with a traceback: one WARNING line instead.

    The bytes come from the client, so this is hostile or broken input, not our error
    (and Sentry would turn each ERROR into an event). On grpcio's ``grpc._common`` logger.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING and "deserializ" in record.getMessage():
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            record.exc_info, record.exc_text = None, None
        return True


_client_error_filter = ClientErrorLogFilter()


class LetrazHealthServicer(health.HealthServicer):
    """grpcio's ``HealthServicer`` plus ``List``, and Watch streams that end on shutdown.

    The descriptor grpcio-health-checking ships (and reflection advertises) has ``List``;
    its servicer does not implement it, so each call logged an ERROR traceback.
    """

    def __init__(self) -> None:
        super().__init__(experimental_non_blocking=True)
        self._statuses: dict[str, int] = {}
        self._watches: set[Callable[[Any], None]] = set()
        self._watch_lock = threading.Lock()

    def set(self, service: str, status: int) -> None:
        with self._lock:
            if not self._gracefully_shutting_down:
                self._statuses[service] = status
            super().set(service, status)

    def List(self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Every published status, by service name (the ``grpc.health.v1`` ``List``)."""
        with self._lock:
            statuses = dict(self._statuses)
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in statuses.items()}
        )

    def Watch(  # noqa: N802
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.ServicerContext,
        send_response_callback: Callable[[Any], None] | None = None,
    ) -> Any:
        if send_response_callback is None:  # Only the blocking server API; not ours.
            return super().Watch(request, context)
        send = send_response_callback
        ended = False
        lock = threading.Lock()

        def once_ended(response: Any) -> None:
            # None ends the stream; after that nothing may be sent, not even a second end.
            nonlocal ended
            with lock:
                if ended:
                    return
                ended = response is None
                send(response)

        with self._watch_lock:
            self._watches.add(once_ended)
        context.add_callback(lambda: self._forget(once_ended))
        return super().Watch(request, context, once_ended)

    def _forget(self, watch: Callable[[Any], None]) -> None:
        with self._watch_lock:
            self._watches.discard(watch)

    def enter_graceful_shutdown(self) -> None:
        """Every status NOT_SERVING, sent to every stream, then every stream ends."""
        with self._lock:
            self._statuses = dict.fromkeys(self._statuses, NOT_SERVING)
        super().enter_graceful_shutdown()
        with self._watch_lock:
            watches = list(self._watches)
        for end in watches:
            end(None)


class HealthStatusPublisher:
    """Keeps a ``HealthServicer``'s statuses in step with the service.

    ``publish()`` asks the service once and sets each status that changed;
    ``start()`` does that every ``interval`` seconds in a background thread.
    """

    def __init__(
        self,
        servicer: health.HealthServicer,
        *,
        interval: float,
        service_provider: ServiceProvider = get_health_service,
    ) -> None:
        self.interval = interval
        self._servicer = servicer
        self._service_provider = service_provider
        self._published: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._apply(unknown_statuses())

    def publish(self) -> None:
        try:
            statuses = serving_statuses(self._service_provider().check())
        except Exception:  # The engine failing is "not ready", never a dead publisher.
            logger.exception("The health report could not be made")
            statuses = unknown_statuses()
        self._apply(statuses)

    def _apply(self, statuses: dict[str, int]) -> None:
        with self._lock:
            for name, status in statuses.items():
                # A set() is sent to every Watch stream even when nothing changed.
                if self._published.get(name) != status:
                    self._servicer.set(name, status)
                    self._published[name] = status

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="grpc-health-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.publish()


def publish_interval(cache_ttl: float) -> float:
    """About a second, faster when results refresh faster; never a busy loop."""
    return max(0.1, min(1.0, cache_ttl or 1.0))


class HealthGrpcServer:
    """The gRPC server, bound at construction (``port`` is the real one) and not yet serving."""

    def __init__(
        self,
        bind: str,
        *,
        service_provider: ServiceProvider = get_health_service,
        max_workers: int = MAX_WORKERS,
        max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS,
        publish_every: float | None = None,
        interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] = (),
    ) -> None:
        self._executor = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc-server")
        self.server = grpc.server(
            self._executor,
            maximum_concurrent_rpcs=max_concurrent_rpcs,
            options=SERVER_OPTIONS,
            interceptors=[VersionMetadataInterceptor(), *interceptors],
        )
        self.health = LetrazHealthServicer()
        logging.getLogger("grpc._common").addFilter(_client_error_filter)
        interval = publish_interval(health_settings.cache_ttl) if publish_every is None else publish_every
        self.publisher = HealthStatusPublisher(self.health, interval=interval, service_provider=service_provider)
        core_health_pb2_grpc.add_CoreControllerServicer_to_server(  # type: ignore[no-untyped-call]
            CoreControllerServicer(service_provider), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(self.service_names(), self.server)
        try:
            # grpcio raises RuntimeError when it cannot bind (older releases returned 0).
            self.port = self.server.add_insecure_port(bind)
            if self.port == 0:
                raise RuntimeError(f"could not bind {bind}")
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    @staticmethod
    def service_names() -> Iterable[str]:
        return (CORE_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)

    def start(self) -> None:
        """Publish real statuses first, then serve: the first probe gets an answer that means something."""
        self.publisher.publish()
        self.server.start()
        self.publisher.start()

    def stop(self, grace: float | None) -> threading.Event:
        """Every status to NOT_SERVING, refuse new calls, cancel the rest after ``grace`` s."""
        self.publisher.stop()
        self.health.enter_graceful_shutdown()
        return self.server.stop(grace)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
