"""Convergence of a live migration: dirty keys re-copied from the authoritative side (DESIGN.md 6).

Every write made while a run is live marks its key dirty (the interlay reports
the keys of each write it forwards; ``eve.live.notifications`` adds keys written
by clients that bypass it). ``DirtyKeySync`` re-copies dirty keys from the
authoritative side to every other side until the backlog is small and steady:

    interlay / keyspace notifications --mark(db, key)--> eve.live.backlog.DirtyKeys
    DirtyKeySync workers: take -> DUMP + PTTL on the authoritative side
                                -> RESTORE key <abs expiry> payload ABSTTL REPLACE on every other side
                                   (DEL when the key is gone: DUMP nil or PTTL -2)
                                -> where the payload is refused: a logical copy (eve.redis.logical)
                          -> done

Why this converges without a stale copy landing last: a key is in flight at most
once. ``DirtyKeys`` hands a key to one worker and, when the key is marked again
while that worker's DUMP may predate the write, holds the new mark until the
worker reports the key done, then queues it again. So every write is followed by
a read that starts after it, and two copies of one key never race. The rule needs
the marks to come *after* the write executed (see ``DirtyKeys.mark``).

Re-copies always use ``REPLACE``: the application wrote these keys during the run,
so they win over the conflict policy (DESIGN.md 6.2). Expiry is absolute, computed
from PTTL when it is read (DESIGN.md 4.3); a key whose expiry passed before it is
written is deleted on the other sides rather than created.

A dirty key above ``SyncOptions.big_key_threshold_bytes`` (``MEMORY USAGE`` on the
authoritative side, one round trip per batch) is not DUMPed: it is copied in chunks
into a temporary key and renamed into place (``restorer.bigkeys``), as the bulk copy
does, so a big key written during the run is re-copied without holding either side.

When a side refuses a payload (``eve.redis.cluster.payload_refused``:
"DUMP payload version or checksum are wrong", "Bad data format"), the key is copied
to it logically instead (``eve.redis.logical``): read on the authoritative side by one
script (type, PTTL and value, atomically), written with one MULTI: DEL, the type's
own commands, PEXPIREAT, EXEC. This is reverse sync after cutover from a newer
engine (Valkey 9, Redis 8.2) to an older source (Redis 7.0, Valkey 8.1), whose
RESTORE refuses every payload of the newer RDB format: a side that refused one for
its version is remembered (per worker thread, while its connections last) and
later batches go to it logically at once, without a RESTORE first. A key gone by
the time of the logical read is deleted on that side. Stream consumer groups and
per-field hash TTLs are carried (``eve.redis.logical`` says what is not: logged); a
side that cannot hold field TTLs fails the key. A key of a module
type cannot be copied logically: its ``RecopyFailure`` says so.
``RecopyResult.logical`` counts the keys copied logically.

Each side is one ``eve.redis.cluster.ClusterClient`` per worker thread: pipelines
routed by slot, redirections (MOVED/ASK) followed, LOADING, BUSY, TRYAGAIN,
CLUSTERDOWN, MASTERDOWN, READONLY and OOM retried with backoff, then failures.
Who failed, per key: a reply that refuses the key (a module-type key whose payload
the side refuses, a cluster side asked for db 3, ...) is a ``RecopyFailure`` handed to
``on_error``; the key leaves the backlog and becomes an error key of the run. A side
that cannot be reached for ``reconnect_seconds`` raises ``UnavailableError`` from
``recopy``; ``run`` and ``drain`` put the batch back (nothing is lost) and retry.

A side that restarted (a reconnect finds another ``run_id`` behind its address:
``eve.redis.cluster.ServerRestarted``) may have lost every key copied to it, not
only the batch in flight: a non-persistent target comes back empty, and a dirty
key already copied is never marked again. So the batch is put back and the
backlog is flagged for a full resync of every db (``DirtyKeys.mark_all(None)``,
the flag a FLUSHALL sets): the live run compares the sides and marks whatever
differs (``LiveRun.reconcile_if_needed``). The restart is then accepted, once for
every worker thread (they share one ``ServerRunIds``), and the loop goes on with
the new server. ``SyncOptions.server_run_ids`` are the run_ids the caller knows
the sides by (the bulk copy's), so a restart between the bulk copy and the first
re-copy is noticed too. A loop with nothing to copy would meet a restart only with
the next dirty key: an idle worker asks the sides who they are every
``SIDES_CHECK_SECONDS`` (``check_sides``, also the caller's to use).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import ConfigError, EndpointError
from eve.core.frames import ErrorKeyRow
from eve.live.backlog import DEFAULT_MAX_BACKLOG, DirtyKeys, Item
from eve.redis.logical import (
    LogicalCopyError,
    LogicalValue,
    UnsupportedTypeError,
    check_write,
    pack_read,
    pack_write,
    parse_read,
)
from eve.redis.cluster import (
    ClientOptions,
    ClusterClient,
    ServerRestarted,
    ServerRunIds,
    classify,
    is_transient,
    payload_refused,
    quotes_transient,
    refusal,
)
from eve.redis.rdb import payload_type
from eve.redis.wire import ReplyError, pack
from restorer.bigkeys import COPIED, GONE, ChunkedCopier
from scanner.options import DEFAULT_BIG_KEY_THRESHOLD_BYTES

__all__ = ["DEFAULT_BATCH", "SIDES_CHECK_SECONDS", "DirtyKeySync", "RecopyFailure", "RecopyResult", "SyncOptions",
           "SyncStats"]

log = logging.getLogger("eve.live.recopy")

DEFAULT_BATCH = 500
IDLE_WAIT = 0.1              # a worker with nothing to do sleeps on the backlog's condition this long
UNAVAILABLE_BACKOFF = 1.0    # after a side stayed unreachable for reconnect_seconds
SIDES_CHECK_SECONDS = 2.0    # an idle worker checks that no side restarted this often
CLIENT_NAME = "eve-sync"
_DUMP = b"*2\r\n$4\r\nDUMP\r\n$%d\r\n%b\r\n"
_PTTL = b"*2\r\n$4\r\nPTTL\r\n$%d\r\n%b\r\n"
_DEL = b"*2\r\n$3\r\nDEL\r\n$%d\r\n%b\r\n"
_OK = b"OK"
_NEWER_FORMAT = "payload version or checksum"   # a RESTORE refusal that every payload will get



@dataclass(frozen=True)
class SyncOptions:
    """What one re-copy loop needs; frozen and picklable (STYLE.md habit 1)."""

    authoritative: ConnectionSpec        # the side whose value wins: the source before cutover, the target after
    others: tuple[ConnectionSpec, ...]   # target and mirror targets before cutover; the source after (reverse sync)
    preserve_ttl: bool = True
    max_backlog: int = DEFAULT_MAX_BACKLOG  # beyond it DirtyKeys drops marks and flags a full re-verify
    batch: int = DEFAULT_BATCH           # keys per take (and per pipeline)
    # Worker threads. One key is never in flight in two workers at once (DirtyKeys holds a
    # key marked again while in flight until that re-copy is done), which gives the per-key
    # order hash sharding would, without a hot shard starving the others.
    workers: int = 1
    timeout: float = 10.0                # per pipeline
    reconnect_seconds: float = 10.0      # a side unreachable longer than this fails the batch (it is re-queued)
    max_attempts: int = 3                # for transient error replies (LOADING, TRYAGAIN, OOM, ...)
    retry_delay: float = 0.05            # doubled per attempt
    # (address, run_id) of the sides' servers as the caller wrote to them (the bulk copy's): one that
    # answers with another run_id restarted, and a full resync is flagged. Others are learned.
    server_run_ids: tuple[tuple[str, str], ...] = ()
    # Keys above this (MEMORY USAGE) are copied in chunks, never DUMPed (restorer.bigkeys); 0: off.
    big_key_threshold_bytes: int = DEFAULT_BIG_KEY_THRESHOLD_BYTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "server_run_ids", tuple((str(address), str(run_id))
                                                         for address, run_id in dict(self.server_run_ids).items()))
        if not self.others:
            raise ConfigError("at least one side to copy to is required", field="others")
        if self.authoritative.address in {spec.address for spec in self.others}:
            raise ConfigError(f"{self.authoritative.address} is both the authoritative side and a side "
                              "copied to", field="others")
        for name in ("max_backlog", "batch", "workers", "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be at least 1, got {getattr(self, name)}", field=name)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RecopyFailure:
    """One key one side refused; it leaves the backlog and becomes an error key of the run."""

    db: int
    key: bytes
    side: str       # the endpoint's address as configured (options.authoritative or one of options.others)
    node: str       # the node that answered (a cluster master), else the same as side
    type: str       # from the DUMP payload, "unknown" when there was none
    size: int       # payload bytes, 0 when there was none
    reason: str
    attempts: int = 1

    def as_error_key(self) -> ErrorKeyRow:
        return ErrorKeyRow(self.key, self.db, self.node, self.type, self.size, self.reason, self.attempts)


@dataclass
class RecopyResult:
    """Per key: copied (RESTOREd or copied logically on every other side), deleted (gone on
    the authoritative side, or expired, and deleted on every other side), or failed (any
    side refused it). ``logical`` counts the copied keys that went to at least one side by a
    logical copy (that side refuses the authoritative side's DUMP payloads)."""

    copied: int = 0
    deleted: int = 0
    failed: int = 0
    failures: list[RecopyFailure] = field(default_factory=list)
    logical: int = 0
    # Keys a side answered only with a transient error (CLUSTERDOWN during a failover or a
    # restart, TRYAGAIN during a resharding, LOADING...) after every retry: copied again later.
    retry: list[Item] = field(default_factory=list)
    # side (address) -> the last transient reply it gave for the keys in ``retry``: why it refuses.
    refused: dict[str, str] = field(default_factory=dict)

    def add(self, other: "RecopyResult") -> None:
        self.copied += other.copied
        self.deleted += other.deleted
        self.failed += other.failed
        self.failures.extend(other.failures)
        self.logical += other.logical
        self.retry.extend(other.retry)
        self.refused.update(other.refused)

    def put_off_transient(self) -> None:
        """Keys that failed only transiently move from ``failures`` to ``retry``: a side that
        heals (a cluster electing a master, a server loading its data) loses nothing."""
        transient: dict[Item, bool] = {}
        for failure in self.failures:
            item = (failure.db, failure.key)
            transient[item] = transient.get(item, True) and quotes_transient(failure.reason)
        retry = [item for item, only_transient in transient.items() if only_transient]
        if retry:
            put_off = set(retry)
            for failure in self.failures:
                if (failure.db, failure.key) in put_off:
                    self.refused[failure.side] = failure.reason
            self.failures = [f for f in self.failures if (f.db, f.key) not in put_off]
            self.failed -= len(retry)
            self.retry.extend(retry)


@dataclass(frozen=True)
class SyncStats:
    backlog: int
    in_flight: int
    copied: int
    deleted: int
    failed: int
    lag_seconds: float
    overflowed: bool
    marked: int
    dropped: int
    unavailable: int          # batches put back because a side was unreachable
    last_error: str | None
    restarts: int = 0         # sides found restarted (each flagged a full resync)
    # Why keys wait: "127.0.0.1:7001 refuses writes: OOM (out of memory: ...): <its reply>",
    # while the last batch with keys put back said so (None once a batch goes through).
    refusing: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- the re-copy


class _Copier:
    """The connections of one thread: the authoritative side and every other side."""

    def __init__(self, options: SyncOptions, stopping: Callable[[], bool], run_ids: ServerRunIds) -> None:
        self.options = options
        client_options = ClientOptions(timeout=options.timeout, reconnect_seconds=options.reconnect_seconds,
                                       max_attempts=options.max_attempts, retry_delay=options.retry_delay,
                                       client_name=CLIENT_NAME)

        def side(spec: ConnectionSpec, role: str) -> ClusterClient:
            return ClusterClient(spec, role=role, options=client_options, stopping=stopping, run_ids=run_ids, log=log)

        self.authoritative = side(options.authoritative, "authoritative side")
        self.others = [side(spec, "copy target") for spec in options.others]
        self.big_key_threshold = options.big_key_threshold_bytes
        # Addresses of the sides that refused a payload of the authoritative side for its RDB
        # version: they would refuse every one, so their keys are copied logically, no RESTORE first.
        self.logical_sides: set[str] = set()

    def close(self) -> None:
        for side in (self.authoritative, *self.others):
            side.close()

    def identify(self) -> None:
        """ServerRestarted when a side's server is not the one it was."""
        for side in (self.authoritative, *self.others):
            side.identify()

    def recopy(self, items: Sequence[Item]) -> RecopyResult:
        result = RecopyResult()
        by_db: dict[int, list[bytes]] = {}
        for db, key in items:
            by_db.setdefault(db, []).append(key)
        step = self.options.batch
        for db, keys in by_db.items():
            keys = list(dict.fromkeys(keys))
            for start in range(0, len(keys), step):
                self._recopy_db(db, keys[start:start + step], result)
        return result

    def _recopy_db(self, db: int, keys: list[bytes], result: RecopyResult) -> None:
        batch = _Batch(db)
        logical: dict[ClusterClient, list[bytes]] = {}   # side -> keys to copy to it logically
        known = [side for side in self.others if side.address in self.logical_sides]
        restoring = [side for side in self.others if side not in known]
        small = self._copy_big_keys(db, keys, batch) if self.big_key_threshold else keys
        todo = small
        if restoring and small:   # else no DUMP: every side copies logically (or every key was big)
            rows = self._read_dumps(db, small, batch)
            todo = [key for key in small if key in rows]
            for side in restoring:
                if todo:
                    refused = self._restore(side, db, todo, rows, batch)
                    if refused:
                        logical[side] = refused
        for side in known:
            if todo:
                logical[side] = todo
        if logical:
            self._copy_logically(db, logical, batch)
        batch.tally(keys, result)

    # -- DUMP / RESTORE ----------------------------------------------------------

    def _read_dumps(self, db: int, keys: list[bytes], batch: _Batch) -> dict[bytes, tuple[int, bytes | None]]:
        """DUMP + PTTL on the authoritative side: key -> (absolute expiry or 0, payload or None
        when the key is gone). Keys whose read was refused are failed, not in the result."""
        auth = self.authoritative
        replies = auth.run(db, keys, [(_DUMP % (len(key), key), _PTTL % (len(key), key)) for key in keys])
        now_ms = time.time_ns() // 1_000_000
        rows: dict[bytes, tuple[int, bytes | None]] = {}
        for key, (node, (payload, pttl)) in zip(keys, replies):
            if isinstance(payload, ReplyError) or isinstance(pttl, ReplyError):
                error = payload if isinstance(payload, ReplyError) else pttl
                batch.fail(auth, node, key, f"DUMP/PTTL refused on the authoritative side: {error}",
                           self._attempts(str(error)))
            elif payload is None or pttl == -2:
                # Gone since it was marked (deleted, expired, renamed away): delete it everywhere.
                rows[key] = (0, None)
            else:
                batch.payloads[key] = payload
                rows[key] = (now_ms + pttl if isinstance(pttl, int) and pttl >= 0 and self.options.preserve_ttl
                             else 0, payload)
        return rows

    # -- big keys ------------------------------------------------------------------

    def _copy_big_keys(self, db: int, keys: list[bytes], batch: _Batch) -> list[bytes]:
        """Copy the keys above ``big_key_threshold_bytes`` (MEMORY USAGE on the authoritative side)
        in chunks to every other side (``restorer.bigkeys``), never DUMPed; returns the others."""
        sizes = self.authoritative.run(db, keys, [(pack("MEMORY", "USAGE", key),) for key in keys])
        refused = next((reply for _node, (reply,) in sizes if isinstance(reply, ReplyError)), None)
        if refused is not None:
            log.warning("sync: the authoritative side refuses MEMORY USAGE (%s): big keys are DUMPed whole", refused)
            self.big_key_threshold = 0
            return keys
        big = {key: size for key, (_node, (size,)) in zip(keys, sizes)
               if size is not None and size > self.big_key_threshold}
        for key, size in big.items():
            for side in self.others:
                copied = ChunkedCopier(self.authoritative, side, worker=CLIENT_NAME,
                                       preserve_ttl=self.options.preserve_ttl).copy(db, key, size)
                if copied.status == GONE:   # gone on the authoritative side: deleted everywhere
                    side.run(db, [key], [(_DEL % (len(key), key),)])
                    batch.deleted.add(key)
                elif copied.status != COPIED:
                    batch.fail(side, side.node_for_key(key), key, f"chunked copy failed: {copied.reason}",
                               type_name=copied.type)
        return [key for key in keys if key not in big] if big else keys

    def _restore(self, side: ClusterClient, db: int, keys: list[bytes], rows: dict[bytes, tuple[int, bytes | None]],
                 batch: _Batch) -> list[bytes]:
        """RESTORE ... REPLACE (or DEL) on ``side``; returns the keys it refused for their payload."""
        now_ms = time.time_ns() // 1_000_000
        jobs = []
        deleting: set[bytes] = set()
        for key in keys:
            expiry, payload = rows[key]
            if payload is None or (expiry and expiry <= now_ms):
                # A key whose expiry passed in transit is deleted, not created (DESIGN.md 4.3).
                jobs.append((_DEL % (len(key), key),))
                deleting.add(key)
            elif expiry:
                jobs.append((pack("RESTORE", key, expiry, payload, "ABSTTL", "REPLACE"),))
            else:
                jobs.append((pack("RESTORE", key, 0, payload, "REPLACE"),))
        refused: list[bytes] = []
        for key, (node, (reply,)) in zip(keys, side.run(db, keys, jobs)):
            if isinstance(reply, ReplyError):
                message = str(reply)
                if payload_refused(message):
                    refused.append(key)
                    self._learn_format_refusal(side, message)
                else:
                    batch.fail(side, node, key, classify(message)[1], self._attempts(message))
            elif key not in deleting and reply != _OK:
                batch.fail(side, node, key, f"unexpected reply to RESTORE: {reply!r:.200}")
        batch.deleted |= deleting
        return refused

    def _learn_format_refusal(self, side: ClusterClient, message: str) -> None:
        # "Bad data format" can be one payload (a module type the side lacks): only a version
        # refusal says that every payload of the authoritative side will be refused.
        if _NEWER_FORMAT in message and side.address not in self.logical_sides:
            self.logical_sides.add(side.address)
            log.info("sync: %s %s refuses the DUMP payloads of %s (%s); its keys are copied logically from "
                     "now on", side.role, side.address, self.authoritative.address, message)

    # -- logical copy ------------------------------------------------------------

    def _copy_logically(self, db: int, by_side: dict[ClusterClient, list[bytes]], batch: _Batch) -> None:
        """Read each key once with eve.redis.logical on the authoritative side and write it on the
        sides that need it (MULTI, DEL, the value, PEXPIREAT, EXEC), or DEL it where it is gone."""
        values = self._read_logical(db, list(dict.fromkeys(key for keys in by_side.values() for key in keys)),
                                    batch)
        now_ms = time.time_ns() // 1_000_000
        noted: list[tuple[bytes, str]] = []
        for side, keys in by_side.items():
            jobs: list[tuple[bytes, ...]] = []
            sent: list[bytes] = []
            writing: dict[bytes, LogicalValue] = {}    # the others are DELs
            for key in keys:
                found = values.get(key)
                if found is None:
                    continue    # the read was refused: the key is failed already
                if isinstance(found, UnsupportedTypeError):
                    batch.fail(side, side.node_for_key(key), key, _logical_failure(side, found),
                               type_name=found.type)
                    continue
                expiry, value = found
                if value is None or (expiry and expiry <= now_ms):
                    jobs.append((_DEL % (len(key), key),))
                    batch.deleted.add(key)
                else:
                    jobs.append(pack_write(key, value, expiry))
                    writing[key] = value
                sent.append(key)
            for key, (node, replies) in zip(sent, side.run(db, sent, jobs)):
                value = writing.get(key)
                if value is None:
                    if isinstance(replies[0], ReplyError):
                        message = str(replies[0])
                        batch.fail(side, node, key, classify(message)[1], self._attempts(message))
                    continue
                try:
                    check_write(replies)
                except LogicalCopyError as exc:
                    batch.fail(side, node, key, _logical_failure(side, exc), self._attempts(exc.reply or ""),
                               type_name=value.type)
                    continue
                batch.logical.add(key)
                noted.extend((key, note) for note in value.notes)
        if noted:
            log.warning("sync: %d keys copied logically lost what a logical copy does not carry (first: %r: %s)",
                        len(noted), noted[0][0][:100], noted[0][1])

    def _read_logical(self, db: int, keys: list[bytes],
                      batch: _Batch) -> dict[bytes, tuple[int, LogicalValue | None] | UnsupportedTypeError]:
        """key -> (absolute expiry or 0, value or None when gone), or the reason it has no logical
        form (a module type). Keys whose read was refused are failed, not in the result."""
        auth = self.authoritative
        replies = auth.run(db, keys, [(pack_read(key),) for key in keys])
        now_ms = time.time_ns() // 1_000_000
        values: dict[bytes, tuple[int, LogicalValue | None] | UnsupportedTypeError] = {}
        for key, (node, (reply,)) in zip(keys, replies):
            try:
                value = parse_read(reply)
            except UnsupportedTypeError as exc:
                values[key] = exc
            except LogicalCopyError as exc:
                batch.fail(auth, node, key, f"logical copy failed: {exc}", self._attempts(exc.reply or ""))
            else:
                values[key] = (value.expiry(now_ms) if value is not None and self.options.preserve_ttl else 0,
                               value)
        return values

    # -- helpers -----------------------------------------------------------------

    def _attempts(self, message: str) -> int:
        # A transient reply that is final was answered max_attempts times (eve.redis.cluster).
        return self.options.max_attempts if is_transient(message) else 1


@dataclass
class _Batch:
    """What one ``_recopy_db`` found, per key, until ``tally`` counts it."""

    db: int
    failures: dict[bytes, list[RecopyFailure]] = field(default_factory=dict)
    deleted: set[bytes] = field(default_factory=set)       # a DEL was sent for it (gone or expired)
    logical: set[bytes] = field(default_factory=set)       # written logically to at least one side
    payloads: dict[bytes, bytes] = field(default_factory=dict)  # DUMP payloads: type and size of failures

    def fail(self, side: ClusterClient, node: str, key: bytes, reason: str, attempts: int = 1,
             type_name: str | None = None) -> None:
        payload = self.payloads.get(key)
        self.failures.setdefault(key, []).append(RecopyFailure(
            self.db, key, side.address, node, type_name or (payload_type(payload) if payload else "unknown"),
            len(payload) if payload else 0, reason, attempts))

    def tally(self, keys: list[bytes], result: RecopyResult) -> None:
        for key in keys:
            if key in self.failures:
                result.failed += 1
                result.failures.extend(self.failures[key])
            elif key in self.deleted:
                result.deleted += 1
            else:
                result.copied += 1
                result.logical += key in self.logical


def refusing_text(refused: dict[str, str]) -> str:
    """``"<side> refuses writes: OOM (out of memory: ...): <reply>"`` per side, for events."""
    said = []
    for side, reply in sorted(refused.items()):
        why = refusal(reply)
        said.append(f"{side} refuses writes: {why}: {reply}" if why else f"{side} answers {reply}")
    return "; ".join(said)


def _logical_failure(side: ClusterClient, exc: LogicalCopyError) -> str:
    return f"logical copy failed ({side.address} refuses the DUMP payload): {exc}"


class DirtyKeySync:
    """Re-copies dirty keys from the authoritative side to every other side.

    ``run(stop_event)`` is the worker loop (``options.workers`` threads); ``drain``
    re-copies until the backlog is empty (cutover, tests); ``recopy`` is one batch.
    Connections are opened lazily, one set per thread; ``close`` ends them.

    ``on_error(failures)`` gets each batch's ``RecopyFailure`` list (refused keys:
    they are out of the backlog and are error keys for the caller). Feed keys a
    verification pass found different through ``dirty.mark``, not straight into
    ``recopy``: only the backlog guarantees a key is never in flight twice.
    """

    def __init__(self, options: SyncOptions, dirty: DirtyKeys, *,
                 on_error: Callable[[list[RecopyFailure]], None] | None = None) -> None:
        self.options = options
        self.dirty = dirty
        self.on_error = on_error
        self._local = threading.local()
        self._copiers: list[_Copier] = []
        self._lock = threading.Lock()
        self._copied = self._deleted = self._failed = self._unavailable = self._restarts = 0
        self._last_error: str | None = None
        self._refusing: str | None = None
        # Who the sides' servers are, shared by every worker thread's clients: a restart is
        # flagged (and accepted) once, by whichever thread meets it first.
        self.run_ids = ServerRunIds(dict(options.server_run_ids), log=log)
        self._stop_event: threading.Event | None = None  # run()'s: ends reconnect waits early

    def __repr__(self) -> str:
        others = ", ".join(spec.address for spec in self.options.others)
        return f"DirtyKeySync({self.options.authoritative.address} -> {others}, backlog={self.dirty.backlog})"

    def __enter__(self) -> "DirtyKeySync":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            copiers, self._copiers = self._copiers, []
        for copier in copiers:
            copier.close()

    # -- one batch ---------------------------------------------------------------

    def recopy(self, items: list[Item]) -> RecopyResult:
        """DUMP+PTTL on the authoritative side, then RESTORE ... ABSTTL REPLACE (or DEL) on
        every other side, or a logical copy where the payload is refused. Raises UnavailableError/AuthError when a side cannot be used,
        ServerRestarted when one restarted (``run`` and ``drain`` flag a full resync then);
        per-key refusals are in the result (and passed to ``on_error``)."""
        result = self._copier().recopy(items)
        result.put_off_transient()
        with self._lock:
            self._copied += result.copied
            self._deleted += result.deleted
            self._failed += result.failed
        if result.failures:
            first = result.failures[0]
            log.warning("sync: %d keys failed (first: %r db=%d on %s: %s)", result.failed, first.key[:100],
                        first.db, first.node, first.reason)
            if self.on_error is not None:
                try:
                    self.on_error(result.failures)
                except Exception:
                    log.exception("sync: on_error raised; the failures are counted anyway")
        return result

    def _copier(self) -> _Copier:
        copier = getattr(self._local, "copier", None)
        if copier is None:
            copier = self._local.copier = _Copier(self.options, self._stopping, self.run_ids)
            with self._lock:
                self._copiers.append(copier)
        return copier

    def _stopping(self) -> bool:
        stop_event = self._stop_event
        return stop_event is not None and stop_event.is_set()

    def _release_copier(self) -> None:
        copier = getattr(self._local, "copier", None)
        if copier is not None:
            self._local.copier = None
            with self._lock:
                if copier in self._copiers:
                    self._copiers.remove(copier)
            copier.close()

    def _step(self, items: list[Item]) -> bool:
        """Re-copy one taken batch and settle it with the backlog; False when a side was unreachable."""
        try:
            result = self.recopy(items)
        except ServerRestarted as exc:
            self.dirty.requeue(items)
            self._restarted(exc)
            return True
        except EndpointError as exc:  # unreachable or refused credentials: nothing is lost
            self.dirty.requeue(items)
            with self._lock:
                self._unavailable += 1
                self._last_error = str(exc)
            log.warning("sync: %s; %d keys put back in the backlog", exc, len(items))
            return False
        except BaseException:
            self.dirty.requeue(items)
            raise
        if result.retry:
            retry = set(result.retry)
            self.dirty.requeue(result.retry)
            self.dirty.done(item for item in items if item not in retry)
            refusing = refusing_text(result.refused)
            with self._lock:
                self._unavailable += 1
                self._last_error = f"{len(retry)} keys answered only with transient errors"
                self._refusing = refusing
            log.warning("sync: %d keys answered only with transient errors; put back in the backlog: %s",
                        len(retry), refusing)
            return False
        self.dirty.done(items)
        if self._refusing is not None:
            with self._lock:
                self._refusing = None
        return True

    def _restarted(self, exc: ServerRestarted) -> None:
        # Not just the batch in flight: whatever was copied to a restarted side may be gone.
        self.dirty.mark_all(None)
        self.run_ids.accept(exc)
        with self._lock:
            self._restarts += 1
            self._last_error = str(exc)
        log.warning("sync: %s; a full resync of every db is flagged", exc)

    def check_sides(self) -> bool:
        """Ask every side who it is (a PING on each connection; one that has to be reopened reads
        ``INFO server``): a restarted one flags a full resync, as a re-copy that meets it does. True when one had restarted; a side that
        cannot be reached is left to the next re-copy."""
        try:
            self._copier().identify()
        except ServerRestarted as exc:
            self._restarted(exc)
            return True
        except EndpointError as exc:
            log.debug("sync: checking the sides: %s", exc)
        return False

    # -- loops -------------------------------------------------------------------

    def run(self, stop_event: threading.Event) -> None:
        """take, recopy, done, until ``stop_event`` is set; ``options.workers`` threads.
        An empty backlog sleeps on its condition (woken by the next mark), never spins.
        A worker's internal error stops them all and is raised here."""
        halt = threading.Event()            # a worker failed: the others stop too
        crashed: list[BaseException] = []
        self._stop_event = stop_event

        def stopping() -> bool:
            return stop_event.is_set() or halt.is_set()

        def worker(number: int) -> None:
            try:
                self._worker(stopping, number)
            except BaseException as exc:
                crashed.append(exc)
                halt.set()

        threads = [threading.Thread(target=worker, args=(i,), name=f"eve-sync-{i}", daemon=True)
                   for i in range(2, self.options.workers + 1)]
        for thread in threads:
            thread.start()
        log.info("sync: %r with %d workers", self, self.options.workers)
        try:
            worker(1)
        finally:
            for thread in threads:
                thread.join()
            self._stop_event = None
        if crashed:
            raise crashed[0]
        log.info("sync: stopped; %s", self.stats().as_dict())

    def _worker(self, stopping: Callable[[], bool], number: int) -> None:
        dirty, batch = self.dirty, self.options.batch
        checked = time.monotonic()
        try:
            while not stopping():
                items = dirty.take(batch)
                if not items:
                    dirty.wait_for_work(IDLE_WAIT)
                    if number == 1 and time.monotonic() - checked >= SIDES_CHECK_SECONDS:
                        checked = time.monotonic()
                        self.check_sides()
                    continue
                if not self._step(items):
                    deadline = time.monotonic() + UNAVAILABLE_BACKOFF
                    while not stopping() and time.monotonic() < deadline:
                        time.sleep(IDLE_WAIT)
        except BaseException:
            log.exception("sync worker %d stopped on an internal error", number)
            raise
        finally:
            self._release_copier()

    def drain(self, timeout: float) -> bool:
        """Re-copy in this thread (alongside ``run``'s workers, if any) until the backlog is
        empty: True, or False when ``timeout`` passed first. ``dirty.overflowed`` still
        says whether a full re-verify is needed."""
        deadline = time.monotonic() + timeout
        dirty = self.dirty
        try:
            while dirty.backlog:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                items = dirty.take(self.options.batch)
                if not items:
                    dirty.wait_for_change(min(remaining, IDLE_WAIT))  # in flight in another worker
                elif not self._step(items):
                    time.sleep(min(UNAVAILABLE_BACKOFF, max(deadline - time.monotonic(), 0)))
            return True
        finally:
            self._release_copier()

    # -- progress ----------------------------------------------------------------

    @property
    def lag_seconds(self) -> float:
        return self.dirty.lag_seconds

    def stats(self) -> SyncStats:
        dirty = self.dirty
        with self._lock:
            return SyncStats(backlog=dirty.backlog, in_flight=dirty.in_flight, copied=self._copied,
                             deleted=self._deleted, failed=self._failed, lag_seconds=round(dirty.lag_seconds, 3),
                             overflowed=dirty.overflowed, marked=dirty.marked, dropped=dirty.dropped,
                             unavailable=self._unavailable, last_error=self._last_error, restarts=self._restarts,
                             refusing=self._refusing)
