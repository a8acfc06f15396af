"""One access-log line per request: escaped, truncated, never a credential.

On by default, so it must cost next to nothing: the line is built in one pass from the
exchange (no record of fields, no request body parsed for it), and under ``midway serve``
(:func:`direct`) lines skip the ``logging`` machinery — a record, a formatter and a write and
flush per line — for a buffer in the same ``%(asctime)s %(levelname)s %(name)s: %(message)s``
form the other log lines have, written out at most :data:`FLUSH_DELAY` seconds after its first
line or once it holds :data:`FLUSH_LINES` lines (a write per loop iteration was a write
syscall per request at low concurrency), and when the server stops. Where ``midway serve`` did
not set up logging (tests, embedding) each line is a ``midway.access`` record as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import IO, overload

import orjson

from midway.exchange import Exchange

log = logging.getLogger("midway.access")
_MAX = 200
_PREFIX = " INFO midway.access: "
# The buffer's bounds: how late a line may reach the stream, and how many may wait.
FLUSH_DELAY = 0.1
FLUSH_LINES = 256
# ",123 INFO midway.access: " for every millisecond (a float's rounding may give 1000)
_MILLIS = [f",{min(ms, 999):03d}{_PREFIX}" for ms in range(1001)]


def _clean(value: object) -> str:
    text = str(value)
    if len(text) > _MAX:
        text = text[:_MAX] + "…"
    # Control characters (CR/LF included) are escaped so one request is one line.
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text


@overload
def _text(value: str) -> str: ...


@overload
def _text(value: str | None) -> str | None: ...


def _text(value: str | None) -> str | None:
    # most values are short and printable: checked, not copied
    if value is None or (len(value) <= _MAX and value.isprintable()):
        return value
    return _clean(value)


def _ms(value: float | None) -> float | None:
    return round(value, 2) if value else None


def _ms_text(value: float) -> str:
    """``str(round(value, 2))`` at a third of its cost (both round correctly; round()'s
    result is printed with a second conversion): "1.23", "1.2", "2.0"."""
    text = f"{value:.2f}"
    return text[:-1] if text[-1] == "0" else text


def _model(exchange: Exchange) -> str | None:
    model = exchange.response_model
    if model is None and exchange.request.is_messages:
        model = exchange.model  # no answer named one (an error): the request's
    return model


def fields(exchange: Exchange) -> dict[str, object]:
    """The line's fields, in order (``None``: not shown in the text form)."""
    usage = exchange.usage
    principal = exchange.principal
    timings = exchange.timings
    return {
        "request_id": exchange.id,
        "upstream_request_id": _text(exchange.upstream_request_id),
        "principal": _text(principal.id),
        "team": _text(principal.team),
        "method": _text(exchange.request.method),
        "path": _text(exchange.request.path),
        "model": _text(_model(exchange)),
        "status": exchange.status,
        "upstream": _text(exchange.upstream.name) if exchange.upstream else None,
        "attempts": len(exchange.attempts),
        "answered_by": _text(exchange.answered_by),
        "ttfb_ms": _ms(timings.ttfb_ms),
        "total_ms": _ms(timings.total_ms),
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_input_tokens,
        "cache_write_tokens": usage.cache_creation_input_tokens,
        "error": _text(exchange.error),
    }


def line(exchange: Exchange, fmt: str) -> str:
    """The access-log line of ``exchange`` (``fmt``: ``text`` or ``json``)."""
    if fmt == "json":
        return orjson.dumps(fields(exchange)).decode()
    # `key=value` for each of fields() that is not None, written out: a third of the time
    usage, timings, principal = exchange.usage, exchange.timings, exchange.principal
    urid, principal_id, team = exchange.upstream_request_id, principal.id, principal.team
    method, path, model = exchange.request.method, exchange.request.path, _model(exchange)
    upstream = exchange.upstream.name if exchange.upstream else None
    answered_by, error = exchange.answered_by, exchange.error
    # One check for them all (most lines): together short and printable, each is as _text
    # leaves it; else each is checked on its own.
    values = (f"{urid or ''}{principal_id}{team or ''}{method}{path}{model or ''}"
              f"{upstream or ''}{answered_by or ''}{error or ''}")
    if len(values) > _MAX or not values.isprintable():
        urid, principal_id, team = _text(urid), _text(principal_id), _text(team)
        method, path, model = _text(method), _text(path), _text(model)
        upstream, answered_by, error = _text(upstream), _text(answered_by), _text(error)
    ttfb, total = timings.ttfb_ms, timings.total_ms
    return (f"request_id={exchange.id}"
            f"{'' if urid is None else ' upstream_request_id=' + urid}"
            f" principal={principal_id}{'' if team is None else ' team=' + team}"
            f" method={method} path={path}"
            f"{'' if model is None else ' model=' + model}"
            f"{'' if exchange.status is None else f' status={exchange.status}'}"
            f"{'' if upstream is None else ' upstream=' + upstream}"
            f" attempts={len(exchange.attempts)}"
            f"{'' if answered_by is None else ' answered_by=' + answered_by}"
            f"{'' if not ttfb else ' ttfb_ms=' + _ms_text(ttfb)}"
            f"{'' if not total else ' total_ms=' + _ms_text(total)}"
            f" input_tokens={usage.input_tokens} output_tokens={usage.output_tokens}"
            f" cache_read_tokens={usage.cache_read_input_tokens}"
            f" cache_write_tokens={usage.cache_creation_input_tokens}"
            f"{'' if error is None else ' error=' + error}")


class _Direct:
    """Lines for a stream, buffered: written ``delay`` seconds after the first of them, or at
    once when ``limit`` are waiting (:func:`flush` at shutdown writes the rest)."""

    def __init__(self, stream: IO[str], delay: float = FLUSH_DELAY,
                 limit: int = FLUSH_LINES) -> None:
        self.stream = stream
        self.delay = delay
        self.limit = limit
        self.pending: list[str] = []
        self.timer: asyncio.TimerHandle | None = None
        self.second = -1
        self.stamp = ""

    def add(self, text: str) -> None:
        now = time.time()
        second = int(now)
        if second != self.second:  # logging's asctime: local time, then milliseconds
            self.second = second
            self.stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        pending = self.pending
        # The line's pieces, joined once per flush (no string built per line).
        pending += (self.stamp, _MILLIS[int((now - second) * 1000)], text, "\n")
        if len(pending) == 4:
            try:
                self.timer = asyncio.get_running_loop().call_later(self.delay, self.flush)
            except RuntimeError:  # no event loop: now
                self.flush()
        elif len(pending) >= self.limit * 4:
            self.flush()

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        lines, self.pending = self.pending, []
        if lines:
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):  # stderr gone or closed: nothing to tell it
                pass


_direct: _Direct | None = None


def direct(stream: IO[str]) -> None:
    """Write access lines to ``stream`` (the one ``midway serve``'s log lines go to)
    directly, in the log's format; :func:`flush` writes out what is buffered."""
    global _direct
    _direct = _Direct(stream)


def flush() -> None:
    if _direct is not None:
        _direct.flush()


def write(exchange: Exchange, fmt: str) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    text = line(exchange, fmt)
    if _direct is not None:
        _direct.add(text)
    else:
        log.info(text)
