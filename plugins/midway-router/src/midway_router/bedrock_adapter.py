"""Serves Anthropic Messages requests from Claude on AWS Bedrock (InvokeModel, SigV4-signed)."""

from __future__ import annotations

import base64
import binascii
import fnmatch
from collections import deque
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import quote

import orjson
from multidict import CIMultiDict
from yarl import URL

from midway import bedrock_format
from midway.errors import STATUS_TYPES, MidwayError, error_body
from midway.exchange import Exchange, PreparedRequest, Upstream
from midway.sse import encode_event
from midway_router.eventstream import EventStreamDecoder, EventStreamError
from midway_router.settings import PING_INTERVAL
from midway_router.vendor_errors import in_anthropic_words
from midway_router.vendor_request import messages_request

BEDROCK_VERSION = "bedrock-2023-05-31"
_SERVICE = "bedrock"
# Fields of the Messages API that Bedrock takes from the URL or does not accept in the body.
_NOT_IN_BODY = ("model", "stream")

# AWS exception names (x-amzn-ErrorType, :exception-type) → Anthropic error types.
EXCEPTION_TYPES = {
    "throttlingexception": "rate_limit_error",
    "servicequotaexceededexception": "rate_limit_error",
    "serviceunavailableexception": "overloaded_error",
    "modelnotreadyexception": "overloaded_error",
    "validationexception": "invalid_request_error",
    "accessdeniedexception": "permission_error",
    "unrecognizedclientexception": "authentication_error",
    "invalidsignatureexception": "authentication_error",
    "expiredtokenexception": "authentication_error",
    "incompletesignatureexception": "authentication_error",
    "resourcenotfoundexception": "not_found_error",
}


def bedrock_model_id(model: str, model_map: Mapping[str, str]) -> str:
    """The Bedrock model id (or inference profile / ARN) for an Anthropic model name.

    ``model_map`` is consulted first (exact names, then glob patterns in order); ids that
    already look like Bedrock's (``anthropic.…``, ``us.anthropic.…``, ``arn:…``) pass
    unchanged; anything else becomes ``anthropic.<model>-v1:0``.
    """
    if model in model_map:
        return model_map[model]
    for pattern, target in model_map.items():
        if fnmatch.fnmatchcase(model, pattern):
            return target
    if model.startswith("arn:") or "anthropic." in model:
        return model
    return f"anthropic.{model}-v1:0"


class BedrockAdapter:
    """``midway.exchange.Adapter`` for Claude on Bedrock. ``Upstream.url`` is the runtime
    endpoint, e.g. ``https://bedrock-runtime.us-east-1.amazonaws.com``.

    ``betas``, when given, is the set of ``anthropic-beta`` values forwarded (Bedrock refuses
    some it does not know); by default all the client's values are forwarded.
    """

    name = "bedrock"

    def __init__(self, region: str, access_key_id: str, secret_access_key: str,
                 session_token: str | None = None, model_map: Mapping[str, str] | None = None,
                 betas: Collection[str] | None = None,
                 ping_interval: float = PING_INTERVAL) -> None:
        try:
            from botocore.auth import SigV4Auth
            from botocore.credentials import Credentials
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise RuntimeError("the Bedrock upstream needs botocore: "
                               "pip install 'midway-router[bedrock]'") from None
        self.region = region
        self.ping_interval = ping_interval  # read by midway.answer.TranslatedAnswer
        self.model_map = dict(model_map or {})
        self.betas = frozenset(betas) if betas is not None else None
        self._signer = SigV4Auth(Credentials(access_key_id, secret_access_key, session_token),
                                 _SERVICE, region)

    def __repr__(self) -> str:  # the credentials never appear in logs
        return f"BedrockAdapter(region={self.region!r})"

    def prepare(self, exchange: Exchange, upstream: Upstream) -> PreparedRequest:
        request = exchange.request
        body, model, counting = messages_request(exchange, upstream, "Bedrock")
        streaming = body.get("stream") is True and not counting
        action = "count-tokens" if counting else \
            "invoke-with-response-stream" if streaming else "invoke"
        # A Bedrock-format client's own request goes on as it came (only re-signed).
        passed = None if upstream.model else bedrock_format.client_request(exchange)
        if passed is not None:
            model_id, data = passed
            if streaming:  # and its answer's messages come back as they came
                bedrock_format.keep_frames(exchange)
        else:
            model_id = bedrock_model_id(model, self.model_map)
            payload = self._payload(request.headers.getall("anthropic-beta", []), body)
            if counting:  # CountTokens counts an InvokeModel body, which needs max_tokens
                payload.setdefault("max_tokens", 1)
                data = orjson.dumps({"input": {"invokeModel": {
                    "body": base64.b64encode(orjson.dumps(payload)).decode()}}})
            else:
                data = orjson.dumps(payload)
        # Sign the URL in the form the HTTP client will send it (yarl normalises escapes).
        url = str(URL(f"{upstream.url.rstrip('/')}/model/{quote(model_id, safe='')}/{action}"))
        headers = {"content-type": "application/json"}
        if streaming:
            headers["x-amzn-bedrock-accept"] = "application/json"
        else:
            headers["accept"] = "application/json"
        signed = CIMultiDict(self._sign(url, headers, data))
        signed["accept-encoding"] = "identity"
        return PreparedRequest(method="POST", url=url, headers=signed, body=data,
                               streaming=streaming)

    def _payload(self, header_betas: list[str], body: dict[str, Any]) -> dict[str, Any]:
        """The InvokeModel body for a Messages request."""
        payload = {k: v for k, v in body.items() if k not in _NOT_IN_BODY}
        payload["anthropic_version"] = BEDROCK_VERSION
        betas = self._betas(header_betas, payload.get("anthropic_beta"))
        if betas:
            payload["anthropic_beta"] = betas
        else:
            payload.pop("anthropic_beta", None)
        return payload

    def _betas(self, header_values: list[str], in_body: Any) -> list[str]:
        betas: list[str] = []
        for value in header_values:
            betas.extend(v.strip() for v in value.split(",") if v.strip())
        if isinstance(in_body, list):
            betas.extend(v for v in in_body if isinstance(v, str))
        if self.betas is not None:
            betas = [b for b in betas if b in self.betas]
        return list(dict.fromkeys(betas))

    def _sign(self, url: str, headers: dict[str, str], data: bytes) -> dict[str, str]:
        from botocore.awsrequest import AWSRequest

        aws = AWSRequest(method="POST", url=url, data=data, headers=headers)
        self._signer.add_auth(aws)
        return dict(aws.headers.items())

    def translate_json(self, exchange: Exchange, body: bytes) -> bytes:
        # InvokeModel's answer is an Anthropic message already; CountTokens' is its own.
        if exchange.request.path != "/v1/messages/count_tokens":
            return body
        try:
            counted = orjson.loads(body)["inputTokens"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise MidwayError(502, "the Bedrock upstream answered CountTokens without "
                              "inputTokens") from None
        return orjson.dumps({"input_tokens": counted})

    def translate_error(self, status: int, headers: Mapping[str, str], body: bytes) -> bytes:
        kind = headers.get("x-amzn-errortype", "").split(":", 1)[0]
        message, capability = in_anthropic_words(_aws_message(body), status, kind)
        return error_body(status, message, error_type="invalid_request_error" if capability
                          else error_type_for(kind, status))

    def stream_translator(self, exchange: Exchange) -> BedrockStreamTranslator:
        return BedrockStreamTranslator(bedrock_format.frames(exchange))


def error_type_for(exception: str, status: int = 500) -> str:
    found = EXCEPTION_TYPES.get(exception.lower())
    if found:
        return found
    if status == 503:
        return "overloaded_error"
    if status in STATUS_TYPES:
        return STATUS_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def _aws_message(body: bytes) -> str:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()[:2000] or "upstream error"
    if isinstance(payload, Mapping):
        for key in ("message", "Message"):
            if isinstance(payload.get(key), str):
                return str(payload[key])
    return orjson.dumps(payload).decode()[:2000]


class BedrockStreamTranslator:
    """Event-stream messages in, Anthropic SSE out.

    A ``chunk`` event's payload is ``{"bytes": <base64 of one Anthropic stream event>}``; that
    event is relayed with its JSON unchanged (thinking signatures stay byte for byte).
    Exceptions become ``event: error``; a stream that ends before ``message_stop`` ends with one.
    """

    def __init__(self, frames: deque[tuple[str, bytes]] | None = None) -> None:
        self._decoder = EventStreamDecoder()
        self._ended = False
        # (event data, the message it came from), for a Bedrock-format client's relay
        self._frames = frames

    def feed(self, data: bytes) -> bytes:
        if self._ended:
            return b""
        out: list[bytes] = []
        try:
            messages = self._decoder.feed(data)
        except EventStreamError as exc:
            self._fail(out, "api_error", f"the upstream stream is corrupt: {exc}")
            return b"".join(out)
        for message in messages:
            if self._ended:
                break
            if message.message_type == "event" and message.event_type == "chunk":
                self._chunk(message.payload, out, message.raw)
            elif message.message_type in ("exception", "error"):
                name = message.event_type or str(message.headers.get(":error-code", ""))
                error_type = error_type_for(name)
                text, capability = in_anthropic_words(_aws_message(message.payload), 400, name) \
                    if error_type == "invalid_request_error" else (_aws_message(message.payload),
                                                                   None)
                self._fail(out, "invalid_request_error" if capability else error_type, text,
                           message.raw)
        return b"".join(out)

    def close(self) -> bytes:
        if self._ended:
            return b""
        out: list[bytes] = []
        self._fail(out, "api_error", "the upstream ended the stream before the answer was "
                   "complete")
        return b"".join(out)

    def _chunk(self, payload: bytes, out: list[bytes], raw: bytes = b"") -> None:
        try:
            event = base64.b64decode(orjson.loads(payload)["bytes"], validate=True)
            name = orjson.loads(event)["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error):
            self._fail(out, "api_error", "the upstream sent an unreadable stream chunk")
            return
        if not isinstance(name, str):
            return
        # SSE data must be one line; Anthropic's JSON is compact, but a pretty-printed one is not.
        text = (event if b"\n" not in event else orjson.dumps(orjson.loads(event))).decode()
        out.append(encode_event(name, text))
        if self._frames is not None and raw:
            self._frames.append((text, raw))
        if name in ("message_stop", "error"):
            self._ended = True

    def _fail(self, out: list[bytes], error_type: str, message: str, raw: bytes = b"") -> None:
        data = orjson.dumps({"type": "error",
                             "error": {"type": error_type, "message": message}}).decode()
        out.append(encode_event("error", data))
        if self._frames is not None and raw:
            self._frames.append((data, raw))
        self._ended = True
