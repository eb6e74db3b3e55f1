"""``/api/v1/``: the health probes and the API's own schema and docs."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from core.timeline_views import HealthEventsView, HealthFleetView, HealthHistoryView
from core.views import HealthView, LivenessView, ReadinessView

urlpatterns = [
    path("health/", HealthView.as_view(), name="health"),
    path("health/live/", LivenessView.as_view(), name="health-live"),
    path("health/ready/", ReadinessView.as_view(), name="health-ready"),
    # The same views without the slash, left out of the schema. The original's deploy
    # script polled /api/v1/health; and a redirect would be worse than useless for the
    # others: the kubelet counts any 3xx as a passing probe.
    path("health", HealthView.as_view(schema=None)),
    path("health/live", LivenessView.as_view(schema=None)),
    path("health/ready", ReadinessView.as_view(schema=None)),
    # The timeline, the fleet and the change stream (issue 11).
    path("health/history/", HealthHistoryView.as_view(), name="health-history"),
    path("health/fleet/", HealthFleetView.as_view(), name="health-fleet"),
    path("health/events/", HealthEventsView.as_view(), name="health-events"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("schema/swagger-ui/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("schema/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
]
