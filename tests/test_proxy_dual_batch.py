"""Dual writes batched per pipeline run (issue 12, part 4; ``proxy.routing``): the
mirrored writes of one client's read go to every side in one write and are settled
together, while each command still gets its own reply, in order; BOTH_REQUIRED holds
replies until every side answered without holding the next batch back; marks are
recorded once every side answered the whole batch; a NOSCRIPT inside a batch is healed.

A source and a target server (valkey-8.1 starts fastest), an interlay in front of the
source started by ``InterlaySupervisor``; requests go through a raw socket so that a
whole pipeline arrives in one read.
"""

from __future__ import annotations

import hashlib

import pytest
from proxies import drain_dirty, endpoint_for, recv_exactly, wait_for

from eve.core.enums import WriteConsistency
from eve.live.backlog import DirtyKeys
from eve.redis.resp import encode_command
from proxy import messages
from proxy.routing import SOURCE, TARGET, count_noscript, split_frames

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

ENGINE = "valkey-8.1"
SCRIPT = "return redis.call('SET', KEYS[1], ARGV[1])"


@pytest.fixture
def pair(server_factory):
    return server_factory(ENGINE), server_factory(ENGINE)


def routed(supervisor, it, target, policy: WriteConsistency, *, deterministic: bool = False,
           keys: DirtyKeys | None = None) -> None:
    """Dual writes from the interlay's source to ``target`` under ``policy``, in force once this returns."""
    # A first reply: the backend's command table (which tells writes) arrived before it.
    client = it.client()
    client.ping()
    client.close()
    if keys is not None:
        supervisor.track_dirty(it.id, keys)
    supervisor.route(it.id, messages.Route(
        authoritative=SOURCE, sides=((TARGET, endpoint_for(target.host, target.port).write),), mirror_to=(TARGET,),
        policy=policy, read_percent=0, scripts_deterministic=deterministic))
    assert supervisor.dirty_barrier(it.id, timeout=5)


def target_stats(supervisor, it) -> dict:
    for entry in supervisor.stats(it.id)["sides"]:
        if entry["side"] == TARGET:
            return entry
    return {"side": TARGET, "writes": 0, "failures": 0, "last_error": ""}


def pipeline(*commands: tuple) -> bytes:
    return b"".join(encode_command(*command) for command in commands)


def test_split_frames_and_count_noscript() -> None:
    data = b"+OK\r\n-NOSCRIPT No matching script\r\n$11\r\n\r\n-NOSCRIPT\r\n*2\r\n:1\r\n-ERR x\r\n"
    assert split_frames(data) == [b"+OK\r\n", b"-NOSCRIPT No matching script\r\n", b"$11\r\n\r\n-NOSCRIPT\r\n",
                                  b"*2\r\n:1\r\n-ERR x\r\n"]
    assert count_noscript(data) == 1  # the bulk string that only looks like one is not counted
    assert count_noscript(b"+OK\r\n") == 0


@pytest.mark.parametrize("policy", [WriteConsistency.SOURCE_AUTHORITATIVE, WriteConsistency.BOTH_REQUIRED])
def test_a_pipeline_of_writes_and_reads_gets_every_reply_in_order(pair, supervisor, interlay, policy) -> None:
    source, target = pair
    it = interlay(source)
    routed(supervisor, it, target, policy)
    sock = it.raw()
    commands = []
    expected = b""
    for i in range(1, 41):
        commands += [("INCR", "n"), ("GET", "n"), ("RPUSH", "l", i)]
        expected += f":{i}\r\n${len(str(i))}\r\n{i}\r\n:{i}\r\n".encode()
    sock.sendall(pipeline(*commands))
    assert recv_exactly(sock, len(expected)) == expected
    target_client = target.client()
    # Under SOURCE_AUTHORITATIVE the replies may come before the target applied the batch.
    wait_for(lambda: target_client.get("n") == b"40", timeout=5, what="the batch on the target")
    assert target_client.lrange("l", 0, -1) == [str(i).encode() for i in range(1, 41)]
    stats = target_stats(supervisor, it)
    assert stats["failures"] == 0
    wait_for(lambda: target_stats(supervisor, it)["writes"] == 80, timeout=5, what="80 dual writes counted")
    sock.close()


def test_both_required_pipelines_batches_without_waiting_for_the_previous_one(pair, supervisor, interlay) -> None:
    """While the target holds writes, batch after batch is still sent to it: nothing
    waits for the previous batch's replies; the replies come once the target answers."""
    source, target = pair
    it = interlay(source)
    routed(supervisor, it, target, WriteConsistency.BOTH_REQUIRED)
    target_client = target.client()
    sock = it.raw()
    sock.sendall(encode_command("SET", "warm", "1"))
    assert recv_exactly(sock, 5) == b"+OK\r\n"
    target_client.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    try:
        for batch in range(5):
            sock.sendall(pipeline(*[("SET", f"k{batch}:{i}", i) for i in range(3)]))
            # Each batch reaches the target's connection before any reply came back.
            wait_for(lambda b=batch: target_stats(supervisor, it)["writes"] == 1 + 3 * (b + 1), timeout=5,
                     what=f"batch {batch} sent to the paused target")
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(100)  # held until the target answered
    finally:
        target_client.execute_command("CLIENT", "UNPAUSE")
    assert recv_exactly(sock, 15 * 5) == b"+OK\r\n" * 15
    assert target_client.get("k4:2") == b"2"
    sock.close()


def test_both_required_fails_only_the_write_the_target_refused(pair, supervisor, interlay) -> None:
    source, target = pair
    it = interlay(source)
    target.client().rpush("differs", "a list on the target")
    routed(supervisor, it, target, WriteConsistency.BOTH_REQUIRED)
    sock = it.raw()
    sock.sendall(pipeline(("SET", "a", "1"), ("INCR", "differs"), ("GET", "a"), ("SET", "b", "2")))
    replies = []
    sock.settimeout(5)
    data = b""
    while len(replies) < 4:
        data += sock.recv(4096)
        try:
            replies = split_frames(data)
        except Exception:  # noqa: BLE001 - the end of a frame is still on its way
            continue
    assert replies[0] == b"+OK\r\n" and replies[2] == b"$1\r\n1\r\n" and replies[3] == b"+OK\r\n"
    assert replies[1].startswith(b"-ERR interlay: BOTH_REQUIRED write applied on source but failed on target: "
                                 b"WRONGTYPE"), replies[1]
    assert source.client().get("differs") == b"1"
    wait_for(lambda: target_stats(supervisor, it)["failures"] == 1, timeout=5, what="the target's failure counted")
    sock.close()


def test_marks_of_a_batch_wait_for_every_side(pair, supervisor, interlay) -> None:
    source, target = pair
    it = interlay(source)
    keys = DirtyKeys()
    routed(supervisor, it, target, WriteConsistency.SOURCE_AUTHORITATIVE, keys=keys)
    target_client = target.client()
    target_client.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
    sock = it.raw()
    try:
        sock.sendall(pipeline(("SET", "x", "1"), ("HSET", "h", "f", "v"), ("GET", "x"), ("MOVE", "x", "1"),
                              ("COPY", "h", "h2", "DB", "2")))
        # The source's replies, while the target still holds its copy of the batch.
        assert recv_exactly(sock, 5 + 4 + 7 + 4 + 4) == b"+OK\r\n:1\r\n$1\r\n1\r\n:1\r\n:1\r\n"
        assert drain_dirty(supervisor, it, keys, timeout=5) == set()
    finally:
        target_client.execute_command("CLIENT", "UNPAUSE")
    marked: set = set()

    def all_marked() -> bool:
        marked.update(drain_dirty(supervisor, it, keys, timeout=5))
        return bool(marked)

    wait_for(all_marked, timeout=5, what="the batch's marks")
    assert marked == {(0, b"x"), (0, b"h"), (1, b"x"), (2, b"h2")}
    sock.close()


def test_noscript_inside_a_batch_is_healed_on_the_target(pair, supervisor, interlay) -> None:
    source, target = pair
    it = interlay(source)
    routed(supervisor, it, target, WriteConsistency.SOURCE_AUTHORITATIVE, deterministic=True)
    target_client = target.client()
    sock = it.raw()
    sock.sendall(encode_command("SCRIPT", "LOAD", SCRIPT))
    sha = recv_exactly(sock, 47)[5:45]
    wait_for(lambda: target_client.script_exists(sha.decode()) == [True], timeout=5, what="the script on the target")
    target_client.script_flush()
    sock.sendall(pipeline(("SET", "before", "1"), ("EVALSHA", sha, 1, "by-script", "v"), ("SET", "after", "2")))
    assert recv_exactly(sock, 15) == b"+OK\r\n" * 3
    wait_for(lambda: target_client.mget("before", "by-script", "after") == [b"1", b"v", b"2"], timeout=5,
             what="the whole batch on the target")
    assert target_client.script_exists(sha.decode()) == [True]
    stats = wait_for(lambda: (s := target_stats(supervisor, it))["writes"] >= 4 and s, timeout=5, what="stats")
    assert stats["failures"] == 0, stats
    assert supervisor.stats(it.id)["noscript_replies"] == 0
    sock.close()


def test_scripts_seen_before_the_route_are_loaded_on_the_target(pair, supervisor, interlay) -> None:
    """Bodies seen through SCRIPT LOAD, EVAL and EVAL_RO with no route yet (plain
    forwarding) reach the target when a route names it; SCRIPT FLUSH forgets them."""
    source, target = pair
    it = interlay(source)
    client = it.client()
    forgotten = client.script_load("return 'forgotten'")
    client.script_flush()
    loaded = client.script_load("return 'loaded'")
    client.eval("return 'evaluated'", 0)
    client.eval_ro("return 'read only'", 0)
    routed(supervisor, it, target, WriteConsistency.SOURCE_AUTHORITATIVE)
    target_client = target.client()
    shas = [loaded, target_client.script_load("return 'evaluated'"), target_client.script_load("return 'read only'")]
    target_client.script_flush()
    routed(supervisor, it, source, WriteConsistency.SOURCE_AUTHORITATIVE)  # another node: loaded afresh
    routed(supervisor, it, target, WriteConsistency.SOURCE_AUTHORITATIVE)
    wait_for(lambda: target_client.script_exists(*shas) == [True, True, True], timeout=5,
             what="the scripts on the target")
    assert target_client.script_exists(forgotten) == [False]
    client.close()


def test_a_script_run_on_the_source_alone_is_cached_on_the_target(pair, supervisor, interlay) -> None:
    """Scripts not declared deterministic run on the authoritative side alone (their keys
    are re-copied), but their body is loaded on the other side: EVALSHA works after the cutover."""
    source, target = pair
    it = interlay(source)
    routed(supervisor, it, target, WriteConsistency.SOURCE_AUTHORITATIVE)
    client = it.client()
    body = "return redis.call('SET', KEYS[1], 'from-eval')"
    assert client.eval(body, 1, "only-on-source") == b"OK"
    target_client = target.client()
    sha = hashlib.sha1(body.encode()).hexdigest()
    wait_for(lambda: target_client.script_exists(sha) == [True], timeout=5, what="the body on the target")
    assert target_client.get("only-on-source") is None and source.client().get("only-on-source") == b"from-eval"
    client.close()

