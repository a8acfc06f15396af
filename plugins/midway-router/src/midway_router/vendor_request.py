"""What an adapter for a cloud platform reads first from the Messages request it sends on."""

from __future__ import annotations

from typing import Any

from midway.errors import MidwayError
from midway.exchange import Exchange, Upstream

COUNT_TOKENS = "/v1/messages/count_tokens"


def messages_request(exchange: Exchange, upstream: Upstream, vendor: str
                     ) -> tuple[dict[str, Any], str, bool]:
    """The request's body, the model to ask for (the route's rewrite, else the body's) and
    whether it is a count (``count_tokens``); a clear error for what ``vendor`` cannot serve."""
    request = exchange.request
    counting = request.path == COUNT_TOKENS
    if request.method != "POST" or (request.path != "/v1/messages" and not counting):
        raise MidwayError(404, f"{request.method} {request.path} is not available on the "
                          f"{vendor} upstream {upstream.name}")
    body = request.json
    if not isinstance(body, dict):
        raise MidwayError(400, "the request body must be a JSON object")
    model = upstream.model or body.get("model")
    if not isinstance(model, str) or not model:
        raise MidwayError(400, "model: field required")
    return body, model, counting
