"""Answers to requests the HTTP parser refuses, without echoing what the client sent.

aiohttp answers an unparsable request (a NUL or a lone CR in a header value, a bad request
line) with a 400 whose plain-text body quotes the offending line, and logs that line with a
traceback. The offending line is often a credential header with one stray byte (a key file
saved with CRLF line endings), so both would hand the secret to whoever reads the answer or
the log. midway answers with Anthropic's error format instead and logs only the error's kind.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web_protocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from midway.errors import error_response

log = logging.getLogger("midway.server")

_original = web_protocol.RequestHandler.handle_error


def _handle_error(self: web_protocol.RequestHandler, request: BaseRequest, status: int = 500,
                  exc: BaseException | None = None, message: str | None = None
                  ) -> StreamResponse:
    if not isinstance(exc, HttpProcessingError) or status >= 500:
        return _original(self, request, status, exc, message)
    log.info("malformed HTTP request from %s refused (%s)", request.remote,
             type(exc).__name__)
    response = error_response(status, "malformed HTTP request")
    response.force_close()
    return response


def install() -> None:
    """Replace aiohttp's parser-error answer (idempotent; every server in the process)."""
    handler: Any = web_protocol.RequestHandler
    handler.handle_error = _handle_error
