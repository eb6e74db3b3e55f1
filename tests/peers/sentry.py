"""A loopback Sentry ingest endpoint that records what the Sentry SDK sends.

Point ``sentry_sdk.init(dsn=receiver.dsn)`` at it. The SDK (2.x) posts
envelopes to ``/api/<project>/envelope/``, gzip-compressed
(``Content-Encoding: gzip``; ``br`` when the Brotli module is installed). An
envelope is newline-separated: one JSON header line, then for each item a JSON
item header line followed by the payload. When the item header has a
``length`` the payload is exactly that many bytes (it may then contain
newlines); without it the payload runs to the next newline.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.peers._http import LOOPBACK, HTTPPeer, QuietHandler

__all__ = ["EnvelopeItem", "SentryReceiver", "parse_envelope"]

_ROUTE = re.compile(r"^/api/(?P<project>[^/]+)/(?P<kind>envelope|store)/?$")


@dataclass(frozen=True)
class EnvelopeItem:
    """One item of an envelope: its header, raw payload and JSON payload (if any)."""

    headers: dict[str, Any]
    raw: bytes
    payload: Any = field(default=None)

    @property
    def type(self) -> str:
        """The item type (``event``, ``transaction``, ``session``, ``client_report``...)."""
        return str(self.headers.get("type", ""))


def parse_envelope(data: bytes) -> tuple[dict[str, Any], list[EnvelopeItem]]:
    """Parse a Sentry envelope into its header and items.

    Raises ``ValueError`` on a malformed envelope.
    """
    pos = 0

    def read_line() -> bytes | None:
        nonlocal pos
        if pos >= len(data):
            return None
        end = data.find(b"\n", pos)
        if end == -1:
            line, pos = data[pos:], len(data)
        else:
            line, pos = data[pos:end], end + 1
        return line

    header_line = read_line()
    if header_line is None:
        raise ValueError("empty envelope")
    envelope_headers = json.loads(header_line or b"{}")
    items: list[EnvelopeItem] = []
    while True:
        item_line = read_line()
        if item_line is None:
            break
        if not item_line.strip():
            continue  # tolerate a trailing blank line
        item_headers = json.loads(item_line)
        length = item_headers.get("length")
        if length is not None:
            length = int(length)
            raw = data[pos : pos + length]
            if len(raw) != length:
                raise ValueError("envelope item shorter than its length header")
            pos += length
            if data[pos : pos + 1] == b"\n":
                pos += 1
        else:
            raw = read_line() or b""
        payload: Any = None
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None  # attachments and other binary items
        items.append(EnvelopeItem(headers=item_headers, raw=raw, payload=payload))
    return envelope_headers, items


def _decode_body(body: bytes, encoding: str) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate, br, identity)."""
    for enc in reversed([e.strip().lower() for e in encoding.split(",") if e.strip()]):
        if enc in ("gzip", "x-gzip"):
            body = gzip.decompress(body)
        elif enc == "deflate":
            try:
                body = zlib.decompress(body)
            except zlib.error:
                body = zlib.decompress(body, -zlib.MAX_WBITS)
        elif enc == "br":
            import brotli  # type: ignore[import-not-found]  # only if the SDK could use it

            body = brotli.decompress(body)
        elif enc != "identity":
            raise ValueError(f"unsupported Content-Encoding {enc!r}")
    return body


class _SentryHandler(QuietHandler):
    """Request handler; all state lives on the owning :class:`SentryReceiver`."""

    def do_POST(self) -> None:  # http.server naming
        """Accept envelopes and legacy store requests."""
        body = self.read_body()
        match = _ROUTE.match(self.path.split("?", 1)[0])
        if match is None:
            self.send_json(404, {"detail": "not found"})
            return
        receiver: SentryReceiver = self.server.owner
        try:
            data = _decode_body(body, self.headers.get("Content-Encoding", ""))
            if match["kind"] == "envelope":
                headers, items = parse_envelope(data)
            else:
                event = json.loads(data)
                headers = {"event_id": event.get("event_id")}
                items = [EnvelopeItem({"type": "event"}, data, event)]
        except ValueError as exc:  # json errors, bad gzip, bad envelope
            receiver._record_rejected()
            self.send_json(400, {"detail": f"invalid envelope: {exc}"})
            return
        receiver._record(match["project"], headers, items, dict(self.headers.items()))
        event_id = headers.get("event_id") or uuid.uuid4().hex
        self.send_json(200, {"id": event_id})


class SentryReceiver(HTTPPeer):
    """An HTTP server on 127.0.0.1 that records Sentry envelopes.

    Attributes and methods (all thread-safe; lists are snapshots):
        dsn: ``http://publickey@127.0.0.1:PORT/1``.
        events: payloads of ``event`` items (plus legacy ``/store/`` bodies).
        transactions: payloads of ``transaction`` items.
        items: every :class:`EnvelopeItem` received, in order.
        envelopes: number of envelopes (requests) accepted.
        envelope_headers: the header of each accepted envelope.
        request_headers: the HTTP headers of each accepted request.
        rejected: requests answered 400 (undecodable bodies).
        wait_for(predicate, timeout): block until ``predicate(receiver)`` holds.
        clear(): forget everything recorded.
    """

    handler_class = _SentryHandler

    def __init__(self, *, public_key: str = "publickey", project_id: str = "1") -> None:
        """Create a stopped receiver; call :meth:`start` or use it as a context manager."""
        super().__init__()
        self.public_key = public_key
        self.project_id = project_id
        self._cond = threading.Condition(threading.RLock())
        self._items: list[EnvelopeItem] = []
        self._envelope_headers: list[dict[str, Any]] = []
        self._request_headers: list[dict[str, str]] = []
        self._projects: list[str] = []
        self._rejected = 0

    @property
    def dsn(self) -> str:
        """The DSN to give ``sentry_sdk.init``."""
        return f"http://{self.public_key}@{LOOPBACK}:{self.port}/{self.project_id}"

    @property
    def items(self) -> list[EnvelopeItem]:
        """Every item received, in arrival order."""
        with self._cond:
            return list(self._items)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Payloads of ``event`` items (errors and messages)."""
        with self._cond:
            return [i.payload for i in self._items if i.type == "event"]

    @property
    def transactions(self) -> list[dict[str, Any]]:
        """Payloads of ``transaction`` items (performance traces)."""
        with self._cond:
            return [i.payload for i in self._items if i.type == "transaction"]

    @property
    def envelopes(self) -> int:
        """Number of envelopes accepted."""
        with self._cond:
            return len(self._envelope_headers)

    @property
    def envelope_headers(self) -> list[dict[str, Any]]:
        """The header line of each envelope accepted."""
        with self._cond:
            return list(self._envelope_headers)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        """HTTP headers of each accepted request (e.g. ``X-Sentry-Auth``)."""
        with self._cond:
            return list(self._request_headers)

    @property
    def projects(self) -> list[str]:
        """The project id from the URL of each accepted request."""
        with self._cond:
            return list(self._projects)

    @property
    def rejected(self) -> int:
        """Requests that could not be decoded (answered 400)."""
        with self._cond:
            return self._rejected

    def clear(self) -> None:
        """Forget everything recorded so far."""
        with self._cond:
            self._items.clear()
            self._envelope_headers.clear()
            self._request_headers.clear()
            self._projects.clear()
            self._rejected = 0

    def wait_for(self, predicate: Callable[[SentryReceiver], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate(self)`` is true; return whether it became true in time.

        The predicate is re-evaluated each time something is recorded (no polling).
        """
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout=timeout)

    # -- used by the handler -------------------------------------------------------

    def _record(
        self,
        project: str,
        headers: dict[str, Any],
        items: list[EnvelopeItem],
        request_headers: dict[str, str],
    ) -> None:
        with self._cond:
            self._items.extend(items)
            self._envelope_headers.append(headers)
            self._request_headers.append(request_headers)
            self._projects.append(project)
            self._cond.notify_all()

    def _record_rejected(self) -> None:
        with self._cond:
            self._rejected += 1
            self._cond.notify_all()
