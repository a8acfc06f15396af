"""A cheap lexical check that two similar-looking prompts ask the same thing.

Sentence embeddings score "convert 5 USD to EUR" and "convert 50 USD to EUR", or "why is X
slow" and "why is X not slow", as near-identical. Those are exactly the pairs where serving a
cached answer is wrong, so before a semantic hit both prompts must agree on:

* numbers (in order),
* negations and scope words (not, never, without, all, only, first, before, more, …),
* named things: capitalised words inside a sentence, quoted strings, code-like tokens
  (``snake_case``, ``CamelCase``, ``file.py``, ``/paths``, ``--flags``) — in order, so that
  swapped entities ("USD to EUR" / "EUR to USD") do not agree;
* and when both use the same words around a relation (than, to, from, …), the same word
  order ("is a cat bigger than a dog" / "is a dog bigger than a cat").
"""

from __future__ import annotations

import re
from collections import Counter

import attrs

_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,:/]\d+)*%?")
_QUOTED = re.compile(r"\"([^\"]{1,200})\"|'([^']{1,200})'|`([^`]{1,200})`")
_WORD = re.compile(r"[A-Za-z_][\w.\-/]*[\w]|[A-Za-z]")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n]\s*)([A-Za-z][\w]*)")

_NUMBER_WORDS = {
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "twenty", "thirty", "hundred", "thousand", "million", "billion",
    "dozen", "half", "twice", "double", "triple", "single", "first", "second", "third",
    "last",
}
_NEGATIONS = {
    "not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor", "without",
    "cannot", "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent",
    "wont", "wouldnt", "shouldnt", "couldnt", "hasnt", "havent", "hadnt", "mustnt", "except",
    "excluding", "exclude", "unless", "avoid", "stop", "disable", "remove", "prevent",
}
_SCOPE = {
    "all", "every", "each", "any", "some", "only", "just", "most", "least", "more", "less",
    "fewer", "many", "few", "both", "either", "before", "after", "above", "below", "over",
    "under", "between", "within", "outside", "inside", "earliest", "latest", "oldest",
    "newest", "minimum", "maximum", "min", "max", "increase", "decrease", "ascending",
    "descending", "higher", "lower", "larger", "smaller", "bigger", "faster", "slower",
    "better", "worse", "best", "worst", "always", "sometimes", "rarely", "often", "also",
    "instead", "plus", "minus", "add", "subtract", "multiply", "divide", "per",
    "daily", "weekly", "monthly", "yearly", "today", "tomorrow", "yesterday", "older",
    "newer", "younger", "largest", "smallest", "biggest", "highest", "lowest", "longest",
    "shortest", "cheapest", "fastest", "slowest", "include", "including", "enable", "allow",
    "deny", "start", "end", "open", "close", "read", "write", "upper", "lowercase",
    "uppercase", "left", "right", "next", "previous", "true", "false", "yes",
}
# words that relate two things: with one of them, the same words in another order (a swap)
# mean something else ("is a cat bigger than a dog")
_RELATIONS = {"than", "to", "from", "into", "onto", "vs", "versus", "over", "against",
              "before", "after", "toward", "towards", "instead"}
_STOP = {
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "to", "of", "in", "on", "at",
    "for", "and", "or", "it", "this", "that", "these", "those", "i", "you", "we", "me", "my",
    "your", "do", "does", "did", "can", "could", "would", "should", "will", "please", "what",
    "how", "why", "which", "who", "whom", "where", "when", "with", "by", "from", "as", "if",
    "so", "than", "then", "there", "here", "about", "into", "up", "down", "out", "tell",
    "explain", "give", "show", "write", "make", "get", "let", "us", "our", "its", "has",
    "have", "had", "way", "some", "kind", "type",
}


@attrs.define(frozen=True)
class Features:
    numbers: tuple[str, ...]
    polarity: frozenset[str]
    entities: tuple[str, ...]
    content: tuple[str, ...]
    relational: bool


def _norm_word(word: str) -> str:
    return word.lower().replace("'", "").replace("\u2019", "")


def features(text: str) -> Features:
    numbers = tuple(m.group().rstrip("%").replace(",", "") for m in _NUMBER.finditer(text))
    words = [_norm_word(w) for w in re.findall(r"[A-Za-z][A-Za-z'\u2019]*", text)]
    polarity = frozenset(w for w in words
                         if w in _NEGATIONS or w in _SCOPE or w in _NUMBER_WORDS)
    starts = {m.start(1) for m in _SENTENCE_START.finditer(text)}
    entities: list[str] = []
    for m in _QUOTED.finditer(text):
        entities.append(next(g for g in m.groups() if g is not None).lower())
    for m in _WORD.finditer(text):
        word = m.group()
        code_like = any(c in word for c in "_./-") or any(c.isdigit() for c in word) or \
            (any(c.isupper() for c in word[1:]) and any(c.islower() for c in word))
        proper = word[0].isupper() and m.start() not in starts and word.lower() not in _STOP
        if code_like or proper:
            entities.append(word.lower())
    content = tuple(w for w in words if w not in _STOP and len(w) > 2)
    return Features(numbers=numbers, polarity=polarity, entities=tuple(entities),
                    content=content, relational=any(w in _RELATIONS for w in words))


def agree(a: str, b: str) -> tuple[bool, str]:
    """Whether two prompts may share an answer lexically; the reason when they may not."""
    fa, fb = features(a), features(b)
    if fa.numbers != fb.numbers:
        return False, "numbers differ"
    if fa.polarity != fb.polarity:
        return False, "negation or scope words differ"
    if fa.entities != fb.entities:
        return False, "named entities differ"
    if (fa.relational or fb.relational) and fa.content != fb.content and \
            Counter(fa.content) == Counter(fb.content):
        return False, "same words in another order"
    return True, ""
