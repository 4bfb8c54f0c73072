"""The guided offline workflow through gRPC against a real coordinator and real engines."""

from __future__ import annotations

import csv
import io
import time

import grpc
import pytest
from eve_process import EveServer, Subscriber, wait_state
from google.protobuf import json_format
from keyspace import assert_same, fill

from eve.v1 import endpoints_pb2 as epb
from eve.v1 import workflows_pb2 as wpb

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]


def endpoint(eve: EveServer, name: str, server) -> None:
    eve.endpoints().CreateEndpoint(epb.CreateEndpointRequest(
        endpoint=name, kind="redis",
        config=epb.EndpointConfig(target=epb.Connection(host="127.0.0.1", port=server.port))))


def setup(run: str, **kw) -> wpb.SubmitSetupRequest:
    return wpb.SubmitSetupRequest(run=run, setup=wpb.RunSetup(source="src", target="dst", **kw))


def kill_when_copied(eve: EveServer, target, keys: int) -> None:
    """Kill the coordinator (no shutdown) once the target holds ``keys`` keys: mid-copy."""
    deadline = time.monotonic() + 30
    while target.client().dbsize() < keys:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    eve.process.kill()
    eve.process.wait()


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
    """Redis 8.2 -> Redis 7.0 in DUMP_RESTORE: set-listpack and stream-listpacks-3 payloads cannot
    move (RDB 10 lacks the type codes). Only such keys: blocking. A third of the keys: not blocking,
    and with max_error_ratio 1 the run goes on with them as error keys."""
    sets, source, target = server_factory("redis-8.2"), server_factory("redis-8.2"), server_factory("redis-7.0")
    sets.client().sadd("s1", "a", "b"), sets.client().sadd("s2", "c")
    fill(source.client(), 120)
    failing = 40   # the 20 sets and 20 streams
    endpoint(eve, "sets", sets)
    endpoint(eve, "src", source)
    endpoint(eve, "dst", target)
    stub = eve.migrations()
    strict = stub.CreateRun(wpb.CreateRunRequest(id="strict")).id
    stub.SubmitSetup(wpb.SubmitSetupRequest(run=strict, setup=wpb.RunSetup(source="sets", target="dst",
                                                                           mode=wpb.DUMP_RESTORE)))
    stub.Prepare(wpb.PrepareRequest(run=strict))
    wait_state(stub, strict, "READY")
    issues = stub.GetCompatibility(wpb.GetCompatibilityRequest(run=strict)).issues
    blocking = [i for i in issues if i.code == "KEY_MOVEMENT"]
    assert blocking and blocking[0].blocking and "choose AUTO or LOGICAL" in blocking[0].message
    with pytest.raises(grpc.RpcError) as info:
        stub.Approve(wpb.ApproveRequest(run=strict))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert blocking[0].id in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=strict, issue_id=blocking[0].id, notes="x"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    stub.Cancel(wpb.CancelRequest(run=strict, reason="wrong mode"))

    # Some keys cannot move: the finding does not block, but must be acknowledged with notes.
    run = stub.CreateRun(wpb.CreateRunRequest(id="auto")).id
    stub.SubmitSetup(setup(run, mode=wpb.DUMP_RESTORE, max_error_ratio=1))
    stub.Prepare(wpb.PrepareRequest(run=run))
    wait_state(stub, run, "READY")
    issues = stub.GetCompatibility(wpb.GetCompatibilityRequest(run=run)).issues
    mismatch = next(i for i in issues if i.code == "KEY_MOVEMENT")
    assert not mismatch.blocking
    assert mismatch.evidence["cannot: set listpack set-listpack (20)"] == "20"
    testrun = stub.GetTestRun(wpb.GetTestRunRequest(run=run))
    assert {r.type: r.failed > 0 for r in testrun.results} == {
        kind: kind in ("set", "stream") for kind in ("string", "hash", "list", "set", "zset", "stream")}
    with pytest.raises(grpc.RpcError) as info:
        stub.Approve(wpb.ApproveRequest(run=run))
    assert "unacknowledged" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=run, issue_id=mismatch.id, notes=" "))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for issue in issues:
        acknowledged = stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=run, issue_id=issue.id,
                                                                         notes="moving these by hand"))
        assert acknowledged.acknowledged
    stub.Approve(wpb.ApproveRequest(run=run))
    wait_state(stub, run, "CUT_OVER")
    assert stub.GetMetrics(wpb.GetMetricsRequest(run=run)).keys_failed == failing
    page = stub.ListErrorKeys(wpb.ListErrorKeysRequest(run=run, page_size=25))
    seen = list(page.error_keys)
    while page.next_page_token:
        page = stub.ListErrorKeys(wpb.ListErrorKeysRequest(run=run, page_size=25, page_token=page.next_page_token))
        seen += page.error_keys
    assert len(seen) == failing == len({k.key for k in seen})
    exported = b"".join(c.data for c in stub.ExportErrorKeys(wpb.ExportErrorKeysRequest(run=run, format=wpb.CSV)))
    assert len(list(csv.DictReader(io.StringIO(exported.decode())))) == failing
    retried = stub.RetryErrorKeys(wpb.RetryErrorKeysRequest(run=run))
    assert retried.retried == failing and retried.still_failing == failing
    report = stub.Verify(wpb.VerifyRequest(run=run))
    assert not report.clean and report.missing == failing
    # A key whose copy failed and that Verify then finds missing is one error key, with both reasons.
    for _ in range(2):  # and a second Verify does not add its reason again
        listed = list(stub.ListErrorKeys(wpb.ListErrorKeysRequest(run=run, page_size=500)).error_keys)
        assert len(listed) == failing == len({k.key for k in listed})
        assert all(k.reason.count("verification: missing") == 1 and not k.reason.startswith("verification")
                   for k in listed), listed[0].reason
        assert not stub.Verify(wpb.VerifyRequest(run=run)).clean
    with pytest.raises(grpc.RpcError) as info:
        stub.Complete(wpb.CompleteRequest(run=run))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    done = stub.Complete(wpb.CompleteRequest(run=run, accept_differences=True, notes="moving these by hand"))
    assert done.state == wpb.COMPLETED


def test_no_compatibility_report_after_a_failed_prepare(eve, server_factory):
    source, target = server_factory("redis-7.0"), server_factory("redis-7.0")
    endpoint(eve, "src", source)
    endpoint(eve, "dst", target)
    target.stop()
    stub = eve.migrations()
    run = stub.CreateRun(wpb.CreateRunRequest(id="unreachable")).id
    stub.SubmitSetup(setup(run))
    stub.Prepare(wpb.PrepareRequest(run=run))
    failed = wait_state(stub, run, "FAILED")
    assert "prepare failed" in failed.failure_reason
    with pytest.raises(grpc.RpcError) as info:
        stub.GetCompatibility(wpb.GetCompatibilityRequest(run=run))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no compatibility report" in info.value.details() and "prepare failed" in info.value.details()


def test_one_server_under_two_endpoint_names_blocks_approval(eve, server_factory):
    source = server_factory("redis-7.0")
    fill(source.client(), 50)
    endpoint(eve, "src", source)
    eve.endpoints().CreateEndpoint(epb.CreateEndpointRequest(  # the same server, by another name
        endpoint="dst", kind="redis", config=epb.EndpointConfig(target=epb.Connection(host="localhost",
                                                                                      port=source.port))))
    replica = server_factory("redis-7.0", extra_args=("--replicaof", "127.0.0.1", str(source.port)))
    endpoint(eve, "mirror", replica)
    stub = eve.migrations()
    run = stub.CreateRun(wpb.CreateRunRequest(id="itself")).id
    stub.SubmitSetup(setup(run, mirror_targets=["mirror"]))
    stub.Prepare(wpb.PrepareRequest(run=run))
    wait_state(stub, run, "READY")
    report = stub.GetCompatibility(wpb.GetCompatibilityRequest(run=run))
    codes = {issue.code: issue for issue in report.issues}
    assert not report.compatible
    assert codes["SAME_SERVER"].blocking and "are the same server" in codes["SAME_SERVER"].message
    assert codes["TARGET_READ_ONLY"].blocking  # the mirror is a replica of the source
    with pytest.raises(grpc.RpcError) as info:
        stub.Approve(wpb.ApproveRequest(run=run))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert source.client().dbsize() == 50


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
        kill_when_copied(eve, target, 2000)
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


def _approve(stub, run: str) -> None:
    stub.Prepare(wpb.PrepareRequest(run=run))
    wait_state(stub, run, "READY")
    for issue in stub.GetCompatibility(wpb.GetCompatibilityRequest(run=run)).issues:
        stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=run, issue_id=issue.id, notes="ok"))
    stub.Approve(wpb.ApproveRequest(run=run))


def _update(eve: EveServer, name: str, server, **connection) -> epb.Endpoint:
    """UpdateEndpoint with what GetEndpoint returned (the password comes back redacted and is kept)."""
    current = eve.endpoints().GetEndpoint(epb.GetEndpointRequest(endpoint=name))
    config = epb.EndpointConfig()
    config.CopyFrom(current.config)
    config.target.port = connection.get("port", server.port)
    if "pool" in connection:
        config.connection_pool.multiplexed_connections = connection["pool"]
    return eve.endpoints().UpdateEndpoint(epb.UpdateEndpointRequest(
        endpoint=name, kind="redis", config=config, description=connection.get("description", "")))


def _secret_endpoint(eve: EveServer, name: str, server) -> None:
    eve.endpoints().CreateEndpoint(epb.CreateEndpointRequest(
        endpoint=name, kind="redis", config=epb.EndpointConfig(
            target=epb.Connection(host="127.0.0.1", port=server.port),
            read_credentials=epb.Credentials(username="default", password=server.password),
            write_credentials=epb.Credentials(username="default", password=server.password))))


def test_update_endpoint_refused_while_a_run_uses_it(eve, server_factory):
    source = server_factory("redis-7.0")
    target = server_factory("valkey-8.1", password="s3cret-target")
    fill(source.client(), 3000, ttl_every=0, binary=False)
    endpoint(eve, "src", source)
    _secret_endpoint(eve, "dst", target)
    stub = eve.migrations()
    run = stub.CreateRun(wpb.CreateRunRequest(id="pinned")).id
    stub.SubmitSetup(setup(run, rate_limits=wpb.RateLimits(max_keys_per_second=600)))
    _update(eve, "dst", target, description="before Prepare: nothing runs yet")

    # READY: nothing runs, so the update goes through; but what was reviewed was found on
    # the endpoint as it was, so Approve refuses until Prepare looked again.
    stub.Prepare(wpb.PrepareRequest(run=run))
    wait_state(stub, run, "READY")
    for issue in stub.GetCompatibility(wpb.GetCompatibilityRequest(run=run)).issues:
        stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=run, issue_id=issue.id, notes="ok"))
    _update(eve, "dst", target, pool=2)
    with pytest.raises(grpc.RpcError) as info:
        stub.Approve(wpb.ApproveRequest(run=run))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "endpoint 'dst' (target) changed since Prepare checked it" in info.value.details()
    assert "connection_pool.multiplexed_connections: was unset, now 2" in info.value.details()
    assert stub.GetRun(wpb.GetRunRequest(run=run)).state == wpb.READY
    _approve(stub, run)

    # From approval until the run ends, both endpoints are refused, naming the run.
    wait_state(stub, run, "COPYING")
    for name, server, role in (("dst", target, "target"), ("src", source, "source")):
        with pytest.raises(grpc.RpcError) as info:
            _update(eve, name, server, port=server.port + 1)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"endpoint {name!r} is the {role} of run 'pinned', which is COPYING" in info.value.details()
    assert eve.endpoints().GetEndpoint(epb.GetEndpointRequest(endpoint="dst")).config.target.port == target.port
    wait_state(stub, run, "CUT_OVER")
    with pytest.raises(grpc.RpcError) as info:
        _update(eve, "dst", target, port=target.port + 1)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "CUT_OVER" in info.value.details()
    assert stub.Verify(wpb.VerifyRequest(run=run)).clean
    stub.Complete(wpb.CompleteRequest(run=run))
    assert_same(source.client(), target.client())

    # Ended: the endpoints are free again.
    updated = _update(eve, "dst", target, port=target.port + 1, description="moved")
    assert updated.config.target.port == target.port + 1 and updated.description == "moved"
    events = list(stub.SubscribeEvents(wpb.SubscribeEventsRequest(run=run), timeout=30))
    shown = " ".join([str(events), str(stub.GetRun(wpb.GetRunRequest(run=run))), eve.log()])
    assert "s3cret-target" not in shown, "the snapshot's passwords never leave the state file"


def test_resume_refused_when_an_endpoint_changed(tmp_path, server_factory):
    from eve.core.store import Store

    source = server_factory("redis-7.0")
    target = server_factory("redis-7.0", password="s3cret-target")
    elsewhere = server_factory("redis-7.0")
    fill(source.client(), 6000, ttl_every=0, binary=False)
    state = tmp_path / "eve.db"
    eve = EveServer(state=state, log_path=tmp_path / "eve.log").start()
    try:
        endpoint(eve, "src", source)
        _secret_endpoint(eve, "dst", target)
        stub = eve.migrations()
        run = stub.CreateRun(wpb.CreateRunRequest(id="moved")).id
        stub.SubmitSetup(setup(run, rate_limits=wpb.RateLimits(max_keys_per_second=1500)))
        _approve(stub, run)
        kill_when_copied(eve, target, 1000)
    finally:
        eve.stop()
    # While the coordinator is down the endpoint is pointed elsewhere, with another
    # password, as an Eve without the UpdateEndpoint check could have done.
    store = Store(state)
    saved = store.get_endpoint("dst").config
    moved = {**saved, "target": {**saved["target"], "port": elsewhere.port},
             "write_credentials": {"username": "default", "password": "s3cret-other"}}
    store.update_endpoint("dst", "redis", moved, "")
    store.close()

    eve = EveServer(state=state, log_path=tmp_path / "eve2.log").start()
    try:
        stub = eve.migrations()
        failed = wait_state(stub, "moved", "FAILED", timeout=30)
        reason = failed.failure_reason
        assert reason.startswith("resume refused after a coordinator restart: endpoint 'dst' (target) changed "
                                 "since the run was approved (")
        assert f"target.port: was {target.port}, now {elsewhere.port}" in reason
        assert "write_credentials.password: changed" in reason
        assert elsewhere.client().dbsize() == 0, "nothing was copied to the other server"
        with pytest.raises(grpc.RpcError) as info:
            stub.Approve(wpb.ApproveRequest(run="moved"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # (worded as a failure before copying when the kill came before the first checkpoint)
        assert "endpoint 'dst' (target) changed since the run was approved (" in info.value.details()
        # Put back as it was (FAILED: updates allowed), the run resumes from its checkpoints.
        eve.endpoints().UpdateEndpoint(epb.UpdateEndpointRequest(
            endpoint="dst", kind="redis", config=json_format.ParseDict(saved, epb.EndpointConfig())))
        stub.Approve(wpb.ApproveRequest(run="moved"))
        wait_state(stub, "moved", "CUT_OVER", timeout=120)
        assert stub.Verify(wpb.VerifyRequest(run="moved")).clean
        stub.Complete(wpb.CompleteRequest(run="moved"))
        events = list(stub.SubscribeEvents(wpb.SubscribeEventsRequest(run="moved"), timeout=30))
        assert any(e.message == reason for e in events), "the refusal is told as an event too"
        shown = " ".join([str(events), eve.log(), (tmp_path / "eve.log").read_text()])
        assert "s3cret-target" not in shown and "s3cret-other" not in shown
    finally:
        eve.stop()
    assert_same(source.client(), target.client())
