"""The process helpers themselves: servers started by tests die with the test run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.leaks import mentions
from tests.process.support import REPO, ServerProcess, base_env

#: A stand-in for a test run: starts a "server" through ServerProcess, says its pid, waits.
_TEST_RUN = """
import sys, time
from pathlib import Path
from tests.process.support import ServerProcess, base_env
server = ServerProcess([sys.executable, "-c", "import time; time.sleep(120)"], base_env(), Path(sys.argv[1]))
print(server.popen.pid, flush=True)
time.sleep(120)
"""


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie waiting for its (dead) parent's reaper counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.process
def test_a_server_dies_when_the_test_run_is_killed_without_any_teardown(tmp_path: os.PathLike[str]) -> None:
    run = subprocess.Popen(
        [sys.executable, "-c", _TEST_RUN, str(tmp_path / "server.log")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    try:
        assert run.stdout is not None
        server_pid = int(run.stdout.readline())
        assert not gone(server_pid)
        run.send_signal(signal.SIGKILL)  # what a CI timeout does: no teardown, no atexit
        run.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not gone(server_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(server_pid), f"server {server_pid} outlived the test run"
    finally:
        run.kill()
        run.wait(timeout=10)


#: A test for a parallel run (``make test``: pytest-xdist) to hold: its worker's pid and
#: its server's, then a wait that only a kill ends.
_HOLDING_TEST = """
import os, sys, time
from pathlib import Path
from tests.process.support import ServerProcess, base_env

def test_hold(tmp_path):
    server = ServerProcess([sys.executable, "-c", "import time; time.sleep(120)"], base_env(), tmp_path / "server.log")
    written = Path(os.environ["PIDS_FILE"] + ".part")
    written.write_text(f"{os.getpid()} {server.popen.pid}")
    written.rename(os.environ["PIDS_FILE"])  # whole when it appears
    time.sleep(120)
"""


@pytest.mark.process
def test_a_parallel_run_killed_without_any_teardown_takes_its_workers_and_servers_along(tmp_path: Path) -> None:
    test_file = tmp_path / "test_hold.py"
    test_file.write_text(_HOLDING_TEST)
    pids_file = tmp_path / "pids"
    # The xdist controller, as make test starts it, with this suite's plugin for it.
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-n", "1", "-c", os.devnull, "-p", "no:django", "-p", "no:cacheprovider"]
        + ["-p", "tests.die_with_run"]
        + ["--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "basetemp"), str(test_file)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ | {"PYTHONPATH": str(REPO), "PIDS_FILE": str(pids_file)},
    )
    try:
        deadline = time.monotonic() + 60
        while not pids_file.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pids_file.exists(), f"the inner run never started its server (exit {run.poll()})"
        worker_pid, server_pid = (int(pid) for pid in pids_file.read_text().split())
        assert worker_pid != run.pid and not gone(worker_pid) and not gone(server_pid)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
        # The kernel kills both at once (tests/die_with_run.py). 4 s is far more than that
        # takes, and less than execnet's own give-up ever takes (5 s at least).
        deadline = time.monotonic() + 4
        while not (gone(worker_pid) and gone(server_pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(worker_pid), f"xdist worker {worker_pid} outlived the killed run"
        assert gone(server_pid), f"server {server_pid} outlived the killed run"
    finally:
        run.kill()
        run.wait(timeout=10)


@pytest.mark.process
def test_a_line_still_being_written_is_not_parsed(tmp_path: Path) -> None:
    # The state a reader meets in the middle of a write: a whole line, then part of one.
    writer = "import sys, time; sys.stdout.write('ready\\nlistening on 12'); sys.stdout.flush(); time.sleep(60)"
    server = ServerProcess([sys.executable, "-c", writer], base_env(), tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 30
        while not server.output.endswith("12") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.output == "ready\nlistening on 12"
        assert server.complete_output == "ready\n"
        assert server.wait_for_line(r"ready", timeout=5)
        with pytest.raises(AssertionError, match="no 'listening on"):
            server.wait_for_line(r"listening on (\d+)", timeout=0.5)  # not port 12
    finally:
        server.kill()


def test_a_port_is_mentioned_as_a_number_not_as_digits_of_another() -> None:
    # A CI run failed on "7443" inside a timestamp's microseconds, "12:32:07.827443".
    assert mentions("util.internal.example:7443 said no", 7443)
    assert mentions('{"reason": "port 7443 refused"}', "7443")
    assert not mentions('{"since": "2026-11-30T12:32:07.827443+00:00"}', "7443")
    assert not mentions("instance 174431", 7443)
    assert mentions("sk_live_secret in the body", "sk_live_secret")
