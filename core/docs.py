"""The schema and the docs pages, made to work where they are served, with no internet.

- The served schema lists *this* server first, as a path (``/api/v1``, under any
  ``SCRIPT_NAME`` a proxy sets), so Swagger UI's "Try it out" asks the server that
  served the page, on any host and port. The contract's servers follow it; the
  committed ``openapi.yaml`` (``manage.py spectacular``) does not pass through here and
  stays equal to the contract.
- Redoc's page links no Google Fonts (``core/templates/core/redoc.html``), and its
  bundle, which draws a logo from Redoc's CDN in the sidebar, is served with that one
  address pointed at a local file. Swagger UI's online validator badge is off in
  ``SPECTACULAR_SETTINGS``.
"""

from __future__ import annotations

import functools
from typing import Any

from django.contrib.staticfiles import finders
from django.contrib.staticfiles.storage import staticfiles_storage
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.views.decorators.http import require_safe
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView
from rest_framework.request import Request
from rest_framework.response import Response

#: The one outside address in Redoc's bundle that a page view fetches (the sidebar's logo).
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
REDOC_BUNDLE = "drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js"
LOCAL_LOGO = "core/docs-logo.svg"


class ServedSchemaView(SpectacularAPIView):
    """The schema, with the server that serves it first in ``servers``."""

    def _get_schema_response(self, request: Request) -> Response:
        response: Response = super()._get_schema_response(request)  # type: ignore[no-untyped-call]
        schema: dict[str, Any] = response.data
        # The paths are trimmed of SCHEMA_PATH_PREFIX (/api/v1); the schema's own URL
        # ends in that prefix plus "schema/", and carries the script prefix.
        here = {"url": reverse("schema").removesuffix("schema/").rstrip("/"), "description": "This server"}
        others = [server for server in schema.get("servers", []) if server.get("url") != here["url"]]
        schema["servers"] = [here, *others]
        return response


class OfflineRedocView(SpectacularRedocView):
    template_name = "core/redoc.html"

    @staticmethod
    def _redoc_standalone() -> str:
        return reverse("redoc-bundle")


@functools.cache
def _offline_redoc_bundle() -> bytes:
    path = finders.find(REDOC_BUNDLE)
    if not isinstance(path, str):
        raise FileNotFoundError(REDOC_BUNDLE)
    with open(path, "rb") as file:
        bundle = file.read()
    # A local address: the logo is fetched from this server (static files), never the CDN.
    return bundle.replace(REDOC_CDN_LOGO, staticfiles_storage.url(LOCAL_LOGO).encode())


@require_safe
def redoc_bundle(request: HttpRequest) -> HttpResponse:
    """drf-spectacular-sidecar's Redoc bundle with its CDN logo pointed at a local file."""
    response = HttpResponse(_offline_redoc_bundle(), content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = "public, max-age=3600"
    return response
