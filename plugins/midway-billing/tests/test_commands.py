"""``midway billing report | budgets | prices`` read the store a running midway wrote."""

from __future__ import annotations

import csv
import io

import anthropic
import orjson
from click.testing import CliRunner
from helpers import PLUGIN, ledger

from midway.cli import cli
from midway.testing import Reply


def test_report_budgets_prices(midway_factory, fake_upstream, tmp_path, monkeypatch) -> None:
    keys = [{"key": "mk-alice", "name": "alice", "team": "search"}]
    budgets = [{"scope": "team", "match": "search", "period": "month", "limit_usd": "5",
                "name": "search-monthly"}]
    running = midway_factory(plugins=[PLUGIN], config={"midway": {"client_keys": keys},
                                                       "billing": {"budgets": budgets}})
    fake_upstream.reply(Reply(usage={"input_tokens": 110, "cache_creation_input_tokens": 50,
                                     "cache_read_input_tokens": 20, "output_tokens": 47}))
    anthropic.Anthropic(base_url=running.url, api_key="mk-alice", max_retries=0).messages.create(
        model="claude-opus-4-8", max_tokens=100, messages=[{"role": "user", "content": "x"}])
    ledger(running, 1)
    data_dir = str(running.midway.settings.data_dir)
    config = tmp_path / "midway.toml"
    config.write_text('[[billing.budgets]]\nscope = "team"\nmatch = "search"\n'
                      'period = "month"\nlimit_usd = "5"\nname = "search-monthly"\n'
                      '[billing.prices."my-model"]\ninput = "2"\noutput = "8"\n'
                      'cache_write_5m = "2.5"\ncache_write_1h = "4"\ncache_read = "0.1"\n')
    monkeypatch.setenv("MIDWAY_PLUGINS", "billing")
    runner = CliRunner()

    out = runner.invoke(cli, ["billing", "report", "--by", "team", "--json",
                              "--data-dir", data_dir])
    assert out.exit_code == 0, out.output
    (row,) = orjson.loads(out.output)
    assert row["team"] == "search" and row["cost_usd"] == "0.0020475"
    assert row["input_tokens"] == 110 and row["cache_write_5m_tokens"] == 50

    out = runner.invoke(cli, ["billing", "report", "--by", "day", "--csv", "--since", "1d",
                              "--data-dir", data_dir])
    assert out.exit_code == 0, out.output
    (row,) = list(csv.DictReader(io.StringIO(out.output)))
    assert row["cost_usd"] == "0.0020475"

    out = runner.invoke(cli, ["billing", "report", "--until", "2000-01-01", "--json",
                              "--data-dir", data_dir])
    assert orjson.loads(out.output) == []

    out = runner.invoke(cli, ["billing", "budgets", "--json", "--config", str(config),
                              "--data-dir", data_dir])
    assert out.exit_code == 0, out.output
    (budget,) = orjson.loads(out.output)
    assert budget["spent_usd"] == "0.0020475" and budget["reserved_usd"] == "0"
    assert budget["remaining_usd"] == "4.9979525" and budget["resets_at"].endswith("Z")

    out = runner.invoke(cli, ["billing", "prices", "claude-sonnet-4-5-20250929", "--json"])
    assert orjson.loads(out.output)["output"] == "15"
    out = runner.invoke(cli, ["billing", "prices", "--config", str(config)])
    assert "my-model" in out.output and "claude-3-haiku" in out.output

    # Tables for people fit 100 columns (names whole); --wide shows every column.
    for command in (["billing", "prices"], ["billing", "report", "--by", "model"],
                    ["billing", "budgets"]):
        narrow = runner.invoke(cli, [*command, "--config", str(config), "--data-dir", data_dir])
        assert narrow.exit_code == 0, narrow.output
        assert max(len(line) for line in narrow.output.splitlines()) <= 100, narrow.output
        wide = runner.invoke(cli, [*command, "--wide", "--config", str(config),
                                   "--data-dir", data_dir])
        assert len(wide.output.splitlines()[0]) > len(narrow.output.splitlines()[0])
    prices = runner.invoke(cli, ["billing", "prices", "--config", str(config)]).output
    assert "claude-3-5-haiku " in prices and "…" not in prices.splitlines()[0]
    out = runner.invoke(cli, ["billing", "prices", "nope-model"])
    assert out.exit_code != 0 and "no price" in out.output
