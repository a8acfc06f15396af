"""The data behind each panel, read from the services other plugins publish at start-up.

A panel whose plugin is absent says so (``installed: false``) instead of failing; a service
that raises or hangs gives the panel an ``error`` and leaves the other panels working.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from midway.context import Midway
from midway.services import ServiceKey

# Each panel reads its provider's service by the typed key that plugin exports. The dashboard
# depends on no other plugin: without one, the key is its bare name (a key is its name), no
# service is published under it, and the panel says "not installed".
try:
    from midway_audit import AUDIT
except ImportError:
    AUDIT = ServiceKey("audit")
try:
    from midway_billing import BILLING
except ImportError:
    BILLING = ServiceKey("billing")
try:
    from midway_cache import CACHE
except ImportError:
    CACHE = ServiceKey("cache")
try:
    from midway_router import ROUTER
except ImportError:
    ROUTER = ServiceKey("router")

log = logging.getLogger("midway.dashboard")

SERVICE_TIMEOUT = 10.0

# Which distribution provides each service, to tell the user what to install.
PROVIDERS = {"audit": "midway-audit", "billing": "midway-billing", "cache": "midway-cache",
             "router": "midway-router"}


class ServiceError(Exception):
    """A service failed; the message is safe to show to an admin."""


def availability(midway: Midway) -> dict[str, dict[str, Any]]:
    """For each panel's plugin: ``installed`` (its service is published), ``loaded``, any load
    error, ``state`` (on, no-service, failed, not-loaded, not-installed) and ``notice``: what
    a person reads when the panel has no data, with what to do."""
    infos = {info.name: info for info in midway.plugins.infos}
    entry_points = {ep.name for ep in importlib.metadata.entry_points(group="midway")}
    out = {}
    for name, dist in PROVIDERS.items():
        info = infos.get(name)
        state, notice = _state(midway, name, dist, info.error if info is not None else None,
                               info is not None, name in entry_points)
        out[name] = {"installed": name in midway.services, "package": dist,
                     "loaded": info is not None and info.error is None,
                     "error": info.error if info is not None else None,
                     "state": state, "notice": notice}
    return out


def _state(midway: Midway, name: str, dist: str, error: str | None, registered: bool,
           entry_point: bool) -> tuple[str, str | None]:
    if name in midway.services:
        return "on", None
    if error is not None:
        return "failed", f"{dist} failed to load: {error}"
    if registered:
        return "no-service", (f"{dist} is loaded but published no service: check its "
                              f"[{name}] configuration and the start-up log.")
    if entry_point:
        listed = midway.settings.plugins
        how = (f'the plugins list ({", ".join(listed) or "empty"}) leaves it out: add "{name}" '
               "to plugins in the config file or to MIDWAY_PLUGINS"
               if listed is not None else
               f'load it: remove the plugins list, or add "{name}" to it')
        return "not-loaded", f"{dist} is installed but not loaded: {how}, and restart midway."
    return "not-installed", (f"{dist} is not installed: pip install {dist} (from a checkout: "
                             f"pip install ./plugins/{dist}) and restart midway.")


def not_installed(midway: Midway, name: str) -> dict[str, Any]:
    return {"installed": False, **availability(midway)[name]}


async def call(label: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a service's ``method`` (sync or async), bounded in time; ``label`` names it in
    errors (``"billing.report"``)."""
    try:
        result = method(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, SERVICE_TIMEOUT)
    except TimeoutError:
        raise ServiceError(f"{label} did not answer within {SERVICE_TIMEOUT:g} s") from None
    except Exception as exc:
        log.exception("dashboard: %s failed", label)
        raise ServiceError(f"{label} failed: {type(exc).__name__}") from exc
    return result


SPEND_DIMENSIONS = ("team", "project", "model", "principal")
# The spend page lists this many Message Batches still holding budget, newest first.
MAX_HELD_BATCHES = 20
SPEND_BUCKETS = {"hour": timedelta(days=2), "day": timedelta(days=30)}


async def spend(midway: Midway, by: str, bucket: str) -> dict[str, Any]:
    if BILLING not in midway.services:
        return not_installed(midway, BILLING)
    billing = midway.services[BILLING]
    since = datetime.now(UTC) - SPEND_BUCKETS[bucket]
    series = await call("billing.spend_series", billing.spend_series, bucket=bucket, by=by,
                        since=since.timestamp())
    report = await call("billing.report", billing.report, by, since=since.timestamp())
    budgets = await call("billing.budgets", billing.budgets)
    # what holds part of the budgets' "reserved": batches whose results are not priced yet
    batches = await call("billing.batches", billing.batches, held_only=True,
                         limit=MAX_HELD_BATCHES) if hasattr(billing, "batches") else []
    # the catalogue in force and the unknown-model rule (a billing without it: not shown)
    pricing = await call("billing.pricing", billing.pricing) \
        if hasattr(billing, "pricing") else None
    return {"installed": True, "by": by, "bucket": bucket, "since": since,
            "series": list(series), "report": list(report), "budgets": list(budgets),
            "batches": list(batches), "pricing": pricing}


# The sessions panel shows the costliest sessions only, and so many agents of each: a client
# may name as many sessions and agents as it likes.
MAX_SESSIONS = 20
MAX_AGENTS = 100


async def sessions(midway: Midway, bucket: str) -> dict[str, Any]:
    """Cost per Claude Code session and per subagent tree (own and subtree cost)."""
    if BILLING not in midway.services:
        return not_installed(midway, BILLING)
    billing = midway.services[BILLING]
    since = datetime.now(UTC) - SPEND_BUCKETS[bucket]
    rows = list(await call("billing.agents", billing.agents, since=since.timestamp(),
                           top=MAX_SESSIONS + 1))  # one more: whether there are others
    totals: dict[Any, float] = {}
    for row in rows:
        if row.get("depth") == 0:
            totals[row.get("session_id")] = float(row.get("subtree_cost_usd") or 0)
    top = sorted(totals, key=lambda s: -totals[s])[:MAX_SESSIONS]
    shown = []
    for session in top:
        agents = [r for r in rows if r.get("session_id") == session]
        shown.append({"session_id": session, "cost_usd": agents[0].get("subtree_cost_usd"),
                      "agents": agents[:MAX_AGENTS], "more_agents":
                          max(0, len(agents) - MAX_AGENTS)})
    return {"installed": True, "since": since, "sessions": shown,
            "more_sessions": len(totals) > len(top)}


# What billing accepts as a session id (midway_billing.sessions.clean_id): anything else names
# no session, and is not looked up.
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")


async def session_list(midway: Midway, since: datetime, limit: int,
                       filters: dict[str, Any]) -> dict[str, Any]:
    """The latest Claude Code sessions begun since ``since`` (billing's ``sessions()``)."""
    if BILLING not in midway.services:
        return not_installed(midway, BILLING)
    rows = await call("billing.sessions", midway.services[BILLING].sessions,
                      since=since.timestamp(), limit=limit + 1, **filters)
    rows = list(rows)
    return {"installed": True, "since": since, "sessions": rows[:limit],
            "more": len(rows) > limit}


async def session(midway: Midway, session_id: str) -> dict[str, Any]:
    """One session's turns, subagents and cache breaks (billing's ``session()``); ``audit``:
    whether each turn's audit record can be opened."""
    if BILLING not in midway.services:
        return not_installed(midway, BILLING)
    found = None
    if _SESSION_ID.fullmatch(session_id):
        found = await call("billing.session", midway.services[BILLING].session, session_id)
    return {"installed": True, "session": found, "audit": AUDIT in midway.services}


async def cache(midway: Midway) -> dict[str, Any]:
    if CACHE not in midway.services:
        return not_installed(midway, CACHE)
    stats = dict(await call("cache.stats", midway.services[CACHE].stats))
    hits, misses = stats.get("hits") or 0, stats.get("misses") or 0
    looked = hits + misses
    return {"installed": True, "stats": stats,
            "hit_rate": hits / looked if looked else None}


async def upstreams(midway: Midway) -> dict[str, Any]:
    if ROUTER not in midway.services:
        return not_installed(midway, ROUTER)
    status = await call("router.status", midway.services[ROUTER].status)
    return {"installed": True, "status": list(status)}


async def requests(midway: Midway, filters: dict[str, Any], limit: int) -> dict[str, Any]:
    if AUDIT not in midway.services:
        return not_installed(midway, AUDIT)
    rows = await call("audit.query", midway.services[AUDIT].query, limit=limit, **filters)
    return {"installed": True, "rows": list(rows)}


async def request_record(midway: Midway, request_id: str) -> dict[str, Any]:
    if AUDIT not in midway.services:
        return not_installed(midway, AUDIT)
    record = await call("audit.get", midway.services[AUDIT].get, request_id)
    return {"installed": True, "record": record}
