"""The guided offline workflow through gRPC against a real coordinator and real engines."""

from __future__ import annotations

import csv
import io
import threading
import time

import grpc
import pytest
from eve_process import EveServer
from keyspace import assert_same, fill

from eve.v1 import endpoints_pb2 as epb
from eve.v1 import workflows_pb2 as wpb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def eve(tmp_path):
    server = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log").start()
    yield server
    server.stop()


def endpoint(eve: EveServer, name: str, server) -> None:
    eve.endpoints().CreateEndpoint(epb.CreateEndpointRequest(
        endpoint=name, kind="redis",
        config=epb.EndpointConfig(target=epb.Connection(host="127.0.0.1", port=server.port))))


def wait_state(stub, run: str, *states: str, timeout: float = 90) -> wpb.Run:
    wanted = {wpb.RunState.Value(s) for s in states}
    deadline = time.monotonic() + timeout
    while True:
        record = stub.GetRun(wpb.GetRunRequest(run=run))
        if record.state in wanted:
            return record
        assert time.monotonic() < deadline, f"run stuck in {wpb.RunState.Name(record.state)}: {record.failure_reason}"
        time.sleep(0.2)


def setup(run: str, **kw) -> wpb.SubmitSetupRequest:
    return wpb.SubmitSetupRequest(run=run, setup=wpb.RunSetup(source="src", target="dst", **kw))


class Subscriber(threading.Thread):
    def __init__(self, stub, run: str, after_seq: int = 0) -> None:
        super().__init__(daemon=True)
        self.stream = stub.SubscribeEvents(wpb.SubscribeEventsRequest(run=run, after_seq=after_seq))
        self.events: list[wpb.Event] = []

    def run(self) -> None:
        try:
            for event in self.stream:
                self.events.append(event)
        except grpc.RpcError as exc:
            # CANCELLED: closed by the test; UNAVAILABLE: the coordinator was killed on purpose.
            if exc.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE):
                raise


def test_offline_run_end_to_end(eve, server_factory):
    source, target = server_factory("redis-7.0"), server_factory("valkey-9.1")
    fill(source.client(), 1500)
    endpoint(eve, "src", source)
    endpoint(eve, "dst", target)
    stub = eve.migrations()
    run = stub.CreateRun(wpb.CreateRunRequest(id="offline-1", description="first")).id
    subscriber = Subscriber(stub, run)
    subscriber.start()
    configured = stub.SubmitSetup(setup(run, strategy=wpb.OFFLINE, conflict_policy=wpb.REPLACE))
    assert configured.state == wpb.CONFIGURED and configured.setup.source == "src"
    stub.Prepare(wpb.PrepareRequest(run=run))
    wait_state(stub, run, "READY")
    report = stub.GetCompatibility(wpb.GetCompatibilityRequest(run=run))
    assert report.compatible and not [i for i in report.issues if i.blocking]
    for issue in report.issues:
        stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=run, issue_id=issue.id, notes="reviewed"))
    analysis = stub.GetAnalysis(wpb.GetAnalysisRequest(run=run))
    assert sum(db.keys for db in analysis.dbs) == 1500
    assert {t.type for db in analysis.dbs for t in db.types} >= {"string", "hash", "list", "set", "zset", "stream"}
    testrun = stub.GetTestRun(wpb.GetTestRunRequest(run=run))
    assert sum(r.ok for r in testrun.results) > 0 and sum(r.failed for r in testrun.results) == 0
    assert testrun.estimated_seconds > 0
    assert target.client().dbsize() == 0, "the test run removes its scratch keys"
    stub.Approve(wpb.ApproveRequest(run=run, notes="go"))
    wait_state(stub, run, "CUT_OVER")
    metrics = stub.GetMetrics(wpb.GetMetricsRequest(run=run))
    assert metrics.keys_scanned == 1500 and metrics.keys_restored == 1500 and metrics.keys_failed == 0
    verified = stub.Verify(wpb.VerifyRequest(run=run))
    assert verified.clean and verified.keys_compared == 1500
    done = stub.Complete(wpb.CompleteRequest(run=run, notes="accepted"))
    assert done.state == wpb.COMPLETED
    subscriber.join(timeout=30)
    assert not subscriber.is_alive(), "the event stream ends when the run is terminal"
    seqs = [e.seq for e in subscriber.events]
    assert seqs == list(range(1, len(seqs) + 1)), "no gaps, no repeats"
    states = [e.attributes["to"] for e in subscriber.events if e.type == "state" and "to" in e.attributes]
    assert states == ["CREATED", "CONFIGURED", "PREPARING", "READY", "APPROVED", "COPYING", "CUT_OVER", "COMPLETED"]
    assert {"setup", "analysis", "testrun", "progress", "metrics", "verify"} <= {e.type for e in subscriber.events}
    assert_same(source.client(), target.client())
    # A completed run releases its endpoints.
    eve.endpoints().DeleteEndpoint(epb.DeleteEndpointRequest(endpoint="dst"))


def test_approval_gates_and_error_keys(eve, server_factory):
    source, target = server_factory("redis-8.2"), server_factory("valkey-8.1")
    fill(source.client(), 120)
    endpoint(eve, "src", source)
    endpoint(eve, "dst", target)
    stub = eve.migrations()
    # DUMP_RESTORE: a payload the target refuses is blocking.
    strict = stub.CreateRun(wpb.CreateRunRequest(id="strict")).id
    stub.SubmitSetup(setup(strict, mode=wpb.DUMP_RESTORE))
    stub.Prepare(wpb.PrepareRequest(run=strict))
    wait_state(stub, strict, "READY")
    issues = stub.GetCompatibility(wpb.GetCompatibilityRequest(run=strict)).issues
    blocking = [i for i in issues if i.code == "DUMP_VERSION_MISMATCH"]
    assert blocking and blocking[0].blocking
    with pytest.raises(grpc.RpcError) as info:
        stub.Approve(wpb.ApproveRequest(run=strict))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert blocking[0].id in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=strict, issue_id=blocking[0].id, notes="x"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    stub.Cancel(wpb.CancelRequest(run=strict, reason="wrong mode"))

    # AUTO: the same finding does not block, but must be acknowledged with notes.
    run = stub.CreateRun(wpb.CreateRunRequest(id="auto")).id
    stub.SubmitSetup(setup(run))
    stub.Prepare(wpb.PrepareRequest(run=run))
    wait_state(stub, run, "READY")
    issues = stub.GetCompatibility(wpb.GetCompatibilityRequest(run=run)).issues
    mismatch = next(i for i in issues if i.code == "DUMP_VERSION_MISMATCH")
    assert not mismatch.blocking
    with pytest.raises(grpc.RpcError) as info:
        stub.Approve(wpb.ApproveRequest(run=run))
    assert "unacknowledged" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=run, issue_id=mismatch.id, notes=" "))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for issue in issues:
        acknowledged = stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=run, issue_id=issue.id,
                                                                         notes="logical copy comes later"))
        assert acknowledged.acknowledged
    stub.Approve(wpb.ApproveRequest(run=run))
    wait_state(stub, run, "CUT_OVER")
    assert stub.GetMetrics(wpb.GetMetricsRequest(run=run)).keys_failed == 120
    page = stub.ListErrorKeys(wpb.ListErrorKeysRequest(run=run, page_size=50))
    seen = list(page.error_keys)
    while page.next_page_token:
        page = stub.ListErrorKeys(wpb.ListErrorKeysRequest(run=run, page_size=50, page_token=page.next_page_token))
        seen += page.error_keys
    assert len(seen) == 120 == len({k.key for k in seen})
    exported = b"".join(c.data for c in stub.ExportErrorKeys(wpb.ExportErrorKeysRequest(run=run, format=wpb.CSV)))
    assert len(list(csv.DictReader(io.StringIO(exported.decode())))) == 120
    retried = stub.RetryErrorKeys(wpb.RetryErrorKeysRequest(run=run))
    assert retried.retried == 120 and retried.still_failing == 120
    report = stub.Verify(wpb.VerifyRequest(run=run))
    assert not report.clean and report.missing == 120
    with pytest.raises(grpc.RpcError) as info:
        stub.Complete(wpb.CompleteRequest(run=run))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    done = stub.Complete(wpb.CompleteRequest(run=run, accept_differences=True, notes="moving these by hand"))
    assert done.state == wpb.COMPLETED


def test_bad_setups_and_illegal_transitions(eve, server_factory):
    source = server_factory("redis-7.0")
    endpoint(eve, "src", source)
    endpoint(eve, "dst", source)  # names only; never run
    stub = eve.migrations()
    run = stub.CreateRun(wpb.CreateRunRequest(id="r")).id
    with pytest.raises(grpc.RpcError) as info:
        stub.Approve(wpb.ApproveRequest(run=run))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "CREATED" in info.value.details()
    cases = [
        (wpb.RunSetup(source="nope", target="dst"), grpc.StatusCode.INVALID_ARGUMENT, "setup.source"),
        (wpb.RunSetup(source="src", target="src"), grpc.StatusCode.INVALID_ARGUMENT, "two roles"),
        (wpb.RunSetup(source="src", target="dst", mirror_targets=["dst"]), grpc.StatusCode.INVALID_ARGUMENT,
         "two roles"),
        (wpb.RunSetup(source="src", target="dst", filters=wpb.Filters(dbs=[-1])), grpc.StatusCode.INVALID_ARGUMENT,
         "setup.filters.dbs"),
        (wpb.RunSetup(source="src", target="dst", strategy=wpb.ONLINE_CUTOVER), grpc.StatusCode.INVALID_ARGUMENT,
         "setup.interlay"),
        (wpb.RunSetup(source="src", target="dst", strategy=wpb.ONLINE_PHASED, interlay="nope"),
         grpc.StatusCode.NOT_FOUND, "nope"),
    ]
    for body, code, needle in cases:
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitSetup(wpb.SubmitSetupRequest(run=run, setup=body))
        assert info.value.code() == code and needle in info.value.details(), info.value.details()
    assert stub.GetRun(wpb.GetRunRequest(run=run)).state == wpb.CREATED
    with pytest.raises(grpc.RpcError) as info:
        stub.GetRun(wpb.GetRunRequest(run="missing"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateRun(wpb.CreateRunRequest(id="r"))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    stub.SubmitSetup(wpb.SubmitSetupRequest(run=run, setup=wpb.RunSetup(source="src", target="dst")))
    with pytest.raises(grpc.RpcError) as info:
        eve.endpoints().DeleteEndpoint(epb.DeleteEndpointRequest(endpoint="src"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "run 'r'" in info.value.details()
    rolled = stub.Rollback(wpb.RollbackRequest(run=run, reason="changed our mind"))
    assert rolled.state == wpb.ROLLED_BACK
    with pytest.raises(grpc.RpcError) as info:
        stub.Prepare(wpb.PrepareRequest(run=run))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "ROLLED_BACK" in info.value.details()


def test_subscriber_resumes_without_gaps(eve, server_factory):
    source, target = server_factory("redis-7.0"), server_factory("redis-7.0")
    fill(source.client(), 300)
    endpoint(eve, "src", source)
    endpoint(eve, "dst", target)
    stub = eve.migrations()
    run = stub.CreateRun(wpb.CreateRunRequest(id="events")).id
    first = stub.SubscribeEvents(wpb.SubscribeEventsRequest(run=run))
    stub.SubmitSetup(setup(run))
    stub.Prepare(wpb.PrepareRequest(run=run))
    received = [next(first), next(first), next(first)]
    first.cancel()  # the subscriber goes away mid-stream
    wait_state(stub, run, "READY")
    for issue in stub.GetCompatibility(wpb.GetCompatibilityRequest(run=run)).issues:
        stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=run, issue_id=issue.id, notes="ok"))
    stub.Approve(wpb.ApproveRequest(run=run))
    wait_state(stub, run, "CUT_OVER")
    stub.Verify(wpb.VerifyRequest(run=run))
    stub.Complete(wpb.CompleteRequest(run=run))
    rest = list(stub.SubscribeEvents(wpb.SubscribeEventsRequest(run=run, after_seq=received[-1].seq), timeout=30))
    seqs = [e.seq for e in received + rest]
    assert seqs == list(range(1, len(seqs) + 1))
    assert rest[-1].state == wpb.COMPLETED


def test_coordinator_killed_while_copying_resumes(tmp_path, server_factory):
    source, target = server_factory("redis-7.0"), server_factory("redis-7.0")
    fill(source.client(), 15_000, ttl_every=0, binary=False)
    eve = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log").start()
    try:
        endpoint(eve, "src", source)
        endpoint(eve, "dst", target)
        stub = eve.migrations()
        run = stub.CreateRun(wpb.CreateRunRequest(id="crash")).id
        stub.SubmitSetup(setup(run, rate_limits=wpb.RateLimits(max_keys_per_second=3000)))
        stub.Prepare(wpb.PrepareRequest(run=run))
        wait_state(stub, run, "READY")
        for issue in stub.GetCompatibility(wpb.GetCompatibilityRequest(run=run)).issues:
            stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=run, issue_id=issue.id, notes="ok"))
        stub.Approve(wpb.ApproveRequest(run=run))
        deadline = time.monotonic() + 30
        while target.client().dbsize() < 2000:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        eve.process.kill()
        eve.process.wait()
    finally:
        eve.stop()
    assert target.client().dbsize() < 15_000, "killed mid-copy"
    eve = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve2.log").start()
    try:
        stub = eve.migrations()
        wait_state(stub, "crash", "CUT_OVER", timeout=120)
        assert stub.Verify(wpb.VerifyRequest(run="crash")).clean
    finally:
        eve.stop()
    assert_same(source.client(), target.client())
