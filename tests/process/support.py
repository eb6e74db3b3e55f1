"""Helpers for tests that run the real thing in a subprocess (gunicorn, manage.py).

Every wait here is bounded by a deadline and polls; nothing sleeps to hide a race.
Every process started here is killed by :meth:`ServerProcess.kill` (call it from a
fixture's teardown) even when the test fails.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from tests.die_with_run import PR_SET_PDEATHSIG
from tests.peers.clerk import FakeClerkAPI
from tests.peers.util_service import FakeUtilService

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
LOOPBACK = "127.0.0.1"

#: Variables of the developer's or CI's shell that would change what a subprocess does.
_SCRUBBED_PREFIXES = ("HEALTH_", "SENTRY_", "CLERK_", "UTIL_GRPC_", "GUNICORN_", "DJANGO_", "METRICS_")
_SCRUBBED = frozenset(
    {"DATABASE_URL", "INSTANCE_ID", "PORT", "GRPC_PORT", "WEB_CONCURRENCY", "REQUIRE_POSTGRES"}
    | {"LOG_FORMAT", "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"}
    # Loopback peers only: a proxy from the shell must not carry the app's calls elsewhere.
    | {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"}
)

T = TypeVar("T")


# -- environment ---------------------------------------------------------------------


#: For a server in a test about what an answer says, not about time limits. Production's
#: 0.5 s limit and 250 ms slow query are easily passed on a machine whose cores are busy
#: with other work (a fresh worker's first gRPC call, with Chromium beside it, took longer
#: under two CPU hogs), and the answer is then one the test did not ask for. Tests about
#: the limits set their own.
UNHURRIED = {"HEALTH_CHECK_TIMEOUT": "2", "HEALTH_DB_SLOW_MS": "5000"}


def base_env(**overrides: str) -> dict[str, str]:
    """The test process's environment without app settings, plus ``overrides``.

    ``DJANGO_SETTINGS_MODULE`` is the real ``letraz.settings`` (``tests.settings``
    drops the peers' variables), with a throwaway secret key.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _SCRUBBED and not name.startswith(_SCRUBBED_PREFIXES)
    }
    env |= {
        "DJANGO_SETTINGS_MODULE": "letraz.settings",
        "DJANGO_SECRET_KEY": "process-test-secret",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        # The gRPC process's /metrics: loopback only (tests pass --metrics-port 0).
        "METRICS_HOST": LOOPBACK,
    }
    return env | overrides


def peer_env(clerk_api: FakeClerkAPI, util_service: FakeUtilService) -> dict[str, str]:
    """The variables that point the app at the loopback peers."""
    return {
        "CLERK_SECRET_KEY": clerk_api.secret_key,
        "CLERK_API_URL": clerk_api.url,
        "UTIL_GRPC_HOST": util_service.target,
        "UTIL_GRPC_TLS": "false",
    }


def manage(args: Sequence[str], env: Mapping[str, str], *, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``python manage.py ARGS`` to completion, output captured."""
    return subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- databases -----------------------------------------------------------------------


def configured_database_url() -> str:
    """The test run's own ``DATABASE_URL`` (PostgreSQL in CI)."""
    return os.environ.get("DATABASE_URL", "")


def on_postgres() -> bool:
    return configured_database_url().startswith(("postgres://", "postgresql://"))


@contextlib.contextmanager
def migrated_database(directory: Path) -> Iterator[str]:
    """A ``DATABASE_URL`` with every migration applied, for subprocesses; removed afterwards.

    On PostgreSQL (the test run's ``DATABASE_URL``) a database of its own on the same
    server, so concurrent runs never share tables; otherwise an SQLite file in
    ``directory``.
    """
    if not on_postgres():
        url = f"sqlite:///{directory / 'process.sqlite3'}"
        _migrate(url)
        yield url
        return
    admin_url = configured_database_url()
    name = f"letraz_process_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
        _migrate(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _migrate(url: str) -> None:
    done = manage(["migrate", "--noinput", "-v", "0"], base_env(DATABASE_URL=url), timeout=60)
    assert done.returncode == 0, done.stderr


# -- ports and polling ---------------------------------------------------------------


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def poll(probe: Callable[[], T], until: Callable[[T], bool], *, timeout: float, interval: float = 0.05) -> T:
    """Call ``probe`` until ``until(result)`` or ``timeout`` s; return the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if until(result) or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# -- HTTP ----------------------------------------------------------------------------


def http_request(
    port: int, path: str, *, method: str = "GET", timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """One request to ``127.0.0.1:port``: status, headers (lower-case names), body."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def raw_http(port: int, request: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``request`` as is and read until the server closes (``Connection: close``)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# -- processes -----------------------------------------------------------------------


#: Runs its arguments after asking the kernel to SIGKILL it when its parent (this test
#: run) dies, however that happens: a CI timeout's SIGKILL runs no teardown, no atexit.
#: In the child, before exec, without ``preexec_fn`` (unsafe with threads, and the tests
#: run peers on threads). If the parent died before the request, it exits at once.
#: gunicorn's workers notice their master is gone and stop on their own.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    f"ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(70)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)

#: Every server still running, killed at exit even if a fixture's teardown never ran.
_running: set[ServerProcess] = set()


def kill_all_servers() -> None:
    """Kill every server this test run started that is still there (session end, atexit)."""
    for server in list(_running):
        server.kill()


atexit.register(kill_all_servers)


class ServerProcess:
    """A subprocess whose stdout and stderr go to one log file that tests can read.

    It dies with the test run however the run ends: teardown kills it (and its process
    group), the session's end and ``atexit`` kill what is left, and the kernel kills it
    if the test run itself is killed (``PR_SET_PDEATHSIG``).
    """

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = list(args)
        self.log_path = log_path
        self._log = log_path.open("wb")
        # A session of its own, so teardown can reach gunicorn's workers too.
        self.popen = subprocess.Popen(
            [PYTHON, "-c", _DIE_WITH_PARENT, str(os.getpid()), *self.args],
            cwd=REPO,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _running.add(self)

    @property
    def output(self) -> str:
        """Everything written so far, a line still being written included (for messages)."""
        return self.log_path.read_text(errors="replace")

    @property
    def complete_output(self) -> str:
        """The lines written in full so far: what a test may parse while the server runs.

        A read can see part of a write in progress: half a JSON line (seen on a loaded
        machine), or a port number cut short, which would be a wrong port.
        """
        text = self.output
        return text[: text.rfind("\n") + 1]

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait_for_line(self, pattern: str, *, timeout: float) -> re.Match[str]:
        """The first match of ``pattern`` in the output, waiting up to ``timeout`` s."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.complete_output)
            if match:
                return match
            if not self.running():
                raise AssertionError(f"{self.args[:3]} exited ({self.popen.returncode}) first:\n{self.output}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output}")
            time.sleep(0.05)

    def wait_for_port(self, port: int, *, timeout: float) -> None:
        """Until something accepts connections on ``port``, or fail (also if the process dies)."""
        deadline = time.monotonic() + timeout
        while not port_open(port):
            if not self.running():
                raise AssertionError(f"{self.args[:3]} exited ({self.popen.returncode}):\n{self.output}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"nothing listens on {port} after {timeout} s:\n{self.output}")
            time.sleep(0.05)

    def wait(self, *, timeout: float) -> int:
        """The exit status, waiting up to ``timeout`` s (``subprocess.TimeoutExpired`` otherwise)."""
        return self.popen.wait(timeout=timeout)

    def terminate(self) -> None:
        self.popen.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Teardown: make sure the process (and, for gunicorn, its workers) is gone."""
        if self.running():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        # Whatever is left of the session this process led (orphaned workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._log.close()
        _running.discard(self)


@contextlib.contextmanager
def running(args: Sequence[str], env: Mapping[str, str], log_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(args, env, log_path)
    try:
        yield process
    finally:
        process.kill()


def gunicorn_args(port: int) -> list[str]:
    """The real server, with the repository's configuration, on ``127.0.0.1:port``."""
    return [GUNICORN, "-c", "gunicorn.conf.py", "--bind", f"{LOOPBACK}:{port}", "letraz.wsgi:application"]


@contextlib.contextmanager
def running_gunicorn(
    env: Mapping[str, str], log_path: Path, *, timeout: float = 30.0
) -> Iterator[tuple[ServerProcess, int]]:
    """gunicorn on a free port, listening; stopped (killed if need be) on the way out."""
    port = free_port()
    with running(gunicorn_args(port), env, log_path) as server:
        server.wait_for_port(port, timeout=timeout)
        yield server, port


def grpcserver_args(*extra: str) -> list[str]:
    """The gRPC process on free ports: its gRPC one and its metrics one (both printed)."""
    return [PYTHON, "manage.py", "grpcserver", "--bind", f"{LOOPBACK}:0", "--metrics-port", "0", *extra]
