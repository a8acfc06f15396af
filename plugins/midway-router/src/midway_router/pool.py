"""Upstreams and their pooled keys: health, rests, rate-limit headroom, in-flight counts."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import attrs

from midway.secrets_ref import SecretError, fingerprint, resolve
from midway_router import adapters
from midway_router.ratelimit import Limit
from midway_router.settings import UpstreamSpec


@attrs.define(eq=False)
class KeyState:
    """One credential of one upstream. ``fp`` is its fingerprint; the secret is in ``headers``
    (or inside ``adapter`` for Bedrock) and never leaves this object in a report."""

    upstream: UpstreamState
    fp: str | None  # None: the client's own credentials pass through
    headers: Mapping[str, str]
    adapter: Any = None
    in_flight: int = 0
    resting_until: float = 0.0  # epoch seconds
    strikes: int = 0  # rests in a row; each one rests longer
    rest_status: int = 429  # what sent the key to rest: 429 (rate limited) or 529 (overloaded)
    disabled_until: float = 0.0
    disabled_reason: str | None = None
    limits: dict[str, Limit] = attrs.field(factory=dict)
    sent_since_report: int = 0  # requests sent since ``limits`` was last reported
    tokens_since_report: int = 0
    served: int = 0
    rests: int = 0

    def usable(self, now: float) -> bool:
        return self.resting_until <= now and self.disabled_until <= now

    def health(self, now: float) -> str:
        if self.disabled_until > now:
            return "disabled"
        if self.resting_until > now:
            return "resting"
        if self.upstream.down_until > now:
            return "down"
        return "ok"

    def headroom(self, tokens: int, now: float) -> float:
        """The smallest fraction left of any limit after this request (1.0: unknown, or a
        fresh window). Negative when the request should not fit."""
        score = 1.0
        for name, limit in self.limits.items():
            if limit.reset is not None and limit.reset <= now:
                continue  # the window has turned over since the report
            if name == "requests":
                left = limit.remaining - self.sent_since_report - 1
            elif name == "output-tokens":
                continue  # not known before the answer
            else:
                left = limit.remaining - self.tokens_since_report - tokens
            size = limit.limit or max(limit.remaining, 1)
            score = min(score, left / size)
        return score

    def report(self, limits: dict[str, Limit]) -> None:
        if limits:
            self.limits = limits
            self.sent_since_report = 0
            self.tokens_since_report = 0

    def sent(self, tokens: int) -> None:
        self.in_flight += 1
        self.sent_since_report += 1
        self.tokens_since_report += tokens
        self.served += 1

    def as_status(self, now: float) -> dict[str, Any]:
        upstream = self.upstream
        fresh = {name: limit for name, limit in self.limits.items()
                 if limit.reset is None or limit.reset > now}
        return {
            "upstream": upstream.spec.name,
            "kind": upstream.spec.kind,
            "url": upstream.spec.url,
            "key": self.fp,
            "health": self.health(now),
            "resting_until": self.resting_until if self.resting_until > now else None,
            "resting_for": self.rest_status if self.resting_until > now else None,
            "disabled_until": self.disabled_until if self.disabled_until > now else None,
            "disabled_reason": self.disabled_reason if self.disabled_until > now else None,
            "down_until": upstream.down_until if upstream.down_until > now else None,
            "remaining": {name.replace("-", "_"): limit.remaining
                          for name, limit in fresh.items()},
            "limit": {name.replace("-", "_"): limit.limit for name, limit in fresh.items()},
            "reset": {name.replace("-", "_"): limit.reset for name, limit in fresh.items()},
            "in_flight": self.in_flight,
            "served": self.served,
            "rests": self.rests,
        }


@attrs.define(eq=False)
class UpstreamState:
    spec: UpstreamSpec
    keys: list[KeyState] = attrs.field(factory=list)
    down_until: float = 0.0
    failures: int = 0  # connection failures in a row
    errors_5xx: int = 0  # 5xx answers in a row

    @property
    def in_flight(self) -> int:
        return sum(key.in_flight for key in self.keys)

    def up(self, now: float) -> bool:
        return self.down_until <= now

    def pick(self, tokens: int, now: float, exclude: set[int]) -> KeyState | None:
        """The usable key with the most headroom for ``tokens``; ties go to the least busy,
        then to chance (so equal keys share the load)."""
        keys = self.keys
        if len(keys) == 1:  # no choice to score
            key = keys[0]
            return key if id(key) not in exclude and key.usable(now) else None
        best: KeyState | None = None
        best_score: tuple[float, int, float] | None = None
        for key in keys:
            if id(key) in exclude or not key.usable(now):
                continue
            score = (key.headroom(tokens, now), -key.in_flight, random.random())
            if best_score is None or score > best_score:
                best, best_score = key, score
        return best


def build(spec: UpstreamSpec) -> UpstreamState:
    """Resolve an upstream's credentials (raising a message without the secret that names
    the upstream)."""
    try:
        return _build(spec)
    except SecretError:
        refs = [*spec.keys, *(ref for cred in spec.aws for ref in (
            cred.access_key_id, cred.secret_access_key, cred.session_token) if ref),
            *([spec.service_account] if spec.service_account else [])]
        failed = []
        for ref in refs:  # every reference that does not resolve, not just the first
            try:
                resolve(ref)
            except SecretError as exc:
                failed.append(str(exc))
        raise SecretError(f"upstream {spec.name!r}: {'; '.join(failed)}") from None


def _build(spec: UpstreamSpec) -> UpstreamState:
    state = UpstreamState(spec=spec)
    shared_adapter = adapters.for_upstream(spec)
    if spec.kind == "bedrock":
        for cred in spec.aws:
            key_id = resolve(cred.access_key_id)
            state.keys.append(KeyState(
                upstream=state, fp=fingerprint(key_id), headers=dict(spec.headers),
                adapter=adapters.bedrock(spec, key_id, resolve(cred.secret_access_key),
                                         resolve(cred.session_token)
                                         if cred.session_token else None)))
        return state
    if spec.kind == "vertex":
        assert spec.service_account is not None  # checked in settings.parse
        adapter = adapters.vertex(spec, resolve(spec.service_account))
        # the account's e-mail names the credential in reports (the key stays in the adapter)
        state.keys.append(KeyState(upstream=state, headers=dict(spec.headers), adapter=adapter,
                                   fp=fingerprint(adapter.credentials.service_account_email)))
        return state
    for ref in spec.keys:
        secret = resolve(ref)
        headers = dict(spec.headers)
        if spec.kind == "openai" or spec.auth == "bearer":
            headers["authorization"] = f"Bearer {secret}"
        else:
            headers["x-api-key"] = secret
            if spec.kind == "foundry":  # Foundry reads either; Azure's own SDKs send api-key
                headers["api-key"] = secret
        if spec.workspace is not None:  # Claude Platform on AWS: every request names it
            headers["anthropic-workspace-id"] = spec.workspace
        state.keys.append(KeyState(upstream=state, fp=fingerprint(secret), headers=headers,
                                   adapter=shared_adapter))
    if not spec.keys:
        state.keys.append(KeyState(upstream=state, fp=None, headers=dict(spec.headers),
                                   adapter=shared_adapter))
    return state
