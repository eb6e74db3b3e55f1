"""The status page in headless Chromium against the real gunicorn and PostgreSQL.

Playwright drives Debian's chromium (``/usr/bin/chromium``; ``.ci/run`` installs it when
missing). The page must show the states and then follow a change of a peer without a
reload, readable on a phone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.clerk import ClerkMode, FakeClerkAPI
from tests.peers.util_service import FakeUtilService
from tests.process.support import (
    base_env,
    http_request,
    migrated_database,
    on_postgres,
    peer_env,
    poll,
    running_gunicorn,
)

pytestmark = [pytest.mark.process, pytest.mark.postgres]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SETTLE = 20.0


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def server(
    tmp_path: Path, clerk_api: FakeClerkAPI, util_service: FakeUtilService
) -> Iterator[tuple[int, FakeClerkAPI]]:
    if not on_postgres():
        pytest.skip("needs DATABASE_URL pointing at PostgreSQL")
    with migrated_database(tmp_path) as url:
        env = base_env(
            DATABASE_URL=url,
            INSTANCE_ID="pod-browser",
            WEB_CONCURRENCY="1",
            GUNICORN_THREADS="4",
            HEALTH_STREAM_MAX="4",
            HEALTH_CHECK_TIMEOUT="0.9",
            HEALTH_HEARTBEAT_INTERVAL="0.5",
            HEALTH_CACHE_TTL="0.5",  # the instance notices the change within about a second
            HEALTH_MAX_STALENESS="1",
            **peer_env(clerk_api, util_service),
        )
        with running_gunicorn(env, tmp_path / "gunicorn.log") as (_, port):

            def fleet_states() -> dict[str, str]:
                instances = json.loads(http_request(port, "/api/v1/health/fleet/")[2])["instances"]
                return instances[0]["states"] if instances else {}

            states = poll(fleet_states, lambda s: s.get("clerk") == "OPERATIONAL", timeout=SETTLE)
            assert states.get("clerk") == "OPERATIONAL", states
            yield port, clerk_api


def test_the_page_shows_the_states_and_follows_a_change_without_a_reload(
    browser: Any, server: tuple[int, FakeClerkAPI]
) -> None:
    port, clerk_api = server
    page = browser.new_page(viewport={"width": 375, "height": 740})  # a phone
    try:
        page.goto(f"http://127.0.0.1:{port}/status/")
        clerk = page.locator('[data-component="clerk"]')
        assert clerk.get_attribute("data-state") == "OPERATIONAL"
        assert "1 of 1 instance OPERATIONAL" in clerk.inner_text()
        assert page.locator("#fleet").inner_text().count("pod-browser") == 1
        bar = page.get_by_role("img", name="clerk, last 24 hours:", exact=False)
        assert bar.count() == 1, "each bar has a text alternative"
        assert page.evaluate("document.documentElement.scrollWidth") <= 375, "no sideways scrolling on a phone"
        page.wait_for_function("document.getElementById('live').textContent === 'Updates live.'")
        page.evaluate("window.sameDocument = true")

        clerk_api.mode = ClerkMode.UNAUTHORIZED
        page.wait_for_selector('[data-component="clerk"][data-state="DOWN"]', timeout=SETTLE * 1000)
        assert page.evaluate("window.sameDocument === true"), "the page was reloaded"
        assert page.locator('[data-testid="overall"]').inner_text() == "Overall: DEGRADED"
        incidents = page.locator("section", has=page.locator("#incidents-heading")).inner_text()
        assert "clerk" in incidents and "DOWN" in incidents and "ongoing" in incidents
        assert "HTTP 401" not in page.content(), "reasons are not public"
    finally:
        page.close()
