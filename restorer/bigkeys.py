"""Big keys copied in chunks (DESIGN.md 4, "Big keys"; issue 13 part 3).

A key above the scanner's ``big_key_threshold_bytes`` is never moved in one
command: DUMP serializes the whole value while the source serves nobody else,
RESTORE deserializes it while the target serves nobody else, and the payload
sits whole in the scanner, the queue and the restorer. ``ChunkedCopier`` reads
it in bounded pieces and builds it under a temporary key of the target in the
key's hash slot, then puts it in place in one step:

    source (one bounded read a round trip)        target
    PTTL key          -> the expiry, absolute,    DEL tmp
                         taken when the copy begins
    GETRANGE key a b  (string, ``chunk_bytes``)   APPEND tmp ...       + PEXPIRE tmp TMP_TTL_MS
    LRANGE key a b    (list, ``chunk``)           RPUSH tmp ...          (each piece: a crash leaves
    HSCAN / SSCAN / ZSCAN key cursor COUNT chunk  HSET / SADD / ZADD tmp  nothing that outlives it)
      + HPEXPIRETIME of the piece's fields        HPEXPIREAT tmp ...   (field TTLs)
    XRANGE key (last +  COUNT chunk               XADD tmp id ...
      + XINFO STREAM, XINFO GROUPS / CONSUMERS,   XSETID, XGROUP CREATE[CONSUMER], XCLAIM
        XPENDING (chunked)
                                                  MULTI  PEXPIREAT|PERSIST tmp
                                                         RENAME tmp key  (REPLACE)
                                                         RENAMENX tmp key, DEL tmp  (NONE)
                                                  EXEC

So neither side is held for longer than one piece, no process holds the value
whole, and no client ever sees a half-built key: the temporary key is renamed
into place, TTL and all, in one transaction. A crash (kill -9 of the restorer or
of Eve) leaves at most the temporary key, which expires ``TMP_TTL_MS`` after its
last piece, and ``remove_temporary_keys`` deletes at the start of a resumed copy
(the batch was never acknowledged, so the key is copied again from the start).

The conflict policy (DESIGN.md 4.4): REPLACE renames over the target's key;
NONE looks first (an existing key is a conflict, and nothing is read), and
RENAMENX guards the end; MERGE of a hash, set or sorted set that the target holds
already writes the pieces straight into the target's key (HSET, SADD, ZADD are
merges: source fields, members and scores win; the key keeps its TTL), a
missing one is copied as under NONE, another type is a conflict. A crash in the
middle of such a merge leaves it partly merged until the resumed copy merges
the rest. Under NONE a big key the job itself renamed into place before a crash
is reported as a conflict when the copy resumes (comparing the values would
mean reading them whole).

The value is read while the source keeps changing: in an offline copy a big key
written during its chunked copy may be copied as a mix of before and after
(stop the writers, or copy online); in a live run every write marks the key
dirty and the re-copy loop copies it again, chunked too (``eve.live.recopy``).
A piece is ``chunk`` elements or ``chunk_bytes`` bytes at most, halved while a read
takes more than ``PIECE_BUDGET_SECONDS`` (a busy source) and grown back while reads
are quick. Bloom and Cuckoo filters (RedisBloom) are read in the module's own
chunks, ``BF.SCANDUMP``/``CF.SCANDUMP key iterator`` until the iterator is 0
again, each written with ``BF.LOADCHUNK``/``CF.LOADCHUNK tmp iterator data``; a
JSON document is read with ``JSON.GET`` and written with ``JSON.SET tmp $``
(any JSON implementation reads that, issue 23). A key of another module type has
no commands to read it in parts: it is DUMPed whole and RESTOREd under the
temporary key. Pending entries of a stream are
read with ``XPENDING``, whose idle times are
relative: their delivery times are kept to within the copy's round trips.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from eve.core.endpoints import ConnectionSpec
from eve.core.enums import ConflictPolicy
from eve.core.errors import SourceError, TargetError, name_module
from eve.core.frames import ConflictRow, ErrorKeyRow
from eve.redis.cluster import ClientOptions, ClusterClient
from eve.redis.logical import (
    PendingEntry,
    StreamGroup,
    StreamState,
    field_ttl_refusal,
    field_ttl_writes,
    stream_state_writes,
)
from eve.redis.rdb import MERGEABLE_TYPES
from eve.redis.wire import ReplyError, pack
from restorer.policies import _tmp_key

# Module types read in the module's own chunks (ChunkedCopier): copied this way whatever their size
# when a logical copy is needed, since the logical read of one key has no form for them.
CHUNKED_MODULE_TYPES = frozenset(("MBbloom--", "MBbloomCF"))

__all__ = [
    "CHUNKED_MODULE_TYPES",
    "COPIED",
    "CONFLICT",
    "DEFAULT_CHUNK",
    "DEFAULT_CHUNK_BYTES",
    "FAILED",
    "MIN_SCALE",
    "PIECE_BUDGET_SECONDS",
    "GONE",
    "TMP_MARK",
    "TMP_TTL_MS",
    "BigKeyCopy",
    "BigKeys",
    "BigKeysOutcome",
    "ChunkedCopier",
    "big_tmp_key",
    "remove_temporary_keys",
]

log = logging.getLogger("eve.restorer.bigkeys")

DEFAULT_CHUNK = 1000              # elements (fields, members, entries) per piece
DEFAULT_CHUNK_BYTES = 1 << 20     # string bytes per piece
# A temporary key outlives its last piece by this much at most (a crashed copy's leftover).
TMP_TTL_MS = 600_000
TMP_MARK = b":eve-big:"
COPIED, GONE, CONFLICT, FAILED = "copied", "gone", "conflict", "failed"
# A source read slower than this halves the pieces (down to MIN_SCALE of chunk / chunk_bytes):
# a read holds the source's event loop, and its other clients wait behind it.
PIECE_BUDGET_SECONDS = 0.005
MIN_SCALE = 1 / 64


@dataclass(frozen=True)
class BigKeyCopy:
    """How one chunked copy ended: COPIED, GONE (not on the source, or expired), CONFLICT
    (``reason``: the policy kept the target's key) or FAILED (``reason``: an error key)."""

    status: str
    type: str = "unknown"
    reason: str | None = None
    pieces: int = 0
    bytes: int = 0     # what MEMORY USAGE said on the source


class _Failed(Exception):
    """A piece was refused: the copy of this key ends as FAILED with this reason."""


def big_tmp_key(key: bytes, worker: str) -> bytes:
    """The temporary key one worker builds ``key`` under: in its hash slot (``restorer.policies``)."""
    return _tmp_key(key, TMP_MARK + worker.encode())


class ChunkedCopier:
    """Copies big keys from ``source`` to ``target`` in pieces (module docstring).

    Both are ``ClusterClient``s (routing by slot, reconnects, transient retries); an
    unreachable side raises their ``EndpointError`` as any restore does."""

    def __init__(self, source: ClusterClient, target: ClusterClient, *, worker: str,
                 policy: ConflictPolicy = ConflictPolicy.REPLACE, preserve_ttl: bool = True,
                 chunk: int = DEFAULT_CHUNK, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        if chunk < 1 or chunk_bytes < 1:
            raise ValueError(f"chunk and chunk_bytes must be at least 1, got {chunk} and {chunk_bytes}")
        self.source = source
        self.target = target
        self.worker = worker
        self.policy = policy
        self.preserve_ttl = preserve_ttl
        self.chunk = chunk
        self.chunk_bytes = chunk_bytes
        self._scale = 1.0   # of chunk and chunk_bytes, halved while the source is slow (_read)
        self._pieces = {"string": self._string_pieces, "list": self._list_pieces, "set": self._set_pieces,
                        "zset": self._zset_pieces, "hash": self._hash_pieces, "stream": self._stream_pieces,
                        "MBbloom--": self._bloom_pieces, "MBbloomCF": self._cuckoo_pieces,
                        "ReJSON-RL": self._json_pieces}

    def copy(self, db: int, key: bytes, size: int = 0) -> BigKeyCopy:
        """One key (``size``: its MEMORY USAGE, for the counters): COPIED, GONE, CONFLICT or FAILED.
        A refused read or write is FAILED, its temporary key deleted; a side that cannot be
        reached raises (``EndpointError``)."""
        tmp = big_tmp_key(key, self.worker)
        kind, count = "unknown", 0
        try:
            kind = self._read(db, key, "TYPE", key)
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            pttl = self._read(db, key, "PTTL", key)
            if kind == "none" or pttl == -2:
                return BigKeyCopy(GONE, kind, bytes=size)
            expiry = time.time_ns() // 1_000_000 + pttl if self.preserve_ttl and pttl >= 0 else 0
            destination, conflict = self._destination(db, key, tmp, kind)
            if conflict is not None:
                return BigKeyCopy(CONFLICT, kind, conflict, bytes=size)
            if destination == tmp:
                self._write(db, tmp, [pack("DEL", tmp)])
            for writes in self._pieces.get(kind, self._module_pieces)(db, key, destination):
                guard = [pack("PEXPIRE", tmp, TMP_TTL_MS)] if destination == tmp else []
                self._write(db, destination, [*writes, *guard])
                count += 1
            if destination != tmp:
                return BigKeyCopy(COPIED, kind, pieces=count, bytes=size)   # merged in place
            return self._put_in_place(db, key, tmp, kind, expiry, count, size)
        except _Failed as failed:
            self._write(db, tmp, [pack("DEL", tmp)], check=False)
            return BigKeyCopy(FAILED, kind, str(failed), count, size)

    # -- the policy --------------------------------------------------------------

    def _destination(self, db: int, key: bytes, tmp: bytes, kind: str) -> tuple[bytes, str | None]:
        """Where the pieces go (the temporary key, or the target's key for a merge in place),
        or the conflict that makes the copy pointless."""
        if self.policy is ConflictPolicy.REPLACE:
            return tmp, None
        present = self._target_type(db, key)
        if present == "none":
            return tmp, None
        if self.policy is ConflictPolicy.MERGE:
            if present != kind:
                return tmp, f"type differs (target {present}, source {kind})"
            if kind in MERGEABLE_TYPES:
                return key, None
            return tmp, f"no merge semantics for {kind}"
        return tmp, "BUSYKEY"

    def _put_in_place(self, db: int, key: bytes, tmp: bytes, kind: str, expiry: int, pieces: int,
                      size: int) -> BigKeyCopy:
        now_ms = time.time_ns() // 1_000_000
        if expiry and expiry <= now_ms:
            self._write(db, tmp, [pack("DEL", tmp)])
            return BigKeyCopy(GONE, kind, "expired during the copy", pieces, size)
        ttl = pack("PEXPIREAT", tmp, expiry) if expiry else pack("PERSIST", tmp)
        if self.policy is ConflictPolicy.REPLACE:
            self._write(db, tmp, [pack("MULTI"), ttl, pack("RENAME", tmp, key), pack("EXEC")])
            return BigKeyCopy(COPIED, kind, pieces=pieces, bytes=size)
        replies = self._write(db, tmp, [pack("MULTI"), ttl, pack("RENAMENX", tmp, key), pack("DEL", tmp),
                                        pack("EXEC")])
        if replies[-1][1] == 1:
            return BigKeyCopy(COPIED, kind, pieces=pieces, bytes=size)
        reason = "BUSYKEY" if self.policy is ConflictPolicy.NONE else f"no merge semantics for {kind}"
        return BigKeyCopy(CONFLICT, kind, reason, pieces, size)

    def _target_type(self, db: int, key: bytes) -> str:
        [(_node, [reply])] = self.target.run(db, [key], [(pack("TYPE", key),)])
        if isinstance(reply, ReplyError):
            raise _Failed(f"TYPE refused by the target: {reply}")
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    # -- pieces, per type: each yields the writes of one piece ---------------------

    def _string_pieces(self, db: int, key: bytes, into: bytes) -> Iterator[list[bytes]]:
        length = self._read(db, key, "STRLEN", key)
        yield [pack("SET", into, b"")]
        start = 0
        while start < length:
            end = start + max(1, int(self.chunk_bytes * self._scale)) - 1
            yield [pack("APPEND", into, self._read(db, key, "GETRANGE", key, start, end))]
            start = end + 1

    def _module_pieces(self, db: int, key: bytes, into: bytes) -> Iterator[list[bytes]]:
        # A module type has no commands Eve knows to read it in parts: one DUMP, as without
        # the threshold, restored under the temporary key (the rest as for any big key).
        yield [pack("RESTORE", into, 0, self._read(db, key, "DUMP", key), "REPLACE")]

    def _bloom_pieces(self, db: int, key: bytes, into: bytes) -> Iterator[list[bytes]]:
        return self._filter_pieces(db, key, into, "BF")

    def _cuckoo_pieces(self, db: int, key: bytes, into: bytes) -> Iterator[list[bytes]]:
        return self._filter_pieces(db, key, into, "CF")

    def _filter_pieces(self, db: int, key: bytes, into: bytes, family: str) -> Iterator[list[bytes]]:
        # https://redis.io/docs/latest/commands/bf.scandump/: the first chunk is the filter's
        # header, every chunk is loaded with its iterator, an iterator of 0 ends the dump.
        iterator: Any = 0
        while True:
            iterator, data = self._read(db, key, f"{family}.SCANDUMP", key, iterator)
            if int(iterator) == 0:
                return
            yield [pack(f"{family}.LOADCHUNK", into, iterator, data)]

    def _json_pieces(self, db: int, key: bytes, into: bytes) -> Iterator[list[bytes]]:
        # A document is one value to RedisJSON: read whole (no DUMP payload, so any JSON
        # implementation of the target reads it), written under the temporary key.
        yield [pack("JSON.SET", into, "$", self._read(db, key, "JSON.GET", key))]

    def _list_pieces(self, db: int, key: bytes, into: bytes) -> Iterator[list[bytes]]:
        start = 0
        while True:
            items = self._read(db, key, "LRANGE", key, start, start + self._elements() - 1)
            if not items:
                return
            yield [_pack_strings(b"RPUSH", into, items)]
            start += len(items)

    def _set_pieces(self, db: int, key: bytes, into: bytes) -> Iterator[list[bytes]]:
        for members in self._scan(db, key, "SSCAN"):
            yield [_pack_strings(b"SADD", into, members)]

    def _zset_pieces(self, db: int, key: bytes, into: bytes) -> Iterator[list[bytes]]:
        # ZSCAN's scores are the server's exact text (%.17g): written back as they are.
        for flat in self._scan(db, key, "ZSCAN"):
            yield [_pack_strings(b"ZADD", into, [item for pair in zip(flat[1::2], flat[0::2]) for item in pair])]

    def _hash_pieces(self, db: int, key: bytes, into: bytes) -> Iterator[list[bytes]]:
        field_ttls = True   # until the source says it has none (no HPEXPIRETIME)
        for flat in self._scan(db, key, "HSCAN"):
            writes = [_pack_strings(b"HSET", into, flat)]
            fields = flat[0::2]
            if field_ttls:
                times = self._read(db, key, "HPEXPIRETIME", key, "FIELDS", len(fields), *fields, refusal_ok=True)
                if isinstance(times, ReplyError):
                    if "unknown" not in str(times).lower():
                        raise _Failed(f"HPEXPIRETIME refused by the source: {times}")
                    field_ttls = False
                else:
                    writes += field_ttl_writes(into, [(field, ms) for field, ms in zip(fields, times) if ms >= 0],
                                               self.chunk)
            yield writes

    def _stream_pieces(self, db: int, key: bytes, into: bytes) -> Iterator[list[bytes]]:
        start = b"-"
        while True:
            entries = self._read(db, key, "XRANGE", key, start, "+", "COUNT", self._elements())
            if not entries:
                break
            yield [pack("XADD", into, entry_id, *fields) for entry_id, fields in entries]
            start = b"(" + entries[-1][0]
        if start == b"-":   # no entry at all: one trimmed away at once creates the stream
            yield [pack("XADD", into, "MAXLEN", 0, "0-1", "eve", "")]
        yield stream_state_writes(into, self._stream_state(db, key), self.chunk)

    def _stream_state(self, db: int, key: bytes) -> StreamState:
        info = _fields(self._read(db, key, "XINFO", "STREAM", key))
        groups = []
        for group in self._read(db, key, "XINFO", "GROUPS", key):
            fields = _fields(group)
            name = fields[b"name"]
            consumers = tuple(_fields(consumer)[b"name"]
                              for consumer in self._read(db, key, "XINFO", "CONSUMERS", key, name))
            entries_read = fields.get(b"entries-read")
            groups.append(StreamGroup(name, fields[b"last-delivered-id"],
                                      entries_read if isinstance(entries_read, int) else None, consumers,
                                      tuple(self._pending(db, key, name))))
        entries_added, max_deleted = info.get(b"entries-added"), info.get(b"max-deleted-entry-id")
        return StreamState(info[b"last-generated-id"], entries_added if isinstance(entries_added, int) else None,
                           max_deleted if isinstance(max_deleted, bytes) else None, tuple(groups))

    def _pending(self, db: int, key: bytes, group: bytes) -> Iterator[PendingEntry]:
        start = b"-"
        while True:
            entries = self._read(db, key, "XPENDING", key, group, start, "+", self.chunk)
            now_ms = time.time_ns() // 1_000_000
            for entry_id, consumer, idle, deliveries in entries:
                yield PendingEntry(entry_id, consumer, now_ms - idle, deliveries)
            if len(entries) < self.chunk:
                return
            start = b"(" + entries[-1][0]

    # -- round trips ---------------------------------------------------------------

    def _scan(self, db: int, key: bytes, verb: str) -> Iterator[list[bytes]]:
        """The flat pieces of ``verb key cursor COUNT chunk`` until the cursor is 0 again."""
        cursor = b"0"
        while True:
            cursor, flat = self._read(db, key, verb, key, cursor, "COUNT", self._elements())
            if flat:
                yield flat
            if cursor == b"0":
                return

    def _elements(self) -> int:
        return max(1, int(self.chunk * self._scale))

    def _read(self, db: int, key: bytes, *command: Any, refusal_ok: bool = False) -> Any:
        began = time.perf_counter()
        [(_node, [reply])] = self.source.run(db, [key], [(pack(*command),)])
        # Pieces shrink while a read takes longer than the budget (a busy source: its clients
        # would wait as long behind each one) and grow back while it is quick.
        if time.perf_counter() - began > PIECE_BUDGET_SECONDS:
            self._scale = max(MIN_SCALE, self._scale / 2)
        elif self._scale < 1.0:
            self._scale = min(1.0, self._scale * 1.25)
        if isinstance(reply, ReplyError) and not refusal_ok:
            raise _Failed(f"{command[0]} refused by the source: {reply}")
        return reply

    def _write(self, db: int, key: bytes, commands: Sequence[bytes], *, check: bool = True) -> list[Any]:
        [(_node, replies)] = self.target.run(db, [key], [tuple(commands)])
        if check:
            for reply in (*replies, *(replies[-1] if isinstance(replies[-1], list) else ())):
                if isinstance(reply, ReplyError):
                    raise _Failed(field_ttl_refusal(reply) or f"the target refused a piece: {reply}")
        return replies


@dataclass
class BigKeysOutcome:
    """What one target did with a batch's big keys, in the restorer's terms."""

    restored: int = 0
    skipped: int = 0      # gone from the source, or expired, before they were put in place
    bytes: int = 0
    conflicts: list[ConflictRow] = field(default_factory=list)
    errors: list[ErrorKeyRow] = field(default_factory=list)


class BigKeys:
    """The restorer's side of big keys: a batch's ``big`` rows copied to one target by a
    ``ChunkedCopier`` reading from the source (``RestorerOptions.source``), opened on the
    first big key. Without a source connection every big key is an error key saying so."""

    def __init__(self, source: ConnectionSpec | None, source_cluster: bool, options: ClientOptions, *,
                 worker: str, policy: ConflictPolicy, preserve_ttl: bool) -> None:
        self.source = None if source is None else ClusterClient(source, role="source", error=SourceError,
                                                                 cluster=source_cluster or None, options=options)
        self.worker = worker
        self.policy = policy
        self.preserve_ttl = preserve_ttl

    def copy(self, db: int, rows: Sequence[tuple[bytes, int]], target: ClusterClient) -> BigKeysOutcome:
        out = BigKeysOutcome()
        if self.source is None:
            out.errors += [ErrorKeyRow(key, db, target.address, "unknown", size, "a big key needs a chunked copy "
                                       "from the source, and this restorer has no source connection", 1)
                           for key, size in rows]
            return out
        copier = ChunkedCopier(self.source, target, worker=self.worker, policy=self.policy,
                               preserve_ttl=self.preserve_ttl)
        for key, size in rows:
            copied = copier.copy(db, key, size)
            if copied.status == COPIED:
                out.restored += 1
                out.bytes += size
            elif copied.status == GONE:
                out.skipped += 1
            elif copied.status == CONFLICT:
                out.conflicts.append(ConflictRow(key, db, copied.type, copied.reason or "BUSYKEY"))
            else:
                out.errors.append(ErrorKeyRow(key, db, target.node_for_key(key), copied.type, size,
                                              name_module(copied.type, copied.reason or "chunked copy failed"), 1))
        return out

    def close(self) -> None:
        if self.source is not None:
            self.source.close()


def _pack_strings(verb: bytes, key: bytes, items: Sequence[bytes]) -> bytes:
    """``verb key item ...`` for byte-string items (replies of the source): ``pack`` without its
    per-argument type switch, which is most of a piece's time in Python."""
    head = b"*%d\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(items) + 2, len(verb), verb, len(key), key)
    return head + b"".join([b"$%d\r\n%b\r\n" % (len(item), item) for item in items])


def _fields(flat: Any) -> dict[Any, Any]:
    return dict(zip(flat[0::2], flat[1::2]))


def remove_temporary_keys(target: ClusterClient, dbs: Sequence[int]) -> int:
    """Delete what crashed chunked copies left on ``target`` (every master, each of ``dbs``):
    the keys with ``TMP_MARK`` in their name, found by ``SCAN MATCH``. Only while no copy
    runs: a resumed copy calls it before its restorers start. Returns how many it deleted."""
    removed = 0
    pattern = b"*" + TMP_MARK + b"*"
    for address in target.nodes:
        for db in (0,) if target.cluster else dbs:
            cursor = b"0"
            while True:
                reply = target.call(address, "SCAN", cursor, "MATCH", pattern, "COUNT", 1000, db=db)
                if isinstance(reply, ReplyError):
                    raise TargetError(f"SCAN refused by the target {address}: {reply}")
                cursor, keys = reply
                for key in keys:
                    target.call(address, "DEL", key, db=db)
                removed += len(keys)
                if cursor == b"0":
                    break
    if removed:
        log.info("removed %d temporary keys of interrupted chunked copies from %s", removed, target.address)
    return removed
