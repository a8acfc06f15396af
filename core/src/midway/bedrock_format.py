"""Amazon Bedrock's InvokeModel as a client format: a request sent the way Claude Code sends it
to Bedrock (``CLAUDE_CODE_USE_BEDROCK=1``) becomes the Anthropic Messages request it stands for
before any hook sees it, and the answer goes back the way Bedrock answers.

- ``POST /model/{id}/invoke`` is ``POST /v1/messages``; ``/invoke-with-response-stream`` the
  same with ``stream: true``, its SSE answer written back as an
  ``application/vnd.amazon.eventstream`` (each event a ``chunk`` whose ``bytes`` are the
  event's JSON, an ``error`` event an ``exception`` message); ``/count-tokens`` (Bedrock's
  CountTokens, ``{"input": {"invokeModel": {"body": <base64>}}}``) is
  ``POST /v1/messages/count_tokens``, answered ``{"inputTokens": n}``.
- The body fields ``anthropic_version`` and ``anthropic_beta`` become the ``anthropic-version``
  and ``anthropic-beta`` headers; the model id (``us.anthropic.claude-sonnet-4-5-20250929-v1:0``)
  becomes Anthropic's (``claude-sonnet-4-5-20250929``) for billing, scopes and routes, and the
  client's id and body are kept on the exchange for a Bedrock upstream.
- The client's AWS signature (``Authorization: AWS4-HMAC-SHA256 …``, ``x-amz-*``) is dropped
  at the door: it is never forwarded. Clients authenticate with midway keys (a bearer token,
  e.g. ``AWS_BEARER_TOKEN_BEDROCK``, or an ``x-api-key`` header).
- ``/inference-profiles`` (Claude Code's best-effort start-up look-up) is refused with a 404.
"""

from __future__ import annotations

import base64
import binascii
import collections
import re
from typing import TYPE_CHECKING, Any

import attrs
import orjson
from aiohttp import web
from multidict import CIMultiDict

from midway.aws_eventstream import encode_message
from midway.errors import MidwayError
from midway.sse import SSEEvent, SSEParser

if TYPE_CHECKING:
    from midway.exchange import Exchange

FORMAT = "bedrock"
BEDROCK_VERSION = "bedrock-2023-05-31"
ANTHROPIC_VERSION = "2023-06-01"
EVENTSTREAM = "application/vnd.amazon.eventstream"
_ACTIONS = ("invoke", "invoke-with-response-stream", "count-tokens")
_PATH = re.compile(r"/model/(?P<model>[A-Za-z0-9._:%-]+)/(?P<action>[a-z-]+)")
# A model id, inference profile id or ARN, once its %3A and %2F are read.
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")
_ESCAPES = {"%3A": ":", "%3a": ":", "%2F": "/", "%2f": "/"}
_ANTHROPIC_ID = re.compile(
    r"(?:[a-z]{2,6}\.)?anthropic\.(?P<model>claude-[A-Za-z0-9.-]+?)(?:-v\d+(?::\d+)?)?")
# Body fields of InvokeModel that are not Messages API fields.
_BEDROCK_ONLY = ("anthropic_version", "anthropic_beta", "user_profile_id")
# Anthropic error types → the exception names Bedrock's streams carry.
_EXCEPTIONS = {
    "overloaded_error": "serviceUnavailableException",
    "rate_limit_error": "throttlingException",
    "invalid_request_error": "validationException",
    "permission_error": "accessDeniedException",
    "authentication_error": "accessDeniedException",
    "not_found_error": "resourceNotFoundException",
    "request_too_large": "validationException",
}


@attrs.frozen
class BedrockCall:
    model_id: str  # as the client named it, escapes read
    action: str  # invoke | invoke-with-response-stream | count-tokens


def looks_like_bedrock(raw_path: str) -> bool:
    folded = raw_path.casefold()
    return folded.startswith(("/model/", "/inference-profiles"))


def parse(raw_path: str) -> BedrockCall | None:
    """The Bedrock call a raw path names; ``None`` for a path not meant as one; a 4xx for one
    meant as one in another spelling (one spelling per route: :mod:`midway.paths`)."""
    if not looks_like_bedrock(raw_path):
        return None
    if raw_path.casefold().startswith("/inference-profiles"):
        raise MidwayError(404, "midway lists no Bedrock inference profiles: name the model or "
                          "the inference profile id in the request path")
    match = _PATH.fullmatch(raw_path)
    model = match["model"] if match else ""
    for escape, char in _ESCAPES.items():
        model = model.replace(escape, char)
    if match is None or match["action"] not in _ACTIONS or not _MODEL.fullmatch(model) or \
            any(part in (".", "..") for part in model.split("/")):
        shown = raw_path if len(raw_path) <= 200 else raw_path[:200] + "..."
        raise MidwayError(400, f"path {shown!r} is not a Bedrock InvokeModel path in normal "
                          "form: use /model/{model id}/invoke, /invoke-with-response-stream "
                          "or /count-tokens")
    return BedrockCall(model_id=model, action=match["action"])


def anthropic_model(model_id: str) -> str:
    """Anthropic's id for a Bedrock model id, inference profile or ARN
    (``us.anthropic.claude-sonnet-4-5-20250929-v1:0`` → ``claude-sonnet-4-5-20250929``); an id
    of another shape (an application inference profile) is kept as it is."""
    tail = model_id.rsplit("/", 1)[-1] if model_id.startswith("arn:") else model_id
    match = _ANTHROPIC_ID.fullmatch(tail)
    return match["model"] if match else model_id


def strip_aws_signature(headers: CIMultiDict[str]) -> None:
    """Drop a client's own AWS credentials: they are for AWS, never for midway's upstream.
    A client that presented nothing else is told how to authenticate instead."""
    auth = headers.get("authorization", "")
    signed = auth.upper().startswith("AWS4-")
    if signed:
        headers.popall("authorization")
    for name in [n for n in headers if n.lower().startswith("x-amz-")]:
        headers.popall(name, None)
    if signed and not headers.get("x-api-key") and not headers.get("authorization"):
        raise MidwayError(401, "an AWS signature is for AWS, not for midway: set "
                          "CLAUDE_CODE_SKIP_BEDROCK_AUTH=1 and present a key in "
                          "ANTHROPIC_CUSTOM_HEADERS (x-api-key: …) or AWS_BEARER_TOKEN_BEDROCK",
                          error_type="authentication_error")


def to_messages(exchange: Exchange, call: BedrockCall) -> None:
    """Rewrite ``exchange.request`` (body already read) into the Messages request ``call``
    stands for; the client's model id and body stay on the exchange (``state["bedrock"]``)."""
    request = exchange.request
    strip_aws_signature(request.headers)
    if request.method != "POST":
        raise MidwayError(405, f"Bedrock {call.action} takes POST, not {request.method}")
    original = request.body
    body = request.json
    if call.action == "count-tokens":
        body = _count_tokens_body(body)
    if not isinstance(body, dict):
        raise MidwayError(400, "the request body must be a JSON object")
    exchange.client_path = request.path
    version = body.get("anthropic_version")
    betas = body.get("anthropic_beta")
    if version is not None and not isinstance(version, str):
        raise MidwayError(400, "anthropic_version: must be a string")
    if betas is not None and (not isinstance(betas, list) or
                              not all(isinstance(b, str) for b in betas)):
        raise MidwayError(400, "anthropic_beta: must be a list of strings")
    messages = {k: v for k, v in body.items() if k not in _BEDROCK_ONLY}
    model = anthropic_model(call.model_id)
    named = messages.get("model")
    if named is not None and named not in (call.model_id, model):
        raise MidwayError(400, f"the body names model {str(named)[:100]!r} but the path "
                          f"names {call.model_id!r}")
    messages["model"] = model
    if call.action == "count-tokens":
        messages.pop("stream", None)
        messages.pop("max_tokens", None)  # InvokeModel's field; count_tokens refuses it
        request.path = "/v1/messages/count_tokens"
    else:
        if call.action == "invoke-with-response-stream":
            messages["stream"] = True
        else:
            messages.pop("stream", None)
        request.path = "/v1/messages"
    headers = request.headers
    if betas:
        present = [b.strip() for v in headers.getall("anthropic-beta", [])
                   for b in v.split(",") if b.strip()]
        headers.popall("anthropic-beta", None)
        headers["anthropic-beta"] = ",".join(dict.fromkeys(present + betas))
    headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
    # The answer is re-framed as an event stream: it must come back as plain bytes.
    headers["accept-encoding"] = "identity"
    request.query_string = ""
    exchange.client_format = FORMAT
    exchange.annotations["client_format"] = FORMAT
    request.json = messages
    # ``canonical``: what the body is unless a plugin changes it (then an upstream forwards
    # the changed Messages request, not the client's body)
    exchange.state[FORMAT] = {"model_id": call.model_id, "action": call.action,
                              "body": original, "canonical": request.body}


def client_request(exchange: Exchange) -> tuple[str, bytes] | None:
    """For a Bedrock upstream: the client's own model id and body (InvokeModel's, or
    CountTokens' for a count), to forward
    unmodified, when the client spoke Bedrock's format and no plugin changed the request
    since (``None`` otherwise: build the InvokeModel request from the Messages one)."""
    state = exchange.state.get(FORMAT) if exchange.client_format == FORMAT else None
    if state is None or exchange.request.body != state["canonical"]:
        return None
    return state["model_id"], state["body"]


def _count_tokens_body(body: Any) -> Any:
    """The InvokeModel body inside a CountTokens request."""
    invoke = body.get("input", {}).get("invokeModel") if isinstance(body, dict) and \
        isinstance(body.get("input"), dict) else None
    inner = invoke.get("body") if isinstance(invoke, dict) else None
    if isinstance(inner, dict):
        return inner
    if not isinstance(inner, str):
        raise MidwayError(400, "input.invokeModel.body: field required (midway counts "
                          "InvokeModel bodies, not Converse ones)")
    try:
        return orjson.loads(base64.b64decode(inner, validate=True))
    except (binascii.Error, orjson.JSONDecodeError):
        raise MidwayError(400, "input.invokeModel.body: must be a base64-encoded JSON "
                          "object") from None


def keep_frames(exchange: Exchange) -> None:
    """Ask for a Bedrock upstream's own event-stream messages to reach this Bedrock-format
    client unmodified (the adapter's translator records each with the event it became)."""
    exchange.state[FORMAT]["frames"] = collections.deque()


def frames(exchange: Exchange) -> collections.deque[tuple[str, bytes]] | None:
    """Where the translator records ``(event data, the message it came from)``; ``None``
    when the client's stream is not a Bedrock upstream's."""
    state = exchange.state.get(FORMAT) if exchange.client_format == FORMAT else None
    return state.get("frames") if state is not None else None


def json_answer(exchange: Exchange, status: int, body: bytes) -> bytes:
    """The answer a Bedrock client reads for a JSON answer: CountTokens' shape for a counted
    one, the body unchanged otherwise (InvokeModel answers with an Anthropic message)."""
    state = exchange.state.get(FORMAT)
    if status != 200 or state is None or state["action"] != "count-tokens":
        return body
    try:
        counted = orjson.loads(body)["input_tokens"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body
    return orjson.dumps({"inputTokens": counted})


class EventStreamResponse(web.StreamResponse):
    """A streamed answer written as Bedrock writes one: what the relay writes (Anthropic SSE,
    which plugins observed) goes out as event-stream messages, event by event. An event a
    Bedrock upstream sent (``frames``) goes out as the very message it came in, unless a
    plugin changed it; other events (an Anthropic upstream's, a plugin's) are framed here."""

    def __init__(self, status: int, headers: CIMultiDict[str],
                 frames: collections.deque[tuple[str, bytes]] | None = None) -> None:
        headers = CIMultiDict(headers)
        headers["content-type"] = EVENTSTREAM
        headers["x-amzn-bedrock-content-type"] = "application/json"
        super().__init__(status=status, headers=headers)
        self._parser = SSEParser()
        self._frames = frames

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        out = b"".join(self._message(event) for event in self._parser.feed(bytes(data)))
        if out:
            await super().write(out)

    def _message(self, event: SSEEvent) -> bytes:
        pending = self._frames
        while pending:  # events a plugin dropped leave their messages behind: skipped
            data, raw = pending.popleft()
            if data == event.data:
                return raw
        return _frame(event)

    async def write_eof(self, data: bytes = b"") -> None:
        pending = self._parser.pending
        if pending:  # a last event without its blank line
            self._parser = SSEParser()
            await self.write(pending + b"\n\n")
        await super().write_eof(data)


def _frame(event: SSEEvent) -> bytes:
    if not event.name or not event.data:
        return b""  # comments and blank keep-alives: Bedrock's streams have none
    if event.name == "error":
        error = event.json()
        details = error.get("error", {}) if isinstance(error, dict) else {}
        kind = details.get("type") if isinstance(details, dict) else None
        message = details.get("message") if isinstance(details, dict) else None
        return encode_message({":message-type": "exception",
                               ":exception-type": _EXCEPTIONS.get(str(kind),
                                                                  "internalServerException"),
                               ":content-type": "application/json"},
                              orjson.dumps({"message": message or "upstream error"}))
    payload = orjson.dumps({"bytes": base64.b64encode(event.data.encode()).decode()})
    return encode_message({":event-type": "chunk", ":content-type": "application/json",
                           ":message-type": "event"}, payload)
