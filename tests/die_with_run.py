"""Processes a test run starts die with it, however it ends: the kernel's part.

``PR_SET_PDEATHSIG`` asks the kernel to signal a process when its parent dies. Servers
a test starts ask for it before they exec (``tests/process/support.py``), and so does
every pytest-xdist worker of ``make test`` (this plugin, loaded by ``tests/conftest.py``).
Without it a worker whose run was SIGKILLed (a CI timeout) learns of it only when
execnet gives up on its closed pipe, 5 to 15 s later, and its servers, which die with
it, would live as long. execnet's give-up stays the backstop should the run die before
the worker's request.
"""

from __future__ import annotations

import ctypes
import signal

import pytest

#: prctl(2)'s option: a signal for this process when its parent dies.
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker
        die_with_parent()
