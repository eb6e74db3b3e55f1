"""The one place that reads the process environment.

Every setting comes through :class:`Env`, which parses a variable into a typed value.
A malformed value does not raise at import (that gave Django's "ImproperlyConfigured",
exit 2, no check id, and sometimes a traceback): the variable's default is used and a
:class:`Problem` is kept, which the system check ``letraz.E004`` reports. So
``manage.py check`` shows malformed and semantic problems alike, with ids and exit 1,
and gunicorn, ``make run`` and the CLI refuse to start with the same one line.
Semantic checks (is this ``host:port``, is that a known component) are Django system
checks too (``health/system_checks.py``, ``letraz/checks.py``).

Every variable can also come from a file: ``NAME_FILE=/run/secrets/letraz/NAME`` reads
``NAME`` from that file (a mounted Kubernetes Secret or a Docker secret), so secrets
need not sit in the process environment, where ``/proc/<pid>/environ``, crash reports
and child processes see them. Setting both ``NAME`` and ``NAME_FILE`` is a problem
(reported like a malformed value), and so is a file that cannot be read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
#: Past this many characters a value shown in a message is cut short.
_SHOWN_LENGTH = 60


def shown(value: str) -> str:
    """A value as a message quotes it: ``repr``, cut short when long."""
    if len(value) > _SHOWN_LENGTH:
        value = value[: _SHOWN_LENGTH - 1] + "…"
    return repr(value)


def masked(value: str) -> str:
    """A secret as a message may show it: never its characters.

    A URL keeps its scheme, host, port and path, so that a DSN or a database URL can be
    recognised, but loses its user and password (where keys live); anything else is
    only its length.
    """
    try:
        parts = urlsplit(value)
        host = parts.hostname
        port = parts.port
    except ValueError:
        parts, host, port = None, None, None
    if parts is None or not parts.scheme or not host:
        return f"<{len(value)} characters, masked>"
    credentials = "***@" if parts.username or parts.password else ""
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return repr(f"{parts.scheme}://{credentials}{netloc}{parts.path}")


@dataclass(frozen=True)
class Problem:
    """A malformed variable: its name, its value as it may be shown, what is expected."""

    name: str
    value: str
    expected: str

    @property
    def message(self) -> str:
        """One line: the variable, the offending value, what would be right."""
        return f"{self.name} is {self.value}: expected {self.expected}."


class Env:
    """Typed access to an environment mapping (``os.environ`` by default).

    A malformed value gives the default and adds a :class:`Problem` to
    :attr:`problems` (one per variable, however often it is read).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._problems: dict[str, Problem] = {}

    @property
    def problems(self) -> tuple[Problem, ...]:
        """Every malformed variable read so far, in the order first read."""
        return tuple(self._problems.values())

    def report(self, name: str, value: str, expected: str) -> None:
        """Keep a problem found by a reader outside this class (a URL parser, say)."""
        self._problems.setdefault(name, Problem(name, value, expected))

    def raw(self, name: str) -> str | None:
        """The variable's value with surrounding blanks removed; unset and blank are None.

        The value comes from the file ``NAME_FILE`` names, when that is set instead.
        """
        value = self._environ.get(name)
        path = self._environ.get(f"{name}_FILE")
        if path is not None and path.strip():
            if value is not None and value.strip():
                self.report(name, f"set together with {name}_FILE", f"{name} or {name}_FILE, not both")
                return None
            value = self._read_file(f"{name}_FILE", path.strip())
        if value is None or not value.strip():
            return None
        return value.strip()

    def _read_file(self, variable: str, path: str) -> str | None:
        try:
            return Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            # The path is configuration, not a secret; the content is never quoted.
            self.report(variable, shown(path), f"a readable UTF-8 file ({type(exc).__name__})")
            return None

    def string(self, name: str, default: str = "") -> str:
        value = self.raw(name)
        return default if value is None else value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        self.report(name, shown(value), "true or false (also 1/0, yes/no, on/off)")
        return default

    def number(self, name: str, default: float, *, unit: str = "a number") -> float:
        """A finite number; ``unit`` says what it counts, for the message."""
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            self.report(name, shown(value), f"{unit}, such as {default:g}")
            return default
        return number

    def integer(self, name: str, default: int, *, unit: str = "a whole number") -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            self.report(name, shown(value), f"{unit}, such as {default}")
            return default

    def items(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A comma-separated list; blanks around items are dropped, empty items too.

        Unset, blank or only commas is the default, as for every other type: a stray
        empty value in a deploy must not quietly mean "none".
        """
        value = self.raw(name)
        items = tuple(item.strip() for item in (value or "").split(",") if item.strip())
        return items or default


env = Env()
