"""Request bodies stored by parts, each part once.

Claude Code resends the whole conversation on every turn, so storing each request body whole
grows with the square of a session's length. Instead, the large pieces of a body — each
top-level value (system prompt, tools…) and each message, when at least ``PART_MIN``
characters of JSON — are stored once, keyed by the SHA-256 of their (redacted) text. The
record's ``request_body`` column holds a *template*: the body's JSON text with each such
piece replaced by ``\\x01<digest>\\x01`` (JSON text as orjson writes it never contains a raw
``\\x01``). The hash chain covers the template, and so, through the digests, the parts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import orjson

PART_MIN = 1024
MARK = "\x01"

# (text, digest): a piece of the body's JSON text, with its digest when stored as a part
Segment = tuple[str, str | None]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def segments(body: Mapping[str, Any], piece: Callable[[bytes], Segment],
             name: Callable[[str], str] | None = None) -> list[Segment]:
    """Split a JSON object into glue and parts. ``piece(raw JSON)`` gives the text to store
    for one value (redacted) and its digest when it is large enough to be a part; ``name(key)``
    the text of a key (by default ``piece``'s)."""
    out: list[Segment] = []
    glue: list[str] = ["{"]

    def emit(text: str, part_digest: str | None) -> None:
        if part_digest is None:
            glue.append(text)
            return
        out.append(("".join(glue), None))
        glue.clear()
        out.append((text, part_digest))

    for index, (key, value) in enumerate(body.items()):
        if index:
            glue.append(",")
        glue.append(name(key) if name is not None else piece(orjson.dumps(key))[0])
        if key == "messages" and isinstance(value, list):
            glue.append(":[")
            for i, message in enumerate(value):
                if i:
                    glue.append(",")
                emit(*piece(orjson.dumps(message)))
            glue.append("]")
        else:
            glue.append(":")
            emit(*piece(orjson.dumps(value)))
    glue.append("}")
    out.append(("".join(glue), None))
    return [s for s in out if s[0] or s[1]]


def template(segs: list[Segment]) -> str:
    return "".join(f"{MARK}{d}{MARK}" if d else text for text, d in segs)


def full_text(segs: list[Segment]) -> str:
    return "".join(text for text, _ in segs)


def digests(stored: str | None) -> list[str]:
    """The part digests a stored request body refers to."""
    if not stored or MARK not in stored:
        return []
    return stored.split(MARK)[1::2]


def expand(stored: str | None, parts: Mapping[str, str]) -> str | None:
    """The whole body from its template; a missing part shows as ``[missing part <digest>]``."""
    if not stored or MARK not in stored:
        return stored
    pieces = stored.split(MARK)
    pieces[1::2] = [parts.get(d, f"[missing part {d}]") for d in pieces[1::2]]
    return "".join(pieces)


def plain_piece(raw: bytes) -> Segment:
    """``piece`` for text that is already redacted (re-splitting an exported body)."""
    text = raw.decode()
    return text, digest(text) if len(text) >= PART_MIN else None


def resplit(text: str) -> str:
    """The template of a whole (exported) body that was stored by parts."""
    body = orjson.loads(text)
    if not isinstance(body, dict):
        raise ValueError("a body stored by parts is a JSON object")
    return template(segments(body, plain_piece))
