"""The health engine's settings, read lazily from ``django.conf.settings``.

``settings.py`` fills these from the environment (``letraz/env.py``); reading them
through this object at use time keeps ``override_settings`` working in tests.
:func:`configuration_errors` is what the system checks report.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from django.conf import settings

from health.status import Component

UTIL_PROTOCOLS = ("letraz", "grpc")
#: HEALTH_STREAM_MAX's default: settings.py and gunicorn.conf.py (which adds as many
#: threads per worker) read it from here.
DEFAULT_STREAM_MAX = 25
STATUS_PAGE_MODES = ("public", "token", "off")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$")


@dataclass(frozen=True)
class GrpcTarget:
    host: str
    port: int

    @property
    def address(self) -> str:
        """The target as gRPC wants it (IPv6 literals in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


#: What a ``UTIL_GRPC_HOST`` looks like, for the messages.
GRPC_TARGET_EXAMPLE = "host:port, such as util:8080 ([::1]:8080 for IPv6)"


def parse_grpc_target(value: str) -> GrpcTarget:
    """Parse ``host:port`` (``[v6]:port`` for IPv6); raise ``ValueError`` saying what is expected."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(GRPC_TARGET_EXAMPLE)
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError("host:port with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("host:port with a valid IPv6 address in the brackets") from None
    elif not _HOSTNAME.match(host):
        raise ValueError(f"{GRPC_TARGET_EXAMPLE}; the host is not a valid host name")
    return GrpcTarget(host, port)


def _is_http_url(value: str) -> bool:
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    return url.scheme in ("http", "https") and bool(url.host)


def default_instance_id() -> str:
    """A stable id per host that does not reveal the host name.

    Every worker of one server (one pod, one machine) derives the same value; two
    hosts derive different ones.
    """
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, socket.gethostname()))


class HealthSettings:
    """Lazy, typed view of the settings the health engine uses."""

    @property
    def check_timeout(self) -> float:
        return float(getattr(settings, "HEALTH_CHECK_TIMEOUT", 0.5))

    @property
    def db_slow_ms(self) -> float:
        return float(getattr(settings, "HEALTH_DB_SLOW_MS", 250))

    @property
    def cache_ttl(self) -> float:
        return float(getattr(settings, "HEALTH_CACHE_TTL", 5.0))

    @property
    def max_staleness(self) -> float:
        return float(getattr(settings, "HEALTH_MAX_STALENESS", 30.0))

    @property
    def event_interval(self) -> float:
        """Seconds between two Sentry events about one component (a flapping one)."""
        return float(getattr(settings, "HEALTH_EVENT_INTERVAL", 600.0))

    @property
    def critical_component_names(self) -> tuple[str, ...]:
        default = (Component.CLERK, Component.DB, Component.UTIL_SERVICE)
        return tuple(getattr(settings, "HEALTH_CRITICAL_COMPONENTS", default))

    @property
    def critical_components(self) -> frozenset[Component]:
        """Known names only; unknown ones are a system-check error (health.E004)."""
        known = {c.value for c in Component}
        return frozenset(Component(n) for n in self.critical_component_names if n in known)

    @property
    def drain_file(self) -> Path | None:
        value = getattr(settings, "HEALTH_DRAIN_FILE", "")
        return Path(value) if value else None

    @property
    def instance_id(self) -> str:
        return getattr(settings, "INSTANCE_ID", "") or default_instance_id()

    @property
    def sentry_dsn(self) -> str:
        return getattr(settings, "SENTRY_DSN", "")

    @property
    def clerk_secret_key(self) -> str:
        return getattr(settings, "CLERK_SECRET_KEY", "")

    @property
    def clerk_api_url(self) -> str:
        return getattr(settings, "CLERK_API_URL", "https://api.clerk.com/v1")

    @property
    def util_grpc_host(self) -> str:
        return getattr(settings, "UTIL_GRPC_HOST", "")

    @property
    def util_grpc_target(self) -> GrpcTarget | None:
        """The parsed target, or None when unset or malformed (health.E003)."""
        try:
            return parse_grpc_target(self.util_grpc_host) if self.util_grpc_host else None
        except ValueError:
            return None

    @property
    def util_grpc_tls(self) -> bool:
        return bool(getattr(settings, "UTIL_GRPC_TLS", True))

    @property
    def util_grpc_health_protocol(self) -> str:
        return getattr(settings, "UTIL_GRPC_HEALTH_PROTOCOL", "letraz")

    @property
    def readiness_component_names(self) -> tuple[str, ...]:
        return tuple(getattr(settings, "HEALTH_READINESS_COMPONENTS", ()))

    @property
    def readiness_components(self) -> frozenset[Component]:
        """Components whose failure takes this instance out of rotation (none by default).

        Known names only; unknown ones are a system-check error (health.E009).
        """
        known = {c.value for c in Component}
        return frozenset(Component(n) for n in self.readiness_component_names if n in known)

    @property
    def cache_ttl_overrides(self) -> dict[Component, float]:
        """The ``HEALTH_CACHE_TTL_<COMPONENT>`` that are set, by component."""
        overrides: dict[str, float] = getattr(settings, "HEALTH_CACHE_TTL_OVERRIDES", {})
        return {c: float(overrides[c.value]) for c in Component if c.value in overrides}

    @property
    def cache_ttls(self) -> dict[Component, float]:
        """Each component's TTL: ``HEALTH_CACHE_TTL_<COMPONENT>`` if set, else ``HEALTH_CACHE_TTL``."""
        return {c: self.cache_ttl_overrides.get(c, self.cache_ttl) for c in Component}

    # -- the timeline, the fleet, the stream and the status page ----------------------

    @property
    def history_days(self) -> float:
        """Days of timeline kept; 0 turns the timeline and the fleet heartbeat off."""
        return float(getattr(settings, "HEALTH_HISTORY_DAYS", 30))

    @property
    def timeline_enabled(self) -> bool:
        return self.history_days > 0

    @property
    def heartbeat_interval(self) -> float:
        return float(getattr(settings, "HEALTH_HEARTBEAT_INTERVAL", 5.0))

    @property
    def fleet_gone_after(self) -> float:
        return float(getattr(settings, "HEALTH_FLEET_GONE_AFTER", 30.0))

    @property
    def stream_max(self) -> int:
        return int(getattr(settings, "HEALTH_STREAM_MAX", DEFAULT_STREAM_MAX))

    @property
    def status_page(self) -> str:
        return str(getattr(settings, "HEALTH_STATUS_PAGE", "public"))

    @property
    def diagnostics_token(self) -> str:
        return str(getattr(settings, "HEALTH_DIAGNOSTICS_TOKEN", ""))


health_settings = HealthSettings()


def _shown(value: object) -> str:
    """A setting's value as a message quotes it: numbers plain, text quoted."""
    if isinstance(value, float | int) and not isinstance(value, bool):
        return f"{value:g}"
    return repr(value)


def _shown_url(value: str) -> str:
    """A URL as a message may show it: not when it carries credentials."""
    return f"<{len(value)} characters, masked: it has credentials>" if "@" in value else repr(value)


def configuration_errors(conf: HealthSettings = health_settings) -> list[tuple[str, str]]:
    """Each misconfiguration as ``(check id, message)``; empty when all is well.

    Every message is one line: the variable, its value (no secret of this app is among
    these), and what is expected.
    """
    errors: list[tuple[str, str]] = []
    if conf.check_timeout <= 0:
        errors.append(
            (
                "health.E001",
                f"HEALTH_CHECK_TIMEOUT is {_shown(conf.check_timeout)}: expected a positive number of seconds, "
                "such as 0.5.",
            )
        )
    if conf.db_slow_ms <= 0:
        errors.append(
            (
                "health.E002",
                f"HEALTH_DB_SLOW_MS is {_shown(conf.db_slow_ms)}: expected a positive number of milliseconds, "
                "such as 250.",
            )
        )
    if conf.util_grpc_host:
        try:
            parse_grpc_target(conf.util_grpc_host)
        except ValueError as exc:
            errors.append(("health.E003", f"UTIL_GRPC_HOST is {_shown(conf.util_grpc_host)}: expected {exc}."))
    known = [c.value for c in Component]
    unknown = [n for n in conf.critical_component_names if n not in known]
    if unknown:
        errors.append(
            (
                "health.E004",
                f"HEALTH_CRITICAL_COMPONENTS is {_shown(','.join(conf.critical_component_names))}: expected "
                f"comma-separated names among {', '.join(known)}; unknown: {', '.join(map(repr, unknown))}.",
            )
        )
    if conf.util_grpc_health_protocol not in UTIL_PROTOCOLS:
        errors.append(
            (
                "health.E005",
                f"UTIL_GRPC_HEALTH_PROTOCOL is {_shown(conf.util_grpc_health_protocol)}: expected "
                f"{' or '.join(UTIL_PROTOCOLS)}.",
            )
        )
    if conf.cache_ttl < 0:
        errors.append(
            ("health.E006", f"HEALTH_CACHE_TTL is {_shown(conf.cache_ttl)}: expected zero or more seconds, such as 5.")
        )
    if conf.max_staleness < conf.cache_ttl:
        errors.append(
            (
                "health.E007",
                f"HEALTH_MAX_STALENESS is {_shown(conf.max_staleness)}: expected at least HEALTH_CACHE_TTL "
                f"({_shown(conf.cache_ttl)}) seconds.",
            )
        )
    if not _is_http_url(conf.clerk_api_url):
        errors.append(
            (
                "health.E008",
                f"CLERK_API_URL is {_shown_url(conf.clerk_api_url)}: expected an http(s) URL, "
                "such as https://api.clerk.com/v1.",
            )
        )
    if conf.event_interval < 0:
        errors.append(
            (
                "health.E009",
                f"HEALTH_EVENT_INTERVAL is {_shown(conf.event_interval)}: expected zero or more seconds, such as 600.",
            )
        )
    unknown = [n for n in conf.readiness_component_names if n not in known]
    if unknown:
        errors.append(
            (
                "health.E010",
                f"HEALTH_READINESS_COMPONENTS is {_shown(','.join(conf.readiness_component_names))}: expected "
                f"comma-separated names among {', '.join(known)}; unknown: {', '.join(map(repr, unknown))}.",
            )
        )
    # Only the TTLs set on their own: one that follows HEALTH_CACHE_TTL is E006/E007's.
    for component, ttl in conf.cache_ttl_overrides.items():
        if not 0 <= ttl <= conf.max_staleness:
            name = f"HEALTH_CACHE_TTL_{component.value.upper()}"
            errors.append(
                (
                    "health.E011",
                    f"{name} is {_shown(ttl)}: expected 0 to HEALTH_MAX_STALENESS ({_shown(conf.max_staleness)}) "
                    "seconds.",
                )
            )
    return errors + timeline_configuration_errors(conf)


def timeline_configuration_errors(conf: HealthSettings = health_settings) -> list[tuple[str, str]]:
    """The timeline's, the fleet's, the stream's and the status page's settings (issue 11)."""
    errors: list[tuple[str, str]] = []
    if conf.history_days < 0:
        errors.append(("health.E101", "HEALTH_HISTORY_DAYS must be zero (no timeline) or more days."))
    if conf.heartbeat_interval <= 0:
        errors.append(("health.E102", "HEALTH_HEARTBEAT_INTERVAL must be a positive number of seconds."))
    if conf.fleet_gone_after <= conf.heartbeat_interval:
        errors.append(("health.E103", "HEALTH_FLEET_GONE_AFTER must be longer than HEALTH_HEARTBEAT_INTERVAL."))
    if conf.stream_max < 0:
        errors.append(("health.E104", "HEALTH_STREAM_MAX must be zero (no streams) or more."))
    if conf.status_page not in STATUS_PAGE_MODES:
        errors.append(("health.E105", f"HEALTH_STATUS_PAGE must be one of {', '.join(STATUS_PAGE_MODES)}."))
    elif conf.status_page == "token" and not conf.diagnostics_token:
        errors.append(("health.E106", "HEALTH_STATUS_PAGE=token needs HEALTH_DIAGNOSTICS_TOKEN."))
    return errors
