"""gunicorn.conf.py: the serving model and forwarded-header trust are set on purpose."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import Config

from letraz.gunicorn_worker import HEADER_READ_TIMEOUT

CONF = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"


def loaded(monkeypatch: pytest.MonkeyPatch, **environ: str) -> Config:
    """The file as gunicorn reads it: every module-level name that is a setting."""
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    namespace: dict[str, Any] = runpy.run_path(str(CONF))
    config = Config()
    for name, value in namespace.items():
        if name in config.settings:
            config.set(name, value)
    return config


def test_an_event_loop_reads_requests_and_threads_run_django(monkeypatch: pytest.MonkeyPatch) -> None:
    config = loaded(monkeypatch, GUNICORN_THREADS="6", HEALTH_STREAM_MAX="4")
    assert config.worker_class_str == "letraz.gunicorn_worker.ThreadedWSGIWorker"
    assert config.threads == 6 + 4  # the change streams' threads come on top of the requests'
    assert (config.keepalive, HEADER_READ_TIMEOUT) == (5, 5.0)


def test_forwarded_headers_are_trusted_from_nobody_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    config = loaded(monkeypatch)
    assert config.forwarded_allow_ips == []
    assert config.forwarder_headers == []  # never SCRIPT_NAME or PATH_INFO from a header
    assert config.header_map == "drop"


def test_the_trusted_proxies_come_from_forwarded_allow_ips(monkeypatch: pytest.MonkeyPatch) -> None:
    config = loaded(monkeypatch, FORWARDED_ALLOW_IPS="10.0.0.0/8,127.0.0.1")
    assert config.forwarded_allow_ips == ["10.0.0.0/8", "127.0.0.1"]
