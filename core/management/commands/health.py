"""``manage.py health``: the health report from the command line, for scripts and probes.

Exit status: 0 when OPERATIONAL, 1 when DEGRADED (or the server could not be asked),
2 on a usage or configuration error. Output is the contract's JSON on one line; a
failure never prints exception text or hosts, only the JSON or one line on stderr
naming the error class.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.core import checks
from django.core.management.base import BaseCommand, CommandError, CommandParser

from health.status import Component, OverallStatus

if TYPE_CHECKING:
    from health.service import HealthService

#: Exit statuses, as documented in ``--help``.
EXIT_OPERATIONAL = 0
EXIT_DEGRADED = 1
EXIT_USAGE = 2

#: How long ``--live`` waits for the server's answer (Docker's HEALTHCHECK allows 5 s).
LIVE_TIMEOUT = 2.0
#: The pause between two attempts under ``--wait``.
RETRY_INTERVAL = 0.5
#: More than a liveness body ever needs; a bigger answer is not one.
MAX_LIVE_BODY = 64 * 1024

KNOWN_COMPONENTS = tuple(c.value for c in Component)
#: The most rows ``--history`` prints (the newest ones).
HISTORY_ROWS = 10_000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Outcome:
    """One attempt: healthy or not, and what to print (JSON on stdout, or a line on stderr)."""

    healthy: bool
    body: dict[str, object] | None = None
    problem: str | None = None
    #: With ``-v 2``: the diagnostics body (as ``/api/v1/health/diagnostics/`` gives it).
    diagnostics: dict[str, object] | None = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A probe judges the URL it was given: a redirect is an unhealthy answer."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxies either: an HTTP(S)_PROXY in the container's environment must not carry a
# probe of 127.0.0.1 elsewhere.
_live_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def ask_live_url(url: str, timeout: float) -> Outcome:
    """GET ``url``: healthy on HTTP 200 with a JSON body whose ``status`` is OPERATIONAL."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (http/https only: see handle)
    try:
        with _live_opener.open(request, timeout=timeout) as response:
            code, raw = response.status, response.read(MAX_LIVE_BODY)
    except urllib.error.HTTPError as exc:
        code, raw = exc.code, b""
        exc.close()
    except urllib.error.URLError as exc:
        reason = exc.reason
        name = type(reason).__name__ if isinstance(reason, BaseException) else type(exc).__name__
        return Outcome(False, problem=f"the server could not be asked ({name})")
    except (OSError, ValueError) as exc:  # timeouts while reading, a malformed URL, ...
        return Outcome(False, problem=f"the server could not be asked ({type(exc).__name__})")
    if code != 200:
        return Outcome(False, problem=f"the server answered HTTP {code}")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        return Outcome(False, problem=f"the server's answer is not JSON ({type(exc).__name__})")
    if not isinstance(body, dict):
        return Outcome(False, problem="the server's answer is not a JSON object")
    return Outcome(body.get("status") == OverallStatus.OPERATIONAL.value, body=body)


def one_shot_service() -> HealthService:
    """The configured checks with no cache: a CLI run asks once (or once per retry)."""
    # Imported here: the SDKs behind the checks take a while to load, and --live (the
    # container's HEALTHCHECK, every 30 s) needs none of them.
    # Logged, not sent to Sentry: every CLI run is a new process, so "once per change"
    # would mean once per run.
    from health.listeners import LogListener
    from health.service import build_service

    return build_service(cached=False, listeners=[LogListener()])


def parse_components(values: str | Sequence[str] | None) -> tuple[Component, ...] | None:
    """``--component`` values (repeated or comma-separated), in the contract's order."""
    if not values:
        return None
    if isinstance(values, str):  # call_command(..., component="db")
        values = [values]
    names = {name.strip() for value in values for name in value.split(",") if name.strip()}
    unknown = sorted(names - set(KNOWN_COMPONENTS))
    if unknown or not names:
        raise CommandError(
            f"unknown component {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"known components: {', '.join(KNOWN_COMPONENTS)}.",
            returncode=EXIT_USAGE,
        )
    return tuple(c for c in Component if c.value in names)


def since_argument(text: str) -> datetime:
    """The type of ``--since``: ISO 8601 (UTC when no offset is given), or ago as ``90m``, ``24h``, ``7d``."""
    from django.utils.dateparse import parse_datetime

    match = re.fullmatch(r"(\d{1,6})([smhd])", text.strip())
    if match:
        return datetime.now(tz=UTC) - timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    try:
        parsed = parse_datetime(text.strip())
    except ValueError:
        parsed = None
    if parsed is None:
        raise argparse.ArgumentTypeError(f"expected ISO 8601 or an age such as 24h or 7d, got {text!r}")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def non_negative_seconds(text: str) -> float:
    """The type of ``--wait``: seconds, zero or more."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds (0 or more), got {text!r}")
    return value


@contextmanager
def quiet_logger(name: str, *, quiet: bool) -> Iterator[None]:
    """Silence a logger for the duration: its lines may carry tracebacks."""
    logger = logging.getLogger(name)
    previous = logger.disabled
    logger.disabled = previous or quiet
    try:
        yield
    finally:
        logger.disabled = previous


class Command(BaseCommand):
    help = (
        "Print this instance's health report as one line of JSON (the body of GET /api/v1/health/) "
        "and exit 0 when OPERATIONAL, 1 when DEGRADED, 2 on a usage or configuration error. "
        "The checks run in this process, uncached, with the server's settings; the drain file plays no part "
        "(it is about readiness, not health). With --component, the "
        "status covers only the named components (those among HEALTH_CRITICAL_COMPONENTS decide it) and "
        '"details" lists only them: {"instance_id": ..., "status": ..., "details": {"clerk": ...}}. '
        "With --live URL, no check runs here: the running server is asked over HTTP instead (exit 0 on "
        "HTTP 200 with status OPERATIONAL, else 1); this is the container's HEALTHCHECK. "
        "Configuration errors (the system checks) and usage errors always print on stderr. "
        "With -v 2, the change log lines and then the diagnostics (the body of /api/v1/health/diagnostics/: "
        "reasons scrubbed of credentials and hosts, durations, the effective settings) also print on stderr."
    )
    # The system checks run in handle(), so that an error exits 2, not SystemCheckError's 1.
    requires_system_checks: list[str] = []

    def get_version(self) -> str:
        """``--version``: this service's version (Django's own would say nothing about it)."""
        from letraz.version import SERVICE_VERSION

        return SERVICE_VERSION

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--component",
            action="append",
            metavar="NAME",
            help=f"Check only this component (repeatable, or comma-separated): {', '.join(KNOWN_COMPONENTS)}.",
        )
        parser.add_argument(
            "--wait",
            type=non_negative_seconds,
            default=0.0,
            metavar="SECONDS",
            help="Ask again every 0.5 s until OPERATIONAL or SECONDS have passed; the last answer decides.",
        )
        parser.add_argument(
            "--live",
            metavar="URL",
            help="Ask a running server's liveness URL (http or https) instead of running the checks here.",
        )
        parser.add_argument(
            "--quiet",
            action="store_true",
            help="No JSON; only the exit status speaks, plus the one-line reason when the server could not say yes.",
        )
        parser.add_argument(
            "--history",
            action="store_true",
            help="Print the incident timeline (every instance, oldest first) and each component's availability "
            "instead of checking; --component narrows it. Exit 1 if the database cannot be read.",
        )
        parser.add_argument(
            "--since",
            type=since_argument,
            default=None,
            metavar="WHEN",
            help="With --history: from when, as ISO 8601 (2026-01-31T12:00:00Z) or ago (90m, 24h, 7d); default 24h.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        quiet: bool = options["quiet"]
        wait = options["wait"]
        if not isinstance(wait, int | float) or not math.isfinite(wait) or wait < 0:
            raise CommandError("--wait needs a non-negative number of seconds.", returncode=EXIT_USAGE)
        live: str | None = options["live"]
        if options["history"]:
            if live is not None:
                raise CommandError("--history cannot be used with --live.", returncode=EXIT_USAGE)
            self.print_history(parse_components(options["component"]), options["since"], quiet=quiet)
            return
        if options["since"] is not None:
            raise CommandError("--since goes with --history.", returncode=EXIT_USAGE)
        if live is not None:
            if options["component"]:
                raise CommandError("--component cannot be used with --live.", returncode=EXIT_USAGE)
            parts = urlsplit(live)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise CommandError("--live needs an http:// or https:// URL.", returncode=EXIT_USAGE)
            # No system checks: the question is about the server, not this process's settings.
            outcome = self.retry(lambda: ask_live_url(live, LIVE_TIMEOUT), wait)
        else:
            components = parse_components(options["component"])
            self.check_configuration(verbosity=options["verbosity"])
            with quiet_logger("health", quiet=quiet or options["verbosity"] < 2):
                outcome = self.report(components, wait, diagnose=options["verbosity"] >= 2 and not quiet)
        if not quiet and outcome.body is not None:
            self.stdout.write(json.dumps(outcome.body))
        if outcome.problem is not None:
            # Even with --quiet: a container's HEALTHCHECK keeps this line, and
            # `docker inspect` shows it as the reason (one line, no host, no exception text).
            self.stderr.write(f"health: {outcome.problem}")
        if not quiet and outcome.diagnostics is not None:
            self.stderr.write(json.dumps(outcome.diagnostics, indent=2))
        if not outcome.healthy:
            raise SystemExit(EXIT_DEGRADED)

    def print_history(self, components: tuple[Component, ...] | None, since: datetime | None, *, quiet: bool) -> None:
        """The timeline as the history API gives it, one line per row, then availability per component."""
        from django.db import DatabaseError

        from core.timeline_views import duration_text, percent
        from health.conf import health_settings
        from health.history import ALL_COMPONENTS, changes, component_history

        until = datetime.now(tz=UTC)
        since = since or until - timedelta(hours=24)
        names = [c.value for c in components] if components else list(ALL_COMPONENTS)
        try:
            rows = list(reversed(changes(since=since, until=until)[:HISTORY_ROWS]))
            histories = component_history(
                since, until, now=until, gone_after=health_settings.fleet_gone_after, components=names
            )
        except DatabaseError as exc:
            self.stderr.write(f"health: the timeline could not be read ({type(exc).__name__})")
            raise SystemExit(EXIT_DEGRADED) from None
        if quiet:
            return
        self.stdout.write(f"Timeline from {since:%Y-%m-%d %H:%M:%S} to {until:%Y-%m-%d %H:%M:%S} UTC")
        for row in rows:
            if row.component not in names and row.component != "instance":
                continue
            lasted = f" ({row.from_status} lasted {duration_text(row.previous_duration)})" if row.from_status else ""
            change = f"{row.from_status or '?'} -> {row.to_status}" if row.kind == "change" else row.to_status
            reason = f" [{row.reason}]" if row.reason else ""
            self.stdout.write(
                f"{row.at:%Y-%m-%d %H:%M:%S}  {row.instance_id}  {row.component}  {change}{lasted}{reason}"
            )
        if not rows:
            self.stdout.write("(no changes)")
        for name, history in histories.items():
            spent = ", ".join(f"{state} {duration_text(seconds)}" for state, seconds in sorted(history.seconds.items()))
            self.stdout.write(f"{name}: {percent(history.availability)} available ({spent or 'nothing observed'})")

    def check_configuration(self, *, verbosity: int) -> None:
        """Run the system checks; any error is a configuration error (exit 2)."""
        messages = checks.run_checks(include_deployment_checks=False)
        errors = [m for m in messages if m.is_serious()]
        if verbosity >= 2:
            for warning in (m for m in messages if not m.is_serious() and not m.is_silenced()):
                self.stderr.write(str(warning))
        if errors:
            lines = "\n".join(str(e) for e in errors)
            raise CommandError(f"configuration error(s), see `manage.py check`:\n{lines}", returncode=EXIT_USAGE)

    def report(self, components: tuple[Component, ...] | None, wait: float, *, diagnose: bool = False) -> Outcome:
        """Run the checks in this process, with a service of its own, closed afterwards."""
        try:
            service = one_shot_service()
        except Exception as exc:  # A bug must still give a defined answer.
            return Outcome(False, problem=f"the health report could not be made ({type(exc).__name__})")
        try:
            outcome = self.retry(lambda: self.ask_service(service, components), wait)
            if diagnose:
                from core.diagnostics import diagnostics

                outcome = replace(outcome, diagnostics=diagnostics(service))
            return outcome
        finally:
            service.flush_notifications(1.0)  # the log lines, written by the notifier thread
            service.close()

    @staticmethod
    def ask_service(service: HealthService, components: tuple[Component, ...] | None) -> Outcome:
        try:
            report = service.check(components)
        except Exception as exc:  # Likewise: a defined answer, never a traceback.
            return Outcome(False, problem=f"the health report could not be made ({type(exc).__name__})")
        return Outcome(report.status == OverallStatus.OPERATIONAL, body=report.as_dict())

    @staticmethod
    def retry(attempt: Callable[[], Outcome], wait: float) -> Outcome:
        """Attempt until healthy or ``wait`` seconds have passed; at least once.

        Each attempt is bounded on its own (the check timeout, or ``LIVE_TIMEOUT``), so
        the whole run takes at most ``wait`` plus one attempt.
        """
        deadline = time.monotonic() + wait
        while True:
            outcome = attempt()
            remaining = deadline - time.monotonic()
            if outcome.healthy or remaining <= 0:
                return outcome
            time.sleep(min(RETRY_INTERVAL, remaining))
