"""The second stage of a semantic lookup: does the best candidate the embedding recalled ask
the same question?

Sentence embeddings place "the exchange rate of the dollar" next to "… of the euro", and
"is a whale a mammal" next to "is a shark a mammal": one content word replaced by a sibling
leaves the sentence vector almost where it was. Paraphrases that score low differ the other
way: in the frame of the question ("how can I" / "what's the way to" / "tell me"), in
inflections, in word order. So below ``trusted`` similarity (0.85) a candidate is served
only when both prompts have the same content words — counted, with the words that frame a
question set aside and inflections folded; at or above it, the guard's veto is the check.

Measured on the labelled set (docs/cache.md, "Evaluation"): a word-vector synonym test for
replaced words (each word embedded alone by the same model) and a second, paraphrase-tuned
model (paraphrase-MiniLM-L3-v2) were tried as this stage and served no more true paraphrases
at the same wrong-rate; this one needs no model run at all.
"""

from __future__ import annotations

import re
from collections import Counter

import attrs

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


@attrs.frozen
class Verifier:
    """See the module docs."""

    trusted: float = 0.85

    def accepts(self, a: str, b: str, similarity: float) -> tuple[bool, str]:
        if similarity >= self.trusted:
            return True, ""
        only_a, only_b = unmatched(a, b)
        if only_a or only_b:
            return False, f"other words below {self.trusted}: {only_a} / {only_b}"
        return True, ""
