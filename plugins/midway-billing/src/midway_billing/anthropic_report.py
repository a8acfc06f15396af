"""Reconciliation against Anthropic's own figures (``midway billing reconcile``).

Reads the Usage & Cost Admin API — ``GET /v1/organizations/usage_report/messages`` (tokens per
day, model and API key) and ``GET /v1/organizations/cost_report`` (USD per day and cost item)
— following ``has_more``/``next_page``, and sets midway's ledger beside them: per day and model
the cost, per day, model and API key the tokens, each with the difference and its likely
cause. The admin key goes to the admin URL only, and into no message, log or output.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
from yarl import URL

from midway_billing.pricing import PICO, PriceTable, normalise, usd_str

ADMIN_URL = "https://api.anthropic.com"
USAGE_PATH = "/v1/organizations/usage_report/messages"
COST_PATH = "/v1/organizations/cost_report"
API_VERSION = "2023-06-01"
MAX_PAGES = 1000  # a misbehaving server that always says has_more must not loop forever
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_write_5m_tokens",
                "cache_write_1h_tokens", "cache_read_tokens")
# Differences below these are rounding (Anthropic reports fractional cents).
COST_TOLERANCE = Decimal("0.000001")
WEB_SEARCH = "(web search)"
OTHER = "(other cost)"


class AdminAPIError(Exception):
    """The Admin API could not be read; the message names no credential."""


def check_admin_url(url: str) -> str:
    """The admin URL, if the admin key may be sent there: HTTPS, or plain HTTP to this
    machine (a test or a local relay)."""
    parsed = URL(url)
    if parsed.scheme == "https" and parsed.host:
        return url.rstrip("/")
    if parsed.scheme == "http" and parsed.host:
        try:
            loopback = ipaddress.ip_address(parsed.host).is_loopback
        except ValueError:
            loopback = parsed.host == "localhost"
        if loopback:
            return url.rstrip("/")
    raise AdminAPIError(f"--admin-url {url!r}: the admin key is only sent over https:// "
                        "(or http:// to this machine)")


class AdminClient:
    """Reads one organisation's usage and cost reports with an Admin API key."""

    def __init__(self, admin_key: str, base_url: str = ADMIN_URL,
                 session: aiohttp.ClientSession | None = None) -> None:
        self._key = admin_key
        self.base_url = check_admin_url(base_url)
        self._session = session

    async def pages(self, path: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Every bucket of a report, page after page."""
        buckets: list[dict[str, Any]] = []
        page: str | None = None
        own = self._session is None
        session = self._session or aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=120))
        try:
            for _ in range(MAX_PAGES):
                query = params + ([("page", page)] if page else [])
                body = await self._get(session, path, query)
                data = body.get("data")
                if not isinstance(data, list):
                    raise AdminAPIError(f"{path}: the answer has no data list")
                buckets.extend(b for b in data if isinstance(b, dict))
                page = body.get("next_page") if body.get("has_more") else None
                if not page:
                    return buckets
            raise AdminAPIError(f"{path}: more than {MAX_PAGES} pages; narrow --since/--until")
        finally:
            if own:
                await session.close()

    async def _get(self, session: aiohttp.ClientSession, path: str,
                   query: list[tuple[str, str]]) -> dict[str, Any]:
        headers = {"x-api-key": self._key, "anthropic-version": API_VERSION}
        url = self.base_url + path
        try:
            async with session.get(url, params=query, headers=headers,
                                   allow_redirects=False) as response:
                text = await response.text()
                if response.status != 200:
                    raise AdminAPIError(f"{path}: {response.status} {_error_message(text)}"
                                        + (" (is it an Admin API key, sk-ant-admin…?)"
                                           if response.status in (401, 403) else ""))
                body = await response.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise AdminAPIError(f"{path}: cannot reach {self.base_url}: "
                                f"{type(exc).__name__}") from None
        if not isinstance(body, dict):
            raise AdminAPIError(f"{path}: the answer is not a JSON object")
        return body

    async def usage(self, since: datetime, until: datetime) -> list[dict[str, Any]]:
        return await self.pages(USAGE_PATH, [
            ("starting_at", _rfc3339(since)), ("ending_at", _rfc3339(until)),
            ("bucket_width", "1d"), ("group_by[]", "model"), ("group_by[]", "api_key_id"),
            ("limit", "31")])

    async def cost(self, since: datetime, until: datetime) -> list[dict[str, Any]]:
        return await self.pages(COST_PATH, [
            ("starting_at", _rfc3339(since)), ("ending_at", _rfc3339(until)),
            ("bucket_width", "1d"), ("group_by[]", "description"), ("limit", "31")])


def _error_message(text: str) -> str:
    """The Anthropic-format error's message, cut short (never the request's headers)."""
    try:
        body = orjson.loads(text)
        message = body["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = text
    return str(message)[:200]


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def day_range(since: float, until: float) -> tuple[datetime, datetime]:
    """Whole UTC days covering ``since`` … ``until`` (the reports' buckets are days)."""
    start = datetime.fromtimestamp(since, UTC).replace(hour=0, minute=0, second=0,
                                                       microsecond=0)
    end = datetime.fromtimestamp(until, UTC)
    if end != end.replace(hour=0, minute=0, second=0, microsecond=0):
        end = end.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return start, end


def _model(name: Any) -> str:
    return normalise(name) if isinstance(name, str) and name else "(no model)"


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def anthropic_usage(buckets: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, int]]:
    """Tokens per (day, model, api_key_id) from usage-report buckets."""
    out: dict[tuple[str, str, str], dict[str, int]] = {}
    for bucket in buckets:
        day = str(bucket.get("starting_at", ""))[:10]
        for item in bucket.get("results") or []:
            if not isinstance(item, dict):
                continue
            key = (day, _model(item.get("model")), str(item.get("api_key_id") or "(none)"))
            cache = _dict(item.get("cache_creation"))
            tools = _dict(item.get("server_tool_use"))
            sums = out.setdefault(key, dict.fromkeys((*TOKEN_FIELDS, "web_search_requests"),
                                                     0))
            sums["input_tokens"] += _int(item.get("uncached_input_tokens"))
            sums["output_tokens"] += _int(item.get("output_tokens"))
            sums["cache_read_tokens"] += _int(item.get("cache_read_input_tokens"))
            sums["cache_write_5m_tokens"] += _int(cache.get("ephemeral_5m_input_tokens"))
            sums["cache_write_1h_tokens"] += _int(cache.get("ephemeral_1h_input_tokens"))
            sums["web_search_requests"] += _int(tools.get("web_search_requests"))
    return out


def anthropic_cost(buckets: list[dict[str, Any]]) -> dict[tuple[str, str], Decimal]:
    """USD per (day, model) from cost-report buckets (amounts are in cents); web searches
    and other costs that name no model are rows of their own."""
    out: dict[tuple[str, str], Decimal] = {}
    for bucket in buckets:
        day = str(bucket.get("starting_at", ""))[:10]
        for item in bucket.get("results") or []:
            if not isinstance(item, dict):
                continue
            try:
                cents = Decimal(str(item.get("amount", "0")))
            except ArithmeticError:
                continue
            if item.get("cost_type") == "web_search":
                model = WEB_SEARCH
            elif item.get("model"):
                model = _model(item["model"])
            else:
                model = OTHER
            out[(day, model)] = out.get((day, model), Decimal(0)) + cents / 100
    return out


def compare(ledger: Sequence[Mapping[str, Any]], usage: list[dict[str, Any]],
            cost: list[dict[str, Any]], prices: PriceTable,
            key_map: Mapping[str, str]) -> dict[str, list[dict[str, Any]]]:
    """midway's figures beside Anthropic's: ``costs`` per day and model, ``usage`` (tokens)
    per day, model and API key, each with the difference and its likely cause."""
    theirs_usage = anthropic_usage(usage)
    theirs_cost = anthropic_cost(cost)
    ours_usage: dict[tuple[str, str, str], dict[str, int]] = {}
    ours_cost: dict[tuple[str, str], Decimal] = {}
    unpriced: dict[tuple[str, str], int] = {}
    for row in ledger:
        day, model = str(row["day"]), _model(row["model"])
        key_id = row["key_id"]
        api_key = key_map.get(key_id, f"midway:{key_id}") if key_id else "(none)"
        sums = ours_usage.setdefault((day, model, api_key),
                                     dict.fromkeys((*TOKEN_FIELDS, "web_search_requests"), 0))
        for field in (*TOKEN_FIELDS, "web_search_requests"):
            sums[field] += int(row[field] or 0)
        # Web searches are a cost item of their own in Anthropic's report.
        price = prices.lookup(row["model"])
        searches = int(row["web_search_requests"] or 0)
        search_usd = Decimal(searches) * price.web_search_per_request if price else Decimal(0)
        usd = Decimal(int(row["cost_pusd"] or 0)) / PICO
        if search_usd and not int(row["unpriced"] or 0):
            ours_cost[(day, WEB_SEARCH)] = ours_cost.get((day, WEB_SEARCH), Decimal(0)) \
                + search_usd
            usd -= search_usd
        ours_cost[(day, model)] = ours_cost.get((day, model), Decimal(0)) + usd
        unpriced[(day, model)] = unpriced.get((day, model), 0) + int(row["unpriced"] or 0)

    def tokens(table: Mapping[tuple[str, str, str], dict[str, int]], day: str,
               model: str) -> int:
        return sum(sum(v[f] for f in TOKEN_FIELDS) for (d, m, _), v in table.items()
                   if d == day and m == model)

    costs = []
    for day, model in sorted(set(ours_cost) | set(theirs_cost)):
        mine = ours_cost.get((day, model), Decimal(0))
        theirs = theirs_cost.get((day, model), Decimal(0))
        ours_tok, theirs_tok = tokens(ours_usage, day, model), tokens(theirs_usage, day, model)
        costs.append({
            "day": day, "model": model, "midway_usd": _usd(mine), "anthropic_usd": _usd(theirs),
            "difference_usd": _usd(theirs - mine), "midway_tokens": ours_tok,
            "anthropic_tokens": theirs_tok,
            "cause": _cost_cause(mine, theirs, ours_tok, theirs_tok,
                                 unpriced.get((day, model), 0), (day, model) in theirs_cost,
                                 (day, model) in ours_cost)})
    rows = []
    for key in sorted(set(ours_usage) | set(theirs_usage)):
        day, model, api_key = key
        empty = dict.fromkeys((*TOKEN_FIELDS, "web_search_requests"), 0)
        mine_t, theirs_t = ours_usage.get(key, empty), theirs_usage.get(key, empty)
        ours_tok = sum(mine_t[f] for f in TOKEN_FIELDS)
        theirs_tok = sum(theirs_t[f] for f in TOKEN_FIELDS)
        rows.append({"day": day, "model": model, "api_key": api_key,
                     "midway_tokens": ours_tok, "anthropic_tokens": theirs_tok,
                     "difference_tokens": theirs_tok - ours_tok,
                     "midway": mine_t, "anthropic": theirs_t,
                     "cause": _usage_cause(ours_tok, theirs_tok, api_key)})
    return {"costs": costs, "usage": rows}


def _usd(value: Decimal) -> str:
    return usd_str(int((value * PICO).to_integral_value()))


def _cost_cause(mine: Decimal, theirs: Decimal, ours_tok: int, theirs_tok: int,
                unpriced: int, in_theirs: bool, in_ours: bool) -> str:
    if abs(theirs - mine) <= COST_TOLERANCE:
        return "matches"
    if unpriced:
        return (f"unpriced model: midway recorded {unpriced} request(s) of it at $0 (add it to "
                "the price catalogue)")
    if not in_ours:
        return "not in midway's ledger: requests that bypassed the gateway"
    if not in_theirs:
        return ("not in Anthropic's report: served by another vendor or organisation, or not "
                "reported yet")
    if theirs_tok > ours_tok:
        return (f"requests that bypassed the gateway: Anthropic counted "
                f"{theirs_tok - ours_tok} more tokens")
    if ours_tok > theirs_tok:
        return (f"midway counted {ours_tok - theirs_tok} more tokens: requests billed "
                "elsewhere (another vendor or organisation) or not reported yet")
    return ("same tokens, different cost: a rate differs (a price change, or a modifier "
            "such as fast mode, inference_geo or a long-context tier)")


def _usage_cause(ours: int, theirs: int, api_key: str) -> str:
    if ours == theirs:
        return "matches"
    if api_key.startswith("midway:") and theirs == 0:
        return ("midway's key not mapped to an Anthropic API key id (--key "
                f"{api_key[7:]}=apikey_…)")
    if theirs > ours:
        return "requests that bypassed the gateway (or its key is not mapped with --key)"
    return "not in Anthropic's report: another vendor or organisation, or not reported yet"
