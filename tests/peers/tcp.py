"""Raw TCP peers: a listener that never speaks, and a port nobody listens on."""

from __future__ import annotations

import selectors
import socket
import threading
from typing import Self

__all__ = ["BlackholeListener", "closed_port"]

_LOOPBACK = "127.0.0.1"


def closed_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on right now.

    Binds a socket to port 0, reads the port the kernel chose and closes the
    socket. Connecting to it is refused at once (until someone else binds it).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        return int(sock.getsockname()[1])


class BlackholeListener:
    """A TCP listener on 127.0.0.1 that accepts connections and never sends a byte.

    Accepted sockets stay open (and unread) until :meth:`stop`, so a client's
    connect succeeds but any read waits until its own deadline: the shape of a
    peer that accepts TCP but never speaks HTTP or HTTP/2.

    Attributes:
        port: the listening port; target: ``"127.0.0.1:PORT"``;
        accepted: number of connections accepted so far (thread-safe);
        wait_for_accepted(count, timeout) blocks until that many were accepted.
    """

    def __init__(self) -> None:
        """Create a stopped listener; call :meth:`start` or use it as a context manager."""
        self._lock = threading.Condition()
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._connections: list[socket.socket] = []
        self._accepted = 0
        self._port: int | None = None

    def start(self) -> Self:
        """Listen on 127.0.0.1 (a free port) and start accepting; returns ``self``."""
        with self._lock:
            if self._listener is not None:
                raise RuntimeError("BlackholeListener is already running")
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((_LOOPBACK, self._port or 0))
            listener.listen(128)
            listener.setblocking(False)
            wake_r, wake_w = socket.socketpair()
            self._listener, self._wake_r, self._wake_w = listener, wake_r, wake_w
            self._port = int(listener.getsockname()[1])
            self._thread = threading.Thread(
                target=self._accept_loop,
                args=(listener, wake_r),
                name=f"BlackholeListener:{self._port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close the listener and every accepted socket. Idempotent."""
        with self._lock:
            listener, wake_r, wake_w, thread = (
                self._listener,
                self._wake_r,
                self._wake_w,
                self._thread,
            )
            self._listener = self._wake_r = self._wake_w = self._thread = None
        if listener is None or wake_w is None or wake_r is None or thread is None:
            return
        wake_w.send(b"x")  # wakes the selector in the accept thread
        thread.join(timeout=5)
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        listener.close()
        wake_r.close()
        wake_w.close()

    def __enter__(self) -> Self:
        """Start the listener."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the listener."""
        self.stop()

    @property
    def port(self) -> int:
        """The listening port."""
        if self._port is None:
            raise RuntimeError("BlackholeListener has not been started")
        return self._port

    @property
    def target(self) -> str:
        """``"127.0.0.1:PORT"`` (a gRPC target / ``host:port``)."""
        return f"{_LOOPBACK}:{self.port}"

    @property
    def accepted(self) -> int:
        """Connections accepted since start."""
        with self._lock:
            return self._accepted

    def wait_for_accepted(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` connections were accepted; return whether they were."""
        with self._lock:
            return self._lock.wait_for(lambda: self._accepted >= count, timeout=timeout)

    def _accept_loop(self, listener: socket.socket, wake: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ, "accept")
            selector.register(wake, selectors.EVENT_READ, "wake")
            while True:
                for key, _ in selector.select():
                    if key.data == "wake":
                        return
                    try:
                        conn, _addr = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    with self._lock:
                        self._connections.append(conn)
                        self._accepted += 1
                        self._lock.notify_all()
