"""The one place that reads the process environment.

Every setting comes through :class:`Env`, which parses a variable into a typed value
or raises :class:`~django.core.exceptions.ImproperlyConfigured` naming the variable,
so a malformed deploy fails when the process starts, not on the first request.
Semantic checks (is this ``host:port``, is that a known component) are Django system
checks (``health/system_checks.py``) so that they show in ``manage.py check``.

Every variable can also come from a file: ``NAME_FILE=/run/secrets/letraz/NAME`` reads
``NAME`` from that file (a mounted Kubernetes Secret or a Docker secret), so secrets
need not sit in the process environment, where ``/proc/<pid>/environ``, crash reports
and child processes see them. Setting both ``NAME`` and ``NAME_FILE`` is an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class Env:
    """Typed access to an environment mapping (``os.environ`` by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def raw(self, name: str) -> str | None:
        """The variable's value with surrounding blanks removed; unset and blank are None.

        The value comes from the file ``NAME_FILE`` names, when that is set instead.
        """
        value = self._environ.get(name)
        path = self._environ.get(f"{name}_FILE")
        if path is not None and path.strip():
            if value is not None and value.strip():
                raise ImproperlyConfigured(f"Set {name} or {name}_FILE, not both.")
            value = self._read_file(f"{name}_FILE", path.strip())
        if value is None or not value.strip():
            return None
        return value.strip()

    @staticmethod
    def _read_file(variable: str, path: str) -> str:
        try:
            return Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            # The path is configuration, not a secret; the content is never quoted.
            raise ImproperlyConfigured(f"{variable} names a file that cannot be read ({type(exc).__name__}).") from None

    def string(self, name: str, default: str = "") -> str:
        value = self.raw(name)
        return default if value is None else value

    def required(self, name: str) -> str:
        value = self.raw(name)
        if value is None:
            raise ImproperlyConfigured(f"{name} must be set.")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ImproperlyConfigured(f"{name} must be true or false, got {value!r}.")

    def number(self, name: str, default: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ImproperlyConfigured(f"{name} must be a number, got {value!r}.") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ImproperlyConfigured(f"{name} must be a finite number, got {value!r}.")
        return number

    def integer(self, name: str, default: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise ImproperlyConfigured(f"{name} must be a whole number, got {value!r}.") from None

    def items(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A comma-separated list; blanks around items are dropped, empty items too.

        Unset, blank or only commas is the default, as for every other type: a stray
        empty value in a deploy must not quietly mean "none".
        """
        value = self.raw(name)
        items = tuple(item.strip() for item in (value or "").split(",") if item.strip())
        return items or default


env = Env()
