"""Interlays outlive the coordinator (issue 12, parts 0 and 6).

A coordinator killed with SIGKILL leaves its proxy processes serving under their
last route; the next coordinator of the same state file re-attaches to them
through their control sockets, and gets the dirty keys they spooled meanwhile.
The coordinators here are real processes (``eve serve``, or a bare supervisor
in a subprocess where a test needs the spool itself) killed with SIGKILL.
"""

from __future__ import annotations

import json
import multiprocessing.connection
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis
from eve_process import EveServer, Subscriber
from proxies import LOOPBACK, endpoint_for, free_ports, interlay_pids, reap_interlays, wait_for
from servers import free_port
from live_runs import Live, Writers, assert_identical

from eve.api.server import interlay_control_dir
from eve.core.store import Store
from eve.live.backlog import DirtyKeys
from eve.live.interlays import InterlaySupervisor
from eve.live.run import LiveOptions, LiveRun
from eve.v1 import endpoints_pb2 as epb
from eve.v1 import interlays_pb2 as ipb
from eve.v1 import workflows_pb2 as wpb
from proxy.control import Spool

ENGINE = "redis-7.0"
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]

# A coordinator reduced to its supervisor, in a process of its own, so that a test can kill it.
_COORDINATOR = textwrap.dedent("""
    import json, sys
    from eve.core.endpoints import parse_config
    from eve.live.backlog import DirtyKeys
    from eve.live.interlays import InterlaySupervisor

    control_dir, backend_port, port, spool_keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    supervisor = InterlaySupervisor(control_dir=control_dir, spool_keys=spool_keys, stats_interval=0.2)
    endpoint = parse_config({"target": {"host": "127.0.0.1", "port": backend_port}})
    ports = supervisor.start("it", port, "127.0.0.1", endpoint, 100)
    supervisor.track_dirty("it", DirtyKeys())
    print(json.dumps(ports), flush=True)
    sys.stdin.read()
""")


class Coordinator:
    """A supervisor in a subprocess that tracks the dirty keys of interlay ``it``."""

    def __init__(self, control_dir: Path, backend_port: int, spool_keys: int = 1000) -> None:
        self.control_dir = control_dir
        self.process = subprocess.Popen(
            [sys.executable, "-c", _COORDINATOR, str(control_dir), str(backend_port), str(free_ports(1)),
             str(spool_keys)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        assert line, "the coordinator did not start"
        self.port = json.loads(line)[0]

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            stream.close()  # type: ignore[union-attr]


@pytest.fixture
def control_dir(tmp_path: Path):
    path = tmp_path / "control"
    yield path
    reap_interlays(path)


def _client(port: int) -> redis.Redis:
    return redis.Redis(host=LOOPBACK, port=port, socket_timeout=10)


def test_spooled_keys_reach_the_next_coordinator(server_factory, control_dir):
    source = server_factory(ENGINE)
    first = Coordinator(control_dir, source.port)
    client = _client(first.port)
    client.set("before", 1)
    pids = interlay_pids(control_dir)["it"]
    first.kill()
    # Detached: the same connection and new ones are served; their writes are spooled.
    client.set("during", 2)
    _client(first.port).incr("during:new")
    assert interlay_pids(control_dir)["it"] == pids
    supervisor = InterlaySupervisor(control_dir=control_dir)
    try:
        assert supervisor.recover({"it"}) == ["it"]
        assert supervisor.status("it").pids == tuple(pids) and supervisor.running("it")
        assert supervisor.attached("it").tracking
        dirty = DirtyKeys()
        supervisor.track_dirty("it", dirty)
        client.set("after", 3)
        assert supervisor.dirty_barrier("it", timeout=10)
        marked = set(dirty.take(100))
        # "before" was reported to the killed coordinator, which never confirmed it re-copied.
        assert {(0, b"before"), (0, b"during"), (0, b"during:new"), (0, b"after")} <= marked
        assert not dirty.overflowed
        assert client.get("during") == b"2"
    finally:
        supervisor.stop_all()
    assert not any(interlay_pids(control_dir).values()) and not list(control_dir.glob("*.json"))


def test_an_overflowing_spool_asks_for_a_full_compare(server_factory, control_dir):
    source = server_factory(ENGINE)
    first = Coordinator(control_dir, source.port, spool_keys=5)
    first.kill()
    client = _client(first.port)
    for i in range(20):
        client.set(f"k{i}", i)
    supervisor = InterlaySupervisor(control_dir=control_dir)
    try:
        assert supervisor.recover({"it"}) == ["it"]
        attached = supervisor.attached("it")
        assert attached.overflowed and attached.spooled == 0
        dirty = DirtyKeys()
        supervisor.track_dirty("it", dirty)
        assert supervisor.dirty_barrier("it", timeout=10)
        assert dirty.overflowed and dirty.resync_dbs() is None  # every db: compare in full
    finally:
        supervisor.stop_all()


def test_only_the_token_attaches_and_the_control_files_are_private(server_factory, control_dir):
    source = server_factory(ENGINE)
    first = Coordinator(control_dir, source.port)
    first.kill()
    record = json.loads((control_dir / "it.json").read_text())
    socket_path = record["workers"][0]["socket"]
    assert stat.S_IMODE(control_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((control_dir / "it.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
    with pytest.raises(multiprocessing.AuthenticationError):
        multiprocessing.connection.Client(socket_path, family="AF_UNIX", authkey=os.urandom(32))
    # The refused attempt changed nothing: clients are served, the next coordinator attaches.
    assert _client(first.port).ping()
    supervisor = InterlaySupervisor(control_dir=control_dir)
    try:
        assert supervisor.recover({"it"}) == ["it"]
    finally:
        supervisor.stop_all()


def test_an_interlay_not_wanted_any_more_is_stopped(server_factory, control_dir):
    source = server_factory(ENGINE)
    first = Coordinator(control_dir, source.port)
    pids = interlay_pids(control_dir)["it"]
    first.kill()
    assert _client(first.port).ping()
    supervisor = InterlaySupervisor(control_dir=control_dir)
    assert supervisor.recover(set()) == []
    assert not supervisor.running("it") and not list(control_dir.glob("*.json"))
    wait_for(lambda: not os.path.exists(f"/proc/{pids[0]}"), what="the unwanted interlay to exit")
    with pytest.raises(redis.ConnectionError):
        _client(first.port).ping()


def test_keys_confirmed_re_copied_are_not_sent_again(server_factory, control_dir):
    """The spool keeps for the next coordinator only what the last one did not confirm."""
    source = server_factory(ENGINE)
    first = InterlaySupervisor(control_dir=control_dir, stats_interval=0.2)
    second = InterlaySupervisor(control_dir=control_dir)
    try:
        port = first.start("it", free_ports(1), LOOPBACK, endpoint_for(LOOPBACK, source.port), 100)[0]
        first.track_dirty("it", DirtyKeys())
        client = _client(port)
        client.set("confirmed", 1)
        assert first.dirty_barrier("it", timeout=10)
        first.confirm_dirty("it", time.monotonic())
        client.set("unconfirmed", 2)
        assert first.dirty_barrier("it", timeout=10)
        # A second coordinator takes the process over (the first one's connection is closed).
        assert second.recover({"it"}) == ["it"]
        dirty = DirtyKeys()
        second.track_dirty("it", dirty)
        assert second.dirty_barrier("it", timeout=10)
        assert set(dirty.take(100)) == {(0, b"unconfirmed")}
    finally:
        second.stop_all()
        first.stop_all()


def test_a_live_run_confirms_only_what_it_re_copied(server_factory, control_dir):
    """``LiveRun.confirm_recopied``: a key still in the backlog stays in the interlay's spool, and
    a coordinator taking over gets it; once re-copied it is confirmed, and the next one does not."""
    source, target = server_factory(ENGINE), server_factory(ENGINE)
    options = LiveOptions(run_id="r", interlay_id="it", source=endpoint_for(LOOPBACK, source.port).write,
                          target=endpoint_for(LOOPBACK, target.port).write)
    supervisors = [InterlaySupervisor(control_dir=control_dir, stats_interval=0.2) for _ in range(3)]
    runs: list[LiveRun] = []

    def take_over(supervisor: InterlaySupervisor) -> LiveRun:
        """A coordinator taking the interlay over: its live run, with the keys the spool gave it."""
        assert supervisor.recover({"it"}) == ["it"]
        runs.append(LiveRun(options, supervisor))
        runs[-1].start_tracking()
        assert runs[-1].barrier()
        return runs[-1]

    try:
        port = supervisors[0].start("it", free_ports(1), LOOPBACK, endpoint_for(LOOPBACK, source.port), 100)[0]
        runs.append(LiveRun(options, supervisors[0]))
        runs[0].start_tracking()
        client = _client(port)
        client.set("pending", 1)
        assert runs[0].barrier()
        runs[0].confirm_recopied()          # not re-copied: nothing confirmed
        second = take_over(supervisors[1])
        assert supervisors[1].attached("it").spooled == 1 and second.dirty.backlog == 1
        second.start_sync()                 # no dual writes: only the spool brings the key to the target
        assert second.wait_synced(10) and target.client().get("pending") == b"1"
        second.confirm_recopied()
        client.set("later", 2)
        assert second.barrier()
        third = take_over(supervisors[2])
        assert set(third.dirty.take(100)) == {(0, b"later")}
    finally:
        for run in runs:
            run.close()
        for supervisor in reversed(supervisors):
            supervisor.stop_all()


def test_the_spool_keeps_what_is_not_confirmed_and_heals_an_overflow():
    spool = Spool(limit=4)
    spool.sent_report(((0, b"a"),))
    spool.sent_report(((0, b"b"), (0, b"c")))
    spool.confirm(1)                       # "a" re-copied: only b and c could still be lost
    assert len(spool) == 2
    spool.sent_report(((0, b"d"), (0, b"e"), (0, b"f")))
    assert spool.overflowed and len(spool) == 0
    spool.sent_report(((0, b"g"),))        # not kept while overflowed: a confirm must cover it too
    spool.confirm(3)
    assert spool.overflowed
    spool.confirm(4)
    assert not spool.overflowed
    spool.sent_report(((0, b"h"),))
    spool.attach()                         # a new coordinator: h goes to it, numbering starts over
    spool.hold(((1, b"i"),))
    assert spool.replay() == ((0, b"h"), (1, b"i")) and len(spool) == 0
    spool.sent_report(tuple((0, bytes([n])) for n in range(5)))
    spool.attach()
    assert spool.replay() == ((None, None),)  # overflowed: every db, compared in full


# --------------------------------------------------------------------------- through eve serve


def _endpoint(eve: EveServer, name: str, port: int) -> None:
    eve.endpoints().CreateEndpoint(epb.CreateEndpointRequest(
        endpoint=name, kind="redis", config=epb.EndpointConfig(target=epb.Connection(host=LOOPBACK, port=port))))


def _kill(eve: EveServer) -> None:
    eve.process.kill()  # type: ignore[union-attr]
    eve.process.wait()  # type: ignore[union-attr]
    eve.stop()


def test_plain_forwarding_keeps_its_clients_across_a_coordinator_kill(tmp_path, eve, server_factory):
    source = server_factory(ENGINE)
    _endpoint(eve, "src", source.port)
    port = free_port()
    eve.interlays().CreateInterlay(ipb.CreateInterlayRequest(id="app", endpoint="src", port=port))
    eve.interlays().StartInterlay(ipb.StartInterlayRequest(id="app"))
    client = _client(port)
    for _ in range(50):
        client.incr("counter")
    control_dir = Path(interlay_control_dir(str(eve.state)))
    pids = interlay_pids(control_dir)["app"]

    def stats(server: EveServer) -> ipb.Interlay:
        return server.interlays().GetInterlay(ipb.GetInterlayRequest(id="app"))

    wait_for(lambda: stats(eve).stats.backends and stats(eve).stats.backends[0].ops >= 50, what="stats")
    _kill(eve)
    for _ in range(50):
        client.incr("counter")  # the same connection, with nobody supervising
    restarted = EveServer(state=eve.state, log_path=tmp_path / "eve-restarted.log").start()
    try:
        interlay = stats(restarted)
        assert interlay.state == ipb.INTERLAY_RUNNING and list(interlay.listener_ports) == [port]
        assert interlay_pids(control_dir)["app"] == pids, "a new process instead of the one that kept serving"
        assert "re-attached" in restarted.log()
        wait_for(lambda: stats(restarted).stats.backends and stats(restarted).stats.backends[0].ops >= 100,
                 what="the stats counted since the process started")
        assert stats(restarted).stats.connections >= 1
        assert client.incr("counter") == 101
        restarted.interlays().StopInterlay(ipb.StopInterlayRequest(id="app"))
        with pytest.raises(redis.ConnectionError):
            client.incr("counter")
        assert not interlay_pids(control_dir)
    finally:
        restarted.stop()
    assert source.client().get("counter") == b"101"


def test_an_interlay_deleted_meanwhile_is_stopped_by_the_next_coordinator(tmp_path, eve, server_factory):
    """The store says the interlay is stopped (its StopInterlay, say, was recorded but the
    coordinator died before the process exited): the next coordinator stops the process."""
    source = server_factory(ENGINE)
    _endpoint(eve, "src", source.port)
    port = free_port()
    eve.interlays().CreateInterlay(ipb.CreateInterlayRequest(id="app", endpoint="src", port=port))
    eve.interlays().StartInterlay(ipb.StartInterlayRequest(id="app"))
    control_dir = Path(interlay_control_dir(str(eve.state)))
    _kill(eve)
    store = Store(str(eve.state))
    store.set_interlay_state("app", "STOPPED")
    store.close()
    restarted = EveServer(state=eve.state, log_path=tmp_path / "eve-restarted.log").start()
    try:
        assert restarted.interlays().GetInterlay(ipb.GetInterlayRequest(id="app")).state == ipb.INTERLAY_STOPPED
        assert not interlay_pids(control_dir)
        with pytest.raises(redis.ConnectionError):
            _client(port).ping()
    finally:
        restarted.stop()


# --------------------------------------------------------------------------- live runs (slow)


def _restart(live: Live, tmp_path: Path, name: str) -> EveServer:
    """A coordinator of the same state file in place of the killed one, followed by ``live``
    (whose events are those after the kill from now on)."""
    seen = max((event.seq for event in live.events.events), default=0)
    # It starts the interlays it must before it says it listens: spawning one can take seconds under load.
    restarted = EveServer(state=live.eve.state, log_path=tmp_path / f"{name}.log").start(timeout=60)
    live.eve, live.stub = restarted, restarted.migrations()
    live.events = Subscriber(live.stub, live.run, after_seq=seen)
    live.events.start()
    return restarted


def _wait_event(live: Live, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in e.message for e in list(live.events.events)):
        record = live.stub.GetRun(wpb.GetRunRequest(run=live.run))
        assert record.state not in (wpb.FAILED, wpb.ROLLED_BACK), record.failure_reason
        assert time.monotonic() < deadline, f"no event saying {text!r}"
        time.sleep(0.1)


def _connection_errors(writers: Writers) -> list[str]:
    return [error for error in writers.errors() if error.startswith(("ConnectionError", "TimeoutError"))]


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("stop", ["kill", "sigterm"])
def test_a_live_run_loses_no_write_across_a_coordinator_kill(tmp_path, eve, server_factory, stop):
    """SIGKILL, or a graceful SIGTERM (issue 24): either way the interlay keeps serving and
    spooling the dirty keys, and the next coordinator takes the run over without a full compare."""
    live = Live(eve, server_factory, wpb.SOURCE_AUTHORITATIVE, keys=500, engines=(ENGINE, "valkey-8.1"))
    control_dir = Path(interlay_control_dir(str(eve.state)))
    restarted = None
    with Writers(live.port, threads=2) as writers:
        try:
            live.approve()
            live.wait_in_sync()
            writers.wait_ops(300)
            pids = interlay_pids(control_dir)["app"]
            if stop == "kill":
                _kill(eve)
            else:
                eve.stop(reap_interlays=False)
                assert eve.process.returncode == 0 and "left serving" in eve.log()  # type: ignore[union-attr]
                # Detached before the run shut down: its tracking stays on, the proxy spools the writes.
                assert "dirty-key tracking off" not in eve.log()
            writers.wait_ops(300)  # dual writes go on with nobody supervising
            restarted = _restart(live, tmp_path, "eve-restarted")
            assert interlay_pids(control_dir)["app"] == pids
            _wait_event(live, "in sync")
            # It kept the dirty keys not re-copied yet: no full compare was needed.
            assert any("kept the" in e.message for e in live.events.events), [e.message for e in live.events.events]
            assert not any("comparing the sides" in e.message for e in live.events.events)
            writers.wait_ops(300)
            assert live.traffic(100, cutover=True).state == wpb.CUT_OVER
            writers.wait_ops(300)
        finally:
            writers.finish()
        assert not _connection_errors(writers), _connection_errors(writers)[:3]
        live.settle()
        target = live.target.client()
        writers.check_counters(target)
        assert_identical(live.source.client(), target, "source and target")
        assert live.stub.Verify(wpb.VerifyRequest(run=live.run)).clean
        assert live.stub.Complete(wpb.CompleteRequest(run=live.run, notes="ok")).state == wpb.COMPLETED
    if restarted is not None:
        restarted.stop()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_coordinator_killed_after_the_cutover_keeps_the_target_authoritative(tmp_path, eve, server_factory):
    """Part 6: the interlay kept serving with the target authoritative; the restarted run
    compares the source to the target in full, and a rollback leaves the source exact."""
    live = Live(eve, server_factory, wpb.SOURCE_AUTHORITATIVE, keys=500, engines=(ENGINE, "valkey-8.1"))
    restarted = None
    with Writers(live.port, threads=2) as writers:
        try:
            live.approve()
            live.wait_in_sync()
            writers.wait_ops(200)
            assert live.traffic(100, cutover=True).state == wpb.CUT_OVER
            writers.wait_ops(200)
            _kill(eve)
            # Written on the target alone while nobody tracked: the source lacks them for a moment.
            live.source.client().set("w0:source-only", "stale")
            writers.wait_ops(300)
            restarted = _restart(live, tmp_path, "eve-restarted")
            _wait_event(live, "caught up after the restart")
            assert live.state() == wpb.CUT_OVER
            writers.wait_ops(300)
        finally:
            writers.finish()
        assert not _connection_errors(writers), _connection_errors(writers)[:3]
        live.settle()
        writers.check_counters(live.target.client())
        assert live.stub.Rollback(wpb.RollbackRequest(run=live.run, reason="test")).state == wpb.ROLLED_BACK
        source = live.source.client()
        writers.check_counters(source)
        assert not source.exists("w0:source-only"), "the full compare did not reach the source"
        assert_identical(source, live.target.client(), "source and target after the rollback")
    if restarted is not None:
        restarted.stop()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_an_interlay_started_again_after_the_cutover_fronts_the_target(tmp_path, eve, server_factory):
    """Part 6, the machine rebooted: coordinator and interlay both killed; started again, the
    interlay fronts the target as authoritative, and the source is brought back to it."""
    live = Live(eve, server_factory, wpb.SOURCE_AUTHORITATIVE, keys=500, engines=(ENGINE, "valkey-8.1"))
    control_dir = Path(interlay_control_dir(str(eve.state)))
    restarted = None
    with Writers(live.port, threads=2) as writers:
        try:
            live.approve()
            live.wait_in_sync()
            writers.wait_ops(200)
            assert live.traffic(100, cutover=True).state == wpb.CUT_OVER
            writers.wait_ops(200)
            pids = interlay_pids(control_dir)["app"]
            _kill(eve)
            reap_interlays(control_dir)
            restarted = _restart(live, tmp_path, "eve-restarted")
            assert interlay_pids(control_dir)["app"] != pids
            _wait_event(live, "caught up after the restart")
            writers.wait_ops(300)
        finally:
            writers.finish()
        live.settle()
        target = live.target.client()
        writers.check_counters(target)
        # Every write after the restart reached the target first: the source only follows it.
        assert target.get("after-restart") is None
        client = redis.Redis(host=LOOPBACK, port=live.port)
        client.set("after-restart", 1)
        assert target.get("after-restart") == b"1"
        assert live.stub.Verify(wpb.VerifyRequest(run=live.run)).clean
        assert_identical(live.source.client(), target, "source and target")
        assert live.stub.Complete(wpb.CompleteRequest(run=live.run, notes="ok")).state == wpb.COMPLETED
    if restarted is not None:
        restarted.stop()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_rollback_of_a_failed_run_takes_over_the_route_its_interlay_kept(tmp_path, eve, server_factory):
    """TARGET_AUTHORITATIVE in sync, then the run failed and the coordinator died: the interlay
    kept the target authoritative; a Rollback after the restart compares the sides, flips
    back, and leaves every write on the source."""
    live = Live(eve, server_factory, wpb.TARGET_AUTHORITATIVE, keys=300, engines=(ENGINE, "valkey-8.1"))
    restarted = None
    with Writers(live.port, threads=2) as writers:
        try:
            live.approve()
            live.wait_in_sync()
            writers.wait_ops(300)
            _kill(eve)
            store = Store(str(eve.state))
            store.set_run_state(live.run, "FAILED", "failed on purpose by the test")
            store.close()
            live.target.client().set("w0:target-only", "new")  # on the authoritative side alone
            writers.wait_ops(200)
            restarted = _restart(live, tmp_path, "eve-restarted")
            assert live.state() == wpb.FAILED
            writers.wait_ops(200)
            assert live.stub.Rollback(wpb.RollbackRequest(run=live.run, reason="test")).state == wpb.ROLLED_BACK
            writers.wait_ops(200)
        finally:
            writers.finish()
        assert not _connection_errors(writers), _connection_errors(writers)[:3]
        live.settle()
        source = live.source.client()
        writers.check_counters(source)
        assert source.get("w0:target-only") == b"new"
        live.assert_forwarded_to_source_alone("after-rollback")
    if restarted is not None:
        restarted.stop()


def test_an_application_connection_survives_a_sigterm_of_eve_serve_and_a_restart(tmp_path, eve, server_factory):
    """Issue 24: a graceful stop (SIGTERM, what systemd and Kubernetes send) leaves the interlay
    serving, detached as after a crash; the next coordinator re-attaches to the same process."""
    source = server_factory(ENGINE)
    _endpoint(eve, "src", source.port)
    port = free_port()
    eve.interlays().CreateInterlay(ipb.CreateInterlayRequest(id="app", endpoint="src", port=port))
    eve.interlays().StartInterlay(ipb.StartInterlayRequest(id="app"))
    client = _client(port)
    assert client.incr("counter") == 1
    control_dir = Path(interlay_control_dir(str(eve.state)))
    pids = interlay_pids(control_dir)["app"]

    eve.stop(reap_interlays=False)  # SIGTERM, and waits for eve serve to exit
    assert eve.process.returncode == 0, eve.log()  # type: ignore[union-attr]
    assert "left serving" in eve.log()
    for expected in range(2, 12):
        assert client.incr("counter") == expected  # the same connection, with no coordinator
    assert interlay_pids(control_dir)["app"] == pids

    restarted = EveServer(state=eve.state, log_path=tmp_path / "eve-restarted.log").start()
    try:
        interlay = restarted.interlays().GetInterlay(ipb.GetInterlayRequest(id="app"))
        assert interlay.state == ipb.INTERLAY_RUNNING
        assert interlay_pids(control_dir)["app"] == pids, "a new process instead of the one that kept serving"
        assert "re-attached" in restarted.log()
        assert client.incr("counter") == 12
        # Asked to stop (StopInterlay), it does.
        restarted.interlays().StopInterlay(ipb.StopInterlayRequest(id="app"))
        with pytest.raises(redis.ConnectionError):
            client.incr("counter")
        assert not interlay_pids(control_dir)
    finally:
        restarted.stop()
    assert source.client().get("counter") == b"12"


def test_stop_interlays_on_exit_stops_them_with_eve_serve(tmp_path, server_factory):
    source = server_factory(ENGINE)
    eve = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log",
                    extra_args=["--stop-interlays-on-exit"]).start()
    control_dir = Path(interlay_control_dir(str(eve.state)))
    try:
        _endpoint(eve, "src", source.port)
        port = free_port()
        eve.interlays().CreateInterlay(ipb.CreateInterlayRequest(id="app", endpoint="src", port=port))
        eve.interlays().StartInterlay(ipb.StartInterlayRequest(id="app"))
        client = _client(port)
        assert client.incr("counter") == 1
        pids = interlay_pids(control_dir)["app"]
        eve.stop(reap_interlays=False)
        assert eve.process.returncode == 0, eve.log()  # type: ignore[union-attr]
        assert not any(os.path.exists(f"/proc/{pid}") and "zombie" not in Path(f"/proc/{pid}/status").read_text()
                       .lower() for pid in pids)
        with pytest.raises(redis.ConnectionError):
            client.incr("counter")
    finally:
        eve.stop()
        reap_interlays(control_dir)
