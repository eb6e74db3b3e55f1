"""Shared fixtures: real peers on loopback (``tests/peers``) and a fresh health service."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from django.test import override_settings

from health.service import reset_health_service
from tests.peers.clerk import FakeClerkAPI
from tests.peers.util_service import FakeUtilService

pytest_plugins = ["tests.peers.fixtures", "tests.reporting", "tests.die_with_run"]

ON_POSTGRES = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("REQUIRE_POSTGRES") and not ON_POSTGRES:
        raise pytest.UsageError("REQUIRE_POSTGRES is set but DATABASE_URL does not point at PostgreSQL.")
    _install_sentry_integrations_once()


def _install_sentry_integrations_once() -> None:
    """Set Sentry's integrations up now, before any test starts threads.

    In production ``settings.py`` initialises Sentry at process start, before any
    thread exists. Here the first initialisation with a DSN would otherwise happen in
    the middle of the run, with peers' and checks' threads alive; once (in one CI run
    of many) it raised inside the SDK. Integrations are set up once per process, so
    doing it here keeps the tests' later ``init_sentry`` calls as quiet as production's.
    """
    import sentry_sdk

    from letraz.sentry import init_sentry

    outcome = init_sentry("http://public@127.0.0.1:9/1")  # never sent: nothing is captured
    assert outcome.error is None, outcome
    sentry_sdk.init()
    init_sentry("")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Servers a test started die with the run, even if a teardown never ran."""
    from tests.process.support import kill_all_servers

    kill_all_servers()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Files that take minutes first, then those with servers, then the rest: under
    # pytest-xdist (``--dist loadfile``, ``make test``) each worker takes the next file
    # in this order, so the long ones do not start last and keep the run going alone.
    items.sort(key=_start_order)
    if ON_POSTGRES:
        return
    skip = pytest.mark.skip(reason="needs DATABASE_URL pointing at PostgreSQL")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


def _start_order(item: pytest.Item) -> int:
    if item.get_closest_marker("long"):
        return 0
    if item.get_closest_marker("process") or item.get_closest_marker("image"):
        return 1
    return 2


@pytest.fixture(autouse=True)
def fresh_health_service() -> Iterator[None]:
    """Each test builds its service from its own settings, and leaves no threads behind."""
    reset_health_service()
    yield
    reset_health_service()


@pytest.fixture
def peers(clerk_api: FakeClerkAPI, util_service: FakeUtilService) -> Iterator[tuple[FakeClerkAPI, FakeUtilService]]:
    """Clerk and the util service both up, and the settings pointing at them.

    The time limit is 2 s, not production's 0.5 s: these tests are about what the
    answers say, and on a machine shared by others (load average 8 on 2 cores was seen)
    a PostgreSQL backend's fork or a thread's turn at the GIL alone can take 0.5 s.
    Tests about the limit set their own.
    """
    with override_settings(
        HEALTH_CHECK_TIMEOUT=2.0,
        CLERK_SECRET_KEY=clerk_api.secret_key,
        CLERK_API_URL=clerk_api.url,
        UTIL_GRPC_HOST=util_service.target,
        UTIL_GRPC_TLS=False,
    ):
        yield clerk_api, util_service
