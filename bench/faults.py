"""Recovery after a stall and the database at 80 ms per round trip, measured (issue #7).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/NAME .venv/bin/python -m bench.faults [--runs 10]

NAME must be a migrated database (``manage.py migrate``). The real checks run through
the real ``HealthService`` against the real peers (the util service over gRPC from
``tests/peers``, this PostgreSQL) behind the loopback fault proxy (``tests/peers/proxy.py``):

* util: the live connection freezes and new ones hang, until DISCONNECTED; then the peer
  is back: seconds until OPERATIONAL (bound: TTL + 1 s, TTL 1 s here);
* db: the next query's connection freezes, until FATAL; then back: the same;
* db at 80 ms per round trip with the defaults (limit 0.5 s): states and run times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "letraz.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-faults")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")

import django  # noqa: E402

django.setup()

from django.db import connections  # noqa: E402

from health.checks import DatabaseCheck, UtilServiceCheck  # noqa: E402
from health.conf import parse_grpc_target  # noqa: E402
from health.service import HealthService  # noqa: E402
from health.status import Component  # noqa: E402
from tests.peers.proxy import FaultProxy, ProxyMode  # noqa: E402
from tests.peers.util_service import FakeUtilService, UtilMode  # noqa: E402

TTL = 1.0


def service(check: object, *, ttl: float = TTL) -> HealthService:
    return HealthService(
        [check],  # type: ignore[list-item]
        instance_id="bench",
        critical=frozenset(),
        timeout=0.5,
        ttl=ttl,
        max_staleness=ttl,
    )


def wait(svc: HealthService, component: Component, wanted: str, within: float = 10.0) -> float:
    started = time.monotonic()
    while (result := svc.check().results[component]).status != wanted:
        if time.monotonic() - started > within:
            raise SystemExit(f"{component} not {wanted} within {within} s: {result}")
        time.sleep(0.02)
    return time.monotonic() - started


def util_recovery(runs: int) -> list[float]:
    times = []
    with FakeUtilService(UtilMode.HEALTHY) as util, FaultProxy(util.port) as proxy:
        check = UtilServiceCheck(target=parse_grpc_target(proxy.target), tls=False, rebuild_interval=TTL)
        svc = service(check)
        try:
            for _ in range(runs):
                wait(svc, Component.UTIL_SERVICE, "OPERATIONAL")
                proxy.mode = ProxyMode.HANG
                proxy.stall()
                wait(svc, Component.UTIL_SERVICE, "DISCONNECTED")
                proxy.mode = ProxyMode.PASS
                times.append(wait(svc, Component.UTIL_SERVICE, "OPERATIONAL"))
        finally:
            svc.close()
    return times


def proxied_database(proxy: FaultProxy) -> str:
    default = connections["default"].settings_dict
    connections.settings["bench_proxied"] = {**default, "HOST": "127.0.0.1", "PORT": str(proxy.port)}
    return "bench_proxied"


def db_recovery(runs: int) -> list[float]:
    times = []
    default = connections["default"].settings_dict
    with FaultProxy((default["HOST"] or "127.0.0.1", int(default["PORT"] or 5432))) as proxy:
        svc = service(DatabaseCheck(slow_ms=250, alias=proxied_database(proxy)))
        try:
            for _ in range(runs):
                wait(svc, Component.DB, "OPERATIONAL")
                proxy.stall_on = b"Q"
                wait(svc, Component.DB, "FATAL")
                proxy.stall_on = None
                times.append(wait(svc, Component.DB, "OPERATIONAL"))
        finally:
            svc.close()
    return times


def db_at_80_ms(runs: int) -> tuple[list[float], list[str]]:
    default = connections["default"].settings_dict
    with FaultProxy((default["HOST"] or "127.0.0.1", int(default["PORT"] or 5432))) as proxy:
        proxy.latency = 0.080
        svc = service(DatabaseCheck(slow_ms=250, alias=proxied_database(proxy)), ttl=0)
        try:
            results = [svc.check().results[Component.DB] for _ in range(runs)]
        finally:
            svc.close()
    return [r.duration for r in results], [str(r.status) for r in results]


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"n={len(ordered)} median {statistics.median(ordered):.3f} s p99 {p99:.3f} s max {ordered[-1]:.3f} s"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="stalls (and 80 ms runs x3) per row (10)")
    args = parser.parse_args()
    print(f"util stalled, then back -> OPERATIONAL after: {summary(util_recovery(args.runs))} (TTL + 1 s = 2 s)")
    print(f"db stalled mid-query, then back -> OPERATIONAL after: {summary(db_recovery(args.runs))} (TTL + 1 s = 2 s)")
    durations, states = db_at_80_ms(3 * args.runs)
    print(
        f"db at 80 ms per round trip, limit 0.5 s: {states.count('OPERATIONAL')}/{len(states)} OPERATIONAL,"
        f" run {summary(durations)}"
    )


if __name__ == "__main__":
    main()
