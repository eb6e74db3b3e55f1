"""Sentry in the real server: initialised once at start, probes never traced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.peers.clerk import FakeClerkAPI
from tests.peers.sentry import SentryReceiver
from tests.peers.util_service import FakeUtilService
from tests.process.support import UNHURRIED, base_env, http_request, migrated_database, peer_env, running_gunicorn

pytestmark = pytest.mark.process


def test_probes_are_never_traced_while_other_requests_are(
    tmp_path: Path, sentry_receiver: SentryReceiver, clerk_api: FakeClerkAPI, util_service: FakeUtilService
) -> None:
    with migrated_database(tmp_path) as database_url:
        env = base_env(
            DATABASE_URL=database_url,
            WEB_CONCURRENCY="1",
            SENTRY_DSN=sentry_receiver.dsn,
            SENTRY_TRACES_SAMPLE_RATE="1.0",
            SENTRY_ENVIRONMENT="process-test",
            **UNHURRIED,
            **peer_env(clerk_api, util_service),
        )
        with running_gunicorn(env, tmp_path / "gunicorn.log") as (server, port):
            status, _, raw = http_request(port, "/api/v1/health/")
            assert status == 200
            assert json.loads(raw)["details"]["sentry"] == "OPERATIONAL"
            for path in ("/api/v1/health/", "/api/v1/health/live/", "/api/v1/health/ready/") * 5:
                assert http_request(port, path)[0] == 200
            assert http_request(port, "/api/v1/schema/")[0] == 200
            assert sentry_receiver.wait_for(lambda r: len(r.transactions) >= 1, timeout=15), server.output
    names = [t.get("transaction", "") for t in sentry_receiver.transactions]
    assert names, "the schema request should have been traced"
    assert not [n for n in names if "health" in n], names
    assert all(t.get("environment") == "process-test" for t in sentry_receiver.transactions)
