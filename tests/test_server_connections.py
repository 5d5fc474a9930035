"""One client cannot exhaust the server: bodies over the limit get 413 before they are read,
bodies that stop arriving get 408, sockets that never send a request are closed, connections
beyond the cap are refused at once, and /health answers throughout. Raw sockets play the client
where an HTTP library would not misbehave on purpose; every read has a timeout."""
from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from hastelm.server.limits import MB, ConnectionLimits
from server_support import RunningServer

LIMITS = ConnectionLimits(max_body_bytes=1 * MB, request_timeout_s=1.0, keep_alive_s=1.0, max_connections=16)
HEAD = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "{length}\r\n")


@pytest.fixture(scope="module")
def server(llm_fast):
    srv = RunningServer(llm_fast, limits=LIMITS, max_batch=2, max_queue=2)
    yield srv
    srv.stop()


def _connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def _status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1") else 0


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / MB


def test_declared_oversized_body_is_refused_before_reading(server):
    sock = _connect(server)
    sock.sendall(HEAD.format(length=f"Content-Length: {50 * MB}\r\n").encode() + b'{"messages": [')
    assert _status(sock) == 413
    sock.close()


def test_chunked_oversized_body_is_refused_when_it_passes_the_limit(server):
    rss = _rss_mb()
    sock = _connect(server)
    sock.sendall(HEAD.format(length="Transfer-Encoding: chunked\r\n").encode())
    chunk = b"x" * (256 * 1024)
    try:
        for _ in range(40):                          # 10 MB offered, 1 MB allowed
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except (BrokenPipeError, ConnectionResetError):
        pass                                         # the server stopped reading: that is the point
    assert _status(sock) == 413
    sock.close()
    assert _rss_mb() - rss < 64                      # the refused body was not kept


def test_a_body_that_stops_arriving_gets_408(server):
    sock = _connect(server)
    sock.sendall(HEAD.format(length="Content-Length: 1000\r\n").encode() + b'{"messages": [')
    assert _status(sock) == 408                      # after request_timeout_s, not never
    sock.close()


def test_health_answers_while_a_huge_body_trickles_in(server):
    sock = _connect(server)
    stop = threading.Event()

    def trickle() -> None:
        sock.sendall(HEAD.format(length=f"Content-Length: {MB - 100}\r\n").encode())
        while not stop.is_set():
            try:
                sock.sendall(b" " * 8192)
            except OSError:
                return
            time.sleep(0.05)

    worker = threading.Thread(target=trickle, daemon=True)
    worker.start()
    try:
        for _ in range(5):
            assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    finally:
        stop.set()
        sock.close()
        worker.join(10)


def test_idle_sockets_are_closed_and_real_clients_get_served(server):
    idle = [_connect(server) for _ in range(3 * LIMITS.max_connections)]
    for sock in idle:
        sock.settimeout(LIMITS.request_timeout_s + 5)
    # beyond the cap they are closed on arrival, the rest once the request deadline passes
    assert all(_closed_by_server(sock) for sock in idle)
    for sock in idle:
        sock.close()
    resp = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                      json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert resp.status_code == 200


def test_kept_alive_connection_is_closed_after_its_idle_time(server):
    sock = _connect(server)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(sock) == 200
    sock.settimeout(LIMITS.keep_alive_s + 5)
    while True:                                       # drain the rest of the response, then EOF
        try:
            if sock.recv(4096) == b"":
                break
        except TimeoutError:
            pytest.fail("the server kept an idle kept-alive connection open")
    sock.close()


def test_limits_reject_nonsense():
    with pytest.raises(ValueError):
        ConnectionLimits(max_body_bytes=10)
    with pytest.raises(ValueError):
        ConnectionLimits(request_timeout_s=0)
