"""``/api/v1/``: the health probes and the API's own schema and docs.

The one definition of a probe: a path that resolves to a URL named in
:data:`PROBE_URL_NAMES`. The Sentry sampler, gunicorn's access log and the edge
middleware all ask :func:`is_probe_path`, so the no-slash variants count too.
"""

from __future__ import annotations

import functools

from django.core.signals import setting_changed
from django.urls import Resolver404, path, resolve
from drf_spectacular.views import SpectacularSwaggerView

from core.diagnostics import DiagnosticsView
from core.docs import OfflineRedocView, ServedSchemaView, redoc_bundle
from core.timeline_views import HealthEventsView, HealthFleetView, HealthHistoryView
from core.views import HealthView, LivenessView, ReadinessView

urlpatterns = [
    path("health/", HealthView.as_view(), name="health"),
    path("health/live/", LivenessView.as_view(), name="health-live"),
    path("health/ready/", ReadinessView.as_view(), name="health-ready"),
    # The same views without the slash, left out of the schema. The original's deploy
    # script polled /api/v1/health; and a redirect would be worse than useless for the
    # others: the kubelet counts any 3xx as a passing probe.
    path("health", HealthView.as_view(schema=None), name="health-noslash"),
    path("health/live", LivenessView.as_view(schema=None), name="health-live-noslash"),
    path("health/ready", ReadinessView.as_view(schema=None), name="health-ready-noslash"),
    # The timeline, the fleet and the change stream (issue 11).
    path("health/history/", HealthHistoryView.as_view(), name="health-history"),
    path("health/fleet/", HealthFleetView.as_view(), name="health-fleet"),
    path("health/events/", HealthEventsView.as_view(), name="health-events"),
    path("schema/", ServedSchemaView.as_view(), name="schema"),
    path("schema/swagger-ui/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("schema/redoc/", OfflineRedocView.as_view(url_name="schema"), name="redoc"),
    path("schema/redoc/redoc.standalone.js", redoc_bundle, name="redoc-bundle"),
    # Token-gated (HEALTH_DIAGNOSTICS_TOKEN); a 404 while none is configured.
    path("health/diagnostics/", DiagnosticsView.as_view(), name="health-diagnostics"),
]

#: The probes: never traced, not in the access log, answered whatever the ``Host``.
PROBE_URL_NAMES = frozenset(
    {"health", "health-live", "health-ready", "health-noslash", "health-live-noslash", "health-ready-noslash"}
)


@functools.lru_cache(maxsize=1024)
def is_probe_path(path_info: str) -> bool:
    """Whether ``path_info`` (from the site's root) is one of the probes."""
    try:
        match = resolve(path_info)
    except Resolver404:
        return False
    return match.url_name in PROBE_URL_NAMES


def _forget_probe_paths(*, setting: str, **kwargs: object) -> None:
    if setting == "ROOT_URLCONF":
        is_probe_path.cache_clear()


setting_changed.connect(_forget_probe_paths)
