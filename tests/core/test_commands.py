"""``manage.py health`` and ``manage.py drain``, in process and as real subprocesses."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from tests.peers.clerk import FakeClerkAPI
from tests.peers.util_service import FakeUtilService, UtilMode
from tests.process.support import (
    ServerProcess,
    base_env,
    manage,
    migrated_database,
    peer_env,
    running_gunicorn,
)

COMPONENTS = ("sentry", "clerk", "db", "util_service")


# -- in process (call_command, tests.settings) -------------------------------------------


def run(command: str, *args: str) -> tuple[int, str, str]:
    """``call_command`` as the shell would see it: exit status, stdout, stderr."""
    out, err = StringIO(), StringIO()
    try:
        call_command(command, *args, stdout=out, stderr=err)
    except SystemExit as exc:
        code = int(exc.code or 0)
    except CommandError as exc:
        code = exc.returncode
        err.write(str(exc))
    else:
        code = 0
    return code, out.getvalue(), err.getvalue()


def parsed(stdout: str) -> dict[str, Any]:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    body = json.loads(lines[0])
    assert isinstance(body, dict)
    return body


@pytest.mark.django_db
def test_all_peers_healthy_exits_0_with_the_contracts_body(peers: Any) -> None:
    code, out, err = run("health")
    assert code == 0, err
    body = parsed(out)
    assert body == {
        "instance_id": body["instance_id"],
        "status": "OPERATIONAL",
        "details": {
            "sentry": "UNINITIALIZED",
            "clerk": "OPERATIONAL",
            "db": "OPERATIONAL",
            "util_service": "OPERATIONAL",
        },
    }
    assert err == ""


@pytest.mark.django_db
def test_an_unhealthy_util_service_exits_1_with_degraded(peers: Any, util_service: FakeUtilService) -> None:
    util_service.mode = UtilMode.UNHEALTHY
    code, out, err = run("health")
    assert code == 1
    body = parsed(out)
    assert body["status"] == "DEGRADED"
    assert body["details"]["util_service"] == "FAILED"
    assert tuple(body["details"]) == COMPONENTS
    # The reasons are in the server's logs, never in this output.
    assert err == ""


@pytest.mark.django_db
def test_component_reports_and_decides_on_that_component_only(peers: Any, util_service: FakeUtilService) -> None:
    util_service.mode = UtilMode.UNHEALTHY
    code, out, _ = run("health", "--component", "clerk")
    assert code == 0
    assert parsed(out) == {
        "instance_id": parsed(out)["instance_id"],
        "status": "OPERATIONAL",
        "details": {"clerk": "OPERATIONAL"},
    }

    code, out, _ = run("health", "--component", "util_service", "--component", "clerk")
    assert code == 1
    body = parsed(out)
    assert body["status"] == "DEGRADED"
    assert list(body["details"]) == ["clerk", "util_service"]  # the contract's order


def test_an_unknown_component_is_a_usage_error_naming_the_known_ones() -> None:
    code, out, err = run("health", "--component", "bogus")
    assert code == 2
    assert out == ""
    assert "'bogus'" in err
    for name in COMPONENTS:
        assert name in err


def test_a_configuration_error_exits_2_with_the_system_check_message() -> None:
    with override_settings(HEALTH_CHECK_TIMEOUT=-1):
        code, out, err = run("health")
    assert code == 2
    assert out == ""
    assert "health.E001" in err
    assert "?: (health.E001) HEALTH_CHECK_TIMEOUT is -1: expected a positive number of seconds, such as 0.5." in err


@pytest.mark.django_db
def test_wait_gives_up_with_1_once_its_time_has_passed(peers: Any, util_service: FakeUtilService) -> None:
    util_service.mode = UtilMode.UNHEALTHY
    started = time.monotonic()
    code, out, _ = run("health", "--wait", "0.5")
    elapsed = time.monotonic() - started
    assert code == 1
    assert parsed(out)["status"] == "DEGRADED"
    assert util_service.requests >= 2  # it did ask again
    # The wait, plus at most one more round of checks (0.5 s each), plus margin.
    assert 0.5 <= elapsed < 0.5 + 0.5 + 1.0


@pytest.mark.django_db
def test_quiet_prints_nothing_either_way(peers: Any, util_service: FakeUtilService) -> None:
    assert run("health", "--quiet") == (0, "", "")
    util_service.mode = UtilMode.UNHEALTHY
    assert run("health", "--quiet") == (1, "", "")


def test_drain_creates_and_undo_removes_the_file_both_idempotently(tmp_path: Path) -> None:
    drain_file = tmp_path / "drain"
    with override_settings(HEALTH_DRAIN_FILE=str(drain_file)):
        for _ in range(2):
            code, out, _ = run("drain")
            assert code == 0
            assert drain_file.exists()
            assert "draining" in out
        for _ in range(2):
            code, _, _ = run("drain", "--undo")
            assert code == 0
            assert not drain_file.exists()


def test_drain_without_a_drain_file_setting_exits_2() -> None:
    with override_settings(HEALTH_DRAIN_FILE=""):
        code, _, err = run("drain")
    assert code == 2
    assert "HEALTH_DRAIN_FILE" in err


# -- real subprocesses (letraz.settings, the environment a deploy gives) ------------------


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database(tmp_path_factory.mktemp("commands-db")) as url:
        yield url


@pytest.fixture
def cli_env(database_url: str, clerk_api: FakeClerkAPI, util_service: FakeUtilService) -> dict[str, str]:
    # 0.9 s, not 0.5 s: a fresh process on a shared, loaded machine (see the `peers`
    # fixture); under 1 s so that no system-check warning joins the output.
    return base_env(DATABASE_URL=database_url, HEALTH_CHECK_TIMEOUT="0.9", **peer_env(clerk_api, util_service))


def test_the_command_line_exits_0_when_all_is_well(cli_env: dict[str, str]) -> None:
    # -v 2 logs each component's first state with its reason, then the diagnostics: a
    # failure says why.
    done = manage(["health", "-v", "2"], cli_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert parsed(done.stdout)["status"] == "OPERATIONAL", done.stderr
    # Nothing but those lines and the diagnostics: no warning, no traceback.
    first_states = r"^\S+ \S+ INFO health (sentry|clerk|db|util_service) UNKNOWN -> (OPERATIONAL|UNINITIALIZED)\b.*$"
    lines = done.stderr.splitlines()
    assert all(re.match(first_states, line) for line in lines[:4]), done.stderr
    diagnostics = json.loads("\n".join(lines[4:]))
    states = {name: c["state"] for name, c in diagnostics["components"].items()}
    assert states == {
        "sentry": "UNINITIALIZED",
        "clerk": "OPERATIONAL",
        "db": "OPERATIONAL",
        "util_service": "OPERATIONAL",
    }
    assert "Traceback" not in done.stderr


def test_the_command_line_prints_nothing_on_stderr_by_default(cli_env: dict[str, str]) -> None:
    done = manage(["health"], cli_env)
    assert set(parsed(done.stdout)["details"]) == set(COMPONENTS)  # the status is the test above's
    assert done.stderr == ""


def test_the_command_line_exits_1_with_degraded_json_when_util_is_unhealthy(
    cli_env: dict[str, str], util_service: FakeUtilService
) -> None:
    util_service.mode = UtilMode.UNHEALTHY
    done = manage(["health"], cli_env)
    assert done.returncode == 1
    body = parsed(done.stdout)
    assert (body["status"], body["details"]["util_service"]) == ("DEGRADED", "FAILED")
    assert util_service.target not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--component", "bogus"], "known components: sentry, clerk, db, util_service"),
        (["--wait", "soon"], "--wait"),
        (["--wait", "-1"], "--wait"),
        (["--live", "ftp://example.invalid/"], "http:// or https://"),
        (["--live", "http://127.0.0.1:1/", "--component", "db"], "--component"),
        (["--no-such-option"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2(cli_env: dict[str, str], args: list[str], says: str) -> None:
    done = manage(["health", *args], cli_env)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert done.stdout == ""


def test_a_configuration_error_exits_2_on_the_command_line(cli_env: dict[str, str]) -> None:
    done = manage(["health"], cli_env | {"HEALTH_CHECK_TIMEOUT": "-1"})
    assert done.returncode == 2
    assert "health.E001" in done.stderr
    assert done.stdout == ""


def test_wait_succeeds_once_util_turns_healthy(cli_env: dict[str, str], util_service: FakeUtilService) -> None:
    util_service.mode = UtilMode.UNHEALTHY
    finished = threading.Event()

    def recover() -> None:
        # The peer runs in this process. It recovers about a second after the command
        # first asked it: counted from the request, not from the start of a process
        # whose start-up time depends on the machine's load.
        if util_service.wait_for_requests(1, timeout=30) and not finished.wait(1.0):
            util_service.mode = UtilMode.HEALTHY

    helper = threading.Thread(target=recover)
    helper.start()
    try:
        done = manage(["health", "--wait", "5"], cli_env)
    finally:
        finished.set()
        helper.join(timeout=5)
    assert done.returncode == 0, done.stdout + done.stderr
    assert parsed(done.stdout)["status"] == "OPERATIONAL"
    # Unhealthy at first, so it must have asked again.
    assert util_service.requests >= 2


def test_quiet_prints_nothing_on_the_command_line(cli_env: dict[str, str], util_service: FakeUtilService) -> None:
    util_service.mode = UtilMode.UNHEALTHY
    done = manage(["health", "--quiet"], cli_env)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "")


def test_drain_on_the_command_line_needs_the_setting(cli_env: dict[str, str], tmp_path: Path) -> None:
    done = manage(["drain"], cli_env)
    assert done.returncode == 2
    assert "HEALTH_DRAIN_FILE" in done.stderr

    env = cli_env | {"HEALTH_DRAIN_FILE": str(tmp_path / "drain")}
    assert manage(["drain"], env).returncode == 0
    assert (tmp_path / "drain").exists()
    assert manage(["drain", "--undo"], env).returncode == 0
    assert not (tmp_path / "drain").exists()


# -- --live: a real server over HTTP ---------------------------------------------------


@pytest.fixture
def web(cli_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[ServerProcess, int]]:
    # Live answers (no cache): the server's heartbeat keeps a cached result fresh, so a
    # dependency stopped during the test would otherwise show only after the TTL.
    live = {"WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "2", "HEALTH_CACHE_TTL": "0", "HEALTH_MAX_STALENESS": "0"}
    with running_gunicorn(cli_env | live, tmp_path / "web.log") as started:
        yield started


@pytest.mark.process
def test_live_asks_a_running_server(web: tuple[ServerProcess, int], cli_env: dict[str, str]) -> None:
    _, port = web
    done = manage(["health", "--live", f"http://127.0.0.1:{port}/api/v1/health/live/"], cli_env)
    assert done.returncode == 0, done.stderr
    assert parsed(done.stdout)["status"] == "OPERATIONAL"

    quiet = manage(["health", "--live", f"http://127.0.0.1:{port}/api/v1/health/live/", "--quiet"], cli_env)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


@pytest.fixture
def uncached_web(cli_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[ServerProcess, int]]:
    """A server whose readiness asks the dependencies on every probe.

    With the default cache a /ready/ probe right after a dependency broke may rightly
    answer from a result up to HEALTH_CACHE_TTL old (the worker's warm-up made one):
    a test that needs the break seen at once must not run with a cache.
    """
    env = cli_env | {"WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "2", "HEALTH_CACHE_TTL": "0"}
    with running_gunicorn(env | {"HEALTH_MAX_STALENESS": "0"}, tmp_path / "web.log") as started:
        yield started


@pytest.mark.process
def test_live_touches_no_dependency_so_a_broken_one_does_not_fail_it(
    uncached_web: tuple[ServerProcess, int], cli_env: dict[str, str], util_service: FakeUtilService
) -> None:
    _, port = uncached_web
    util_service.stop()
    util_service.reset_count()
    done = manage(["health", "--live", f"http://127.0.0.1:{port}/api/v1/health/live/"], cli_env)
    assert done.returncode == 0, done.stderr
    # Against a URL that does check the dependencies, the same probe fails.
    ready = manage(["health", "--live", f"http://127.0.0.1:{port}/api/v1/health/"], cli_env)
    assert ready.returncode == 1
    assert "HTTP 503" in ready.stderr


def test_live_against_a_closed_port_exits_1_without_naming_the_host(cli_env: dict[str, str], closed_port: int) -> None:
    done = manage(["health", "--live", f"http://127.0.0.1:{closed_port}/api/v1/health/live/"], cli_env)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == "health: the server could not be asked (ConnectionRefusedError)"
    assert str(closed_port) not in done.stderr
