"""Live runs whose interlay's proxy process is killed with SIGKILL while applications write
through it (issue 19, items 1 and 2).

Writer threads (tests/live_runs.py) count every increment the interlay acknowledged. The
proxy is killed at COPYING, SYNCING, with reads shifted and after the cutover: its clients
connect again on the same port within 2 s without anyone calling the API, the run goes on
through a full compare (an event says so), and after Complete (or Rollback) every
acknowledged write is on the authoritative side. A proxy that keeps dying fails its interlay;
StartInterlay by hand then starts it under the run's route (the target authoritative after
the cutover). Verify does not overwrite a key written on the source, outside the interlay,
after the cutover: it reports it, and Complete needs accept_differences.

A quick case with two proxy processes per interlay runs without a coordinator process
(``InterlaySupervisor`` and ``LiveRun`` in this process); the others drive ``eve serve``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest
import redis
from eve_process import wait_state
from live_runs import Live, Writers, assert_identical
from proxies import LOOPBACK, endpoint_for, interlay_pids, wait_for
from servers import free_port

from eve.api.server import interlay_control_dir
from eve.core.endpoints import ConnectionSpec
from eve.live.interlays import InterlaySupervisor
from eve.live.run import LiveOptions, LiveRun
from eve.live.verify import verify
from eve.v1 import interlays_pb2 as ipb
from eve.v1 import workflows_pb2 as wpb

RECONNECT_SECONDS = 2.0
RESTARTED = "proxy process died"


def _reconnect_within(port: int, seconds: float = RECONNECT_SECONDS) -> float:
    start = time.monotonic()
    while True:
        try:
            if redis.Redis(host=LOOPBACK, port=port, socket_timeout=5, socket_connect_timeout=1).ping():
                return time.monotonic() - start
        except redis.ConnectionError:
            pass
        assert time.monotonic() - start < seconds, f"port {port} did not answer again within {seconds:g}s"
        time.sleep(0.02)


def _proxy_pids(live: Live) -> list[int]:
    return interlay_pids(Path(interlay_control_dir(str(live.eve.state)))).get("app", [])


def _kill_proxy(live: Live) -> int:
    """SIGKILL the interlay's proxy process; its port answers again within 2 s. Returns the new pid."""
    pids = _proxy_pids(live)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    _reconnect_within(live.port)
    return wait_for(lambda: next((pid for pid in _proxy_pids(live) if pid != pids[0]), None),
                    what="the restarted proxy process in the control file")


def _restart_events(live: Live) -> list:
    return [e for e in list(live.events.events) if e.type == "interlay" and RESTARTED in e.message]


# --------------------------------------------------------------------------- quick: two workers


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_one_of_two_workers_killed_the_run_compares_in_full_and_loses_nothing(server_factory) -> None:
    source, target = server_factory("valkey-8.1"), server_factory("valkey-8.1")
    supervisor = InterlaySupervisor(workers=2, stats_interval=0.2)
    port = free_port()
    events: list[str] = []
    try:
        supervisor.start("pair", port, LOOPBACK, endpoint_for(source.host, source.port, pool=2), 200)
        run = LiveRun(LiveOptions(run_id="r", interlay_id="pair", source=ConnectionSpec(source.host, source.port),
                                  target=ConnectionSpec(target.host, target.port)), supervisor,
                      on_event=lambda type, message, attributes: events.append(message))
        supervisor.on_restart = lambda interlay_id, reason: run.interlay_restarted(reason)
        run.start_tracking()
        run.start_sync()
        with Writers(port, threads=3) as writers:
            writers.wait_ops(300)
            run.go_in_sync()
            writers.wait_ops(300)
            pids = supervisor.status("pair").pids
            os.kill(pids[0], signal.SIGKILL)
            _reconnect_within(port)
            wait_for(lambda: supervisor.restarts("pair")[0] == 1, timeout=10, what="the restart")
            now = supervisor.status("pair").pids
            assert now[1] == pids[1] and now[0] not in pids
            run.check_sync()   # the run goes on
            assert any(RESTARTED in message and "compared in full" in message for message in events), events
            writers.wait_ops(300)
        assert run.reconcile_if_needed()   # the full compare the restart asked for
        assert run.wait_synced(30)
        run.check_sync()
        writers.check_counters(source.client())
        writers.check_counters(target.client())
        assert_identical(source.client(), target.client(), "source and target")
        assert verify(ConnectionSpec(source.host, source.port), ConnectionSpec(target.host, target.port)).clean
        run.close()
    finally:
        supervisor.stop_all()


# --------------------------------------------------------------------------- eve serve, every phase


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("phase,policy,end", [
    pytest.param("copying", wpb.SOURCE_AUTHORITATIVE, "complete", id="copying-complete"),
    pytest.param("syncing", wpb.BOTH_REQUIRED, "complete", id="syncing-complete"),
    pytest.param("reads-shifted", wpb.SOURCE_AUTHORITATIVE, "rollback", id="reads-shifted-rollback"),
    pytest.param("cut-over", wpb.SOURCE_AUTHORITATIVE, "complete", id="cut-over-complete"),
    pytest.param("cut-over", wpb.BEST_EFFORT, "rollback", id="cut-over-rollback"),
])
def test_proxy_killed_mid_run_comes_back_and_the_run_loses_nothing(eve, server_factory, phase, policy, end):
    live = Live(eve, server_factory, policy, keys=1500, max_keys_per_second=300 if phase == "copying" else 0)
    with Writers(live.port, threads=2) as writers:
        writers.wait_ops(200)
        live.approve()
        if phase == "copying":
            wait_state(live.stub, live.run, "COPYING")
        else:
            live.wait_in_sync()
            if phase == "reads-shifted":
                live.traffic(50)
            elif phase == "cut-over":
                assert live.traffic(100, cutover=True).state == wpb.CUT_OVER
        writers.wait_ops(300)
        _kill_proxy(live)
        writers.wait_ops(300)   # the applications write on, through the restarted proxy
        if phase == "copying":
            assert live.state() == wpb.COPYING
            live.wait_in_sync()
        wait_for(lambda: _restart_events(live), timeout=30, what="the event about the restart")
        record = live.stub.GetRun(wpb.GetRunRequest(run=live.run))
        assert record.state not in (wpb.FAILED,), record.failure_reason
        interlay = eve.interlays().GetInterlay(ipb.GetInterlayRequest(id="app"))
        assert interlay.state == ipb.INTERLAY_RUNNING and "restarted after" in interlay.last_error
        if end == "complete" and phase != "cut-over":
            assert live.traffic(100, cutover=True).state == wpb.CUT_OVER
            writers.wait_ops(300)
        if end == "rollback":
            rolled = live.stub.Rollback(wpb.RollbackRequest(run=live.run, reason="after a proxy restart"))
            assert rolled.state == wpb.ROLLED_BACK
            writers.wait_ops(200)
    event = _restart_events(live)[0]
    assert "compared in full" in event.message
    if end == "rollback":
        writers.check_counters(live.source.client())
        live.assert_forwarded_to_source_alone("after-rollback")
        return
    live.settle()
    target = live.target.client()
    writers.check_counters(target)
    assert_identical(live.source.client(), target, "source and target")
    verified = live.stub.Verify(wpb.VerifyRequest(run=live.run))
    assert verified.clean, verified
    assert live.stub.Complete(wpb.CompleteRequest(run=live.run, notes="ok")).state == wpb.COMPLETED
    writers.check_counters(target)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_plain_forwarding_proxy_killed_is_back_within_two_seconds(eve, server_factory):
    server = server_factory("valkey-8.1")
    from eve.v1 import endpoints_pb2 as epb

    eve.endpoints().CreateEndpoint(epb.CreateEndpointRequest(
        endpoint="src", kind="redis", config=epb.EndpointConfig(target=epb.Connection(host=LOOPBACK,
                                                                                      port=server.port))))
    port = free_port()
    eve.interlays().CreateInterlay(ipb.CreateInterlayRequest(id="app", endpoint="src", port=port))
    eve.interlays().StartInterlay(ipb.StartInterlayRequest(id="app"))
    control = Path(interlay_control_dir(str(eve.state)))
    with Writers(port, threads=2) as writers:
        writers.wait_ops(200)
        old = interlay_pids(control)["app"]
        os.kill(old[0], signal.SIGKILL)
        _reconnect_within(port)
        writers.wait_ops(200)
    writers.check_counters(server.client())
    got = eve.interlays().GetInterlay(ipb.GetInterlayRequest(id="app"))
    assert got.state == ipb.INTERLAY_RUNNING and "exited with code -9" in got.last_error


# --------------------------------------------------------------------------- by hand, after the cutover


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_start_interlay_by_hand_after_the_cutover_keeps_the_target_authoritative(eve, server_factory):
    live = Live(eve, server_factory, wpb.SOURCE_AUTHORITATIVE, keys=500)
    live.approve()
    live.wait_in_sync()
    assert live.traffic(100, cutover=True).state == wpb.CUT_OVER
    # A crash loop: killed again as soon as it is back, until the supervisor gives up.
    deadline = time.monotonic() + 60
    while eve.interlays().GetInterlay(ipb.GetInterlayRequest(id="app")).state != ipb.INTERLAY_FAILED:
        assert time.monotonic() < deadline, "the interlay never failed"
        for pid in _proxy_pids(live):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    failed = eve.interlays().GetInterlay(ipb.GetInterlayRequest(id="app"))
    assert "crash loop" in failed.last_error
    wait_for(lambda: any(e.type == "error" and "StartInterlay" in e.message for e in list(live.events.events)),
             timeout=30, what="the loud event about the failed interlay")
    assert live.state() == wpb.CUT_OVER
    eve.interlays().StartInterlay(ipb.StartInterlayRequest(id="app"))
    client = redis.Redis(host=LOOPBACK, port=live.port)
    client.set("by-hand", "1")
    # The target took the write (and the source its dual write): never the source alone.
    assert live.target.client().get("by-hand") == b"1"
    wait_for(lambda: live.source.client().get("by-hand") == b"1", what="the reverse sync of the write")
    with Writers(live.port, threads=2) as writers:
        writers.wait_ops(300)
    live.settle()
    writers.check_counters(live.target.client())
    assert live.stub.Verify(wpb.VerifyRequest(run=live.run)).clean
    assert live.stub.Complete(wpb.CompleteRequest(run=live.run, notes="ok")).state == wpb.COMPLETED
    writers.check_counters(live.target.client())


# --------------------------------------------------------------------------- item 2: Verify


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_verify_reports_a_write_on_the_source_after_the_cutover_and_never_overwrites_it(eve, server_factory):
    live = Live(eve, server_factory, wpb.SOURCE_AUTHORITATIVE, keys=300)
    live.approve()
    live.wait_in_sync()
    assert live.traffic(100, cutover=True).state == wpb.CUT_OVER
    client = redis.Redis(host=LOOPBACK, port=live.port)
    client.set("through", "interlay")
    # Around Eve, on the side that is no longer authoritative.
    source = live.source.client()
    source.set("around", "on the source")
    live.settle()
    verified = live.stub.Verify(wpb.VerifyRequest(run=live.run))
    assert not verified.clean
    assert source.get("around") == b"on the source", "Verify overwrote the write made on the source"
    assert live.target.client().get("through") == source.get("through") == b"interlay"
    assert any(e.type == "verify" and "written outside" in e.message for e in list(live.events.events))
    errors = live.stub.ListErrorKeys(wpb.ListErrorKeysRequest(run=live.run, page_size=10)).error_keys
    assert [e.key for e in errors if b"around" in e.key] and \
        all("written outside the interlay" in e.reason for e in errors if b"around" in e.key)
    with pytest.raises(grpc.RpcError) as info:
        live.stub.Complete(wpb.CompleteRequest(run=live.run, notes="no"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "accept_differences" in info.value.details()
    done = live.stub.Complete(wpb.CompleteRequest(run=live.run, accept_differences=True, notes="checked by hand"))
    assert done.state == wpb.COMPLETED
