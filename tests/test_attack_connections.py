"""Attack on client connections through a real ``midway serve`` (#17 item 17): connections
that trickle their head, never send one, stop sending a body, idle after a response, or stop
reading a stream are cut at their deadline; a long stream the client reads is not."""

from __future__ import annotations

import select
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hardening_support import MSG, Server

from midway.testing import FakeUpstream, Reply, wait_for

HEADER, BODY, KEEPALIVE, STALL = 1.0, 1.0, 1.0, 2.0
CONFIG = f"""
[midway]
plugins = []
header_timeout = {HEADER}
body_timeout = {BODY}
keepalive_timeout = {KEEPALIVE}
write_stall_timeout = {STALL}
"""
MARGIN = 4.0  # timers are checked by an event loop on a busy machine
ATTACK = "slow or idle client connections are never timed out"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("connections"), CONFIG, fake.url)
    try:
        yield running.start()
    finally:  # a server that never got healthy is stopped too
        running.ensure_stopped()


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> bytes:
    """Wait until the server closes ``sock`` (sending one byte of ``trickle`` every 0.3 s
    meanwhile); everything it sent before closing. Fails after ``seconds``."""
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if trickle:
            try:
                sock.sendall(trickle[:1])
            except OSError:  # closed while we wrote: that is what we wait for
                return received
            trickle = trickle[1:] or b"x"
        readable, _, _ = select.select([sock], [], [], 0.3)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
    raise AssertionError(f"still open after {seconds} s (received {received[:200]!r})")


@pytest.mark.attack(17, ATTACK)
def test_never_sending_a_head_is_cut(server: Server) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        answer = closed_within(sock, HEADER + MARGIN)
    assert answer.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started >= HEADER - 0.1


@pytest.mark.attack(17, ATTACK)
def test_trickled_head_is_cut(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer = closed_within(sock, HEADER + MARGIN, trickle=b"X-Slow: " + b"a" * 1000)
    assert answer.startswith(b"HTTP/1.1 408")


@pytest.mark.attack(17, ATTACK)
def test_trickled_head_of_a_second_request_is_cut_on_its_own_deadline(
        tmp_path: Path, fake: FakeUpstream) -> None:
    # A connection has one header timer, set by its first request: the second request's
    # head gets its full deadline from its own first byte, and no more. (Keep-alive is
    # longer here: aiohttp's keep-alive timer also ends a connection whose next head trickles.)
    config = CONFIG.replace(f"keepalive_timeout = {KEEPALIVE}", "keepalive_timeout = 30")
    server = Server(tmp_path, config, fake.url)
    try:
        server.start()
        with connect(server) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            time.sleep(HEADER / 2)  # the first request's timer fires half-way into the second
            started = time.monotonic()
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            answer = closed_within(sock, HEADER + MARGIN, trickle=b"X-Slow: " + b"a" * 1000)
        assert answer.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started >= HEADER - 0.1
    finally:
        server.ensure_stopped()


@pytest.mark.attack(17, ATTACK)
def test_stalled_body_is_cut(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: sk-ant-x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"mod")
        closed_within(sock, BODY + MARGIN)


@pytest.mark.attack(17, ATTACK)
def test_idle_keepalive_connection_is_cut(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = closed_within(sock, KEEPALIVE + MARGIN)
    assert answer.startswith(b"HTTP/1.1 200")


@pytest.mark.attack(17, ATTACK)
def test_client_not_reading_a_stream_is_cut(server: Server, fake: FakeUpstream) -> None:
    # ~24 MB of answer: more than every buffer between midway and a client that reads nothing
    fake.reply(Reply(content=[{"type": "text", "text": "z" * (24 * 1024 * 1024)}],
                     text_chunks=3000))
    body = orjson.dumps({**MSG, "stream": True})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    try:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: sk-ant-x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_for(lambda: server.health()["open_streams"] == 1, timeout=20)
        # The client reads nothing: the stream ends at the stall deadline, not never.
        wait_for(lambda: server.health()["open_streams"] == 0, timeout=STALL + 20)
    finally:
        sock.close()


@pytest.mark.attack(17, ATTACK)
def test_long_stream_read_by_the_client_is_not_cut(server: Server, fake: FakeUpstream) -> None:
    # ~4 s of events 0.25 s apart: longer than every deadline above
    fake.reply(Reply(delay=0.25, text_chunks=16))
    request = urllib.request.Request(
        server.url + "/v1/messages", data=orjson.dumps({**MSG, "stream": True}),
        headers={"x-api-key": "sk-ant-x", "content-type": "application/json"})
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=30) as resp:
        answer = resp.read()
    assert time.monotonic() - started > STALL + HEADER
    assert answer.rstrip().endswith(b'{"type":"message_stop"}')


def test_config_of_this_module_is_what_the_docs_say() -> None:
    """The four settings exist with the documented defaults."""
    from midway.config import Settings

    defaults = Settings()
    assert (defaults.header_timeout, defaults.body_timeout, defaults.keepalive_timeout,
            defaults.write_stall_timeout) == (30.0, 60.0, 75.0, 300.0)
