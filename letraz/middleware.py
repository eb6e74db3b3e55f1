"""Say who answers: every response carries the service's version."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase

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
