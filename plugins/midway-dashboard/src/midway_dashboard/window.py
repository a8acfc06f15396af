"""The live-traffic window: what this process answered in the last minutes, in memory.

Fed by ``post_response``; read by the traffic, cache and upstream panels. Bounded both in time
(``window_seconds``) and in count (``max_events``) so a burst cannot grow memory without limit.
"""

from __future__ import annotations

import math
import struct
import time
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any

import attrs

from midway.annotations import CACHE, COST_USD
from midway.exchange import Exchange


@attrs.define(slots=True)
class Event:
    """One finished request, reduced to what the dashboard charts (no bodies, no secrets): a
    view made by the window's readers, which keeps requests packed (``TrafficWindow``)."""

    t: float  # when it finished (time.time())
    id: str
    status: int
    duration_ms: float
    ttfb_ms: float | None
    streaming: bool
    model: str | None
    principal: str
    upstream: str | None
    key_id: str | None
    cache: str | None
    error_type: str | None
    client_disconnected: bool
    input_tokens: int
    output_tokens: int
    cost_usd: float | None = None

    @property
    def is_error(self) -> bool:
        # The gateway's or upstream's failures: 5xx, rate limits, and error events in a stream
        # that began as a 200. Other 4xx are the client's mistakes; they show by status.
        return self.status >= 500 or self.status == 429 or \
            (self.status < 400 and self.error_type is not None)

    def as_dict(self) -> dict[str, Any]:
        return {"t": self.t, "id": self.id, "status": self.status,
                "duration_ms": round(self.duration_ms, 1),
                "ttfb_ms": None if self.ttfb_ms is None else round(self.ttfb_ms, 1),
                "streaming": self.streaming, "model": self.model, "principal": self.principal,
                "upstream": self.upstream, "key_id": self.key_id, "cache": self.cache,
                "error_type": self.error_type, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cost_usd": self.cost_usd}


def _model(exchange: Exchange) -> str | None:
    # The answer's model, as the access log shows it: the request's (its whole body parsed,
    # after the fact) only when no answer named one, as errors do.
    return exchange.response_model or exchange.model


# What a cost annotation may be read from (a tuple: ``str | int | float`` in ``isinstance``
# builds a union object at every call, ~2.5 k instructions a request).
_COST_TYPES = (str, int, float)


def _cost(value: object) -> float | None:
    # billing's annotation is a str of a Decimal; a float is plenty for a live total. NaN and
    # infinities are no cost (JSON has no such numbers; NaN is also the window's "none").
    if value is None:  # no billing
        return None
    try:
        cost = float(value) if isinstance(value, _COST_TYPES) else None
    except ValueError:
        return None
    return cost if cost is not None and math.isfinite(cost) else None


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (``None`` when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(durations: Iterable[float]) -> dict[str, float | None]:
    values = sorted(durations)
    return {"p50": percentile(values, 50), "p90": percentile(values, 90),
            "p95": percentile(values, 95), "p99": percentile(values, 99),
            "max": values[-1] if values else None}


# One request's numbers, packed: its id (midway's ids are 31 ASCII characters), duration,
# time to first byte and cost (NaN for none), status, input and output tokens, streaming and
# client_disconnected. Its end time is a column of its own (expiry and spans scan it), and its
# strings one shared tuple (_Profile). About 110 bytes a request in all where an Event with its own
# float, int and str objects took about 490.
_ROW = struct.Struct("=31sdddHII??")
_ID_LEN = 31
_NAN = math.nan
_FIRST_CAPACITY = 256
# The strings of a request (model, principal, upstream, key_id, cache, error_type) repeat: one
# tuple for each combination is shared by every request with it. The table that finds it is
# only a cache: emptied when it holds more than a quarter as many as the window (plus this), so
# odd values (a client naming a new model each time) cannot grow it past the window's size; the
# tuples themselves live as long as a request in the window refers to them.
_PROFILES_SLACK = 1024
# The fields of ``_ROW`` the panels read, the others skipped as padding (see ``_scan``).
_TRAFFIC_ROW = struct.Struct("=31xdddHII?x")  # duration .. streaming
_DURATION_STATUS_ROW = struct.Struct("=31xd16xH10x")  # duration, status
# A request whose id or numbers do not fit the packed row keeps them exactly after its strings:
# (model, principal, upstream, key_id, cache, error_type, id, status, input, output tokens).
_Profile = tuple[Any, ...]


class TrafficWindow:
    """A rolling, time-ordered record of finished requests.

    A ring of packed rows (see ``_ROW``), grown by doubling up to ``max_events`` and halved
    when a quarter full; a request leaves it by moving the start on. The panels read the
    columns they need and make ``Event`` views only of the requests they show: they run when
    someone views the dashboard, ``add`` runs for every request.
    """

    def __init__(self, window_seconds: float = 900.0, max_events: int = 100_000) -> None:
        self.window_seconds = window_seconds
        self.max_events = max_events
        self.total = 0  # since start, for "requests served" even after they left the window
        self._start = 0  # the oldest request's slot
        self._count = 0
        self._capacity = 0
        # Events are appended in order of their end (``Event.t``), which keeps the ring sorted
        # even when a long stream that started early finishes late.
        self._t = array("d")
        self._rows = bytearray()
        self._refs: list[_Profile | None] = []
        self._profiles: dict[_Profile, _Profile] = {}
        self._resize(min(_FIRST_CAPACITY, max_events))

    def __len__(self) -> int:
        return self._count

    def add(self, exchange: Exchange) -> None:
        """Remember a finished exchange (from ``post_response``)."""
        timings = exchange.timings
        duration = timings.total_ms or 0.0
        t = timings.started_at + duration / 1000
        cutoff = t - self.window_seconds
        if self._count and self._t[self._start] < cutoff:
            self.expire(t)
        count = self._count
        if count == self._capacity:
            if count < self.max_events:
                self._resize(min(2 * count, self.max_events))
            else:  # full: the oldest makes room
                self._refs[self._start] = None
                self._start = (self._start + 1) % count
                count -= 1
        slot = (self._start + count) % self._capacity
        self._count = count + 1
        self.total += 1
        upstream = exchange.upstream
        upstream_name: str | None = None
        key_id: str | None = None
        if upstream is not None and exchange.attempts:
            upstream_name, key_id = upstream.name, upstream.key_id
        cache = exchange.annotations.get(CACHE)
        key = (exchange.response_model or exchange.model, exchange.principal.name,
               upstream_name, key_id, cache if isinstance(cache, str) else None,
               exchange.error_type)
        profile = self._profiles.get(key)
        if profile is None:
            if len(self._profiles) > count // 4 + _PROFILES_SLACK:
                self._profiles.clear()
            profile = self._profiles[key] = key
        ttfb = timings.ttfb_ms
        cost = _cost(exchange.annotations.get(COST_USD))
        usage = exchange.usage
        request_id = exchange.id.encode()
        status = exchange.status or 0
        self._t[slot] = t
        try:
            if len(request_id) != _ID_LEN:
                raise struct.error("an id of another form")
            _ROW.pack_into(self._rows, slot * _ROW.size, request_id, duration,
                           _NAN if ttfb is None else ttfb, _NAN if cost is None else cost,
                           status, usage.input_tokens, usage.output_tokens,
                           exchange.streaming, exchange.client_disconnected)
        except struct.error:  # kept exactly, beside the strings
            profile = (*key, exchange.id, status, usage.input_tokens, usage.output_tokens)
            _ROW.pack_into(self._rows, slot * _ROW.size, b"", duration,
                           _NAN if ttfb is None else ttfb, _NAN if cost is None else cost,
                           0, 0, 0, exchange.streaming, exchange.client_disconnected)
        self._refs[slot] = profile

    def expire(self, now: float) -> None:
        cutoff = now - self.window_seconds
        times, refs, capacity = self._t, self._refs, self._capacity
        start, count = self._start, self._count
        while count and times[start] < cutoff:
            refs[start] = None
            start = (start + 1) % capacity
            count -= 1
        self._start, self._count = start, count
        if count < capacity // 4 and capacity > _FIRST_CAPACITY:
            self._resize(max(capacity // 2, _FIRST_CAPACITY))

    def _resize(self, capacity: int) -> None:
        # The rows in order from slot 0 (the ring's two pieces joined), in a ring of the new
        # capacity.
        start, count, size = self._start, self._count, _ROW.size
        head = min(start + count, self._capacity)  # the first piece ends here
        tail = start + count - head  # the second piece: slots 0 .. tail
        times = self._t[start:head] + self._t[:tail]
        rows = self._rows[start * size:head * size] + self._rows[:tail * size]
        refs = self._refs[start:head] + self._refs[:tail]
        times.frombytes(bytes(times.itemsize * (capacity - count)))
        rows.extend(bytes(size * (capacity - count)))
        refs.extend([None] * (capacity - count))
        self._t, self._rows, self._refs = times, rows, refs
        self._start, self._capacity = 0, capacity

    def _runs(self, first: int, stop: int) -> list[tuple[int, int]]:
        # The requests first .. stop (oldest is 0) as at most two runs of slots of the ring.
        capacity = self._capacity
        a, b = self._start + first, self._start + stop
        return [(a, b)] if b <= capacity else \
            [(a, capacity), (0, b - capacity)] if a < capacity else \
            [(a - capacity, b - capacity)]

    def _scan(self, first: int, stop: int, layout: struct.Struct
              ) -> Iterator[tuple[float, tuple[Any, ...], _Profile]]:
        """The end time, row (unpacked by ``layout``, a ``_ROW`` with the fields a reader does
        not need as padding) and strings of the requests ``first`` .. ``stop``, in order."""
        size = _ROW.size
        view = memoryview(self._rows)
        try:
            for lo, hi in self._runs(first, stop):
                yield from zip(self._t[lo:hi], layout.iter_unpack(view[lo * size:hi * size]),
                               self._refs[lo:hi], strict=True)  # type: ignore[misc]  # no None in a span
        finally:
            view.release()

    def _events(self, first: int, stop: int) -> list[Event]:
        """Views of the requests ``first`` .. ``stop`` (oldest is 0), in order."""
        out: list[Event] = []
        for t, row, profile in self._scan(first, stop, _ROW):
            request_id, duration, ttfb, cost, status, tokens_in, tokens_out, streaming, \
                disconnected = row
            if len(profile) == 6:
                model, principal, upstream, key_id, cache, error_type = profile
                request_id = request_id.decode()
            else:
                model, principal, upstream, key_id, cache, error_type, request_id, \
                    status, tokens_in, tokens_out = profile
            out.append(Event(t, request_id, status, duration, None if ttfb != ttfb else ttfb,
                             streaming, model, principal, upstream, key_id, cache,
                             error_type, disconnected, tokens_in, tokens_out,
                             None if cost != cost else cost))
        return out

    def _first(self, start: float) -> int:
        """Index (oldest is 0) of the first request that ended at ``start`` or later."""
        # Requests are in order of their end; scanning from the newest end keeps this cheap
        # for the short spans the live view asks for.
        times, capacity, base = self._t, self._capacity, self._start
        first = self._count
        while first and times[(base + first - 1) % capacity] >= start:
            first -= 1
        return first

    def since(self, start: float) -> list[Event]:
        """Views of the requests that ended at ``start`` or later, oldest first."""
        return self._events(self._first(start), self._count)

    # The panels below read the columns and unpack only the fields they use, building an Event
    # only for a request they show (an Event for each of 100 000 requests took most of their
    # time). ``Event.is_error`` is their definition of an error, written out inline.

    def traffic(self, now: float | None = None, span: float = 300.0, bucket: float = 5.0,
                recent_span: float = 60.0) -> dict[str, Any]:
        """Rates, error counts and latency percentiles: a chart series plus current figures."""
        now = time.time() if now is None else now
        self.expire(now)
        span = min(span, self.window_seconds)
        begin, stop = self._first(now - span), self._count
        n_buckets = max(1, int(span // bucket))
        first = math.floor(now / bucket) * bucket - (n_buckets - 1) * bucket
        # The span's end times, durations, statuses and strings as columns; the chart's
        # buckets are runs of them (the end times are in order: bisect finds each).
        times = array("d")
        rows: list[tuple[float, int]] = []
        refs: list[_Profile] = []
        size, view = _ROW.size, memoryview(self._rows)
        for lo, hi in self._runs(begin, stop):
            times += self._t[lo:hi]
            rows += _DURATION_STATUS_ROW.iter_unpack(view[lo * size:hi * size])
            refs += self._refs[lo:hi]  # type: ignore[arg-type]  # no None in a span
        view.release()
        all_durations = [duration for duration, _ in rows]
        status_of = [status if len(profile) == 6 else profile[7]
                     for (_, status), profile in zip(rows, refs, strict=True)]
        failed = [status >= 500 or status == 429 or (status < 400 and profile[5] is not None)
                  for status, profile in zip(status_of, refs, strict=True)]

        def index_of(t: float) -> float:  # a request's bucket; its order is the times'
            return (t - first) // bucket

        counts, errors, p50, p95, p99 = [], [], [], [], []
        lo = bisect_left(times, 0.0, key=index_of)
        for i in range(n_buckets):
            hi = bisect_left(times, i + 1.0, lo, key=index_of)
            counts.append(hi - lo)
            errors.append(sum(failed[lo:hi]))
            values = sorted(all_durations[lo:hi])
            p50.append(percentile(values, 50))
            p95.append(percentile(values, 95))
            p99.append(percentile(values, 99))
            lo = hi
        # The last minute's figures, from its requests' rows in full.
        recent = bisect_left(times, now - recent_span)
        latency = all_durations[recent:]
        ttfbs: list[float] = []
        costs: list[float] = []
        streaming = tokens_in = tokens_out = 0
        statuses: Counter[str] = Counter()
        models: Counter[str] = Counter()
        for _, (_, ttfb, cost, status, n_in, n_out, streams), profile \
                in self._scan(begin + recent, stop, _TRAFFIC_ROW):
            if len(profile) != 6:
                status, n_in, n_out = profile[7], profile[8], profile[9]
            if ttfb == ttfb:
                ttfbs.append(ttfb)
            costs.append(0.0 if cost != cost else cost or 0.0)
            streaming += streams
            tokens_in += n_in
            tokens_out += n_out
            statuses[_status_class(status)] += 1
            models[profile[0] or "-"] += 1
        error_at: list[int] = []  # the newest ten errors, newest first
        for i in range(len(failed) - 1, -1, -1):
            if failed[i]:
                error_at.append(begin + i)
                if len(error_at) == 10:
                    break
        return {
            "now": now,
            "bucket_seconds": bucket,
            "series": {
                "t": [first + i * bucket for i in range(n_buckets)],
                "rps": [c / bucket for c in counts],
                "errors_per_s": [e / bucket for e in errors],
                "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
            },
            "recent_seconds": recent_span,
            "requests": len(latency),
            "rps": len(latency) / recent_span,
            "errors": sum(failed[recent:]),
            "latency_ms": latency_summary(latency),
            "ttfb_ms": latency_summary(ttfbs),
            "streaming": streaming,
            "tokens": {"input": tokens_in, "output": tokens_out},
            "cost_usd": sum(costs),
            "by_status": dict(sorted(statuses.items())),
            "by_model": dict(models.most_common(10)),
            "total": self.total,
            "recent_errors": [self._events(i, i + 1)[0].as_dict() for i in error_at],
        }

    def cache_series(self, now: float | None = None, span: float = 900.0, bucket: float = 30.0
                     ) -> dict[str, Any]:
        """Cache outcomes over time, from the ``cache`` annotation the cache plugin sets."""
        now = time.time() if now is None else now
        self.expire(now)
        span = min(span, self.window_seconds)
        n_buckets = max(1, int(span // bucket))
        first = math.floor(now / bucket) * bucket - (n_buckets - 1) * bucket
        hits = [0] * n_buckets
        looked = [0] * n_buckets
        # Only the strings: no row is unpacked, and each bucket's requests (the end times are
        # in order) are counted at once.
        caches: list[str | None] = []
        times = array("d")
        for lo, hi in self._runs(self._first(now - span), self._count):
            caches += map(_cache_of, self._refs[lo:hi])  # type: ignore[arg-type]  # no None
            times += self._t[lo:hi]
        outcomes = Counter(c for c in caches if c is not None)

        def index_of(t: float) -> float:  # a request's bucket; its order is the times'
            return (t - first) // bucket

        lo = bisect_left(times, 0.0, key=index_of)
        for i in range(n_buckets):
            hi = bisect_left(times, i + 1.0, lo, key=index_of)
            counts = Counter(caches[lo:hi])
            looked[i] = hi - lo - counts[None] - counts["bypass"]
            hits[i] = counts["hit"] + counts["semantic-hit"]
            lo = hi
        return {"t": [first + i * bucket for i in range(n_buckets)],
                "hit_rate": [h / n if n else None for h, n in zip(hits, looked, strict=True)],
                "lookups": looked, "outcomes": dict(outcomes)}

    def by_upstream(self, now: float | None = None, span: float = 300.0) -> list[dict[str, Any]]:
        """Per upstream and key: requests, errors and latency seen by this process."""
        now = time.time() if now is None else now
        # per (upstream, key_id): [errors, durations, last status, last end time]
        groups: dict[tuple[str, str | None], list[Any]] = {}
        for t, (duration, status), profile in self._scan(self._first(now - span), self._count,
                                                          _DURATION_STATUS_ROW):
            upstream = profile[2]
            if upstream is None:
                continue
            if len(profile) != 6:
                status = profile[7]
            group = groups.get((upstream, profile[3]))
            if group is None:
                group = groups[(upstream, profile[3])] = [0, [], 0, 0.0]
            group[0] += status >= 500 or status == 429 or \
                (status < 400 and profile[5] is not None)
            group[1].append(duration)
            group[2], group[3] = status, t
        rows = []
        for (name, key_id), (errors, durations, last_status, last_t) in sorted(
                groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            rows.append({"upstream": name, "key_id": key_id, "requests": len(durations),
                         "errors": errors, "latency_ms": latency_summary(durations),
                         "last_status": last_status, "last_t": last_t})
        return rows

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        count = self._count
        return [e.as_dict() for e in reversed(self._events(max(0, count - limit), count))]


_cache_of = itemgetter(4)  # a profile's cache outcome


def _status_class(status: int) -> str:
    if status == 499:
        return "499"
    return f"{status // 100}xx" if status else "none"
