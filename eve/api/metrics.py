"""Prometheus metrics: ``/metrics`` on the coordinator's HTTP listener (``eve serve --http``),
and on 127.0.0.1 during a one-shot job (``eve migrate --metrics-port``).

The numbers are the API's (STYLE.md habit 8: progress is an API): a scrape calls the very
servicers behind ``GetMetrics``, ``ListRuns`` and ``ListInterlays``, so a dashboard never
disagrees with ``eve runs show`` or grpcurl. Names follow the OpenMetrics conventions
(``eve_run_keys_restored_total{run="..."}``; units in the name, ``_total`` on counters):

per run (label ``run``; ``eve_run_state`` also ``state``)
    ``eve_run_state`` (1, the state as a label), ``eve_run_keys_{scanned,restored,skipped,
    conflicting,failed}_total``, ``eve_run_copied_bytes_total``, ``eve_run_keys_per_second``,
    ``eve_run_copied_bytes_per_second``, ``eve_run_eta_seconds`` (absent while unknown),
    ``eve_run_source_keys``,
    ``eve_run_dirty_backlog_keys``, ``eve_run_dirty_lag_seconds``, ``eve_run_keys_recopied_total``,
    ``eve_run_dual_write_failures_total``, ``eve_run_noscript_replies_total``
per interlay (label ``interlay``; per backend also ``backend``, per dual-write side ``side``)
    ``eve_interlay_up`` (also ``endpoint``), ``eve_interlay_connections``,
    ``eve_interlay_ops_per_second``, ``eve_interlay_errors_total``,
    ``eve_interlay_dirty_keys_pending``, ``eve_interlay_backend_ops_total``,
    ``eve_interlay_backend_errors_total``, ``eve_interlay_backend_latency_seconds`` (a
    histogram: ``_bucket{le=...}``, ``_sum``, ``_count``), ``eve_interlay_dual_writes_total``,
    ``eve_interlay_dual_write_failures_total``, ``eve_interlay_noscript_replies_total``

Backend latency is a histogram of every round trip since the proxy processes started, with
the buckets of ``proxy.stats.LATENCY_BUCKETS_SECONDS`` (issue 24), as every Redis exporter
and proxy exports it: it adds up across interlays and processes, and any quantile is
``histogram_quantile(0.99, sum by (le) (rate(eve_interlay_backend_latency_seconds_bucket[5m])))``
(docs/grafana-dashboard.json). ``GetInterlay``'s p50/p99 of the last interval stay in the API.
Counters restart from zero when a proxy process restarts; Prometheus' ``rate()`` takes that
as a reset.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from eve.api.context import LocalCallContext
from eve.bulk.pipeline import Progress
from eve.core.errors import ConfigError
from eve.v1 import interlays_pb2, workflows_pb2

__all__ = [
    "EveCollector",
    "JobMetrics",
    "RunSample",
    "coordinator_collector",
    "metrics_endpoint",
    "new_registry",
    "progress_metrics",
]

log = logging.getLogger("eve.api.metrics")



@dataclass(frozen=True)
class RunSample:
    """One run's metrics as GetMetrics returns them, and its state's name."""

    run: str
    state: str
    metrics: workflows_pb2.RunMetrics


# Run counters: (metric name without _total, RunMetrics field, help).
_RUN_COUNTERS = (
    ("eve_run_keys_scanned", "keys_scanned", "Keys the scanners read from the source (SCAN + DUMP + PTTL)."),
    ("eve_run_keys_restored", "keys_restored", "Keys written to the target."),
    ("eve_run_keys_skipped", "keys_skipped", "Keys that expired or were deleted on the source before their copy."),
    ("eve_run_keys_conflicting", "keys_conflicting",
     "Keys that existed on the target and were kept (conflict policy NONE, or MERGE of a type without merge)."),
    ("eve_run_keys_failed", "keys_failed", "Keys whose copy failed: the run's error keys."),
    ("eve_run_copied_bytes", "bytes", "Payload bytes copied to the target."),
    ("eve_run_keys_recopied", "keys_recopied", "Dirty keys re-copied from the authoritative side (live runs)."),
    ("eve_run_dual_write_failures", "dual_write_failures",
     "Writes the interlay could not apply on a side other than the authoritative one (live runs)."),
    ("eve_run_noscript_replies", "noscript_replies",
     "NOSCRIPT errors the run's interlay sent to clients: EVALSHA of a script it could not load (live runs)."),
)
# Run gauges: (metric name, RunMetrics field, help).
_RUN_GAUGES = (
    ("eve_run_keys_per_second", "keys_per_second", "Keys scanned per second since the copy started."),
    ("eve_run_copied_bytes_per_second", "bytes_per_second",
     "Payload bytes copied to the target per second since the copy started."),
    ("eve_run_source_keys", "source_keys", "The source's key count when the copy started (the ETA's total)."),
    ("eve_run_dirty_backlog_keys", "dirty_backlog", "Keys written during the run and not re-copied yet (live runs)."),
    ("eve_run_dirty_lag_seconds", "dirty_lag_seconds", "Age of the oldest dirty key not re-copied yet (live runs)."),
)


class EveCollector:
    """A custom collector: every scrape asks ``runs()`` and ``interlays()`` for the numbers now.

    ``runs`` yields RunSample; ``interlays`` yields ``eve.v1.Interlay`` messages (GetInterlay's)."""

    def __init__(self, runs: Callable[[], Iterable[RunSample]],
                 interlays: Callable[[], Iterable[interlays_pb2.Interlay]] = tuple) -> None:
        self._runs = runs
        self._interlays = interlays

    def describe(self) -> list[Metric]:
        return []  # nothing to say before a scrape: registering must not call the servicers

    def collect(self) -> Iterator[Metric]:
        yield from self._run_families(list(self._runs()))
        yield from self._interlay_families(list(self._interlays()))

    @staticmethod
    def _run_families(samples: list[RunSample]) -> Iterator[Metric]:
        state = GaugeMetricFamily("eve_run_state", "The run's state (1; the state is the label).",
                                  labels=["run", "state"])
        counters = {name: CounterMetricFamily(name, doc, labels=["run"]) for name, _, doc in _RUN_COUNTERS}
        gauges = {name: GaugeMetricFamily(name, doc, labels=["run"]) for name, _, doc in _RUN_GAUGES}
        cross_slot = CounterMetricFamily("eve_run_cross_slot_commands", "Commands through the run's interlay whose "
                                         "keys spanned hash slots; fails_on_cluster: refused by a cluster target "
                                         "(issue 14).", labels=["run", "command", "fails_on_cluster"])
        eta = GaugeMetricFamily("eve_run_eta_seconds", "Estimated seconds until the bulk copy ends (absent while "
                                "unknown).", labels=["run"])
        for sample in samples:
            state.add_metric([sample.run, sample.state], 1)
            for name, field, _ in _RUN_COUNTERS:
                counters[name].add_metric([sample.run], getattr(sample.metrics, field))
            for name, field, _ in _RUN_GAUGES:
                gauges[name].add_metric([sample.run], getattr(sample.metrics, field))
            if sample.metrics.eta_seconds > 0:
                eta.add_metric([sample.run], sample.metrics.eta_seconds)
            for command in sample.metrics.cross_slot_commands:
                cross_slot.add_metric([sample.run, command.command, str(command.fails_on_cluster).lower()],
                                      command.count)
        yield state
        yield from counters.values()
        yield from gauges.values()
        yield cross_slot
        yield eta

    @staticmethod
    def _interlay_families(interlays: list[interlays_pb2.Interlay]) -> Iterator[Metric]:
        up = GaugeMetricFamily("eve_interlay_up", "1 while the interlay's proxy processes run.",
                               labels=["interlay", "endpoint"])
        connections = GaugeMetricFamily("eve_interlay_connections", "Clients connected now.", labels=["interlay"])
        ops_rate = GaugeMetricFamily("eve_interlay_ops_per_second", "Commands per second over the last report "
                                     "interval.", labels=["interlay"])
        errors = CounterMetricFamily("eve_interlay_errors", "Error replies sent to clients (the backend's and the "
                                     "interlay's own).", labels=["interlay"])
        pending = GaugeMetricFamily("eve_interlay_dirty_keys_pending", "Keys written and not reported to the run "
                                    "yet.", labels=["interlay"])
        backend_ops = CounterMetricFamily("eve_interlay_backend_ops", "Commands a backend answered.",
                                          labels=["interlay", "backend"])
        backend_errors = CounterMetricFamily("eve_interlay_backend_errors", "Error replies and failed commands of a "
                                             "backend.", labels=["interlay", "backend"])
        latency = HistogramMetricFamily("eve_interlay_backend_latency_seconds", "Backend round trips since the "
                                        "interlay's processes started.", labels=["interlay", "backend"])
        dual_writes = CounterMetricFamily("eve_interlay_dual_writes", "Writes applied on a side other than the "
                                          "authoritative one.", labels=["interlay", "side"])
        dual_failures = CounterMetricFamily("eve_interlay_dual_write_failures", "Of those, the writes that failed.",
                                            labels=["interlay", "side"])
        noscript = CounterMetricFamily("eve_interlay_noscript_replies", "NOSCRIPT errors sent to clients: EVALSHA "
                                       "of a script the interlay had not seen (or could not load).",
                                       labels=["interlay"])
        for interlay in interlays:
            running = interlay.state == interlays_pb2.INTERLAY_RUNNING
            up.add_metric([interlay.id, interlay.endpoint], 1 if running else 0)
            if not running or not interlay.HasField("stats"):
                continue
            stats = interlay.stats
            connections.add_metric([interlay.id], stats.connections)
            ops_rate.add_metric([interlay.id], stats.ops_per_second)
            errors.add_metric([interlay.id], stats.errors)
            pending.add_metric([interlay.id], stats.dirty_keys_pending)
            noscript.add_metric([interlay.id], stats.noscript_replies)
            for backend in stats.backends:
                labels = [interlay.id, backend.backend]
                backend_ops.add_metric(labels, backend.ops)
                backend_errors.add_metric(labels, backend.errors)
                if backend.latency_bucket_counts:
                    latency.add_metric(labels, latency_buckets(backend), backend.latency_sum_seconds)
            for side in stats.dual_writes:
                dual_writes.add_metric([interlay.id, side.side], side.writes)
                dual_failures.add_metric([interlay.id, side.side], side.failures)
        yield from (up, connections, ops_rate, errors, pending, backend_ops, backend_errors, latency, dual_writes,
                    dual_failures, noscript)


def latency_buckets(backend: interlays_pb2.BackendStats) -> list[tuple[str, float]]:
    """A BackendStats' cumulative latency counts as ``(le, count)`` pairs, ``+Inf`` last."""
    bounds = [repr(float(bound)) for bound in backend.latency_bucket_bounds_seconds] + ["+Inf"]
    return list(zip(bounds, [float(count) for count in backend.latency_bucket_counts]))


def coordinator_collector(migrations: Any, interlays: Any) -> EveCollector:
    """The collector of ``eve serve``: ``migrations`` and ``interlays`` are the gRPC server's
    MigrationServicer and InterlayServicer, called as an API client would call them."""

    def runs() -> Iterator[RunSample]:
        context = LocalCallContext("metrics")
        try:
            listed = migrations.ListRuns(workflows_pb2.ListRunsRequest(), context).runs
            for run in listed:
                try:
                    metrics = migrations.GetMetrics(workflows_pb2.GetMetricsRequest(run=run.id), context)
                except Exception as exc:  # noqa: BLE001 - one run (deleted meanwhile, ...) must not fail the scrape
                    log.debug("metrics of run %s: %s", run.id, exc)
                    continue
                yield RunSample(run.id, workflows_pb2.RunState.Name(run.state), metrics)
        finally:
            context.end()

    def listed_interlays() -> Iterable[interlays_pb2.Interlay]:
        context = LocalCallContext("metrics")
        try:
            return interlays.ListInterlays(interlays_pb2.ListInterlaysRequest(), context).interlays
        finally:
            context.end()

    return EveCollector(runs, listed_interlays)


def new_registry(collector: EveCollector) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one): Eve's collector and the
    process' CPU, memory and file descriptors."""
    registry = CollectorRegistry()
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


def metrics_endpoint(registry: CollectorRegistry) -> Callable[[Request], Any]:
    """The ``/metrics`` handler of the HTTP listener: the text format Prometheus asks for
    (OpenMetrics when its Accept header says so), collected on a worker thread."""

    async def scrape(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = await run_in_threadpool(encoder, registry)
        return Response(body, headers={"Content-Type": content_type})

    return scrape


def progress_metrics(progress: Progress) -> workflows_pb2.RunMetrics:
    """A one-shot job's counters as a RunMetrics, the message a run's GetMetrics returns."""
    eta = progress.eta_seconds
    return workflows_pb2.RunMetrics(
        keys_scanned=progress.scanned, keys_restored=progress.restored, keys_skipped=progress.skipped,
        keys_conflicting=progress.conflicts, keys_failed=progress.failed, bytes=progress.bytes,
        keys_per_second=round(progress.keys_per_second, 1),
        bytes_per_second=round(progress.bytes_per_second, 1), eta_seconds=round(eta, 1) if eta is not None else 0,
        source_keys=progress.source_keys)


class JobMetrics:
    """``/metrics`` of one ``eve migrate`` job on 127.0.0.1 (prometheus_client's own server),
    fed by the job's progress callback: the numbers its progress bar shows."""

    def __init__(self, run_id: str, port: int) -> None:
        self.run_id = run_id
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._state = "COPYING"
        self._registry = new_registry(EveCollector(self._samples))
        try:
            self._server, self._thread = start_http_server(port, addr="127.0.0.1", registry=self._registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on 127.0.0.1:{port}: {exc.strerror or exc}",
                              field="--metrics-port") from None
        self.port = self._server.server_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def update(self, progress: Progress, state: str | None = None) -> None:
        with self._lock:
            self._progress = progress
            if state:
                self._state = state

    def _samples(self) -> list[RunSample]:
        with self._lock:
            progress, state = self._progress, self._state
        if progress is None:
            return []
        return [RunSample(self.run_id, state, progress_metrics(progress))]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
