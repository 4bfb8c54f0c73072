"""Online runs through the API while applications write through the interlay (issue 6).

Client threads write every data type at a steady rate from before the bulk copy until
after the cutover (or the rollback). Each thread counts the increments the interlay
acknowledged, so a lost write shows as a counter below its count. After the writes stop,
the sides are compared key by key: after a completed run, source, target and mirror
target are identical; after a rollback, the source holds every write.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest
import redis
from eve_process import EveServer, Subscriber, wait_state
from live_runs import ENGINE, Live, Writers, assert_identical

from eve.v1 import interlays_pb2 as ipb
from eve.v1 import workflows_pb2 as wpb


pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]


def _restart(server) -> None:
    server.stop()
    time.sleep(0.3)
    server.start()


@pytest.mark.parametrize("policy,restart", [
    pytest.param(wpb.SOURCE_AUTHORITATIVE, True, id="source-authoritative-target-restarted"),
    pytest.param(wpb.BOTH_REQUIRED, True, id="both-required-target-restarted"),
    pytest.param(wpb.TARGET_AUTHORITATIVE, False, id="target-authoritative"),
    pytest.param(wpb.BEST_EFFORT, False, id="best-effort"),
])
def test_online_run_cutover_and_complete(eve, server_factory, policy, restart):
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    # A rate-limited bulk copy: the writers change keys while the scanner reads them.
    live = Live(eve, server_factory, policy, mirror=policy == wpb.SOURCE_AUTHORITATIVE, target_args=aof,
                max_keys_per_second=1000)
    with Writers(live.port) as writers:
        writers.wait_ops(200)
        live.approve()
        live.wait_in_sync()
        writers.wait_ops(500)
        if restart:
            _restart(live.target)
            writers.wait_ops(500)
        if policy != wpb.TARGET_AUTHORITATIVE:
            shifted = live.traffic(50)
            assert shifted.read_percent_target == 50 and not shifted.writes_on_target
            writers.wait_ops(300)
        cut = live.traffic(100, cutover=True)
        assert cut.state == wpb.CUT_OVER and cut.writes_on_target
        writers.wait_ops(500)
        # After the cutover the source receives the writes second (stats arrive every second).
        deadline = time.monotonic() + 10
        while True:
            stats = eve.interlays().GetInterlay(ipb.GetInterlayRequest(id="app")).stats
            dual = {d.side: d for d in stats.dual_writes}
            if "source" in dual and dual["source"].writes > 0:
                break
            assert time.monotonic() < deadline, f"no dual writes to the source in {stats}"
            time.sleep(0.2)
        if policy != wpb.TARGET_AUTHORITATIVE:
            assert dual["target"].writes > 0
    live.settle()
    target = live.target.client()
    writers.check_counters(target)
    compared = assert_identical(live.source.client(), target, "source and target")
    assert compared > 1500
    if live.mirror is not None:
        assert_identical(target, live.mirror.client(), "target and mirror target")
    verified = live.stub.Verify(wpb.VerifyRequest(run=live.run))
    assert verified.clean, verified
    metrics = live.stub.GetMetrics(wpb.GetMetricsRequest(run=live.run))
    assert metrics.authoritative == "target" and metrics.keys_recopied > 0
    done = live.stub.Complete(wpb.CompleteRequest(run=live.run, notes="accepted"))
    assert done.state == wpb.COMPLETED
    # The interlay now forwards to the target alone.
    client = redis.Redis(host="127.0.0.1", port=live.port)
    client.set("after-complete", 1)
    assert target.get("after-complete") == b"1" and not live.source.client().exists("after-complete")
    types = {e.type for e in live.events.events}
    assert {"live", "traffic", "progress", "verify"} <= types
    if restart:
        if policy == wpb.BOTH_REQUIRED:
            assert any("BOTH_REQUIRED" in e for e in writers.errors()), "clients saw the target's failure"
        assert any(e.type == "dual_write" for e in live.events.events), "the failures on the target are events"


@pytest.mark.parametrize("phase,policy,engines", [
    pytest.param("copying", wpb.SOURCE_AUTHORITATIVE, (ENGINE, ENGINE), id="copying"),
    pytest.param("in-sync", wpb.BOTH_REQUIRED, (ENGINE, ENGINE), id="in-sync"),
    pytest.param("reads-shifted", wpb.BEST_EFFORT, (ENGINE, ENGINE), id="reads-shifted"),
    pytest.param("target-authoritative", wpb.TARGET_AUTHORITATIVE, (ENGINE, ENGINE),
                 id="target-authoritative-in-sync"),
    pytest.param("cut-over", wpb.SOURCE_AUTHORITATIVE, (ENGINE, ENGINE), id="cut-over"),
    # Valkey 9.1's DUMP payloads are refused by Redis 7.0: the reverse sync copies logically.
    pytest.param("cut-over", wpb.BOTH_REQUIRED, ("redis-7.0", "valkey-9.1"), id="cut-over-redis-7.0-to-valkey-9.1"),
])
def test_rollback_keeps_every_write_on_the_source(eve, server_factory, phase, policy, engines):
    live = Live(eve, server_factory, policy, max_keys_per_second=300 if phase == "copying" else 0, engines=engines)
    with Writers(live.port) as writers:
        writers.wait_ops(200)
        live.approve()
        if phase == "copying":
            wait_state(live.stub, live.run, "COPYING")
            writers.wait_ops(300)
            assert live.state() == wpb.COPYING
        else:
            live.wait_in_sync()
            writers.wait_ops(400)
            if phase == "reads-shifted":
                live.traffic(60)
                writers.wait_ops(300)
            elif phase == "cut-over":
                live.traffic(100, cutover=True)
                writers.wait_ops(500)
        rolled = live.stub.Rollback(wpb.RollbackRequest(run=live.run, reason=f"rollback while {phase}"))
        assert rolled.state == wpb.ROLLED_BACK and rolled.read_percent_target == 0 and not rolled.writes_on_target
        writers.wait_ops(300)  # the applications go on, on the source
    source = live.source.client()
    writers.check_counters(source)
    errors = live.stub.ListErrorKeys(wpb.ListErrorKeysRequest(run=live.run, page_size=10))
    assert not errors.error_keys, errors
    # Nothing goes to the target any more.
    live.assert_forwarded_to_source_alone("after-rollback")
    with pytest.raises(grpc.RpcError) as info:
        live.traffic(10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_traffic_requests_in_the_wrong_state(eve, server_factory):
    live = Live(eve, server_factory, wpb.SOURCE_AUTHORITATIVE, strategy=wpb.ONLINE_CUTOVER, keys=100)
    with pytest.raises(grpc.RpcError) as info:
        live.traffic(10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "SYNCING" in info.value.details()
    live.approve()
    live.wait_in_sync()
    for percent, cutover, code, needle in [
        (10, False, grpc.StatusCode.FAILED_PRECONDITION, "one step"),
        (101, True, grpc.StatusCode.INVALID_ARGUMENT, "read_percent_target"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            live.traffic(percent, cutover)
        assert info.value.code() == code and needle in info.value.details(), info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        live.stub.Complete(wpb.CompleteRequest(run=live.run, notes="too early"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert live.traffic(100, cutover=True).state == wpb.CUT_OVER
    with pytest.raises(grpc.RpcError) as info:
        live.traffic(0, False)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "Rollback" in info.value.details()
    # The interlay cannot be stopped or deleted from under the run.
    for call in (lambda: live.eve.interlays().StopInterlay(ipb.StopInterlayRequest(id="app")),
                 lambda: live.eve.interlays().DeleteInterlay(ipb.DeleteInterlayRequest(id="app"))):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "live" in info.value.details()
    live.stub.Rollback(wpb.RollbackRequest(run=live.run, reason="done testing"))
    live.eve.interlays().StopInterlay(ipb.StopInterlayRequest(id="app"))


def test_keyspace_notifications_catch_writes_around_the_interlay(eve, server_factory):
    live = Live(eve, server_factory, wpb.SOURCE_AUTHORITATIVE, keys=200, keyspace_notifications=True)
    direct = live.source.client()
    with Writers(live.port, threads=1) as writers:
        live.approve()
        live.wait_in_sync()
        for i in range(200):  # a client that never heard of the interlay
            direct.hincrby("bypass:hash", f"f{i % 7}", 1)
            direct.set(f"bypass:{i % 20}", i)
        direct.delete("bypass:3")
        writers.wait_ops(100)
        live.traffic(100, cutover=True)
        writers.wait_ops(100)
    live.settle()
    target = live.target.client()
    assert target.hgetall("bypass:hash") == direct.hgetall("bypass:hash")
    assert target.get("bypass:19") == b"199" and not target.exists("bypass:3")
    assert_identical(direct, target, "source and target")
    live.stub.Rollback(wpb.RollbackRequest(run=live.run, reason="test over"))


def _proxy_pids(parent: int) -> list[int]:
    """The interlay's proxy processes: spawned children of the coordinator."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def test_interlay_lost_mid_run_fails_the_run_and_rollback_recovers(eve, server_factory):
    """A proxy that dies is restarted (issue 19: tests/test_interlay_restart_runs.py); one that
    keeps dying (a crash loop) fails its interlay, and the run, with the reason."""
    live = Live(eve, server_factory, wpb.SOURCE_AUTHORITATIVE, keys=300)
    with Writers(live.port, threads=2) as writers:
        live.approve()
        live.wait_in_sync()
        writers.wait_ops(200)
        deadline = time.monotonic() + 60
        while live.state() != wpb.FAILED:
            assert time.monotonic() < deadline, "the run never failed"
            for pid in _proxy_pids(eve.process.pid):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        failed = wait_state(live.stub, live.run, "FAILED", timeout=30)
        assert "interlay 'app'" in failed.failure_reason and "no longer tracked" in failed.failure_reason
        assert "crash loop" in failed.failure_reason
    rolled = live.stub.Rollback(wpb.RollbackRequest(run=live.run, reason="interlay lost"))
    assert rolled.state == wpb.ROLLED_BACK
    writers.check_counters(live.source.client())
    # Started again, the interlay forwards to the source alone.
    live.eve.interlays().StartInterlay(ipb.StartInterlayRequest(id="app"))
    live.assert_forwarded_to_source_alone("after-restart")


def test_coordinator_killed_while_in_sync_resumes_without_losing_a_write(tmp_path, eve, server_factory):
    """The interlay dies with the coordinator, and with them the dirty keys not re-copied yet:
    restarted, the run compares the sides, re-copies what differs, and gets in sync again."""
    live = Live(eve, server_factory, wpb.SOURCE_AUTHORITATIVE, keys=500)
    with Writers(live.port, threads=2) as writers:
        live.approve()
        live.wait_in_sync()
        writers.wait_ops(300)
        eve.process.kill()
        eve.process.wait()
        eve.stop()
        writers.wait_ops(0, at_least=0.5)  # writes fail meanwhile: counted as of unknown outcome
        restarted = EveServer(state=eve.state, log_path=tmp_path / "eve-restarted.log").start()
        try:
            live.eve, live.stub = restarted, restarted.migrations()
            live.events = Subscriber(live.stub, live.run)
            live.events.start()
            deadline = time.monotonic() + 60
            while sum(e.type == "live" and e.message.startswith("in sync") for e in list(live.events.events)) < 2:
                record = live.stub.GetRun(wpb.GetRunRequest(run=live.run))
                assert record.state == wpb.SYNCING, record.failure_reason
                assert time.monotonic() < deadline, "not in sync again after the restart"
                time.sleep(0.1)
            assert any("coordinator restarted" in e.message for e in live.events.events)
            writers.wait_ops(300)
            assert live.traffic(100, cutover=True).state == wpb.CUT_OVER
            writers.wait_ops(300)
        finally:
            writers.finish()
            live.settle()
            try:
                target = live.target.client()
                writers.check_counters(target)
                assert_identical(live.source.client(), target, "source and target")
                assert live.stub.Verify(wpb.VerifyRequest(run=live.run)).clean
                assert live.stub.Complete(wpb.CompleteRequest(run=live.run, notes="ok")).state == wpb.COMPLETED
            finally:
                restarted.stop()
