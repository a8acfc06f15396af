"""The request path, in one spelling: policy code and the upstream must read the same route.

``/v1/messages/``, ``/v1//messages``, ``/v1/./messages``, ``/v1/x/../messages``,
``/v1/%6Dessages`` and ``/V1/Messages`` all name ``/v1/messages`` to some reader (aiohttp's
decoded ``path``, an upstream's router, a proxy in between) but not to a plugin comparing
strings: a budget skipped on one spelling was spent on the other. So the core accepts a path
only in its normal form — non-empty segments of unreserved characters, no ``.``/``..``, no
percent-escapes, the words of Anthropic's routes in their own case — and refuses every other
spelling before any hook sees the request. The upstream URL is built from that path, so it
cannot leave an upstream's path prefix either.
"""

from __future__ import annotations

import functools
import re
import string

from midway.errors import MidwayError

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# The fixed words of Anthropic's routes: another case of one is another spelling of it.
ROUTE_WORDS = frozenset({
    "v1", "messages", "count_tokens", "batches", "results", "cancel", "models", "files",
    "content", "complete", "organizations", "skills", "versions", "experimental"})
_BY_FOLDED = {word.casefold(): word for word in ROUTE_WORDS}


def normalise(raw: str) -> str:
    """The normal form of a raw (still percent-encoded) path: escapes of unreserved characters
    decoded, other escapes upper-cased, empty and ``.`` segments dropped, ``..`` resolved (never
    above the root), route words in their own case, no trailing ``/``."""
    segments: list[str] = []
    for part in raw.split("/"):
        part = _ESCAPE.sub(_unescape, part)
        if part in ("", "."):
            continue
        if part == "..":
            if segments:
                segments.pop()
            continue
        segments.append(_BY_FOLDED.get(part.casefold(), part))
    return "/" + "/".join(segments)


def _unescape(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else f"%{match.group(1).upper()}"


@functools.lru_cache(maxsize=1024)  # asked per request; paths repeat
def is_normal(raw: str) -> bool:
    """Whether ``raw`` is a path midway forwards: its own normal form, unreserved only."""
    return raw.startswith("/") and all(c in _UNRESERVED or c == "/" for c in raw) and \
        normalise(raw) == raw


def check(raw: str) -> str:
    """``raw`` itself when it is in normal form; else a 400 naming the spelling to use."""
    if is_normal(raw):
        return raw
    shown = raw if len(raw) <= 200 else raw[:200] + "..."
    normal = normalise(raw)
    hint = f"; use {normal}" if all(c in _UNRESERVED or c == "/" for c in normal) else \
        "; paths may hold only letters, digits, '-', '.', '_', '~' between single slashes"
    raise MidwayError(400, f"path {shown!r} is not in normal form{hint}")
