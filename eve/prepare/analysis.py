"""Keyspace analysis of a run's Prepare step (DESIGN.md section 7).

``analyze`` walks the source the way the scanner does, without blocking it:
per node (each master of a cluster) and per database that ``INFO keyspace``
lists, ``SCAN cursor COUNT n`` (never ``KEYS``) and, for the keys of each step,
pipelined ``TYPE`` + ``PTTL`` + ``MEMORY USAGE`` (which samples 5 elements of
an aggregate by default, so a huge key costs no more than a small one) +
``OBJECT ENCODING`` (the encoding names the RDB type code a DUMP will carry, which
decides how the key can move to the target: ``eve.prepare.compat``).

A node's database is sampled up to ``sample_limit`` keys. Key and expiry counts
always come from ``INFO keyspace`` (exact); types, memory and TTL buckets come
from the sample, scaled by ``keys / sampled`` when the sample stopped early
(``Analysis.sampled`` is then true). Big keys are the largest sampled keys.

Search indexes (RediSearch) are not keys: ``Analysis.search_indexes`` lists each
index of the source's first master with its definition, as ``FT.CREATE``'s
arguments rebuilt from ``FT.INFO`` (``eve.bulk.indexes``, issue 23).
"""

from __future__ import annotations

import base64
import heapq
import itertools
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from eve.bulk.indexes import create_args
from eve.core.endpoints import ConnectionSpec, EndpointConfig
from eve.core.errors import AuthError, EndpointError, UnavailableError
from eve.redis.topology import Node, cluster_masters, info_section, node_spec
from eve.redis.wire import FastConnection, ReplyError, pack_many

__all__ = [
    "CORE_TYPES",
    "TTL_BUCKETS",
    "Analysis",
    "BigKey",
    "DbStats",
    "EncodingStats",
    "TypeStats",
    "analyze",
    "endpoint_masters",
    "key_text",
    "keyspace",
    "source_nodes",
    "ttl_bucket",
]

CORE_TYPES = frozenset({"string", "list", "set", "zset", "hash", "stream"})
TTL_BUCKETS = ("none", "<1m", "1m-1h", "1h-1d", ">1d")
DEFAULT_SAMPLE_LIMIT = 100_000
DEFAULT_BIG_KEYS = 10
DEFAULT_SCAN_COUNT = 1000
DEFAULT_TIMEOUT = 10.0
CLIENT_NAME = "eve-analysis"

_MINUTE_MS = 60_000
_HOUR_MS = 60 * _MINUTE_MS
_DAY_MS = 24 * _HOUR_MS


@dataclass(frozen=True)
class TypeStats:
    type: str
    keys: int
    memory_bytes: int


@dataclass(frozen=True)
class EncodingStats:
    type: str
    encoding: str                  # OBJECT ENCODING: "listpack", "intset", "hashtable", ...
    keys: int                      # over every db, from the sample, scaled when sampled


@dataclass(frozen=True)
class DbStats:
    db: int
    keys: int                      # exact, from INFO keyspace (summed over masters)
    keys_with_ttl: int             # exact, from INFO keyspace "expires"
    types: tuple[TypeStats, ...]   # from the sample, scaled when sampled; most keys first


@dataclass(frozen=True)
class BigKey:
    key: bytes
    key_text: str                  # printable form of ``key`` (see ``key_text``)
    db: int
    type: str
    memory_bytes: int
    node: str = ""                 # the master holding it ("host:port")


@dataclass(frozen=True)
class Analysis:
    dbs: tuple[DbStats, ...]
    big_keys: tuple[BigKey, ...]                  # largest first
    ttl_distribution: tuple[tuple[str, int], ...]  # (bucket, keys) for every bucket of TTL_BUCKETS
    module_types: tuple[str, ...]                 # key types outside CORE_TYPES, e.g. "graphdata"
    used_memory_bytes: int                        # INFO memory used_memory, summed over masters
    sampled: bool                                 # some node/db was sampled, not walked entirely
    sampled_keys: int                             # keys looked at
    encodings: tuple[EncodingStats, ...] = ()     # most keys first
    search_indexes: tuple[str, ...] = ()          # "name: ON HASH PREFIX ... SCHEMA ..." (RediSearch)

    @property
    def keys(self) -> int:
        return sum(db.keys for db in self.dbs)

    def to_dict(self) -> dict[str, Any]:
        """``asdict`` with each big key's bytes as base64 (``key_base64``), ready for JSON."""
        data = asdict(self)
        for big in data["big_keys"]:
            big["key_base64"] = base64.b64encode(big.pop("key")).decode()
        return data


def key_text(key: bytes) -> str:
    """A key as text: UTF-8, with other bytes as \\xNN escapes."""
    return key.decode("utf-8", "backslashreplace")


def ttl_bucket(pttl_ms: int) -> str:
    """The TTL_BUCKETS bucket of a PTTL reply (-1: no expiry)."""
    if pttl_ms < 0:
        return "none"
    if pttl_ms < _MINUTE_MS:
        return "<1m"
    if pttl_ms < _HOUR_MS:
        return "1m-1h"
    if pttl_ms < _DAY_MS:
        return "1h-1d"
    return ">1d"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _ask(config: EndpointConfig, timeout: float, work: Any, roles: tuple[str, ...]) -> Any:
    """Run ``work(conn)`` with the first role's connection that may (topology and
    INFO are admin work; the read or write user often may too)."""
    error: EndpointError | None = None
    specs: list[ConnectionSpec] = []
    for role in roles:
        if config.for_role(role) not in specs:
            specs.append(config.for_role(role))
    for spec in specs:
        with FastConnection(spec, timeout=timeout, client_name=CLIENT_NAME) as conn:
            try:
                return work(conn)
            except (UnavailableError, AuthError):
                raise
            except EndpointError as exc:
                error = exc
    assert error is not None
    raise error


def endpoint_masters(config: EndpointConfig, *, role: str = "read", timeout: float = DEFAULT_TIMEOUT) -> list[Node]:
    """The masters of a cluster endpoint (from CLUSTER SLOTS), or [] for a standalone server.

    Asked with the admin connection, falling back to the role's own."""
    def masters(conn: FastConnection) -> list[Node]:
        if info_section(conn, "cluster").get("cluster_enabled") != "1":
            return []
        return cluster_masters(conn)

    return _ask(config, timeout, masters, ("admin", role))


def source_nodes(config: EndpointConfig, *, role: str = "read", timeout: float = DEFAULT_TIMEOUT,
                 ) -> list[ConnectionSpec]:
    """The role's connection aimed at each master of a cluster, or the role's
    connection itself for a standalone server."""
    spec = config.for_role(role)
    nodes = endpoint_masters(config, role=role, timeout=timeout)
    return [node_spec(spec, node) for node in nodes] if nodes else [spec]


def keyspace(conn: FastConnection) -> dict[int, tuple[int, int]]:
    """db -> (keys, expires), from INFO keyspace."""
    result: dict[int, tuple[int, int]] = {}
    for name, value in info_section(conn, "keyspace").items():
        if name.startswith("db") and name[2:].isdigit():
            fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
            result[int(name[2:])] = (int(fields.get("keys", 0)), int(fields.get("expires", 0)))
    return result


class _Tally:
    """Accumulates scaled counts; rounded once at the end."""

    def __init__(self, big_keys: int) -> None:
        self.keys: dict[int, int] = defaultdict(int)
        self.expires: dict[int, int] = defaultdict(int)
        self.type_keys: dict[tuple[int, str], float] = defaultdict(float)
        self.type_memory: dict[tuple[int, str], float] = defaultdict(float)
        self.encodings: dict[tuple[str, str], float] = defaultdict(float)
        self.ttl: dict[str, float] = defaultdict(float)
        self.module_types: set[str] = set()
        self.big: list[tuple[int, int, BigKey]] = []
        self.big_limit = big_keys
        self.sampled_keys = 0
        self.sampled = False
        self._order = itertools.count()

    def offer_big_key(self, memory: int, make: Any) -> None:
        if self.big_limit <= 0:
            return
        if len(self.big) < self.big_limit:
            heapq.heappush(self.big, (memory, next(self._order), make()))
        elif memory > self.big[0][0]:
            heapq.heapreplace(self.big, (memory, next(self._order), make()))


def _scan_db(conn: FastConnection, node: str, db: int, keys_in_db: int, tally: _Tally, *,
             sample_limit: int, scan_count: int) -> None:
    conn.select(db)
    types: dict[str, int] = defaultdict(int)
    memory: dict[str, int] = defaultdict(int)
    ttl: dict[str, int] = defaultdict(int)
    encodings: dict[tuple[str, str], int] = defaultdict(int)
    seen: set[bytes] = set()
    sampled = 0
    cursor: bytes = b"0"
    truncated = False
    while True:
        reply = conn.execute("SCAN", cursor, "COUNT", scan_count)
        if isinstance(reply, ReplyError):
            raise EndpointError(f"SCAN failed on {node} db {db}: {reply}")
        cursor, batch = reply[0], reply[1]
        # SCAN may return a key twice (during a rehash); count it once.
        fresh = [key for key in batch if key not in seen]
        if len(fresh) > sample_limit - sampled:
            fresh, truncated = fresh[: max(sample_limit - sampled, 0)], True
        seen.update(fresh)
        if fresh:
            commands = []
            for key in fresh:
                commands += [("TYPE", key), ("PTTL", key), ("MEMORY", "USAGE", key), ("OBJECT", "ENCODING", key)]
            replies = conn.pipeline(pack_many(commands), len(commands))
            for i, key in enumerate(fresh):
                kind, pttl, usage, encoding = replies[4 * i: 4 * i + 4]
                if isinstance(kind, ReplyError) or isinstance(pttl, ReplyError):
                    continue
                kind = _text(kind)
                if kind == "none" or pttl == -2:
                    continue  # vanished since SCAN
                size = usage if isinstance(usage, int) else 0
                sampled += 1
                types[kind] += 1
                memory[kind] += size
                ttl[ttl_bucket(pttl)] += 1
                encodings[(kind, _text(encoding) if isinstance(encoding, bytes) else "unknown")] += 1
                if kind not in CORE_TYPES:
                    tally.module_types.add(kind)
                tally.offer_big_key(size, lambda key=key, kind=kind, size=size: BigKey(
                    key, key_text(key), db, kind, size, node))
        if cursor in (b"0", 0) and not truncated:
            break
        if sampled >= sample_limit or truncated:
            truncated = True
            break
    conn.select(0)
    # Scale the sample to the whole database when it stopped early.
    scale = keys_in_db / sampled if truncated and sampled else 1.0
    tally.sampled = tally.sampled or truncated
    tally.sampled_keys += sampled
    for kind, count in types.items():
        tally.type_keys[(db, kind)] += count * scale
        tally.type_memory[(db, kind)] += memory[kind] * scale
    for bucket, count in ttl.items():
        tally.ttl[bucket] += count * scale
    for pair, count in encodings.items():
        tally.encodings[pair] += count * scale


def analyze(source: EndpointConfig, *, sample_limit: int = DEFAULT_SAMPLE_LIMIT, big_keys: int = DEFAULT_BIG_KEYS,
            scan_count: int = DEFAULT_SCAN_COUNT, timeout: float = DEFAULT_TIMEOUT) -> Analysis:
    """Key counts per db and type, memory, big keys, TTL buckets and module types of the source.

    Reads with the source's read connection (each master of a cluster).
    Raises UnavailableError / AuthError / EndpointError naming the node.
    """
    if sample_limit < 1:
        raise ValueError("sample_limit must be at least 1")
    tally = _Tally(big_keys)
    used_memory = 0
    indexes: tuple[str, ...] | None = None
    for spec in source_nodes(source, timeout=timeout):
        with FastConnection(spec, timeout=timeout, client_name=CLIENT_NAME) as conn:
            if indexes is None:
                indexes = _search_indexes(conn)
            used_memory += int(info_section(conn, "memory").get("used_memory", 0))
            for db, (keys, expires) in sorted(keyspace(conn).items()):
                if not keys:
                    continue
                tally.keys[db] += keys
                tally.expires[db] += expires
                _scan_db(conn, spec.address, db, keys, tally, sample_limit=sample_limit, scan_count=scan_count)
    dbs = []
    for db in sorted(tally.keys):
        kinds = sorted((kind for d, kind in tally.type_keys if d == db),
                       key=lambda kind: (-tally.type_keys[(db, kind)], kind))
        dbs.append(DbStats(db, tally.keys[db], tally.expires[db], tuple(
            TypeStats(kind, round(tally.type_keys[(db, kind)]), round(tally.type_memory[(db, kind)]))
            for kind in kinds)))
    big = tuple(entry[2] for entry in sorted(tally.big, key=lambda entry: (-entry[0], entry[1])))
    return Analysis(
        dbs=tuple(dbs),
        big_keys=big,
        ttl_distribution=tuple((bucket, round(tally.ttl.get(bucket, 0.0))) for bucket in TTL_BUCKETS),
        module_types=tuple(sorted(tally.module_types)),
        used_memory_bytes=used_memory,
        sampled=tally.sampled,
        sampled_keys=tally.sampled_keys,
        encodings=tuple(EncodingStats(kind, encoding, round(count)) for (kind, encoding), count in
                        sorted(tally.encodings.items(), key=lambda item: (-item[1], item[0]))),
        search_indexes=indexes or (),
    )


def _search_indexes(conn: FastConnection) -> tuple[str, ...]:
    """Every search index of one node with its definition; () without RediSearch."""
    names = conn.execute("FT._LIST")
    if isinstance(names, ReplyError) or not isinstance(names, list):
        return ()
    listed = []
    for name in sorted(names):
        info = conn.execute("FT.INFO", name)
        if not isinstance(info, ReplyError):
            listed.append(f"{name.decode('utf-8', 'backslashreplace')}: {' '.join(create_args(info))}")
    return tuple(listed)
