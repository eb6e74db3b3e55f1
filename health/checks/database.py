"""Does the default database answer ``SELECT 1`` quickly, with every migration applied?"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from health.checks.base import CheckFailed, Verdict
from health.checks.reasons import database_reason
from health.status import Component, DatabaseStatus


@dataclass
class DatabaseCheck:
    """``SELECT 1`` on its own connection, closed again before ``run()`` returns.

    On PostgreSQL the connection's ``statement_timeout`` is the check's time limit, so
    a query stuck behind a lock ends at that limit instead of holding the thread.

    The runner calls this from a worker thread, where Django's request cycle never
    closes connections: without the ``close()`` in ``finally`` every check would leak
    one. Only the query is timed against ``slow_ms``; connecting is our own cost.
    """

    slow_ms: float
    alias: str = DEFAULT_DB_ALIAS
    component: Component = field(default=Component.DB, init=False)
    timeout_status: DatabaseStatus = field(default=DatabaseStatus.FATAL, init=False)
    error_status: DatabaseStatus = field(default=DatabaseStatus.FATAL, init=False)
    _migrations: frozenset[tuple[str, str]] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def run(self, timeout: float) -> Verdict:
        connection = connections[self.alias]
        try:
            connection.ensure_connection()
            with connection.cursor() as cursor:
                if connection.vendor == "postgresql":
                    # This connection is ours alone and closed below: a server that accepts
                    # queries but cannot run them (locks, overload) ends them at our limit.
                    cursor.execute("SELECT set_config('statement_timeout', %s, false)", [f"{int(timeout * 1000)}ms"])
                started = time.perf_counter()
                cursor.execute("SELECT 1")
                row = cursor.fetchone()
            elapsed_ms = (time.perf_counter() - started) * 1000
            unapplied = self._known_migrations() - MigrationRecorder(connection).applied_migrations().keys()
        except DatabaseError as exc:
            raise CheckFailed(DatabaseStatus.FATAL, database_reason(exc)) from exc
        finally:
            connection.close()
        if row is None or row[0] != 1:
            raise CheckFailed(DatabaseStatus.FATAL, "SELECT 1 gave an unexpected answer")
        if unapplied:
            return Verdict(DatabaseStatus.DEGRADED, f"{len(unapplied)} unapplied migration(s)")
        if elapsed_ms > self.slow_ms:
            return Verdict(DatabaseStatus.DEGRADED, f"SELECT 1 took {elapsed_ms:.0f} ms")
        return Verdict(DatabaseStatus.OPERATIONAL)

    def _known_migrations(self) -> frozenset[tuple[str, str]]:
        """The migrations on disk; the code does not change while the process runs."""
        with self._lock:
            if self._migrations is None:
                loader = MigrationLoader(None, ignore_no_migrations=True)
                self._migrations = frozenset(loader.graph.nodes)
            return self._migrations

    def close(self) -> None:
        """Nothing is held between runs: each run closes its connection."""
