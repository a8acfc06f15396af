"""Masking secrets before a record is written anywhere.

Bodies are redacted as the JSON *text* they are stored as: every pattern matches only
characters that need no JSON escaping (or a literal ``\\n`` escape), and replacements contain
no quote or backslash, so a redacted JSON document stays valid JSON.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import attrs

# name -> (regex, a literal that every match contains, checked first because ``in`` is far
# cheaper than a regex scan over an 80 KB body; None: always scan)
DEFAULT_PATTERNS: dict[str, tuple[str, str | None]] = {
    "private_key": (r"-----BEGIN[A-Z ]{0,40}PRIVATE KEY-----"
                    r"(?:.{0,20000}?-----END[A-Z ]{0,40}PRIVATE KEY-----"
                    r"|(?:[A-Za-z0-9+/=\s]|\\n|\\r)*)", "PRIVATE KEY-----"),
    "anthropic_key": (r"sk-ant-[A-Za-z0-9_\-]{8,}", "sk-ant-"),
    "openai_key": (r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}", "sk-"),
    "aws_access_key": (r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b", None),
    "aws_secret_key": (r"(?i)(?:aws_secret_access_key|aws_secret_key|secret_access_key)"
                       r"(?:\\\"|[\s\"'=:])*[A-Za-z0-9/+=]{40}", None),
    "github_token": (r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})", "_"),
    "slack_token": (r"\bxox[abprs]-[A-Za-z0-9\-]{10,}", "xox"),
    "google_api_key": (r"\bAIza[0-9A-Za-z_\-]{35}", "AIza"),
    "bearer_token": (r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-]{8,}=*", None),
    "email": (r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*"
              r"\.[A-Za-z]{2,24}", "@"),
}

# Header names never stored, whatever their value; plus any name matching _SECRET_HEADER.
CREDENTIAL_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie",
                                "set-cookie", "x-midway-key"})
_SECRET_HEADER = re.compile(r"(?i)(?:api[-_]?key|token|secret|passw|auth|cookie|credential"
                            r"|signature|session-key)")


@attrs.define
class Pattern:
    name: str
    regex: re.Pattern[str]
    hint: str | None
    replacement: str


class Redactor:
    """Masks configured patterns in text and drops credential headers."""

    def __init__(self, use_defaults: bool = True, extra: Mapping[str, str] | None = None,
                 headers: Iterable[str] = ()) -> None:
        self.patterns: list[Pattern] = []
        if use_defaults:
            for name, (regex, hint) in DEFAULT_PATTERNS.items():
                self._add(name, regex, hint)
        for name, regex in (extra or {}).items():
            try:
                self._add(name, regex, None)
            except re.error as exc:
                raise ValueError(f"[audit] redact_patterns.{name} is not a valid regex: "
                                 f"{exc}") from None
        self.drop_headers = CREDENTIAL_HEADERS | {h.lower() for h in headers}

    def _add(self, name: str, regex: str, hint: str | None) -> None:
        self.patterns.append(Pattern(name, re.compile(regex, re.DOTALL), hint,
                                     f"[REDACTED:{name}]"))

    def text(self, text: str) -> str:
        """``text`` with every match of every pattern replaced by ``[REDACTED:<name>]``."""
        for pattern in self.patterns:
            if pattern.hint is not None and pattern.hint not in text:
                continue
            text = pattern.regex.sub(pattern.replacement, text)
        return text

    def headers(self, items: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Headers safe to store: credentials dropped, the rest redacted like bodies."""
        kept: dict[str, str] = {}
        for name, value in items:
            lower = name.lower()
            if lower in self.drop_headers or _SECRET_HEADER.search(lower):
                continue
            value = self.text(value)
            kept[lower] = f"{kept[lower]}, {value}" if lower in kept else value
        return kept
