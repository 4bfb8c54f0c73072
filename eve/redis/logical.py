"""A logical copy of one key: its value read and written with ordinary commands (DESIGN.md 4, mode LOGICAL).

DUMP payloads carry the RDB format version of the server that wrote them, and a
server refuses a newer one ("DUMP payload version or checksum are wrong"): Redis
8.2 and Valkey 9 payloads cannot be RESTOREd on Redis 7.0 or Valkey 8.1. A
logical copy does not depend on the format:

    authoritative side                               other side
    EVAL <READ_SCRIPT> 1 key                         MULTI
      TYPE, PTTL and the value, in one script:       DEL key
      string GET, hash HGETALL (+ HPEXPIRETIME),     SET / HSET / RPUSH / SADD / ZADD / XADD ...
      list LRANGE 0 -1, set SMEMBERS,                  (at most ``chunk`` elements per command)
      zset ZRANGE 0 -1 WITHSCORES,                   HPEXPIREAT key <ms> FIELDS ...  (field TTLs)
      stream XINFO STREAM FULL COUNT 0               XSETID key <last id> ENTRIESADDED MAXDELETEDID
    -> {type, pttl, data[, extra]}                   XGROUP CREATE / CREATECONSUMER, XCLAIM (groups)
                                                     PEXPIREAT key <abs ms>          (with a TTL)
                                                     EXEC

The read is atomic (a script runs alone) and so is the write (MULTI/EXEC: no
client sees the key half written, and the DEL first makes it a replacement, as
``RESTORE ... REPLACE``). ``pack_policy_write`` writes under a conflict policy
instead: into a temporary key in the key's hash slot, then ``RENAME`` (REPLACE),
``RENAMENX`` (NONE: the target's key is kept), or the merge script (MERGE).

What is preserved: the type; the value (string bytes, hash fields, list order,
set members, zset members with their exact scores, stream entries with their
ids and fields); the expiry, to the millisecond (the caller turns PTTL into an
absolute time when it reads it and writes PEXPIREAT); per-field hash TTLs
(HPEXPIRETIME / HPEXPIREAT, Redis 7.4+ and Valkey 9), absolute to the
millisecond, a field whose TTL passed before the write being left out; a
stream's last generated id, entries-added counter and max deleted id (XSETID),
so new ``XADD *`` ids keep growing from where they were; a stream's consumer
groups: each group's last delivered id and entries-read counter (``XGROUP CREATE
... ENTRIESREAD``), its consumers (``XGROUP CREATECONSUMER``), and its pending
entries with their owner, last delivery time and delivery count (``XCLAIM ...
TIME <ms> RETRYCOUNT <n> FORCE JUSTID``, which neither counts a delivery nor
returns the entry).

What is not:
- a consumer's seen-time and active-time: the write makes them the time of the
  copy (any command naming a consumer does);
- pending entries whose stream entry was deleted (XDEL after delivery): XCLAIM
  ignores ids the stream does not hold; ``LogicalValue.notes`` counts them;
- per-field TTLs on a target without HPEXPIREAT (Redis before 7.4, Valkey
  before 9): the write is refused and ``check_write`` says so (an error key,
  never a silent loss);
- module types (anything TYPE does not call string, hash, list, set, zset or
  stream), but for JSON documents (``ReJSON-RL``: read with ``JSON.GET``, written
  with ``JSON.SET key $``, so any JSON implementation of the other side reads it,
  issue 23): ``UnsupportedTypeError``, the key cannot be copied logically;
- LRU/LFU access information and the internal encoding (listpack, intset, ...),
  which the other side chooses from its own configuration.

Big values are read whole, by one script (as DUMP reads them whole): this is a
per-key fallback; big keys are copied in chunks by ``restorer.bigkeys``.

Redis transactions do not roll back: a command refused inside EXEC leaves the
others' effects, so a key whose write ``check_write`` rejects may be partially
written on that side (with ``pack_policy_write``, only the temporary key is);
the caller reports it failed (an error key).

Errors::

    LogicalCopyError          the key cannot be copied logically; the message says why
    +-- UnsupportedTypeError  ... its type has no logical form (a module type)
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence, Union

from eve.core.enums import ConflictPolicy
from eve.core.errors import LogicalCopyError, UnsupportedTypeError
from eve.redis.rdb import MERGEABLE_TYPES
from eve.redis.wire import ReplyError, pack

__all__ = [
    "CONFLICT",
    "DEFAULT_CHUNK",
    "JSON_TYPE",
    "LOGICAL_TYPES",
    "MERGE_SCRIPT",
    "MERGE_SHA",
    "READ_SCRIPT",
    "SAME_EXPIRY_TOLERANCE_MS",
    "TYPES",
    "WRITTEN",
    "LogicalCopyError",
    "LogicalValue",
    "PendingEntry",
    "StreamEntry",
    "StreamGroup",
    "StreamState",
    "UnsupportedTypeError",
    "check_policy_write",
    "check_write",
    "field_ttl_refusal",
    "field_ttl_writes",
    "group_writes",
    "pack_policy_write",
    "pack_read",
    "pack_write",
    "parse_groups",
    "parse_read",
    "stream_state_writes",
]

DEFAULT_CHUNK = 1000   # elements (fields, members, entries) per write command
TYPES = ("string", "hash", "list", "set", "zset", "stream")
# A module type with a logical form: RedisJSON's documents (Valkey's JSON module keeps the name).
JSON_TYPE = "ReJSON-RL"
LOGICAL_TYPES = (*TYPES, JSON_TYPE)
# A row sent again carries an expiry computed again from PTTL (a few ms apart from the first);
# the target key's expiry is the first one. Within this, the two are the same expiry.
SAME_EXPIRY_TOLERANCE_MS = 1000
# How a policy write ended: (WRITTEN, None) or (CONFLICT, reason).
WRITTEN, CONFLICT = "written", "conflict"

# KEYS[1] -> {type, pttl[, data[, extra]]}. No "#!lua flags=no-writes" line: servers
# before Redis 7.0 do not parse it, and a script that only reads runs anywhere without it.
# Since Redis 7.0 (and on Valkey) TYPE gives scripts a status table {ok = 'hash'}
# (https://redis.io/docs/latest/develop/interact/programmability/lua-api/#resp2-to-lua-type-conversion).
# A hash's extra is {field, expiry ms, ...} of its fields with a TTL, from HPEXPIRETIME in
# slices (unpack() stays far below Lua's C stack limit); an engine without field TTLs answers
# "unknown command" (Redis 7.0: "Unknown Redis command called from script") and has none. A stream's extra is its state and its groups, from
# XINFO STREAM FULL COUNT 0 (every entry, group, consumer and pending entry; Redis 6.0+).
READ_SCRIPT = """\
local key = KEYS[1]
local kind = redis.call('TYPE', key)
if type(kind) == 'table' then kind = kind['ok'] end
local pttl = redis.call('PTTL', key)
if kind == 'string' then return {kind, pttl, redis.call('GET', key)} end
if kind == 'hash' then
  local flat = redis.call('HGETALL', key)
  local ttls = {}
  local slice = 1000
  for first = 1, #flat, 2 * slice do
    local fields = {}
    for i = first, math.min(first + 2 * slice - 1, #flat), 2 do fields[#fields + 1] = flat[i] end
    local times = redis.pcall('HPEXPIRETIME', key, 'FIELDS', #fields, unpack(fields))
    if type(times) == 'table' and times['err'] then
      if string.find(string.lower(times['err']), 'unknown', 1, true) then break end
      return redis.error_reply(times['err'])
    end
    for i = 1, #fields do
      if times[i] >= 0 then
        ttls[#ttls + 1] = fields[i]
        ttls[#ttls + 1] = times[i]
      end
    end
  end
  return {kind, pttl, flat, ttls}
end
if kind == 'list' then return {kind, pttl, redis.call('LRANGE', key, 0, -1)} end
if kind == 'ReJSON-RL' then return {kind, pttl, redis.call('JSON.GET', key)} end
if kind == 'set' then return {kind, pttl, redis.call('SMEMBERS', key)} end
if kind == 'zset' then return {kind, pttl, redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')} end
if kind == 'stream' then
  local info = redis.call('XINFO', 'STREAM', key, 'FULL', 'COUNT', 0)
  local state, entries, groups = {}, {}, {}
  for i = 1, #info, 2 do
    local name = info[i]
    if name == 'entries' then entries = info[i + 1]
    elseif name == 'groups' then groups = info[i + 1]
    elseif name == 'last-generated-id' or name == 'entries-added' or name == 'max-deleted-entry-id' then
      state[#state + 1] = name
      state[#state + 1] = info[i + 1]
    end
  end
  return {kind, pttl, entries, {state, groups}}
end
return {kind, pttl}
"""

# KEYS[1] = the target key, KEYS[2] = a temporary key (same slot) holding the source value,
# ARGV[1] = the source's absolute expiry in ms (0: none), used only when the target key does
# not exist. Returns {1, "merged"}, {2, "restored"} or {0, conflict reason}. Used by the MERGE
# policy of RESTOREs (restorer.policies) and of logical writes (pack_policy_write) alike.
# Element-wise writes (not SUNIONSTORE/ZUNIONSTORE) keep the target key's TTL:
# a *STORE command replaces the destination and drops its expiry.
# Arguments go in slices so unpack() stays far below Lua's C stack limit.
MERGE_SCRIPT = """
local target_type = redis.call('TYPE', KEYS[1])['ok']
local source_type = redis.call('TYPE', KEYS[2])['ok']
if source_type == 'none' then
  return {0, 'merge source vanished before the merge'}
end
if target_type == 'none' then
  redis.call('RENAME', KEYS[2], KEYS[1])
  local expiry = tonumber(ARGV[1])
  if expiry > 0 then
    redis.call('PEXPIREAT', KEYS[1], expiry)
  else
    redis.call('PERSIST', KEYS[1])
  end
  return {2, 'restored'}
end
if target_type ~= source_type then
  redis.call('DEL', KEYS[2])
  return {0, 'type differs (target ' .. target_type .. ', source ' .. source_type .. ')'}
end
local slice = 256
local function write(command, args)
  for first = 1, #args, slice do
    redis.call(command, KEYS[1], unpack(args, first, math.min(first + slice - 1, #args)))
  end
end
if source_type == 'hash' then
  write('HSET', redis.call('HGETALL', KEYS[2]))
elseif source_type == 'set' then
  write('SADD', redis.call('SMEMBERS', KEYS[2]))
elseif source_type == 'zset' then
  local scored = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  local args = {}
  for i = 1, #scored, 2 do
    args[i] = scored[i + 1]
    args[i + 1] = scored[i]
  end
  write('ZADD', args)
else
  redis.call('DEL', KEYS[2])
  return {0, 'no merge semantics for ' .. source_type}
end
redis.call('DEL', KEYS[2])
return {1, 'merged'}
"""
MERGE_SHA = hashlib.sha1(MERGE_SCRIPT.encode()).hexdigest().encode()

# EVAL <script> 1 <key>: the script encoded once; the array header counts the key.
_READ_PREFIX = b"*4\r\n" + pack("EVAL", READ_SCRIPT, 1)[len(b"*3\r\n"):]
_KEY_ARG = b"$%d\r\n%b\r\n"
_MULTI = pack("MULTI")
_EXEC = pack("EXEC")
_OK = b"OK"
_QUEUED = b"QUEUED"
# An empty stream is created by one entry trimmed away at once (XADD ... MAXLEN 0), then XSETID.
_PLACEHOLDER_ID = b"0-1"
_FIELD_TTL_COMMAND = "HPEXPIREAT"


class StreamEntry(NamedTuple):
    id: bytes
    fields: tuple[tuple[bytes, bytes], ...]   # (field, value) in entry order


class PendingEntry(NamedTuple):
    """One entry of a group's pending entries list (PEL)."""

    id: bytes
    consumer: bytes
    delivered_ms: int      # Unix ms of its last delivery: XCLAIM ... TIME keeps it, so its idle time too
    deliveries: int        # delivery count: XCLAIM ... RETRYCOUNT


@dataclass(frozen=True)
class StreamGroup:
    name: bytes
    last_delivered_id: bytes
    entries_read: int | None            # None where the server does not say (before 7.0, or unknown)
    consumers: tuple[bytes, ...] = ()   # every consumer, those without pending entries too
    pending: tuple[PendingEntry, ...] = ()


@dataclass(frozen=True)
class StreamState:
    """What XINFO STREAM says beyond the entries; None where the server does not say (before 7.0)."""

    last_id: bytes                      # last-generated-id
    entries_added: int | None = None
    max_deleted_id: bytes | None = None
    groups: tuple[StreamGroup, ...] = ()


Data = Union[
    bytes,                                  # string
    tuple[tuple[bytes, bytes], ...],        # hash: (field, value)
    tuple[bytes, ...],                      # list (in order), set
    tuple[tuple[bytes, float], ...],        # zset: (member, score), by rank
    tuple[StreamEntry, ...],                # stream
]


@dataclass(frozen=True)
class LogicalValue:
    """One key's value as ``parse_read`` found it on the authoritative side."""

    type: str                   # one of LOGICAL_TYPES
    pttl: int                   # milliseconds left when it was read; -1 without expiry
    data: Data
    stream: StreamState | None = None   # streams only
    field_ttls: tuple[tuple[bytes, int], ...] = ()   # hashes: (field, absolute expiry in Unix ms)

    def __repr__(self) -> str:
        return f"LogicalValue({self.type}, pttl={self.pttl}, elements={self.elements})"

    @property
    def elements(self) -> int:
        """Fields, members or entries (1 for a string or a JSON document)."""
        return 1 if self.type in ("string", JSON_TYPE) else len(self.data)

    def expiry(self, read_at_ms: int) -> int:
        """The absolute expiry in Unix milliseconds for a read made at ``read_at_ms``; 0 without one."""
        return read_at_ms + self.pttl if self.pttl >= 0 else 0

    @property
    def notes(self) -> tuple[str, ...]:
        """What of this key a logical copy leaves behind (module docstring)."""
        if self.stream is None or not self.stream.groups:
            return ()
        ids = {entry.id for entry in self.data}  # type: ignore[union-attr]
        orphans = sum(entry.id not in ids for group in self.stream.groups for entry in group.pending)
        return (f"{orphans} pending entries of deleted stream entries not copied",) if orphans else ()


# --------------------------------------------------------------------------- reading


def pack_read(key: bytes) -> bytes:
    """``EVAL READ_SCRIPT 1 key``, packed."""
    return _READ_PREFIX + _KEY_ARG % (len(key), key)


def parse_read(reply: Any) -> LogicalValue | None:
    """The reply to ``pack_read`` -> the value, or None when the key does not exist.

    Raises ``UnsupportedTypeError`` for a module type and ``LogicalCopyError`` for a
    refused script or a reply of the wrong shape."""
    if isinstance(reply, ReplyError):
        raise LogicalCopyError(f"the read script was refused: {reply}", reply=str(reply))
    if not isinstance(reply, list) or len(reply) < 2 or not isinstance(reply[0], bytes) \
            or not isinstance(reply[1], int):
        raise LogicalCopyError(f"the read script replied {_short(reply)}, not {{type, pttl, ...}}")
    kind, pttl = reply[0].decode(errors="replace"), reply[1]
    if kind == "none" or pttl == -2:
        return None
    if kind not in LOGICAL_TYPES:
        raise UnsupportedTypeError(kind, LOGICAL_TYPES)
    if len(reply) < 3:
        raise LogicalCopyError(f"the read script replied no value for a {kind} key")
    data, extra = _parse_data(kind, reply[2]), reply[3] if len(reply) > 3 else None
    if kind == "stream":
        if not (isinstance(extra, list) and len(extra) == 2):
            raise LogicalCopyError(f"a stream's state must be [state, groups], got {_short(extra)}")
        return LogicalValue(kind, pttl, data, _parse_stream_state(extra[0], parse_groups(extra[1])))
    if kind == "hash" and extra:
        ttls = _pairs(kind, _bytes_or_ints(extra))
        return LogicalValue(kind, pttl, data, field_ttls=tuple((field, int(ms)) for field, ms in ttls))
    return LogicalValue(kind, pttl, data)


def _parse_data(kind: str, raw: Any) -> Data:
    if kind in ("string", JSON_TYPE):
        if not isinstance(raw, bytes):
            raise LogicalCopyError(f"a {kind} value must be bytes, got {_short(raw)}")
        return raw
    items = _bytes_list(kind, raw) if kind != "stream" else raw
    if kind in ("list", "set"):
        return tuple(items)
    if kind == "hash":
        return _pairs(kind, items)
    if kind == "zset":
        pairs = _pairs(kind, items)
        try:
            return tuple((member, float(score)) for member, score in pairs)
        except ValueError:
            raise LogicalCopyError(f"a zset score is not a number: {_short(pairs)}") from None
    if not isinstance(raw, list):
        raise LogicalCopyError(f"stream entries must be an array, got {_short(raw)}")
    entries = []
    for entry in raw:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], bytes)):
            raise LogicalCopyError(f"a stream entry must be [id, [field, value, ...]], got {_short(entry)}")
        entries.append(StreamEntry(entry[0], _pairs(kind, _bytes_list(kind, entry[1]))))
    return tuple(entries)


def _parse_stream_state(raw: Any, groups: tuple[StreamGroup, ...]) -> StreamState:
    fields = _fields(raw, "the stream state")
    last_id = fields.get(b"last-generated-id")
    if not isinstance(last_id, bytes):
        raise LogicalCopyError(f"XINFO STREAM gave no last-generated-id: {_short(raw)}")
    entries_added, max_deleted_id = fields.get(b"entries-added"), fields.get(b"max-deleted-entry-id")
    return StreamState(last_id,
                       entries_added if isinstance(entries_added, int) else None,
                       max_deleted_id if isinstance(max_deleted_id, bytes) else None,
                       groups)


def parse_groups(raw: Any) -> tuple[StreamGroup, ...]:
    """The ``groups`` of ``XINFO STREAM key FULL`` (RESP2: flat name/value arrays) -> groups."""
    if not isinstance(raw, list):
        raise LogicalCopyError(f"a stream's groups must be an array, got {_short(raw)}")
    groups = []
    for group in raw:
        fields = _fields(group, "a consumer group")
        name, last = fields.get(b"name"), fields.get(b"last-delivered-id")
        if not (isinstance(name, bytes) and isinstance(last, bytes)):
            raise LogicalCopyError(f"a consumer group without a name or last-delivered-id: {_short(group)}")
        entries_read = fields.get(b"entries-read")
        try:
            pending = tuple(PendingEntry(bytes(entry[0]), bytes(entry[1]), int(entry[2]), int(entry[3]))
                            for entry in fields.get(b"pending") or ())
            consumers = tuple(_fields(consumer, "a consumer")[b"name"] for consumer in fields.get(b"consumers") or ())
        except (TypeError, ValueError, IndexError, KeyError):
            raise LogicalCopyError(f"consumer group {name!r} has pending entries or consumers of the wrong "
                                   f"shape: {_short(group)}") from None
        groups.append(StreamGroup(name, last, entries_read if isinstance(entries_read, int) else None,
                                  consumers, pending))
    return tuple(groups)


def _fields(raw: Any, what: str) -> dict[Any, Any]:
    if not isinstance(raw, list) or len(raw) % 2:
        raise LogicalCopyError(f"{what} must be [name, value, ...], got {_short(raw)}")
    return dict(zip(raw[0::2], raw[1::2]))


def _bytes_list(kind: str, raw: Any) -> list[bytes]:
    if not isinstance(raw, list) or not all(isinstance(item, bytes) for item in raw):
        raise LogicalCopyError(f"a {kind} value must be an array of strings, got {_short(raw)}")
    return raw


def _bytes_or_ints(raw: Any) -> list[Any]:
    if not isinstance(raw, list) or not all(isinstance(item, (bytes, int)) for item in raw):
        raise LogicalCopyError(f"field TTLs must be [field, ms, ...], got {_short(raw)}")
    return raw


def _pairs(kind: str, items: list[Any]) -> tuple[tuple[Any, Any], ...]:
    if len(items) % 2:
        raise LogicalCopyError(f"a {kind} value must come in pairs, got {len(items)} strings")
    return tuple(zip(items[0::2], items[1::2]))


# --------------------------------------------------------------------------- writing


def pack_write(key: bytes, value: LogicalValue, expiry_ms: int = 0, *,
               chunk: int = DEFAULT_CHUNK, now_ms: int | None = None) -> tuple[bytes, ...]:
    """MULTI, DEL, the value's writes, PEXPIREAT ``expiry_ms`` (absolute Unix ms; 0: no
    expiry), EXEC: one packed command each. An expiry already passed deletes the key
    (PEXPIREAT semantics); callers that know it has passed just send DEL. Hash fields
    whose TTL is at or before ``now_ms`` (default: the clock now) are left out; a hash
    left with no field is only deleted."""
    writes = _value_writes(key, value, chunk, now_ms)
    if writes and expiry_ms:
        writes.append(pack("PEXPIREAT", key, expiry_ms))
    return (_MULTI, pack("DEL", key), *writes, _EXEC)


def pack_policy_write(policy: ConflictPolicy, key: bytes, value: LogicalValue, expiry_ms: int, tmp: bytes, *,
                      chunk: int = DEFAULT_CHUNK, now_ms: int | None = None) -> tuple[bytes, ...]:
    """The logical write of ``key`` under a conflict policy (DESIGN.md 4.4), as ``RESTORE``
    does it in ``restorer.policies``: the value goes into ``tmp`` (a temporary key in the
    key's hash slot, the caller's to name), then, in the same transaction,

    - REPLACE: ``RENAME tmp key``: the old value is replaced whole, never mixed with the new;
    - NONE: ``RENAMENX tmp key``: an existing key is kept (a conflict), unless it holds
      exactly this value already (the job's own earlier write: DUMP of both compared);
    - MERGE: hash, set, zset merged by ``MERGE_SCRIPT`` (source fields, members and scores
      win; the target keeps its TTL); other types as under NONE.

    ``check_policy_write`` reads the replies."""
    writes = _value_writes(tmp, value, chunk, now_ms)
    head = (_MULTI, pack("DEL", tmp))
    if not writes:   # nothing left of the value (every field expired): as a key gone from the source
        return (*head, pack("DEL", key), _EXEC) if policy is ConflictPolicy.REPLACE else (*head, _EXEC)
    if policy is ConflictPolicy.MERGE and value.type in MERGEABLE_TYPES:
        return (*head, *writes, pack("EVAL", MERGE_SCRIPT, 2, key, tmp, expiry_ms), pack("DEL", tmp), _EXEC)
    expire = (pack("PEXPIREAT", tmp, expiry_ms),) if expiry_ms else ()
    if policy is ConflictPolicy.REPLACE:
        return (*head, *writes, *expire, pack("RENAME", tmp, key), _EXEC)
    return (*head, *writes, *expire, pack("RENAMENX", tmp, key), pack("DUMP", key), pack("DUMP", tmp),
            pack("PTTL", key), pack("DEL", tmp), _EXEC)


def check_policy_write(policy: ConflictPolicy, value: LogicalValue, replies: Sequence[Any],
                       expiry_ms: int = 0) -> tuple[str, str | None]:
    """The replies to ``pack_policy_write``'s commands -> (WRITTEN, None) or (CONFLICT, reason).
    Raises ``LogicalCopyError`` like ``check_write`` when a command failed."""
    check_write(replies)
    done: list[Any] = replies[-1]
    if len(done) <= 1:   # only the DELs: nothing was left to write
        return WRITTEN, None
    if policy is ConflictPolicy.REPLACE:
        return WRITTEN, None
    if policy is ConflictPolicy.MERGE and value.type in MERGEABLE_TYPES:
        code, message = done[-2][0], done[-2][1]
        return (WRITTEN, None) if code in (1, 2) else (CONFLICT, message.decode("utf-8", "replace"))
    renamed, target_dump, tmp_dump, pttl = done[-5:-1]
    if renamed == 1:
        return WRITTEN, None
    if target_dump == tmp_dump and _same_expiry(pttl, expiry_ms):
        return WRITTEN, None   # the job's own write, sent again after a lost reply or a restart
    if policy is ConflictPolicy.MERGE:
        return CONFLICT, f"no merge semantics for {value.type}"
    return CONFLICT, "BUSYKEY"


def _same_expiry(pttl: Any, expiry_ms: int) -> bool:
    if not expiry_ms:
        return pttl == -1
    now_ms = time.time_ns() // 1_000_000
    return isinstance(pttl, int) and pttl >= 0 and abs(now_ms + pttl - expiry_ms) <= SAME_EXPIRY_TOLERANCE_MS


def _value_writes(key: bytes, value: LogicalValue, chunk: int, now_ms: int | None) -> list[bytes]:
    """The commands that build ``value`` under ``key`` (which does not exist)."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    kind, data = value.type, value.data
    if kind == "string":
        return [pack("SET", key, data)]
    if kind == JSON_TYPE:
        return [pack("JSON.SET", key, "$", data)]
    if kind in ("list", "set"):
        verb = "RPUSH" if kind == "list" else "SADD"
        return [pack(verb, key, *part) for part in _chunks(data, chunk)]
    if kind == "hash":
        return _hash_writes(key, value, chunk, now_ms)
    if kind == "zset":
        return [pack("ZADD", key, *_flat((score, member) for member, score in part))
                for part in _chunks(data, chunk)]
    if kind == "stream":
        return _stream_writes(key, value)
    raise UnsupportedTypeError(kind, LOGICAL_TYPES)


def _hash_writes(key: bytes, value: LogicalValue, chunk: int, now_ms: int | None) -> list[bytes]:
    fields: Sequence[tuple[bytes, bytes]] = value.data  # type: ignore[assignment]
    if value.field_ttls:
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        expired = {field for field, ms in value.field_ttls if ms <= now_ms}
        if expired:
            fields = [pair for pair in fields if pair[0] not in expired]
    commands = [pack("HSET", key, *_flat(part)) for part in _chunks(fields, chunk)]
    if commands:
        commands += field_ttl_writes(key, [(field, ms) for field, ms in value.field_ttls
                                           if now_ms is None or ms > now_ms], chunk)
    return commands


def field_ttl_writes(key: bytes, ttls: Sequence[tuple[bytes, int]], chunk: int = DEFAULT_CHUNK) -> list[bytes]:
    """``HPEXPIREAT key <ms> FIELDS n field ...``: one command per expiry time (and per
    ``chunk`` fields), absolute, so time in transit never stretches a field's TTL."""
    by_time: dict[int, list[bytes]] = {}
    for field, ms in ttls:
        by_time.setdefault(ms, []).append(field)
    return [pack(_FIELD_TTL_COMMAND, key, ms, "FIELDS", len(part), *part)
            for ms, names in by_time.items() for part in _chunks(names, chunk)]


def _stream_writes(key: bytes, value: LogicalValue) -> list[bytes]:
    entries: Sequence[StreamEntry] = value.data  # type: ignore[assignment]
    if entries:
        commands = [pack("XADD", key, entry.id, *_flat(entry.fields)) for entry in entries]
    else:
        commands = [pack("XADD", key, "MAXLEN", 0, _PLACEHOLDER_ID, "eve", "")]
    if value.stream is not None:
        commands += stream_state_writes(key, value.stream)
    return commands


def stream_state_writes(key: bytes, state: StreamState, chunk: int = DEFAULT_CHUNK) -> list[bytes]:
    """What a stream holds beyond its entries, onto a stream that has its entries:
    ``XSETID`` (last id, entries added, max deleted id), then its consumer groups."""
    options: list[bytes | int] = []
    if state.entries_added is not None:
        options += [b"ENTRIESADDED", state.entries_added]
    if state.max_deleted_id is not None:
        options += [b"MAXDELETEDID", state.max_deleted_id]
    return [pack("XSETID", key, state.last_id, *options), *group_writes(key, state.groups, chunk)]


def group_writes(key: bytes, groups: Sequence[StreamGroup], chunk: int = DEFAULT_CHUNK) -> list[bytes]:
    """Consumer groups onto an existing stream: XGROUP CREATE (with ENTRIESREAD where known),
    XGROUP CREATECONSUMER per consumer, and the pending entries by XCLAIM, grouped by
    (owner, delivery time, delivery count): ``XCLAIM key group owner 0 id ... TIME <ms>
    RETRYCOUNT <n> FORCE JUSTID``."""
    commands = []
    for group in groups:
        read = (b"ENTRIESREAD", group.entries_read) if group.entries_read is not None else ()
        commands.append(pack("XGROUP", "CREATE", key, group.name, group.last_delivered_id, *read))
        commands += [pack("XGROUP", "CREATECONSUMER", key, group.name, consumer) for consumer in group.consumers]
        claims: dict[tuple[bytes, int, int], list[bytes]] = {}
        for entry in group.pending:
            claims.setdefault((entry.consumer, entry.delivered_ms, entry.deliveries), []).append(entry.id)
        commands += [pack("XCLAIM", key, group.name, consumer, 0, *part, "TIME", delivered, "RETRYCOUNT",
                          deliveries, "FORCE", "JUSTID")
                     for (consumer, delivered, deliveries), ids in claims.items() for part in _chunks(ids, chunk)]
    return commands


def check_write(replies: Sequence[Any]) -> None:
    """Raise ``LogicalCopyError`` unless the replies to ``pack_write``'s commands say the
    transaction ran and every command in it succeeded."""
    if len(replies) < 3:
        raise LogicalCopyError(f"a MULTI/EXEC write has at least 3 replies, got {len(replies)}")
    head, queued, exec_reply = replies[0], replies[1:-1], replies[-1]
    if head != _OK:
        raise LogicalCopyError(f"MULTI refused: {_short(head)}", reply=_error_text(head))
    for number, reply in enumerate(queued, 1):
        if reply != _QUEUED:
            # The server refused to queue it: EXEC then discards the whole transaction.
            raise LogicalCopyError(field_ttl_refusal(reply)
                                   or f"command {number} of {len(queued)} refused: {_short(reply)}",
                                   reply=_error_text(reply))
    if exec_reply is None:
        raise LogicalCopyError("the transaction was aborted (EXEC replied nil)")
    if isinstance(exec_reply, ReplyError):
        raise LogicalCopyError(f"EXEC refused: {exec_reply}", reply=str(exec_reply))
    if not isinstance(exec_reply, list) or len(exec_reply) != len(queued):
        raise LogicalCopyError(f"EXEC replied {_short(exec_reply)} for {len(queued)} commands")
    for number, reply in enumerate(exec_reply, 1):
        if isinstance(reply, ReplyError):
            raise LogicalCopyError(f"command {number} of {len(queued)} failed in EXEC (the others ran; "
                                   f"the key may be partly written): {reply}", reply=str(reply))


def field_ttl_refusal(reply: Any) -> str | None:
    """The error key's reason when ``reply`` is a server refusing HPEXPIREAT as unknown: it
    cannot hold per-field TTLs (Redis before 7.4, Valkey before 9). None for any other reply."""
    text = str(reply) if isinstance(reply, ReplyError) else ""
    if "unknown command" in text.lower() and _FIELD_TTL_COMMAND.lower() in text.lower():
        return ("the target cannot hold per-field hash TTLs (no HPEXPIREAT: Redis 7.4+ and Valkey 9+ have it); "
                "the hash is not written rather than written without them")
    return None


# --------------------------------------------------------------------------- helpers


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def _flat(pairs: Any) -> list[Any]:
    return [item for pair in pairs for item in pair]


def _error_text(reply: Any) -> str | None:
    return str(reply) if isinstance(reply, ReplyError) else None


def _short(reply: Any) -> str:
    return f"{reply!r:.200}"
