"""A loopback stand-in for Clerk's Backend API (only ``GET /v1/jwks``).

The app points ``CLERK_API_URL`` (the SDK's ``server_url``) at
:attr:`FakeClerkAPI.url`; the SDK then calls ``{url}/jwks`` with
``Authorization: Bearer <secret key>``.
"""

from __future__ import annotations

import enum
import threading
import uuid
from typing import Any
from urllib.parse import urlsplit

from tests.peers._http import LOOPBACK, HTTPPeer, QuietHandler

__all__ = ["JWKS", "ClerkMode", "FakeClerkAPI"]


class ClerkMode(enum.StrEnum):
    """How :class:`FakeClerkAPI` answers ``GET /v1/jwks``."""

    OK = "ok"
    """200 with a real-looking JWKS (authentication still enforced)."""
    UNAUTHORIZED = "unauthorized"
    """401 with Clerk's JSON error body, whatever the key."""
    SERVER_ERROR = "server_error"
    """500 with Clerk's JSON error body."""
    MALFORMED = "malformed"
    """200 ``application/json`` whose body is truncated, invalid JSON."""
    WRONG_SHAPE = "wrong_shape"
    """200 ``application/json``, valid JSON of the wrong shape (``{"keys": "nope"}``)."""
    SLOW = "slow"
    """Wait :attr:`FakeClerkAPI.delay` seconds (cut short by ``stop()``), then as ``ok``."""


#: A JWKS as Clerk serves it (a real 2048-bit RSA public key).
JWKS: dict[str, Any] = {
    "keys": [
        {
            "use": "sig",
            "kty": "RSA",
            "kid": "ins_2loopbacktestinstance",
            "alg": "RS256",
            "n": (
                "v2gWcaTcb1dfrIkabDCGoakBkbxqeo9RXH7frCo6iEjAstrcfrIWfSkbkNWGq8_rsSwadyOk"
                "JuuXsk9yTooasjTqCelLzCmLyEERnOelqYh_UPd5ySuRb2RfTvOvX2Igz-2vlQ0KC2vfE9Z6"
                "gPJD01vSZvuWBoZAYyAa19dcE-WDa7ZbOIVljluWANauI__NewJVOPmlNM1cHubK4HHfjSy8"
                "wx7RFdsScp2aebYP8pO1YbqHhHPxkVWnoXkzGPU8WqJ6mHbOFo7Czl64nariK7PnknZ1rm63"
                "vwgsvtUv0fFyqJAvqgbUNG5Xumb6FwVb0A6kE2Q8GRlWf-L8PRr4yQ"
            ),
            "e": "AQAB",
        }
    ]
}

_MALFORMED_BODY = b'{"keys": "nope"'
_WRONG_SHAPE_BODY = b'{"keys": "nope"}'


def _clerk_error(code: str, message: str, long_message: str) -> dict[str, Any]:
    """A body shaped like Clerk's API errors."""
    return {
        "errors": [{"message": message, "long_message": long_message, "code": code}],
        "clerk_trace_id": uuid.uuid4().hex,
    }


class _ClerkHandler(QuietHandler):
    """Request handler; all state lives on the owning :class:`FakeClerkAPI`."""

    def do_GET(self) -> None:  # http.server naming
        """Serve ``/v1/jwks``; everything else is 404."""
        api: FakeClerkAPI = self.server.owner
        if urlsplit(self.path).path.rstrip("/") != "/v1/jwks":
            self.send_json(
                404,
                _clerk_error("resource_not_found", "not found", "The requested resource was not found."),
            )
            return
        api._record_request()
        mode, delay = api._snapshot()

        if mode is ClerkMode.SLOW and self.server.stopping.wait(delay):
            # Stopped while "slow": hang up without an answer.
            self.close_connection = True
            return
        if mode is ClerkMode.SERVER_ERROR:
            self.send_json(
                500,
                _clerk_error(
                    "internal_clerk_error",
                    "Oops, an unexpected error occurred",
                    "There was an internal error on our servers. We've been notified and are working on fixing it.",
                ),
            )
            return
        if mode is ClerkMode.UNAUTHORIZED or not api._authorized(self.headers.get("Authorization")):
            self.send_json(
                401,
                _clerk_error(
                    "authentication_invalid",
                    "Invalid authentication",
                    "The provided Clerk Secret Key is invalid. Make sure that your Clerk Secret Key is correct.",
                ),
            )
            return
        if mode is ClerkMode.MALFORMED:
            self.send_bytes(200, _MALFORMED_BODY)
            return
        if mode is ClerkMode.WRONG_SHAPE:
            self.send_bytes(200, _WRONG_SHAPE_BODY)
            return
        self.send_json(200, JWKS)

    def do_POST(self) -> None:  # http.server naming
        """Any other method: consume the body, answer 405."""
        self.read_body()
        self.send_json(405, _clerk_error("method_not_allowed", "method not allowed", "Method not allowed."))

    do_PUT = do_PATCH = do_DELETE = do_POST


class FakeClerkAPI(HTTPPeer):
    """Clerk's Backend API on ``127.0.0.1``, answering ``GET /v1/jwks``.

    Attributes (all thread-safe):
        mode: a :class:`ClerkMode` (plain strings such as ``"slow"`` are accepted).
        delay: seconds the ``slow`` mode waits before answering (default 5).
        secret_key: the only key accepted as ``Authorization: Bearer <key>``.
        requests: number of ``/v1/jwks`` requests received (see :meth:`reset_count`);
            :meth:`wait_for_requests` blocks until a count is reached.

    Use as ``with FakeClerkAPI() as clerk:`` or call :meth:`start`/:meth:`stop`.
    """

    handler_class = _ClerkHandler

    def __init__(
        self,
        mode: ClerkMode | str = ClerkMode.OK,
        *,
        secret_key: str = "sk_test_loopback",
        delay: float = 5.0,
    ) -> None:
        """Create a stopped fake; call :meth:`start` or use it as a context manager."""
        super().__init__()
        self._state_lock = threading.Condition()
        self._mode = ClerkMode(mode)
        self._delay = float(delay)
        self._requests = 0
        self.secret_key = secret_key

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the SDK's ``server_url`` / the app's ``CLERK_API_URL``."""
        return f"http://{LOOPBACK}:{self.port}/v1"

    @property
    def mode(self) -> ClerkMode:
        """The current answering mode."""
        with self._state_lock:
            return self._mode

    @mode.setter
    def mode(self, value: ClerkMode | str) -> None:
        mode = ClerkMode(value)
        with self._state_lock:
            self._mode = mode

    @property
    def delay(self) -> float:
        """Seconds the ``slow`` mode waits before answering."""
        with self._state_lock:
            return self._delay

    @delay.setter
    def delay(self, value: float) -> None:
        with self._state_lock:
            self._delay = float(value)

    @property
    def requests(self) -> int:
        """Number of ``/v1/jwks`` requests received since start or :meth:`reset_count`."""
        with self._state_lock:
            return self._requests

    def reset_count(self) -> None:
        """Reset :attr:`requests` to zero."""
        with self._state_lock:
            self._requests = 0

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` ``/v1/jwks`` requests have arrived; return whether they did."""
        with self._state_lock:
            return self._state_lock.wait_for(lambda: self._requests >= count, timeout=timeout)

    # -- used by the handler -------------------------------------------------------

    def _record_request(self) -> None:
        with self._state_lock:
            self._requests += 1
            self._state_lock.notify_all()

    def _snapshot(self) -> tuple[ClerkMode, float]:
        with self._state_lock:
            return self._mode, self._delay

    def _authorized(self, header: str | None) -> bool:
        return header == f"Bearer {self.secret_key}"
