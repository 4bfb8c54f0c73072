"""The run state machine (DESIGN.md section 7, STYLE.md habit 6): one persisted enum with
a comment on each state, one table of the transitions it allows, and one function that
checks a transition against the table (``check_transition``; ``Workflow._transition`` is
its only caller that changes a state).

The sets below name the groups of states other parts ask about (which runs hold their
endpoints, which carry live traffic, which can still be rolled back), so that no caller
keeps a list of state names of its own.
"""

from __future__ import annotations

from enum import StrEnum

from eve.core.errors import StateError

__all__ = [
    "RunState",
    "TRANSITIONS",
    "TERMINAL",
    "ROLLBACKABLE",
    "EXECUTING",
    "LIVE_STATES",
    "UNPREPARED",
    "can_transition",
    "check_transition",
]


class RunState(StrEnum):
    CREATED = "CREATED"            # the run exists; no setup yet
    CONFIGURED = "CONFIGURED"      # a valid setup is saved; may be submitted again
    PREPARING = "PREPARING"        # compatibility checks, keyspace analysis and the test run are running
    READY = "READY"                # prepared: the operator reviews issues, analysis and test run
    APPROVED = "APPROVED"          # approved: execution is starting
    COPYING = "COPYING"            # the bulk copy runs (resumable from its checkpoints)
    SYNCING = "SYNCING"            # online strategies: dirty keys re-copied, target in sync
    CUTTING_OVER = "CUTTING_OVER"  # online strategies: traffic moving to the target
    CUT_OVER = "CUT_OVER"          # the target holds the data (and, online, the traffic); verify, then complete
    COMPLETED = "COMPLETED"        # accepted; the source is released
    ROLLING_BACK = "ROLLING_BACK"  # returning all traffic to the source
    ROLLED_BACK = "ROLLED_BACK"    # the source is authoritative again
    FAILED = "FAILED"              # stopped by an error; failure_reason says which
    CANCELLED = "CANCELLED"        # stopped by the operator


# A terminal run never changes again and releases its endpoints.
TERMINAL = frozenset({RunState.COMPLETED, RunState.ROLLED_BACK, RunState.CANCELLED})
# Rollback is possible until the run is completed (and is not already rolling back).
ROLLBACKABLE = frozenset(RunState) - TERMINAL - {RunState.ROLLING_BACK}

_FORWARD: dict[RunState, frozenset[RunState]] = {
    RunState.CREATED: frozenset({RunState.CONFIGURED, RunState.CANCELLED}),
    RunState.CONFIGURED: frozenset({RunState.CONFIGURED, RunState.PREPARING, RunState.CANCELLED}),
    RunState.PREPARING: frozenset({RunState.READY, RunState.FAILED, RunState.CANCELLED}),
    RunState.READY: frozenset({RunState.CONFIGURED, RunState.PREPARING, RunState.APPROVED, RunState.CANCELLED}),
    RunState.APPROVED: frozenset({RunState.COPYING, RunState.FAILED, RunState.CANCELLED}),
    RunState.COPYING: frozenset({RunState.SYNCING, RunState.CUT_OVER, RunState.FAILED, RunState.CANCELLED}),
    RunState.SYNCING: frozenset({RunState.CUTTING_OVER, RunState.FAILED, RunState.CANCELLED}),
    # A cutover that cannot drain the backlog in time goes back to SYNCING, clients unharmed.
    RunState.CUTTING_OVER: frozenset({RunState.CUT_OVER, RunState.SYNCING, RunState.FAILED}),
    RunState.CUT_OVER: frozenset({RunState.COMPLETED}),
    RunState.COMPLETED: frozenset(),
    RunState.ROLLING_BACK: frozenset({RunState.ROLLED_BACK, RunState.FAILED}),
    RunState.ROLLED_BACK: frozenset(),
    # A failed copy can be approved again: it resumes from its checkpoints.
    RunState.FAILED: frozenset({RunState.CONFIGURED, RunState.PREPARING, RunState.COPYING, RunState.CANCELLED}),
    RunState.CANCELLED: frozenset(),
}

# The allowed transitions: the forward table, plus ROLLING_BACK from every rollbackable state.
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    state: targets | ({RunState.ROLLING_BACK} if state in ROLLBACKABLE else frozenset())
    for state, targets in _FORWARD.items()
}

# Approved and not yet ended: the run reads and writes its endpoints (the bulk copy, the
# live run, verification, a rollback) from the configs it snapshotted, so UpdateEndpoint
# of them is refused, and an online run's interlay carries its traffic, so the interlay
# cannot be stopped or deleted. Not FAILED: nothing runs then, and the operator may have
# to fix an endpoint (a rotated password) before trying again. Not READY either: nothing
# runs yet, and Approve refuses an endpoint changed since Prepare checked it.
EXECUTING = frozenset({RunState.APPROVED, RunState.COPYING, RunState.SYNCING, RunState.CUTTING_OVER,
                       RunState.CUT_OVER, RunState.ROLLING_BACK})
# States an online run passes with live traffic through its interlay.
LIVE_STATES = frozenset({RunState.COPYING, RunState.SYNCING, RunState.CUTTING_OVER, RunState.CUT_OVER})
# States before Prepare produced a compatibility report.
UNPREPARED = frozenset({RunState.CREATED, RunState.CONFIGURED, RunState.PREPARING})


def can_transition(current: RunState, to: RunState) -> bool:
    return to in TRANSITIONS[current]


def check_transition(run_id: str, current: RunState, to: RunState) -> None:
    """StateError unless the table allows ``current -> to``."""
    if not can_transition(current, to):
        raise StateError(f"run {run_id!r} is {current.value}; it cannot go to {to.value}")
