"""The real URLs plus django-health-check's view with its database check (bench only)."""

from __future__ import annotations

from django.urls import include, path
from health_check.views import HealthCheckView

DJANGO_HEALTH_CHECK_PATH = "/bench/django-health-check/"

urlpatterns = [
    path("", include("letraz.urls")),
    path(
        DJANGO_HEALTH_CHECK_PATH.lstrip("/"),
        HealthCheckView.as_view(checks=["health_check.checks.Database"]),
        name="django-health-check",
    ),
]
