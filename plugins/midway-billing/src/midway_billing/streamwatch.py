"""The running usage of a streamed answer, event by event: what a hard budget's stream has
cost so far (docs/billing.md, "Streams under a hard budget"), and how much output text it
has relayed (the floor of an interrupted stream, docs/billing.md "Interrupted streams")."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from midway import SSEEvent, Usage
from midway.assemble import copy_usage, merge_usage
from midway.observe import delta_text
from midway_billing.pricing import Modifiers, pusd_per_token, tokens_pusd

if TYPE_CHECKING:
    from midway_billing.pricing import PriceTable

# Text (and thinking, and tool input) per output token, for the output a stream has sent
# since its last ``message_delta`` reported usage.
CHARS_PER_TOKEN = 4
# picodollars per token in a rate of one dollar per million tokens
_PUSD_PER_MTOK = 10**6
# the modifiers of a stream priced under no hard budget: one instance for every open stream
_NO_MODIFIERS = Modifiers()


def _but_output(usage: dict[str, Any]) -> bytes:
    """The usage with its output count left out, as bytes: equal before and after
    ``merge_usage`` exactly when the merge changed nothing else (a value replaced by an equal
    one of another type, 1.0 for 1, counts as a change: only the same value is known to
    price the same)."""
    return orjson.dumps({**usage, "output_tokens": None})


def floor_tokens(chars: int) -> int:
    """Output tokens at least behind ``chars`` characters of relayed output."""
    return -(-chars // CHARS_PER_TOKEN)  # math.ceil(chars / 4), without the float


@attrs.define
class StreamWatch:
    """Usage from ``message_start``, overridden by each ``message_delta``'s (cumulative, by
    the core's rule: a later 0 never erases an earlier count), plus output estimated from the
    text deltas since the last one."""

    limits: dict[str, int | None]  # the reservation's buckets, hard ones with their limit
    model: str | None
    # usage as reported, merged as the core merges it (midway.assemble's merge_usage: the
    # usage alone, not a whole assembler beside the core's for each open stream)
    usage: dict[str, Any] = attrs.field(factory=dict, init=False)
    # message_start or message_delta came: a message_start after either is ignored (as the
    # core's assembler ignores a second start)
    started: bool = attrs.field(default=False, init=False)
    chars: int = 0  # delta text since the last reported usage
    relayed_chars: int = 0  # delta text of the whole stream
    cost: int | None = None  # the running cost at the last event that carried usage
    # what prices the running usage (set under a hard budget; frozen, so one default for all)
    modifiers: Modifiers = _NO_MODIFIERS
    # a message_delta with a stop_reason came: its usage is final, nothing more is generated
    final: bool = False
    # the last reported usage as a Usage, built once per report (not at every event)
    _reported: Usage | None = attrs.field(default=None, init=False, repr=False, eq=False)
    # the last reported usage priced: (table, model, modifiers, its cost less its output,
    # its output tokens, the output rate), for running_cost
    _priced: tuple[PriceTable, str | None, Modifiers, int, int, Decimal | int | None] | None = \
        attrs.field(default=None, init=False, repr=False, eq=False)

    # whether a hard budget holds this stream's reservation: known when the limits are set
    # (on_chunk asks at every event)
    hard: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self.guard(self.limits)

    def guard(self, limits: dict[str, int | None]) -> None:
        """Watch for these limits (None: a bucket counted, not limited)."""
        self.limits = limits
        self.hard = any(limit is not None for limit in limits.values())

    def step(self, cost: int) -> int:
        """Record ``cost``, the running cost now; how much the last event added (0 for the
        first): the next event is expected to add about as much."""
        last, self.cost = self.cost, cost
        if self.final or last is None or cost <= last:  # final: nothing more will cost
            return 0
        return cost - last

    def catch_up(self, streamed: int, prices: PriceTable) -> None:
        """Take the text of the deltas relayed unseen (the core counted it: ``streamed`` is
        ``exchange.streamed_text`` before the event at hand), as if each had been fed: the
        last of them is the event the next one's step is measured from."""
        unseen = streamed - self.relayed_chars
        if unseen > 0:
            self.chars += unseen
            self.relayed_chars = streamed
            self.cost = self.running_cost(prices)

    def mark(self, prices: PriceTable, reserved: int, streamed: int) -> int | None:
        """How far ``streamed`` (``exchange.streamed_text``, now) may grow before a delta must
        be looked at (``None``: never): up to there, every delta's running cost plus its step
        stays within ``reserved``, for both are at most ``2 × cost(text) − cost now`` (the
        cost only grows with the text until the next usage event, which is always seen).
        Called right after ``step``, at the same usage."""
        base = self.cost if self.cost is not None else 0
        room = (reserved + base) // 2  # the most the running cost may reach
        self.running_cost(prices)  # the usage priced (no-op when it is)
        assert self._priced is not None
        _, _, _, rest, output, rate = self._priced
        if rate is None or rate == 0:  # the text costs nothing
            return None if rest <= room else streamed
        if rest > room:
            return streamed
        if isinstance(rate, int):
            tokens = (room - rest) // rate
        else:
            tokens = int((room - rest) // (rate * _PUSD_PER_MTOK))
            while tokens >= 0 and rest + tokens_pusd(tokens, rate) > room:
                tokens -= 1  # the rounding of to_pusd, at most a token or so
        tokens -= output
        if tokens < 0:
            return streamed
        return max(streamed, streamed - self.chars + tokens * CHARS_PER_TOKEN)

    def feed(self, event: SSEEvent) -> bool:
        """Take one event; whether the running usage may have grown."""
        name = event.name
        if name == "content_block_delta":
            payload = event.json()
            if not isinstance(payload, dict):
                return False
            chars = delta_text(payload)
            self.chars += chars
            self.relayed_chars += chars
            return True
        if name != "message_delta" and name != "message_start":
            return False
        payload = event.json()
        if not isinstance(payload, dict):
            return False
        if name == "message_start":
            self._reported = self._priced = None
            message = payload.get("message")
            if isinstance(message, dict) and not self.started:
                self.started = True
                usage = message.get("usage")
                self.usage = copy_usage(usage) if isinstance(usage, dict) else {}
                model = message.get("model")
                if isinstance(model, str):
                    self.model = model
        elif isinstance(payload.get("usage"), dict):
            update = payload["usage"]
            priced = self._priced
            before = _but_output(self.usage) if priced is not None else None
            merge_usage(self.usage, update)
            if priced is not None and before == _but_output(self.usage):
                # Only the output count moved (every report after the first, as a rule):
                # the rest of the price and the output rate hold, for tiers count prompt
                # tokens alone (pricing.PROMPT_PARTS), so running_cost adds the output at
                # that rate — what repricing the whole usage gives, without doing it.
                output = self.usage.get("output_tokens")
                self._priced = (priced[0], priced[1], priced[2], priced[3],
                                output if isinstance(output, int) and
                                not isinstance(output, bool) else 0,  # as Usage reads it
                                priced[5])
                self._reported = None  # built again only if running() is asked for
            else:
                self._reported = self._priced = None
            self.chars = 0
        else:
            self._reported = self._priced = None
        if name == "message_delta":
            self.started = True
            delta = payload.get("delta")
            self.final = isinstance(delta, dict) and delta.get("stop_reason") is not None
        return True

    def running_cost(self, prices: PriceTable) -> int:
        """``prices.cost(self.running(), self.model, modifiers=self.modifiers).total``,
        without building the usage or pricing every field at each event: between two reports
        only the output count grows, and its rate depends on the prompt side alone. A report
        that moves the output count alone (``feed``) keeps the price too; any other change,
        another model, table or modifiers prices the usage whole again."""
        priced = self._priced
        # Modifiers are frozen and set once: the same object, not an equal one, is checked
        # (an attrs __ne__ at every event cost more than the rest of this method)
        if priced is None or priced[0] is not prices or priced[1] != self.model or \
                priced[2] is not self.modifiers:
            reported = self._reported_usage()
            cost, output_rate = prices.cost_and_output_rate(reported, self.model,
                                                            modifiers=self.modifiers)
            rate: Decimal | int | None = output_rate
            whole = pusd_per_token(rate) if rate is not None else None
            if whole is not None:
                # picodollars a token, a whole number (six decimals per MTok or fewer, as
                # most rates): each event's price is one integer product
                rate = whole
            priced = self._priced = (prices, self.model, self.modifiers,
                                     cost.total - cost.output, reported.output_tokens, rate)
        _, _, _, rest, output, rate = priced
        if rate is None:  # unpriced: $0
            return rest
        chars = self.chars
        if chars:
            output -= -chars // CHARS_PER_TOKEN  # floor_tokens, inline: once per event
        if isinstance(rate, int):
            return rest + output * rate
        return rest + tokens_pusd(output, rate)

    def _reported_usage(self) -> Usage:
        reported = self._reported
        if reported is None:
            reported = self._reported = Usage()
            reported.update(self.usage)
        return reported

    def running(self) -> Usage:
        """The usage so far: the last reported, plus the text since at ~4 chars a token."""
        reported = self._reported_usage()
        usage = attrs.evolve(reported, raw=dict(reported.raw))
        if self.chars:
            # what Usage.update({"output_tokens": n}) does to it, without redoing every field
            output = usage.output_tokens + floor_tokens(self.chars)
            usage.raw["output_tokens"] = output
            usage.output_tokens = output
            usage.seen = True
        return usage
