"""Sentry's one initialisation for the whole process, and what became of it.

``settings.py`` calls :func:`init_sentry` when ``SENTRY_DSN`` is set; it never raises.
A malformed DSN is a configuration error (the system check ``letraz.E005``, with
:func:`dsn_problem`'s words), so gunicorn and the CLI refuse to start on it; a process
that runs anyway keeps the error (class name only) for the ``sentry`` health check to
report as ``FAILED``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.integrations.logging import ignore_logger
from sentry_sdk.integrations.modules import ModulesIntegration
from sentry_sdk.scrubber import EventScrubber
from sentry_sdk.utils import BadDsn, Dsn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SentrySetup:
    """The outcome of :func:`init_sentry` in this process."""

    attempted: bool = False
    error: str | None = None


setup = SentrySetup()


def traces_sampler_for(rate: float) -> Callable[[dict[str, Any]], float]:
    """A sampler that keeps ``rate`` of requests but never samples a health probe.

    Probes are never traced: tracing one costs more than answering it. What a probe is
    comes from ``core.urls`` (by URL name), slash or no slash.
    """

    def sampler(context: dict[str, Any]) -> float:
        # Imported on use: this module is loaded while the settings are, before the URLconf can be.
        from core.urls import is_probe_path

        environ = context.get("wsgi_environ") or {}
        if is_probe_path(environ.get("PATH_INFO", "")):
            return 0.0
        parent = context.get("parent_sampled")
        return float(parent) if parent is not None else rate

    return sampler


def dsn_problem(dsn: str) -> str | None:
    """Why ``dsn`` is not a DSN the SDK accepts (its own short words), or None.

    The SDK's messages name the defect ("Missing public key", "Unsupported scheme
    'ftp'"), never the key.
    """
    try:
        Dsn(dsn)
    except BadDsn as exc:
        return str(exc) or type(exc).__name__
    return None


def init_sentry(
    dsn: str, *, environment: str = "", traces_sample_rate: float = 0.0, release: str | None = None
) -> SentrySetup:
    """Initialise the SDK once; never raise. Returns (and keeps) the outcome."""
    global setup
    if not dsn:
        setup = SentrySetup()
        return setup
    options: dict[str, Any] = {
        "dsn": dsn,
        "environment": environment or None,
        # Which version sent the event: the same one the probes' header and the CLI say.
        "release": release,
        # Spans for every middleware and signal are what makes the Django integration
        # expensive; the request transaction alone is enough here.
        "integrations": [DjangoIntegration(middleware_spans=False, signals_spans=False, cache_spans=False)],
        # Frames of vendor SDKs hold credentials (the Clerk key sits in a nested
        # headers dict): no local variables in events, and scrub nested data too.
        "include_local_variables": False,
        # Its first event reads every installed package's metadata (45 ms, 150 ms under
        # load, holding the GIL): the first change of state would stall the probes.
        "disabled_integrations": [ModulesIntegration()],
        "event_scrubber": EventScrubber(recursive=True),
    }
    if traces_sample_rate > 0:
        options["traces_sampler"] = traces_sampler_for(traces_sample_rate)
    # Requests that Django finds suspicious (a disallowed Host, ...) are hostile input,
    # not our errors: anyone could otherwise write events into our Sentry.
    ignore_logger("django.security.*")
    try:
        sentry_sdk.init(**options)
    except BadDsn as exc:
        # No line here: the system check letraz.E005 says what is wrong with the DSN, once,
        # and gunicorn and the CLI refuse to start on it (a traceback here said nothing more).
        setup = SentrySetup(attempted=True, error=type(exc).__name__)
    except Exception as exc:  # Any other failure must not stop start-up.
        setup = SentrySetup(attempted=True, error=type(exc).__name__)
        logger.warning("Sentry could not be initialised (%s); running without it.", type(exc).__name__, exc_info=True)
    else:
        setup = SentrySetup(attempted=True)
    return setup
