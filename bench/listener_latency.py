"""Probe latency with and without a change listener that sleeps 2 s (issue #7).

    .venv/bin/python -m bench.listener_latency [--probes 400]

Runs the real ``HealthService`` in this process against the real util service over
gRPC on loopback (``tests/peers``), uncached (every probe is a run), with the peer
flipping between healthy and unhealthy on every probe so that every probe is a change
of state. Prints median and p99 of ``service.check()`` without listeners and with one
listener that sleeps 2 s per change. Listeners run on the notifier thread, so the two
rows should match; before, each probe waited for the listener (2 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from health.checks import UtilServiceCheck  # noqa: E402
from health.conf import parse_grpc_target  # noqa: E402
from health.runner import CheckResult, HealthListener  # noqa: E402
from health.service import HealthService  # noqa: E402
from health.status import Component  # noqa: E402
from tests.peers.util_service import FakeUtilService, UtilMode  # noqa: E402


class SleepingListener:
    def on_result(self, result: CheckResult) -> None:
        pass

    def on_change(self, previous: CheckResult | None, result: CheckResult) -> None:
        time.sleep(2.0)


def measure(util: FakeUtilService, listeners: list[HealthListener], probes: int) -> list[float]:
    check = UtilServiceCheck(target=parse_grpc_target(util.target), tls=False)
    service = HealthService(
        [check],
        instance_id="bench",
        critical=frozenset({Component.UTIL_SERVICE}),
        ttl=0,
        max_staleness=0,
        listeners=listeners,
    )
    latencies = []
    try:
        service.check()  # the channel's first connect is not a probe's cost
        for i in range(probes):
            util.mode = UtilMode.UNHEALTHY if i % 2 == 0 else UtilMode.HEALTHY
            started = time.perf_counter()
            service.check()
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        service.close()
    return latencies


def row(name: str, latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{name:<28} probes {len(ordered):>5}  median {statistics.median(ordered):7.2f} ms  p99 {p99:7.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.listener_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=400, help="probes per row (400), each a change of state")
    args = parser.parse_args()
    with FakeUtilService(UtilMode.HEALTHY) as util:
        print(row("no listener", measure(util, [], args.probes)))
        print(row("listener sleeping 2 s", measure(util, [SleepingListener()], args.probes)))


if __name__ == "__main__":
    main()
