"""The web process's serving model: an event loop reads requests, threads run Django.

gunicorn's ``gthread`` worker hands each accepted connection to a thread, which then
blocks reading that connection's headers: 24 clients that connect and send nothing (or
send their headers a byte at a time) held every thread, and every probe, ``/live/``
included, queued behind them for seconds. A liveness probe that queues gets the pod
restarted by whoever can open sockets to it.

:class:`ThreadedWSGIWorker` is gunicorn's own asyncio worker (``asgi``) serving the same
WSGI application through a2wsgi's thread pool. The event loop parses every request line
and header block; only a request whose headers are complete is given a thread (one of
``GUNICORN_THREADS``). An idle or trickling connection costs a socket and a few hundred
bytes, never a thread. Two deadlines end such connections on purpose:

* ``HEADER_READ_TIMEOUT``: a new connection must deliver its whole header block within
  this many seconds of being accepted, or it is closed without an answer;
* gunicorn's ``keepalive``: after a response, the next request's headers must be
  complete within that many seconds (the same timer covers a kept-alive connection that
  trickles), or it is closed.

A response crosses from its thread to the event loop once: a2wsgi's own responder hands
over every message (headers, each chunk, the end) and waits for the loop each time, and
those hand-overs, each waiting for the GIL, cost a probe 1.7 times the CPU of gthread and a
p99 of 55 ms at 4 connections. :class:`OneHopResponder` keeps a response whose length is
known (``Content-Length``: every Django response but a stream) in the thread until it is
complete, then gives it to the loop with the thread's result; a response without a length
(the change stream) is still handed over chunk by chunk, as it is produced.

The command line stays ``letraz.wsgi:application``: the worker wraps what gunicorn loads.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterable
from concurrent.futures import Executor
from typing import Any

from a2wsgi import WSGIMiddleware
from a2wsgi.asgi_typing import HTTPScope, Receive, Scope, Send
from a2wsgi.wsgi import Body, build_environ
from gunicorn.asgi import protocol as asgi_protocol
from gunicorn.workers import gasgi

#: Seconds a new connection has to send its complete request headers.
HEADER_READ_TIMEOUT = 5.0


#: A response with a known length is handed to the loop in parts of at least this size.
BUFFER_BYTES = 256 * 1024

Message = dict[str, Any]


class OneHopResponder:
    """One WSGI request on a pool thread, its response sent by the event loop.

    The thread runs the application and collects what it answers. A finite response
    (``Content-Length`` set) is returned whole with the thread's result, or in parts of
    ``BUFFER_BYTES`` if larger; a response of unknown length (a stream) is handed over
    chunk by chunk, each chunk waiting until the loop has sent it, as a2wsgi does.
    ``wsgi.input`` is a2wsgi's ``Body`` (``receive`` and ``loop``, which the change
    stream uses to notice a client that left).
    """

    def __init__(self, app: Any, executor: Executor, loop: asyncio.AbstractEventLoop, send: Send) -> None:
        self.app, self.executor, self.loop, self.send = app, executor, loop, send
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.started = False  # the response's start has gone to the loop
        self.pending: list[Message] = []
        self.pending_bytes = 0
        self.streaming = False

    async def __call__(self, scope: HTTPScope, receive: Receive) -> None:
        environ = build_environ(scope, Body(self.loop, receive))
        context = contextvars.copy_context()
        messages = await self.loop.run_in_executor(self.executor, context.run, self.run, environ)
        await self._send_all(messages)

    async def _send_all(self, messages: list[Message]) -> None:
        for message in messages:
            await self.send(message)  # type: ignore[arg-type]

    # -- on the pool thread ---------------------------------------------------------

    def run(self, environ: Any) -> list[Message]:
        iterable: Iterable[bytes] = self.app(environ, self.start_response)
        try:
            for chunk in iterable:
                self.write(chunk)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
        return [*self._take(), {"type": "http.response.body", "body": b"", "more_body": False}]

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and self.started:
            raise exc_info[1].with_traceback(exc_info[2])  # too late to change the status (PEP 3333)
        self.status = int(status.split(" ", 1)[0])
        self.headers = [
            (name.strip().lower().encode("latin1"), value.strip().encode("latin1")) for name, value in headers
        ]
        self.streaming = not any(name == b"content-length" for name, _ in self.headers)
        return self.write

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.pending.append({"type": "http.response.body", "body": chunk, "more_body": True})
        self.pending_bytes += len(chunk)
        if self.streaming or self.pending_bytes >= BUFFER_BYTES:
            asyncio.run_coroutine_threadsafe(self._send_all(self._take()), self.loop).result()

    def _take(self) -> list[Message]:
        messages, self.pending, self.pending_bytes = self.pending, [], 0
        if not self.started:
            self.started = True
            messages.insert(0, {"type": "http.response.start", "status": self.status, "headers": self.headers})
        return messages


class OneHopWSGI(WSGIMiddleware):
    """a2wsgi's WSGI-to-ASGI adapter (its thread pool), with :class:`OneHopResponder`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        await OneHopResponder(self.app, self.executor, asyncio.get_running_loop(), send)(scope, receive)


class HeaderDeadlineProtocol(asgi_protocol.ASGIProtocol):  # type: ignore[misc]
    """gunicorn's HTTP/1 protocol, plus a deadline on the first request's headers.

    gunicorn arms its keep-alive timer only between requests; the first request of a
    connection may otherwise take forever to arrive. The same timer is armed here at
    accept time, and gunicorn's loop cancels it as soon as the headers are complete.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._request_ready is not None and not self._closed:
            self._keepalive_handle = self.worker.loop.call_later(HEADER_READ_TIMEOUT, self._keepalive_timeout)


class ThreadedWSGIWorker(gasgi.ASGIWorker):  # type: ignore[misc]
    """gunicorn's asyncio worker, serving a WSGI app from ``threads`` threads."""

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        # The base class warns that ``threads`` is ignored; here it sizes the pool.
        pass

    def init_process(self) -> None:
        # gunicorn builds its protocol by this module-level name; this worker's
        # connections get the header deadline (only in the worker process).
        gasgi.ASGIProtocol = HeaderDeadlineProtocol
        super().init_process()

    def load_wsgi(self) -> None:
        self.asgi = OneHopWSGI(self.app.wsgi(), workers=self.cfg.threads)

    def handle_exit_signal(self) -> None:
        """SIGTERM: open change streams end at once, so they never hold the graceful stop.

        A stream never finishes on its own; left open, each would keep the worker until
        ``graceful_timeout`` and then be cut. Probes in flight still finish as usual.
        """
        from health.stream import get_timeline_tail

        get_timeline_tail().close()
        super().handle_exit_signal()
