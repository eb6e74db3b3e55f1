"""``Authorization: Bearer <token>`` compared in constant time (metrics and diagnostics)."""

from __future__ import annotations

import hmac

_SCHEME = "bearer"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, or None for any other header."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != _SCHEME or not token:
        return None
    return token


def bearer_matches(authorization: str | None, expected: str) -> bool:
    """True only when ``expected`` is set and the header carries exactly it.

    ``hmac.compare_digest`` takes the same time wherever the first difference is, so a
    caller cannot guess the token a character at a time from the answer's timing.
    """
    given = bearer_token(authorization)
    if not expected or given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())
