"""Sentry's one initialisation for the whole process, and what became of it.

``settings.py`` calls :func:`init_sentry` when ``SENTRY_DSN`` is set. A malformed DSN
must never stop the server, so the error is kept (class name only) for the ``sentry``
health check to report as ``FAILED``.
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


def init_sentry(dsn: str, *, environment: str = "", traces_sample_rate: float = 0.0) -> SentrySetup:
    """Initialise the SDK once; never raise. Returns (and keeps) the outcome."""
    global setup
    if not dsn:
        setup = SentrySetup()
        return setup
    options: dict[str, Any] = {
        "dsn": dsn,
        "environment": environment or None,
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
    except Exception as exc:  # BadDsn is a ValueError; any failure must not stop start-up.
        setup = SentrySetup(attempted=True, error=type(exc).__name__)
        # The traceback stays in the logs (a DSN is never in it: BadDsn names no value).
        logger.warning("Sentry could not be initialised (%s); running without it.", type(exc).__name__, exc_info=True)
    else:
        setup = SentrySetup(attempted=True)
    return setup
