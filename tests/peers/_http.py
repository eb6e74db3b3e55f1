"""Shared machinery for the loopback HTTP peers (Clerk stand-in, Sentry receiver).

The stdlib ``ThreadingHTTPServer`` has three traps for a test peer:

* ``HTTPServer.server_bind`` calls ``socket.getfqdn()``, a reverse DNS lookup that
  can stall on a machine without a resolver; we skip it.
* It runs handlers in daemon threads and never closes idle keep-alive
  connections, so ``stop()`` would leak threads blocked in ``recv``.  We track
  every accepted connection, shut them all down on stop, and join the handler
  threads (``daemon_threads = False`` / ``block_on_close = True``).
* Without ``TCP_NODELAY`` a keep-alive response arrives ~40 ms late (Nagle plus
  delayed ACK); handlers set ``disable_nagle_algorithm = True``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self

LOOPBACK = "127.0.0.1"


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server bound to loopback that can be stopped without leaks."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        port: int,
        handler_class: type[BaseHTTPRequestHandler],
        owner: Any,
    ) -> None:
        """Bind ``127.0.0.1:port`` (0 picks a free port) for ``owner``."""
        self.owner = owner
        #: Set when the peer is stopping; handlers wait on it instead of sleeping.
        self.stopping = threading.Event()
        self._connections_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        super().__init__((LOOPBACK, port), handler_class)

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s reverse DNS lookup of the host."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Remember the connection before a handler thread takes it."""
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Forget and close a connection once its handler is done with it."""
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open connection so blocked handler threads return."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about client disconnects and stop-time socket errors."""
        # A peer that hangs up, or our own stop() shutting a socket down, is
        # normal for these tests; anything else is still reported.
        if self.stopping.is_set():
            return
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler with Nagle off and helpers that always send Content-Length."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    #: Idle keep-alive connections are dropped after this many seconds.
    timeout = 30
    server: LoopbackHTTPServer
    server_version = "loopback-peer"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Do not write an access log to stderr."""

    def send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Send a complete response with an exact ``Content-Length``."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.wfile.flush()

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """Send ``payload`` as a JSON response."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.send_bytes(status, body, "application/json", headers)

    def read_body(self) -> bytes:
        """Read the request body (``Content-Length`` or chunked) so keep-alive stays in sync."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                if not size_line:
                    break
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers end with an empty line.
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""


class HTTPPeer:
    """Lifecycle (start/stop/context manager) shared by the HTTP peers.

    The first ``start()`` binds a free port; later ``start()`` calls (after
    ``stop()``) re-bind that same port so a test can take the peer away and
    bring it back.
    """

    handler_class: ClassVar[type[QuietHandler]]
    #: How long ``start()`` retries re-binding the remembered port if it is busy.
    rebind_timeout: float = 1.0

    def __init__(self) -> None:
        """Create a stopped peer."""
        self._lifecycle_lock = threading.Lock()
        self._server: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> Self:
        """Bind and begin serving; returns ``self``."""
        with self._lifecycle_lock:
            if self._server is not None:
                raise RuntimeError(f"{type(self).__name__} is already running")
            server = self._bind()
            self._port = server.server_port
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"{type(self).__name__}:{self._port}",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and join every thread. Idempotent."""
        with self._lifecycle_lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None or thread is None:
            return
        server.stopping.set()  # wakes handlers waiting in "slow" modes
        server.shutdown()  # serve_forever returns; no more accepts
        server.close_connections()  # idle keep-alive handlers see EOF
        server.server_close()  # closes the listener, joins handler threads
        thread.join(timeout=5)

    def __enter__(self) -> Self:
        """Start the peer."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the peer."""
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the peer is currently serving."""
        with self._lifecycle_lock:
            return self._server is not None

    @property
    def port(self) -> int:
        """The bound port (kept after ``stop()`` so a restart reuses it)."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} has not been started")
        return self._port

    # -- internals -----------------------------------------------------------------

    def _bind(self) -> LoopbackHTTPServer:
        port = self._port or 0
        deadline = time.monotonic() + self.rebind_timeout
        while True:
            try:
                return LoopbackHTTPServer(port, self.handler_class, self)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or port == 0 or time.monotonic() > deadline:
                    raise
                # Bounded retry: only while re-binding a port we just released.
                time.sleep(0.05)
