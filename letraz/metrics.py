"""Prometheus metrics: what each check found, and how the probe endpoints are used.

Every series here is fed from results the service already has: the
:class:`MetricsListener` is one of the health service's listeners (named in
``HEALTH_LISTENERS``), and :class:`ProbeMetricsMiddleware` times the probe views.
A scrape only reads these numbers, so it never calls Clerk, the database or the util
service, whatever the scrape rate.

Under gunicorn every worker has its own checks and its own numbers. prometheus-client's
multi-process mode puts them in memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``
(``gunicorn.conf.py`` makes and empties that directory at start and drops a dead
worker's live gauges), and a scrape of ``/metrics``, answered by any worker, adds them
up. The gRPC process is one process: it serves its own registry on ``METRICS_PORT``.

Label values are only enum values (component, state), URL names and HTTP status codes:
never a host, a key or an error's text.
"""

from __future__ import annotations

import glob
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from functools import lru_cache
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from health.listeners import is_failure
from health.runner import CheckResult
from health.status import OPERATIONAL, STATUS_TYPES
from letraz.bearer import bearer_matches

# The web process's multi-process scrape never has *_created series; the gRPC process's
# should look the same.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Check durations: from a cached-connection round trip to past any sane time limit.
CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Probe latencies: the endpoints answer in a millisecond from cache, or within the time limit.
PROBE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# Each worker sees its dependencies on its own; "livemostrecent" reports the latest
# observation made by any live worker, which is the freshest thing this instance knows,
# as one series per (component, state). The listener sets every state of a component at
# once, so exactly one of them is 1. ("liveall" would add a pid label and leave
# aggregation to every query; "max" would show an old 1 beside the new one.)
COMPONENT_STATE = Gauge(
    "letraz_health_component_state",
    "1 for the component's current state, 0 for its other states (the contract's enum values).",
    ["component", "state"],
    multiprocess_mode="livemostrecent",
)
CHECK_DURATION = Histogram(
    "letraz_health_check_duration_seconds",
    "How long each check run took (a run past the time limit counts as the limit).",
    ["component"],
    buckets=CHECK_BUCKETS,
)
CHECK_FAILURES = Counter(
    "letraz_health_check_failures",
    "Check results in a failure state, by the state.",
    ["component", "state"],
)
# The newest success seen by any live worker.
LAST_SUCCESS = Gauge(
    "letraz_health_last_success_timestamp_seconds",
    "Unix time of the component's last OPERATIONAL result.",
    ["component"],
    multiprocess_mode="livemax",
)
PROBE_REQUESTS = Counter(
    "letraz_health_probe_requests",
    "Requests to the probe endpoints, by URL name and HTTP status code.",
    ["path", "code"],
)
PROBE_LATENCY = Histogram(
    "letraz_health_probe_request_duration_seconds",
    "Time to answer a probe endpoint, by URL name and HTTP status code.",
    ["path", "code"],
    buckets=PROBE_BUCKETS,
)


class MetricsListener:
    """A health-service listener that turns every result into the series above."""

    def __init__(self) -> None:
        # Zero series from the start, so rate() and absent() mean something at once.
        for component, status_type in STATUS_TYPES.items():
            CHECK_DURATION.labels(component.value)
            for state in status_type:
                if state != OPERATIONAL:
                    CHECK_FAILURES.labels(component.value, state.value)

    def on_result(self, result: CheckResult) -> None:
        component = result.component.value
        for state in STATUS_TYPES[result.component]:
            COMPONENT_STATE.labels(component, state.value).set(1.0 if state == result.status else 0.0)
        CHECK_DURATION.labels(component).observe(max(0.0, result.duration))
        if is_failure(result):
            CHECK_FAILURES.labels(component, str(result.status)).inc()
        elif result.operational:
            LAST_SUCCESS.labels(component).set(time.time())

    def on_change(self, previous: CheckResult | None, result: CheckResult) -> None:
        """Nothing more: every result, change or not, already went through on_result."""


# -- the exposition ---------------------------------------------------------------------


def multiprocess_dir() -> str:
    return str(getattr(settings, "PROMETHEUS_MULTIPROC_DIR", "") or "")


class WorkerFilesCollector(prometheus_multiprocess.MultiProcessCollector):
    """The library's multi-process collector, minus the files a worker has not sized yet.

    A worker creates its file and only then sizes it (``MmapedDict.__init__``), so a
    scrape answered by another worker in between finds 0 bytes, and the library's reader
    raises ``struct.error`` for the whole scrape: a 500 from ``/metrics``, seen here when
    a worker's first probe and a scrape met. A worker killed in that window would leave
    the empty file, and every later scrape would fail. An empty file holds no value yet,
    so it is left out; a file is sized once and never shrinks, so any other file is whole
    enough to read. (prometheus/client_python#1199, still open in 0.26.)
    """

    def collect(self) -> Iterable[Any]:
        files = glob.glob(os.path.join(self._path, "*.db"))
        return self.merge([name for name in files if _sized(name)], accumulate=True)  # type: ignore[no-untyped-call, no-any-return]


def _sized(path: str) -> bool:
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:  # a dead worker's live gauge, dropped since the glob
        return False


def exposition() -> bytes:
    """The text a scrape gets: every worker's files in multi-process mode, else this process."""
    directory = multiprocess_dir()
    if directory:
        # A fresh registry per scrape, as the library documents: the collector reads the files.
        registry = CollectorRegistry()
        WorkerFilesCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def metrics_token() -> str:
    return str(getattr(settings, "METRICS_TOKEN", "") or "")


#: Where the web process answers scrapes (and the gRPC process's own port too).
METRICS_PATH = "/metrics"


def metrics_view(request: HttpRequest) -> HttpResponseBase:
    """``/metrics``: Prometheus' text format; with ``METRICS_TOKEN`` set, only for its bearer."""
    if request.method not in ("GET", "HEAD"):
        response = HttpResponse(status=405)
        response["Allow"] = "GET, HEAD"
        return response
    token = metrics_token()
    if token and not bearer_matches(request.headers.get("Authorization"), token):
        response = HttpResponse(b"Unauthorized\n", status=401, content_type="text/plain; charset=utf-8")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    response = HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response


# -- the probe endpoints ---------------------------------------------------------------------


@lru_cache(maxsize=1)
def _probe_names_by_view() -> dict[type, str]:
    """Each probe view class and the URL name of its route (core/urls.py names them)."""
    from core import urls
    from core.views import ProbeView

    names: dict[type, str] = {}
    for pattern in urls.urlpatterns:
        view_class = getattr(getattr(pattern, "callback", None), "view_class", None)
        name = getattr(pattern, "name", None)
        if name and isinstance(view_class, type) and issubclass(view_class, ProbeView):
            names.setdefault(view_class, name)
    return names


def probe_name(request: HttpRequest) -> str | None:
    """The probe's URL name (the same for its slash-less alias), or None for other requests."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return None
    view_class = getattr(match.func, "view_class", None)
    return _probe_names_by_view().get(view_class) if isinstance(view_class, type) else None


class MetricsEndpointMiddleware:
    """Answers ``/metrics`` ahead of every other middleware, whatever the ``Host``.

    Prometheus scrapes a pod at its IP, and sends that as ``Host``, which
    ``ALLOWED_HOSTS`` rightly refuses for the API (the probes send ``Host: localhost``,
    Prometheus cannot). This answer builds no URL from the host, so the check protects
    nothing here. Not a URL route, so it is in no schema.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info == METRICS_PATH:
            return metrics_view(request)
        return self.get_response(request)


class ProbeMetricsMiddleware:
    """Counts and times every answer of a probe endpoint (first in ``MIDDLEWARE``)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response = self.get_response(request)
        name = probe_name(request)
        if name is not None:
            code = str(response.status_code)
            PROBE_REQUESTS.labels(name, code).inc()
            PROBE_LATENCY.labels(name, code).observe(time.perf_counter() - started)
        return response


if TYPE_CHECKING:  # generic in grpc-stubs only
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor


class GrpcProbeMetricsInterceptor(_ServerInterceptor):
    """The gRPC process's probes: unary calls counted and timed by method and status code.

    Only methods a service registered get a handler, so the ``path`` label is always one
    of a few fixed names (``/grpc.health.v1.Health/Check``, ...); streams (``Watch``) are
    left alone.
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_streaming or handler.response_streaming:
            return handler
        method: str = handler_call_details.method
        behaviour = handler.unary_unary

        def timed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = behaviour(request, context)
                code = context.code() or grpc.StatusCode.OK  # type: ignore[attr-defined]
                return response
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
                raise
            finally:
                name = code.name if isinstance(code, grpc.StatusCode) else str(code)
                PROBE_REQUESTS.labels(method, name).inc()
                PROBE_LATENCY.labels(method, name).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


# -- the gRPC process's own endpoint -----------------------------------------------------------


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _IPv6ThreadingWSGIServer(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """A scrape every few seconds is not worth a line each."""


def metrics_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """WSGI: ``GET /metrics`` as on the web process (same token rule), 404 elsewhere."""
    path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
    if path.rstrip("/") != METRICS_PATH:
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"Not Found\n"]
    if method not in ("GET", "HEAD"):
        start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
        return [b""]
    token = metrics_token()
    if token and not bearer_matches(environ.get("HTTP_AUTHORIZATION"), token):
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain; charset=utf-8"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
        )
        return [b"Unauthorized\n"]
    body = exposition()
    start_response(
        "200 OK",
        [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")],
    )
    return [b"" if method == "HEAD" else body]


class MetricsServer:
    """``/metrics`` on a port of its own, in a daemon thread (the gRPC process)."""

    def __init__(self, host: str, port: int) -> None:
        server_class = _IPv6ThreadingWSGIServer if ":" in host else _ThreadingWSGIServer
        self._server = make_server(host.strip("[]"), port, metrics_app, server_class, handler_class=_QuietHandler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics-server", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
