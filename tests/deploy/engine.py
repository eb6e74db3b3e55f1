"""A Docker engine of the test session's own: Debian's ``dockerd``, started and stopped by PID.

No container registry is reachable here and the machine has no firewall to spare, so the
daemon runs with ``--iptables=false --ip6tables=false --bridge=none --ip-forward=false``
(containers and builds use ``--network host``). It is private to the test session: its
own socket and exec root in a fresh temporary directory, so it never meets a daemon
somebody else runs. Its data root persists in ``STATE_DIR`` (the cached stand-in base
image lives there) and is guarded by a file lock, so two sessions on one machine take
turns instead of sharing it. Anything a session leaves (a daemon orphaned by a killed
pytest, test images, containers) is removed by the next one.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

import pytest

#: Where the daemon keeps images between sessions; override for a machine whose /var is small.
STATE_DIR = Path(os.environ.get("LETRAZ_DOCKER_STATE", "/var/cache/letraz-health-test"))
#: Every image and container a test makes carries this label; the stand-in base does not.
TEST_LABEL = "org.letraz.health.test"
DAEMON_FLAGS = ("--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-forward=false")
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
LOCK_TIMEOUT = 900.0
_PR_SET_PDEATHSIG = 1
#: ``REQUIRE_DOCKER=1`` (set by ``.ci/run``) or ``CI=true``: "cannot run here" is a failure,
#: as ``REQUIRE_POSTGRES`` makes it for the database, so CI never passes with the image
#: tests silently skipped.
REQUIRE_DOCKER = os.environ.get("REQUIRE_DOCKER", "") not in {"", "0"} or os.environ.get("CI") == "true"


class EngineUnavailable(Exception):
    """The engine cannot run on this machine; the message says why."""


def engine_unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail when the engine is required."""
    if REQUIRE_DOCKER:
        pytest.fail(f"the Docker engine is required here (REQUIRE_DOCKER or CI) but {reason}", pytrace=False)
    pytest.skip(f"no Docker engine: {reason}")


@dataclass
class DockerEngine:
    """A running ``dockerd`` and the matching client, for ``docker`` commands in tests."""

    client: str
    socket: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    exec_root: Path
    config_dir: Path
    started_in: float = 0.0
    _lock: IO[str] | None = field(default=None, repr=False)

    @property
    def env(self) -> dict[str, str]:
        """The client's environment: this daemon, no user config, the legacy builder unless asked."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        return env | {"DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(self.config_dir)}

    def docker(
        self,
        *args: str,
        timeout: float,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        stdin: IO[bytes] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` to completion; on ``check``, a failure raises with the output."""
        done = subprocess.run(
            [self.client, *args],
            env=self.env | dict(env or {}),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:4])} … exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def inspect(self, kind: str, name: str) -> dict[str, Any] | None:
        """``docker KIND inspect NAME`` as a dict, or ``None`` when there is no such object."""
        done = self.docker(kind, "inspect", name, timeout=30, check=False)
        if done.returncode != 0:
            return None
        value = json.loads(done.stdout)
        assert isinstance(value, list) and len(value) == 1, done.stdout
        entry = value[0]
        assert isinstance(entry, dict)
        return entry

    def image_size(self, tag: str) -> int:
        inspected = self.inspect("image", tag)
        assert inspected is not None, f"no image {tag}"
        return int(inspected["Size"])

    def remove_test_objects(self) -> None:
        """Containers and images labelled ``TEST_LABEL`` (this session's or a crashed one's), and build leftovers.

        The stand-in base carries no such label and stays. Each prune runs only when
        there is something to prune: on a loaded disk every one of them costs seconds.
        """
        containers = self.docker("ps", "-aq", "--filter", f"label={TEST_LABEL}", timeout=30).stdout.split()
        if containers:
            self.docker("rm", "-f", "-v", *containers, timeout=120, check=False)
        images = self.docker("images", "-q", "--filter", f"label={TEST_LABEL}", timeout=30).stdout.split()
        if images:
            self.docker("rmi", "-f", *sorted(set(images)), timeout=300, check=False)
        # A failed legacy build leaves untagged intermediate images behind.
        if self.docker("images", "-q", "--filter", "dangling=true", timeout=30).stdout.split():
            self.docker("image", "prune", "-f", timeout=300, check=False)
        usage = self.docker("system", "df", "--format", "{{.Type}}={{.Size}}", timeout=60, check=False).stdout
        if re.search(r"^Build Cache=(?!0B$)", usage, re.MULTILINE):
            self.docker("builder", "prune", "-af", timeout=300, check=False)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """SIGTERM the daemon by its PID, wait, SIGKILL its session if it will not go; release the data root."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
            # Its managed containerd shares the daemon's session; nothing of it may outlive the test.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        finally:
            with contextlib.suppress(FileNotFoundError):
                (STATE_DIR / "dockerd.pid").unlink()
            shutil.rmtree(self.exec_root, ignore_errors=True)
            shutil.rmtree(self.config_dir, ignore_errors=True)
            if self._lock is not None:
                self._lock.close()  # releases the flock


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the forked child only makes one call


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM the daemon if the test process dies without stopping it."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _client() -> str:
    """Debian's client, of the daemon's own version, when present; else whatever ``docker`` is."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise EngineUnavailable("no docker client (apt-get install docker.io)")


def _take_lock(path: Path, timeout: float) -> IO[str]:
    handle = path.open("a+")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                raise EngineUnavailable(f"{path} stayed locked by another test session for {timeout:.0f} s") from None
            time.sleep(1.0)


def _end_orphaned_daemon(pid_file: Path, data_root: Path) -> None:
    """A daemon a killed session left on our data root (its PID file names it) is ended first."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return
    if not cmdline or not cmdline[0].endswith(b"dockerd") or str(data_root).encode() not in cmdline:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


def start_engine(log_dir: Path, *, extra_flags: Sequence[str] = ()) -> DockerEngine:
    """Start a private ``dockerd``; raise :class:`EngineUnavailable` saying why it cannot run."""
    started = time.monotonic()
    if os.geteuid() != 0:
        raise EngineUnavailable("dockerd needs root")
    dockerd = shutil.which("dockerd") or ("/usr/sbin/dockerd" if os.access("/usr/sbin/dockerd", os.X_OK) else None)
    if dockerd is None:
        raise EngineUnavailable("no dockerd (apt-get install --no-install-recommends docker.io)")
    client = _client()
    try:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineUnavailable(f"cannot create {STATE_DIR}: {exc}") from exc
    lock = _take_lock(STATE_DIR / "lock", LOCK_TIMEOUT)
    data_root = STATE_DIR / "docker"
    pid_file = STATE_DIR / "dockerd.pid"
    _end_orphaned_daemon(pid_file, data_root)
    # Short paths: containerd's socket lands under the exec root (sun_path is 108 bytes).
    exec_root = Path(tempfile.mkdtemp(prefix="lhd-", dir="/tmp"))
    config_dir = Path(tempfile.mkdtemp(prefix="lhd-config-"))
    socket = exec_root / "docker.sock"
    log_path = log_dir / "dockerd.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                dockerd,
                *DAEMON_FLAGS,
                f"--data-root={data_root}",
                f"--exec-root={exec_root}",
                f"--pidfile={exec_root / 'dockerd.pid'}",
                f"--host=unix://{socket}",
                *extra_flags,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    pid_file.write_text(f"{process.pid}\n")
    engine = DockerEngine(client, socket, process, log_path, exec_root, config_dir, _lock=lock)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            engine.stop()
            raise EngineUnavailable(
                f"dockerd exited {process.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}"
            )
        done = engine.docker("version", "--format", "{{.Server.Version}}", timeout=10, check=False)
        if done.returncode == 0:
            break
        if time.monotonic() >= deadline:
            engine.stop()
            raise EngineUnavailable(f"dockerd did not answer within {START_TIMEOUT:.0f} s:\n{engine.log_tail()}")
        time.sleep(0.2)
    engine.started_in = time.monotonic() - started
    try:
        engine.remove_test_objects()
    except BaseException:
        engine.stop()
        raise
    return engine
