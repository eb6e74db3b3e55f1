"""Swagger UI and Redoc in a real headless Chromium, against the real server, offline.

Every request the page makes goes through a route: those to the server under test
continue, every other one is blocked and recorded, and a recorded one fails the test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.peers.clerk import FakeClerkAPI
from tests.peers.util_service import FakeUtilService
from tests.process.support import UNHURRIED, base_env, migrated_database, peer_env, running_gunicorn

pytestmark = [pytest.mark.browser, pytest.mark.process]

#: Generous bounds for a loaded 2-core machine; a working page needs a fraction.
PAGE_TIMEOUT_MS = 30_000


@dataclass
class PageWatch:
    """What a page did: requests let through, requests blocked, errors it met."""

    origin: str
    local: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def route(self, route: Any) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" == self.origin:
            self.local.append(parts.path)
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("blockedbyclient")

    def response(self, response: Any) -> None:
        if response.status >= 400:
            self.failures.append(f"HTTP {response.status} {response.url}")

    def console(self, message: Any) -> None:
        if message.type == "error":
            self.failures.append(f"console: {message.text}")

    def summary(self) -> str:
        return f"{len(self.local)} local requests ({', '.join(sorted(set(self.local)))}), {len(self.blocked)} blocked"


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    contexts: list[Any] = []

    def open_(origin: str, path: str) -> tuple[Any, PageWatch]:
        watch = PageWatch(origin)
        context = browser.new_context(service_workers="block")
        contexts.append(context)
        context.route("**/*", watch.route)
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        page = context.new_page()
        page.on("response", watch.response)
        page.on("console", watch.console)
        page.on("pageerror", lambda error: watch.failures.append(f"page error: {error}"))
        page.goto(origin + path, wait_until="load")
        return page, watch

    yield open_
    for context in contexts:
        context.close()


def try_it_out(page: Any) -> tuple[str, str, str]:
    """Try it out -> Execute on GET /health/: the request URL, status code and body shown."""
    operation = page.locator("#operations-Core_APIs-health_retrieve")
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("button.execute").click()
    live = operation.locator(".live-responses-table .response")
    live.locator(".response-col_status").wait_for()
    status = live.locator(".response-col_status").inner_text().strip()
    body = live.locator(".response-col_description pre").first.inner_text()
    request_url = operation.locator(".request-url pre").inner_text().strip()
    return request_url, status, body


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    with migrated_database(tmp_path) as url:
        yield url


def test_try_it_out_shows_the_live_503_of_a_fresh_clone(open_page: Any, database_url: str, tmp_path: Path) -> None:
    env = base_env(DATABASE_URL=database_url, WEB_CONCURRENCY="1", **UNHURRIED)
    with running_gunicorn(env, tmp_path / "gunicorn.log") as (server, port):
        origin = f"http://127.0.0.1:{port}"
        page, watch = open_page(origin, "/api/v1/schema/swagger-ui/")
        request_url, status, body = try_it_out(page)
    print(f"\nSwagger UI, Try it out, fresh clone: {status} {body.strip()[:160]}; {watch.summary()}")
    assert request_url == f"{origin}/api/v1/health/"
    assert status == "503", f"{body}\nserver log (each change with its reason):\n{server.output[-3000:]}"
    report = json.loads(body)
    assert report["status"] == "DEGRADED"
    assert report["details"] == {
        "sentry": "UNINITIALIZED",
        "clerk": "DOWN",
        "db": "OPERATIONAL",
        "util_service": "DISCONNECTED",
    }
    assert watch.blocked == [], f"the page tried to reach outside: {watch.blocked}"


def test_try_it_out_shows_the_live_200_when_every_peer_answers(
    open_page: Any, database_url: str, tmp_path: Path, clerk_api: FakeClerkAPI, util_service: FakeUtilService
) -> None:
    env = base_env(DATABASE_URL=database_url, WEB_CONCURRENCY="1", **UNHURRIED, **peer_env(clerk_api, util_service))
    with running_gunicorn(env, tmp_path / "gunicorn.log") as (server, port):
        page, watch = open_page(f"http://127.0.0.1:{port}", "/api/v1/schema/swagger-ui/")
        _, status, body = try_it_out(page)
    print(f"\nSwagger UI, Try it out, peers up: {status} {body.strip()[:160]}; {watch.summary()}")
    assert status == "200", f"{body}\nserver log (each change with its reason):\n{server.output[-3000:]}"
    assert json.loads(body)["status"] == "OPERATIONAL"
    assert watch.blocked == [], f"the page tried to reach outside: {watch.blocked}"


@pytest.mark.parametrize(
    ("path", "ready"),
    [
        ("/api/v1/schema/swagger-ui/", "#operations-Core_APIs-health_retrieve"),
        ("/api/v1/schema/redoc/", 'h1:has-text("Letraz Backend Server")'),
    ],
)
def test_each_docs_page_loads_with_no_request_outside_the_server(
    open_page: Any, tmp_path: Path, path: str, ready: str
) -> None:
    env = base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'docs.sqlite3'}", WEB_CONCURRENCY="1")
    with running_gunicorn(env, tmp_path / "gunicorn.log") as (_, port):
        page, watch = open_page(f"http://127.0.0.1:{port}", path)
        page.locator(ready).first.wait_for(state="attached")
        # Images, fonts and the favicon come after the page's own scripts have run.
        page.wait_for_load_state("networkidle")
        title = page.title()
    print(f"\n{path}: title {title!r}; {watch.summary()}")
    assert watch.blocked == [], f"the page tried to reach outside: {watch.blocked}"
    assert watch.failures == [], watch.failures
    assert "/favicon.ico" in watch.local or any(p.endswith((".png", ".svg")) for p in watch.local)
