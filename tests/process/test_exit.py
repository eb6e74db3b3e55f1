"""A check stuck in a driver call never holds up the process's exit."""

from __future__ import annotations

import json
import time

import pytest

from tests.peers.tcp import BlackholeListener
from tests.process.support import base_env, manage

pytestmark = pytest.mark.process


def test_the_cli_exits_at_once_when_the_database_hangs(blackhole: BlackholeListener) -> None:
    # The driver itself would wait 300 s for the silent server to answer. The bound is
    # far below that and far above a start-up on a loaded machine: 10 s was once
    # exceeded by Django's start-up alone (17 s, two CPU hogs, load average 11).
    url = f"postgres://u@127.0.0.1:{blackhole.port}/x?connect_timeout=300"
    started = time.monotonic()
    done = manage(["health", "--component", "db"], base_env(DATABASE_URL=url), timeout=240)
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["details"] == {"db": "FATAL"}
    assert elapsed < 90, f"the process waited {elapsed:.1f} s for a hung check thread"
