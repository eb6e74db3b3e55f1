"""``make soak``'s short version: 15 s of flapping peers, so CI proves the soak works.

The real thing (``bench/soak.py``): gunicorn, every peer behind a fault proxy, probes at a
steady rate. The soak judges itself (exit 1 on a 500, a probe over its bound, no recovery,
growth); this test runs it and checks that it reported every figure the issue asks for.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.process.support import REPO, base_env, configured_database_url
from tests.reporting import print_section

pytestmark = [pytest.mark.process, pytest.mark.postgres]


def test_a_short_soak_passes_and_reports_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "soak.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "--seconds=15",
            "--fault-seconds=1",  # 10 flaps: every dependency, every fault but one
            "--gap-seconds=0.5",
            "--warmup=3",
            f"--database-url={configured_database_url()}",
            f"--output={output}",
        ],
        cwd=REPO,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    print_section("short soak (bench/soak.py, 15 s)", done.stdout.strip().splitlines())
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    for section in ("answers by path and status", "p50", "p99", "upstream in", "server processes", "PASS"):
        assert section in done.stdout, done.stdout
    result = json.loads(output.read_text())
    assert result["probes"] >= 15 * 20 * 0.9  # 20 probes/s, sent on time
    assert {d for d, _ in (f.split(":") for f in result["flaps"])} == {"db", "clerk", "util_service", "sentry"}
    assert all(result["calls"][d]["calls"] > 0 for d in ("db", "clerk", "util_service")), result["calls"]
    assert result["start"]["processes"] and result["end"]["processes"]
    assert not result["failures"]
