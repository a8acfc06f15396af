"""Prometheus metrics of the core; plugins add theirs on ``midway.metrics.registry``.

The request path only bumps plain counters in dicts (about a microsecond); a collector turns
them into Prometheus families when ``/metrics`` is scraped. prometheus-client's own metric
objects take a lock per update, which costs more than the rest of the relay's bookkeeping.
"""

from __future__ import annotations

import json
import os
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
           300.0)


class _Histogram:
    __slots__ = ("counts", "n", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.total += value
        self.n += 1

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


class CountedFamily(Collector):
    """A labelled counter of a plugin, counted in a dict on every update and made a family
    only when scraped (as the module's note explains): the same samples as a
    prometheus-client ``Counter``'s, ``_created`` too. Updated on the event loop's thread."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        # label values -> [count, created]
        self.counts: dict[tuple[str, ...], list[float]] = {}
        registry.register(self)

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        if amount < 0:  # as Counter.inc
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        counted = self.counts.get(labels)
        if counted is None:
            self.counts[labels] = [amount, time.time()]
        else:
            counted[0] += amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, (count, created) in list(self.counts.items()):
            family.add_metric(labels, count, created=created)
        yield family


class Metrics(Collector):
    """The core's metrics, on a registry of their own (one per instance).

    With several workers on one port a scrape reaches any one of them, so each worker
    publishes a snapshot of its counters in ``peers_dir`` (see :meth:`publish`) and every
    worker's ``/metrics`` reports all workers, each series labelled with its ``worker``.
    """

    def __init__(self, registry: CollectorRegistry | None = None, worker: int = 0,
                 peers_dir: Path | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.worker = worker
        self.peers_dir = peers_dir
        # (status, model, upstream, principal) -> count
        self.requests: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)
        self.latency: defaultdict[str, _Histogram] = defaultdict(_Histogram)
        self.ttfb: defaultdict[str, _Histogram] = defaultdict(_Histogram)
        self.inflight = 0
        self.tokens: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.plugin_errors: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.attempts: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.open_streams = 0
        self._published = ""  # the snapshot last written by publish()
        self.registry.register(self)

    # -- several workers --------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """This worker's counters as JSON-able data."""
        return {
            "worker": self.worker, "pid": os.getpid(),
            "requests": [[*k, v] for k, v in self.requests.items()],
            "latency": {k: [h.counts, h.total, h.n] for k, h in self.latency.items()},
            "ttfb": {k: [h.counts, h.total, h.n] for k, h in self.ttfb.items()},
            "inflight": self.inflight, "open_streams": self.open_streams,
            "tokens": [[*k, v] for k, v in self.tokens.items()],
            "plugin_errors": [[*k, v] for k, v in self.plugin_errors.items()],
            "attempts": [[*k, v] for k, v in self.attempts.items()],
        }

    def publish(self) -> None:
        """Write this worker's snapshot for its peers (atomically: write, then rename) when
        it changed since the last one written: an idle gateway does not write every second."""
        if self.peers_dir is None:
            return
        text = json.dumps(self.snapshot())
        path = self.peers_dir / f"worker-{self.worker}.json"
        if text == self._published and path.exists():
            return
        self.peers_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        self._published = text

    def snapshots(self) -> list[dict[str, Any]]:
        """Every worker's counters: this one live, the others from their last snapshot."""
        found = [self.snapshot()]
        if self.peers_dir is not None and self.peers_dir.is_dir():
            for path in sorted(self.peers_dir.glob("worker-*.json")):
                if path.name == f"worker-{self.worker}.json":
                    continue
                try:
                    found.append(json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue
        return found

    # -- exposition --------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        snaps = self.snapshots()
        requests = CounterMetricFamily("midway_requests", "Requests answered, by outcome.",
                                       labels=["status", "model", "upstream", "principal",
                                               "worker"])
        tokens = CounterMetricFamily("midway_tokens", "Tokens by kind, from final usage.",
                                     labels=["kind", "model", "worker"])
        errors = CounterMetricFamily("midway_plugin_errors", "Plugin failures, by hook.",
                                     labels=["plugin", "hook", "worker"])
        attempts = CounterMetricFamily("midway_upstream_attempts",
                                       "Upstream attempts, by upstream and outcome.",
                                       labels=["upstream", "outcome", "worker"])
        inflight = GaugeMetricFamily("midway_inflight_requests", "Requests being served.",
                                     labels=["worker"])
        streams = GaugeMetricFamily("midway_open_streams", "Streams being relayed.",
                                    labels=["worker"])
        hists = {key: HistogramMetricFamily(name, doc, labels=["streaming", "worker"])
                 for key, name, doc in (
                     ("latency", "midway_request_duration_seconds", "Arrival to last byte."),
                     ("ttfb", "midway_ttfb_seconds", "Arrival to first byte."))}
        for snap in snaps:
            worker = str(snap["worker"])
            for family, key in ((requests, "requests"), (tokens, "tokens"),
                                (errors, "plugin_errors"), (attempts, "attempts")):
                for *labels, value in snap[key]:
                    family.add_metric([*labels, worker], value)
            inflight.add_metric([worker], snap["inflight"])
            streams.add_metric([worker], snap["open_streams"])
            for key, hist_family in hists.items():
                for kind, (counts, total, _n) in snap[key].items():
                    hist = _Histogram()
                    hist.counts = list(counts)
                    hist_family.add_metric([kind, worker], hist.buckets(), total)
        yield requests
        yield from hists.values()
        yield inflight
        yield streams
        yield tokens
        yield errors
        yield attempts
