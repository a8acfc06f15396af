"""Which headers cross the proxy: an open list, minus what is hop-by-hop."""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection",
})
# Recomputed by the HTTP stack for the outgoing message, never copied.
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "server", "date"}
CREDENTIAL_HEADERS = ("x-api-key", "authorization")
# Encodings midway can read to observe usage; others are not offered upstream.
READABLE_ENCODINGS = ("gzip", "deflate")


def _named_by_connection(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    names: set[str] = set()
    for value in headers.getall("connection", ()):
        names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return names


def _without(incoming: CIMultiDictProxy[str] | CIMultiDict[str], drop: Iterable[str]
             ) -> CIMultiDict[str]:
    """A copy of ``incoming`` (order and duplicates kept) without the names in ``drop``
    (lower case). Copied whole, then trimmed, never iterated: iterating a case-insensitive
    multidict makes an ``istr`` of each name and keeps it in the dict (~70 bytes a header), and
    the dicts copied here (aiohttp's request, the upstream's answer) last as long as a stream."""
    out = CIMultiDict(incoming)
    for name in drop:
        if name in out:
            out.popall(name)
    return out


def request_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The client's end-to-end headers, in order, duplicates kept."""
    drop = _REQUEST_DROP | _named_by_connection(incoming) if "connection" in incoming \
        else _REQUEST_DROP
    return _without(incoming, drop)


def response_headers(incoming: CIMultiDictProxy[str] | CIMultiDict[str],
                     extra_drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """The upstream's end-to-end response headers for the client."""
    drop = _RESPONSE_DROP | set(extra_drop) if extra_drop else _RESPONSE_DROP
    if "connection" in incoming:
        drop = drop | _named_by_connection(incoming)
    return _without(incoming, drop)


def filter_accept_encoding(value: str | None) -> str:
    """Keep only the encodings midway can read (so usage is never lost to brotli/zstd)."""
    if not value:
        return "identity"
    kept = [part.strip() for part in value.split(",")
            if part.split(";")[0].strip().lower() in READABLE_ENCODINGS]
    return ", ".join(kept) if kept else "identity"
