"""Big keys copied in chunks (restorer.bigkeys): every type, binary members, TTLs, field TTLs,
stream groups, the conflict policies; through the bulk copy; and a kill -9 mid-copy, resumed."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from keyspace import (
    BIG_KEY_TYPES,
    assert_same,
    field_ttls_of,
    fill,
    fill_big_keys,
    groups_of,
    value_of,
)

from eve.core.endpoints import ConnectionSpec
from eve.core.enums import ConflictPolicy
from eve.core.errors import SourceError, TargetError
from eve.core.frames import Batch, BatchHeader, decode, encode
from eve.live.backlog import DirtyKeys
from eve.live.recopy import DirtyKeySync, SyncOptions
from eve.redis.cluster import ClientOptions, ClusterClient
from restorer.bigkeys import CONFLICT, COPIED, FAILED, GONE, TMP_MARK, ChunkedCopier, remove_temporary_keys
from scanner import ScannerOptions, run_scanner

_OPTIONS = ClientOptions(timeout=10.0, reconnect_seconds=0)


def spec(server) -> ConnectionSpec:
    return ConnectionSpec(server.host, server.port, password=server.password)


def copier(source_server, target_server, **kw) -> ChunkedCopier:
    source = ClusterClient(spec(source_server), role="source", error=SourceError, options=_OPTIONS)
    target = ClusterClient(spec(target_server), role="target", error=TargetError, options=_OPTIONS)
    kw.setdefault("chunk", 300)
    kw.setdefault("chunk_bytes", 256 << 10)
    return ChunkedCopier(source, target, worker="restorer-1", **kw)


def temporary_keys(client) -> list[bytes]:
    return list(client.scan_iter(match=b"*" + TMP_MARK + b"*"))


def calls(client, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("pair", [("valkey-9.1", "valkey-9.1"), ("redis-8.2", "redis-7.0"),
                                  ("redis-7.0", "valkey-9.1")], ids="->".join)
def test_every_type_is_copied_in_pieces(server_factory, pair):
    source_server, target_server = server_factory(pair[0]), server_factory(pair[1])
    source, target = source_server.client(), target_server.client()
    keys = fill_big_keys(source, 5000)
    target.set(keys[0], "an older value, replaced whole")
    chunked = copier(source_server, target_server)
    outcomes = [chunked.copy(0, key) for key in keys]
    assert [outcome.status for outcome in outcomes] == [COPIED] * len(keys), outcomes
    assert [outcome.type for outcome in outcomes] == list(BIG_KEY_TYPES)
    assert all(outcome.pieces >= 12 for outcome in outcomes), outcomes   # 5000 / 300 elements, 3 MiB / 256 KiB
    assert_same(source, target, keys=set(keys))
    assert groups_of(target, keys[4]) == [(b"readers", *groups_of(source, keys[4])[0][1:4],
                                           groups_of(target, keys[4])[0][4])]
    assert [entry[:2] for entry in groups_of(target, keys[4])[0][4]] == \
        [entry[:2] for entry in groups_of(source, keys[4])[0][4]]
    assert not temporary_keys(target)
    assert calls(source, "dump") == 0 and calls(target, "restore") == 0


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("pair", [("redis-8.2", "valkey-9.1"), ("valkey-9.1", "redis-8.2")], ids="->".join)
def test_field_ttls_are_kept(server_factory, pair):
    source_server, target_server = server_factory(pair[0]), server_factory(pair[1])
    source, target = source_server.client(), target_server.client()
    hash_key = fill_big_keys(source, 3000, field_ttls=True)[1]
    assert copier(source_server, target_server).copy(0, hash_key).status == COPIED
    assert value_of(target, hash_key) == value_of(source, hash_key)
    ttls = field_ttls_of(target, hash_key)
    assert ttls == field_ttls_of(source, hash_key) and sum(ms > 0 for ms in ttls.values()) == 300


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_field_ttls_the_target_cannot_hold_fail_the_key(server_factory):
    source_server, target_server = server_factory("redis-8.2"), server_factory("redis-7.0")
    source, target = source_server.client(), target_server.client()
    hash_key = fill_big_keys(source, 3000, field_ttls=True)[1]
    outcome = copier(source_server, target_server).copy(0, hash_key)
    assert outcome.status == FAILED and "cannot hold per-field hash TTLs" in outcome.reason
    assert not target.exists(hash_key) and not temporary_keys(target)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_conflict_policies(server_factory):
    source_server, target_server = server_factory("valkey-9.1"), server_factory("valkey-9.1")
    source, target = source_server.client(), target_server.client()
    zset, hash_, set_, list_, _stream, string = fill_big_keys(source, 2000, string_bytes=1 << 20)
    target.zadd(zset, {"target-only": 1, b"m\x000": 99})
    target.pexpire(zset, 9_000_000)
    target.set(set_, "a string where the source has a set")
    target.rpush(list_, "target")
    none = copier(source_server, target_server, policy=ConflictPolicy.NONE)
    assert [none.copy(0, key).status for key in (zset, set_, list_, hash_)] == [CONFLICT, CONFLICT, CONFLICT,
                                                                                 COPIED]
    assert target.zcard(zset) == 2 and target.lrange(list_, 0, -1) == [b"target"]
    merge = copier(source_server, target_server, policy=ConflictPolicy.MERGE)
    outcomes = {key: merge.copy(0, key) for key in (zset, set_, list_, string)}
    assert outcomes[zset].status == COPIED
    assert (outcomes[set_].status, outcomes[set_].reason) == (CONFLICT, "type differs (target string, source set)")
    assert (outcomes[list_].status, outcomes[list_].reason) == (CONFLICT, "no merge semantics for list")
    assert outcomes[string].status == COPIED   # absent on the target: copied whole
    merged = dict(target.zrange(zset, 0, -1, withscores=True))
    assert merged == {**dict(source.zrange(zset, 0, -1, withscores=True)), b"target-only": 1.0}
    assert target.pttl(zset) > 8_000_000, "the target key keeps its TTL"
    assert not temporary_keys(target)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_key_gone_or_expired_and_leftovers_removed(server_factory):
    source_server, target_server = server_factory("redis-7.0"), server_factory("redis-7.0")
    target = target_server.client()
    assert copier(source_server, target_server).copy(0, b"missing").status == GONE
    target.set(b"{k}" + TMP_MARK + b"restorer-3", "left by a crashed copy")
    target.set(b"unrelated", "kept")
    target.execute_command("SELECT", 0)
    client = ClusterClient(spec(target_server), role="target", error=TargetError, options=_OPTIONS)
    assert remove_temporary_keys(client, [0]) == 1
    assert not temporary_keys(target) and target.get("unrelated") == b"kept"


# --------------------------------------------------------------------------- through eve migrate


def migrate(source_server, target_server, state, *extra: str, timeout: float = 120) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "eve", "migrate", "--source", f"redis://127.0.0.1:{source_server.port}",
           "--target", f"redis://127.0.0.1:{target_server.port}", "--state", str(state), "--no-progress", "--json",
           *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(job: subprocess.Popen, timeout: float = 120) -> dict:
    out, err = job.communicate(timeout=timeout)
    assert job.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def wait_until(condition, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_eve_migrate_copies_big_keys_in_chunks(server_factory, tmp_path):
    source_server, target_server = server_factory("redis-7.0"), server_factory("valkey-9.1")
    source, target = source_server.client(), target_server.client()
    small = fill(source, 300)
    big = fill_big_keys(source, 5000)
    report = finish(migrate(source_server, target_server, tmp_path / "s.db", "--big-key-bytes", "50000"))
    assert report["restored"] == len(small) + len(big) and report["error_keys"] == 0, report
    assert_same(source, target)
    assert calls(source, "dump") == len(small), "the big keys (MEMORY USAGE 57,000 bytes and up) never"
    assert not temporary_keys(target)


def eve_clients(client) -> list[str]:
    return [entry["name"] for entry in client.client_list() if entry.get("name", "").startswith("eve-")]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill_9_during_a_chunked_copy_then_resume_leaves_the_key_exact(server_factory, tmp_path):
    source_server, target_server = server_factory("redis-7.0"), server_factory("valkey-9.1")
    source, target = source_server.client(), target_server.client()
    keys = fill_big_keys(source, 2000, string_bytes=1 << 20)
    zset = keys[0]
    pipe = source.pipeline(transaction=False)
    for start in range(2000, 300_000, 10_000):
        pipe.zadd(zset, {b"m\x00%d" % i: i / 3 for i in range(start, start + 10_000)})
    pipe.execute()
    fill(source, 200)
    state = tmp_path / "s.db"
    job = migrate(source_server, target_server, state, "--big-key-bytes", "1000000", "--restorers", "2")
    try:
        # Kill it once a temporary key holds part of the zset: mid-copy.
        wait_until(lambda: any(key.startswith(b"{" + zset) and target.zcard(key) > 20_000
                               for key in temporary_keys(target)), "a half-built key")
    finally:
        job.kill()
        job.communicate()
    wait_until(lambda: not eve_clients(target), "the workers to die with their parent")
    assert temporary_keys(target), "a half-built temporary key is what a crash leaves"
    assert not target.exists(zset), "and never a half key under the real name"
    report = finish(migrate(source_server, target_server, state, "--big-key-bytes", "1000000", "--restorers", "1",
                            "--resume"))
    assert report["error_keys"] == 0, report
    assert not temporary_keys(target)
    assert_same(source, target)


# --------------------------------------------------------------------------- the live re-copy


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_the_live_recopy_copies_dirty_big_keys_in_chunks(server_factory):
    auth_server, other_server = server_factory("valkey-9.1"), server_factory("redis-7.0")
    auth, other = auth_server.client(), other_server.client()
    keys = fill_big_keys(auth, 3000, string_bytes=1 << 20)
    auth.set("small", "v")
    other.set(b"gone", "deleted on the authoritative side")
    options = SyncOptions(authoritative=spec(auth_server), others=(spec(other_server),), big_key_threshold_bytes=20_000)
    dirty = DirtyKeys()
    with DirtyKeySync(options, dirty) as sync:
        dirty.mark_many(0, [*keys, b"small", b"gone"])
        assert sync.drain(30)
        stats = sync.stats()
        assert (stats.copied, stats.deleted, stats.failed) == (len(keys) + 1, 1, 0), stats
        assert calls(auth, "dump") == 2, "only the small key, and the gone one, were DUMPed"
        # Written again during the run: re-copied, in chunks again, exactly.
        auth.zadd(keys[0], {"late": 1})
        auth.lpush(keys[3], "late")
        dirty.mark_many(0, [keys[0], keys[3]])
        assert sync.drain(30)
    assert_same(auth, other, keys={*keys, b"small"})
    assert not other.exists("gone") and not temporary_keys(other)
    assert calls(auth, "dump") == 2


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_a_cluster_target_gets_each_big_key_on_its_slot_owner(server_factory, cluster_factory):
    """The temporary key shares the key's hash slot (a hash tag built from the key), so pieces
    and the RENAME go to the master that owns the key."""
    source_server, cluster = server_factory("redis-7.0"), cluster_factory("valkey-9.1", masters=3)
    source = source_server.client()
    keys = fill_big_keys(source, 2000, string_bytes=1 << 20)
    tagged = b"{user:7}:events"
    source.rename(keys[4], tagged)
    keys[4] = tagged
    target = ClusterClient(ConnectionSpec(cluster.host, cluster.port), role="target", error=TargetError,
                           options=_OPTIONS)
    chunked = ChunkedCopier(ClusterClient(spec(source_server), role="source", error=SourceError, options=_OPTIONS),
                            target, worker="restorer-2", chunk=250)
    assert [chunked.copy(0, key).status for key in keys] == [COPIED] * len(keys)
    client = cluster.client()
    for key in keys:
        assert value_of(client, key) == value_of(source, key)
        assert abs(client.pttl(key) - source.pttl(key)) <= 1000
    for node in cluster.masters:
        assert not temporary_keys(node.client())


# --------------------------------------------------------------------------- the scanner, the frame


class _Sink(list):
    def put(self, frame: bytes) -> None:
        self.append(decode(frame))


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_the_scanner_sends_big_keys_apart_and_never_dumps_them(server_factory):
    server = server_factory("valkey-9.1")
    client = server.client()
    big = fill_big_keys(client, 3000, string_bytes=1 << 20)
    small = fill(client, 100)
    sink = _Sink()
    address = f"{server.host}:{server.port}"
    options = ScannerOptions(run_id="r", worker="scanner", source=spec(server), node=address, dbs=(0,),
                             big_key_threshold_bytes=20_000)
    assert run_scanner(options, sink)
    batches = [frame for frame in sink if isinstance(frame, Batch)]
    assert sorted(key for batch in batches for key, _size in batch.big) == sorted(big)
    assert sorted(key for batch in batches for key, _expiry, _payload in batch.rows) == sorted(small)
    assert all(size > 20_000 for batch in batches for _key, size in batch.big)
    assert sum(batch.header.scanned for batch in batches) == len(big) + len(small)
    assert calls(client, "dump") == len(small)


def test_a_batch_carries_its_big_keys_through_the_frame():
    header = BatchHeader("r", "127.0.0.1:7000", 0, 1, 0, 0, True, 3, 0)
    batch = Batch(header, [(b"k", 0, b"payload")], [(b"big\xff", 70_000_000)])
    assert decode(encode(batch)) == batch
    assert decode(encode(Batch(header, []))).big == []


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_big_key_of_a_module_type_is_dumped_whole_under_the_temporary_key(server_factory):
    source_server = server_factory("redis-8.2", with_module=True)
    target_server = server_factory("redis-8.2", with_module=True)
    source = source_server.client()
    source.execute_command("GRAPH.QUERY", "g", "UNWIND range(1, 500) AS i CREATE (:P {n: i})")
    outcome = copier(source_server, target_server).copy(0, b"g")
    assert (outcome.status, outcome.type, outcome.pieces) == (COPIED, "graphdata", 1)
    assert target_server.client().execute_command("GRAPH.QUERY", "g", "MATCH (p:P) RETURN count(p)")[1] == [[500]]
    assert not temporary_keys(target_server.client())
