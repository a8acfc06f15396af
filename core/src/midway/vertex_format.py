"""Vertex AI's rawPredict as a client format: a request sent the way Claude Code sends it to
Google Cloud (``CLAUDE_CODE_USE_VERTEX=1``) becomes the Anthropic Messages request it stands
for, before any hook sees it, so every plugin sees one kind of exchange whatever door it came
through.

``POST [/v1]/projects/{p}/locations/{l}/publishers/anthropic/models/{m}:rawPredict`` (and
``:streamRawPredict``) is ``POST /v1/messages`` with ``model`` taken from the path;
``…/models/count-tokens:rawPredict`` is ``POST /v1/messages/count_tokens``. The body field
``anthropic_version`` (Vertex's ``vertex-2023-10-16``) is kept on the exchange for a Vertex
upstream and not sent to an Anthropic one, which gets the ``anthropic-version`` header instead.
Vertex's answers are Anthropic's (JSON messages, SSE streams, error envelopes), so the answer is
relayed as it is.

Paths have one spelling here too (see :mod:`midway.paths`): anything that looks like a Vertex
path but is not exactly this form is refused before a hook runs.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import attrs

from midway.errors import MidwayError

if TYPE_CHECKING:
    from midway.exchange import Exchange

FORMAT = "vertex"
VERTEX_VERSION = "vertex-2023-10-16"
ANTHROPIC_VERSION = "2023-06-01"
COUNT_TOKENS = "count-tokens"
# Project and region ids are letters, digits, '-' and '_'; a model id starts with a letter or
# digit (so never '.' or '..') and may hold Vertex's '@' before its date.
_PATH = re.compile(
    r"(?:/v1)?/projects/(?P<project>[A-Za-z0-9_-]+)/locations/(?P<location>[A-Za-z0-9_-]+)"
    r"/publishers/anthropic/models/(?P<model>[A-Za-z0-9][A-Za-z0-9._@-]*)"
    r":(?P<method>rawPredict|streamRawPredict)")
_DATED = re.compile(r"(?P<name>.+)-(?P<date>\d{8})")


@attrs.frozen
class VertexCall:
    """What a Vertex path names."""

    project: str
    location: str
    model: str  # as in the path (``claude-sonnet-4-5@20250929``, or ``count-tokens``)
    method: str  # rawPredict | streamRawPredict

    @property
    def count_tokens(self) -> bool:
        return self.model == COUNT_TOKENS


def looks_like_vertex(raw_path: str) -> bool:
    """Whether a raw path is meant as a Vertex call (then it must be one, exactly)."""
    folded = raw_path.casefold()
    return "rawpredict" in folded or folded.startswith(("/projects/", "/v1/projects/")) or \
        "/publishers/" in folded


def parse(raw_path: str) -> VertexCall | None:
    """The Vertex call a raw path names; ``None`` for a path that is not meant as one; a 400
    for one meant as one in another spelling. ``%40`` is read as ``@`` (clients differ on
    escaping it); no other escape is."""
    if not looks_like_vertex(raw_path):
        return None
    match = _PATH.fullmatch(raw_path.replace("%40", "@"))
    if match is None:
        shown = raw_path if len(raw_path) <= 200 else raw_path[:200] + "..."
        raise MidwayError(400, f"path {shown!r} is not a Vertex rawPredict path in normal "
                          "form: use /v1/projects/{project}/locations/{region}/publishers/"
                          "anthropic/models/{model}:rawPredict (or :streamRawPredict, or "
                          "models/count-tokens:rawPredict)")
    call = VertexCall(**match.groupdict())
    if call.count_tokens and call.method != "rawPredict":
        raise MidwayError(400, "count-tokens is served at models/count-tokens:rawPredict")
    return call


def anthropic_model(vertex_model: str) -> str:
    """Anthropic's id for a Vertex model id: ``claude-sonnet-4-5@20250929`` →
    ``claude-sonnet-4-5-20250929`` (billing, scopes and routes read Anthropic's ids)."""
    name, at, date = vertex_model.rpartition("@")
    return f"{name}-{date}" if at and name else vertex_model


def vertex_model(model: str) -> str:
    """Vertex's id for an Anthropic model id: a dated id gets its ``@``
    (``claude-haiku-4-5-20251001`` → ``claude-haiku-4-5@20251001``); others are unchanged."""
    if "@" in model:
        return model
    match = _DATED.fullmatch(model)
    return f"{match['name']}@{match['date']}" if match else model


def to_messages(exchange: Exchange, call: VertexCall) -> None:
    """Rewrite ``exchange.request`` (body already read) into the Messages request ``call``
    stands for; the client's path and ``anthropic_version`` stay on the exchange."""
    request = exchange.request
    if request.method != "POST":
        raise MidwayError(405, f"Vertex {call.method} takes POST, not {request.method}")
    body = request.json
    if not isinstance(body, dict):
        raise MidwayError(400, "the request body must be a JSON object")
    body = dict(body)
    exchange.client_path = request.path
    version = body.pop("anthropic_version", None)
    if version is not None and not isinstance(version, str):
        raise MidwayError(400, "anthropic_version: must be a string")
    if call.count_tokens:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise MidwayError(400, "model: field required")
        body["model"] = anthropic_model(model)
        request.path = "/v1/messages/count_tokens"
    else:
        named = body.get("model")
        model = anthropic_model(call.model)
        if named is not None and named not in (call.model, model):
            # The path is what Vertex bills and routes by: a body naming another model is an
            # attempt to be scoped as one model and served as another.
            raise MidwayError(400, f"the body names model {str(named)[:100]!r} but the path "
                              f"names {call.model!r}")
        body["model"] = model
        if call.method == "streamRawPredict":
            body["stream"] = True
        request.path = "/v1/messages"
    exchange.client_format = FORMAT
    # annotations reach the audit record and the dashboard: which door the request came through
    exchange.annotations["client_format"] = FORMAT
    exchange.state[FORMAT] = {"project": call.project, "location": call.location,
                              "anthropic_version": version or VERTEX_VERSION}
    request.query_string = ""  # Vertex's query parameters mean nothing to Anthropic's API
    # A Google access token (a client without CLAUDE_CODE_SKIP_VERTEX_AUTH) is for Google:
    # never passed on to another platform.
    if request.headers.get("authorization", "").lower().startswith("bearer ya29."):
        request.headers.popall("authorization")
        if not request.headers.get("x-api-key"):
            raise MidwayError(401, "a Google access token is for Google, not for midway: set "
                              "CLAUDE_CODE_SKIP_VERTEX_AUTH=1 and present a key in "
                              "ANTHROPIC_CUSTOM_HEADERS (x-api-key: …)",
                              error_type="authentication_error")
    request.headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
    request.json = body
