"""Answer bodies across the relay (#18 items 3, 4, 5, 9): an answer the upstream cuts short
never reaches the client as a complete one; a JSON answer too large to buffer is relayed
through with its usage still read; a client that stops reading is cut and recorded.

The upstream is :class:`midway.testing.RawUpstream`, which writes HTTP framing itself (a
length it does not keep, a chunked body without its last chunk, a close-delimited body);
midway is a real server on a socket; the client is ``http.client`` or a raw socket, which
tell a complete response from a broken one."""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from midway import ErrorKind, Exchange, deadlines, proxy
from midway.fake_upstream import encode_event
from midway.plugins import module_plugin
from midway.testing import FakeUpstream, RawReply, RawUpstream, Reply, RunningMidway, wait_for

MSG = {"model": "claude-sonnet-4-6", "max_tokens": 32,
       "messages": [{"role": "user", "content": "hi"}]}
USAGE = {"input_tokens": 11, "output_tokens": 7, "cache_read_input_tokens": 5}


@pytest.fixture
def raw() -> Iterator[RawUpstream]:
    server = RawUpstream().start()
    yield server
    server.stop()


Start = Callable[..., tuple[RunningMidway, list[Exchange]]]


@pytest.fixture
def start(midway_factory: Callable[..., RunningMidway], raw: RawUpstream) -> Start:
    """A midway in front of ``raw``; the exchanges its post_response saw."""
    def go(**settings: Any) -> tuple[RunningMidway, list[Exchange]]:
        seen: list[Exchange] = []
        plugin = module_plugin("capture", post_response=lambda exchange: seen.append(exchange))
        return midway_factory(plugins=[plugin], upstream=raw.url, **settings), seen
    return go


def ask(running: RunningMidway, body: dict[str, Any] | None = None
        ) -> tuple[int, dict[str, str], bytes, bool]:
    """POST a message; status, headers, the body read and whether it arrived complete."""
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=60)
    try:
        conn.request("POST", "/v1/messages", orjson.dumps(body or MSG),
                     {"x-api-key": "sk-ant-k1", "content-type": "application/json"})
        resp = conn.getresponse()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        try:
            return resp.status, headers, resp.read(), True
        except http.client.IncompleteRead as exc:
            return resp.status, headers, exc.partial, False
    finally:
        conn.close()


def message(text: str = "hello", usage: dict[str, int] | None = None) -> bytes:
    return orjson.dumps({"id": "msg_1", "type": "message", "role": "assistant",
                         "model": "claude-sonnet-4-6",
                         "content": [{"type": "text", "text": text}],
                         "stop_reason": "end_turn", "stop_sequence": None,
                         "usage": usage or USAGE})


def events(text: str = "hello", stop: bool = True) -> list[bytes]:
    out = [
        encode_event("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
            "content": [], "stop_reason": None, "usage": {"input_tokens": 11,
                                                          "output_tokens": 1}}}),
        encode_event("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}}),
        encode_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": text}}),
        encode_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        encode_event("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": "end_turn"}, "usage": {"output_tokens": 7}}),
    ]
    if stop:
        out.append(encode_event("message_stop", {"type": "message_stop"}))
    return out


def finished(seen: list[Exchange]) -> Exchange:
    wait_for(lambda: len(seen) == 1)
    return seen[0]


@pytest.fixture
def small_buffer(monkeypatch: pytest.MonkeyPatch) -> int:
    """The relay's buffer limit made small, so 'too large to buffer' takes kilobytes."""
    monkeypatch.setattr(proxy, "BUFFER_LIMIT", 64 * 1024)
    return 64 * 1024


# -- item 3: cut short upstream, never complete at the client --


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_json_cut_before_anything_was_sent_is_a_502(start: Start, raw: RawUpstream,
                                                    framing: str) -> None:
    running, seen = start()
    body = message()
    raw.reply(RawReply(body=[body[:40]], framing=framing, declared_length=len(body),
                       terminate=False))
    status, _, answer, complete = ask(running)
    assert (status, complete) == (502, True)
    assert orjson.loads(answer)["error"] == {
        "type": "api_error", "message": "upstream default ended its answer early"}
    exchange = finished(seen)
    assert exchange.upstream_cut_short and exchange.error_kind is ErrorKind.STREAM_BROKEN
    assert exchange.status == 502 and not exchange.complete


def test_close_delimited_json_that_stops_unfinished_is_a_502(start: Start,
                                                             raw: RawUpstream) -> None:
    running, seen = start()
    raw.reply(RawReply(body=message()[:-20], framing="close"))
    status, _, _, _ = ask(running)
    assert status == 502
    assert finished(seen).upstream_cut_short
    # and a whole one is relayed as it came
    seen.clear()
    raw.reply(RawReply(body=message(), framing="close"))
    assert ask(running)[::2] == (200, message())
    assert finished(seen).usage.output_tokens == 7


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_other_body_cut_short_is_left_unterminated(start: Start, raw: RawUpstream,
                                                   framing: str) -> None:
    running, seen = start()
    raw.reply(RawReply(body=[b"x" * 5000], content_type="text/plain", framing=framing,
                       declared_length=100_000, terminate=False))
    status, _, answer, complete = ask(running)
    assert status == 200 and not complete  # never a clean 200 with half the body
    assert answer == b"x" * 5000
    exchange = finished(seen)
    assert exchange.upstream_cut_short and exchange.error_kind is ErrorKind.STREAM_BROKEN


def test_json_over_the_buffer_limit_cut_short_is_left_unterminated(
        start: Start, raw: RawUpstream, small_buffer: int) -> None:
    running, seen = start()
    body = message("z" * (small_buffer * 3))
    raw.reply(RawReply(body=[body[:small_buffer * 2]], framing="chunked", terminate=False))
    status, _, answer, complete = ask(running)
    assert status == 200 and not complete
    assert answer == body[:small_buffer * 2]
    exchange = finished(seen)
    assert exchange.upstream_cut_short and not exchange.complete
    assert exchange.error_kind is ErrorKind.STREAM_BROKEN


@pytest.mark.parametrize("framing", ["close", "chunked"])
def test_stream_that_stops_before_message_stop_ends_with_an_error_event(
        start: Start, raw: RawUpstream, framing: str) -> None:
    running, seen = start()
    raw.reply(RawReply(body=events(stop=False), content_type="text/event-stream",
                       framing=framing))
    status, _, answer, complete = ask(running, {**MSG, "stream": True})
    assert status == 200 and complete
    assert answer.startswith(b"".join(events(stop=False)))
    assert answer.endswith(b"\n\n")
    last = answer.split(b"\n\n")[-2]
    assert last.startswith(b"event: error\n")
    assert orjson.loads(last.split(b"data: ", 1)[1])["error"]["message"] == \
        "upstream ended the stream early"
    exchange = finished(seen)
    assert exchange.upstream_cut_short and exchange.error_kind is ErrorKind.STREAM_BROKEN
    assert exchange.usage.output_tokens == 7  # usage so far is kept


def test_stream_with_message_stop_or_error_event_is_left_alone(start: Start,
                                                               raw: RawUpstream) -> None:
    running, seen = start()
    whole = b"".join(events())
    raw.reply(RawReply(body=[whole], content_type="text/event-stream", framing="close"))
    assert ask(running, {**MSG, "stream": True})[2] == whole
    assert finished(seen).error is None
    seen.clear()
    error = encode_event("error", {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}})
    overloaded = [*events(stop=False)[:3], error]
    raw.reply(RawReply(body=overloaded, content_type="text/event-stream", framing="close"))
    assert ask(running, {**MSG, "stream": True})[2] == b"".join(overloaded)
    exchange = finished(seen)
    assert exchange.error_kind is ErrorKind.STREAM_ERROR and not exchange.upstream_cut_short


# -- items 4 and 5: too large to buffer, relayed through, still priced --


def test_large_json_with_a_length_is_relayed_through_and_priced(
        start: Start, raw: RawUpstream) -> None:
    running, seen = start()
    body = message("ab\\\"c\n" * (50 * 1024 * 1024 // 6))  # 50 MB, escapes throughout
    raw.reply(RawReply(body=[body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20)],
                       declared_length=len(body)))
    status, _, answer, complete = ask(running)
    assert (status, complete) == (200, True) and answer == body
    exchange = finished(seen)
    assert exchange.usage.seen and exchange.usage.output_tokens == 7
    assert exchange.usage.cache_read_input_tokens == 5
    assert (exchange.stop_reason, exchange.response_model) == ("end_turn", "claude-sonnet-4-6")
    assert exchange.response_id == "msg_1"  # read off the stream of bytes, never buffered
    assert exchange.complete and exchange.error is None
    # no plugin asked for bodies: none is kept, and the exchange says it is not the answer
    assert exchange.response_body is None and exchange.response_body_truncated


def test_chunked_json_over_the_limit_keeps_only_the_bodies_asked_for(
        start: Start, raw: RawUpstream, small_buffer: int) -> None:
    running, seen = start()
    running.midway.keep_stream_bodies(1000)
    body = message("q" * small_buffer * 4)
    raw.reply(RawReply(body=[body[i:i + 4096] for i in range(0, len(body), 4096)],
                       framing="chunked"))
    assert ask(running)[::3] == (200, True)
    exchange = finished(seen)
    assert exchange.usage.output_tokens == 7 and exchange.complete
    assert exchange.response_body == body[:1000] and exchange.response_body_truncated


def test_gzip_json_over_the_limit_is_read_decoded(start: Start, raw: RawUpstream,
                                                  small_buffer: int) -> None:
    running, seen = start()
    body = message(orjson.dumps(list(range(small_buffer))).decode())
    packed = gzip.compress(body)
    assert len(packed) > small_buffer
    raw.reply(RawReply(body=[packed], headers={"content-encoding": "gzip"}))
    status, headers, answer, complete = ask(running)
    assert (status, complete, headers["content-encoding"]) == (200, True, "gzip")
    assert answer == packed
    assert finished(seen).usage.output_tokens == 7


def test_json_within_the_limit_is_still_answered_whole(start: Start, raw: RawUpstream) -> None:
    running, seen = start()
    raw.reply(RawReply(body=[message()[:30], message()[30:]], framing="chunked"))
    status, headers, answer, _ = ask(running)
    assert (status, answer) == (200, message())
    assert headers["content-length"] == str(len(message()))  # buffered: sent with a length
    assert finished(seen).response_body == message()


# -- item 9: a client that stops reading --


def test_client_that_stops_reading_is_cut_and_recorded(
        fake_upstream: FakeUpstream, midway_factory: Callable[..., RunningMidway]) -> None:
    seen: list[Exchange] = []
    plugin = module_plugin("capture", post_response=lambda exchange: seen.append(exchange))
    running = midway_factory(plugins=[plugin], write_stall_timeout=1.0, idle_timeout=600.0)
    # ~24 MB of answer: more than every buffer between midway and a client reading nothing
    fake_upstream.reply(Reply(content=[{"type": "text", "text": "z" * (24 * 1024 * 1024)}],
                              text_chunks=3000))
    body = orjson.dumps({**MSG, "stream": True})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", running.port))
    try:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: sk-ant-x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_for(lambda: len(seen) == 1, timeout=30)  # never, without the stall deadline
    finally:
        sock.close()
    exchange = seen[0]
    assert exchange.error_kind is ErrorKind.CLIENT_STALLED and exchange.client_disconnected
    assert exchange.error == "client read nothing for 1 s (write_stall_timeout): disconnected"
    assert exchange.status == 200 and exchange.usage.seen  # what was relayed is recorded
    # the upstream request was closed with it
    wait_for(lambda: fake_upstream.messages_requests[-1].cancelled, timeout=10)


# -- an error body read for upstream_response is relayed whole --


@pytest.mark.parametrize("size", [100_000, 3 * 1024 * 1024])
def test_judged_error_body_is_relayed_whole(midway_factory: Callable[..., RunningMidway],
                                            raw: RawUpstream, size: int) -> None:
    judged: list[int] = []
    judge = module_plugin("judge", upstream_response=lambda exchange, attempt: judged.append(
        len(attempt.body or b"")))
    # aiohttp's client (adapters, env proxies) hands a body over as it arrives
    running = midway_factory(plugins=[judge], upstream=raw.url, upstream_client="aiohttp")
    text = "e" * size
    body = orjson.dumps({"type": "error", "error": {"type": "overloaded_error",
                                                    "message": text}})
    raw.reply(RawReply(body=[body[i:i + 8192] for i in range(0, len(body), 8192)],
                       status=529, declared_length=len(body)))
    status, _, answer, complete = ask(running)
    assert (status, complete) == (529, True)
    assert answer == body  # never a prefix passed off as the whole
    assert judged == [min(len(body), proxy.JUDGED_BODY_LIMIT)]


# -- a stream's writes to the client (#24): merged where nothing waits for them --


class _CountingTransport:
    """A client connection's transport, each write to it kept."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._inner.write(data)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
def client_writes(monkeypatch: pytest.MonkeyPatch) -> list[_CountingTransport]:
    """The transports of the client connections midway serves, as they are opened."""
    transports: list[_CountingTransport] = []
    made = deadlines.Guard.connection_made

    def counting(self: deadlines.Guard, transport: Any) -> None:
        transports.append(_CountingTransport(transport))
        made(self, transports[-1])

    monkeypatch.setattr(deadlines.Guard, "connection_made", counting)
    return transports


def test_a_stream_that_came_whole_goes_out_in_one_write(
        start: Start, raw: RawUpstream, client_writes: list[_CountingTransport]) -> None:
    running, seen = start()
    whole = b"".join(events())
    raw.reply(RawReply(body=[whole], content_type="text/event-stream", framing="chunked",
                       together=True))
    status, _, answer, complete = ask(running, {**MSG, "stream": True})
    assert status == 200 and complete and answer == whole
    (written,) = client_writes[0].writes  # the head, the body and its end
    assert written.startswith(b"HTTP/1.1 200 ") and written.endswith(b"\r\n0\r\n\r\n")
    exchange = finished(seen)
    assert exchange.complete and exchange.usage.output_tokens == 7
    assert exchange.timings.ttfb_ms is not None


def test_a_streams_head_is_not_held_for_its_first_bytes(
        start: Start, raw: RawUpstream, client_writes: list[_CountingTransport]) -> None:
    running, seen = start()
    gate = threading.Event()

    def body() -> Iterator[bytes]:
        assert gate.wait(30)  # the client has the head before any event is sent
        yield b"".join(events())

    raw.reply(RawReply(body=body(), content_type="text/event-stream", framing="chunked"))
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
        request = orjson.dumps({**MSG, "stream": True})
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: sk-ant-k1\r\n"
                     b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                     % (len(request), request))
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        gate.set()
        try:
            while not received.endswith(b"\r\n0\r\n\r\n"):
                received += sock.recv(65536)
        except TimeoutError:
            raise AssertionError(received) from None
    head = received[:received.index(b"\r\n\r\n") + 4]
    assert client_writes[0].writes[0] == head  # written before the first event came
    assert b"".join(client_writes[0].writes) == received
    assert received.endswith(b"".join(events()) + b"\r\n0\r\n\r\n")
    assert finished(seen).complete


# -- the same merging where on_chunk observers see the stream event by event --


@pytest.fixture
def observed(midway_factory: Callable[..., RunningMidway], raw: RawUpstream) -> Start:
    """A midway whose every stream an ``on_chunk`` plugin observes (usage only when asked);
    the exchanges its post_response saw."""
    def go(usage_only: bool = False) -> tuple[RunningMidway, list[Exchange]]:
        seen: list[Exchange] = []
        names: list[str] = []
        watch = module_plugin(
            "watch", on_chunk=lambda event: names.append(event.name),
            pre_request=lambda exchange: exchange.observe_stream(watch, usage_only=usage_only),
            post_response=lambda exchange: seen.append(exchange))
        return midway_factory(plugins=[watch], upstream=raw.url), seen
    return go


@pytest.mark.parametrize("usage_only", [False, True])
def test_an_observed_stream_that_came_whole_goes_out_in_one_write(
        observed: Start, raw: RawUpstream, client_writes: list[_CountingTransport],
        usage_only: bool) -> None:
    running, seen = observed(usage_only)
    whole = b"".join(events())
    raw.reply(RawReply(body=[whole], content_type="text/event-stream", framing="chunked",
                       together=True))
    status, _, answer, complete = ask(running, {**MSG, "stream": True})
    assert status == 200 and complete and answer == whole
    (written,) = client_writes[0].writes  # the head, the body and its end
    assert written.startswith(b"HTTP/1.1 200 ") and written.endswith(b"\r\n0\r\n\r\n")
    exchange = finished(seen)
    assert exchange.complete and exchange.usage.output_tokens == 7
    assert exchange.timings.ttfb_ms is not None


def test_an_observed_streams_head_is_not_held_for_the_rest_of_its_first_event(
        observed: Start, raw: RawUpstream, client_writes: list[_CountingTransport]) -> None:
    running, seen = observed()
    gate = threading.Event()
    whole = b"".join(events())

    def body() -> Iterator[bytes]:
        yield whole[:20]  # half an event: nothing to relay yet
        assert gate.wait(30)  # the client has the head before the rest is sent
        yield whole[20:]

    # the head and the half event in one write: in hand together
    raw.reply(RawReply(body=body(), content_type="text/event-stream", framing="chunked",
                       head_first=True))
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
        request = orjson.dumps({**MSG, "stream": True})
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: sk-ant-k1\r\n"
                     b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                     % (len(request), request))
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        gate.set()
        try:
            while not received.endswith(b"\r\n0\r\n\r\n"):
                received += sock.recv(65536)
        except TimeoutError:
            raise AssertionError(received) from None
    head = received[:received.index(b"\r\n\r\n") + 4]
    assert client_writes[0].writes[0] == head  # written before the rest of the event came
    assert b"".join(client_writes[0].writes) == received
    assert received.endswith(whole + b"\r\n0\r\n\r\n")
    assert finished(seen).complete


def test_a_json_answers_usage_is_read_although_the_client_left_while_it_was_written(
        start: Start, raw: RawUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """The usage is read after the answer is written (off the client's wait): a client gone
    by then does not lose it (billing owes it all the same)."""
    async def client_gone(self: proxy.Proxy, *args: Any) -> None:
        raise ConnectionResetError("the client left")

    monkeypatch.setattr(proxy.Proxy, "_send", client_gone)
    running, seen = start()
    raw.reply(RawReply(body=message()))
    ask(running)  # (the connection is whole: aiohttp answers the error itself)
    exchange = finished(seen)
    assert exchange.client_disconnected and exchange.error_kind is ErrorKind.CLIENT_DISCONNECTED
    assert exchange.usage.output_tokens == 7 and exchange.response_model == "claude-sonnet-4-6"
