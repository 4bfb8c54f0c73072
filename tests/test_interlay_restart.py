"""A proxy process that dies is started again by its supervisor at once (issue 19, item 1):
on the same ports, under the interlay's last route, with dirty-key tracking on when a run
tracked its writes (and the run told to compare in full: the dead process's unreported keys
are gone); with two processes per interlay the other serves meanwhile; a crash loop fails the
interlay loudly. Real servers and real proxy processes killed with SIGKILL.

The live runs through all of it (writers, every phase, Complete and Rollback) are in
test_interlay_restart_runs.py."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
from proxies import LOOPBACK, endpoint_for, wait_for
from servers import free_port

from eve.core.endpoints import ConnectionSpec
from eve.live.backlog import DirtyKeys
from eve.live.interlays import FAILED, RUNNING, InterlaySupervisor
from eve.live.run import LiveOptions, route_for
from proxy.routing import TARGET

ENGINE = "redis-7.0"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
RECONNECT_SECONDS = 2.0


def _client(port: int) -> redis.Redis:
    return redis.Redis(host=LOOPBACK, port=port, socket_timeout=5, socket_connect_timeout=1, retry=None)


def _reconnect_within(port: int, seconds: float) -> float:
    """Seconds until a new connection on ``port`` answers PING; fails after ``seconds``."""
    start = time.monotonic()
    while True:
        try:
            if _client(port).ping():
                return time.monotonic() - start
        except redis.ConnectionError:
            pass
        assert time.monotonic() - start < seconds, f"port {port} did not answer again within {seconds:g}s"
        time.sleep(0.02)


def test_a_killed_proxy_is_back_on_its_port_under_its_route_with_tracking(server_factory) -> None:
    source, target = server_factory(ENGINE), server_factory(ENGINE)
    states: list = []
    restarts: list = []
    supervisor = InterlaySupervisor(stats_interval=0.2,
                                    on_state=lambda *args: states.append(args))
    supervisor.on_restart = lambda interlay_id, reason: restarts.append((interlay_id, reason))
    port = free_port()
    try:
        supervisor.start("it", port, LOOPBACK, endpoint_for(source.host, source.port), 100)
        dirty = DirtyKeys()
        supervisor.track_dirty("it", dirty)
        options = LiveOptions(run_id="r", interlay_id="it", source=ConnectionSpec(source.host, source.port),
                              target=ConnectionSpec(target.host, target.port))
        # Cut over: the target takes the writes, none to the source.
        supervisor.route("it", route_for(options, TARGET, dual=False))
        assert supervisor.dirty_barrier("it", 10)   # answered after the route: it applies from here on
        _client(port).set("before", "1")
        assert target.client().get("before") == b"1" and source.client().get("before") is None
        old = supervisor.status("it").pids[0]

        os.kill(old, signal.SIGKILL)
        _reconnect_within(port, RECONNECT_SECONDS)
        wait_for(lambda: supervisor.restarts("it")[0] == 1, what="the restart counted")
        status = supervisor.status("it")
        assert status.state == RUNNING and status.pids[0] != old and status.ports == (port,)
        assert supervisor.running("it")
        assert "exited with code -9" in supervisor.restarts("it")[1]
        assert restarts and restarts[0][0] == "it"
        assert states and states[-1][:2] == ("it", RUNNING) and "restarted after" in states[-1][2]
        # The dead process's unreported keys are gone: the run is told to compare in full.
        assert dirty.overflowed
        dirty.reset_overflow()

        # Under the route it had: a write after the restart lands on the target alone, and is tracked.
        _client(port).set("after", "2")
        assert target.client().get("after") == b"2" and source.client().get("after") is None
        assert supervisor.dirty_barrier("it", 10)
        assert dirty.backlog >= 1 and not dirty.overflowed
    finally:
        supervisor.stop_all()


def test_with_two_workers_the_other_serves_while_one_restarts(server_factory) -> None:
    server = server_factory(ENGINE)
    supervisor = InterlaySupervisor(workers=2, stats_interval=0.2)
    port = free_port()
    try:
        supervisor.start("pair", port, LOOPBACK, endpoint_for(server.host, server.port), 100)
        pids = supervisor.status("pair").pids
        os.kill(pids[0], signal.SIGKILL)
        # Every new client is served meanwhile (one connect may still reach the dying listener).
        served = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                served += bool(_client(port).ping())
            except redis.ConnectionError:
                served += bool(_client(port).ping())
        assert served > 0
        wait_for(lambda: supervisor.restarts("pair")[0] == 1, timeout=RECONNECT_SECONDS * 5, what="restart")
        now = supervisor.status("pair").pids
        assert now[1] == pids[1] and now[0] not in pids and all(now)
        assert supervisor.status("pair").state == RUNNING
        assert _client(port).ping()
    finally:
        supervisor.stop_all()


def test_a_proxy_that_cannot_be_restarted_fails_the_interlay_with_the_reason(server_factory) -> None:
    """restart_limit=0 stands for a crash loop: the first death is one too many."""
    server = server_factory(ENGINE)
    states: list = []
    supervisor = InterlaySupervisor(stats_interval=0.2, restart_limit=0, on_state=lambda *args: states.append(args))
    port = free_port()
    try:
        supervisor.start("loop", port, LOOPBACK, endpoint_for(server.host, server.port), 100)
        os.kill(supervisor.status("loop").pids[0], signal.SIGKILL)
        wait_for(lambda: supervisor.status("loop").state == FAILED, what="FAILED")
        reason = supervisor.status("loop").reason
        assert "exited with code -9" in reason and "crash loop" in reason and "not restarted again" in reason
        assert not supervisor.running("loop")
        assert states and states[-1][:2] == ("loop", FAILED) and states[-1][2] == reason
        with pytest.raises(redis.ConnectionError):
            _client(port).ping()
        # Started by hand, it serves again.
        assert supervisor.start("loop", port, LOOPBACK, endpoint_for(server.host, server.port), 100) == [port]
        assert _client(port).ping()
    finally:
        supervisor.stop_all()


# --------------------------------------------------------------------------- issue 19, item 4 (in part)


class _BrokenSupervisor(InterlaySupervisor):
    """Unit-test stand-in: a supervisor whose start fails with an error outside Eve's tree."""

    def start(self, *args, **kwargs):  # type: ignore[override]
        raise OSError(28, "No space left on device")


def _coordinator(tmp_path, supervisor, backend):
    from eve.core.store import Store
    from eve.workflow.registry import Coordinator

    store = Store(str(tmp_path / "eve.db"))
    coordinator = Coordinator(store, supervisor)
    coordinator.create_endpoint("src", "redis", {"target": {"host": backend.host, "port": backend.port}})
    return store, coordinator


def test_an_interlay_that_fails_to_start_is_failed_with_its_last_error(tmp_path, server_factory) -> None:
    store, coordinator = _coordinator(tmp_path, _BrokenSupervisor(), server_factory(ENGINE))
    try:
        coordinator.create_interlay("app", "src", free_port(), {})
        with pytest.raises(OSError):
            coordinator.start_interlay("app")
        record = store.get_interlay("app")
        assert record.state == "FAILED" and "No space left on device" in record.last_error
    finally:
        store.close()


def test_an_interlay_left_starting_fails_with_its_last_error_after_a_coordinator_restart(tmp_path, server_factory):
    """The state file says STARTING (a coordinator died while starting it, or could not record
    the outcome): the next coordinator starts it again, and records FAILED with the reason when
    that fails too, without stopping its own start."""
    store, coordinator = _coordinator(tmp_path, _BrokenSupervisor(), server_factory(ENGINE))
    try:
        coordinator.create_interlay("app", "src", free_port(), {})
        store.set_interlay_state("app", "STARTING")
        coordinator.restart_interlays()
        record = store.get_interlay("app")
        assert record.state == "FAILED" and "OSError" in record.last_error and "No space left" in record.last_error
    finally:
        store.close()


def test_a_re_attached_interlay_is_restarted_too_once_adopted(server_factory, tmp_path) -> None:
    """A coordinator that re-attached to an interlay another one started (issue 12) is told how
    to start its processes (``adopt``, as ``restart_interlays`` does), and restarts a dead one."""
    server = server_factory(ENGINE)
    control = tmp_path / "control"
    first = InterlaySupervisor(stats_interval=0.2, control_dir=control)
    second = InterlaySupervisor(stats_interval=0.2, control_dir=control)
    port = free_port()
    endpoint = endpoint_for(server.host, server.port)
    try:
        first.start("it", port, LOOPBACK, endpoint, 100)
        assert second.recover({"it"}) == ["it"]
        second.adopt("it", port, LOOPBACK, endpoint, 100)
        # (Two coordinators alive at once happen only here: the first must have seen it go first.)
        wait_for(lambda: first._interlays["it"].workers[0].taken_over, what="the first seeing the takeover")
        old = second.status("it").pids[0]
        os.kill(old, signal.SIGKILL)
        _reconnect_within(port, RECONNECT_SECONDS)
        wait_for(lambda: second.restarts("it")[0] == 1, what="the restart")
        assert second.status("it").state == RUNNING and second.status("it").pids[0] != old
        # The first coordinator had lost it to the second: it does not start another.
        wait_for(lambda: first.status("it").state == FAILED, what="the first coordinator letting it go")
        assert first.restarts("it")[0] == 0
        assert "another coordinator" in first.status("it").reason
    finally:
        second.stop_all()
        first.stop_all()
