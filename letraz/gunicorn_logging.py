"""gunicorn's access log without the probes' lines (thousands a minute, all alike)."""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from letraz.env import env
from letraz.sentry import HEALTH_PATH


class ProbeQuietLogger(Logger):  # type: ignore[misc]
    """Skips access lines for ``/api/v*/health/...`` unless GUNICORN_LOG_HEALTH_PROBES is true."""

    log_health_probes = env.boolean("GUNICORN_LOG_HEALTH_PROBES", False)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.log_health_probes and HEALTH_PATH.match(environ.get("PATH_INFO", "")):
            return
        super().access(resp, req, environ, request_time)
