"""The real server says which version it is: at start in its log, and on every answer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from letraz.version import SERVICE_VERSION
from tests.process.support import base_env, http_request, running_gunicorn

pytestmark = pytest.mark.process


def test_gunicorn_logs_the_version_at_start_and_sends_it_on_every_answer(tmp_path: Path) -> None:
    env = base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'v.sqlite3'}", WEB_CONCURRENCY="1")
    with running_gunicorn(env, tmp_path / "gunicorn.log") as (server, port):
        server.wait_for_line(rf"(?m)Starting letraz-health {re.escape(SERVICE_VERSION)}$", timeout=30)
        status, headers, _ = http_request(port, "/api/v1/health/live/")
    assert status == 200
    assert headers["x-letraz-version"] == SERVICE_VERSION
