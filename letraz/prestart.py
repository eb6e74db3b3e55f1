"""What ``make run`` does before gunicorn: the configuration first, then migrations, bounded.

``python -m letraz.prestart`` exits 2 with one line per configuration error (the system
checks' ids and messages, the ones gunicorn would refuse to start on), before anything
touches the database: a malformed setting used to read "migrations did not run (is the
database reachable?)", then gunicorn refused anyway. Then it migrates in a child process
given :data:`MIGRATE_SECONDS`; a database that is down or hangs is reported and the server
starts anyway (its health endpoint then says ``db: FATAL``). The bound is Python's, so
``make run`` needs no GNU ``timeout`` (absent on stock macOS).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: A migration that takes longer is taken for a database that hangs.
MIGRATE_SECONDS = 30
MANAGE_PY = Path(__file__).resolve().parent.parent / "manage.py"


def configuration_errors() -> list[str]:
    """The system checks' errors, gunicorn's selection: all checks, and the project's deploy checks."""
    import django
    from django.core import checks

    django.setup()
    messages = [*checks.run_checks(), *checks.run_checks(tags=["letraz"], include_deployment_checks=True)]
    lines: list[str] = []
    for message in messages:
        line = f"({message.id}) {message.msg}"
        if message.is_serious() and not message.is_silenced() and line not in lines:
            lines.append(line)
    return lines


def migrate(seconds: float = MIGRATE_SECONDS) -> str | None:
    """Apply migrations in a child process; what went wrong, or None."""
    try:
        command = [sys.executable, str(MANAGE_PY), "migrate", "--noinput"]  # fixed: no outside input
        done = subprocess.run(command, timeout=seconds, check=False)  # noqa: S603
    except subprocess.TimeoutExpired:
        return f"migrations did not finish within {seconds:g} s (is the database reachable?); serving anyway."
    if done.returncode != 0:
        return "migrations did not run (is the database reachable?); serving anyway."
    return None


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "letraz.settings")
    errors = configuration_errors()
    if errors:
        for line in errors:
            sys.stderr.write(f"make run: not starting: {line}\n")
        return 2
    problem = migrate()
    if problem is not None:
        sys.stderr.write(f"make run: {problem}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
