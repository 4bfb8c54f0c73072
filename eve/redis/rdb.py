"""What a DUMP payload says about itself, without parsing the value, and how to relabel it.

A payload is ``<RDB object type byte> <serialized value> <RDB version: 2 bytes LE> <CRC64: 8 bytes LE>``
(https://redis.io/docs/latest/commands/dump/). The type byte names the Redis
type the key will have; the version says which servers accept it: a server
refuses a payload whose RDB version is newer than its own (``ERR DUMP payload
version or checksum are wrong``), and Valkey 9 (RDB 80) also refuses Redis 7.4+'s
12..79 while its ``rdb-version-check`` is ``strict`` (the default).

Transcoding (DESIGN.md 4, mode AUTO). A value's encoding belongs to its type
byte, not to the version: type codes 0..21 are written the same way by every
Redis and Valkey that knows them, so a payload of such a type can be relabelled
for an older or foreign target (its version rewritten, its CRC computed again)
when that target's format knows the type code. Codes 22 and up mean different
things in the two families (Redis 7.4+ hash metadata / listpack-ex, Valkey 9's
hash with field expiry) and are never relabelled; neither are module types
(6, 7), whose value is the module's own format.

    target format        knows the shared type codes
    RDB 9  (Redis 5/6)   0-7, 9-15           (up to stream-listpacks, 15)
    RDB 10 (Redis 7.0)   + 16-19             (listpack hash/zset, quicklist 2, stream-listpacks-2)
    RDB 11+ (7.2, 8.x,   + 20-21             (set-listpack, stream-listpacks-3)
      Valkey 7.2-9)

``TargetFormat.plan`` is the one decision per payload: restore it as it is,
relabel it, or copy the key logically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import anycrc

__all__ = [
    "AS_IS",
    "CORE_TYPES",
    "LOGICAL",
    "MERGEABLE_TYPES",
    "RDB_TYPES",
    "RELABEL",
    "REDIS",
    "VALKEY",
    "TargetFormat",
    "crc64",
    "describe_type",
    "is_type_name",
    "payload_rdb_version",
    "payload_type",
    "rdb_version_of",
    "relabel",
    "target_format",
    "type_code_for",
]

# RDB object type -> Redis type, from rdb.h of Redis 7.0 / 8.2 and Valkey 8.1 / 9.1.
# Encodings of one type (ziplist, listpack, intset, ...) carry their own byte.
RDB_TYPES: dict[int, str] = {
    0: "string",
    1: "list",
    2: "set",
    3: "zset",
    4: "hash",
    5: "zset",        # zset_2: binary scores
    6: "module",      # module (pre-GA encoding)
    7: "module",      # module_2
    9: "hash",        # hash_zipmap
    10: "list",       # list_ziplist
    11: "set",        # set_intset
    12: "zset",       # zset_ziplist
    13: "hash",       # hash_ziplist
    14: "list",       # list_quicklist
    15: "stream",     # stream_listpacks
    16: "hash",       # hash_listpack
    17: "zset",       # zset_listpack
    18: "list",       # list_quicklist_2
    19: "stream",     # stream_listpacks_2
    20: "set",        # set_listpack
    21: "stream",     # stream_listpacks_3
    # Hashes with field TTLs or metadata: Redis 7.4+/8 use 22-25
    # (hash_metadata_pre_ga, hash_listpack_ex_pre_ga, hash_metadata, hash_listpack_ex);
    # Valkey 9 uses 22 for its hash with field expiry.
    22: "hash",
    23: "hash",
    24: "hash",
    25: "hash",
}

# The names rdb.h gives the type codes, for error keys and the compatibility report.
_TYPE_NAMES: dict[int, str] = {
    0: "string", 1: "list", 2: "set", 3: "zset", 4: "hash", 5: "zset-2", 6: "module-pre-ga", 7: "module-2",
    9: "hash-zipmap", 10: "list-ziplist", 11: "set-intset", 12: "zset-ziplist", 13: "hash-ziplist",
    14: "list-quicklist", 15: "stream-listpacks", 16: "hash-listpack", 17: "zset-listpack",
    18: "list-quicklist-2", 19: "stream-listpacks-2", 20: "set-listpack", 21: "stream-listpacks-3",
    22: "hash-field-ttl", 23: "hash-field-ttl", 24: "hash-field-ttl", 25: "hash-field-ttl",
}

# Types the MERGE conflict policy knows how to union (DESIGN.md 4.4).
MERGEABLE_TYPES = frozenset({"hash", "set", "zset"})

_TRAILER = 10  # 2 bytes RDB version + 8 bytes CRC64


def payload_type(payload: bytes) -> str:
    """The Redis type a DUMP payload restores to; "unknown" for a type byte Eve does not know."""
    if not payload:
        return "unknown"
    return RDB_TYPES.get(payload[0], "unknown")


def describe_type(code: int) -> str:
    """``set-listpack (20)``: a type code as rdb.h names it, for messages."""
    return f"{_TYPE_NAMES.get(code, 'unknown')} ({code})"


def payload_rdb_version(payload: bytes) -> int:
    """The RDB format version a DUMP payload was written with (10 for Redis 7.0, 80 for Valkey 9)."""
    if len(payload) < _TRAILER + 1:
        raise ValueError(f"a DUMP payload has at least {_TRAILER + 1} bytes, got {len(payload)}")
    return int.from_bytes(payload[-_TRAILER:-_TRAILER + 2], "little")


# --------------------------------------------------------------------------- transcoding

REDIS, VALKEY = "redis", "valkey"
AS_IS, RELABEL, LOGICAL = "as is", "transcoded", "logical"

# CRC-64/REDIS: Jones polynomial 0xad93d23594c935a9, reflected in and out, init 0, xorout 0
# (Redis src/crc64.c; check value of "123456789": 0xe9c6d914c4b8d9ca). anycrc computes it in C.
_CRC64 = anycrc.Model("CRC64-REDIS")
_IN_PLACE_BYTES = 64 << 10   # from this size on, relabel reads the value in place
_MODULE_CODES = frozenset({6, 7})
_SHARED_LIMIT = 22   # codes from here on differ between the families
# The highest shared type code each RDB version knows (codes 8 and 6/7 aside).
_NEWEST_CODE = {9: 15, 10: 19, 11: 21}
# (family, major, minor) -> RDB version; a version not listed takes the newest one below it.
_RDB_VERSIONS: dict[str, list[tuple[tuple[int, int], int]]] = {
    REDIS: [((5, 0), 9), ((7, 0), 10), ((7, 2), 11), ((7, 4), 12)],
    VALKEY: [((7, 2), 11), ((9, 0), 80)],
}


def crc64(data: bytes | memoryview, crc: int = 0) -> int:
    """CRC-64/REDIS of ``data``: what a DUMP payload's last 8 bytes hold (little-endian) for
    everything before them. ``crc``: the CRC of what came before ``data``, to go on from it."""
    return _CRC64.calc(data, crc)


def relabel(payload: bytes, version: int) -> bytes:
    """The payload with its RDB version set to ``version`` and its CRC computed again.

    A small payload is copied twice and summed once (one call costs more than a copy); a large
    one is read in place and copied once, into the result (bench/transcode.py measures both)."""
    label = version.to_bytes(2, "little")
    if len(payload) < _IN_PLACE_BYTES:
        body = payload[:-_TRAILER] + label
        return body + _CRC64.calc(body).to_bytes(8, "little")
    value = memoryview(payload)[:-_TRAILER]
    return b"".join((value, label, crc64(label, crc64(value)).to_bytes(8, "little")))


def rdb_version_of(family: str, version: str) -> int:
    """The RDB version a server of ``family`` at ``version`` (``8.2.1``) writes and reads."""
    numbers = [int(part) for part in re.findall(r"\d+", version)[:2]] + [0, 0]
    wanted = (numbers[0], numbers[1])
    table = _RDB_VERSIONS.get(family, _RDB_VERSIONS[REDIS])
    found = table[0][1]
    for since, rdb in table:
        if wanted >= since:
            found = rdb
    return found


@dataclass(frozen=True)
class TargetFormat:
    """What payloads a target server reads: its family and RDB version (from ``INFO server``)."""

    family: str        # REDIS or VALKEY
    version: str       # the engine's own version, for messages
    rdb: int

    def __str__(self) -> str:
        return f"{self.family} {self.version} (RDB {self.rdb})"

    def accepts_version(self, rdb: int) -> bool:
        """A payload of this RDB version restores here unchanged."""
        if rdb > self.rdb:
            return False
        # Valkey 9 refuses Redis 7.4+'s formats while rdb-version-check is strict (its default).
        return not (self.family == VALKEY and 12 <= rdb < 80 <= self.rdb)

    def knows_type(self, code: int) -> bool:
        """The type code is one of the shared ones (0..21, no module) and this format has it."""
        if code >= _SHARED_LIMIT or code in _MODULE_CODES or code == 8:
            return False
        newest = _NEWEST_CODE.get(min(self.rdb, 11), 21) if self.rdb >= 9 else 7
        return code <= newest

    def plan(self, payload: bytes) -> str:
        """AS_IS, RELABEL or LOGICAL for one DUMP payload (module docstring)."""
        if len(payload) <= _TRAILER:
            return AS_IS   # not a payload: the server says what is wrong with it
        return self.plan_for(payload[0], payload[-_TRAILER] | payload[-_TRAILER + 1] << 8)

    def plan_for(self, code: int, rdb: int) -> str:
        """AS_IS, RELABEL or LOGICAL for a payload of type ``code`` written at RDB ``rdb``."""
        if self.accepts_version(rdb):
            return AS_IS
        return RELABEL if self.knows_type(code) else LOGICAL


# (TYPE, OBJECT ENCODING) -> the type code a DUMP of such a key carries (rdb.c rdbSaveObjectType).
_ENCODED_CODES = {
    ("list", "ziplist"): 14, ("list", "linkedlist"): 1,
    ("set", "intset"): 11, ("set", "listpack"): 20, ("set", "hashtable"): 2,
    ("zset", "listpack"): 17, ("zset", "ziplist"): 12, ("zset", "skiplist"): 5,
    ("hash", "listpack"): 16, ("hash", "ziplist"): 13, ("hash", "hashtable"): 4,
    ("hash", "listpackex"): 25,   # Redis 7.4+: a listpack hash with field TTLs
}
_PLAIN_CODES = {"list": 18, "set": 2, "zset": 5, "hash": 4}   # an encoding not listed above


def type_code_for(kind: str, encoding: str, rdb: int) -> int:
    """The type code a DUMP of a key of this TYPE and OBJECT ENCODING carries on a server of RDB
    ``rdb``; 7 (module) for a type outside the core ones. (A hashtable hash with field TTLs
    cannot be told from one without by its encoding: it counts as 4.)"""
    if kind == "string":
        return 0
    if kind == "stream":
        return 21 if rdb >= 11 else 19 if rdb == 10 else 15
    if kind == "list" and encoding in ("quicklist", "listpack"):
        return 18 if rdb >= 10 else 14
    return _ENCODED_CODES.get((kind, encoding), _PLAIN_CODES.get(kind, 7))


def target_format(info: dict[str, str]) -> TargetFormat:
    """A server's TargetFormat from its ``INFO server`` fields (Valkey reports ``valkey_version``)."""
    if info.get("valkey_version"):
        family, version = VALKEY, info["valkey_version"]
    else:
        family, version = REDIS, info.get("redis_version", "0")
    return TargetFormat(family, version, rdb_version_of(family, version))


# What TYPE answers for the core types; SCAN TYPE takes these or a module's type name.
CORE_TYPES = ("string", "list", "set", "zset", "hash", "stream")
# A module's data type name is exactly 9 characters (RedisModule_CreateDataType).
_MODULE_TYPE_NAME = re.compile(r"[A-Za-z0-9_-]{9}")


def is_type_name(name: str) -> bool:
    """A name SCAN TYPE can match: a core type, or what could be a module's type name."""
    return name in CORE_TYPES or bool(_MODULE_TYPE_NAME.fullmatch(name))
