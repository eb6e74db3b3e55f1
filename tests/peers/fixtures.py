"""Pytest fixtures for the loopback peers (loaded via ``pytest_plugins``).

Each fixture is function-scoped, yields a started peer and always stops it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.peers.clerk import ClerkMode, FakeClerkAPI
from tests.peers.proxy import FaultProxy
from tests.peers.sentry import SentryReceiver
from tests.peers.tcp import BlackholeListener
from tests.peers.tcp import closed_port as _closed_port
from tests.peers.util_service import FakeUtilService, UtilMode


@pytest.fixture
def clerk_api() -> Iterator[FakeClerkAPI]:
    """A :class:`FakeClerkAPI` in mode ``ok``; use ``.url`` and ``.secret_key``."""
    with FakeClerkAPI(ClerkMode.OK) as api:
        yield api


@pytest.fixture
def util_service() -> Iterator[FakeUtilService]:
    """A :class:`FakeUtilService`: letraz HealthCheck healthy, ``grpc.health.v1`` SERVING."""
    service = FakeUtilService(UtilMode.HEALTHY)
    service.set_grpc_health(True)
    with service:
        yield service


@pytest.fixture
def blackhole() -> Iterator[BlackholeListener]:
    """A :class:`BlackholeListener`: accepts TCP, never answers."""
    with BlackholeListener() as listener:
        yield listener


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    return _closed_port()


@pytest.fixture
def sentry_receiver() -> Iterator[SentryReceiver]:
    """A :class:`SentryReceiver`; use ``.dsn`` and ``.wait_for``."""
    with SentryReceiver() as receiver:
        yield receiver


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[int | tuple[str, int]], FaultProxy]]:
    """Makes started :class:`FaultProxy` objects in front of an upstream; stops them all."""
    proxies: list[FaultProxy] = []

    def make(upstream: int | tuple[str, int]) -> FaultProxy:
        proxy = FaultProxy(upstream).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()
