"""What a DUMP payload says about itself, without parsing the value.

A payload is ``<RDB object type byte> <serialized value> <RDB version: 2 bytes LE> <CRC64: 8 bytes>``
(https://redis.io/docs/latest/commands/dump/). The type byte names the Redis
type the key will have; the version says which servers accept it: a server
refuses a payload whose RDB version is newer than its own (``ERR DUMP payload
version or checksum are wrong``).
"""

from __future__ import annotations

import re

__all__ = ["CORE_TYPES", "MERGEABLE_TYPES", "RDB_TYPES", "is_type_name", "payload_rdb_version", "payload_type"]

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

# Types the MERGE conflict policy knows how to union (DESIGN.md 4.4).
MERGEABLE_TYPES = frozenset({"hash", "set", "zset"})

_TRAILER = 10  # 2 bytes RDB version + 8 bytes CRC64


def payload_type(payload: bytes) -> str:
    """The Redis type a DUMP payload restores to; "unknown" for a type byte Eve does not know."""
    if not payload:
        return "unknown"
    return RDB_TYPES.get(payload[0], "unknown")


def payload_rdb_version(payload: bytes) -> int:
    """The RDB format version a DUMP payload was written with (10 for Redis 7.0, 80 for Valkey 9)."""
    if len(payload) < _TRAILER + 1:
        raise ValueError(f"a DUMP payload has at least {_TRAILER + 1} bytes, got {len(payload)}")
    return int.from_bytes(payload[-_TRAILER:-_TRAILER + 2], "little")


# What TYPE answers for the core types; SCAN TYPE takes these or a module's type name.
CORE_TYPES = ("string", "list", "set", "zset", "hash", "stream")
# A module's data type name is exactly 9 characters (RedisModule_CreateDataType).
_MODULE_TYPE_NAME = re.compile(r"[A-Za-z0-9_-]{9}")


def is_type_name(name: str) -> bool:
    """A name SCAN TYPE can match: a core type, or what could be a module's type name."""
    return name in CORE_TYPES or bool(_MODULE_TYPE_NAME.fullmatch(name))
