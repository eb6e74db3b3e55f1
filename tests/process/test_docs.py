"""The docs under the real server: behind a proxy prefix, HEAD, and the favicon."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.process.support import base_env, http_request, running_gunicorn

pytestmark = pytest.mark.process

DOCS = ("/api/v1/schema/swagger-ui/", "/api/v1/schema/redoc/", "/api/v1/schema/")


def docs_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'docs.sqlite3'}", WEB_CONCURRENCY="1", **extra)


def test_under_a_script_name_the_schema_points_try_it_out_under_it(tmp_path: Path) -> None:
    # gunicorn moves a SCRIPT_NAME prefix from the path into the WSGI environ, as a proxy
    # that forwards /letraz/... to this server would have it configured.
    with running_gunicorn(docs_env(tmp_path, SCRIPT_NAME="/letraz"), tmp_path / "g.log") as (_, port):
        status, _, raw = http_request(port, "/letraz/api/v1/schema/")
    assert status == 200
    assert yaml.safe_load(raw)["servers"][0] == {"url": "/letraz/api/v1", "description": "This server"}


def test_head_on_the_docs_and_the_favicon_log_no_warning(tmp_path: Path) -> None:
    with running_gunicorn(docs_env(tmp_path), tmp_path / "g.log") as (server, port):
        for page in DOCS:
            status, headers, body = http_request(port, page, method="HEAD")
            assert (status, body) == (200, b""), page
            assert int(headers["content-length"]) > 100, page
        status, headers, body = http_request(port, "/favicon.ico")
        assert status == 200
        assert body[:4] == b"\0\0\1\0"
        # One more request after them, so that anything they logged is in the file.
        http_request(port, "/api/v1/health/live/")
        server.terminate()
        server.wait(timeout=30)
    log = server.output
    assert "no-body response" not in log, log
    assert "Not Found" not in log and "favicon" not in log.replace("GET /favicon.ico", ""), log
