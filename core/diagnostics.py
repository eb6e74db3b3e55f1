"""``/api/v1/health/diagnostics/``: why a component is in its state, for the people on call.

The public report says *that* something is down, never *why*. This endpoint says why
(the reason, since when, how often), but only to a caller holding
``HEALTH_DIAGNOSTICS_TOKEN`` (compared in constant time): 401 without it or with a
wrong one, 404 while no token is configured, so an instance without one does not even
admit that the endpoint exists. Even then reasons are scrubbed of every configured
credential and host (:class:`Redactor`): a reason may quote a peer.

It reads what the service already knows (:meth:`HealthService.snapshot`) and runs no
check, so asking costs the dependencies nothing. ``manage.py health -v 2`` prints the
same body for the checks it has just run.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed, NotFound
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from core.views import HealthAPIView
from health.conf import HealthSettings, health_settings
from health.service import HealthService, get_health_service
from health.status import Component
from letraz.bearer import bearer_matches

PACKAGE = "letraz-health"
REDACTED = "[redacted]"
HOST = "[host]"

# -- the instance --------------------------------------------------------------------------

_started_at = time.time()


def _restart_clock_after_fork() -> None:
    # A gunicorn worker's uptime starts when it is forked, not when the master started.
    global _started_at
    _started_at = time.time()


os.register_at_fork(after_in_child=_restart_clock_after_fork)


def package_version() -> str:
    """The installed package's version, else the one in pyproject.toml beside the code."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


# -- scrubbing reasons ---------------------------------------------------------------------

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?(?![\w.])")
_BRACKETED_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\](?::\d{1,5})?")


@dataclass(frozen=True)
class Redactor:
    """Replaces configured credentials with ``[redacted]`` and hosts with ``[host]``.

    Besides the configured values it removes any URL user-info and any IP address, so
    a peer quoting an address the configuration does not name is scrubbed too.
    """

    secrets: tuple[str, ...]
    hosts: tuple[str, ...]
    ports: tuple[str, ...]

    def __call__(self, text: str) -> str:
        text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        for host in self.hosts:
            text = text.replace(host, HOST)
        text = _BRACKETED_IPV6.sub(HOST, text)
        text = _IPV4.sub(HOST, text)
        for port in self.ports:
            # As a URL or driver message puts it ("host:5432", "port 5432"), not any number.
            text = re.sub(rf"(?:(?<=:)|(?<=port )){re.escape(port)}(?!\d)", "[port]", text)
        return text

    @classmethod
    def from_settings(
        cls, conf: HealthSettings = health_settings, *, databases: Mapping[str, Mapping[str, Any]] | None = None
    ) -> Redactor:
        """Everything configured that must not be shown (``databases``: ``settings.DATABASES``)."""
        secrets: set[str] = set()
        hosts: set[str] = set()
        ports: set[str] = set()

        def url(value: str) -> None:
            try:
                parts = urlsplit(value)
                port = parts.port
            except ValueError:
                secrets.add(value)  # malformed: hide it whole
                return
            for part in (parts.username, parts.password):
                if part:
                    secrets.update({part, unquote(part)})
            if parts.hostname:
                hosts.add(parts.hostname)
            if port:
                ports.add(str(port))

        for value in (
            conf.clerk_secret_key,
            getattr(settings, "SECRET_KEY", ""),
            getattr(settings, "HEALTH_DIAGNOSTICS_TOKEN", ""),
            getattr(settings, "METRICS_TOKEN", ""),
        ):
            if value:
                secrets.add(value)
        if conf.sentry_dsn:
            secrets.add(conf.sentry_dsn)
            url(conf.sentry_dsn)
        url(conf.clerk_api_url)
        target = conf.util_grpc_target
        if target is not None:
            hosts.update({target.address, target.host})
            ports.add(str(target.port))
        elif conf.util_grpc_host:
            hosts.add(conf.util_grpc_host)
        for database in (settings.DATABASES if databases is None else databases).values():
            if database.get("PASSWORD"):
                secrets.add(str(database["PASSWORD"]))
            if database.get("HOST"):
                hosts.add(str(database["HOST"]))
            if database.get("PORT"):
                ports.add(str(database["PORT"]))
        # Longest first, so that a host:port goes before the bare host inside it.
        return cls(
            secrets=_longest_first(s for s in secrets if len(s) >= 3),
            hosts=_longest_first(h for h in hosts if h),
            ports=_longest_first(p for p in ports if p),
        )


def _longest_first(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(values), key=lambda v: (-len(v), v)))


# -- the body ----------------------------------------------------------------------------


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def readiness_components(conf: HealthSettings) -> list[str]:
    """The components readiness waits for: their own setting where there is one, else the critical set."""
    configured = getattr(conf, "readiness_components", None)
    if configured is None:
        configured = getattr(settings, "HEALTH_READINESS_COMPONENTS", None)
    names = conf.critical_components if configured is None else configured
    return [c.value for c in Component if c in names or c.value in names]


def cache_ttls(conf: HealthSettings) -> dict[str, float]:
    """Each component's cache TTL (``HEALTH_CACHE_TTL_<COMPONENT>`` where set, else the common one)."""
    per_component = getattr(conf, "cache_ttl_for", None)
    ttls: dict[str, float] = {}
    for component in Component:
        if callable(per_component):
            ttls[component.value] = float(per_component(component))
        else:
            own = getattr(settings, f"HEALTH_CACHE_TTL_{component.value.upper()}", None)
            ttls[component.value] = float(conf.cache_ttl if own is None else own)
    return ttls


def effective_settings(conf: HealthSettings = health_settings) -> dict[str, object]:
    """What governs the checks, never a secret: for a credential only whether it is set."""
    return {
        "check_timeout_seconds": conf.check_timeout,
        "cache_ttl_seconds": cache_ttls(conf),
        "max_staleness_seconds": conf.max_staleness,
        "critical_components": [c.value for c in Component if c in conf.critical_components],
        "readiness_components": readiness_components(conf),
        "db_slow_ms": conf.db_slow_ms,
        "util_grpc_tls": conf.util_grpc_tls,
        "util_grpc_health_protocol": conf.util_grpc_health_protocol,
        "configured": {
            "sentry_dsn": bool(conf.sentry_dsn),
            "clerk_secret_key": bool(conf.clerk_secret_key),
            "util_grpc_host": bool(conf.util_grpc_host),
            "drain_file": conf.drain_file is not None,
        },
    }


def diagnostics(service: HealthService, conf: HealthSettings = health_settings) -> dict[str, object]:
    """The diagnostics body: each component as this process knows it, the settings, the instance."""
    scrub = Redactor.from_settings(conf)
    now = time.time()
    components: dict[str, object] = {}
    for component, snap in service.snapshot().items():
        components[component.value] = {
            "state": None if snap.status is None else str(snap.status),
            "reason": scrub(snap.reason),
            "duration_seconds": snap.duration,
            "last_checked": _iso(snap.checked_at),
            "since": _iso(snap.since),
            "consecutive_failures": snap.consecutive_failures,
            "runs_in_flight": snap.runs_in_flight,
            "last_success": _iso(snap.last_success_at),
        }
    return {
        "instance_id": service.instance_id,
        "version": package_version(),
        "process_id": os.getpid(),
        "started_at": _iso(_started_at),
        "uptime_seconds": round(now - _started_at, 3),
        "draining": service.draining,
        "components": components,
        "settings": effective_settings(conf),
    }


# -- serializers (the schema) --------------------------------------------------------------


class DiagnosticsComponentSerializer(serializers.Serializer[dict[str, object]]):
    state = serializers.CharField(allow_null=True, help_text="The component's state; null before its first check.")
    reason = serializers.CharField(
        allow_blank=True, help_text="Why, in a few words; credentials and hosts are replaced by placeholders."
    )
    duration_seconds = serializers.FloatField(allow_null=True, help_text="How long the last check took.")
    last_checked = serializers.DateTimeField(allow_null=True, help_text="When the last result was recorded.")
    since = serializers.DateTimeField(allow_null=True, help_text="Since when the component is in this state.")
    consecutive_failures = serializers.IntegerField(help_text="Failed results in a row (0 after a success).")
    runs_in_flight = serializers.IntegerField(help_text="Checks of this component running now.")
    last_success = serializers.DateTimeField(allow_null=True, help_text="When it was last OPERATIONAL.")


class DiagnosticsConfiguredSerializer(serializers.Serializer[dict[str, bool]]):
    sentry_dsn = serializers.BooleanField()
    clerk_secret_key = serializers.BooleanField()
    util_grpc_host = serializers.BooleanField()
    drain_file = serializers.BooleanField()


class DiagnosticsSettingsSerializer(serializers.Serializer[dict[str, object]]):
    check_timeout_seconds = serializers.FloatField()
    cache_ttl_seconds = serializers.DictField(child=serializers.FloatField())
    max_staleness_seconds = serializers.FloatField()
    critical_components = serializers.ListField(child=serializers.CharField())
    readiness_components = serializers.ListField(child=serializers.CharField())
    db_slow_ms = serializers.FloatField()
    util_grpc_tls = serializers.BooleanField()
    util_grpc_health_protocol = serializers.CharField()
    configured = DiagnosticsConfiguredSerializer(help_text="Whether each credential or target is set, not its value.")


class DiagnosticsSerializer(serializers.Serializer[dict[str, object]]):
    instance_id = serializers.CharField()
    version = serializers.CharField(help_text="The service's version.")
    process_id = serializers.IntegerField(help_text="The process that answered (each gunicorn worker checks alone).")
    started_at = serializers.DateTimeField()
    uptime_seconds = serializers.FloatField()
    draining = serializers.BooleanField()
    components = serializers.DictField(child=DiagnosticsComponentSerializer())
    settings = DiagnosticsSettingsSerializer()


# -- the view ------------------------------------------------------------------------------


class DiagnosticsCaller:
    """The one caller there is: whoever holds the token."""

    is_authenticated = True


class DiagnosticsTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer <HEALTH_DIAGNOSTICS_TOKEN>``; the endpoint is a 404 without a token set."""

    def authenticate(self, request: Request) -> tuple[DiagnosticsCaller, None] | None:
        token = str(getattr(settings, "HEALTH_DIAGNOSTICS_TOKEN", "") or "")
        if not token:
            raise NotFound()
        header = request.headers.get("Authorization")
        if not header:
            return None  # 401 "not authenticated"
        if not bearer_matches(header, token):
            raise AuthenticationFailed("Invalid token.")
        return DiagnosticsCaller(), None

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="diagnostics"'


class DiagnosticsTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = DiagnosticsTokenAuthentication
    name = "DiagnosticsToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "The value of HEALTH_DIAGNOSTICS_TOKEN."}


_ERROR = inline_serializer("DiagnosticsError", {"detail": serializers.CharField()})


class DiagnosticsView(HealthAPIView):
    authentication_classes = [DiagnosticsTokenAuthentication]
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="health_diagnostics_retrieve",
        tags=["Core APIs"],
        summary="Why is a component in its state?",
        description=(
            "For the people on call, with `Authorization: Bearer <HEALTH_DIAGNOSTICS_TOKEN>`. Per component: "
            "its state, the reason (credentials and hosts scrubbed), how long the last check took, when it was "
            "last checked, since when it is in this state, consecutive failures and runs in flight; the "
            "effective settings (no secrets); the version and uptime. It reads what the answering process "
            "already knows and runs no check. 401 without the token or with a wrong one; 404 when the "
            "instance has no token configured."
        ),
        responses={
            200: DiagnosticsSerializer,
            401: OpenApiResponse(_ERROR, description="No token, or a wrong one."),
            404: OpenApiResponse(_ERROR, description="No HEALTH_DIAGNOSTICS_TOKEN is configured."),
        },
    )
    def get(self, request: Request) -> Response:
        body = DiagnosticsSerializer(diagnostics(get_health_service())).data
        return Response(body, headers={"Cache-Control": "no-store"})
