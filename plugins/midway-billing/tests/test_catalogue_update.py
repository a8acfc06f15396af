"""Live price updates: `billing prices update FILE|URL` checks and installs a catalogue, a
running instance swaps to it without a restart (and keeps its prices when the file is bad),
ledger rows name the catalogue version that priced them, and `billing reprice` corrects a
period beside the original rows."""

from __future__ import annotations

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
from midway.testing import wait_for
from midway_billing.config import BillingConfig
from midway_billing.plugin import Billing
from midway_billing.pricing import shipped_text

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
