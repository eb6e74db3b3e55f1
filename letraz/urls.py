"""Root URLs: everything public lives under ``/api/v1/``."""

from __future__ import annotations

from django.urls import include, path

from core.timeline_views import StatusPageView

urlpatterns = [
    path("api/v1/", include("core.urls")),
    path("status/", StatusPageView.as_view(), name="status"),
]
