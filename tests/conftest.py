"""Shared fixtures: real peers on loopback (``tests/peers``) and a fresh health service."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from health.service import reset_health_service

pytest_plugins = ["tests.peers.fixtures"]

ON_POSTGRES = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("REQUIRE_POSTGRES") and not ON_POSTGRES:
        raise pytest.UsageError("REQUIRE_POSTGRES is set but DATABASE_URL does not point at PostgreSQL.")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ON_POSTGRES:
        return
    skip = pytest.mark.skip(reason="needs DATABASE_URL pointing at PostgreSQL")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_health_service() -> Iterator[None]:
    """Each test builds its service from its own settings, and leaves no threads behind."""
    reset_health_service()
    yield
    reset_health_service()
