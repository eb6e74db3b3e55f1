"""The bench's small pieces, without wrk or a load run (``make bench`` does the real thing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import load
from bench.__main__ import Goal, upstream_bound
from bench.load import WrkResult, WrkUnavailable, parse_wrk_output

pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parents[2]

#: wrk 4.1.0 --latency with bench/wrk_report.lua, captured against a 401-answering peer.
WRK_SAMPLE = """\
Running 1s test @ http://127.0.0.1:34599/v1/jwks
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   822.99us  515.46us   8.92ms   81.05%
    Req/Sec     5.05k   793.97     7.08k    81.82%
  Latency Distribution
     50%  709.00us
     75%    1.03ms
     90%    1.41ms
     99%    2.53ms
  5517 requests in 1.10s, 2.02MB read
  Non-2xx or 3xx responses: 5517
Requests/sec:   5016.29
Transfer/sec:      1.84MB
WRK_JSON {"requests":5517,"duration_us":1099816,"bytes":2118671,"errors":{"connect":0,"read":0,"write":0,\
"status":5517,"timeout":0},"latency_us":{"p50":709,"p90":1409,"p99":2527,"max":8924,"mean":823.0}}
"""


def test_parses_the_reporter_line() -> None:
    result = parse_wrk_output(WRK_SAMPLE)
    assert result.requests == 5517
    assert result.duration_s == pytest.approx(1.099816)
    assert result.rps == pytest.approx(5016.3, abs=0.1)
    assert (result.p50_ms, result.p99_ms, result.max_ms) == pytest.approx((0.709, 2.527, 8.924))
    assert (result.non_2xx, result.socket_errors) == (5517, 0)


def test_parses_wrk_text_without_the_reporter() -> None:
    text = WRK_SAMPLE.split("WRK_JSON")[0] + "  Socket errors: connect 0, read 2, write 0, timeout 3\n"
    result = parse_wrk_output(text)
    assert result.requests == 5517
    assert result.duration_s == pytest.approx(1.10)
    assert (result.p50_ms, result.p99_ms, result.max_ms) == pytest.approx((0.709, 2.53, 8.92))
    assert (result.non_2xx, result.socket_errors) == (5517, 5)


def test_rejects_output_that_is_not_wrk() -> None:
    with pytest.raises(ValueError, match="not wrk"):
        parse_wrk_output("command not found")


def test_merged_slices_add_counts_and_keep_the_worst_latency() -> None:
    a = WrkResult(100, 1.0, p50_ms=2, p99_ms=9, max_ms=20, non_2xx=1, server_cpu_s=0.1, foreign_cpu_s=0.0)
    b = WrkResult(300, 3.0, p50_ms=1, p99_ms=12, max_ms=15, socket_errors=2, server_cpu_s=0.3, foreign_cpu_s=1.2)
    merged = WrkResult.merge([a, b])
    assert (merged.requests, merged.rps, merged.p50_ms, merged.p99_ms, merged.max_ms) == (400, 100.0, 2, 12, 20)
    assert (merged.non_2xx, merged.socket_errors) == (1, 2)
    assert merged.cpu_ms_per_request == pytest.approx(1.0)
    assert merged.foreign_cores == pytest.approx(0.3)
    assert WrkResult.merge([a, WrkResult(1, 1.0, 1, 1, 1)]).cpu_ms_per_request is None


def test_missing_wrk_without_root_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load.shutil, "which", lambda name: None)
    monkeypatch.setattr(load.os, "geteuid", lambda: 1000)
    with pytest.raises(WrkUnavailable, match="apt-get install -y wrk"):
        load.ensure_wrk()


def test_goals_and_the_upstream_bound() -> None:
    assert upstream_bound(workers=2, window=30, ttl=5) == 14
    assert Goal("calls", 14, 14, "").passed
    assert not Goal("calls", 15, 14, "").passed
    assert Goal("ratio", 0.95, 0.9, "x", at_least=True).passed
    assert not Goal("never", None, 6, "s").passed


def _bench_env() -> dict[str, str]:
    drop = ("DJANGO_", "SENTRY_", "CLERK_", "UTIL_GRPC_", "HEALTH_", "DATABASE_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, "DJANGO_SETTINGS_MODULE": "bench.settings", "DJANGO_SECRET_KEY": "bench-smoke"}


def test_bench_settings_pass_the_system_checks() -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=REPO,
        env=_bench_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_bench_settings_mount_django_health_check_with_its_database_check() -> None:
    script = """
import django
django.setup()
from django.conf import settings
from django.urls import resolve, reverse
from health_check.views import HealthCheckView
assert "health_check" in settings.INSTALLED_APPS and "health" in settings.INSTALLED_APPS
match = resolve(reverse("django-health-check"))
assert match.func.view_class is HealthCheckView
assert list(match.func.view_initkwargs["checks"]) == ["health_check.checks.Database"]
assert resolve("/api/v1/health/").url_name == "health"
print(reverse("django-health-check"))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=_bench_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "/bench/django-health-check/"
