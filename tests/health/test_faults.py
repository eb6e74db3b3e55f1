"""Faults between the service and its real peers, made by the loopback fault proxy.

Each test puts :class:`~tests.peers.proxy.FaultProxy` in front of a real peer (the gRPC
util service, the PostgreSQL server of the test run), breaks the path the way networks
break, and asserts the state the service reports and when it comes back. Waits poll with
a deadline; a failure prints the reasons the service gave for each state it saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sentry_sdk
from django.db import connections

from health.checks import CheckFailed, ClerkCheck, DatabaseCheck, UtilServiceCheck
from health.conf import parse_grpc_target
from health.listeners import SentryListener
from health.runner import CheckResult
from health.service import HealthService
from health.status import Component, ComponentStatus, DatabaseStatus, UtilServiceStatus
from letraz import sentry as sentry_setup
from tests.peers.clerk import FakeClerkAPI
from tests.peers.proxy import FaultProxy, ProxyMode
from tests.peers.sentry import SentryReceiver
from tests.peers.util_service import FakeUtilService, UtilMode

MakeProxy = Callable[[int | tuple[str, int]], FaultProxy]
#: The bound under test is TTL + 1 s whatever the TTL. A run's limit of 0.9 s (not the
#: default 0.5 s) and a short TTL leave room for a PostgreSQL connect on a loaded machine
#: (over 0.5 s was seen at load average 9): the subject is recovery, not the limit.
TTL = 0.5
TIMEOUT = 0.9


def service_for(check: Any, *, ttl: float = TTL, timeout: float = TIMEOUT, **kwargs: Any) -> HealthService:
    return HealthService(
        [check], instance_id="t", critical=frozenset(), timeout=timeout, ttl=ttl, max_staleness=ttl, **kwargs
    )


def outcome(check: Any, timeout: float = TIMEOUT) -> str:
    """One run of ``check`` within ``timeout``: its status, and its reason when it failed."""
    try:
        return str(check.run(timeout).status)
    except CheckFailed as failure:
        return f"{failure.status} ({failure.reason})"


def wait_for_status(
    service: HealthService, component: Component, wanted: ComponentStatus, *, within: float
) -> list[CheckResult]:
    """Ask every 20 ms until ``wanted`` or ``within`` s; fail with every reason seen."""
    seen: list[CheckResult] = []
    deadline = time.monotonic() + within
    while True:
        result = service.check().results[component]
        if not seen or (seen[-1].status, seen[-1].reason) != (result.status, result.reason):
            seen.append(result)
        if result.status == wanted:
            return seen
        if time.monotonic() >= deadline:
            history = ", ".join(f"{r.status} ({r.reason or 'no reason'})" for r in seen)
            raise AssertionError(f"{component} not {wanted} within {within:g} s; it said: {history}")
        time.sleep(0.02)


# -- the util service: a connection that dies without FIN or RST ------------------------


@pytest.fixture
def util_behind_proxy(util_service: FakeUtilService, fault_proxy: MakeProxy) -> Iterator[tuple[FaultProxy, Any]]:
    proxy = fault_proxy(util_service.port)
    check = UtilServiceCheck(target=parse_grpc_target(proxy.target), tls=False, rebuild_interval=TTL)
    yield proxy, check
    check.close()


def test_util_stalled_mid_call_then_healthy_is_operational_within_the_ttl_and_a_second(
    util_behind_proxy: tuple[FaultProxy, UtilServiceCheck],
) -> None:
    proxy, check = util_behind_proxy
    service = service_for(check)
    try:
        wait_for_status(service, Component.UTIL_SERVICE, UtilServiceStatus.OPERATIONAL, within=10)
        # The peer vanishes: the channel's live connection freezes (no FIN, no RST) and
        # new connections are accepted but never answered.
        proxy.mode = ProxyMode.HANG
        assert proxy.stall() == 1
        wait_for_status(service, Component.UTIL_SERVICE, UtilServiceStatus.DISCONNECTED, within=10)
        proxy.mode = ProxyMode.PASS  # it is back; the frozen connection stays frozen
        back_at = time.monotonic()
        seen = wait_for_status(service, Component.UTIL_SERVICE, UtilServiceStatus.OPERATIONAL, within=TTL + 1.0)
        assert time.monotonic() - back_at <= TTL + 1.0, seen
    finally:
        service.close()


def test_util_whose_handshake_takes_300_ms_is_operational_not_unreachable(
    util_behind_proxy: tuple[FaultProxy, UtilServiceCheck],
) -> None:
    """A new connection's attempt is bounded by the call's deadline, not by 200 ms.

    grpc-core gives up a connection attempt after ``grpc.min_reconnect_backoff_ms``; set
    to 200 ms, the server's HTTP/2 SETTINGS arriving 300 ms late made the first call
    UNAVAILABLE after 200 ms (``connection attempt timed out before receiving SETTINGS
    frame``), as the loopback fake did once in a test run on a loaded machine.
    """
    proxy, check = util_behind_proxy
    proxy.latency = 0.300  # every answer chunk, the SETTINGS frame included
    for _ in range(2):  # the first call connects, the second reuses the connection
        assert outcome(check, timeout=5.0) == "OPERATIONAL"  # about 2 round trips: 0.6 s
    assert proxy.accepted == 1


def test_util_rebuilds_its_channel_after_a_deadline_at_most_once_per_ttl(
    util_service: FakeUtilService, fault_proxy: MakeProxy
) -> None:
    proxy, now = fault_proxy(util_service.port), [1000.0]
    check = UtilServiceCheck(
        target=parse_grpc_target(proxy.target), tls=False, rebuild_interval=TTL, clock=lambda: now[0]
    )

    try:
        assert outcome(check) == "OPERATIONAL"
        assert proxy.stall() == 1  # the channel's connection dies silently
        assert outcome(check) == "DISCONNECTED (RPC DEADLINE_EXCEEDED (no answer in time))"
        assert outcome(check) == "OPERATIONAL"  # a new channel, a new connection
        assert proxy.accepted == 2
        assert proxy.stall() == 1  # dies again, within the same TTL
        assert outcome(check) == "DISCONNECTED (RPC DEADLINE_EXCEEDED (no answer in time))"
        # Not rebuilt twice in a TTL:
        assert outcome(check) == "DISCONNECTED (RPC DEADLINE_EXCEEDED (no answer in time))"
        assert proxy.accepted == 2
        now[0] += TTL
        assert outcome(check) == "DISCONNECTED (RPC DEADLINE_EXCEEDED (no answer in time))"  # a TTL later: rebuilt
        assert outcome(check) == "OPERATIONAL"
        assert proxy.accepted == 3
    finally:
        check.close()


# -- Clerk: idle keep-alive connections that die without FIN or RST ------------------------


def test_clerk_frozen_idle_connections_cost_one_run_not_one_each(
    clerk_api: FakeClerkAPI, fault_proxy: MakeProxy
) -> None:
    """A partition freezes every idle connection the HTTP pool keeps; each would cost a run.

    Two runs at once (a hung run and its successor, as the runner allows) leave two idle
    connections behind. The fault matrix saw clerk stay DOWN for two TTLs after a stall
    was lifted, one timed-out run per frozen connection.
    """
    proxy = fault_proxy(clerk_api.port)
    check = ClerkCheck(secret_key=clerk_api.secret_key, api_url=f"http://127.0.0.1:{proxy.port}/v1")

    try:
        proxy.latency = 0.2  # long enough that two calls at once need two connections
        with ThreadPoolExecutor(2) as pool:
            assert list(pool.map(lambda _: outcome(check), range(2))) == ["OPERATIONAL", "OPERATIONAL"]
        proxy.latency = 0.0
        assert proxy.accepted == 2
        proxy.stall()  # every connection the pool keeps freezes
        assert outcome(check) == f"DOWN (no answer within {TIMEOUT:g} s)"
        assert outcome(check) == "OPERATIONAL"  # a new connection, not the next frozen one
    finally:
        check.close()


# -- the database: per-run connections, one round trip, client-side bounds ----------------


@pytest.fixture
def db_behind_proxy(fault_proxy: MakeProxy) -> Iterator[tuple[FaultProxy, DatabaseCheck]]:
    """A database alias that reaches the test database through the proxy."""
    default = connections["default"].settings_dict
    proxy = fault_proxy((default["HOST"] or "127.0.0.1", int(default["PORT"] or 5432)))
    alias = f"proxied_{proxy.port}"
    connections.settings[alias] = {**default, "HOST": "127.0.0.1", "PORT": str(proxy.port)}
    try:
        yield proxy, DatabaseCheck(slow_ms=250, alias=alias)
    finally:
        del connections.settings[alias]


@pytest.mark.postgres
@pytest.mark.django_db
def test_db_stalled_mid_query_then_healthy_is_operational_within_the_ttl_and_a_second(
    db_behind_proxy: tuple[FaultProxy, DatabaseCheck],
) -> None:
    proxy, check = db_behind_proxy
    service = service_for(check)
    try:
        wait_for_status(service, Component.DB, DatabaseStatus.OPERATIONAL, within=10)
        proxy.stall_on = b"Q"  # the next query is swallowed and its connection frozen
        wait_for_status(service, Component.DB, DatabaseStatus.FATAL, within=10)
        proxy.stall_on = None
        back_at = time.monotonic()
        seen = wait_for_status(service, Component.DB, DatabaseStatus.OPERATIONAL, within=TTL + 1.0)
        assert time.monotonic() - back_at <= TTL + 1.0, seen
        # The frozen connections never held a thread: every run ended at its limit.
        assert service.snapshot()[Component.DB].runs_in_flight == 0
    finally:
        service.close()


@pytest.mark.postgres
@pytest.mark.django_db
def test_db_at_80_ms_per_round_trip_is_operational_with_the_defaults(
    db_behind_proxy: tuple[FaultProxy, DatabaseCheck],
) -> None:
    """3 round trips of 80 ms (240 ms) fit the 0.5 s default; the old check's 7 did not.

    The round trips are counted by the proxy, so the test does not depend on how busy
    the machine is; the run itself gets a limit a loaded machine can meet (the figure
    with the defaults is measured, see the report of issue 7).
    """
    proxy, check = db_behind_proxy
    proxy.latency = 0.080
    service = service_for(check, ttl=0, timeout=2.0)
    try:
        for _ in range(3):  # the first run reads the migrations, later ones SELECT 1
            before = proxy.round_trips
            result = service.check().results[Component.DB]
            assert (result.status, result.reason) == (DatabaseStatus.OPERATIONAL, ""), result
            # The TLS request, start-up (trust: one), and the one query.
            assert proxy.round_trips - before == 3
            assert result.duration >= 3 * 0.080
    finally:
        service.close()


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_slow_query_on_a_database_that_connects_fast_is_degraded_not_fatal(
    db_behind_proxy: tuple[FaultProxy, DatabaseCheck],
) -> None:
    proxy, check = db_behind_proxy
    proxy.latency, proxy.latency_after = 0.300, b"Q"  # only answers to the query are late
    service = service_for(check, ttl=0, timeout=2.0)  # the query's time is the subject, not the limit
    try:
        for _ in range(2):
            result = service.check().results[Component.DB]
            assert result.status == DatabaseStatus.DEGRADED, result
            assert result.reason.startswith("SELECT 1 took "), result
    finally:
        service.close()


# -- listeners are off the probe path; Sentry hears a flapping component once --------------


class SleepingListener:
    """Two seconds per change, as a Sentry call to a far, slow endpoint might take."""

    def __init__(self) -> None:
        self.changes = 0

    def on_result(self, result: CheckResult) -> None:
        pass

    def on_change(self, previous: CheckResult | None, result: CheckResult) -> None:
        self.changes += 1
        time.sleep(2.0)


def test_a_listener_that_sleeps_2_s_leaves_probes_as_fast_as_without_it(util_service: FakeUtilService) -> None:
    """Probe latency with the listener: bounded far below its 2 s (measured by bench/)."""
    listener = SleepingListener()
    check = UtilServiceCheck(target=parse_grpc_target(util_service.target), tls=False)
    service = service_for(check, ttl=0, timeout=2.0, listeners=[listener])
    try:
        latencies = []
        for i in range(10):  # every probe is a change of state: ten 2 s listener calls queued
            util_service.mode = UtilMode.UNHEALTHY if i % 2 else UtilMode.HEALTHY
            started = time.monotonic()
            service.check()
            latencies.append(time.monotonic() - started)
        assert max(latencies) < 1.5, latencies  # does not wait for the listener (2 s each)
    finally:
        service.close()


@pytest.fixture
def sentry_on(sentry_receiver: SentryReceiver) -> Iterator[SentryReceiver]:
    outcome = sentry_setup.init_sentry(sentry_receiver.dsn, environment="test")
    assert outcome.error is None
    yield sentry_receiver
    sentry_sdk.init()
    sentry_setup.init_sentry("")


def test_ten_flaps_are_one_sentry_event_and_the_next_one_carries_the_count(
    sentry_on: SentryReceiver, util_service: FakeUtilService
) -> None:
    now = [1000.0]
    check = UtilServiceCheck(target=parse_grpc_target(util_service.target), tls=False)
    sentry = SentryListener(interval=600, clock=lambda: now[0])
    service = service_for(check, ttl=0, timeout=2.0, listeners=[sentry])

    def util_events() -> list[dict[str, Any]]:
        return [e for e in sentry_on.events if e.get("tags", {}).get("health.component") == "util_service"]

    try:
        assert service.check().results[Component.UTIL_SERVICE].status == UtilServiceStatus.OPERATIONAL
        for _ in range(10):  # ten flaps: down and up again, within one interval
            for mode, status in ((UtilMode.UNHEALTHY, UtilServiceStatus.FAILED), (UtilMode.HEALTHY, "OPERATIONAL")):
                util_service.mode = mode
                assert service.check().results[Component.UTIL_SERVICE].status == status
            now[0] += 1
        assert service.flush_notifications(10)
        sentry_sdk.flush(timeout=5)
        assert sentry_on.wait_for(lambda r: len(util_events()) >= 1, timeout=5)
        [first] = util_events()
        assert first["extra"]["health.changes"] == 1
        assert first["message"] == "util_service OPERATIONAL -> FAILED (peer says 'unhealthy')"

        now[0] += 600  # the interval has passed: the next failure is an event, with the count
        util_service.mode = UtilMode.UNHEALTHY
        service.check()
        assert service.flush_notifications(10)
        sentry_sdk.flush(timeout=5)
        assert sentry_on.wait_for(lambda r: len(util_events()) >= 2, timeout=5), util_events()
        second = util_events()[1]
        assert second["extra"]["health.changes"] == 20  # 19 since the first event, and this one
        assert second["message"].endswith("; 20 changes since the last event")
        assert len(util_events()) == 2
    finally:
        service.close()
