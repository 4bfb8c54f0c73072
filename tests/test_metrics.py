"""Prometheus metrics: ``/metrics`` of ``eve serve --http`` scraped during a real live run (the
counters move, and they are the numbers GetMetrics and GetInterlay return), ``eve migrate
--metrics-port`` scraped during a one-shot job, the names by the OpenMetrics conventions, and
the Grafana dashboard in docs/ querying only metrics Eve exports. Every scrape is read with
prometheus_client's own parser."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
from eve_process import EveServer, Subscriber, wait_state
from keyspace import fill
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port

from eve.api.metrics import EveCollector, RunSample, new_registry
from eve.v1 import endpoints_pb2 as epb
from eve.v1 import interlays_pb2 as ipb
from eve.v1 import workflows_pb2 as wpb
from proxy.stats import LATENCY_BUCKETS_SECONDS

pytestmark = [pytest.mark.timeout(180)]

TOKEN = "metrics-test-token"
DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"


def scrape(url: str, token: str | None = TOKEN) -> dict[tuple[str, frozenset], float]:
    """One scrape as {(sample name, labels): value}, parsed by prometheus_client."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=20) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def wait_for(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


# -- the names ------------------------------------------------------------------------------------------


def every_metric_sample() -> list[tuple[str, dict[str, str], float]]:
    """The collector fed one run and one running interlay with every field set."""
    metrics = wpb.RunMetrics(**{f.name: 7 for f in wpb.RunMetrics.DESCRIPTOR.fields
                                if f.type not in (f.TYPE_STRING, f.TYPE_MESSAGE)}, authoritative="source",
                             cross_slot_commands=[wpb.CrossSlotCommand(command="exec", count=7, fails_on_cluster=True)])
    interlay = ipb.Interlay(id="app", endpoint="src", state=ipb.INTERLAY_RUNNING, stats=ipb.InterlayStats(
        connections=3, ops_per_second=12.5, errors=1, dirty_keys_pending=2,
        backends=[ipb.BackendStats(backend="source", ops=40, errors=1, p50_ms=0.2, p99_ms=1.5,
                                   latency_bucket_bounds_seconds=LATENCY_BUCKETS_SECONDS,
                                   latency_bucket_counts=[0, 10, *[30] * (len(LATENCY_BUCKETS_SECONDS) - 2), 31],
                                   latency_sum_seconds=0.25)],
        dual_writes=[ipb.DualWriteStats(side="target", writes=9, failures=1)]))
    stopped = ipb.Interlay(id="spare", endpoint="src", state=ipb.INTERLAY_STOPPED)
    registry = new_registry(EveCollector(lambda: [RunSample("r1", "SYNCING", metrics)], lambda: [interlay, stopped]))
    return [(s.name, s.labels, s.value) for family in registry.collect() for s in family.samples]


def test_metric_names_follow_the_openmetrics_conventions():
    samples = every_metric_sample()
    names = {name for name, _, _ in samples}
    for name in names:
        assert re.fullmatch(r"[a-z_]+", name), name
    eve_names = {name for name in names if name.startswith("eve_")}
    assert {"eve_run_keys_scanned_total", "eve_run_keys_restored_total", "eve_run_keys_failed_total",
            "eve_run_keys_skipped_total", "eve_run_keys_conflicting_total", "eve_run_copied_bytes_total",
            "eve_run_keys_per_second", "eve_run_eta_seconds", "eve_run_dirty_backlog_keys",
            "eve_run_dirty_lag_seconds", "eve_run_dual_write_failures_total", "eve_run_keys_recopied_total",
            "eve_interlay_connections", "eve_interlay_backend_ops_total", "eve_interlay_backend_errors_total",
            "eve_interlay_backend_latency_seconds_bucket", "eve_interlay_errors_total", "eve_interlay_up",
            "eve_interlay_dual_write_failures_total", "eve_run_cross_slot_commands_total"} <= eve_names
    by_key = {(name, tuple(sorted(labels.items()))): v for name, labels, v in samples}
    assert by_key[("eve_run_keys_restored_total", (("run", "r1"),))] == 7
    assert by_key[("eve_run_cross_slot_commands_total",
                   (("command", "exec"), ("fails_on_cluster", "true"), ("run", "r1")))] == 7
    assert by_key[("eve_run_state", (("run", "r1"), ("state", "SYNCING")))] == 1
    # Latency: a histogram (issue 24), cumulative buckets up to +Inf, with its sum and count.
    source = (("backend", "source"), ("interlay", "app"))
    assert by_key[("eve_interlay_backend_latency_seconds_bucket", (*source[:1], ("interlay", "app"),
                                                                   ("le", "0.0001")))] == 10
    assert by_key[("eve_interlay_backend_latency_seconds_bucket", (*source[:1], ("interlay", "app"),
                                                                   ("le", "+Inf")))] == 31
    assert by_key[("eve_interlay_backend_latency_seconds_count", source)] == 31
    assert by_key[("eve_interlay_backend_latency_seconds_sum", source)] == pytest.approx(0.25)
    assert not any(name == "eve_interlay_backend_latency_seconds" or "quantile" in labels
                   for name, labels, _ in samples)
    assert by_key[("eve_run_copied_bytes_per_second", (("run", "r1"),))] == 7
    assert by_key[("eve_interlay_up", (("endpoint", "src"), ("interlay", "spare")))] == 0
    assert not any(labels.get("interlay") == "spare" for name, labels, _ in samples if name != "eve_interlay_up")
    # An ETA that is not known (0) is absent rather than a made-up 0 seconds left.
    registry = new_registry(EveCollector(lambda: [RunSample("r2", "COPYING", wpb.RunMetrics())]))
    assert not [s for f in registry.collect() for s in f.samples if s.name == "eve_run_eta_seconds"]


def test_proxy_latency_histogram_counts_every_round_trip_since_the_start():
    """The exported buckets count every round trip and keep counting across reports (a
    Prometheus counter), the sum in seconds; past MAX_SAMPLES per report the thinned samples
    stand for the others: the count stays exact, the buckets are scaled."""
    from proxy.stats import MAX_SAMPLES, Stats

    stats = Stats()
    stats.samples = [0.00003] * 1000 + [0.003, 20.0]
    first = stats.report(0, "source").backends[0]
    assert sum(first.latency_buckets) == 1002
    assert first.latency_buckets[0] == 1000  # under 50 microseconds
    assert first.latency_buckets[LATENCY_BUCKETS_SECONDS.index(0.005)] == 1
    assert first.latency_buckets[-1] == 1  # above 10 s
    assert first.latency_sum_seconds == pytest.approx(0.03 + 20.003)
    stats.samples = [0.0002] * (3 * MAX_SAMPLES) + [0.0007] * MAX_SAMPLES
    second = stats.report(0, "source").backends[0]
    assert sum(second.latency_buckets) == 1002 + 4 * MAX_SAMPLES
    assert second.latency_buckets[LATENCY_BUCKETS_SECONDS.index(0.00025)] == pytest.approx(3 * MAX_SAMPLES, rel=0.01)
    assert second.latency_buckets[LATENCY_BUCKETS_SECONDS.index(0.001)] == pytest.approx(MAX_SAMPLES, rel=0.01)
    assert second.latency_sum_seconds == pytest.approx(20.033 + 3 * MAX_SAMPLES * 0.0002 + MAX_SAMPLES * 0.0007,
                                                       rel=0.01)


def test_grafana_dashboard_queries_only_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            if isinstance(node.get("query"), str):
                exprs.append(node["query"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(dashboard)
    assert len(exprs) >= 10, "the dashboard lost its panels"
    exported = {name for name, _, _ in every_metric_sample()}
    process = {name for name, _, _ in every_metric_sample() if name.startswith("process_")}
    queries = [expr for expr in exprs if "(" in expr or "{" in expr or "_" in expr]  # not a datasource's type
    for expr in queries:  # each query names at least one metric, and only metrics Eve exports
        named = set(re.findall(r"\b(?:eve|process)_[a-z_]+", expr))
        assert named, f"{expr!r} names no Eve metric"
        assert named <= exported | process, (expr, sorted(named - exported))
    used = {name for expr in exprs for name in re.findall(r"\beve_[a-z_]+", expr)}
    assert used and used <= exported, sorted(used - exported)
    # Latency through its histogram, re-quantiled (issue 24); the copy's bytes per second.
    quantiles = [expr for expr in exprs if "histogram_quantile" in expr]
    assert quantiles and all("eve_interlay_backend_latency_seconds_bucket" in expr and "le" in expr
                             for expr in quantiles)
    assert any("eve_run_copied_bytes_per_second" in expr for expr in exprs)
    assert {"run", "interlay"} <= {v["name"] for v in dashboard["templating"]["list"]}


# -- scraped during real work -----------------------------------------------------------------------------


@pytest.mark.integration
def test_metrics_move_during_a_live_run_and_match_the_api(tmp_path, server_factory):
    source, target = server_factory("valkey-8.1"), server_factory("valkey-8.1")
    fill(source.client(), 4000, prefix="pre")
    eve = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log", token=TOKEN,
                    extra_args=["--http", "127.0.0.1:0"]).start()
    try:
        url, meta = f"{eve.http_url}/metrics", eve.metadata()
        endpoints, interlays, runs = eve.endpoints(), eve.interlays(), eve.migrations()
        for name, server in (("src", source), ("dst", target)):
            endpoints.CreateEndpoint(epb.CreateEndpointRequest(endpoint=name, kind="redis", config=epb.EndpointConfig(
                target=epb.Connection(host="127.0.0.1", port=server.port))), metadata=meta)
        port = free_port()
        interlays.CreateInterlay(ipb.CreateInterlayRequest(id="app", endpoint="src", port=port), metadata=meta)
        interlays.StartInterlay(ipb.StartInterlayRequest(id="app"), metadata=meta)
        runs.CreateRun(wpb.CreateRunRequest(id="live-m"), metadata=meta)
        events = Subscriber(_Authorized(runs, meta), "live-m")
        events.start()
        runs.SubmitSetup(wpb.SubmitSetupRequest(run="live-m", setup=wpb.RunSetup(
            source="src", target="dst", strategy=wpb.ONLINE_PHASED, interlay="app",
            rate_limits=wpb.RateLimits(max_keys_per_second=1000))), metadata=meta)
        runs.Prepare(wpb.PrepareRequest(run="live-m"), metadata=meta)
        wait_state(_Authorized(runs, meta), "live-m", "READY")
        for issue in runs.GetCompatibility(wpb.GetCompatibilityRequest(run="live-m"), metadata=meta).issues:
            runs.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run="live-m", issue_id=issue.id, notes="ok"),
                                  metadata=meta)
        first = scrape(url)
        assert value(first, "eve_run_state", run="live-m", state="READY") == 1
        assert value(first, "eve_interlay_up", interlay="app", endpoint="src") == 1
        runs.Approve(wpb.ApproveRequest(run="live-m", notes="go"), metadata=meta)

        # The bulk copy (1000 keys/s): the restored counter moves between scrapes.
        restored = []
        while len(set(restored)) < 3:
            samples = scrape(url)
            if value(samples, "eve_run_state", run="live-m", state="COPYING") == 1:
                restored.append(value(samples, "eve_run_keys_restored_total", run="live-m"))
            assert len(restored) < 200, "the copy ended before three scrapes saw it move"
            time.sleep(0.3)
        assert restored == sorted(restored) and restored[-1] > restored[0]
        assert value(samples, "eve_run_source_keys", run="live-m") >= 4000
        assert value(samples, "eve_run_keys_per_second", run="live-m") > 0

        # In sync: writes through the interlay are dual-written and re-copied; its counters move too.
        wait_for(lambda: any(e.type == "live" and e.message.startswith("in sync") for e in list(events.events)),
                 "the run did not get in sync", timeout=90)
        before = scrape(url)
        app = redis.Redis(port=port)
        for i in range(50):
            app.set(f"app:{i}", i)
        app.close()

        def moved():
            now = scrape(url)
            return now if (value(now, "eve_interlay_dual_writes_total", interlay="app", side="target") or 0) >= 50 \
                and value(now, "eve_run_keys_recopied_total", run="live-m") > \
                (value(before, "eve_run_keys_recopied_total", run="live-m") or 0) else None

        after = wait_for(moved, "dual writes and re-copies did not show in /metrics")
        assert value(after, "eve_interlay_backend_ops_total", interlay="app", backend="source") >= \
            (value(before, "eve_interlay_backend_ops_total", interlay="app", backend="source") or 0) + 50
        assert value(after, "eve_interlay_dual_write_failures_total", interlay="app", side="target") == 0
        # Latency as a histogram: every round trip counted, in buckets that add up to the count.
        count = value(after, "eve_interlay_backend_latency_seconds_count", interlay="app", backend="source")
        assert count and count >= 50
        assert value(after, "eve_interlay_backend_latency_seconds_bucket", interlay="app", backend="source",
                     le="+Inf") == count
        assert 0 < value(after, "eve_interlay_backend_latency_seconds_sum", interlay="app", backend="source") < count
        assert value(after, "eve_interlay_backend_latency_seconds_bucket", interlay="app", backend="source",
                     le="10.0") == count  # loopback round trips under 10 s
        # The same numbers as the API: the bulk counters are settled now that the run is in sync.
        api = runs.GetMetrics(wpb.GetMetricsRequest(run="live-m"), metadata=meta)
        now = scrape(url)
        assert api.bytes_per_second > 0
        assert value(now, "eve_run_copied_bytes_per_second", run="live-m") == pytest.approx(api.bytes_per_second)
        for field in ("keys_scanned", "keys_restored", "keys_failed", "keys_skipped", "bytes"):
            name = "eve_run_copied_bytes_total" if field == "bytes" else f"eve_run_{field}_total"
            assert value(now, name, run="live-m") == getattr(api, field), field
        assert value(now, "eve_run_dual_write_failures_total", run="live-m") == api.dual_write_failures
        assert value(now, "eve_run_dirty_backlog_keys", run="live-m") is not None
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(url, token=None)
        assert refused.value.code == 401

        runs.Rollback(wpb.RollbackRequest(run="live-m", reason="test over"), metadata=meta)
        wait_state(_Authorized(runs, meta), "live-m", "ROLLED_BACK")
        assert value(scrape(url), "eve_run_state", run="live-m", state="ROLLED_BACK") == 1
        events.stream.cancel()
    finally:
        eve.stop()


class _Authorized:
    """A MigrationService stub whose calls carry the token (for wait_state and Subscriber)."""

    def __init__(self, stub, metadata) -> None:
        self._stub, self._metadata = stub, metadata

    def __getattr__(self, name: str):
        method = getattr(self._stub, name)
        return lambda request, **kw: method(request, metadata=self._metadata, **kw)


@pytest.mark.integration
def test_migrate_metrics_port_serves_the_job_while_it_runs(tmp_path, server_factory):
    source, target = server_factory("redis-7.0"), server_factory("valkey-9.1")
    fill(source.client(), 3000)
    port = free_port()
    job = subprocess.Popen(
        [sys.executable, "-m", "eve", "migrate", "--source", f"redis://127.0.0.1:{source.port}",
         "--target", f"redis://127.0.0.1:{target.port}", "--state", str(tmp_path / "job.db"),
         "--max-keys-per-second", "1000", "--metrics-port", str(port), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        scanned = []
        while job.poll() is None and len(set(scanned)) < 3:
            try:
                samples = scrape(url, token=None)
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)  # not serving yet
                continue
            jobs = [labels for name, labels in samples if name == "eve_run_state"]
            if jobs:
                run = dict(jobs[0])["run"]
                scanned.append(value(samples, "eve_run_keys_scanned_total", run=run))
            time.sleep(0.3)
        assert len(set(scanned)) >= 3 and scanned == sorted(scanned), scanned
        assert run.startswith("migrate-")
        out, err = job.communicate(timeout=60)
        assert job.returncode == 0, err
        summary = json.loads(out)  # --json: stdout is only the summary; the metrics address went to stderr
        assert summary["run_id"] == run and f"metrics at {url}" in err
        with pytest.raises(urllib.error.URLError):
            scrape(url, token=None)  # the job is over: so is its metrics server
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()


@pytest.mark.integration
def test_migrate_metrics_port_in_use_is_refused_before_a_job_exists(tmp_path, server_factory):
    import socket

    source, target = server_factory("redis-7.0"), server_factory("redis-7.0")
    fill(source.client(), 10)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "eve", "migrate", "--source", f"redis://127.0.0.1:{source.port}",
             "--target", f"redis://127.0.0.1:{target.port}", "--state", str(tmp_path / "job.db"),
             "--metrics-port", str(port)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and f"--metrics-port: cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    jobs = subprocess.run([sys.executable, "-m", "eve", "jobs", "list", "--state", str(tmp_path / "job.db"),
                           "--json"], capture_output=True, text=True, timeout=60, check=False)
    assert json.loads(jobs.stdout)["jobs"] == [], jobs.stdout  # nothing left to --resume or --force
    assert target.client().dbsize() == 0
