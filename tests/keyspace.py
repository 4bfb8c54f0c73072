"""Test data: fill a server with every data type, and compare two keyspaces."""

from __future__ import annotations

import random
from typing import Any

import redis

TYPES = ("string", "hash", "list", "set", "zset", "stream")


def fill(client: redis.Redis, count: int = 600, *, prefix: str = "k", ttl_every: int = 5, seed: int = 7,
         binary: bool = True) -> list[bytes]:
    """``count`` keys spread over every type; every ``ttl_every``-th key gets a TTL of 1-2 hours.
    Returns the keys written."""
    rng = random.Random(seed)
    keys: list[bytes] = []
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        kind = TYPES[i % len(TYPES)]
        key = f"{prefix}:{kind}:{i}".encode()
        if binary and i % 97 == 0:
            key += b"\xff\x00\xfe"  # keys are bytes, not text
        if kind == "string":
            pipe.set(key, rng.randbytes(rng.randint(0, 200)))
        elif kind == "hash":
            pipe.hset(key, mapping={f"f{j}": rng.randbytes(8) for j in range(rng.randint(1, 12))})
        elif kind == "list":
            pipe.rpush(key, *[rng.randbytes(6) for _ in range(rng.randint(1, 12))])
        elif kind == "set":
            pipe.sadd(key, *[f"m{rng.randint(0, 1000)}" for _ in range(rng.randint(1, 12))])
        elif kind == "zset":
            pipe.zadd(key, {f"m{j}": rng.random() * 100 for j in range(rng.randint(1, 12))})
        else:
            for j in range(rng.randint(1, 4)):
                pipe.xadd(key, {"n": str(j), "v": rng.randbytes(5)})
        if ttl_every and i % ttl_every == 0:
            pipe.pexpire(key, rng.randint(3_600_000, 7_200_000))
        keys.append(key)
        if len(pipe) >= 500:
            pipe.execute()
    pipe.execute()
    return keys


def value_of(client: redis.Redis, key: bytes) -> tuple[str, Any]:
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "string":
        return kind, client.get(key)
    if kind == "hash":
        return kind, client.hgetall(key)
    if kind == "list":
        return kind, client.lrange(key, 0, -1)
    if kind == "set":
        return kind, sorted(client.smembers(key))
    if kind == "zset":
        return kind, client.zrange(key, 0, -1, withscores=True)
    if kind == "stream":
        return kind, client.xrange(key)
    return kind, None


def keys_of(client: redis.Redis) -> set[bytes]:
    return set(client.scan_iter(count=1000))


def assert_same(source: redis.Redis, target: redis.Redis, *, ttl_tolerance_ms: int = 1000,
                keys: set[bytes] | None = None) -> int:
    """Every key of the source (or of ``keys``) exists on the target with the same type,
    value and TTL (within the tolerance). Returns how many keys were compared."""
    wanted = keys if keys is not None else keys_of(source)
    missing = [k for k in wanted if not target.exists(k)]
    assert not missing, f"{len(missing)} keys missing on the target, e.g. {missing[:3]}"
    for key in wanted:
        assert value_of(target, key) == value_of(source, key), f"value of {key!r} differs"
        source_ttl, target_ttl = source.pttl(key), target.pttl(key)
        if source_ttl < 0:
            assert target_ttl == source_ttl, f"TTL of {key!r}: source {source_ttl}, target {target_ttl}"
        else:
            assert abs(source_ttl - target_ttl) <= ttl_tolerance_ms, \
                f"TTL of {key!r}: source {source_ttl} ms, target {target_ttl} ms"
    return len(wanted)


def fill_stream_with_groups(client: redis.Redis, key: str | bytes, entries: int = 30) -> None:
    """A stream with two consumer groups: one with consumers and pending entries (delivered
    once, then some claimed again to raise their delivery counts, one acknowledged, one whose
    entry was deleted afterwards), one never read; plus a consumer with nothing pending."""
    for i in range(1, entries + 1):
        client.xadd(key, {"n": str(i), "b": b"\xff\x00"}, id=f"{i}-1")
    client.xgroup_create(key, "workers", id="0")
    client.xgroup_create(key, "idle-group", id="5-1")
    client.xreadgroup("workers", "alice", {key: ">"}, count=6)
    client.xreadgroup("workers", "bob", {key: ">"}, count=4)
    client.xgroup_createconsumer(key, "workers", "carol")
    client.xack(key, "workers", "2-1")
    client.xclaim(key, "workers", "bob", 0, ["3-1"])          # delivery count 2, owner bob
    client.xclaim(key, "workers", "bob", 0, ["3-1"])          # 3
    client.xdel(key, f"{entries}-1")                          # the last id stays used up


def groups_of(client: redis.Redis, key: str | bytes, *, entries_read: bool = True) -> list[tuple[Any, ...]]:
    """A stream's consumer groups as a logical copy keeps them: name, last delivered id,
    entries read, consumers, and pending entries with owner, delivery time and count
    (not seen-time/active-time, which no command can set). Redis 6.2 keeps no entries read
    (Redis 7.0 added it): ``entries_read=False`` leaves it out."""
    info = client.execute_command("XINFO", "STREAM", key, "FULL", "COUNT", 0)
    groups = []
    for group in info[b"groups"] if isinstance(info, dict) else []:
        groups.append((group[b"name"], group[b"last-delivered-id"],
                       group.get(b"entries-read") if entries_read else None,
                       sorted(consumer[b"name"] for consumer in group[b"consumers"]),
                       [tuple(entry) for entry in group[b"pending"]]))
    return sorted(groups)


def fill_field_ttls(client: redis.Redis, key: str | bytes, fields: int = 50) -> None:
    """A hash (Redis 7.4+ / Valkey 9) whose fields have TTLs of their own, a few sharing one
    expiry time, binary names, and some fields without a TTL."""
    client.hset(key, mapping={f"f{i}".encode() + b"\xff": f"v{i}" for i in range(fields)})
    client.hset(key, "plain", "no ttl")
    for i in range(0, fields, 2):
        client.execute_command("HPEXPIRE", key, 3_600_000 + 1000 * (i // 6), "FIELDS", 1, f"f{i}".encode() + b"\xff")


def field_ttls_of(client: redis.Redis, key: str | bytes) -> dict[bytes, int]:
    """field -> absolute expiry in ms (-1: none) of every field of a hash."""
    fields = client.hkeys(key)
    if not fields:
        return {}
    return dict(zip(fields, client.execute_command("HPEXPIRETIME", key, "FIELDS", len(fields), *fields)))


BIG_KEY_TYPES = ("zset", "hash", "set", "list", "stream", "string")


def fill_big_keys(client: redis.Redis, members: int = 5000, *, prefix: str = "big", string_bytes: int = 3 << 20,
                  field_ttls: bool = False) -> list[bytes]:
    """One key of each type with ``members`` elements (binary members and values, a TTL on
    each, float scores, a stream with a consumer group and pending entries) and a
    ``string_bytes`` binary string; ``field_ttls``: some hash fields with TTLs of their own
    (Redis 7.4+ / Valkey 9). Returns the keys, in BIG_KEY_TYPES order."""
    rng = random.Random(11)
    keys = [f"{prefix}:{kind}".encode() + b"\xff" for kind in BIG_KEY_TYPES]
    zset, hash_, set_, list_, stream, string = keys
    pipe = client.pipeline(transaction=False)
    for start in range(0, members, 1000):
        part = range(start, min(start + 1000, members))
        pipe.zadd(zset, {b"m\x00%d" % i: rng.random() * 1e6 - 5e5 for i in part})
        pipe.hset(hash_, mapping={b"f\xfe%d" % i: rng.randbytes(12) for i in part})
        pipe.sadd(set_, *[b"s\x01%d" % i for i in part])
        pipe.rpush(list_, *[rng.randbytes(8) for _ in part])
        for i in part:
            pipe.xadd(stream, {"i": str(i), "b": rng.randbytes(6)})
        pipe.execute()
    pipe.set(string, rng.randbytes(string_bytes))
    for number, key in enumerate(keys):
        pipe.pexpire(key, 3_600_000 + number * 60_000)
    pipe.execute()
    client.xgroup_create(stream, "readers", id="0")
    client.xreadgroup("readers", "r1", {stream: ">"}, count=150)
    client.xack(stream, "readers", *[entry_id for entry_id, _ in client.xrange(stream, count=10)])
    if field_ttls:
        fields = client.hkeys(hash_)[: members // 10]
        client.execute_command("HPEXPIRE", hash_, 1_800_000, "FIELDS", len(fields), *fields)
    return keys


def _write_every_encoding(pipe: Any, prefix: str) -> dict[str, bytes]:
    big = 1000   # past every *-max-listpack-entries and set-max-intset-entries default (128 or 512)
    keys = {name: f"{prefix}:{name}".encode() for name in ENCODINGS}
    pipe.set(keys["string-embstr"], b"short")
    pipe.set(keys["string-raw"], b"r" * 100)                   # past 44 bytes: raw
    pipe.set(keys["string-int"], 12345678)
    pipe.set(keys["string-negative-int"], -42)
    pipe.set(keys["string-empty"], b"")
    pipe.set(keys["string-binary"], bytes(range(256)))
    pipe.set(keys["string-large"], b"\x00\xff" * 300_000)      # 600 kB
    pipe.rpush(keys["list-small"], b"a", b"", b"1", b"\x00\xff")
    pipe.rpush(keys["list-large"], *[b"%d" % i if i % 3 else b"x" * 80 for i in range(5000)])
    pipe.sadd(keys["set-intset"], *range(-5, 50))
    pipe.sadd(keys["set-listpack"], b"a", b"b", b"", b"\xff\x00")
    pipe.sadd(keys["set-hashtable"], *[b"member-%d" % i for i in range(big)])
    pipe.sadd(keys["set-intset-large"], *range(2 * big))
    pipe.zadd(keys["zset-listpack"], {b"a": 1.5, b"": 0, b"\xff": -3, b"int": 7})
    pipe.zadd(keys["zset-skiplist"], {b"m%d" % i: i / 7 for i in range(big)})
    pipe.zadd(keys["zset-long-member"], {b"y" * 100: 1, b"z": 2})   # past 64 bytes: skiplist
    pipe.hset(keys["hash-listpack"], mapping={b"f": b"v", b"n": 1, b"": b"", b"\xff": b"\x00"})
    pipe.hset(keys["hash-hashtable"], mapping={b"f%d" % i: b"v%d" % i for i in range(big)})
    pipe.hset(keys["hash-long-value"], mapping={b"f": b"v" * 100})  # past 64 bytes: hashtable
    for i in range(3):
        pipe.xadd(keys["stream-small"], {b"n": i, b"v": b"\xff" * i})
    for i in range(big):
        pipe.xadd(keys["stream-large"], {b"i": i}, id=f"{i + 1}-{i % 3}")
    pipe.xadd(keys["stream-trimmed"], {b"a": 1}, id="5-1")
    pipe.xadd(keys["stream-trimmed"], {b"a": 2}, id="9-0")
    pipe.xdel(keys["stream-trimmed"], "5-1")
    return keys


# Every plain type in every encoding the engines of DESIGN.md 8 write, small and large, with
# integers, binary and empty strings: what the payload transcoding is tested on.
ENCODINGS = (
    "string-embstr", "string-raw", "string-int", "string-negative-int", "string-empty", "string-binary",
    "string-large", "list-small", "list-large", "set-intset", "set-listpack", "set-hashtable",
    "set-intset-large", "zset-listpack", "zset-skiplist", "zset-long-member", "hash-listpack",
    "hash-hashtable", "hash-long-value", "stream-small", "stream-large", "stream-trimmed",
)


def fill_every_encoding(client: redis.Redis, *, prefix: str = "enc", ttl_ms: int = 0) -> dict[str, bytes]:
    """One key per entry of ``ENCODINGS`` (name -> key), each with a TTL of ``ttl_ms`` when given."""
    pipe = client.pipeline(transaction=False)
    keys = _write_every_encoding(pipe, prefix)
    if ttl_ms:
        for key in keys.values():
            pipe.pexpire(key, ttl_ms)
    pipe.execute()
    return keys
