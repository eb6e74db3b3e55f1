"""Test settings: the real settings with a test secret, read from the same environment.

``DATABASE_URL`` picks the database (SQLite by default, PostgreSQL in CI).
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret")
# Tests configure every peer themselves; nothing from the developer's shell leaks in.
for _name in ("SENTRY_DSN", "CLERK_SECRET_KEY", "UTIL_GRPC_HOST", "INSTANCE_ID", "HEALTH_DRAIN_FILE"):
    os.environ.pop(_name, None)

from letraz.settings import *  # noqa: E402,F403

# Every check runs live unless a test asks for caching.
HEALTH_CACHE_TTL = 0.0
HEALTH_MAX_STALENESS = 0.0
# A SELECT 1 slower than production's 250 ms makes the database DEGRADED; on a machine
# whose cores are busy with other work it can be, and a test about what an answer says
# would then see a state it did not ask for. Tests about the threshold set their own.
HEALTH_DB_SLOW_MS = 5000.0
# No timeline or heartbeat threads unless a test turns them on (they write to the database).
HEALTH_HISTORY_DAYS = 0.0
