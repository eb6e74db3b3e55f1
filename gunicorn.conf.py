"""gunicorn configuration for the web process (``make run`` and the container use it).

An event loop per worker reads requests and a pool of threads runs Django
(``letraz/gunicorn_worker.py``), so a probe never queues behind a slow request or a
slow client; sizes and the port from the environment; a graceful timeout that fits
inside Kubernetes' grace period; forwarded headers trusted from no one unless
``FORWARDED_ALLOW_IPS`` names the proxy.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from health.conf import DEFAULT_STREAM_MAX
from letraz.env import env
from letraz.logging import gunicorn_logconfig, parse_log_format
from letraz.proxies import trusted_proxies

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "letraz.settings")
_trusted_proxies = trusted_proxies()

# Metrics: every worker writes its numbers to files here and /metrics adds them up
# (prometheus-client's multi-process mode). The library reads this variable when it is
# first imported, so it is set before anything imports it: a fresh directory of our own
# unless one is given (e.g. a memory-backed emptyDir).
METRICS_DIR = env.string("PROMETHEUS_MULTIPROC_DIR")
OWN_METRICS_DIR = not METRICS_DIR
if OWN_METRICS_DIR:
    METRICS_DIR = tempfile.mkdtemp(prefix="letraz-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = METRICS_DIR

# All interfaces, as a container needs; pass --bind to narrow it (command line wins).
bind = [f"0.0.0.0:{env.integer('PORT', 8000)}"]  # noqa: S104
worker_class = "letraz.gunicorn_worker.ThreadedWSGIWorker"
workers = env.integer("WEB_CONCURRENCY", 2)
# Threads that run Django, per worker; connections waiting for their headers hold none.
# Each open change stream (/api/v1/health/events/) holds one more: HEALTH_STREAM_MAX more
# threads than the ones that answer probes, so streams never take a probe's place.
threads = env.integer("GUNICORN_THREADS", 8) + max(0, env.integer("HEALTH_STREAM_MAX", DEFAULT_STREAM_MAX))
# The app is WSGI behind a2wsgi: no ASGI lifespan events to send.
asgi_lifespan = "off"
# A worker silent for this long is killed and replaced.
timeout = 30
# SIGTERM lets in-flight requests finish for this long: with a 10 s preStop drain it
# fits the 45 s terminationGracePeriodSeconds of deploy/kubernetes.
graceful_timeout = 20
# After a response, the next request's headers must be complete within this many
# seconds; a new connection gets HEADER_READ_TIMEOUT (5 s) for its first request's.
keepalive = 5
# Forwarded headers: X-Forwarded-Proto and friends set the scheme only from these peers
# (settings.FORWARDED_ALLOW_IPS: none by default); request headers never become
# SCRIPT_NAME or PATH_INFO (the app lives at /); a header whose name has "_" (which would
# collide with a "-" one in the WSGI environ) is dropped.
forwarded_allow_ips = ",".join(_trusted_proxies)
# A fixed proxy prefix comes from the server's own environment, never from a request:
# SCRIPT_NAME=/letraz serves /letraz/api/... as SCRIPT_NAME /letraz + PATH_INFO /api/...
# (the ASGI root_path, which a2wsgi strips from the path).
root_path = env.string("SCRIPT_NAME")
forwarder_headers = ""
header_map = "drop"
accesslog = "-"
errorlog = "-"
logger_class = "letraz.gunicorn_logging.ProbeQuietLogger"
# LOG_FORMAT=json: the error and access logs as one JSON object per line, like the app's.
logconfig_dict = gunicorn_logconfig(parse_log_format(env))
# Probes' access lines are off unless GUNICORN_LOG_HEALTH_PROBES=true (see the logger).
proc_name = "letraz-web"
# gunicorn's control socket (under $HOME) is not used here; off, so that servers
# sharing a home, or a read-only one, do not contend for it.
control_socket_disable = True


def on_starting(server: Any) -> None:
    """Empty the metrics directory, then refuse to start on a misconfiguration."""
    # Files of an earlier run would be added to this one's numbers (the library says so).
    directory = Path(METRICS_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)

    import django
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    # "No issues" is noise; warnings go through gunicorn's log (JSON with LOG_FORMAT=json).
    quiet, warnings = io.StringIO(), io.StringIO()
    try:
        django.setup()
        call_command("check", "--fail-level", "ERROR", stdout=quiet, stderr=warnings)
        # The project's deploy checks only (Django's HTTPS ones depend on the proxy).
        call_command("check", "--deploy", "--tag", "letraz", "--fail-level", "ERROR", stdout=quiet, stderr=warnings)
    except (SystemCheckError, ImproperlyConfigured) as exc:
        server.log.error("Configuration error, not starting:\n%s", exc)
        on_exit(server)  # gunicorn calls it only after a start
        raise SystemExit(2) from None
    if warnings.getvalue().strip():
        server.log.warning("%s", warnings.getvalue().strip())

    from letraz.version import SERVICE_VERSION

    server.log.info("Starting letraz-health %s", SERVICE_VERSION)


def post_worker_init(worker: Any) -> None:
    """Start the first round of checks so the first probe finds results waiting."""
    import gc

    from health.service import get_health_service

    get_health_service().warm_up()
    # The ~110,000 long-lived objects of Django, DRF, grpc and Sentry would be walked by
    # every full collection: a 55-85 ms pause of all the worker's threads every few
    # seconds under load (measured by bench/). Frozen, a collection walks only what
    # requests leave behind.
    gc.freeze()


def child_exit(server: Any, worker: Any) -> None:
    """A worker is gone: its live gauges go with it, as prometheus-client documents."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, METRICS_DIR)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    """Remove the metrics directory if it was made here."""
    if OWN_METRICS_DIR:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)
