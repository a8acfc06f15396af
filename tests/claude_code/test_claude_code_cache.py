"""The exact cache: a hit replays a stream that Claude Code accepts as the real answer."""

from __future__ import annotations

from cc_support import Claude, Stack, text_reply, visible

from midway.testing import FakeUpstream

ANSWER = "Cached answer: the build uses hatchling."


def test_cache_hit_replays_a_stream_claude_code_accepts(claude: Claude, stack: Stack,
                                                       fake_upstream: FakeUpstream) -> None:
    usage = {"input_tokens": 900, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0, "output_tokens": 20}
    fake_upstream.reply(text_reply(ANSWER, usage=usage, text_chunks=5))
    fake_upstream.reply(text_reply("the upstream must not be asked twice"))
    args = ("What does the build use?", "--model", "claude-sonnet-4-6")
    # Same HOME path (emptied): the second session sends the same request as the first.
    first = claude.run(stack.url, *args, home="home-cached")
    second = claude.run(stack.url, *args, home="home-cached")

    out = second.assert_success()
    assert out["result"] == ANSWER
    assert visible(out) == visible(first.assert_success())
    assert len(fake_upstream.messages_requests) == 1

    miss, hit = stack.probe.wait(2)
    assert (miss.annotations["cache"], hit.annotations["cache"]) == ("miss", "hit")
    assert hit.answered_by is not None and hit.status == 200 and hit.streaming
    assert hit.stop_reason == "end_turn" and hit.usage.output_tokens == 20
    # A hit is not spend: billing charges nothing for it.
    assert hit.annotations["cost_usd"] == "0"
