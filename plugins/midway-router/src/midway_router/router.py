"""The routing decision: rule → ordered targets → a healthy key with headroom; and the
judgement of each attempt: record rate limits, rest or disable keys, fail over, retry."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import math
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from midway import MidwayError, Retry, Upstream
from midway.annotations import ROUTE, UPSTREAM_KEY
from midway.background import start_every
from midway.exchange import STREAM_FAILURES, Attempt, Exchange
from midway.services import ServiceKey
from midway_router import pool, shared
from midway_router.affinity import AffinityMap
from midway_router.budget import RetryBudget
from midway_router.metrics import RouterMetrics
from midway_router.pool import KeyState, UpstreamState
from midway_router.ratelimit import exhausted_until, read_limits, retry_after
from midway_router.rules import Facts, RuleTable, background_pattern
from midway_router.settings import RouterSettings, RuleSpec, TargetSpec

if TYPE_CHECKING:
    from midway_router.status import SnapshotWriter

log = logging.getLogger("midway.router")

STATE = "router"  # this plugin's slot in ``exchange.state``
# How often minted tokens are checked (each is renewed once it has < 5 minutes left).
TOKEN_CHECK_EVERY = 30.0
META = "router_key"  # the KeyState an Upstream was chosen with, in ``Upstream.meta``
# Requests whose 401/403 says something about the key: inference, whatever the client's path
# names elsewhere (an admin route, a file of another workspace) says nothing about it.
INFERENCE = frozenset({("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"),
                       ("POST", "/v1/messages/batches"), ("POST", "/v1/complete")})
ADMIN_API = "/v1/organizations"  # Anthropic's admin API: an admin key's business, not a pool's
KEY_ERRORS = {401: "authentication_error", 403: "permission_error"}


class RequestState:
    """One request's routing: made once, when its first upstream is chosen (a plain class,
    built with positional arguments: attrs' keyword ``__init__`` cost a dict per request)."""

    __slots__ = ("admin", "facts", "failed", "held", "inference", "judged", "retries", "rule",
                 "scoped_out", "session", "tried")

    def __init__(self, rule: RuleSpec, facts: Facts, session: str | None,
                 inference: bool = False, admin: bool = False) -> None:
        self.rule = rule
        self.facts = facts
        self.session = session
        self.failed: set[str] = set()  # upstreams that failed this request
        self.tried: set[int] = set()  # ids of keys refused for this request
        self.held: list[KeyState] = []  # keys whose in-flight count we hold
        self.judged: set[int] = set()  # attempt numbers already judged
        self.retries = 0
        self.scoped_out: set[str] = set()  # upstreams the principal may not use
        # a 401/403 to this request may speak of the key (INFERENCE)
        self.inference = inference
        self.admin = admin  # the path is Anthropic's admin API


class Router:
    """One instance's router: the plugin's whole per-instance state, published as
    ``midway.services[ROUTER]`` at start-up (the dashboard reads :meth:`status`)."""

    def __init__(self, settings: RouterSettings, metrics: RouterMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.upstreams: dict[str, UpstreamState] = {
            spec.name: pool.build(spec) for spec in settings.upstreams}
        # whether the router routes at all (read by every request hook; upstreams are fixed)
        self.active = bool(self.upstreams)
        self._by_fp: dict[tuple[str, str | None], KeyState] = {
            (name, key.fp): key for name, up in self.upstreams.items() for key in up.keys}
        self.rules = RuleTable(settings.routing_rules())
        # An attempt that reads the parsed body anyway (a vendor's adapter translates it, or
        # the model is rewritten): the rules read it through the exchange, parsed once.
        self._keep_body = any(
            key.adapter is not None or up.spec.models
            for up in self.upstreams.values() for key in up.keys) or any(
            target.model is not None for rule, _ in self.rules.rules
            for target in (*rule.targets, *rule.fallback))
        self.background = background_pattern(settings.background_models)
        # Key picking weighs each request's input tokens only where a pool has a choice.
        self._count_tokens = any(len(up.keys) > 1 for up in self.upstreams.values())
        # Estimated first, when wanted at all: a body it has to parse then gives the rules
        # their facts from the same parse.
        self._estimate = self._count_tokens or any(
            rule.match.min_input_tokens is not None or rule.match.max_input_tokens is not None
            for rule, _ in self.rules.rules)
        self.affinity = AffinityMap(settings.affinity_ttl, settings.affinity_max)
        self.budget = RetryBudget(settings.retry_ratio, settings.min_retries_per_second)
        self.shared: shared.MemoryState | shared.RedisState = shared.make(
            settings.state, settings.state_prefix)
        self.snapshots: SnapshotWriter | None = None  # set at start-up when routing
        self._token_task: asyncio.Task[None] | None = None
        if metrics is not None:
            metrics.watch_keys(self.status)

    # -- minted credentials (Vertex AI's Google access tokens) -------------------------------

    def token_adapters(self) -> list[Any]:
        """The adapters whose credential is a token minted by midway (Vertex's)."""
        return [key.adapter for up in self.upstreams.values() for key in up.keys
                if getattr(key.adapter, "name", None) == "vertex"]

    async def start_tokens(self) -> None:
        """Mint every token now, then renew each before it expires, in the background (no
        request waits for one). A token endpoint that fails at start-up is logged and tried
        again; requests to that upstream get a 503 naming why until it answers."""
        adapters = self.token_adapters()
        if not adapters:
            return
        results = await asyncio.gather(*(a.refresh() for a in adapters), return_exceptions=True)
        for adapter, result in zip(adapters, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("%r: could not mint a Google access token (trying again every "
                            "%g s): %s", adapter, TOKEN_CHECK_EVERY, adapter.last_error)

        async def renew() -> None:
            due = [a for a in adapters if a.due()]
            await asyncio.gather(*(a.refresh() for a in due))

        self._token_task = start_every(TOKEN_CHECK_EVERY, renew, log=log,
                                       name="router: renewing Google access tokens")

    def stop_tokens(self) -> None:
        if self._token_task is not None:
            self._token_task.cancel()
            self._token_task = None

    # -- choosing ----------------------------------------------------------------------------

    def _state(self, exchange: Exchange) -> RequestState:
        st: RequestState | None = exchange.state.get(STATE)
        if st is None:
            s = self.settings
            facts = Facts(exchange, self.background, self._keep_body, self._estimate)
            rule = self.rules.select(facts)
            assert rule is not None  # the default rule matches everything
            session = None
            if s.affinity == "session":
                session = exchange.request.headers.get(s.affinity_header)
            elif s.affinity == "principal":
                session = exchange.principal.id
            request = exchange.request
            path = request.path
            st = RequestState(rule, facts, session, (request.method, path) in INFERENCE,
                              path == ADMIN_API or path.startswith(ADMIN_API + "/"))
            allowed = exchange.principal.upstreams
            if allowed:
                # Upstreams this client key may not use are out of the running from the start.
                st.scoped_out = {name for name in self.upstreams if name not in allowed}
                st.failed.update(st.scoped_out)
            exchange.state[STATE] = st
        return st

    def choose(self, exchange: Exchange) -> Upstream | None:
        if not self.upstreams:
            return None
        st = self._state(exchange)
        now = time.time()
        picked = self._pick(st, now)
        if picked is None:
            raise self._refusal(st, now)
        target, key = picked
        if st.admin and key.fp is not None and not st.rule.admin_api:
            self._count_refusal(403)
            raise MidwayError(403, f"{ADMIN_API}/... (Anthropic's admin API) is not forwarded "
                              "with pooled keys; a [[router.rules]] entry with admin_api = true "
                              "allows it")
        if st.session is not None:
            self.affinity.set(st.session, key.upstream.spec.name, key.fp, now)
        spec = key.upstream.spec
        exchange.annotations[ROUTE] = st.rule.name
        exchange.annotations[UPSTREAM_KEY] = key.fp
        if self.metrics is not None:
            self.metrics.count_routed(st.rule.name, spec.name)
        model = target.model or None
        if model is None and spec.models:  # read the body's model only for a vendor's map
            model = _vendor_model(spec.models, st.facts.model)
        # positional: a keyword call to an attrs class builds a dict of them first
        return Upstream(spec.url, spec.name, key.headers, key.fp is None, key.adapter, key.fp,
                        model, {META: key})

    def _targets(self, rule: RuleSpec) -> Sequence[TargetSpec]:
        """The rule's targets in the order to try them: balanced primaries, then fallbacks."""
        if len(rule.targets) < 2:  # nothing to balance
            return rule.targets + rule.fallback if rule.fallback else rule.targets
        primary = list(rule.targets)
        ups = self.upstreams
        if rule.balance == "weighted":
            # Weighted order without replacement (Efraimidis–Spirakis).
            primary.sort(key=lambda t: random.random() ** (1.0 / w) if (
                w := self._weight(t)) > 0 else -1.0, reverse=True)
        elif rule.balance == "least-busy":
            primary.sort(key=lambda t: (ups[t.upstream].in_flight /
                                        max(self._weight(t), 1e-9), random.random()))
        return [*primary, *rule.fallback] if rule.fallback else primary

    def _weight(self, target: TargetSpec) -> float:
        if target.weight is not None:
            return target.weight
        return self.upstreams[target.upstream].spec.weight

    def _pick(self, st: RequestState, now: float) -> tuple[TargetSpec, KeyState] | None:
        targets = self._targets(st.rule)
        if st.session is not None:
            pinned = self.affinity.get(st.session, now)
            if pinned is not None:
                key = self._by_fp.get(pinned)
                if key is not None and key.usable(now) and key.upstream.up(now) and \
                        id(key) not in st.tried and pinned[0] not in st.failed:
                    for target in targets:
                        if target.upstream == pinned[0]:
                            return target, key
        # Upstreams that are down are a last resort, tried only when nothing else is left.
        for last_resort in (False, True):
            for target in targets:
                if target.upstream in st.failed:
                    continue
                up = self.upstreams[target.upstream]
                if up.up(now) == last_resort:
                    continue
                key = up.pick(st.facts.input_tokens if self._count_tokens else 0, now,
                              st.tried)
                if key is not None:
                    return target, key
        return None

    def _refusal(self, st: RequestState, now: float) -> MidwayError:
        """Why no key can take this request, in Anthropic's words."""
        route = {t.upstream for t in (*st.rule.targets, *st.rule.fallback)}
        if route <= st.scoped_out:
            self._count_refusal(403)
            return MidwayError(403, "this key may not use any upstream of this route")
        names = route - st.failed
        keys = [k for name in names for k in self.upstreams[name].keys]
        resting = [k for k in keys if k.disabled_until <= now]
        if resting:
            wait = max(1, math.ceil(min(k.resting_until for k in resting) - now))
            headers = {"retry-after": str(wait)}
            # Rests an overloaded upstream caused are answered as what they are, an overload
            # (529), not a quota the client ran out of (429).
            rests = [k.rest_status for k in resting if k.resting_until > now]
            if rests and all(status == 529 for status in rests):
                self._count_refusal(529)
                return MidwayError(529, f"every upstream for this route is overloaded; retry "
                                   f"in {wait} s", headers=headers)
            self._count_refusal(429)
            return MidwayError(429, f"every API key for this route is rate limited; retry in "
                               f"{wait} s", headers=headers)
        if keys:
            self._count_refusal(503)
            return MidwayError(503, "no API key for this route is usable: every key was taken "
                               "out of rotation after an authentication failure")
        self._count_refusal(502)
        return MidwayError(502, "every upstream for this route failed")

    def _count_refusal(self, status: int) -> None:
        if self.metrics is not None:
            self.metrics.refused.labels(str(status)).inc()

    # -- attempts ----------------------------------------------------------------------------

    def sent(self, exchange: Exchange, attempt: Attempt) -> None:
        key = attempt.upstream.meta.get(META)
        st: RequestState | None = exchange.state.get(STATE)
        if key is None or st is None:
            return
        if attempt.number == 1:
            self.budget.request(time.time())
        # tokens sent since the last report weigh a key against the others of its pool only
        key.sent(st.facts.input_tokens if self._count_tokens else 0)
        st.held.append(key)

    def judge(self, exchange: Exchange, attempt: Attempt) -> Retry | None:
        key: KeyState | None = attempt.upstream.meta.get(META)
        st: RequestState | None = exchange.state.get(STATE)
        if key is None or st is None:
            return None
        st.judged.add(attempt.number)
        now = time.time()
        reason = self._record(key, attempt, st, now)
        if reason is None or st.retries >= self.settings.max_retries:
            return None
        # A rate-limited request is retried even with nowhere to go: choose_upstream then
        # answers 429 with the pool's true retry-after instead of this key's.
        elsewhere = self._pick(st, now) is not None
        if not elsewhere and reason != "rate_limited":
            return None
        if not self.budget.try_retry(now):
            return None
        st.retries += 1
        self._release(st, key)
        if self.metrics is not None:
            self.metrics.retries.labels(reason).inc()
        if not elsewhere:
            return Retry(delay=0.0, reason=reason)
        ceiling = min(self.settings.backoff_max,
                      self.settings.backoff_base * 2 ** (st.retries - 1))
        return Retry(delay=random.uniform(ceiling / 2, ceiling), reason=reason)

    def finish(self, exchange: Exchange) -> None:
        """post_response: judge attempts the core did not ask about, release in-flight."""
        st: RequestState | None = exchange.state.get(STATE)
        if st is None:
            return
        now = time.time()
        for attempt in exchange.attempts:
            key = attempt.upstream.meta.get(META)
            if key is not None and attempt.number not in st.judged:
                st.judged.add(attempt.number)
                self._record(key, attempt, st, now)
        final = exchange.final_attempt
        if final is not None and final.status is not None and \
                exchange.error_kind in STREAM_FAILURES:
            key = final.upstream.meta.get(META)
            if key is not None:
                self._mark_down(key.upstream, now, "stream broke")
        for key in st.held:  # every hold left (each a count of its own)
            key.in_flight -= 1
        st.held.clear()

    def _release(self, st: RequestState, key: KeyState) -> None:
        if key in st.held:
            st.held.remove(key)
            key.in_flight -= 1

    def _record(self, key: KeyState, attempt: Attempt, st: RequestState, now: float
                ) -> str | None:
        """Learn from one attempt; the reason to look elsewhere, or ``None`` if it is fine."""
        up = key.upstream
        name = up.spec.name
        if attempt.status is None:
            st.failed.add(name)
            up.failures += 1
            self._mark_down(up, now, attempt.error or "unreachable")
            return "unreachable"
        headers = attempt.headers if attempt.headers is not None else {}
        key.report(read_limits(headers))
        status = attempt.status
        if key.fp is None:
            # The client's own credentials: its limits and errors are its own business.
            if status < 500:
                return None
            st.failed.add(name)
            return "server_error"
        if status in (429, 529):
            st.tried.add(id(key))
            self._rest(key, headers, now, status)
            if status == 529:
                st.failed.add(name)
                return "overloaded"
            return "rate_limited"
        if status in (401, 403):
            st.tried.add(id(key))
            if not _speaks_of_key(st, status, attempt.body):
                return None  # the client's request was refused, not the key
            key.disabled_until = now + self.settings.disable_for
            key.disabled_reason = f"upstream answered {status}"
            log.warning("router: key %s of upstream %s answered %d; out of rotation for %.0f s",
                        key.fp, name, status, self.settings.disable_for)
            if self.metrics is not None:
                self.metrics.disabled.labels(name).inc()
            self._share_key(key)
            return "auth"
        if status >= 500:
            st.failed.add(name)
            up.errors_5xx += 1
            if up.errors_5xx >= self.settings.down_after_5xx:
                self._mark_down(up, now, f"{up.errors_5xx} answers of 5xx in a row")
            return "server_error"
        key.strikes = 0
        up.failures = 0
        up.errors_5xx = 0
        return None

    def _rest(self, key: KeyState, headers: Any, now: float, status: int) -> None:
        s = self.settings
        hint = retry_after(headers, now)
        if hint is None:
            until = exhausted_until(key.limits, now)
            hint = until - now if until is not None else None
        if hint is None or key.strikes > 0:
            # No word from the server, or it is still refusing right after a rest: back off
            # further each time.
            rest = max(hint or 0.0, s.rest_base * 2 ** key.strikes)
        else:
            rest = hint
        rest = min(rest, s.rest_max)
        key.resting_until = max(key.resting_until, now + rest)
        key.rest_status = status
        key.strikes += 1
        key.rests += 1
        log.info("router: key %s of upstream %s answered %d; resting %.1f s", key.fp,
                 key.upstream.spec.name, status, rest)
        if self.metrics is not None:
            self.metrics.rests.labels(key.upstream.spec.name).inc()
        self._share_key(key)

    def _mark_down(self, up: UpstreamState, now: float, why: str) -> None:
        s = self.settings
        span = min(s.down_max, s.down_base * 2 ** max(0, up.failures - 1))
        up.down_until = max(up.down_until, now + span)
        log.warning("router: upstream %s is down for %.0f s (%s)", up.spec.name, span, why)
        if self.metrics is not None:
            self.metrics.down.labels(up.spec.name).inc()
        self.shared.publish({"k": "up", "upstream": up.spec.name,
                             "down_until": up.down_until, "failures": up.failures})

    def _share_key(self, key: KeyState) -> None:
        self.shared.publish({"k": "key", "upstream": key.upstream.spec.name, "fp": key.fp,
                             "resting_until": key.resting_until, "strikes": key.strikes,
                             "rest_status": key.rest_status,
                             "disabled_until": key.disabled_until,
                             "reason": key.disabled_reason})

    def apply(self, event: dict[str, Any]) -> None:
        """A health change from another instance (or from Redis at start-up)."""
        if event.get("k") == "up":
            up = self.upstreams.get(str(event.get("upstream")))
            if up is not None:
                up.down_until = max(up.down_until, float(event.get("down_until") or 0))
            return
        key = self._by_fp.get((str(event.get("upstream")), event.get("fp")))
        if key is None:
            return
        resting_until = float(event.get("resting_until") or 0)
        if resting_until > key.resting_until:
            key.resting_until = resting_until
            key.rest_status = 529 if event.get("rest_status") == 529 else 429
        key.strikes = max(key.strikes, int(event.get("strikes") or 0))
        disabled = float(event.get("disabled_until") or 0)
        if disabled > key.disabled_until:
            key.disabled_until = disabled
            key.disabled_reason = event.get("reason")

    # -- reporting ---------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Every upstream key (by fingerprint): health, rests, remaining quota, in flight."""
        now = time.time()
        return [key.as_status(now) for up in self.upstreams.values() for key in up.keys]


def _speaks_of_key(st: RequestState, status: int, body: bytes | None) -> bool:
    """Whether a 401/403 is evidence that the key itself is bad: an inference request (never
    a path the client chose to probe with) answered with Anthropic's error of that status."""
    if not st.inference or not body:
        return False
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return False
    return isinstance(error, dict) and error.get("type") == KEY_ERRORS[status]


def _vendor_model(models: tuple[tuple[str, str], ...], model: str | None) -> str | None:
    if model is None:
        return None
    for pattern, vendor in models:
        if fnmatch.fnmatchcase(model, pattern):
            return vendor
    return None


ROUTER: ServiceKey[Router] = ServiceKey("router")
