"""``/api/v1/``: the health probes and the API's own schema and docs."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from core.diagnostics import DiagnosticsView
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
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("schema/swagger-ui/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("schema/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    # Token-gated (HEALTH_DIAGNOSTICS_TOKEN); a 404 while none is configured.
    path("health/diagnostics/", DiagnosticsView.as_view(), name="health-diagnostics"),
]
