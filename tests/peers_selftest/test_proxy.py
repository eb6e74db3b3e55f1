"""Self-tests of the fault proxy (``tests/peers/proxy.py``) against a real echo peer.

Each mode is checked from a real client socket: what arrives, what does not, and how the
connection ends. Times are only lower bounds (a delay did happen) or generous "does not
hang" bounds.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.peers.proxy import GARBAGE, FaultProxy, ProxyMode


class EchoPeer:
    """Echoes every chunk back; counts accepted connections."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.accepted = 0
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)
        conn.close()

    def close(self) -> None:
        self.listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


@pytest.fixture
def echo() -> Iterator[EchoPeer]:
    peer = EchoPeer()
    yield peer
    peer.close()


@pytest.fixture
def proxy(echo: EchoPeer) -> Iterator[FaultProxy]:
    with FaultProxy(echo.port) as started:
        yield started


def connect(proxy: FaultProxy, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def round_trip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_pass_forwards_both_ways_and_counts(proxy: FaultProxy, echo: EchoPeer) -> None:
    with connect(proxy) as sock:
        assert round_trip(sock, b"hello") == b"hello"
        assert round_trip(sock, b"again") == b"again"
    assert proxy.accepted == 1
    assert echo.accepted == 1


def test_round_trips_count_answers_that_follow_requests(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        for i in range(3):
            assert round_trip(sock, b"x" * (i + 1)) == b"x" * (i + 1)
        sock.sendall(b"bye")  # a request that gets no answer yet is no round trip
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):  # the echo of "bye" arrives: now it is one
            pass
    assert proxy.round_trips == 4


def test_a_client_closing_ends_the_upstream_connection_too(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert round_trip(sock, b"x") == b"x"
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""  # the echo peer saw EOF and closed: the FIN came through
    deadline = time.monotonic() + 5
    while proxy.live and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.live == 0


def test_refuse_closes_the_listener_and_pass_reopens_the_same_port(proxy: FaultProxy) -> None:
    port = proxy.port
    proxy.mode = ProxyMode.REFUSE
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    proxy.mode = ProxyMode.PASS
    assert proxy.port == port
    with connect(proxy) as sock:
        assert round_trip(sock, b"back") == b"back"


def test_hang_accepts_and_never_answers_nor_closes(proxy: FaultProxy, echo: EchoPeer) -> None:
    proxy.mode = ProxyMode.HANG
    with connect(proxy, timeout=0.3) as sock:
        sock.sendall(b"anyone?")
        with pytest.raises(TimeoutError):
            sock.recv(10)
    assert proxy.accepted == 1
    assert echo.accepted == 0  # the upstream was never asked


def test_latency_delays_each_round_trip_once_whatever_the_chunks(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert round_trip(sock, b"warm") == b"warm"
        proxy.latency = 0.2  # read per chunk: applies to the live connection
        started = time.monotonic()
        for _ in range(3):
            assert round_trip(sock, b"ping") == b"ping"
        elapsed = time.monotonic() - started
    assert elapsed >= 3 * 0.2
    assert elapsed < 3 * 0.2 + 3.0  # not once per chunk of a long answer: does not pile up


def test_latency_after_delays_only_answers_that_follow_the_trigger(proxy: FaultProxy) -> None:
    proxy.latency, proxy.latency_after = 1.0, b"Q"
    with connect(proxy) as sock:
        started = time.monotonic()
        assert round_trip(sock, b"startup") == b"startup"
        assert time.monotonic() - started < 1.0  # before the trigger: no delay
        started = time.monotonic()
        assert round_trip(sock, b"Q SELECT 1") == b"Q SELECT 1"
        assert time.monotonic() - started >= 1.0


def test_stall_freezes_live_connections_without_closing_while_new_ones_work(proxy: FaultProxy) -> None:
    with connect(proxy, timeout=0.5) as frozen:
        assert round_trip(frozen, b"before") == b"before"
        assert proxy.stall() == 1
        frozen.sendall(b"after")  # accepted by the kernel, never forwarded
        with pytest.raises(TimeoutError):
            frozen.recv(10)  # neither an answer nor a FIN nor a RST
        with connect(proxy) as fresh:
            assert round_trip(fresh, b"new") == b"new"
        with pytest.raises(TimeoutError):
            frozen.recv(10)  # still frozen after the proxy served others
        assert proxy.live == 1  # the stalled one stays open until stop()


def test_stall_on_freezes_a_connection_at_its_first_matching_chunk(proxy: FaultProxy) -> None:
    proxy.stall_on = b"Q"
    with connect(proxy, timeout=0.5) as sock:
        assert round_trip(sock, b"startup") == b"startup"
        assert proxy.stalled_upstream_ports() == set()
        sock.sendall(b"Q SELECT 1")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        [port] = proxy.stalled_upstream_ports()  # the proxy's side towards the upstream, held open
        assert port not in (proxy.port, 0)


def test_reset_sends_half_an_answer_then_a_reset(proxy: FaultProxy) -> None:
    proxy.mode = ProxyMode.RESET
    with connect(proxy) as sock:
        sock.sendall(b"0123456789")
        received = b""
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    assert received == b"01234"


def test_reset_live_resets_open_connections(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert round_trip(sock, b"x") == b"x"
        assert proxy.reset_live() == 1
        with pytest.raises(ConnectionResetError):
            sock.recv(10)


def test_drip_delivers_the_answer_one_byte_at_a_time(proxy: FaultProxy) -> None:
    proxy.mode, proxy.drip_interval = ProxyMode.DRIP, 0.1
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"abcde")
        first = sock.recv(65536)
        assert first == b"a"  # one byte, then a pause
        rest = b""
        while len(first + rest) < 5:
            rest += sock.recv(65536)
        assert first + rest == b"abcde"
        assert time.monotonic() - started >= 5 * 0.1


def test_garbage_answers_bytes_no_protocol_accepts_without_asking_upstream(proxy: FaultProxy, echo: EchoPeer) -> None:
    proxy.mode = ProxyMode.GARBAGE
    with connect(proxy) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        received = b""
        while len(received) < len(GARBAGE):
            received += sock.recv(65536)
    assert received == GARBAGE
    assert echo.accepted == 0


def test_stop_closes_every_connection_stalled_ones_too_and_its_threads_end(echo: EchoPeer) -> None:
    proxy = FaultProxy(echo.port).start()
    with connect(proxy, timeout=5) as live, connect(proxy, timeout=5) as stalled:
        assert round_trip(live, b"a") == b"a"
        assert round_trip(stalled, b"b") == b"b"
        proxy.stall()
        live_too = proxy.reset_live()  # nothing left that is not stalled
        assert live_too == 0
        proxy.stop()
        for sock in (live, stalled):
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(10) == b""  # closed, not left hanging
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not [t for t in threading.enumerate() if t.name.startswith(("proxy-", "FaultProxy:"))]:
            break
        time.sleep(0.02)
    assert not [t for t in threading.enumerate() if t.name.startswith(("proxy-", "FaultProxy:"))]


# -- switch_live: a change of mode reaches connections already open ----------------------


def test_without_switch_live_a_live_connection_keeps_the_mode_it_was_accepted_in(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert round_trip(sock, b"before") == b"before"
        proxy.mode = ProxyMode.RESET
        assert round_trip(sock, b"after") == b"after"  # still PASS: only new connections reset


def test_switch_live_reset_cuts_the_next_answer_of_a_live_connection(proxy: FaultProxy) -> None:
    proxy.switch_live = True
    with connect(proxy) as sock:
        assert round_trip(sock, b"before") == b"before"
        proxy.mode = ProxyMode.RESET
        sock.sendall(b"0123456789")
        received = b""
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    assert received == b"01234"


def test_switch_live_drip_slows_a_live_connection_and_pass_restores_it(proxy: FaultProxy) -> None:
    proxy.switch_live, proxy.drip_interval = True, 0.1
    with connect(proxy) as sock:
        assert round_trip(sock, b"warm") == b"warm"
        proxy.mode = ProxyMode.DRIP
        sock.sendall(b"abcd")
        assert sock.recv(65536) == b"a"  # one byte, then a pause
        rest = b""
        while len(rest) < 3:
            rest += sock.recv(65536)
        assert rest == b"bcd"
        proxy.mode = ProxyMode.PASS
        started = time.monotonic()
        assert round_trip(sock, b"wxyz") == b"wxyz"
        assert time.monotonic() - started < 3 * 0.1 + 2.0  # not byte by byte any more (generous)


def test_switch_live_garbage_answers_a_live_connection_without_forwarding(proxy: FaultProxy, echo: EchoPeer) -> None:
    proxy.switch_live = True
    with connect(proxy) as sock:
        assert round_trip(sock, b"x") == b"x"
        proxy.mode = ProxyMode.GARBAGE
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        received = b""
        while len(received) < len(GARBAGE):
            received += sock.recv(65536)
    assert received == GARBAGE  # no echo of the request: the upstream never saw it
    assert echo.accepted == 1


def test_switch_live_hang_freezes_a_live_connection_at_its_next_request(proxy: FaultProxy) -> None:
    proxy.switch_live = True
    with connect(proxy, timeout=0.5) as sock:
        assert round_trip(sock, b"before") == b"before"
        proxy.mode = ProxyMode.HANG
        sock.sendall(b"anyone?")
        with pytest.raises(TimeoutError):
            sock.recv(10)  # no answer, no FIN, no RST
        proxy.mode = ProxyMode.PASS
        with pytest.raises(TimeoutError):
            sock.recv(10)  # frozen for good, like a stalled connection
        assert proxy.live == 1


def test_switch_live_refuse_resets_live_connections_and_refuses_new_ones(proxy: FaultProxy) -> None:
    proxy.switch_live = True
    with connect(proxy) as sock:
        assert round_trip(sock, b"x") == b"x"
        proxy.mode = ProxyMode.REFUSE
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
