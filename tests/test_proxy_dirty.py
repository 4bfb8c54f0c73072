"""Dirty-key tracking in the interlay (DESIGN.md section 6, step 1): every write
forwarded while tracking is on marks its keys, after the backend replied."""

from __future__ import annotations

import socket

import pytest
import redis
from proxies import LOOPBACK, drain_dirty, recv_exactly

from eve.live.backlog import ALL_DBS, DirtyKeys
from eve.redis.resp import encode_command
from proxy import dirty
from proxy.commands import CommandTable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def drain(supervisor, it, keys: DirtyKeys) -> set[tuple[int, bytes]]:
    return drain_dirty(supervisor, it, keys)


def test_writes_mark_their_keys(server_factory, supervisor, interlay) -> None:
    server = server_factory("valkey-9.1")
    it = interlay(server, pool=2)
    keys = DirtyKeys()
    client = it.client()
    client.set("before", "1")  # tracking is off: not marked
    supervisor.track_dirty(it.id, keys)

    client.set("s", "1")
    client.hset("h", "f", "v")
    client.lpush("l", "a")
    client.incr("n")
    client.expire("s", 100)
    client.delete("gone")
    client.mset({"m1": "1", "m2": "2"})
    assert drain(supervisor, it, keys) == {(0, k) for k in (b"s", b"h", b"l", b"n", b"gone", b"m1", b"m2")}

    # Reads mark nothing.
    assert client.get("s") == b"1"
    client.hgetall("h")
    client.exists("l", "n")
    assert drain(supervisor, it, keys) == set()

    # A transaction: every queued write, once EXEC replied.
    tx = client.pipeline(transaction=True)
    tx.set("t1", "1").incr("t2").get("t1").sadd("t3", "x")
    assert tx.execute() == [True, 1, b"1", 1]
    assert drain(supervisor, it, keys) == {(0, b"t1"), (0, b"t2"), (0, b"t3")}
    # DISCARD marks nothing.
    sock = it.raw()
    sock.sendall(b"".join(encode_command(*c) for c in (("MULTI",), ("SET", "d1", "x"), ("DISCARD",))))
    assert recv_exactly(sock, len(b"+OK\r\n+QUEUED\r\n+OK\r\n")) == b"+OK\r\n+QUEUED\r\n+OK\r\n"
    sock.close()
    assert drain(supervisor, it, keys) == set()

    # Scripts: their declared keys.
    assert client.eval("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])",
                       2, "e1", "e2", "x") == 1
    sha = client.script_load("return redis.call('SET', KEYS[1], 'y')")
    client.evalsha(sha, 1, "e3")
    assert drain(supervisor, it, keys) == {(0, b"e1"), (0, b"e2"), (0, b"e3")}

    # COPY src dst [DB n]: the destination only, in its db; MOVE: both dbs.
    client.copy("s", "c1")
    client.copy("s", "c2", destination_db=4)
    client.move("h", 5)
    assert drain(supervisor, it, keys) == {(0, b"c1"), (4, b"c2"), (0, b"h"), (5, b"h")}

    # SELECT 2 then writes (pipelined with the SELECT), on a pinned connection.
    sock = it.raw()
    sock.sendall(encode_command("SELECT", "2") + encode_command("SET", "in2", "x")
                 + encode_command("LPUSH", "l2", "y") + encode_command("SELECT", "0")
                 + encode_command("SET", "in0", "z"))
    assert recv_exactly(sock, len(b"+OK\r\n+OK\r\n:1\r\n+OK\r\n+OK\r\n")) == b"+OK\r\n+OK\r\n:1\r\n+OK\r\n+OK\r\n"
    sock.close()
    db2 = it.client(db=2)
    db2.set("x2", "1")
    assert drain(supervisor, it, keys) == {(2, b"in2"), (2, b"l2"), (0, b"in0"), (2, b"x2")}
    assert server.client(db=2).get("in2") == b"x"

    # FLUSHDB, SWAPDB, FLUSHALL: whole dbs.
    assert not keys.overflowed
    db2.flushdb()
    assert drain(supervisor, it, keys) == set()
    assert keys.resync_dbs() == frozenset({2})
    client.swapdb(6, 7)
    assert supervisor.dirty_barrier(it.id, timeout=10)
    assert keys.resync_dbs() == frozenset({2, 6, 7})
    client.flushall()
    assert supervisor.dirty_barrier(it.id, timeout=10)
    assert keys.resync_dbs() is ALL_DBS

    # Off: nothing more is marked.
    keys.reset_overflow()
    supervisor.track_dirty(it.id, None)
    client.set("off", "1")
    client.flushdb()
    assert drain(supervisor, it, keys) == set()
    assert not keys.overflowed
    client.close()
    db2.close()


def test_failed_and_blocking_writes(server_factory, supervisor, interlay) -> None:
    server = server_factory("redis-7.0")
    it = interlay(server)
    keys = DirtyKeys()
    supervisor.track_dirty(it.id, keys)
    client = it.client()
    client.rpush("src", "a")
    assert client.blmove("src", "dst", 1, "LEFT", "RIGHT") == b"a"
    with pytest.raises(redis.ResponseError):
        client.execute_command("INCR", "src-is-gone", "extra")  # wrong arity: still harmless to mark
    client.sort("dst", store="sorted", alpha=True)
    assert drain(supervisor, it, keys) >= {(0, b"src"), (0, b"dst"), (0, b"sorted")}
    # A pipeline of many writes is batched.
    pipe = client.pipeline(transaction=False)
    for i in range(3000):
        pipe.set(f"p:{i}", i)
    pipe.execute()
    assert drain(supervisor, it, keys) == {(0, f"p:{i}".encode()) for i in range(3000)}
    client.close()


def test_marks_without_a_server() -> None:
    """The special cases, from a command table of the three commands they touch."""
    table = CommandTable.from_reply([])
    assert dirty.marks(table, [b"FLUSHDB"], 3) == [(3, None)]
    assert dirty.marks(table, [b"flushall", b"ASYNC"], 3) == [(None, None)]
    assert dirty.marks(table, [b"SWAPDB", b"1", b"2"], 0) == [(1, None), (2, None)]
    assert dirty.marks(table, [b"MOVE", b"k", b"9"], 1) == [(1, b"k"), (9, b"k")]
    assert dirty.marks(table, [b"COPY", b"a", b"b", b"DB", b"4", b"REPLACE"], 1) == [(4, b"b")]
    assert dirty.marks(table, [b"COPY", b"a", b"b"], 1) == [(1, b"b")]
    assert dirty.marks(table, [b"SORT", b"a", b"STORE", b"b"], 0) == [(0, b"b")]
    assert dirty.marks(table, [b"SORT", b"a"], 0) == []
    assert dirty.marks(table, [b"MIGRATE", b"h", b"1", b"", b"0", b"5", b"KEYS", b"x", b"y"], 2) == \
        [(2, b"x"), (2, b"y")]
    assert dirty.marks(None, [b"SET", b"a", b"b"], 0) == []
    assert dirty.may_write(None, b"EVAL") and not dirty.may_write(None, b"GET")


def test_tracking_needs_a_running_interlay(supervisor) -> None:
    from eve.core.errors import NotFoundError
    with pytest.raises(NotFoundError):
        supervisor.track_dirty("nope", DirtyKeys())
    assert supervisor.dirty_barrier("nope", timeout=0.1) is False


def test_raw_socket_pipeline_of_mixed_commands(server_factory, supervisor, interlay) -> None:
    server = server_factory("valkey-9.1")
    it = interlay(server)
    keys = DirtyKeys()
    supervisor.track_dirty(it.id, keys)
    commands = [
        ("SET", "a", "1"), ("MULTI",), ("SET", "b", "2"), ("INCR", "a"), ("EXEC",), ("GET", "a"),
        ("BLPOP", "none", "0.01"), ("SELECT", "3"), ("SET", "a", "db3"), ("SELECT", "0"), ("ECHO", "end"),
    ]
    expected = (b"+OK\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:2\r\n$1\r\n2\r\n*-1\r\n+OK\r\n+OK\r\n"
                b"+OK\r\n$3\r\nend\r\n")
    sock = socket.create_connection((LOOPBACK, it.port), timeout=10)
    sock.sendall(b"".join(encode_command(*command) for command in commands))
    assert recv_exactly(sock, len(expected)) == expected
    sock.close()
    assert drain(supervisor, it, keys) == {(0, b"a"), (0, b"b"), (0, b"none"), (3, b"a")}
