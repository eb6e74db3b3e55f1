"""``manage.py drain``: tell this instance's probes to stop sending it traffic.

Creates the file named by ``HEALTH_DRAIN_FILE``; while it exists, readiness
(``/api/v1/health/ready/`` and the gRPC health service ``""``) says no and liveness
still says yes. Kubernetes' ``preStop`` hook runs it before SIGTERM. ``--undo``
removes the file. Both are idempotent.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from health.conf import health_settings

EXIT_USAGE = 2


class Command(BaseCommand):
    help = (
        "Create the drain file (HEALTH_DRAIN_FILE) so readiness probes fail while liveness passes; "
        "--undo removes it. Idempotent. Exit 2 when HEALTH_DRAIN_FILE is not set."
    )
    # A shutdown hook must work even when some unrelated setting fails a system check.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--undo", action="store_true", help="Remove the drain file: ready for traffic again.")

    def handle(self, *args: Any, **options: Any) -> None:
        path = health_settings.drain_file
        if path is None:
            raise CommandError("HEALTH_DRAIN_FILE is not set: there is no drain file to manage.", returncode=EXIT_USAGE)
        try:
            if options["undo"]:
                path.unlink(missing_ok=True)
            else:
                path.touch(exist_ok=True)
        except OSError as exc:
            verb = "remove" if options["undo"] else "create"
            raise CommandError(f"could not {verb} the drain file {path} ({type(exc).__name__}).") from exc
        if options["verbosity"] >= 1:
            state = "not draining" if options["undo"] else "draining"
            self.stdout.write(f"{state}: {path} {'removed' if options['undo'] else 'exists'}")
