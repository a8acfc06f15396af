"""``midway replay``: a 3-turn session of the real CLI, recorded through midway with audit
bodies on, replayed against a second upstream that answers differently (docs/replay.md)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from cc_support import AUTH_TOKEN, OPENAI_MODEL, Claude, Stack, text_reply
from openai_upstream import ChatReply, OpenAIUpstream

from midway import Usage
from midway.testing import FakeUpstream, Reply
from midway_billing.pricing import PriceTable

# The cloud fakes live with the router's tests (they check what AWS would).
sys.path.insert(0, str(Path(__file__).parents[2] / "plugins" / "midway-router" / "tests"))
from fake_bedrock import BedrockReply, FakeBedrockServer

RECORDED_MODEL = "claude-sonnet-4-6"
REPLAY_MODEL = "claude-sonnet-5"
SECOND_KEY = "sk-ant-second-upstream-key"
FINAL = "Both markers printed."
AWS_KEY, AWS_SECRET = "AKIAREPLAYTEST000001", "replay/aws+secret00000000000000000000000"
BEDROCK_MODEL = "anthropic.claude-sonnet-4-6-v1:0"


def _usage(inp: int, out: int, read: int = 0) -> dict[str, Any]:
    return {"input_tokens": inp, "output_tokens": out, "cache_read_input_tokens": read,
            "cache_creation_input_tokens": 0}


def _bash(n: int) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_01Replay000{n}", "name": "Bash",
            "input": {"command": f"echo marker-{n}", "description": f"Print marker {n}"}}


RECORDED = [Reply(content=[_bash(1)], usage=_usage(1200, 40)),
            Reply(content=[_bash(2)], usage=_usage(1300, 41, read=1100)),
            text_reply(FINAL, usage=_usage(1400, 12, read=1200))]
# The second upstream: turn 1 the same answer, turn 2 another tool, turn 3 cut at max_tokens.
SECOND = [Reply(content=[_bash(1)], usage=_usage(1000, 30)),
          Reply(content=[{"type": "tool_use", "id": "toolu_01Replay0009", "name": "Read",
                          "input": {"file_path": "/tmp/marker"}}], usage=_usage(1100, 31)),
          text_reply(FINAL, stop_reason="max_tokens", usage=_usage(1200, 9))]


@pytest.fixture
def bedrock() -> Iterator[FakeBedrockServer]:
    server = FakeBedrockServer(AWS_KEY, AWS_SECRET)
    server.start()
    yield server
    server.stop()


def _replay(data_dir: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "midway.cli", "replay", *args, "--config",
                           str(config), "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.cc_cell(feature="session replay", format="anthropic", upstream="anthropic")
def test_replay_against_a_second_upstream_reports_the_differences(
        claude: Claude, stack: Stack, fake_upstream: FakeUpstream,
        openai_upstream: OpenAIUpstream, bedrock: FakeBedrockServer, tmp_path: Path) -> None:
    fake_upstream.reply(*RECORDED)
    out = claude.run(stack.url, "Print marker 1, then marker 2.", "--allowedTools",
                     "Bash(echo:*)", "--model", RECORDED_MODEL).assert_success()
    assert out["num_turns"] == 3 and out["result"] == FINAL
    session = out["session_id"]
    recorded_bodies = [r.json for r in fake_upstream.messages_requests]
    assert len(recorded_bodies) == 3
    stack.probe.wait(3)
    records = stack.audit_records(len(stack.probe.exchanges))
    assert sum(1 for r in records if r["path"].startswith("/v1/messages?")) == 3

    second = FakeUpstream().start()
    try:
        config = tmp_path / "replay.toml"
        config.write_text(
            f'[[router.upstreams]]\nname = "recorded"\nurl = "{fake_upstream.url}"\n'
            f'keys = ["sk-ant-first-upstream-key"]\n\n'
            f'[[router.upstreams]]\nname = "second"\nurl = "{second.url}"\n'
            f'keys = ["{SECOND_KEY}"]\n\n'
            f'[[router.upstreams]]\nname = "vendor"\nkind = "openai"\n'
            f'url = "{openai_upstream.url}"\nkeys = ["sk-openai-replay"]\n'
            f'models = {{ "*" = "{OPENAI_MODEL}" }}\n\n'
            f'[[router.upstreams]]\nname = "aws"\nkind = "bedrock"\nregion = "us-east-1"\n'
            f'url = "{bedrock.url}"\nmodels = {{ "*" = "{BEDROCK_MODEL}" }}\n'
            f'credentials = [{{ access_key_id = "{AWS_KEY}", '
            f'secret_access_key = "{AWS_SECRET}" }}]\n')
        before = len(fake_upstream.requests)
        second.reply(*SECOND)
        proc = _replay(tmp_path / "midway", config, session, "--upstream", "second",
                       "--model", REPLAY_MODEL, "--json")
        assert proc.returncode == 0, proc.stderr
        report = orjson.loads(proc.stdout)

        # Sent to the second upstream only, with its key, the recorded conversations intact.
        assert len(fake_upstream.requests) == before
        sent = second.messages_requests
        assert len(sent) == 3
        for request, recorded in zip(sent, recorded_bodies, strict=True):
            assert request.headers["x-api-key"] == SECOND_KEY
            assert AUTH_TOKEN not in str(dict(request.headers))
            assert "authorization" not in request.headers
            assert request.query == "beta=true"
            assert request.headers["x-claude-code-session-id"] == session
            body = request.json
            assert body["model"] == REPLAY_MODEL
            # what audit kept: its redaction of e-mail addresses included
            assert orjson.dumps({**body, "model": RECORDED_MODEL}) == orjson.dumps(
                recorded).replace(b"noreply@anthropic.com", b"[REDACTED:email]")

        turns = report["turns"]
        assert [t["turn"] for t in turns] == [1, 2, 3]
        assert [t["diverged"] for t in turns] == [
            None,
            {"at": "content[0]", "what": "tool", "recorded": "Bash", "replayed": "Read"},
            {"at": "stop_reason", "recorded": "end_turn", "replayed": "max_tokens"}]
        assert [t["redactions"] for t in turns] == [1, 1, 1]
        assert [t["differences"] for t in turns] == [
            ["model"], ["model", "tools"], ["model", "stop_reason"]]
        catalogue = PriceTable.load()
        for turn, rec, new in zip(turns, RECORDED, SECOND, strict=True):
            recorded_side, replayed = turn["recorded"], turn["replayed"]
            assert recorded_side["status"] == replayed["status"] == 200
            assert recorded_side["model"] == RECORDED_MODEL
            assert replayed["model"] == REPLAY_MODEL and replayed["upstream"] == "second"
            assert recorded_side["tools"] == [b["name"] for b in rec.content
                                              if b["type"] == "tool_use"]
            assert replayed["tools"] == [b["name"] for b in new.content
                                         if b["type"] == "tool_use"]
            assert rec.usage is not None and new.usage is not None
            for key in ("input_tokens", "output_tokens", "cache_read_input_tokens"):
                assert recorded_side[key] == rec.usage[key]
                assert replayed[key] == new.usage[key]
            usage = Usage()
            usage.update(new.usage)
            expected = Decimal(catalogue.cost(usage, REPLAY_MODEL).total) / 10**12
            assert Decimal(replayed["cost_usd"]) == expected > 0
            assert Decimal(recorded_side["cost_usd"]) > 0  # billing's, as recorded
            assert replayed["latency_ms"] > 0 and recorded_side["latency_ms"] > 0
        summary = report["summary"]
        assert (summary["turns_recorded"], summary["turns_replayed"],
                summary["turns_diverged"], summary["stopped"]) == (3, 3, 2, None)

        # The text report, bounded to two turns.
        second.reply(*SECOND[:2])
        proc = _replay(tmp_path / "midway", config, session[:8], "--upstream", "second",
                       "--max-turns", "2", "--wide")
        assert proc.returncode == 0, proc.stderr
        assert len(second.messages_requests) == 5
        text = proc.stdout
        assert f"session {session}: 2 of 3 turns replayed on upstream second" in text
        assert "same answer" in text
        assert "content[0] tool: Bash → Read" in text
        assert "1 turn beyond --max-turns" in text
        assert "sent as audit kept them: 2 values masked by its redaction" in text

        # An OpenAI-compatible vendor, through the router's translation: turn 1 answered in
        # text where the session called a tool.
        openai_upstream.reply(ChatReply(text="I would rather not run commands."))
        proc = _replay(tmp_path / "midway", config, session, "--upstream", "vendor",
                       "--max-turns", "1", "--json")
        assert proc.returncode == 0, proc.stderr
        [turn] = orjson.loads(proc.stdout)["turns"]
        [chat] = openai_upstream.requests
        assert chat.headers["authorization"] == "Bearer sk-openai-replay"
        assert chat.body["model"] == OPENAI_MODEL
        assert turn["replayed"]["upstream"] == "vendor"
        assert (turn["replayed"]["status"], turn["replayed"]["input_tokens"],
                turn["replayed"]["output_tokens"]) == (200, 900, 30)
        assert turn["diverged"] == {"at": "content[0]", "what": "block",
                                    "recorded": "tool_use Bash", "replayed": "text"}

        # Would it work on Bedrock? Through the router's translation and SigV4 signing.
        bedrock.fake.reply(*[BedrockReply(content=r.content, stop_reason=r.stop_reason or
                                          ("tool_use" if i < 2 else "end_turn"),
                                          usage={"input_tokens": 1500, "output_tokens": 20})
                             for i, r in enumerate(RECORDED)])
        proc = _replay(tmp_path / "midway", config, session, "--upstream", "aws", "--json")
        assert proc.returncode == 0, proc.stderr
        report = orjson.loads(proc.stdout)
        sent = bedrock.fake.requests
        assert len(sent) == 3
        assert all(r.signature_ok and r.path ==
                   f"/model/{BEDROCK_MODEL}/invoke-with-response-stream" for r in sent)
        assert [t["diverged"] for t in report["turns"]] == [None, None, None]
        assert {t["replayed"]["upstream"] for t in report["turns"]} == {"aws"}
        assert [t["replayed"]["input_tokens"] for t in report["turns"]] == [1500] * 3
        # priced by the catalogue under Bedrock's name for the model
        assert all(not t["replayed"]["unpriced"] and Decimal(t["replayed"]["cost_usd"]) > 0
                   for t in report["turns"])
        assert report["summary"]["turns_diverged"] == 0
    finally:
        second.stop()
