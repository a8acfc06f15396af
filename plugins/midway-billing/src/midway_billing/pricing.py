"""The price table and the cost of one usage, in exact decimal arithmetic.

Costs are carried as integer picodollars (1e-12 USD): every price with up to six decimals per
million tokens gives an integral number of them, sums never drift, and both SQLite and
PostgreSQL add integers exactly.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from importlib import resources
from typing import Any

import attrs

from midway import Usage

PICO = 10**12
_MTOK = Decimal(10**6)
RATE_FIELDS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
# Standard cache multipliers, used only to fill rates a config entry leaves out.
_DERIVED = {"cache_write_5m": Decimal("1.25"), "cache_write_1h": Decimal(2),
            "cache_read": Decimal("0.1")}

_DATE_SUFFIX = re.compile(r"-(\d{8}|latest)$")
_BEDROCK_VERSION = re.compile(r"-v\d+(:\d+)?$")


class PriceError(ValueError):
    """A price table entry cannot be used."""


def to_decimal(value: Any, where: str) -> Decimal:
    """A price from TOML: a string ("0.30") or a number; floats go through their shortest repr."""
    if isinstance(value, bool):
        raise PriceError(f"{where}: expected a number, got {value!r}")
    try:
        result = Decimal(str(value)) if isinstance(value, int | float | str) else None
    except InvalidOperation:
        result = None
    if result is None or not result.is_finite() or result < 0:
        raise PriceError(f"{where}: expected a non-negative number, got {value!r}")
    return result


def usd(pusd: int) -> Decimal:
    """Picodollars as an exact Decimal number of dollars, without trailing zeros."""
    value = Decimal(pusd) / PICO
    return value.quantize(Decimal(1)) if value == value.to_integral() else value.normalize()


def usd_str(pusd: int) -> str:
    return format(usd(pusd), "f")


def to_pusd(value: Decimal) -> int:
    return int((value * PICO).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


@attrs.frozen
class Price:
    """Rates of one model in USD per million tokens (web search: USD per request)."""

    model: str
    family: str
    input: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    output: Decimal
    web_search_per_request: Decimal
    batch_discount: Decimal

    def as_dict(self) -> dict[str, str]:
        return {"model": self.model, "family": self.family,
                **{f: format(getattr(self, f), "f") for f in RATE_FIELDS},
                "web_search_per_request": format(self.web_search_per_request, "f"),
                "batch_discount": format(self.batch_discount, "f")}


@attrs.frozen
class Cost:
    """What one usage costs, by kind, in picodollars."""

    model: str | None  # the table entry used; None when unpriced
    input: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    output: int = 0
    web_search: int = 0

    @property
    def unpriced(self) -> bool:
        return self.model is None

    @property
    def total(self) -> int:
        return (self.input + self.cache_write_5m + self.cache_write_1h + self.cache_read
                + self.output + self.web_search)

    def breakdown(self) -> dict[str, str]:
        return {"input": usd_str(self.input), "cache_write_5m": usd_str(self.cache_write_5m),
                "cache_write_1h": usd_str(self.cache_write_1h),
                "cache_read": usd_str(self.cache_read), "output": usd_str(self.output),
                "web_search": usd_str(self.web_search)}


def normalise(model: str) -> str:
    """The id a provider-specific or dated model name is built on."""
    name = model.strip().lower()
    if "anthropic." in name:  # Bedrock: [us.|eu.|global.]anthropic.<id>-v1:0
        name = name.split("anthropic.", 1)[1]
        name = _BEDROCK_VERSION.sub("", name)
    name = name.split("@", 1)[0]  # Vertex: <id>@<date>
    return _DATE_SUFFIX.sub("", name)


class PriceTable:
    """Model id → :class:`Price`: the shipped table with config overrides applied."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self.prices = dict(prices)

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None) -> PriceTable:
        """The shipped table, then ``[billing.prices."<model>"]`` entries over it."""
        shipped = tomllib.loads(
            resources.files("midway_billing").joinpath("prices.toml").read_text("utf-8"))
        defaults = shipped.get("defaults", {})
        web = to_decimal(defaults.get("web_search_per_request", "0.01"), "defaults")
        batch = to_decimal(defaults.get("batch_discount", "0.5"), "defaults")
        prices: dict[str, Price] = {}
        for family, entry in shipped.get("families", {}).items():
            rates = {f: to_decimal(entry[f], f"family {family}.{f}") for f in RATE_FIELDS}
            for model in entry["models"]:
                prices[model] = Price(model=model, family=family, web_search_per_request=web,
                                      batch_discount=batch, **rates)
        table = cls(prices)
        for model, entry in (overrides or {}).items():
            table._override(str(model), entry, web, batch)
        return table

    def _override(self, model: str, entry: Any, web: Decimal, batch: Decimal) -> None:
        where = f'[billing.prices."{model}"]'
        if not isinstance(entry, Mapping):
            raise PriceError(f"{where} must be a table")
        unknown = set(entry) - {*RATE_FIELDS, "web_search_per_request", "batch_discount",
                                "family", "same_as"}
        if unknown:
            raise PriceError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        base = None
        if "same_as" in entry:  # e.g. a router alias, or another vendor's name for a model
            base = self.lookup(str(entry["same_as"]))
            if base is None:
                raise PriceError(f"{where}: same_as {entry['same_as']!r} is not in the table")
        else:
            base = self.prices.get(normalise(model))
        given = {k: to_decimal(v, f"{where}.{k}") for k, v in entry.items()
                 if k not in ("family", "same_as")}
        if base is None and not {"input", "output"} <= given.keys():
            raise PriceError(f"{where}: a new model needs at least 'input' and 'output'")
        rates: dict[str, Decimal] = {}
        for field in RATE_FIELDS:
            if field in given:
                rates[field] = given[field]
            elif base is not None:
                rates[field] = getattr(base, field)
            else:
                rates[field] = given["input"] * _DERIVED[field]
        family = str(entry.get("family") or (base.family if base else model))
        self.prices[model.strip().lower()] = Price(
            model=model, family=family,
            web_search_per_request=given.get("web_search_per_request",
                                             base.web_search_per_request if base else web),
            batch_discount=given.get("batch_discount", base.batch_discount if base else batch),
            **rates)

    def lookup(self, model: str | None) -> Price | None:
        if not model:
            return None
        exact = self.prices.get(model.strip().lower())
        return exact if exact is not None else self.prices.get(normalise(model))

    def max_rates(self) -> tuple[Decimal, Decimal]:
        """The highest input and output rates in the table: estimates for unpriced models."""
        if not self.prices:
            return Decimal(0), Decimal(0)
        return (max(p.input for p in self.prices.values()),
                max(p.output for p in self.prices.values()))

    def cost(self, usage: Usage, model: str | None, batch: bool = False) -> Cost:
        """The cost of ``usage`` on ``model``; unpriced (``Cost.model is None``) if unknown."""
        price = self.lookup(model)
        if price is None:
            return Cost(model=None)
        factor = (1 - price.batch_discount) if batch else Decimal(1)

        def tokens(count: int, rate: Decimal) -> int:
            return to_pusd(Decimal(count) * rate * factor / _MTOK)

        return Cost(
            model=price.model,
            input=tokens(usage.input_tokens, price.input),
            cache_write_5m=tokens(usage.cache_creation_5m_input_tokens, price.cache_write_5m),
            cache_write_1h=tokens(usage.cache_creation_1h_input_tokens, price.cache_write_1h),
            cache_read=tokens(usage.cache_read_input_tokens, price.cache_read),
            output=tokens(usage.output_tokens, price.output),
            web_search=to_pusd(Decimal(usage.web_search_requests)
                               * price.web_search_per_request),
        )
