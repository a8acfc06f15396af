"""The ``results_url`` of a Message Batch a client receives: midway's own, never the upstream's.

The official SDKs' ``batches.results(id)`` retrieve the batch and then fetch its
``results_url`` with the client's key. Anthropic names its own host there, so a client left
with it would send its midway key to Anthropic and read its results past midway (plugins such
as billing would never see them). Batch objects midway relays name the same results path on
midway instead: absolute (``http://localhost:8080/v1/…``) when the client addressed midway by
a loopback name, whose scheme midway knows; otherwise the path alone
(``/v1/messages/batches/{id}/results``), which the SDKs resolve against the base URL the
client reached midway by. A non-loopback ``Host`` is never reflected: midway has no TLS of its
own and no trusted forwarding configuration, so it cannot tell the scheme a client behind a
TLS proxy used, and a wrong one would send the key in clear (an untrusted ``Host`` would send
it wherever the request claimed).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from midway.access import host_name, is_loopback

PREFIX = "/v1/messages/batches"
# A batch id as Anthropic makes them (``msgbatch_…``): safe in a path as it is.
_BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
# A Host header that is a name or address and an optional port, nothing else.
_HOST = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


def applies(path: str) -> bool:
    """Whether an answer to ``path`` may hold batch objects (the results file does not)."""
    return path.startswith(PREFIX) and not path.endswith("/results")


def base(request: web.Request) -> str:
    """What a results path is prefixed with for this client ("" for the path alone)."""
    raw = request.headers.get("host", "")
    if _HOST.fullmatch(raw) and is_loopback(host_name(raw)):
        return f"{request.scheme}://{raw}"
    return ""


def rewrite(body: bytes, request: web.Request) -> bytes | None:
    """``body`` with every batch's ``results_url`` on midway (``None``: nothing to change).
    A batch whose id is not a plain id gets ``results_url: null`` rather than a URL built
    from it."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    data = parsed.get("data")
    batches = [b for b in data if isinstance(b, dict)] if isinstance(data, list) else [parsed]
    prefix = base(request)
    changed = False
    for batch in batches:
        changed |= _point_at_midway(batch, prefix)
    return orjson.dumps(parsed) if changed else None


def _point_at_midway(batch: dict[str, Any], prefix: str) -> bool:
    url = batch.get("results_url")
    if url is None:
        return False
    batch_id = batch.get("id")
    ours = f"{prefix}{PREFIX}/{batch_id}/results" \
        if isinstance(batch_id, str) and _BATCH_ID.fullmatch(batch_id) else None
    if url == ours:
        return False
    batch["results_url"] = ours
    return True
