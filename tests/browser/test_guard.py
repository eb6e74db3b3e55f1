"""Without Chromium the browser tests skip on a laptop and fail in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_browser_tests_without_chromium(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "CI"} | {"LETRAZ_CHROMIUM": str(tmp_path / "absent")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "tests/browser/test_docs_in_chromium.py",
            "-k",
            "redoc",
        ],
        cwd=REPO,
        env=environ | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("ci", "outcome", "says"), [("", 0, "1 skipped"), ("true", 1, "CI must run the browser tests")]
)
def test_a_missing_chromium_skips_outside_ci_and_fails_in_ci(tmp_path: Path, ci: str, outcome: int, says: str) -> None:
    result = run_browser_tests_without_chromium(tmp_path, **({"CI": ci} if ci else {}))
    assert result.returncode == outcome, result.stdout + result.stderr
    assert says in result.stdout, result.stdout
