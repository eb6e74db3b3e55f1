"""Root URLs: everything public lives under ``/api/v1/``."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [
    path("api/v1/", include("core.urls")),
]
