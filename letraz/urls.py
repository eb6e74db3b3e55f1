"""Root URLs: everything public lives under ``/api/v1/``; ``/metrics`` for Prometheus."""

from __future__ import annotations

from django.urls import include, path

from letraz.metrics import metrics_view

urlpatterns = [
    path("api/v1/", include("core.urls")),
    # A plain Django view: not part of the API, so not in the schema.
    path("metrics", metrics_view, name="metrics"),
]
