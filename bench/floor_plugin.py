"""The least a plugin that records bodies can cost the relay: one ``post_response`` that
copies the request body and the answer (a stream's kept bytes) into shared memory, and
nothing else: no metadata, no writer, no disk. The bench's ``floor-*`` variants run it so
that midway-audit's figures can be read against it in the same rounds."""

import mmap

from midway import Exchange, Midway, hookimpl

_SIZE = 64 << 20
_ring = mmap.mmap(-1, _SIZE)
_pos = 0


@hookimpl
def startup(midway: Midway) -> None:
    midway.keep_stream_bodies(1 << 20)


def _copy(data: bytes) -> None:
    global _pos
    if _pos + len(data) > _SIZE:
        _pos = 0
    _ring[_pos:_pos + len(data)] = data
    _pos += len(data)


@hookimpl(trylast=True)
def post_response(exchange: Exchange) -> None:
    _copy(exchange.request.body)
    kept = exchange.kept_stream
    if kept is not None:
        _copy(b"".join(kept.chunks))
    elif exchange.response_body is not None:
        _copy(exchange.response_body)
