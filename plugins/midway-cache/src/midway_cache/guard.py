"""A cheap lexical check that two similar-looking prompts ask the same thing.

Sentence embeddings score "convert 5 USD to EUR" and "convert 50 USD to EUR", or "why is X
slow" and "why is X not slow", as near-identical. Those are exactly the pairs where serving a
cached answer is wrong, so before a semantic hit both prompts must agree on:

* numbers (in order), with their am/pm (``7am`` and ``7pm`` differ),
* negations and scope words (not, never, without, all, only, first, before, more, …), with
  ``can't``, ``cannot`` and ``can not`` read alike and a few synonyms (start/begin) merged,
* antonyms by prefix: a word in one prompt that is another word of the other with ``un-``,
  ``in-``, ``im-``, ``il-``, ``ir-``, ``dis-``, ``non-`` or ``de-`` in front (safe/unsafe),
* days, weekdays/weekends, parts of the day, months and seasons,
* named things: capitalised words inside a sentence, quoted strings, code-like tokens
  (``snake_case``, ``CamelCase``, ``file.py``, ``/paths``, ``--flags``) — in order, so that
  swapped entities ("USD to EUR" / "EUR to USD") do not agree. Capitals say nothing in a
  prompt written in Title Case, ALL CAPS or all lower case: there, the other prompt's
  capitalised names must appear among its words, in the same order;
* and two words on either side of a relation (than, to, from, …) in one prompt must not be
  in the other order in the other ("is a cat bigger than a dog" / "is a dog bigger than a
  cat"); a clause moved to the front ("In CSS, how do I …") is no swap.

Both prompts are compared after :func:`normalise` — the form the live lookup and
``midway cache eval`` both use.
"""

from __future__ import annotations

import re

import attrs

_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,:/]\d+)*%?"
                     r"(?:\s?(?P<ampm>[ap]\.?m\.?)(?![a-z]))?", re.IGNORECASE)
_QUOTED = re.compile(r"\"([^\"]{1,200})\"|'([^']{1,200})'|`([^`]{1,200})`")
_WORD = re.compile(r"[A-Za-z_][\w.\-/]*[\w]|[A-Za-z]")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n]\s*)([A-Za-z][\w]*)")

_NUMBER_WORDS = {
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "twenty", "thirty", "hundred", "thousand", "million", "billion",
    "dozen", "half", "twice", "double", "triple", "single", "first", "second", "third",
    "last", "noon", "midnight",
}
_NEGATIONS = {
    "not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor", "without",
    "cannot", "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent",
    "wont", "wouldnt", "shouldnt", "couldnt", "hasnt", "havent", "hadnt", "mustnt", "except",
    "excluding", "exclude", "excluded", "excludes", "unless", "avoid", "stop", "disable",
    "remove", "prevent",
}
_SCOPE = {
    "all", "every", "each", "any", "some", "only", "most", "least", "more", "less",
    "fewer", "few", "both", "either", "before", "after", "above", "below", "over",
    "under", "between", "within", "outside", "inside", "earliest", "latest", "oldest",
    "newest", "minimum", "maximum", "min", "max", "increase", "decrease", "ascending",
    "descending", "higher", "lower", "larger", "smaller", "bigger", "faster", "slower",
    "better", "worse", "best", "worst", "always", "sometimes", "rarely", "often", "also",
    "instead", "plus", "minus", "add", "subtract", "multiply", "divide", "per",
    "daily", "weekly", "monthly", "yearly", "today", "tomorrow", "yesterday", "older",
    "newer", "younger", "largest", "smallest", "biggest", "highest", "lowest", "longest",
    "shortest", "cheapest", "fastest", "slowest", "include", "including", "included",
    "includes", "extra", "enable", "enabled", "disabled", "allow", "allowed", "forbidden",
    "deny", "start", "end", "open", "close", "read", "write", "upper", "lowercase",
    "uppercase", "left", "right", "next", "previous", "true", "false", "yes",
    "closed", "skip", "import", "export", "push", "pull", "upload", "download", "hide",
    "show", "pros", "cons", "benefits", "risks", "advantages", "disadvantages", "hot", "cold",
    # evaluative opposites: the sentence vector barely moves when one replaces the other
    "good", "bad", "positive", "negative", "gain", "lose", "win", "easy", "hard", "difficult",
    "early", "late", "cheap", "expensive", "light", "dark", "wet", "dry", "young", "old",
    "healthy", "unhealthy", "harmful", "beneficial", "dangerous", "fast", "slow",
}
# a phrasal verb's particle is its meaning: "turn on" / "turn off", "sign in" / "sign out"
_PHRASAL = {"turn", "turned", "turning", "switch", "switched", "sign", "signed", "log",
            "logged", "logging", "opt", "opted", "check", "checked", "plug", "plugged", "shut",
            "power", "powered", "zoom", "scroll", "scale", "back", "set", "put", "take",
            "took", "get", "let", "start", "started", "speed", "slow", "cool", "warm",
            "calm", "wind", "tune", "tuned", "lock", "locked", "clock", "clocked", "clean",
            "move", "roll", "rolled", "count", "round", "rounded", "go", "come", "bring",
            "carry", "cut", "hold", "keep", "give", "pull", "push", "break", "fill"}
_PARTICLES = {"on", "off", "in", "out", "up", "down", "over", "back", "away", "through"}
# when a question is asked matters as much as what: the day, the part of the day, the season
_WHEN = {
    "weekday", "weekdays", "weekend", "weekends", "monday", "tuesday", "wednesday",
    "thursday", "friday", "saturday", "sunday", "mondays", "tuesdays", "wednesdays",
    "thursdays", "fridays", "saturdays", "sundays", "morning", "afternoon", "evening", "night",
    "day", "daytime", "nighttime", "tonight", "january", "february", "march", "april", "may",
    "june", "july", "august", "september", "october", "november", "december", "spring",
    "summer", "autumn", "fall", "winter", "holiday", "holidays", "school", "public",
}
# words read alike before comparing: the forms of "not", and a few synonyms of scope words
CANONICAL = {
    **dict.fromkeys(("cannot", "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt",
                     "werent", "wont", "wouldnt", "shouldnt", "couldnt", "hasnt", "havent",
                     "hadnt", "mustnt", "aint", "not"), "not"),
    "begin": "start", "commence": "start", "launch": "start", "finish": "end",
    "permit": "allow", "permitted": "allowed", "excluding": "exclude", "including": "include",
    "largest": "biggest", "larger": "bigger", "weekday": "weekdays", "weekend": "weekends",
}
_NEAR = 4
_ANTONYM_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "de")
# words that relate two things: with one of them, the same words in another order (a swap)
# mean something else ("is a cat bigger than a dog")
_RELATIONS = {"than", "to", "from", "into", "onto", "vs", "versus", "over", "against",
              "before", "after", "toward", "towards", "instead", "in", "of", "per"}
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
    cased: bool  # capitals mean something (not Title Case, ALL CAPS or all lower case)
    words: tuple[str, ...]
    content: tuple[str, ...]
    relations: tuple[tuple[str, str], ...]  # (a word before, a word after) a relation word


def normalise(text: str) -> str:
    """The prompt as it is embedded and compared: surrounding whitespace stripped."""
    return text.strip()


def _norm_word(word: str) -> str:
    return word.lower().replace("'", "").replace("\u2019", "")


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") \
        else word


def _number(m: re.Match[str]) -> str:
    value = m.group().split()[0] if m.group("ampm") else m.group()
    value = re.sub(r"[ap]\.?m\.?$", "", value, flags=re.IGNORECASE).rstrip("%")
    value = value.replace(",", "")
    ampm = m.group("ampm")
    return value + (ampm.replace(".", "").lower() if ampm else "")


def _cased(words: list[str]) -> bool:
    letters = [w for w in words if w[0].isalpha()]
    if letters and all(w.isupper() for w in letters if len(w) > 1) and \
            any(len(w) > 1 for w in letters):
        return False  # ALL CAPS
    if letters and not any(w[0].isupper() for w in letters):
        return False  # all lower case
    # Title Case: nearly every word after the first capitalised ("I" says nothing)
    inner = [w for w in letters[1:] if w != "I"]
    return len(inner) < 2 or sum(w[0].isupper() for w in inner) < 0.8 * len(inner)


def features(text: str) -> Features:
    text = normalise(text)
    numbers = tuple(_number(m) for m in _NUMBER.finditer(text))
    raw = re.findall(r"[A-Za-z][A-Za-z'\u2019]*", text)
    words = [_norm_word(w) for w in raw]
    # "the best way to", "a good way to": a frame, not a judgement
    judged = [w for i, w in enumerate(words)
              if not (w in {"best", "good", "right", "easiest", "quickest", "simplest"}
                      and i + 1 < len(words) and words[i + 1] in {"way", "ways", "method"})
              and not (w == "show" and i + 1 < len(words) and words[i + 1] in {"me", "us"})]
    polarity = frozenset(
        [CANONICAL.get(w, w) for w in judged
         if w in _NEGATIONS or w in _SCOPE or w in _NUMBER_WORDS or w in _WHEN
         or w in CANONICAL]
        + [f"{words[i - 1]} {w}" for i, w in enumerate(words)
           if i and w in _PARTICLES and words[i - 1] in _PHRASAL])
    text = _NUMBER.sub(lambda m: " " * len(m.group()), text)  # compared above
    starts = {m.start(1) for m in _SENTENCE_START.finditer(text)}
    cased = _cased(raw)
    entities: list[str] = []
    for m in _QUOTED.finditer(text):
        entities.append(next(g for g in m.groups() if g is not None).lower())
    for m in _WORD.finditer(text):
        word = m.group()
        code_like = any(c in word for c in "_./-") or any(c.isdigit() for c in word) or \
            (any(c.isupper() for c in word[1:]) and any(c.islower() for c in word))
        proper = cased and word[0].isupper() and m.start() not in starts and \
            word.lower() not in _STOP
        if code_like or proper:
            entities.append(word.lower())
    content = [w for w in words if w not in _STOP and len(w) > 2]
    relations = []
    for clause in re.split(r"[,;:()]", text):  # a fronted clause is not a swap
        cw = [_norm_word(w) for w in re.findall(r"[A-Za-z][A-Za-z'\u2019]*", clause)]
        for i, w in enumerate(cw):
            if w in _RELATIONS:
                # the nearest few words on either side: enough for a swap, bounded
                before = [_singular(x) for x in cw[:i] if x not in _STOP and len(x) > 1]
                after = [_singular(x) for x in cw[i + 1:] if x not in _STOP and len(x) > 1]
                relations += [(x, y) for x in before[-_NEAR:] for y in after[:_NEAR] if x != y]
    return Features(numbers=numbers, polarity=polarity, entities=tuple(entities),
                    cased=cased, words=tuple(words), content=tuple(content),
                    relations=tuple(relations))


def _in_order(names: tuple[str, ...], words: tuple[str, ...]) -> bool:
    """Whether ``names`` occur among ``words`` in this order (each name may be several)."""
    position = 0
    for name in names:
        parts = name.split()
        for i in range(position, len(words) - len(parts) + 1):
            if list(words[i:i + len(parts)]) == parts:
                position = i + len(parts)
                break
        else:
            return False
    return True


def _antonym(fa: Features, fb: Features) -> str | None:
    """A word of one prompt that is a word of the other with a negating prefix."""
    wa, wb = set(fa.content), set(fb.content)
    for mine, other in ((wa - wb, wb - wa), (wb - wa, wa - wb)):
        for word in mine:
            for prefix in _ANTONYM_PREFIXES:
                if word.startswith(prefix) and word[len(prefix):] in other | wa & wb:
                    return word
    return None


def agree(a: str, b: str) -> tuple[bool, str]:
    """Whether two prompts may share an answer lexically; the reason when they may not."""
    return agree_features(features(a), features(b))


def agree_features(fa: Features, fb: Features) -> tuple[bool, str]:
    """:func:`agree` on features already extracted (a stored prompt's are kept)."""
    if fa.numbers != fb.numbers:
        return False, "numbers differ"
    if fa.polarity != fb.polarity:
        return False, "negation, scope or time words differ"
    if _antonym(fa, fb):
        return False, "antonyms"
    if fa.cased and fb.cased:
        if fa.entities != fb.entities:
            return False, "named entities differ"
    elif fa.cased or fb.cased:  # capitals mean something in one of them only
        named, other = (fa, fb) if fa.cased else (fb, fa)
        if not _in_order(named.entities, other.words) or \
                not set(other.entities) <= set(named.entities):
            return False, "named entities differ"
    else:
        code = [e for e in fa.entities if e not in fa.words]
        if code != [e for e in fb.entities if e not in fb.words]:
            return False, "named entities differ"
    if set(fa.relations) & {(y, x) for x, y in fb.relations}:
        return False, "same words in another order"
    return True, ""
