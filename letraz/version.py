"""Which version of the service answers: one value, from ``pyproject.toml``.

The CLI (``manage.py health --version``), the ``X-Letraz-Version`` header of the probe
endpoints, the gRPC server's initial metadata, Sentry's ``release`` and the start-up log
line all read :data:`SERVICE_VERSION`.

Why ``pyproject.toml`` first and the installed metadata only second: this service runs
from its source tree (``make run``, the image's ``/app``), where an editable install's
metadata is frozen at install time and goes stale when the version is bumped without a
reinstall, and the image deliberately does not pip-install the project. The file read
here is the one the metadata is built from, so the two can never disagree; an installed
wheel without the source tree falls back to the metadata.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "letraz-health"
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
#: Said when neither source is there (never expected; a header must still have a value).
UNKNOWN = "unknown"


def read_version(pyproject: Path = PYPROJECT, distribution: str = DISTRIBUTION) -> str:
    try:
        with pyproject.open("rb") as file:
            project = tomllib.load(file).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        project = {}
    if project.get("name") == distribution and isinstance(project.get("version"), str):
        return str(project["version"])
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return UNKNOWN


SERVICE_VERSION = read_version()
