"""The guided migration workflow (DESIGN.md section 7): runs, their persisted
state machine, setup, prepare, review, approval, execution, verification,
completion, rollback, and the events that tell all of it.

Every state change goes through ``Workflow._transition``, which checks it
against the table of ``eve.workflow.states`` and records a ``state`` event in
the same breath. A run works from the typed ``RunSetup`` it was given and from
the snapshot of its endpoints' configs taken when Prepare starts
(``eve.workflow.setup``).
Long work (prepare, the copy) runs on threads of this process; after a
coordinator restart ``Workflow.resume`` picks every unfinished run up where it
was (a copying run continues from its checkpoints).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
import uuid
from contextlib import AbstractContextManager
from enum import Enum
from typing import Any, Callable, Iterator, Mapping

from eve.bulk.error_keys import copy_failure
from eve.bulk.pipeline import (
    BulkCopy,
    BulkOptions,
    CopyStopped,
    Progress,
    retry_error_keys,
)
from eve.core import endpoints as endpoint_model
from eve.core import telemetry
from eve.core.endpoints import EndpointConfig
from eve.core.enums import Strategy, WriteConsistency
from eve.core.errors import ConfigError, EveError, NotFoundError, StateError
from eve.core.frames import ErrorKeyRow
from eve.core.store import RunRecord, Store
from eve.live.run import LiveOptions, LiveRun, read_clusters, route_for
from eve.prepare.compat import ACKNOWLEDGEABLE
from eve.redis.cluster import refusal
from eve.workflow.setup import ROLE_FIELDS, RunSetup, endpoint_changes, guided_setup, is_migrate_job
from eve.workflow.states import (
    LIVE_STATES,
    ROLLBACKABLE,
    TERMINAL,
    UNPREPARED,
    TRANSITIONS,
    RunState,
    can_transition,
    check_transition,
)
from proxy.routing import TARGET
from scanner.options import DEFAULT_BIG_KEY_THRESHOLD_BYTES

__all__ = ["RunState", "TRANSITIONS", "TERMINAL", "Workflow"]

log = logging.getLogger("eve.workflow.runs")


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_ERROR_KEY_EVENTS = 10_000
PROGRESS_EVENT_SECONDS = 2.0
CONFIRM_SECONDS = 0.25     # how often a live run tells its interlay which dirty keys are re-copied
VERIFY_DRAIN_SECONDS = 30.0
# The reason of a verification error key that Verify did not overwrite (issue 19, item 2).
OUTSIDE_WRITE = ("written outside the interlay after the cutover (no write through it while the sides were "
                 "compared twice): not overwritten from the target; fix it by hand, or Complete with "
                 "accept_differences")
# States after which a coordinator restart resumes the run's work on its endpoints.
_RESUMED_WORK = frozenset({RunState.APPROVED, RunState.COPYING, RunState.SYNCING})
# What a run refused because an endpoint changed under it can do next.
_CHANGED_ENDPOINT_HINT = ("the run works from the endpoints as they were approved: put the endpoint back as it was "
                          "and Approve again, or Prepare the run again to check and use it as it is now")


# -- the workflow -------------------------------------------------------------------------


class Workflow:
    def __init__(self, store: Store, *, restorers_default: int = 2, interlays: Any = None, ray: Any = None) -> None:
        """``interlays``: the coordinator's ``InterlaySupervisor`` (online strategies need it); ``ray``: an
        ``eve.bulk.ray_runner.RayRunner`` that runs the bulk copy and Verify of every run (``eve serve --ray``)."""
        self.store = store
        self.ray = ray
        self.restorers_default = restorers_default
        self.interlays = interlays
        self._live: dict[str, LiveRun] = {}
        self._changed = threading.Condition()
        self._lock = threading.RLock()
        self._threads: dict[str, threading.Thread] = {}
        self._stops: dict[str, threading.Event] = {}
        self._progress: dict[str, Progress] = {}
        self._error_key_events: dict[str, int] = {}
        if interlays is not None and hasattr(interlays, "run_route"):
            # Every start of an interlay takes the route of the run carrying its traffic (issue 19).
            interlays.run_route = self.interlay_route
            interlays.on_restart = self._interlay_restarted

    # -- records and transitions ----------------------------------------------------------

    def get(self, run_id: str) -> RunRecord:
        if not isinstance(run_id, str) or not run_id:
            raise ConfigError("a run id is required", field="run")
        return self.store.get_run(run_id)

    def list(self) -> list[RunRecord]:
        """The guided runs (``eve migrate`` jobs sharing the state file are not among them)."""
        return [record for record in self.store.list_runs() if not is_migrate_job(record.setup)]

    def state(self, run_id: str) -> RunState:
        return RunState(self.get(run_id).state)

    def _event(self, run_id: str, type: str, message: str, attributes: Mapping[str, Any] | None = None) -> None:
        state = self.store.get_run(run_id).state
        self.store.append_event(run_id, type, message, state, {k: str(v) for k, v in (attributes or {}).items()})
        with self._changed:
            self._changed.notify_all()

    def _transition(self, run_id: str, to: RunState, message: str = "", *, failure_reason: str = "") -> RunRecord:
        with self._lock:
            current = self.state(run_id)
            check_transition(run_id, current, to)
            attributes = {"from": current.value, "to": to.value,
                          **({"reason": failure_reason} if failure_reason else {})}
            record = self.store.set_run_state(run_id, to.value, failure_reason,
                                              event=("state", message or f"{current.value} -> {to.value}", attributes))
            if to in TERMINAL:
                self.store.release_run_endpoints(run_id)
        with self._changed:
            self._changed.notify_all()
        log.info("run %s %s -> %s %s", run_id, current.value, to.value, failure_reason)
        return record

    def _require(self, run_id: str, *states: RunState, doing: str) -> RunRecord:
        record = self.get(run_id)
        if RunState(record.state) not in states:
            raise StateError(f"run {run_id!r} is {record.state}; {doing} needs it "
                             f"{' or '.join(s.value for s in states)}")
        return record

    # -- create, setup ----------------------------------------------------------------------

    def create(self, run_id: str = "", description: str = "") -> RunRecord:
        run_id = run_id or f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        if not _RUN_ID.match(run_id):
            raise ConfigError(f"{run_id[:80]!r} is not a valid run id (1-63 letters, digits, '.', '_', '-')",
                              field="id")
        record = self.store.create_run(run_id, RunState.CREATED.value, None, description)
        self._event(run_id, "state", "run created", {"to": RunState.CREATED.value})
        return record

    def submit_setup(self, run_id: str, setup: RunSetup) -> RunRecord:
        """``setup`` comes from ``eve.workflow.setup.parse_setup``; here the endpoints and the
        interlay it names are checked against the store."""
        self._require(run_id, RunState.CREATED, RunState.CONFIGURED, RunState.READY, RunState.FAILED,
                      doing="SubmitSetup")
        roles = setup.roles
        for name, role in roles.items():
            try:
                endpoint_model.parse_config(self.store.get_endpoint(name).config)
            except NotFoundError:
                raise ConfigError(f"no endpoint named {name!r}", field=ROLE_FIELDS[role]) from None
        if setup.interlay:
            interlay = self.store.get_interlay(setup.interlay)
            if interlay.endpoint != setup.source:
                raise ConfigError(f"interlay {interlay.id!r} fronts {interlay.endpoint!r}, not the source "
                                  f"{setup.source!r}", field="setup.interlay")
        self.store.set_run_setup(run_id, setup.to_stored(), roles)
        record = self._transition(run_id, RunState.CONFIGURED, "setup submitted")
        self._event(run_id, "setup", "setup saved", {"source": setup.source, "target": setup.target,
                                                     "strategy": setup.strategy.value})
        return record

    def setup(self, record: RunRecord) -> RunSetup | None:
        """The typed setup of a run record (None before SubmitSetup and for ``eve migrate`` jobs)."""
        return guided_setup(record.setup)

    def _setup(self, run_id: str) -> RunSetup:
        setup = self.setup(self.get(run_id))
        if setup is None:
            raise StateError(f"run {run_id!r} has no setup: SubmitSetup first")
        return setup

    def _configs(self, run_id: str) -> dict[str, EndpointConfig]:
        """The endpoint configs the run works from: its snapshot, by endpoint name."""
        endpoints = self.store.run_endpoints(run_id)
        if any(endpoint.snapshot is None for endpoint in endpoints):
            # Prepared by an Eve that took no snapshot: pin the endpoints as they are now.
            endpoints = self.store.snapshot_run_endpoints(run_id)
            self._event(run_id, "setup", "endpoint configs pinned for the rest of the run (it was prepared by an "
                        "older Eve, which kept none)")
        return {endpoint.endpoint: endpoint_model.parse_config(endpoint.snapshot) for endpoint in endpoints}

    def _endpoint_changes(self, run_id: str, since: str) -> str:
        return endpoint_changes(self.store.run_endpoints(run_id), since)

    # -- prepare ----------------------------------------------------------------------------

    def prepare(self, run_id: str) -> RunRecord:
        self._require(run_id, RunState.CONFIGURED, RunState.READY, RunState.FAILED, doing="Prepare")
        # Prepare checks the endpoints as they are now; the run works from these configs from here on.
        self.store.snapshot_run_endpoints(run_id)
        record = self._transition(run_id, RunState.PREPARING, "prepare started")
        self._spawn(run_id, "prepare", self._prepare)
        return record

    def _prepare(self, run_id: str) -> None:
        from eve.prepare.analysis import analyze
        from eve.prepare.compat import check_compatibility
        from eve.prepare.testrun import test_run

        setup = self._setup(run_id)
        try:
            configs = self._configs(run_id)
            source, target = configs[setup.source], configs[setup.target]
            mirrors = [configs[m] for m in setup.mirror_targets]
            # The interlay's listener count is known once it runs (else the check is skipped).
            listeners = None
            cross_slot: list[dict[str, Any]] = []
            if setup.interlay and self.interlays is not None and self.interlays.running(setup.interlay):
                listeners = len(self.interlays.status(setup.interlay).ports)
                # What the applications sent through it during an earlier run (issue 14).
                cross_slot = self.interlays.stats(setup.interlay)["cross_slot"]
            # Until the checks finish, the run has no report: a Prepare that fails before
            # then must not leave an earlier (or an empty, "compatible") one standing.
            self.store.replace_issues(run_id, [])
            self.store.set_report(run_id, "compatibility", {"checked": False})
            # The analysis comes first: the compatibility report says how many keys of each type
            # will move as they are, transcoded or logically (KEY_MOVEMENT).
            self._event(run_id, "prepare", "keyspace analysis started")
            analysis = analyze(source)
            self.store.set_report(run_id, "analysis", analysis.to_dict())
            total = sum(db.keys for db in analysis.dbs)
            self._event(run_id, "analysis", f"{total} keys in {len(analysis.dbs)} databases",
                        {"keys": total, "big_keys": len(analysis.big_keys), "sampled": analysis.sampled})
            self._event(run_id, "prepare", "compatibility checks started")
            found = check_compatibility(source, target, mirrors=mirrors, interlay_listeners=listeners,
                                        mode=setup.mode, conflict_policy=setup.conflict_policy,
                                        source_name=setup.source, target_name=setup.target,
                                        mirror_names=list(setup.mirror_targets), online=setup.online,
                                        keyspace_notifications=setup.keyspace_notifications, analysis=analysis,
                                        cross_slot=cross_slot)
            issues = []
            for index, issue in enumerate(found, start=1):
                issues.append({"id": f"{index}-{issue.code.lower()}", "code": issue.code, "blocking": issue.blocking,
                               "message": issue.message, "evidence": dict(issue.evidence)})
            self.store.replace_issues(run_id, issues)
            self.store.set_report(run_id, "compatibility", {"checked": True, "at": time.time(), "issues": len(issues)})
            for issue in issues:
                self._event(run_id, "issue", issue["message"], {"id": issue["id"], "code": issue["code"],
                                                                "blocking": issue["blocking"]})
            self._event(run_id, "prepare", "test run started")
            report = test_run(source, target, run_id=run_id, total_keys=total, mode=setup.mode)
            self.store.set_report(run_id, "testrun", _jsonable(dataclasses.asdict(report)))
            self._event(run_id, "testrun", f"test run: {report.summary()}; "
                        f"estimated {report.estimated_seconds:.0f}s for the full copy",
                        {"keys": report.keys, "failed": report.failed, "changed": report.changed_keys,
                         "estimated_seconds": f"{report.estimated_seconds:.1f}"})
        except EveError as exc:
            self._fail(run_id, f"prepare failed: {exc}")
            return
        self._transition(run_id, RunState.READY, "prepared: review compatibility, analysis and test run")

    def issues(self, run_id: str) -> list[dict[str, Any]]:
        self.get(run_id)
        return self.store.issues(run_id)

    def compatibility(self, run_id: str) -> tuple[list[dict[str, Any]], bool]:
        """The issues of the last completed compatibility check and whether none blocks. A run
        whose checks never completed (not prepared yet, or Prepare failed first) has no report:
        StateError saying why, never an empty report that reads as "compatible"."""
        record = self.get(run_id)
        issues = self.store.issues(run_id)
        marker = self.store.report(run_id, "compatibility")
        checked = marker["checked"] if isinstance(marker, dict) else \
            bool(issues) or RunState(record.state) not in UNPREPARED | {RunState.FAILED}  # runs from before the marker
        if not checked:
            why = f": {record.failure_reason}" if record.state == RunState.FAILED.value and record.failure_reason \
                else f" (it is {record.state}; Prepare makes one)"
            raise StateError(f"run {run_id!r} has no compatibility report{why}")
        return issues, not any(issue["blocking"] for issue in issues)

    def acknowledge(self, run_id: str, issue_id: str, notes: str) -> dict[str, Any]:
        self._require(run_id, RunState.READY, doing="AcknowledgeIssue")
        issue = next((i for i in self.store.issues(run_id) if i["id"] == issue_id), None)
        if issue is None:
            raise NotFoundError(f"run {run_id!r} has no issue {issue_id!r}")
        if issue["blocking"] and issue["code"] not in ACKNOWLEDGEABLE:
            raise StateError(f"issue {issue_id} ({issue['code']}) is blocking: resolve it and prepare again")
        if not notes.strip():
            raise ConfigError("acknowledging an issue needs notes saying why it is accepted", field="notes")
        self.store.acknowledge_issue(run_id, issue_id, notes)
        self._event(run_id, "issue", f"issue {issue_id} acknowledged", {"id": issue_id, "notes": notes})
        return next(i for i in self.store.issues(run_id) if i["id"] == issue_id)

    def report(self, run_id: str, kind: str) -> Any:
        record = self.get(run_id)
        body = self.store.report(run_id, kind)
        if body is None:
            raise StateError(f"run {run_id!r} has no {kind} yet (it is {record.state}; Prepare makes one)")
        return body

    # -- approval and execution --------------------------------------------------------------

    def approve(self, run_id: str, notes: str = "") -> RunRecord:
        record = self._require(run_id, RunState.READY, RunState.FAILED, doing="Approve")
        setup = self._setup(run_id)
        if record.state == RunState.FAILED:
            # A copy that failed resumes from its checkpoints; anything else needs Prepare again.
            if not self.store.checkpoints(run_id):
                raise StateError(f"run {run_id!r} failed before copying ({record.failure_reason}); Prepare it again")
            if setup.online and run_id not in self._live:
                raise StateError(f"run {run_id!r} lost track of the writes made since it failed (the coordinator "
                                 "restarted); Rollback it and start a new run")
            # Like ``eve migrate --resume``: the checkpoints belong to the endpoints as they were.
            changed = self._endpoint_changes(run_id, "since the run was approved")
            if changed:
                raise StateError(f"resume refused: {changed}; {_CHANGED_ENDPOINT_HINT}")
            self._transition(run_id, RunState.COPYING, "copy resumed after a failure")
            self._spawn(run_id, "copy", self._copy)
            return self.get(run_id)
        open_issues = [i for i in self.store.issues(run_id) if not i["acknowledged"]
                       or (i["blocking"] and i["code"] not in ACKNOWLEDGEABLE)]
        if open_issues:
            listed = "; ".join(f"{i['id']} ({'blocking' if i['blocking'] else 'unacknowledged'}): {i['message']}"
                               for i in open_issues)
            raise StateError(f"approval refused: {listed}")
        # What was reviewed was found on the endpoints as Prepare saw them.
        changed = self._endpoint_changes(run_id, "since Prepare checked it")
        if changed:
            raise StateError(f"approval refused: {changed}; Prepare the run again")
        if setup.online:
            self._live[run_id] = self._new_live(run_id, setup)
        self._transition(run_id, RunState.APPROVED, notes or "approved")
        # From APPROVED on UpdateEndpoint is refused; one that committed between the check
        # above and the transition is caught here.
        changed = self._endpoint_changes(run_id, "while the run was being approved")
        if changed:
            live = self._live.pop(run_id, None)
            if live is not None:
                live.close()
            self._fail(run_id, f"approval undone: {changed}; Prepare the run again")
            raise StateError(f"approval undone: {changed}; Prepare the run again")
        self._transition(run_id, RunState.COPYING, "bulk copy started")
        self._spawn(run_id, "copy", self._copy)
        return self.get(run_id)

    def _bulk_options(self, run_id: str, setup: RunSetup) -> BulkOptions:
        configs = self._configs(run_id)
        filters, limits = setup.filters, setup.rate_limits
        return BulkOptions(
            run_id=run_id, source=configs[setup.source].read, target=configs[setup.target].write,
            mirrors=tuple(configs[m].write for m in setup.mirror_targets),
            dbs=filters.dbs or None, match=filters.key_pattern or None,
            type=(filters.types or (None,))[0], conflict=setup.conflict_policy,
            preserve_ttl=setup.preserve_ttl, mode=setup.mode, restorers=setup.restorers or self.restorers_default,
            max_keys_per_second=limits.max_keys_per_second, max_bytes_per_second=limits.max_bytes_per_second,
            max_pipeline=limits.max_pipeline_depth or 1000,
            big_key_threshold_bytes=setup.big_key_threshold_bytes or DEFAULT_BIG_KEY_THRESHOLD_BYTES)

    def _copy(self, run_id: str) -> None:
        setup = self._setup(run_id)
        stop = self._stops.setdefault(run_id, threading.Event())
        last_event = [0.0]

        def on_progress(progress: Progress) -> None:
            self._progress[run_id] = progress
            now = time.monotonic()
            if now - last_event[0] >= PROGRESS_EVENT_SECONDS:
                last_event[0] = now
                self._event(run_id, "progress", f"{progress.scanned} keys scanned, {progress.restored} restored",
                            _metrics_attributes(progress))

        live = self._live.get(run_id)
        try:
            if live is not None and not live.tracking:
                # Before the first key is read: every write from now on is a dirty key.
                live.start_tracking()
            copy = BulkCopy(self._bulk_options(run_id, setup), self.store, on_progress=on_progress,
                            on_error_keys=lambda rows: self._error_key_events_for(run_id, rows), runner=self.ray)
            progress = copy.run(stop_event=stop)
        except CopyStopped:
            return  # stopped on purpose (cancel, rollback, shutdown): whoever stopped it moves the state
        except EveError as exc:
            self._fail(run_id, f"copy failed: {exc}")
            return
        self._progress[run_id] = progress
        for reason in progress.restart_reasons:   # a lost worker (a process, a Ray actor or node)
            self._event(run_id, "bulk", f"the copy restarted from its committed cursors: {reason}")
        self._event(run_id, "metrics", "bulk copy finished", _metrics_attributes(progress))
        failure = copy_failure(self.store, run_id, progress, setup.max_error_ratio)
        if failure:
            self._fail(run_id, f"copy failed: {failure}")
            return
        if live is not None:
            # The re-copy loop starts from the servers the copy wrote to: one that restarts
            # between the bulk copy and the loop's first contact is a restart too.
            live.server_run_ids = copy.server_run_ids
        if live is None:
            self._transition(run_id, RunState.CUT_OVER, "bulk copy finished: verify, then complete")
            return
        self._transition(run_id, RunState.SYNCING, "bulk copy finished: catching up on the writes made meanwhile")
        self._live_loop(run_id, live, stop)

    # -- online strategies ---------------------------------------------------------------------

    def _new_live(self, run_id: str, setup: RunSetup) -> LiveRun:
        """The live machinery of an online run; StateError when its interlay cannot carry it.
        Targets and mirrors may be clusters (the interlay routes their commands by slot);
        a source with keys outside db 0 was refused for them at Prepare (CLUSTER_MODE_DIFFERS)."""
        interlay_id = setup.interlay
        if self.interlays is None:
            raise StateError("this coordinator runs no interlays; online strategies need one")
        if not self.interlays.running(interlay_id):
            raise StateError(f"interlay {interlay_id!r} is not running: StartInterlay it and point the "
                             "applications at it, then Approve")
        options = self._live_options(run_id, setup)
        return LiveRun(options, self.interlays,
                       on_event=lambda type, message, attributes: self._event(run_id, type, message, attributes),
                       on_failures=lambda failures: self._recopy_failures(run_id, failures))

    def _live_options(self, run_id: str, setup: RunSetup) -> LiveOptions:
        configs = self._configs(run_id)
        return LiveOptions(run_id=run_id, interlay_id=setup.interlay, source=configs[setup.source].write,
                           target=configs[setup.target].write,
                           mirrors=tuple((f"mirror:{name}", configs[name].write) for name in setup.mirror_targets),
                           policy=setup.write_consistency, scripts_deterministic=setup.scripts_deterministic,
                           keyspace_notifications=setup.keyspace_notifications, preserve_ttl=setup.preserve_ttl)

    def _recopy_failures(self, run_id: str, failures: list[Any]) -> None:
        rows = [failure.as_error_key() for failure in failures]
        self.store.add_error_keys(run_id, rows)
        self._error_key_events_for(run_id, rows)

    def _live_loop(self, run_id: str, live: LiveRun, stop: threading.Event) -> None:
        """SYNCING: catch up, go in sync, then watch (failures on other sides, the backlog)
        until the run moves on (``stop`` is set by rollback, cancel, complete, shutdown)."""
        try:
            live.start_sync()
            if not live.catch_up(stop):
                return
            live.go_in_sync()
            if live.authoritative == TARGET:  # TARGET_AUTHORITATIVE: the target took the writes
                self.store.set_traffic(run_id, 100, True)
            self._watch_live(run_id, live, stop)
        except EveError as exc:
            self._fail(run_id, f"live sync failed: {exc}")

    def _watch_live(self, run_id: str, live: LiveRun, stop: threading.Event) -> None:
        """In sync: tell the failures on other sides and the backlog, compare the sides when marks
        were lost, until ``stop``. EveError when the re-copy loop or the interlay stopped."""
        seen: dict[str, int] = {}
        last = None
        told = time.monotonic()
        down = False
        while not stop.wait(CONFIRM_SECONDS):
            live.confirm_recopied()
            if time.monotonic() - told < PROGRESS_EVENT_SECONDS:
                continue
            told = time.monotonic()
            try:
                live.check_sync()
            except StateError as exc:
                if not live.interlay_down() or live.authoritative != TARGET:
                    raise
                # Writes cut over: the run cannot fail (nor go back on its own), and its interlay could
                # not be restarted: say so loudly, once, and go on when it is started again (it then
                # takes the run's route, the target authoritative, and the sides are compared in full).
                if not down:
                    down = True
                    self._event(run_id, "error", f"{exc}: the applications cannot reach the target through it; "
                                "StartInterlay it (it starts with the target authoritative, and the sides are "
                                "compared in full), or Rollback", {"interlay": live.options.interlay_id})
                continue
            down = False
            live.reconcile_if_needed()
            for side in live.side_failures():
                failures = side["failures"]
                new = failures - seen.get(side["side"], 0)
                if new > 0:
                    seen[side["side"]] = failures
                    healed = "counted only (BEST_EFFORT)" \
                        if live.options.policy == WriteConsistency.BEST_EFFORT else "their keys are re-copied"
                    why = refusal(side["last_error"])  # issue 19: why the side refuses writes
                    self._event(run_id, "dual_write", f"{new} writes failed on {side['side']}: "
                                f"{side['last_error']}{' (' + why + ')' if why else ''}; {healed}",
                                {"side": side["side"], "failures": failures, "last_error": side["last_error"]})
            metrics = live.metrics()
            if metrics != last:
                last = metrics
                why = f"; {metrics['refusing']}" if metrics.get("refusing") else ""  # issue 19: why keys wait
                self._event(run_id, "progress", f"live: {metrics['dirty_backlog']} dirty keys, lag "
                            f"{metrics['lag_seconds']}s, {metrics['recopied']} re-copied{why}", metrics)

    def set_traffic(self, run_id: str, read_percent_target: int, cutover_writes: bool) -> RunRecord:
        record = self.get(run_id)
        setup = self.setup(record)
        if setup is None or not setup.online:  # no setup yet: the default strategy, OFFLINE
            raise StateError(f"run {run_id!r} is OFFLINE: its traffic stays on the source; SetTraffic needs "
                             "ONLINE_CUTOVER or ONLINE_PHASED")
        if not isinstance(read_percent_target, int) or not 0 <= read_percent_target <= 100:
            raise ConfigError(f"must be between 0 and 100, got {read_percent_target}", field="read_percent_target")
        state = RunState(record.state)
        live = self._live.get(run_id)
        if state == RunState.CUT_OVER:
            if cutover_writes:
                return record
            raise StateError("writes are on the target; Rollback returns all traffic to the source")
        if state != RunState.SYNCING or live is None or not live.dual:
            raise StateError(f"run {run_id!r} is {state.value}; SetTraffic needs it SYNCING and in sync "
                             "(the \"in sync\" event says when)")
        if not cutover_writes:
            if setup.strategy == Strategy.ONLINE_CUTOVER:
                raise StateError("ONLINE_CUTOVER moves all traffic in one step: SetTraffic with cutover_writes; "
                                 "ONLINE_PHASED shifts reads in steps")
            live.set_reads(read_percent_target)
            self.store.set_traffic(run_id, read_percent_target, False)
            return self.get(run_id)
        self._transition(run_id, RunState.CUTTING_OVER, "cutover of writes started")
        try:
            with self._phase(run_id, "cutover"):
                live.cutover()
        except EveError as exc:
            self._transition(run_id, RunState.SYNCING, f"cutover aborted: {exc}")
            raise StateError(f"cutover aborted, traffic unchanged: {exc}") from exc
        self.store.set_traffic(run_id, 100, True)
        return self._transition(run_id, RunState.CUT_OVER, "writes cut over: the target is authoritative and "
                                "the source kept in sync in reverse; verify, then complete (or roll back)")

    def _error_key_events_for(self, run_id: str, rows: list[Any]) -> None:
        for row in rows:
            sent = self._error_key_events.get(run_id, 0)
            if sent >= MAX_ERROR_KEY_EVENTS:
                return
            self._error_key_events[run_id] = sent + 1
            key = row.key.decode("utf-8", "backslashreplace")
            self._event(run_id, "error_key", f"error key {key[:200]!r}: {row.reason}",
                        {"key": key[:512], "db": row.db, "type": row.type, "node": row.node,
                         "attempts": row.attempts})
            if sent + 1 == MAX_ERROR_KEY_EVENTS:
                self._event(run_id, "error_key", f"more than {MAX_ERROR_KEY_EVENTS} error keys: "
                            "further ones are listed by ListErrorKeys only")

    def metrics(self, run_id: str) -> dict[str, float]:
        record = self.get(run_id)
        progress = self._progress.get(run_id)
        rebuilt = progress is None
        if progress is None:
            counters = self.store.counters(run_id)
            progress = Progress(**{k: counters[k] for k in counters})
        attributes = _metrics_attributes(progress)
        if rebuilt:
            # Counters from the store (a finished run, or one from before a coordinator restart)
            # say how much was copied, not how fast: no rate and no ETA rather than a made-up one.
            attributes.update(keys_per_second=0.0, eta_seconds="")
        attributes["state"] = record.state
        live = self._live.get(run_id)
        if live is not None:
            metrics = live.metrics()
            attributes.update(dirty_backlog=metrics["dirty_backlog"], dirty_lag_seconds=metrics["lag_seconds"],
                              keys_recopied=metrics["recopied"], authoritative=metrics["authoritative"],
                              dual_write_failures=sum(side["failures"] for side in live.side_failures()))
            try:
                stats = self.interlays.stats(live.options.interlay_id)
            except EveError:
                pass
            else:
                attributes["interlay_ops_per_second"] = stats["ops_per_second"]
                attributes["noscript_replies"] = stats["noscript_replies"]
                attributes["cross_slot"] = stats["cross_slot"]
        return attributes

    def retry_error_keys(self, run_id: str, keys: list[bytes] | None = None) -> dict[str, int]:
        self._require(run_id, RunState.CUT_OVER, RunState.FAILED, doing="RetryErrorKeys")
        options = self._bulk_options(run_id, self._setup(run_id))
        outcome = retry_error_keys(self.store, run_id, options.source, options.target, conflict=options.conflict,
                                   preserve_ttl=options.preserve_ttl, mode=options.mode, mirrors=options.mirrors,
                                   keys=keys)
        self._event(run_id, "error_key", f"retried {outcome['retried']} error keys: {outcome['succeeded']} "
                    f"succeeded, {outcome['still_failing']} still failing", outcome)
        return outcome

    # -- verification, completion, rollback, cancel ------------------------------------------

    def verify(self, run_id: str, ttl_tolerance_ms: int = 1000) -> Any:
        from eve.live.verify import verify

        live = self._live.get(run_id)
        if live is not None:
            self._require(run_id, RunState.SYNCING, RunState.CUT_OVER, doing="Verify")
        else:
            self._require(run_id, RunState.CUT_OVER, doing="Verify")
        options = self._bulk_options(run_id, self._setup(run_id))
        self._event(run_id, "verify", "verification started")

        def compare() -> Any:
            # At the run's own rate limit: the source may be serving production traffic.
            with self._phase(run_id, "verify"):
                if self.ray is not None:   # a comparing actor per source master (eve serve --ray)
                    from eve.live.ray_verify import verify_on_ray

                    return verify_on_ray(self.ray, options.source, options.target, dbs=options.dbs,
                                         match=options.match, type=options.type,
                                         ttl_tolerance_ms=ttl_tolerance_ms or 1000,
                                         max_keys_per_second=options.max_keys_per_second)
                return verify(options.source, options.target, dbs=options.dbs, match=options.match,
                              type=options.type, ttl_tolerance_ms=ttl_tolerance_ms or 1000,
                              max_keys_per_second=options.max_keys_per_second)

        outside: set[tuple[int, bytes]] = set()
        if live is None:
            report = compare()
        else:
            # Writes keep coming: compare once the backlog is re-copied; what differs is
            # re-copied and compared again, and what still differs is an error key.
            live.reconcile_if_needed()   # a proxy process died meanwhile: what it knew is compared first
            live.wait_synced(VERIFY_DRAIN_SECONDS)
            report = compare()
            recopy = list(report.differences)
            if report.differences and live.authoritative == TARGET:
                outside, recopy, report = self._written_outside(run_id, live, report, compare)
            if recopy:
                for difference in recopy:
                    live.dirty.mark(difference.db, difference.key)
                self._event(run_id, "verify", f"{len(recopy)} differences re-copied from the {live.authoritative}; "
                            "comparing again")
                live.wait_synced(VERIFY_DRAIN_SECONDS)
                report = compare()
        if report.differences:
            # Error keys: listed, exported and retried (RetryErrorKeys) like any other.
            self.store.add_verification_differences(run_id, [
                ErrorKeyRow(d.key, d.db, options.source.address, "", 0,
                            f"verification: {d.kind.lower()}: {d.detail}" + (
                                f"; {OUTSIDE_WRITE}" if (d.db, d.key) in outside else ""), 1)
                for d in report.differences])
        body = _jsonable(dataclasses.asdict(report))
        body.pop("differences", None)
        written_outside = sum((d.db, d.key) in outside for d in report.differences)
        body["written_outside"] = written_outside
        self.store.set_report(run_id, "verify", body)
        self._event(run_id, "verify", "verification clean" if report.clean else
                    f"verification found {report.missing} missing, {report.extra} extra, {report.different} "
                    f"different, {report.ttl_mismatch} TTL mismatches"
                    + (f"; {written_outside} of them written outside the interlay, not overwritten: fix them or "
                       "Complete with accept_differences" if written_outside else ""),
                    {"clean": report.clean, "keys_compared": report.keys_compared,
                     "written_outside": written_outside})
        return report

    def _written_outside(self, run_id: str, live: LiveRun, report: Any,
                         compare: Callable[[], Any]) -> tuple[set[tuple[int, bytes]], list[Any], Any]:
        """The target is authoritative: a key that differs may hold a write made on the source
        outside Eve after the cutover (issue 19, item 2), which copying the target over it would
        lose without a word. The differing keys are watched while the backlog drains and the
        sides are compared again: a key that still differs and had no write through the interlay
        meanwhile was written around it: reported, never overwritten (Complete then needs
        accept_differences). The others (writes racing the compare) are re-copied as usual.
        Returns (keys written outside, differences to re-copy, the second report)."""
        first = {(d.db, d.key) for d in report.differences}
        live.dirty.watch(first)
        try:
            live.wait_synced(VERIFY_DRAIN_SECONDS)
            report = compare()
        finally:
            through_interlay = live.dirty.watched_marks()
        outside = {(d.db, d.key) for d in report.differences
                   if (d.db, d.key) in first and (d.db, d.key) not in through_interlay}
        if outside:
            examples = ", ".join(repr(key.decode("utf-8", "backslashreplace")[:100]) for _, key in sorted(outside)[:5])
            self._event(run_id, "verify", f"{len(outside)} keys differ between the sides with no write through the "
                        f"interlay since the last compare (e.g. {examples}): written outside Eve on one side, "
                        "maybe on the source after the cutover; not overwritten from the target",
                        {"written_outside": len(outside)})
        return outside, [d for d in report.differences if (d.db, d.key) not in outside], report

    def complete(self, run_id: str, accept_differences: bool = False, notes: str = "") -> RunRecord:
        self._require(run_id, RunState.CUT_OVER, doing="Complete")
        report = self.store.report(run_id, "verify")
        if report is None:
            raise StateError(f"run {run_id!r} is not verified: call Verify first")
        if not report["clean"]:
            if not accept_differences:
                raise StateError("verification found differences: fix them and Verify again, or Complete with "
                                 "accept_differences and notes")
            if not notes.strip():
                raise ConfigError("accepting differences needs notes", field="notes")
        live = self._live.get(run_id)
        if live is not None:
            self._stop_work(run_id)
            live.complete()
            del self._live[run_id]
            # A restarted coordinator starts the interlay in front of the target from now on.
            self.store.set_interlay_endpoint(live.options.interlay_id, self._setup(run_id).target)
        return self._transition(run_id, RunState.COMPLETED, notes or "completed")

    def rollback(self, run_id: str, reason: str = "") -> RunRecord:
        record = self.get(run_id)
        if RunState(record.state) not in ROLLBACKABLE:
            raise StateError(f"run {run_id!r} is {record.state}; rollback is possible until the run is completed")
        self._stop_work(run_id)
        self._transition(run_id, RunState.ROLLING_BACK, reason or "rollback requested")
        live = self._live.get(run_id) or self._adopt_route(run_id, RunState(record.state))
        if live is not None:
            try:
                with self._phase(run_id, "rollback"):
                    live.rollback()
            except EveError as exc:
                self._fail(run_id, f"rollback could not finish: {exc}; call Rollback again")
                raise StateError(f"rollback could not finish: {exc}; traffic stays where it was, call Rollback "
                                 "again") from exc
            del self._live[run_id]
            self.store.set_traffic(run_id, 0, False)
            return self._transition(run_id, RunState.ROLLED_BACK, "rolled back: all traffic on the source, which "
                                    "holds every write")
        setup = self.setup(record)
        if setup is not None and setup.online and RunState(record.state) not in (
                RunState.CREATED, RunState.CONFIGURED, RunState.PREPARING, RunState.READY):
            # An online run whose live part ended with a coordinator restart: the
            # restarted interlay fronts its endpoint (the source) with no route.
            self._event(run_id, "rollback", "the live route ended with the coordinator restart: the interlay "
                        "forwards to the source; writes made on the target after a cutover are not on the source")
            return self._transition(run_id, RunState.ROLLED_BACK, "rolled back: all traffic on the source")
        # Offline: the source never stopped being authoritative and nothing on it changed.
        counters = self.store.counters(run_id)
        self._event(run_id, "rollback", "the source was never modified; the target received what the counters say",
                    counters)
        return self._transition(run_id, RunState.ROLLED_BACK, "rolled back: all traffic on the source")

    def _adopt_route(self, run_id: str, state: RunState) -> LiveRun | None:
        """A run (in ``state``) with no live part here (it failed, then the coordinator restarted)
        whose interlay kept serving under its route: a live part that takes that route over, so
        that a rollback compares the sides in full and flips back exactly. None when the run
        never carried live traffic or the interlay has no route."""
        setup = self.setup(self.get(run_id))
        if setup is None or not setup.online or self.interlays is None or state in UNPREPARED | {RunState.READY}:
            return None
        route = self.interlays.last_route(setup.interlay)
        if route is None:
            return None
        try:
            live = self._new_live(run_id, setup)
            live.authoritative, live.dual = route.authoritative, bool(route.mirror_to)
            live.dirty.mark_all(None)
            live.start_tracking()
            live.start_sync()
        except EveError as exc:
            log.warning("run %s: cannot take over the route its interlay kept (%s)", run_id, exc)
            return None
        self._live[run_id] = live
        return live

    def cancel(self, run_id: str, reason: str = "") -> RunRecord:
        record = self.get(run_id)
        if not can_transition(RunState(record.state), RunState.CANCELLED):
            raise StateError(f"run {run_id!r} is {record.state}; it cannot be cancelled")
        self._stop_work(run_id)
        live = self._live.get(run_id) or self._adopt_route(run_id, RunState(record.state))
        if live is not None:
            live.rollback()  # traffic returns to the source, holding every write, as a rollback would
            del self._live[run_id]
        return self._transition(run_id, RunState.CANCELLED, reason or "cancelled")

    def _fail(self, run_id: str, reason: str) -> None:
        try:
            self._transition(run_id, RunState.FAILED, reason, failure_reason=reason)
        except StateError:
            log.warning("run %s: %s (state already moved on)", run_id, reason)

    # -- events ----------------------------------------------------------------------------

    def events(self, run_id: str, after_seq: int = 0, *, is_active: Callable[[], bool] = lambda: True,
               wait_seconds: float = 1.0) -> Iterator[dict[str, Any]]:
        """Stored events after ``after_seq``, then new ones as they come; ends when the run is
        terminal and every event was sent (or the subscriber went away)."""
        self.get(run_id)
        seq = max(0, int(after_seq))
        while is_active():
            batch = self.store.events(run_id, seq)
            for event in batch:
                seq = event["seq"]
                yield event
            if batch:
                continue
            if RunState(self.store.get_run(run_id).state) in TERMINAL:
                # The state and its event commit together: one more read finds it.
                for event in self.store.events(run_id, seq):
                    yield event
                return
            with self._changed:
                self._changed.wait(wait_seconds)

    # -- threads, restart --------------------------------------------------------------------

    def _phase(self, run_id: str, name: str) -> AbstractContextManager[Any]:
        """A span for one phase of the run (prepare, copy, sync, cutover, verify, rollback) under
        the run's own trace, kept with the run so a restarted coordinator continues it (issue 24)."""
        saved = self.store.report(run_id, "trace")
        if not isinstance(saved, dict) or not saved:
            saved = telemetry.new_run_trace(run_id)
            self.store.set_report(run_id, "trace", saved)
        return telemetry.phase_span(name, saved, attributes={"eve.run": run_id})

    def _spawn(self, run_id: str, what: str, target: Callable[[str], None]) -> None:
        def body() -> None:
            try:
                with self._phase(run_id, what):
                    target(run_id)
            except Exception as exc:  # noqa: BLE001 - a worker thread must record, not vanish
                log.exception("run %s: %s crashed", run_id, what)
                self._fail(run_id, f"{what} crashed: {type(exc).__name__}: {exc}")

        self._stops[run_id] = threading.Event()
        thread = threading.Thread(target=body, name=f"run-{run_id}-{what}", daemon=True)
        self._threads[run_id] = thread
        thread.start()

    def _stop_work(self, run_id: str) -> None:
        stop = self._stops.get(run_id)
        thread = self._threads.get(run_id)
        if stop is not None:
            stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=60)

    def resume(self) -> None:
        """After a coordinator restart: continue every run where it was. Like ``eve migrate
        --resume``, a run whose endpoints changed since it was approved is not continued: it
        fails, and its failure reason says which endpoint changed and how."""
        for record in self.store.list_runs():
            setup = self.setup(record)
            if setup is None:
                continue
            state = RunState(record.state)
            writes_on_target = self.store.traffic(record.id)[1]
            if state in _RESUMED_WORK and not writes_on_target:
                changed = self._endpoint_changes(record.id, "since the run was approved")
                if changed:
                    hint = ("the live run cannot go on: Rollback it (the source holds every write) and start a new "
                            "run" if setup.online else _CHANGED_ENDPOINT_HINT)
                    self._fail(record.id, f"resume refused after a coordinator restart: {changed}; {hint}")
                    continue
            if state == RunState.PREPARING:
                self.store.snapshot_run_endpoints(record.id)  # prepare checks the endpoints as they are now
                self._event(record.id, "state", "coordinator restarted: prepare runs again")
                self._spawn(record.id, "prepare", self._prepare)
            elif state == RunState.APPROVED and not setup.online:
                self._transition(record.id, RunState.COPYING, "bulk copy started")
                self._spawn(record.id, "copy", self._copy)
            elif state in (RunState.COPYING, RunState.SYNCING) and setup.online and not writes_on_target:
                self._resume_live(record.id, state, setup)
            elif state in LIVE_STATES and setup.online:
                self._resume_target_authoritative(record.id, state, setup, writes_on_target)
            elif state == RunState.APPROVED and setup.online:
                try:
                    self._live[record.id] = self._new_live(record.id, setup)
                except EveError as exc:
                    self._fail(record.id, f"cannot start the live run after a restart: {exc}")
                    continue
                self._transition(record.id, RunState.COPYING, "bulk copy started")
                self._spawn(record.id, "copy", self._copy)
            elif state == RunState.COPYING:
                self._event(record.id, "state", "coordinator restarted: the copy resumes from its checkpoints")
                self._spawn(record.id, "copy", self._copy)
            elif state == RunState.ROLLING_BACK:
                self._transition(record.id, RunState.ROLLED_BACK, "rolled back after a restart")

    def _resume_live(self, run_id: str, state: RunState, setup: RunSetup) -> None:
        """A live run whose source was still authoritative: the interlay tracks writes again.
        One that kept serving kept every dirty key not re-copied yet (``proxy.control.Spool``):
        they are re-copied. Otherwise (it was started again, its spool overflowed, keyspace
        notifications added marks only the dead coordinator had, or the bulk copy was still
        running) the dirty keys of before the restart are gone: the sides are compared in
        full and what differs is re-copied."""
        try:
            live = self._live[run_id] = self._new_live(run_id, setup)
        except EveError as exc:
            self._fail(run_id, f"cannot resume the live run after a restart: {exc}")
            return
        attached = self.interlays.attached(setup.interlay)
        kept = state == RunState.SYNCING and attached is not None and not attached.overflowed \
            and not setup.keyspace_notifications
        if not kept:
            live.dirty.mark_all(None)  # "every db changed": the catch-up compares the sides first
        if state == RunState.COPYING:
            self._event(run_id, "state", "coordinator restarted: the copy resumes from its checkpoints, then "
                        "every key is compared to catch the writes whose re-copy was lost")
            self._spawn(run_id, "copy", self._copy)
            return
        if kept:
            assert attached is not None
            self._event(run_id, "state", f"coordinator restarted: the interlay kept serving and kept the "
                        f"{attached.spooled} dirty keys not re-copied yet; re-copying them, then catching up again",
                        {"spooled": attached.spooled})
        else:
            self._event(run_id, "state", "coordinator restarted: comparing the sides to catch the writes whose "
                        "re-copy was lost, then catching up again")

        def sync(run_id: str) -> None:
            try:
                live.start_tracking()
            except EveError as exc:
                self._fail(run_id, f"cannot resume the live run after a restart: {exc}")
                return
            self._live_loop(run_id, live, self._stops[run_id])

        self._spawn(run_id, "sync", sync)

    def _resume_target_authoritative(self, run_id: str, state: RunState, setup: RunSetup,
                                     writes_on_target: bool) -> None:
        """A live run whose writes were (or were being) cut over to the target. Its interlay kept
        serving under that route, or was started again with it (``restart_routes``); either way
        the target stays authoritative, the source is compared to it in full (what nobody tracked
        meanwhile may be missing there), what differs is re-copied, and reverse sync goes on.
        A cutover the restart interrupted before the writes flipped goes back to SYNCING."""
        route = self.interlays.last_route(setup.interlay) if self.interlays is not None else None
        if not writes_on_target and (route is None or route.authoritative != TARGET):
            self._transition(run_id, RunState.SYNCING, "the coordinator restarted during the cutover, before the "
                             "writes flipped: the source stays authoritative; cut over again once in sync")
            self._resume_live(run_id, RunState.SYNCING, setup)
            return
        try:
            live = self._live[run_id] = self._new_live(run_id, setup)
        except EveError as exc:
            self._fail(run_id, f"cannot resume the live run after a restart: {exc}")
            return
        self.store.set_traffic(run_id, 100, True)
        if state == RunState.CUTTING_OVER:
            self._transition(run_id, RunState.CUT_OVER, "the cutover had flipped the writes to the target before "
                             "the coordinator restarted")
        self._event(run_id, "state", "coordinator restarted with the target authoritative: comparing the source "
                    "to the target in full, then reverse sync goes on")

        def reverse_sync(run_id: str) -> None:
            stop = self._stops[run_id]
            try:
                live.resume_cut_over()
                if not live.catch_up(stop):
                    return
                self._event(run_id, "live", "caught up after the restart: the source holds every write of the "
                            "target again, and reverse sync keeps it so")
                self._watch_live(run_id, live, stop)
            except EveError as exc:
                self._fail(run_id, f"reverse sync failed after a restart: {exc}")

        self._spawn(run_id, "sync", reverse_sync)

    def _carrying(self, interlay_id: str) -> tuple[str, LiveRun] | None:
        """The live run (id, live part) whose traffic goes through ``interlay_id`` now."""
        for run_id, live in list(self._live.items()):
            if live.options.interlay_id == interlay_id and live.tracking:
                return run_id, live
        return None

    def interlay_route(self, interlay_id: str) -> tuple[Any, Any]:
        """(route, dirty keys) a proxy process of ``interlay_id`` starts under (``InterlaySupervisor.
        run_route``): those of the live run carrying its traffic: the target authoritative after a
        cutover, the source before one, dual writes and read shares as the run has them, every
        write tracked. After a coordinator restart (no live part yet), the route the run's state
        says (``restart_routes``); None: plain forwarding to the interlay's endpoint."""
        carrying = self._carrying(interlay_id)
        if carrying is not None:
            live = carrying[1]
            return live.current_route(), live.dirty
        return self.restart_routes(interlay_id).get(interlay_id), None

    def _interlay_restarted(self, interlay_id: str, reason: str) -> None:
        carrying = self._carrying(interlay_id)
        if carrying is not None:
            carrying[1].interlay_restarted(reason)

    def restart_routes(self, interlay_id: str | None = None) -> dict[str, Any]:
        """Interlay id -> the route it must start under after a coordinator restart, for the live
        runs whose target is authoritative: an interlay that did not survive (a reboot) is started
        fronting the target, never the source, so no write lands on the side being left."""
        routes: dict[str, Any] = {}
        for record in self.store.list_runs():
            setup = self.setup(record)
            if setup is None or not setup.online or RunState(record.state) not in LIVE_STATES or \
                    interlay_id not in (None, setup.interlay) or not self.store.traffic(record.id)[1]:
                continue
            try:
                options = self._live_options(record.id, setup)
                routes[setup.interlay] = route_for(options, TARGET, dual=True, clusters=read_clusters(options))
            except EveError as exc:
                log.error("run %s: cannot tell its interlay's route after the restart: %s", record.id, exc)
        return routes

    def shutdown(self) -> None:
        """Stop the copies at their next batch; their runs stay COPYING and resume on restart."""
        for run_id in list(self._threads):
            self._stop_work(run_id)
        for live in list(self._live.values()):
            live.close()


def _metrics_attributes(progress: Progress) -> dict[str, Any]:
    eta = progress.eta_seconds
    return {"keys_scanned": progress.scanned, "keys_restored": progress.restored,
            "keys_skipped": progress.skipped, "keys_conflicting": progress.conflicts,
            "keys_failed": progress.failed, "bytes": progress.bytes,
            "keys_per_second": round(progress.keys_per_second, 1),
            "bytes_per_second": round(progress.bytes_per_second, 1),
            "eta_seconds": round(eta, 1) if eta is not None else "",
            "source_keys": progress.source_keys}


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    return value
