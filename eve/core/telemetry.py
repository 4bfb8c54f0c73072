"""OpenTelemetry for every Eve process: one call sets up tracing and metrics.

With no exporter configured nothing is exported or printed. The standard
environment variables pick one: ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``
= ``console`` or ``otlp`` (the latter needs ``opentelemetry-exporter-otlp``),
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` for the resource.
Tests pass an in-memory exporter instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

__all__ = ["Telemetry", "setup"]

log = logging.getLogger("eve.core.telemetry")


@dataclass(frozen=True)
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def tracer(self, name: str) -> trace.Tracer:
        return self.tracer_provider.get_tracer(name)

    def meter(self, name: str) -> metrics.Meter:
        return self.meter_provider.get_meter(name)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _span_exporter_from_env() -> SpanExporter | None:
    name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if name in ("", "none"):
        return None
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter,
            )
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp needs the opentelemetry-exporter-otlp package; tracing is off")
            return None
        return OTLPSpanExporter()
    log.warning("OTEL_TRACES_EXPORTER=%s is not supported (console, otlp, none); tracing export is off", name)
    return None


def _metric_reader_from_env() -> MetricReader | None:
    name = os.environ.get("OTEL_METRICS_EXPORTER", "none").strip().lower()
    if name in ("", "none"):
        return None
    if name == "console":
        return PeriodicExportingMetricReader(ConsoleMetricExporter())
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )
        except ImportError:
            log.warning("OTEL_METRICS_EXPORTER=otlp needs the opentelemetry-exporter-otlp package; metrics are off")
            return None
        return PeriodicExportingMetricReader(OTLPMetricExporter())
    log.warning("OTEL_METRICS_EXPORTER=%s is not supported (console, otlp, none); metrics export is off", name)
    return None


def setup(
    service_name: str,
    *,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
    set_global: bool = True,
) -> Telemetry:
    """Build the providers for one process (``eve-coordinator``, ``eve-scanner``, ...).

    ``span_exporter``/``metric_reader`` override the environment (tests use the
    in-memory ones, exported synchronously). ``set_global`` installs them as the
    process's global providers, which OpenTelemetry allows once per process.
    """
    resource = Resource.create({"service.name": service_name, "process.pid": os.getpid()})
    tracer_provider = TracerProvider(resource=resource)
    if span_exporter is not None:
        tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    else:
        exporter = _span_exporter_from_env()
        if exporter is not None:
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    reader = metric_reader if metric_reader is not None else _metric_reader_from_env()
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader] if reader else [])
    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
    return Telemetry(tracer_provider, meter_provider)
