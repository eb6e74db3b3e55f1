"""Whether an answer mentions something it must not: one rule for every leak test."""

from __future__ import annotations

import re


def mentions(text: str, fragment: str | int) -> bool:
    """``fragment`` in ``text``; a port (digits) only as a whole number.

    A port's digits turn up inside other numbers by chance (a timestamp's microseconds,
    an id), which names nothing; ``host:7443`` or ``port 7443`` does.
    """
    fragment = str(fragment)
    if fragment.isdigit():
        return re.search(rf"(?<![\w.]){fragment}(?![\w.])", text) is not None
    return fragment in text
