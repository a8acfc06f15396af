"""The ``[billing]`` config table (docs/billing.md), declared once: built by
``midway.options("billing", BillingConfig)`` at start-up and ``settings.options(...)`` in the
commands; a typo or a bad value is one :class:`midway.config.ConfigError` naming the key."""

from __future__ import annotations

import attrs

from midway.options import option, schema_name, store_option
from midway.storage import StoreURL, new_instance, open_database
from midway_billing.budgets import Budget, parse_budgets
from midway_billing.pricing import UNKNOWN_POLICIES, Catalogue, PriceTable
from midway_billing.store import Store

LABEL = "[billing] store"


@attrs.define
class BillingConfig:
    store: StoreURL = store_option(
        "billing.db", help="SQLite path, or postgresql://... (also env:NAME / file:PATH)")
    schema: str | None = option(None, converter=schema_name,
                                help="PostgreSQL schema to use (created if missing)")
    project_header: str = option("x-midway-project",
                                 help="request header naming the project to bill")
    prices: PriceTable = option(
        factory=PriceTable.load, converter=PriceTable.load,
        help="price overrides and new models, per model name (see Prices)")
    unknown_model: str = option(
        "catalogue", converter=lambda v: _choice(v, UNKNOWN_POLICIES, "unknown_model"),
        help="models no price names: \"catalogue\" (its [unknown_model] rule: a $5/$25 "
        "tier, flagged unpriced, warned once per model) or \"unpriced\" ($0, flagged)")
    prices_file: str = option(
        "billing-prices.toml",
        help="a catalogue that replaces the shipped one when present (relative: in the data "
        "dir); `midway billing prices update` installs it; running instances watch it")
    prices_watch_interval: float = option(
        5.0, ge=0, help="seconds between checks of prices_file for a new catalogue (0: only "
        "at start-up)")
    budgets: list[Budget] = option([], converter=parse_budgets,
                                   help="budgets ([[billing.budgets]], see Budgets)")
    bytes_per_token: float = option(3.0, gt=0,
                                    help="request bytes per input token, for reservations")
    reserve_output_tokens: int = option(
        4096, ge=0, help="output tokens a reservation assumes at most (the reserved output "
        "is min(max_tokens, this))")
    reconcile_interval: float = option(
        30.0, ge=0, help="seconds between reconciliations of dead instances' rows "
        "(0: only at start-up)")
    max_pool: int = option(10, ge=1, help="PostgreSQL: connections per instance")
    spend_limits: bool = option(
        False, help="enforce spend limits per user, group and organisation (daily, weekly, "
        "monthly; set with /v1/organizations/spend_limits or `midway billing spend-limits`) "
        "and report each user's own in the anthropic-ratelimit-unified-* headers")
    spend_limits_on_store_error: str = option(
        "open", converter=lambda v: _choice(v, ("open", "closed"),
                                            "spend_limits_on_store_error"),
        help="when the store cannot be reached to check a spend limit: \"open\" lets the "
        "request through unmetered against the caps (as Anthropic's gateway does by "
        "default), \"closed\" refuses it (429 billing_error, spend limit unavailable)")
    spend_limits_group_mode: str = option(
        "min", converter=lambda v: _choice(v, ("min", "max"), "spend_limits_group_mode"),
        help="a member of several capped groups gets the most restrictive group's cap "
        "(\"min\") or the most generous (\"max\"); equal caps: the group named first")
    spend_limits_check_timeout: float = option(
        5.0, gt=0, help="seconds a capped request waits for the store to reserve against its "
        "caps before the store counts as unreachable (spend_limits_on_store_error decides)")
    spend_limits_refresh: float = option(
        5.0, gt=0, help="seconds between reloads of the spend limits from the store (how "
        "soon a change made on another instance applies here)")

    def price_table(self, catalogue: Catalogue | None = None) -> PriceTable:
        """The prices in force: ``catalogue`` (else the configured one's) with this config's
        overrides and unknown-model policy."""
        return PriceTable(catalogue or self.prices.catalogue, self.prices.overrides,
                          self.unknown_model)

    def make_store(self) -> Store:
        """This config's store (not opened yet), under a new random instance number."""
        db = open_database(self.store, schema=self.schema, label=LABEL, max_pool=self.max_pool)
        return Store(db, new_instance())


def _choice(value: object, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
    return str(value)
