"""The ``results_url`` of a Message Batch a client receives: midway's path, never the
upstream's host.

The official SDKs' ``batches.results(id)`` retrieve the batch and then fetch its
``results_url`` with the client's key. Anthropic names its own host there, so a client left
with it would send its midway key to Anthropic and read its results past midway (plugins such
as billing would never see them). Batch objects midway relays name the results path alone,
``/v1/messages/batches/{id}/results``, which the SDKs resolve against the base URL the client
reached midway by. No host is put in: midway cannot know the one the client used. A reverse
proxy may terminate TLS (the scheme midway sees is wrong) or rewrite ``Host`` to a loopback
name (deploying.md's nginx recipe: a remote client would be sent to its own machine), and an
untrusted ``Host`` reflected would send the key wherever the request claimed.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

PREFIX = "/v1/messages/batches"
# A batch id as Anthropic makes them (``msgbatch_…``): safe in a path as it is.
_BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def applies(path: str) -> bool:
    """Whether an answer to ``path`` may hold batch objects (the results file does not)."""
    return path.startswith(PREFIX) and not path.endswith("/results")


def rewrite(body: bytes) -> bytes | None:
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
    changed = False
    for batch in batches:
        changed |= _point_at_midway(batch)
    return orjson.dumps(parsed) if changed else None


def _point_at_midway(batch: dict[str, Any]) -> bool:
    url = batch.get("results_url")
    if url is None:
        return False
    batch_id = batch.get("id")
    ours = f"{PREFIX}/{batch_id}/results" \
        if isinstance(batch_id, str) and _BATCH_ID.fullmatch(batch_id) else None
    if url == ours:
        return False
    batch["results_url"] = ours
    return True
