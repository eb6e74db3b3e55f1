"""The worker's WSGI-to-ASGI responder (letraz/gunicorn_worker.py), on a real event loop.

The WSGI applications here are small callables standing in for Django: what is tested is
how their answers reach the loop (when, in how many parts), which gunicorn's real
server exercises end to end in tests/core (probes, streams, SCRIPT_NAME).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from letraz.gunicorn_worker import BUFFER_BYTES, OneHopWSGI

#: Bounds that only prove "does not hang".
WAIT = 10.0

Sent = list[dict[str, Any]]


def http_scope(method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/x/",
        "raw_path": b"/x/",
        "query_string": b"",
        "root_path": "",
        "headers": headers or [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


def serve(
    app: Callable[..., Any],
    *,
    on_send: Callable[[dict[str, Any]], None] | None = None,
    request: list[dict[str, Any]] | None = None,
    scope: dict[str, Any] | None = None,
) -> Sent:
    """One request through OneHopWSGI on a fresh loop and pool; the messages it sent."""
    sent: Sent = []
    messages = list(request or [{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # no more: a client that stays
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if on_send is not None:
            on_send(message)

    async def main() -> None:
        adapter = OneHopWSGI(app, workers=2)
        try:
            await asyncio.wait_for(adapter(scope or http_scope(), receive, send), WAIT)
        finally:
            adapter.executor.shutdown(wait=False)

    asyncio.run(main())
    return sent


def body_of(sent: Sent) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


class Recorded:
    """A WSGI iterable that records what happened to it, in order, in ``log``."""

    def __init__(self, chunks: Iterator[bytes], log: list[str]) -> None:
        self.chunks, self.log = chunks, log

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks

    def close(self) -> None:
        self.log.append("closed")


def test_a_response_of_known_length_reaches_the_loop_once_the_app_is_done() -> None:
    """A probe's answer is handed over whole: nothing is sent while the app still runs."""
    log: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Recorded:
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "11")])
        return Recorded(iter([b'{"status":', b"1}"]), log)

    sent = serve(app, on_send=lambda message: log.append(message["type"]))

    assert log[0] == "closed", f"the loop sent {log[: log.index('closed')]} before the app had finished: {log}"
    assert sent[0] == {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
    }
    assert body_of(sent) == b'{"status":1}'
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert all(m["more_body"] for m in sent[1:-1]), sent


def test_a_stream_reaches_the_client_chunk_by_chunk_as_it_is_produced() -> None:
    """No Content-Length (the change stream): each chunk is sent before the next is made."""
    first_sent = threading.Event()
    waited: list[bool] = []

    def on_send(message: dict[str, Any]) -> None:
        if message.get("body") == b"event one\n\n":
            first_sent.set()

    def events() -> Iterator[bytes]:
        yield b"event one\n\n"
        waited.append(first_sent.wait(WAIT))  # a buffering responder would never send it
        yield b"event two\n\n"

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return events()

    sent = serve(app, on_send=on_send)

    assert waited == [True], "the first event was held back until the stream ended"
    assert [m["type"] for m in sent][:2] == ["http.response.start", "http.response.body"]
    assert body_of(sent) == b"event one\n\nevent two\n\n"


def test_a_large_response_is_handed_over_in_parts_not_held_whole() -> None:
    chunk = b"x" * (64 * 1024)
    count = 3 * BUFFER_BYTES // len(chunk)
    seen_by_loop: list[int] = []  # body bytes the loop had sent when each chunk was made
    sent_bytes = [0]

    def on_send(message: dict[str, Any]) -> None:
        sent_bytes[0] += len(message.get("body", b""))

    def chunks() -> Iterator[bytes]:
        for _ in range(count):
            seen_by_loop.append(sent_bytes[0])
            yield chunk

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Length", str(count * len(chunk)))])
        return chunks()

    sent = serve(app, on_send=on_send)

    assert body_of(sent) == chunk * count
    assert seen_by_loop[-1] >= BUFFER_BYTES, f"the whole body was held in the thread: {seen_by_loop}"
    assert seen_by_loop[-1] < count * len(chunk)


def test_the_request_body_is_read_from_the_loop() -> None:
    read: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        read.append(environ["wsgi.input"].read())
        start_response("204 No Content", [("Content-Length", "0")])
        return []

    sent = serve(
        app,
        request=[
            {"type": "http.request", "body": b"hello ", "more_body": True},
            {"type": "http.request", "body": b"world", "more_body": False},
        ],
        scope=http_scope("POST", [(b"content-length", b"11")]),
    )

    assert read == [b"hello world"]
    assert sent[0]["status"] == 204
    assert body_of(sent) == b""


def test_an_error_after_the_headers_went_out_is_raised_not_hidden() -> None:
    """PEP 3333: start_response with exc_info once the status is sent re-raises the error."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])

        def chunks() -> Iterator[bytes]:
            yield b"partial"
            try:
                raise ValueError("broke mid-stream")
            except ValueError as exc:
                start_response("500 Internal Server Error", [], (type(exc), exc, exc.__traceback__))
            yield b"never"

        return chunks()

    with pytest.raises(ValueError, match="broke mid-stream"):
        serve(app)


def test_the_status_can_still_change_before_anything_was_sent() -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "2")])
        try:
            raise ValueError("changed my mind")
        except ValueError as exc:
            start_response("503 Service Unavailable", [("Content-Length", "2")], (type(exc), exc, exc.__traceback__))
        return [b"no"]

    sent = serve(app)

    assert sent[0]["status"] == 503
    assert body_of(sent) == b"no"


def test_the_apps_iterable_is_closed_when_the_client_is_gone() -> None:
    """A stream whose client left: the send fails, and the stream still releases its place."""
    log: list[str] = []

    def on_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            raise ConnectionResetError("client gone")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Recorded:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return Recorded(iter([b"one", b"two"]), log)

    with pytest.raises(ConnectionResetError):
        serve(app, on_send=on_send)
    assert log == ["closed"]
