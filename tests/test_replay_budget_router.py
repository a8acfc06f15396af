"""`midway replay` with every plugin installed: the budget (billing's catalogue estimate, held
under concurrency) and the router (``--upstream``, upstreams without keys of their own)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
from click.testing import CliRunner, Result

import midway_audit
from midway.cli import cli
from midway.testing import FakeUpstream, Reply, RunningMidway, wait_for

SESSION = "b0d6e7a1-1111-4222-8333-444455556666"
KEY = "sk-ant-replay-key-of-the-config"


@pytest.fixture
def second() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture
def recorded(midway_factory: Callable[..., RunningMidway]) -> Path:
    """A 3-turn session recorded with audit bodies on; the data dir it is in."""
    running = midway_factory(plugins=[("audit", midway_audit)], config={"audit": {}})
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-client", max_retries=0,
                                 default_headers={"x-claude-code-session-id": SESSION})
    for turn in range(3):
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=8192, messages=[
                {"role": "user", "content": f"turn {turn}"}]) as events:
            events.get_final_message()
    audit = running.midway.services["audit"]
    wait_for(lambda: len(running.call(audit.query())) == 3)
    running.call(midway_audit.shutdown(running.midway))
    return Path(running.midway.settings.data_dir)


def replay(data_dir: Path, config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["replay", SESSION, *args, "--json", "--config", str(config),
                                    "--data-dir", str(data_dir)])


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "replay.toml"
    path.write_text(text)
    return path


# The fake's answer costs $0.06 in output alone on Sonnet 4.6 ($15 / MTok); each turn's
# estimate is about $0.0615 (max_tokens 8192, held at reserve_output_tokens = 4096).
EXPENSIVE = {"input_tokens": 10, "output_tokens": 4000, "cache_read_input_tokens": 0,
             "cache_creation_input_tokens": 0}


@pytest.mark.parametrize("concurrency", ["1", "3"])
def test_the_budget_stops_before_a_turn_that_could_exceed_it(
        recorded: Path, second: FakeUpstream, tmp_path: Path, concurrency: str) -> None:
    conf = toml(tmp_path, f'[midway]\nupstream = "{second.url}"\nupstream_api_key = "{KEY}"\n')
    second.reply(*[Reply(usage=EXPENSIVE)] * 3)
    result = replay(recorded, conf, "--budget", "0.07", "--concurrency", concurrency)
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    # turn 1 fits; turn 2's estimate on top of what turn 1 cost (or, in flight, of its hold)
    # would not: nothing after it goes
    assert len(second.messages_requests) == 1
    first, *rest = report["turns"]
    assert first["replayed"]["status"] == 200
    assert 0.06 < float(first["replayed"]["cost_usd"]) < 0.07
    assert [t["replayed"]["sent"] for t in rest] == [False, False]
    assert all(t["replayed"]["not_sent"].startswith("budget: the next turn's estimate")
               for t in rest)
    assert report["summary"]["stopped"].startswith("budget:")
    assert float(report["summary"]["replayed_cost_usd"]) <= 0.07

    result = replay(recorded, conf, "--budget", "0.01")
    assert result.exit_code == 0, result.output
    assert len(second.messages_requests) == 1  # not one turn fits
    assert orjson.loads(result.stdout)["summary"]["turns_replayed"] == 0


def test_router_upstreams_by_name_and_only_with_their_own_keys(
        recorded: Path, second: FakeUpstream, fake_upstream: FakeUpstream,
        tmp_path: Path) -> None:
    before = len(fake_upstream.requests)
    conf = toml(tmp_path, f"""
[[router.upstreams]]
name = "passthrough"
url = "{fake_upstream.url}"

[[router.upstreams]]
name = "pooled"
url = "{second.url}"
keys = ["{KEY}"]

[[router.rules]]
name = "everything-to-passthrough"
match = {{ model = "*" }}
target = "passthrough"
""")
    result = replay(recorded, conf)
    assert result.exit_code == 1 and "'passthrough'" in result.output
    assert "has no keys" in result.output and "--upstream NAME" in result.output
    result = replay(recorded, conf, "--upstream", "passthrough")
    assert result.exit_code == 1 and "this upstream has no keys" in result.output
    result = replay(recorded, conf, "--upstream", "elsewhere")
    assert result.exit_code == 1
    assert "its upstreams: passthrough, pooled" in result.output
    assert len(fake_upstream.requests) == before and second.requests == []

    # --upstream overrides the rules: every turn goes to the named upstream, with its key
    result = replay(recorded, conf, "--upstream", "pooled", "--model", "claude-haiku-4-5")
    assert result.exit_code == 0, result.output
    sent = second.messages_requests
    assert len(sent) == 3 and len(fake_upstream.requests) == before
    assert {r.headers["x-api-key"] for r in sent} == {KEY}
    assert {r.json["model"] for r in sent} == {"claude-haiku-4-5"}
    report: dict[str, Any] = orjson.loads(result.stdout)
    assert {t["replayed"]["upstream"] for t in report["turns"]} == {"pooled"}
    assert {t["replayed"]["model"] for t in report["turns"]} == {"claude-haiku-4-5"}
