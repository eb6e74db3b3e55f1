"""gunicorn's access log without the probes' lines (thousands a minute, all alike)."""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from letraz.env import env


class ProbeQuietLogger(Logger):  # type: ignore[misc]
    """Skips access lines for the probes (``core.urls.is_probe_path``) unless GUNICORN_LOG_HEALTH_PROBES is true."""

    log_health_probes = env.boolean("GUNICORN_LOG_HEALTH_PROBES", False)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.log_health_probes:
            # Imported here: the master process configures this logger before Django is set up.
            from core.urls import is_probe_path

            if is_probe_path(environ.get("PATH_INFO", "")):
                return
        super().access(resp, req, environ, request_time)
