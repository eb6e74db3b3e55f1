"""Headless Chromium from Debian's package, driven by Playwright; nothing is downloaded.

Skipped where Chromium is absent, except in CI (``CI=true``), where its absence is a
failure: ``.ci/run`` installs it, so missing means the browser tests silently stopped
running.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("LETRAZ_CHROMIUM", "/usr/bin/chromium"))
#: No GPU, no sandbox (containers), and none of Chromium's own calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _missing() -> str | None:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (make install)"
    return None


# Per module, not per session: while Playwright's sync API is open its event loop counts
# as running in this thread, and Django then refuses database calls in every later test
# ("You cannot call this from an async context").
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    problem = _missing()
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the browser tests: {problem}")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    # Playwright's own browser downloads are never used: a stray one would hide a
    # missing system Chromium.
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    assert shutil.which(str(CHROMIUM))
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
