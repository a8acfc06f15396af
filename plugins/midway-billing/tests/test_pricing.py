from decimal import Decimal

import orjson
import pytest

from midway import SSEEvent, Usage
from midway_billing.pricing import PriceError, PriceTable, usd


def event(name: str, payload: dict[str, object]) -> SSEEvent:
    """A server-sent event as the core hands it to ``on_chunk``."""
    data = orjson.dumps(payload).decode()
    return SSEEvent(name, data, f"event: {name}\ndata: {data}\n\n".encode())


def _price_tables() -> list[PriceTable]:
    """Rates in whole picodollars a token (most) and finer ones (a seven-decimal override)."""
    return [PriceTable.load(), PriceTable.load(unknown_policy="unpriced"),
            PriceTable.load({"claude-haiku-4-5": {"input": "1.0000001", "output": "5.1234567"}})]


def usage(**fields: object) -> Usage:
    u = Usage()
    u.update(fields)
    return u


def test_reference_check_claude_code_figure() -> None:
    table = PriceTable.load()
    cost = table.cost(usage(input_tokens=110, cache_creation_input_tokens=50,
                            cache_read_input_tokens=20, output_tokens=47), "claude-opus-4-8")
    assert usd(cost.total) == Decimal("0.0020475")
    assert cost.model == "claude-opus-4-8"


def test_every_usage_field_priced_by_its_own_rate() -> None:
    table = PriceTable.load()
    u = usage(input_tokens=1000, output_tokens=2000, cache_creation_input_tokens=700,
              cache_creation={"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 400},
              cache_read_input_tokens=5000, server_tool_use={"web_search_requests": 3})
    cost = table.cost(u, "claude-sonnet-4-5-20250929")
    expected = (Decimal(1000) * 3 + Decimal(2000) * 15 + Decimal(300) * Decimal("3.75")
                + Decimal(400) * 6 + Decimal(5000) * Decimal("0.30")) / 10**6 + 3 * Decimal("0.01")
    assert usd(cost.total) == expected
    assert usd(cost.cache_write_1h) == Decimal(400) * 6 / 10**6  # never the 5m rate
    assert usd(cost.cache_read) == Decimal("0.0015")  # never the input rate
    assert usd(cost.web_search) == Decimal("0.03")


@pytest.mark.parametrize(("model", "expected"), [
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("claude-opus-4-1@20250805", "claude-opus-4-1"),
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
    ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
    ("claude-3-haiku-20240307", "claude-3-haiku"),
    ("claude-haiku-4-5", "claude-haiku-4-5"),
])
def test_aliases_and_dated_ids(model: str, expected: str) -> None:
    price = PriceTable.load().lookup(model)
    assert price is not None and price.model == expected


def test_unknown_model_is_flagged_and_billed_at_the_catalogue_tier() -> None:
    cost = PriceTable.load().cost(usage(input_tokens=10, output_tokens=10), "gpt-9")
    assert cost.unpriced and cost.rule == "unknown_model"
    assert usd(cost.total) == Decimal(10 * 5 + 10 * 25) / 10**6
    free = PriceTable.load(unknown_policy="unpriced").cost(usage(input_tokens=10), "gpt-9")
    assert free.unpriced and free.total == 0 and free.rule == "unpriced"


def test_config_overrides_and_extends() -> None:
    table = PriceTable.load({"claude-opus-4-8": {"output": "30"},
                             "vendor-x": {"input": 2, "output": "8", "cache_write_5m": "2.5",
                                          "cache_write_1h": "4", "cache_read": "0.2"},
                             "alias-y": {"same_as": "claude-haiku-4-5"}})
    opus = table.lookup("claude-opus-4-8-20261201")
    assert opus is not None and opus.output == Decimal(30) and opus.input == Decimal(5)
    vendor = table.lookup("vendor-x")
    assert vendor is not None and vendor.cache_write_1h == Decimal(4)
    assert vendor.cache_read == Decimal("0.2")
    alias = table.lookup("alias-y")
    assert alias is not None and alias.output == Decimal(5)
    with pytest.raises(PriceError, match="cache_read"):  # never assumed to be 0.1x input
        PriceTable.load({"new-model": {"input": "1", "output": "5", "cache_write_5m": "1.25",
                                       "cache_write_1h": "2"}})
    with pytest.raises(PriceError):
        PriceTable.load({"claude-opus-4-8": {"ouptut": "1"}})


def test_batch_discount_halves_tokens_not_searches() -> None:
    table = PriceTable.load()
    u = usage(input_tokens=1_000_000, output_tokens=1_000_000,
              server_tool_use={"web_search_requests": 1})
    assert usd(table.cost(u, "claude-haiku-4-5", batch=True).total) == Decimal("3.01")


def test_claude_code_default_model_is_priced() -> None:
    # claude-opus-5-5: 110 in, 50 cache write (5m), 20 cache read, 47 out.
    cost = PriceTable.load().cost(usage(input_tokens=110, cache_creation_input_tokens=50,
                                        cache_read_input_tokens=20, output_tokens=47),
                                  "claude-opus-5-5-20261101")
    assert usd(cost.total) == Decimal("0.001634")  # (440 + 250 + 4 + 940) / 1e6


def test_config_overrides_take_tiers_fast_geo_and_dated_rates() -> None:
    from midway_billing.pricing import Modifiers

    table = PriceTable.load({"vendor-z": {
        "input": "2", "cache_write_5m": "2.5", "cache_write_1h": "4", "cache_read": "0.1",
        "output": "8",
        "tiers": [{"above": 1000, "counts": ["input", "cache_read"], "multiplier": "2",
                   "beta": "long-1"}],
        "fast": {"input": "4", "cache_write_5m": "5", "cache_write_1h": "8",
                 "cache_read": "0.2", "output": "16"},
        "geo": {"us": "1.5"}, "previous": [{"until": "2026-01-01", "output": "9"}]}})
    u = usage(input_tokens=1000, cache_read_input_tokens=1, output_tokens=10)
    plain = table.cost(u, "vendor-z")
    assert plain.rule == "override" and usd(plain.total) == Decimal("0.0020801")
    tiered = table.cost(u, "vendor-z", modifiers=Modifiers(betas=frozenset({"long-1"})))
    assert tiered.rule == "override;tier>1000" and tiered.total == 2 * plain.total
    fast_us = table.cost(u, "vendor-z", modifiers=Modifiers(speed="fast", geo="US"))
    assert fast_us.rule == "override;fast;geo=us"
    assert usd(fast_us.total) == Decimal("0.0041602") * Decimal("1.5")
    old = table.cost(u, "vendor-z", modifiers=Modifiers(at=1_700_000_000))  # 2023
    assert old.rule == "override;before=2026-01-01" and old.output == plain.output * 9 // 8


@pytest.mark.parametrize(("entry", "message"), [
    ({"same_as": "claude-haiku-4-5", "tiers": [{"above": 10, "counts": ["output"],
                                                "multiplier": "2"}]}, "counts"),
    ({"same_as": "claude-haiku-4-5", "tiers": [{"above": 10, "counts": ["input"]}]},
     "which rates change"),
    ({"same_as": "claude-haiku-4-5", "fast": {"input": "1"}}, "give every rate"),
    ({"same_as": "claude-haiku-4-5", "geo": "us"}, "us = "),
    ({"same_as": "claude-haiku-4-5", "previous": [{"until": "soon", "input": "1"}]},
     "a date like"),
])
def test_bad_override_modifiers_say_what_is_wrong(entry: dict[str, object],
                                                  message: str) -> None:
    with pytest.raises(PriceError, match=message):
        PriceTable.load({"m": entry})


def test_remembered_token_prices_are_the_exact_ones() -> None:
    """The per-component prices are remembered (a stream under a hard budget is priced at
    every event): the same picodollars as computing them, whatever rate spelling came first."""
    import random

    from midway_billing.pricing import _MTOK, to_pusd, tokens_pusd

    rng = random.Random(24)
    rates = [Decimal("3"), Decimal("3.00"), Decimal("0.30"), Decimal("3.75"), Decimal("15"),
             Decimal("0.000001"), Decimal("1.234567890123")]
    for _ in range(2000):
        count, rate = rng.choice([0, 1, 7, 999_999, rng.randrange(10**7)]), rng.choice(rates)
        assert tokens_pusd(count, rate) == to_pusd(Decimal(count) * rate / _MTOK)


def test_whole_picodollar_rates_price_tokens_exactly_without_decimal(tmp_path) -> None:
    """``pusd_per_token``: a rate of six decimals per MTok or fewer is a whole number of
    picodollars a token, and ``count`` times it is the Decimal price exactly; a finer rate
    has none. A request's reservation estimate, which uses it, is the Decimal formula's to the
    picodollar for rates of either kind."""
    import random

    from midway.options import load_table
    from midway.testing import make_exchange
    from midway_billing.config import BillingConfig
    from midway_billing.plugin import Billing
    from midway_billing.pricing import _MTOK, pusd_per_token, to_pusd

    rng = random.Random(2024)
    for _ in range(3000):
        decimals = rng.randrange(0, 10)
        rate = Decimal(rng.randrange(0, 10**(decimals + 3))).scaleb(-decimals)
        whole = pusd_per_token(rate)
        assert (whole is not None) == (rate * 10**6 == int(rate * 10**6))
        count = rng.choice([0, 1, 4096, rng.randrange(10**7)])
        if whole is not None:
            assert count * whole == to_pusd(Decimal(count) * rate / _MTOK)
    for rates in (("3", "15"), ("3.1234567", "15"), ("3", "15.00000001")):
        config = load_table(BillingConfig, "billing", {"prices": {
            "claude-test-1": {"input": rates[0], "output": rates[1], "cache_write_5m": "1",
                              "cache_write_1h": "1", "cache_read": "1"}}}, data_dir=tmp_path)
        billing = Billing(config)
        for size, max_tokens in ((1, 1), (8859, 4096), (300_001, 64_000), (17, 0)):
            body = {"model": "claude-test-1", "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": "x" * size}]}
            exchange = make_exchange(body)
            tokens = -(-len(exchange.request.body) * 10 // 30)  # bytes_per_token = 3.0
            reserved = min(max_tokens, config.reserve_output_tokens)
            assert billing.estimate(exchange) == to_pusd(
                (Decimal(tokens) * Decimal(rates[0]) + Decimal(reserved) * Decimal(rates[1]))
                / _MTOK)


def test_running_usage_is_what_updating_a_fresh_usage_gives() -> None:
    """running() keeps the last reported usage between events: at every event it must equal
    the usage built from scratch (the reported one, plus the text since at ~4 chars a token)."""

    from midway import Usage
    from midway_billing.streamwatch import StreamWatch, floor_tokens

    def scratch(watch: StreamWatch) -> Usage:
        usage = Usage()
        usage.update(watch.usage)
        if watch.chars:
            usage.update({"output_tokens": usage.output_tokens + floor_tokens(watch.chars)})
        return usage

    delta = {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": "Hello there, "}}
    events = [
        event("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [], "usage": {"input_tokens": 1200, "output_tokens": 1,
                                     "cache_read_input_tokens": 30,
                                     "cache_creation": {"ephemeral_1h_input_tokens": 7},
                                     "server_tool_use": {"web_search_requests": 2}}}}),
        *[event("content_block_delta", delta) for _ in range(5)],
        event("message_delta", {"type": "message_delta", "delta": {"stop_reason": None},
                                "usage": {"output_tokens": 12}}),
        *[event("content_block_delta", delta) for _ in range(3)],
        event("message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": "end_turn"},
                                "usage": {"output_tokens": 40, "input_tokens": 1300}}),
    ]
    watch = StreamWatch({}, None)
    assert watch.running() == scratch(watch)  # before any usage came
    for one in events:
        watch.feed(one)
        first, second = watch.running(), watch.running()
        assert first == scratch(watch) == second
        first.raw["output_tokens"] = -1  # a caller's copy: the next one is untouched
        assert watch.running() == scratch(watch)
    watch = StreamWatch({}, None)
    watch.feed(events[1])  # text before any usage
    assert watch.running() == scratch(watch) and watch.running().seen


def test_the_watch_merges_usage_as_the_core_assembler_does() -> None:
    """The watch keeps the usage alone (no assembler of its own per stream): at every event
    its usage and model are the core's MessageAssembler's — a 0 or null never erasing a
    count, nested objects merged field by field, a second message_start ignored."""

    from midway import SSEEvent
    from midway.assemble import MessageAssembler
    from midway_billing.streamwatch import StreamWatch

    def start(model: str, usage: dict) -> SSEEvent:
        return event("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [], "usage": usage}})

    def delta(usage: dict) -> SSEEvent:
        return event("message_delta", {"type": "message_delta", "delta": {"stop_reason": None},
                                       "usage": usage})

    events = [
        start("claude-x", {"input_tokens": 10, "output_tokens": 1,
                           "cache_creation": {"ephemeral_5m_input_tokens": 4},
                           "server_tool_use": {"web_search_requests": 1}}),
        delta({"output_tokens": 0, "input_tokens": None}),
        delta({"output_tokens": 9, "server_tool_use": {"web_fetch_requests": 2}}),
        start("claude-y", {"input_tokens": 99}),
        delta({"cache_creation": {"ephemeral_1h_input_tokens": 3}, "output_tokens": 12}),
    ]
    for first in (0, 1):  # from message_start, and a delta before any start
        watch, core = StreamWatch({}, None), MessageAssembler()
        for one in events[first:]:
            watch.feed(one)
            core.feed_event(one)
            assert (watch.usage, watch.model) == (core.usage, core.model)
    assert watch.usage["output_tokens"] == 12


def test_running_cost_is_the_price_of_the_running_usage_at_every_event() -> None:
    """running_cost prices only the output count between two reports: at every event of
    random streams it must equal pricing running() whole — across models (an unknown one, an
    unpriced table), fast mode past the 1M-context tier (a later report moving the prompt
    across it), data residency, batch, and modifiers changed mid-stream."""
    import random

    import attrs

    from midway_billing.pricing import Modifiers
    from midway_billing.streamwatch import StreamWatch

    tables = _price_tables()
    models = ["claude-opus-4-6", "claude-sonnet-4-5-20250929", "claude-haiku-4-5", "no-such"]
    betas = frozenset({"context-1m-2025-08-07"})
    modifier_choices = [Modifiers(), Modifiers(speed="fast", betas=betas), Modifiers(geo="us"),
                        Modifiers(batch=True), Modifiers(speed="fast", geo="us", betas=betas)]
    rng = random.Random(2024)
    checked = 0
    for _ in range(300):
        prices, model = rng.choice(tables), rng.choice(models)
        watch = StreamWatch({"b": 1}, None, modifiers=rng.choice(modifier_choices))
        prompt = rng.choice([10, 150_000, 199_990, 250_000])
        stream = [event("message_start", {"type": "message_start", "message": {
            "model": model, "usage": {"input_tokens": prompt, "output_tokens": 1,
                                      "cache_read_input_tokens": rng.randrange(5000)}}})]
        output = 1
        for _ in range(rng.randrange(1, 40)):
            roll = rng.random()
            if roll < 0.75:
                text = "x" * rng.randrange(0, 30)
                stream.append(event("content_block_delta", {
                    "type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": text}}))
            elif roll < 0.95:
                output += rng.randrange(0, 20)
                usage = {"output_tokens": output}
                if rng.random() < 0.3:  # the prompt side reported again, perhaps larger
                    usage["input_tokens"] = prompt + rng.choice([0, 60_000])
                stream.append(event("message_delta", {
                    "type": "message_delta", "delta": {"stop_reason": None}, "usage": usage}))
            else:
                stream.append(event("ping", {"type": "ping"}))
        for one in stream:
            watch.feed(one)
            if rng.random() < 0.05:
                watch.modifiers = rng.choice(modifier_choices)
            elif rng.random() < 0.05:  # an equal object: priced again, to the same cost
                watch.modifiers = attrs.evolve(watch.modifiers)
            expected = prices.cost(watch.running(), watch.model,
                                   modifiers=watch.modifiers).total
            assert watch.running_cost(prices) == expected
            assert watch.running_cost(prices) == expected  # remembered: the same again
            checked += 1
    assert checked > 3000


def test_a_streams_step_is_what_the_last_event_added_never_negative() -> None:
    import math

    from midway_billing.streamwatch import StreamWatch, floor_tokens

    watch = StreamWatch({"b": 1}, None)
    assert [watch.step(cost) for cost in (5, 9, 9, 7, 12)] == [0, 4, 0, 0, 5]
    watch.final = True  # the answer is complete: nothing more will cost
    assert watch.step(40) == 0 and watch.cost == 40
    assert [floor_tokens(n) for n in range(10_000)] == [math.ceil(n / 4) for n in range(10_000)]


def test_usd_str_is_the_exact_decimal_in_plain_notation() -> None:
    """usd_str formats in integers: the same text as the Decimal dollars it stands for."""
    import random

    from midway_billing.pricing import usd, usd_str

    rng = random.Random(7)
    values = [0, 1, -1, 10**12, -(10**12), 10**12 + 1, 5 * 10**11, 10**24 + 7, 999_999_999_999]
    values += [rng.randint(-(10**18), 10**18) for _ in range(2000)]
    values += [rng.randint(-999, 999) * 10**k for k in range(15) for _ in range(20)]
    for value in values:
        assert usd_str(value) == format(usd(value), "f")
    assert (usd_str(1), usd_str(-25 * 10**10), usd_str(3 * 10**12)) == (
        "0.000000000001", "-0.25", "3")


def test_a_hard_budgets_stream_is_grown_and_cut_where_watching_every_event_would() -> None:
    """The core shows a hard budget's watch only the usage events and the text past the mark
    the watch sets (``StreamWatch.mark``); it catches up on the text relayed unseen. Every
    check that grows the reservation or cuts the stream comes at the same event, with the
    same cost and step, as when every event is fed (as billing did before the mark)."""
    import random

    from midway import SSEEvent
    from midway.observe import delta_text
    from midway_billing.streamwatch import StreamWatch

    tables = _price_tables()
    models = ["claude-opus-4-6", "claude-haiku-4-5", "no-such"]
    usage_events = {"message_start", "message_delta", "message_stop", "error"}
    rng = random.Random(24)

    def run(stream: list[SSEEvent], prices: PriceTable, reserved: int, cap: int,
            marked: bool) -> list[tuple[int, int, int, int]]:
        """Each check that passed the reservation: (event, cost, step, reservation)."""
        watch = StreamWatch({"b": cap}, None)
        checks: list[tuple[int, int, int, int]] = []
        streamed, mark = 0, -1
        for index, one in enumerate(stream):
            chars = delta_text(one.json()) if one.name == "content_block_delta" else 0
            streamed += chars
            if marked:
                shown = one.name in usage_events if one.name != "content_block_delta" \
                    else mark is not None and streamed > mark
                if not shown:
                    continue
                watch.catch_up(streamed - chars, prices)
            if not watch.feed(one):
                continue
            cost = watch.running_cost(prices)
            step = watch.step(cost)
            if cost + step > reserved:
                checks.append((index, cost, step, reserved))
                need = cost + step - reserved
                if reserved + need > cap:
                    return checks  # cut here
                reserved += max(need, min(reserved, cap - reserved))
            if marked:
                mark = watch.mark(prices, reserved, streamed)
        return checks

    grown = cut = 0
    for _ in range(400):
        prices, model = rng.choice(tables), rng.choice(models)
        output = 1
        stream = [event("message_start", {"type": "message_start", "message": {
            "model": model, "usage": {"input_tokens": rng.choice([10, 3000, 150_000]),
                                      "output_tokens": 1}}})]
        if rng.random() < 0.1:  # text before any usage
            stream.insert(0, event("content_block_delta", {
                "type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "early"}}))
        for _ in range(rng.randrange(1, 120)):
            roll = rng.random()
            if roll < 0.85:
                stream.append(event("content_block_delta", {
                    "type": "content_block_delta", "index": 0, "delta": {
                        "type": rng.choice(["text_delta", "thinking_delta"]),
                        "text": "y" * rng.choice([0, 1, 3, 4, 17, 200, 2000])}}))
            elif roll < 0.95:
                output += rng.randrange(0, 400)
                stream.append(event("message_delta", {
                    "type": "message_delta", "delta": {"stop_reason": None},
                    "usage": {"output_tokens": output}}))
            else:
                stream.append(event("ping", {"type": "ping"}))
        stream.append(event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": output + rng.randrange(0, 50)}}))
        stream.append(event("message_stop", {"type": "message_stop"}))
        reserved = rng.choice([1, 10**6, 10**7, 10**8, 10**9])
        cap = reserved * rng.choice([1, 2, 5, 1000])
        every = run(stream, prices, reserved, cap, marked=False)
        assert run(stream, prices, reserved, cap, marked=True) == every
        grown += len(every) > 0
        cut += bool(every) and every[-1][1] + every[-1][2] > cap
    assert grown > 50 and cut > 20  # both paths exercised
