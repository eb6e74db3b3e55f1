"""The edge of the application: who answers, HEAD without a body, hostile requests.

Hostile requests get a short answer and nothing else.

:class:`ServiceVersionHeader` (outermost) puts ``X-Letraz-Version`` on every response;
:class:`HeadWithoutBody` strips ``HEAD`` bodies so gunicorn never warns about them.

:class:`EdgeMiddleware` runs next:

* a probe (``core.urls.is_probe_path``) is answered whatever its ``Host``: the kubelet
  sends the pod IP, Docker's health check ``127.0.0.1``; neither is a name the public
  should use, and ``ALLOWED_HOSTS`` is not loosened for anything else;
* any other request whose ``Host`` is not allowed, or that carries forwarded headers
  (``X-Forwarded-*``, ``Forwarded``) from a peer not in ``FORWARDED_ALLOW_IPS``, gets a
  400 and one WARNING line, no traceback, no Sentry event (Django's own path would
  log an ERROR with a traceback, which Sentry sends: anyone could write to our Sentry);
* under ``/api/`` every error answer is JSON in DRF's shape, ``{"detail": ...}``, in
  production and in DEBUG alike, so no traceback page is ever served there.

:class:`HostileRequestLogFilter` turns the ``django.security.*`` records Django makes for
other suspicious requests into one WARNING line without a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.views.defaults import bad_request

from core.urls import is_probe_path
from letraz.proxies import FORWARDED_HEADERS, is_trusted
from letraz.version import SERVICE_VERSION

logger = logging.getLogger("letraz.edge")

API_PREFIX = "/api/"
#: DRF's default texts, so that every error under /api/ reads alike.
ERROR_DETAILS = {
    400: "Malformed request.",
    401: "Authentication credentials were not provided.",
    403: "You do not have permission to perform this action.",
    404: "Not found.",
    405: "Method not allowed.",
    406: "Could not satisfy the request Accept header.",
    413: "Request entity too large.",
    415: "Unsupported media type in request.",
    429: "Request was throttled.",
    500: "A server error occurred.",
}
#: Headers of an error answer that still mean something once its body is JSON.
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


def json_error(status: int, detail: str) -> JsonResponse:
    """DRF's error body, as compact as its renderer writes it, with its length."""
    response = JsonResponse({"detail": detail}, status=status, json_dumps_params={"separators": (",", ":")})
    response["Content-Length"] = str(len(response.content))
    return response


def _printable(value: str, limit: int = 100) -> str:
    """A request value for a log line: no control characters, bounded."""
    return repr(value[:limit])


class EdgeMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if is_probe_path(request.path_info):
            # A probe reads no host: its answer is the same whoever asks, under any name.
            request.get_host = request._get_raw_host  # type: ignore[method-assign,attr-defined]
            return self.as_json_under_api(request, self.get_response(request))
        peer = request.META.get("REMOTE_ADDR", "")
        forwarded = [name for name in FORWARDED_HEADERS if name in request.META]
        if forwarded and not is_trusted(peer, tuple(settings.FORWARDED_ALLOW_IPS)):
            return self.refuse(request, f"forwarded header {forwarded[0][5:]} from untrusted peer {_printable(peer)}")
        try:
            request.get_host()
        except DisallowedHost:
            host = request.META.get("HTTP_HOST")
            return self.refuse(request, "no Host header" if host is None else f"Host {_printable(host)} not allowed")
        return self.as_json_under_api(request, self.get_response(request))

    @staticmethod
    def refuse(request: HttpRequest, reason: str) -> HttpResponseBase:
        logger.warning("Refused %s %s: %s", request.method, _printable(request.path_info), reason)
        if request.path_info.startswith(API_PREFIX):
            response: HttpResponseBase = json_error(400, ERROR_DETAILS[400])
        else:
            response = bad_request(request, DisallowedHost(reason))
        response._has_been_logged = True  # type: ignore[attr-defined]
        return response

    @staticmethod
    def as_json_under_api(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        """An error answer under /api/ that is not JSON (Django's pages) becomes DRF's shape."""
        if (
            response.status_code < 400
            or not request.path_info.startswith(API_PREFIX)
            or response.get("Content-Type", "").startswith("application/json")
        ):
            return response
        detail = ERROR_DETAILS.get(response.status_code, ERROR_DETAILS[500 if response.status_code >= 500 else 400])
        replacement = json_error(response.status_code, detail)
        for name in _KEPT_HEADERS:
            if name in response:
                replacement[name] = response[name]
        replacement._has_been_logged = getattr(response, "_has_been_logged", False)  # type: ignore[attr-defined]
        return replacement


class HostileRequestLogFilter(logging.Filter):
    """``django.security.*`` records: one WARNING line, no traceback (on the console handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("django.security.") and record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


#: The header, on every response (the probes' included): which release answered, so that a
#: rollout can be watched from the outside and a report tied to the code that made it.
VERSION_HEADER = "X-Letraz-Version"


class ServiceVersionHeader:
    """Outermost middleware: errors and Django's own pages carry the header too."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        response[VERSION_HEADER] = SERVICE_VERSION
        return response


class HeadWithoutBody:
    """``HEAD`` gets the headers ``GET`` would get, ``Content-Length`` included, and no body.

    Django's WSGI handler sends the body of a ``HEAD`` answer; gunicorn drops it and logs
    "WSGI app sent body bytes on a no-body response" for every docs page so asked.
    Streaming answers (static files) handle ``HEAD`` themselves and are left alone.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if request.method == "HEAD" and isinstance(response, HttpResponse) and response.content:
            response["Content-Length"] = str(len(response.content))
            response.content = b""
        return response
