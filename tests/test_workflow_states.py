"""The run state machine's transition table, in process (no servers, no gRPC): every allowed
transition accepted, every other one refused with StateError, through the table's check
and through ``Workflow._transition`` on a real (SQLite) store."""

from __future__ import annotations

import inspect
import itertools

import pytest

from eve.core.errors import StateError
from eve.core.store import Store
from eve.workflow import states
from eve.workflow.runs import Workflow
from eve.workflow.states import (
    EXECUTING,
    ROLLBACKABLE,
    TERMINAL,
    TRANSITIONS,
    RunState,
    can_transition,
    check_transition,
)

pytestmark = pytest.mark.timeout(60)

ALL_PAIRS = list(itertools.product(RunState, RunState))
ALLOWED = [(a, b) for a, b in ALL_PAIRS if b in TRANSITIONS[a]]
REFUSED = [(a, b) for a, b in ALL_PAIRS if b not in TRANSITIONS[a]]


def _id(pair: tuple[RunState, RunState]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


# The table as DESIGN.md section 7 draws it, written out once more by hand so that a
# change to the table is a change to this test too.
EXPECTED = {
    "CREATED": {"CONFIGURED", "CANCELLED", "ROLLING_BACK"},
    "CONFIGURED": {"CONFIGURED", "PREPARING", "CANCELLED", "ROLLING_BACK"},
    "PREPARING": {"READY", "FAILED", "CANCELLED", "ROLLING_BACK"},
    "READY": {"CONFIGURED", "PREPARING", "APPROVED", "CANCELLED", "ROLLING_BACK"},
    "APPROVED": {"COPYING", "FAILED", "CANCELLED", "ROLLING_BACK"},
    "COPYING": {"SYNCING", "CUT_OVER", "FAILED", "CANCELLED", "ROLLING_BACK"},
    "SYNCING": {"CUTTING_OVER", "FAILED", "CANCELLED", "ROLLING_BACK"},
    "CUTTING_OVER": {"CUT_OVER", "SYNCING", "FAILED", "ROLLING_BACK"},
    "CUT_OVER": {"COMPLETED", "ROLLING_BACK"},
    "COMPLETED": set(),
    "ROLLING_BACK": {"ROLLED_BACK", "FAILED"},
    "ROLLED_BACK": set(),
    "FAILED": {"CONFIGURED", "PREPARING", "COPYING", "CANCELLED", "ROLLING_BACK"},
    "CANCELLED": set(),
}


def test_the_table():
    assert set(TRANSITIONS) == set(RunState)
    assert {state.value: {to.value for to in targets} for state, targets in TRANSITIONS.items()} == EXPECTED


def test_terminal_states_are_final():
    assert TERMINAL == {RunState.COMPLETED, RunState.ROLLED_BACK, RunState.CANCELLED}
    assert all(TRANSITIONS[state] == frozenset() for state in TERMINAL)
    assert [state for state in RunState if not TRANSITIONS[state]] == sorted(TERMINAL, key=list(RunState).index)
    # Every other state can still end: rollback, cancel or failure leads out of it.
    for state in set(RunState) - TERMINAL:
        assert TRANSITIONS[state] & {RunState.ROLLING_BACK, RunState.CANCELLED, RunState.FAILED}, state


def test_every_state_reachable_from_created():
    seen, frontier = {RunState.CREATED}, [RunState.CREATED]
    while frontier:
        for to in TRANSITIONS[frontier.pop()]:
            if to not in seen:
                seen.add(to)
                frontier.append(to)
    assert seen == set(RunState)


def test_rollback_until_completed():
    assert ROLLBACKABLE == set(RunState) - TERMINAL - {RunState.ROLLING_BACK}
    for state in RunState:
        assert can_transition(state, RunState.ROLLING_BACK) == (state in ROLLBACKABLE)


def test_executing_states():
    assert EXECUTING == {RunState.APPROVED, RunState.COPYING, RunState.SYNCING, RunState.CUTTING_OVER,
                         RunState.CUT_OVER, RunState.ROLLING_BACK}
    assert not EXECUTING & TERMINAL and RunState.FAILED not in EXECUTING and RunState.READY not in EXECUTING


def test_every_state_has_a_comment():
    source = inspect.getsource(RunState)
    for state in RunState:
        line = next(line for line in source.splitlines() if line.strip().startswith(f"{state.name} ="))
        comment = line.partition("#")[2].strip()
        assert len(comment) > 10, f"{state.name} has no comment saying what it means"


@pytest.mark.parametrize("pair", ALLOWED, ids=_id)
def test_allowed_transition_accepted(pair):
    current, to = pair
    assert can_transition(current, to)
    check_transition("r", current, to)


@pytest.mark.parametrize("pair", REFUSED, ids=_id)
def test_other_transition_refused(pair):
    current, to = pair
    assert not can_transition(current, to)
    with pytest.raises(StateError, match=rf"^run 'r' is {current.value}; it cannot go to {to.value}$"):
        check_transition("r", current, to)


@pytest.fixture
def workflow(tmp_path):
    store = Store(tmp_path / "eve.db")
    yield Workflow(store)
    store.close()


def _at(workflow: Workflow, run_id: str, state: RunState) -> None:
    workflow.store.create_run(run_id, state.value)


def test_workflow_transitions_follow_the_table(workflow):
    """Every pair through the one place that changes a state: accepted ones are stored with
    their event, refused ones change nothing."""
    for index, (current, to) in enumerate(ALL_PAIRS):
        run_id = f"r{index}"
        _at(workflow, run_id, current)
        if (current, to) in ALLOWED:
            record = workflow._transition(run_id, to, "test")
            assert record.state == to.value
            event = workflow.store.events(run_id)[-1]
            assert event["type"] == "state" and event["attributes"] == {"from": current.value, "to": to.value}
            assert event["state"] == to.value
        else:
            with pytest.raises(StateError, match=f"it cannot go to {to.value}"):
                workflow._transition(run_id, to, "test")
            assert workflow.store.get_run(run_id).state == current.value
            assert workflow.store.events(run_id) == []


def test_terminal_transition_releases_the_endpoints(workflow):
    store = workflow.store
    store.create_endpoint("src", "redis", {"target": {"host": "h", "password": "p"}}, "")
    for index, terminal in enumerate(sorted(TERMINAL)):
        run_id = f"t{index}"
        start = RunState.CUT_OVER if terminal == RunState.COMPLETED else RunState.ROLLING_BACK \
            if terminal == RunState.ROLLED_BACK else RunState.CONFIGURED
        store.create_run(run_id, start.value, endpoints={"src": "source"})
        store.snapshot_run_endpoints(run_id)
        assert [e.endpoint for e in store.run_endpoints(run_id)] == ["src"]
        workflow._transition(run_id, terminal)
        assert store.run_endpoints(run_id) == [] and store.endpoint_users("src") == []
        with store.transaction() as db:
            assert db.execute("SELECT COUNT(*) FROM run_snapshots WHERE run_id = ?", (run_id,)).fetchone()[0] == 0, \
                "a finished run keeps no copy of the endpoint's password"


def test_one_place_checks_transitions():
    """Only states.py holds the table; runs.py re-exports it rather than keeping its own."""
    from eve.workflow import runs

    assert runs.TRANSITIONS is states.TRANSITIONS and runs.RunState is states.RunState
    assert runs.TERMINAL is states.TERMINAL
    assert "TRANSITIONS[" not in inspect.getsource(runs), "runs.py asks can_transition/check_transition"
