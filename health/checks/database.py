"""Does the default database answer one query quickly, with every migration applied?"""

from __future__ import annotations

import math
import selectors
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from psycopg import pq
from psycopg.conninfo import make_conninfo

from health.checks.base import CheckFailed, Verdict
from health.checks.reasons import database_reason, libpq_reason
from health.status import Component, DatabaseStatus

#: Django's OPTIONS that are not libpq connection parameters.
_NOT_LIBPQ = frozenset(
    {"assume_role", "isolation_level", "pool", "server_side_binding", "cursor_factory", "context", "prepare_threshold"}
)
_MIGRATIONS_QUERY = b"SELECT app, name FROM django_migrations"
_UNDEFINED_TABLE = "42P01"


def connection_parameters(settings_dict: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """The libpq parameters of the check's own connection, from Django's settings dict.

    The database's own settings (host, name, user, TLS, ...) as the application uses
    them, plus client-side bounds derived from the time limit, so a partition never
    holds a thread for long: ``tcp_user_timeout`` (unacknowledged data) and keepalives
    (an idle socket) end a dead connection within about ``2 s`` where the kernel alone
    waits 15 minutes or two hours. ``connect_timeout`` is libpq's floor of 2 s; the check
    itself waits no longer than its time limit (see :func:`_wait`). ``statement_timeout``
    goes in the start-up packet (``options``), which costs no round trip of its own.
    """
    options = settings_dict.get("OPTIONS") or {}
    params: dict[str, Any] = {k: v for k, v in options.items() if k not in _NOT_LIBPQ}
    for key, name in (("NAME", "dbname"), ("USER", "user"), ("PASSWORD", "password"), ("HOST", "host")):
        if settings_dict.get(key):
            params[name] = settings_dict[key]
    if settings_dict.get("PORT"):
        params["port"] = str(settings_dict["PORT"])
    params.setdefault("dbname", "postgres")
    limit_ms = max(1, math.ceil(timeout * 1000))
    startup = f"-c statement_timeout={limit_ms}"
    params["options"] = f"{params['options']} {startup}" if params.get("options") else startup
    params |= {
        "client_encoding": "UTF8",
        "connect_timeout": max(2, math.ceil(timeout)),
        "tcp_user_timeout": max(1000, 2 * limit_ms),
        "keepalives": 1,
        "keepalives_idle": 1,
        "keepalives_interval": 1,
        "keepalives_count": 1,
    }
    return params


@dataclass
class DatabaseCheck:
    """One query on a connection of its own, closed again before ``run()`` returns.

    On PostgreSQL the check talks libpq directly (``psycopg.pq``, non-blocking) rather
    than through Django's connection: Django would spend a round trip on the time zone
    and the runner could not bound a call stuck on a dead socket. Here the connect and
    the query each wait on the socket with the run's deadline, so nothing outlives the
    time limit, and their times are measured apart: the connect is our cost, the query
    is the database's, and only the query is held against ``slow_ms`` (a slow answer on
    a database that still connects is DEGRADED, not FATAL).

    The one query is ``SELECT 1``; until every migration on disk has been seen applied
    it is the list of applied migrations instead (once all are applied they stay so while
    this code runs). Other databases (SQLite) go through Django's connection.
    """

    slow_ms: float
    alias: str = DEFAULT_DB_ALIAS
    component: Component = field(default=Component.DB, init=False)
    timeout_status: DatabaseStatus = field(default=DatabaseStatus.FATAL, init=False)
    error_status: DatabaseStatus = field(default=DatabaseStatus.FATAL, init=False)
    _migrations: frozenset[tuple[str, str]] | None = field(default=None, init=False, repr=False)
    _all_applied: bool = field(default=False, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def run(self, timeout: float) -> Verdict:
        connection = connections[self.alias]
        if connection.vendor == "postgresql":
            applied, query_ms = self._ask_postgres(connection.settings_dict, timeout)
        else:
            applied, query_ms = self._ask_django(connection)
        return self._verdict(applied, query_ms)

    def _verdict(self, applied: frozenset[tuple[str, str]] | None, query_ms: float) -> Verdict:
        if applied is not None:
            unapplied = self._known_migrations() - applied
            if unapplied:
                return Verdict(DatabaseStatus.DEGRADED, f"{len(unapplied)} unapplied migration(s)")
            self._all_applied = True
        if query_ms > self.slow_ms:
            return Verdict(DatabaseStatus.DEGRADED, f"SELECT 1 took {query_ms:.0f} ms")
        return Verdict(DatabaseStatus.OPERATIONAL)

    # -- PostgreSQL: libpq, non-blocking, one round trip beyond connecting ----------------

    def _ask_postgres(
        self, settings_dict: Mapping[str, Any], timeout: float
    ) -> tuple[frozenset[tuple[str, str]] | None, float]:
        deadline = time.monotonic() + timeout
        conninfo = make_conninfo("", **connection_parameters(settings_dict, timeout))
        pgconn = pq.PGconn.connect_start(conninfo.encode())
        try:
            _connect(pgconn, deadline, timeout)
            read_migrations = not self._all_applied
            started = time.monotonic()
            pgconn.send_query(_MIGRATIONS_QUERY if read_migrations else b"SELECT 1")
            results = _results(pgconn, deadline, timeout)
            query_ms = (time.monotonic() - started) * 1000
        except psycopg.Error as exc:  # the connection broke (reset, closed) mid-way
            reason = libpq_reason(pgconn.error_message, fallback="connection closed by the server")
            raise CheckFailed(DatabaseStatus.FATAL, reason) from exc
        finally:
            pgconn.finish()
        result = results[-1] if results else None
        if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
            sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
            if read_migrations and sqlstate == _UNDEFINED_TABLE:
                return frozenset(), query_ms  # a database nobody migrated yet
            message = result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY)
            raise CheckFailed(DatabaseStatus.FATAL, libpq_reason(message, sqlstate, fallback=_error_name(sqlstate)))
        if result is None or result.status != pq.ExecStatus.TUPLES_OK:
            raise CheckFailed(DatabaseStatus.FATAL, "SELECT 1 gave an unexpected answer")
        if read_migrations:
            rows = ((result.get_value(i, 0), result.get_value(i, 1)) for i in range(result.ntuples))
            return frozenset((bytes(a or b"").decode(), bytes(n or b"").decode()) for a, n in rows), query_ms
        if result.ntuples != 1 or result.get_value(0, 0) != b"1":
            raise CheckFailed(DatabaseStatus.FATAL, "SELECT 1 gave an unexpected answer")
        return None, query_ms

    # -- other databases: Django's connection -------------------------------------------

    def _ask_django(self, connection: BaseDatabaseWrapper) -> tuple[frozenset[tuple[str, str]] | None, float]:
        try:
            connection.ensure_connection()
            started = time.perf_counter()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                row = cursor.fetchone()
            query_ms = (time.perf_counter() - started) * 1000
            applied = None if self._all_applied else frozenset(MigrationRecorder(connection).applied_migrations())
        except DatabaseError as exc:
            raise CheckFailed(DatabaseStatus.FATAL, database_reason(exc)) from exc
        finally:
            # A connection opened in a worker thread is never closed by a request cycle.
            connection.close()
        if row is None or row[0] != 1:
            raise CheckFailed(DatabaseStatus.FATAL, "SELECT 1 gave an unexpected answer")
        return applied, query_ms

    def _known_migrations(self) -> frozenset[tuple[str, str]]:
        """The migrations on disk; the code does not change while the process runs."""
        with self._lock:
            if self._migrations is None:
                loader = MigrationLoader(None, ignore_no_migrations=True)
                self._migrations = frozenset(loader.graph.nodes)
            return self._migrations

    def close(self) -> None:
        """Nothing is held between runs: each run closes its connection."""


def _error_name(sqlstate: str) -> str:
    """The psycopg class of a server error (``QueryCanceled``), as the log's reason."""
    try:
        return psycopg.errors.lookup(sqlstate).__name__
    except KeyError:
        return "DatabaseError"


def _wait(pgconn: pq.abc.PGconn, event: int, deadline: float, timeout: float, what: str) -> None:
    """Wait for the socket until the deadline; past it the run is over (FATAL, ``what``)."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        with selectors.DefaultSelector() as selector:
            selector.register(pgconn.socket, event)
            if selector.select(remaining):
                return
    raise CheckFailed(DatabaseStatus.FATAL, f"{what} timed out")


def _connect(pgconn: pq.abc.PGconn, deadline: float, timeout: float) -> None:
    if pgconn.status == pq.ConnStatus.BAD:
        raise CheckFailed(DatabaseStatus.FATAL, libpq_reason(pgconn.error_message, fallback="cannot connect"))
    while True:
        state = pgconn.connect_poll()
        if state == pq.PollingStatus.OK:
            pgconn.nonblocking = 1
            return
        if state == pq.PollingStatus.FAILED:
            raise CheckFailed(DatabaseStatus.FATAL, libpq_reason(pgconn.error_message, fallback="cannot connect"))
        event = selectors.EVENT_READ if state == pq.PollingStatus.READING else selectors.EVENT_WRITE
        _wait(pgconn, event, deadline, timeout, "connect")


def _results(pgconn: pq.abc.PGconn, deadline: float, timeout: float) -> list[pq.abc.PGresult]:
    while pgconn.flush() != 0:
        _wait(pgconn, selectors.EVENT_WRITE, deadline, timeout, "query")
    results: list[pq.abc.PGresult] = []
    while True:
        pgconn.consume_input()
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                return results
            results.append(result)
        _wait(pgconn, selectors.EVENT_READ, deadline, timeout, "query")
