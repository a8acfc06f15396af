"""What midway bills, scenario by scenario, against an independent computation.

``PUBLISHED`` below is typed in from Anthropic's published rates (the pricing page and model
pages, as Claude Code 2.1.331's own catalogue has them: /work/shared/reference), not read from
``prices.toml``; ``expected()`` prices a usage from it with the published rules, written out
here on their own. Each scenario sends a real request through midway (the official SDK, a
fake upstream speaking Anthropic's wire format) and compares the ledger with that figure to
1e-9 USD. A few scenarios midway cannot be driven into through the proxy (a request made
before a dated rate change, the other unknown-model policy) call the pricing function itself.

Batches: ``BATCH_SCENARIOS`` (kind ``"batch"``) submit a one-request Message Batch through
midway with the SDK, read its results with the SDK's ``batches.results()`` (which follows the
``results_url`` midway names; the upstream names api.anthropic.com), and compare the result's
ledger row (kind ``batch_result``) with the same computation at the batch discount.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anthropic
import attrs
import orjson
import pytest
from helpers import PLUGIN, retry_overloaded

from midway import Exchange, Response, hookimpl
from midway.fake_upstream import Reply
from midway.sse import encode_event
from midway.testing import FakeUpstream, RunningMidway, start_midway, wait_for
from midway_billing.plugin import Billing
from midway_billing.pricing import Catalogue, Modifiers, PriceTable, shipped_text, to_pusd

D = Decimal
TOLERANCE_PUSD = 1000  # 1e-9 USD

# USD per million tokens: input, cache write 5 m, cache write 1 h, cache read, output.
PUBLISHED: dict[str, tuple[str, str, str, str, str]] = {
    **dict.fromkeys(["claude-opus-4-5", "claude-opus-4-6", "claude-opus-4-7",
                     "claude-opus-4-8", "claude-opus-5", "claude-opus-5-0"],
                    ("5", "6.25", "10", "0.50", "25")),
    **dict.fromkeys(["claude-opus-4", "claude-opus-4-0", "claude-opus-4-1", "claude-3-opus"],
                    ("15", "18.75", "30", "1.50", "75")),
    **dict.fromkeys(["claude-3-7-sonnet", "claude-sonnet-3-7", "claude-sonnet-4",
                     "claude-sonnet-4-0", "claude-sonnet-4-5", "claude-sonnet-4-6",
                     "claude-3-5-sonnet"], ("3", "3.75", "6", "0.30", "15")),
    "claude-haiku-4-5": ("1", "1.25", "2", "0.10", "5"),
    **dict.fromkeys(["claude-3-5-haiku", "claude-haiku-3-5"], ("0.80", "1", "1.6", "0.08", "4")),
    "claude-3-haiku": ("0.25", "0.30", "0.50", "0.03", "1.25"),
    "claude-opus-5-5": ("4", "5", "8", "0.20", "20"),
    **dict.fromkeys(["claude-sonnet-5", "claude-sonnet-5-0"], ("2", "2.50", "4", "0.20", "10")),
    "claude-sonnet-5-5": ("2", "2.50", "4", "0.10", "10"),
    "claude-haiku-5-5": ("0.10", "0.125", "0.20", "0.01", "0.50"),
    **dict.fromkeys(["claude-fable-5", "claude-mythos-5"], ("10", "12.50", "20", "1", "50")),
    **dict.fromkeys(["claude-fable-5-1", "claude-mythos-5-1"],
                    ("10", "12.50", "20", "0.25", "50")),
    **dict.fromkeys(["claude-fable-5-2", "claude-mythos-5-2"], ("8", "10", "16", "0.20", "40")),
}
UNKNOWN_TIER = ("5", "6.25", "10", "0.50", "25")  # Anthropic's gateway: $5 / $25, cache as usual
SONNET_5_5_READ_BEFORE = ("2026-10-07", "0.20")
# Fast mode input / output (cache rates keep the model's own multipliers of input), by the
# prompt size above which they apply.
FAST = {"claude-opus-4-6": [(0, "30", "150"), (200_000, "60", "225")],
        "claude-opus-4-8": [(0, "10", "50")], "claude-opus-5": [(0, "10", "50")],
        "claude-opus-5-5": [(0, "8", "40")]}
GEO_US = {"claude-opus-4-6", "claude-opus-4-7", "claude-opus-4-8", "claude-opus-5",
          "claude-opus-5-0", "claude-opus-5-5"}
# The 1M-context premium, for requests with the 1M-context beta: above 200K prompt tokens,
# $6 in / $22.50 out (cache rates scale with input, x2). Fast mode's 200K tier likewise.
BETA_1M = "context-1m-2025-08-07"
LONG = {"claude-sonnet-4": "200000", "claude-sonnet-4-0": "200000",
        "claude-sonnet-4-5": "200000"}
HAIKU_5_5_TIER = 100_000  # every rate x5 above, whole request


@attrs.frozen
class Scenario:
    name: str
    model: str
    usage: dict[str, Any] = attrs.field(factory=dict)  # what the upstream reports
    kind: str = "plain"  # see run(); "table": the pricing function, no proxy
    stream: bool = False
    fast: bool = False
    geo: str | None = None  # asked for in the request (and reported in the usage)
    billed_output: int | None = None  # an interrupted stream: the output it is billed
    rule: str | None = None  # a part the ledger's pricing_rule must have
    at: str | None = None  # table scenarios: when the request was made
    batch: bool = False
    beta: bool = False  # sent with the 1M-context beta (anthropic-beta: context-1m-2025-08-07)


def usage_of(inp: int = 0, out: int = 0, w5: int = 0, w1: int = 0, read: int = 0,
             searches: int = 0, **extra: Any) -> dict[str, Any]:
    usage: dict[str, Any] = {"input_tokens": inp, "output_tokens": out,
                             "cache_creation_input_tokens": w5 + w1,
                             "cache_creation": {"ephemeral_5m_input_tokens": w5,
                                                "ephemeral_1h_input_tokens": w1},
                             "cache_read_input_tokens": read, **extra}
    if searches:
        usage["server_tool_use"] = {"web_search_requests": searches}
    return usage


MIX = usage_of(inp=1200, out=700, w5=300, w1=200, read=5000)


def base_model(model: str) -> str:
    name = model.lower()
    if "anthropic." in name:
        name = name.split("anthropic.", 1)[1].rsplit("-v", 1)[0]
    name = name.split("@", 1)[0]
    parts = name.split("-")
    return "-".join(parts[:-1]) if parts[-1].isdigit() and len(parts[-1]) == 8 else name


def expected(s: Scenario) -> Decimal:
    """The price of ``s.usage`` by the published rules, in USD."""
    model = base_model(s.model)
    rates = [D(r) for r in PUBLISHED.get(model, UNKNOWN_TIER)]
    u = s.usage
    split = u.get("cache_creation") or {}
    w5 = split.get("ephemeral_5m_input_tokens", u.get("cache_creation_input_tokens", 0))
    w1 = split.get("ephemeral_1h_input_tokens", 0)
    out = u.get("output_tokens", 0) if s.billed_output is None else s.billed_output
    counts = [u.get("input_tokens", 0), w5, w1, u.get("cache_read_input_tokens", 0), out]
    prompt = sum(counts[:4])
    if model == "claude-sonnet-5-5" and s.at is not None and s.at < SONNET_5_5_READ_BEFORE[0]:
        rates[3] = D(SONNET_5_5_READ_BEFORE[1])
    if s.fast and model in FAST:
        _, fin, fout = [t for t in FAST[model] if prompt > t[0] and (s.beta or not t[0])][-1]
        ratio = D(fin) / rates[0]
        rates = [D(fin), rates[1] * ratio, rates[2] * ratio, rates[3] * ratio, D(fout)]
    elif model in LONG and prompt > int(LONG[model]) and s.beta:
        rates = [D(6), D("7.50"), D(12), D("0.60"), D("22.50")]
    if model == "claude-haiku-5-5" and prompt > HAIKU_5_5_TIER:
        rates = [r * 5 for r in rates]
    if s.geo == "us" and model in GEO_US:
        rates = [r * D("1.1") for r in rates]
    if s.batch:
        rates = [r / 2 for r in rates]
    searches = (u.get("server_tool_use") or {}).get("web_search_requests", 0)
    return sum((D(c) * r for c, r in zip(counts, rates, strict=True)), D(0)) / 10**6 \
        + D(searches) * D("0.01")


def plain(name: str, model: str, **kwargs: Any) -> Scenario:
    return Scenario(name, model, kwargs.pop("usage", MIX), **kwargs)


# -- the table --------------------------------------------------------------------------------

EVERY_MODEL = [plain(f"model {m}", m, stream=i % 2 == 1) for i, m in enumerate(PUBLISHED)]

SCENARIOS: list[Scenario] = [
    *EVERY_MODEL,
    plain("dated id", "claude-sonnet-4-5-20250929"),
    plain("vertex id", "claude-opus-4-1@20250805", stream=True),
    plain("bedrock id", "us.anthropic.claude-haiku-4-5-20251001-v1:0"),
    plain("1h cache writes only", "claude-opus-4-8", usage=usage_of(inp=10, out=5, w1=9000)),
    plain("cache split absent: 5m", "claude-sonnet-4-6",
          usage={"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 800}),
    plain("web search", "claude-sonnet-4-6", usage=usage_of(inp=900, out=300, searches=3)),
    # fast mode
    plain("fast opus 4.6 at 200K", "claude-opus-4-6", fast=True, rule="fast",
          usage=usage_of(inp=150_000, w5=30_000, read=20_000, out=900)),
    plain("fast opus 4.6 above 200K", "claude-opus-4-6", fast=True, rule="tier>200000",
          usage=usage_of(inp=150_000, w5=30_000, read=20_001, out=900), stream=True,
          beta=True),
    plain("fast opus 4.8", "claude-opus-4-8", fast=True, rule="fast"),
    plain("fast opus 5", "claude-opus-5", fast=True, rule="fast", stream=True),
    plain("fast opus 5.5", "claude-opus-5-5", fast=True, rule="fast"),
    plain("fast asked of a model without it", "claude-opus-4-7", fast=True),
    # inference_geo
    plain("us geo opus 4.6", "claude-opus-4-6", geo="us", rule="geo=us"),
    plain("us geo opus 5.5", "claude-opus-5-5", geo="us", rule="geo=us", stream=True),
    plain("us geo opus 4.5 (older: 1x)", "claude-opus-4-5", geo="us"),
    plain("us geo on sonnet (1x)", "claude-sonnet-4-6", geo="us"),
    plain("global geo opus 5", "claude-opus-5", geo="global"),
    plain("fast and us geo opus 5", "claude-opus-5", fast=True, geo="us", rule="geo=us"),
    # tiers, both sides of the threshold
    plain("sonnet 4.5 prompt of exactly 200K", "claude-sonnet-4-5", beta=True,
          usage=usage_of(inp=100_000, w5=50_000, read=50_000, out=2000)),
    plain("sonnet 4.5 prompt above 200K", "claude-sonnet-4-5", rule="tier>200000", beta=True,
          usage=usage_of(inp=100_000, w5=50_000, read=50_001, out=2000)),
    plain("sonnet 4.5 above 200K without the 1M beta", "claude-sonnet-4-5", rule="catalogue",
          usage=usage_of(inp=100_000, w5=50_000, read=50_001, out=2000)),
    plain("sonnet 4 prompt above 200K", "claude-sonnet-4", rule="tier>200000",
          usage=usage_of(inp=250_000, out=100), stream=True, beta=True),
    plain("sonnet 4.6 above 200K (no tier)", "claude-sonnet-4-6", beta=True,
          usage=usage_of(inp=250_000, out=100)),
    plain("haiku 5.5 prompt of exactly 100K", "claude-haiku-5-5",
          usage=usage_of(inp=60_000, read=40_000, out=5000)),
    plain("haiku 5.5 prompt above 100K (x5, output too)", "claude-haiku-5-5",
          rule="tier>100000", usage=usage_of(inp=60_000, read=40_001, out=5000)),
    plain("haiku 5.5 tier by cache writes", "claude-haiku-5-5", rule="tier>100000",
          usage=usage_of(inp=1, w1=100_000, out=10), stream=True),
    # streams cut short, and the usage rules of streams
    Scenario("client disconnects mid-stream", "claude-opus-4-8",
             usage_of(inp=2000, read=300, out=1), kind="disconnect", stream=True,
             billed_output=math.ceil(3 * 41 / 4), rule="floor"),
    Scenario("upstream error event mid-stream", "claude-sonnet-4-6",
             usage_of(inp=900, out=1), kind="stream_error", stream=True,
             billed_output=math.ceil(2 * 60 / 4), rule="floor"),
    Scenario("upstream drops the stream, reported output above the floor", "claude-haiku-4-5",
             usage_of(inp=500, out=5), kind="upstream_reset", stream=True, billed_output=5,
             rule="interrupted"),
    Scenario("message_delta reports input_tokens 0", "claude-opus-5-5",
             usage_of(inp=3000, read=100, out=50), kind="zero_delta", stream=True),
    Scenario("complete stream: reported output only, never the floor", "claude-sonnet-4-6",
             usage_of(inp=10, out=3), kind="long_text", stream=True),
    # unknown models, cache hits, retries
    plain("unknown model", "claude-zeta-9", rule="unknown_model"),
    plain("unknown model streamed", "claude-zeta-9", stream=True, rule="unknown_model"),
    Scenario("cache hit: saved, not spent", "claude-sonnet-4-6", MIX, kind="cache_hit"),
    Scenario("retried 529, then answered", "claude-opus-4-8", MIX, kind="retry"),
    # the pricing function itself
    Scenario("sonnet 5.5 read before its price change", "claude-sonnet-5-5", MIX,
             kind="table", at="2026-10-06"),
    Scenario("sonnet 5.5 read on the day of its change", "claude-sonnet-5-5", MIX,
             kind="table", at="2026-10-07"),
    Scenario("batch haiku 4.5", "claude-haiku-4-5", MIX, kind="table", batch=True),
    Scenario("batch opus 5.5", "claude-opus-5-5", MIX, kind="table", batch=True),
    Scenario("batch sonnet 4.5 above 200K", "claude-sonnet-4-5",
             usage_of(inp=210_000, out=100), kind="table", batch=True, beta=True),
]

# Message Batches through the proxy: each result priced at the batch discount (token rates
# halved, web searches not), with the modifiers its usage and the submit's headers carry.
BATCH_SCENARIOS: list[Scenario] = [
    Scenario("batch proxy haiku 4.5", "claude-haiku-4-5", MIX, kind="batch", batch=True,
             rule="batch"),
    Scenario("batch proxy opus 4.6 us geo", "claude-opus-4-6", MIX, kind="batch", batch=True,
             geo="us", rule="geo=us"),
    Scenario("batch proxy sonnet 4.5 above 200K with the 1M beta", "claude-sonnet-4-5",
             usage_of(inp=150_000, read=50_001, out=900), kind="batch", batch=True,
             beta=True, rule="tier>200000"),
    Scenario("batch proxy web search", "claude-sonnet-4-6",
             usage_of(inp=900, out=300, searches=4), kind="batch", batch=True),
    Scenario("batch proxy unknown model", "claude-zeta-9", MIX, kind="batch", batch=True,
             rule="unknown_model"),
]


def test_the_table_is_big_enough_and_covers_the_catalogue() -> None:
    assert len(SCENARIOS) + len(BATCH_SCENARIOS) >= 40
    catalogue = Catalogue.parse(shipped_text())
    assert set(catalogue.prices) == set(PUBLISHED)  # every model, and only those
    for model, rates in PUBLISHED.items():
        price = catalogue.prices[model]
        assert [price.input, price.cache_write_5m, price.cache_write_1h, price.cache_read,
                price.output] == [D(r) for r in rates], model
        assert price.source and price.as_of, model
    assert {base_model(s.model) for s in SCENARIOS} >= set(PUBLISHED)


# -- running them -----------------------------------------------------------------------------

def cache_when_asked() -> SimpleNamespace:
    """Answers as the cache plugin does on a hit, for requests that ask with a header."""

    @hookimpl(tryfirst=True)
    def pre_request(exchange: Exchange) -> Response | None:
        if "x-test-cache-hit" not in exchange.request.headers:
            return None
        exchange.annotations["cache"] = "hit"
        return Response(status=200, body=orjson.dumps({
            "id": "msg_cached", "type": "message", "role": "assistant",
            "model": exchange.model, "content": [{"type": "text", "text": "cached"}],
            "stop_reason": "end_turn", "stop_sequence": None, "usage": MIX}))

    return SimpleNamespace(__name__="cache", pre_request=pre_request)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningMidway,
                                                                      FakeUpstream]]:
    upstream = FakeUpstream().start()
    upstream.fake.batches.results_origin = "https://api.anthropic.com"  # as Anthropic does
    running = start_midway(Path(tmp_path_factory.mktemp("scenarios")), upstream.url,
                           [PLUGIN, retry_overloaded(), cache_when_asked()])
    try:
        yield running, upstream  # type: ignore[misc]
    finally:
        running.stop()
        upstream.stop()


def text_events(model: str, usage: dict[str, Any], texts: list[str]) -> list[bytes]:
    start = {**usage, "output_tokens": usage.get("output_tokens", 1)}
    events = [encode_event("message_start", {"type": "message_start", "message": {
        "id": "msg_01scenario", "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None, "usage": start}}),
        encode_event("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}})]
    events += [encode_event("content_block_delta", {
        "type": "content_block_delta", "index": 0,
        "delta": {"type": "text_delta", "text": t}}) for t in texts]
    return events


def ending(output: int, usage: dict[str, Any] | None = None) -> list[bytes]:
    return [encode_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            encode_event("message_delta", {
                "type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                   "stop_sequence": None},
                "usage": usage or {"output_tokens": output}}),
            encode_event("message_stop", {"type": "message_stop"})]


def run_batch(s: Scenario, client: anthropic.Anthropic, running: RunningMidway,
              upstream: FakeUpstream) -> None:
    """Submit ``s`` as a one-request batch and read its results as an SDK user does."""
    reported = {**s.usage, **({"inference_geo": s.geo} if s.geo else {})}
    upstream.reply(Reply(usage=reported))
    params: dict[str, Any] = {"model": s.model, "max_tokens": 64,
                              "messages": [{"role": "user", "content": "price me"}],
                              **({"inference_geo": s.geo} if s.geo else {})}
    batch = client.messages.batches.create(
        requests=[{"custom_id": "only", "params": params}])  # type: ignore[list-item]
    (result,) = client.messages.batches.results(batch.id)
    assert result.custom_id == "only" and result.result.type == "succeeded"


def run(s: Scenario, running: RunningMidway, upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-scenarios",
                                 max_retries=0, default_headers={
                                     "x-midway-project": s.name,
                                     **({"anthropic-beta": BETA_1M} if s.beta else {}),
                                     **({"x-test-cache-hit": "1"}
                                        if s.kind == "cache_hit" else {})})
    if s.kind == "batch":
        run_batch(s, client, running, upstream)
        return
    extra: dict[str, Any] = {}
    if s.fast:
        extra["speed"] = "fast"
    if s.geo:
        extra["inference_geo"] = s.geo
    reported = {**s.usage, **({"inference_geo": s.geo} if s.geo else {})}
    args: dict[str, Any] = {"model": s.model, "max_tokens": 64, "extra_body": extra,
                            "messages": [{"role": "user", "content": "price me"}]}
    if s.kind == "disconnect":
        # Three deltas reach the client, which hangs up; the rest (pings, then text it never
        # gets) is never relayed.
        events = text_events(s.model, reported, ["a" * 41] * 3)
        events += [encode_event("ping", {"type": "ping"})] * 100
        events += text_events(s.model, reported, ["b" * 400])[2:] + ending(500)
        upstream.reply(Reply(events=events, delay=0.02))
        seen = 0
        with client.messages.stream(**args) as stream:
            for event in stream:
                if event.type == "content_block_delta":
                    seen += 1
                    if seen == 3:
                        break
        return
    if s.kind == "stream_error":
        error = encode_event("error", {"type": "error", "error": {
            "type": "overloaded_error", "message": "Overloaded"}})
        upstream.reply(Reply(events=[*text_events(s.model, reported, ["c" * 60] * 2), error]))
        with pytest.raises(anthropic.APIStatusError), client.messages.stream(**args) as stream:
            stream.until_done()
        return
    if s.kind == "upstream_reset":
        events = text_events(s.model, reported, ["d" * 10]) + ending(99)
        upstream.reply(Reply(events=events, reset_after=3))
        with pytest.raises(anthropic.APIError), client.messages.stream(**args) as stream:
            stream.until_done()
        return
    if s.kind == "zero_delta":
        events = text_events(s.model, {**reported, "output_tokens": 1}, ["hello"]) + ending(
            0, {"input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 50})
        upstream.reply(Reply(events=events))
    elif s.kind == "long_text":
        upstream.reply(Reply(events=text_events(s.model, {**reported, "output_tokens": 1},
                                                ["e" * 400]) + ending(3)))
    elif s.kind == "retry":
        upstream.reply(Reply(status=529, error_type="overloaded_error"),
                       Reply(usage=reported))
    elif s.kind != "cache_hit":
        upstream.reply(Reply(usage=reported))
    if s.stream:
        with client.messages.stream(**args) as stream:
            stream.until_done()
    else:
        client.messages.create(**args)


def ledger_rows(running: RunningMidway, s: Scenario) -> list[dict[str, Any]]:
    billing = running.midway.services["billing"]
    assert isinstance(billing, Billing)
    want = 2 if s.kind == "retry" else 1

    def rows() -> list[dict[str, Any]]:
        return [r for r in running.call(billing.store.rows()) if r["project"] == s.name
                and (s.kind != "batch" or r["kind"] == "batch_result")]

    wait_for(lambda: len(found := rows()) == want and
             all(r["state"] == "settled" for r in found))
    return rows()


@pytest.mark.parametrize("s", [*SCENARIOS, *BATCH_SCENARIOS], ids=lambda s: s.name)
def test_scenario(s: Scenario, stack: tuple[RunningMidway, FakeUpstream]) -> None:
    want = to_pusd(expected(s))
    if s.kind == "table":
        at = dt.datetime.fromisoformat(s.at).replace(tzinfo=dt.UTC).timestamp() \
            if s.at else None
        usage = anthropic_usage(s.usage)
        cost = PriceTable.load().cost(usage, s.model, modifiers=Modifiers(
            batch=s.batch, at=at, betas=frozenset({BETA_1M} if s.beta else ())))
        assert abs(cost.total - want) <= TOLERANCE_PUSD, (cost, expected(s))
        return
    running, upstream = stack
    run(s, running, upstream)
    rows = ledger_rows(running, s)
    final = rows[-1]
    if s.kind == "cache_hit":
        assert final["kind"] == "cache_hit" and final["cost_pusd"] == 0
        assert abs(final["saved_pusd"] - want) <= TOLERANCE_PUSD
        return
    charged = sum(int(r["cost_pusd"]) for r in rows)
    assert abs(charged - want) <= TOLERANCE_PUSD, (final, str(expected(s)))
    assert final["catalogue_version"] == PriceTable.load().version
    if s.rule is not None:
        assert s.rule in final["pricing_rule"].split(";"), final["pricing_rule"]
    if s.billed_output is not None:
        assert max(final["output_tokens"], final["floor_output_tokens"]) == s.billed_output
    if s.kind == "zero_delta":
        assert final["input_tokens"] == s.usage["input_tokens"]
    assert final["unpriced"] == int(base_model(s.model) not in PUBLISHED)


def anthropic_usage(fields: dict[str, Any]) -> Any:
    from midway import Usage

    usage = Usage()
    usage.update(fields)
    return usage


def test_unknown_model_policy_unpriced_is_zero_and_flagged() -> None:
    cost = PriceTable.load(unknown_policy="unpriced").cost(anthropic_usage(MIX),
                                                           "claude-zeta-9")
    assert cost.total == 0 and cost.unpriced and cost.rule == "unpriced"


def test_a_hard_budgets_running_usage_keeps_input_a_delta_reports_as_zero() -> None:
    from midway.sse import SSEEvent
    from midway_billing.streamwatch import StreamWatch

    watch = StreamWatch({"k": 10}, "claude-opus-5-5")
    for event in text_events("claude-opus-5-5", usage_of(inp=3000, read=100, out=1),
                             ["x" * 40]) + ending(0, {"input_tokens": 0, "output_tokens": 5}):
        name, data = event.decode().split("\n")[:2]
        watch.feed(SSEEvent(name=name.removeprefix("event: "),
                            data=data.removeprefix("data: "), raw=event))
    running = watch.running()
    assert running.input_tokens == 3000 and running.cache_read_input_tokens == 100
    assert running.output_tokens == 5 and watch.relayed_chars == 40
