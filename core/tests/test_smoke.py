import anthropic

from midway.testing import Reply


def test_sdk_roundtrip_stream_and_json(fake_upstream, midway_proxy):
    client = anthropic.Anthropic(base_url=midway_proxy.url, api_key="sk-ant-test", max_retries=0)
    msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=10,
                                 messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "Hello from the fake upstream."
    fake_upstream.reply(Reply(content=[
        {"type": "thinking", "thinking": "hmm", "signature": "s1"},
        {"type": "tool_use", "name": "Bash", "input": {"command": "ls"}}],
                              chunk_size=1))
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=10,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        final = stream.get_final_message()
    assert final.content[0].signature == "s1"
    assert final.content[1].input == {"command": "ls"}
    seen = fake_upstream.messages_requests[-1].headers
    assert "sk-ant-test" in (seen.get("x-api-key") or seen.get("authorization") or "")
