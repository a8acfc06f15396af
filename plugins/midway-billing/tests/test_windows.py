from datetime import UTC, datetime

import pytest

from midway_billing.budgets import Attribution, parse_budgets, window
from midway_billing.pricing import PriceError


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def test_day_month_total_windows_in_utc() -> None:
    assert window("day", ts(2026, 11, 24, 23, 59, 59)) == (ts(2026, 11, 24), ts(2026, 11, 25))
    assert window("month", ts(2026, 12, 31, 12)) == (ts(2026, 12, 1), ts(2027, 1, 1))
    assert window("month", ts(2028, 2, 29)) == (ts(2028, 2, 1), ts(2028, 3, 1))
    assert window("total", ts(2026, 1, 1)) == (0.0, None)


def test_budgets_apply_by_scope_and_match() -> None:
    budgets = parse_budgets([
        {"scope": "team", "match": "search", "limit_usd": "5"},
        {"scope": "project", "limit_usd": 1.5, "mode": "soft"},
        {"scope": "all", "period": "total", "limit_usd": "100"}])
    alice = Attribution("alice", "alice", "search", None)
    bob = Attribution("bob", "bob", "ads", "apollo")
    assert [b.applies(alice) for b in budgets] == [["search"], [], ["*"]]
    assert [b.applies(bob) for b in budgets] == [[], ["apollo"], ["*"]]
    assert budgets[1].limit_pusd == 1_500_000_000_000 and not budgets[1].hard
    for bad in ({"scope": "galaxy", "limit_usd": "1"}, {"scope": "team"},
                {"period": "year", "limit_usd": "1"}, {"mode": "maybe", "limit_usd": "1"},
                {"limit_usd": "-1"}):
        with pytest.raises(PriceError):
            parse_budgets([bad])


@pytest.mark.parametrize("period", ["day", "week", "month"])
def test_a_window_is_the_calendar_window_of_its_timestamp(period: str) -> None:
    """window() remembers windows per UTC day: any moment of a day, its first and last
    instants included, gets the window its own date says."""
    import random

    rng = random.Random(period)
    moments = [rng.uniform(0, 4e9) for _ in range(3000)]
    moments += [day * 86400 + offset for day in rng.sample(range(46000), 300)
                for offset in (0.0, 0.001, 43200.0, 86399.999)]
    for now in moments:
        moment = datetime.fromtimestamp(now, UTC)
        midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        if period == "day":
            start = midnight.timestamp()
        elif period == "week":
            start = midnight.timestamp() - 86400 * midnight.weekday()
        else:
            start = midnight.replace(day=1).timestamp()
        assert window(period, now)[0] == start


def test_a_requests_budget_checks_are_remembered_per_attribution_and_utc_day(
        tmp_path) -> None:
    """Billing remembers each attribution's checks for the UTC day: what ``checks_for`` works
    out at any moment of that day (its first and last instants too), worked out again from
    midnight on and for anyone whose attribution differs."""
    from midway.options import load_table
    from midway_billing.budgets import checks_for
    from midway_billing.config import BillingConfig
    from midway_billing.plugin import Billing

    config = load_table(BillingConfig, "billing", {"budgets": [
        {"scope": "principal", "period": "day", "limit_usd": "5"},
        {"scope": "team", "period": "week", "limit_usd": "50"},
        {"scope": "group", "period": "month", "limit_usd": "500"},
        {"scope": "all", "period": "total", "limit_usd": "5000", "mode": "soft"}]},
        data_dir=tmp_path)
    billing = Billing(config)
    alice = Attribution("alice", "alice", "search", None, ("root",), ("eng", "ops"))
    bob = Attribution("bob", "bob", "ads", "apollo")
    for who in (alice, bob, Attribution("alice", "alice", "ads", None, ("root",), ("eng",))):
        for moment in (ts(2026, 12, 6), ts(2026, 12, 6, 13), ts(2026, 12, 6, 23, 59, 59),
                       ts(2026, 12, 7), ts(2026, 12, 31, 23, 59, 59), ts(2027, 1, 1)):
            assert billing._checks_for(who, moment) == tuple(
                checks_for(config.budgets, who, moment))
    assert billing._checks_for(alice, ts(2026, 12, 6, 1)) is \
        billing._checks_for(alice, ts(2026, 12, 6, 22))
