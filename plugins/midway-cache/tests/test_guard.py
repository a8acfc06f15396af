"""The lexical guard and the verifier: each defect issue #25 reproduced live is a test here,
and `midway cache eval` judges prompts as the live lookup does."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from midway.cli import cli
from midway_cache.embedders import MiniLMEmbedder
from midway_cache.guard import agree
from midway_cache.verify import Verifier, unmatched

SERVED_WRONGLY = [  # each was served as the other's answer
    ("Set an alarm for 7am.", "Set an alarm for 7pm."),
    ("Is the store open at 2pm?", "Is the store open at 2am?"),
    ("Book the room for 9 a.m.", "Book the room for 9 p.m."),
    ("Is it safe to swim here?", "Is it unsafe to swim here?"),
    ("Is this laptop suitable for gaming?", "Is this laptop unsuitable for gaming?"),
    ("Is breakfast included in the price?", "Is breakfast excluded from the price?"),
    ("Is the office open on weekdays?", "Is the office open on weekends?"),
    ("Is Go faster than Java?", "Is Java faster than Go?"),
]
BLOCKED_WRONGLY = [  # each was refused although it asks the same
    ("Do you accept Apple Pay?", "Do You Accept Apple Pay?"),
    ("Do you accept Apple Pay?", "DO YOU ACCEPT APPLE PAY?"),
    ("Do you accept Apple Pay?", "do you accept apple pay?"),
    ("Why can't I push to the main branch?", "Why cannot I push to the main branch?"),
    ("Why can't I push to the main branch?", "Why can not I push to the main branch?"),
    ("How do I reset my password?", "How do I just reset my password?"),
    ("How many calories are in rice?", "How many calories does rice have?"),
    ("How do I center a div in CSS?", "In CSS, how do I center a div?"),
    ("How do I undo the last git commit in my repository?",
     "In my repository, how do I undo the last git commit?"),
    ("How do I start a Docker container?", "How do I begin a Docker container?"),
    ("Set an alarm for 7 a.m.", "Set an alarm for 7am."),
    ("In Bash, how do I list files in a directory?",
     "How do I list files in a directory in Bash?"),
    ("How do I freeze fresh basil?", "What's the best way to freeze fresh basil?"),
    ("Show me how to write a for loop in Go.", "How do I write a for loop in Go?"),
]
STILL_BLOCKED = [  # what the guard was already right about stays right
    ("Is a cat bigger than a dog?", "Is a dog bigger than a cat?"),
    ("Convert 100 USD to EUR.", "Convert 100 EUR to USD."),
    ("Set the timeout to 30 s", "Set the timeout to 300 s"),
    ("Is it safe?", "Is it not safe?"),
    ("Why can I push?", "Why can't I push?"),
    ("Fix parse_config", "Fix load_config"),
    ("Copy the files from staging to production.", "Copy the files from production to staging."),
    ("Do you accept Apple Pay?", "do you accept google pay?"),
    ("How do I turn off dark mode in Chrome?", "How do I turn on dark mode in Chrome?"),
    ("How do I sign in to Outlook?", "How do I sign out of Outlook?"),
    ("Is coffee bad for your heart?", "Is coffee good for your heart?"),
    ("How many teaspoons are in a tablespoon?", "How many tablespoons are in a teaspoon?"),
]


@pytest.mark.parametrize(("a", "b"), SERVED_WRONGLY + STILL_BLOCKED)
def test_guard_blocks(a, b):
    assert not agree(a, b)[0]
    assert not agree(b, a)[0]


@pytest.mark.parametrize(("a", "b"), BLOCKED_WRONGLY)
def test_guard_lets_through(a, b):
    assert agree(a, b) == (True, "")
    assert agree(b, a) == (True, "")


def test_guard_ignores_surrounding_whitespace():
    assert agree("  Is the store open at 2pm?\n", "Is the store open at 2pm?")[0]


def test_eval_judges_the_prompt_as_the_lookup_does(tmp_path):
    """A leading space used to make the eval (raw prompt) and the live lookup (stripped)
    disagree; both read the stripped prompt now."""
    pairs = tmp_path / "pairs.json"
    pairs.write_bytes(orjson.dumps({"pairs": [
        {"kind": "t", "should_hit": False, "a": "   Is it safe to swim here?",
         "b": "Is it unsafe to swim here?"},
        {"kind": "p", "should_hit": True, "a": "\n  Do you accept Apple Pay?",
         "b": "Do You Accept Apple Pay?"}]}))
    result = CliRunner().invoke(cli, ["cache", "eval", "--json", "--pairs", str(pairs)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = {r["kind"]: r for r in orjson.loads(result.output)["pairs"]}
    assert not rows["t"]["served"] and rows["t"]["reason"] == "antonyms"
    assert rows["p"]["served"] and rows["p"]["guard"]


def test_unmatched_words_ignore_the_frame_of_the_question():
    assert unmatched("How do I reverse a list in Python?",
                     "What's the way to reverse a Python list?") == ([], [])
    assert unmatched("What is the exchange rate of the dollar today?",
                     "What is the exchange rate of the euro today?") == (["dollar"], ["euro"])


@pytest.fixture(scope="module")
def embedder():
    e = MiniLMEmbedder()
    yield e
    asyncio.run(e.close())


def _verdict(embedder, a, b):
    va, vb = embedder.embed_batch_sync([a, b])
    return Verifier().accepts(a, b, float(va @ vb))


@pytest.mark.parametrize(("a", "b"), [
    ("How do I exit Vim?", "How can I quit Vim?"),  # 0.85 or more: the guard decides
    ("Explain how a hash map works.", "How does a hash map work?"),  # same content words
    ("What is the time complexity of binary search?",
     "What's binary search's time complexity?"),
])
def test_verifier_accepts(embedder, a, b):
    assert _verdict(embedder, a, b) == (True, "")


@pytest.mark.parametrize(("a", "b"), [
    ("Is a whale a mammal?", "Is a shark a mammal?"),
    ("How do I get to the stadium from the station?",
     "How do I get to the airport from the station?"),
])
def test_verifier_rejects_a_replaced_subject(embedder, a, b):
    ok, reason = _verdict(embedder, a, b)
    assert not ok and "other words" in reason


def test_verifier_counts_words():
    # "kilo" twice in one, once in the other: a difference, not the same words
    assert unmatched("a kilo of feathers or a kilo of steel",
                     "a pound of feathers or a kilo of steel") == (["kilo"], ["pound"])


def test_long_prompts_are_windowed_and_batches_match_single_runs(embedder):
    long = " ".join(f"word{i}" for i in range(400))
    tokens = embedder._tokenizer.encode(long).ids if embedder._tokenizer else None
    vectors = embedder.embed_batch_sync([long, "short prompt", long + " end"])
    assert all(v is not None and abs(float(np.linalg.norm(v)) - 1) < 1e-4 for v in vectors)
    single = embedder.embed_sync("short prompt")
    assert single is not None and float(single @ vectors[1]) > 0.999  # padding changes nothing
    assert tokens is None or len(embedder._ids(long)) == embedder.HEAD + embedder.TAIL


def test_concurrent_embeds_share_batches(embedder):
    runs = []
    original = embedder.embed_batch_sync

    def counting(texts):
        runs.append(len(texts))
        return original(texts)

    embedder.embed_batch_sync = counting  # type: ignore[method-assign]
    try:
        async def many():
            return await asyncio.gather(*(embedder.embed(f"question {i}") for i in range(20)))
        vectors = asyncio.run(many())
    finally:
        del embedder.embed_batch_sync
    assert len(vectors) == 20 and all(v is not None for v in vectors)
    assert sum(runs) == 20 and len(runs) < 20 and max(runs) <= embedder.BATCH
