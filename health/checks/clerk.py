"""Can we make an authenticated call to Clerk's Backend API, in time?"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import httpx
import pydantic
from clerk_backend_api import Clerk
from clerk_backend_api.models import ClerkBaseError, NoResponseError, ResponseValidationError

from health.checks.base import CheckFailed, Verdict
from health.checks.reasons import http_reason, http_status_reason
from health.status import ClerkStatus, Component

#: The client's own timeout; every call passes the run's time limit instead.
DEFAULT_TIMEOUT_MS = 5000


@dataclass
class ClerkCheck:
    """``GET /jwks`` through ``clerk-backend-api``: cheap, and it needs the secret key.

    The SDK retries with backoff for up to an hour by default; here retries are off,
    because the runner's time limit and cache already decide how often Clerk is asked.

    The client costs 40 to 250 ms of CPU to build (more on a loaded machine, and the GIL
    is shared with the other checks' threads), so one is kept per process and it is built
    with the check, not inside the first run's time limit: built there, a fresh process
    (the CLI, a new worker) on a busy machine reported ``clerk: DOWN`` ("no answer within
    0.5 s") although Clerk answered in a millisecond.
    """

    secret_key: str = field(repr=False)
    api_url: str
    component: Component = field(default=Component.CLERK, init=False)
    timeout_status: ClerkStatus = field(default=ClerkStatus.DOWN, init=False)
    error_status: ClerkStatus = field(default=ClerkStatus.DOWN, init=False)
    _client: Clerk | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    #: The client's connection pool, ours so that a failure can empty it (``_drop_connections``).
    _transport: httpx.HTTPTransport = field(default_factory=httpx.HTTPTransport, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.secret_key:
            self._get_client(DEFAULT_TIMEOUT_MS).jwks  # noqa: B018 (the SDK imports its parts on first use)

    def run(self, timeout: float) -> Verdict:
        if not self.secret_key:
            raise CheckFailed(ClerkStatus.DOWN, "CLERK_SECRET_KEY is not set")
        timeout_ms = max(1, int(timeout * 1000))
        try:
            jwks = self._get_client(timeout_ms).jwks.get_jwks(retries=None, timeout_ms=timeout_ms)
        except ResponseValidationError as exc:
            raise CheckFailed(ClerkStatus.DOWN, "unreadable answer") from exc
        except ClerkBaseError as exc:
            raise CheckFailed(ClerkStatus.DOWN, http_status_reason(exc.status_code)) from exc
        except NoResponseError as exc:
            raise CheckFailed(ClerkStatus.DOWN, "no response") from exc
        except httpx.TransportError as exc:  # a timeout among them
            self._drop_connections()
            raise CheckFailed(ClerkStatus.DOWN, http_reason(exc, timeout)) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise CheckFailed(ClerkStatus.DOWN, http_reason(exc, timeout)) from exc
        except (pydantic.ValidationError, ValueError) as exc:
            raise CheckFailed(ClerkStatus.DOWN, "unreadable answer") from exc
        if jwks.keys is None:
            raise CheckFailed(ClerkStatus.DOWN, "answer has no keys")
        return Verdict(ClerkStatus.OPERATIONAL)

    def _get_client(self, timeout_ms: int) -> Clerk:
        with self._lock:
            if self._client is None:
                self._client = Clerk(
                    bearer_auth=self.secret_key,
                    server_url=self.api_url,
                    client=httpx.Client(follow_redirects=True, transport=self._transport),  # else the SDK's
                    retry_config=None,
                    timeout_ms=timeout_ms,
                )
            return self._client

    def _drop_connections(self) -> None:
        """Close every pooled connection: the next run connects anew.

        A partition that ends without FIN or RST freezes every idle keep-alive connection
        (httpx keeps up to 20), and each would cost a run timing out on it, a TTL of DOWN
        apiece, after Clerk is back: two, left by a hung run and its successor, were seen.
        After a transport failure none of them is trusted; a new one costs one handshake.
        The pool stays usable, and the client is not rebuilt (that is the costly part).
        """
        self._transport.close()

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.sdk_configuration.client.close()  # type: ignore[union-attr]
