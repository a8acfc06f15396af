"""A hard budget's stream watch prices a ``message_delta`` that moves only the output count by
adding that output at the rate it last priced (``PriceTable.cost_and_output_rate``), and
reprices the whole usage only when something else changed: equal to full repricing at every
event, and the stream is cut at the same event as when every report was priced whole."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from midway import SSEEvent, Usage
from midway_billing.pricing import Modifiers, PriceError, PriceTable
from midway_billing.streamwatch import StreamWatch

BETAS = frozenset({"context-1m-2025-08-07"})
# Whole-picodollar rates (the shipped table), and rates finer than a picodollar a token (an
# override with seven decimals), where the output part is tokens_pusd's rounding of the count.
TABLES = [PriceTable.load(), PriceTable.load(unknown_policy="unpriced"),
          PriceTable.load({"claude-haiku-5-5": {"output": "0.5000003", "input": "0.1000001"},
                           "claude-sonnet-4-5": {"output": "15.0000007"}})]
# sonnet-4-5: a 1M-context tier above 200,000 prompt tokens (with the beta); haiku-5-5: a tier
# above 100,000 (a multiplier, no beta); opus-4-6: fast mode with tiers; an unknown model.
MODELS = ["claude-sonnet-4-5", "claude-haiku-5-5", "claude-opus-4-6", "no-such-model"]
MODIFIERS = [Modifiers(), Modifiers(betas=BETAS), Modifiers(speed="fast", betas=BETAS),
             Modifiers(geo="us", betas=BETAS), Modifiers(batch=True)]


def event(name: str, payload: dict[str, Any]) -> SSEEvent:
    data = orjson.dumps(payload).decode()
    return SSEEvent(name, data, f"event: {name}\ndata: {data}\n\n".encode())


def start(model: str, usage: dict[str, Any]) -> SSEEvent:
    return event("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [],
        "usage": usage}})


def delta(usage: dict[str, Any], stop: str | None = None) -> SSEEvent:
    return event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop},
                                   "usage": usage})


def text(chars: int) -> SSEEvent:
    return event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": "x" * chars}})


def full_price(watch: StreamWatch, prices: PriceTable) -> int:
    """What the watch priced at each report before: the running usage, priced whole."""
    return prices.cost(watch.running(), watch.model, modifiers=watch.modifiers).total


class CountingTable(PriceTable):
    """The shipped table, counting how often a usage is priced whole."""

    priced = 0

    def _rates(self, *args: Any, **kwargs: Any) -> Any:
        self.priced += 1
        return super()._rates(*args, **kwargs)


# A report's prompt side: as message_start gave it, or changed mid-stream (cache counts, the
# 5m/1h split, input, a web search), or a 0 / null the core's merge keeps the count over.
PROMPT_CHANGES = st.sampled_from([
    {}, {}, {}, {},  # most reports: the output count alone
    {"input_tokens": 0}, {"input_tokens": None}, {"cache_read_input_tokens": 0},
    {"cache_read_input_tokens": 90_000}, {"cache_read_input_tokens": 260_000},
    {"cache_creation_input_tokens": 4_000},
    {"cache_creation": {"ephemeral_5m_input_tokens": 1_000, "ephemeral_1h_input_tokens": 3_000}},
    {"cache_creation": {"ephemeral_1h_input_tokens": 0}},
    {"input_tokens": 120_000}, {"server_tool_use": {"web_search_requests": 2}},
])


@st.composite
def streams(draw: st.DrawFn) -> tuple[PriceTable, Modifiers, list[SSEEvent]]:
    prices, model = draw(st.sampled_from(TABLES)), draw(st.sampled_from(MODELS))
    modifiers = draw(st.sampled_from(MODIFIERS))
    prompt = {"input_tokens": draw(st.sampled_from([10, 3_000, 99_000, 150_000, 199_999])),
              "cache_read_input_tokens": draw(st.sampled_from([0, 1, 40_000])),
              "cache_creation_input_tokens": draw(st.sampled_from([0, 2_000])),
              "output_tokens": 1}
    events = [start(model, prompt)]
    repeat = draw(st.booleans())  # the API repeats the prompt counts in every message_delta
    output = 1
    for _ in range(draw(st.integers(1, 25))):
        for _ in range(draw(st.integers(0, 3))):
            events.append(text(draw(st.sampled_from([0, 3, 40, 2_000]))))
        # up to 300,000 tokens a report: output alone crosses every tier's threshold
        output += draw(st.sampled_from([0, 1, 7, 250, 60_000, 300_000]))
        usage: dict[str, Any] = dict(prompt) if repeat else {}
        usage.update(draw(PROMPT_CHANGES))
        usage["output_tokens"] = output
        events.append(delta(usage))
    events.append(delta({**(prompt if repeat else {}), "output_tokens": output}, "end_turn"))
    return prices, modifiers, events


@settings(max_examples=400, deadline=None)
@given(streams())
def test_the_running_cost_is_full_repricing_at_every_event(
        stream: tuple[PriceTable, Modifiers, list[SSEEvent]]) -> None:
    """Exact (integer picodollars) at every event: output crossing a tier's threshold changes
    nothing, for tiers count prompt tokens only (the catalogue refuses any other count, next
    test); a change of cache counts, input or web searches mid-stream is priced whole."""
    prices, modifiers, events = stream
    watch = StreamWatch({"b": 1}, None, modifiers=modifiers)
    for one in events:
        watch.feed(one)
        assert watch.running_cost(prices) == full_price(watch, prices)


def test_output_never_decides_a_tier() -> None:
    """What the watch's incremental pricing rests on: a tier's threshold counts prompt
    tokens alone. Were an output-counted tier allowed, the watch would have to price every
    report whole (the output rate could change with the output count)."""
    with pytest.raises(PriceError, match="counts"):
        PriceTable.load({"claude-haiku-4-5": {"tiers": [
            {"above": 1000, "counts": ["input", "output"], "multiplier": "2"}]}})


def test_a_report_of_output_alone_is_not_priced_whole() -> None:
    """The table prices the usage whole at the first report, when something besides the
    output count changes, and when the model does — not at a report of output alone, even
    one that repeats every prompt count unchanged (as the API's message_delta does)."""
    prices = CountingTable.load()
    prompt = {"input_tokens": 3_000, "cache_read_input_tokens": 500,
              "cache_creation": {"ephemeral_5m_input_tokens": 10}, "output_tokens": 1}
    watch = StreamWatch({"b": 1}, None)
    wholes: list[int] = []
    events = [start("claude-opus-4-6", prompt), text(40),
              *[delta({**prompt, "output_tokens": n}) for n in (12, 30, 31, 80)],
              delta({"output_tokens": 95}), delta({"output_tokens": 95, "input_tokens": 0}),
              delta({"output_tokens": 120, "cache_read_input_tokens": 900}),  # cache moved
              delta({"output_tokens": 130,
                     "cache_creation": {"ephemeral_5m_input_tokens": 10}}),
              delta({"output_tokens": 140, "server_tool_use": {"web_search_requests": 1}}),
              delta({"output_tokens": 150}, "end_turn")]
    for one in events:
        watch.feed(one)
        before = prices.priced
        assert watch.running_cost(prices) == full_price(watch, prices)
        wholes.append(prices.priced - before - 1)  # less full_price's own pricing
    # priced whole: at message_start, the cache_read change and the web search; not the text
    # delta, the repeated prompt, the 0 the merge ignores, nor the unchanged 5m split
    assert wholes == [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0]
    watch.model = "claude-haiku-4-5"  # another model: priced whole again
    before = prices.priced
    assert watch.running_cost(prices) == full_price(watch, prices)
    assert prices.priced - before - 1 == 1


def checks(stream: list[SSEEvent], prices: PriceTable, reserved: int, cap: int,
           whole: bool) -> list[tuple[int, int, int, int]]:
    """on_chunk's growth and cut, every event fed: each check that passed the reservation,
    as (event, cost, step, reservation); the last one past ``cap`` is where the stream is
    cut. ``whole``: each event's cost from pricing the running usage whole (as before)."""
    watch = StreamWatch({"b": cap}, None)
    out: list[tuple[int, int, int, int]] = []
    for index, one in enumerate(stream):
        if not watch.feed(one):
            continue
        cost = full_price(watch, prices) if whole else watch.running_cost(prices)
        step = watch.step(cost)
        if cost + step > reserved:
            out.append((index, cost, step, reserved))
            need = cost + step - reserved
            if reserved + need > cap:
                return out
            reserved += max(need, min(reserved, cap - reserved))
    return out


def test_a_hard_budget_cuts_the_stream_at_the_same_event_as_full_repricing() -> None:
    """Streams whose message_deltas repeat the prompt counts (and now and then move the
    cache counts): growth and cut at the same events, with the same costs, as when each
    report was priced whole."""
    rng = random.Random(10)
    cut = 0
    for _ in range(300):
        prices = rng.choice(TABLES)
        model = rng.choice(MODELS)
        prompt = {"input_tokens": rng.choice([10, 3_000, 150_000]),
                  "cache_read_input_tokens": rng.choice([0, 5_000]), "output_tokens": 1}
        stream, output = [start(model, prompt)], 1
        for _ in range(rng.randrange(1, 80)):
            if rng.random() < 0.7:
                stream.append(text(rng.choice([1, 4, 17, 200])))
                continue
            output += rng.randrange(0, 400)
            usage = {**prompt, "output_tokens": output}
            if rng.random() < 0.1:
                prompt["cache_read_input_tokens"] += rng.randrange(1, 50_000)
                usage["cache_read_input_tokens"] = prompt["cache_read_input_tokens"]
            stream.append(delta(usage))
        stream.append(delta({**prompt, "output_tokens": output + 5}, "end_turn"))
        reserved = rng.choice([10**6, 10**7, 10**8, 10**9])
        cap = reserved * rng.choice([1, 2, 5])
        before = checks(stream, prices, reserved, cap, whole=True)
        assert checks(stream, prices, reserved, cap, whole=False) == before
        cut += bool(before) and before[-1][1] + before[-1][2] > cap
    assert cut > 30


def test_a_worked_cut() -> None:
    """One stream on Opus 4.6 ($5 in, $25 out per MTok) under a $0.05 hard budget held in
    full: 1,000 prompt tokens ($0.005), then reports of output alone, 400 tokens ($0.01)
    apart. The report of 1,400 tokens ($0.04) plus its step ($0.01) stays within $0.05, the
    next (1,800: $0.05, plus $0.01) does not: cut there, at event 6, as before."""
    prices = PriceTable.load()
    prompt = {"input_tokens": 1_000, "output_tokens": 1}
    stream = [start("claude-opus-4-6", prompt), text(8)]
    stream += [delta({**prompt, "output_tokens": n}) for n in (200, 600, 1_000, 1_400, 1_800,
                                                               2_200)]
    limit = 5 * 10**10  # $0.05
    every = checks(stream, prices, limit, limit, whole=False)
    assert every == checks(stream, prices, limit, limit, whole=True)
    assert every == [(6, 5 * 10**9 + 1_800 * 25 * 10**6, 10**10, limit)]


def test_cost_is_cost_and_output_rates_cost() -> None:
    """cost() is cost_and_output_rate()'s cost: one way to price."""
    prices = PriceTable.load()
    usage = Usage()
    usage.update({"input_tokens": 250_000, "output_tokens": 9, "cache_read_input_tokens": 3})
    for model in MODELS:
        for modifiers in MODIFIERS:
            cost, rate = prices.cost_and_output_rate(usage, model, modifiers=modifiers)
            assert cost == prices.cost(usage, model, modifiers=modifiers)
            assert (rate is None) == (cost.model is None)
