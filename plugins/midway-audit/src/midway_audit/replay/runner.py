"""Sending a session's requests again through midway's own pipeline, in this process.

The replay builds a midway instance from the given config (its router, its vendor
translation to Bedrock, Vertex or OpenAI-compatible upstreams, its other plugins), serves it
on an ephemeral loopback port and sends each recorded request to it. Where a request goes is
decided by that config alone: the replay talks to nothing but its own loopback instance, and
the instance to nothing but the config's upstreams. What the recording says about hosts (its
headers, the upstream it went to) is never used.

Credentials: the replayed requests carry a fresh midway key of this run, which the instance
maps to the principal ``replay`` and never forwards (a ``mw-`` key is never passed on); the
upstreams get the config's own keys (``[midway] upstream_api_key``, the router's ``keys``),
never the recorded client's (audit does not keep them anyway).

Left out of the instance: ``audit`` (replays are not the session's traffic), ``cache`` (an
answer from the cache is not the upstream's), ``billing`` (replays are nobody's spend: they are
priced with billing's catalogue instead), ``dashboard`` and ``otel``.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.metadata
import tempfile
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import orjson
from aiohttp import web

from midway import Exchange, Usage, hookimpl
from midway.assemble import MessageAssembler
from midway.config import ClientKey, ConfigError, Settings
from midway.errors import MidwayError
from midway.keys.tokens import new_secret
from midway.plugins import ENTRY_POINT_GROUP
from midway.secrets_ref import SecretError, resolve
from midway.server import build_app, build_midway
from midway.storage import stores_created
from midway_audit.replay.session import MESSAGES, ReplayRefused, Session, Turn

EXCLUDED_PLUGINS = ("audit", "billing", "cache", "dashboard", "otel")
DEFAULT_MAX_TURNS = 50
DEFAULT_TIMEOUT = 300.0  # seconds per turn
MAX_CONCURRENCY = 8
FINISH_WAIT = 10.0  # seconds post_response may take after an answer's last byte
MAX_ANSWER = 64 * 1024 * 1024  # bytes of one replayed answer read at most
# Recorded request headers never sent again: credentials (audit keeps none; a client could
# name one oddly), what the connection or a proxy in front set, midway's own controls (the
# project to bill, cache directives), and what aiohttp computes.
_DROP_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
    "upgrade", "trailer", "proxy-authorization", "proxy-connection", "x-api-key",
    "authorization", "cookie", "forwarded", "via", "accept-encoding", "traceparent",
    "tracestate"})
_DROP_PREFIXES = ("x-forwarded-", "x-real-", "x-midway-", "x-amz-", "x-goog-", "cf-")


@attrs.define
class Bounds:
    max_turns: int = DEFAULT_MAX_TURNS
    budget_usd: Decimal | None = None
    timeout: float = DEFAULT_TIMEOUT
    concurrency: int = 1


@attrs.define
class Replayed:
    """What one replayed turn got (``sent`` False: not sent, ``not_sent`` says why)."""

    sent: bool = True
    not_sent: str | None = None
    status: int | None = None
    answer: dict[str, Any] | None = None  # the message (a stream reassembled), or the error
    error: str | None = None
    request_id: str | None = None
    upstream: str | None = None
    model: str | None = None  # the answer's model
    usage: dict[str, Any] | None = None
    cost_usd: Decimal | None = None
    unpriced: bool = False
    latency_ms: float | None = None


class Pricing:
    """midway-billing's catalogue (with the config's ``[billing.prices]``) and its estimate:
    what turns cost, and what the next one may cost before it is sent."""

    def __init__(self, settings: Settings) -> None:
        from midway_billing import Billing, BillingConfig
        from midway_billing.pricing import to_pusd, usd

        # Not started: no store is opened, only the prices (and an installed catalogue file).
        self.billing = Billing(settings.options("billing", BillingConfig), None,
                               settings.data_dir)
        self.usd = usd  # picodollars -> dollars, and back
        self.pusd = to_pusd

    @classmethod
    def of(cls, settings: Settings) -> Pricing | None:
        try:
            return cls(settings)
        except ImportError:  # midway-billing is not installed: no costs
            return None

    def estimate(self, exchange: Exchange) -> int:
        return self.billing.estimate(exchange)

    def cost(self, exchange: Exchange) -> tuple[int, bool]:
        """What an answered exchange cost (picodollars), and whether its model is unpriced."""
        attempt = exchange.attempts[-1] if exchange.attempts else None
        cost = self.billing.cost_of(exchange, attempt)
        return cost.total, cost.unpriced

    def recorded(self, record: dict[str, Any]) -> Decimal | None:
        """A recorded request's cost: billing's, when it was there, else priced now."""
        if record.get("cost_usd") is not None:
            return Decimal(str(record["cost_usd"]))
        raw = record.get("usage")
        if not isinstance(raw, dict):
            return None
        usage = Usage()
        usage.update(raw)
        model = record.get("response_model") or record.get("model")
        return self.usd(self.billing.prices.cost(usage, model if isinstance(model, str) else
                                                 None).total)


class Observer:
    """The replay's own plugin in the instance: holds the budget before a request goes
    upstream (billing's estimate, as billing reserves it) and reads each finished exchange."""

    def __init__(self, pricing: Pricing | None, budget_usd: Decimal | None) -> None:
        self.pricing = pricing
        self.budget = None if budget_usd is None or pricing is None else \
            pricing.pusd(budget_usd)  # picodollars, as every amount here
        self.spent = 0
        self.costs: dict[str, tuple[int, bool]] = {}  # by exchange id: picodollars, unpriced
        self.held: dict[str, int] = {}
        self.over_budget: str | None = None
        self.refused: set[str] = set()  # requests the budget stopped before any upstream
        self.finished: dict[str, Exchange] = {}
        self._done: dict[str, asyncio.Event] = {}

    @hookimpl(tryfirst=True)
    def pre_request(self, exchange: Exchange) -> None:
        pricing = self.pricing
        if self.budget is None or pricing is None:
            return
        estimate = pricing.estimate(exchange)
        held = sum(self.held.values())
        if self.spent + held + estimate > self.budget:
            self.over_budget = (f"the next turn's estimate (${pricing.usd(estimate)}) would "
                                f"take the replay past its budget (${pricing.usd(self.budget)};"
                                f" spent ${pricing.usd(self.spent)})")
            self.refused.add(exchange.id)
            raise MidwayError(429, f"replay budget: {self.over_budget}")
        self.held[exchange.id] = estimate

    @hookimpl(trylast=True)
    def post_response(self, exchange: Exchange) -> None:
        self.held.pop(exchange.id, None)
        if self.pricing is not None and exchange.usage.seen:
            self.costs[exchange.id] = self.pricing.cost(exchange)
            self.spent += self.costs[exchange.id][0]
        self.finished[exchange.id] = exchange
        self._event(exchange.id).set()

    def _event(self, request_id: str) -> asyncio.Event:
        return self._done.setdefault(request_id, asyncio.Event())

    async def wait(self, request_id: str) -> Exchange | None:
        """The exchange once post_response ran for it (it may run just after the answer's last
        byte went out; a few seconds at most)."""
        try:
            async with asyncio.timeout(FINISH_WAIT):
                await self._event(request_id).wait()
        except TimeoutError:
            return None
        return self.finished.get(request_id)


def _router_upstreams(settings: Settings) -> list[dict[str, Any]]:
    table = settings.tables.get("router")
    upstreams = table.get("upstreams") if isinstance(table, dict) else None
    return [u for u in upstreams or () if isinstance(u, dict)]


def _has_credentials(spec: dict[str, Any]) -> bool:
    return bool(spec.get("keys") or spec.get("key") or spec.get("credentials") or
                spec.get("service_account"))


def _plugins(settings: Settings) -> list[str]:
    names = settings.plugins
    if names is None:
        names = sorted({ep.name for ep in
                        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})
    return [name for name in names if name not in EXCLUDED_PLUGINS]


def replay_settings(settings: Settings, upstream: str | None, data_dir: Path, token: str
                    ) -> Settings:
    """The settings of the replay's instance: ``settings`` on a loopback port of its own,
    with the replay's key as its only client key, without the plugins that record or answer
    (:data:`EXCLUDED_PLUGINS`), and, with ``upstream``, every request routed there.

    Raises :class:`ReplayRefused` when requests would reach an upstream without credentials
    of the config's own, or ``upstream`` is not one of the config's."""
    plugins = _plugins(settings)
    upstreams = _router_upstreams(settings) if "router" in plugins else []
    names = [str(u.get("name")) for u in upstreams]
    source = str(settings.config_path or "the config")
    tables = copy.deepcopy(settings.tables)
    tables.pop("keys", None)  # the replay's key is its only client key: no key store
    if upstream is not None:
        if upstream not in names:
            known = f" (its upstreams: {', '.join(names)})" if names else \
                " (it has no [[router.upstreams]], or midway-router is not enabled)"
            raise ReplayRefused(f"--upstream {upstream[:100]!r}: not an upstream of "
                                f"{source}{known}; --upstream takes a name, never a URL")
        spec = upstreams[names.index(upstream)]
        if not _has_credentials(spec):
            raise ReplayRefused(f"--upstream {upstream}: this upstream has no keys in {source} "
                                "(it passes the client's own credentials through), and a replay "
                                "sends the config's credentials only; give it keys")
        router = dict(tables["router"])
        for key in ("rules", "targets", "fallback", "model"):
            router.pop(key, None)
        router["target"] = upstream
        tables["router"] = router
    elif upstreams:
        for spec in upstreams:
            if not _has_credentials(spec):
                raise ReplayRefused(
                    f"upstream {spec.get('name')!r} of {source} has no keys (it passes the "
                    "client's own credentials through), and a replay sends the config's "
                    "credentials only: give it keys, or replay to one that has them with "
                    "--upstream NAME")
    elif not settings.upstream_api_key:
        raise ReplayRefused(f"{source} holds no upstream key for {settings.upstream}: a replay "
                            "sends the config's credentials only, never the recorded client's; "
                            "set [midway] upstream_api_key (or [[router.upstreams]] with keys)")
    else:
        try:
            resolve(settings.upstream_api_key)
        except SecretError as exc:
            raise ReplayRefused(f"{source}: [midway] upstream_api_key: {exc}") from None
    return attrs.evolve(
        settings, host="127.0.0.1", port=0, workers=1, access_log=False, allow_public=False,
        allowed_hosts=[], allowed_origins=[], data_dir=data_dir, plugins=plugins,
        client_keys=[ClientKey(key=token, name="replay")], tables=tables)


def replay_headers(turn: Turn) -> dict[str, str]:
    """The recorded request's headers to send again (see :data:`_DROP_HEADERS`)."""
    recorded = turn.record.get("request_headers")
    headers: dict[str, str] = {}
    for name, value in (recorded.items() if isinstance(recorded, dict) else ()):
        lower = str(name).lower()
        if lower in _DROP_HEADERS or lower.startswith(_DROP_PREFIXES) or \
                not isinstance(value, str):
            continue
        headers[lower] = value
    headers["content-type"] = "application/json"
    return headers


class Replay:
    """One replay run: the instance, the client, the bounds."""

    def __init__(self, settings: Settings, session: Session, bounds: Bounds,
                 upstream: str | None = None, model: str | None = None,
                 pricing: Pricing | None = None) -> None:
        self.settings = settings
        self.session = session
        self.bounds = bounds
        self.upstream = upstream
        self.model = model
        self.pricing = pricing
        self.observer = Observer(pricing, bounds.budget_usd)
        self.stopped: str | None = None
        self._token = new_secret()[1]
        # checked now: a refusal comes before anything starts
        replay_settings(settings, upstream, Path(tempfile.gettempdir()), self._token)

    async def run(self, progress: Callable[[Turn, Replayed], None] | None = None
                  ) -> list[Replayed]:
        with tempfile.TemporaryDirectory(prefix="midway-replay-") as tmp:
            settings = replay_settings(self.settings, self.upstream, Path(tmp), self._token)
            try:
                midway = build_midway(settings, [("replay", self.observer)])
                app = build_app(midway)
                runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                       shutdown_timeout=5)
                with stores_created(True):  # the instance's data dir is this temporary one
                    await runner.setup()
            except ConfigError as exc:  # the config's, in one line
                raise ReplayRefused(str(exc)) from None
            except SecretError as exc:
                raise ReplayRefused(f"{settings.config_path or 'the config'}: {exc}") from None
            try:
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                host, port = runner.addresses[0][:2]
                async with aiohttp.ClientSession(
                        f"http://{host}:{port}", timeout=aiohttp.ClientTimeout(total=None),
                        trust_env=False, cookie_jar=aiohttp.DummyCookieJar()) as client:
                    return await self._turns(client, progress)
            finally:
                await runner.cleanup()

    async def _turns(self, client: aiohttp.ClientSession,
                     progress: Callable[[Turn, Replayed], None] | None) -> list[Replayed]:
        turns = self.session.turns
        results: list[Replayed | None] = [None] * len(turns)
        gate = asyncio.Semaphore(self.bounds.concurrency)

        async def one(index: int, turn: Turn) -> None:
            async with gate:
                if self.stopped is not None:
                    results[index] = Replayed(sent=False, not_sent=self.stopped)
                else:
                    result = await self._send(client, turn)
                    if result.request_id in self.observer.refused:
                        self.stopped = f"budget: {self.observer.over_budget}"
                        result = Replayed(sent=False, not_sent=self.stopped)
                    results[index] = result
            done = results[index]
            if progress is not None and done is not None:
                progress(turn, done)

        await _gather([one(i, t) for i, t in enumerate(turns)])
        return [r if r is not None else Replayed(sent=False, not_sent="not reached")
                for r in results]

    async def _send(self, client: aiohttp.ClientSession, turn: Turn) -> Replayed:
        body = dict(turn.body)
        if self.model is not None:
            body["model"] = self.model
        headers = replay_headers(turn)
        headers["x-api-key"] = self._token
        path = MESSAGES + ("?beta=true" if turn.beta else "")
        started = time.monotonic()
        out = Replayed()
        try:
            async with asyncio.timeout(self.bounds.timeout):
                async with client.post(path, data=orjson.dumps(body), headers=headers) as resp:
                    out.status = resp.status
                    out.request_id = resp.headers.get("x-midway-request-id")
                    out.answer, out.error = await _read_answer(resp)
        except TimeoutError:
            out.error = f"no complete answer within {self.bounds.timeout:g} s (--timeout)"
        except aiohttp.ClientError as exc:
            out.error = f"{type(exc).__name__}: {exc}"
        out.latency_ms = round((time.monotonic() - started) * 1000, 1)
        exchange = await self.observer.wait(out.request_id) if out.request_id else None
        if exchange is not None:
            out.upstream = exchange.upstream.name if exchange.upstream is not None else None
            out.model = exchange.response_model
            out.usage = exchange.usage.as_dict() if exchange.usage.seen else None
            cost = self.observer.costs.get(exchange.id)
            if self.pricing is not None and cost is not None:
                out.cost_usd, out.unpriced = self.pricing.usd(cost[0]), cost[1]
            if out.status is None:
                out.status = exchange.status
        if out.model is None and out.answer is not None and \
                isinstance(out.answer.get("model"), str):
            out.model = out.answer["model"]
        return out


async def _gather(coros: list[Awaitable[None]]) -> None:
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def _read_answer(resp: aiohttp.ClientResponse) -> tuple[dict[str, Any] | None,
                                                                str | None]:
    """The answer: a stream reassembled into its message, or the JSON body; and an error
    (an ``error`` event, an error status's message, a stream cut short)."""
    if resp.content_type == "text/event-stream":
        assembler = MessageAssembler()
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > MAX_ANSWER:
                return assembler.message(), f"answer longer than {MAX_ANSWER} bytes: cut"
            assembler.feed_bytes(chunk)
        message = assembler.message()
        if assembler.error is not None:
            return message, _error_text(assembler.error)
        if not assembler.complete:
            return message, "the stream ended before message_stop"
        return message, None
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > MAX_ANSWER:
            return None, f"answer longer than {MAX_ANSWER} bytes: cut"
        parts.append(chunk)
    raw = b"".join(parts)
    try:
        value = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None, f"answer is not JSON ({len(raw)} bytes)"
    answer = value if isinstance(value, dict) else None
    if resp.status >= 400:
        return answer, _error_text(answer.get("error") if answer else None) or \
            f"HTTP {resp.status}"
    return answer, None


def _error_text(error: Any) -> str | None:
    if isinstance(error, dict):
        return f"{error.get('type')}: {str(error.get('message'))[:300]}"
    return None if error is None else str(error)[:300]
