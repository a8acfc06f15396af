"""``midway router status``, the status route, the service and the metrics."""

from __future__ import annotations

import json
import urllib.request

import anthropic
from click.testing import CliRunner
from conftest import key_of, wait_idle

from midway.cli import cli
from midway.secrets_ref import fingerprint
from midway.testing import Reply, wait_for

KEYS = ["sk-ant-status-a", "sk-ant-status-b"]
MSG = {"model": "claude-sonnet-4-6", "max_tokens": 16,
       "messages": [{"role": "user", "content": "hi"}]}


def config(url, **extra):
    return {"router": {"upstreams": [{"name": "anthropic", "url": url, "keys": KEYS}],
                       "status_interval": 0.05, **extra}}


def rest_first_key(fake_upstream, proxy):
    """Send requests until the first key has answered 429 (it is then resting)."""
    fake_upstream.fake.default = lambda rec: Reply(
        status=429, headers={"retry-after": "30"}) if key_of(rec) == KEYS[0] else Reply(
        headers={"anthropic-ratelimit-requests-limit": "50",
                 "anthropic-ratelimit-requests-remaining": "41",
                 "anthropic-ratelimit-requests-reset": "2099-01-01T00:00:00Z"})
    sdk = anthropic.Anthropic(base_url=proxy.url, api_key="client-key", max_retries=0)
    for _ in range(40):
        sdk.messages.create(**MSG)
        if any(key_of(r) == KEYS[0] for r in fake_upstream.messages_requests):
            return
    raise AssertionError("the first key was never chosen")


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_reads_the_snapshot_of_a_running_server(fake_upstream, midway_factory,
                                                    router_plugin):
    proxy = midway_factory(plugins=[router_plugin], config=config(fake_upstream.url))
    rest_first_key(fake_upstream, proxy)
    wait_idle(proxy)
    data_dir = str(proxy.midway.settings.data_dir)

    def rows():
        return {r["key"]: r for r in json.loads(run_cli("router", "status", "--json",
                                                        "--data-dir", data_dir))}

    def settled():  # the snapshot written after the last request finished
        found = rows()
        return found.get(fingerprint(KEYS[0]), {}).get("health") == "resting" and \
            found[fingerprint(KEYS[1])]["remaining"] and \
            all(row["in_flight"] == 0 for row in found.values())

    wait_for(settled)
    found = rows()
    resting, healthy = found[fingerprint(KEYS[0])], found[fingerprint(KEYS[1])]
    assert resting["resting_until"] > 0 and resting["rests"] == 1
    assert healthy["health"] == "ok"
    assert healthy["remaining"] == {"requests": 41}
    assert healthy["in_flight"] == 0 and healthy["served"] >= 1
    text = run_cli("router", "status", "--data-dir", data_dir)
    assert fingerprint(KEYS[0]) in text and "resting" in text
    for secret in KEYS:
        assert secret not in text
        assert secret not in json.dumps(found)


def test_status_route_and_cli_url(fake_upstream, midway_factory, router_plugin):
    proxy = midway_factory(plugins=[router_plugin], config=config(fake_upstream.url))
    rest_first_key(fake_upstream, proxy)
    wait_idle(proxy)
    with urllib.request.urlopen(proxy.url + "/_midway/router/status") as resp:
        rows = json.loads(resp.read())
    assert {r["key"] for r in rows} == {fingerprint(k) for k in KEYS}
    output = json.loads(run_cli("router", "status", "--json", "--url", proxy.url))
    assert {r["key"]: r["health"] for r in output}[fingerprint(KEYS[0])] == "resting"


def test_service_and_metrics(fake_upstream, midway_factory, router_plugin):
    proxy = midway_factory(plugins=[router_plugin], config=config(fake_upstream.url))
    rest_first_key(fake_upstream, proxy)
    wait_idle(proxy)
    service = proxy.midway.services["router"]
    assert callable(service.status)
    assert {row["health"] for row in service.status()} == {"ok", "resting"}
    with urllib.request.urlopen(proxy.url + "/metrics") as resp:
        text = resp.read().decode()
    assert 'midway_router_key_rests_total{upstream="anthropic"} 1.0' in text
    assert 'midway_router_retries_total{reason="rate_limited"} 1.0' in text
    assert f'midway_router_key_usable{{key="{fingerprint(KEYS[0])}",upstream="anthropic"}} 0.0' \
        in text
    assert "midway_router_routed_total" in text


def test_no_status_found_is_explained(tmp_path):
    result = CliRunner().invoke(cli, ["router", "status", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert "no router status found" in result.output


def test_a_server_without_routes_is_said_to_pass_through(fake_upstream, midway_factory,
                                                        router_plugin):
    proxy = midway_factory(plugins=[router_plugin], upstream=fake_upstream.url)
    data_dir = proxy.midway.settings.data_dir
    wait_for(lambda: any(data_dir.glob("router-status-*.json")))
    for args in (["--data-dir", str(data_dir)], ["--url", proxy.url]):
        result = CliRunner().invoke(cli, ["router", "status", *args])
        assert result.exit_code == 0, result.output
        assert "no upstreams configured; the router is passing requests through" \
            in result.output
        assert "is a midway server" not in result.output


def test_a_stopped_server_leaves_no_snapshot(fake_upstream, midway_factory, router_plugin):
    proxy = midway_factory(plugins=[router_plugin], config=config(fake_upstream.url))
    data_dir = proxy.midway.settings.data_dir
    wait_for(lambda: any(data_dir.glob("router-status-*.json")))
    proxy.call(proxy._runner.cleanup())  # shut the server down (the fixture ends the loop)
    proxy._runner = None
    assert not any(data_dir.glob("router-status-*.json"))
    result = CliRunner().invoke(cli, ["router", "status", "--data-dir", str(data_dir)])
    assert "no router status found" in result.output
