"""Figures a test prints into the run's own output (not only on failure).

Some tests exist to measure as well as to assert: the schema fuzzing summary, the
fault matrix, the image's size and the container test's timings. pytest captures a
passing test's output, and under pytest-xdist a test runs in a worker process whose
terminal nobody sees. So a section travels with the test's report: ``print_section``
queues it, the next report made in that process carries it (``user_properties``,
which xdist sends back to the controller), and the controller prints every section
in the terminal summary of ``make test`` and of CI's log.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

#: The ``user_properties`` key a section travels under.
SECTION = "letraz-section"

_pending: list[tuple[str, tuple[str, list[str]]]] = []
_received: list[tuple[str, list[str]]] = []


def print_section(title: str, lines: Iterable[str]) -> None:
    """Show ``lines`` under a ``title`` rule in the run's terminal summary."""
    _pending.append((SECTION, (title, list(lines))))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if _pending:
        # A new list: the report shares the item's, and a section belongs to one report.
        report.user_properties = [*report.user_properties, *_pending]
        _pending.clear()
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for key, value in report.user_properties:
        if key == SECTION:
            title, lines = value
            _received.append((title, list(lines)))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for title, lines in _received:
        terminalreporter.write_sep("-", title)
        for line in lines:
            terminalreporter.write_line(line)
