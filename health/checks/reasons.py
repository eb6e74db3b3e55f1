"""Why a check failed, in words an operator can act on, and nothing secret.

Each function maps a vendor's exception to a short phrase for the log line of a change
(``db OPERATIONAL -> FATAL (authentication failed: wrong password)``). The phrase is
chosen from a fixed list, never copied from the exception: libpq's and httpx's texts
name hosts, users and databases, and those stay out of logs and Sentry messages. The
original exception stays in the chain (``raise ... from exc``) for whoever reads a
traceback.

Pure functions: no I/O, no settings, so the tests can feed them real exceptions.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import grpc
import httpx

#: psycopg's SQLSTATEs that a server sends when it refuses or ends a session.
_SQLSTATE_REASONS = {
    "28P01": "authentication failed: wrong password",
    "28000": "authentication failed: role unknown or not allowed by pg_hba.conf",
    "3D000": "database missing",
    "57P01": "server shutting down",
    "57P02": "server crashed and is restarting",
    "57P03": "server starting up or shutting down",
    "57014": "query timed out (statement_timeout)",
    "53300": "too many connections",
    "25006": "server is read-only",
}

#: At connect time psycopg has no SQLSTATE (libpq reports the server's refusal as
#: text), so its message is matched against libpq's and the server's fixed English
#: phrases. Order matters: the first match wins.
_MESSAGE_REASONS = (
    ("password authentication failed", _SQLSTATE_REASONS["28P01"]),
    ("no password supplied", "authentication failed: a password is needed"),
    ("no pg_hba.conf entry", "authentication failed: not allowed by pg_hba.conf"),
    ('role "', _SQLSTATE_REASONS["28000"]),  # role "x" does not exist
    ('database "', _SQLSTATE_REASONS["3D000"]),  # database "x" does not exist
    ("the database system is shutting down", "server shutting down"),
    ("the database system is starting up", "server starting up"),
    ("the database system is in recovery mode", "server in recovery"),
    ("terminating connection due to administrator command", "server shutting down"),
    ("too many clients", _SQLSTATE_REASONS["53300"]),
    ("remaining connection slots", _SQLSTATE_REASONS["53300"]),
    ("connection refused", "connection refused"),
    ("timeout expired", "connect timed out"),
    ("failed to resolve host", "host name not resolved"),
    ("could not translate host name", "host name not resolved"),
    ("name or service not known", "host name not resolved"),
    ("server closed the connection unexpectedly", "connection closed by the server"),
    ("consuming input failed", "connection closed by the server"),
    ("ssl", "TLS failed"),
    ("network is unreachable", "network unreachable"),
    ("no route to host", "no route to host"),
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its causes: Django wraps psycopg's error in its own."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def database_reason(exc: BaseException) -> str:
    """``OperationalError`` (Django's or psycopg's, or SQLite's) as what went wrong."""
    for error in _chain(exc):
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate in _SQLSTATE_REASONS:
            return _SQLSTATE_REASONS[sqlstate]
    for error in _chain(exc):
        if type(error).__module__.startswith(("psycopg", "sqlite3")):
            reason = _reason_from_text(str(error))
            if reason is not None:
                return reason
            if isinstance(sqlstate := getattr(error, "sqlstate", None), str):
                return f"{type(error).__name__} (SQLSTATE {sqlstate})"
            return type(error).__name__
    return type(exc).__name__


def libpq_reason(message: bytes | str | None, sqlstate: str | None = None, *, fallback: str) -> str:
    """A failure libpq reported itself (``PGconn.error_message``, a result's SQLSTATE)."""
    if sqlstate and sqlstate in _SQLSTATE_REASONS:
        return _SQLSTATE_REASONS[sqlstate]
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else (message or "")
    return _reason_from_text(text) or fallback


def _reason_from_text(message: str) -> str | None:
    text = message.lower()
    # "connection to server at ..., port ... failed: FATAL:  role ..." - the server's
    # own words come after the last "failed:"; the part before names the host.
    server_text = text.rsplit("failed:", 1)[-1]
    for needle, reason in _MESSAGE_REASONS:
        if needle in (server_text if needle.endswith('"') else text):
            return reason
    return None


def _tls_reason(error: ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return "TLS failed: certificate not trusted"
    return "TLS failed"


def http_reason(exc: BaseException, timeout: float) -> str:
    """An ``httpx`` error (raised by Clerk's SDK) as what went wrong."""
    if isinstance(exc, httpx.ConnectTimeout):
        return f"connect timed out after {timeout:g} s"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout:g} s"
    for error in _chain(exc):
        if isinstance(error, ssl.SSLError):
            return _tls_reason(error)
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
    text = str(exc).lower()
    if "name or service not known" in text or "nodename nor servname" in text or "name resolution" in text:
        return "host name not resolved"
    if "connection refused" in text:
        return "connection refused"
    if "ssl" in text or "certificate" in text:
        return "TLS failed"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection closed without an answer"
    return type(exc).__name__


def http_status_reason(status_code: int) -> str:
    """An HTTP error status from Clerk's Backend API, with what it usually means."""
    meaning = {
        401: "key rejected: check CLERK_SECRET_KEY",
        403: "key not allowed",
        404: "not found: check CLERK_API_URL",
        429: "rate limited",
    }.get(status_code)
    if meaning is None and status_code >= 500:
        meaning = "Clerk's own error"
    return f"HTTP {status_code} ({meaning})" if meaning else f"HTTP {status_code}"


def grpc_reason(code: grpc.StatusCode, details: str | None = None) -> str:
    """A gRPC status code as what went wrong; ``details`` only to spot a TLS failure."""
    name = code.name
    lowered = (details or "").lower()
    if code == grpc.StatusCode.UNAVAILABLE and ("ssl" in lowered or "handshake" in lowered or "tls" in lowered):
        return f"TLS failed: check UTIL_GRPC_TLS ({name})"
    meaning = {
        grpc.StatusCode.UNAVAILABLE: "unreachable",
        grpc.StatusCode.DEADLINE_EXCEEDED: "no answer in time",
        grpc.StatusCode.UNIMPLEMENTED: "no such health method: check UTIL_GRPC_HEALTH_PROTOCOL",
        grpc.StatusCode.UNAUTHENTICATED: "not authenticated",
        grpc.StatusCode.PERMISSION_DENIED: "permission denied",
        grpc.StatusCode.RESOURCE_EXHAUSTED: "overloaded",
        grpc.StatusCode.INTERNAL: "its own error",
        grpc.StatusCode.UNKNOWN: "its own error",
    }.get(code)
    return f"RPC {name} ({meaning})" if meaning else f"RPC {name}"
