"""The edge: probes answer whatever the Host, hostile requests get a short 400, /api/ errors are JSON."""

from __future__ import annotations

import json
import logging

import pytest
from django.test import Client, override_settings

from core.urls import PROBE_URL_NAMES, is_probe_path
from letraz.middleware import HostileRequestLogFilter

LIVE = "/api/v1/health/live/"
SCHEMA = "/api/v1/schema/"
PROBES = ["/api/v1/health/", "/api/v1/health/live/", "/api/v1/health/ready/", "/api/v1/health", "/api/v1/health/live"]


def edge_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(("letraz.edge", "django"))]


def test_every_probe_url_name_resolves_and_nothing_else_is_a_probe() -> None:
    assert {p for p in PROBES if is_probe_path(p)} == set(PROBES)
    assert len(PROBE_URL_NAMES) == 6
    assert not is_probe_path("/api/v1/schema/")
    assert not is_probe_path("/api/v1/health/live/extra/")


@pytest.mark.parametrize("host", ["10.42.0.17:8000", "127.0.0.1:8000", "evil.com", "[fd00::5]:8000", "bad host!"])
@pytest.mark.parametrize("path", ["/api/v1/health/live/", "/api/v1/health/live"])
@override_settings(ALLOWED_HOSTS=["api.example.com"])
def test_a_probe_answers_whatever_the_host(client: Client, host: str, path: str) -> None:
    response = client.get(path, HTTP_HOST=host)
    assert response.status_code == 200, response.content
    assert json.loads(response.content)["status"] == "OPERATIONAL"


@override_settings(ALLOWED_HOSTS=["api.example.com"])
def test_a_disallowed_host_elsewhere_is_one_warning_line_and_a_json_400_under_api(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        response = client.get(SCHEMA, HTTP_HOST="evil.com")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == {"detail": "Malformed request."}
    [record] = edge_records(caplog)
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "evil.com" in record.getMessage() and "not allowed" in record.getMessage()
    assert client.get(SCHEMA, HTTP_HOST="api.example.com").status_code == 200


@override_settings(ALLOWED_HOSTS=["api.example.com"])
def test_outside_api_a_disallowed_host_keeps_djangos_own_400(client: Client) -> None:
    response = client.get("/static/nothing.css", HTTP_HOST="evil.com")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")


def test_forwarded_headers_from_an_untrusted_peer_are_a_400(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        response = client.get(SCHEMA, HTTP_X_FORWARDED_PROTO="https", REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 400
    assert json.loads(response.content) == {"detail": "Malformed request."}
    [record] = edge_records(caplog)
    assert "X_FORWARDED_PROTO" in record.getMessage() and record.exc_info is None


@override_settings(FORWARDED_ALLOW_IPS=("10.0.0.0/8",))
def test_forwarded_headers_from_a_trusted_proxy_are_honoured(client: Client) -> None:
    response = client.get(SCHEMA, HTTP_X_FORWARDED_PROTO="https", REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 200
    assert client.get(SCHEMA, HTTP_X_FORWARDED_FOR="1.2.3.4", REMOTE_ADDR="192.0.2.1").status_code == 400


def test_a_probe_ignores_forwarded_headers_from_anyone(client: Client) -> None:
    assert client.get(LIVE, HTTP_X_FORWARDED_FOR="1.2.3.4", REMOTE_ADDR="203.0.113.9").status_code == 200


@pytest.mark.parametrize("debug", [False, True])
def test_an_unknown_api_path_is_a_json_404_in_any_mode(client: Client, debug: bool) -> None:
    with override_settings(DEBUG=debug):
        response = client.get("/api/v1/nothing-here/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == {"detail": "Not found."}


def test_outside_api_a_404_keeps_djangos_page(client: Client) -> None:
    response = client.get("/nothing-here/")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("debug", [False, True])
def test_a_server_error_under_api_is_json_without_a_traceback_in_any_mode(debug: bool) -> None:
    client = Client(raise_request_exception=False)
    with override_settings(DEBUG=debug, ROOT_URLCONF="tests.letraz.boom_urls"):
        response = client.get("/api/v1/boom/")
    assert response.status_code == 500
    assert json.loads(response.content) == {"detail": "A server error occurred."}
    assert b"Traceback" not in response.content and b"ZeroDivision" not in response.content


def test_a_405_under_api_stays_json_with_its_allow_header(client: Client) -> None:
    response = client.post(LIVE)
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
    assert "detail" in json.loads(response.content)


def test_djangos_suspicious_request_records_become_one_warning_without_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        exc_info = (type(exc), exc, None)
        record = logging.LogRecord("django.security.DisallowedHost", logging.ERROR, __file__, 1, "Bad", None, exc_info)
    other = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "Internal Server Error", None, None)
    log_filter = HostileRequestLogFilter()
    assert log_filter.filter(record) and log_filter.filter(other)
    assert (record.levelname, record.exc_info) == ("WARNING", None)
    assert other.levelname == "ERROR"
