"""``python -m bench``: drive the real server with wrk and check the health goals.

One run, in order:

A. gunicorn with ``bench.settings`` (the production settings plus django-health-check),
   every peer healthy:
   1. ``/api/v1/health/`` and ``/api/v1/health/live/``: warm-up, then measured;
   3. the calls each dependency received meanwhile, against workers x (window / TTL + 1);
   2. then django-health-check 4.x's view with its database check, for comparison.
   6. then ``/live/``, ``/ready/`` and ``/health/`` one at a time while 100 clients hold
      idle connections and 100 trickle their headers a byte at a time (issue #8).
B. a fresh gunicorn with ``letraz.settings`` while Clerk and the util service hang:
   4. the first answer, then p99 under load;
   5. how long until ``OPERATIONAL`` after the util service is healthy again, and after
      it was stopped and started again.

Everything listens on 127.0.0.1; every loop has a deadline. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import psycopg

from bench import fleet
from bench.load import WrkResult, WrkUnavailable, ensure_wrk, run_wrk
from bench.machine import CpuMeter
from bench.server import REPO, Answer, Server, manage
from bench.slow_clients import ProbeTimes, SlowClients, time_probes
from tests.peers import FakeClerkAPI, FakeUtilService, SentryReceiver

HEALTH = "/api/v1/health/"
LIVE = "/api/v1/health/live/"
READY = "/api/v1/health/ready/"
DJANGO_HEALTH_CHECK = "/bench/django-health-check/"
RESULTS = REPO / "bench" / "results"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
#: How long a hanging peer keeps a request before answering: far beyond the check's limit.
HANG_SECONDS = 10.0
#: Polling for a state change: one GET on a fresh connection every POLL_INTERVAL; a state
#: counts as reached by every worker once it held for STABLE_FOR seconds in a row.
POLL_INTERVAL = 0.05
STABLE_FOR = 1.0
#: How long a worker's round of checks may take once Clerk has seen its call.
REFRESH_ROUND = 0.2
#: Above this many cores used by other processes, a run's numbers are flagged as unreliable.
BUSY_MACHINE = 0.25

#: What each dependency's count in goal 3 counts.
UPSTREAM = {"clerk": "Clerk GET /v1/jwks", "util_service": "util HealthCheck RPCs", "db": "PostgreSQL new connections"}
#: A GET that did not get an answer (refused, reset, timed out, garbled).
REQUEST_ERRORS = (OSError, http.client.HTTPException)

_started = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _started:6.1f} s] {message}", flush=True)


def upstream_bound(workers: int, window: float, ttl: float) -> float:
    """Most calls a dependency may get: each worker asks at most once per TTL, plus its first."""
    return workers * (window / ttl + 1)


def short(value: float) -> str:
    """2 decimals at most, no trailing zeros: 10, 13.35, 0.9."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Goal:
    name: str
    measured: float | None
    limit: float
    unit: str
    at_least: bool = False  # True: measured >= limit passes; False: measured <= limit

    @property
    def passed(self) -> bool:
        if self.measured is None:
            return False
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit

    def row(self) -> str:
        measured = "not reached" if self.measured is None else f"{short(self.measured)} {self.unit}"
        goal = f"{'>=' if self.at_least else '<='} {short(self.limit)} {self.unit}"
        return f"  {self.name:<52} {measured:>14} {goal:>16}   {'PASS' if self.passed else 'FAIL'}"


class DatabaseSessions:
    """Connections opened to the bench database (``pg_stat_database.sessions``).

    Our database check opens one connection per run and closes it, so the delta is the
    number of checks that reached PostgreSQL; django-health-check opens one per request.
    """

    def __init__(self, url: str) -> None:
        self._conn = psycopg.connect(url, autocommit=True, connect_timeout=3)

    def count(self) -> int:
        row = self._conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()").fetchone()
        return int(row[0]) if row else 0

    def settled_count(self) -> int:
        """The count once the last sessions' exit statistics have landed."""
        time.sleep(0.5)
        return self.count()

    def close(self) -> None:
        self._conn.close()


# -- the server's environment -------------------------------------------------------


_NOT_INHERITED = ("DJANGO_", "HEALTH_", "SENTRY_", "CLERK_", "UTIL_GRPC_", "GUNICORN_")


def server_env(
    args: argparse.Namespace, settings: str, clerk: FakeClerkAPI, util: FakeUtilService, sentry: SentryReceiver
) -> dict[str, str]:
    """Production-like: DEBUG off, a secret key, Sentry on, every peer on loopback, no proxies."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_NOT_INHERITED)
        and name not in {"DATABASE_URL", "INSTANCE_ID", "WEB_CONCURRENCY", "PORT"}
        and not name.lower().endswith("_proxy")  # httpx and gRPC would route loopback through them
    }
    env.update(
        DJANGO_SETTINGS_MODULE=settings,
        DJANGO_SECRET_KEY=f"bench-{secrets.token_hex(16)}",
        DATABASE_URL=args.database_url,
        SENTRY_DSN=sentry.dsn,
        SENTRY_ENVIRONMENT="bench",
        CLERK_SECRET_KEY=clerk.secret_key,
        CLERK_API_URL=clerk.url,
        UTIL_GRPC_HOST=util.target,
        UTIL_GRPC_TLS="false",
        WEB_CONCURRENCY=str(args.workers),
        GUNICORN_THREADS=str(args.worker_threads),
        HEALTH_CACHE_TTL=f"{args.ttl:g}",
        HEALTH_CHECK_TIMEOUT=f"{args.check_timeout:g}",
        PYTHONUNBUFFERED="1",
    )
    return env


# -- measuring ------------------------------------------------------------------------


def warm(server: Server, path: str, args: argparse.Namespace, wrk: str) -> None:
    if args.warmup > 0:
        log(f"warm-up  {path} ({args.warmup:g} s)")
        run_wrk(
            server.base_url + path, duration=args.warmup, connections=args.connections, threads=args.threads, wrk=wrk
        )


def measure(
    server: Server, path: str, args: argparse.Namespace, wrk: str, *, seconds: float, connections: int
) -> WrkResult:
    log(f"measure  {path} ({seconds:g} s, {connections} connections)")
    meter = CpuMeter(server.pid).start()
    result = run_wrk(server.base_url + path, duration=seconds, connections=connections, threads=args.threads, wrk=wrk)
    server_cpu, database_cpu, foreign_cpu = meter.stop()
    result = replace(result, server_cpu_s=server_cpu, database_cpu_s=database_cpu, foreign_cpu_s=foreign_cpu)
    log(
        f"         {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms,"
        f" CPU/request {fmt(result.cpu_ms_per_request)} ms (+ PostgreSQL {fmt(result.database_cpu_ms_per_request)}),"
        f" non-2xx {result.non_2xx}; other processes {fmt(result.foreign_cores)} cores"
    )
    return result


def fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def slice_seconds(args: argparse.Namespace) -> int:
    return max(1, round(args.duration / args.rounds))  # wrk takes whole seconds


def compare(server: Server, paths: list[str], args: argparse.Namespace, wrk: str) -> dict[str, WrkResult]:
    """Warm up each path, then measure them in alternating slices: a busy moment hits all alike."""
    for path in paths:
        warm(server, path, args, wrk)
    parts: dict[str, list[WrkResult]] = {path: [] for path in paths}
    seconds = slice_seconds(args)
    for _ in range(args.rounds):
        for path in paths:
            parts[path].append(measure(server, path, args, wrk, seconds=seconds, connections=args.connections))
    return {path: WrkResult.merge(results) for path, results in parts.items()}


def watch(server: Server, reached: Callable[[Answer], bool], *, since: float, timeout: float) -> dict[str, Any]:
    """Poll ``/health/`` until ``reached`` held for STABLE_FOR s; times are seconds after ``since``.

    ``first``: the first answer that showed the state; ``all_workers``: the start of the
    run of answers that all showed it (the workers' caches are separate, and successive
    fresh connections land on either worker).
    """
    first: float | None = None
    run_start: float | None = None
    polls = 0
    deadline = since + timeout
    while time.monotonic() < deadline:
        tick = time.monotonic()
        try:
            ok = reached(server.get(HEALTH, timeout=2))
        except REQUEST_ERRORS:
            ok = False
        polls += 1
        at = time.monotonic() - since
        if ok:
            first = at if first is None else first
            run_start = at if run_start is None else run_start
            if at - run_start >= STABLE_FOR:
                return {"first": first, "all_workers": run_start, "polls": polls}
        else:
            run_start = None
        time.sleep(max(0.0, POLL_INTERVAL - (time.monotonic() - tick)))
    return {"first": first, "all_workers": None, "polls": polls, "timed_out_after": timeout}


def details(answer: Answer) -> dict[str, str]:
    value = answer.body.get("details")
    return value if isinstance(value, dict) else {}


def operational(answer: Answer) -> bool:
    return answer.status == 200 and answer.overall == "OPERATIONAL"


# -- the phases -----------------------------------------------------------------------


def phase_a(
    args: argparse.Namespace,
    wrk: str,
    peers: tuple[FakeClerkAPI, FakeUtilService, SentryReceiver],
    db: DatabaseSessions,
) -> dict[str, Any]:
    clerk, util, sentry = peers
    env = server_env(args, "bench.settings", clerk, util, sentry)
    clerk.reset_count()
    util.reset_count()
    db_before = db.count()
    window_start = time.monotonic()
    with Server(env, RESULTS / "server-a.log") as server:
        log(f"server A (bench.settings) starting on {server.base_url}")
        server.wait_until_serving()
        log(f"server A serving after {time.monotonic() - window_start:.1f} s")
        state = watch(server, operational, since=time.monotonic(), timeout=args.ttl + 5)
        if state["all_workers"] is None:
            raise RuntimeError(f"{HEALTH} never said OPERATIONAL with healthy peers:\n{server.log_tail()}")
        measured = compare(server, [HEALTH, LIVE], args, wrk)
        health, live = measured[HEALTH], measured[LIVE]
        # What one request costs, below saturation: the same few connections as the
        # hanging run of server B, so the two latencies compare.
        light = measure(server, HEALTH, args, wrk, seconds=args.duration, connections=args.hang_connections)
        window = time.monotonic() - window_start
        calls = {"clerk": clerk.requests, "util_service": util.requests, "db": db.settled_count() - db_before}
        log(f"upstream calls so far: {calls}")

        warm(server, DJANGO_HEALTH_CHECK, args, wrk)
        db_before = db.settled_count()
        dhc = measure(server, DJANGO_HEALTH_CHECK, args, wrk, seconds=args.duration, connections=args.connections)
        dhc_sessions = db.settled_count() - db_before
        slow = slow_client_run(server, args)
    return {
        "slow_clients": slow,
        "health": health,
        "live": live,
        "health_light": light,
        "django_health_check": dhc,
        "django_health_check_db_sessions": dhc_sessions,
        "upstream": {
            "window_s": window,
            "bound": upstream_bound(args.workers, window, args.ttl),
            "calls": calls,
            "health_requests": health.requests,
        },
    }


def slow_client_run(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """Goal 6: the probes, one at a time on new connections, while slow clients hold theirs."""
    paths = [LIVE, READY, HEALTH]
    log(
        f"slow clients: {args.idle_clients} idle + {args.trickling_clients} trickling connections,"
        f" {args.slow_rounds} rounds of {', '.join(paths)}"
    )
    baseline = time_probes(server.port, paths, rounds=args.slow_rounds)
    with SlowClients(server.port, idle=args.idle_clients, trickling=args.trickling_clients) as clients:
        wanted = args.idle_clients + args.trickling_clients
        deadline = time.monotonic() + 10
        while clients.open_connections < wanted and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # every trickling client has sent some bytes: its headers are under way
        under = time_probes(server.port, paths, rounds=args.slow_rounds)
        held = clients.open_connections
        stats = clients.stats
    result = {"paths": paths, "held": held, "opened": stats.opened, "closed_by_server": stats.closed_by_server}
    for name, times in (("baseline", baseline), ("slow", under)):
        result[name] = summarise(times, paths)
    for path in paths:
        row = result["slow"][path]
        log(f"         {path}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, failures {row['failures']}")
    return result


def summarise(times: ProbeTimes, paths: list[str]) -> dict[str, dict[str, float]]:
    return {
        path: {
            "p50_ms": times.percentile(path, 0.5) * 1000,
            "p99_ms": times.percentile(path, 0.99) * 1000,
            "max_ms": max(times.latencies[path], default=float("nan")) * 1000,
            "answers": len(times.latencies[path]),
            "failures": len([f for f in times.failures if f.startswith(f"{path}:")]),
        }
        for path in paths
    }


def phase_b(
    args: argparse.Namespace, wrk: str, peers: tuple[FakeClerkAPI, FakeUtilService, SentryReceiver]
) -> dict[str, Any]:
    clerk, util, sentry = peers
    clerk.mode, clerk.delay = "slow", HANG_SECONDS
    util.mode, util.delay = "slow", HANG_SECONDS
    clerk.reset_count()
    util.reset_count()
    out: dict[str, Any] = {"hang_seconds": HANG_SECONDS}
    with Server(server_env(args, "letraz.settings", clerk, util, sentry), RESULTS / "server-b.log") as server:
        log(f"server B (letraz.settings, Clerk and util hanging) starting on {server.base_url}")
        out["port_open_s"] = server.wait_for_port()
        # Each worker's post_worker_init starts its checks: once both peers saw one call per
        # worker, every worker has loaded the app and is about to serve.
        remaining = max(1.0, server.start_timeout - out["port_open_s"])
        if not (clerk.wait_for_requests(args.workers, remaining) and util.wait_for_requests(args.workers, remaining)):
            raise RuntimeError(f"the workers' warm-up never reached the peers:\n{server.log_tail()}")
        ready = time.monotonic()
        out["workers_ready_s"] = ready - server.started_at
        first = server.get(HEALTH, timeout=10)
        out["first_answer"] = {"seconds": first.seconds, "status": first.status, "body": first.body}
        log(f"first answer after {first.seconds * 1000:.0f} ms: {first.status} {details(first)}")
        # The other workers' first answers come by the same deadline; "after the first
        # answer" starts once every worker's first round of checks is past it.
        time.sleep(max(0.0, ready + args.check_timeout + 0.05 - time.monotonic()))
        # Few connections, below saturation: at saturation wrk's closed loop makes p99
        # its own queue (connections / throughput), the same for any endpoint. /live/,
        # which asks no dependency, is the control for what this machine adds.
        out["hanging"] = measure(server, HEALTH, args, wrk, seconds=args.duration, connections=args.hang_connections)
        out["hanging_live"] = measure(server, LIVE, args, wrk, seconds=args.duration, connections=args.hang_connections)

        # 5a: Clerk back; the util service answers "unhealthy", then "healthy" again.
        clerk.mode = "ok"
        util.mode = "unhealthy"
        log("util service unhealthy, Clerk back: waiting until every worker sees it")
        settled = watch(
            server,
            lambda a: details(a).get("util_service") == "FAILED" and details(a).get("clerk") == "OPERATIONAL",
            since=time.monotonic(),
            timeout=3 * args.ttl + 5,
        )
        out["recovery_unhealthy"] = recovery(server, args, clerk, settled, lambda: setattr(util, "mode", "healthy"))

        # 5b: the util service goes away, then comes back on the same port.
        log("util service stopped: waiting until every worker sees it")
        util.stop()
        settled = watch(
            server,
            lambda a: details(a).get("util_service") == "DISCONNECTED",
            since=time.monotonic(),
            timeout=3 * args.ttl + 5,
        )
        out["recovery_restarted"] = recovery(server, args, clerk, settled, util.start)
    return out


def recovery(
    server: Server,
    args: argparse.Namespace,
    clerk: FakeClerkAPI,
    settled: dict[str, Any],
    bring_back: Callable[[], object],
) -> dict[str, Any]:
    """Bring the util service back just after a worker refreshed, then time the way back.

    That worker has just cached the failure, so it reports it for nearly a whole TTL:
    the unfavourable case the goal (TTL + 1 s) is about, not a lucky one.
    """
    if settled["all_workers"] is None:
        log("         the failure never showed on every worker; recovery not measured")
        return {"settled": settled, "back": None}
    if not after_next_refresh(server, clerk, timeout=args.ttl + 5):
        log("         no worker refreshed its checks; recovery not measured")
        return {"settled": settled, "back": None}
    since = time.monotonic()
    bring_back()
    log(f"util service back {REFRESH_ROUND:g} s after a worker refreshed: polling until OPERATIONAL")
    back = watch(server, operational, since=since, timeout=3 * args.ttl + 5)
    log(f"         first OPERATIONAL after {fmt_s(back['first'])}, on every worker after {fmt_s(back['all_workers'])}")
    return {"settled": settled, "back": back}


def after_next_refresh(server: Server, clerk: FakeClerkAPI, *, timeout: float) -> bool:
    """Poll until a worker's cache expires and it asks its peers again (Clerk sees a call).

    Every check of a worker is refreshed by the same request, so the util service was just
    asked too; REFRESH_ROUND lets that round finish before anything changes.
    """
    seen = clerk.requests
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(*REQUEST_ERRORS):
            server.get(HEALTH, timeout=2)
        if clerk.requests > seen:
            time.sleep(REFRESH_ROUND)
            return True
        time.sleep(POLL_INTERVAL)
    return False


def fmt_s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


# -- reporting ------------------------------------------------------------------------


def goals(args: argparse.Namespace, a: dict[str, Any], b: dict[str, Any]) -> list[Goal]:
    health, live, dhc = a["health"], a["live"], a["django_health_check"]
    up = a["upstream"]
    back_unhealthy = (b["recovery_unhealthy"]["back"] or {}).get("all_workers")
    back_restarted = (b["recovery_restarted"]["back"] or {}).get("all_workers")
    return [
        Goal("1. health answered 200 throughout (non-2xx + errors)", health.non_2xx + health.socket_errors, 0, ""),
        Goal("1. health req/s / live req/s", health.rps / live.rps, 0.9, "x", at_least=True),
        Goal("2. health req/s / django-health-check req/s", health.rps / max(dhc.rps, 1e-9), 5, "x", at_least=True),
        Goal("3. Clerk calls (GET /jwks)", up["calls"]["clerk"], up["bound"], ""),
        Goal("3. util service calls (HealthCheck)", up["calls"]["util_service"], up["bound"], ""),
        # Plus the timeline's two connections per worker (its writer's and its heartbeat's, kept open).
        Goal("3. database connections (pg_stat_database)", up["calls"]["db"], up["bound"] + 2 * args.workers, ""),
        Goal(
            "4. first answer, fresh server, deps hanging", b["first_answer"]["seconds"], args.check_timeout + 0.1, "s"
        ),
        Goal("4. health p99 while deps hang", b["hanging"].p99_ms, 50, "ms"),
        Goal("5. OPERATIONAL after util unhealthy -> healthy", back_unhealthy, args.ttl + 1, "s"),
        Goal("5. OPERATIONAL after util stopped -> started", back_restarted, args.ttl + 1, "s"),
        *(
            Goal(f"6. {path} p99, slow clients holding connections", row["p99_ms"], 50, "ms")
            for path, row in a["slow_clients"]["slow"].items()
        ),
        Goal(
            "6. probes failed, slow clients holding connections",
            sum(row["failures"] for row in a["slow_clients"]["slow"].values()),
            0,
            "",
        ),
    ]


def load_row(name: str, r: WrkResult) -> str:
    return (
        f"  {name:<30} {r.rps:>9,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.max_ms:>8.1f}"
        f" {fmt(r.cpu_ms_per_request):>7} {fmt(r.database_cpu_ms_per_request):>6}"
        f" {r.non_2xx:>8} {r.socket_errors:>7} {fmt(r.foreign_cores):>6}"
    )


def report(
    args: argparse.Namespace, a: dict[str, Any], b: dict[str, Any], sentry: dict[str, Any], checked: list[Goal]
) -> str:
    up = a["upstream"]
    first = b["first_answer"]
    lines = [
        "",
        "RESULTS",
        "",
        f"  {'endpoint':<30} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        f" {'CPU ms':>7} {'PG ms':>6} {'non-2xx':>8} {'sockerr':>7} {'others':>6}",
        load_row(HEALTH, a["health"]),
        load_row(LIVE, a["live"]),
        load_row(DJANGO_HEALTH_CHECK, a["django_health_check"]),
        load_row(f"{HEALTH} ({args.hang_connections} conns)", a["health_light"]),
        load_row(f"{HEALTH} (deps hang)", b["hanging"]),
        load_row(f"{LIVE} (deps hang)", b["hanging_live"]),
        "  (CPU ms: the server's CPU per request; PG ms: PostgreSQL's; others: cores used meanwhile by"
        f" processes\n   outside the bench; p50/p99/max of health and live: the worst of their {args.rounds} slices)",
        *busy_warning(
            [a["health"], a["live"], a["django_health_check"], a["health_light"], b["hanging"], b["hanging_live"]]
        ),
        "",
        f"  upstream calls from server start until the end of the {HEALTH} and {LIVE} runs:",
        f"  window {up['window_s']:.1f} s, bound = {args.workers} workers x (window / TTL {args.ttl:g} s + 1)"
        f" = {up['bound']:.1f}; {up['health_requests']:,} measured health requests",
        *(
            f"    {UPSTREAM[name]:<26} {count:>5}   (bound {up['bound'] + extra:.1f})"
            for name, count in up["calls"].items()
            for extra in [2 * args.workers if name == "db" else 0]
        ),
        "  (PostgreSQL's bound adds the timeline's writer and heartbeat connections: 2 per worker)",
        f"  django-health-check opened {a['django_health_check_db_sessions']:,} database connections"
        f" for {a['django_health_check'].requests:,} requests",
        f"  Sentry receiver: {sentry['envelopes']} envelopes, items {sentry['items']} (events = changes of state)",
        "",
        f"  deps hanging ({HANG_SECONDS:g} s without an answer), fresh server: port open after"
        f" {b['port_open_s']:.2f} s, workers ready after {b['workers_ready_s']:.2f} s;",
        f"  first answer {first['status']} {first['body'].get('status')} {first['body'].get('details')}"
        f" in {first['seconds'] * 1000:.0f} ms",
    ]
    slow = a["slow_clients"]
    lines += [
        "",
        f"  slow clients: {args.idle_clients} idle + {args.trickling_clients} trickling (a header byte every 0.1 s)"
        f" connections held ({slow['held']} open at the end, {slow['closed_by_server']} closed by the server's"
        " header deadline and replaced);",
        f"  {args.slow_rounds} probes per path, one at a time on new connections:",
        f"    {'path':<24} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'failed':>7}   (without slow clients: p50, p99)",
        *(
            f"    {path:<24} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['max_ms']:>8.1f} {row['failures']:>7}"
            f"   ({slow['baseline'][path]['p50_ms']:.2f}, {slow['baseline'][path]['p99_ms']:.2f})"
            for path, row in slow["slow"].items()
        ),
    ]
    for name, key in (("unhealthy -> healthy", "recovery_unhealthy"), ("stopped -> started", "recovery_restarted")):
        back = b[key]["back"]
        if back is None:
            lines.append(f"  util {name}: the failure never showed on every worker, not measured")
        else:
            lines.append(
                f"  util {name}: first OPERATIONAL answer after {fmt_s(back['first'])},"
                f" every answer OPERATIONAL from {fmt_s(back['all_workers'])} ({back['polls']} polls)"
            )
    lines += ["", f"  {'goal':<52} {'measured':>14} {'goal':>16}   result", *(g.row() for g in checked), ""]
    failed = [g for g in checked if not g.passed]
    lines.append(f"  {len(checked) - len(failed)}/{len(checked)} goals met" + (": ALL PASS" if not failed else ""))
    return "\n".join(lines)


def busy_warning(results: list[WrkResult]) -> list[str]:
    worst = max((r.foreign_cores or 0.0 for r in results), default=0.0)
    if worst <= BUSY_MACHINE:
        return []
    return [
        f"  WARNING: other processes used up to {worst:.2f} cores during a measured run: req/s and the"
        " ratios are unreliable; rerun on a quiet machine."
    ]


def jsonable(value: Any) -> Any:
    if isinstance(value, WrkResult):
        return value.as_dict()
    if isinstance(value, Goal):
        return {**asdict(value), "passed": value.passed}
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10)
    first = (done.stdout or done.stderr or "wrk").strip().splitlines()[0]
    return first.split(" Copyright")[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env_int = lambda name, default: int(os.environ.get(name) or default)  # noqa: E731
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds of measured load per run (10)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of wrk warm-up before each measured run (3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1: it shares the cores with the server)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="health and live are measured in this many alternating slices (5)"
    )
    parser.add_argument(
        "--hang-connections", type=int, default=4, help="wrk connections while the deps hang, below saturation (4)"
    )
    parser.add_argument("--workers", type=int, default=env_int("WEB_CONCURRENCY", 2), help="gunicorn workers (2)")
    parser.add_argument(
        "--worker-threads", type=int, default=env_int("GUNICORN_THREADS", 8), help="threads per worker (8)"
    )
    parser.add_argument("--ttl", type=float, default=5.0, help="HEALTH_CACHE_TTL in seconds (5)")
    parser.add_argument("--check-timeout", type=float, default=0.5, help="HEALTH_CHECK_TIMEOUT in seconds (0.5)")
    parser.add_argument("--idle-clients", type=int, default=100, help="connections that send nothing (100)")
    parser.add_argument(
        "--trickling-clients", type=int, default=100, help="connections that send headers a byte at a time (100)"
    )
    parser.add_argument("--slow-rounds", type=int, default=100, help="probes per path while slow clients hold (100)")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help=f"PostgreSQL ({DEFAULT_DATABASE_URL})")
    parser.add_argument("--output", type=Path, default=None, help="results as JSON (latest.json, fleet.json)")
    fleet.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = RESULTS / ("fleet.json" if args.fleet else "latest.json")
    return args


def run(args: argparse.Namespace, wrk: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Both servers' phases, with the peers up throughout and everything stopped at the end."""
    with ExitStack() as stack:
        peers = (
            stack.enter_context(FakeClerkAPI()),
            stack.enter_context(FakeUtilService(grpc_health=False)),  # like the real Go service
            stack.enter_context(SentryReceiver()),
        )
        # Opened before migrate so that its own session is counted before the first reading.
        db = DatabaseSessions(args.database_url)
        stack.callback(db.close)
        log("manage.py migrate")
        manage(["migrate", "--noinput"], server_env(args, "letraz.settings", *peers), timeout=60)
        a = phase_a(args, wrk, peers, db)
        b = phase_b(args, wrk, peers)
        items = Counter(item.type for item in peers[2].items)
        return a, b, {"envelopes": peers[2].envelopes, "items": dict(items)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so every server and peer is stopped
    if args.fleet:
        return fleet_main(args)
    try:
        wrk = ensure_wrk()
    except WrkUnavailable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    header = (
        f"Letraz health bench, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node() or 'host'}:"
        f" {cores} CPU core(s), load average {os.getloadavg()[0]:.2f}\n"
        f"  NOTE: wrk ({args.threads} thread) shares these {cores} cores with gunicorn, PostgreSQL and the peers:"
        " absolute req/s and latencies\n  are lower than on a dedicated machine. Goals 1 and 2 compare endpoints"
        " measured alike; CPU ms/request is the steadier figure.\n"
        f"  server: gunicorn -c gunicorn.conf.py, asyncio + a2wsgi, {args.workers} workers x {args.worker_threads}"
        " threads,"
        " DJANGO_DEBUG off, Sentry on (loopback receiver),\n"
        f"  HEALTH_CACHE_TTL {args.ttl:g} s, HEALTH_CHECK_TIMEOUT {args.check_timeout:g} s; peers on 127.0.0.1;"
        f" PostgreSQL {args.database_url}\n"
        f"  load: {wrk_version(wrk)}; {args.connections} connections, a new one per request (as probes do);"
        f" {args.warmup:g} s warm-up, then\n  health and live in {args.rounds} alternating slices of"
        f" {slice_seconds(args)} s each, {args.duration:g} s for the rest;"
        f" {args.hang_connections} connections while the deps hang"
    )
    print(header, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)

    try:
        a, b, sentry = run(args, wrk)
    except (psycopg.OperationalError, RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
        # Everything started is stopped by now; say what failed without a traceback.
        print(f"bench: could not run: {exc}", file=sys.stderr)
        return 2
    checked = goals(args, a, b)
    print(report(args, a, b, sentry, checked), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "header": header,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "cpu_cores": cores,
        "server_a": a,
        "server_b": b,
        "sentry": sentry,
        "load_average_after": os.getloadavg(),
        "goals": checked,
        "passed": all(g.passed for g in checked),
    }
    args.output.write_text(json.dumps(jsonable(payload), indent=2) + "\n")
    print(f"\n  results: {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}")
    return 0 if payload["passed"] else 1


# -- the fleet-scale bench (issue 11) ---------------------------------------------------


def fleet_main(args: argparse.Namespace) -> int:
    """The timeline and fleet queries at 1,000 instances and 1,000,000 rows, and 50 streams beside probes."""
    try:
        wrk = ensure_wrk()
    except WrkUnavailable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print(
        f"Letraz fleet bench (issue 11), {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC:"
        f" {os.cpu_count()} CPU core(s), load average {os.getloadavg()[0]:.2f}; PostgreSQL {args.database_url}",
        flush=True,
    )
    out: dict[str, Any] = {}
    try:
        with ExitStack() as stack:
            url = stack.enter_context(fleet.scratch_database(args.database_url))
            peers = (
                stack.enter_context(FakeClerkAPI()),
                stack.enter_context(FakeUtilService(grpc_health=False)),
                stack.enter_context(SentryReceiver()),
            )
            env = server_env(args, "letraz.settings", *peers) | {"DATABASE_URL": url}
            log("manage.py migrate (a scratch database)")
            manage(["migrate", "--noinput"], env, timeout=60)
            out["population"] = fleet.populate(url, log)
            fleet.setup_django(url)
            log(f"queries, {args.fleet_runs} runs each")
            out["queries"] = fleet.queries(args.fleet_runs, log)
            out["heartbeats"] = fleet.heartbeats(url, 5.0, args.heartbeat_seconds, log)
            out["prune"] = fleet.prune_while_writing(url, log)
            out["streams"] = streams_beside_probes(args, wrk, env | {"HEALTH_STREAM_MAX": "40"}, peers[0])
    except (psycopg.OperationalError, RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
        print(f"bench: could not run: {exc}", file=sys.stderr)
        return 2
    checked = [
        *(Goal(f"F. {t.name[:49]}", t.p99_ms, fleet.GOAL_MS, "ms") for t in out["queries"]),
        Goal(
            "F. heartbeat row writes per instance per interval",
            out["heartbeats"]["writes_per_instance_per_interval"],
            1.05,
            "",
        ),
        Goal("F. lock waits while a day is pruned (samples)", out["prune"]["lock_wait_samples"], 0, ""),
        Goal("F. writer p99 while a day is pruned", out["prune"]["writer_p99_during_ms"], fleet.GOAL_MS, "ms"),
        Goal(f"F. streams open at once (of {args.streams})", out["streams"]["open"], args.streams, "", at_least=True),
        Goal(f"F. health p99 with {args.streams} streams open", out["streams"]["with"].p99_ms, 50, "ms"),
        Goal(
            f"F. streams that got the change (of {args.streams})",
            out["streams"]["delivery"]["delivered"],
            args.streams,
            "",
            at_least=True,
        ),
        Goal("F. change seen -> on every stream", out["streams"]["delivery"]["max_s"], 1.0, "s"),
    ]
    population = out["population"]
    lines = [
        "",
        "RESULTS (fleet)",
        "",
        f"  {population['rows']:,} rows, {population['instances']:,} instances: table"
        f" {population['table_bytes'] / 2**20:.0f} MiB + indexes {population['index_bytes'] / 2**20:.0f} MiB"
        f" = {population['bytes_per_row']:.0f} bytes per row",
        "",
        f"  {'query':<58} {'p50 ms':>8} {'p99 ms':>8} {'runs':>6}",
        *(t.row() + f"\n      plan: {t.plan}" for t in out["queries"]),
        "",
        f"  heartbeats: {out['heartbeats']['row_writes']:,} row writes for {out['heartbeats']['beats']:,} beats;"
        f" upsert p99 {out['heartbeats']['upsert_p99_ms']:.2f} ms",
        f"  prune: {out['prune']['deleted']:,} rows in {out['prune']['prune_s']:.1f} s; writer p99"
        f" {out['prune']['writer_p99_before_ms']:.2f} ms before, {out['prune']['writer_p99_during_ms']:.2f} ms during;"
        f" lock waits seen in {out['prune']['lock_wait_samples']} of {out['prune']['samples']} samples",
        load_row(f"{HEALTH} (no stream)", out["streams"]["without"]),
        load_row(f"{HEALTH} ({out['streams']['open']} streams)", out["streams"]["with"]),
        "",
        f"  {'goal':<52} {'measured':>14} {'goal':>16}   result",
        *(g.row() for g in checked),
    ]
    failed = [g for g in checked if not g.passed]
    lines.append(f"  {len(checked) - len(failed)}/{len(checked)} goals met" + (": ALL PASS" if not failed else ""))
    print("\n".join(lines), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    payload = {"fleet": out, "goals": checked, "passed": not failed}
    args.output.write_text(json.dumps(jsonable(payload), indent=2, default=str) + "\n")
    return 0 if not failed else 1


def streams_beside_probes(
    args: argparse.Namespace, wrk: str, env: dict[str, str], clerk: FakeClerkAPI
) -> dict[str, Any]:
    """``/health/`` at few connections with no stream, then with ``--streams`` open."""
    with Server(env, RESULTS / "server-fleet.log") as server:
        log(f"server (letraz.settings, HEALTH_STREAM_MAX 40 per worker) on {server.base_url}")
        server.wait_until_serving()
        warm(server, HEALTH, args, wrk)
        without = measure(server, HEALTH, args, wrk, seconds=args.duration, connections=args.hang_connections)
        sockets, refused = fleet.open_streams(server.port, args.streams, timeout=30)
        log(f"{len(sockets)} streams open ({refused} answers were 503 and retried)")
        try:
            with_streams = measure(server, HEALTH, args, wrk, seconds=args.duration, connections=args.hang_connections)
            delivery = fleet.change_reaches_streams(
                server.port, sockets, lambda: setattr(clerk, "mode", "unauthorized")
            )
            log(
                f"clerk DOWN reached {delivery['delivered']} of {len(sockets)} streams,"
                f" the last {fmt(delivery['max_s'])} s after the first answer showing it"
            )
        finally:
            clerk.mode = "ok"
            for sock in sockets:
                sock.close()
    return {
        "without": without,
        "with": with_streams,
        "open": len(sockets),
        "refused_503": refused,
        "delivery": delivery,
    }


if __name__ == "__main__":
    sys.exit(main())
