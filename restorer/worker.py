"""The restorer process: batches in, ``RESTORE ... ABSTTL`` pipelines out, one Result per batch.

The worker loop has one shape (pgcopydb's): take a frame, switch on its kind,
``STOP`` ends the loop, ``BATCH`` is applied to the target and to each mirror
target, a target that stays unreachable ends the loop with ``FAILED``. A key
that fails never stops the batch or the run: it becomes an error key.

Each target is one ``eve.redis.cluster.ClusterClient``: RESTOREs are grouped per
node, MOVED/ASK followed, transient replies (OOM, LOADING, BUSY, TRYAGAIN,
MASTERDOWN, CLUSTERDOWN, READONLY) retried with backoff up to ``max_attempts``,
lost connections reopened for ``reconnect_seconds``. Per key, the final reply
decides (``eve.redis.cluster.classify``):

    OK                              restored
    BUSYKEY                         the conflict policy decides (restorer.policies)
    DUMP payload version/checksum,  permanent: the target cannot read this RDB format
      Bad data format
    transient after max_attempts    an error key, with its attempts
    anything else                   permanent, with the server's message

A pipeline whose connection dropped is sent again whole: ``RESTORE ... REPLACE``
makes that harmless; under ``NONE`` a key the lost pipeline had already
restored answers ``BUSYKEY`` the second time and is recognised as the job's own
write, not a conflict (``restorer.policies``; under ``MERGE`` it is merged with
itself). A pipeline that keeps failing
although the server comes back (a payload the server drops the connection on,
a key slower than the timeout) is retried one key at a time, so only the
offending key becomes an error key.

A reconnect that finds another server behind a target's address (a new
``run_id``: it restarted, and a non-persistent one came back empty) is not
gone over in silence: the restorer puts ``RESTARTED`` naming the side and both
run_ids, gives the batch no Result, and ends; the coordinator decides what to
copy again (``eve.bulk.pipeline``). The run_ids the job wrote to come in the
options, so a restorer started after the restart knows it too.

A batch's big keys (``Batch.big``: the scanner did not DUMP them) are copied in
chunks from the source (``restorer.bigkeys``), to the target and each mirror target.

Rows whose absolute expiry has passed are skipped (``Result.skipped``), with or
without TTL preservation: the key is gone from the source too. A cluster
target has only db 0, so rows of another db become error keys there.

How each key moves is decided in one place, ``_Target.route``, from the mode and
the target's format (``eve.redis.rdb.TargetFormat``, read from ``INFO server``
when the target is connected), before anything is sent:

    mode           the target reads the payload   ... knows its type code   ... does not
    AUTO           RESTORE as is                  RESTORE relabelled        logical copy
    DUMP_RESTORE   RESTORE as is                  RESTORE relabelled        RESTORE as is (the target's
                                                                            refusal is the error key)
    LOGICAL        logical copy, always

In AUTO a payload the target still refuses (``payload_refused``) is copied
logically too; in DUMP_RESTORE it is an error key naming the target's format,
the payload's and the server's reply. Logical copies (``restorer.logical_copy``)
read the value from the source again and apply the conflict policy; a key that
cannot be copied logically is an error key saying why the payload could not be
restored and why the logical copy failed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from operator import itemgetter
from typing import Any, Protocol

from opentelemetry import metrics, propagate, trace

from eve.core.endpoints import ConnectionSpec
from eve.core.enums import DataMovementMode
from eve.core.errors import (
    EndpointError,
    Side,
    TargetError,
    UnsupportedTypeError,
    name_module,
)
from eve.core.frames import (
    COORDINATOR,
    Batch,
    ConflictRow,
    ErrorKeyRow,
    Failed,
    FrameError,
    Restarted,
    Result,
    Stop,
    decode,
    encode,
)
from eve.redis.cluster import (
    ASK,
    BUSYKEY,
    MOVED,
    TRANSIENT,
    ClientOptions,
    ClusterClient,
    NodeLeft,
    PipelineKeepsFailing,
    ServerRestarted,
    ServerRunIds,
    classify,
    payload_refused,
)
from eve.redis.rdb import (
    AS_IS,
    RELABEL,
    TargetFormat,
    describe_type,
    payload_rdb_version,
    payload_type,
    relabel,
    target_format,
)
from eve.redis.wire import ReplyError
from restorer.bigkeys import CHUNKED_MODULE_TYPES, BigKeys
from restorer.logical_copy import LogicalWriter, SourceRead, SourceReader
from restorer.options import RestorerOptions
from restorer.policies import CONFLICT, RESTORED, conflict_handling

__all__ = ["main", "run_restorer"]

logger = logging.getLogger("eve.restorer")

OK = b"OK"

Row = tuple[bytes, int, bytes]
_KEY = itemgetter(0)
_PAYLOAD = itemgetter(2)


class _Queue(Protocol):
    def get(self) -> Any: ...
    def put(self, item: Any) -> None: ...


class _Log(logging.LoggerAdapter):
    """Every line names the process: ``restorer-1 pid=1234 ...`` (STYLE.md habit 7)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        worker = self.extra["worker"] if self.extra else "restorer"
        return f"{worker} pid={os.getpid()} {msg}", kwargs


@dataclasses.dataclass
class _Outcome:
    """What one target did with one batch."""

    restored: int = 0
    bytes: int = 0
    skipped: int = 0       # gone from the source by the time of a logical read
    logical: int = 0       # of the restored keys, those copied logically
    conflicts: list[ConflictRow] = dataclasses.field(default_factory=list)
    errors: list[ErrorKeyRow] = dataclasses.field(default_factory=list)
    # AUTO: rows whose RESTORE the target refused for their payload, with why: copied logically next.
    refused: list[tuple[Row, str]] = dataclasses.field(default_factory=list)


class _Target:
    """One target endpoint (the target or a mirror target): RESTORE pipelines through one
    cluster client, and the conflict policy for BUSYKEY replies."""

    def __init__(self, options: RestorerOptions, spec: ConnectionSpec, cluster: bool, role: str,
                 log: _Log, source: SourceReader | None) -> None:
        self.options = options
        self.role = role
        self.address = spec.address
        self.log = log
        self.mode = options.mode
        self.source = source
        self.big_keys: BigKeys | None = None      # the restorer's, for filters copied logically
        self.format: TargetFormat | None = None   # learned on connect
        self._accepted: dict[bytes, bool] = {}    # payload version bytes -> restorable as is
        self._plans: dict[tuple[int, bytes], str] = {}   # (type byte, version bytes) -> format.plan
        self.handling = conflict_handling(options.conflict, options.worker)
        self.client = ClusterClient(
            spec, role=role, error=TargetError, cluster=cluster, log=log,
            # A reopened connection has lost what the policy loaded into it (the merge script).
            on_reconnect=self.handling.forget, run_ids=ServerRunIds(dict(options.server_run_ids), log=log),
            options=ClientOptions(timeout=options.timeout, reconnect_seconds=options.reconnect_seconds,
                                  max_attempts=options.max_attempts, retry_delay=options.retry_delay,
                                  client_name=f"eve-{options.worker}"))
        # RESTORE key ttl payload ABSTTL [REPLACE], and RESTORE key 0 payload [REPLACE]
        # for keys without expiry: two templates, one %-format per key.
        replace = b"$7\r\nREPLACE\r\n" if self.handling.replace else b""
        extra = 1 if self.handling.replace else 0
        self._with_ttl = (b"*%d\r\n$7\r\nRESTORE\r\n" % (5 + extra)
                          + b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$6\r\nABSTTL\r\n" + replace)
        self._without_ttl = (b"*%d\r\n$7\r\nRESTORE\r\n" % (4 + extra)
                             + b"$%d\r\n%b\r\n$1\r\n0\r\n$%d\r\n%b\r\n" + replace)
        self.writer = LogicalWriter(self.client, self.handling, options.worker, options.max_attempts)

    def connect(self) -> None:
        """Open the connection(s), retrying for reconnect_seconds; EndpointError when that fails.
        Learns the target's format (family and RDB version) once, from INFO server."""
        self.client.connect()
        self.format = target_format(self.client.info("server"))
        if self.client.cluster:
            self.log.info("%s %s: cluster of %d masters, %s, mode %s", self.role, self.address,
                          len(self.client.masters), self.format, self.mode.value)
        else:
            self.log.info("%s %s: connected, %s, mode %s", self.role, self.address, self.format, self.mode.value)

    def close(self) -> None:
        self.client.close()

    # -- restoring ---------------------------------------------------------------

    def restore(self, db: int, rows: list[Row]) -> _Outcome:
        out = _Outcome()
        restoring, logical = self.route(rows)
        step = self.options.max_pipeline
        for start in range(0, len(restoring), step):
            self._restore_rows(db, restoring if len(restoring) <= step else restoring[start:start + step], out)
        logical += out.refused
        if logical:
            self._copy_logically(db, logical, out)
        return out

    def route(self, rows: list[Row]) -> tuple[list[Row], list[tuple[Row, str]]]:
        """The one decision per key (module docstring): the rows to RESTORE (relabelled where
        the target needs it), and the rows to copy logically, each with why."""
        if self.mode is DataMovementMode.LOGICAL:
            return [], [(row, "") for row in rows]
        accepted = self._accepted
        versions = {payload[-10:-8] for _key, _expiry, payload in rows}
        if all(accepted.get(version) or self._learn_version(version) for version in versions):
            return rows, []   # the common case: every payload restores as it is
        assert self.format is not None
        plans, plan, rdb = self._plans, self.format.plan, self.format.rdb
        restoring: list[Row] = []
        logical: list[tuple[Row, str]] = []
        for row in rows:
            payload = row[2]
            kind = (payload[0] if payload else -1, payload[-10:-8])
            how = plans.get(kind) or plans.setdefault(kind, plan(payload))
            if how == RELABEL:
                restoring.append((row[0], row[1], relabel(row[2], rdb)))
            elif how == AS_IS or self.mode is DataMovementMode.DUMP_RESTORE:
                restoring.append(row)
            else:
                logical.append((row, self._cannot_read(row[2])))
        return restoring, logical

    def _learn_version(self, version: bytes) -> bool:
        assert self.format is not None
        accepted = self._accepted[version] = len(version) == 2 and self.format.accepts_version(
            int.from_bytes(version, "little"))
        return accepted

    def _cannot_read(self, payload: bytes) -> str:
        """Why a payload cannot be restored here: the target's format, the payload's type and version."""
        try:
            version = f"RDB {payload_rdb_version(payload)}"
        except ValueError:
            version = "an unknown RDB version"
        kind = describe_type(payload[0]) if payload else "empty"
        return f"{self.role} {self.format} cannot restore the {kind} payload of {version}"

    def _pack(self, rows: list[Row]) -> list[bytes]:
        with_ttl, without_ttl = self._with_ttl, self._without_ttl
        return [
            without_ttl % (len(key), key, len(payload), payload) if not expiry
            else with_ttl % (len(key), key, len(ttl := b"%d" % expiry), ttl, len(payload), payload)
            for key, expiry, payload in rows
        ]

    def _restore_rows(self, db: int, rows: list[Row], out: _Outcome) -> None:
        retries: dict[bytes, int] = {}   # per key, BUSYKEY resolutions that must be sent again
        while rows:
            routed = self.client.execute(db, list(map(_KEY, rows)), self._pack(rows), expect=OK)
            busy: dict[tuple[str, bool], list[Row]] = {}
            for group in routed.groups:
                if group.clean:
                    out.restored += len(group.indexes)
                    out.bytes += (sum(map(len, map(_PAYLOAD, rows))) if len(group.indexes) == len(rows)
                                  else sum([len(rows[index][2]) for index in group.indexes]))
                    continue
                for index, reply in zip(group.indexes, group.replies):
                    row = rows[index]
                    if reply == OK:
                        out.restored += 1
                        out.bytes += len(row[2])
                    elif reply.__class__ is ReplyError:
                        kind, reason = classify(str(reply))
                        if kind == BUSYKEY:
                            busy.setdefault((group.address, group.asking), []).append(row)
                        elif payload_refused(reason):
                            self._refused(out, db, group.address, row, str(reply), routed.attempts_of(index))
                        else:
                            self._error(out, db, group.address, row, reason, routed.attempts_of(index))
                    else:
                        self._error(out, db, group.address, row, f"unexpected reply to RESTORE: {reply!r:.200}",
                                    routed.attempts_of(index))
            rows = []
            for (address, asking), busy_rows in busy.items():
                rows += self._resolve(db, address, asking, busy_rows, retries, out)
            if rows:
                time.sleep(self.options.retry_delay)

    def _resolve(self, db: int, address: str, asking: bool, busy: list[Row], retries: dict[bytes, int],
                 out: _Outcome) -> list[Row]:
        """BUSYKEY rows: the conflict policy decides. Returns the rows to restore again (a merge
        that met a redirection or a transient error)."""
        try:
            resolutions = self.handling.resolve(lambda packed, count: self.client.send(address, packed, count),
                                                address, busy, asking)
        except (PipelineKeepsFailing, NodeLeft) as exc:
            return self._again(db, address, busy, retries, f"merge failed: {exc}", out)
        again: list[Row] = []
        for row, (status, detail) in zip(busy, resolutions):
            if status == RESTORED:
                out.restored += 1
                out.bytes += len(row[2])
            elif status == CONFLICT:
                out.conflicts.append(ConflictRow(row[0], db, payload_type(row[2]), detail))
            else:
                kind, reason = classify(detail)
                if kind in (TRANSIENT, MOVED, ASK):
                    again += self._again(db, address, [row], retries, reason, out)
                elif kind == BUSYKEY:
                    out.conflicts.append(ConflictRow(row[0], db, payload_type(row[2]), "BUSYKEY"))
                else:
                    self._error(out, db, address, row, reason, retries.get(row[0], 0) + 1)
        return again

    def _again(self, db: int, address: str, rows: list[Row], retries: dict[bytes, int], reason: str,
               out: _Outcome) -> list[Row]:
        again = []
        for row in rows:
            attempts = retries[row[0]] = retries.get(row[0], 0) + 1
            if attempts >= self.options.max_attempts:
                self._error(out, db, address, row, reason, attempts)
            else:
                again.append(row)
        return again

    def _error(self, out: _Outcome, db: int, address: str, row: Row, reason: str, attempts: int) -> None:
        key, _expiry, payload = row
        out.errors.append(ErrorKeyRow(key, db, address, payload_type(payload), len(payload), reason, attempts))

    def _refused(self, out: _Outcome, db: int, address: str, row: Row, message: str, attempts: int) -> None:
        """The target refused the payload: copied logically next (AUTO), else an error key."""
        why = f"{self._cannot_read(row[2])}: {message}"
        if self.mode is DataMovementMode.AUTO:
            out.refused.append((row, why))
        else:
            self._error(out, db, address, row, f"{why} (mode {self.mode.value} has no logical fallback)", attempts)

    # -- logical copies ------------------------------------------------------------

    def _copy_logically(self, db: int, rows: list[tuple[Row, str]], out: _Outcome) -> None:
        """Read each key from the source again and write it here (restorer.logical_copy)."""
        if self.source is None:
            for row, why in rows:
                self._logical_error(out, db, self.address, row, why, "no source connection was given", 1)
            return
        reads = self.source.read(db, [row[0] for row, _why in rows])
        writing: list[tuple[Row, str, SourceRead]] = []
        chunked: list[tuple[bytes, int]] = []
        for (row, why), read in zip(rows, reads):
            if isinstance(read.error, UnsupportedTypeError) and read.error.type in CHUNKED_MODULE_TYPES \
                    and self.big_keys is not None:
                # Bloom and Cuckoo filters have no one-read form: the module's own chunks (issue 23).
                chunked.append((row[0], len(row[2])))
            elif read.error is not None:
                self._logical_error(out, db, self.source.client.address, row, why, str(read.error), 1)
            elif read.value is None:
                out.skipped += 1
            else:
                writing.append((row, why, read))
        written = self.writer.write(db, [(row[0], read) for row, _why, read in writing])
        for (row, why, read), outcome in zip(writing, written):
            if outcome.status == RESTORED:
                out.restored += 1
                out.logical += 1
                out.bytes += len(row[2])
            elif outcome.status == CONFLICT:
                out.conflicts.append(ConflictRow(row[0], db, read.value.type, outcome.detail))  # type: ignore[union-attr]
            else:
                self._logical_error(out, db, outcome.node, row, why,
                                    name_module(read.value.type, outcome.detail),  # type: ignore[union-attr]
                                    outcome.attempts)
        if chunked:
            assert self.big_keys is not None
            big = self.big_keys.copy(db, chunked, self.client)
            out.restored += big.restored
            out.logical += big.restored
            out.bytes += big.bytes
            out.skipped += big.skipped
            out.conflicts += big.conflicts
            out.errors += big.errors

    def _logical_error(self, out: _Outcome, db: int, address: str, row: Row, why: str, failure: str,
                       attempts: int) -> None:
        self._error(out, db, address, row, f"{why}; logical copy failed: {failure}" if why
                    else f"logical copy failed: {failure}", attempts)


class _Restorer:
    """Applies batches to the target and every mirror target; builds Result frames."""

    def __init__(self, options: RestorerOptions, tracer: trace.Tracer, meter: metrics.Meter, log: _Log) -> None:
        self.options = options
        self.tracer = tracer
        self.log = log
        # One source connection for the logical copies of every target, opened on first use.
        self.source = (SourceReader.for_restorer(options, log)
                       if options.source is not None and options.mode is not DataMovementMode.DUMP_RESTORE else None)
        self.target = _Target(options, options.target, options.target_cluster, "target", log, self.source)
        self.mirrors = [_Target(options, spec, cluster, "mirror target", log, self.source)
                        for spec, cluster in options.mirrors]
        self.big_keys = BigKeys(options.source, options.source_cluster, self.target.client.options,
                                worker=options.worker, policy=options.conflict, preserve_ttl=options.preserve_ttl)
        for side in (self.target, *self.mirrors):
            side.big_keys = self.big_keys   # filters copied logically go in chunks (_Target._copy_logically)
        self._attributes = {"eve.worker": options.worker, "eve.run_id": options.run_id}
        self._keys = meter.create_counter("eve.restorer.keys", unit="{key}", description="keys restored")
        self._bytes = meter.create_counter("eve.restorer.bytes", unit="By", description="DUMP payload bytes restored")
        self._conflicts = meter.create_counter("eve.restorer.conflicts", unit="{key}",
                                               description="keys left as they were on the target (conflicts)")
        self._errors = meter.create_counter("eve.restorer.errors", unit="{key}", description="error keys")

    def connect(self) -> None:
        for target in (self.target, *self.mirrors):
            target.connect()

    def close(self) -> None:
        for target in (self.target, *self.mirrors):
            target.close()
        self.big_keys.close()
        if self.source is not None:
            self.source.close()

    def apply(self, batch: Batch) -> Result:
        header = batch.header
        links = []
        if header.trace:
            scanned = trace.get_current_span(propagate.extract(header.trace)).get_span_context()
            if scanned.is_valid:
                links.append(trace.Link(scanned))
        with self.tracer.start_as_current_span("restore batch", links=links) as span:
            rows = batch.rows
            # ABSTTL: the expiry is absolute, so a key whose expiry passed in transit
            # is skipped rather than created (DESIGN.md 4.3). It is gone from the
            # source too, so it is skipped whether or not TTLs are preserved.
            now_ms = time.time_ns() // 1_000_000
            live = [row for row in rows if not row[1] or row[1] > now_ms]
            skipped = len(rows) - len(live)
            if not self.options.preserve_ttl:
                live = [(key, 0, payload) for key, _expiry, payload in live]
            out = self.target.restore(header.db, live)
            error_keys = list(out.errors)
            for mirror in self.mirrors:
                error_keys += mirror.restore(header.db, live).errors
            if batch.big:   # copied in chunks from the source, never DUMPed (restorer.bigkeys)
                big = self.big_keys.copy(header.db, batch.big, self.target.client)
                out.restored += big.restored
                out.bytes += big.bytes
                out.conflicts += big.conflicts
                skipped += big.skipped
                error_keys += big.errors
                for mirror in self.mirrors:
                    error_keys += self.big_keys.copy(header.db, batch.big, mirror.client).errors
            result = Result(header, self.options.worker, restored=out.restored, skipped=skipped + out.skipped,
                            conflicts=len(out.conflicts), failed=len(error_keys), bytes=out.bytes,
                            error_keys=error_keys, conflict_keys=out.conflicts)
            span.set_attributes({
                "eve.node": header.node, "eve.db": header.db, "eve.seq": header.seq,
                "eve.target": self.target.address, "eve.keys": len(rows), "eve.restored": result.restored,
                "eve.skipped": result.skipped, "eve.conflicts": result.conflicts, "eve.failed": result.failed,
                "eve.logical": out.logical,
            })
        self._keys.add(result.restored, self._attributes)
        self._bytes.add(result.bytes, self._attributes)
        if result.conflicts:
            self._conflicts.add(result.conflicts, self._attributes)
        if result.failed:
            self._errors.add(result.failed, self._attributes)
            first = error_keys[0]
            self.log.warning("batch node=%s db=%d seq=%d: %d error keys (first: %r on %s: %s)", header.node,
                             header.db, header.seq, result.failed, first.key[:100], first.node, first.reason)
        return result


def run_restorer(options: RestorerOptions, batches: _Queue, results: _Queue, *,
                 tracer: trace.Tracer | None = None, meter: metrics.Meter | None = None) -> bool:
    """The worker loop. True when it stopped on STOP; False after putting a FAILED frame.

    The target and mirror targets are connected before the first frame is taken:
    one unreachable at start gives ``Failed(worker, Side.TARGET, ...)`` and leaves
    every frame in the queue for the other restorers. A target lost while a batch
    is applied gives the same FAILED frame and that batch gets no Result (its
    cursor must not be committed). A target found restarted (at start or on a
    reconnect) gives ``Restarted(...)`` and returns False the same way. Result counts are the primary target's; a
    mirror target's error keys are added to ``failed`` and ``error_keys`` (``node``
    names the mirror), its conflicts are not reported.
    """
    log = _Log(logger, {"worker": options.worker})
    worker = options.worker
    restorer = _Restorer(options, tracer or trace.get_tracer("eve.restorer"),
                         meter or metrics.get_meter("eve.restorer"), log)
    mirrors = "".join(f", mirror {spec.address}" for spec, _cluster in options.mirrors)
    log.info("run %s: restoring into %s%s (%s) in mode %s under conflict policy %s%s", options.run_id,
             options.target.address, " (cluster)" if options.target_cluster else "", "TTL kept"
             if options.preserve_ttl else "TTL dropped", options.mode.value, options.conflict.value, mirrors)
    batches_done = 0
    try:
        try:
            restorer.connect()
        except ServerRestarted as exc:
            return _restarted(log, results, worker, exc, "before the first batch")
        except EndpointError as exc:  # unreachable, credentials refused, or no usable slot map
            log.error("%s", exc)
            results.put(encode(Failed(worker, Side.TARGET, str(exc))))
            return False
        while True:
            raw = batches.get()
            try:
                frame = decode(raw)
            except FrameError as exc:
                log.error("%s", exc)
                results.put(encode(Failed(worker, Side.INTERNAL, str(exc))))
                return False
            if isinstance(frame, (Stop, Failed, Restarted)) and frame.worker != COORDINATOR:
                # A scanner's end or failure travels behind its batches; the
                # coordinator reads it from the results queue.
                results.put(raw)
                continue
            if isinstance(frame, Stop):
                log.info("stop after %d batches", batches_done)
                results.put(encode(Stop(worker)))
                return True
            if not isinstance(frame, Batch):
                reason = f"unexpected {type(frame).__name__} frame on the batches queue"
                log.error("%s", reason)
                results.put(encode(Failed(worker, Side.INTERNAL, reason)))
                return False
            try:
                result = restorer.apply(frame)
            except ServerRestarted as exc:
                return _restarted(log, results, worker, exc, f"batch node={frame.header.node} db={frame.header.db} "
                                                             f"seq={frame.header.seq} not applied")
            except EndpointError as exc:  # a side lost for reconnect_seconds (the source: logical reads, big keys)
                log.error("%s (batch node=%s db=%d seq=%d not applied)", exc, frame.header.node,
                          frame.header.db, frame.header.seq)
                results.put(encode(Failed(worker, exc.side or Side.TARGET, str(exc))))
                return False
            results.put(encode(result))
            batches_done += 1
    finally:
        restorer.close()


def _restarted(log: _Log, results: _Queue, worker: str, exc: ServerRestarted, where: str) -> bool:
    log.error("%s (%s)", exc, where)
    results.put(encode(Restarted(worker, Side.TARGET, exc.role, exc.address, exc.before, exc.after)))
    return False


def main(options: RestorerOptions, batches: _Queue, results: _Queue) -> None:
    """Entry point of a spawned restorer process; exits 0 after STOP, 1 after FAILED or RESTARTED."""
    from eve.core import telemetry
    from eve.core.child_process import die_with_parent, ignore_interrupts

    die_with_parent()
    ignore_interrupts()
    logging.basicConfig(level=options.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log = _Log(logger, {"worker": options.worker})
    ok = False
    tel = None
    try:
        tel = telemetry.setup("eve-restorer")
        ok = run_restorer(options, batches, results, tracer=tel.tracer("eve.restorer"),
                          meter=tel.meter("eve.restorer"))
    except BaseException as exc:
        log.exception("internal error")
        try:
            results.put(encode(Failed(options.worker, Side.INTERNAL, f"{type(exc).__name__}: {exc}")))
        except Exception:
            log.exception("cannot report the failure to the coordinator")
    finally:
        if tel is not None:
            try:
                tel.shutdown()
            except Exception:
                log.exception("telemetry shutdown failed")
    sys.exit(0 if ok else 1)
