"""Live convergence (DESIGN.md 6): dirty keys re-copied from the authoritative side while
clients keep writing, against real servers (one fake only: the in-flight re-mark rule)."""

from __future__ import annotations

import random
import threading
import time

import pytest
from keyspace import assert_same, fill, keys_of

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import ConfigError, SourceError
from eve.live.backlog import ALL_DBS, DirtyKeys
from eve.live.notifications import KeyspaceNotifications, parse_keyspace_channel
from eve.live.recopy import DirtyKeySync, RecopyFailure, RecopyResult, SyncOptions
from eve.redis.cluster import SlotMap
from eve.redis.topology import Node

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WRITE_SECONDS = 1.5
HOT_KEYS = 40          # few keys, so threads keep writing the same ones
SHORT_TTL_MS = 3000    # keys closer than this to expiring may vanish mid-compare: not compared
SCRIPT = "redis.call('INCR', KEYS[1]); redis.call('SADD', KEYS[2], ARGV[1]); return 1"


def spec(server) -> ConnectionSpec:
    return ConnectionSpec(server.host, server.port, password=server.password)


def copy_all(source, target) -> int:
    """The bulk copy stand-in: SCAN, DUMP+PTTL, RESTORE REPLACE (relative TTL)."""
    keys = list(source.scan_iter(count=500))
    for start in range(0, len(keys), 200):
        chunk = keys[start:start + 200]
        read = source.pipeline(transaction=False)
        for key in chunk:
            read.dump(key)
            read.pttl(key)
        replies = read.execute()
        write = target.pipeline(transaction=False)
        for key, payload, pttl in zip(chunk, replies[0::2], replies[1::2]):
            if payload is not None and pttl != -2:
                write.restore(key, max(pttl, 0), payload, replace=True)
        write.execute()
    return len(keys)


def stable_keys(client) -> set[bytes]:
    """Keys that will not expire during the comparison."""
    keys = keys_of(client)
    return {key for key in keys if (ttl := client.pttl(key)) == -1 or ttl > SHORT_TTL_MS}


def assert_converged(source, target) -> int:
    """Same live keys on both sides (type, value, TTL within 1 s) and no extra live key on the target."""
    wanted = stable_keys(source)
    compared = assert_same(source, target, ttl_tolerance_ms=1000, keys=wanted)
    extra = stable_keys(target) - keys_of(source)
    assert not extra, f"{len(extra)} keys on the target are gone from the source, e.g. {sorted(extra)[:3]}"
    return compared


class Writers:
    """Threads writing every data type (and MULTI/EXEC, EVAL, RENAME, expiries) for a while.

    Key names carry a hash tag so transactions and scripts also work on a cluster."""

    def __init__(self, clients, filled: list[bytes], seconds: float = WRITE_SECONDS) -> None:
        self.clients = clients
        self.filled = filled
        self.seconds = seconds
        self.ops = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._write, args=(client, n), daemon=True)
                         for n, client in enumerate(clients)]

    def start(self) -> "Writers":
        for thread in self._threads:
            thread.start()
        return self

    def join(self) -> int:
        for thread in self._threads:
            thread.join()
        assert not self.errors, f"writer errors: {[repr(e) for e in self.errors[:3]]}"
        return self.ops

    def _write(self, r, number: int) -> None:
        rng = random.Random(number)
        deadline = time.monotonic() + self.seconds
        ops = 0
        try:
            while time.monotonic() < deadline:
                n = rng.randrange(HOT_KEYS)
                tag = f"{{{n}}}"
                op = rng.randrange(14)
                if op == 0:
                    r.incr(f"cnt:{tag}")
                elif op == 1:
                    r.hincrby(f"h:{tag}", f"f{rng.randrange(5)}", 1)
                elif op == 2:
                    r.lpush(f"l:{tag}", rng.randbytes(4))
                elif op == 3:
                    r.zincrby(f"z:{tag}", 1.5, f"m{rng.randrange(5)}")
                elif op == 4:
                    r.xadd(f"x:{tag}", {"v": str(ops)}, maxlen=20, approximate=False)
                elif op == 5:
                    r.expire(rng.choice(self.filled), rng.randint(30, 300))
                elif op == 6:
                    r.delete(rng.choice([f"cnt:{tag}", f"h:{tag}", f"l:{tag}", f"s:{tag}"]))
                elif op == 7:
                    r.setex(f"short:{tag}", 1, rng.randbytes(6))
                elif op == 8:
                    r.pexpire(rng.choice(self.filled), rng.randint(200, 1200))
                elif op == 9:
                    pipe = r.pipeline(transaction=True)
                    pipe.incr(f"cnt:{tag}")
                    pipe.hset(f"h:{tag}", "multi", ops)
                    pipe.sadd(f"s:{tag}", ops)
                    pipe.execute()
                elif op == 10:
                    r.eval(SCRIPT, 2, f"cnt:{tag}", f"s:{tag}", ops)
                elif op == 11:
                    r.set(f"tmp:{tag}:{number}", ops)
                    r.rename(f"tmp:{tag}:{number}", f"ren:{tag}")
                elif op == 12:
                    # A binary key with the channel's own separator in it.
                    r.set(b"bin:\xff\x00__:" + tag.encode(), rng.randbytes(8))
                else:
                    r.delete(rng.choice(self.filled))
                ops += 1
        except BaseException as exc:  # reported by join()
            self.errors.append(exc)
        finally:
            with self._lock:
                self.ops += ops


def live_sync(dirty: DirtyKeys, options: SyncOptions, notifications: KeyspaceNotifications,
              writers: Writers, bulk=None) -> DirtyKeySync:
    """Notifications on, writers running (during the bulk copy), then the re-copy loop until
    the writes stop, every notification is in and the backlog is drained."""
    failures: list = []
    sync = DirtyKeySync(options, dirty, on_error=failures.extend)
    stop = threading.Event()
    runner = threading.Thread(target=sync.run, args=(stop,), daemon=True)
    try:
        writers.start()
        if bulk is not None:
            bulk()
        runner.start()  # after the bulk copy: a bulk RESTORE must not land after a re-copy
        assert writers.join() > 200
        assert notifications.barrier(10), "keyspace notifications did not catch up"
        assert sync.drain(30), f"backlog not drained: {sync.stats()}"
    finally:
        stop.set()
        runner.join(10)
        sync.close()
    assert not runner.is_alive()
    assert not failures, failures[:3]
    stats = sync.stats()
    # (the backlog may hold keys again: short TTLs expire on the source and notify)
    assert stats.copied > 0 and stats.deleted > 0 and stats.failed == 0, stats
    assert not dirty.overflowed
    return sync


# --------------------------------------------------------------------------- live, real servers


@pytest.mark.parametrize("engine_name", ["redis-7.0", "redis-8.2", "valkey-8.1", "valkey-9.1"])
def test_live_writes_converge(server_factory, engine_name):
    source_server, target_server = server_factory(engine_name), server_factory(engine_name)
    source, target = source_server.client(), target_server.client()
    source1, target1 = source_server.client(db=1), target_server.client(db=1)
    filled = fill(source, 400)
    fill(source1, 60, prefix="one")
    dirty = DirtyKeys()
    options = SyncOptions(authoritative=spec(source_server), others=(spec(target_server),), workers=2)
    notifications = KeyspaceNotifications(spec(source_server), dirty, poll_seconds=0.2)
    notifications.start()
    assert source.config_get("notify-keyspace-events")["notify-keyspace-events"] in ("AK", "KA")
    try:
        writers = Writers([source_server.client() for _ in range(3)] + [source1], filled)
        live_sync(dirty, options, notifications, writers,
                  bulk=lambda: (copy_all(source, target), copy_all(source1, target1)))
    finally:
        notifications.stop()
    # The previous setting is back (the test servers start with none).
    assert source.config_get("notify-keyspace-events")["notify-keyspace-events"] == ""
    # Writers delete and expire filled keys as they go, more of them the more ops they make:
    # these floors only say the comparison covered a real keyspace.
    assert assert_converged(source, target) > 100
    assert assert_converged(source1, target1) > 10


def test_cluster_target_then_reverse_sync_after_cutover(server_factory, cluster_factory):
    """Forward into a cluster target, then the target becomes authoritative and the source
    is kept in sync in reverse (a cluster authoritative side: DUMP routed by slot)."""
    source_server = server_factory("valkey-9.1")
    cluster = cluster_factory("valkey-9.1", masters=3)
    source, target = source_server.client(), cluster.client()
    filled = fill(source, 400)

    dirty = DirtyKeys()
    forward = SyncOptions(authoritative=spec(source_server), others=(spec(cluster.masters[1]),))
    with KeyspaceNotifications(spec(source_server), dirty) as notifications:
        writers = Writers([source_server.client() for _ in range(3)], filled)
        live_sync(dirty, forward, notifications, writers, bulk=lambda: copy_all(source, target))
    assert assert_converged(source, target) > 100
    assert all(master.client().dbsize() > 20 for master in cluster.masters)

    # Cutover: clients now write to the target; notifications on the target, never on the
    # side copied to (its own RESTOREs would mark keys forever).
    dirty = DirtyKeys()
    reverse = SyncOptions(authoritative=spec(cluster.masters[0]), others=(spec(source_server),))
    with KeyspaceNotifications(spec(cluster.masters[2]), dirty) as notifications:
        assert len(notifications._subscribers) == 3  # one per master: notifications are node-local
        writers = Writers([cluster.client() for _ in range(3)], sorted(keys_of(target)))
        live_sync(dirty, reverse, notifications, writers)
    assert assert_converged(target, source) > 50

    # A stale slot map (one master said to own every slot) is corrected by MOVED replies,
    # for the DUMPs of a cluster authoritative side and the RESTOREs of a cluster copied to.
    first = cluster.masters[0]
    keys = [f"moved:{i}".encode() for i in range(60)]
    for key in keys:
        target.set(key, key)
    for authoritative, other, reader in ((cluster.masters[1], source_server, source),
                                         (source_server, cluster.masters[2], target)):
        with DirtyKeySync(SyncOptions(authoritative=spec(authoritative), others=(spec(other),)),
                          DirtyKeys()) as sync:
            copier = sync._copier()
            side = copier.authoritative if authoritative is not source_server else copier.others[0]
            side.connect()
            side.slots = SlotMap([Node(first.host, first.port, ((0, 16383),))])
            result = sync.recopy([(0, key) for key in keys])
            assert (result.copied, result.failed) == (len(keys), 0), result.failures[:3]
            assert len(side.slots.masters) == 3, "the slot map was reloaded"
        assert [reader.get(key) for key in keys] == keys


def test_reverse_direction_standalone(server_factory):
    source_server, target_server = server_factory("valkey-8.1"), server_factory("valkey-8.1")
    source, target = source_server.client(), target_server.client()
    filled = fill(target, 300)
    copy_all(target, source)  # identical at cutover
    dirty = DirtyKeys()
    options = SyncOptions(authoritative=spec(target_server), others=(spec(source_server),), batch=50)
    with KeyspaceNotifications(spec(target_server), dirty) as notifications:
        writers = Writers([target_server.client() for _ in range(2)], filled)
        live_sync(dirty, options, notifications, writers)
    assert assert_converged(target, source) > 200


def test_delete_expiry_and_ttl_rules(server_factory):
    source_server, target_server = server_factory("redis-7.0"), server_factory("redis-7.0")
    source, target = source_server.client(), target_server.client()
    for client in (source, target):
        client.set("gone", "old")
        client.set("expiring", "x")
        client.set("ttl", "old")
    source.delete("gone")                       # DEL on the source: deleted on the target
    source.pexpire("expiring", 1)               # expires before it is re-copied
    source.set("ttl", "new", px=50_000)
    source.hset(b"h\xff", mapping={"a": "1"})   # new on the source
    time.sleep(0.01)
    dirty = DirtyKeys()
    sync = DirtyKeySync(SyncOptions(authoritative=spec(source_server), others=(spec(target_server),)), dirty)
    with sync:
        for key in (b"gone", b"expiring", b"ttl", b"h\xff"):
            dirty.mark(0, key)
        assert sync.drain(5)
        assert sync.stats().as_dict() | {"lag_seconds": 0} == {
            "backlog": 0, "in_flight": 0, "copied": 2, "deleted": 2, "failed": 0, "lag_seconds": 0,
            "overflowed": False, "marked": 4, "dropped": 0, "unavailable": 0, "last_error": None, "restarts": 0,
            "refusing": None}
    assert not target.exists("gone", "expiring")
    assert target.get("ttl") == b"new"
    assert abs(target.pttl("ttl") - source.pttl("ttl")) < 1000   # absolute expiry, read with PTTL
    assert target.hgetall(b"h\xff") == {b"a": b"1"}

    # preserve_ttl off: restored without expiry; marks in another db go to that db.
    source1 = source_server.client(db=3)
    source1.set("in3", "v", ex=100)
    plain = DirtyKeySync(SyncOptions(authoritative=spec(source_server), others=(spec(target_server),),
                                     preserve_ttl=False), dirty)
    with plain:
        dirty.mark(3, b"in3")
        assert plain.drain(5)
    assert target_server.client(db=3).pttl("in3") == -1


def test_unreachable_side_puts_the_batch_back(server_factory):
    source_server, target_server = server_factory("redis-7.0"), server_factory("redis-7.0")
    source_server.client().mset({f"k{i}": i for i in range(20)})
    dirty = DirtyKeys()
    options = SyncOptions(authoritative=spec(source_server), others=(spec(target_server),), reconnect_seconds=0.2)
    with DirtyKeySync(options, dirty) as sync:
        dirty.mark_many(0, [f"k{i}".encode() for i in range(20)])
        target_server.stop()
        assert not sync.drain(1.0)
        stats = sync.stats()
        assert stats.unavailable >= 1 and stats.backlog == 20 and "unreachable" in stats.last_error
        target_server.start()
        assert sync.drain(5)
    assert target_server.client().mget([f"k{i}" for i in range(20)]) == [str(i).encode() for i in range(20)]


def test_refused_payload_goes_to_on_error(server_factory):
    """Redis 8.2 writes RDB 12, which Valkey 8.1 refuses: the key is copied logically instead
    (tests/test_logical.py). A key that cannot be (a module type) is an error key, not a crash,
    not a retry."""
    source_server, target_server = server_factory("redis-8.2", with_module=True), server_factory("valkey-8.1")
    source = source_server.client()
    source.set("new-format", "v")
    source.execute_command("GRAPH.QUERY", "other", "CREATE (:P {n:1})")
    dirty = DirtyKeys()
    failures: list = []
    with DirtyKeySync(SyncOptions(authoritative=spec(source_server), others=(spec(target_server),)), dirty,
                      on_error=failures.extend) as sync:
        dirty.mark(0, b"new-format")
        assert sync.drain(5)
        assert target_server.client().get("new-format") == b"v"
        result = sync.recopy([(0, b"other"), (0, b"missing")])
    assert (result.copied, result.deleted, result.failed) == (0, 1, 1)
    assert dirty.backlog == 0 and [f.key for f in failures] == [b"other"]  # an error key for the caller
    failure = failures[0]
    assert failure.side == target_server.host + f":{target_server.port}" and failure.type == "graphdata"
    assert "cannot be copied logically" in failure.reason and failure.size > 0
    assert failure.as_error_key().node == failure.node
    assert (sync.stats().copied, sync.stats().failed) == (1, 1)


def test_flushdb_flags_a_full_resync(server_factory):
    server = server_factory("valkey-9.1")
    client = server.client()
    dirty = DirtyKeys()
    with KeyspaceNotifications(spec(server), dirty, poll_seconds=0.1) as notifications:
        client.set("a", 1)
        assert notifications.barrier(5)
        assert dirty.take(10) == [(0, b"a")] and not dirty.overflowed
        client.flushdb()   # publishes no keyspace event: noticed through INFO commandstats
        deadline = time.monotonic() + 5
        while not dirty.overflowed and time.monotonic() < deadline:
            time.sleep(0.05)
    assert dirty.overflowed and dirty.resync_dbs() is ALL_DBS
    assert dirty.reset_overflow() is ALL_DBS and not dirty.overflowed


def _reconcile(dirty: DirtyKeys, source, target) -> int:
    """What LiveRun.reconcile_if_needed does with the full-resync flag: compare the sides and
    mark every key that differs."""
    from eve.live.verify import verify

    dirty.reset_overflow()
    report = verify(spec(source), spec(target), max_examples=0, max_differences=dirty.max_backlog)
    for difference in report.differences:
        dirty.mark(difference.db, difference.key)
    return len(report.differences)


@pytest.mark.parametrize("while_idle", [False, True], ids=["while-writing", "while-idle"])
def test_restarted_target_flags_a_full_resync_and_converges(server_factory, while_idle):
    """A live run's target killed -9 and started again has lost every key the re-copy loop
    (and the bulk copy) put there, not only the batch in flight: the loop flags a full
    resync, the sides are compared, and the target converges."""
    source_server, target_server = server_factory("redis-7.0"), server_factory("valkey-9.1")
    source, target = source_server.client(), target_server.client()
    filled = fill(source, 3000)  # more keys than the writers touch: most are never marked again
    copy_all(source, target)   # the bulk copy, which knows the target by its run_id
    known = ((f"{target_server.host}:{target_server.port}", target.info("server")["run_id"]),)
    dirty = DirtyKeys()
    options = SyncOptions(authoritative=spec(source_server), others=(spec(target_server),), workers=2,
                          server_run_ids=known)
    with KeyspaceNotifications(spec(source_server), dirty) as notifications:
        sync = DirtyKeySync(options, dirty)
        stop = threading.Event()
        runner = threading.Thread(target=sync.run, args=(stop,), daemon=True)
        runner.start()
        try:
            writers = Writers([source_server.client() for _ in range(2)], filled).start()
            if while_idle:
                assert writers.join() > 100
                assert notifications.barrier(10) and sync.drain(30)
            target_server.kill()
            target_server.start()
            # Every key copied before is gone; while writing, the loop may already have re-copied a few.
            assert target.dbsize() < len(filled) // 10
            if not while_idle:
                assert writers.join() > 100
            # Writing or not, the loop finds out (a re-copy meets the restart, or an idle worker asks).
            deadline = time.monotonic() + 30
            while not sync.stats().restarts:
                assert time.monotonic() < deadline, sync.stats()
                time.sleep(0.05)
            assert dirty.overflowed and dirty.resync_dbs() is ALL_DBS
            assert notifications.barrier(10)
            assert _reconcile(dirty, source_server, target_server) > 200  # keys only the resync brings back
            assert sync.drain(30), sync.stats()
        finally:
            stop.set()
            runner.join(10)
            sync.close()
    stats = sync.stats()
    assert stats.restarts == 1 and "restarted" in stats.last_error, stats
    assert assert_converged(source, target) > 1000
    assert not sync.check_sides(), "the new server is the known one now"


def test_refused_config_is_a_clear_error(server_factory):
    server = server_factory("redis-7.0", extra_args=["--rename-command", "CONFIG", ""])
    with pytest.raises(SourceError, match="notify-keyspace-events.*include 'KA'"):
        KeyspaceNotifications(spec(server), DirtyKeys()).start()


# --------------------------------------------------------------------------- the backlog, no server


def test_a_key_marked_while_in_flight_is_copied_again():
    dirty = DirtyKeys()
    options = SyncOptions(authoritative=ConnectionSpec("127.0.0.1", 1), others=(ConnectionSpec("127.0.0.1", 2),))
    sync = DirtyKeySync(options, dirty)
    calls: list[list] = []

    def fake_recopy(items):
        calls.append(list(items))
        if len(calls) == 1:
            dirty.mark(0, b"hot")           # a write lands after the first DUMP was read
            assert dirty.take(10) == []     # ... and is not handed out while in flight
            assert dirty.backlog == 1
        return RecopyResult(copied=len(items))

    sync.recopy = fake_recopy  # type: ignore[method-assign]
    dirty.mark(0, b"hot")
    assert sync.drain(5)
    assert calls == [[(0, b"hot")], [(0, b"hot")]]


def test_dirty_keys_order_dedup_bound_and_flags():
    dirty = DirtyKeys(max_backlog=3)
    for key in (b"a", b"b", b"a", "b"):
        dirty.mark(0, key)
    assert dirty.backlog == 2 and dirty.marked == 2
    dirty.mark(1, b"a")
    dirty.mark(2, b"d")                     # beyond max_backlog: dropped, flagged
    assert dirty.backlog == 3 and dirty.overflowed and dirty.resync_dbs() == {2} and dirty.dropped == 1
    taken = dirty.take(2)
    assert taken == [(0, b"a"), (0, b"b")]
    dirty.requeue(taken)                    # a side was down: back at the front
    assert dirty.take(1) == [(0, b"a")]
    dirty.done([(0, b"a")])
    assert dirty.take(5) == [(0, b"b"), (1, b"a")]
    dirty.done([(0, b"b"), (1, b"a")])
    assert dirty.backlog == 0 and dirty.lag_seconds == 0.0
    dirty.mark_all(5)
    assert dirty.reset_overflow() == {2, 5}
    assert dirty.resync_dbs() == frozenset() and not dirty.overflowed
    assert parse_keyspace_channel(b"__keyspace@12__:a__:b\xff") == (12, b"a__:b\xff")
    assert parse_keyspace_channel(b"__keyspace@eve-barrier__:x") is None
    with pytest.raises(ConfigError):
        SyncOptions(authoritative=ConnectionSpec("h", 1), others=())


def test_keys_failed_only_transiently_are_put_off_not_failed():
    """CLUSTERDOWN while a cluster side elects a master, LOADING while a server reloads: the
    keys go back to the backlog (``retry``) instead of becoming error keys; a key that one
    side refused for good is a failure whatever the others said."""
    def failure(key: bytes, reason: str) -> RecopyFailure:
        return RecopyFailure(0, key, "target", "target", "string", 1, reason)

    result = RecopyResult(copied=1, failed=4, failures=[
        failure(b"down", "DUMP/PTTL refused on the authoritative side: CLUSTERDOWN The cluster is down"),
        failure(b"loading", "LOADING Redis is loading"),
        failure(b"refused", "ERR DUMP payload version or checksum are wrong"),
        failure(b"mixed", "TRYAGAIN Multiple keys request during rehashing of slot"),
        failure(b"mixed", "WRONGTYPE Operation against a key holding the wrong kind of value")])
    result.put_off_transient()
    assert result.retry == [(0, b"down"), (0, b"loading")]
    assert [f.key for f in result.failures] == [b"refused", b"mixed", b"mixed"] and result.failed == 2
