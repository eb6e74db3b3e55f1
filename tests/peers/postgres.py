"""A PostgreSQL stand-in that refuses every session the way a real server does.

The PostgreSQL here trusts every connection from 127.0.0.1 (pg_hba ``trust``), so a
wrong password cannot be produced with it, and a server shutting down cannot be
produced without stopping the one every test shares. This peer speaks the real wire
protocol (protocol 3.0) far enough for libpq to parse its answer: it declines TLS and
GSS encryption, asks for a cleartext password when told to, and answers with an
``ErrorResponse`` carrying the SQLSTATE and the message a real server sends.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Self

_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104
_CANCEL_REQUEST = 80877102

#: (SQLSTATE, message, ask for a password first) as PostgreSQL 15 sends them.
WRONG_PASSWORD = ("28P01", 'password authentication failed for user "{user}"', True)
SHUTTING_DOWN = ("57P03", "the database system is shutting down", False)


def _read_exactly(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def _error_response(sqlstate: str, message: str) -> bytes:
    fields = b"".join(
        tag + value.encode() + b"\0"
        for tag, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


class RefusingPostgres:
    """Listens on 127.0.0.1 and refuses each session with one fixed error.

    ``refusal`` is one of :data:`WRONG_PASSWORD`, :data:`SHUTTING_DOWN`. ``sessions``
    counts the startup messages it answered.
    """

    def __init__(self, refusal: tuple[str, str, bool]) -> None:
        self.sqlstate, self.message, self.asks_password = refusal
        self.sessions = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name=f"RefusingPostgres:{self.port}", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        # shutdown() wakes the accept(); close() alone would not on Linux.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError, ConnectionError):
                    self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        while True:
            (length,) = struct.unpack("!I", _read_exactly(conn, 4))
            payload = _read_exactly(conn, length - 4)
            (code,) = struct.unpack("!I", payload[:4])
            if code in (_SSL_REQUEST, _GSS_REQUEST):
                conn.sendall(b"N")  # no encryption here: go on in plain text
                continue
            if code == _CANCEL_REQUEST:
                return
            break
        params = payload[4:].split(b"\0")
        user = dict(zip(params[::2], params[1::2], strict=False)).get(b"user", b"").decode()
        self.sessions += 1
        if self.asks_password:
            conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
            tag = _read_exactly(conn, 1)
            (length,) = struct.unpack("!I", _read_exactly(conn, 4))
            _read_exactly(conn, length - 4)
            if tag != b"p":
                return
        conn.sendall(_error_response(self.sqlstate, self.message.format(user=user)))
