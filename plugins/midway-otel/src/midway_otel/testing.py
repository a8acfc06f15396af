"""A real OTLP receiver for tests: OTLP/HTTP (protobuf) and OTLP/gRPC, built on
``opentelemetry-proto``. Every export is decoded as the collector would decode it (a body that
does not parse fails the test that sent it), and kept with the headers it came with."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as metrics_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

KINDS: dict[str, tuple[str, Any, Any]] = {
    "/v1/traces": ("traces", trace_pb.ExportTraceServiceRequest,
                   trace_pb.ExportTraceServiceResponse),
    "/v1/metrics": ("metrics", metrics_pb.ExportMetricsServiceRequest,
                    metrics_pb.ExportMetricsServiceResponse),
    "/v1/logs": ("logs", logs_pb.ExportLogsServiceRequest, logs_pb.ExportLogsServiceResponse),
}


class Receiver:
    """What arrived, by signal: ``(request, headers)`` pairs."""

    def __init__(self) -> None:
        self.received: dict[str, list[tuple[Any, dict[str, str]]]] = {
            "traces": [], "metrics": [], "logs": []}
        self.status = 200  # what the HTTP side answers (to act out a failing collector)
        self.bad: list[str] = []  # exports that did not decode
        self._cond = threading.Condition()
        self._http: ThreadingHTTPServer | None = None
        self._grpc: grpc.Server | None = None
        self.http_url = ""
        self.grpc_url = ""

    def add(self, kind: str, message: Any, headers: dict[str, str]) -> None:
        with self._cond:
            self.received[kind].append((message, headers))
            self._cond.notify_all()

    def wait(self, kind: str, count: int = 1, timeout: float = 10.0) -> list[Any]:
        """The ``kind`` exports once ``count`` have arrived (fails after ``timeout``)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.received[kind]) >= count, timeout)
            assert ok, f"{len(self.received[kind])} {kind} exports arrived, wanted {count}"
            return [m for m, _ in self.received[kind]]

    # -- transports ---------------------------------------------------------------------------

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                entry = KINDS.get(self.path)
                data = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding") == "gzip":
                    data = gzip.decompress(data)
                if entry is None or self.headers.get("content-type") != \
                        "application/x-protobuf":
                    self.send_response(404 if entry is None else 415)
                    self.end_headers()
                    return
                kind, request_type, response_type = entry
                message = request_type()
                try:
                    message.ParseFromString(data)
                except Exception:
                    receiver.bad.append(self.path)
                    self.send_response(400)
                    self.end_headers()
                    return
                if receiver.status == 200:
                    receiver.add(kind, message, {k.lower(): v for k, v in self.headers.items()})
                body = response_type().SerializeToString()
                self.send_response(receiver.status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._http.serve_forever, args=(0.05,), daemon=True).start()
        self.http_url = f"http://127.0.0.1:{self._http.server_address[1]}"

        def servicer(kind: str, response_type: Any) -> Any:
            def export(request: Any, context: grpc.ServicerContext) -> Any:
                receiver.add(kind, request, dict(context.invocation_metadata()))
                return response_type()
            return export

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _Servicer(servicer("traces", trace_pb.ExportTraceServiceResponse)), server)
        metrics_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _Servicer(servicer("metrics", metrics_pb.ExportMetricsServiceResponse)), server)
        logs_grpc.add_LogsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _Servicer(servicer("logs", logs_pb.ExportLogsServiceResponse)), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._grpc = server
        self.grpc_url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(None)

    # -- reading what arrived -----------------------------------------------------------------

    def spans(self) -> list[tuple[Any, dict[str, Any]]]:
        """Every span received: ``(span, resource attributes)``."""
        out: list[tuple[Any, dict[str, Any]]] = []
        for message, _ in self.received["traces"]:
            for rs in message.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    out.extend((span, resource) for span in ss.spans)
        return out

    def metrics(self) -> dict[str, Any]:
        """The last value received of each metric, by name."""
        out: dict[str, Any] = {}
        for message, _ in self.received["metrics"]:
            for rm in message.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        out[metric.name] = metric
        return out


class _Servicer:
    """One ``Export`` method, for any of the three services."""

    def __init__(self, export: Any) -> None:
        self.Export = export


def value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return tuple(value(x) for x in v.array_value.values)
    return getattr(v, which) if which else None


def attributes(kvs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}
