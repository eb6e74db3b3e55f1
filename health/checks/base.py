"""What a check is, and what it may say.

A check is a small object with one job: its ``run()`` does the I/O and either returns a
:class:`Verdict` or raises :class:`CheckFailed` with the component's failure state.
Timing, time limits, caching and logging live in the runner (``health/runner.py``),
once, not in every check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from health.status import Component, ComponentStatus


@dataclass(frozen=True)
class Verdict:
    """A check's answer. ``reason`` is for logs only and never reaches a public body."""

    status: ComponentStatus
    reason: str = ""


class CheckFailed(Exception):
    """A known failure, already translated to the component's state.

    Raise it ``from`` the vendor's exception: the original stays in the logs' chain and
    only ``reason`` (a short, secret-free phrase) is used in log lines.
    """

    def __init__(self, status: ComponentStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class HealthCheck(Protocol):
    """The interface the runner needs from a check."""

    @property
    def component(self) -> Component: ...

    @property
    def timeout_status(self) -> ComponentStatus:
        """The state when ``run()`` has not answered within the time limit."""
        ...

    @property
    def error_status(self) -> ComponentStatus:
        """The state when ``run()`` raised something it did not translate."""
        ...

    def run(self, timeout: float) -> Verdict:
        """Do the I/O, bounded by ``timeout`` seconds where the library allows."""
        ...

    def close(self) -> None:
        """Release clients and channels; the check may be run again afterwards."""
        ...
