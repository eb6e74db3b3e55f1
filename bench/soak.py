"""``python -m bench.soak``: probe the real server at a steady rate while its peers flap.

One gunicorn (``gunicorn.conf.py``, production settings and defaults except a 1 s
``HEALTH_CACHE_TTL`` so the checks really run often) in front of real peers on loopback,
each behind its own fault proxy (``tests/peers/proxy.py``, ``switch_live`` on): PostgreSQL
(a database of the soak's own, dropped afterwards), the gRPC util service, the Clerk
stand-in and the Sentry receiver.

1. **warm-up** (``--warmup``, 5 s): every peer healthy, probes at the steady rate; then
   the *start* sample of the server's processes.
2. **flapping** (``--seconds``, 120): one peer at a time goes through a fault for
   ``--fault-seconds`` (2), then passes for ``--gap-seconds`` (1); the order cycles through
   every fault and every dependency (``FLAPS``). Probes go on at ``--rate`` (20/s) on new
   connections, open loop (each is sent at its time, whatever the previous ones do): three
   of four to ``/api/v1/health/``, one to ``/api/v1/health/live/``.
3. **settle** (``--settle``, 5 s: longer than a TTL plus the abandonment of a hung run):
   every peer healthy, probes go on; then the *end* sample.

The report: answers by path and status code, latency percentiles, the calls each peer
received (and the connections its proxy accepted), and for each server process (master
and workers) threads, open file descriptors and RSS at start and end, with the database
connections the server holds (``pg_stat_activity`` for the soak's database, leaving out
the backends the proxy itself keeps open for connections it froze). Exit 1 when:

* any answer is a 5xx other than the health endpoint's 503 (a 500), or a probe failed or
  took longer than ``--max-latency`` (1 s: Kubernetes' default probe timeout);
* the answers after the settle period are not all ``OPERATIONAL`` (it did not recover);
* a worker was replaced (it died or hung);
* growth from start to end beyond ``TOLERANCE`` (per process: threads, descriptors, RSS),
  or the database connections at any sample beyond three per worker (the check's own, and the
  timeline writer's and the heartbeat's, which stay open);
* a peer received more calls than ``workers x (window / TTL + 1)``: each worker asks a
  dependency at most once per TTL.

Exit 2 when it could not run. Everything listens on 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import secrets
import signal
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from bench.server import REPO, Server, manage
from tests.peers import FakeClerkAPI, FakeUtilService, FaultProxy, ProxyMode, SentryReceiver

HEALTH = "/api/v1/health/"
LIVE = "/api/v1/health/live/"
PATHS = (HEALTH, HEALTH, LIVE, HEALTH)
RESULTS = REPO / "bench" / "results"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
DEPENDENCIES = ("db", "clerk", "util_service", "sentry")
FAULTS = ("refuse", "hang", "latency", "reset", "drip", "garbage", "stall")
#: Dependency and fault both rotate (4 and 7 have no common divisor): any 4 flaps in a row
#: reach every dependency, any 7 every fault, 28 every pair.
FLAPS = [(DEPENDENCIES[i % len(DEPENDENCIES)], FAULTS[i % len(FAULTS)]) for i in range(len(DEPENDENCIES) * len(FAULTS))]
TTL = 1.0
CHECK_TIMEOUT = 0.5


@dataclass(frozen=True)
class Tolerance:
    """Growth from the start sample to the end sample that still passes, per process.

    * threads: the gthread request pool starts threads on demand up to
      ``GUNICORN_THREADS`` and keeps them, so it may still grow after the start sample;
      a leak per probe or per flap is far beyond that.
    * descriptors: sockets of probes in flight at the sample (a few) and of a connection
      a peer's client reopened.
    * RSS: allocator noise and the caches of code paths first taken under a fault.
    """

    threads: int
    fds: int = 8
    rss_kib: int = 16 * 1024
    rss_ratio: float = 0.10

    def rss_limit(self, start_kib: int) -> int:
        return start_kib + max(self.rss_kib, int(start_kib * self.rss_ratio))


# -- the server's processes ------------------------------------------------------------


@dataclass(frozen=True)
class ProcessSample:
    pid: int
    role: str
    threads: int
    fds: int
    rss_kib: int


@dataclass(frozen=True)
class Sample:
    at: float
    processes: tuple[ProcessSample, ...]
    db_connections: int
    frozen_by_proxy: int

    def by_pid(self) -> dict[int, ProcessSample]:
        return {p.pid: p for p in self.processes}


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def process_sample(pid: int, role: str) -> ProcessSample | None:
    try:
        threads = len(os.listdir(f"/proc/{pid}/task"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    except OSError:
        return None  # gone meanwhile
    return ProcessSample(pid, role, threads, fds, rss)


class Sampler:
    """The server's processes from /proc, its database connections from pg_stat_activity."""

    def __init__(self, master: int, admin_url: str, database: str, db_proxy: FaultProxy) -> None:
        self.master = master
        self.database = database
        self.db_proxy = db_proxy
        self._conn = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)

    def workers(self) -> list[int]:
        return sorted(children(self.master))

    def sample(self) -> Sample:
        processes = [process_sample(self.master, "master")]
        processes += [process_sample(pid, "worker") for pid in self.workers()]
        frozen = sorted(self.db_proxy.stalled_upstream_ports())
        row = self._conn.execute(
            "SELECT count(*) FILTER (WHERE NOT (coalesce(client_port, -1) = ANY(%s))), count(*)"
            " FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (frozen, self.database),
        ).fetchone()
        assert row is not None
        return Sample(
            time.monotonic(), tuple(p for p in processes if p is not None), int(row[0]), int(row[1]) - int(row[0])
        )

    def close(self) -> None:
        self._conn.close()


# -- probing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    path: str
    phase: str
    status: int  # 0: no answer (refused, reset, timed out)
    seconds: float
    overall: str
    details: dict[str, str]
    error: str = ""


def probe(port: int, path: str, phase: str, timeout: float) -> Probe:
    """One GET on a new connection, as a probe makes it; never raises."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.perf_counter()
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        raw = response.read()
        seconds = time.perf_counter() - started
    except (OSError, http.client.HTTPException) as exc:
        return Probe(path, phase, 0, time.perf_counter() - started, "", {}, type(exc).__name__)
    finally:
        connection.close()
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    details = body.get("details") if isinstance(body.get("details"), dict) else {}
    return Probe(path, phase, response.status, seconds, str(body.get("status", "")), details or {})


class Prober:
    """Open loop: probe ``i`` is sent at ``start + i / rate`` by a pool of client threads."""

    def __init__(self, port: int, rate: float, timeout: float) -> None:
        self.port, self.rate, self.timeout = port, rate, timeout
        self.phase = "warm-up"
        self.probes: list[Probe] = []
        self.late_sends = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Enough clients that a probe waiting for its whole timeout delays no other.
        self._pool = ThreadPoolExecutor(max(4, int(rate * timeout) + 4), thread_name_prefix="soak-probe")
        self._thread = threading.Thread(target=self._loop, name="soak-ticker", daemon=True)

    def start(self) -> Prober:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=True)

    def _loop(self) -> None:
        started = time.monotonic()
        i = 0
        while not self._stop.is_set():
            due = started + i / self.rate
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            if time.monotonic() - due > 0.1:
                self.late_sends += 1  # the sender itself was held up (a busy machine)
            self._pool.submit(self._one, PATHS[i % len(PATHS)], self.phase)
            i += 1

    def _one(self, path: str, phase: str) -> None:
        result = probe(self.port, path, phase, self.timeout)
        with self._lock:
            self.probes.append(result)

    def snapshot(self) -> list[Probe]:
        with self._lock:
            return list(self.probes)


# -- the peers behind their proxies ------------------------------------------------------


def fault_on(proxy: FaultProxy, dependency: str, fault: str) -> None:
    if fault == "latency":
        proxy.latency = 0.080
    elif fault == "stall":
        proxy.stall()
        if dependency == "db":
            proxy.stall_on = b"Q"  # the database keeps nothing open: each run's own, at its query
    else:
        proxy.mode = ProxyMode(fault)


def fault_off(proxy: FaultProxy) -> None:
    proxy.mode = ProxyMode.PASS
    proxy.latency = 0.0
    proxy.stall_on = None


@contextmanager
def soak_database(admin_url: str) -> Iterator[str]:
    """A database of the soak's own on the server of ``admin_url``, migrated; dropped after."""
    name = f"letraz_soak_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def with_database(url: str, name: str, host: str | None = None, port: int | None = None) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if host is not None and port is not None:
        credentials = netloc.rpartition("@")[0]
        netloc = f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{name}"))


_NOT_INHERITED = ("DJANGO_", "HEALTH_", "SENTRY_", "CLERK_", "UTIL_GRPC_", "GUNICORN_")


def server_env(
    args: argparse.Namespace, database_url: str, proxies: dict[str, FaultProxy], clerk_key: str
) -> dict[str, str]:
    """Production settings and defaults, every peer behind its proxy, a short TTL."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_NOT_INHERITED)
        and name not in {"DATABASE_URL", "INSTANCE_ID", "WEB_CONCURRENCY", "PORT"}
        and not name.lower().endswith("_proxy")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="letraz.settings",
        DJANGO_SECRET_KEY=f"soak-{secrets.token_hex(16)}",
        DATABASE_URL=database_url,
        SENTRY_DSN=f"http://soakkey@127.0.0.1:{proxies['sentry'].port}/1",
        SENTRY_ENVIRONMENT="soak",
        CLERK_SECRET_KEY=clerk_key,
        CLERK_API_URL=f"http://127.0.0.1:{proxies['clerk'].port}/v1",
        UTIL_GRPC_HOST=proxies["util_service"].target,
        UTIL_GRPC_TLS="false",
        WEB_CONCURRENCY=str(args.workers),
        GUNICORN_THREADS=str(args.worker_threads),
        HEALTH_CACHE_TTL=f"{TTL:g}",
        HEALTH_CHECK_TIMEOUT=f"{CHECK_TIMEOUT:g}",
        PYTHONUNBUFFERED="1",
    )
    return env


# -- the run ------------------------------------------------------------------------------

_started = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _started:6.1f} s] {message}", flush=True)


@dataclass
class Outcome:
    config: dict[str, Any]
    probes: list[Probe]
    start: Sample
    end: Sample
    during: list[Sample]
    workers_start: list[int]
    workers_end: list[int]
    calls: dict[str, dict[str, int]]
    window_s: float
    flaps: list[str]
    late_sends: int
    failures: list[str] = field(default_factory=list)


def run(args: argparse.Namespace) -> Outcome:
    with ExitStack() as stack:
        clerk_key = f"sk_test_{secrets.token_hex(8)}"
        clerk = stack.enter_context(FakeClerkAPI(secret_key=clerk_key))
        util = stack.enter_context(FakeUtilService(grpc_health=False))  # like the real Go service
        sentry = stack.enter_context(SentryReceiver(public_key="soakkey"))
        admin = urlsplit(args.database_url)
        name = stack.enter_context(soak_database(args.database_url))
        upstreams: dict[str, int | tuple[str, int]] = {
            "db": (admin.hostname or "127.0.0.1", admin.port or 5432),
            "clerk": clerk.port,
            "util_service": util.port,
            "sentry": sentry.port,
        }
        proxies: dict[str, FaultProxy] = {}
        for dependency, upstream in upstreams.items():
            proxy = FaultProxy(upstream)
            proxy.switch_live = True
            proxies[dependency] = stack.enter_context(proxy)
        database_url = with_database(args.database_url, name, "127.0.0.1", proxies["db"].port)
        env = server_env(args, database_url, proxies, clerk_key)
        manage(["migrate", "--noinput", "-v", "0"], env | {"DATABASE_URL": with_database(args.database_url, name)})
        server = stack.enter_context(Server(env, args.output.with_name("soak-server.log")))
        log(f"gunicorn on {server.base_url}: {args.workers} workers x {args.worker_threads} threads")
        server.wait_until_serving()
        assert server.pid is not None
        sampler = Sampler(server.pid, args.database_url, name, proxies["db"])
        stack.callback(sampler.close)

        prober = Prober(server.port, args.rate, args.max_latency * 5).start()
        stack.callback(prober.stop)
        window_start = time.monotonic()
        before = {"clerk": clerk.requests, "util_service": util.requests, "sentry": sentry.envelopes}
        accepted_before = {d: p.accepted for d, p in proxies.items()}

        log(f"warm-up {args.warmup:g} s, every peer healthy, {args.rate:g} probes/s")
        time.sleep(args.warmup)
        workers_start = sampler.workers()
        start = sampler.sample()
        log(f"start: {describe(start)}")

        prober.phase = "flapping"
        during: list[Sample] = []
        flaps: list[str] = []
        flap_until = time.monotonic() + args.seconds
        i = 0
        while time.monotonic() < flap_until:
            dependency, fault = FLAPS[i % len(FLAPS)]
            i += 1
            fault_on(proxies[dependency], dependency, fault)
            flaps.append(f"{dependency}:{fault}")
            time.sleep(max(0.0, min(args.fault_seconds, flap_until - time.monotonic())))
            fault_off(proxies[dependency])
            during.append(sampler.sample())
            time.sleep(max(0.0, min(args.gap_seconds, flap_until - time.monotonic())))
        log(f"{len(flaps)} flaps: {' '.join(flaps[: len(FLAPS)])}{' ...' if len(flaps) > len(FLAPS) else ''}")

        prober.phase = "settle"
        time.sleep(args.settle)
        prober.phase = "after"
        time.sleep(args.after)
        end = sampler.sample()
        workers_end = sampler.workers()
        log(f"end:   {describe(end)}")
        prober.stop()
        window = time.monotonic() - window_start
        calls = {
            "clerk": {"calls": clerk.requests - before["clerk"]},
            "util_service": {"calls": util.requests - before["util_service"]},
            "sentry": {"calls": sentry.envelopes - before["sentry"]},
            "db": {"calls": proxies["db"].accepted - accepted_before["db"]},
        }
        for dependency, proxy in proxies.items():
            calls[dependency]["connections"] = proxy.accepted - accepted_before[dependency]
        return Outcome(
            config=vars(args) | {"ttl": TTL, "check_timeout": CHECK_TIMEOUT},
            probes=prober.snapshot(),
            start=start,
            end=end,
            during=during,
            workers_start=workers_start,
            workers_end=workers_end,
            calls=calls,
            window_s=window,
            flaps=flaps,
            late_sends=prober.late_sends,
        )


def describe(sample: Sample) -> str:
    parts = [
        f"{p.role} {p.pid}: {p.threads} threads, {p.fds} fds, {p.rss_kib / 1024:.1f} MiB" for p in sample.processes
    ]
    return (
        "; ".join(parts) + f"; db connections {sample.db_connections} (+{sample.frozen_by_proxy} frozen by the proxy)"
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[min(998, max(0, int(q * 1000) - 1))]


def judge(outcome: Outcome, args: argparse.Namespace) -> list[str]:
    failures: list[str] = []
    probes = outcome.probes
    errors = [p for p in probes if p.status == 0]
    server_errors = [p for p in probes if p.status >= 500 and not (p.status == 503 and p.path == HEALTH)]
    slow = [p for p in probes if p.seconds > args.max_latency]
    if errors:
        failures.append(f"{len(errors)} probes got no answer: {Counter(p.error for p in errors).most_common(3)}")
    if server_errors:
        failures.append(f"{len(server_errors)} server errors: {Counter(p.status for p in server_errors)}")
    if slow:
        worst = max(slow, key=lambda p: p.seconds)
        failures.append(
            f"{len(slow)} probes slower than {args.max_latency:g} s (worst {worst.seconds:.3f} s, {worst.path})"
        )
    after = [p for p in probes if p.phase == "after" and p.path == HEALTH]
    if not after:
        failures.append("no probe after the settle period")
    elif not all(p.status == 200 and p.overall == "OPERATIONAL" for p in after):
        bad = next(p for p in after if p.status != 200)
        failures.append(f"not recovered after the settle period: {bad.status} {bad.details}")
    if outcome.workers_start != outcome.workers_end:
        failures.append(f"workers replaced: {outcome.workers_start} -> {outcome.workers_end}")
    tolerance = Tolerance(threads=args.worker_threads)
    start, end = outcome.start.by_pid(), outcome.end.by_pid()
    for pid, first in start.items():
        last = end.get(pid)
        if last is None:
            continue  # reported as a replaced worker
        if last.threads > first.threads + tolerance.threads:
            failures.append(f"{first.role} {pid}: threads {first.threads} -> {last.threads} (> +{tolerance.threads})")
        if last.fds > first.fds + tolerance.fds:
            failures.append(f"{first.role} {pid}: fds {first.fds} -> {last.fds} (> +{tolerance.fds})")
        if last.rss_kib > tolerance.rss_limit(first.rss_kib):
            failures.append(
                f"{first.role} {pid}: RSS {first.rss_kib / 1024:.1f} -> {last.rss_kib / 1024:.1f} MiB"
                f" (> {tolerance.rss_limit(first.rss_kib) / 1024:.1f})"
            )
    worst_db = max([outcome.start, *outcome.during, outcome.end], key=lambda s: s.db_connections)
    if worst_db.db_connections > db_connections_bound(args.workers):
        failures.append(
            f"{worst_db.db_connections} database connections held by the server"
            f" (> {db_connections_bound(args.workers)}: {DB_CONNECTIONS_PER_WORKER} per worker)"
        )
    bound = calls_bound(args.workers, outcome.window_s)
    for dependency in ("db", "clerk", "util_service"):
        if outcome.calls[dependency]["calls"] > bound:
            failures.append(f"{dependency} got {outcome.calls[dependency]['calls']} calls (> {bound:.0f})")
    return failures


#: Per worker: the database check's own connection (one run at a time, closed after it), and
#: the timeline writer's and the fleet heartbeat's (issue 11), each kept open by its thread.
DB_CONNECTIONS_PER_WORKER = 3


def db_connections_bound(workers: int) -> int:
    return DB_CONNECTIONS_PER_WORKER * workers


def calls_bound(workers: int, window: float) -> float:
    """Each worker asks a dependency at most once per TTL, plus its first run."""
    return workers * (window / TTL + 1)


def report(outcome: Outcome, args: argparse.Namespace) -> str:
    probes = outcome.probes
    lines = [
        "",
        f"Letraz health soak, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC,"
        f" {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}",
        f"  gunicorn -c gunicorn.conf.py, {args.workers} workers x {args.worker_threads} threads;"
        f" HEALTH_CACHE_TTL {TTL:g} s, HEALTH_CHECK_TIMEOUT {CHECK_TIMEOUT:g} s, other settings at their defaults",
        f"  {args.rate:g} probes/s on new connections for {outcome.window_s:.0f} s: warm-up {args.warmup:g} s,"
        f" flapping {args.seconds:g} s ({len(outcome.flaps)} flaps of {args.fault_seconds:g} s fault +"
        f" {args.gap_seconds:g} s pass), settle {args.settle:g} s, after {args.after:g} s",
        "",
        "  answers by path and status:",
    ]
    tally = Counter((p.path, p.status) for p in probes)
    for (path, status), count in sorted(tally.items()):
        lines.append(f"    {path:<24} {status or 'no answer':>9}  {count:>6}")
    lines.append("")
    lines.append(f"  latency ms            {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'count':>7}")
    for path in (HEALTH, LIVE):
        values = [p.seconds * 1000 for p in probes if p.path == path and p.status]
        if values:
            cells = " ".join(f"{percentile(values, q):8.1f}" for q in (0.5, 0.9, 0.99)) + f" {max(values):8.1f}"
            lines.append(f"    {path:<20}{cells} {len(values):>7}")
    lines.append(f"  (probes sent more than 100 ms after their time: {outcome.late_sends})")
    lines.append("")
    bound = calls_bound(args.workers, outcome.window_s)
    lines.append(
        f"  {f'upstream in {outcome.window_s:.0f} s':<38}{'calls at the peer':>18}{'proxy connections':>19}{'bound':>9}"
    )
    what = {
        "db": "db (a connection per check run)",
        "clerk": "clerk (GET /v1/jwks)",
        "util_service": "util (HealthCheck RPCs)",
        "sentry": "sentry (envelopes)",
    }
    for dependency in DEPENDENCIES:
        counts = outcome.calls[dependency]
        limit = "-" if dependency == "sentry" else f"{bound:.0f}"
        lines.append(f"    {what[dependency]:<36}{counts['calls']:>18}{counts['connections']:>19}{limit:>9}")
    lines.append("")
    tolerance = Tolerance(threads=args.worker_threads)
    lines.append(
        f"  server processes    start -> end   (tolerance per process: threads +{tolerance.threads},"
        f" fds +{tolerance.fds}, RSS +max({tolerance.rss_kib // 1024} MiB, {tolerance.rss_ratio:.0%}))"
    )
    end = outcome.end.by_pid()
    for first in outcome.start.processes:
        last = end.get(first.pid)
        if last is None:
            lines.append(f"    {first.role} {first.pid}: gone")
            continue
        lines.append(
            f"    {first.role:<6} {first.pid:>7}: threads {first.threads:>3} -> {last.threads:<3}"
            f" fds {first.fds:>3} -> {last.fds:<3} RSS {first.rss_kib / 1024:6.1f} -> {last.rss_kib / 1024:6.1f} MiB"
        )
    peak = max([outcome.start, *outcome.during, outcome.end], key=lambda s: s.db_connections)
    frozen = max(s.frozen_by_proxy for s in [outcome.start, *outcome.during, outcome.end])
    lines.append(
        f"    database connections held by the server: {outcome.start.db_connections} -> {outcome.end.db_connections},"
        f" at most {peak.db_connections} at a sample (bound {db_connections_bound(args.workers)},"
        f" {DB_CONNECTIONS_PER_WORKER} per worker);"
        f" backends held open by the proxy's frozen connections, not counted: up to {frozen}"
    )
    if outcome.during:
        peaks = []
        for first in outcome.start.processes:
            seen = [s.by_pid()[first.pid] for s in outcome.during if first.pid in s.by_pid()]
            if seen:
                peaks.append(
                    f"{first.role} {first.pid}: {max(p.threads for p in seen)} threads, {max(p.fds for p in seen)} fds"
                )
        lines.append(f"    peak at the end of a flap: {'; '.join(peaks)}")
    lines.append("")
    if outcome.failures:
        lines.append("  FAIL:")
        lines.extend(f"    - {failure}" for failure in outcome.failures)
    else:
        lines.append("  PASS: no 500, no probe over the bound, recovered, no growth beyond the tolerance")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    default_seconds = float(os.environ.get("SOAK_SECONDS") or 120)
    parser.add_argument("--seconds", type=float, default=default_seconds, help="flapping time (120, or $SOAK_SECONDS)")
    parser.add_argument("--rate", type=float, default=20, help="probes per second (20)")
    parser.add_argument(
        "--warmup", type=float, default=5, help="seconds with healthy peers before the start sample (5)"
    )
    parser.add_argument("--settle", type=float, default=5, help="healthy seconds after the last flap (5)")
    parser.add_argument("--after", type=float, default=2, help="then seconds whose answers must all be OPERATIONAL (2)")
    parser.add_argument("--fault-seconds", type=float, default=2, help="each fault lasts (2)")
    parser.add_argument("--gap-seconds", type=float, default=1, help="healthy time between faults (1)")
    parser.add_argument("--max-latency", type=float, default=1.0, help="slowest probe that passes, seconds (1)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (2, the default WEB_CONCURRENCY)")
    parser.add_argument("--worker-threads", type=int, default=8, help="threads per worker (8, GUNICORN_THREADS)")
    database = os.environ.get("DATABASE_URL", "")
    database = database if database.startswith(("postgres://", "postgresql://")) else DEFAULT_DATABASE_URL
    parser.add_argument("--database-url", default=database, help="PostgreSQL server to create the soak's database on")
    parser.add_argument("--output", type=Path, default=RESULTS / "soak.json", help="results as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so every server and peer is stopped
    try:
        outcome = run(args)
    except (psycopg.Error, RuntimeError, TimeoutError, OSError) as exc:
        print(f"soak: could not run: {exc}", file=sys.stderr)
        return 2
    outcome.failures = judge(outcome, args)
    print(report(outcome, args), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    payload = asdict(outcome)
    payload["probes"] = len(outcome.probes)
    args.output.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 1 if outcome.failures else 0


if __name__ == "__main__":
    sys.exit(main())
