"""One trace per job (issue 24): ``eve migrate``'s root span, the bulk copy under it, and the
scan and restore batches of its worker processes as descendants, through the context the
options and the frames carry; a run's phases under the run's root span."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eve.core import telemetry
from eve.core.endpoints import parse_config
from eve.core.enums import ConflictPolicy
from eve.core.frames import COORDINATOR, Stop, decode, encode
from restorer import RestorerOptions
from restorer.worker import run_restorer
from scanner import ScannerOptions
from scanner.worker import run_scanner

pytestmark = [pytest.mark.timeout(120)]


def _json_objects(stdout: str) -> list[dict]:
    """The JSON objects printed on stdout: the spans of ConsoleSpanExporter, the job's summary."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    while True:
        start = stdout.find("{", at)
        if start < 0:
            return spans
        try:
            value, end = decoder.raw_decode(stdout, start)
        except json.JSONDecodeError:
            at = start + 1
            continue
        if isinstance(value, dict):
            spans.append(value)
        at = end


def _ancestors_reach(span: dict, by_id: dict[str, dict], root_id: str) -> bool:
    seen = 0
    while span["parent_id"] is not None and seen < 100:
        if span["parent_id"] == root_id:
            return True
        span = by_id.get(span["parent_id"], {"parent_id": None})
        seen += 1
    return span["context"]["span_id"] == root_id


@pytest.mark.integration
@pytest.mark.slow  # eve migrate as a process (CI's second step)
def test_eve_migrate_exports_one_trace_for_its_job(tmp_path, server_factory):
    """OTEL_TRACES_EXPORTER=console: every span of the job, from the three processes or more,
    shares one trace, whose only root is the job's span; every batch descends from it."""
    source, target = server_factory("redis-7.0"), server_factory("redis-7.0")
    source.client().mset({f"key:{i}": i for i in range(3000)})
    result = subprocess.run([sys.executable, "-m", "eve", "migrate", "--source", source.url, "--target", target.url,
                             "--scan-count", "500", "--no-progress", "--json", "--state", str(tmp_path / "job.db")],
                            capture_output=True, text=True, timeout=100,
                            env={**os.environ, "OTEL_TRACES_EXPORTER": "console"}, check=False)
    assert result.returncode == 0, result.stderr
    printed = _json_objects(result.stdout)
    spans = [value for value in printed if "context" in value and "name" in value]
    (summary,) = [value for value in printed if "run_id" in value and "scanned" in value]
    names = [span["name"] for span in spans]
    assert names.count("eve migrate") == 1 and names.count("bulk copy") == 1
    assert names.count("scan batch") >= 6 and names.count("restore batch") >= 6, names
    assert len({span["context"]["trace_id"] for span in spans}) == 1, "more than one trace for one job"
    roots = [span for span in spans if span["parent_id"] is None]
    assert [root["name"] for root in roots] == ["eve migrate"]
    job = roots[0]
    assert job["attributes"]["eve.run"] == summary["run_id"]
    by_id = {span["context"]["span_id"]: span for span in spans}
    for span in spans:
        assert _ancestors_reach(span, by_id, job["context"]["span_id"]), span["name"]
    # A restore batch is the child of the scan batch whose frame it applied, in another process.
    restore = next(span for span in spans if span["name"] == "restore batch")
    parent = by_id[restore["parent_id"]]
    assert parent["name"] == "scan batch" and parent["resource"]["attributes"]["service.name"] == "eve-scanner"
    assert restore["resource"]["attributes"]["service.name"] == "eve-restorer"


def test_batches_descend_from_the_job_through_options_and_frames(server_factory):
    """With an in-memory exporter: the scanner and restorer loops (run here, the way their
    processes run them) put each scan batch under the job's span and each restore batch
    under its scan batch, through the picklable carriers of the options and the frames."""
    exporter = InMemorySpanExporter()
    tel = telemetry.setup("eve-trace-test", span_exporter=exporter, set_global=False)
    tracer = tel.tracer("test")
    source, target = server_factory("redis-7.0"), server_factory("redis-7.0")
    source.client().mset({f"key:{i}": i for i in range(500)})
    spec = parse_config({"target": {"host": source.host, "port": source.port}}).write
    target_spec = parse_config({"target": {"host": target.host, "port": target.port}}).write
    with telemetry.root_span("eve migrate", tracer=tracer) as job:
        context = telemetry.carrier()
    assert context, "no trace context to carry"
    batches: queue.Queue = queue.Queue()
    results: queue.Queue = queue.Queue()
    assert run_scanner(ScannerOptions(run_id="job", worker="scanner", source=spec, node=spec.address, dbs=(0,),
                                      count=100, trace_context=context), batches, tracer=tracer)
    frames = []
    while not batches.empty():
        frames.append(batches.get())
    inbox: queue.Queue = queue.Queue()
    for frame in frames:
        if not isinstance(decode(frame), Stop):
            inbox.put(frame)
    inbox.put(encode(Stop(COORDINATOR)))
    worker = threading.Thread(target=run_restorer, args=(RestorerOptions(
        run_id="job", worker="restorer-1", target=target_spec, target_cluster=False, conflict=ConflictPolicy.REPLACE,
        source=spec, trace_context=context), inbox, results), kwargs={"tracer": tracer})
    worker.start()
    worker.join(timeout=60)
    assert target.client().dbsize() == 500
    spans = exporter.get_finished_spans()
    tel.shutdown()
    by_id = {span.context.span_id: span for span in spans}
    scans = [span for span in spans if span.name == "scan batch"]
    restores = [span for span in spans if span.name == "restore batch"]
    assert len(scans) >= 5 and len(restores) == len(scans)
    job_context = job.get_span_context()
    assert {span.context.trace_id for span in spans} == {job_context.trace_id}
    assert all(span.parent.span_id == job_context.span_id for span in scans)
    assert {by_id[span.parent.span_id].name for span in restores} == {"scan batch"}


def test_a_run_and_its_phases_are_one_trace():
    """The coordinator's run: a root span kept as a carrier (it outlives a restart), each
    phase under it, and the bulk copy's context inside a phase is the phase's."""
    exporter = InMemorySpanExporter()
    tel = telemetry.setup("eve-trace-test", span_exporter=exporter, set_global=False)
    tracer = tel.tracer("test")
    run_trace = telemetry.new_run_trace("r1", tracer=tracer)
    saved = json.loads(json.dumps(run_trace))  # as the store keeps it
    inside = {}
    for phase in ("prepare", "copy", "sync", "cutover", "verify"):
        with telemetry.phase_span(phase, saved, tracer=tracer):
            inside[phase] = dict(telemetry.carrier())
    spans = exporter.get_finished_spans()
    tel.shutdown()
    (root,) = [span for span in spans if span.parent is None]
    assert root.name == "run r1" and root.attributes["eve.run"] == "r1"
    phases = [span for span in spans if span.parent is not None]
    assert [span.name for span in phases] == ["prepare", "copy", "sync", "cutover", "verify"]
    assert all(span.parent.span_id == root.context.span_id and span.context.trace_id == root.context.trace_id
               for span in phases)
    copy = next(span for span in phases if span.name == "copy")
    assert inside["copy"]["traceparent"].split("-")[2] == f"{copy.context.span_id:016x}"
    # Outside any span the carrier is empty, and an empty carrier starts a new trace.
    assert telemetry.carrier() == () and trace.get_current_span(telemetry.context_of(())).get_span_context() \
        == trace.INVALID_SPAN_CONTEXT


_WORKFLOW_PHASES = r'''
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from eve.core import telemetry
from eve.core.store import Store
from eve.workflow.runs import Workflow

exporter = InMemorySpanExporter()
telemetry.setup("eve-coordinator", span_exporter=exporter, set_global=True)
store = Store(sys.argv[1])
store.create_run("r1", "COPYING")

def copy(run_id):  # what the copy thread does: the bulk copy's spans under the current one
    with trace.get_tracer("eve.bulk").start_as_current_span("bulk copy"):
        pass

def sync(run_id):  # the sync phase: the re-copy loop is made in it, its batches copied anywhere
    from eve.core.endpoints import ConnectionSpec
    from eve.live.backlog import DirtyKeys
    from eve.live.recopy import DirtyKeySync, SyncOptions
    loop = DirtyKeySync(SyncOptions(authoritative=ConnectionSpec("127.0.0.1", int(sys.argv[2])),
                                    others=(ConnectionSpec("127.0.0.1", int(sys.argv[3])),)), DirtyKeys())
    import threading
    elsewhere = threading.Thread(target=lambda: loop.recopy([(0, b"k1"), (0, b"k2")]))
    elsewhere.start()
    elsewhere.join(timeout=30)
    loop.close()

first = Workflow(store)
first._spawn("r1", "copy", copy)
first._threads["r1"].join(timeout=30)
first._spawn("r1", "sync", sync)
first._threads["r1"].join(timeout=30)
again = Workflow(store)  # a restarted coordinator: the same run, the same trace
with again._phase("r1", "verify"):
    pass
print(json.dumps([{"name": s.name, "trace": s.context.trace_id, "id": s.context.span_id,
                   "parent": s.parent.span_id if s.parent else None} for s in exporter.get_finished_spans()]))
'''


@pytest.mark.integration
def test_a_runs_phases_stay_in_its_trace_across_a_coordinator_restart(tmp_path, server_factory):
    """The workflow: a phase thread (_spawn) runs under its phase span, itself under the run's
    root span kept in the store, which the next coordinator of the store continues; a re-copy
    batch is a child of the phase its loop was made in, whichever thread copies it."""
    source, target = server_factory("redis-7.0"), server_factory("redis-7.0")
    source.client().mset({"k1": "1", "k2": "2"})
    result = subprocess.run([sys.executable, "-c", _WORKFLOW_PHASES, str(tmp_path / "eve.db"), str(source.port),
                             str(target.port)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    spans = {span["name"]: span for span in json.loads(result.stdout.strip().splitlines()[-1])}
    assert set(spans) == {"run r1", "copy", "bulk copy", "sync", "re-copy batch", "verify"}
    assert len({span["trace"] for span in spans.values()}) == 1
    root = spans["run r1"]
    assert root["parent"] is None
    assert spans["copy"]["parent"] == root["id"] and spans["verify"]["parent"] == root["id"]
    assert spans["bulk copy"]["parent"] == spans["copy"]["id"]
    assert spans["re-copy batch"]["parent"] == spans["sync"]["id"] and spans["sync"]["parent"] == root["id"]
    assert target.client().mget("k1", "k2") == [b"1", b"2"]
