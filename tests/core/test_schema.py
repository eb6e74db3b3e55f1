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
    timeline = {"TimelineEvent", "ComponentAvailability", "History", "FleetMember", "Fleet", "Problem"}  # issue 11
    assert names == {"HealthCheck", "HealthDetails", "Liveness"} | timeline
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


@pytest.mark.parametrize("page", ["/api/v1/schema/swagger-ui/", "/api/v1/schema/redoc/"])
def test_the_docs_pages_work_offline_with_sidecar_assets(client: Client, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    html = response.content.decode()
    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html
    assets = re.findall(r'(?:src|href)="(/static/drf_spectacular_sidecar/[^"]+)"', html)
    assert assets, "the page should load its scripts from the sidecar"
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
        content = b"".join(served.streaming_content) if served.streaming else served.content  # type: ignore[arg-type]
        assert len(content) > 100, asset
