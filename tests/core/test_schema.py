"""Schema first: ``openapi.yaml`` is what drf-spectacular generates, and it keeps the contract."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from django.test import Client
from django.urls import clear_script_prefix, set_script_prefix
from openapi_spec_validator import validate

ROOT = Path(__file__).resolve().parents[2]
#: The published contract, vendored so the tests do not depend on where the repo sits.
CONTRACT_FILE = ROOT / "contract" / "health-openapi.yaml"
#: Where the team publishes it; when present, the vendored copy must not drift from it.
PUBLISHED_CONTRACT = ROOT.parent / "shared" / "contract" / "health-openapi.yaml"

#: Copy-paste slips in the original's wording, fixed on purpose (REFERENCE.md allows it).
REWORDED = {
    ("HealthCheck", "status"): "The health status of the server. The status can be OPERATIONAL or DEGRADED.",
    ("HealthDetails", "db"): (
        "The health status of the database connection. The status can be OPERATIONAL, DEGRADED or FATAL."
    ),
}


def generate() -> str:
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    return out.getvalue()


@pytest.fixture(scope="module")
def ours() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "openapi.yaml").read_text())


@pytest.fixture(scope="module")
def contract() -> dict[str, Any]:
    return yaml.safe_load(CONTRACT_FILE.read_text())


def test_the_vendored_contract_is_the_published_one() -> None:
    if not PUBLISHED_CONTRACT.exists():
        pytest.skip("no shared/ folder beside this checkout")
    assert CONTRACT_FILE.read_text() == PUBLISHED_CONTRACT.read_text()


def words(text: str) -> str:
    """Descriptions compared as words: YAML folding and bullet spacing differ by generator."""
    return re.sub(r"\s+", " ", text).strip()


def test_openapi_yaml_is_what_the_code_generates_now() -> None:
    assert (ROOT / "openapi.yaml").read_text() == generate(), "run `make schema` and commit openapi.yaml"


def test_openapi_yaml_is_a_valid_openapi_document(ours: dict[str, Any]) -> None:
    validate(ours)
    assert ours["openapi"] == "3.0.3"


@pytest.mark.parametrize("key", ["info", "servers", "tags"])
def test_top_level_blocks_match_the_contract(ours: dict[str, Any], contract: dict[str, Any], key: str) -> None:
    if key == "info":
        assert {k: words(v) for k, v in ours["info"].items()} == {k: words(v) for k, v in contract["info"].items()}
    else:
        assert ours[key] == contract[key]


def test_the_health_operation_matches_the_contract(ours: dict[str, Any], contract: dict[str, Any]) -> None:
    mine, theirs = ours["paths"]["/health/"]["get"], contract["paths"]["/health/"]["get"]
    for key in ("operationId", "tags", "summary"):
        assert mine[key] == theirs[key], key
    assert words(mine["description"]) == words(theirs["description"])
    assert mine["responses"] == theirs["responses"]
    assert set(mine["responses"]) == {"200", "503"}
    assert "security" not in mine and "parameters" not in mine and "requestBody" not in mine
    assert set(ours["paths"]["/health/"]) == {"get"}


@pytest.mark.parametrize("schema", ["HealthCheck", "HealthDetails"])
def test_the_body_schemas_match_the_contract(ours: dict[str, Any], contract: dict[str, Any], schema: str) -> None:
    mine, theirs = ours["components"]["schemas"][schema], contract["components"]["schemas"][schema]
    assert mine["type"] == theirs["type"] == "object"
    assert mine["required"] == theirs["required"]
    assert list(mine["properties"]) == list(theirs["properties"])
    for name, prop in theirs["properties"].items():
        got = mine["properties"][name]
        for key in ("type", "enum", "$ref"):
            assert got.get(key) == prop.get(key), (schema, name, key)
        if "description" in prop:
            expected = REWORDED.get((schema, name))
            if expected is None:
                assert words(got["description"]) == words(prop["description"]), (schema, name)
            else:
                assert words(got["description"]).startswith(expected)
                bullets = words(prop["description"])[words(prop["description"]).index("* ") :]
                assert words(got["description"]).endswith(bullets)


def test_enums_are_inline_as_in_the_contract(ours: dict[str, Any]) -> None:
    names = set(ours["components"]["schemas"])
    # The token-gated diagnostics bring their own bodies, all named Diagnostics*; the
    # timeline, fleet and stream theirs (issue 11).
    timeline = {"TimelineEvent", "ComponentAvailability", "History", "FleetMember", "Fleet", "Problem"}
    assert {name for name in names if not name.startswith("Diagnostics")} == {
        "HealthCheck",
        "HealthDetails",
        "Liveness",
    } | timeline
    assert not any(name.endswith("Enum") for name in names)


def test_the_probe_endpoints_are_documented_under_core_apis(ours: dict[str, Any]) -> None:
    for path, operation_id in (("/health/live/", "health_live_retrieve"), ("/health/ready/", "health_ready_retrieve")):
        operation = ours["paths"][path]["get"]
        assert operation["operationId"] == operation_id
        assert operation["tags"] == ["Core APIs"]
        assert len(operation["description"]) > 80  # says what it is for
    assert set(ours["paths"]["/health/ready/"]["get"]["responses"]) == {"200", "503"}
    assert set(ours["paths"]["/health/live/"]["get"]["responses"]) == {"200"}


def test_the_schema_is_served(client: Client) -> None:
    response = client.get("/api/v1/schema/")
    assert response.status_code == 200
    assert yaml.safe_load(response.content)["paths"]["/health/"]["get"]["operationId"] == "health_retrieve"


DOCS_PAGES = ["/api/v1/schema/swagger-ui/", "/api/v1/schema/redoc/"]


def served_schema(client: Client) -> dict[str, Any]:
    response = client.get("/api/v1/schema/")
    assert response.status_code == 200
    return yaml.safe_load(response.content)  # type: ignore[no-any-return]


def test_the_served_schema_lists_the_server_that_served_it_first(client: Client, contract: dict[str, Any]) -> None:
    servers = served_schema(client)["servers"]
    assert servers[0] == {"url": "/api/v1", "description": "This server"}
    assert servers[1:] == contract["servers"]


def test_behind_a_proxy_prefix_the_served_schema_points_under_it(client: Client) -> None:
    # Django's WSGI handler sets the prefix from SCRIPT_NAME (the test client does not;
    # tests/process/test_docs.py does it through gunicorn).
    set_script_prefix("/letraz/")
    try:
        servers = served_schema(client)["servers"]
    finally:
        clear_script_prefix()
    assert servers[0]["url"] == "/letraz/api/v1"


def test_the_served_schema_differs_from_the_committed_one_only_in_its_servers(
    client: Client, ours: dict[str, Any]
) -> None:
    served = served_schema(client)
    assert served["servers"][1:] == ours["servers"]
    assert {k: v for k, v in served.items() if k != "servers"} == {k: v for k, v in ours.items() if k != "servers"}


@pytest.mark.parametrize("page", DOCS_PAGES)
def test_the_docs_pages_load_only_local_assets(client: Client, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    html = response.content.decode()
    assert "fonts.googleapis.com" not in html and "cdn.jsdelivr.net" not in html and "unpkg.com" not in html
    addresses = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert addresses, "the page should load its scripts"
    for address in addresses:
        assert address.startswith("/"), f"{address} is not on this server"
        served = client.get(address)
        assert served.status_code == 200, address
        content = b"".join(served.streaming_content) if served.streaming else served.content  # type: ignore[arg-type]
        assert len(content) > 100, address


def test_redocs_bundle_is_served_without_its_cdn_logo(client: Client) -> None:
    response = client.get("/api/v1/schema/redoc/redoc.standalone.js")
    assert response.status_code == 200
    bundle = response.content
    assert b"cdn.redoc.ly" not in bundle
    assert b"/static/core/docs-logo.svg" in bundle
    logo = client.get("/static/core/docs-logo.svg")
    assert logo.status_code == 200
    assert b"<svg" in b"".join(logo.streaming_content)  # type: ignore[arg-type]


def test_a_favicon_is_served(client: Client) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] in {"image/x-icon", "image/vnd.microsoft.icon"}
    assert b"".join(response.streaming_content)[:4] == b"\0\0\1\0"  # type: ignore[arg-type]


@pytest.mark.parametrize("page", [*DOCS_PAGES, "/api/v1/schema/"])
def test_head_on_a_docs_page_has_the_headers_of_get_and_no_body(client: Client, page: str) -> None:
    got, head = client.get(page), client.head(page)
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    assert head["Content-Length"] == str(len(got.content))
    assert head["Content-Type"] == got["Content-Type"]


def test_diagnostics_are_documented_with_a_bearer_scheme_and_the_probes_stay_public(ours: dict[str, Any]) -> None:
    operation = ours["paths"]["/health/diagnostics/"]["get"]
    assert operation["operationId"] == "health_diagnostics_retrieve"
    assert operation["security"] == [{"DiagnosticsToken": []}]
    assert set(operation["responses"]) == {"200", "401", "404"}
    scheme = ours["components"]["securitySchemes"]["DiagnosticsToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "security" not in ours  # no global requirement: the probes stay public
    for path in ("/health/", "/health/live/", "/health/ready/"):
        assert ours["paths"][path]["get"].get("security", []) in ([], [{}]), path


def test_metrics_are_not_in_the_public_schema(ours: dict[str, Any]) -> None:
    assert not [path for path in ours["paths"] if "metrics" in path]
