"""A URL conf for tests only: the real API plus a view that fails the way bugs do."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import include, path


def boom(request: HttpRequest) -> HttpResponse:
    raise ZeroDivisionError("an unhandled error")


urlpatterns = [
    path("api/v1/", include("core.urls")),
    path("boom/", boom),
    path("api/v1/boom/", boom),
]
