"""Errors midway itself produces, in Anthropic's wire format."""

from __future__ import annotations

import orjson
from aiohttp import web

from midway.exchange import ErrorKind
from midway.sse import encode_event

STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str, request_id: str | None = None,
               error_type: str | None = None) -> bytes:
    """``{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}``."""
    payload: dict[str, object] = {
        "type": "error",
        "error": {"type": error_type or STATUS_TYPES.get(status, "api_error"),
                  "message": message},
    }
    if request_id:
        payload["request_id"] = request_id
    return orjson.dumps(payload)


def error_response(status: int, message: str, request_id: str | None = None,
                   error_type: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """An Anthropic-format error answer. Never sets ``x-should-retry`` on its own."""
    hdrs = {"content-type": "application/json"}
    if request_id:
        hdrs["x-midway-request-id"] = request_id
    if headers:
        hdrs.update(headers)
    return web.Response(status=status, body=error_body(status, message, request_id, error_type),
                        headers=hdrs)


def error_event(message: str, error_type: str = "api_error") -> bytes:
    """A mid-stream ``event: error``, the only honest way to fail after the first byte."""
    return encode_event("error", {"type": "error",
                                  "error": {"type": error_type, "message": message}})


class MidwayError(Exception):
    """Raised by core code, or by a plugin's request hook on purpose, to answer the client with
    an Anthropic-format error. ``kind`` is what ``exchange.error_kind`` records."""

    def __init__(self, status: int, message: str, error_type: str | None = None,
                 headers: dict[str, str] | None = None,
                 kind: ErrorKind = ErrorKind.REFUSED) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or STATUS_TYPES.get(status, "api_error")
        self.headers = headers or {}
        self.kind = kind
