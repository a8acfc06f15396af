"""The price catalogue and the cost of one usage, in exact decimal arithmetic.

The catalogue is data (``prices.toml`` in the package, or a file that replaces it at run time,
docs/billing.md "Prices"): per model, base rates for every token kind, dated earlier rates,
tiers by prompt size, fast-mode rates, data-residency (``inference_geo``) multipliers, the
batch discount and the web-search price, each entry with its source and date; plus the
``unknown_model`` policy for models it does not list.

Costs are carried as integer picodollars (1e-12 USD): every price with up to six decimals per
million tokens gives an integral number of them, sums never drift, and both SQLite and
PostgreSQL add integers exactly.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
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
# What a tier's threshold may count: the prompt's parts (output never decides a tier).
PROMPT_PARTS = ("input", "cache_write", "cache_read")
UNKNOWN_POLICIES = ("catalogue", "unpriced")
SHIPPED = "prices.toml"

_DATE_SUFFIX = re.compile(r"-(\d{8}|latest)$")
_BEDROCK_VERSION = re.compile(r"-v\d+(:\d+)?$")
_ENTRY_FIELDS = {*RATE_FIELDS, "models", "source", "as_of", "tiers", "fast", "geo",
                 "previous", "web_search_per_request", "batch_discount", "note"}
_OVERRIDE_FIELDS = {*RATE_FIELDS, "tiers", "fast", "geo", "previous", "web_search_per_request",
                    "batch_discount", "family", "same_as", "source", "as_of", "note"}


class PriceError(ValueError):
    """A catalogue or a price entry cannot be used."""


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
    """``format(usd(pusd), "f")`` in integer arithmetic (several per request: no Decimal)."""
    if not pusd:  # most of a cost's parts
        return "0"
    whole, frac = divmod(abs(pusd), 10**12)
    text = f"{whole}.{frac:012d}".rstrip("0").rstrip(".") if frac else str(whole)
    return "-" + text if pusd < 0 else text


def to_pusd(value: Decimal) -> int:
    return int((value * PICO).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


@functools.lru_cache(maxsize=1024)
def pusd_per_token(rate: Decimal) -> int | None:
    """``rate`` (dollars per million tokens) in picodollars a token, when that is a whole
    number (six decimals or fewer, as most rates): then ``count * pusd_per_token(rate)`` is
    exactly ``tokens_pusd(count, rate)``, with no Decimal. None otherwise."""
    value = rate * 10**6
    return int(value) if value == value.to_integral_value() else None


@functools.lru_cache(maxsize=4096)
def tokens_pusd(count: int, rate: Decimal) -> int:
    """``count`` tokens at ``rate`` dollars per million, in picodollars. Remembered: a stream
    under a hard budget is priced at every event, with the same input-side counts each time."""
    return to_pusd(Decimal(count) * rate / _MTOK)


def _date(value: Any, where: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise PriceError(f"{where}: expected a date like 2026-10-07, got {value!r}") from None


def _epoch(day: dt.date) -> float:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


@attrs.frozen
class Rates:
    """USD per million tokens of each token kind."""

    input: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    output: Decimal

    def replaced(self, changes: Mapping[str, Decimal]) -> Rates:
        return attrs.evolve(self, **{k: v for k, v in changes.items() if k in RATE_FIELDS})

    def scaled(self, factor: Decimal) -> Rates:
        return Rates(*(getattr(self, f) * factor for f in RATE_FIELDS))

    def as_dict(self) -> dict[str, str]:
        return {f: format(getattr(self, f), "f") for f in RATE_FIELDS}


def _rates(entry: Mapping[str, Any], where: str, base: Rates | None) -> Rates:
    """Rates from ``entry``: every kind given, or (over ``base``) the ones that change. A rate
    is never derived from another: newer models do not follow one cache multiplier."""
    given = {f: to_decimal(entry[f], f"{where}.{f}") for f in RATE_FIELDS if f in entry}
    if base is None:
        missing = [f for f in RATE_FIELDS if f not in given]
        if missing:
            raise PriceError(
                f"{where}: give every rate ({', '.join(RATE_FIELDS)}); missing "
                f"{', '.join(missing)} (cache rates are not derived from input: the cache-read "
                f"multiplier is 0.1x on most models but 0.05x on Opus 5.5 and 0.025x on "
                f"Fable 5.1)")
        return Rates(**given)
    return base.replaced(given)


@attrs.frozen
class Tier:
    """Rates in force when the prompt is larger than ``above`` tokens (counting ``counts``),
    and, if ``beta`` is set, the request asked for that beta (``anthropic-beta``): either every
    rate times ``multiplier`` (the whole request), or the rates in ``rates``."""

    above: int
    counts: tuple[str, ...]
    multiplier: Decimal | None
    rates: dict[str, Decimal]
    beta: str | None = None

    def applies(self, usage: Usage, betas: frozenset[str]) -> bool:
        return self.prompt(usage) > self.above and (self.beta is None or self.beta in betas)

    def prompt(self, usage: Usage) -> int:
        parts = {"input": usage.input_tokens,
                 "cache_write": usage.cache_creation_5m_input_tokens
                 + usage.cache_creation_1h_input_tokens,
                 "cache_read": usage.cache_read_input_tokens}
        return sum(parts[p] for p in self.counts)

    def apply(self, rates: Rates) -> Rates:
        rates = rates.replaced(self.rates)
        return rates.scaled(self.multiplier) if self.multiplier is not None else rates

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"above": self.above, "counts": list(self.counts)}
        if self.beta is not None:
            out["beta"] = self.beta
        if self.multiplier is not None:
            out["multiplier"] = format(self.multiplier, "f")
        out.update({k: format(v, "f") for k, v in self.rates.items()})
        return out


def _tiers(value: Any, where: str) -> tuple[Tier, ...]:
    if not isinstance(value, list):
        raise PriceError(f"{where}: expected a list of tables like "
                         "{ above = 200000, counts = [\"input\", \"cache_write\", "
                         "\"cache_read\"], input = \"6\", output = \"22.50\" }")
    tiers = []
    for n, raw in enumerate(value):
        here = f"{where}[{n}]"
        if not isinstance(raw, Mapping):
            raise PriceError(f"{here}: expected a table")
        unknown = set(raw) - {*RATE_FIELDS, "above", "counts", "multiplier", "beta", "note"}
        if unknown:
            raise PriceError(f"{here}: unknown field(s) {', '.join(sorted(unknown))}")
        above = raw.get("above")
        if not isinstance(above, int) or isinstance(above, bool) or above < 0:
            raise PriceError(f"{here}.above: expected a whole number of prompt tokens")
        counts = raw.get("counts")
        if not isinstance(counts, list) or not counts or \
                any(c not in PROMPT_PARTS for c in counts):
            raise PriceError(f"{here}.counts: expected a list of {', '.join(PROMPT_PARTS)} "
                             "(what counts toward the threshold)")
        multiplier = to_decimal(raw["multiplier"], f"{here}.multiplier") \
            if "multiplier" in raw else None
        rates = {f: to_decimal(raw[f], f"{here}.{f}") for f in RATE_FIELDS if f in raw}
        if multiplier is None and not rates:
            raise PriceError(f"{here}: say which rates change (rates, or a multiplier)")
        beta = raw.get("beta")
        if beta is not None and (not isinstance(beta, str) or not beta.strip()):
            raise PriceError(f"{here}.beta: expected an anthropic-beta value")
        tiers.append(Tier(above, tuple(dict.fromkeys(counts)), multiplier, rates,
                          beta.strip() if beta else None))
    return tuple(sorted(tiers, key=lambda t: t.above))


@attrs.frozen
class Earlier:
    """Rates in force for requests made before ``until`` (a rate change on that day)."""

    until: dt.date
    rates: dict[str, Decimal]


def _previous(value: Any, where: str) -> tuple[Earlier, ...]:
    if not isinstance(value, list):
        raise PriceError(f"{where}: expected a list of tables like "
                         "{ until = \"2026-10-07\", cache_read = \"0.20\" }")
    out = []
    for n, raw in enumerate(value):
        here = f"{where}[{n}]"
        if not isinstance(raw, Mapping) or "until" not in raw:
            raise PriceError(f"{here}: expected a table with `until` and the rates before it")
        unknown = set(raw) - {*RATE_FIELDS, "until", "note"}
        if unknown:
            raise PriceError(f"{here}: unknown field(s) {', '.join(sorted(unknown))}")
        rates = {f: to_decimal(raw[f], f"{here}.{f}") for f in RATE_FIELDS if f in raw}
        out.append(Earlier(_date(raw["until"], f"{here}.until"), rates))
    # Latest first: applied in turn, the earliest change a request predates wins.
    return tuple(sorted(out, key=lambda e: e.until, reverse=True))


@attrs.frozen
class Fast:
    """Fast mode (``speed: "fast"``): its own rates, and tiers of its own."""

    rates: Rates
    tiers: tuple[Tier, ...] = ()


def _fast(value: Any, where: str) -> Fast:
    if not isinstance(value, Mapping):
        raise PriceError(f"{where}: expected a table of rates")
    unknown = set(value) - {*RATE_FIELDS, "tiers", "note"}
    if unknown:
        raise PriceError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    return Fast(_rates(value, where, None),
                _tiers(value["tiers"], f"{where}.tiers") if "tiers" in value else ())


def _geo(value: Any, where: str) -> dict[str, Decimal]:
    if not isinstance(value, Mapping):
        raise PriceError(f"{where}: expected a table like {{ us = \"1.1\" }}")
    return {str(k).lower(): to_decimal(v, f"{where}.{k}") for k, v in value.items()}


@attrs.frozen
class Price:
    """One model's entry in the catalogue."""

    model: str
    family: str
    rates: Rates
    web_search_per_request: Decimal
    batch_discount: Decimal
    source: str
    as_of: str
    tiers: tuple[Tier, ...] = ()
    fast: Fast | None = None
    geo: dict[str, Decimal] = attrs.field(factory=dict)
    previous: tuple[Earlier, ...] = ()
    override: bool = False  # from [billing.prices], not the catalogue

    @property
    def input(self) -> Decimal:
        return self.rates.input

    @property
    def cache_write_5m(self) -> Decimal:
        return self.rates.cache_write_5m

    @property
    def cache_write_1h(self) -> Decimal:
        return self.rates.cache_write_1h

    @property
    def cache_read(self) -> Decimal:
        return self.rates.cache_read

    @property
    def output(self) -> Decimal:
        return self.rates.output

    def rates_at(self, at: float | None) -> Rates:
        rates = self.rates
        if at is not None:
            for earlier in self.previous:
                if at < _epoch(earlier.until):
                    rates = rates.replaced(earlier.rates)
        return rates

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "family": self.family,
                               **self.rates.as_dict(),
                               "web_search_per_request": format(self.web_search_per_request, "f"),
                               "batch_discount": format(self.batch_discount, "f"),
                               "source": self.source, "as_of": self.as_of}
        if self.tiers:
            out["tiers"] = [t.as_dict() for t in self.tiers]
        if self.fast is not None:
            out["fast"] = {**self.fast.rates.as_dict(),
                           **({"tiers": [t.as_dict() for t in self.fast.tiers]}
                              if self.fast.tiers else {})}
        if self.geo:
            out["geo"] = {k: format(v, "f") for k, v in self.geo.items()}
        if self.previous:
            out["previous"] = [{"until": e.until.isoformat(),
                                **{k: format(v, "f") for k, v in e.rates.items()}}
                               for e in self.previous]
        return out


@attrs.frozen
class Cost:
    """What one usage costs, by kind, in picodollars, and the rule that priced it."""

    model: str | None  # the catalogue entry used; None when nothing priced it
    input: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    output: int = 0
    web_search: int = 0
    # "catalogue", "override" (a [billing.prices] entry), "unknown_model" (the catalogue's
    # tier for models it does not list) or "unpriced", then ";"-joined modifiers applied:
    # "tier>N", "fast", "geo=us", "batch", "before=YYYY-MM-DD" (the billing plugin adds
    # "floor" when an interrupted stream's relayed text outweighed its reported output)
    rule: str = "unpriced"
    version: str = ""  # the catalogue version that priced it

    @property
    def unpriced(self) -> bool:
        """No listed price: $0, or the unknown-model tier — either way flagged."""
        return self.model is None or self.rule.startswith("unknown_model")

    @property
    def total(self) -> int:
        return (self.input + self.cache_write_5m + self.cache_write_1h + self.cache_read
                + self.output + self.web_search)

    def breakdown(self) -> dict[str, str]:
        return {"input": usd_str(self.input), "cache_write_5m": usd_str(self.cache_write_5m),
                "cache_write_1h": usd_str(self.cache_write_1h),
                "cache_read": usd_str(self.cache_read), "output": usd_str(self.output),
                "web_search": usd_str(self.web_search)}


@attrs.frozen
class Modifiers:
    """What the request and answer say that changes its price."""

    batch: bool = False
    speed: str | None = None  # "fast"
    geo: str | None = None  # inference_geo: "us", "global"
    at: float | None = None  # when the request was made (dated rate changes)
    betas: frozenset[str] = frozenset()  # the request's anthropic-beta values


def normalise(model: str) -> str:
    """The id a provider-specific or dated model name is built on."""
    name = model.strip().lower()
    if "anthropic." in name:  # Bedrock: [us.|eu.|global.]anthropic.<id>-v1:0
        name = name.split("anthropic.", 1)[1]
        name = _BEDROCK_VERSION.sub("", name)
    name = name.split("@", 1)[0]  # Vertex: <id>@<date>
    return _DATE_SUFFIX.sub("", name)


def shipped_text() -> str:
    return resources.files("midway_billing").joinpath(SHIPPED).read_text("utf-8")


@attrs.frozen
class Catalogue:
    """A parsed catalogue file: its entries by model id, and its unknown-model tier."""

    version: str
    prices: dict[str, Price]
    unknown: Price | None  # None: the catalogue leaves unknown models unpriced
    text: str  # as given, for `prices update` to install unchanged

    @classmethod
    def parse(cls, text: str, where: str = "catalogue") -> Catalogue:
        """Parse and check a whole catalogue; :class:`PriceError` names the first problem."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PriceError(f"{where}: not valid TOML: {exc}") from None
        unknown_keys = set(doc) - {"version", "defaults", "unknown_model", "families"}
        if unknown_keys:
            raise PriceError(f"{where}: unknown table(s) {', '.join(sorted(unknown_keys))}")
        version = doc.get("version")
        if not isinstance(version, str) or not version.strip():
            raise PriceError(f"{where}: needs a `version` string (recorded on every ledger "
                             "row it prices)")
        defaults = doc.get("defaults", {})
        web = to_decimal(defaults.get("web_search_per_request", "0.01"),
                         f"{where} [defaults].web_search_per_request")
        batch = to_decimal(defaults.get("batch_discount", "0.5"),
                           f"{where} [defaults].batch_discount")
        families = doc.get("families")
        if not isinstance(families, Mapping) or not families:
            raise PriceError(f"{where}: no [families.<name>] entries")
        prices: dict[str, Price] = {}
        for family, entry in families.items():
            here = f"{where} [families.{family}]"
            if not isinstance(entry, Mapping):
                raise PriceError(f"{here}: expected a table")
            unknown = set(entry) - _ENTRY_FIELDS
            if unknown:
                raise PriceError(f"{here}: unknown field(s) {', '.join(sorted(unknown))}")
            models = entry.get("models")
            if not isinstance(models, list) or not models or \
                    not all(isinstance(m, str) and m.strip() for m in models):
                raise PriceError(f"{here}.models: expected a list of model ids")
            for field in ("source", "as_of"):
                if not isinstance(entry.get(field), str) or not entry[field].strip():
                    raise PriceError(f"{here}: every entry cites its `source` and `as_of` date")
            _date(entry["as_of"], f"{here}.as_of")
            price = _entry(family, entry, here, web, batch)
            for model in models:
                key = model.strip().lower()
                if key in prices:
                    raise PriceError(f"{here}: {model!r} is listed twice")
                prices[key] = attrs.evolve(price, model=model)
        return cls(version.strip(), prices, _unknown(doc.get("unknown_model"), where, web,
                                                     batch), text)


def _entry(family: str, entry: Mapping[str, Any], where: str, web: Decimal, batch: Decimal,
           base: Price | None = None) -> Price:
    rates = _rates(entry, where, base.rates if base else None)
    return Price(
        model=family, family=family, rates=rates,
        web_search_per_request=to_decimal(entry["web_search_per_request"],
                                          f"{where}.web_search_per_request")
        if "web_search_per_request" in entry else (base.web_search_per_request if base
                                                   else web),
        batch_discount=to_decimal(entry["batch_discount"], f"{where}.batch_discount")
        if "batch_discount" in entry else (base.batch_discount if base else batch),
        source=str(entry.get("source") or (base.source if base else "")),
        as_of=str(entry.get("as_of") or (base.as_of if base else "")),
        tiers=_tiers(entry["tiers"], f"{where}.tiers") if "tiers" in entry
        else (base.tiers if base else ()),
        fast=_fast(entry["fast"], f"{where}.fast") if "fast" in entry
        else (base.fast if base else None),
        geo=_geo(entry["geo"], f"{where}.geo") if "geo" in entry
        else (dict(base.geo) if base else {}),
        previous=_previous(entry["previous"], f"{where}.previous") if "previous" in entry
        else (base.previous if base else ()))


def _unknown(value: Any, where: str, web: Decimal, batch: Decimal) -> Price | None:
    here = f"{where} [unknown_model]"
    if value is None:
        raise PriceError(f"{here}: the catalogue must say how unknown models are billed "
                         "(policy = \"tier\" with rates, or policy = \"unpriced\")")
    if not isinstance(value, Mapping):
        raise PriceError(f"{here}: expected a table")
    policy = value.get("policy")
    if policy == "unpriced":
        return None
    if policy != "tier":
        raise PriceError(f"{here}.policy: expected \"tier\" or \"unpriced\", got {policy!r}")
    unknown = set(value) - {*RATE_FIELDS, "policy", "source", "as_of", "note"}
    if unknown:
        raise PriceError(f"{here}: unknown field(s) {', '.join(sorted(unknown))}")
    return Price(model="unknown_model", family="unknown_model",
                 rates=_rates(value, here, None), web_search_per_request=web,
                 batch_discount=batch, source=str(value.get("source", "")),
                 as_of=str(value.get("as_of", "")))


class PriceTable:
    """Model id → :class:`Price`: a catalogue with config overrides applied.

    :param unknown_policy: ``"catalogue"`` (the catalogue's ``[unknown_model]`` rule) or
        ``"unpriced"`` (unknown models at $0, flagged, whatever the catalogue says).
    """

    def __init__(self, catalogue: Catalogue, overrides: Mapping[str, Any] | None = None,
                 unknown_policy: str = "catalogue") -> None:
        if unknown_policy not in UNKNOWN_POLICIES:
            raise PriceError(f"unknown_model: expected one of {', '.join(UNKNOWN_POLICIES)}, "
                             f"got {unknown_policy!r}")
        self.catalogue = catalogue
        self.overrides: dict[str, Any] = dict(overrides or {})
        self.unknown_policy = unknown_policy
        self.prices = dict(catalogue.prices)
        for model, entry in self.overrides.items():
            self._override(str(model), entry)
        self.unknown = catalogue.unknown if unknown_policy == "catalogue" else None
        self.version = catalogue.version
        if self.overrides:  # the effective table differs from the catalogue's version
            digest = hashlib.sha256(repr(sorted(
                (k, repr(v)) for k, v in self.overrides.items())).encode()).hexdigest()[:8]
            self.version = f"{catalogue.version}+config.{digest}"

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, text: str | None = None,
             unknown_policy: str = "catalogue") -> PriceTable:
        """The catalogue ``text`` (default: the shipped one), then ``[billing.prices."<model>"]``
        entries over it."""
        catalogue = Catalogue.parse(shipped_text() if text is None else text,
                                    "shipped catalogue" if text is None else "catalogue")
        return cls(catalogue, overrides, unknown_policy)

    def with_catalogue(self, catalogue: Catalogue) -> PriceTable:
        """The same overrides and policy over another catalogue."""
        return PriceTable(catalogue, self.overrides, self.unknown_policy)

    def _override(self, model: str, entry: Any) -> None:
        where = f'[billing.prices."{model}"]'
        if not isinstance(entry, Mapping):
            raise PriceError(f"{where} must be a table")
        unknown = set(entry) - _OVERRIDE_FIELDS
        if unknown:
            raise PriceError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        base = None
        if "same_as" in entry:  # e.g. a router alias, or another vendor's name for a model
            base = self.lookup(str(entry["same_as"]))
            if base is None:
                raise PriceError(f"{where}: same_as {entry['same_as']!r} is not in the table")
        else:
            base = self.prices.get(normalise(model))
        price = _entry(str(entry.get("family") or (base.family if base else model)), entry,
                       where, Decimal("0.01"), Decimal("0.5"), base)
        self.prices[model.strip().lower()] = attrs.evolve(
            price, model=model, override=True,
            source=str(entry.get("source") or "midway config [billing.prices]"))

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

    def cost(self, usage: Usage, model: str | None, batch: bool = False,
             modifiers: Modifiers | None = None) -> Cost:
        """The cost of ``usage`` on ``model``; a model not in the table is priced by the
        unknown-model tier (flagged unpriced), or unpriced at $0 if there is none."""
        return self.cost_and_output_rate(usage, model, batch, modifiers)[0]

    def cost_and_output_rate(self, usage: Usage, model: str | None, batch: bool = False,
                             modifiers: Modifiers | None = None) -> tuple[Cost, Decimal | None]:
        """:meth:`cost`, and the rate (dollars per million) it priced the output tokens at
        (``None``: unpriced). The rate depends on the prompt side of ``usage`` only (tiers
        are thresholds on prompt tokens, ``PROMPT_PARTS``), never on the output count: a
        usage that differs in its output count alone costs ``tokens_pusd`` of that count
        more or less, at this rate (what a hard budget's stream watch adds per report)."""
        priced = self._rates(usage, model, batch, modifiers)
        if priced is None:
            return Cost(model=None, rule="unpriced", version=self.version), None
        price, rates, rules = priced
        tokens = tokens_pusd
        return Cost(
            model=price.model,
            input=tokens(usage.input_tokens, rates.input),
            cache_write_5m=tokens(usage.cache_creation_5m_input_tokens, rates.cache_write_5m),
            cache_write_1h=tokens(usage.cache_creation_1h_input_tokens, rates.cache_write_1h),
            cache_read=tokens(usage.cache_read_input_tokens, rates.cache_read),
            output=tokens(usage.output_tokens, rates.output),
            web_search=to_pusd(Decimal(usage.web_search_requests)
                               * price.web_search_per_request)
            if usage.web_search_requests else 0,  # most answers search nothing: no Decimal
            rule=";".join(rules), version=self.version), rates.output

    def _rates(self, usage: Usage, model: str | None, batch: bool,
               modifiers: Modifiers | None) -> tuple[Price, Rates, list[str]] | None:
        """The price entry, the rates and the rules that price ``usage`` (None: unpriced)."""
        mods = modifiers or Modifiers()
        batch = batch or mods.batch
        price = self.lookup(model)
        rule = "override" if price is not None and price.override else "catalogue"
        if price is None:
            price, rule = self.unknown, "unknown_model"
            if price is None:
                return None
        rules = [rule]
        rates = price.rates_at(mods.at)
        if rates is not price.rates and rates != price.rates:  # (most: the same object)
            rules.append("before=" + next(e.until.isoformat() for e in reversed(price.previous)
                                          if mods.at is not None
                                          and mods.at < _epoch(e.until)))
        tiers = price.tiers
        if mods.speed == "fast" and price.fast is not None:
            rates, tiers = price.fast.rates, price.fast.tiers
            rules.append("fast")
        for tier in reversed(tiers):  # the highest threshold passed
            if tier.applies(usage, mods.betas):
                rates = tier.apply(rates)
                rules.append(f"tier>{tier.above}")
                break
        geo = (mods.geo or "").lower()
        if geo in price.geo and price.geo[geo] != 1:
            rates = rates.scaled(price.geo[geo])
            rules.append(f"geo={geo}")
        if batch and price.batch_discount:
            rates = rates.scaled(1 - price.batch_discount)
            rules.append("batch")
        return price, rates, rules
