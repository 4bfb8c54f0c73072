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

The conflict policy applies as to a RESTORE (``restorer.policies``), each key in one
transaction through a temporary key in its slot (``eve.redis.logical.pack_policy_write``),
so an old value never mixes with the new one:

    REPLACE    the value into the temporary key, RENAME over the key
    NONE       RENAMENX: an existing key is kept (a conflict), unless it holds exactly this
               value and expiry already (the job's own write, sent again after a restart)
    MERGE      a hash, set or zset merged by MERGE_SCRIPT (source fields, members and scores
               win; the target key keeps its TTL); other types as under NONE

A key gone from the source by the time of the read is skipped, as the scanner skips one
gone between SCAN and DUMP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from eve.core.errors import LogicalCopyError, SourceError
from eve.redis.cluster import ClientOptions, ClusterClient, is_transient
from eve.redis.logical import (
    WRITTEN,
    LogicalValue,
    check_policy_write,
    check_write,
    pack_policy_write,
    pack_read,
    parse_read,
)
from restorer.options import RestorerOptions
from restorer.policies import (
    CONFLICT,
    ERROR,
    RESTORED,
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
        """One ``Written`` per (key, read) item, in order; every read has a value. Each key
        is one job: its value into the policy's temporary key in the key's slot, then, in
        the same transaction, put in place as the policy says (``eve.redis.logical.pack_policy_write``)."""
        if not items:
            return []
        policy = self.handling.policy
        keys = [key for key, _read in items]
        jobs = [pack_policy_write(policy, key, read.value, read.expiry, merge_tmp_key(key, self.worker))  # type: ignore[arg-type]
                for key, read in items]
        outcomes = []
        for (node, replies), (_key, read) in zip(self.client.run(db, keys, jobs), items):
            try:
                status, reason = check_policy_write(policy, read.value, replies, read.expiry)  # type: ignore[arg-type]
            except LogicalCopyError as exc:
                outcomes.append(self._failed(node, str(exc), exc.reply or ""))
                continue
            outcomes.append(Written(RESTORED) if status == WRITTEN else Written(CONFLICT, reason or ""))
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
