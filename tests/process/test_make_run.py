"""`make run`, the README's first command: it serves even when the database hangs,
checks the configuration before anything else, and needs only Python and make."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers.tcp import BlackholeListener
from tests.process.support import REPO, base_env, free_port, http_request, running

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
        # Development mode (debug pages on) is for this machine only.
        assert f"Listening at: http://127.0.0.1:{port} " in make.output
    assert status == 503  # no Clerk key, no util service: as the README says
    assert json.loads(raw)["details"] == {
        "sentry": "UNINITIALIZED",
        "clerk": "DOWN",
        "db": "OPERATIONAL",
        "util_service": "DISCONNECTED",
    }


def path_without_gnu_timeout(directory: Path) -> str:
    """A PATH with every program of this one except ``timeout`` (as on stock macOS)."""
    directory.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            target = os.path.join(folder, name)
            if name != "timeout" and not (directory / name).exists() and os.access(target, os.X_OK):
                (directory / name).symlink_to(target)
    base_python = Path(sys.executable).resolve()
    if not (directory / "python3.11").exists():
        (directory / "python3.11").symlink_to(base_python)
    return str(directory)


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None, reason="make or git is missing")
@pytest.mark.timeout(360)  # a fresh venv and the runtime lock: pip takes its time on a loaded machine
def test_make_run_on_a_fresh_clone_with_a_broken_setting_stops_with_one_message(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=60)
    env = base_env(HEALTH_CHECK_TIMEOUT="abc", PATH=path_without_gnu_timeout(tmp_path / "bin"))
    env.pop("DJANGO_SECRET_KEY")
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        ["make", "--no-print-directory", "run"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    lines = [line for line in output.splitlines() if line.startswith("make run:")]
    assert lines == [
        "make run: not starting: (letraz.E004) HEALTH_CHECK_TIMEOUT is 'abc': "
        "expected a number of seconds, such as 0.5."
    ], output
    assert "migrations" not in output and "Starting gunicorn" not in output, output
    assert "Traceback" not in output, output
    # Only the runtime lock was installed: no linters or test tools in the clone's venv.
    installed = {p.name.split("-")[0].lower() for p in (clone / ".venv/lib").glob("python3*/site-packages/*.dist-info")}
    assert {"django", "gunicorn", "grpcio"} <= installed
    assert not installed & {"ruff", "mypy", "pytest", "playwright"}, installed


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_listens_where_bind_host_says(tmp_path: Path) -> None:
    port = free_port()
    env = base_env(PORT=str(port), DATABASE_URL=f"sqlite:///{tmp_path / 'b.sqlite3'}", WEB_CONCURRENCY="1")
    env.pop("DJANGO_SECRET_KEY")
    env["BIND_HOST"] = "0.0.0.0"  # noqa: S104 (told otherwise, on purpose)
    with running(["make", "--no-print-directory", "run"], env, tmp_path / "make-run.log") as make:
        make.wait_for_port(port, timeout=90)
        assert f"Listening at: http://0.0.0.0:{port} " in make.output, make.output
