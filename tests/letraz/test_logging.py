"""``LOG_FORMAT=json``: one JSON object per line, with the fields a log pipeline indexes."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client, override_settings

from health.service import get_health_service
from letraz.env import Env
from letraz.logging import (
    AccessJsonFormatter,
    InstanceIdFilter,
    JsonFormatter,
    gunicorn_logconfig,
    logging_config,
    parse_log_format,
)


@pytest.fixture(autouse=True)
def patient_checks() -> Iterator[None]:
    """A loaded 2-core machine can take longer than 0.5 s for a first call; time limits are not tested here."""
    with override_settings(HEALTH_CHECK_TIMEOUT=3.0):
        yield


@pytest.fixture
def health_json_lines() -> Iterator[io.StringIO]:
    """The ``health`` logger also writes JSON into a buffer for the test's duration."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(InstanceIdFilter())
    logger = logging.getLogger("health")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.django_db
def test_a_change_of_state_is_one_json_line_with_component_states_and_reason(
    client: Client, peers: Any, health_json_lines: io.StringIO
) -> None:
    clerk, _ = peers
    with override_settings(INSTANCE_ID="json-instance"):
        client.get("/api/v1/health/")
        clerk.mode = "unauthorized"
        client.get("/api/v1/health/")
        assert get_health_service().flush_notifications(10)  # lines come from the notifier thread
    [change] = [line for line in lines(health_json_lines) if line.get("state") == "DOWN"]
    assert change["level"] == "WARNING"
    assert change["logger"] == "health"
    assert change["message"] == "clerk OPERATIONAL -> DOWN (HTTP 401 (key rejected: check CLERK_SECRET_KEY))"
    assert (change["component"], change["previous_state"], change["state"], change["reason"]) == (
        "clerk",
        "OPERATIONAL",
        "DOWN",
        "HTTP 401 (key rejected: check CLERK_SECRET_KEY)",
    )
    assert change["instance_id"] == "json-instance"
    assert change["time"].endswith("+00:00")
    assert isinstance(change["process"], int)
    assert clerk.secret_key not in health_json_lines.getvalue()


def test_a_traceback_stays_inside_its_one_line() -> None:
    record = logging.LogRecord("health", logging.WARNING, __file__, 1, "db OPERATIONAL -> FATAL", None, None)
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        record.exc_info = sys.exc_info()
    text = JsonFormatter().format(record)
    assert "\n" not in text
    assert "ZeroDivisionError" in json.loads(text)["exc_info"]


def test_an_access_line_keeps_gunicorns_text_and_adds_its_parts() -> None:
    atoms = {"m": "GET", "U": "/metrics", "q": "", "s": "200", "M": 3, "B": 812, "h": "127.0.0.1", "a": "curl/8"}
    record = logging.LogRecord(
        "gunicorn.access", logging.INFO, __file__, 1, '%(h)s "%(m)s %(U)s" %(s)s', (atoms,), None
    )
    line = json.loads(AccessJsonFormatter().format(record))
    assert line["message"] == '127.0.0.1 "GET /metrics" 200'
    assert (line["method"], line["path"], line["status"], line["duration_ms"], line["bytes"]) == (
        "GET",
        "/metrics",
        200,
        3,
        812,
    )
    assert "query" not in line  # empty atoms are left out


def test_log_format_is_text_or_json_and_anything_else_is_a_reported_problem() -> None:
    assert parse_log_format(Env({"LOG_FORMAT": ""})) == "text"
    assert parse_log_format(Env({"LOG_FORMAT": "JSON"})) == "json"
    source = Env({"LOG_FORMAT": "xml"})
    assert parse_log_format(source) == "text"
    assert [p.message for p in source.problems] == ["LOG_FORMAT is 'xml': expected text or json."]


def test_text_stays_the_default_and_leaves_gunicorn_alone() -> None:
    assert logging_config("text")["formatters"]["default"] == {
        "format": "%(asctime)s %(levelname)s %(name)s %(message)s"
    }
    assert gunicorn_logconfig("text") == {}
    config = gunicorn_logconfig("json")
    assert {name: logger["propagate"] for name, logger in config["loggers"].items()} == {
        "gunicorn.error": False,
        "gunicorn.access": False,
    }
