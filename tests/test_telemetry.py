"""A span per RPC, checked with the in-memory exporter on an in-process server."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eve.api.server import build_server
from eve.core import telemetry
from eve.core.store import Store
from eve.v1 import endpoints_pb2, endpoints_pb2_grpc
from eve.workflow.registry import Coordinator

pytestmark = pytest.mark.timeout(60)


def test_span_per_rpc(tmp_path):
    exporter = InMemorySpanExporter()
    tel = telemetry.setup("eve-coordinator-test", span_exporter=exporter, set_global=False)
    store = Store(tmp_path / "eve.db")
    server = build_server(Coordinator(store), tracer_provider=tel.tracer_provider)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = endpoints_pb2_grpc.EndpointServiceStub(channel)
            stub.ListEndpoints(endpoints_pb2.ListEndpointsRequest())
            with pytest.raises(grpc.RpcError):
                stub.GetEndpoint(endpoints_pb2.GetEndpointRequest(endpoint="missing"))
    finally:
        server.stop(None).wait()
        store.close()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert "/eve.v1.EndpointService/ListEndpoints" in spans
    failed = spans["/eve.v1.EndpointService/GetEndpoint"]
    assert failed.attributes["rpc.service"] == "eve.v1.EndpointService"
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert failed.resource.attributes["service.name"] == "eve-coordinator-test"
    tel.shutdown()


def test_no_exporter_prints_nothing(capsys, monkeypatch):
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_METRICS_EXPORTER", raising=False)
    tel = telemetry.setup("quiet", set_global=False)
    with tel.tracer("t").start_as_current_span("work"):
        pass
    tel.meter("m").create_counter("keys").add(1)
    tel.shutdown()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
