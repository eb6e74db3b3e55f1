"""`make run`, the README's first command: it serves even when the database hangs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.peers.tcp import BlackholeListener
from tests.process.support import base_env, free_port, http_request, running

pytestmark = pytest.mark.process


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_says_the_database_is_down_and_serves_anyway(tmp_path: Path, blackhole: BlackholeListener) -> None:
    port = free_port()
    env = base_env(PORT=str(port), DATABASE_URL=f"postgres://u@127.0.0.1:{blackhole.port}/letraz", WEB_CONCURRENCY="1")
    env.pop("DJANGO_SECRET_KEY")  # as on a fresh clone: make run falls back to development mode
    with running(["make", "--no-print-directory", "run"], env, tmp_path / "make-run.log") as make:
        make.wait_for_port(port, timeout=90)  # migrate gives up after connect_timeout (3 s)
        status, _, raw = http_request(port, "/api/v1/health/")
        assert "migrations did not run" in make.output
    assert status == 503
    body = json.loads(raw)
    assert body["details"]["db"] == "FATAL"
    assert body["status"] == "DEGRADED"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_migrates_sqlite_and_reports_the_database_operational(tmp_path: Path) -> None:
    port = free_port()
    env = base_env(PORT=str(port), DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.sqlite3'}", WEB_CONCURRENCY="1")
    env.pop("DJANGO_SECRET_KEY")
    with running(["make", "--no-print-directory", "run"], env, tmp_path / "make-run.log") as make:
        make.wait_for_port(port, timeout=90)
        status, _, raw = http_request(port, "/api/v1/health/")
    assert status == 503  # no Clerk key, no util service: as the README says
    assert json.loads(raw)["details"] == {
        "sentry": "UNINITIALIZED",
        "clerk": "DOWN",
        "db": "OPERATIONAL",
        "util_service": "DISCONNECTED",
    }
