"""Live price updates: `billing prices update FILE|URL` checks and installs a catalogue, a
running instance swaps to it without a restart (and keeps its prices when the file is bad),
ledger rows name the catalogue version that priced them, and `billing reprice` corrects a
period beside the original rows."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import anthropic
import orjson
import pytest
from click.testing import CliRunner
from helpers import PLUGIN, billing_of, ledger

from midway.cli import cli
from midway.config import ConfigError
from midway.fake_upstream import Reply
from midway.options import load_table
from midway.testing import wait_for
from midway_billing.budgets import Bucket
from midway_billing.config import BillingConfig
from midway_billing.plugin import Billing
from midway_billing.pricing import Catalogue, shipped_text
from midway_billing.store import Reservation

USAGE = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}  # $1 in + $5 out on Haiku 4.5


def corrected(text: str, version: str = "2026-12-06.1") -> str:
    """The shipped catalogue with Haiku 4.5's output at $6 (a correction) and a new version."""
    haiku = text.index("[families.haiku-4-5]")
    out = text.index('output = "5"', haiku)
    text = text[:out] + 'output = "6"' + text[out + len('output = "5"'):]
    return text.replace('version = "2026-12-05.1"', f'version = "{version}"')


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A URL that serves a corrected catalogue."""
    folder = tmp_path / "www"
    folder.mkdir()
    (folder / "prices.toml").write_text(corrected(shipped_text(), "2026-12-07.1"))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/prices.toml"
    server.shutdown()
    server.server_close()
    thread.join()


def test_update_swap_and_reprice(midway_factory, fake_upstream, tmp_path, monkeypatch,
                                 served) -> None:
    running = midway_factory(plugins=[PLUGIN], config={"billing": {
        "prices_watch_interval": 0.05}})
    billing = billing_of(running)
    data_dir = str(running.midway.settings.data_dir)
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-x", max_retries=0)

    def ask() -> None:
        fake_upstream.reply(Reply(usage=USAGE))
        client.messages.create(model="claude-haiku-4-5", max_tokens=5,
                               messages=[{"role": "user", "content": "x"}])

    ask()
    (first,) = ledger(running, 1)
    assert first["catalogue_version"] == "2026-12-05.1" and first["cost_pusd"] == 6 * 10**12
    monkeypatch.setenv("MIDWAY_PLUGINS", "billing")
    runner = CliRunner()

    # A catalogue that fails its check is not installed; the one in force stays.
    bad = tmp_path / "bad.toml"
    bad.write_text(shipped_text().replace('source = "https://www.anthropic.com/pricing"\n',
                                          "", 1))
    out = runner.invoke(cli, ["billing", "prices", "update", str(bad), "--data-dir", data_dir])
    assert out.exit_code != 0 and "not installed" in out.output and "source" in out.output
    assert not (Path(data_dir) / "billing-prices.toml").exists()
    out = runner.invoke(cli, ["billing", "prices", "update", str(tmp_path / "missing.toml"),
                              "--data-dir", data_dir])
    assert out.exit_code != 0 and "cannot read" in out.output

    good = tmp_path / "good.toml"
    good.write_text(corrected(shipped_text()))
    out = runner.invoke(cli, ["billing", "prices", "update", str(good), "--dry-run",
                              "--data-dir", data_dir])
    assert out.exit_code == 0, out.output
    assert "~ claude-haiku-4-5: output 5 -> 6" in out.output and "not installed" in out.output
    out = runner.invoke(cli, ["billing", "prices", "update", str(good), "--data-dir", data_dir])
    assert out.exit_code == 0, out.output
    wait_for(lambda: billing.prices.version == "2026-12-06.1")  # no restart
    ask()
    rows = ledger(running, 2)
    assert rows[1]["catalogue_version"] == "2026-12-06.1"
    assert rows[1]["cost_pusd"] == 7 * 10**12

    # A broken file in the data dir is refused by the running instance: it keeps its prices.
    watched = Path(data_dir) / "billing-prices.toml"
    watched.write_text("version = ")
    watch = billing.prices_watch
    assert watch is not None
    wait_for(lambda: watch._seen == watch._stamp())
    assert billing.prices.version == "2026-12-06.1"
    # ...and a new instance refuses to start on it, in one line.
    with pytest.raises(ConfigError, match=r"prices_file.*billing prices update"):
        Billing(BillingConfig(store=billing.config.store), data_dir=Path(data_dir))

    # From a URL; then the first request is priced again: a correction row beside it.
    out = runner.invoke(cli, ["billing", "prices", "update", served, "--data-dir", data_dir])
    assert out.exit_code == 0, out.output
    wait_for(lambda: billing.prices.version == "2026-12-07.1")
    out = runner.invoke(cli, ["billing", "reprice", "--since", "1h", "--dry-run", "--json",
                              "--data-dir", data_dir])
    result = orjson.loads(out.output)
    assert result["changed"] == 1 and result["delta_usd"] == "1" and not result["applied"]
    assert len(ledger(running, 2)) == 2
    out = runner.invoke(cli, ["billing", "reprice", "--since", "1h", "--data-dir", data_dir])
    assert out.exit_code == 0, out.output
    assert "1 differ" in out.output
    rows = {r["id"]: r for r in ledger(running, 3)}
    fix = rows[f"{first['id']}~1"]
    assert fix["kind"] == "reprice" and fix["corrects"] == first["id"]
    assert fix["cost_pusd"] == 10**12 and fix["catalogue_version"] == "2026-12-07.1"
    assert rows[first["id"]] == first  # the original row, as it was
    (total,) = running.call(billing.report("model"))
    assert total["cost_usd"] == "14" and total["requests"] == 2 and total["attempts"] == 2
    again = runner.invoke(cli, ["billing", "reprice", "--since", "1h", "--json",
                                "--data-dir", data_dir])
    assert orjson.loads(again.output)["changed"] == 0
    assert len(ledger(running, 3)) == 3


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_reprice_on_each_store(backend: str, tmp_path: Path, request) -> None:
    """Corrections for a plain row, an interrupted one (its floor kept) and a batch result (at
    the batch discount), none for a batch submit's row or an errored result; the budget
    counters keep what was charged; a second run adds nothing."""
    table = {"store": request.getfixturevalue("postgres_dsn"),
             "schema": request.getfixturevalue("pg_schema")} if backend == "postgresql" else {}
    base = {"exchange_id": "", "attempt": 1, "kind": "attempt", "state": "settled",
            "instance": 1, "created_at": 1000.0, "settled_at": 1001.0, "principal": "alice",
            "principal_name": "alice", "team": "search", "project": None,
            "model": "claude-haiku-4-5", "priced_model": "claude-haiku-4-5",
            "upstream": "default", "key_id": None, "path": "/v1/messages", "status": 200,
            "error": None, "input_tokens": 1_000_000, "output_tokens": 1_000_000,
            "cache_write_5m_tokens": 0, "cache_write_1h_tokens": 0, "cache_read_tokens": 0,
            "web_search_requests": 0, "cost_pusd": 6 * 10**12, "saved_pusd": 0, "unpriced": 0,
            "batch": 0, "catalogue_version": "2026-12-05.1", "pricing_rule": "catalogue"}
    rows = [{**base, "id": "a.1", "exchange_id": "a"},
            {**base, "id": "b.1", "exchange_id": "b", "output_tokens": 1,
             "floor_output_tokens": 2_000_000, "cost_pusd": 11 * 10**12,
             "pricing_rule": "catalogue;interrupted;floor"},
            {**base, "id": "c.1", "exchange_id": "c", "batch": 1, "path":
             "/v1/messages/batches", "cost_pusd": 3 * 10**12},
            {**base, "id": "msgbatch_01x:r1", "exchange_id": "c", "kind": "batch_result",
             "batch": 1, "path": "/v1/messages/batches/msgbatch_01x/results",
             "cost_pusd": 3 * 10**12, "pricing_rule": "catalogue;batch"},
            {**base, "id": "msgbatch_01x:r2", "exchange_id": "c", "kind": "batch_result",
             "batch": 1, "path": "/v1/messages/batches/msgbatch_01x/results", "status": None,
             "error": "errored", "input_tokens": 0, "output_tokens": 0, "cost_pusd": 0}]

    async def run() -> None:
        config = load_table(BillingConfig, "billing", table, data_dir=tmp_path)
        billing = Billing(config)
        await billing.store.open()
        try:
            key = Bucket("team", "search", "total", 0).key
            await billing.store.reserve(Reservation("a", 1, [key], 1000.0), {key: None})
            await billing.store.settle(rows, Reservation("a", 1, [key], 1000.0), 20 * 10**12)
            billing.use_catalogue(Catalogue.parse(corrected(shipped_text())))
            result = await billing.reprice(since=0, until=2000)
            assert result["changed"] == 3 and result["skipped_batch"] == 1
            # +1 on a, +2 on b (2M floor tokens at +$1), +0.5 on the batch result (+$1 / 2)
            assert result["delta_usd"] == "3.5"
            fixes = {r["id"]: r for r in await billing.store.rows()}
            assert fixes["msgbatch_01x:r1~1"]["cost_pusd"] == 10**12 // 2
            assert fixes["msgbatch_01x:r1~1"]["pricing_rule"] == "reprice;catalogue;batch"
            assert fixes["msgbatch_01x:r1~1"]["corrects"] == "msgbatch_01x:r1"
            assert "msgbatch_01x:r2~1" not in fixes
            found = {r["id"]: r for r in await billing.store.rows()}
            assert found["b.1~1"]["pricing_rule"] == "reprice;catalogue;interrupted;floor"
            assert found["b.1~1"]["cost_pusd"] == 2 * 10**12
            assert found["a.1"]["cost_pusd"] == 6 * 10**12  # the original, as it was
            assert (await billing.store.counters([key]))[key] == (20 * 10**12, 0)
            again = await billing.reprice(since=0, until=2000)
            assert again["changed"] == 0 and len(await billing.store.rows()) == 8
        finally:
            await billing.store.close()

    asyncio.run(run())
