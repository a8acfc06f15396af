"""Serves Anthropic Messages requests from Claude on Google Cloud's Vertex AI (rawPredict).

Vertex speaks Anthropic's format with three differences: the model is in the URL
(``…/publishers/anthropic/models/{model}:rawPredict``, ``:streamRawPredict`` for streams,
``models/count-tokens:rawPredict`` for counting), the body carries
``anthropic_version: vertex-2023-10-16``, and the credential is a short-lived Google OAuth2
access token. Tokens are minted from a service account with google-auth (the
``midway-router[vertex]`` extra) — google-auth signs the JWT it sends to the account's
``token_uri`` — and refreshed in the background before they expire, so no request waits for
one. Answers are Anthropic's (JSON messages, SSE streams); Google's own error envelopes
(``{"error": {"code", "message", "status"}}``) become Anthropic's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson
from multidict import CIMultiDict

from midway import vertex_format
from midway.errors import STATUS_TYPES, MidwayError, error_body
from midway.exchange import ErrorKind, Exchange, PreparedRequest, Upstream
from midway_router.vendor_request import messages_request

log = logging.getLogger("midway.router")

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# A token is renewed once it has less than this left (Google's last an hour).
REFRESH_MARGIN = dt.timedelta(minutes=5)
# Google's status names → Anthropic error types.
STATUS_NAMES = {
    "RESOURCE_EXHAUSTED": "rate_limit_error",
    "UNAVAILABLE": "overloaded_error",
    "INVALID_ARGUMENT": "invalid_request_error",
    "FAILED_PRECONDITION": "invalid_request_error",
    "PERMISSION_DENIED": "permission_error",
    "UNAUTHENTICATED": "authentication_error",
    "NOT_FOUND": "not_found_error",
    "DEADLINE_EXCEEDED": "api_error",
    "INTERNAL": "api_error",
}


def vertex_url(region: str) -> str:
    """Vertex AI's endpoint for a region (``global`` has no regional host)."""
    if region == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{region}-aiplatform.googleapis.com"


class VertexAdapter:
    """``midway.exchange.Adapter`` for Claude on Vertex AI. ``Upstream.url`` is the endpoint
    (``https://us-east5-aiplatform.googleapis.com``); ``info`` the service account's JSON."""

    name = "vertex"

    def __init__(self, info: Mapping[str, Any], region: str, project: str | None = None) -> None:
        try:
            from google.oauth2 import service_account
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise RuntimeError("the Vertex upstream needs google-auth: "
                               "pip install 'midway-router[vertex]'") from None
        self.credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            dict(info), scopes=[SCOPE])
        self.region = region
        found = project or info.get("project_id")
        if not isinstance(found, str) or not found:
            raise ValueError("no project: set project, or use a service account JSON with "
                             "project_id")
        self.project: str = found
        self.last_error: str | None = None
        self._http: Any = None

    def __repr__(self) -> str:  # the key never appears in logs
        return f"VertexAdapter(project={self.project!r}, region={self.region!r})"

    # -- the token ---------------------------------------------------------------------------

    def due(self) -> bool:
        """Whether the token is missing or expires within ``REFRESH_MARGIN``."""
        return self._left() < REFRESH_MARGIN

    def _left(self) -> dt.timedelta:
        """How long the token has left (zero: none)."""
        expiry = self.credentials.expiry  # naive UTC (google-auth's convention)
        if self.credentials.token is None or expiry is None:
            return dt.timedelta(0)
        left: dt.timedelta = expiry - dt.datetime.now(dt.UTC).replace(tzinfo=None)
        return max(left, dt.timedelta(0))

    async def refresh(self) -> None:
        """Mint a new token now (google-auth's HTTP client is blocking: in a thread)."""
        try:
            await asyncio.to_thread(self._refresh)
        except Exception as exc:
            # google-auth's messages name the token endpoint and its answer, never the key
            self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            raise
        self.last_error = None

    def _refresh(self) -> None:
        import urllib3
        from google.auth.transport.urllib3 import Request

        if self._http is None:  # bounded: a silent token endpoint must not hold a thread
            self._http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5.0, read=15.0))
        self.credentials.refresh(Request(self._http))  # type: ignore[no-untyped-call]

    def _token(self, upstream: Upstream) -> str:
        # not google-auth's ``valid``: it calls a token with < 3¾ min left expired already
        token = self.credentials.token
        if token is None or self._left() <= dt.timedelta(0):
            why = f": {self.last_error}" if self.last_error else ""
            raise MidwayError(503, f"upstream {upstream.name} has no valid Google access "
                              f"token yet{why}", error_type="api_error",
                              kind=ErrorKind.UPSTREAM_UNREACHABLE)
        return str(token)

    # -- the request -------------------------------------------------------------------------

    def prepare(self, exchange: Exchange, upstream: Upstream) -> PreparedRequest:
        request = exchange.request
        body, model, counting = messages_request(exchange, upstream, "Vertex")
        model = vertex_format.vertex_model(model)
        payload = dict(body)
        state = exchange.state.get(vertex_format.FORMAT) \
            if exchange.client_format == vertex_format.FORMAT else None
        payload["anthropic_version"] = state["anthropic_version"] if state else \
            vertex_format.VERTEX_VERSION
        streaming = payload.get("stream") is True
        if counting:
            payload["model"] = model
            target, method = vertex_format.COUNT_TOKENS, "rawPredict"
        else:
            del payload["model"]
            target, method = model, "streamRawPredict" if streaming else "rawPredict"
        url = (f"{upstream.url.rstrip('/')}/v1/projects/{quote(self.project, safe='')}"
               f"/locations/{quote(self.region, safe='')}/publishers/anthropic/models/"
               f"{quote(target, safe='@')}:{method}")
        headers = CIMultiDict({"content-type": "application/json",
                               "authorization": f"Bearer {self._token(upstream)}",
                               "accept-encoding": "identity"})
        for name in ("anthropic-beta",):
            for value in request.headers.getall(name, []):
                headers.add(name, value)
        return PreparedRequest(method="POST", url=url, headers=headers,
                               body=orjson.dumps(payload), streaming=streaming)

    # -- the answer --------------------------------------------------------------------------

    def translate_json(self, exchange: Exchange, body: bytes) -> bytes:
        return body  # Vertex answers with Anthropic's message (or count)

    def translate_error(self, status: int, headers: Mapping[str, str], body: bytes) -> bytes:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        if isinstance(payload, dict) and payload.get("type") == "error":
            return body  # Anthropic's own error, from the model behind Vertex: unmodified
        google = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(google, dict):
            message = str(google.get("message") or "upstream error")
            kind = STATUS_NAMES.get(str(google.get("status")))
        else:
            message = body.decode("utf-8", "replace").strip()[:2000] or "upstream error"
            kind = None
        kind = kind or STATUS_TYPES.get(status) or \
            ("invalid_request_error" if 400 <= status < 500 else "api_error")
        return error_body(status, message, error_type=kind)

    def stream_translator(self, exchange: Exchange) -> PassThrough:
        return PassThrough()


class PassThrough:
    """Vertex streams are Anthropic's SSE already: relayed as they come."""

    def feed(self, data: bytes) -> bytes:
        return data

    def close(self) -> bytes:
        return b""
