"""midway.upstream_client against scripted raw HTTP servers and a TLS aiohttp server."""

import asyncio
import ssl
import subprocess
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
import uvloop
from aiohttp import web

from midway.upstream_client import (
    HIGH_WATER,
    UnsupportedURL,
    UpstreamClient,
    UpstreamUnreachable,
)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Run a coroutine on the default loop and on uvloop (midway serve uses uvloop)."""
    runner = asyncio.run if request.param == "asyncio" else uvloop.run
    return lambda coro: runner(asyncio.wait_for(coro, 30))


class RawServer:
    """A TCP server answering each request with the next scripted handler."""

    def __init__(self, *handlers: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                           Awaitable[bool]]) -> None:
        self.handlers = list(handlers)
        self.requests: list[bytes] = []
        self.connections = 0

    async def __aenter__(self) -> "RawServer":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.handlers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                keep = await self.handlers.pop(0)(reader, writer)
                await writer.drain()
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def answer(data: bytes, keep: bool = True):
    async def handler(reader, writer):
        writer.write(data)
        return keep
    return handler


JSON = b'{"type":"message"}'
CONTENT_LENGTH = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nrequest-id: req_1\r\n"
                  b"content-length: %d\r\n\r\n%s" % (len(JSON), JSON))


def test_content_length_answer_and_request_shape(run):
    async def main():
        async with RawServer(answer(CONTENT_LENGTH)) as server:
            client = UpstreamClient()
            resp = await client.request("POST", server.url + "/v1/messages?beta=true",
                                        {"x-api-key": "k", "anthropic-version": "2023-06-01"},
                                        b'{"a":1}')
            assert resp.status == 200
            assert resp.headers["Request-Id"] == "req_1"
            assert resp.content_length == len(JSON)
            assert await resp.read() == JSON
            await client.close()
            return server.requests[0]

    request = run(main())
    head, body = request.split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/messages?beta=true HTTP/1.1"
    assert lines[1].startswith(b"host: 127.0.0.1:")
    assert set(lines[2:]) == {b"x-api-key: k", b"anthropic-version: 2023-06-01",
                              b"content-length: 7"}
    assert body == b'{"a":1}'


def test_chunked_answer_streams_chunks_as_they_come(run):
    async def main():
        gate = asyncio.Event()

        async def chunked(reader, writer):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            await gate.wait()
            writer.write(b"6\r\n world\r\n0\r\n\r\n")
            return True

        async with RawServer(chunked, answer(CONTENT_LENGTH)) as server:
            client = UpstreamClient()
            resp = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            chunks = resp.chunks()
            first = await chunks.__anext__()  # before the server sent the rest
            gate.set()
            rest = [chunk async for chunk in chunks]
            # the connection went back to the pool and carries the next request
            again = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            assert await again.read() == JSON
            await client.close()
            return first, rest, server.connections

    first, rest, connections = run(main())
    assert first == b"hello"
    assert b"".join(rest) == b" world"
    assert connections == 1


def test_chunks_before_a_malformed_part_are_read_before_its_error(run):
    """A chunked body's pieces reach the answer once per read: those that came before a
    malformed part in the same read are read before the error it ends with."""
    async def main():
        bad = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
               b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\nzz\r\n")
        async with RawServer(answer(bad, keep=False)) as server:
            client = UpstreamClient()
            resp = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            got = []
            with pytest.raises(aiohttp.ClientPayloadError, match="malformed"):
                async for chunk in resp.chunks():
                    got.append(chunk)
            await client.close()
            return b"".join(got)

    assert run(main()) == b"hello world"


def test_ready_and_ended_tell_what_is_in_hand(run):
    async def main():
        gate = asyncio.Event()

        async def chunked(reader, writer):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            await gate.wait()
            writer.write(b"6\r\n world\r\n0\r\n\r\n")  # the last bytes with the end
            return True

        async with RawServer(chunked) as server:
            client = UpstreamClient()
            resp = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            seen = [(resp.ready(), resp.ended())]  # the head came with the first chunk
            assert await resp.__anext__() == b"hello"
            seen.append((resp.ready(), resp.ended()))
            gate.set()
            assert await resp.__anext__() == b" world"
            seen.append((resp.ready(), resp.ended()))
            await client.close()
            return seen

    assert run(main()) == [(True, False), (False, False), (False, True)]


def test_an_answer_cut_short_never_ended(run):
    async def main():
        async def cut(reader, writer):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
            return False  # closed short of its length

        async with RawServer(cut) as server:
            client = UpstreamClient()
            resp = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            with pytest.raises(aiohttp.ClientPayloadError):
                async for _ in resp.chunks():
                    pass
            await client.close()
            return resp.ended()

    assert run(main()) is False


def test_close_delimited_answer_ends_at_eof_and_is_not_reused(run):
    async def main():
        async with RawServer(answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n"
                                    + JSON, keep=False), answer(CONTENT_LENGTH)) as server:
            client = UpstreamClient()
            resp = await client.request("GET", server.url + "/v1/models", {})
            assert resp.content_length is None
            body = await resp.read()
            second = await client.request("GET", server.url + "/v1/models", {})
            assert await second.read() == JSON
            await client.close()
            return body, server.connections, server.requests[0]

    body, connections, request = run(main())
    assert body == JSON
    assert connections == 2
    assert b"content-length" not in request  # a GET without a body announces none


def test_interim_1xx_answers_are_skipped(run):
    async def main():
        async with RawServer(answer(b"HTTP/1.1 100 Continue\r\n\r\n" + CONTENT_LENGTH)) as server:
            client = UpstreamClient()
            resp = await client.request("POST", server.url + "/v1/messages",
                                        {"expect": "100-continue"}, b"{}")
            body = await resp.read()
            await client.close()
            return resp.status, body

    assert run(main()) == (200, JSON)


def test_keep_alive_reuses_one_connection(run):
    async def main():
        async with RawServer(*[answer(CONTENT_LENGTH)] * 5) as server:
            client = UpstreamClient()
            for _ in range(5):
                resp = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
                assert await resp.read() == JSON
                resp.release()
            await client.close()
            return server.connections

    assert run(main()) == 1


def test_a_partly_read_answer_never_goes_back_to_the_pool(run):
    async def main():
        async def long_stream(reader, writer):
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\n")
            return True  # more would follow; the client stops listening

        async with RawServer(long_stream, answer(CONTENT_LENGTH)) as server:
            client = UpstreamClient()
            resp = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            assert await resp.chunks().__anext__() == b"abc"
            resp.release()
            second = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            assert await second.read() == JSON
            await client.close()
            return server.connections

    assert run(main()) == 2


def test_connection_dropped_mid_body_is_a_payload_error(run):
    async def main():
        async with RawServer(answer(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial",
                                    keep=False)) as server:
            client = UpstreamClient()
            resp = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
            await client.close()

    run(main())


def test_connection_closed_before_any_answer(run):
    async def main():
        async with RawServer(answer(b"", keep=False)) as server:
            client = UpstreamClient()
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            await client.close()

    run(main())


def test_a_pooled_connection_the_server_closed_is_replaced_transparently(run):
    async def main():
        async with RawServer(answer(CONTENT_LENGTH, keep=False),
                             answer(CONTENT_LENGTH)) as server:
            client = UpstreamClient()
            resp = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            assert await resp.read() == JSON
            # The server closed after answering; the client may not have noticed yet.
            second = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            assert await second.read() == JSON
            await client.close()
            return len(server.requests)

    assert run(main()) == 2


def test_garbage_from_upstream_is_a_payload_error(run):
    async def main():
        async with RawServer(answer(b"this is not http\r\n\r\n", keep=False)) as server:
            client = UpstreamClient()
            with pytest.raises(aiohttp.ClientPayloadError):
                await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            await client.close()

    run(main())


def test_idle_timeout_before_headers_and_between_chunks(run):
    async def main():
        never = asyncio.Event()

        async def silent(reader, writer):
            await never.wait()
            return False

        async def stalls(reader, writer):
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await writer.drain()
            await never.wait()
            return False

        async with RawServer(silent) as server:
            client = UpstreamClient(idle_timeout=0.2)
            with pytest.raises(TimeoutError):
                await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            await client.close()
        async with RawServer(stalls) as server:
            client = UpstreamClient(idle_timeout=0.2)
            resp = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            chunks = resp.chunks()
            assert await chunks.__anext__() == b"abc"
            with pytest.raises(TimeoutError):
                await chunks.__anext__()
            await client.close()

    run(main())


def test_idle_timeout_is_between_bytes_not_total(run):
    async def main():
        async def trickles(reader, writer):
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for _ in range(6):  # 0.6 s in all, never 0.25 s without a byte
                await asyncio.sleep(0.1)
                writer.write(b"1\r\nx\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            return True

        async with RawServer(trickles) as server:
            client = UpstreamClient(idle_timeout=0.25)
            resp = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            body = await resp.read()
            await client.close()
            return body

    assert run(main()) == b"x" * 6


def test_one_timer_watches_every_waiting_reader_each_by_its_own_last_byte(run):
    async def main():
        never = asyncio.Event()

        async def trickles(reader, writer):
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for _ in range(6):  # 0.6 s in all, never 0.25 s without a byte
                await asyncio.sleep(0.1)
                writer.write(b"1\r\nx\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            return True

        async def stalls(reader, writer):
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await writer.drain()
            await never.wait()
            return False

        async with RawServer(trickles) as fast, RawServer(stalls) as stalled:
            client = UpstreamClient(idle_timeout=0.25)
            good = await client.request("POST", fast.url + "/v1/messages", {}, b"{}")
            bad = await client.request("POST", stalled.url + "/v1/messages", {}, b"{}")
            chunks = bad.chunks()
            assert await chunks.__anext__() == b"abc"
            reading = asyncio.ensure_future(good.read())
            waiting = asyncio.ensure_future(chunks.__anext__())
            await asyncio.sleep(0)
            # two readers waiting, one timer (not one per connection)
            assert len(client._idle_watch.waiting) == 2 and client._idle_watch.timer is not None
            with pytest.raises(TimeoutError):
                await waiting
            assert not reading.done()  # its own bytes keep it alive
            body = await reading
            assert all(not conn.closed for conn in client._idle_watch.waiting)
            await client.close()
            assert client._idle_watch.timer is None
            return body

    assert run(main()) == b"x" * 6


def test_cancellation_closes_the_upstream_connection_at_once(run):
    async def main():
        closed = asyncio.Event()

        async def streams_forever(reader, writer):
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            while True:
                try:
                    writer.write(b"1\r\nx\r\n")
                    await writer.drain()
                except (ConnectionError, RuntimeError):  # uvloop: write on a closed handle
                    break
                if reader.at_eof():
                    break
                await asyncio.sleep(0.01)
            closed.set()
            return False

        async def waits_for_headers(reader, writer):
            await reader.read()  # returns when the client closes
            closed.set()
            return False

        async with RawServer(streams_forever) as server:
            client = UpstreamClient()

            async def consume():
                resp = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
                try:
                    async for _ in resp.chunks():
                        pass
                finally:
                    resp.release()  # what the relay does when its client goes away

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.wait_for(closed.wait(), 5)
            await client.close()
        closed.clear()
        async with RawServer(waits_for_headers) as server:
            client = UpstreamClient()
            task = asyncio.ensure_future(
                client.request("POST", server.url + "/v1/messages", {}, b"{}"))
            while not server.requests:
                await asyncio.sleep(0.01)
            task.cancel()
            await asyncio.wait_for(closed.wait(), 5)
            assert client._busy == 0  # the slot came back
            await client.close()

    run(main())


def test_slow_consumer_pauses_reading(run):
    async def main():
        big = b"x" * (4 * HIGH_WATER)

        async with RawServer(answer(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                                    % (len(big), big))) as server:
            client = UpstreamClient()
            resp = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            conn = resp._conn
            assert conn is not None
            while not conn.paused and resp._conn is not None:
                await asyncio.sleep(0.005)
            paused_at = resp._size
            body = await resp.read()
            await client.close()
            return paused_at, body == big

    paused_at, complete = run(main())
    assert HIGH_WATER < paused_at < 4 * HIGH_WATER
    assert complete


def test_pool_limit_queues_requests(run):
    async def main():
        gate = asyncio.Event()

        async def held(reader, writer):
            await gate.wait()
            writer.write(CONTENT_LENGTH)
            return True

        async with RawServer(answer(CONTENT_LENGTH), held, answer(CONTENT_LENGTH)) as server:
            unlimited = UpstreamClient(limit=0)
            resp = await unlimited.request("POST", server.url + "/v1/messages", {}, b"{}")
            assert await resp.read() == JSON
            await unlimited.close()
            client = UpstreamClient(limit=1)
            first = asyncio.ensure_future(
                client.request("POST", server.url + "/v1/messages", {}, b"{}"))
            while len(server.requests) < 2:
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(
                client.request("POST", server.url + "/v1/messages", {}, b"{}"))
            await asyncio.sleep(0.05)
            assert len(server.requests) == 2  # the second waits for the only slot
            gate.set()
            assert await (await first).read() == JSON
            assert await (await second).read() == JSON
            await client.close()
            return server.connections

    assert run(main()) == 2  # one for the unlimited client, one for the limited


def test_host_header_names_only_a_non_default_port():
    from midway.upstream_client import _parse_origin

    assert _parse_origin("https://api.anthropic.com:443").authority == "api.anthropic.com"
    assert _parse_origin("http://example.com").authority == "example.com"
    assert _parse_origin("http://example.com:8080").authority == "example.com:8080"
    ipv6 = _parse_origin("http://[::1]:9000")
    assert (ipv6.host, ipv6.port, ipv6.authority) == ("::1", 9000, "[::1]:9000")


def test_unreachable_unsupported_and_injected(run):
    async def main():
        client = UpstreamClient(connect_timeout=5)
        with socket_port() as port, pytest.raises(UpstreamUnreachable):
            await client.request("POST", f"http://127.0.0.1:{port}/v1/messages", {}, b"")
        with pytest.raises(UnsupportedURL):  # at the call, before any await (the relay
            # then takes aiohttp's client)
            client.request("POST", "http://user:pw@127.0.0.1:1/v1/messages", {}, b"")
        with pytest.raises(ValueError):
            await client.request("POST", "http://127.0.0.1:1/v1/messages",
                                 {"x-evil": "a\r\nx-api-key: stolen"}, b"")
        assert client._busy == 0
        await client.close()

    run(main())


class socket_port:
    """A port nothing listens on."""

    def __enter__(self) -> int:
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_tls_to_a_local_aiohttp_server(run, certificate):
    cert, key = certificate

    async def main():
        async def messages(request):
            return web.json_response({"echo": (await request.read()).decode(),
                                      "host": request.host})

        app = web.Application()
        app.router.add_post("/v1/messages", messages)
        runner = web.AppRunner(app)
        await runner.setup()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            trusting = ssl.create_default_context(cafile=str(cert))
            client = UpstreamClient(ssl_context=trusting)
            bodies = []
            for _ in range(2):
                resp = await client.request("POST", f"https://localhost:{port}/v1/messages",
                                            {}, b"over tls")
                bodies.append(await resp.read())
            connections = len(client._all)
            await client.close()
            # The default context does not trust a self-signed certificate.
            strict = UpstreamClient()
            with pytest.raises(UpstreamUnreachable):
                await strict.request("POST", f"https://localhost:{port}/v1/messages", {}, b"")
            await strict.close()
            return bodies, connections, port
        finally:
            await runner.cleanup()

    bodies, connections, port = run(main())
    assert all(b'"echo": "over tls"' in body for body in bodies)
    assert all(f'"host": "localhost:{port}"'.encode() in body for body in bodies)
    assert connections == 1


def test_idle_pooled_connections_are_closed_after_the_keepalive_period(run, monkeypatch):
    import midway.upstream_client as uc

    monkeypatch.setattr(uc, "KEEPALIVE_SECONDS", 0.2)

    async def main():
        # The server keeps the connection open (a second answer is scripted, never asked for).
        async with RawServer(answer(CONTENT_LENGTH), answer(CONTENT_LENGTH)) as server:
            client = UpstreamClient()
            resp = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            assert await resp.read() == JSON
            resp.release()
            (conn,) = [c for idle in client._idle.values() for c in idle]
            deadline = asyncio.get_running_loop().time() + 5
            while not conn.closed:  # the pool's sweeper closes it; no request needed
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            assert client._idle == {}
            await client.close()

    run(main())
