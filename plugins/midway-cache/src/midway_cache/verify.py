"""The second stage of a semantic lookup: does the best candidate the embedding recalled ask
the same question?

Sentence embeddings place "the exchange rate of the dollar" next to "… of the euro", and
"encrypt a file" next to "decrypt a file": one content word replaced by a sibling leaves the
sentence vector almost where it was. Paraphrases differ the other way: in the frame of the
question ("how can I" / "what's the way to"), in inflections, or by a synonym ("undo" /
"revert"). The verifier looks at exactly those words, with the same local model:

1. the content words of each prompt that the other lacks (after stop and frame words are
   set aside and inflections folded: ``unmatched``);
2. none: the prompts say the same things in another arrangement — accept at the recall
   threshold;
3. otherwise each unmatched word must have a counterpart among the other prompt's unmatched
   words whose word embedding (the word embedded alone by the same model) is at least
   ``synonym`` similar, and the sentences at least ``substituted`` similar; a word with no
   counterpart (an added or dropped word) needs ``added`` sentence similarity.

The thresholds were picked on the labelled set (plugins/midway-cache/evalset, docs/cache.md
has the figures and the commands). The lexical guard runs before it and keeps its veto.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import numpy as np

from midway_cache.guard import CANONICAL, normalise

# words that frame a question rather than say what it is about
_FRAME = {
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "to", "of", "in", "on", "at",
    "for", "and", "or", "it", "its", "this", "that", "these", "those", "i", "im", "you",
    "we", "me", "my", "your", "do", "does", "did", "can", "could", "would", "should",
    "will", "please", "what", "whats", "how", "why", "which", "who", "where", "when", "with",
    "by", "as", "if", "so", "there", "here", "about", "tell", "explain", "give", "show",
    "describe", "way", "steps", "step", "process", "command", "right", "best", "usual",
    "possible", "need", "want", "like", "know", "get", "make", "help", "thanks", "thank",
    "hi", "hello", "quick", "question", "just", "quickly", "actually", "really", "some",
    "any", "mean", "meaning", "means", "name", "briefly", "example", "use", "using", "up",
    "out", "set", "find", "see", "turn", "have", "has", "id", "new", "one", "sql", "code",
    "brief", "kind", "type", "look", "looks", "us", "our", "go", "let", "define",
    "say", "said", "idea", "ideas", "all",
}
_WORD = re.compile(r"[a-z][a-z'\u2019]*")

Vector = np.ndarray[Any, np.dtype[np.float32]]
EmbedMany = Callable[[Sequence[str]], Awaitable[list[Vector | None]]]


def _fold(word: str) -> str:
    word = word.replace("'", "").replace("\u2019", "")
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[:-len(suffix)]
    return word


def content(text: str) -> Counter[str]:
    """The content words, counted (a word said twice in one and once in the other is a
    difference: "a kilo of feathers or a kilo of steel" / "a pound of feathers or …")."""
    words = (w.replace("'", "").replace("\u2019", "") for w in
             _WORD.findall(normalise(text).lower()))
    return Counter(_fold(CANONICAL.get(w, w)) for w in words if w not in _FRAME and len(w) > 1)


def unmatched(a: str, b: str) -> tuple[list[str], list[str]]:
    ca, cb = content(a), content(b)
    ca, cb = ca - cb, cb - ca
    # a word that is the start of a word of the other (e.g. "summar" / "summary") matches
    only_a = sorted(w for w in ca if not any(x.startswith(w) or w.startswith(x)
                                             for x in cb if min(len(w), len(x)) >= 4))
    only_b = sorted(w for w in cb if not any(x.startswith(w) or w.startswith(x)
                                             for x in ca if min(len(w), len(x)) >= 4))
    return only_a, only_b


class WordVectors:
    """Word vectors remembered (the same words come back often): an ``EmbedMany`` that runs
    the model only for words it has not seen, at most ``size`` kept."""

    def __init__(self, embed_many: EmbedMany, size: int = 4096) -> None:
        self._embed_many = embed_many
        self._size = size
        self._vectors: dict[str, Vector | None] = {}

    async def __call__(self, words: Sequence[str]) -> list[Vector | None]:
        missing = [w for w in dict.fromkeys(words) if w not in self._vectors]
        if missing:
            found = await self._embed_many(missing)
            while len(self._vectors) + len(missing) > self._size and self._vectors:
                self._vectors.pop(next(iter(self._vectors)))
            self._vectors.update(zip(missing, found, strict=True))
        return [self._vectors[w] if w in self._vectors else (await self._embed_many([w]))[0]
                for w in words]


@attrs.frozen
class Verifier:
    """Thresholds of the second stage (see the module docs)."""

    substituted: float = 0.85
    synonym: float = 0.40
    added: float = 0.88

    async def accepts(self, a: str, b: str, similarity: float,
                      embed_many: EmbedMany) -> tuple[bool, str]:
        only_a, only_b = unmatched(a, b)
        if not only_a and not only_b:
            return True, ""
        if not only_a or not only_b:  # words added or dropped, none replaced
            ok = similarity >= self.added
            return ok, "" if ok else f"words added or dropped: {only_a or only_b}"
        if similarity < self.substituted:
            return False, f"words replaced: {only_a} / {only_b}"
        vectors = await embed_many([*only_a, *only_b])
        va = [v for v in vectors[:len(only_a)] if v is not None]
        vb = [v for v in vectors[len(only_a):] if v is not None]
        if len(va) != len(only_a) or len(vb) != len(only_b):
            return False, "a word could not be embedded"
        sims = np.array([[float(x @ y) for y in vb] for x in va])
        worst = min(float(sims.max(axis=1).min()), float(sims.max(axis=0).min()))
        if worst < self.synonym:
            return False, f"words replaced by others: {only_a} / {only_b} ({worst:.2f})"
        return True, ""
