"""``[billing]`` is declared on midway.options: one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from midway.config import ConfigError
from midway.options import load_table
from midway_billing.config import BillingConfig


def load(table: dict[str, object], tmp_path: Path, env: dict[str, str] | None = None
         ) -> BillingConfig:
    return load_table(BillingConfig, "billing", table, env=env, source="midway.toml",
                      data_dir=tmp_path)


def test_defaults_are_the_documented_ones(tmp_path: Path) -> None:
    config = load({}, tmp_path)
    assert config.store.path == tmp_path / "billing.db"
    assert config.bytes_per_token == 3
    assert config.reconcile_interval == 30
    assert config.budgets == []
    assert config.prices.lookup("claude-sonnet-4-5") is not None  # the shipped table


@pytest.mark.parametrize(("table", "env", "says"), [
    ({"bytes_per_tokn": 2}, None, "midway.toml: [billing] bytes_per_tokn: unknown setting; "
                                  "did you mean `bytes_per_token`?"),
    ({"bytes_per_token": 0}, None, "[billing] bytes_per_token: expected a number > 0"),
    ({"budgets": [{"scope": "galaxy", "limit_usd": "1"}]}, None, "scope must be one of"),
    ({"prices": {"my-model": {"input": "x"}}}, None, "[billing] prices"),
    ({}, {"MIDWAY_BILLING__MAX_POOL": "many"}, "MIDWAY_BILLING__MAX_POOL: [billing] max_pool"),
])
def test_every_mistake_is_one_config_error_naming_the_key(
        tmp_path: Path, table: dict[str, object], env: dict[str, str] | None, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(table, tmp_path, env)
    assert says in str(caught.value)
    assert "PriceError" not in str(caught.value)
    assert "\n" not in str(caught.value)
