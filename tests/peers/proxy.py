"""A loopback TCP fault proxy in front of a real peer, switchable while a test runs.

    with FaultProxy(("127.0.0.1", 5432)) as proxy:      # or FaultProxy(util_service.port)
        settings point at proxy.port / proxy.target
        proxy.mode = ProxyMode.HANG                       # new connections: accepted, silent
        proxy.latency = 0.08                              # every answer chunk 80 ms late
        proxy.stall()                                     # live connections freeze, no FIN/RST

What each knob does (``mode`` applies to connections accepted from then on; ``latency``,
``drip_interval`` and ``stall_on`` are read per chunk, so they change live connections too):

=================  ======================================================================
``PASS``           forward both ways (the default).
``REFUSE``         the listening socket is closed: connects are refused (RST to the SYN).
                   Switching back re-listens on the same port.
``HANG``           accept, read and drop what the client sends, never answer, never close:
                   a peer that accepts TCP but never speaks.
``RESET``          forward the request; on the first answer chunk send its first half,
                   then reset the client connection (RST): a peer dying mid-answer.
``DRIP``           forward, but the answer goes one byte per ``drip_interval`` seconds.
``GARBAGE``        accept and answer every client chunk with bytes no protocol accepts;
                   the upstream is never contacted.
=================  ======================================================================

``latency`` (seconds): each answer chunk is delivered that long after the upstream sent
it, in order, as a link's propagation delay would: one ``latency`` per round trip (a
request and its answer), however many chunks the answer has. With ``latency_after``
(bytes), a connection's answers are delayed only once its client has sent a chunk that
starts with those bytes (``b"Q"``: from PostgreSQL's first simple query on, so the
connect stays fast while the query is slow).

``stall()`` freezes every live connection: nothing more is forwarded either way and
nothing is closed, as when a peer vanishes without FIN or RST (the proxy's kernel still
acknowledges what the client sends; to the client, its request simply never gets an
answer). Stalled connections stay frozen until :meth:`stop`; new connections follow
``mode``. ``stall_on`` (bytes) stalls a connection when its client sends a chunk that
starts with those bytes (swallowed): a stall in the middle of a call on a connection
made just for it. ``reset_live()`` resets every live connection now.

``switch_live`` (default False: a connection keeps the mode it was accepted in): when
True, a change of ``mode`` also reaches connections already open, as when the peer
itself changes for everyone, pooled connections included. From its next chunk a live
connection is then ``RESET`` (half its next answer, then RST), ``DRIP`` (its answers
drip), ``GARBAGE`` (its next request is answered with garbage and never forwarded),
``HANG`` (its next request is swallowed and it freezes like a stalled one), and
``REFUSE`` resets every live connection at once (the peer is gone). ``PASS`` forwards
again on connections that are still usable. A connection accepted in ``HANG`` or
``GARBAGE`` never reaches the upstream, whatever happens later.

Counters: ``accepted`` (connections accepted since start), ``live`` (open now),
``round_trips`` (answers that followed a request, over all connections: each time a
connection's traffic turns from client-to-upstream to upstream-to-client),
``stalled_upstream_ports()`` (the local ports of the frozen connections' upstream side, so
that a PostgreSQL backend the proxy itself holds open can be told from the client's), and
``wait_for_accepted(n, timeout)``. Everything is bounded: threads are daemons, every
socket is closed by :meth:`stop`, and stop returns within a few seconds.
"""

from __future__ import annotations

import contextlib
import enum
import queue
import selectors
import socket
import struct
import threading
import time
from typing import Self

__all__ = ["GARBAGE", "FaultProxy", "ProxyMode"]

_LOOPBACK = "127.0.0.1"
_CHUNK = 65536
#: What GARBAGE answers: no TLS record, HTTP/2 frame, PostgreSQL message or HTTP status line.
GARBAGE = bytes(range(255, -1, -1)) * 4


class ProxyMode(enum.StrEnum):
    PASS = "pass"
    REFUSE = "refuse"
    HANG = "hang"
    RESET = "reset"
    DRIP = "drip"
    GARBAGE = "garbage"


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN.

    A thread blocked in ``recv`` holds the socket open past ``close()``; shutting the
    read side first wakes it without sending anything, so the close is the last one.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


class _Connection:
    """One client connection and its upstream; pumps on daemon threads."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, mode: ProxyMode) -> None:
        self.proxy = proxy
        self.client = client
        self.mode = mode
        self.upstream: socket.socket | None = None
        self.stalled = threading.Event()
        self.closed = threading.Event()
        self.delaying = proxy.latency_after is None
        self.awaiting_answer = False
        self._answers: queue.Queue[tuple[float, bytes] | None] = queue.Queue()

    def start(self) -> None:
        target = {
            ProxyMode.HANG: self._hang,
            ProxyMode.GARBAGE: self._garbage,
        }.get(self.mode, self._forward)
        threading.Thread(target=self._guard, args=(target,), name="proxy-conn", daemon=True).start()

    def _guard(self, target: object) -> None:
        try:
            target()  # type: ignore[operator]
        except OSError:
            pass
        finally:
            if not self.stalled.is_set():
                self.close()

    # -- modes ------------------------------------------------------------------------

    def _hang(self) -> None:
        while not self.closed.is_set():
            data = self.client.recv(_CHUNK)
            if not data:
                return

    def _garbage(self) -> None:
        while not self.closed.is_set():
            data = self.client.recv(_CHUNK)
            if not data:
                return
            self.client.sendall(GARBAGE)

    def _forward(self) -> None:
        self.upstream = socket.create_connection(self.proxy.upstream, timeout=5)
        self.upstream.settimeout(None)
        self.upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=self._guard, args=(self._answer_reader,), name="proxy-up", daemon=True).start()
        threading.Thread(target=self._guard, args=(self._answer_writer,), name="proxy-down", daemon=True).start()
        upstream = self.upstream
        while not self.closed.is_set():
            data = self.client.recv(_CHUNK)
            if self._frozen():
                return
            if not data:
                with contextlib.suppress(OSError):
                    upstream.shutdown(socket.SHUT_WR)
                self.closed.wait()  # the answer side finishes the connection
                return
            stall_on, latency_after = self.proxy.stall_on, self.proxy.latency_after
            mode = self._mode_now()
            if (stall_on is not None and data.startswith(stall_on)) or mode == ProxyMode.HANG:
                self.stalled.set()
                return
            if mode == ProxyMode.GARBAGE:
                self.client.sendall(GARBAGE)
                continue
            if latency_after is not None and data.startswith(latency_after):
                self.delaying = True
            self.awaiting_answer = True
            upstream.sendall(data)

    def _answer_reader(self) -> None:
        """Upstream -> queue, stamped with when each chunk may be delivered."""
        assert self.upstream is not None
        while True:
            data = self.upstream.recv(_CHUNK)
            if self._frozen():
                return
            if not data:
                self._answers.put(None)
                return
            if self.awaiting_answer:
                self.awaiting_answer = False
                self.proxy._count_round_trip()
            delay = self.proxy.latency if self.delaying else 0.0
            self._answers.put((time.monotonic() + delay, data))

    def _answer_writer(self) -> None:
        """Queue -> client, each chunk at its time; RESET and DRIP are applied here."""
        while True:
            item = self._answers.get()
            if item is None:
                if not self.closed.is_set():  # the upstream finished: pass its FIN on
                    with contextlib.suppress(OSError):
                        self.client.shutdown(socket.SHUT_WR)
                return
            due, data = item
            if self._sleep_until(due):
                return
            mode = self._mode_now()
            if mode == ProxyMode.RESET:
                self.client.sendall(data[: max(1, len(data) // 2)])
                self.close(reset=True)
                return
            if self.proxy.drip_interval > 0 and mode == ProxyMode.DRIP:
                for i in range(len(data)):
                    if self._sleep_until(time.monotonic() + self.proxy.drip_interval):
                        return
                    self.client.sendall(data[i : i + 1])
            else:
                self.client.sendall(data)

    def _mode_now(self) -> ProxyMode:
        """The mode this connection follows now: its own, or the proxy's with ``switch_live``."""
        return self.proxy.mode if self.proxy.switch_live else self.mode

    def _sleep_until(self, due: float) -> bool:
        """Wait until ``due``; True when the connection closed or froze meanwhile."""
        remaining = due - time.monotonic()
        if remaining > 0 and self.closed.wait(remaining):
            return True
        return self._frozen()

    def _frozen(self) -> bool:
        if self.stalled.is_set():
            self.closed.wait()  # frozen: hold everything open until the proxy stops
            return True
        return self.closed.is_set()

    def close(self, *, reset: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if reset:
            _reset(self.client)
        for sock in (self.upstream,) if reset else (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
        self._answers.put(None)  # wakes the answer writer, after the sockets are gone
        self.proxy._forget(self)


class FaultProxy:
    """See the module's docstring. ``upstream`` is a port on 127.0.0.1 or ``(host, port)``."""

    def __init__(self, upstream: int | tuple[str, int]) -> None:
        self.upstream = (_LOOPBACK, upstream) if isinstance(upstream, int) else upstream
        self.latency = 0.0
        self.latency_after: bytes | None = None
        self.drip_interval = 0.05
        self.stall_on: bytes | None = None
        self.switch_live = False
        self._mode = ProxyMode.PASS
        self._cond = threading.Condition()
        self._connections: set[_Connection] = set()
        self._accepted = 0
        self._round_trips = 0
        self._port: int | None = None
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._running = False

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> Self:
        with self._cond:
            if self._running:
                raise RuntimeError("FaultProxy is already running")
            self._running = True
            self._listen()
            self._thread = threading.Thread(target=self._accept_loop, name=f"FaultProxy:{self._port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection (stalled ones too). Idempotent."""
        with self._cond:
            if not self._running:
                return
            self._running = False
            connections = list(self._connections)
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for connection in connections:
            connection.close()
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- switches ---------------------------------------------------------------------

    @property
    def mode(self) -> ProxyMode:
        return self._mode

    @mode.setter
    def mode(self, mode: ProxyMode | str) -> None:
        with self._cond:
            self._mode = ProxyMode(mode)
        self._wake()  # the accept loop closes or reopens the listener
        if self._mode == ProxyMode.REFUSE:
            self._wait_for(lambda: self._listener is None)
            if self.switch_live:
                self.reset_live()
        else:
            self._wait_for(lambda: self._listener is not None)

    def stall(self) -> int:
        """Freeze every live connection (no FIN, no RST); return how many were not yet frozen."""
        with self._cond:
            connections = [c for c in self._connections if not c.closed.is_set() and not c.stalled.is_set()]
        for connection in connections:
            connection.stalled.set()
        return len(connections)

    def reset_live(self) -> int:
        """Reset (RST) every live connection now; return how many."""
        with self._cond:
            connections = [c for c in self._connections if not c.stalled.is_set()]
        for connection in connections:
            connection.close(reset=True)
        return len(connections)

    # -- what tests read --------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultProxy has not been started")
        return self._port

    @property
    def target(self) -> str:
        """``"127.0.0.1:PORT"``: a gRPC target / ``host:port``."""
        return f"{_LOOPBACK}:{self.port}"

    @property
    def accepted(self) -> int:
        with self._cond:
            return self._accepted

    @property
    def round_trips(self) -> int:
        with self._cond:
            return self._round_trips

    @property
    def live(self) -> int:
        """Connections open now (stalled ones included)."""
        with self._cond:
            return len(self._connections)

    def stalled_upstream_ports(self) -> set[int]:
        """The proxy's own ports towards the upstream of every frozen connection."""
        with self._cond:
            connections = [c for c in self._connections if c.stalled.is_set() and c.upstream is not None]
        ports = set()
        for connection in connections:
            with contextlib.suppress(OSError, AttributeError):
                ports.add(int(connection.upstream.getsockname()[1]))  # type: ignore[union-attr]
        return ports

    def wait_for_accepted(self, count: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._accepted >= count, timeout=timeout)

    # -- internals --------------------------------------------------------------------

    def _wait_for(self, predicate: object, timeout: float = 5.0) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout=timeout):  # type: ignore[arg-type]
                raise RuntimeError("the proxy's accept loop did not follow the mode change")

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((_LOOPBACK, self._port or 0))
        listener.listen(128)
        listener.setblocking(False)
        self._port = int(listener.getsockname()[1])
        self._listener = listener

    def _count_round_trip(self) -> None:
        with self._cond:
            self._round_trips += 1

    def _forget(self, connection: _Connection) -> None:
        with self._cond:
            self._connections.discard(connection)

    def _accept_loop(self) -> None:
        while True:
            with self._cond:
                if not self._running:
                    if self._listener is not None:
                        self._listener.close()
                        self._listener = None
                    return
                if self._mode == ProxyMode.REFUSE and self._listener is not None:
                    self._listener.close()
                    self._listener = None
                elif self._mode != ProxyMode.REFUSE and self._listener is None:
                    self._listen()
                self._cond.notify_all()
                listener = self._listener
            with selectors.DefaultSelector() as selector:
                selector.register(self._wake_r, selectors.EVENT_READ, "wake")
                if listener is not None:
                    selector.register(listener, selectors.EVENT_READ, "accept")
                for key, _ in selector.select():
                    if key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(64)
                        continue
                    try:
                        client, _addr = listener.accept()  # type: ignore[union-attr]
                    except (BlockingIOError, InterruptedError):
                        continue
                    client.setblocking(True)
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    with self._cond:
                        connection = _Connection(self, client, self._mode)
                        self._connections.add(connection)
                        self._accepted += 1
                        self._cond.notify_all()
                    connection.start()
