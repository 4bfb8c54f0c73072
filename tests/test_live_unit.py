"""LiveRun's cutover and rollback steps against real servers, with a recording stand-in for
the interlay supervisor (the real one is exercised end to end in test_live.py)."""

from __future__ import annotations

import pytest

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import StateError
from eve.live.interlays import InterlayStatus
from eve.live.run import LiveOptions, LiveRun

pytestmark = pytest.mark.timeout(60)


class RecordingInterlays:
    """What LiveRun asks of an InterlaySupervisor, recorded; ``settles`` decides pauses."""

    def __init__(self, settles: bool = True) -> None:
        self.settles = settles
        self.calls: list[tuple] = []
        self.alive = True

    def track_dirty(self, interlay_id, dirty) -> None:
        self.calls.append(("track", dirty is not None))

    def dirty_barrier(self, interlay_id, timeout) -> bool:
        return True

    def route(self, interlay_id, route) -> None:
        self.calls.append(("route", route.authoritative, route.mirror_to, route.read_percent))

    def pause(self, interlay_id, timeout) -> bool:
        self.calls.append(("pause",))
        return self.settles

    def resume(self, interlay_id) -> None:
        self.calls.append(("resume",))

    def running(self, interlay_id) -> bool:
        return self.alive

    def status(self, interlay_id) -> InterlayStatus:
        return InterlayStatus(interlay_id, "RUNNING" if self.alive else "FAILED", "", (1,), (1,), ("x",))

    def stats(self, interlay_id) -> dict:
        return {"sides": []}


def spec(server) -> ConnectionSpec:
    return ConnectionSpec(server.host, server.port)


@pytest.fixture
def sides(server_factory):
    return server_factory("valkey-8.1"), server_factory("valkey-8.1")


def live_run(source, target, interlays, **options) -> LiveRun:
    events: list[str] = []
    run = LiveRun(LiveOptions(run_id="r", interlay_id="i", source=spec(source), target=spec(target), **options),
                  interlays, on_event=lambda type, message, attributes: events.append(message))
    run.events = events  # type: ignore[attr-defined]
    return run


def in_sync(run: LiveRun) -> LiveRun:
    run.start_tracking()
    run.start_sync()
    run.go_in_sync()
    return run


def test_cutover_drains_flips_and_syncs_back(sides):
    source, target = sides
    interlays = RecordingInterlays()
    run = live_run(source, target, interlays)
    run.start_tracking()
    source.client().set("written-during-copy", "1")
    run.dirty.mark(0, b"written-during-copy")
    run.start_sync()
    run.go_in_sync()
    run.cutover()
    assert target.client().get("written-during-copy") == b"1", "drained before the flip"
    assert interlays.calls[-3:] == [("pause",), ("route", "target", ("source",), 0), ("resume",)]
    target.client().set("written-after", "2")
    run.dirty.mark(0, b"written-after")
    assert run.wait_synced(10) and source.client().get("written-after") == b"2", "synced back to the source"
    run.rollback()
    assert interlays.calls[-5:] == [("pause",), ("route", "source", ("target",), 0), ("resume",),
                                    ("route", "source", (), 0), ("track", False)]


def test_cutover_aborts_when_clients_do_not_settle(sides):
    source, target = sides
    interlays = RecordingInterlays(settles=False)
    run = in_sync(live_run(source, target, interlays))
    with pytest.raises(StateError, match="still in flight"):
        run.cutover()
    assert run.authoritative == "source" and interlays.calls[-1] == ("resume",)
    assert not any(call[:2] == ("route", "target") for call in interlays.calls)
    run.close()


def test_cutover_aborts_when_the_backlog_cannot_drain(sides):
    source, target = sides
    interlays = RecordingInterlays()
    run = in_sync(live_run(source, target, interlays, drain_seconds=1.0))
    target.stop()
    source.client().set("stuck", "1")
    run.dirty.mark(0, b"stuck")
    with pytest.raises(StateError, match="did not drain"):
        run.cutover()
    assert run.authoritative == "source" and interlays.calls[-1] == ("resume",)
    assert run.dirty.backlog == 1, "nothing lost: the key waits for the target"
    run.close()


def test_an_interlay_that_died_is_noticed_and_rollback_goes_on_without_it(sides):
    source, target = sides
    interlays = RecordingInterlays()
    run = in_sync(live_run(source, target, interlays))
    run.cutover()
    target.client().set("on-target", "1")
    run.dirty.mark(0, b"on-target")
    interlays.alive = False
    with pytest.raises(StateError, match="no longer tracked"):
        run.check_sync()
    run.rollback()
    assert source.client().get("on-target") == b"1", "the reverse sync's backlog reached the source"
    assert run.authoritative == "source" and "forwards to the source" in run.events[-1]
