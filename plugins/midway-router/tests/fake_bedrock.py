"""A fake Bedrock runtime: checks SigV4 signatures, answers InvokeModel and
InvokeModelWithResponseStream, the latter in the real AWS event-stream framing."""

from __future__ import annotations

import asyncio
import base64
import re
import struct
import threading
import zlib
from collections import deque
from typing import Any

import attrs
import orjson
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict

from midway.testing import ServerThread

AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[A-Z0-9]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)"
    r"/bedrock/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})")


@attrs.define
class BedrockReply:
    content: list[dict[str, Any]] = attrs.field(factory=lambda: [
        {"type": "text", "text": "Hello from the fake Bedrock."}])
    stop_reason: str = "end_turn"
    usage: dict[str, Any] = attrs.field(factory=lambda: {"input_tokens": 20,
                                                         "output_tokens": 7})
    status: int = 200
    error_type: str = "ValidationException"
    error_message: str = "error"
    exception_after: int | None = None  # an exception message after this many chunks
    exception_type: str = "throttlingException"
    truncate_after: int | None = None
    chunk_size: int | None = None
    # Stall after this many events until ``resume`` is set (a vendor thinking in silence).
    stall_after: int | None = None
    resume: threading.Event = attrs.field(factory=threading.Event)


@attrs.define
class Recorded:
    path: str
    headers: CIMultiDict[str]
    body: dict[str, Any]
    signature_ok: bool
    raw: bytes = b""  # the body's bytes as received


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message (string headers only, which is all Bedrock sends)."""
    hb = b"".join(bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v)) +
                  v.encode() for k, v in headers.items())
    prelude = struct.pack(">II", 12 + len(hb) + len(payload) + 4, len(hb))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + hb + payload
    return message + struct.pack(">I", zlib.crc32(message))


def chunk_message(event: dict[str, Any]) -> bytes:
    payload = orjson.dumps({"bytes": base64.b64encode(orjson.dumps(event)).decode(),
                            "p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"})
    return encode_message({":event-type": "chunk", ":content-type": "application/json",
                           ":message-type": "event"}, payload)


def exception_message(kind: str, message: str) -> bytes:
    return encode_message({":exception-type": kind, ":content-type": "application/json",
                           ":message-type": "exception"}, orjson.dumps({"message": message}))


def message_of(reply: BedrockReply, model: str) -> dict[str, Any]:
    content = []
    for i, block in enumerate(reply.content):
        if block["type"] == "tool_use":
            block = {"id": f"toolu_bdrk_{i:02d}", **block}
        content.append(block)
    return {"id": "msg_bdrk_01ABC", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": reply.stop_reason, "stop_sequence": None,
            "usage": reply.usage}


def stream_events(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The Anthropic stream events of ``message``, as Bedrock wraps them."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None,
             "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1}}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append({"type": "content_block_start", "index": i,
                           "content_block": {"type": "text", "text": ""}})
            text = block["text"]
            half = len(text) // 2
            for piece in (text[:half], text[half:]):
                events.append({"type": "content_block_delta", "index": i,
                               "delta": {"type": "text_delta", "text": piece}})
        elif block["type"] == "thinking":
            events.append({"type": "content_block_start", "index": i,
                           "content_block": {"type": "thinking", "thinking": "",
                                             "signature": ""}})
            events.append({"type": "content_block_delta", "index": i,
                           "delta": {"type": "thinking_delta", "thinking": block["thinking"]}})
            events.append({"type": "content_block_delta", "index": i,
                           "delta": {"type": "signature_delta",
                                     "signature": block["signature"]}})
        else:
            events.append({"type": "content_block_start", "index": i, "content_block": {
                **block, "input": {}}})
            raw = orjson.dumps(block["input"]).decode()
            for piece in ("", raw[:5], raw[5:]):
                events.append({"type": "content_block_delta", "index": i,
                               "delta": {"type": "input_json_delta", "partial_json": piece}})
        events.append({"type": "content_block_stop", "index": i})
    events.append({"type": "message_delta",
                   "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                   "usage": {"output_tokens": usage["output_tokens"]}})
    events.append({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
        "inputTokenCount": usage["input_tokens"], "outputTokenCount": usage["output_tokens"],
        "invocationLatency": 321, "firstByteLatency": 123}})
    return events


class FakeBedrock:
    def __init__(self, access_key_id: str, secret_access_key: str,
                 session_token: str | None = None, region: str = "us-east-1") -> None:
        self.credentials = Credentials(access_key_id, secret_access_key, session_token)
        self.region = region
        self.replies: deque[BedrockReply] = deque()
        self.requests: list[Recorded] = []
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.sent_streams: list[bytes] = []  # each event stream as it was sent
        self.app.router.add_post("/model/{model}/invoke", self._invoke)
        self.app.router.add_post("/model/{model}/invoke-with-response-stream", self._invoke)
        self.app.router.add_post("/model/{model}/count-tokens", self._count_tokens)

    def reply(self, *replies: BedrockReply) -> None:
        self.replies.extend(replies)

    def verify(self, request: web.Request, body: bytes) -> bool:
        """Recompute the SigV4 signature the way AWS does, from the request as received."""
        match = AUTH_RE.fullmatch(request.headers.get("authorization", ""))
        amz_date = request.headers.get("x-amz-date", "")
        creds = self.credentials
        if match is None or match["key"] != creds.access_key or match["region"] != self.region \
                or not amz_date.startswith(match["date"]):
            return False
        signed = match["signed"].split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            return False
        if creds.token and request.headers.get("x-amz-security-token") != creds.token:
            return False
        headers = {h: request.headers[h] for h in signed if h != "host" and h in request.headers}
        aws = AWSRequest(method=request.method, url=f"http://{request.host}{request.raw_path}",
                         data=body, headers=headers)
        aws.context["timestamp"] = amz_date
        signer = SigV4Auth(creds, "bedrock", self.region)
        canonical = signer.canonical_request(aws)
        expected = signer.signature(signer.string_to_sign(aws, canonical), aws)
        return bool(expected == match["signature"])

    async def _count_tokens(self, request: web.Request) -> web.Response:
        """Bedrock's CountTokens: ``{"input": {"invokeModel": {"body": <base64>}}}`` in,
        ``{"inputTokens": n}`` out (n: a rough count of the InvokeModel body)."""
        raw = await request.read()
        ok = self.verify(request, raw)
        body = orjson.loads(raw)
        self.requests.append(Recorded(request.raw_path, CIMultiDict(request.headers), body, ok,
                                      raw))
        if not ok:
            return web.json_response({"message": "signature mismatch"}, status=403, headers={
                "x-amzn-ErrorType": "InvalidSignatureException:http://internal.amazon.com/"})
        try:
            inner = orjson.loads(base64.b64decode(body["input"]["invokeModel"]["body"],
                                                  validate=True))
        except (KeyError, TypeError, ValueError):
            return web.json_response({"message": "input.invokeModel.body is invalid"},
                                     status=400, headers={"x-amzn-ErrorType":
                                                          "ValidationException:http://x/"})
        if "anthropic_version" not in inner or "model" in inner:
            return web.json_response({"message": "not an InvokeModel body"}, status=400,
                                     headers={"x-amzn-ErrorType": "ValidationException:x"})
        return web.json_response({"inputTokens": max(1, len(raw) // 4)})

    async def _invoke(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        ok = self.verify(request, raw)
        self.requests.append(Recorded(request.raw_path, CIMultiDict(request.headers),
                                      orjson.loads(raw), ok, raw))
        aws_headers = {"x-amzn-RequestId": f"aws-req-{len(self.requests)}"}
        if not ok:
            return web.json_response(
                {"message": "The request signature we calculated does not match the signature "
                            "you provided."}, status=403,
                headers={**aws_headers, "x-amzn-ErrorType": "InvalidSignatureException:http://"
                         "internal.amazon.com/coral/com.amazon.coral.service/"})
        reply = self.replies.popleft() if self.replies else BedrockReply()
        if reply.status >= 400:
            return web.json_response({"message": reply.error_message}, status=reply.status,
                                     headers={**aws_headers,
                                              "x-amzn-ErrorType": f"{reply.error_type}:http://"
                                              "internal.amazon.com/coral/com.amazon.bedrock/"})
        model = request.match_info["model"].removeprefix("anthropic.").removesuffix("-v1:0")
        message = message_of(reply, model)
        if not request.path.endswith("/invoke-with-response-stream"):
            return web.json_response(message, headers=aws_headers)
        response = web.StreamResponse(headers={
            **aws_headers, "content-type": "application/vnd.amazon.eventstream",
            "x-amzn-bedrock-content-type": "application/json"})
        await response.prepare(request)
        frames = [chunk_message(e) for e in stream_events(message)]
        if reply.exception_after is not None:
            frames = frames[:reply.exception_after]
            frames.append(exception_message(reply.exception_type, "Too many requests, please "
                                            "wait before trying again."))
        elif reply.truncate_after is not None:
            frames = frames[:reply.truncate_after]
        if reply.stall_after is not None:
            await response.write(b"".join(frames[:reply.stall_after]))
            # bounded: a failed test must not leave the server thread waiting forever
            await asyncio.get_running_loop().run_in_executor(None, reply.resume.wait, 30)
            frames = frames[reply.stall_after:]
        data = b"".join(frames)
        self.sent_streams.append(data)
        step = reply.chunk_size or len(data) or 1
        for start in range(0, len(data), step):
            await response.write(data[start:start + step])
            if reply.chunk_size:
                await asyncio.sleep(0)
        await response.write_eof()
        return response


class FakeBedrockServer(ServerThread):
    def __init__(self, access_key_id: str, secret_access_key: str,
                 session_token: str | None = None) -> None:
        self.fake = FakeBedrock(access_key_id, secret_access_key, session_token)
        super().__init__(self.fake.app)

    def reply(self, *replies: BedrockReply) -> None:
        self.fake.reply(*replies)

    @property
    def requests(self) -> list[Recorded]:
        return self.fake.requests
