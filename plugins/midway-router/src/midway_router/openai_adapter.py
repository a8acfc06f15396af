"""Serves Anthropic Messages requests from any OpenAI-compatible Chat Completions endpoint."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs
import orjson
from multidict import CIMultiDict
from yarl import URL

from midway.errors import MidwayError, error_body
from midway.exchange import Exchange, PreparedRequest, Upstream
from midway_router.openai_translate import (
    OpenAIStreamTranslator,
    ToolNames,
    TranslationError,
    to_anthropic_error,
    to_anthropic_message,
    to_openai_request,
    tool_names_of,
)
from midway_router.settings import PING_INTERVAL

_STATE = "midway_router.openai"
# The version segment OpenAI-style base URLs end with: v1, v1beta, v4.
_VERSION = re.compile(r"v[0-9]+[a-z0-9]*")
_CREDENTIALS = ("authorization", "x-api-key")


@attrs.define
class _Context:
    """What the answer's translation needs to know about the request."""

    names: ToolNames
    stop_sequences: list[str]
    model: str


class OpenAIAdapter:
    """``midway.exchange.Adapter`` for OpenAI-compatible vendors.

    ``model`` is the vendor model used when the routing rule (``Upstream.model``) names none;
    without either, the client's model name is sent as is. ``max_tokens_field`` is
    ``"max_completion_tokens"`` for OpenAI's reasoning models, which refuse ``max_tokens``.

    The endpoint is derived from ``Upstream.url``: a URL ending in ``/chat/completions`` is
    used as is, one ending in a version segment (``/v1``, ``/openai/v1``) gets
    ``/chat/completions`` appended, any other gets ``/v1/chat/completions``.
    """

    name = "openai"

    def __init__(self, model: str | None = None, max_tokens_field: str = "max_tokens",
                 ping_interval: float = PING_INTERVAL) -> None:
        self.model = model
        self.max_tokens_field = max_tokens_field
        self.ping_interval = ping_interval  # read by midway.answer.TranslatedAnswer

    def prepare(self, exchange: Exchange, upstream: Upstream) -> PreparedRequest:
        request = exchange.request
        if request.method != "POST" or request.path != "/v1/messages":
            raise MidwayError(404, f"{request.method} {request.path} is not available on the "
                              f"OpenAI-compatible upstream {upstream.name}")
        body = request.json
        if not isinstance(body, dict):
            raise MidwayError(400, "the request body must be a JSON object")
        model = upstream.model or self.model or str(body.get("model") or "")
        names = tool_names_of(body)
        try:
            translated = to_openai_request(body, model, names, self.max_tokens_field)
        except TranslationError as exc:
            raise MidwayError(400, str(exc)) from None
        stops = body.get("stop_sequences")
        exchange.state[_STATE] = _Context(
            names=names, model=model,
            stop_sequences=[s for s in stops if isinstance(s, str)]
            if isinstance(stops, list) else [])
        streaming = translated.get("stream") is True
        headers = CIMultiDict({
            "content-type": "application/json",
            "accept": "text/event-stream" if streaming else "application/json",
            "accept-encoding": "identity",
        })
        token = _bearer(upstream.headers)
        if token:
            headers["authorization"] = token
        for key, value in upstream.headers.items():
            if key.lower() not in _CREDENTIALS:
                headers[key] = value
        return PreparedRequest(method="POST", url=chat_completions_url(upstream.url),
                               headers=headers, body=orjson.dumps(translated),
                               streaming=streaming)

    def translate_json(self, exchange: Exchange, body: bytes) -> bytes:
        context = self._context(exchange)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return error_body(502, "the upstream answered with something that is not JSON")
        if not isinstance(payload, dict) or "choices" not in payload:
            return to_anthropic_error(502, body)
        return orjson.dumps(to_anthropic_message(payload, context.names,
                                                 context.stop_sequences, context.model))

    def translate_error(self, status: int, headers: Mapping[str, str], body: bytes) -> bytes:
        return to_anthropic_error(status, body)

    def stream_translator(self, exchange: Exchange) -> OpenAIStreamTranslator:
        context = self._context(exchange)
        return OpenAIStreamTranslator(context.names, context.stop_sequences, context.model)

    def _context(self, exchange: Exchange) -> _Context:
        context = exchange.state.get(_STATE)
        if isinstance(context, _Context):
            return context
        body: Any = exchange.request.json
        body = body if isinstance(body, dict) else {}
        return _Context(names=tool_names_of(body), stop_sequences=[],
                        model=self.model or str(body.get("model") or ""))


def chat_completions_url(base: str) -> str:
    url = URL(base.rstrip("/"))
    path = url.path.rstrip("/")
    if path.endswith("/chat/completions"):
        return str(url)
    if _VERSION.fullmatch(path.rsplit("/", 1)[-1]):
        return str(url.with_path(f"{path}/chat/completions").with_query(url.query))
    return str(url.with_path(f"{path}/v1/chat/completions").with_query(url.query))


def _bearer(headers: Mapping[str, str]) -> str | None:
    """``Authorization: Bearer`` for the vendor, from the upstream's own credential only."""
    found = {k.lower(): v for k, v in headers.items() if k.lower() in _CREDENTIALS}
    if "authorization" in found:
        value = found["authorization"]
        return value if value.lower().startswith("bearer ") else f"Bearer {value}"
    if "x-api-key" in found:
        return f"Bearer {found['x-api-key']}"
    return None
