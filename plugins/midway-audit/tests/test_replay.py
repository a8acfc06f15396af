"""`midway replay`: refusals, bounds, and what a recording cannot make the replay do
(docs/replay.md). Sessions are recorded through a real midway with the audit plugin; the
replay runs the real command against a second fake upstream."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
from click.testing import CliRunner, Result
from conftest import data_dir, flush, records

from midway.cli import cli
from midway.testing import FakeUpstream, Reply, RunningMidway, free_port, wait_for

SESSION = "5e551011-aaaa-4bbb-8ccc-000000000001"
REPLAY_KEY = "sk-ant-replay-config-key"
CLIENT_KEY = "sk-ant-client-own-secret-0123456789"


@pytest.fixture
def second() -> Iterator[FakeUpstream]:
    """The upstream the replay goes to."""
    server = FakeUpstream().start()
    yield server  # type: ignore[misc]
    server.stop()


def record(running: RunningMidway, session: str, turns: int, stream: bool = True,
           headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
    """``turns`` requests of a Claude Code-like session (its header on each), recorded."""
    client = anthropic.Anthropic(base_url=running.url, api_key=CLIENT_KEY, max_retries=0,
                                 default_headers={"x-claude-code-session-id": session,
                                                  **(headers or {})})
    before = len(records(running))
    for turn in range(turns):
        body: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 100,
                                "messages": [{"role": "user", "content": f"turn {turn}"}],
                                **(extra or {})}
        if stream:
            with client.messages.stream(**body) as events:
                events.get_final_message()
        else:
            client.messages.create(**body)
    wait_for(lambda: len(records(running)) == before + turns)


def config(tmp_path: Path, upstream: str, key: str | None = REPLAY_KEY,
           extra: str = "") -> Path:
    path = tmp_path / "replay.toml"
    lines = ["[midway]", f'upstream = "{upstream}"']
    if key is not None:
        lines.append(f'upstream_api_key = "{key}"')
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def replay(running: RunningMidway, conf: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["replay", *args, "--config", str(conf), "--data-dir",
                                    str(data_dir(running))])


def refusal(result: Result) -> str:
    """The one line a refused replay prints."""
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_replays_every_turn_to_the_config_s_upstream_with_its_key(
        fake_upstream: FakeUpstream, second: FakeUpstream, audited: Callable[..., Any],
        tmp_path: Path) -> None:
    running = audited()
    record(running, SESSION, 2)
    record(running, SESSION, 1, stream=False)
    record(running, "0ther5e5-0000-4000-8000-000000000000", 1)  # another session
    flush(running)
    recorded = [r.json for r in fake_upstream.messages_requests[:3]]
    second.reply(Reply(content=[{"type": "text", "text": "Hello from the fake upstream."}]),
                 Reply(content=[{"type": "text", "text": "Another answer."}]),
                 Reply(stop_reason="max_tokens"))

    result = replay(running, config(tmp_path, second.url), SESSION, "--json")
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    sent = second.messages_requests
    assert [r.json for r in sent] == recorded
    assert all(r.headers["x-api-key"] == REPLAY_KEY for r in sent)
    assert [t["diverged"] for t in report["turns"]] == [
        None,
        {"at": "content[0]", "what": "text", "recorded": "Hello from the fake upstream.",
         "replayed": "Another answer."},
        {"at": "stop_reason", "recorded": "end_turn", "replayed": "max_tokens"}]
    assert report["summary"]["turns_recorded"] == 3
    # concurrency 1 (the default): one turn after the other
    for earlier, later in itertools.pairwise(sent):
        assert earlier.finished_at is not None and later.received_at >= earlier.finished_at


def test_unknown_short_malformed_and_ambiguous_sessions_are_refused(
        fake_upstream: FakeUpstream, second: FakeUpstream, audited: Callable[..., Any],
        tmp_path: Path) -> None:
    running = audited()
    record(running, "abcdef01-0000-4000-8000-000000000001", 1)
    record(running, "abcdef01-0000-4000-8000-000000000002", 1)
    flush(running)
    conf = config(tmp_path, second.url)
    line = refusal(replay(running, conf, "0000dead-0000-4000-8000-000000000000"))
    assert "no audit records of session 0000dead" in line
    assert "too short" in refusal(replay(running, conf, "abc"))
    assert "not a Claude Code session id" in refusal(replay(running, conf, "x%' OR 1=1 --"))
    line = refusal(replay(running, conf, "abcdef01-0000"))
    assert "ambiguous: 2 sessions" in line and "000000000001" in line
    assert second.requests == []
    # the whole id of one of them is not ambiguous
    result = replay(running, conf, "abcdef01-0000-4000-8000-000000000002", "--json")
    assert result.exit_code == 0, result.output
    assert len(second.messages_requests) == 1


def test_a_session_recorded_without_bodies_is_refused(
        fake_upstream: FakeUpstream, second: FakeUpstream, audited: Callable[..., Any],
        tmp_path: Path) -> None:
    running = audited(bodies=False)
    record(running, SESSION, 2)
    flush(running)
    line = refusal(replay(running, config(tmp_path, second.url), SESSION))
    assert "has no request body to replay" in line and "bodies = false" in line
    assert second.requests == []


def test_the_upstream_must_be_the_config_s_and_hold_its_own_key(
        fake_upstream: FakeUpstream, second: FakeUpstream, audited: Callable[..., Any],
        tmp_path: Path) -> None:
    running = audited()
    record(running, SESSION, 1)
    flush(running)
    line = refusal(replay(running, config(tmp_path, second.url), SESSION, "--upstream",
                          fake_upstream.url))
    assert "--upstream takes a name, never a URL" in line
    line = refusal(replay(running, config(tmp_path, second.url, key=None), SESSION))
    assert "holds no upstream key" in line and "upstream_api_key" in line
    conf = config(tmp_path, second.url, key="env:MIDWAY_REPLAY_TEST_UNSET_KEY")
    line = refusal(replay(running, conf, SESSION))
    assert line.endswith("[midway] upstream_api_key: environment variable "
                         "MIDWAY_REPLAY_TEST_UNSET_KEY is not set")
    assert second.requests == [] and len(fake_upstream.requests) == 1


def test_max_turns_and_the_timeout_per_turn(
        fake_upstream: FakeUpstream, second: FakeUpstream, audited: Callable[..., Any],
        tmp_path: Path) -> None:
    running = audited()
    record(running, SESSION, 3)
    flush(running)
    conf = config(tmp_path, second.url)
    result = replay(running, conf, SESSION, "--max-turns", "2", "--json")
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    assert len(second.messages_requests) == 2 and len(report["turns"]) == 2
    assert report["summary"]["beyond_max_turns"] == 1

    # a turn that does not answer in time is reported; the next turns still run
    second.reply(Reply(first_byte_delay=3.0), Reply(), Reply())
    result = replay(running, conf, SESSION, "--timeout", "1", "--json")
    assert result.exit_code == 0, result.output
    turns = orjson.loads(result.stdout)["turns"]
    assert turns[0]["replayed"]["error"] == "no complete answer within 1 s (--timeout)"
    assert turns[0]["diverged"] == {"at": "status", "recorded": 200, "replayed": None}
    assert [t["replayed"]["status"] for t in turns[1:]] == [200, 200]
    assert [t["diverged"] for t in turns[1:]] == [None, None]


def test_a_recording_cannot_redirect_the_replay_or_replay_a_credential(
        second: FakeUpstream, midway_factory: Callable[..., RunningMidway],
        tmp_path: Path) -> None:
    """The session was recorded through a gateway whose upstream was the attacker's, with
    headers and a body naming the attacker's host: the replay goes to the replay config's
    upstream only, with its key, and sends none of those headers."""
    evil = FakeUpstream().start()
    try:
        import midway_audit

        running = midway_factory(plugins=[("audit", midway_audit)], config={"audit": {}},
                                 upstream=evil.url)
        evil_host = evil.url.split("://", 1)[1]
        record(running, SESSION, 2, headers={
            "x-forwarded-host": evil_host, "forwarded": f"host={evil_host}",
            "x-forwarded-for": "203.0.113.9", "x-midway-upstream": evil.url,
            "x-real-ip": "203.0.113.9", "via": f"1.1 {evil_host}"},
            extra={"metadata": {"user_id": evil.url}})
        assert {r["upstream"] for r in records(running)} == {"default"}  # the evil one
        flush(running)
        assert len(evil.messages_requests) == 2

        result = replay(running, config(tmp_path, second.url), SESSION, "--json")
        assert result.exit_code == 0, result.output
        assert len(evil.messages_requests) == 2  # nothing more
        sent = second.messages_requests
        assert len(sent) == 2
        for request in sent:
            headers = {k.lower(): v for k, v in request.headers.items()}
            assert headers["x-api-key"] == REPLAY_KEY
            assert CLIENT_KEY not in str(headers) and CLIENT_KEY.encode() not in request.body
            for name in ("x-forwarded-host", "forwarded", "x-forwarded-for",
                         "x-midway-upstream", "x-real-ip", "via"):
                assert name not in headers
            assert headers["host"] == second.url.split("://", 1)[1]
    finally:
        evil.stop()


def test_the_text_report(fake_upstream: FakeUpstream, second: FakeUpstream,
                         audited: Callable[..., Any], tmp_path: Path) -> None:
    running = audited()
    record(running, SESSION, 2)
    flush(running)
    second.reply(Reply(), Reply(content=[{"type": "tool_use", "name": "Bash",
                                          "input": {"command": "ls"}}]))
    result = replay(running, config(tmp_path, second.url), SESSION)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(f"session {SESSION}: 2 of 2 turns replayed")
    assert "same answer" in out
    assert "content[0] block: text → tool_use Bash" in out
    assert "diverged: 1 of 2 turns" in out
    assert max(len(line) for line in out.splitlines()) <= 100, out


def test_an_upstream_that_is_down_or_cuts_its_answer_short_is_reported(
        fake_upstream: FakeUpstream, second: FakeUpstream, audited: Callable[..., Any],
        tmp_path: Path) -> None:
    running = audited()
    record(running, SESSION, 2)
    flush(running)
    down = config(tmp_path, f"http://127.0.0.1:{free_port()}")
    result = replay(running, down, SESSION, "--json")
    assert result.exit_code == 0, result.output
    turns = orjson.loads(result.stdout)["turns"]
    assert [t["replayed"]["status"] for t in turns] == [502, 502]
    assert all(t["diverged"] == {"at": "status", "recorded": 200, "replayed": 502}
               for t in turns)
    assert all(t["replayed"]["error"].startswith("api_error: ") for t in turns)

    second.reply(Reply(reset_after=4), Reply())
    result = replay(running, config(tmp_path, second.url), SESSION, "--json")
    assert result.exit_code == 0, result.output
    cut, whole = orjson.loads(result.stdout)["turns"]
    assert cut["replayed"]["status"] == 200 and cut["replayed"]["error"]
    assert cut["diverged"] is not None
    assert whole["replayed"]["error"] is None and whole["diverged"] is None


def test_the_divergence_is_the_first_difference_of_the_answers() -> None:
    from midway_audit.replay.report import divergence

    def answer(*blocks: dict[str, Any], stop: str = "end_turn") -> dict[str, Any]:
        return {"id": "msg_1", "content": list(blocks), "stop_reason": stop}

    thinking = {"type": "thinking", "thinking": "Let me look.", "signature": "sig-A"}
    bash = {"type": "tool_use", "id": "toolu_A", "name": "Bash", "input": {"command": "ls"}}
    # ids and signatures are not compared
    assert divergence(answer(thinking, bash), 200,
                      answer({**thinking, "signature": "sig-B"}, {**bash, "id": "toolu_B"}),
                      200) is None
    assert divergence(answer(bash), 200, answer(bash), 529) == {
        "at": "status", "recorded": 200, "replayed": 529}
    assert divergence(answer(thinking, bash), 200, answer(thinking), 200) == {
        "at": "content[1]", "what": "block", "recorded": "tool_use Bash", "replayed": None}
    assert divergence(answer(bash), 200, answer({**bash, "input": {"command": "pwd"}}),
                      200) == {"at": "content[0]", "what": "tool input",
                               "recorded": '{"command":"ls"}', "replayed": '{"command":"pwd"}'}
    assert divergence(answer(thinking), 200, answer({**thinking, "thinking": "Hm."}), 200) == {
        "at": "content[0]", "what": "thinking", "recorded": "Let me look.", "replayed": "Hm."}
    # the first difference wins: content before the stop reason
    assert divergence(answer(bash, stop="tool_use"), 200,
                      answer({**bash, "name": "Read"}, stop="max_tokens"), 200) == {
        "at": "content[0]", "what": "tool", "recorded": "Bash", "replayed": "Read"}
    # a recorded answer audit did not keep whole is not compared beyond the status
    assert divergence(None, 200, answer(bash), 200) is None
