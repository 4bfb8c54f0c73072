"""OpenTelemetry for every Eve process: one call sets up tracing and metrics.

With no exporter configured nothing is exported or printed. The standard
environment variables pick one: ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``
= ``console`` or ``otlp`` (the latter needs ``opentelemetry-exporter-otlp``),
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` for the resource.
Tests pass an in-memory exporter instead.

One trace per job (issue 24): ``eve migrate`` opens a root span for its job
(``root_span``), the coordinator one for each run (``new_run_trace``, kept with
the run so that a restarted coordinator continues the same trace) and a span
per phase under it (``phase_span``: prepare, copy, sync, cutover, verify,
rollback). The bulk copy passes the current context to its scanners and
restorers (``carrier``: W3C ``traceparent`` pairs in their options), whose batch
spans become its descendants across processes: a restore batch is the child of
the scan batch whose frame carried its context.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
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

__all__ = ["Telemetry", "carrier", "context_of", "new_run_trace", "phase_span", "root_span", "setup"]

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


# -- one trace per job ------------------------------------------------------------------------


def carrier(context: otel_context.Context | None = None) -> tuple[tuple[str, str], ...]:
    """The context (default: the current one) as W3C trace context pairs, picklable for a
    worker's options; empty when no span is recording."""
    found: dict[str, str] = {}
    propagate.inject(found, context=context)
    return tuple(sorted(found.items()))


def context_of(pairs: Iterable[tuple[str, str]] | Mapping[str, str]) -> otel_context.Context:
    """The context a ``carrier`` holds: the parent of the spans started in it. No pairs: a
    new root (an empty context), never the caller's current span."""
    found = dict(pairs.items() if isinstance(pairs, Mapping) else pairs)
    return propagate.extract(found) if found else otel_context.Context()


@contextmanager
def root_span(name: str, *, tracer: trace.Tracer | None = None,
              attributes: Mapping[str, Any] | None = None) -> Iterator[trace.Span]:
    """A span that starts a trace of its own (``eve migrate``'s job), current inside."""
    tracer = tracer or trace.get_tracer("eve")
    with tracer.start_as_current_span(name, context=otel_context.Context(), attributes=dict(attributes or {})) \
            as span:
        yield span


def new_run_trace(run_id: str, *, tracer: trace.Tracer | None = None) -> dict[str, str]:
    """The root span of a run's trace, ended at once, as a carrier to keep with the run: its
    phases, across coordinator restarts, are its children (``phase_span``)."""
    tracer = tracer or trace.get_tracer("eve.workflow")
    span = tracer.start_span(f"run {run_id}", context=otel_context.Context(), attributes={"eve.run": run_id})
    try:
        return dict(carrier(trace.set_span_in_context(span)))
    finally:
        span.end()


@contextmanager
def phase_span(name: str, parent: Iterable[tuple[str, str]] | Mapping[str, str], *,
               tracer: trace.Tracer | None = None, attributes: Mapping[str, Any] | None = None) -> Iterator[trace.Span]:
    """A phase of a run (``prepare``, ``copy``, ``sync``, ...) under the run's root span, current
    inside: the bulk copy's batches started meanwhile are its descendants."""
    tracer = tracer or trace.get_tracer("eve.workflow")
    with tracer.start_as_current_span(name, context=context_of(parent), attributes=dict(attributes or {})) as span:
        yield span
