"""Logical copy (eve.redis.logical) and DirtyKeySync's fallback to it when a side refuses the
authoritative side's DUMP payloads: the build and parse functions on fake replies, then
real servers (Valkey 9.1 and Redis 8.2 payloads are refused by Redis 7.0 and Valkey 8.1)."""

from __future__ import annotations

import time

import hiredis
import pytest
import redis
from keyspace import (
    assert_same,
    field_ttls_of,
    fill,
    fill_field_ttls,
    fill_stream_with_groups,
    groups_of,
    value_of,
)

from eve.core.endpoints import ConnectionSpec
from eve.core.enums import ConflictPolicy
from eve.live.backlog import DirtyKeys
from eve.live.recopy import DirtyKeySync, SyncOptions
from eve.redis.logical import (
    CONFLICT,
    MERGE_SCRIPT,
    READ_SCRIPT,
    WRITTEN,
    LogicalCopyError,
    LogicalValue,
    PendingEntry,
    StreamEntry,
    StreamGroup,
    StreamState,
    UnsupportedTypeError,
    check_policy_write,
    check_write,
    pack_policy_write,
    pack_read,
    pack_write,
    parse_read,
)
from eve.redis.wire import FastConnection, ReplyError, pack
from restorer.policies import merge_tmp_key

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


# What READ_SCRIPT returns for a stream: entries, then [state, groups] from XINFO STREAM FULL.
GROUPS_REPLY = [
    [b"name", b"g", b"last-delivered-id", b"2-0", b"entries-read", 2, b"lag", None, b"pel-count", 3,
     b"pending", [[b"1-1", b"alice", 1_700_000_000_000, 1], [b"2-0", b"alice", 1_700_000_000_000, 1],
                  [b"0-5", b"bob", 1_700_000_000_500, 4]],
     b"consumers", [[b"name", b"alice", b"seen-time", 1, b"pel-count", 2, b"pending", []],
                    [b"name", b"bob", b"seen-time", 1, b"pel-count", 1, b"pending", []],
                    [b"name", b"idle", b"seen-time", 1, b"pel-count", 0, b"pending", []]]],
    [b"name", b"h", b"last-delivered-id", b"0-0", b"entries-read", None, b"lag", None, b"pel-count", 0,
     b"pending", [], b"consumers", []],
]
GROUPS = (StreamGroup(b"g", b"2-0", 2, (b"alice", b"bob", b"idle"),
                      (PendingEntry(b"1-1", b"alice", 1_700_000_000_000, 1),
                       PendingEntry(b"2-0", b"alice", 1_700_000_000_000, 1),
                       PendingEntry(b"0-5", b"bob", 1_700_000_000_500, 4))),
          StreamGroup(b"h", b"0-0", None))
STREAM_REPLY = [b"stream", 5000,
                [[b"1-1", [b"a", b"1", b"b", b"\xff"]], [b"2-0", [b"a", b"2"]]],
                [[b"last-generated-id", b"3-0", b"max-deleted-entry-id", b"3-0", b"entries-added", 3],
                 GROUPS_REPLY]]


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
                                StreamState(b"3-0", 3, b"3-0", groups=GROUPS))),
    ([b"stream", -1, [], [[b"last-generated-id", b"0-0"], []]],
     LogicalValue("stream", -1, (), StreamState(b"0-0"))),
    ([b"hash", 10, [b"f", b"v", b"g", b""], [b"g", 1_800_000_000_000]],
     LogicalValue("hash", 10, ((b"f", b"v"), (b"g", b"")), field_ttls=((b"g", 1_800_000_000_000),))),
    ([b"hash", -1, [b"f", b"v"], []], LogicalValue("hash", -1, ((b"f", b"v"),))),
    ([b"none", -2], None),
], ids=["string", "hash", "list", "set", "zset", "stream", "empty-stream", "field-ttls", "no-field-ttls",
        "gone"])
def test_parse_read(reply, expected):
    value = parse_read(reply)
    assert value == expected
    if value is not None:
        assert value.expiry(1_000) == (0 if value.pttl < 0 else 1_000 + value.pttl)


def test_notes_say_what_is_left_behind():
    # bob's pending entry 0-5 was deleted from the stream: XCLAIM cannot bring it back.
    assert parse_read(STREAM_REPLY).notes == ("1 pending entries of deleted stream entries not copied",)
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
    ([b"stream", -1, [[b"1-1"]], [[b"last-generated-id", b"1-1"], []]], "stream entry must be"),
    ([b"stream", -1, [], [[b"entries-added", 0], []]], "no last-generated-id"),
    ([b"stream", -1, []], "state must be \\[state, groups\\]"),
    ([b"stream", -1, [], [[b"last-generated-id", b"1-1"], [[b"name", b"g"]]]], "without a name or last-deliv"),
    ([b"stream", -1, [], [[b"last-generated-id", b"1-1"], [[b"name", b"g", b"last-delivered-id", b"0-0",
                                                             b"pending", [[b"1-1"]]]]]], "of the wrong shape"),
    ([b"hash", -1, [b"f", b"v"], [b"f"]], "in pairs"),
], ids=["refused", "not-array", "short", "pttl-bytes", "no-value", "string-array", "odd-hash", "int-member",
        "bad-score", "bad-entry", "no-last-id", "no-state", "group-no-id", "bad-pending", "odd-field-ttls"])
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
    with pytest.raises(UnsupportedTypeError, match="of module 'bf'"):
        pack_write(b"k", LogicalValue("MBbloom--", -1, b""))
    # JSON documents have one (issue 23): JSON.GET's text, written back with JSON.SET key $.
    document = parse_read([b"ReJSON-RL", 5000, b'{"a":[1,2]}'])
    assert document == LogicalValue("ReJSON-RL", 5000, b'{"a":[1,2]}') and document.elements == 1
    assert pack_write(b"k", document, 123)[2] == pack("JSON.SET", b"k", "$", b'{"a":[1,2]}')


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
                  StreamState(b"5-0", 4, b"5-0", groups=GROUPS)),
     [[b"XADD", b"k", b"1-1", b"a", b"1", b"b", b"2"],
      [b"XSETID", b"k", b"5-0", b"ENTRIESADDED", b"4", b"MAXDELETEDID", b"5-0"],
      [b"XGROUP", b"CREATE", b"k", b"g", b"2-0", b"ENTRIESREAD", b"2"],
      *[[b"XGROUP", b"CREATECONSUMER", b"k", b"g", name] for name in (b"alice", b"bob", b"idle")],
      [b"XCLAIM", b"k", b"g", b"alice", b"0", b"1-1", b"2-0", b"TIME", b"1700000000000", b"RETRYCOUNT", b"1",
       b"FORCE", b"JUSTID"],
      [b"XCLAIM", b"k", b"g", b"bob", b"0", b"0-5", b"TIME", b"1700000000500", b"RETRYCOUNT", b"4", b"FORCE",
       b"JUSTID"],
      [b"XGROUP", b"CREATE", b"k", b"h", b"0-0"]]),
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


def test_pack_write_field_ttls_after_the_fields_absolute_and_grouped():
    value = LogicalValue("hash", -1, ((b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"d", b"4")),
                         field_ttls=((b"a", 5_000), (b"b", 9_000), (b"d", 9_000)))
    assert commands(pack_write(b"k", value, now_ms=1_000))[2:-1] == [
        [b"HSET", b"k", b"a", b"1", b"b", b"2", b"c", b"3", b"d", b"4"],
        [b"HPEXPIREAT", b"k", b"5000", b"FIELDS", b"1", b"a"],
        [b"HPEXPIREAT", b"k", b"9000", b"FIELDS", b"2", b"b", b"d"]]
    # A field whose TTL has passed is left out; a hash left empty is only deleted.
    assert commands(pack_write(b"k", value, now_ms=5_000))[2:-1] == [
        [b"HSET", b"k", b"b", b"2", b"c", b"3", b"d", b"4"], [b"HPEXPIREAT", b"k", b"9000", b"FIELDS", b"2", b"b", b"d"]]
    gone = LogicalValue("hash", -1, ((b"a", b"1"),), field_ttls=((b"a", 5_000),))
    assert commands(pack_write(b"k", gone, 7_000, now_ms=6_000)) == [[b"MULTI"], [b"DEL", b"k"], [b"EXEC"]]


@pytest.mark.parametrize("policy, tail", [
    (ConflictPolicy.REPLACE, [[b"PEXPIREAT", b"tmp", b"9000"], [b"RENAME", b"tmp", b"k"]]),
    (ConflictPolicy.NONE, [[b"PEXPIREAT", b"tmp", b"9000"], [b"RENAMENX", b"tmp", b"k"], [b"DUMP", b"k"],
                           [b"DUMP", b"tmp"], [b"PTTL", b"k"], [b"DEL", b"tmp"]]),
    (ConflictPolicy.MERGE, [[b"EVAL", MERGE_SCRIPT.encode(), b"2", b"k", b"tmp", b"9000"], [b"DEL", b"tmp"]]),
], ids=str)
def test_pack_policy_write_goes_through_the_temporary_key(policy, tail):
    value = LogicalValue("set", -1, (b"a",))
    assert commands(pack_policy_write(policy, b"k", value, 9_000, b"tmp")) == [
        [b"MULTI"], [b"DEL", b"tmp"], [b"SADD", b"tmp", b"a"], *tail, [b"EXEC"]]


def test_pack_policy_write_merge_of_a_type_without_merge_semantics_is_renamenx():
    value = LogicalValue("string", -1, b"v")
    assert commands(pack_policy_write(ConflictPolicy.MERGE, b"k", value, 0, b"tmp"))[3] == [b"RENAMENX", b"tmp", b"k"]
    exec_reply = [0, 1, 0, b"target", b"source", -1, 1]
    assert check_policy_write(ConflictPolicy.MERGE, value, [b"OK"] + [QUEUED] * 7 + [exec_reply]) == (
        CONFLICT, "no merge semantics for string")


@pytest.mark.parametrize("policy, exec_reply, outcome", [
    (ConflictPolicy.REPLACE, [0, 1, b"OK"], (WRITTEN, None)),
    (ConflictPolicy.NONE, [0, 1, 1, None, b"p", -2, 0], (WRITTEN, None)),
    (ConflictPolicy.NONE, [0, 1, 0, b"other", b"p", -1, 1], (CONFLICT, "BUSYKEY")),
    (ConflictPolicy.NONE, [0, 1, 0, b"p", b"p", -1, 1], (WRITTEN, None)),   # the job's own write
    (ConflictPolicy.MERGE, [0, 1, [1, b"merged"], 0], (WRITTEN, None)),
    (ConflictPolicy.MERGE, [0, 1, [0, b"type differs (target string, source set)"], 0],
     (CONFLICT, "type differs (target string, source set)")),
], ids=["replace", "none-new", "none-busy", "none-own", "merge", "merge-type"])
def test_check_policy_write(policy, exec_reply, outcome):
    value = LogicalValue("set", -1, (b"a",))
    replies = [b"OK"] + [QUEUED] * len(exec_reply) + [exec_reply]
    assert check_policy_write(policy, value, replies) == outcome


def test_a_refused_hpexpireat_says_the_target_cannot_hold_field_ttls():
    refused = ReplyError("ERR unknown command 'HPEXPIREAT', with args beginning with: 'k' '9000' ")
    with pytest.raises(LogicalCopyError, match="cannot hold per-field hash TTLs") as raised:
        check_write([b"OK", QUEUED, QUEUED, refused, ReplyError("EXECABORT Transaction discarded")])
    assert raised.value.reply == str(refused)


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


def copy_logically(source_server, target_server, keys, *, policy=None, worker="t"):
    """pack_read on the source, pack_write (or pack_policy_write) on the target, by hand."""
    outcomes = []
    with FastConnection(spec(source_server)) as source, FastConnection(spec(target_server)) as target:
        for key in keys:
            value = parse_read(source.pipeline(pack_read(key), 1)[0])
            expiry = value.expiry(time.time_ns() // 1_000_000)
            if policy is None:
                writes = pack_write(key, value, expiry)
                check_write(target.pipeline(b"".join(writes), len(writes)))
            else:
                writes = pack_policy_write(policy, key, value, expiry, merge_tmp_key(key, worker))
                outcomes.append(check_policy_write(policy, value, target.pipeline(b"".join(writes), len(writes)),
                                                   expiry))
    return outcomes


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("pair", [("redis-7.0", "valkey-9.1"), ("valkey-9.1", "redis-7.0"),
                                  ("redis-8.2", "valkey-8.1"), ("valkey-8.1", "redis-8.2")], ids="->".join)
def test_stream_consumer_groups_are_copied(server_factory, pair):
    """Groups, their last delivered ids and entries-read, consumers, pending entries with owner,
    delivery time and count; the stream's own state too."""
    source_server, target_server = server_factory(pair[0]), server_factory(pair[1])
    source, target = source_server.client(), target_server.client()
    fill_stream_with_groups(source, "events")
    target.xadd("events", {"old": "1"}, id="1-0")
    target.xgroup_create("events", "old-workers", id="0")   # replaced with the key
    copy_logically(source_server, target_server, [b"events"])
    assert target.xrange("events") == source.xrange("events")
    assert stream_state(target, "events") == stream_state(source, "events")
    assert groups_of(target, "events") == groups_of(source, "events")
    [workers] = [group for group in groups_of(target, "events") if group[0] == b"workers"]
    assert workers[3] == [b"alice", b"bob", b"carol"]
    pending = {entry[0]: entry for entry in workers[4]}
    assert b"2-1" not in pending and len(pending) == 10 - 1    # 10 delivered, 1 acknowledged
    assert pending[b"3-1"][1] == b"bob" and pending[b"3-1"][3] == 3   # claimed twice: 3 deliveries
    # The copy behaves as the original: the next read of the group continues where it was.
    assert target.xreadgroup("workers", "dave", {"events": ">"}, count=1) == \
        source.xreadgroup("workers", "dave", {"events": ">"}, count=1)
    # A pending entry whose stream entry is deleted cannot be claimed back: the value says so.
    source.xdel("events", "4-1")
    with FastConnection(spec(source_server)) as conn:
        assert parse_read(conn.execute("EVAL", READ_SCRIPT, 1, "events")).notes == (
            "1 pending entries of deleted stream entries not copied",)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_reverse_sync_keeps_consumer_groups_and_field_ttls(server_factory):
    """The re-copy loop's logical fallback is the same copy: groups and field TTLs arrive."""
    auth_server, older_server = server_factory("redis-8.2"), server_factory("valkey-8.1")
    other_server = server_factory("valkey-9.1")
    auth = auth_server.client()
    fill_stream_with_groups(auth, "events")
    fill_field_ttls(auth, "h")
    options = SyncOptions(authoritative=spec(auth_server), others=(spec(older_server), spec(other_server)))
    with DirtyKeySync(options, DirtyKeys()) as sync:
        result = sync.recopy([(0, b"events"), (0, b"h")])
    assert (result.copied, result.failed) == (1, 1), result.failures
    [failure] = result.failures   # Valkey 8.1 cannot hold field TTLs: an error key with that reason
    assert (failure.key, failure.side) == (b"h", spec(older_server).address)
    assert "cannot hold per-field hash TTLs" in failure.reason
    for side in (older_server.client(), other_server.client()):
        assert groups_of(side, "events") == groups_of(auth, "events")
    assert field_ttls_of(other_server.client(), "h") == field_ttls_of(auth, "h")
    assert not older_server.client().exists("h")


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("pair", [("redis-8.2", "valkey-9.1"), ("valkey-9.1", "redis-8.2"),
                                  ("redis-8.2", "redis-8.2")], ids="->".join)
def test_field_ttls_are_kept(server_factory, pair):
    source_server, target_server = server_factory(pair[0]), server_factory(pair[1])
    source, target = source_server.client(), target_server.client()
    fill_field_ttls(source, "h")
    source.pexpire("h", 7_200_000)
    source.hset("short", mapping={"gone": "1", "stays": "2"})
    source.execute_command("HPEXPIRE", "short", 300, "FIELDS", 1, "gone")
    with FastConnection(spec(source_server)) as conn:
        short = parse_read(conn.execute("EVAL", READ_SCRIPT, 1, "short"))
    copy_logically(source_server, target_server, [b"h"])
    assert target.hgetall("h") == source.hgetall("h")
    ttls = field_ttls_of(target, "h")
    assert ttls == field_ttls_of(source, "h") and sum(ms > 0 for ms in ttls.values()) == 25
    assert abs(target.pttl("h") - source.pttl("h")) <= 1000
    # A field whose TTL passed between the read and the write is simply not copied.
    writes = pack_write(b"short", short, now_ms=short.field_ttls[0][1])
    with FastConnection(spec(target_server)) as conn:
        check_write(conn.pipeline(b"".join(writes), len(writes)))
    assert target.hgetall("short") == {b"stays": b"2"}


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("older", ["redis-7.0", "valkey-8.1"])
def test_field_ttls_the_target_cannot_hold_are_an_error_not_a_loss(server_factory, older):
    source_server, target_server = server_factory("redis-8.2"), server_factory(older)
    source, target = source_server.client(), target_server.client()
    fill_field_ttls(source, "h")
    source.hset("plain", "f", "v")
    with pytest.raises(LogicalCopyError, match="cannot hold per-field hash TTLs") as raised:
        copy_logically(source_server, target_server, [b"h"])
    assert "HPEXPIREAT" in raised.value.reply
    assert not target.exists("h"), "nothing written: the transaction was discarded"
    copy_logically(source_server, target_server, [b"plain"])   # a hash without field TTLs is fine
    assert target.hgetall("plain") == {b"f": b"v"}


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_logical_writes_under_each_conflict_policy(server_factory):
    source_server, target_server = server_factory("valkey-9.1"), server_factory("redis-7.0")
    source, target = source_server.client(), target_server.client()
    source.hset("h", mapping={"a": "src", "b": "src"})
    source.zadd("z", {"m": 2, "n": 3})
    source.set("s", "src")
    source.rpush("new", "x")
    source.pexpire("new", 3_600_000)
    target.hset("h", mapping={"a": "old", "c": "old"})
    target.zadd("z", {"m": 1, "o": 1})
    target.set("s", "old")
    target.pexpire("h", 5_000_000)
    keys = [b"h", b"z", b"s", b"new"]
    original = {key: value_of(target, key) for key in keys}

    assert copy_logically(source_server, target_server, keys, policy=ConflictPolicy.NONE) == [
        (CONFLICT, "BUSYKEY")] * 3 + [(WRITTEN, None)]
    assert {key: value_of(target, key) for key in keys[:3]} == {key: original[key] for key in keys[:3]}
    assert value_of(target, b"new") == value_of(source, b"new") and target.pttl("new") > 3_500_000
    # Sent again (a lost reply, a restarted job): the job's own write, not a conflict.
    assert copy_logically(source_server, target_server, [b"new"], policy=ConflictPolicy.NONE) == [(WRITTEN, None)]

    assert copy_logically(source_server, target_server, keys, policy=ConflictPolicy.MERGE) == [
        (WRITTEN, None), (WRITTEN, None), (CONFLICT, "no merge semantics for string"), (WRITTEN, None)]
    assert target.hgetall("h") == {b"a": b"src", b"b": b"src", b"c": b"old"}
    assert target.pttl("h") > 4_000_000, "a merge keeps the target's TTL"
    assert target.zrange("z", 0, -1, withscores=True) == [(b"o", 1.0), (b"m", 2.0), (b"n", 3.0)]

    assert copy_logically(source_server, target_server, keys, policy=ConflictPolicy.REPLACE) == [
        (WRITTEN, None)] * 4
    assert_same(source, target, keys=set(keys))
    assert not list(target.scan_iter(match="*eve-merge*")), "no temporary key left"


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
