"""The process helpers themselves: servers started by tests die with the test run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.process.support import REPO

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
