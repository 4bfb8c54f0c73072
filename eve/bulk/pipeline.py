"""The bulk copy: scanner and restorer processes supervised by the coordinator.

    scanner (one per source master) --BATCH--> bounded queue --> restorer pool
    restorers --RESULT--> results queue --> BulkCopy (this module): checkpoints,
                                            counters, error keys, conflicts

A (node, db)'s cursor is committed only when every batch before it was
acknowledged, in one transaction with the counters and keys those batches
produced, so a crash never loses a key and never counts one twice.

When any worker dies unexpectedly (kill -9, OOM killer), the whole pipeline is
torn down and started again from the committed cursors with a new epoch: a
process killed while writing to a multiprocessing queue may leave that queue
corrupt, so queues are never reused across a restart. Re-sent batches are
harmless: RESTORE of the same payload is idempotent under REPLACE and MERGE,
and under NONE a key the job restored before the crash is recognised as its own
write, not a conflict (``restorer.policies``).

A side that restarts is another matter: a non-persistent target comes back
empty, a persistent one with its last snapshot, which may predate any
checkpoint; a restarted source has a new hash seed, so its SCAN cursors no
longer mean anything. The job knows every node of every side by its ``run_id``
(``INFO server``, read when the copy is planned, saved with the job): scanners
and restorers check it on every connection they open and report RESTARTED; the
coordinator checks it again once every batch is acknowledged, and when a job
resumes. Any restart of a side, persistent or not, is taken as possible loss,
and the copy starts again from the beginning: checkpoints, counters, error keys
and conflicts of the job are forgotten, and every key is copied again into the
restarted server (REPLACE makes a second copy harmless; NONE recognises its own
writes). A copy from scratch is what a user of a non-persistent target wants,
and the only safe answer for a persistent one, whose last save Eve cannot
date. Counters never include a key the side may have lost. A side that keeps
restarting (``max_side_restarts``) fails the job with that reason.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from eve.bulk.functions import copy_functions
from eve.bulk.indexes import copy_indexes
from eve.core import frames
from eve.core.endpoints import ConnectionSpec
from eve.core.enums import ConflictPolicy, DataMovementMode
from eve.core.errors import EndpointError, Side, SourceError, StateError, TargetError
from eve.core.store import COUNTER_FIELDS, Store
from eve.redis.cluster import ClientOptions, ClusterClient, ServerRestarted, ServerRunIds
from eve.redis.wire import ReplyError, pack
from restorer import RestorerOptions
from restorer import main as restorer_main
from restorer.bigkeys import remove_temporary_keys
from scanner import ScannerOptions
from scanner.options import DEFAULT_BIG_KEY_THRESHOLD_BYTES
from scanner import main as scanner_main

__all__ = ["BulkOptions", "BulkCopy", "CopyStopped", "Progress", "SourcePlan", "DEFAULT_RESTORERS",
           "MAX_RESTORERS", "retry_error_keys"]

log = logging.getLogger("eve.bulk.pipeline")

DEFAULT_RESTORERS = 2
MAX_RESTORERS = 64  # per job, the API's cap too: more processes than that only thrash a host
# Measured with bench/bulk.py on 2 cores, 1M keys: at 0.6 a live client on the source keeps
# 0.59x its idle throughput while Eve copies at 0.73x MIGRATE's speed; at 1.0, 0.13x.
DEFAULT_SOURCE_SHARE = 0.6
DEFAULT_MAX_RESTARTS = 5
DEFAULT_MAX_SIDE_RESTARTS = 3   # copies started again because a side restarted, then the job fails
RUN_IDS_REPORT = "bulk_server_run_ids"  # the job's report: address -> run_id of the servers it copies between
POLL_SECONDS = 0.2
FAILED_FRAME_WAIT = 30.0
# Planning and retries talk to the sides briefly, in the coordinator: a side that does not
# answer fails the call at once (the workers are the ones that wait for a lost side).
_BRIEF = ClientOptions(timeout=10.0, reconnect_seconds=0, client_name="eve-plan")


@dataclass(frozen=True)
class BulkOptions:
    run_id: str
    source: ConnectionSpec
    target: ConnectionSpec
    mirrors: tuple[ConnectionSpec, ...] = ()
    dbs: tuple[int, ...] | None = None  # None: every db that holds keys
    match: str | None = None
    type: str | None = None
    conflict: ConflictPolicy = ConflictPolicy.REPLACE
    preserve_ttl: bool = True
    mode: DataMovementMode = DataMovementMode.AUTO   # how keys move (restorer.worker, _Target.route)
    restorers: int = DEFAULT_RESTORERS
    scan_count: int = 1000
    queue_depth: int = 0  # 0: 2 batches per restorer, plus 2
    max_keys_per_second: int = 0
    max_bytes_per_second: int = 0
    max_pipeline: int = 1000
    backoff_latency_ms: float = 0.0
    latency_budget_ms: float = 0.0   # 0: off; the scanner holds the source's latency within it
    max_source_share: float = DEFAULT_SOURCE_SHARE
    reconnect_seconds: float = 30.0
    max_restarts: int = DEFAULT_MAX_RESTARTS
    max_side_restarts: int = DEFAULT_MAX_SIDE_RESTARTS
    big_key_threshold_bytes: int = DEFAULT_BIG_KEY_THRESHOLD_BYTES  # 0: every key DUMPed (scanner.options)
    # (alias, index) pairs of search index aliases to set on the targets: RediSearch lists none
    # (eve.bulk.indexes).
    index_aliases: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SourcePlan:
    node: str
    spec: ConnectionSpec
    dbs: tuple[int, ...]
    server_run_id: str | None = None  # the node's run_id when planned (None: it does not tell)


@dataclass
class Progress:
    """Counters of the whole job (committed plus acknowledged-but-uncommitted)."""

    scanned: int = 0
    restored: int = 0
    skipped: int = 0
    conflicts: int = 0
    failed: int = 0
    bytes: int = 0
    source_keys: int = 0  # the source's key count at the start, for the ETA
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    restarts: int = 0
    side_restarts: int = 0  # copies started again from the beginning because a side restarted
    side_restart_reasons: list[str] = field(default_factory=list)

    def add(self, counters: dict[str, int]) -> None:
        for name in COUNTER_FIELDS:
            setattr(self, name, getattr(self, name) + counters.get(name, 0))

    @property
    def elapsed(self) -> float:
        return self.seconds or (time.monotonic() - self.started)

    @property
    def keys_per_second(self) -> float:
        elapsed = self.elapsed
        return self.scanned / elapsed if elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        rate = self.keys_per_second
        if not self.source_keys or rate <= 0:
            return None
        return max(self.source_keys - self.scanned, 0) / rate

    def as_dict(self) -> dict[str, float | int]:
        return {"scanned": self.scanned, "restored": self.restored, "skipped": self.skipped,
                "conflicts": self.conflicts, "errors": self.failed, "bytes": self.bytes,
                "seconds": round(self.elapsed, 3), "keys_per_sec": round(self.keys_per_second, 1),
                "restarts": self.restarts, "side_restarts": self.side_restarts}


def _counters(result: frames.Result) -> dict[str, int]:
    return {"scanned": result.header.scanned, "restored": result.restored,
            "skipped": result.skipped + result.header.skipped, "conflicts": result.conflicts,
            "failed": result.failed, "bytes": result.bytes}


@dataclass
class _Stream:
    """Acknowledgements of one (node, db) in the current epoch, committed in order."""

    next_seq: int = 0
    pending: dict[int, frames.Result] = field(default_factory=dict)
    done: bool = False


class CopyStopped(StateError):
    """The copy stopped because its stop_event was set; it resumes from its checkpoints."""


class _Restart(Exception):
    """A worker died: tear the pipeline down and start again from the checkpoints."""


class _SideRestarted(Exception):
    """A side's server restarted: what was copied may be lost; start the copy again."""

    def __init__(self, side: Side, reason: str) -> None:
        super().__init__(reason)
        self.side = side
        self.reason = reason

    @classmethod
    def from_frame(cls, frame: frames.Restarted) -> "_SideRestarted":
        return cls(frame.who, f"{frame.reason} (seen by {frame.worker})")

    @classmethod
    def from_error(cls, exc: ServerRestarted, side: Side, by: str) -> "_SideRestarted":
        return cls(side, f"{exc} (seen by {by})")


class BulkCopy:
    """Copies every key of the source to the target (and mirrors), resumably.

    Function libraries and search indexes, which are not keys, are copied first, on every run
    and resume (``eve.bulk.functions``, ``eve.bulk.indexes``; what they did is ``self.functions``
    and ``self.indexes``): an index created before its documents arrive indexes them as they come.

    ``run()`` returns the final Progress, or raises SourceError / TargetError when
    a side stays unavailable, StateError when the job was stopped by ``stop_event``.
    """

    def __init__(self, options: BulkOptions, store: Store, *,
                 on_progress: Callable[[Progress], None] | None = None,
                 on_error_keys: Callable[[list[frames.ErrorKeyRow]], None] | None = None) -> None:
        self.options = options
        self.store = store
        self.on_progress = on_progress
        self.on_error_keys = on_error_keys
        self.progress = Progress()
        self.epoch = 0
        self._context = multiprocessing.get_context("spawn")

    # -- planning -------------------------------------------------------------------

    def plan(self) -> list[SourcePlan]:
        """Source masters and their dbs; also counts the source's keys for the ETA."""
        options = self.options
        with _side(options.source, "source", SourceError) as source:
            source.connect()
            run_ids = source.identify()
            self._source_cluster = bool(source.cluster)
            if source.cluster:
                if options.dbs and set(options.dbs) != {0}:
                    raise StateError(f"the source {options.source.address} is a cluster, which has only db 0")
                plans = [SourcePlan(node, source.spec_for(node), (0,), run_ids.get(node)) for node in source.nodes]
            else:
                dbs = options.dbs if options.dbs is not None else tuple(source.dbs_with_keys())
                plans = [SourcePlan(options.source.address, options.source, tuple(dbs),
                                    run_ids.get(options.source.address))]
            total = 0
            for plan in plans:
                counts = source.keyspace(plan.node)
                total += sum(counts[db][0] for db in plan.dbs if db in counts)
        self.progress.source_keys = total
        return plans

    # -- running --------------------------------------------------------------------

    def prepare(self) -> None:
        """Connect to every side and plan the work; raises before anything is written.
        Also learns who the servers are: the run_id of every node of every side."""
        self._plans = self.plan()
        self._target_cluster, target_run_ids = _inspect_target(self.options.target, "target")
        mirrors = []
        # address -> (role, side) of every node, for the messages about a restart
        self._roles: dict[str, tuple[str, Side]] = {plan.node: ("source", Side.SOURCE) for plan in self._plans}
        self._target_run_ids = dict(target_run_ids)
        self._roles.update({address: ("target", Side.TARGET) for address in target_run_ids})
        for spec in self.options.mirrors:
            cluster, run_ids = _inspect_target(spec, "mirror target")
            mirrors.append((spec, cluster))
            self._target_run_ids.update(run_ids)
            self._roles.update({address: ("mirror target", Side.TARGET) for address in run_ids})
        self._mirrors = tuple(mirrors)
        self._server_run_ids = {**{plan.node: plan.server_run_id for plan in self._plans if plan.server_run_id},
                                **self._target_run_ids}

    def run(self, stop_event: threading.Event | None = None) -> Progress:
        if not hasattr(self, "_plans"):
            self.prepare()
        # The job ran before (its run_ids were saved): a chunked copy it left may have left a temporary key.
        self._resumed = self.store.report(self.options.run_id, RUN_IDS_REPORT) is not None
        self._check_since_last_run()
        self.functions = copy_functions(self.options.source, (self.options.target, *self.options.mirrors),
                                        self.options.conflict)
        self.indexes = copy_indexes(self.options.source, (self.options.target, *self.options.mirrors),
                                    self.options.conflict, aliases=self.options.index_aliases)
        committed = self.store.counters(self.options.run_id)
        self.progress.add(committed)
        while True:
            try:
                self._run_pipeline(stop_event)
                # Every batch is acknowledged; a restorer that finished early would not have seen a
                # restart of the target after its last batch: ask the targets themselves.
                self._confirm_targets()
                break
            except _Restart as restart:
                self.progress.restarts += 1
                if self.progress.restarts > self.options.max_restarts:
                    raise EndpointError(f"bulk copy gave up after {self.options.max_restarts} restarts: {restart}")
                log.warning("restarting the pipeline from the last checkpoint: %s", restart)
                # Forget what was acknowledged but not committed: it will be sent again.
                self.progress = dataclasses.replace(self.progress, **self.store.counters(self.options.run_id))
            except _SideRestarted as restarted:
                self._copy_again(restarted)
        self.progress.seconds = time.monotonic() - self.progress.started
        if self.on_progress:
            self.on_progress(self.progress)
        return self.progress

    @property
    def server_run_ids(self) -> dict[str, str]:
        """address -> run_id of every node of every side, as the copy knows them (after
        ``prepare``): what a live run's re-copy loop should start from
        (``SyncOptions.server_run_ids``), so that a restart after the bulk copy is noticed too."""
        return dict(self._server_run_ids)

    # -- restarted sides ------------------------------------------------------------

    def _check_since_last_run(self) -> None:
        """A job resumed after a side restarted has checkpoints that account for keys the side
        may have lost (or SCAN cursors of a source that no longer means them): copy again."""
        run_id = self.options.run_id
        saved = self.store.report(run_id, RUN_IDS_REPORT) or {}
        for address, before in saved.items():
            now = self._server_run_ids.get(address)
            if now is None or now == before:
                continue
            if self.store.checkpoints(run_id) or any(self.store.counters(run_id).values()):
                role, side = self._roles.get(address, ("side", Side.TARGET))
                self._count_side_restart(_SideRestarted(side, f"{role} {address} restarted since the job last ran "
                                                              f"(run_id {before} then, {now} now)"))
                self.store.restart_copy(run_id)
            break
        self._save_run_ids()

    def _save_run_ids(self) -> None:
        self.store.set_report(self.options.run_id, RUN_IDS_REPORT, self._server_run_ids)

    def _confirm_targets(self) -> None:
        """_SideRestarted when a node of the target or a mirror target answers with another
        run_id than the one the copy wrote to."""
        options = ClientOptions(timeout=_BRIEF.timeout, reconnect_seconds=self.options.reconnect_seconds,
                                client_name=_BRIEF.client_name)
        for spec, role in ((self.options.target, "target"),
                           *((mirror, "mirror target") for mirror in self.options.mirrors)):
            with ClusterClient(spec, role=role, error=TargetError, options=options,
                               run_ids=ServerRunIds(self._target_run_ids)) as side:
                try:
                    side.identify()
                except ServerRestarted as exc:
                    raise _SideRestarted.from_error(exc, Side.TARGET, "the coordinator after the last batch") from exc

    def _count_side_restart(self, restarted: _SideRestarted) -> None:
        progress = self.progress
        progress.side_restarts += 1
        progress.side_restart_reasons.append(restarted.reason)
        if progress.side_restarts > self.options.max_side_restarts:
            error = SourceError if restarted.side is Side.SOURCE else TargetError
            raise error(f"{restarted.reason}; a side restarted {progress.side_restarts} times during the copy "
                        f"(more than {self.options.max_side_restarts}): giving up, and nothing it may have lost "
                        "is counted as copied")
        log.warning("%s; copying every key again from the start", restarted.reason)

    def _copy_again(self, restarted: _SideRestarted) -> None:
        """Start the copy over: nothing committed so far is known to be on the target any more."""
        self._count_side_restart(restarted)
        self.store.restart_copy(self.options.run_id)
        old = self.progress
        self.progress = Progress(started=old.started, restarts=old.restarts, side_restarts=old.side_restarts,
                                 side_restart_reasons=old.side_restart_reasons)
        self.prepare()  # who the sides are now: new run_ids, and what the source holds now
        self._save_run_ids()
        if self.on_progress:
            self.on_progress(self.progress)

    def _run_pipeline(self, stop_event: threading.Event | None) -> None:
        plans, target_cluster, mirrors = self._plans, self._target_cluster, self._mirrors
        options = self.options
        checkpoints = self.store.checkpoints(options.run_id)
        streams: dict[tuple[str, int], _Stream] = {}
        scanners: list[ScannerOptions] = []
        log_level = logging.getLogger().getEffectiveLevel()
        self.epoch += 1
        for plan in plans:
            todo = tuple(db for db in plan.dbs if not checkpoints.get((plan.node, db), (0, False))[1])
            if not todo:
                continue
            for db in todo:
                streams[(plan.node, db)] = _Stream()
            scanners.append(ScannerOptions(
                run_id=options.run_id, worker=f"scanner node={plan.node}", source=plan.spec, node=plan.node,
                dbs=todo, start_cursors=tuple((db, checkpoints[(plan.node, db)][0])
                                              for db in todo if (plan.node, db) in checkpoints),
                epoch=self.epoch, match=options.match, type=options.type, count=options.scan_count,
                preserve_ttl=options.preserve_ttl, max_keys_per_second=options.max_keys_per_second,
                max_bytes_per_second=options.max_bytes_per_second, max_pipeline=options.max_pipeline,
                backoff_latency_ms=options.backoff_latency_ms, latency_budget_ms=options.latency_budget_ms,
                reconnect_seconds=options.reconnect_seconds, max_source_share=options.max_source_share,
                server_run_id=plan.server_run_id, log_level=log_level,
                big_key_threshold_bytes=options.big_key_threshold_bytes))
        if not streams:
            return
        if self._resumed or self.epoch > 1:   # no restorer runs now: what a crashed one left is garbage
            self._remove_temporary_keys()
        restorers = [RestorerOptions(
            run_id=options.run_id, worker=f"restorer-{i + 1}", target=options.target,
            target_cluster=target_cluster, mirrors=mirrors, conflict=options.conflict,
            preserve_ttl=options.preserve_ttl, mode=options.mode, source=options.source,
            source_cluster=self._source_cluster, reconnect_seconds=options.reconnect_seconds,
            max_pipeline=options.max_pipeline, log_level=log_level,
            server_run_ids=tuple(self._target_run_ids.items())) for i in range(max(1, options.restorers))]

        ctx = self._context
        depth = options.queue_depth or 2 * len(restorers) + 2
        batches = ctx.Queue(maxsize=depth)
        results = ctx.Queue()
        workers: dict[str, multiprocessing.process.BaseProcess] = {}
        try:
            for r in restorers:
                workers[r.worker] = ctx.Process(target=restorer_main, args=(r, batches, results),
                                                name=r.worker, daemon=True)
            for s in scanners:
                workers[s.worker] = ctx.Process(target=scanner_main, args=(s, batches),
                                                name=s.worker, daemon=True)
            for name, process in workers.items():
                process.start()
                log.info("started %s pid=%d", name, process.pid)
            log.info("bulk copy epoch=%d scanners=%d restorers=%d streams=%d", self.epoch, len(scanners),
                     len(restorers), len(streams))
            self._supervise(streams, workers, [r.worker for r in restorers], batches, results, stop_event)
        finally:
            for process in workers.values():
                if process.is_alive():
                    process.terminate()
            for process in workers.values():
                process.join(timeout=5)
                if process.is_alive():
                    process.kill()
                    process.join()
            for q in (batches, results):
                q.cancel_join_thread()
                q.close()

    def _remove_temporary_keys(self) -> None:
        dbs = sorted({db for plan in self._plans for db in plan.dbs})
        for spec, role in ((self.options.target, "target"),
                           *((mirror, "mirror target") for mirror in self.options.mirrors)):
            with _side(spec, role, TargetError) as side:
                remove_temporary_keys(side, dbs)

    def _supervise(self, streams: dict[tuple[str, int], _Stream], workers: dict, restorer_names: list[str],
                   batches, results, stop_event: threading.Event | None) -> None:
        stopping = False
        stopped: set[str] = set()
        failing_since: dict[str, float] = {}
        ended_at: dict[str, float] = {}
        last_report = 0.0
        while True:
            try:
                frame = frames.decode(results.get(timeout=POLL_SECONDS))
            except queue.Empty:
                frame = None
            if isinstance(frame, frames.Result):
                self._acknowledge(streams, frame)
            elif isinstance(frame, frames.Failed):
                self._failed(frame)
            elif isinstance(frame, frames.Restarted):
                raise _SideRestarted.from_frame(frame)
            elif isinstance(frame, frames.Stop):
                stopped.add(frame.worker)
                if frame.worker not in restorer_names:
                    ended_at[frame.worker] = time.monotonic()
                if stopping and stopped >= set(restorer_names):
                    return
            for name, since in ended_at.items():
                # A scanner's STOP travels behind its batches, so its streams finish soon
                # after; one stopped from outside (SIGTERM) leaves them unfinished.
                node = name.removeprefix("scanner node=")
                unfinished = [key for key, stream in streams.items() if key[0] == node and not stream.done]
                if unfinished and time.monotonic() - since > FAILED_FRAME_WAIT:
                    raise _Restart(f"{name} stopped before finishing db {unfinished[0][1]}")

            if stop_event is not None and stop_event.is_set():
                raise CopyStopped("bulk copy stopped on request; resume continues from the last checkpoint")
            if not stopping and all(stream.done for stream in streams.values()):
                # Every batch is acknowledged: let the restorers finish and exit.
                stopping = True
                for name in restorer_names:
                    batches.put(frames.encode(frames.Stop(frames.COORDINATOR)))
            for name, process in workers.items():
                exitcode = process.exitcode
                if exitcode is None or name in stopped:
                    continue
                if exitcode == 1 and name not in restorer_names:
                    # A scanner that gave up put a FAILED frame on the batches queue; the
                    # restorers pass it on behind the batches before it. Wait for it.
                    since = failing_since.setdefault(name, time.monotonic())
                    if time.monotonic() - since < FAILED_FRAME_WAIT:
                        continue
                if exitcode != 0 or (name in restorer_names and not stopping):
                    # Give a Failed frame it sent just before exiting a chance to be read.
                    self._drain_failures(results)
                    raise _Restart(f"{name} exited with code {exitcode}")
            now = time.monotonic()
            if self.on_progress and now - last_report >= 0.5:
                last_report = now
                self.on_progress(self.progress)

    def _drain_failures(self, results) -> None:
        try:
            while True:
                frame = frames.decode(results.get(timeout=0.05))
                if isinstance(frame, frames.Failed):
                    self._failed(frame)
                elif isinstance(frame, frames.Restarted):
                    raise _SideRestarted.from_frame(frame)
        except queue.Empty:
            return

    def _failed(self, frame: frames.Failed) -> None:
        if frame.who is Side.SOURCE:
            raise SourceError(f"{frame.worker}: {frame.reason}")
        if frame.who is Side.TARGET:
            raise TargetError(f"{frame.worker}: {frame.reason}")
        raise _Restart(f"{frame.worker} failed: {frame.reason}")

    def _acknowledge(self, streams: dict[tuple[str, int], _Stream], result: frames.Result) -> None:
        header = result.header
        stream = streams.get((header.node, header.db))
        if header.epoch != self.epoch or stream is None or header.seq < stream.next_seq:
            return  # a leftover of an earlier incarnation; its batch is being sent again
        stream.pending[header.seq] = result
        self.progress.add(_counters(result))
        ready: list[frames.Result] = []
        while stream.next_seq in stream.pending:
            ready.append(stream.pending.pop(stream.next_seq))
            stream.next_seq += 1
        if not ready:
            return
        last = ready[-1].header
        counters: dict[str, int] = {}
        for acknowledged in ready:
            for name, value in _counters(acknowledged).items():
                counters[name] = counters.get(name, 0) + value
        stream.done = last.last
        error_keys = [e for r in ready for e in r.error_keys]
        self.store.commit_batches(
            self.options.run_id, header.node, header.db, 0 if last.last else last.cursor, last.last, counters,
            error_keys, [c for r in ready for c in r.conflict_keys])
        if error_keys and self.on_error_keys:
            self.on_error_keys(error_keys)


def _side(spec: ConnectionSpec, role: str, error: type[EndpointError]) -> ClusterClient:
    """A short-lived client whose failures name the side that failed."""
    return ClusterClient(spec, role=role, error=error, options=_BRIEF)


def _inspect_target(spec: ConnectionSpec, role: str) -> tuple[bool, dict[str, str]]:
    """Whether a target side is a cluster, and the run_id of each of its masters."""
    with _side(spec, role, TargetError) as side:
        side.connect()
        return bool(side.cluster), side.identify()


def _is_cluster(spec: ConnectionSpec, role: str) -> bool:
    return _inspect_target(spec, role)[0]


def retry_error_keys(store: Store, run_id: str, source: ConnectionSpec, target: ConnectionSpec, *,
                     conflict: ConflictPolicy = ConflictPolicy.REPLACE, preserve_ttl: bool = True,
                     mode: DataMovementMode = DataMovementMode.AUTO,
                     mirrors: tuple[ConnectionSpec, ...] = (), keys: list[bytes] | None = None) -> dict[str, int]:
    """Copy the run's error keys again, in this process, on the restorer's code path.

    A key that now arrives (or that is gone from the source) leaves the error list;
    one that fails again stays, with its attempts counted up.
    """
    from restorer import run_restorer

    records = store.error_keys(run_id)
    if keys:
        wanted = set(keys)
        records = [r for r in records if r.key in wanted]
    outcome = {"retried": len(records), "succeeded": 0, "still_failing": 0}
    if not records:
        return outcome
    target_cluster = _is_cluster(target, "target")
    by_db: dict[int, list] = {}
    for record in records:
        by_db.setdefault(record.db, []).append(record)
    rows_by_db: dict[int, list[tuple[bytes, int, bytes]]] = {}
    gone: set[bytes] = set()
    unreadable: set[tuple[int, bytes]] = set()   # DUMP/PTTL refused on the source: still failing
    with _side(source, "source", SourceError) as reader:
        reader.connect()
        source_cluster = bool(reader.cluster)
        for db, group in by_db.items():
            keys = list(dict.fromkeys(r.key for r in group))
            replies = reader.run(db, keys, [(pack("DUMP", key), pack("PTTL", key)) for key in keys])
            now_ms = int(time.time() * 1000)
            rows: list[tuple[bytes, int, bytes]] = []
            for key, (_node, (payload, pttl)) in zip(keys, replies):
                if isinstance(payload, ReplyError) or isinstance(pttl, ReplyError):
                    unreadable.add((db, key))
                elif payload is None or pttl == -2:
                    gone.add(key)
                else:
                    rows.append((key, now_ms + pttl if preserve_ttl and pttl >= 0 else 0, payload))
            rows_by_db[db] = rows
    for key_records in by_db.values():
        for record in key_records:
            if record.key in gone:
                store.remove_error_key(run_id, record.db, record.key, record.node)
                outcome["succeeded"] += 1
    inbox: queue.Queue = queue.Queue()
    outbox: queue.Queue = queue.Queue()
    for seq, (db, rows) in enumerate(sorted(rows_by_db.items())):
        header = frames.BatchHeader(run_id, source.address, db, 0, seq, 0, True, len(rows), 0)
        inbox.put(frames.encode(frames.Batch(header, rows)))
    inbox.put(frames.encode(frames.Stop(frames.COORDINATOR)))
    options = RestorerOptions(run_id=run_id, worker="retry", target=target, target_cluster=target_cluster,
                              mirrors=tuple((m, _is_cluster(m, "mirror target")) for m in mirrors), conflict=conflict,
                              preserve_ttl=preserve_ttl, mode=mode, source=source, source_cluster=source_cluster)
    if not run_restorer(options, inbox, outbox):
        raise TargetError("retry could not reach the target")
    failed_again: set[tuple[int, bytes]] = set()
    while not outbox.empty():
        frame = frames.decode(outbox.get())
        if isinstance(frame, frames.Result):
            store.add_error_keys(run_id, frame.error_keys)
            failed_again |= {(e.db, e.key) for e in frame.error_keys}
    for db, group in by_db.items():
        for record in group:
            if record.key in gone:
                continue
            if (db, record.key) in failed_again or (db, record.key) in unreadable:
                outcome["still_failing"] += 1
            else:
                store.remove_error_key(run_id, db, record.key, record.node)
                outcome["succeeded"] += 1
    return outcome
