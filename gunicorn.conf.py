"""gunicorn configuration for the web process (``make run`` and the container use it).

Threaded workers, so a probe never queues behind a slow request; sizes and the port
from the environment; a graceful timeout that fits inside Kubernetes' grace period.
"""

from __future__ import annotations

import os
from typing import Any

from letraz.env import env

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "letraz.settings")

# All interfaces, as a container needs; pass --bind to narrow it (command line wins).
bind = [f"0.0.0.0:{env.integer('PORT', 8000)}"]  # noqa: S104
worker_class = "gthread"
workers = env.integer("WEB_CONCURRENCY", 2)
# Each open change stream (/api/v1/health/events/) holds a thread: HEALTH_STREAM_MAX more
# threads than the ones that answer probes, so streams never take a probe's place (issue 11).
threads = env.integer("GUNICORN_THREADS", 8) + max(0, env.integer("HEALTH_STREAM_MAX", 25))
# A worker silent for this long is killed and replaced.
timeout = 30
# SIGTERM lets in-flight requests finish for this long: with a 10 s preStop drain it
# fits the 45 s terminationGracePeriodSeconds of deploy/kubernetes.
graceful_timeout = 20
keepalive = 5
accesslog = "-"
errorlog = "-"
logger_class = "letraz.gunicorn_logging.ProbeQuietLogger"
# Probes' access lines are off unless GUNICORN_LOG_HEALTH_PROBES=true (see the logger).
proc_name = "letraz-web"
# gunicorn's control socket (under $HOME) is not used here; off, so that servers
# sharing a home, or a read-only one, do not contend for it.
control_socket_disable = True


def on_starting(server: Any) -> None:
    """Refuse to start on a misconfiguration, with the system checks' clear messages."""
    import django
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    try:
        django.setup()
        call_command("check", "--fail-level", "ERROR")
        # The project's deploy checks only (Django's HTTPS ones depend on the proxy).
        call_command("check", "--deploy", "--tag", "letraz", "--fail-level", "ERROR")
    except (SystemCheckError, ImproperlyConfigured) as exc:
        server.log.error("Configuration error, not starting:\n%s", exc)
        raise SystemExit(2) from None


def post_worker_init(worker: Any) -> None:
    """Start the first round of checks so the first probe finds results waiting."""
    import gc

    from health.service import get_health_service

    get_health_service().warm_up()
    _end_streams_on_exit()
    # The ~110,000 long-lived objects of Django, DRF, grpc and Sentry would be walked by
    # every full collection: a 55-85 ms pause of all the worker's threads every few
    # seconds under load (measured by bench/). Frozen, a collection walks only what
    # requests leave behind.
    gc.freeze()


def _end_streams_on_exit() -> None:
    """On SIGTERM, end the open change streams at once, so they do not hold the graceful stop."""
    import signal

    from health.stream import get_timeline_tail

    previous = signal.getsignal(signal.SIGTERM)

    def end_streams(signum: int, frame: Any) -> None:
        get_timeline_tail().close()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, end_streams)
