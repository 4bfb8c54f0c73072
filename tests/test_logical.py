"""Logical copy (eve.redis.logical) and DirtyKeySync's fallback to it when a side refuses the
authoritative side's DUMP payloads: the build and parse functions on fake replies, then
real servers (Valkey 9.1 and Redis 8.2 payloads are refused by Redis 7.0 and Valkey 8.1)."""

from __future__ import annotations

import logging
import time

import hiredis
import pytest
import redis
from keyspace import assert_same, fill, value_of

from eve.core.endpoints import ConnectionSpec
from eve.live.backlog import DirtyKeys
from eve.live.recopy import DirtyKeySync, SyncOptions
from eve.redis.logical import (
    READ_SCRIPT,
    LogicalCopyError,
    LogicalValue,
    StreamEntry,
    StreamState,
    UnsupportedTypeError,
    check_write,
    pack_read,
    pack_write,
    parse_read,
)
from eve.redis.wire import FastConnection, ReplyError, pack

BIG = 2500   # elements: more than one write command (1000 per command)
BATCH = 40


def spec(server) -> ConnectionSpec:
    return ConnectionSpec(server.host, server.port, password=server.password)


def commands(packed: tuple[bytes, ...]) -> list[list[bytes]]:
    """Packed commands back into argument lists."""
    reader = hiredis.Reader()
    reader.feed(b"".join(packed))
    out = []
    while (command := reader.gets()) is not False:
        out.append(command)
    return out


# --------------------------------------------------------------------------- no server


STREAM_REPLY = [b"stream", 5000,
                [[b"1-1", [b"a", b"1", b"b", b"\xff"]], [b"2-0", [b"a", b"2"]]],
                [b"last-generated-id", b"3-0", b"max-deleted-entry-id", b"3-0", b"entries-added", 3,
                 b"groups", 2]]


@pytest.mark.parametrize("reply, expected", [
    ([b"string", -1, b"\x00\xffbin"], LogicalValue("string", -1, b"\x00\xffbin")),
    ([b"hash", 10, [b"f", b"v", b"g", b""]], LogicalValue("hash", 10, ((b"f", b"v"), (b"g", b"")))),
    ([b"list", -1, [b"b", b"a", b"b"]], LogicalValue("list", -1, (b"b", b"a", b"b"))),
    ([b"set", -1, [b"m"]], LogicalValue("set", -1, (b"m",))),
    ([b"zset", -1, [b"a", b"-inf", b"b", b"0.10000000000000001", b"c", b"inf"]],
     LogicalValue("zset", -1, ((b"a", float("-inf")), (b"b", 0.1), (b"c", float("inf"))))),
    (STREAM_REPLY, LogicalValue("stream", 5000,
                                (StreamEntry(b"1-1", ((b"a", b"1"), (b"b", b"\xff"))),
                                 StreamEntry(b"2-0", ((b"a", b"2"),))),
                                StreamState(b"3-0", 3, b"3-0", groups=2))),
    ([b"stream", -1, [], [b"last-generated-id", b"0-0", b"groups", 0]],
     LogicalValue("stream", -1, (), StreamState(b"0-0"))),
    ([b"none", -2], None),
], ids=["string", "hash", "list", "set", "zset", "stream", "empty-stream", "gone"])
def test_parse_read(reply, expected):
    value = parse_read(reply)
    assert value == expected
    if value is not None:
        assert value.expiry(1_000) == (0 if value.pttl < 0 else 1_000 + value.pttl)


def test_notes_say_what_is_left_behind():
    assert parse_read(STREAM_REPLY).notes == ("2 consumer group(s) not copied",)
    assert parse_read([b"set", -1, [b"m"]]).notes == ()
    assert repr(parse_read(STREAM_REPLY)) == "LogicalValue(stream, pttl=5000, elements=2)"


@pytest.mark.parametrize("reply, error", [
    (ReplyError("NOPERM this user has no permissions to run the 'eval' command"), "refused: NOPERM"),
    (b"string", "not {type, pttl"),
    ([b"string"], "not {type, pttl"),
    ([b"string", b"-1", b"v"], "not {type, pttl"),
    ([b"string", -1], "no value for a string"),
    ([b"string", -1, [b"v"]], "must be bytes"),
    ([b"hash", -1, [b"f"]], "in pairs"),
    ([b"list", -1, [b"a", 1]], "array of strings"),
    ([b"zset", -1, [b"a", b"high"]], "not a number"),
    ([b"stream", -1, [[b"1-1"]], [b"last-generated-id", b"1-1"]], "stream entry must be"),
    ([b"stream", -1, [], [b"groups", 0]], "no last-generated-id"),
    ([b"stream", -1, []], "stream state must be"),
], ids=["refused", "not-array", "short", "pttl-bytes", "no-value", "string-array", "odd-hash", "int-member",
        "bad-score", "bad-entry", "no-last-id", "no-state"])
def test_parse_read_rejects_bad_replies(reply, error):
    with pytest.raises(LogicalCopyError, match=error) as raised:
        parse_read(reply)
    assert not isinstance(raised.value, UnsupportedTypeError)
    if isinstance(reply, ReplyError):
        assert raised.value.reply == str(reply)


def test_module_types_have_no_logical_form():
    with pytest.raises(UnsupportedTypeError, match="'graphdata' key .* cannot be copied logically") as raised:
        parse_read([b"graphdata", -1])
    assert raised.value.type == "graphdata"
    with pytest.raises(UnsupportedTypeError):
        pack_write(b"k", LogicalValue("ReJSON-RL", -1, b""))


def test_pack_read_is_one_eval_of_the_script():
    assert pack_read(b"k\xff\x00") == pack("EVAL", READ_SCRIPT, 1, b"k\xff\x00")
    assert commands((pack_read(b"k"),)) == [[b"EVAL", READ_SCRIPT.encode(), b"1", b"k"]]


@pytest.mark.parametrize("value, writes", [
    (LogicalValue("string", -1, b"\x00v"), [[b"SET", b"k", b"\x00v"]]),
    (LogicalValue("hash", -1, ((b"f", b"v"), (b"g", b"w"), (b"h", b"x"))),
     [[b"HSET", b"k", b"f", b"v", b"g", b"w"], [b"HSET", b"k", b"h", b"x"]]),
    (LogicalValue("list", -1, (b"c", b"a", b"b")), [[b"RPUSH", b"k", b"c", b"a"], [b"RPUSH", b"k", b"b"]]),
    (LogicalValue("set", -1, (b"a",)), [[b"SADD", b"k", b"a"]]),
    (LogicalValue("zset", -1, ((b"a", 0.1), (b"b", float("inf")), (b"c", -2.0))),
     [[b"ZADD", b"k", b"0.1", b"a", b"inf", b"b"], [b"ZADD", b"k", b"-2.0", b"c"]]),
    (LogicalValue("stream", -1, (StreamEntry(b"1-1", ((b"a", b"1"), (b"b", b"2"))),),
                  StreamState(b"5-0", 4, b"5-0", groups=1)),
     [[b"XADD", b"k", b"1-1", b"a", b"1", b"b", b"2"],
      [b"XSETID", b"k", b"5-0", b"ENTRIESADDED", b"4", b"MAXDELETEDID", b"5-0"]]),
    (LogicalValue("stream", -1, (), StreamState(b"0-0")),
     [[b"XADD", b"k", b"MAXLEN", b"0", b"0-1", b"eve", b""], [b"XSETID", b"k", b"0-0"]]),
], ids=["string", "hash", "list", "set", "zset", "stream", "empty-stream"])
def test_pack_write_chunks_inside_one_transaction(value, writes):
    assert commands(pack_write(b"k", value, chunk=2)) == [[b"MULTI"], [b"DEL", b"k"], *writes, [b"EXEC"]]
    with_ttl = commands(pack_write(b"k", value, 1_700_000_000_123, chunk=2))
    assert with_ttl[-2:] == [[b"PEXPIREAT", b"k", b"1700000000123"], [b"EXEC"]]


def test_pack_write_default_chunk_and_bounds():
    big = LogicalValue("list", -1, tuple(b"%d" % i for i in range(BIG)))
    pushes = commands(pack_write(b"k", big))[2:-1]
    assert [len(push) - 2 for push in pushes] == [1000, 1000, 500]
    assert [item for push in pushes for item in push[2:]] == list(big.data)
    with pytest.raises(ValueError, match="chunk"):
        pack_write(b"k", big, chunk=0)


QUEUED = b"QUEUED"


NESTED, OOM = ReplyError("ERR MULTI calls can not be nested"), ReplyError("OOM command not allowed")
ABORT, XADD = ReplyError("EXECABORT Transaction discarded"), ReplyError("ERR The ID specified in XADD is smaller")


@pytest.mark.parametrize("replies, error, reply", [
    ([NESTED, QUEUED, [1]], "MULTI refused: .*nested", NESTED),
    ([b"OK", QUEUED, OOM, ABORT], "command 2 of 2 refused: .*OOM", OOM),
    ([b"OK", QUEUED, None], "aborted", None),
    ([b"OK", QUEUED, ABORT], "EXEC refused: EXECABORT", ABORT),
    ([b"OK", QUEUED, QUEUED, [1, XADD]], "command 2 of 2 failed in EXEC .*partly written.*XADD", XADD),
    ([b"OK", QUEUED, QUEUED, [1]], "EXEC replied .* for 2 commands", None),
    ([b"OK", [1]], "at least 3 replies", None),
], ids=["multi-refused", "queue-refused", "aborted", "execabort", "failed-inside", "short-exec", "short"])
def test_check_write_rejects(replies, error, reply):
    with pytest.raises(LogicalCopyError, match=error) as raised:
        check_write(replies)
    assert raised.value.reply == (None if reply is None else str(reply))


def test_check_write_accepts():
    check_write([b"OK", QUEUED, QUEUED, [1, b"OK"]])


# --------------------------------------------------------------------------- real servers


def write_every_type(client, prefix: str = "t") -> list[bytes]:
    """Every type, binary data, float scores, stream ids and state, TTLs, big values."""
    p = prefix
    client.set(f"{p}:bin", b"\x00\xff\r\n" * 100)
    client.set(f"{p}:empty", b"")
    client.set(f"{p}:int", 12345, px=3_600_000)
    client.hset(f"{p}:hash", mapping={b"f\xff": b"v\x00", "n": 1})
    client.rpush(f"{p}:list", "b", "a", "b", b"\xfe")
    client.sadd(f"{p}:set", "x", "y", b"\x00")
    client.zadd(f"{p}:zset", {"a": 0.1, "b": -1.5, "c": 1e-300, "d": float("inf"), "e": float("-inf"),
                              "f": 3.141592653589793})
    client.pexpire(f"{p}:zset", 7_200_000)
    client.xadd(f"{p}:stream", {"a": "1", "b": b"\xff"}, id="5-1")
    client.xadd(f"{p}:stream", {"a": "2"}, id="6-0")
    client.xadd(f"{p}:stream", {"a": "3"}, id="7-0")
    client.xdel(f"{p}:stream", "7-0")            # last id 7-0 > last entry: XSETID keeps it
    client.xadd(f"{p}:empty-stream", {"a": "1"}, id="9-9")
    client.xdel(f"{p}:empty-stream", "9-9")
    client.hset(f"{p}:big-hash", mapping={f"f{i}": i for i in range(BIG)})
    client.rpush(f"{p}:big-list", *range(BIG))
    client.sadd(f"{p}:big-set", *range(BIG))
    client.zadd(f"{p}:big-zset", {f"m{i}": i / 7 for i in range(BIG)})
    client.pexpire(f"{p}:big-zset", 3_600_000)
    pipe = client.pipeline(transaction=False)
    for i in range(1200):
        pipe.xadd(f"{p}:big-stream", {"i": i})
    pipe.execute()
    return sorted(client.scan_iter(match=f"{p}:*"))


def stream_state(client, key) -> tuple:
    info = client.xinfo_stream(key)
    return info["last-generated-id"], info["entries-added"], info["max-deleted-entry-id"], info["length"]


def restore_calls(client) -> int:
    return int(client.info("commandstats").get("cmdstat_restore", {}).get("calls", 0))


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine_name", ["redis-7.0", "redis-8.2", "valkey-8.1", "valkey-9.1"])
def test_read_and_write_on_every_engine(server_factory, engine_name):
    """The script and the transaction, by hand: a copy under other names is identical."""
    server = server_factory(engine_name)
    client = server.client()
    keys = write_every_type(client)
    conn = FastConnection(spec(server))
    with conn:
        values = [parse_read(reply) for reply in conn.pipeline(b"".join(map(pack_read, keys)), len(keys))]
        assert {value.type for value in values} == {"string", "hash", "list", "set", "zset", "stream"}
        for key, value in zip(keys, values):
            copy = b"copy:" + key
            client.set(copy, "stale")     # replaced, not merged
            writes = pack_write(copy, value, value.expiry(time.time_ns() // 1_000_000))
            check_write(conn.pipeline(b"".join(writes), len(writes)))
            assert value_of(client, copy) == value_of(client, key), key
            if value.pttl < 0:
                assert client.pttl(copy) == -1
            else:
                assert abs(client.pttl(copy) - client.pttl(key)) <= 1000
            if value.type == "stream":
                assert stream_state(client, copy) == stream_state(client, key)
        assert parse_read(conn.execute("EVAL", READ_SCRIPT, 1, "missing")) is None
        assert parse_read(conn.execute("EVAL", READ_SCRIPT, 1, "t:bin")).data == b"\x00\xff\r\n" * 100


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_reverse_sync_to_an_older_engine_copies_logically(server_factory):
    """After cutover: Valkey 9.1 authoritative, Redis 7.0 (which refuses RDB 80) kept in sync."""
    target_server, source_server = server_factory("valkey-9.1"), server_factory("redis-7.0")
    target, source = target_server.client(), source_server.client()
    keys = write_every_type(target) + fill(target, 200, prefix="f")
    source.set("t:list", "stale string")          # other type: replaced
    source.zadd("t:zset", {"gone-member": 1})     # same type: replaced, not merged
    source.set("deleted", "x")                    # gone on the authoritative side: deleted
    source.set(b"expired", "x")
    target.set(b"expired", "x", px=1)             # expires before it is read
    dirty = DirtyKeys()
    failures: list = []
    options = SyncOptions(authoritative=spec(target_server), others=(spec(source_server),), batch=BATCH)
    time.sleep(0.01)
    with DirtyKeySync(options, dirty, on_error=failures.extend) as sync:
        dirty.mark_many(0, keys + [b"deleted", b"expired"])   # the gone ones in a later batch
        assert sync.drain(30)
        stats = sync.stats()
    assert not failures, failures[:3]
    assert (stats.copied, stats.deleted, stats.failed) == (len(keys), 2, 0), stats
    assert_same(target, source, keys=set(keys), ttl_tolerance_ms=1000)
    assert not source.exists("deleted", "expired")
    for key in (b"t:stream", b"t:empty-stream", b"t:big-stream"):
        assert stream_state(source, key) == stream_state(target, key)
    with pytest.raises(redis.ResponseError, match="equal or smaller"):
        source.xadd("t:stream", {"a": "4"}, id="7-0")   # the deleted entry's id stays used up
    # Only the first batch tried RESTORE (each refused); every later one went logical at once.
    restore = source.info("commandstats")["cmdstat_restore"]
    assert (restore["calls"], restore["failed_calls"]) == (BATCH, BATCH), restore


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_second_batch_goes_straight_to_logical(server_factory):
    auth_server, older_server = server_factory("valkey-9.1"), server_factory("valkey-8.1")
    auth, older = auth_server.client(), older_server.client()
    auth.mset({f"k{i}": i for i in range(20)})
    options = SyncOptions(authoritative=spec(auth_server), others=(spec(older_server),))
    with DirtyKeySync(options, DirtyKeys()) as sync:
        first = sync.recopy([(0, f"k{i}".encode()) for i in range(10)] + [(0, b"missing")])
        assert (first.copied, first.deleted, first.failed, first.logical) == (10, 1, 0, 10)
        assert restore_calls(older) == 10 and sync._copier().logical_sides == {spec(older_server).address}
        auth.delete("k15")
        second = sync.recopy([(0, f"k{i}".encode()) for i in range(10, 20)])
        assert (second.copied, second.deleted, second.failed, second.logical) == (9, 1, 0, 9)
    assert restore_calls(older) == 10, "the second batch sent no RESTORE"
    assert older.mget([f"k{i}" for i in range(20)]) == [str(i).encode() if i != 15 else None for i in range(20)]


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_one_side_restores_the_other_copies_logically(server_factory):
    auth_server = server_factory("valkey-9.1")
    same_server, older_server = server_factory("valkey-9.1"), server_factory("redis-7.0")
    auth = auth_server.client()
    keys = write_every_type(auth)
    options = SyncOptions(authoritative=spec(auth_server), others=(spec(same_server), spec(older_server)))
    with DirtyKeySync(options, DirtyKeys()) as sync:
        result = sync.recopy([(0, key) for key in keys])
        assert (result.copied, result.failed, result.logical) == (len(keys), 0, len(keys)), result.failures[:3]
        assert sync._copier().logical_sides == {spec(older_server).address}
    for side in (same_server, older_server):
        assert_same(auth, side.client(), keys=set(keys))
    assert restore_calls(same_server.client()) == len(keys)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_stream_consumer_groups_are_not_copied(server_factory, caplog):
    auth_server, older_server = server_factory("redis-8.2"), server_factory("redis-7.0")
    auth, older = auth_server.client(), older_server.client()
    auth.xadd("events", {"a": "1"}, id="1-0")
    auth.xgroup_create("events", "workers", id="0")
    older.xadd("events", {"old": "1"}, id="1-0")
    older.xgroup_create("events", "old-workers", id="0")
    options = SyncOptions(authoritative=spec(auth_server), others=(spec(older_server),))
    with caplog.at_level(logging.WARNING, logger="eve.live.recopy"), DirtyKeySync(options, DirtyKeys()) as sync:
        result = sync.recopy([(0, b"events")])
    assert (result.copied, result.logical) == (1, 1)
    assert older.xrange("events") == auth.xrange("events")
    assert older.xinfo_groups("events") == []   # the entries only; the side's own groups are gone too
    assert "consumer group(s) not copied" in caplog.text


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_module_key_cannot_be_copied_logically(server_factory):
    module_server, older_server = server_factory("redis-8.2", with_module=True), server_factory("redis-7.0")
    client = module_server.client()
    client.execute_command("GRAPH.QUERY", "g", "CREATE (:P {n:1})")
    client.set("plain", "v")
    dirty = DirtyKeys()
    failures: list = []
    options = SyncOptions(authoritative=spec(module_server), others=(spec(older_server),))
    with DirtyKeySync(options, dirty, on_error=failures.extend) as sync:
        dirty.mark_many(0, [b"g", b"plain"])
        assert sync.drain(10)
        stats = sync.stats()
    assert (stats.copied, stats.failed, stats.backlog) == (1, 1, 0), stats
    assert older_server.client().get("plain") == b"v"
    [failure] = failures
    assert (failure.key, failure.type, failure.side) == (b"g", "graphdata", spec(older_server).address)
    assert failure.size > 0 and failure.attempts == 1
    assert "logical copy failed" in failure.reason and "cannot be copied logically" in failure.reason
    assert not older_server.client().exists("g")


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_payload_refused_for_its_type_only_is_not_remembered(server_factory):
    """A side without the module refuses the module key's payload ("Bad data format"), not the
    format: it keeps receiving RESTOREs."""
    module_server, plain_server = server_factory("redis-8.2", with_module=True), server_factory("redis-8.2")
    client = module_server.client()
    client.execute_command("GRAPH.QUERY", "g", "CREATE (:P {n:1})")
    client.set("plain", "v")
    failures: list = []
    options = SyncOptions(authoritative=spec(module_server), others=(spec(plain_server),))
    with DirtyKeySync(options, DirtyKeys(), on_error=failures.extend) as sync:
        result = sync.recopy([(0, b"g"), (0, b"plain")])
        assert sync._copier().logical_sides == set()
    assert (result.copied, result.failed, result.logical) == (1, 1, 0)
    assert "cannot be copied logically" in failures[0].reason
    assert plain_server.client().get("plain") == b"v"
