"""The real image in a real engine: build the Dockerfile, run it hardened, stop it under load.

A private ``dockerd`` (``tests/deploy/engine.py``) is started for this module and
stopped by its PID afterwards. The Dockerfile's base is replaced by a stand-in built
from Debian's packages under the same tag (``tests/deploy/baseimage/standin.py``,
cached between runs), so the project's Dockerfile builds unchanged, once with BuildKit
and once with the legacy builder. Then the BuildKit image runs the way production runs
it: its own non-root user, a read-only root filesystem, ``/tmp`` as tmpfs, every
capability dropped, a production ``DJANGO_ALLOWED_HOSTS``, real peers on loopback
(``--network host``: the engine has no bridge here). Its own ``HEALTHCHECK`` must turn
healthy, the probes must answer, ``docker stop`` under a bounded request loop must end
with exit code 0 inside the deployment's grace period, and the gRPC command must
answer ``grpc.health.v1`` from the same image. Sizes and each phase's time are
printed in the test output.

Skipped where no engine can run (not root, no ``docker.io``); failed instead under
``REQUIRE_DOCKER=1`` or ``CI=true``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.deploy.baseimage.standin import StandIn, dockerfile_base, ensure_standin
from tests.deploy.engine import TEST_LABEL, DockerEngine, EngineUnavailable, engine_unavailable, start_engine
from tests.peers.clerk import ClerkMode, FakeClerkAPI
from tests.peers.util_service import FakeUtilService, UtilMode
from tests.process.support import LOOPBACK, REPO, free_port, migrated_database, poll, port_open
from tests.reporting import print_section

pytestmark = [pytest.mark.image, pytest.mark.long, pytest.mark.timeout(1800)]

BUILDERS = ("buildkit", "legacy")
PUBLIC_HOST = "api.example.com"
LIVE, HEALTH = "/api/v1/health/live/", "/api/v1/health/"
RUNTIME_UID = "10001"
BUILD_TIMEOUT = 900.0
#: The image's HEALTHCHECK probes first after its 30 s interval; two rounds plus margin.
HEALTHY_WITHIN = 100.0
LISTEN_WITHIN = 60.0
#: A bounded load while stopping: at most this many requests per thread, at most this long.
LOAD_THREADS, LOAD_MAX_REQUESTS, LOAD_MAX_SECONDS = 4, 2000, 60.0


def grace_period() -> int:
    """The deployment's ``terminationGracePeriodSeconds``: what ``docker stop`` is given."""
    manifest = yaml.safe_load((REPO / "deploy/kubernetes/deployment-web.yaml").read_text())
    return int(manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])


# --------------------------------------------------------------------------- timings


@dataclass
class Timings:
    phases: dict[str, float] = field(default_factory=dict)
    facts: list[str] = field(default_factory=list)

    def record(self, phase: str, started: float) -> float:
        self.phases[phase] = seconds = time.monotonic() - started
        return seconds

    def lines(self) -> list[str]:
        return [*self.facts, *(f"{phase:<42} {seconds:7.1f} s" for phase, seconds in self.phases.items())]


@pytest.fixture(scope="module")
def timings() -> Iterator[Timings]:
    recorded = Timings()
    yield recorded
    print_section("container image in a real engine: size and timings", recorded.lines())


# --------------------------------------------------------------------------- engine, base, images


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, timings: Timings) -> Iterator[DockerEngine]:
    started = time.monotonic()
    try:
        docker = start_engine(tmp_path_factory.mktemp("dockerd"))
    except EngineUnavailable as exc:
        engine_unavailable(str(exc))
    timings.record("engine start", started)
    try:
        yield docker
    finally:
        stopping = time.monotonic()
        try:
            docker.remove_test_objects()
        finally:
            docker.stop()
        timings.record("cleanup and engine stop", stopping)


@pytest.fixture(scope="module")
def base_image(engine: DockerEngine, timings: Timings) -> StandIn:
    tag = dockerfile_base(REPO / "Dockerfile")
    standin = ensure_standin(engine, tag)
    timings.phases[f"stand-in {tag} ({'built' if standin.built else 'cached'})"] = standin.seconds
    size = engine.image_size(tag)
    timings.facts.append(f"stand-in base {tag}: Debian's Python {standin.python_version}, {int(size) / 1e6:.0f} MB")
    return standin


@dataclass(frozen=True)
class Image:
    builder: str
    tag: str
    size: int
    config: dict[str, Any]


def _build_args() -> list[str]:
    """The host's proxy settings, if any: Docker's predefined build args, kept out of the image's history."""
    names = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
    return [arg for name in names if os.environ.get(name) for arg in ("--build-arg", name)]


@pytest.fixture(scope="module")
def images(engine: DockerEngine, base_image: StandIn, timings: Timings) -> dict[str, Image]:
    """The Dockerfile built unchanged by both builders."""
    built: dict[str, Image] = {}
    run_id = uuid.uuid4().hex[:8]
    for builder in BUILDERS:
        tag = f"letraz-health-test:{builder}-{run_id}"
        started = time.monotonic()
        done = engine.docker(
            "build",
            "--network=host",
            "--label",
            f"{TEST_LABEL}=1",
            *(["--progress=plain"] if builder == "buildkit" else ["--force-rm"]),
            *_build_args(),
            "-t",
            tag,
            str(REPO),
            timeout=BUILD_TIMEOUT,
            check=False,
            env={"DOCKER_BUILDKIT": "1" if builder == "buildkit" else "0"},
        )
        assert done.returncode == 0, f"{builder} build failed:\n{done.stdout[-6000:]}{done.stderr[-6000:]}"
        timings.record(f"build with {builder}", started)
        inspected = engine.inspect("image", tag)
        assert inspected is not None, tag
        built[builder] = Image(builder, tag, int(inspected["Size"]), inspected["Config"])
        above = built[builder].size - engine.image_size(base_image.tag)
        timings.facts.append(
            f"image size ({builder}): {built[builder].size / 1e6:.1f} MB, of which {above / 1e6:.1f} MB above the base"
        )
    return built


@pytest.fixture(scope="module")
def image(images: dict[str, Image]) -> Image:
    return images["buildkit"]


# --------------------------------------------------------------------------- peers and containers


@dataclass
class Peers:
    database_url: str
    clerk: FakeClerkAPI
    util: FakeUtilService
    mounts: list[str]


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    """A migrated database and healthy Clerk and util service peers on the host's loopback."""
    directory = tmp_path_factory.mktemp("image-db")
    with (
        migrated_database(directory) as url,
        FakeClerkAPI(ClerkMode.OK) as clerk,
        FakeUtilService(UtilMode.HEALTHY) as util,
    ):
        util.set_grpc_health(True)
        mounts: list[str] = []
        if url.startswith("sqlite:"):
            # The container's user (10001) writes the SQLite file and its journal in place.
            directory.chmod(0o777)
            for entry in directory.iterdir():
                entry.chmod(0o666)
            mounts = ["--volume", f"{directory}:{directory}"]
        yield Peers(url, clerk, util, mounts)


class Container:
    """A container started detached; removed (with ``-f``) by the fixture that made it."""

    def __init__(self, engine: DockerEngine, name: str) -> None:
        self.engine = engine
        self.name = name

    def state(self) -> dict[str, Any]:
        inspected = self.engine.inspect("container", self.name)
        assert inspected is not None, f"container {self.name} is gone"
        state = inspected["State"]
        assert isinstance(state, dict)
        return state

    def inspect_healthcheck(self) -> list[str]:
        """The image's HEALTHCHECK command (``CMD`` form) as argv, for running it by hand."""
        inspected = self.engine.inspect("container", self.name)
        assert inspected is not None
        test = ((inspected.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
        return [str(word) for word in test[1:]] if test and test[0] == "CMD" else []

    def exec(self, *command: str) -> tuple[int, str]:
        done = self.engine.docker("exec", self.name, *command, timeout=60, check=False)
        return done.returncode, (done.stdout + done.stderr).strip()

    def remove(self) -> None:
        self.engine.docker("rm", "-f", "-v", self.name, timeout=120, check=False)

    def logs(self) -> str:
        done = self.engine.docker("logs", self.name, timeout=60, check=False)
        return (done.stdout + done.stderr)[-6000:]


def hardened_run_args(engine_env_file: Path, name: str) -> list[str]:
    """How production runs the image, less the orchestrator: its user, no writes, no capabilities."""
    return [
        "run",
        "--detach",
        "--name",
        name,
        "--label",
        f"{TEST_LABEL}=1",
        "--network=host",
        "--read-only",
        "--tmpfs",
        "/tmp:rw,nosuid,nodev,size=64m",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--env-file",
        str(engine_env_file),
    ]


def app_env(peers: Peers, **extra: str) -> dict[str, str]:
    return {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(32),
        "DJANGO_ALLOWED_HOSTS": PUBLIC_HOST,
        "DATABASE_URL": peers.database_url,
        "CLERK_SECRET_KEY": peers.clerk.secret_key,
        "CLERK_API_URL": peers.clerk.url,
        "UTIL_GRPC_HOST": peers.util.target,
        "UTIL_GRPC_TLS": "false",
        # Headroom for a loaded 2-core machine; the probes stay bounded.
        "HEALTH_CHECK_TIMEOUT": "2",
        "WEB_CONCURRENCY": "2",
        **extra,
    }


def write_env_file(path: Path, env: dict[str, str]) -> Path:
    """Values go through a file, not the command line (the secret key is not in ``ps``)."""
    path.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
    path.chmod(0o600)
    return path


def start_web(engine: DockerEngine, image: Image, peers: Peers, directory: Path) -> tuple[Container, int]:
    """The default command (gunicorn), hardened, listening on a random loopback port."""
    port = free_port()
    env = app_env(
        peers,
        PORT=str(port),
        # Loopback only: host networking would otherwise open the port on every interface.
        GUNICORN_CMD_ARGS=f"--bind={LOOPBACK}:{port}",
    )
    name = f"letraz-web-{uuid.uuid4().hex[:8]}"
    env_file = write_env_file(directory / f"{name}.env", env)
    engine.docker(*hardened_run_args(env_file, name), *peers.mounts, image.tag, timeout=120)
    container = Container(engine, name)
    listening = poll(lambda: port_open(port), bool, timeout=LISTEN_WITHIN, interval=0.2)
    if not listening:
        logs = container.logs()
        container.remove()
        raise AssertionError(f"nothing listens on {port} after {LISTEN_WITHIN} s:\n{logs}")
    return container, port


@pytest.fixture(scope="module")
def web(
    engine: DockerEngine, image: Image, peers: Peers, tmp_path_factory: pytest.TempPathFactory, timings: Timings
) -> Iterator[tuple[Container, int]]:
    """One web container for the tests that only look at it."""
    started = time.monotonic()
    container, port = start_web(engine, image, peers, tmp_path_factory.mktemp("web"))
    timings.record("web: run to listening", started)
    try:
        yield container, port
    finally:
        container.remove()


# --------------------------------------------------------------------------- HTTP


def get(port: int, path: str, *, host: str = PUBLIC_HOST, timeout: float = 10.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# --------------------------------------------------------------------------- tests: the build


def test_the_dockerfile_builds_unchanged_with_buildkit_and_the_legacy_builder(images: dict[str, Image]) -> None:
    assert set(images) == set(BUILDERS)
    for built in images.values():
        assert built.size > 0
        assert built.config["User"] == f"{RUNTIME_UID}:{RUNTIME_UID}", built.config["User"]
    # Both builders read the same Dockerfile into the same runtime configuration.
    keys = ("User", "Env", "Entrypoint", "Cmd", "Healthcheck", "ExposedPorts", "WorkingDir", "StopSignal")
    buildkit, legacy = images["buildkit"].config, images["legacy"].config
    assert {k: buildkit.get(k) for k in keys} == {k: legacy.get(k) for k in keys}


def test_nothing_of_the_build_environment_is_left_in_the_image(image: Image) -> None:
    names = {entry.split("=", 1)[0] for entry in image.config["Env"]}
    assert not {n for n in names if n.upper().endswith("PROXY") or n.startswith("PIP_INDEX")}, names
    assert not any("SECRET" in n for n in names), names


# --------------------------------------------------------------------------- tests: the running web container


def test_runs_as_its_non_root_user_on_a_read_only_root_without_capabilities(web: tuple[Container, int]) -> None:
    container, _ = web
    assert container.exec("id", "-u") == (0, RUNTIME_UID)
    assert container.exec("id", "-g") == (0, RUNTIME_UID)
    status, output = container.exec("sh", "-c", "grep -E '^Cap(Eff|Prm|Bnd):' /proc/1/status")
    assert status == 0, output
    assert re.findall(r"Cap\w+:\s+(\w+)", output) == ["0000000000000000"] * 3, output
    for path in ("/app/written-at-runtime", "/opt/venv/written-at-runtime", "/written-at-runtime"):
        status, output = container.exec("touch", path)
        assert status != 0 and "Read-only file system" in output, (path, output)
    assert container.exec("sh", "-c", "touch /tmp/x && rm /tmp/x")[0] == 0, "/tmp must stay writable (tmpfs)"
    # The entrypoint execs: gunicorn is PID 1 and receives docker stop's SIGTERM itself.
    status, cmdline = container.exec("cat", "/proc/1/cmdline")
    assert status == 0 and "gunicorn" in cmdline.replace("\0", " "), cmdline


def test_live_and_health_answer(web: tuple[Container, int]) -> None:
    _, port = web
    status, body = get(port, LIVE)
    assert status == 200, body
    assert json.loads(body)["status"] == "OPERATIONAL"
    # The first checks run as the workers start; on a loaded machine one may still be in flight.
    status, body = poll(lambda: get(port, HEALTH), lambda answer: answer[0] == 200, timeout=30, interval=0.5)
    report = json.loads(body)
    assert status == 200, report
    assert report["status"] == "OPERATIONAL", report
    assert {k: v for k, v in report["details"].items() if k != "sentry"} == {
        "clerk": "OPERATIONAL",
        "db": "OPERATIONAL",
        "util_service": "OPERATIONAL",
    }, report


def test_its_healthcheck_turns_healthy_with_a_production_allowed_hosts(
    web: tuple[Container, int], timings: Timings
) -> None:
    """The HEALTHCHECK asks ``127.0.0.1:$PORT`` while ``DJANGO_ALLOWED_HOSTS`` names only the public host."""
    container, _ = web
    started = time.monotonic()
    state = poll(
        container.state,
        lambda s: s.get("Health", {}).get("Status") in {"healthy", "unhealthy"},
        timeout=HEALTHY_WITHIN,
        interval=1.0,
    )
    health = state.get("Health", {})
    if health.get("Status") != "healthy":
        runs = [(entry.get("ExitCode"), entry.get("Output", "").strip()[-300:]) for entry in health.get("Log", [])]
        # The check runs with --quiet; the same command without it says why.
        command = container.inspect_healthcheck()
        verbose = [word.replace(" --quiet", "") for word in command if word != "--quiet"]
        why = container.exec(*verbose) if verbose else (None, "no HEALTHCHECK")
        pytest.fail(f"HEALTHCHECK {health.get('Status')} after its runs {runs}; without --quiet it says: {why}")
    timings.record("web: waited for HEALTHCHECK healthy", started)


def _load(port: int, stop: threading.Event, outcomes: Counter[str], lock: threading.Lock) -> None:
    """One thread of the bounded request loop: counts answers by status, and refusals."""
    deadline = time.monotonic() + LOAD_MAX_SECONDS
    for n in range(LOAD_MAX_REQUESTS):
        if stop.is_set() or time.monotonic() >= deadline:
            return
        try:
            status, _ = get(port, HEALTH if n % 2 else LIVE, timeout=5)
            outcome = str(status)
        except (OSError, http.client.HTTPException) as exc:
            outcome = type(exc).__name__
        with lock:
            outcomes[outcome] += 1
        if outcome == "ConnectionRefusedError":
            return  # the server has closed its socket: nothing left to load


def test_docker_stop_under_load_exits_0_within_the_grace_period(
    engine: DockerEngine, image: Image, peers: Peers, tmp_path: Path, timings: Timings
) -> None:
    container, port = start_web(engine, image, peers, tmp_path)
    try:
        _stop_under_load(engine, container, port, timings)
    finally:
        container.remove()


def _stop_under_load(engine: DockerEngine, container: Container, port: int, timings: Timings) -> None:
    grace = grace_period()
    stop, lock = threading.Event(), threading.Lock()
    outcomes: Counter[str] = Counter()
    threads = [threading.Thread(target=_load, args=(port, stop, outcomes, lock), daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        loaded = poll(lambda: outcomes["200"], lambda n: n >= 50, timeout=30, interval=0.05)
        assert loaded >= 50, f"the load never got going: {dict(outcomes)}"
        started = time.monotonic()
        done = engine.docker("stop", "--time", str(grace), container.name, timeout=grace + 30, check=False)
        took = timings.record(f"web: docker stop under load (grace {grace} s)", started)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    state = container.state()
    timings.facts.append(f"requests during the stop test: {dict(sorted(outcomes.items()))}")
    assert done.returncode == 0, done.stderr
    assert took < grace, f"docker stop took {took:.1f} s, the grace period is {grace} s"
    assert state["Status"] == "exited", state
    assert state["ExitCode"] == 0, (
        f"exit code {state['ExitCode']} (137: killed after the grace period):\n{container.logs()}"
    )
    assert not state["OOMKilled"], state
    server_errors = {k: v for k, v in outcomes.items() if k.isdigit() and int(k) >= 500}
    assert not server_errors, dict(outcomes)


# --------------------------------------------------------------------------- tests: the gRPC command


def test_the_grpc_command_runs_in_the_same_image_and_answers_grpc_health(
    engine: DockerEngine, image: Image, peers: Peers, tmp_path: Path, timings: Timings
) -> None:
    port = free_port()
    env_file = write_env_file(tmp_path / "grpc.env", app_env(peers, GRPC_PORT=str(port)))
    name = f"letraz-grpc-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    # The web HEALTHCHECK means nothing for this process (the Dockerfile says: override it).
    engine.docker(
        *hardened_run_args(env_file, name),
        "--no-healthcheck",
        *peers.mounts,
        image.tag,
        "python",
        "manage.py",
        "grpcserver",
        "--bind",
        f"{LOOPBACK}:{port}",
        timeout=120,
    )
    container = Container(engine, name)
    try:
        assert poll(lambda: port_open(port), bool, timeout=LISTEN_WITHIN, interval=0.2), container.logs()
        with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def check(service: str) -> int:
                try:
                    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)
                except grpc.RpcError as exc:
                    return -int(exc.code().value[0])  # type: ignore[union-attr]

            serving = health_pb2.HealthCheckResponse.SERVING
            answers = poll(
                lambda: {s: check(s) for s in ("liveness", "", "db", "util_service")},
                lambda got: all(v == serving for v in got.values()),
                timeout=30,
                interval=0.2,
            )
            assert all(v == serving for v in answers.values()), f"{answers}\n{container.logs()}"
        timings.record("grpc: run to SERVING", started)
        stopping = time.monotonic()
        done = engine.docker("stop", "--time", str(grace_period()), name, timeout=grace_period() + 30, check=False)
        timings.record("grpc: docker stop", stopping)
        assert done.returncode == 0, done.stderr
        state = container.state()
        assert state["ExitCode"] == 0, f"exit code {state['ExitCode']}:\n{container.logs()}"
    finally:
        container.remove()
