"""Logical copies in the bulk copy: keys whose DUMP payload the target cannot read (mode AUTO),
or every key (mode LOGICAL), copied with ordinary commands (DESIGN.md 4, Modes).

The scanner sent a DUMP payload, but a payload the target refuses says nothing the
target can use, so the value is read again from the source at copy time with the one
logical copy of a key (``eve.redis.logical``: one script reads type, PTTL and value
atomically) and written on the target in one MULTI/EXEC. Reading from the source keeps
the value exact (nothing is parsed out of a payload) and its expiry current. The source
connection (``SourceReader``) is opened on the first logical read, reads at most
``max_pipeline`` keys per round trip, and gives up like the target's after
``reconnect_seconds`` (a ``SourceError``).

The conflict policy applies as to a RESTORE (``restorer.policies``):

    REPLACE    MULTI, DEL, the value, PEXPIREAT, EXEC: a replacement, like RESTORE ... REPLACE
    NONE       the target key is read first (the same script): absent -> written;
               holding the source's value and expiry -> the job's own write (restored);
               anything else -> a conflict, the target key kept
    MERGE      absent -> written; a hash, set or zset -> written into the policy's temporary
               key in the same slot and merged by MERGE_SCRIPT (source fields, members and
               scores win; the target key keeps its TTL); other types as under NONE

Between the target read and the write another client could create the key; during a
bulk copy nothing but Eve writes to the target, so that window is accepted here.
A key gone from the source by the time of the read is skipped, as the scanner skips one
gone between SCAN and DUMP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from eve.core.errors import LogicalCopyError, SourceError
from eve.redis.cluster import ClientOptions, ClusterClient, is_transient
from eve.redis.logical import LogicalValue, check_write, pack_read, pack_write, parse_read
from eve.redis.rdb import MERGEABLE_TYPES
from eve.redis.wire import ReplyError, pack
from restorer.options import RestorerOptions
from restorer.policies import (
    CONFLICT,
    ERROR,
    MERGE_SCRIPT,
    MERGE_TMP_TTL_MS,
    RESTORED,
    SAME_EXPIRY_TOLERANCE_MS,
    ConflictHandling,
    merge_tmp_key,
)

__all__ = ["GONE", "LogicalWriter", "SourceRead", "SourceReader", "Written"]

GONE = "gone"   # the key is no longer on the source: skipped


@dataclass(frozen=True)
class SourceRead:
    """One key as the source holds it now: its value and absolute expiry (0: none), None when
    it is gone, or the reason it cannot be read logically."""

    value: LogicalValue | None
    expiry: int = 0
    error: LogicalCopyError | None = None


@dataclass(frozen=True)
class Written:
    """How one logical write ended: RESTORED, CONFLICT (detail: why) or ERROR (detail: the
    reason, node: where, attempts)."""

    status: str
    detail: str = ""
    node: str = ""
    attempts: int = 1


class SourceReader:
    """Logical reads on the source (module docstring), at most ``max_pipeline`` keys per round trip."""

    def __init__(self, client: ClusterClient, *, max_pipeline: int, preserve_ttl: bool) -> None:
        self.client = client
        self.max_pipeline = max_pipeline
        self.preserve_ttl = preserve_ttl

    @classmethod
    def for_restorer(cls, options: RestorerOptions, log: Any) -> SourceReader:
        """The restorer's own connection to ``options.source``, waiting and retrying like its targets'."""
        assert options.source is not None
        client = ClusterClient(
            options.source, role="source", error=SourceError, cluster=options.source_cluster, log=log,
            options=ClientOptions(timeout=options.timeout, reconnect_seconds=options.reconnect_seconds,
                                  max_attempts=options.max_attempts, retry_delay=options.retry_delay,
                                  client_name=f"eve-{options.worker}-read"))
        return cls(client, max_pipeline=options.max_pipeline, preserve_ttl=options.preserve_ttl)

    def read(self, db: int, keys: Sequence[bytes]) -> list[SourceRead]:
        """Each key's current value on the source, in order."""
        found: list[SourceRead] = []
        step = self.max_pipeline
        for start in range(0, len(keys), step):
            part = keys[start:start + step]
            replies = self.client.run(db, part, [(pack_read(key),) for key in part])
            now_ms = time.time_ns() // 1_000_000
            for _node, (reply,) in replies:
                found.append(self._parse(reply, now_ms))
        return found

    def _parse(self, reply: Any, now_ms: int) -> SourceRead:
        try:
            value = parse_read(reply)
        except LogicalCopyError as exc:
            return SourceRead(None, error=exc)
        if value is None:
            return SourceRead(None)
        return SourceRead(value, value.expiry(now_ms) if self.preserve_ttl else 0)

    def close(self) -> None:
        self.client.close()


class LogicalWriter:
    """Writes source values to one target under its conflict policy (module docstring)."""

    def __init__(self, client: ClusterClient, handling: ConflictHandling, worker: str, max_attempts: int) -> None:
        self.client = client
        self.handling = handling
        self.worker = worker
        self.max_attempts = max_attempts

    def write(self, db: int, items: Sequence[tuple[bytes, SourceRead]]) -> list[Written]:
        """One ``Written`` per (key, read) item, in order; every read has a value."""
        if not items:
            return []
        if self.handling.replace:
            return self._replace(db, items)
        outcomes: list[Written | None] = [None] * len(items)
        absent: list[int] = []
        merging: list[int] = []
        keys = [key for key, _read in items]
        for index, (node, (reply,)) in enumerate(self.client.run(db, keys, [(pack_read(key),) for key in keys])):
            read = items[index][1]
            try:
                existing = parse_read(reply)
            except LogicalCopyError as exc:
                if exc.reply is not None:   # the target refused the read itself
                    outcomes[index] = self._failed(node, f"reading the target key failed: {exc}", exc.reply)
                else:                       # a module-type key on the target: not the source's value
                    outcomes[index] = Written(CONFLICT, f"the target key cannot be compared: {exc}")
                continue
            assert read.value is not None
            if existing is None:
                absent.append(index)
            elif _same(read, existing):
                outcomes[index] = Written(RESTORED)   # the job's own write, sent again
            elif self.handling.merges and read.value.type in MERGEABLE_TYPES:
                merging.append(index)
            elif self.handling.merges:
                outcomes[index] = Written(CONFLICT, f"no merge semantics for {read.value.type}")
            else:
                outcomes[index] = Written(CONFLICT, "BUSYKEY")
        for index, outcome in zip(absent, self._replace(db, [items[i] for i in absent])):
            outcomes[index] = outcome
        for index, outcome in zip(merging, self._merge(db, [items[i] for i in merging])):
            outcomes[index] = outcome
        return outcomes  # type: ignore[return-value]

    def _replace(self, db: int, items: Sequence[tuple[bytes, SourceRead]]) -> list[Written]:
        keys = [key for key, _read in items]
        jobs = [pack_write(key, read.value, read.expiry) for key, read in items]   # type: ignore[arg-type]
        return [self._checked(node, replies) for node, replies in self.client.run(db, keys, jobs)]

    def _merge(self, db: int, items: Sequence[tuple[bytes, SourceRead]]) -> list[Written]:
        """The source value into a temporary key in the key's slot, then MERGE_SCRIPT, in one job per key."""
        keys = [key for key, _read in items]
        tmp_expiry = time.time_ns() // 1_000_000 + MERGE_TMP_TTL_MS
        jobs = []
        for key, read in items:
            tmp = merge_tmp_key(key, self.worker)
            jobs.append((*pack_write(tmp, read.value, tmp_expiry),   # type: ignore[arg-type]
                         pack("EVAL", MERGE_SCRIPT, 2, key, tmp, read.expiry)))
        outcomes = []
        for node, replies in self.client.run(db, keys, jobs):
            staged = self._checked(node, replies[:-1])
            script = replies[-1]
            if staged.status != RESTORED:
                outcomes.append(staged)
            elif isinstance(script, ReplyError):
                outcomes.append(self._failed(node, f"merge failed: {script}", str(script)))
            elif script[0] in (1, 2):
                outcomes.append(Written(RESTORED))
            else:
                message = script[1]
                outcomes.append(Written(CONFLICT, message.decode("utf-8", "replace")
                                        if isinstance(message, bytes) else str(message)))
        return outcomes

    def _checked(self, node: str, replies: Sequence[Any]) -> Written:
        try:
            check_write(replies)
        except LogicalCopyError as exc:
            return self._failed(node, str(exc), exc.reply or "")
        return Written(RESTORED)

    def _failed(self, node: str, reason: str, reply: str) -> Written:
        # A transient reply that is final was answered max_attempts times (eve.redis.cluster).
        return Written(ERROR, reason, node, self.max_attempts if is_transient(reply) else 1)


def _same(source: SourceRead, target: LogicalValue) -> bool:
    """The target key holds the source's value and expiry (within SAME_EXPIRY_TOLERANCE_MS)."""
    value = source.value
    assert value is not None
    if value.type != target.type or not _same_data(value, target):
        return False
    if not source.expiry:
        return target.pttl == -1
    now_ms = time.time_ns() // 1_000_000
    return target.pttl >= 0 and abs(now_ms + target.pttl - source.expiry) <= SAME_EXPIRY_TOLERANCE_MS


def _same_data(a: LogicalValue, b: LogicalValue) -> bool:
    # SMEMBERS and HGETALL have no order of their own; lists, zsets (by rank) and streams do.
    if a.type == "set":
        return set(a.data) == set(b.data)   # type: ignore[arg-type]
    if a.type == "hash":
        return dict(a.data) == dict(b.data)   # type: ignore[arg-type]
    return a.data == b.data
