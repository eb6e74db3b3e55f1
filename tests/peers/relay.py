"""A TCP relay on loopback in front of a real server (PostgreSQL), that a test can cut.

Point an app at :attr:`TcpRelay.port` instead of the server's: :meth:`cut` closes every
relayed connection and refuses new ones (the server is "down" for the app, while the
real server stays up for everyone else); :meth:`restore` relays again on the same port.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from typing import Self

_LOOPBACK = "127.0.0.1"


class TcpRelay:
    """Relays ``127.0.0.1:port`` to ``target``; one thread for accept and every pipe."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._selector: selectors.DefaultSelector | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._port = 0
        self._running = False
        self._cut_done: threading.Event | None = None
        self.accepted = 0

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> Self:
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._running = True
        self.restore()
        self._thread = threading.Thread(target=self._loop, name=f"TcpRelay:{self._port}", daemon=True)
        self._thread.start()
        return self

    def restore(self) -> None:
        """Listen (again) on the same port."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((_LOOPBACK, self._port))
        listener.listen(64)
        listener.setblocking(False)
        self._port = int(listener.getsockname()[1])
        with self._lock:
            self._listener = listener
        self._wake()

    def cut(self) -> None:
        """Close the listener and every relayed connection: connects are refused until :meth:`restore`."""
        done = threading.Event()
        with self._lock:
            self._cut_done = done
        self._wake()
        if self._thread is None or not self._thread.is_alive() or not done.wait(5):
            self._close_all()

    def _close_all(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, {}
        for sock in [*([listener] if listener is not None else []), *pairs]:
            if self._selector is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def stop(self) -> None:
        self.cut()
        self._running = False
        self._wake()
        if self._thread is not None:
            self._thread.join(5)
        self._wake_r.close()
        self._wake_w.close()
        if self._selector is not None:
            self._selector.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _loop(self) -> None:
        assert self._selector is not None
        selector = self._selector
        registered_listener: socket.socket | None = None
        while self._running:
            with self._lock:
                cut, self._cut_done = self._cut_done, None
            if cut is not None:
                self._close_all()
                registered_listener = None
                cut.set()
            with self._lock:
                listener = self._listener
            if listener is not registered_listener:
                if registered_listener is not None:
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        selector.unregister(registered_listener)
                if listener is not None:
                    selector.register(listener, selectors.EVENT_READ, "accept")
                registered_listener = listener
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.data == "wake":
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                elif key.data == "accept":
                    self._accept(sock, selector)
                else:
                    self._pipe(sock)

    def _accept(self, listener: socket.socket, selector: selectors.BaseSelector) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        client.setblocking(True)
        upstream.setblocking(True)
        with self._lock:
            self._pairs[client], self._pairs[upstream] = upstream, client
            self.accepted += 1
        selector.register(client, selectors.EVENT_READ, "pipe")
        selector.register(upstream, selectors.EVENT_READ, "pipe")

    def _pipe(self, sock: socket.socket) -> None:
        with self._lock:
            other = self._pairs.get(sock)
        try:
            data = sock.recv(65536) if other is not None else b""
            if data and other is not None:
                other.sendall(data)
                return
        except OSError:
            pass
        with self._lock:
            self._pairs.pop(sock, None)
            if other is not None:
                self._pairs.pop(other, None)
        for s in (sock, other):
            if s is not None:
                if self._selector is not None:
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        self._selector.unregister(s)
                with contextlib.suppress(OSError):
                    s.close()
