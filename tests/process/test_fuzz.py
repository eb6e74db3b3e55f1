"""Schema fuzzing: schemathesis against the schema the live server serves.

A real gunicorn (the repository's ``gunicorn.conf.py``), twice: with every peer up,
so the report is ``OPERATIONAL`` and any 5xx is a defect, not a dependency's verdict;
and with Clerk and the util service unset, so ``/health/`` and ``/ready/`` answer the
503 the schema declares (its body must conform too) and nothing else may be a 5xx. The
schemathesis command line loads ``/api/v1/schema/`` from that server and runs every
operation through all its phases and all its checks (``--checks all``: no server
error, status code, content type, headers and body conform to the schema, unexpected
methods are refused with a correct ``Allow``, ...). The seed is fixed, so a failure
is reproducible and the run is the same every time. Its NDJSON event stream is read
back for the assertions and for the summary printed in the test output.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.peers.clerk import FakeClerkAPI
from tests.peers.util_service import FakeUtilService
from tests.process.support import (
    LOOPBACK,
    REPO,
    ServerProcess,
    base_env,
    http_request,
    migrated_database,
    peer_env,
    running_gunicorn,
)
from tests.reporting import print_section

pytestmark = [pytest.mark.process, pytest.mark.long, pytest.mark.timeout(300)]

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
SCHEMA_PATH = "/api/v1/schema/"
#: The schema's paths are relative to this prefix (drf-spectacular trims it; ``servers`` carry it).
API_PREFIX = "/api/v1"
SEED = 20261130
#: Bounds the whole run: far above the ~10 s it takes, far below pytest's timeout.
FUZZ_TIMEOUT = 240.0


@dataclass
class FuzzRun:
    """What the NDJSON event stream says about one schemathesis run."""

    operations_total: int = 0
    operations_selected: int = 0
    cases_by_operation: Counter[str] = field(default_factory=Counter)
    cases_by_phase: Counter[str] = field(default_factory=Counter)
    checks: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_ndjson(cls, path: Path) -> FuzzRun:
        run = cls()
        for line in path.read_text().splitlines():
            event: dict[str, Any] = json.loads(line)
            (kind, body), *_ = event.items()
            if kind == "LoadingFinished":
                run.operations_total = body["statistic"]["operations"]["total"]
                run.operations_selected = body["statistic"]["operations"]["selected"]
            elif kind == "ScenarioFinished":
                run._add_scenario(body)
            elif kind in {"NonFatalError", "FatalError"}:
                run.errors.append(json.dumps(body)[:500])
        return run

    def _add_scenario(self, body: dict[str, Any]) -> None:
        recorder = body["recorder"]
        label, phase = recorder["label"], body["phase"]
        cases = recorder.get("cases", {})
        self.cases_by_operation[label] += len(cases)
        self.cases_by_phase[phase] += len(cases)
        for case_id, checks in recorder.get("checks", {}).items():
            for check in checks:
                self.checks[(check["name"], check["status"])] += 1
                if check["status"] == "failure":
                    self.failures.append(f"{label} case {case_id}: {check['name']}: {check.get('failure_info')}")
        for interaction in recorder.get("interactions", {}).values():
            response = interaction.get("response")
            if response:
                self.statuses[response["status_code"]] += 1

    @property
    def cases(self) -> int:
        return sum(self.cases_by_operation.values())

    def summary(self, seconds: float) -> list[str]:
        check_names = sorted({name for name, _ in self.checks})
        per_check = ", ".join(
            f"{name} {self.checks[(name, 'success')]}/{sum(n for (c, _), n in self.checks.items() if c == name)}"
            for name in check_names
        )
        return [
            f"operations: {self.operations_selected} of {self.operations_total} "
            f"({', '.join(f'{op} {n}' for op, n in sorted(self.cases_by_operation.items()))} cases)",
            f"cases: {self.cases} ({', '.join(f'{p} {n}' for p, n in sorted(self.cases_by_phase.items()))}); "
            f"responses by status: {dict(sorted(self.statuses.items()))}",
            f"checks: {sum(self.checks.values())} run, {len(check_names)} kinds, "
            f"{len(self.failures)} failed; passed/run per check: {per_check}",
            f"seed {SEED}, {seconds:.1f} s",
        ]


#: Configured on the server and given to schemathesis for the diagnostics operation.
DIAGNOSTICS_TOKEN = "fuzzing-diagnostics-token"


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database(tmp_path_factory.mktemp("fuzz-db")) as url:
        yield url


@dataclass(frozen=True)
class Served:
    port: int
    server: ServerProcess
    #: Server errors the schema itself declares for this state (503: DEGRADED), else none.
    declared_5xx: tuple[int, ...]


@pytest.fixture(params=["operational", "degraded"])
def served(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    database_url: str,
    clerk_api: FakeClerkAPI,
    util_service: FakeUtilService,
) -> Iterator[Served]:
    """gunicorn with every critical peer up (OPERATIONAL), or with Clerk and the util service unset (DEGRADED).

    OPERATIONAL: any 5xx is a defect. DEGRADED: ``/health/`` and ``/ready/`` answer
    the 503 the schema declares, whose body must still conform, and nothing else may
    be a 5xx.
    """
    operational = request.param == "operational"
    env = base_env(
        DATABASE_URL=database_url,
        WEB_CONCURRENCY="2",
        GUNICORN_THREADS="4",
        # A loaded CI machine must not turn a healthy peer into a 503 mid-run.
        HEALTH_CHECK_TIMEOUT="3",
        HEALTH_DRAIN_FILE=str(tmp_path / "drain"),
        # Diagnostics exist (a 401 without the token, as documented) rather than hide as a 404.
        HEALTH_DIAGNOSTICS_TOKEN=DIAGNOSTICS_TOKEN,
        **(peer_env(clerk_api, util_service) if operational else {}),
    )
    with running_gunicorn(env, tmp_path / "gunicorn.log") as (server, port):
        status, _, body = http_request(port, f"{API_PREFIX}/health/", timeout=10)
        expected = 200 if operational else 503
        assert status == expected, f"{request.param}: {status} {body!r} before fuzzing\n{server.output}"
        yield Served(port=port, server=server, declared_5xx=() if operational else (503,))


def expected_operations() -> set[str]:
    """``METHOD /path`` for every operation of the committed (and served) schema."""
    schema = yaml.safe_load((REPO / "openapi.yaml").read_text())
    return {f"{method.upper()} {path}" for path, item in schema["paths"].items() for method in item}


def test_every_operation_survives_schemathesis_with_all_checks(
    served: Served, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server = served.server
    origin = f"http://{LOOPBACK}:{served.port}"
    events = tmp_path / "events.ndjson"
    config = tmp_path / "schemathesis.toml"
    # Only what the schema declares may be a 5xx (nothing while OPERATIONAL).
    allowed = ["2xx", "3xx", "4xx", *(str(code) for code in served.declared_5xx)]
    # The diagnostics token, as an operator would hold it, so their 200 is fuzzed too.
    config.write_text(
        f"[checks.not_a_server_error]\nexpected-statuses = {json.dumps(allowed)}\n"
        f'[[operations]]\ninclude-path = "/health/diagnostics/"\n'
        f'headers = {{ Authorization = "Bearer {DIAGNOSTICS_TOKEN}" }}\n'
    )
    command = [
        SCHEMATHESIS,
        "--config-file",
        str(config),
        "run",
        f"{origin}{SCHEMA_PATH}",
        "--url",
        f"{origin}{API_PREFIX}",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--seed",
        str(SEED),
        "--workers",
        "1",
        # An event stream never ends: each of its cases is read until this timeout, so it
        # is short, and the cases per operation are bounded, to keep the run a minute or so.
        "--request-timeout",
        "3",
        "--max-examples",
        "20",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(events),
    ]
    started = time.monotonic()
    # cwd=tmp_path: no stray schemathesis.toml changes what runs.
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=FUZZ_TIMEOUT, check=False, env=base_env()
    )
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    assert events.is_file(), f"schemathesis wrote no events (exit {done.returncode}):\n{output}"
    run = FuzzRun.from_ndjson(events)
    title = f"schema fuzzing, {request.node.callspec.id} server (schemathesis, all checks)"
    print_section(title, run.summary(seconds))

    assert done.returncode == 0, f"schemathesis failed (exit {done.returncode}):\n{output}\n{server.output[-3000:]}"
    assert not run.failures, "\n".join(run.failures)
    assert not run.errors, run.errors
    wanted = expected_operations()
    assert run.operations_selected == run.operations_total == len(wanted), run.summary(seconds)
    assert set(run.cases_by_operation) == wanted, f"untested: {wanted - set(run.cases_by_operation)}"
    assert all(n > 0 for n in run.cases_by_operation.values()), run.cases_by_operation
    assert run.statuses, "no response recorded"
    server_errors = {code for code in run.statuses if code >= 500}
    assert server_errors <= set(served.declared_5xx), run.statuses
    if served.declared_5xx:
        assert server_errors, f"the DEGRADED server never answered 503: {run.statuses}"
    ran = {name for name, _ in run.checks}
    assert {
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "unsupported_method",
    } <= ran, ran
    assert "Traceback" not in server.output, server.output[-3000:]
