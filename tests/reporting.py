"""Figures a test prints into the run's own output (not only on failure).

Some tests exist to measure as well as to assert: the schema fuzzing summary, the
image's size and the container test's timings. pytest captures a passing test's
output, so these go straight to the terminal reporter, as a titled section that
shows up in ``make test`` and in CI's log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import pytest


def print_section(config: pytest.Config, title: str, lines: Iterable[str]) -> None:
    """Write ``lines`` under a ``title`` rule to the terminal, whatever the capture mode."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:  # -p no:terminal: nowhere to print
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    # While a test runs, stdout is captured at the file-descriptor level; step out of it.
    suspended = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    with suspended:
        reporter.ensure_newline()
        reporter.write_sep("-", title)
        for line in lines:
            reporter.write_line(line)
