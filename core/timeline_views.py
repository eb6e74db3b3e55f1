"""The history, fleet and change-stream endpoints, and the status page (issue 11).

Thin views over ``health.history`` and ``health.stream``. Who may see them is
``HEALTH_STATUS_PAGE``: ``public`` (default: states and times, never reasons), ``token``
(the diagnostics token is needed, e.g. added by an authenticating proxy) or ``off``
(404). Reasons are only ever shown with the diagnostics token. A database that cannot
be read is a 503 with a short JSON body, never a 500.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils.dateparse import parse_datetime
from django.views import View
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.pagination import CursorPagination
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from core.serializers import FleetSerializer, HistorySerializer, ProblemSerializer
from core.views import HealthAPIView
from health.conf import health_settings
from health.history import ALL_COMPONENTS, component_history, fleet, fleet_json
from health.history import changes as timeline_changes
from health.models import INSTANCE, TimelineEvent
from health.stream import StreamsFull, TimelineTail, events_after, get_timeline_tail
from health.timeline import as_datetime

logger = logging.getLogger("health")

#: A comment line every this many seconds keeps proxies from closing a quiet stream.
KEEP_ALIVE = 15.0
#: How often a quiet stream looks whether its client has gone (seconds).
GONE_CHECK = 1.0
#: The reconnection delay the stream asks browsers for (milliseconds).
RETRY_MS = 2000
DEFAULT_WINDOW = timedelta(hours=24)
MAX_BUCKETS = 500
#: One Server-Sent Event as the schema describes it (and schemathesis checks it): the
#: timeline row's id, its kind as the event name, the row as JSON in ``data``.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "event": {"type": "string"}, "data": {"type": "string"}},
    "required": ["id", "event", "data"],
}


class Refused(Exception):
    """The request may not see the history: answer ``status`` with ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def has_diagnostics_token(request: HttpRequest) -> bool:
    """``Authorization: Bearer <HEALTH_DIAGNOSTICS_TOKEN>``, compared in constant time."""
    token = health_settings.diagnostics_token
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def may_see_history(request: HttpRequest) -> bool:
    """Whether the caller may see the history; True means with reasons. Raises :class:`Refused`."""
    mode = health_settings.status_page
    with_token = has_diagnostics_token(request)
    if mode == "off":
        raise Refused(404, "The status page and its history are turned off here.")
    if mode == "token" and not with_token:
        raise Refused(401, "The diagnostics token is needed (Authorization: Bearer ...).")
    return with_token


def problem(status: int, detail: str) -> JsonResponse:
    response = JsonResponse({"detail": detail}, status=status)
    response["Cache-Control"] = "no-store"
    if status == 401:
        response["WWW-Authenticate"] = "Bearer"
    return response


def event_body(event: TimelineEvent, *, reasons: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": event.id,
        "instance_id": event.instance_id,
        "component": event.component,
        "kind": event.kind,
        "from_status": event.from_status,
        "to_status": event.to_status,
        "at": event.at.isoformat().replace("+00:00", "Z"),
        "previous_duration": event.previous_duration,
    }
    if reasons:
        body["reason"] = event.reason
    return body


def _raw_json(text: str) -> JsonResponse:
    """A JSON body that is already text (made by the database)."""
    response = JsonResponse({})
    response.content = text.encode()
    return response


def _when(text: str | None, name: str, default: datetime) -> datetime:
    if text is None:
        return default
    try:
        parsed = parse_datetime(text.replace(" ", "+"))  # a '+' in a query string arrives as a blank
    except ValueError:
        parsed = None
    if parsed is None:
        raise Refused(400, f"{name} must be an ISO 8601 date and time, such as 2026-01-31T12:00:00Z.")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class HistoryPagination(CursorPagination):
    ordering = ("-at", "-id")
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class TimelineAPIView(HealthAPIView):
    """Public (subject to HEALTH_STATUS_PAGE), JSON, never cached, no 500 when the database is down."""

    def answer(self, request: Request) -> Response | JsonResponse:
        raise NotImplementedError

    def get(self, request: Request) -> Response | JsonResponse:
        try:
            return self.answer(request)
        except Refused as refused:
            return problem(refused.status, refused.detail)
        except DatabaseError as exc:
            logger.warning("The timeline could not be read (%s)", type(exc).__name__)
            return problem(503, "The timeline cannot be read right now; try again shortly.")


_WINDOW_PARAMETERS = [
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="Start of the window (default: 24 h before until)."),
    OpenApiParameter("until", OpenApiTypes.DATETIME, description="End of the window (default: now)."),
    OpenApiParameter("component", OpenApiTypes.STR, description="One component, or `instance` for starts and gaps."),
    OpenApiParameter("instance", OpenApiTypes.STR, description="One instance id."),
    OpenApiParameter(
        "buckets",
        {"type": "integer", "minimum": 1, "maximum": MAX_BUCKETS},
        description="Availability per this many slices (default 1).",
    ),
    OpenApiParameter(
        "page_size",
        {"type": "integer", "minimum": 1, "maximum": HistoryPagination.max_page_size},
        description="Changes per page (default 100, at most 1000).",
    ),
    OpenApiParameter("cursor", OpenApiTypes.STR, description="From a previous answer's `next`."),
]


class HealthHistoryView(TimelineAPIView):
    @extend_schema(
        operation_id="health_history_retrieve",
        tags=["Core APIs"],
        summary="What changed, and how available each component was",
        description=(
            "The incident timeline: every change of a component's state on every instance within the window "
            "(newest first, paginated), and per component the instance-seconds spent in each state and the "
            "availability. Reasons only with the diagnostics token (`Authorization: Bearer ...`)."
        ),
        parameters=_WINDOW_PARAMETERS,
        responses={
            200: HistorySerializer,
            400: ProblemSerializer,
            401: ProblemSerializer,
            404: ProblemSerializer,
            503: ProblemSerializer,
        },
        auth=[],
    )
    def get(self, request: Request) -> Response | JsonResponse:
        return super().get(request)

    def answer(self, request: Request) -> Response | JsonResponse:
        reasons = may_see_history(request)
        params = request.query_params
        now = as_datetime(time.time())
        until = _when(params.get("until"), "until", now)
        since = _when(params.get("since"), "since", until - DEFAULT_WINDOW)
        if since > until:
            raise Refused(400, "since must not be after until.")
        if since == until:
            # A window of zero length is the instant itself: one microsecond, so that its
            # slices have a width (OpenAPI cannot say "since < until"; both are valid dates).
            until += timedelta(microseconds=1)
        component = params.get("component") or None
        if component is not None and component not in (*ALL_COMPONENTS, INSTANCE):
            raise Refused(400, f"component must be one of {', '.join((*ALL_COMPONENTS, INSTANCE))}.")
        instance = params.get("instance") or None
        if instance is not None and len(instance) > 64:
            raise Refused(400, "instance is an instance id (at most 64 characters).")
        buckets_text = params.get("buckets", "1")
        if not buckets_text.isdigit() or not 1 <= int(buckets_text) <= MAX_BUCKETS:
            raise Refused(400, f"buckets must be a whole number from 1 to {MAX_BUCKETS}.")
        paginator = HistoryPagination()
        size_text = params.get(paginator.page_size_query_param)
        if size_text is not None and not (size_text.isdigit() and 1 <= int(size_text) <= paginator.max_page_size):
            # DRF would quietly clamp it; a number out of the documented range is an error.
            raise Refused(400, f"page_size must be a whole number from 1 to {paginator.max_page_size}.")
        rows = timeline_changes(component=component, instance=instance, since=since, until=until)
        page = paginator.paginate_queryset(rows, request, view=self) or []
        measured = [component] if component in ALL_COMPONENTS else list(ALL_COMPONENTS) if component is None else []
        histories = component_history(
            since,
            until,
            now=now,
            gone_after=health_settings.fleet_gone_after,
            components=[c for c in measured if c],
            instance=instance,
            buckets=int(buckets_text),
        )
        body = {
            "since": since.isoformat(),
            "until": until.isoformat(),
            "changes": [event_body(event, reasons=reasons) for event in page],
            "next": paginator.get_next_link(),
            "components": {
                name: {"seconds": h.seconds, "availability": h.availability, "buckets": h.buckets}
                for name, h in histories.items()
            },
        }
        return Response(body)


class HealthFleetView(TimelineAPIView):
    @extend_schema(
        operation_id="health_fleet_retrieve",
        tags=["Core APIs"],
        summary="Every instance: its states, version and last heartbeat",
        description=(
            "One row per instance (by instance id, never a host name) from its heartbeat every "
            "HEALTH_HEARTBEAT_INTERVAL seconds; `gone` once it was not heard from for HEALTH_FLEET_GONE_AFTER."
        ),
        responses={200: FleetSerializer, 401: ProblemSerializer, 404: ProblemSerializer, 503: ProblemSerializer},
        auth=[],
    )
    def get(self, request: Request) -> Response | JsonResponse:
        return super().get(request)

    def answer(self, request: Request) -> Response | JsonResponse:
        may_see_history(request)
        now = as_datetime(time.time())
        if connection.vendor == "postgresql":  # the list as JSON straight from the database
            raw = fleet_json(now, health_settings.fleet_gone_after)
            return _raw_json(f'{{"instances":{raw}}}')
        members = fleet(now, health_settings.fleet_gone_after)
        return Response(
            {
                "instances": [
                    {
                        "instance_id": m.instance_id,
                        "status": m.status,
                        "states": m.states,
                        "version": m.version,
                        "started_at": m.started_at.isoformat(),
                        "last_seen": m.last_seen.isoformat(),
                        "gone": m.gone,
                    }
                    for m in members
                ]
            }
        )


class EventStreamRenderer(BaseRenderer):
    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return b""  # the stream writes itself; this only names the media type for the schema


def client_gone(client: socket.socket | None) -> bool:
    """True once the client closed its connection (an SSE client sends nothing after its request).

    Without the socket (another server), a gone client is found when a write fails.
    """
    if client is None or isinstance(client, ssl.SSLSocket):
        return False
    try:
        readable, _, _ = select.select([client], [], [], 0)
        return bool(readable) and client.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def disconnect_watch(environ: Mapping[str, Any]) -> threading.Event | None:
    """An event set when the client goes, under the event-loop worker (a2wsgi).

    There the WSGI app never sees the socket; the ASGI ``receive`` behind ``wsgi.input``
    yields ``http.disconnect`` once the client has closed its connection. A coroutine on
    the worker's loop (no thread) waits for it. None where the server offers no ``receive``.
    """
    body = environ.get("wsgi.input")
    receive, loop = getattr(body, "receive", None), getattr(body, "loop", None)
    if receive is None or not isinstance(loop, asyncio.AbstractEventLoop):
        return None
    gone = threading.Event()

    async def wait_for_disconnect() -> None:
        try:
            while (await receive()).get("type") != "http.disconnect":
                pass
        finally:
            gone.set()

    asyncio.run_coroutine_threadsafe(wait_for_disconnect(), loop)
    return gone


class EventStream:
    """The SSE body: the missed rows after ``Last-Event-ID``, then each new row, with keep-alives.

    ``close()`` (called by the server when the client goes or the response ends, even if
    it never started) releases the stream's place under ``HEALTH_STREAM_MAX``.
    """

    def __init__(self, tail: TimelineTail, position: int, backlog: list[TimelineEvent], *, reasons: bool) -> None:
        self._tail, self._position, self._backlog, self._reasons = tail, position, backlog, reasons
        self.resources = ExitStack()
        self.client: socket.socket | None = None
        self.gone: threading.Event | None = None

    def _event(self, event: TimelineEvent) -> bytes:
        data = json.dumps(event_body(event, reasons=self._reasons), separators=(",", ":"))
        return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n".encode()

    def __iter__(self) -> Iterator[bytes]:
        yield f"retry: {RETRY_MS}\n: connected\n\n".encode()
        sent = {event.id for event in self._backlog}
        for event in self._backlog:
            yield self._event(event)
        quiet_since = time.monotonic()
        while not self._tail.closed:
            self._position, events = self._tail.wait(self._position, GONE_CHECK)
            if not events:
                if client_gone(self.client) or (self.gone is not None and self.gone.is_set()):
                    return  # its place is free at once, not at a write that fails later
                if time.monotonic() - quiet_since >= KEEP_ALIVE:
                    quiet_since = time.monotonic()
                    yield b": keep-alive\n\n"
            for event in events:
                if event.id not in sent:
                    quiet_since = time.monotonic()
                    yield self._event(event)

    def close(self) -> None:
        self.resources.close()


class HealthEventsView(TimelineAPIView):
    renderer_classes = [EventStreamRenderer]
    # HEAD would open a stream that never ends for a body nobody reads.
    http_method_names = ["get"]

    @extend_schema(
        operation_id="health_events_retrieve",
        tags=["Core APIs"],
        summary="A live stream of changes (Server-Sent Events)",
        description=(
            "One event per timeline row as it is written (`event:` the kind, `id:` the row's id, `data:` the row "
            "as JSON), a keep-alive comment every 15 s. Send `Last-Event-ID` (browsers do when they reconnect) "
            "to receive what was missed first. Each server process serves at most HEALTH_STREAM_MAX streams; "
            "beyond that the answer is 503 with Retry-After."
        ),
        parameters=[
            OpenApiParameter(
                "Last-Event-ID",
                {"type": "integer", "minimum": 0},
                OpenApiParameter.HEADER,
                description="Resume after this id.",
            )
        ],
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                SSE_EVENT_SCHEMA, description="The event stream: one event per timeline row, `data` its JSON."
            ),
            (400, "application/json"): ProblemSerializer,
            (401, "application/json"): ProblemSerializer,
            (404, "application/json"): ProblemSerializer,
            (503, "application/json"): ProblemSerializer,
        },
        auth=[],
    )
    def get(self, request: Request) -> Response | JsonResponse:
        return super().get(request)

    def answer(self, request: Request) -> Any:
        reasons = may_see_history(request)
        # Browsers send it only when they have an id; present but blank is a malformed request.
        last_text = request.headers.get("Last-Event-ID", "").strip()
        if "Last-Event-ID" in request.headers and not (last_text.isdigit() and len(last_text) <= 18):
            raise Refused(400, "Last-Event-ID must be a timeline id (a whole number).")
        tail = get_timeline_tail()
        stream_max = health_settings.stream_max
        resources = ExitStack()
        try:
            position = resources.enter_context(tail.open_stream(stream_max))
            backlog = events_after(int(last_text)) if last_text else []
        except StreamsFull:
            full = problem(503, f"This server already serves {stream_max} streams; try again later.")
            full["Retry-After"] = "5"
            return full
        except BaseException:
            resources.close()
            raise
        body = EventStream(tail, position, backlog, reasons=reasons)
        body.resources = resources
        client = request.META.get("gunicorn.socket")  # gunicorn's sync and gthread workers give it
        body.client = client if isinstance(client, socket.socket) else None
        body.gone = None if body.client is not None else disconnect_watch(request.META)
        stream = StreamingHttpResponse(body, content_type="text/event-stream; charset=utf-8")
        stream["Cache-Control"] = "no-store"
        stream["X-Accel-Buffering"] = "no"  # nginx and friends: pass each event on at once
        return stream


# -- the status page ----------------------------------------------------------------------------


class StatusPageView(View):
    """``/status/``: the fleet's states, 24 h and 7 d bars, incidents and the fleet table, live."""

    http_method_names = ["get", "head"]

    def get(self, request: HttpRequest) -> HttpResponse:
        try:
            may_see_history(request)
            context = status_context()
        except Refused as refused:
            answer = HttpResponse(refused.detail, status=refused.status, content_type="text/plain; charset=utf-8")
            if refused.status == 401:
                answer["WWW-Authenticate"] = "Bearer"
            return answer
        except DatabaseError as exc:
            logger.warning("The status page could not read the timeline (%s)", type(exc).__name__)
            context = {"unavailable": True, "components": [], "fleet": [], "incidents": [], "bars": []}
        response = render(request, "core/status.html", context, status=503 if context.get("unavailable") else 200)
        response["Cache-Control"] = "no-store"
        return response


def percent(share: float | None) -> str:
    """99.95 % style, or "no data"; never rounds a bad share up to 100."""
    if share is None:
        return "no data"
    value = math.floor(share * 10000) / 100
    return f"{value:.2f} %".replace(".00 ", " ")


def level(share: float | None) -> str:
    """A bar slice's class: ``none``, ``ok`` (all OPERATIONAL), ``partial`` or ``bad`` (under 50 %)."""
    if share is None:
        return "none"
    return "ok" if share >= 1 else "partial" if share >= 0.5 else "bad"


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    text = " ".join(p for p in parts if p)
    return text or f"{secs} s"


def recent_incidents(now: datetime, *, limit: int = 20, scan: int = 1000) -> list[dict[str, Any]]:
    """The last week's changes into a failure state, newest first, each with how long it lasted.

    A failure lasted until the same instance's component changed again (that row's
    ``previous_duration``); ``ongoing`` when it has not yet.
    """
    incidents: list[dict[str, Any]] = []
    later: dict[tuple[str, str], TimelineEvent] = {}
    for event in timeline_changes(since=now - timedelta(days=7)).filter(kind="change")[:scan]:
        key = (event.instance_id, event.component)
        following = later.get(key)
        later[key] = event
        if event.to_status in ("OPERATIONAL", "UNINITIALIZED") or len(incidents) >= limit:
            continue
        body = event_body(event, reasons=False)
        body["ongoing"] = following is None
        lasted = (now - event.at).total_seconds() if following is None else following.previous_duration
        body["lasted"] = duration_text(lasted)
        body["at_text"] = f"{event.at:%Y-%m-%d %H:%M:%S} UTC"
        incidents.append(body)
    return incidents


#: Windows of the status page's bars: (label, length, slices).
BARS = (("24 hours", timedelta(hours=24), 24), ("7 days", timedelta(days=7), 28))
SEVERITY = {"OPERATIONAL": 0, "UNINITIALIZED": 1, "DEGRADED": 2}


def status_context() -> dict[str, Any]:
    """What the page shows; the script keeps it current from the stream and the APIs."""
    now = as_datetime(time.time())
    members = fleet(now, health_settings.fleet_gone_after)
    live = [m for m in members if not m.gone]
    components = []
    for name in ALL_COMPONENTS:
        states = [m.states.get(name, "") for m in live if m.states.get(name)]
        worst = max(states, key=lambda s: SEVERITY.get(s, 3), default="UNKNOWN")
        ok = sum(state == "OPERATIONAL" for state in states)
        components.append({"name": name, "state": worst, "ok": ok, "total": len(states)})
    overall = "OPERATIONAL" if live and all(m.status == "OPERATIONAL" for m in live) else "DEGRADED"
    if not live:
        overall = "UNKNOWN"
    bars = []
    for label, length, slices in BARS:
        histories = component_history(
            now - length, now, now=now, gone_after=health_settings.fleet_gone_after, buckets=slices
        )
        step = length / slices
        bars.append(
            {
                "label": label,
                "components": [
                    {
                        "name": name,
                        "percent": percent(h.availability),
                        "slices": [
                            {
                                "level": level(value),
                                "text": f"{(now - length + step * i):%d %b %H:%M}: {percent(value)}",
                            }
                            for i, value in enumerate(h.buckets)
                        ],
                    }
                    for name, h in histories.items()
                ],
            }
        )
    incidents = recent_incidents(now)
    return {
        "overall": overall,
        "components": components,
        "bars": bars,
        "incidents": incidents,
        "fleet": members,
        "generated": now,
        "gone_after": health_settings.fleet_gone_after,
    }
