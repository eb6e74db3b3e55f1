"""``manage.py grpcserver``: serve the health report over gRPC (see ``core/grpc_server.py``).

Runs in the foreground as its own process (the container's second command). SIGTERM
or SIGINT stops it gracefully: every health status turns NOT_SERVING, new calls are
refused, calls in flight get ``GRACE`` seconds, then the process exits 0. A second
signal cuts the grace short.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.grpc_server import HealthGrpcServer
from health.conf import parse_grpc_target
from health.service import get_health_service, reset_health_service
from letraz.metrics import GrpcProbeMetricsInterceptor, MetricsServer
from letraz.version import SERVICE_VERSION

#: Calls in flight get this long after SIGTERM; it fits, with the 10 s preStop drain,
#: in deploy/kubernetes' 45 s terminationGracePeriodSeconds.
GRACE = 10.0


class Command(BaseCommand):
    help = (
        "Serve letraz_server.CORE.CoreController, grpc.health.v1.Health and server reflection on "
        "[::]:GRPC_PORT (or --bind). Stops gracefully on SIGTERM or SIGINT."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--bind",
            metavar="HOST:PORT",
            help="Where to listen (default [::]:GRPC_PORT); port 0 picks a free one, printed on start.",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            metavar="PORT",
            help="Where /metrics listens, on METRICS_HOST (default METRICS_PORT); 0 picks a free one, printed.",
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=GRACE,
            metavar="SECONDS",
            help=f"How long calls in flight may finish after SIGTERM (default {GRACE:g}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        bind: str = options["bind"] or f"[::]:{settings.GRPC_PORT}"
        host = self.validate_bind(bind)
        grace: float = options["grace"]
        if not grace >= 0:
            raise CommandError("--grace must be zero or more seconds.", returncode=2)

        stop_requested, force = threading.Event(), threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            (force if stop_requested.is_set() else stop_requested).set()

        metrics_port: int = settings.METRICS_PORT if options["metrics_port"] is None else options["metrics_port"]
        if not 0 <= metrics_port < 65536:
            raise CommandError("--metrics-port must be between 0 and 65535.", returncode=2)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        metrics: MetricsServer | None = None
        try:
            get_health_service().warm_up()
            try:
                metrics = MetricsServer(settings.METRICS_HOST, metrics_port)
            except OSError as exc:
                problem = f"could not listen for metrics on port {metrics_port} ({type(exc).__name__})."
                raise CommandError(problem) from exc
            metrics.start()
            self.stdout.write(f"metrics on {settings.METRICS_HOST}:{metrics.port}/metrics")
            try:
                server = HealthGrpcServer(bind, interceptors=[GrpcProbeMetricsInterceptor()])
            except RuntimeError as exc:
                raise CommandError(f"could not listen on {bind} ({type(exc).__name__}).") from exc
            try:
                server.start()
                self.stdout.write(f"gRPC server listening on {host}:{server.port} (letraz-health {SERVICE_VERSION})")
                self.stdout.flush()
                # Short waits: the signal handler runs in this thread, between them.
                while not stop_requested.wait(0.5):
                    pass
                self.stderr.write(f"gRPC server stopping (grace {grace:g} s)")
                self.stderr.flush()
                stopped = server.stop(grace)
                while not stopped.wait(0.2):
                    if force.is_set():
                        server.stop(None)
                        break
            finally:
                server.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if metrics is not None:
                metrics.stop()
            reset_health_service()
        self.stdout.write("gRPC server stopped")

    @staticmethod
    def validate_bind(bind: str) -> str:
        """``host:port`` (``[v6]:port``); returns the host as written. Port 0 is allowed."""
        host, _, port = bind.rpartition(":")
        try:
            # The same rules as UTIL_GRPC_HOST, except that port 0 (any free port) is fine here.
            parse_grpc_target(f"{host}:1" if port == "0" else bind)
        except ValueError as exc:
            raise CommandError(f"--bind must be HOST:PORT, [::]:PORT for IPv6 ({exc}).", returncode=2) from None
        return host
