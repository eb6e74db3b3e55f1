"""Thin views over the one ``HealthService``: liveness, readiness and the full report."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.views import APIView

from core.serializers import HealthCheckSerializer, LivenessSerializer
from health.conf import health_settings
from health.service import failure_body, get_health_service, is_ready
from health.status import OverallStatus

logger = logging.getLogger("health")


class JSONWhateverTheAccept(BaseContentNegotiation):
    """Probes send ``*/*``, browsers ``text/html``: both get JSON, never a 406."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        return next(iter(parsers), None)

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


@functools.lru_cache(maxsize=64)
def _serialize(serializer: type[Serializer[Any]], frozen: str) -> dict[str, Any]:
    return dict(serializer(json.loads(frozen)).data)


def serialized(serializer: type[Serializer[Any]], body: dict[str, object]) -> dict[str, Any]:
    """``serializer(body).data``, made once per distinct body.

    A serializer instance deep-copies its fields (four nested choice fields here), which
    cost more than the whole cached report; the bodies repeat until a state changes.
    """
    return _serialize(serializer, json.dumps(body, sort_keys=True))


class HealthAPIView(APIView):
    """The health API's views: read-only, JSON whatever the Accept, never cached in between.

    Public unless a subclass says otherwise (diagnostics want a token, the timeline
    follows ``HEALTH_STATUS_PAGE``).
    """

    # They read; OPTIONS would answer 200 with DRF's metadata, so it is a 405 too.
    http_method_names = ["get", "head"]
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes: list[Any] = []
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JSONWhateverTheAccept

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        response["Cache-Control"] = "no-store"
        return response


class ProbeView(HealthAPIView):
    """The probes: public, and a 503 is an answer, not a server error."""

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        # A 503 here is an answer, not a server error: Django would log every one at
        # ERROR (and Sentry's logging integration would send each as an event).
        response._has_been_logged = True
        # HEAD loses its body in letraz.middleware.HeadWithoutBody, as every page does.
        return response

    def report_response(self, *, readiness: bool) -> Response:
        try:
            report = get_health_service().check()
            body = report.as_dict()
            healthy = report.status == OverallStatus.OPERATIONAL
            if readiness:
                # Every component is still shown; the status is readiness's own verdict.
                healthy = is_ready(report, health_settings.readiness_components)
                body["status"] = (OverallStatus.OPERATIONAL if healthy else OverallStatus.DEGRADED).value
            data = serialized(HealthCheckSerializer, body)
        except Exception:  # A bug in the engine must still give a defined answer.
            logger.exception("The health report could not be made")
            data, healthy = serialized(HealthCheckSerializer, failure_body(health_settings.instance_id)), False
        return Response(data, status=200 if healthy else 503)


class HealthView(ProbeView):
    @extend_schema(
        operation_id="health_retrieve",
        tags=["Core APIs"],
        summary="Get server health status",
        description="Returns the server health status. The sentry status is also included in the response",
        responses={200: HealthCheckSerializer, 503: HealthCheckSerializer},
        auth=[],
    )
    def get(self, request: Request) -> Response:
        return self.report_response(readiness=False)


class ReadinessView(ProbeView):
    @extend_schema(
        operation_id="health_ready_retrieve",
        tags=["Core APIs"],
        summary="Is this instance ready for traffic?",
        description=(
            "For readiness probes and load balancers. The same body as `/health/`, every component "
            "included, but the answer is about this instance: 503 only while it is draining before it "
            "stops, or when a component named in HEALTH_READINESS_COMPONENTS (none by default) is not "
            "OPERATIONAL; `status` agrees with the code. Dependencies that every instance shares (Clerk, "
            "the database, the util service) do not take it out of rotation by default: their outage "
            "would take every instance out at once. Results are cached for a few seconds per process, "
            "so probing often costs the dependencies nothing more."
        ),
        responses={200: HealthCheckSerializer, 503: HealthCheckSerializer},
        auth=[],
    )
    def get(self, request: Request) -> Response:
        return self.report_response(readiness=True)


class LivenessView(ProbeView):
    @extend_schema(
        operation_id="health_live_retrieve",
        tags=["Core APIs"],
        summary="Is this process alive?",
        description=(
            "For liveness probes and the container's health check. Answers from the process alone and "
            "touches no dependency, so an outage of Clerk, the database or the util service never "
            "restarts the fleet: 200 whenever the process can serve requests."
        ),
        responses={200: LivenessSerializer},
        auth=[],
    )
    def get(self, request: Request) -> Response:
        body: dict[str, object] = {
            "instance_id": health_settings.instance_id,
            "status": OverallStatus.OPERATIONAL.value,
        }
        return Response(serialized(LivenessSerializer, body))
