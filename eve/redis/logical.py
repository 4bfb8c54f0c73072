"""A logical copy of one key: its value read and written with ordinary commands (DESIGN.md 4, mode LOGICAL).

DUMP payloads carry the RDB format version of the server that wrote them, and a
server refuses a newer one ("DUMP payload version or checksum are wrong"): Redis
8.2 and Valkey 9 payloads cannot be RESTOREd on Redis 7.0 or Valkey 8.1. A
logical copy does not depend on the format:

    authoritative side                               other side
    EVAL <READ_SCRIPT> 1 key                         MULTI
      TYPE, PTTL and the value, in one script:       DEL key
      string GET, hash HGETALL, list LRANGE 0 -1,    SET / HSET / RPUSH / SADD / ZADD / XADD ...
      set SMEMBERS, zset ZRANGE 0 -1 WITHSCORES,       (at most ``chunk`` elements per command)
      stream XRANGE - + and XINFO STREAM             XSETID key <last id> ...        (streams)
    -> {type, pttl, data[, stream state]}            PEXPIREAT key <abs ms>          (with a TTL)
                                                     EXEC

The read is atomic (a script runs alone) and so is the write (MULTI/EXEC: no
client sees the key half written, and the DEL first makes it a replacement, as
``RESTORE ... REPLACE``).

What is preserved: the type; the value (string bytes, hash fields, list order,
set members, zset members with their exact scores, stream entries with their
ids and fields); the expiry, to the millisecond (the caller turns PTTL into an
absolute time when it reads it and writes PEXPIREAT); a stream's last generated
id, entries-added counter and max deleted id (XSETID), so new ``XADD *`` ids
keep growing from where they were.

What is not:
- stream consumer groups (their last delivered ids, pending entries and
  consumers): the stream is written without groups, and groups the other side
  had on that key are gone with the DEL. ``LogicalValue.notes`` says so for a
  stream that had groups;
- module types (anything TYPE does not call string, hash, list, set, zset or
  stream): ``UnsupportedTypeError``, the key cannot be copied logically;
- hash field expiries (HEXPIRE, Redis 7.4+ and Valkey 9): fields are written
  without expiry;
- LRU/LFU access information and the internal encoding (listpack, intset, ...),
  which the other side chooses from its own configuration.

Big values are read whole, by one script (as DUMP reads them whole): this is a
per-key fallback, not the chunked copy of big keys.

Redis transactions do not roll back: a command refused inside EXEC leaves the
others' effects, so a key whose write ``check_write`` rejects may be partially
written on that side; the caller reports it failed (an error key).

Errors::

    LogicalCopyError          the key cannot be copied logically; the message says why
    +-- UnsupportedTypeError  ... its type has no logical form (a module type)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence, Union

from eve.core.errors import LogicalCopyError, UnsupportedTypeError
from eve.redis.wire import ReplyError, pack

__all__ = [
    "DEFAULT_CHUNK",
    "READ_SCRIPT",
    "TYPES",
    "LogicalCopyError",
    "LogicalValue",
    "StreamEntry",
    "StreamState",
    "UnsupportedTypeError",
    "check_write",
    "pack_read",
    "pack_write",
    "parse_read",
]

DEFAULT_CHUNK = 1000   # elements (fields, members, entries) per write command
TYPES = ("string", "hash", "list", "set", "zset", "stream")

# KEYS[1] -> {type, pttl[, data[, stream state]]}. No "#!lua flags=no-writes" line: servers
# before Redis 7.0 do not parse it, and a script that only reads runs anywhere without it.
# Since Redis 7.0 (and on Valkey) TYPE gives scripts a status table {ok = 'hash'}
# (https://redis.io/docs/latest/develop/interact/programmability/lua-api/#resp2-to-lua-type-conversion).
READ_SCRIPT = """\
local key = KEYS[1]
local kind = redis.call('TYPE', key)
if type(kind) == 'table' then kind = kind['ok'] end
local pttl = redis.call('PTTL', key)
if kind == 'string' then return {kind, pttl, redis.call('GET', key)} end
if kind == 'hash' then return {kind, pttl, redis.call('HGETALL', key)} end
if kind == 'list' then return {kind, pttl, redis.call('LRANGE', key, 0, -1)} end
if kind == 'set' then return {kind, pttl, redis.call('SMEMBERS', key)} end
if kind == 'zset' then return {kind, pttl, redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')} end
if kind == 'stream' then
  local info = redis.call('XINFO', 'STREAM', key)
  local state = {}
  for i = 1, #info, 2 do
    local name = info[i]
    if name == 'last-generated-id' or name == 'entries-added' or name == 'max-deleted-entry-id'
        or name == 'groups' then
      state[#state + 1] = name
      state[#state + 1] = info[i + 1]
    end
  end
  return {kind, pttl, redis.call('XRANGE', key, '-', '+'), state}
end
return {kind, pttl}
"""

# EVAL <script> 1 <key>: the script encoded once; the array header counts the key.
_READ_PREFIX = b"*4\r\n" + pack("EVAL", READ_SCRIPT, 1)[len(b"*3\r\n"):]
_KEY_ARG = b"$%d\r\n%b\r\n"
_MULTI = pack("MULTI")
_EXEC = pack("EXEC")
_OK = b"OK"
_QUEUED = b"QUEUED"
# An empty stream is created by one entry trimmed away at once (XADD ... MAXLEN 0), then XSETID.
_PLACEHOLDER_ID = b"0-1"


class StreamEntry(NamedTuple):
    id: bytes
    fields: tuple[tuple[bytes, bytes], ...]   # (field, value) in entry order


@dataclass(frozen=True)
class StreamState:
    """What XINFO STREAM says beyond the entries; None where the server does not say (before 7.0)."""

    last_id: bytes                      # last-generated-id
    entries_added: int | None = None
    max_deleted_id: bytes | None = None
    groups: int = 0                     # consumer groups on the authoritative side: not copied


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

    type: str                   # one of TYPES
    pttl: int                   # milliseconds left when it was read; -1 without expiry
    data: Data
    stream: StreamState | None = None   # streams only

    def __repr__(self) -> str:
        return f"LogicalValue({self.type}, pttl={self.pttl}, elements={self.elements})"

    @property
    def elements(self) -> int:
        """Fields, members or entries (1 for a string)."""
        return 1 if self.type == "string" else len(self.data)

    def expiry(self, read_at_ms: int) -> int:
        """The absolute expiry in Unix milliseconds for a read made at ``read_at_ms``; 0 without one."""
        return read_at_ms + self.pttl if self.pttl >= 0 else 0

    @property
    def notes(self) -> tuple[str, ...]:
        """What of this key a logical copy leaves behind."""
        if self.stream is not None and self.stream.groups:
            return (f"{self.stream.groups} consumer group(s) not copied",)
        return ()


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
    if kind not in TYPES:
        raise UnsupportedTypeError(kind, TYPES)
    if len(reply) < 3:
        raise LogicalCopyError(f"the read script replied no value for a {kind} key")
    data, stream = _parse_data(kind, reply[2]), None
    if kind == "stream":
        stream = _parse_stream_state(reply[3] if len(reply) > 3 else None)
    return LogicalValue(kind, pttl, data, stream)


def _parse_data(kind: str, raw: Any) -> Data:
    if kind == "string":
        if not isinstance(raw, bytes):
            raise LogicalCopyError(f"a string value must be bytes, got {_short(raw)}")
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


def _parse_stream_state(raw: Any) -> StreamState:
    if not isinstance(raw, list) or len(raw) % 2:
        raise LogicalCopyError(f"the stream state must be [name, value, ...], got {_short(raw)}")
    fields = dict(zip(raw[0::2], raw[1::2]))
    last_id = fields.get(b"last-generated-id")
    if not isinstance(last_id, bytes):
        raise LogicalCopyError(f"XINFO STREAM gave no last-generated-id: {_short(raw)}")
    entries_added, max_deleted_id = fields.get(b"entries-added"), fields.get(b"max-deleted-entry-id")
    groups = fields.get(b"groups")
    return StreamState(last_id,
                       entries_added if isinstance(entries_added, int) else None,
                       max_deleted_id if isinstance(max_deleted_id, bytes) else None,
                       groups if isinstance(groups, int) else 0)


def _bytes_list(kind: str, raw: Any) -> list[bytes]:
    if not isinstance(raw, list) or not all(isinstance(item, bytes) for item in raw):
        raise LogicalCopyError(f"a {kind} value must be an array of strings, got {_short(raw)}")
    return raw


def _pairs(kind: str, items: list[bytes]) -> tuple[tuple[bytes, bytes], ...]:
    if len(items) % 2:
        raise LogicalCopyError(f"a {kind} value must come in pairs, got {len(items)} strings")
    return tuple(zip(items[0::2], items[1::2]))


# --------------------------------------------------------------------------- writing


def pack_write(key: bytes, value: LogicalValue, expiry_ms: int = 0, *,
               chunk: int = DEFAULT_CHUNK) -> tuple[bytes, ...]:
    """MULTI, DEL, the value's writes, PEXPIREAT ``expiry_ms`` (absolute Unix ms; 0: no
    expiry), EXEC: one packed command each. An expiry already passed deletes the key
    (PEXPIREAT semantics); callers that know it has passed just send DEL."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    commands = [_MULTI, pack("DEL", key)]
    kind, data = value.type, value.data
    if kind == "string":
        commands.append(pack("SET", key, data))
    elif kind in ("list", "set"):
        verb = "RPUSH" if kind == "list" else "SADD"
        commands += [pack(verb, key, *part) for part in _chunks(data, chunk)]
    elif kind == "hash":
        commands += [pack("HSET", key, *_flat(part)) for part in _chunks(data, chunk)]
    elif kind == "zset":
        commands += [pack("ZADD", key, *_flat((score, member) for member, score in part))
                     for part in _chunks(data, chunk)]
    elif kind == "stream":
        commands += _stream_writes(key, value)
    else:
        raise UnsupportedTypeError(kind, TYPES)
    if expiry_ms:
        commands.append(pack("PEXPIREAT", key, expiry_ms))
    commands.append(_EXEC)
    return tuple(commands)


def _stream_writes(key: bytes, value: LogicalValue) -> list[bytes]:
    entries: Sequence[StreamEntry] = value.data  # type: ignore[assignment]
    if entries:
        commands = [pack("XADD", key, entry.id, *_flat(entry.fields)) for entry in entries]
    else:
        commands = [pack("XADD", key, "MAXLEN", 0, _PLACEHOLDER_ID, "eve", "")]
    state = value.stream
    if state is not None:
        options: list[bytes | int] = []
        if state.entries_added is not None:
            options += [b"ENTRIESADDED", state.entries_added]
        if state.max_deleted_id is not None:
            options += [b"MAXDELETEDID", state.max_deleted_id]
        commands.append(pack("XSETID", key, state.last_id, *options))
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
            raise LogicalCopyError(f"command {number} of {len(queued)} refused: {_short(reply)}",
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


# --------------------------------------------------------------------------- helpers


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def _flat(pairs: Any) -> list[Any]:
    return [item for pair in pairs for item in pair]


def _error_text(reply: Any) -> str | None:
    return str(reply) if isinstance(reply, ReplyError) else None


def _short(reply: Any) -> str:
    return f"{reply!r:.200}"
