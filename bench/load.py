"""The load generator: wrk (installed on first use), its output parsed into numbers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

REPORT_SCRIPT = Path(__file__).with_name("wrk_report.lua")
#: wrk's own per-request timeout; a request slower than this counts as an error.
REQUEST_TIMEOUT = "10s"
APT_TIMEOUT = 600


class WrkUnavailable(RuntimeError):
    """wrk is missing and could not be installed here."""


@dataclass(frozen=True)
class WrkResult:
    """One measured run. The CPU fields are set by the caller (``bench.machine``); None: unknown."""

    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int = 0
    socket_errors: int = 0
    #: CPU seconds the server's processes (master and workers) used during the run.
    server_cpu_s: float | None = None
    #: CPU seconds PostgreSQL's processes used meanwhile.
    database_cpu_s: float | None = None
    #: CPU seconds processes outside the bench used meanwhile, all cores together.
    foreign_cpu_s: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def cpu_ms_per_request(self) -> float | None:
        """Server CPU per request: unlike req/s, barely moved by other load or by how wrk's
        connections happen to be spread over the workers."""
        if self.server_cpu_s is None or not self.requests:
            return None
        return self.server_cpu_s / self.requests * 1000

    @property
    def database_cpu_ms_per_request(self) -> float | None:
        if self.database_cpu_s is None or not self.requests:
            return None
        return self.database_cpu_s / self.requests * 1000

    @property
    def foreign_cores(self) -> float | None:
        if self.foreign_cpu_s is None or self.duration_s <= 0:
            return None
        return self.foreign_cpu_s / self.duration_s

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            **asdict(self),
            "rps": round(self.rps, 1),
            "cpu_ms_per_request": self.cpu_ms_per_request,
            "database_cpu_ms_per_request": self.database_cpu_ms_per_request,
            "foreign_cores": self.foreign_cores,
        }

    @classmethod
    def merge(cls, parts: list[WrkResult]) -> WrkResult:
        """Runs of one endpoint as one: counts and CPU add up; latencies are the worst run's."""

        def total(values: list[float | None]) -> float | None:
            return None if any(v is None for v in values) else sum(v for v in values if v is not None)

        return cls(
            requests=sum(p.requests for p in parts),
            duration_s=sum(p.duration_s for p in parts),
            p50_ms=max(p.p50_ms for p in parts),
            p99_ms=max(p.p99_ms for p in parts),
            max_ms=max(p.max_ms for p in parts),
            non_2xx=sum(p.non_2xx for p in parts),
            socket_errors=sum(p.socket_errors for p in parts),
            server_cpu_s=total([p.server_cpu_s for p in parts]),
            database_cpu_s=total([p.database_cpu_s for p in parts]),
            foreign_cpu_s=total([p.foreign_cpu_s for p in parts]),
        )


def ensure_wrk() -> str:
    """The path of ``wrk``, installing the Debian package first if root may."""
    if path := shutil.which("wrk"):
        return path
    hint = "install it (Debian/Ubuntu: `sudo apt-get install -y wrk`, macOS: `brew install wrk`) and rerun"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise WrkUnavailable(f"wrk is not installed and this user cannot install it: {hint}.")
    if not shutil.which("apt-get"):
        raise WrkUnavailable(f"wrk is not installed and there is no apt-get here: {hint}.")
    print("wrk is not installed: installing the Debian package (apt-get update && apt-get install -y wrk)...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
            subprocess.run(command, check=True, env=env, timeout=APT_TIMEOUT, stdout=subprocess.DEVNULL)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise WrkUnavailable(f"installing wrk failed ({exc}): {hint}.") from exc
    if path := shutil.which("wrk"):
        return path
    raise WrkUnavailable(f"apt-get installed no wrk binary on PATH: {hint}.")


def run_wrk(url: str, *, duration: float, connections: int, threads: int, wrk: str = "wrk") -> WrkResult:
    """Drive ``url`` for ``duration`` seconds; the subprocess is bounded in time too.

    Every request comes on a new connection (``Connection: close``), as probes do. With
    keep-alive, each of wrk's connections stays with the gunicorn worker that accepted it,
    and wrk's burst of connects often lands on one worker (32 to 0 was seen): req/s then
    measured the split, not the endpoint.
    """
    seconds = max(1, round(duration))
    command = [
        wrk,
        f"--threads={threads}",
        f"--connections={max(connections, threads)}",
        f"--duration={seconds}s",
        f"--timeout={REQUEST_TIMEOUT}",
        "--latency",
        "--header=Accept: application/json",
        "--header=Connection: close",
        f"--script={REPORT_SCRIPT}",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk_output(done.stdout)


_JSON_LINE = re.compile(r"^WRK_JSON (\{.*\})\s*$", re.MULTILINE)
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


def parse_wrk_output(text: str) -> WrkResult:
    """Numbers from wrk's stdout: the reporter's WRK_JSON line, else wrk's ``--latency`` text."""
    if match := _JSON_LINE.search(text):
        data = json.loads(match[1])
        errors, latency = data["errors"], data["latency_us"]
        return WrkResult(
            requests=data["requests"],
            duration_s=data["duration_us"] / 1e6,
            p50_ms=latency["p50"] / 1000,
            p99_ms=latency["p99"] / 1000,
            max_ms=latency["max"] / 1000,
            non_2xx=errors["status"],
            socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        )
    return _parse_text(text)


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def _parse_text(text: str) -> WrkResult:
    """wrk's human output, e.g. ``12345 requests in 10.01s`` and ``99%  4.20ms``."""
    total = re.search(r"^\s*(\d+) requests in " + _DURATION, text, re.MULTILINE)
    p50 = re.search(r"^\s*50%\s+" + _DURATION, text, re.MULTILINE)
    p99 = re.search(r"^\s*99%\s+" + _DURATION, text, re.MULTILINE)
    latency = re.search(r"^\s*Latency\s+\S+\s+\S+\s+" + _DURATION, text, re.MULTILINE)
    if not (total and p50 and p99 and latency):
        raise ValueError("not wrk --latency output: " + text[:200])
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return WrkResult(
        requests=int(total[1]),
        duration_s=_ms(total[2], total[3]) / 1000,
        p50_ms=_ms(p50[1], p50[2]),
        p99_ms=_ms(p99[1], p99[2]),
        max_ms=_ms(latency[1], latency[2]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
    )
