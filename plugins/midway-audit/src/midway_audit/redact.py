"""Masking secrets before a record is written anywhere.

Bodies are redacted as the JSON *text* they are stored as: every pattern matches only
characters that need no JSON escaping (or a literal ``\\n`` escape), and replacements contain
no quote or backslash, so a redacted JSON document stays valid JSON.

Speed matters (Claude Code sends 80 KB+ per turn, and every record's metadata is scanned
too): each default pattern runs only when a literal every match contains is in the text
(``str.__contains__``: ~3.7 k instructions less than a regex scan that finds nothing on a
record's 1.3 KB of metadata), or in the lower-cased text for the two case-insensitive
patterns. Patterns that start with the same literal share one regex scan for it
(``_GUARDS``, itself skipped when ``sk`` or ``A`` is not in the text): the three ``sk`` keys
and the two ``A…`` keys run only when it finds one.
Each pattern also starts with a literal, checking the characters before it with a
lookbehind, so its own scan skips ahead to that literal.
E-mail addresses, whose ``@`` is common in code, are found from each ``@`` outwards.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import orjson

from midway_audit.parts import PART_MIN, Segment, digest, segments

_AWS_PREFIXES = ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA")

# name -> (regex, literals one of which every match contains, whether those literals are
# looked for in the lower-cased text). No literals: the pattern has a guard (_GUARDS).
DEFAULT_PATTERNS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "private_key": (r"-----BEGIN[A-Z ]{0,40}PRIVATE KEY-----"
                    r"(?:.{0,20000}?-----END[A-Z ]{0,40}PRIVATE KEY-----"
                    r"|(?:[A-Za-z0-9+/=\s]|\\n|\\r)*)", ("-----BEGIN",), False),
    "anthropic_key": (r"sk-ant-[A-Za-z0-9_\-]{8,}", (), False),
    "openai_key": (r"sk-(?<![A-Za-z0-9_\-]sk-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}",
                   (), False),
    "aws_access_key": (r"A(?<![A-Za-z0-9]A)(?:" + "|".join(p[1:] for p in _AWS_PREFIXES)
                       + r")[A-Z0-9]{16}(?![A-Za-z0-9])", (), False),
    "aws_secret_key": (r"(?i)(?:aws_secret_access_key|aws_secret_key|secret_access_key)"
                       r"(?:\\\"|[\s\"'=:])*[A-Za-z0-9/+=]{40}", ("secret_",), True),
    "github_token": (r"g(?<![A-Za-z0-9]g)(?:h[pousr]_[A-Za-z0-9]{36,}"
                     r"|ithub_pat_[A-Za-z0-9_]{40,})", ("gh", "github_pat_"), False),
    "slack_token": (r"xox(?<![A-Za-z0-9]xox)[abprs]-[A-Za-z0-9\-]{10,}", ("xox",), False),
    "google_api_key": (r"AIza(?<![A-Za-z0-9]AIza)[0-9A-Za-z_\-]{35}", (), False),
    # midway's own keys (midway.keys.tokens): mw-<12 base32>_<43 base64url>
    "midway_key": (r"mw-(?<![A-Za-z0-9_\-]mw-)[a-z2-7]{12}_[A-Za-z0-9_\-]{43}", ("mw-",), False),
    # header.payload[.signature]: both JSON objects, so both segments start "eyJ" ('{"')
    "jwt": (r"eyJ(?<![A-Za-z0-9_\-]eyJ)[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}"
            r"\.[A-Za-z0-9_\-]*", ("eyJ",), False),
    # Stripe's secret and restricted keys, live and test (pk_ publishable keys are public)
    "stripe_key": (r"sk_(?<![A-Za-z0-9]sk_)(?:live|test)_[A-Za-z0-9]{16,}", (), False),
    "stripe_restricted_key": (r"rk_(?<![A-Za-z0-9]rk_)(?:live|test)_[A-Za-z0-9]{16,}",
                              ("rk_",), False),
    "huggingface_token": (r"hf_(?<![A-Za-z0-9_]hf_)[A-Za-z0-9]{34,}(?![A-Za-z0-9])", ("hf_",),
                          False),
    "bearer_token": (r"(?i)(?<![A-Za-z0-9])bearer\s+[A-Za-z0-9._~+/\-]{8,}=*", ("bearer",),
                     True),
}
# One scan standing in for several patterns' own: every match of each pattern named starts
# with a match of its guard, so a text the guard does not match cannot hold any of theirs.
# The guard is scanned only when its literal (in every match of the guard) is in the text.
_GUARDS: dict[str, tuple[str, tuple[str, ...]]] = {
    r"sk[-_]": ("sk", ("anthropic_key", "openai_key", "stripe_key")),
    "A(?:" + "|".join(p[1:] for p in _AWS_PREFIXES) + "|Iza)": (
        "A", ("aws_access_key", "google_api_key")),
}
EMAIL = "email"  # a default too, found by _mask_emails

# The cache of redacted body parts: JSON up to _LONG bytes is its own key; longer JSON is
# keyed by its length and its first and last _END bytes, the entry holding it whole (None:
# the key is the JSON).
_LONG = 256
_END = 64
_PartKey = bytes | tuple[int, bytes, bytes]
_PartEntry = tuple[bytes | None, Segment]
_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_DOMAIN = re.compile(r"[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}"
                     r"(?![A-Za-z0-9\-])")

# Header names never stored, whatever their value; plus any name matching _SECRET_HEADER.
CREDENTIAL_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie",
                                "set-cookie", "x-midway-key"})
_SECRET_HEADER = re.compile(r"(?i)(?:api[-_]?key|token|secret|passw|auth|cookie|credential"
                            r"|signature|session-key)")


@attrs.define
class Pattern:
    name: str
    regex: re.Pattern[str]
    hints: tuple[str, ...]  # empty: always scan
    lower: bool
    replacement: str
    guard: re.Pattern[str] | None = None  # scanned once for the patterns that share it
    guard_literal: str = ""  # in every match of the guard


class Redactor:
    """Masks configured patterns in text and drops credential headers."""

    def __init__(self, use_defaults: bool = True, extra: Mapping[str, str] | None = None,
                 headers: Iterable[str] = ()) -> None:
        self.patterns: list[Pattern] = []
        self.emails = use_defaults
        if use_defaults:
            guards = {name: (re.compile(guard), literal)
                      for guard, (literal, names) in _GUARDS.items() for name in names}
            for name, (regex, hints, lower) in DEFAULT_PATTERNS.items():
                self._add(name, regex, hints, lower)
                if name in guards:
                    self.patterns[-1].guard, self.patterns[-1].guard_literal = guards[name]
        for name, regex in (extra or {}).items():
            try:
                self._add(name, regex, (), False)
            except re.error as exc:
                raise ValueError(f"[audit] redact_patterns.{name} is not a valid regex: "
                                 f"{exc}") from None
        self.drop_headers = CREDENTIAL_HEADERS | {h.lower() for h in headers}
        self._kept_headers: dict[str, bool] = {}
        self._keys: dict[str, str] = {}
        # JSON text of a body part -> its redacted text. Claude Code resends the whole
        # conversation (system prompt, tools, every earlier message) on every turn: those
        # parts are redacted once and found here afterwards.
        self._parts: dict[_PartKey, _PartEntry] = {}
        self._parts_size = 0
        self.parts_budget = 64 * 1024 * 1024

    def _add(self, name: str, regex: str, hints: tuple[str, ...], lower: bool) -> None:
        self.patterns.append(Pattern(name, re.compile(regex, re.DOTALL), hints, lower,
                                     f"[REDACTED:{name}]"))

    def text(self, text: str) -> str:
        """``text`` with every match of every pattern replaced by ``[REDACTED:<name>]``."""
        lowered: str | None = None
        # a guard's scan of the text as it is now, by the guard's source (a str caches its
        # hash; a compiled pattern's hash is recomputed over its code at every lookup)
        guarded: dict[str, bool] = {}
        for pattern in self.patterns:
            guard = pattern.guard
            if guard is not None:
                found = guarded.get(guard.pattern)
                if found is None:
                    found = guarded[guard.pattern] = pattern.guard_literal in text and \
                        guard.search(text) is not None
                if not found:
                    continue
            if pattern.hints:
                if pattern.lower:
                    if lowered is None:
                        lowered = text.lower()
                    haystack = lowered
                else:
                    haystack = text
                for hint in pattern.hints:
                    if hint in haystack:
                        break
                else:
                    continue
            replaced = pattern.regex.sub(pattern.replacement, text)
            if replaced != text:
                text, lowered = replaced, None
                guarded.clear()
        if self.emails and "@" in text:
            text = _mask_emails(text)
        return text

    def json_body(self, body: Mapping[str, Any]) -> list[Segment]:
        """A request body as redacted JSON text in segments (see :mod:`midway_audit.parts`),
        redacting each top-level value (and each message) once however many requests
        repeat it."""
        return segments(body, self.part, self._key)

    def _key(self, key: str) -> str:
        """A body key's redacted JSON text (a few names, sent again and again)."""
        found = self._keys.get(key)
        if found is None:
            found = self.part(orjson.dumps(key))[0]
            if len(self._keys) < 4096:
                self._keys[key] = found
        return found

    def part(self, raw: bytes) -> Segment:
        # A long value is looked up by its length and ends, and compared whole: hashing all
        # of it, every request, cost more than the comparison (a memcmp).
        key: _PartKey = raw if len(raw) <= _LONG else (len(raw), raw[:_END], raw[-_END:])
        entry = self._parts.get(key)
        if entry is not None and (entry[0] is None or entry[0] == raw):
            return entry[1]
        text = self.text(raw.decode())
        found = (text, digest(text) if len(text) >= PART_MIN else None)
        self._remember(key, raw, found)
        return found

    def _remember(self, key: _PartKey, raw: bytes, found: Segment) -> None:
        # orjson's bytes keep a 4 KiB buffer however short the JSON: store compact copies,
        # and count what entries really take, so the budget bounds real memory.
        entry: _PartEntry
        if key is raw:
            key, entry = bytes(memoryview(raw)), (None, found)
        else:
            entry = (bytes(memoryview(raw)), found)
        old = self._parts.pop(key, None)  # another value with the same length and ends
        if old is not None:
            self._parts_size -= _entry_size(key, old)
        self._parts[key] = entry
        self._parts_size += _entry_size(key, entry)
        while self._parts_size > self.parts_budget and self._parts:
            oldest = next(iter(self._parts))  # dicts keep insertion order: FIFO eviction
            self._parts_size -= _entry_size(oldest, self._parts.pop(oldest))

    def keep_header(self, name: str) -> bool:
        """Whether a request header may be stored at all (its value is still redacted)."""
        kept = self._kept_headers.get(name)
        if kept is None:
            lower = name.lower()
            kept = lower not in self.drop_headers and not _SECRET_HEADER.search(lower)
            if len(self._kept_headers) < 4096:  # clients send a few names, again and again
                self._kept_headers[name] = kept
        return kept


def _entry_size(key: _PartKey, entry: _PartEntry) -> int:
    whole, (text, part_digest) = entry
    size = sys.getsizeof(key) + sys.getsizeof(text) + (
        sys.getsizeof(part_digest) if part_digest is not None else 0)
    if isinstance(key, tuple):
        size += sys.getsizeof(key[1]) + sys.getsizeof(key[2]) + sys.getsizeof(whole)
    return size


def _mask_emails(text: str) -> str:
    """Replace ``local@domain.tld`` around each ``@`` (no whole-text regex scan)."""
    out: list[str] = []
    done = 0  # text[:done] is already in out
    at = text.find("@")
    while at >= 0:
        start = at
        while start > done and at - start < 64 and text[start - 1] in _LOCAL_CHARS:
            start -= 1
        match = _DOMAIN.match(text, at + 1) if start < at else None
        if match is not None:
            out.append(text[done:start])
            out.append("[REDACTED:email]")
            done = match.end()
        at = text.find("@", max(at + 1, done))
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)
