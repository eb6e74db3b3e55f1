"""Say who answers: one version, from pyproject.toml, in every face of the service."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from django.test import Client
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core.grpc_server import HealthGrpcServer
from core.grpc_version import VERSION_METADATA_KEY
from core.proto import core_health_pb2_grpc
from health.service import HealthService
from letraz.version import SERVICE_VERSION, UNKNOWN, read_version

REPO = Path(__file__).resolve().parents[2]
PYPROJECT_VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_the_version_is_pyprojects() -> None:
    assert SERVICE_VERSION == PYPROJECT_VERSION


def test_the_image_carries_the_file_the_version_comes_from() -> None:
    # The image runs from /app without installing the project: without pyproject.toml
    # there, every face would say "unknown".
    final_stage = (REPO / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    copies = [
        line.split()[1:-1] for line in final_stage.splitlines() if line.startswith("COPY ") and "--from" not in line
    ]
    assert any("pyproject.toml" in sources for sources in copies), copies


def test_a_bumped_pyproject_is_read_as_it_is_now(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "letraz-health"\nversion = "9.9.9"\n')
    assert read_version(pyproject) == "9.9.9"


def test_without_the_source_tree_the_installed_metadata_or_unknown(tmp_path: Path) -> None:
    assert read_version(tmp_path / "absent.toml", distribution="no-such-distribution-here") == UNKNOWN


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/health/", "/api/v1/health/live/", "/api/v1/health/ready/"])
def test_every_probe_answer_says_which_version_answered(path: str) -> None:
    for method in ("get", "head"):
        response = getattr(Client(), method)(path)
        assert response["X-Letraz-Version"] == SERVICE_VERSION, (method, path)


def test_manage_py_health_version_is_the_services_not_djangos() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "health", "--version"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, f"{SERVICE_VERSION}\n"), result.stderr


def test_sentry_events_carry_the_release() -> None:
    code = "import django, sentry_sdk; django.setup(); print(sentry_sdk.get_client().options['release'])"
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "letraz.settings",
        "SENTRY_DSN": "http://public@127.0.0.1:9/1",  # nothing is captured: nothing is sent
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout) == (0, f"{SERVICE_VERSION}\n"), result.stderr


@pytest.fixture
def grpc_channel() -> Iterator[grpc.Channel]:
    service = HealthService([], instance_id="v", critical=frozenset(), timeout=0.5, ttl=5, max_staleness=30)
    server = HealthGrpcServer("127.0.0.1:0", service_provider=lambda: service, publish_every=60)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield channel
    finally:
        channel.close()
        server.stop(None).wait(5)
        server.close()
        service.close()


def test_every_grpc_answer_starts_with_the_version(grpc_channel: grpc.Channel) -> None:
    core = core_health_pb2_grpc.CoreControllerStub(grpc_channel)  # type: ignore[no-untyped-call]
    _, call = core.HealthCheck.with_call(empty_pb2.Empty(), timeout=5)
    assert (VERSION_METADATA_KEY, SERVICE_VERSION) in call.initial_metadata()
    health = health_pb2_grpc.HealthStub(grpc_channel)
    _, call = health.Check.with_call(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
    assert (VERSION_METADATA_KEY, SERVICE_VERSION) in call.initial_metadata()
    watch = health.Watch(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
    try:
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        assert (VERSION_METADATA_KEY, SERVICE_VERSION) in watch.initial_metadata()
    finally:
        watch.cancel()
