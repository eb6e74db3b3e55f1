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

The command line stays ``letraz.wsgi:application``: the worker wraps what gunicorn loads.
"""

from __future__ import annotations

import asyncio
from typing import Any

from a2wsgi import WSGIMiddleware
from gunicorn.asgi import protocol as asgi_protocol
from gunicorn.workers import gasgi

#: Seconds a new connection has to send its complete request headers.
HEADER_READ_TIMEOUT = 5.0


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
        self.asgi = WSGIMiddleware(self.app.wsgi(), workers=self.cfg.threads)

    def handle_exit_signal(self) -> None:
        """SIGTERM: open change streams end at once, so they never hold the graceful stop.

        A stream never finishes on its own; left open, each would keep the worker until
        ``graceful_timeout`` and then be cut. Probes in flight still finish as usual.
        """
        from health.stream import get_timeline_tail

        get_timeline_tail().close()
        super().handle_exit_signal()
