"""``midway billing reconcile`` against a fake Admin API that checks the admin key and pages
its answers: per day, model and API key, midway's figure beside Anthropic's and the cause."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import anthropic
import orjson
import pytest
from admin_fake import FakeAdmin
from click.testing import CliRunner
from helpers import PLUGIN, ledger

from midway import Upstream, hookimpl
from midway.cli import cli
from midway.secrets_ref import fingerprint
from midway.testing import Reply
from midway_billing.anthropic_report import AdminAPIError, check_admin_url

ADMIN_KEY = "sk-ant-admin01-secret-do-not-print"


@pytest.fixture
def scene(midway_factory, fake_upstream, monkeypatch):
    """Five requests through midway; Anthropic's report has them and more."""
    @hookimpl
    def choose_upstream(exchange):  # a pooled key, as the router names it: its fingerprint
        return Upstream(url=fake_upstream.url, headers={"x-api-key": "sk-ant-pooled"},
                        passthrough_auth=False, key_id=fingerprint("sk-ant-pooled"))

    router = SimpleNamespace(__name__="router", choose_upstream=choose_upstream)
    running = midway_factory(plugins=[PLUGIN, router])
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-test", max_retries=0)
    sent = [("claude-opus-4-8", 1000, 100), ("claude-opus-4-8", 1000, 100),
            ("claude-haiku-4-5", 2000, 200), ("claude-sonnet-4-6", 1000, 100),
            ("claude-zeta-9", 100, 10)]
    for model, tokens_in, tokens_out in sent:
        searches = 2 if model == "claude-haiku-4-5" else 0  # $0.01 each, a cost item of its own
        fake_upstream.reply(Reply(usage={"input_tokens": tokens_in, "output_tokens": tokens_out,
                                         "server_tool_use": {"web_search_requests": searches}}))
        client.messages.create(model=model, max_tokens=10,
                               messages=[{"role": "user", "content": "x"}])
    rows = ledger(running, len(sent))
    day = datetime.fromtimestamp(rows[0]["created_at"], UTC).strftime("%Y-%m-%d")
    key_id = rows[0]["key_id"]
    assert key_id and all(r["key_id"] == key_id for r in rows)
    admin = FakeAdmin(ADMIN_KEY)
    admin.usage = {
        (day, "claude-opus-4-8-20261001", "apikey_A"): {"uncached_input_tokens": 2000,
                                                       "output_tokens": 200},
        (day, "claude-opus-4-8-20261001", "apikey_B"): {"uncached_input_tokens": 4000},
        (day, "claude-haiku-4-5-20251001", "apikey_A"): {"uncached_input_tokens": 2000,
                                                        "output_tokens": 200,
                                                        "web_search_requests": 2},
        (day, "claude-sonnet-4-6", "apikey_A"): {"uncached_input_tokens": 1000,
                                                 "output_tokens": 100},
        (day, "claude-zeta-9", "apikey_A"): {"uncached_input_tokens": 100,
                                             "output_tokens": 10}}
    admin.costs = [  # cents: opus 6000 in × $5 + 200 out × $25 per MTok = 3.5 ¢
        (day, "claude-opus-4-8-20261001", "tokens", "uncached_input_tokens", "3"),
        (day, "claude-opus-4-8-20261001", "tokens", "output_tokens", "0.5"),
        (day, "claude-haiku-4-5-20251001", "tokens", "uncached_input_tokens", "0.2"),
        (day, "claude-haiku-4-5-20251001", "tokens", "output_tokens", "0.1"),
        (day, "claude-sonnet-4-6", "tokens", "uncached_input_tokens", "0.35"),  # 3.50/MTok
        (day, "claude-sonnet-4-6", "tokens", "output_tokens", "0.15"),
        (day, "claude-zeta-9", "tokens", "uncached_input_tokens", "0.1"),
        (day, None, "web_search", None, "2")]
    server = admin.start()
    monkeypatch.setenv("MIDWAY_PLUGINS", "billing")
    yield running, admin, server, key_id, day
    server.stop()


def reconcile(running, server, *extra: str):
    return CliRunner().invoke(
        cli, ["billing", "reconcile", "--since", "2d", "--admin-url", server.url,
         "--data-dir", str(running.midway.settings.data_dir), *extra])


def test_reconcile_per_day_model_and_key(scene) -> None:
    running, admin, server, key_id, day = scene
    out = reconcile(running, server, "--admin-key", ADMIN_KEY, "--key", f"{key_id}=apikey_A",
                    "--json")
    assert out.exit_code == 0, out.output
    assert ADMIN_KEY not in out.output
    result = orjson.loads(out.output)
    costs = {r["model"]: r for r in result["costs"]}
    assert set(costs) == {"claude-opus-4-8", "claude-haiku-4-5", "claude-sonnet-4-6",
                          "claude-zeta-9", "(web search)"}
    assert (costs["(web search)"]["midway_usd"], costs["(web search)"]["cause"]) == (
        "0.02", "matches")
    opus = costs["claude-opus-4-8"]
    assert (opus["day"], opus["midway_usd"], opus["anthropic_usd"], opus["difference_usd"]) \
        == (day, "0.015", "0.035", "0.02")
    assert "bypassed the gateway" in opus["cause"] and "4000 more tokens" in opus["cause"]
    assert costs["claude-haiku-4-5"]["cause"] == "matches"
    assert costs["claude-haiku-4-5"]["difference_usd"] == "0"
    assert "rate differs" in costs["claude-sonnet-4-6"]["cause"]
    assert costs["claude-sonnet-4-6"]["difference_usd"] == "0.0005"
    assert "unpriced model" in costs["claude-zeta-9"]["cause"]

    usage = {(r["model"], r["api_key"]): r for r in result["usage"]}
    assert usage[("claude-opus-4-8", "apikey_A")]["cause"] == "matches"
    bypass = usage[("claude-opus-4-8", "apikey_B")]
    assert bypass["midway_tokens"] == 0 and bypass["anthropic_tokens"] == 4000
    assert "bypassed" in bypass["cause"]
    # Both reports were read to their last page (three days, one per page), with the key.
    for path in ("/v1/organizations/usage_report/messages", "/v1/organizations/cost_report"):
        calls = [c for c in admin.calls if c["path"] == path]
        assert len(calls) == 3 and all(c["key_ok"] for c in calls)
        assert sum(1 for k, _ in calls[-1]["query"] if k == "page") == 1
    usage_query = next(c for c in admin.calls if "usage" in c["path"])["query"]
    assert ("group_by[]", "model") in usage_query and ("group_by[]", "api_key_id") in usage_query
    assert ("bucket_width", "1d") in usage_query

    table = reconcile(running, server, "--admin-key", ADMIN_KEY, "--wide")
    assert table.exit_code == 0, table.output
    assert "claude-opus-4-8" in table.output and "bypassed" in table.output
    assert f"midway:{key_id}" in table.output  # unmapped: shown under midway's fingerprint
    assert ADMIN_KEY not in table.output


def test_a_wrong_admin_key_is_one_line_without_the_key(scene, monkeypatch) -> None:
    running, _, server, _, _ = scene
    out = reconcile(running, server, "--admin-key", "sk-ant-admin01-wrong-key-123")
    assert out.exit_code == 1
    assert "401" in out.output and "Admin API key" in out.output
    assert "wrong-key" not in out.output and "Traceback" not in out.output
    monkeypatch.setenv("ADMIN_FROM_ENV", ADMIN_KEY)
    out = reconcile(running, server, "--admin-key", "env:ADMIN_FROM_ENV", "--json")
    assert out.exit_code == 0, out.output
    out = reconcile(running, server, "--admin-key", "env:NOT_SET_ANYWHERE")
    assert out.exit_code == 1 and "NOT_SET_ANYWHERE is not set" in out.output


def test_the_admin_key_goes_only_over_https_or_to_this_machine() -> None:
    assert check_admin_url("https://api.anthropic.com/") == "https://api.anthropic.com"
    assert check_admin_url("http://127.0.0.1:9999") == "http://127.0.0.1:9999"
    for url in ("http://example.com", "ftp://api.anthropic.com", "api.anthropic.com"):
        with pytest.raises(AdminAPIError):
            check_admin_url(url)
