"""Log formats: plain text by default, one JSON object per line with ``LOG_FORMAT=json``.

The same formatter serves the app (Django's ``LOGGING``), gunicorn's error log and its
access log (``gunicorn.conf.py`` hands :func:`gunicorn_logconfig` to gunicorn), so a log
pipeline parses every line of the web process the same way. python-json-logger writes
the JSON; this module only says which fields go in:

* always ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``process`` and
  ``instance_id`` (the id in every health answer);
* on a health change, ``component``, ``previous_state``, ``state`` and ``reason`` (the
  service logs them as record fields);
* on an access line, ``method``, ``path``, ``query``, ``status``, ``duration_ms``,
  ``bytes``, ``remote_addr`` and ``user_agent``;
* ``exc_info`` with the traceback, escaped into the one line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

from letraz.env import Env, shown

LOG_FORMATS = ("text", "json")
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

#: gunicorn's access-log atoms worth a key of their own, and the key.
ACCESS_FIELDS = {
    "m": "method",
    "U": "path",
    "q": "query",
    "s": "status",
    "M": "duration_ms",
    "B": "bytes",
    "h": "remote_addr",
    "a": "user_agent",
}


def parse_log_format(source: Env) -> str:
    """``LOG_FORMAT``: ``text`` or ``json`` (any case).

    Anything else is a malformed variable like any other (``letraz.E004``: the server
    refuses to start with one line) and means text meanwhile.
    """
    value = source.string("LOG_FORMAT", "text")
    lowered = value.lower()
    if lowered not in LOG_FORMATS:
        source.report("LOG_FORMAT", shown(value), " or ".join(LOG_FORMATS))
        return "text"
    return lowered


def current_instance_id() -> str:
    """The instance id from the health settings; empty while settings cannot be read yet."""
    try:
        from health.conf import health_settings

        return health_settings.instance_id
    except Exception:  # In gunicorn's master before Django is set up: no id rather than no log.
        return ""


class InstanceIdFilter(logging.Filter):
    """Adds ``instance_id`` to every record, so lines from all workers and both processes join up."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "instance_id"):
            record.instance_id = current_instance_id()
        return True


class JsonFormatter(_LibraryJsonFormatter):
    """python-json-logger with this project's field names; extra record fields become keys."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("fmt", ["levelname", "name", "message", "process"])
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("timestamp", "time")
        super().__init__(*args, **kwargs)


class AccessJsonFormatter(JsonFormatter):
    """gunicorn's access line as JSON: the usual line in ``message``, its parts as keys."""

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        atoms = record.args
        if isinstance(atoms, Mapping):
            for atom, key in ACCESS_FIELDS.items():
                value = atoms.get(atom)
                if value not in (None, "-", ""):
                    log_data[key] = _number_or_text(key, value)


def _number_or_text(key: str, value: Any) -> Any:
    if key in ("status", "duration_ms", "bytes"):
        try:
            return int(value)
        except (TypeError, ValueError):
            return value
    return value


_FORMATTERS: dict[str, dict[str, Any]] = {
    "text": {"format": PLAIN_FORMAT},
    "json": {"()": "letraz.logging.JsonFormatter"},
}


def logging_config(log_format: str) -> dict[str, Any]:
    """Django's ``LOGGING``: one console handler; the health change lines at INFO."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"instance_id": {"()": "letraz.logging.InstanceIdFilter"}},
        "formatters": {"default": _FORMATTERS[log_format]},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "default", "filters": ["instance_id"]},
        },
        "root": {"handlers": ["console"], "level": "WARNING"},
        "loggers": {"health": {"level": "INFO", "propagate": True}},
    }


def gunicorn_logconfig(log_format: str) -> dict[str, Any]:
    """The ``logconfig_dict`` gunicorn gets for JSON: error log on stderr, access log on stdout.

    Empty for text, which leaves gunicorn's own format as it always was.
    """
    if log_format != "json":
        return {}
    handler: dict[str, Any] = {"class": "logging.StreamHandler", "filters": ["instance_id"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"instance_id": {"()": "letraz.logging.InstanceIdFilter"}},
        "formatters": {
            "json": {"()": "letraz.logging.JsonFormatter"},
            "access_json": {"()": "letraz.logging.AccessJsonFormatter"},
        },
        "handlers": {
            "error_console": handler | {"formatter": "json", "stream": "ext://sys.stderr"},
            "access_console": handler | {"formatter": "access_json", "stream": "ext://sys.stdout"},
        },
        # Until Django's LOGGING takes over (on_starting, and each worker's start).
        "root": {"level": "WARNING", "handlers": ["error_console"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["access_console"], "propagate": False},
        },
    }
