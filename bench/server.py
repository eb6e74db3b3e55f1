"""The real server under test: gunicorn with the repo's gunicorn.conf.py, on loopback."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    seconds: float

    @property
    def overall(self) -> str:
        return str(self.body.get("status", "?"))


def manage(args: list[str], env: Mapping[str, str], timeout: float = 60) -> None:
    """``manage.py <args>`` in the repo, bounded in time; raises with its output on failure."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


class Server:
    """``gunicorn -c gunicorn.conf.py`` bound to 127.0.0.1 only; always stopped on exit.

    Its output goes to ``log_path`` (never a pipe that could fill up and stall it).
    """

    def __init__(self, env: Mapping[str, str], log_path: Path, *, start_timeout: float = 60) -> None:
        self.port = free_port()
        self.env = {**env, "PORT": str(self.port)}
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The master's pid, which is also the session id of its workers."""
        return self.process.pid if self.process is not None else None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> Self:
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            # The command line's --bind wins over the config's 0.0.0.0.
            [str(gunicorn), "-c", "gunicorn.conf.py", "--bind", f"{LOOPBACK}:{self.port}", "letraz.wsgi:application"],
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() can reach the workers too
        )
        return self

    def wait_for_port(self) -> float:
        """Seconds from start until the port accepts; raises if gunicorn exits or the deadline passes."""
        deadline = self.started_at + self.start_timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                    return time.monotonic() - self.started_at
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"gunicorn did not open port {self.port} within {self.start_timeout:g} s\n{self.log_tail()}")

    def wait_until_serving(self, path: str = "/api/v1/health/live/") -> None:
        """Poll ``path`` until it answers 200 (the workers have loaded the app)."""
        self.wait_for_port()
        deadline = self.started_at + self.start_timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if self.get(path, timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{path} did not answer 200 within {self.start_timeout:g} s\n{self.log_tail()}")

    def get(self, path: str, *, timeout: float = 5) -> Answer:
        """One GET on a fresh connection (so successive calls spread over the workers)."""
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)
        try:
            started = time.perf_counter()
            conn.request("GET", path, headers={"Accept": "application/json", "Connection": "close"})
            response = conn.getresponse()
            raw = response.read()
            seconds = time.perf_counter() - started
        finally:
            conn.close()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"raw": raw[:200].decode(errors="replace")}
        return Answer(response.status, body if isinstance(body, dict) else {"raw": body}, seconds)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (graceful), then SIGKILL to the whole group after ``timeout``. Idempotent."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)  # gunicorn's graceful stop; it waits for its workers
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the master and its workers, nothing else
                process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited early\n{self.log_tail()}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
