"""Exporters that say once when a collector stops taking exports, and once when it is back.

The SDK's OTLP exporters log every retry of every batch: with a collector down that is a line
every few seconds for as long as it stays down. Their loggers are raised to ``CRITICAL`` and
these wrappers log the two transitions instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger("midway.otel")
SDK_LOGGERS = ("opentelemetry.exporter.otlp",)


def quiet_sdk_exporters() -> None:
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


class Outage:
    """Whether exports to one collector fail, shared by its span and metric exporters."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.down = False
        self._lock = threading.Lock()  # exporters run in the SDK's own threads

    def result(self, ok: bool, what: str) -> None:
        with self._lock:
            if ok and self.down:
                self.down = False
                log.warning("otel: exports to %s work again", self.where)
            elif not ok and not self.down:
                self.down = True
                log.warning("otel: exporting %s to %s failed; what cannot be sent is dropped "
                            "until it answers (logged again when it does)", what, self.where)


class SpanExporterLogged(SpanExporter):
    def __init__(self, inner: SpanExporter, outage: Outage) -> None:
        self._inner = inner
        self._outage = outage

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self._inner.export(spans)
        self._outage.result(result is SpanExportResult.SUCCESS, "spans")
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class MetricExporterLogged(MetricExporter):
    def __init__(self, inner: MetricExporter, outage: Outage) -> None:
        super().__init__(preferred_temporality=inner._preferred_temporality,
                         preferred_aggregation=inner._preferred_aggregation)
        self._inner = inner
        self._outage = outage

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        self._outage.result(result is MetricExportResult.SUCCESS, "metrics")
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)
