"""The semantic layer with the real local embedder (all-MiniLM-L6-v2 on onnxruntime)."""

from __future__ import annotations

import orjson
from click.testing import CliRunner
from conftest import RICH_CONTENT, body, client, stats, stored

from midway.cli import cli
from midway.testing import Reply
from midway_cache.guard import agree


def test_paraphrase_is_served_semantically(cached, fake_upstream):
    running = cached(semantic=True)
    c = client(running)
    original = c.messages.create(**body("How do I reverse a list in Python?"))
    stored(running)
    answer = c.messages.with_raw_response.create(**body("How can I reverse a list in Python?"))
    assert answer.headers["x-midway-cache"] == "semantic-hit"
    assert float(answer.headers["x-midway-cache-similarity"]) >= 0.70
    assert answer.parse().content[0].text == original.content[0].text
    assert len(fake_upstream.messages_requests) == 1
    assert stats(running)["semantic_hits"] == 1


def test_traps_are_not_served(cached, fake_upstream):
    running = cached(semantic=True)
    c = client(running)
    c.messages.create(**body("Convert 100 USD to EUR."))
    stored(running)
    for trap in ("Convert 100 EUR to USD.", "Convert 150 USD to EUR.",
                 "Don't convert 100 USD to EUR."):
        answer = c.messages.with_raw_response.create(**body(trap))
        assert answer.headers["x-midway-cache"] == "miss", trap
    assert len(fake_upstream.messages_requests) == 4


def test_verifier_serves_synonyms_and_refuses_a_replaced_subject(cached, fake_upstream):
    """Below 0.95 similarity, the verifier decides: "exit"/"quit" are synonyms, "whale"/
    "shark" are not (the guard cannot tell: same numbers, no negation, no capitals)."""
    running = cached(semantic=True)
    c = client(running)
    original = c.messages.create(**body("How do I exit Vim?"))
    c.messages.create(**body("Is a whale a mammal?"))
    stored(running, 2)
    synonym = c.messages.with_raw_response.create(**body("How can I quit Vim?"))
    assert synonym.headers["x-midway-cache"] == "semantic-hit"
    assert float(synonym.headers["x-midway-cache-similarity"]) < 0.95
    assert synonym.parse().content[0].text == original.content[0].text
    other = c.messages.with_raw_response.create(**body("Is a shark a mammal?"))
    assert other.headers["x-midway-cache"] == "miss"
    assert len(fake_upstream.messages_requests) == 3


def test_without_the_verifier_the_threshold_is_095(cached, fake_upstream):
    running = cached(semantic=True, semantic_verifier=False)
    c = client(running)
    c.messages.create(**body("How do I exit Vim?"))
    stored(running)
    answer = c.messages.with_raw_response.create(**body("How can I quit Vim?"))
    assert answer.headers["x-midway-cache"] == "miss"


def test_different_context_is_another_partition(cached, fake_upstream):
    running = cached(semantic=True)
    c = client(running)

    def conversation(language: str, prompt: str) -> dict:
        return body(prompt) | {"messages": [
            {"role": "user", "content": f"I am writing a {language} web server."},
            {"role": "assistant", "content": "Great, what do you need?"},
            {"role": "user", "content": prompt}]}

    c.messages.create(**conversation("Rust", "How do I add logging?"))
    stored(running)
    other = c.messages.with_raw_response.create(**conversation("Python", "How can I add logging?"))
    assert other.headers["x-midway-cache"] == "miss"
    same = c.messages.with_raw_response.create(**conversation("Rust", "How can I add logging?"))
    assert same.headers["x-midway-cache"] == "semantic-hit"


def test_other_tenant_never_served_semantically(cached, fake_upstream):
    running = cached(semantic=True)
    client(running, "sk-ant-test-alice").messages.create(**body("What is a REST API?"))
    stored(running)
    answer = client(running, "sk-ant-test-bob").messages.with_raw_response.create(
        **body("What's a REST API?"))
    assert answer.headers["x-midway-cache"] == "miss"


def test_tool_use_answers_are_not_served_semantically(cached, fake_upstream):
    fake_upstream.reply(Reply(content=RICH_CONTENT))
    running = cached(semantic=True)
    c = client(running)
    c.messages.create(**body("What is the weather in Paris?"))
    stored(running)
    answer = c.messages.with_raw_response.create(**body("What's the weather in Paris?"))
    assert answer.headers["x-midway-cache"] == "miss"


def test_shadow_mode_records_without_serving(cached, fake_upstream):
    running = cached(semantic=True, semantic_mode="shadow")
    c = client(running)
    c.messages.create(**body("How do I reverse a list in Python?"))
    stored(running)
    answer = c.messages.with_raw_response.create(**body("How can I reverse a list in Python?"))
    assert answer.headers["x-midway-cache"] == "miss"
    assert len(fake_upstream.messages_requests) == 2
    assert stats(running)["shadow_hits"] == 1


def test_tool_result_turn_uses_exact_layer_only(cached, fake_upstream):
    running = cached(semantic=True)
    c = client(running)
    turn = body() | {"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01a",
                                           "name": "w", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01a",
                                      "content": "sunny"}]}]}
    c.messages.create(**turn)
    stored(running)
    entry_partitions = running.call(running.midway.services["cache"].store.candidates(
        "any", 0))
    assert entry_partitions == []
    assert c.messages.with_raw_response.create(**turn).headers["x-midway-cache"] == "hit"


def test_guard_examples():
    assert agree("How do I reverse a list?", "How can I reverse a list?")[0]
    assert not agree("Is a cat bigger than a dog?", "Is a dog bigger than a cat?")[0]
    assert not agree("Set the timeout to 30 s", "Set the timeout to 300 s")[0]
    assert not agree("Is it safe?", "Is it not safe?")[0]
    assert not agree("Fix parse_config", "Fix load_config")[0]


def test_eval_command_prints_rates():
    result = CliRunner().invoke(cli, ["cache", "eval", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert report["threshold"] == 0.70 and report["verifier"] and report["guard"]
    assert report["should_hit"] >= 600 and report["must_not"] >= 600
    # the targets of docs/cache.md, at the shipped defaults on the built-in set
    assert report["served_rate"] >= 0.85
    assert report["wrong_rate"] <= 0.01
    kinds = report["by_kind"]
    assert kinds["multi-turn-different"]["served"] == 0
    assert kinds["paraphrase-wording"]["rate"] >= 0.55
    for name in ("numbers", "times", "negation", "antonym", "inclusion", "days"):
        assert kinds[name]["served"] == 0, name
    low, high = report["wrong_ci"]
    assert low <= report["wrong_rate"] <= high
