"""Every response: which version answered, and for ``HEAD``, no body."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBase

from letraz.version import SERVICE_VERSION

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
