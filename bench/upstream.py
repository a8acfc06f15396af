"""The benchmark's upstream: Anthropic's wire format at the least CPU a Python server can spend.

``python bench/upstream.py PORT DELTAS`` — every POST gets the same message, as JSON or as a
stream of DELTAS text deltas (one write per event, as a server streaming tokens does),
whichever the request asks for; each answer carries its own ``request-id``.

The answers are rendered once with midway's fake Anthropic (``midway.fake_upstream``); serving
them is a bare asyncio protocol with llhttp (httptools) parsing. The upstream shares a core
with the load generator: the less it spends, the more the proxy is what is measured (and the
more room a proxy's helper processes, such as midway-audit's writer, find there).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, ClassVar

import httptools
import orjson
import uvloop

from midway.fake_upstream import Reply, build_message, stream_events

REQUEST = {"model": "claude-sonnet-4-6", "max_tokens": 4096,
           "messages": [{"role": "user", "content": "bench"}]}


def render(deltas: int) -> tuple[bytes, list[bytes]]:
    """The JSON answer's body and the stream's events."""
    text = "".join(f"word{i} " for i in range(deltas))
    reply = Reply(content=[{"type": "text", "text": text}], text_chunks=deltas,
                  usage={"input_tokens": 250, "output_tokens": deltas * 2})
    message = build_message(REQUEST, reply, orjson.dumps(REQUEST))
    return orjson.dumps(message), stream_events(message, reply)


class Upstream(asyncio.Protocol):
    json_body: ClassVar[bytes] = b""
    events: ClassVar[list[bytes]] = []
    served: ClassVar[int] = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        Upstream.served += 1
        request_id = b"req_011CBench%016d" % Upstream.served
        body = b"".join(self.body)
        write = self.transport.write
        if b'"stream":true' in body or b'"stream": true' in body:
            write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                  b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
                  b"request-id: " + request_id + b"\r\n\r\n")
            for event in self.events:
                write(b"%x\r\n%s\r\n" % (len(event), event))
            write(b"0\r\n\r\n")
        else:
            write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                  b"request-id: " + request_id + b"\r\n"
                  b"content-length: %d\r\n\r\n%s" % (len(self.json_body), self.json_body))
        if not self.parser.should_keep_alive():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        pass


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    port, deltas = int(sys.argv[1]), int(sys.argv[2])
    Upstream.json_body, Upstream.events = render(deltas)
    uvloop.run(serve(port))


if __name__ == "__main__":
    main()
