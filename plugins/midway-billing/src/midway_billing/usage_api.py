"""``GET /api/oauth/usage``: a person's own spend limits, where Claude Code reads them.

Claude Code signed in to a gateway (``/login``) asks ``{gateway}/api/oauth/usage`` with its
gateway token for the **Spend limit** bar of ``/usage``, as Anthropic's own gateway answers
it. midway answers for any principal the ``authenticate`` hook knows (a signed-in person's
token, or a midway key), with that principal's caps and spend only: whose usage is read is
decided by the credential, never by the request. Served once ``[billing] spend_limits`` is
on; without it the path is not midway's (404), which Claude Code reads as "no spend limit".
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from midway import Midway
from midway.errors import MidwayError, error_body
from midway.identity import authenticate_request
from midway.storage import is_transient

if TYPE_CHECKING:
    from midway_billing.plugin import Billing

log = logging.getLogger("midway.billing")
PATH = "/api/oauth/usage"
# Never cached: it is one person's, and changes with every request they make.
_HEADERS = {"cache-control": "no-store", "vary": "authorization, x-api-key"}


def _error(status: int, message: str, request_id: str, kind: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(status, message, request_id, kind),
                        content_type="application/json",
                        headers={**_HEADERS, "request-id": request_id, **(headers or {})})


class UsageAPI:
    def __init__(self, midway: Midway, billing: Callable[[], Billing | None]) -> None:
        self.midway = midway
        self._billing = billing

    def routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        request_id = f"req_{uuid.uuid4().hex}"
        billing = self._billing()
        if billing is None or not billing.config.spend_limits:
            return _error(404, "spend limits are not enabled on this gateway", request_id)
        try:
            principal = await authenticate_request(self.midway, request)
        except MidwayError as exc:
            return _error(exc.status, exc.message, request_id, exc.error_type,
                          headers=dict(exc.headers or {}))
        if principal.kind == "anonymous":
            return _error(401, "sign in with /login (or send a midway key) to see your "
                          "spend limits", request_id, headers={"x-should-retry": "false"})
        try:
            body = await billing.usage(principal)
        except Exception as exc:
            if not (is_transient(exc) or isinstance(exc, TimeoutError)):
                log.exception("billing: GET %s failed (%s)", PATH, request_id)
                return _error(500, "internal error; see the gateway's log", request_id)
            log.warning("billing: GET %s: the spend store cannot be read (%s) request_id=%s",
                        PATH, exc or type(exc).__name__, request_id)
            # Either way (fail open or closed) nobody can say what was spent: Claude Code
            # keeps showing its last reading until the store answers again.
            return _error(503, "spend limit unavailable: the spend store cannot be reached; "
                          "try again later", request_id, "api_error")
        return web.Response(body=orjson.dumps(body), content_type="application/json",
                            headers={**_HEADERS, "request-id": request_id})
