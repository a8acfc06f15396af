"""Three ``midway serve`` instances sharing PostgreSQL and Redis, as behind a load balancer.

Audit and billing share PostgreSQL (a fresh schema each, dropped afterwards); the cache and the
router's key health share a Redis of this test's own (a ``redis-server`` it starts, kills and
restarts, never the machine's shared one). Load is spread round-robin over the instances with
the official SDK. Checked: one budget across all three, a key resting everywhere once one
instance saw it limited, a cache entry stored by one instance served by the others, the audit
trail complete with a verifiable chain, the ledger equal to what the upstream served; then
Redis is killed under load (the cache is bypassed, nothing fails, nothing is lost) and
restarted (the cache works again).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import attrs
import cluster
import pytest
import redis

from midway.identity import passthrough_id
from midway.testing import PrivateRedis, Reply, pg_query

MODEL = "claude-sonnet-4-6"  # $3 / $15 per million input / output tokens
USAGE = {"input_tokens": 11, "output_tokens": 7}
COST = Decimal(11 * 3 + 7 * 15) / 10**6  # of one served request
KEY_A, KEY_B = "sk-ant-pool-a-0001", "sk-ant-pool-b-0002"  # the router's pool
USER_KEY = "sk-ant-user-0001"
BUDGET_KEY = "sk-ant-capped-0001"  # a principal with a total budget
LIMIT = Decimal("0.003")
# Instances sharing stores share the secret of pass-through identities (budgets, cache tenants).
IDENTITY_SECRET = "scaleout-identity-secret-0123456789abcdef"
pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def schemas(pg_schema_factory: Callable[..., str]) -> dict[str, str]:
    """Audit's and billing's schemas: not there yet (the rollout creates them), dropped after."""
    return {"audit": pg_schema_factory(create=False), "billing": pg_schema_factory(create=False)}


@attrs.define
class Outcome:
    instance: int
    status: int
    request_id: str
    cache: str | None
    started: float
    ended: float


def write_config(path: Path, upstream: str, postgres_dsn: str, redis_url: str,
                 schemas: dict[str, str], prefix: str) -> None:
    budget_principal = passthrough_id(BUDGET_KEY, IDENTITY_SECRET.encode())
    path.write_text(f"""
[midway]
identity_secret = "{IDENTITY_SECRET}"

[audit]
store = "{postgres_dsn}"
schema = "{schemas['audit']}"

[billing]
store = "{postgres_dsn}"
schema = "{schemas['billing']}"

[[billing.budgets]]
name = "capped"
scope = "principal"
match = "{budget_principal}"
period = "total"
limit_usd = "{LIMIT}"
mode = "hard"

[cache]
store = "{redis_url}"
rules = [{{ model = "*" }}]
key_prefix = "{prefix}:cache:"

[router]
state = "{redis_url}"
state_prefix = "{prefix}:router"
affinity = "none"
status_interval = 0.2

[[router.upstreams]]
name = "anthropic"
url = "{upstream}"
keys = ["{KEY_A}", "{KEY_B}"]
""")


PLUGINS = "audit,billing,cache,router"


def midway_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cluster.midway_cli(config, PLUGINS, *args)


class Load:
    """SDK clients on every instance; every answer is kept as an :class:`Outcome`."""

    def __init__(self, instances: list[cluster.Instance]) -> None:
        self.clients = {
            (i, key): anthropic.AsyncAnthropic(base_url=inst.url, api_key=key, max_retries=0,
                                               timeout=30)
            for i, inst in enumerate(instances) for key in (USER_KEY, BUDGET_KEY)}
        self.outcomes: list[Outcome] = []
        self.sem = asyncio.Semaphore(9)  # bounded load

    async def ask(self, instance: int, prompt: str, stream: bool = False,
                  key: str = USER_KEY) -> Outcome:
        client = self.clients[(instance, key)]
        started = time.monotonic()
        async with self.sem:
            try:
                raw = await client.messages.with_raw_response.create(
                    model=MODEL, max_tokens=20, stream=stream,
                    messages=[{"role": "user", "content": prompt}])
                parsed = await raw.parse()
                if stream:
                    async for _ in parsed:
                        pass
                status, headers = raw.status_code, raw.headers
            except anthropic.APIStatusError as exc:
                status, headers = exc.status_code, exc.response.headers
        outcome = Outcome(instance, status, headers["x-midway-request-id"],
                          headers.get("x-midway-cache"), started, time.monotonic())
        self.outcomes.append(outcome)
        return outcome

    async def spread(self, prompts: list[str], key: str = USER_KEY) -> list[Outcome]:
        n = len(self.clients) // 2
        return list(await asyncio.gather(*(
            self.ask(i % n, prompt, stream=i % 2 == 0, key=key)
            for i, prompt in enumerate(prompts))))

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_three_instances_share_postgres_and_redis(fake_upstream, private_redis, postgres_dsn,
                                                  schemas, tmp_path):
    served = {"ok": 0, "limited": 0, "key_a": 0}
    limit_a = {"on": False}

    def answer(rec: Any) -> Reply:
        served["key_a"] += rec.headers.get("x-api-key") == KEY_A
        if limit_a["on"] and rec.headers.get("x-api-key") == KEY_A:
            served["limited"] += 1
            return Reply(status=429, error_type="rate_limit_error",
                         error_message="rate limited", headers={"retry-after": "120"})
        served["ok"] += 1
        return Reply(usage=USAGE)

    fake_upstream.fake.default = answer
    prefix = f"t_scale_{secrets.token_hex(3)}"
    config = tmp_path / "midway.toml"
    write_config(config, fake_upstream.url, postgres_dsn, private_redis.url, schemas, prefix)

    # The rollout: the check names the missing schemas, the upgrade creates them.
    check = midway_cli(config, "config", "check", "--json")
    assert check.returncode == 1
    report = {r["subject"]: r["problems"] for r in json.loads(check.stdout)}
    assert "does not exist" in report["audit"][0] and "does not exist" in report["billing"][0]
    assert report["cache"] == report["router"] == []
    assert midway_cli(config, "db", "upgrade").returncode == 0
    check = midway_cli(config, "config", "check")
    assert check.returncode == 0, check.stdout

    instances = cluster.start_instances(config, fake_upstream.url, tmp_path, PLUGINS,
                                        workers=(1, 1, 2))  # the third: two workers
    cache_entries = redis.Redis(port=private_redis.port)
    try:
        outcomes = asyncio.run(_exercise(instances, private_redis, cache_entries, prefix,
                                         limit_a, served))
    finally:
        codes = cluster.stop_instances(instances)
    assert codes == [0, 0, 0]  # graceful: queues flushed, ledger settled
    _check_stores(config, postgres_dsn, schemas, fake_upstream, served, outcomes)


async def _exercise(instances: list[cluster.Instance], private_redis: PrivateRedis, r: redis.Redis,
                    prefix: str, limit_a: dict[str, bool], served: dict[str, int]
                    ) -> list[Outcome]:
    load = Load(instances)
    try:
        # 1. Load spread over the three instances.
        first = await load.spread([f"warm-up {i}" for i in range(30)])
        assert {o.status for o in first} == {200}
        assert {o.instance for o in first} == {0, 1, 2}

        # 2. An entry stored by instance 0 is served by instances 1 and 2.
        def entries() -> int:
            return len(list(r.scan_iter(match=f"{prefix}:cache:e:*")))

        await until(lambda: entries() == 30)  # the warm-up answers, stored after replying
        assert (await load.ask(0, "shared question")).cache == "miss"
        await until(lambda: entries() == 31)
        assert [(await load.ask(i, "shared question", stream=i == 2)).cache
                for i in (1, 2)] == ["hit", "hit"]

        # 3. Key A rests on all instances after instance 0 saw it limited.
        limit_a["on"] = True
        await until(lambda: _probe(load, instances[0]), timeout=20)
        for instance in instances:
            await until(lambda inst=instance: inst.key_health(KEY_A) == "resting", timeout=10)
            assert instance.key_health(KEY_B) == "ok"
        limit_a["on"] = False  # A would answer again: only the shared rest keeps it idle
        sent_to_a = served["key_a"]
        after_rest = await load.spread([f"after rest {i}" for i in range(12)])
        assert {o.status for o in after_rest} == {200}
        assert served["key_a"] == sent_to_a

        # 4. One budget across the three. Rounds of one request per instance, until a round
        # where all three are refused (with nothing in flight: the budget is spent).
        for round_ in range(60):
            capped = await load.spread([f"capped {round_} {i}" for i in range(3)],
                                       key=BUDGET_KEY)
            if {o.status for o in capped} == {429}:
                break
        else:
            raise AssertionError("the budget was never exhausted")
        assert {o.status for o in load.outcomes if o.status != 200} == {429}

        # 5. Redis dies under load: the cache is bypassed, every request still answered.
        await _redis_outage(load, private_redis)
    finally:
        await load.close()
    return load.outcomes


async def _probe(load: Load, instance: cluster.Instance) -> bool:
    """One more request to instance 0; true once key A is resting there."""
    assert (await load.ask(0, f"probe {len(load.outcomes)}")).status == 200
    return instance.key_health(KEY_A) == "resting"


async def _redis_outage(load: Load, private_redis: PrivateRedis) -> None:
    prompts = [f"repeated {i}" for i in range(4)]  # repeats: hits while Redis is up
    marks: dict[str, float] = {}
    stop = asyncio.Event()

    async def loader() -> None:
        i = 0
        while not stop.is_set():
            await asyncio.gather(*(load.ask(n, prompts[(i + n) % 4], stream=n == 1)
                                   for n in range(3)))
            i += 1

    marks["start"] = time.monotonic()
    task = asyncio.create_task(loader())
    try:
        await until(lambda: sum(o.cache == "hit" and o.started > marks["start"]
                                for o in load.outcomes) >= 3)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, private_redis.stop)
        marks["down"] = time.monotonic()
        await until(lambda: sum(o.started > marks["down"] for o in load.outcomes) >= 12)
        marks["up"] = time.monotonic()
        await loop.run_in_executor(None, private_redis.start)
        marks["back"] = time.monotonic()
        await until(lambda: any(o.cache == "hit" and o.started > marks["back"]
                                for o in load.outcomes), timeout=30)
    finally:
        stop.set()
        await task
    during = [o for o in load.outcomes if o.started > marks["down"] and o.ended < marks["up"]]
    assert len(during) >= 12
    assert {o.cache for o in during} == {"bypass"}
    assert {o.status for o in during} == {200}


def _check_stores(config: Path, postgres_dsn: str, schemas: dict[str, str], fake_upstream: Any,
                  served: dict[str, int], outcomes: list[Outcome]) -> None:
    # The audit trail: one record per request, on any instance, in one verifiable chain.
    verify = midway_cli(config, "audit", "verify", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["checked"] == len(outcomes)

    audited = {r[0] for r in pg_query(postgres_dsn, "SELECT request_id FROM audit_records",
                                      schema=schemas["audit"])}
    ledger = pg_query(postgres_dsn, "SELECT kind, state, status, principal, input_tokens, "
                      "output_tokens, cost_pusd FROM billing_ledger", schema=schemas["billing"])
    assert audited == {o.request_id for o in outcomes}

    # The ledger: one settled row per upstream attempt, equal to what the upstream served.
    attempts = [r for r in ledger if r["kind"] == "attempt"]
    assert len(attempts) == len(fake_upstream.messages_requests)
    assert {r["state"] for r in ledger} == {"settled"}
    ok = [r for r in attempts if r["status"] == 200]
    assert len(ok) == served["ok"]
    assert len([r for r in attempts if r["status"] == 429]) == served["limited"] >= 1
    assert sum(r["input_tokens"] for r in ok) == USAGE["input_tokens"] * served["ok"]
    assert sum(r["output_tokens"] for r in ok) == USAGE["output_tokens"] * served["ok"]
    assert sum(r["cost_pusd"] for r in ok) == int(COST * 10**12) * served["ok"]

    # The budget: what the capped principal was charged never passed its limit, and it was
    # used up (not refused from the start).
    capped = passthrough_id(BUDGET_KEY, IDENTITY_SECRET.encode())
    spent = Decimal(sum(r["cost_pusd"] for r in attempts if r["principal"] == capped)) / 10**12
    assert spent <= LIMIT
    assert spent > LIMIT - Decimal("0.0005")  # refused only when one more might overshoot
    refused = [o for o in outcomes if o.status == 429]
    assert {o.instance for o in refused} == {0, 1, 2}
    assert len([r for r in ledger if r["kind"] == "refused"]) == len(refused)
    hits = [o for o in outcomes if o.cache == "hit"]
    assert len([r for r in ledger if r["kind"] == "cache_hit"]) == len(hits)
