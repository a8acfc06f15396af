"""Billing for one running midway: reserve, write ahead, settle, and answer reports."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
import orjson

from midway import Attempt, Exchange, MidwayError, Response, SSEEvent, Usage, error_body
from midway.annotations import BILLING, CACHE, CACHE_HITS, COST_USD
from midway.background import start_every
from midway.config import ConfigError
from midway.exchange import ErrorKind, Principal
from midway.observe import delta_text
from midway.storage import Episode, is_transient, retrying
from midway_billing import catalogue_file, spendlimits
from midway_billing.budgets import Attribution, Bucket, Check, checks_for, iso, window
from midway_billing.config import BillingConfig
from midway_billing.metrics import BillingMetrics
from midway_billing.pricing import (
    Catalogue,
    Cost,
    Modifiers,
    PriceError,
    pusd_per_token,
    to_pusd,
    usd_str,
)
from midway_billing.sessions import (
    TOKEN_FIELDS,
    UNSAID,
    Origin,
    agent_tree,
    clean_id,
    fingerprint,
    prefix_tokens,
    summary,
    tree_rows,
    turns_of,
)
from midway_billing.store import (
    GROUPS,
    LEDGER_COLUMNS,
    REPORT_INT_FIELDS,
    ZERO_DEFAULT_COLUMNS,
    Batch,
    Reservation,
    ReserveResult,
    Store,
    groups_column,
)
from midway_billing.streamwatch import StreamWatch, floor_tokens

log = logging.getLogger("midway.billing")

WARNING_HEADER = "x-midway-budget-warning"
WRITE_AHEAD_FAILED = ("midway could not record this request in its billing ledger before sending "
                      "it (the ledger's store is unreachable), so nothing was sent upstream; "
                      "retry shortly")
_MTOK = Decimal(10**6)
MAX_TOKENS_ESTIMATE = 10**7
# Attributions whose budget checks are remembered (then forgotten, and worked out again).
_CHECKS_KEPT = 10_000
_SERIES_BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}


# Shared by every exchange that has none: the state lasts as long as its answer streams,
# and an empty dict or list of its own costs 56-64 bytes.
_NONE: Mapping[str, Any] = MappingProxyType({})


# A ledger row's columns in order, as they stand until known (NULL; 0 for counts and flags):
# every row starts from this.
_ROW: dict[str, Any] = {c: 0 if c in ZERO_DEFAULT_COLUMNS else None for c in LEDGER_COLUMNS}
# The columns every row of an exchange takes from it (RequestState.common: their values).
_COMMON = ("exchange_id", "instance", "created_at", "principal", "principal_name", "team",
           "project", "model", "path", "batch", "speed", "betas", "groups")


@attrs.define
class RequestState:
    """Billing's private state of one exchange (``exchange.state["billing"]``)."""

    who: Attribution
    origin: Origin = attrs.field(factory=Origin)
    # hashes of the prompt's system, tools and first message (the cache-break detector's)
    prompt: Mapping[str, str | None] = _NONE
    reservation: Reservation | None = None
    refused: Check | spendlimits.Cap | None = None
    # a streamed answer's running usage and relayed text (a hard budget's stop, the floor)
    watch: StreamWatch | None = None
    warnings: tuple[str, ...] = ()
    # the spend limits' caps the reservation holds on, by bucket key
    caps: Mapping[str, spendlimits.Cap] = _NONE
    # the values of the _COMMON columns, the same in every ledger row of the exchange (taken
    # by the first: see _row); a tuple, not a row's dict, as it lasts as long as the answer
    common: tuple[Any, ...] | None = None


@attrs.frozen
class Settlement:
    """What settling one exchange writes: its final rows, and the cost that replaces its
    reservation on the budget counters."""

    exchange_id: str
    rows: list[dict[str, Any]]
    reservation: Reservation | None
    charged_pusd: int


def attribution(exchange: Exchange, project_header: str) -> Attribution:
    principal = exchange.principal
    project = principal.labels.get("project")
    if principal.allow_project_header:
        value = exchange.request.headers.get(project_header, "").strip()
        if value:
            project = value[:200]
    return Attribution(principal=principal.id, principal_name=principal.name,
                       team=principal.team, project=project,
                       ancestors=tuple(getattr(principal, "ancestors", ())),
                       groups=tuple(sorted(set(principal.groups))))


def project_refusal(exchange: Exchange, project_header: str) -> str | None:
    """Why the request may not bill to the project its header names: a key bound to a
    project (its ``project`` label) bills to that one only."""
    principal = exchange.principal
    own = principal.labels.get("project")
    value = exchange.request.headers.get(project_header, "").strip()
    if own is None or not value or value[:200] == own or not principal.allow_project_header:
        return None
    return (f"this key bills to project {own!r} and may not name project {value[:100]!r} in "
            f"{project_header}; leave the header out or use a key of that project")


class Billing:
    """The billing service of one midway instance (also ``midway.services["billing"]``)."""

    # How long shutdown waits for settlements the database has not taken yet.
    settle_grace = 10.0

    def __init__(self, config: BillingConfig, metrics: BillingMetrics | None = None,
                 data_dir: Path | None = None) -> None:
        self.config = config
        self.prices = config.price_table()
        self.prices_watch: catalogue_file.Watch | None = None
        if data_dir is not None:
            path = catalogue_file.catalogue_path(config.prices_file, data_dir)
            self.prices_watch = catalogue_file.Watch(path)
            try:
                installed = catalogue_file.read(path)
            except PriceError as exc:
                raise ConfigError(f"[billing] prices_file: {exc}; fix it, install a valid one "
                                  "with `midway billing prices update`, or remove it") from None
            if installed is not None:
                self.prices = config.price_table(installed)
        self.store: Store = config.make_store()
        self.metrics = metrics
        self._warned: set[str] = set()
        self._unknown_warned: set[str] = set()  # model ids billed at the unknown-model rule
        self._reconciler: asyncio.Task[None] | None = None
        self._price_watcher: asyncio.Task[None] | None = None
        self._settling: set[asyncio.Future[None]] = set()
        self._unsettled: dict[str, Settlement] = {}  # by exchange id, until written
        # Settlements the database refused for a while, written in order by one task.
        self._backlog: collections.deque[Settlement] = collections.deque()
        self._writer: asyncio.Task[None] | None = None
        self._outage = Episode(log, "billing: settling")
        # Spend limits: the table in force (reloaded from the store), principals whose
        # groups this process has recorded, and the store's outages as the check sees them.
        self.limits = spendlimits.LimitTable(group_mode=config.spend_limits_group_mode)
        self._noted: dict[str, str] = {}
        self._spend_outage = Episode(log, "billing: checking spend limits")
        self._write_ahead_outage = Episode(log, "billing: writing attempts ahead")
        self._limits_loader: asyncio.Task[None] | None = None
        self._checks: dict[tuple[Attribution, int], tuple[Check, ...]] = {}

    # -- life cycle --------------------------------------------------------------------------

    async def start(self, background: bool = True) -> None:
        await self.store.open()
        fixed = await self.store.reconcile()
        if fixed:
            log.warning("billing: reconciled %d ledger rows left pending by stopped instances",
                        fixed)
        if background and self.config.reconcile_interval > 0:
            # Other instances sharing the store may die while this one lives on.
            self._reconciler = start_every(self.config.reconcile_interval, self._reconcile,
                                           name="billing: reconciliation", log=log)
        if self.config.spend_limits:
            await self.reload_limits()
            if background:
                self._limits_loader = start_every(
                    self.config.spend_limits_refresh, self.reload_limits,
                    name="billing: spend limits", log=log)
        if background and self.prices_watch is not None and \
                self.config.prices_watch_interval > 0:
            self._price_watcher = start_every(self.config.prices_watch_interval,
                                              self.reload_prices, name="billing: prices file",
                                              log=log)

    async def stop(self) -> None:
        for task in (self._reconciler, self._price_watcher, self._limits_loader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.flush(self.settle_grace)
        if self._unsettled:
            log.error("billing: %d settlement(s) could not be written before shutdown: %s; "
                      "their rows stay pending until another instance reconciles them at "
                      "their estimate", len(self._unsettled), ", ".join(sorted(self._unsettled)))
        for left in [*self._settling, self._writer]:
            if left is not None:
                left.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await left
        await self.store.close()

    async def flush(self, within: float | None = None) -> bool:
        """Wait (up to ``within`` seconds) until every settlement begun is written; whether
        they all were."""
        loop = asyncio.get_running_loop()
        end = None if within is None else loop.time() + within
        while self._settling or (self._writer is not None and not self._writer.done()):
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                break
            waiting = {*self._settling, *([self._writer] if self._writer else [])}
            await asyncio.wait(waiting, timeout=left)
        return not self._unsettled

    def reload_prices(self) -> bool:
        """Swap to the watched catalogue file if it changed and is valid; whether it did."""
        catalogue = self.prices_watch.changed() if self.prices_watch is not None else None
        if catalogue is None:
            return False
        self.use_catalogue(catalogue)
        return True

    def use_catalogue(self, catalogue: Catalogue) -> None:
        """Price from now on with ``catalogue`` (and this config's overrides): requests that
        settle after this call, including those in flight, are priced by it."""
        before = self.prices.version
        self.prices = self.config.price_table(catalogue)
        log.warning("billing: prices now from catalogue version %s (was %s), %d models",
                    self.prices.version, before, len(self.prices.prices))

    @property
    def _fail_closed(self) -> bool:
        return self.config.spend_limits_on_store_error == "closed"

    async def reload_limits(self) -> None:
        """Read the spend limits from the store (changes other instances made)."""
        rows = await self.store.spend_limits()
        self.limits = spendlimits.LimitTable(
            (spendlimits.SpendLimit.from_row(r) for r in rows),
            group_mode=self.config.spend_limits_group_mode)

    async def usage(self, principal: Principal) -> dict[str, Any]:
        """What ``principal`` may see of their own spend limits (``GET /api/oauth/usage``):
        their caps in force (and those of the keys it derives from) against what was spent,
        read from the same counters the reservations hold on. Raises when the store does not
        answer within ``spend_limits_check_timeout``."""
        now = time.time()
        caps = [(cap.bucket(p.id).key, cap) for p in _lineage(principal)
                for cap in self.limits.caps(p, now)]
        # Without a cap, the person's own spend per period (the same buckets, unlimited).
        own = {period: self.limits.resolve(principal, period, now).bucket(principal.id).key
               for period in spendlimits.PERIODS}
        keys = sorted({key for key, _ in caps} | set(own.values()))
        try:
            states = await asyncio.wait_for(self.store.counters(keys),
                                            self.config.spend_limits_check_timeout)
        except Exception as exc:
            if is_transient(exc) or isinstance(exc, TimeoutError):
                self._spend_outage.failed(exc, "spend limits: cannot read a person's usage")
            raise
        self._spend_outage.ok()
        standings = [spendlimits.Standing(cap, states[key][0]) for key, cap in caps]
        spent = {period: states[key][0] for period, key in own.items()}
        return spendlimits.usage_body(standings, spent)

    async def _note(self, exchange: Exchange) -> None:
        """Record a principal's groups once per process and change (``/effective`` shows
        them); never fails the request."""
        principal = exchange.principal
        groups = groups_column(tuple(sorted(set(principal.groups)))) or ""
        if self._noted.get(principal.id) == groups or self._spend_outage.failures:
            return  # known already, or the store is away (the check will say so)
        try:
            await self.store.note_principal(principal.id, principal.name, groups,
                                            principal.kind, principal.subject)
        except Exception as exc:
            log.debug("billing: could not record %s's groups: %s", principal.id, exc)
            return
        if len(self._noted) > 100_000:
            self._noted.clear()
        self._noted[principal.id] = groups

    async def _reconcile(self) -> None:
        fixed = await self.store.reconcile()
        if fixed:
            log.warning("billing: reconciled %d rows of a stopped instance", fixed)

    # -- estimates and costs -----------------------------------------------------------------

    def estimate(self, exchange: Exchange) -> int:
        """What a request is reserved at: its input at the input rate (from the body size)
        plus ``min(max_tokens, reserve_output_tokens)`` at the output rate. Unpriced models use
        the table's highest rates. A batch: the sum of its requests' estimates at the batch
        price, with their full ``max_tokens`` (a batch is charged its estimate)."""
        if _is_batch_submit(exchange):
            return self.batch_estimate(exchange)
        return self._estimate(exchange.request.json, exchange.model,
                              len(exchange.request.body))

    def batch_estimate(self, exchange: Exchange) -> int:
        return sum(self.batch_estimates(exchange).values())

    def batch_estimates(self, exchange: Exchange) -> dict[str, int]:
        """Each request of a batch submit at the batch price with its full ``max_tokens``, by
        custom_id (the upstream refuses a batch whose custom_ids repeat; one that does, or
        that is not an id, is estimated under a key of its own all the same)."""
        body = exchange.request.json
        requests = body.get("requests") if isinstance(body, dict) else None
        out: dict[str, int] = {}
        for index, entry in enumerate(requests if isinstance(requests, list) else []):
            params = entry.get("params") if isinstance(entry, dict) else None
            if not isinstance(params, dict):
                continue
            model = params.get("model")
            model = model if isinstance(model, str) else None
            full = self._estimate(params, model, len(orjson.dumps(params)), capped=False)
            price = self.prices.lookup(model)
            discount = price.batch_discount if price else Decimal(0)
            custom_id = clean_id(entry.get("custom_id") if isinstance(
                entry.get("custom_id"), str) else None)
            key = custom_id if custom_id is not None and custom_id not in out else f"#{index}"
            out[key] = int(full * (1 - discount))
        return out

    def _estimate(self, body: Any, model: str | None, size: int, capped: bool = True) -> int:
        max_tokens = body.get("max_tokens") if isinstance(body, dict) else None
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
            max_tokens = 0
        # Beyond any model's limit the upstream refuses the request (400); the cap keeps an
        # absurd value from overflowing the store's 64-bit counters.
        max_tokens = min(max_tokens, MAX_TOKENS_ESTIMATE)
        if capped:  # a hard budget's stream is stopped where its hold runs out (StreamWatch)
            max_tokens = min(max_tokens, self.config.reserve_output_tokens)
        price = self.prices.lookup(model)
        rate_in, rate_out = (price.input, price.output) if price else self.prices.max_rates()
        input_tokens = math.ceil(size / self.config.bytes_per_token)
        whole_in, whole_out = pusd_per_token(rate_in), pusd_per_token(rate_out)
        if whole_in is not None and whole_out is not None:  # the same, exactly, and 7x faster
            return input_tokens * whole_in + max_tokens * whole_out
        return to_pusd((Decimal(input_tokens) * rate_in + Decimal(max_tokens) * rate_out)
                       / _MTOK)

    def cost_of(self, exchange: Exchange, attempt: Attempt | None,
                usage: Usage | None = None) -> Cost:
        """Priced by the model that served: a rewrite, the answer's model, else the request's;
        none of them listed: by the unknown-model rule, for the first of them."""
        usage = exchange.usage if usage is None else usage
        candidates = [m for m in (attempt.upstream.model if attempt else None,
                                  exchange.response_model, exchange.model) if m]
        modifiers = modifiers_of(exchange)
        for model in candidates:
            if self.prices.lookup(model) is not None:
                return self.prices.cost(usage, model, modifiers=modifiers)
        cost = self.prices.cost(usage, candidates[0] if candidates else None,
                                modifiers=modifiers)
        if candidates and usage.seen:
            self._warn_unknown(candidates[0], cost)
        return cost

    def _warn_unknown(self, model: str, cost: Cost) -> None:
        key = model[:200]
        if key in self._unknown_warned or len(self._unknown_warned) > 10_000:
            return
        self._unknown_warned.add(key)
        if cost.model is None:
            log.warning("billing: model %r is not in the price catalogue (version %s): its "
                        "requests are recorded at $0 and flagged unpriced; add "
                        "[billing.prices.%r] or update the catalogue", key,
                        self.prices.version, key)
        else:
            log.warning("billing: model %r is not in the price catalogue (version %s): billed "
                        "at the unknown-model rate ($%s / $%s per MTok in / out) and flagged "
                        "unpriced; add [billing.prices.%r] or update the catalogue", key,
                        self.prices.version, self.prices.unknown.input if self.prices.unknown
                        else "?", self.prices.unknown.output if self.prices.unknown else "?",
                        key)

    def unknown_models(self) -> list[str]:
        """Model ids this instance billed by the unknown-model rule (warned about once)."""
        return sorted(self._unknown_warned)

    def pricing(self) -> dict[str, Any]:
        """The catalogue in force and how unknown models are billed (for the dashboard)."""
        unknown = self.prices.unknown
        return {"version": self.prices.version, "models": len(self.prices.prices),
                "unknown_rule": (f"${unknown.input} / ${unknown.output} per MTok in / out"
                                 if unknown is not None else "$0"),
                "unknown_models": self.unknown_models()}

    def billed_usage(self, exchange: Exchange, state: RequestState) -> tuple[Usage, str, int]:
        """The usage an attempt is billed: what the upstream reported, and for a stream that
        ended early the floor of its relayed text (docs/billing.md, "Interrupted streams");
        the rule that adds, and the floor in output tokens."""
        usage = exchange.usage
        if not exchange.streaming or exchange.complete or state.watch is None:
            return usage, "", 0
        floor = floor_tokens(exchange.streamed_text)
        if floor <= usage.output_tokens:
            return usage, "interrupted", floor
        billed = Usage()
        billed.update(usage.raw)
        billed.update({"output_tokens": floor})
        return billed, "interrupted;floor", floor

    # -- hooks -------------------------------------------------------------------------------

    def _state(self, exchange: Exchange) -> RequestState:
        state = exchange.state.get("billing")
        if not isinstance(state, RequestState):
            origin = Origin.of(exchange)
            state = RequestState(attribution(exchange, self.config.project_header), origin,
                                 _prompt_fingerprint(exchange) if origin.session_id else _NONE)
            exchange.state["billing"] = state
        return state

    async def pre_request(self, exchange: Exchange) -> Response | None:
        refusal = project_refusal(exchange, self.config.project_header)
        if refusal is not None:
            return Response(status=403, body=error_body(403, refusal, exchange.id,
                                                        "permission_error"))
        state = self._state(exchange)
        if exchange.request.is_messages and exchange.stream_requested:
            # Counts the output text relayed: the floor if the stream ends early.
            state.watch = StreamWatch({}, exchange.model)
        batch_id = _batch_id(exchange)
        if batch_id is not None:
            batch = await self.store.batch(batch_id)
            if batch is not None and state.who.principal not in batch.owners:
                # As the upstream answers for a batch that is not the caller's to see.
                return Response(status=404, body=error_body(
                    404, f"message batch {batch_id!r} not found", exchange.id,
                    "not_found_error"))
        # Message batches count too: a batch is no way around a cap.
        spend = self.config.spend_limits and (exchange.request.is_messages
                                              or _is_batch_submit(exchange))
        if spend:
            # The upstream's shared-quota headers are not this person's: theirs replace them.
            exchange.drop_response_headers = (*exchange.drop_response_headers,
                                              spendlimits.HEADER_PREFIX)
            await self._note(exchange)
        if not (self.config.budgets or spend) or not (exchange.request.is_messages
                                                     or _is_batch_submit(exchange)):
            return None
        now = time.time()
        checks = self._checks_for(state.who, now)
        # A derived key spends within its own caps and within each ancestor key's: deriving
        # keys never multiplies what a capped key may spend.
        caps = [(cap.bucket(p.id).key, cap) for p in _lineage(exchange.principal)
                for cap in self.limits.caps(p, now)] if spend else []
        if not checks and not caps:
            return None
        limits: dict[str, int | None] = {}
        for check in checks:
            _merge(limits, check.bucket.key, check.budget.limit_pusd if check.budget.hard
                   else None)
        cap_keys = dict(caps)
        for key, cap in cap_keys.items():
            _merge(limits, key, cap.limit_pusd)
        amount = self.estimate(exchange)
        reservation = Reservation(exchange.id, amount, sorted(limits), now)
        try:
            if caps:  # a store that does not answer is one that is away
                result = await asyncio.wait_for(self.store.reserve(reservation, limits),
                                                self.config.spend_limits_check_timeout)
            else:
                result = await self.store.reserve(reservation, limits)
        except Exception as exc:
            # The hold may have been committed with its reply lost (the database went away
            # at that moment): the request's settlement releases it, if it exists.
            state.reservation = reservation
            if not caps or not (is_transient(exc) or isinstance(exc, TimeoutError)):
                raise
            self._spend_outage.failed(exc, "spend limits: " + (
                "refusing capped requests (spend_limits_on_store_error = closed)"
                if self._fail_closed else "letting requests through unchecked "
                "(spend_limits_on_store_error = open)"))
            # state.reservation stays: a hold that landed unseen is released by the
            # settlement, and the counters get the request's real cost (failing open).
            if self._fail_closed:
                return spendlimits.unavailable(exchange)
            return None
        self._spend_outage.ok()
        if not result.admitted:
            return self._refuse(exchange, state, checks, cap_keys, result, amount, now)
        state.reservation = reservation
        state.caps = cap_keys
        hard = any(check.budget.hard for check in checks) or bool(caps)
        if hard and state.watch is not None:
            state.watch.guard(limits)
            state.watch.modifiers = modifiers_of(exchange)  # once, not per event
            # Every delta is shown to on_chunk until the first usage event sets the mark.
            exchange.streamed_text_mark = -1
        for check in checks:
            spent, reserved = result.states[check.bucket.key]
            if spent + reserved >= check.budget.limit_pusd * check.budget.warn_at:
                self._warn(exchange, check, spent, reserved, state)
        if cap_keys:
            standing = spendlimits.binding([
                spendlimits.Standing(cap, result.states[key][0])
                for key, cap in cap_keys.items()])
            assert standing is not None
            exchange.extra_response_headers.update(spendlimits.unified_headers(standing, now))
        return None

    def _checks_for(self, who: Attribution, now: float) -> tuple[Check, ...]:
        """``checks_for`` the budgets, remembered per attribution and UTC day: every budget
        window starts at a UTC midnight, so a request's checks change only with who it bills
        to and the day (the budgets are fixed with the config)."""
        key = (who, int(now // 86400))
        checks = self._checks.get(key)
        if checks is None:
            if len(self._checks) >= _CHECKS_KEPT:
                self._checks.clear()
            checks = self._checks[key] = tuple(checks_for(self.config.budgets, who, now))
        return checks

    def _refuse(self, exchange: Exchange, state: RequestState, checks: Sequence[Check],
                cap_keys: dict[str, spendlimits.Cap], result: ReserveResult, amount: int,
                now: float) -> Response:
        """The answer to a request the reservation refused: a spend limit's (billing_error)
        when one would be passed, else the strictest hard budget's."""
        over = [spendlimits.Standing(cap, result.states[key][0])
                for key, cap in cap_keys.items()
                if cap.limit_pusd is not None
                and sum(result.states[key]) + amount > cap.limit_pusd]
        if over:
            # The cap to name: one already used up (the latest to reset), else the fullest.
            standing = spendlimits.binding(over)
            assert standing is not None
            state.refused = standing.cap
            if self.metrics is not None:
                self.metrics.refusals.labels(f"spend limit {standing.cap.period}").inc()
            log.warning("billing: refused %s for %s: spend limit reached (%s, %s %s, cap "
                        "%s cents)", exchange.id, exchange.principal.id, standing.cap.period,
                        standing.cap.scope_type, standing.cap.scope_id, standing.cap.amount)
            return spendlimits.refusal(exchange, standing, now)
        refused = min((c for c in checks if c.bucket.key == result.refused_key
                       and c.budget.hard), key=lambda c: c.budget.limit_pusd)
        state.refused = refused
        return self._refusal(exchange, refused, result.states[refused.bucket.key], amount, now)

    def _refusal(self, exchange: Exchange, check: Check, counter: tuple[int, int],
                 amount: int, now: float) -> Response:
        budget = check.budget
        spent, reserved = counter
        resets = f"it resets at {iso(check.reset)}" if check.reset else \
            "it is a total budget and does not reset"
        message = (f"budget {budget.name!r} ({budget.scope} {check.bucket.value!r}, "
                   f"{budget.period}) would be exceeded: ${usd_str(spent)} spent and "
                   f"${usd_str(reserved)} reserved of ${usd_str(budget.limit_pusd)}, and this "
                   f"request would reserve ${usd_str(amount)}; {resets}. To fix: raise the "
                   f"budget's limit, or lower max_tokens or [billing] reserve_output_tokens "
                   f"(now {self.config.reserve_output_tokens}), which cap the reservation")
        headers = {"x-should-retry": "false", WARNING_HEADER: f"{budget.name} exhausted"}
        if check.reset:
            headers["retry-after"] = str(max(1, math.ceil(check.reset - now)))
        if self.metrics is not None:
            self.metrics.refusals.labels(budget.name).inc()
        log.warning("billing: refused %s for %s: %s", exchange.id, exchange.principal.id,
                    message)
        return Response(status=429, body=error_body(429, message, exchange.id,
                                                    "rate_limit_error"), headers=headers)

    def _warn(self, exchange: Exchange, check: Check, spent: int, reserved: int,
              state: RequestState) -> None:
        budget = check.budget
        text = (f"{budget.name}: ${usd_str(spent + reserved)} of ${usd_str(budget.limit_pusd)}"
                f" ({'hard' if budget.hard else 'soft'})")
        state.warnings = (*state.warnings, text)
        # Forwarded answers carry it (the core merges these headers); log it once per bucket.
        exchange.extra_response_headers[WARNING_HEADER] = "; ".join(state.warnings)
        if self.metrics is not None:
            self.metrics.warnings.labels(budget.name).inc()
        if check.bucket.key not in self._warned:  # once per bucket and process, not per call
            self._warned.add(check.bucket.key)
            log.warning("billing: budget %r for %s %r at %s", budget.name, budget.scope,
                        check.bucket.value, text)

    def on_chunk(self, exchange: Exchange, event: SSEEvent) -> Awaitable[None] | None:
        """Under a hard budget: once a stream's running cost and the next event's (expected
        to cost what this one did) pass its reservation, grow the reservation within what
        the budgets have left, or end the stream here (the awaitable raises MidwayError).
        Nothing to await while the reservation covers them."""
        state = exchange.state.get("billing")
        if not isinstance(state, RequestState) or state.watch is None or \
                state.reservation is None or not state.watch.hard:
            return None
        watch, prices, reservation = state.watch, self.prices, state.reservation
        # The deltas the core relayed unseen (below the mark) come first.
        streamed = exchange.streamed_text
        watch.catch_up(streamed - delta_text(event.json()) if event.name ==
                       "content_block_delta" else streamed, prices)
        if not watch.feed(event):
            return None
        cost = watch.running_cost(prices)
        step = watch.step(cost)
        if cost + step <= reservation.amount_pusd:
            exchange.streamed_text_mark = watch.mark(prices, reservation.amount_pusd, streamed)
            return None
        return self._grow(exchange, reservation, watch, cost, step)

    async def _grow(self, exchange: Exchange, reservation: Reservation, watch: StreamWatch,
                    cost: int, step: int) -> None:
        need = cost + step - reservation.amount_pusd
        # Doubling the hold: a long answer costs a few writes, not one per event.
        if await self.store.extend(reservation, need, max(need, reservation.amount_pusd),
                                   watch.limits):
            exchange.streamed_text_mark = watch.mark(self.prices, reservation.amount_pusd,
                                                     exchange.streamed_text)
            return
        # The event that passed the hold is not relayed, but the upstream produced it.
        exchange.usage.update(watch.running().raw)
        state = exchange.state.get("billing")
        caps = state.caps if isinstance(state, RequestState) else {}
        full = [cap for key, cap in caps.items() if cap.limit_pusd is not None and
                watch.limits.get(key) == cap.limit_pusd]
        if full:
            cap = max(full, key=lambda c: c.reset)
            message = (f"{spendlimits.refusal_message(cap)} while streaming this answer: it "
                       f"had cost ${usd_str(cost)}; the answer is cut here")
            log.warning("billing: cut the stream of %s for %s: %s", exchange.id,
                        exchange.principal.id, message)
            raise MidwayError(429, message, "billing_error")
        message = (f"a hard budget ran out while streaming this answer: it had cost "
                   f"${usd_str(cost)}, past the ${usd_str(reservation.amount_pusd)} its "
                   f"budgets could hold for it (see `midway billing budgets`); the answer "
                   f"is cut here")
        log.warning("billing: cut the stream of %s for %s: %s", exchange.id,
                    exchange.principal.id, message)
        raise MidwayError(429, message, "rate_limit_error")

    async def upstream_request(self, exchange: Exchange, attempt: Attempt) -> None:
        state = self._state(exchange)
        row = self._row(exchange, state, attempt.id, attempt.number, "attempt", "pending")
        row.update(upstream=attempt.upstream.name, key_id=attempt.upstream.key_id,
                   model=attempt.upstream.model or exchange.model)
        try:
            await self.store.write_ahead(row, state.reservation)
        except Exception as exc:
            if not is_transient(exc):
                raise  # a bug: the core's plugin failure (500), logged with its traceback
            if self.config.spend_limits and not self._fail_closed:
                # Failing open (spend limits on, store away): the request goes on, and its
                # settlement waits in the backlog until the store takes it.
                self._spend_outage.failed(exc, "spend limits: letting requests through "
                                          "unchecked (spend_limits_on_store_error = open)")
                return
            # Nothing is sent that the ledger could not know of; the client is told why, and
            # may retry (the log has a line when the outage starts and one when it ends).
            self._write_ahead_outage.failed(exc, "requests are refused (503) meanwhile")
            exchange.fail(ErrorKind.PLUGIN_FAILED, "billing: its store is unreachable")
            raise MidwayError(503, WRITE_AHEAD_FAILED, kind=ErrorKind.PLUGIN_FAILED) from None
        if self._write_ahead_outage.failures:
            self._write_ahead_outage.ok()

    def post_response(self, exchange: Exchange) -> Awaitable[None] | None:
        """Settle the exchange. The settlement is written by a task of its own (``settle``:
        shutdown waits for it), which the request does not wait for: the answer is sent, and
        the connection may go on with its next request while it lands (with that request's
        first unit, on SQLite). Batches are awaited: their rows are read back at once."""
        settlement = self._settlement(exchange)
        if settlement is None:
            return None
        opened = self._opened_batch(exchange)
        if opened is not None:
            return asyncio.shield(self.store.open_batch(opened, settlement.rows,
                                                        settlement.reservation))
        written = self.settle(settlement)
        batch_id = _batch_id(exchange)
        if batch_id is not None and exchange.request.path.endswith("/results") and \
                exchange.status == 200 and exchange.response_body:
            return self._settle_results(written, exchange, batch_id)
        return None

    async def _settle_results(self, written: asyncio.Future[None], exchange: Exchange,
                              batch_id: str) -> None:
        await asyncio.shield(written)
        await asyncio.shield(self._price_results(exchange, batch_id))

    # -- batches -----------------------------------------------------------------------------

    def _opened_batch(self, exchange: Exchange) -> Batch | None:
        """The batch a submit created (its answer names it), else None."""
        if not _is_batch_submit(exchange) or exchange.status is None or \
                exchange.status >= 300 or not exchange.response_body:
            return None
        try:
            answer = orjson.loads(exchange.response_body)
        except orjson.JSONDecodeError:
            return None
        batch_id = clean_id(answer.get("id")) if isinstance(answer, dict) and \
            isinstance(answer.get("id"), str) else None
        if batch_id is None:
            log.warning("billing: batch submit %s answered without a batch id; its results "
                        "will be priced when fetched, with no hold", exchange.id)
            return None
        state = self._state(exchange)
        # The submit's anthropic-beta header applies to every request in it (beta-gated tiers).
        return Batch(batch_id, exchange.id, exchange.timings.started_at, state.who.principal,
                     (state.who.principal, *state.who.ancestors),
                     {**self._attribution_columns(state), "betas": _betas(exchange)},
                     self.batch_estimates(exchange))

    @staticmethod
    def _attribution_columns(state: RequestState) -> dict[str, Any]:
        who = state.who
        return {"principal": who.principal, "principal_name": who.principal_name,
                "team": who.team, "project": who.project,
                "groups": groups_column(who.groups), **state.origin.columns()}

    async def _price_results(self, exchange: Exchange, batch_id: str) -> None:
        """Price each result of a results file (JSONL: ``result.message.usage``) at the batch
        discount, billed to whoever submitted the batch; results other than ``succeeded``
        cost nothing (the upstream does not bill them)."""
        batch = await self.store.batch(batch_id)
        state = self._state(exchange)
        base = batch.attribution if batch is not None else self._attribution_columns(state)
        created = batch.created_at if batch is not None else exchange.timings.started_at
        body = exchange.response_body or b""
        complete = not exchange.response_body_truncated and not exchange.upstream_cut_short
        lines = body.split(b"\n")
        if not complete:
            lines = lines[:-1]  # the last line may be cut: priced when fetched whole
        now = time.time()
        rows = []
        for line in lines:
            row = self._result_row(line, batch_id, batch, exchange, base, created, now)
            if row is not None:
                rows.append(row)
        # A batch midway did not see submitted counts on the fetcher's budgets as it stands.
        buckets = None if batch is not None else sorted(
            {c.bucket.key for c in checks_for(self.config.budgets, state.who, created)})
        charged = await self.store.settle_batch(batch_id if batch else None, rows, complete,
                                                buckets)
        exchange.annotations.setdefault(BILLING, {})["batch_results_usd"] = usd_str(charged)
        if not complete:
            log.warning("billing: the results of batch %s were cut short (%s); %d result(s) "
                        "priced, the rest stays held until they are fetched whole", batch_id,
                        "over the relay's buffer" if exchange.response_body_truncated
                        else "the upstream ended early", len(rows))

    def _result_row(self, line: bytes, batch_id: str, batch: Batch | None,
                    exchange: Exchange, base: dict[str, Any], created: float, now: float
                    ) -> dict[str, Any] | None:
        if not line.strip():
            return None
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(item, dict) or not isinstance(item.get("result"), dict):
            return None
        custom_id = clean_id(item["custom_id"]) if isinstance(item.get("custom_id"), str) \
            else None
        if custom_id is None:
            return None
        result = item["result"]
        message = result.get("message") if result.get("type") == "succeeded" else None
        usage = Usage()
        model = None
        if isinstance(message, dict):
            if isinstance(message.get("usage"), dict):
                usage.update(message["usage"])
            model = message.get("model") if isinstance(message.get("model"), str) else None
        geo = usage.raw.get("inference_geo")
        geo = geo[:20].lower() if isinstance(geo, str) else None
        betas = base.get("betas") if isinstance(base.get("betas"), str) else None
        modifiers = Modifiers(batch=True, geo=geo, at=created, betas=betas_of(betas))
        cost = self.prices.cost(usage, model, modifiers=modifiers) if message is not None \
            else Cost(model=None, version=self.prices.version)
        if message is not None and cost.unpriced and model:
            self._warn_unknown(model, cost)
        row: dict[str, Any] = {"upstream": None, "key_id": None}
        row.update(base)
        row.update(
            id=f"{batch_id}:{custom_id}", custom_id=custom_id,
            exchange_id=batch.exchange_id if batch else exchange.id, attempt=0,
            kind="batch_result", state="settled", instance=self.store.instance,
            created_at=created, settled_at=now, model=model, priced_model=cost.model,
            path=exchange.request.path, status=200 if message is not None else None,
            error=None if message is not None else str(result.get("type"))[:40],
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cache_write_5m_tokens=usage.cache_creation_5m_input_tokens,
            cache_write_1h_tokens=usage.cache_creation_1h_input_tokens,
            cache_read_tokens=usage.cache_read_input_tokens,
            web_search_requests=usage.web_search_requests, cost_pusd=cost.total,
            saved_pusd=0, unpriced=int(message is not None and cost.unpriced), batch=1,
            catalogue_version=cost.version or self.prices.version,
            pricing_rule=cost.rule if message is not None else None, speed=None,
            inference_geo=geo, betas=betas, corrects=None)
        return row

    def settle(self, settlement: Settlement) -> asyncio.Future[None]:
        """Write ``settlement`` (the store's unit is queued at once; stop() waits for it): a
        cancelled post_response (the core's hook_timeout, a handler cancelled by a client that
        hung up) must never leave a pending row or a held reservation for an attempt that
        finished. The future is done once it is written, or queued for the writer task (the
        database briefly away); it raises what went wrong otherwise."""
        self._unsettled[settlement.exchange_id] = settlement
        if self._backlog:  # after the others: the database is away for them too
            self._to_backlog(settlement)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        # A future and a callback, not a task: a task and its coroutines cost several times
        # what writing the settlement does.
        try:
            landing = self.store.settle(settlement.rows, settlement.reservation,
                                        settlement.charged_pusd)
        except Exception as exc:  # as if the unit had failed
            landing = asyncio.get_running_loop().create_future()
            landing.set_exception(exc)
        # landing's loop is the running one (get_running_loop is a getpid system call on
        # Python 3.11, and this runs for every request)
        done = landing.get_loop().create_future()
        self._settling.add(landing)
        landing.add_done_callback(functools.partial(self._landed, settlement, done))
        return done

    def _landed(self, settlement: Settlement, done: asyncio.Future[None],
                landing: asyncio.Future[None]) -> None:
        self._settling.discard(landing)
        if landing.cancelled():  # by stop(): the settlement stays unsettled, and is named
            done.cancel()
            return
        exc = landing.exception()
        if exc is None:
            self._unsettled.pop(settlement.exchange_id, None)
            done.set_result(None)
        elif is_transient(exc):
            self._outage.failed(exc, "retrying in the background until it lands")
            self._to_backlog(settlement)
            done.set_result(None)
        else:
            self._unsettled.pop(settlement.exchange_id, None)
            log.error("billing: a settlement could not be written: %s", exc, exc_info=exc)
            done.set_exception(exc)
            done.exception()  # logged just now: not again when nobody awaits it

    def _to_backlog(self, settlement: Settlement) -> None:
        self._backlog.append(settlement)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_backlog())

    async def _write_backlog(self) -> None:
        while self._backlog:
            settlement = self._backlog[0]
            try:
                await retrying(
                    lambda s=settlement: self.store.settle(  # type: ignore[misc]
                        s.rows, s.reservation, s.charged_pusd),
                    what=f"billing: settling {settlement.exchange_id}", log=log,
                    deadline=math.inf, episode=self._outage)
            except Exception:
                log.exception("billing: could not settle %s", settlement.exchange_id)
            self._backlog.popleft()
            self._unsettled.pop(settlement.exchange_id, None)

    def _settlement(self, exchange: Exchange) -> Settlement | None:
        """The rows that settle ``exchange``; annotates it with its cost (audit and others read
        that in their post_response, whether or not the ledger has it yet)."""
        if not exchange.attempts and not exchange.answered_by and \
                "billing" not in exchange.state:
            # Refused before billing saw it (no credentials, bad body): nothing was spent or
            # saved, and a flood of such requests must not grow the ledger.
            exchange.annotations[COST_USD] = "0"
            return None
        state = self._state(exchange)
        now = time.time()
        who = state.who  # attrs.asdict's fields, written out (it costs ~10 µs a request)
        annotation: dict[str, Any] = {
            "principal": who.principal, "principal_name": who.principal_name,
            "team": who.team, "project": who.project, "ancestors": who.ancestors}
        if not exchange.attempts:
            kind = self._local_kind(exchange, state)
            cost = self.cost_of(exchange, None) if exchange.usage.seen else Cost(model=None)
            saved = cost.total if kind == "cache_hit" else 0
            row = self._row(exchange, state, f"{exchange.id}.0", 0, kind, "settled")
            self._fill(row, exchange, cost, now, cost_pusd=0, saved_pusd=saved)
            row["unpriced"] = int(kind == "cache_hit" and cost.unpriced)
            settlement = Settlement(exchange.id, [row], state.reservation, 0)
            annotation.update(kind=kind, cost_usd="0", saved_usd=usd_str(saved),
                              model=cost.model)
            exchange.annotations[COST_USD] = "0"
            if saved and self.metrics is not None:
                self.metrics.saved.labels(state.who.team or "", cost.model or "").inc(
                    float(usd_str(saved)))
        else:
            rows = []
            final = exchange.attempts[-1]
            billed, extra_rule, floor = self.billed_usage(exchange, state)
            cost = self.cost_of(exchange, final, billed)
            if extra_rule:
                cost = attrs.evolve(cost, rule=f"{cost.rule};{extra_rule}")
            for attempt in exchange.attempts:
                row = self._row(exchange, state, attempt.id, attempt.number, "attempt",
                                "settled")
                row.update(upstream=attempt.upstream.name, key_id=attempt.upstream.key_id,
                           model=attempt.upstream.model or exchange.model)
                if attempt is final:
                    self._fill(row, exchange, cost, now, cost_pusd=cost.total, saved_pusd=0)
                    row["unpriced"] = int(cost.unpriced and exchange.usage.seen)
                    row["floor_output_tokens"] = floor
                else:  # a retried attempt's answer was dropped: it is recorded, at $0
                    row.update(status=attempt.status, settled_at=now,
                               error=attempt.error or "retried")
                rows.append(row)
            settlement = Settlement(exchange.id, rows, state.reservation, cost.total)
            cost_usd = usd_str(cost.total)
            annotation.update(kind="attempt", cost_usd=cost_usd, saved_usd="0",
                              model=cost.model, breakdown=cost.breakdown(),
                              attempts=len(exchange.attempts), rule=cost.rule,
                              catalogue_version=cost.version)
            exchange.annotations[COST_USD] = cost_usd
            self._count(exchange, state, cost, cost_usd)
        annotation["unpriced"] = bool(cost.unpriced and exchange.usage.seen)
        if state.reservation is not None:
            annotation["reserved_usd"] = usd_str(state.reservation.amount_pusd)
        if state.warnings:
            annotation["budget_warnings"] = list(state.warnings)
        exchange.annotations[BILLING] = annotation
        return settlement

    def _local_kind(self, exchange: Exchange, state: RequestState) -> str:
        if state.refused is not None:
            return "refused"
        if exchange.answered_by and exchange.annotations.get(CACHE) in CACHE_HITS:
            return "cache_hit"
        return "answered" if exchange.answered_by else "failed"

    def _count(self, exchange: Exchange, state: RequestState, cost: Cost, cost_usd: str
               ) -> None:
        if self.metrics is None:
            return
        if cost.unpriced and exchange.usage.seen:
            price = self.prices.lookup(exchange.model)
            label = self.metrics.unpriced_label(exchange.model,
                                                price.model if price is not None else None)
            self.metrics.unpriced.labels(label).inc()
        if cost.total:
            self.metrics.spent(state.who.team or "", cost.model or "", float(cost_usd))

    def _row(self, exchange: Exchange, state: RequestState, row_id: str, number: int,
             kind: str, row_state: str) -> dict[str, Any]:
        common = state.common
        if common is None:  # the same for each attempt's row, ahead and settled
            who = state.who
            common = state.common = (
                exchange.id, self.store.instance, exchange.timings.started_at, who.principal,
                who.principal_name, who.team, who.project, exchange.model,
                exchange.request.path, int(_is_batch(exchange)), _speed(exchange),
                _betas(exchange), groups_column(who.groups))
        row = _ROW.copy()
        row.update(zip(_COMMON, common, strict=True))
        if state.origin is not UNSAID:  # else the template's NULLs already
            row.update(state.origin.columns())
        row.update(state.prompt)
        row.update(id=row_id, attempt=number, kind=kind, state=row_state,
                   catalogue_version=self.prices.version, inference_geo=_geo(exchange))
        return row

    @staticmethod
    def _fill(row: dict[str, Any], exchange: Exchange, cost: Cost, now: float,
              cost_pusd: int, saved_pusd: int) -> None:
        usage = exchange.usage
        row.update(
            settled_at=now, status=exchange.status, error=exchange.error,
            priced_model=cost.model, input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_write_5m_tokens=usage.cache_creation_5m_input_tokens,
            cache_write_1h_tokens=usage.cache_creation_1h_input_tokens,
            cache_read_tokens=usage.cache_read_input_tokens,
            web_search_requests=usage.web_search_requests,
            cost_pusd=cost_pusd, saved_pusd=saved_pusd, pricing_rule=cost.rule,
            catalogue_version=cost.version or row["catalogue_version"])

    # -- the service other plugins and the CLI use ------------------------------------------

    async def report(self, by: str, since: float | None = None, until: float | None = None
                     ) -> list[dict[str, Any]]:
        """Totals grouped ``by`` principal | team | project | model | session | day."""
        if by != "day" and by not in GROUPS:
            raise ValueError(f"cannot report by {by!r}")
        out = []
        for row in await self.store.report(by, _ts(since), _ts(until)):
            item: dict[str, Any] = {by: row["key"]}
            item.update({f: int(row[f] or 0) for f in REPORT_INT_FIELDS})
            item["cost_usd"] = usd_str(int(row["cost_pusd"] or 0))
            item["saved_usd"] = usd_str(int(row["saved_pusd"] or 0))
            out.append(item)
        return out

    async def reprice(self, since: float | None, until: float | None = None,
                      apply: bool = True) -> dict[str, Any]:
        """Price the settled attempts of a period again with the prices in force, and record
        each difference as a correction row (kind ``reprice``, ``corrects`` = the row's id,
        dated like it), leaving every original row as it was (docs/billing.md, "Repricing").
        A batch's results are priced again at the batch discount; the attempts that submit or
        read batches are left alone (they carry no usage: their cost is their results').
        ``apply=False`` computes without writing. What changed, row by row."""
        rows, done = await self.store.repriceable(_ts(since), _ts(until))
        now = time.time()
        changes: list[dict[str, Any]] = []
        corrections: list[dict[str, Any]] = []
        skipped = 0
        for row in rows:
            if row["batch"] and row["kind"] == "attempt":
                skipped += 1
                continue
            if row["kind"] == "batch_result" and row["error"] is not None:
                continue  # an errored, cancelled or expired result: never billed
            corrected, count = done.get(row["id"], (0, 0))
            current = int(row["cost_pusd"]) + corrected
            cost = self.price_row(row)
            delta = cost.total - current
            if delta == 0:
                continue
            changes.append({"id": row["id"], "model": row["model"],
                            "created_at": iso(float(row["created_at"])),
                            "was_usd": usd_str(current), "now_usd": usd_str(cost.total),
                            "delta_usd": usd_str(delta),
                            "was_version": row["catalogue_version"],
                            "now_version": cost.version, "rule": cost.rule})
            corrections.append({
                **row, "id": f"{row['id']}~{count + 1}", "kind": "reprice",
                "state": "settled", "instance": self.store.instance, "settled_at": now,
                "priced_model": cost.model, "input_tokens": 0, "output_tokens": 0,
                "cache_write_5m_tokens": 0, "cache_write_1h_tokens": 0,
                "cache_read_tokens": 0, "web_search_requests": 0, "cost_pusd": delta,
                "saved_pusd": 0, "unpriced": 0, "floor_output_tokens": 0,
                "catalogue_version": cost.version, "pricing_rule": f"reprice;{cost.rule}",
                "corrects": row["id"], "error": None})
        if apply and corrections:
            await self.store.add_corrections(corrections)
        total = sum(int(c["cost_pusd"]) for c in corrections)
        return {"version": self.prices.version, "rows": len(rows), "changed": len(changes),
                "skipped_batch": skipped, "delta_usd": usd_str(total), "applied": apply,
                "changes": changes}

    def price_row(self, row: dict[str, Any]) -> Cost:
        """What a settled attempt row costs with the prices in force (from the usage, the
        floor and the modifiers it recorded)."""
        usage = Usage()
        five, hour = int(row["cache_write_5m_tokens"]), int(row["cache_write_1h_tokens"])
        floor = int(row.get("floor_output_tokens") or 0)
        output = int(row["output_tokens"])
        usage.update({"input_tokens": int(row["input_tokens"]),
                      "output_tokens": max(output, floor),
                      "cache_creation_input_tokens": five + hour,
                      "cache_creation": {"ephemeral_5m_input_tokens": five,
                                         "ephemeral_1h_input_tokens": hour},
                      "cache_read_input_tokens": int(row["cache_read_tokens"]),
                      "server_tool_use": {"web_search_requests":
                                          int(row["web_search_requests"])}})
        modifiers = Modifiers(batch=bool(row["batch"]), speed=row.get("speed"),
                              geo=row.get("inference_geo"), at=float(row["created_at"]),
                              betas=betas_of(row.get("betas")))
        candidates = [m for m in (row["model"], row["priced_model"])
                      if m and m != "unknown_model"]
        model = next((m for m in candidates if self.prices.lookup(m) is not None),
                     candidates[0] if candidates else None)
        cost = self.prices.cost(usage, model, modifiers=modifiers)
        rule = row.get("pricing_rule") or ""
        if "interrupted" in rule.split(";"):
            cost = attrs.evolve(cost, rule=cost.rule + (";interrupted;floor" if floor > output
                                                        else ";interrupted"))
        return cost

    async def agents(self, since: float | None = None, until: float | None = None,
                     top: int | None = None) -> list[dict[str, Any]]:
        """Per Claude Code session, its subagent tree depth first: each agent's own cost and
        its subtree's (``(main)``: the session's own thread; session None: requests that
        named none). ``top``: the costliest sessions only."""
        rows = await self.store.agent_totals(_ts(since), _ts(until), top)
        return [{"session_id": n["session_id"], "agent_id": n["agent_id"],
                 "parent_agent_id": n["parent_agent_id"], "depth": n["depth"],
                 "requests": n["requests"], "own_cost_usd": usd_str(n["own_pusd"]),
                 "subtree_cost_usd": usd_str(n["subtree_pusd"])} for n in agent_tree(rows)]

    async def sessions(self, since: float | None = None, until: float | None = None,
                       limit: int = 100, principal: str | None = None,
                       team: str | None = None) -> list[dict[str, Any]]:
        """The latest Claude Code sessions begun in a period, newest first: who, when, how
        long, turns, agents, tokens, cost, the share of the prompt read from the cache, and
        errors (requests without an answer). ``principal`` / ``team``: only their requests."""
        rows = await self.store.session_list(_ts(since), _ts(until), max(1, int(limit)),
                                             principal, team)
        out = []
        for row in rows:
            item: dict[str, Any] = {k: row[k] for k in ("session_id", "principal",
                                                        "principal_name", "team")}
            tokens = {f: int(row[f] or 0) for f in TOKEN_FIELDS}
            prompt = tokens["input_tokens"] + tokens["cache_read_tokens"] + \
                tokens["cache_write_5m_tokens"] + tokens["cache_write_1h_tokens"]
            started, ended = float(row["started_at"]), float(row["ended_at"])
            item.update(principals=int(row["principals"]), started_at=iso(started),
                        duration_s=round(ended - started, 3), turns=int(row["turns"]),
                        agents=int(row["agents"]), **tokens,
                        cost_usd=usd_str(int(row["cost_pusd"] or 0)),
                        cache_read_share=_share(tokens["cache_read_tokens"], prompt),
                        errors=int(row["turns"]) - int(row["ok_turns"]))
            out.append(item)
        return out

    async def session(self, session_id: str, principal: str | None = None,
                      team: str | None = None, max_rows: int = 5000) -> dict[str, Any] | None:
        """One Claude Code session: its totals, its turns in order (each with tokens, cost,
        its agent, and ``cache_break``: where prompt caching broke and the likely cause), and
        its subagent tree with each agent's own cost. None: no such session (of
        ``principal`` / ``team``). At most ``max_rows`` ledger rows are read
        (``truncated``)."""
        rows = await self.store.session_rows(session_id, max_rows + 1, principal, team)
        if not rows:
            return None
        truncated = len(rows) > max_rows
        turns = turns_of([dict(r) for r in rows[:max_rows]])
        total = summary(turns)
        started = float(total["started_at"])
        prompt = sum(total[f] for f in ("input_tokens", "cache_read_tokens",
                                        "cache_write_5m_tokens", "cache_write_1h_tokens"))
        head = {k: total[k] for k in ("principal", "principals", "principal_name", "team",
                                      "turns", "agents", "errors", "cache_breaks",
                                      *TOKEN_FIELDS)}
        agents = [{"agent_id": n["agent_id"], "parent_agent_id": n["parent_agent_id"],
                   "depth": n["depth"], "requests": n["requests"],
                   "own_cost_usd": usd_str(n["own_pusd"]),
                   "subtree_cost_usd": usd_str(n["subtree_pusd"])}
                  for n in agent_tree(tree_rows(session_id, turns))]
        shown = []
        for number, turn in enumerate(turns, 1):
            item = {k: v for k, v in turn.items() if k not in ("cost_pusd", "created_at",
                                                               "ended_at")}
            item.update(turn=number, started_at=iso(turn["created_at"]),
                        offset_s=round(turn["created_at"] - started, 3),
                        duration_s=round(turn["ended_at"] - turn["created_at"], 3),
                        cost_usd=usd_str(turn["cost_pusd"]),
                        cache_read_share=_share(turn["cache_read_tokens"],
                                                prefix_tokens(turn)))
            shown.append(item)
        return {"session_id": session_id, **head, "started_at": iso(started),
                "duration_s": round(float(total["ended_at"]) - started, 3),
                "cost_usd": usd_str(total["cost_pusd"]),
                "cache_read_share": _share(total["cache_read_tokens"], prompt),
                "subagents": agents, "timeline": shown, "truncated": truncated}

    async def spend_series(self, bucket: str = "hour", by: str = "team",
                           since: float | None = None) -> list[dict[str, Any]]:
        """Spend per time bucket and key: ``[{"t", "key", "cost_usd"}]``, oldest first."""
        if bucket not in _SERIES_BUCKETS or by not in GROUPS:
            raise ValueError(f"unknown bucket {bucket!r} or grouping {by!r}")
        rows = await self.store.spend_series(_SERIES_BUCKETS[bucket], by, _ts(since))
        return [{"t": iso(t), "key": key, "cost_usd": usd_str(cost)} for t, key, cost in rows]

    async def batches(self, held_only: bool = False, limit: int = 100
                      ) -> list[dict[str, Any]]:
        """Message Batches submitted through midway, newest first: who submitted each, what it
        still holds on the budgets, what its results were charged so far."""
        out = []
        for row in await self.store.batches(held_only, limit):
            who = orjson.loads(row["attribution"])
            out.append({
                "batch_id": row["batch_id"], "submitted_at": iso(float(row["created_at"])),
                "principal": row["principal"], "principal_name": who.get("principal_name"),
                "team": who.get("team"), "held_usd": usd_str(int(row["held_pusd"])),
                "charged_usd": usd_str(int(row["charged_pusd"])), "results": row["results"],
                "ended": bool(row["ended"]),
                "released_at": iso(row["released_at"]) if row["released_at"] else None,
                "released_by": row["released_by"]})
        return out

    async def release_batch(self, batch_id: str, actor: str) -> str | None:
        """Release what a batch still holds on the budgets (see ``Store.release_batch``):
        the amount released, in USD (None: midway saw no such batch submitted)."""
        before = await self.store.release_batch(batch_id, actor, time.time())
        if before is None:
            return None
        released = int(before["held_pusd"])
        if released:
            log.warning("billing: %s released the $%s batch %s held on its budgets", actor,
                        usd_str(released), batch_id)
        return usd_str(released)

    async def budgets(self) -> list[dict[str, Any]]:
        """Every budget with spent, reserved, remaining and reset time, per bucket in force."""
        now = time.time()
        counters = await self.store.all_counters()
        out = []
        for budget in self.config.budgets:
            start, reset = window(budget.period, now)
            found = []
            for key, (spent, reserved) in counters.items():
                scope, value, period, begin = key.split("\x1f")
                if scope == budget.scope and period == budget.period and \
                        float(begin) == start and budget.match in ("*", value):
                    found.append((value, spent, reserved))
            if not found and budget.match != "*":
                key = Bucket(budget.scope, budget.match, budget.period, start).key
                spent, reserved = (await self.store.counters([key]))[key]
                found.append((budget.match, spent, reserved))
            if not found:
                found.append(("*", 0, 0))
            for value, spent, reserved in sorted(found):
                out.append({
                    "name": budget.name, "scope": budget.scope, "value": value,
                    "period": budget.period, "mode": "hard" if budget.hard else "soft",
                    "limit_usd": usd_str(budget.limit_pusd), "spent_usd": usd_str(spent),
                    "reserved_usd": usd_str(reserved),
                    "remaining_usd": usd_str(max(0, budget.limit_pusd - spent - reserved)),
                    "window_start": iso(start) if budget.period != "total" else None,
                    "resets_at": iso(reset)})
        return out


def _prompt_fingerprint(exchange: Exchange) -> Mapping[str, str | None]:
    """Of Messages requests only (a session's: the caller checks): no other row is a turn."""
    request = exchange.request
    if not request.is_messages or request.path.endswith("count_tokens"):
        return _NONE
    return fingerprint(request.json)


def _lineage(principal: Principal) -> list[Principal]:
    """The principal, then the keys it was derived from (same groups, their own ids)."""
    return [principal, *(attrs.evolve(principal, id=a, kind="key", subject=None, ancestors=())
                         for a in principal.ancestors)]


def _merge(limits: dict[str, int | None], key: str, limit: int | None) -> None:
    """Add a bucket's limit (None: counted, not limited); the lowest of several wins."""
    if key not in limits:
        limits[key] = limit
        return
    old = limits[key]
    limits[key] = limit if old is None else old if limit is None else min(old, limit)


def modifiers_of(exchange: Exchange) -> Modifiers:
    """What changes an exchange's price besides its usage and model."""
    return Modifiers(batch=_is_batch(exchange), speed=_speed(exchange), geo=_geo(exchange),
                     at=exchange.timings.started_at, betas=betas_of(_betas(exchange)))


_NO_BETAS: frozenset[str] = frozenset()


def betas_of(header: str | None) -> frozenset[str]:
    if not header:  # most requests
        return _NO_BETAS
    return frozenset(b.strip() for b in header.split(",") if b.strip())


def _betas(exchange: Exchange) -> str | None:
    """The request's ``anthropic-beta`` header (some tiers apply only under a beta), cut to a
    size a ledger row may hold."""
    value = exchange.request.headers.get("anthropic-beta")
    return value[:1000] if value else None


def _speed(exchange: Exchange) -> str | None:
    speed = exchange.request.field("speed") if exchange.request.is_messages else None
    return speed[:20] if isinstance(speed, str) else None


def _geo(exchange: Exchange) -> str | None:
    """Where the answer says it was served (``usage.inference_geo``), else what was asked."""
    geo = exchange.usage.raw.get("inference_geo")
    if not isinstance(geo, str):
        geo = exchange.request.field("inference_geo") if exchange.request.is_messages else None
    return geo[:20].lower() if isinstance(geo, str) else None


def _is_batch_submit(exchange: Exchange) -> bool:
    return exchange.request.method == "POST" and \
        exchange.request.path.rstrip("/") == "/v1/messages/batches"


def _is_batch(exchange: Exchange) -> bool:
    return exchange.request.path.startswith("/v1/messages/batches")


def _batch_id(exchange: Exchange) -> str | None:
    """The batch a ``/v1/messages/batches/{id}[/results|/cancel]`` request names."""
    path = exchange.request.path
    if "/batches/" not in path:  # as in every path that names one; most name none
        return None
    parts = path.strip("/").split("/")
    if len(parts) >= 4 and parts[:3] == ["v1", "messages", "batches"]:
        return clean_id(parts[3])
    return None


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _ts(value: Any) -> float | None:
    """Accept unix seconds or a datetime."""
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value)
