"""Live-run routes through an interlay (DESIGN.md sections 5 and 6,
``proxy.routing``): dual writes under the four write consistency policies,
reads shifted to the target by hash slot, pause/flip/resume of the
authoritative side, scripts and NOSCRIPT healing, pinned clients, and dirty
marks recorded only once every side answered.

Every test runs a source and a target server (valkey-8.1 starts fastest) and
an interlay in front of the source, started by ``InterlaySupervisor``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable

import pytest
import redis
from proxies import drain_dirty, endpoint_for, recv_exactly, wait_for

from eve.core.enums import WriteConsistency
from eve.live.backlog import DirtyKeys
from eve.redis.resp import encode_command
from proxy import messages
from proxy.routing import SOURCE, TARGET, reads_from_target

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


ENGINE = "valkey-8.1"
BOTH_REQUIRED_ERROR = "interlay: BOTH_REQUIRED write applied on source but failed on target"


# --------------------------------------------------------------------------- helpers


def live_route(target, *, authoritative: str = SOURCE,
               policy: WriteConsistency = WriteConsistency.SOURCE_AUTHORITATIVE,
               mirror: bool = True, read_percent: int = 0, scripts_deterministic: bool = False) -> messages.Route:
    """The route of a live run from the interlay's source to ``target`` (a test server)."""
    other = TARGET if authoritative == SOURCE else SOURCE
    return messages.Route(authoritative=authoritative,
                          sides=((TARGET, endpoint_for(target.host, target.port).write),),
                          mirror_to=(other,) if mirror else (), policy=policy, read_percent=read_percent,
                          scripts_deterministic=scripts_deterministic)


def set_route(supervisor, it, route: messages.Route) -> None:
    """``route`` returns once sent; a barrier is answered after every earlier control
    message, so once it returns the proxy applies the route to the next request."""
    supervisor.route(it.id, route)
    assert supervisor.dirty_barrier(it.id, timeout=5)


def drain(supervisor, it, keys: DirtyKeys) -> set[tuple[int, bytes]]:
    return drain_dirty(supervisor, it, keys, timeout=5)


def side_stats(supervisor, it, side: str) -> dict:
    for entry in supervisor.stats(it.id)["sides"]:
        if entry["side"] == side:
            return entry
    return {"side": side, "writes": 0, "failures": 0, "last_error": ""}


def wait_side(supervisor, it, side: str, predicate, what: str) -> dict:
    """Stats arrive every ``stats_interval`` (0.2 s in the fixture): poll for them."""
    wait_for(lambda: predicate(side_stats(supervisor, it, side)), timeout=5, what=what)
    return side_stats(supervisor, it, side)


def snapshot(client: redis.Redis, keys: Iterable[str]) -> dict:
    """Each key's type, value and whether it has a TTL: what a dual write must reproduce."""
    readers = {
        b"string": client.get,
        b"hash": client.hgetall,
        b"list": lambda key: client.lrange(key, 0, -1),
        b"set": client.smembers,
        b"zset": lambda key: client.zrange(key, 0, -1, withscores=True),
        b"stream": client.xrange,
        b"none": lambda key: None,
    }
    result = {}
    for key in keys:
        kind = client.type(key)
        result[key] = (kind, readers[kind](key), client.ttl(key) > 0)
    return result


def fence(client: redis.Redis, target_client: redis.Redis, name: str = "fence") -> None:
    """A mirrored write, waited for on the target: every earlier mirrored write of the
    interlay (one multiplexed connection per side, pool 1) was applied before it."""
    token = f"{time.monotonic_ns()}"
    client.set(name, token)
    wait_for(lambda: target_client.get(name) == token.encode(), timeout=5, what="the fence on the target")


def closed_by_peer(sock: socket.socket, timeout: float = 3.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def no_reply(sock: socket.socket, wait: float = 0.5) -> bool:
    sock.settimeout(wait)
    try:
        sock.recv(100)
    except TimeoutError:
        return True
    return False  # a reply, or closed


@pytest.fixture
def pair(server_factory):
    """A source and a target server."""
    return server_factory(ENGINE), server_factory(ENGINE)


# --------------------------------------------------------------------------- dual writes


def test_dual_writes_make_the_target_equal(pair, supervisor, interlay) -> None:
    source, target = pair
    it = interlay(source)
    set_route(supervisor, it, live_route(target))
    client = it.client()
    source_client, target_client = source.client(), target.client()
    source_client.set("gone", "x")
    target_client.set("gone", "x")

    pipe = client.pipeline(transaction=False)
    writes = 0
    for i in range(20):
        pipe.incr("n")
        pipe.hset("h", f"f{i}", i)
        pipe.lpush("l", i)
        pipe.zincrby("z", 1.5, f"m{i % 3}")
        # Explicit stream ids: "*" would be chosen by each server's own clock.
        pipe.xadd("s", {"i": i}, id=f"1-{i + 1}")
        pipe.get("n")  # a read: not mirrored, not counted
        writes += 5
    pipe.expire("h", 1000)
    pipe.delete("gone")
    pipe.execute_command("SETEX", "x", 1000, "ex")
    pipe.sadd("set", "a", "b")
    writes += 4
    replies = pipe.execute()
    assert replies[5] == b"1" and replies[119] == b"20"

    keys = ["n", "h", "l", "z", "s", "gone", "x", "set"]
    expected = snapshot(source_client, keys)
    assert expected["n"][1] == b"20" and expected["gone"][0] == b"none" and expected["x"][2]
    wait_for(lambda: snapshot(target_client, keys) == expected, timeout=5, what="the target to equal the source")
    assert snapshot(target_client, keys) == expected
    stats = wait_side(supervisor, it, TARGET, lambda s: s["writes"] >= writes, "the dual writes in stats")
    assert stats["writes"] == writes
    assert stats["failures"] == 0 and stats["last_error"] == ""
    for c in (client, source_client, target_client):
        c.close()


@pytest.mark.parametrize("policy", [WriteConsistency.SOURCE_AUTHORITATIVE, WriteConsistency.BEST_EFFORT])
def test_failing_target_is_counted_not_answered(pair, supervisor, interlay, policy) -> None:
    source, target = pair
    it = interlay(source)
    set_route(supervisor, it, live_route(target, policy=policy))
    client = it.client()
    target_client = target.client()
    fence(client, target_client)  # the target's connection is up, then goes away
    target_client.close()
    target.stop()

    for i in range(5):
        assert client.set(f"k{i}", i) is True
    assert client.incr("counter") == 1
    assert source.client().mget([f"k{i}" for i in range(5)]) == [str(i).encode() for i in range(5)]
    stats = wait_side(supervisor, it, TARGET, lambda s: s["failures"] > 0, "failures on the target")
    assert stats["writes"] >= 7
    assert f"{target.host}:{target.port}" in stats["last_error"]
    client.close()


@pytest.mark.timeout(40)
def test_both_required_fails_the_write_when_the_target_fails(pair, supervisor, interlay) -> None:
    source, target = pair
    it = interlay(source)
    keys = DirtyKeys()
    supervisor.track_dirty(it.id, keys)
    set_route(supervisor, it, live_route(target, policy=WriteConsistency.BOTH_REQUIRED))
    client = it.client()
    target_client = target.client()

    # Success: the reply comes once both sides applied the write.
    assert client.set("ok", "1") is True
    assert target_client.get("ok") == b"1"
    # ... and waits for the slower side: a target holding writes for 400 ms.
    target_client.execute_command("CLIENT", "PAUSE", 400, "WRITE")
    started = time.monotonic()
    assert client.incr("slow") == 1
    assert time.monotonic() - started >= 0.3
    assert target_client.get("slow") == b"1"
    assert drain(supervisor, it, keys) == {(0, b"ok"), (0, b"slow")}

    target_client.close()
    target.stop()
    for key in ("a", "b"):
        with pytest.raises(redis.ResponseError) as failure:
            client.set(key, "v")
        assert str(failure.value).startswith(BOTH_REQUIRED_ERROR), str(failure.value)
        assert f"{target.host}:{target.port}" in str(failure.value)
    assert source.client().mget("a", "b") == [b"v", b"v"]
    assert drain(supervisor, it, keys) == {(0, b"a"), (0, b"b")}
    stats = wait_side(supervisor, it, TARGET, lambda s: s["failures"] >= 2, "failures on the target")
    assert f"{target.host}:{target.port}" in stats["last_error"]
    # The connection carries on: a read is not a dual write.
    assert client.get("a") == b"v"
    client.close()


def test_both_required_returns_the_authoritative_error_unchanged(pair, supervisor, interlay) -> None:
    source, target = pair
    it = interlay(source)
    set_route(supervisor, it, live_route(target, policy=WriteConsistency.BOTH_REQUIRED))
    client = it.client()
    source_client, target_client = source.client(), target.client()
    source_client.set("word", "abc")
    target_client.set("word", "abc")
    source_client.set("differs", "abc")
    target_client.set("differs", "5")  # the target would accept INCR: the source's error still wins
    expected = "value is not an integer or out of range"
    for key in ("word", "differs"):
        with pytest.raises(redis.ResponseError) as direct:
            source_client.incr(key)
        with pytest.raises(redis.ResponseError) as through:
            client.incr(key)
        assert str(through.value) == str(direct.value) == expected
    wait_for(lambda: target_client.get("differs") == b"6", timeout=5, what="the mirrored INCR")
    with pytest.raises(redis.ResponseError, match="^WRONGTYPE"):
        client.lpush("word", "x")
    assert client.set("word", "fine") is True
    assert target_client.get("word") == b"fine"
    for c in (client, source_client, target_client):
        c.close()


def test_target_authoritative_counts_the_failing_source(pair, supervisor, interlay) -> None:
    source, target = pair
    it = interlay(source)
    set_route(supervisor, it, live_route(target, authoritative=TARGET, policy=WriteConsistency.TARGET_AUTHORITATIVE))
    target_client = target.client()
    target_client.set("n", 41)
    source.stop()

    client = it.client()
    assert client.incr("n") == 42
    assert client.set("t", "v") is True
    assert target_client.mget("n", "t") == [b"42", b"v"]
    assert client.get("t") == b"v"
    stats = wait_side(supervisor, it, SOURCE, lambda s: s["failures"] >= 2, "failures on the source")
    assert stats["writes"] >= 2
    assert f"{source.host}:{source.port}" in stats["last_error"]
    client.close()


# --------------------------------------------------------------------------- reads


def test_reads_shift_to_the_target_by_hash_slot(pair, supervisor, interlay) -> None:
    source, target = pair
    it = interlay(source)
    source_client, target_client = source.client(), target.client()
    keys = [f"read:{i}" for i in range(64)]
    for key in keys:
        source_client.set(key, "source")
        target_client.set(key, "target")
    shifted = {key for key in keys if reads_from_target(key.encode(), 50)}
    assert 0 < len(shifted) < len(keys)
    client = it.client()

    set_route(supervisor, it, live_route(target, read_percent=50))
    for key in keys:
        assert client.get(key) == (b"target" if key in shifted else b"source"), key
    # A hash tag reads where its tag's slot says.
    tagged = [f"{{{key}}}:x" for key in keys]
    for key, tag in zip(keys, tagged):
        source_client.set(tag, "source")
        target_client.set(tag, "target")
        assert client.get(tag) == (b"target" if key in shifted else b"source"), tag

    set_route(supervisor, it, live_route(target, read_percent=0))
    assert {client.get(key) for key in keys} == {b"source"}
    set_route(supervisor, it, live_route(target, read_percent=100, mirror=False))
    assert {client.get(key) for key in keys} == {b"target"}
    # Writes still go to the source alone (no side to mirror to).
    client.set(keys[0], "written")
    assert source_client.get(keys[0]) == b"written" and target_client.get(keys[0]) == b"target"
    for c in (client, source_client, target_client):
        c.close()


# --------------------------------------------------------------------------- pause, flip, resume


def test_flip_moves_writes_to_the_target(pair, supervisor, interlay) -> None:
    source, target = pair
    it = interlay(source)
    set_route(supervisor, it, live_route(target))
    source_client, target_client = source.client(), target.client()
    source_client.set("side", "source")
    target_client.set("side", "target")

    before = it.raw()  # connected before the flip, stays connected across it
    before.sendall(encode_command("SET", "before", "1"))
    assert recv_exactly(before, 5) == b"+OK\r\n"
    selected = it.raw()  # pinned by SELECT 1
    selected.sendall(encode_command("SELECT", "1"))
    assert recv_exactly(selected, 5) == b"+OK\r\n"
    subscriber = it.raw()  # pinned by SUBSCRIBE
    subscriber.sendall(encode_command("SUBSCRIBE", "news"))
    confirmation = b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    assert recv_exactly(subscriber, len(confirmation)) == confirmation
    wait_for(lambda: target_client.get("before") == b"1", timeout=5, what="the mirrored write")

    assert supervisor.pause(it.id, timeout=2.0) is True
    assert closed_by_peer(selected)
    assert closed_by_peer(subscriber)
    set_route(supervisor, it, live_route(target, authoritative=TARGET, policy=WriteConsistency.TARGET_AUTHORITATIVE))
    supervisor.resume(it.id)

    # The reply is the target's: it is authoritative now.
    before.sendall(encode_command("GET", "side"))
    assert recv_exactly(before, 12) == b"$6\r\ntarget\r\n"
    before.sendall(encode_command("SET", "after", "2"))
    assert recv_exactly(before, 5) == b"+OK\r\n"
    assert target_client.get("after") == b"2"  # the authoritative side answered: it has the write
    wait_for(lambda: source_client.get("after") == b"2", timeout=5, what="the write mirrored to the source")
    source_client.set("counter", 5)
    target_client.set("counter", 100)
    before.sendall(encode_command("INCR", "counter"))
    assert recv_exactly(before, 6) == b":101\r\n"
    # A new client starts on the target too.
    fresh = it.client()
    assert fresh.get("side") == b"target"
    # Pinned again after the flip: its state lives on the target.
    in_db1 = it.client(db=1)
    in_db1.set("db1", "x")
    assert target.client(db=1).get("db1") == b"x" and source.client(db=1).get("db1") is None
    stats = wait_side(supervisor, it, SOURCE, lambda s: s["writes"] >= 2, "dual writes to the source")
    assert stats["failures"] == 0
    for sock in (before, selected, subscriber):
        sock.close()
    for c in (fresh, in_db1, source_client, target_client):
        c.close()


def test_pause_holds_requests_until_resume(pair, supervisor, interlay) -> None:
    source, _ = pair
    it = interlay(source)
    connected = it.raw()
    connected.sendall(encode_command("PING"))
    assert recv_exactly(connected, 7) == b"+PONG\r\n"

    assert supervisor.pause(it.id, timeout=1.0) is True
    connected.sendall(encode_command("SET", "held", "1") + encode_command("GET", "held"))
    late = it.raw()  # connects while paused
    late.sendall(encode_command("INCR", "late"))
    assert no_reply(connected) and no_reply(late, 0.1)
    assert source.client().get("held") is None
    assert supervisor.pause(it.id, timeout=1.0) is True  # pausing again while paused: still settled

    supervisor.resume(it.id)
    assert recv_exactly(connected, 12) == b"+OK\r\n$1\r\n1\r\n"
    assert recv_exactly(late, 4) == b":1\r\n"
    connected.sendall(encode_command("PING"))
    assert recv_exactly(connected, 7) == b"+PONG\r\n"
    connected.close()
    late.close()


# --------------------------------------------------------------------------- scripts


SET_SCRIPT = "redis.call('SET', KEYS[1], ARGV[1]); return 1"


def test_scripts_mirrored_only_when_deterministic(pair, supervisor, interlay) -> None:
    source, target = pair
    it = interlay(source)
    keys = DirtyKeys()
    supervisor.track_dirty(it.id, keys)
    set_route(supervisor, it, live_route(target, scripts_deterministic=False))
    client = it.client()
    source_client, target_client = source.client(), target.client()

    assert client.eval(SET_SCRIPT, 1, "by-eval", "x") == 1
    fence(client, target_client)
    assert source_client.get("by-eval") == b"x" and target_client.get("by-eval") is None
    assert (0, b"by-eval") in drain(supervisor, it, keys)  # re-copied instead

    set_route(supervisor, it, live_route(target, scripts_deterministic=True))
    assert client.eval(SET_SCRIPT, 1, "by-eval-2", "y") == 1
    wait_for(lambda: target_client.get("by-eval-2") == b"y", timeout=5, what="the mirrored EVAL")
    library = ("#!lua name=routelib\n"
               "redis.register_function('bump', function(keys, args) return redis.call('INCR', keys[1]) end)")
    assert client.function_load(library) == b"routelib"  # FUNCTION LOAD goes to every side
    wait_for(lambda: target_client.function_list(library="routelib"), timeout=5, what="the library on the target")
    assert client.fcall("bump", 1, "by-fcall") == 1
    wait_for(lambda: target_client.get("by-fcall") == b"1", timeout=5, what="the mirrored FCALL")
    assert side_stats(supervisor, it, TARGET)["failures"] == 0
    # FUNCTION LIST / STATS read the authoritative side only: no dual write.
    sent = wait_side(supervisor, it, TARGET, lambda s: s["writes"] > 0, "the dual writes")["writes"]
    client.function_list()
    client.execute_command("FUNCTION", "STATS")
    fence(client, target_client)
    assert wait_side(supervisor, it, TARGET, lambda s: s["writes"] >= sent + 1, "the fence")["writes"] == sent + 1
    for c in (client, source_client, target_client):
        c.close()


def test_evalsha_noscript_on_the_target_is_healed(pair, supervisor, interlay) -> None:
    source, target = pair
    it = interlay(source)
    set_route(supervisor, it, live_route(target, scripts_deterministic=True))
    client = it.client()
    source_client, target_client = source.client(), target.client()

    sha = client.script_load(SET_SCRIPT)  # SCRIPT LOAD goes to every side
    wait_for(lambda: target_client.script_exists(sha) == [True], timeout=5, what="the script on the target")
    target_client.script_flush()
    assert client.evalsha(sha, 1, "healed", "1") == 1
    wait_for(lambda: target_client.get("healed") == b"1", timeout=5, what="the EVALSHA applied on the target")
    assert target_client.script_exists(sha) == [True]

    # A body seen only through EVAL heals too.
    body = "redis.call('SET', KEYS[1], 'from-eval'); return 2"
    assert client.eval(body, 1, "seen-by-eval") == 2
    target_client.script_flush()
    sha2 = source_client.script_load(body)
    assert client.evalsha(sha2, 1, "healed-2") == 2
    wait_for(lambda: target_client.get("healed-2") == b"from-eval", timeout=5, what="the second healing")
    stats = wait_side(supervisor, it, TARGET, lambda s: s["writes"] >= 3, "dual writes")
    assert stats["failures"] == 0

    # A body the interlay never saw: NOSCRIPT is reported, the source still answers.
    unseen = source_client.script_load("return redis.call('SET', KEYS[1], 'unseen')")
    assert client.evalsha(unseen, 1, "unseen") == b"OK"
    stats = wait_side(supervisor, it, TARGET, lambda s: s["failures"] >= 1, "the NOSCRIPT failure")
    assert stats["failures"] == 1 and stats["last_error"].startswith("NOSCRIPT"), stats
    assert target_client.get("unseen") is None
    for c in (client, source_client, target_client):
        c.close()


# --------------------------------------------------------------------------- pinned clients


def test_writes_outside_mirroring_are_marked_for_recopy(pair, supervisor, interlay) -> None:
    """A RESP3 client shares the multiplexed RESP3 connections: its writes are mirrored.
    Transactions and other dbs run on the source alone; their keys are marked."""
    source, target = pair
    it = interlay(source)
    keys = DirtyKeys()
    supervisor.track_dirty(it.id, keys)
    set_route(supervisor, it, live_route(target))
    source_client, target_client = source.client(), target.client()

    resp3 = it.client(protocol=3)
    assert resp3.hset("h3", mapping={"a": 1}) == 1
    wait_for(lambda: target_client.hgetall("h3") == {b"a": b"1"}, timeout=5, what="the RESP3 write on the target")
    client = it.client()
    for tx_client, prefix in ((client, "tx"), (resp3, "tx3")):
        tx = tx_client.pipeline(transaction=True)
        tx.set(f"{prefix}:a", "1").incr(f"{prefix}:b")
        assert tx.execute() == [True, 1]
    db1 = it.client(db=1)
    db1.set("in-db1", "x")
    fence(client, target_client)
    assert source_client.mget("tx:a", "tx:b", "tx3:a", "tx3:b") == [b"1"] * 4
    assert target_client.mget("tx:a", "tx:b", "tx3:a", "tx3:b") == [None] * 4
    assert source.client(db=1).get("in-db1") == b"x" and target.client(db=1).get("in-db1") is None
    assert drain(supervisor, it, keys) == {(0, b"h3"), (0, b"tx:a"), (0, b"tx:b"), (0, b"tx3:a"), (0, b"tx3:b"),
                                           (1, b"in-db1"), (0, b"fence")}
    # Still mirrored after the transaction: the client is back on the shared connections.
    client.set("after-tx", "1")
    wait_for(lambda: target_client.get("after-tx") == b"1", timeout=5, what="the write after EXEC")
    for c in (client, resp3, db1, source_client, target_client):
        c.close()


def test_pinned_client_plain_write_is_mirrored(pair, supervisor, interlay) -> None:
    source, target = pair
    it = interlay(source)
    set_route(supervisor, it, live_route(target))
    target_client = target.client()
    named = it.client(client_name="app-1")
    assert named.client_getname() in ("app-1", b"app-1")  # CLIENT state: pinned for good
    assert named.set("named", "v") is True
    fence(it.client(), target_client)
    assert target_client.get("named") == b"v"


def test_blocking_command_is_not_mirrored(pair, supervisor, interlay) -> None:
    source, target = pair
    it = interlay(source)
    set_route(supervisor, it, live_route(target))
    target_client = target.client()
    client = it.client()
    client.rpush("queue", "job")  # mirrored
    assert client.blmove("queue", "taken", 1, "LEFT", "RIGHT") == b"job"  # pinned while it blocks
    fence(client, target_client)
    assert target_client.lrange("queue", 0, -1) == [b"job"] and not target_client.exists("taken")


@pytest.mark.parametrize("protocol", [2, 3])
def test_shifted_read_sees_the_clients_own_write(pair, supervisor, interlay, protocol) -> None:
    source, target = pair
    it = interlay(source)
    key = next(f"own:{i}" for i in range(100) if reads_from_target(f"own:{i}".encode(), 50))
    set_route(supervisor, it, live_route(target, read_percent=50))
    target_client = target.client()
    client = it.client(protocol=protocol)
    client.set(key, "old")
    wait_for(lambda: target_client.get(key) == b"old", timeout=5, what="the first write on the target")
    # The target holds writes for a second: the source answers the write first.
    target_client.execute_command("CLIENT", "PAUSE", 1000, "WRITE")
    assert client.set(key, "new") is True
    assert client.get(key) == b"new"


def test_maint_notifications_answered_by_the_interlay(pair, supervisor, interlay) -> None:
    source, _ = pair
    it = interlay(source)
    sock = it.raw()
    sock.sendall(encode_command("CLIENT", "MAINT_NOTIFICATIONS", "on") + encode_command("PING"))
    data = b""
    sock.settimeout(5)
    while not data.endswith(b"+PONG\r\n"):
        chunk = sock.recv(1000)
        assert chunk, data
        data += chunk
    assert data.startswith(b"-ERR interlay: CLIENT MAINT_NOTIFICATIONS")
    sock.close()


def test_malformed_route_is_refused_and_the_interlay_keeps_serving(pair, supervisor, interlay) -> None:
    source, target = pair
    it = interlay(source)
    spec = endpoint_for(target.host, target.port).write
    for route in (messages.Route("nowhere", (("target", spec),), (), WriteConsistency.SOURCE_AUTHORITATIVE, 0),
                  messages.Route(SOURCE, (("target", spec),), ("target",), "SOMETIMES", 0),
                  messages.Route(SOURCE, (("target", spec),), ("mirror:x",), WriteConsistency.SOURCE_AUTHORITATIVE, 0),
                  messages.Route(SOURCE, (("target", spec),), (), WriteConsistency.SOURCE_AUTHORITATIVE, 101)):
        set_route(supervisor, it, route)
    assert supervisor.running(it.id)
    client = it.client()
    assert client.set("still", "served") is True
    assert source.client().get("still") == b"served" and target.client().get("still") is None
    client.close()


# --------------------------------------------------------------------------- dirty marks


def test_dual_write_marks_after_every_side_answered(pair, supervisor, interlay) -> None:
    source, target = pair
    it = interlay(source)
    keys = DirtyKeys()
    supervisor.track_dirty(it.id, keys)
    set_route(supervisor, it, live_route(target))
    client = it.client()
    target_client = target.client()
    fence(client, target_client)
    drain(supervisor, it, keys)

    # The target holds writes: the source answered, the mirrored write did not.
    target_client.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
    try:
        started = time.monotonic()
        assert client.set("held", "1") is True
        assert client.incr("held-n") == 1
        assert time.monotonic() - started < 2.0  # the source's reply, not the target's
        assert drain(supervisor, it, keys) == set()
        # A pause cannot settle while a dual write is unanswered.
        assert supervisor.pause(it.id, timeout=0.3) is False
        supervisor.resume(it.id)
    finally:
        target_client.execute_command("CLIENT", "UNPAUSE")
    marked: set[tuple[int, bytes]] = set()

    def both_marked() -> bool:
        marked.update(drain(supervisor, it, keys))
        return marked >= {(0, b"held"), (0, b"held-n")}

    wait_for(both_marked, timeout=5, what="the marks once the target answered")
    assert target_client.mget("held", "held-n") == [b"1", b"1"]
    assert marked == {(0, b"held"), (0, b"held-n")}
    client.close()


def test_a_dual_write_abandoned_with_its_client_does_not_hold_a_pause(pair, supervisor, interlay) -> None:
    """A pinned client leaves while its dual write waits: the write counts as failed (its
    keys re-copied) and a cutover's pause still settles, instead of waiting for ever."""
    source, target = pair
    it = interlay(source)
    keys = DirtyKeys()
    supervisor.track_dirty(it.id, keys)
    set_route(supervisor, it, live_route(target))
    for server in (source, target):
        server.client().execute_command("CLIENT", "PAUSE", 800, "WRITE")
    sock = it.raw()
    sock.sendall(encode_command("CLIENT", "SETNAME", "leaving") + encode_command("SET", "abandoned", "v"))
    assert recv_exactly(sock, 5) == b"+OK\r\n"  # SETNAME: the client is pinned from here on
    time.sleep(0.1)  # the SET reaches both (paused) sides
    sock.close()
    assert supervisor.pause(it.id, timeout=3.0), "the abandoned dual write held the pause"
    supervisor.resume(it.id)
    # Its outcome is unknown (the paused source may drop a command of a closed connection):
    # marked dirty, the re-copy makes the sides agree either way.
    assert (0, b"abandoned") in drain(supervisor, it, keys)
