"""The verification compare pass (eve.live.verify) on real servers: clean copies across
engine versions and topologies, each kind of difference, big keys read in chunks,
ignored prefixes, the rate limit and ``eve verify``'s exit codes and JSON."""

from __future__ import annotations

import json
import time

import pytest
import redis
from keyspace import fill
from servers import free_port

from eve.cli.verify import verify_command
from eve.core.endpoints import ConnectionSpec
from eve.core.errors import ConfigError, UnavailableError
from eve.live import verify as verify_mod
from eve.live.verify import EXTRA, MISSING, TTL, TYPE, VALUE, verify
from eve.redis.cluster import SlotMap
from eve.redis.topology import Node
from eve.redis.wire import pack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def spec(server) -> ConnectionSpec:
    return ConnectionSpec(server.host, server.port)


def copy(source: redis.Redis, target, *, match: str | None = None) -> int:
    """DUMP + PTTL on the source, RESTORE ... ABSTTL on the target (a cluster client routes by key)."""
    keys = list(source.scan_iter(match=match, count=1000))
    pipe = source.pipeline(transaction=False)
    for key in keys:
        pipe.dump(key)
        pipe.pttl(key)
    replies = pipe.execute()
    now = int(time.time() * 1000)
    for key, payload, pttl in zip(keys, replies[0::2], replies[1::2]):
        if payload is None or pttl == -2:
            continue
        expiry = now + pttl if pttl >= 0 else 0
        target.restore(key, expiry, payload, replace=True, absttl=expiry > 0)
    return len(keys)


def kinds(report) -> dict[str, set[bytes]]:
    found: dict[str, set[bytes]] = {}
    for difference in report.differences:
        found.setdefault(difference.kind, set()).add(difference.key)
    return found


# -- clean copies -----------------------------------------------------------------------


@pytest.mark.parametrize("source_engine,target_engine",
                         [("redis-7.0", "valkey-9.1"), ("redis-7.0", "redis-8.2"), ("valkey-8.1", "valkey-8.1")],
                         ids=lambda name: name)
def test_identical_copy_is_clean_across_engines(server_factory, source_engine, target_engine):
    # Redis 7.0 prints zset scores as "%.17g" and writes RDB 10 payloads, Valkey 9.1 the shortest
    # form and RDB 80: the digests come from the logical values, so the copy still verifies clean.
    source = server_factory(source_engine)
    target = server_factory(target_engine)
    for db in (0, 2):
        src = source.client(db=db)
        fill(src, 600 if db == 0 else 60, prefix=f"db{db}")
        src.xgroup_create(f"db{db}:stream:5", "readers", id="0")
        src.zadd(f"db{db}:zset:scores", {"a": 0.1, "b": -0.0, "c": float("inf"), "d": 1.5e-7, "e": 3})
        src.set(f"db{db}:empty", b"")
        copy(src, target.client(db=db))
    # Eve's own scratch keys on the target are not extra keys.
    target.client().set("eve:probe:{x}", "1", px=60_000)
    report = verify(spec(source), spec(target))
    assert report.clean, report.examples
    assert report.keys_compared == 600 + 60 + 2 * 2
    assert (report.missing, report.extra, report.different, report.ttl_mismatch) == (0, 0, 0, 0)
    assert report.examples == () and report.differences == ()
    # dbs narrows the pass.
    assert verify(spec(source), spec(target), dbs=[2]).keys_compared == 62


def test_cluster_target_and_cluster_source(server_factory, cluster_factory):
    source = server_factory("redis-7.0")
    cluster = cluster_factory("valkey-9.1", masters=3)
    src, dst = source.client(), cluster.client()
    fill(src, 600)
    copy(src, dst)
    assert all(node.client().dbsize() > 0 for node in cluster.masters)
    cluster_spec = ConnectionSpec(cluster.host, cluster.port)
    report = verify(spec(source), cluster_spec)
    assert report.clean, report.examples
    assert report.keys_compared == 600
    # The other way round: every master of the cluster is scanned, reads follow the slots.
    back = verify(cluster_spec, spec(source))
    assert back.clean and back.keys_compared == 600
    # Differences on different masters are found, with the reads routed by slot.
    dst.delete(b"k:hash:1")
    dst.hset(b"k:hash:7", b"f0", b"changed")
    dst.set(b"only-on-target", b"1")
    report = verify(spec(source), cluster_spec)
    assert kinds(report) == {MISSING: {b"k:hash:1"}, VALUE: {b"k:hash:7"}, EXTRA: {b"only-on-target"}}
    # A cluster has only db 0: a source key in another db is missing there.
    source.client(db=1).set(b"elsewhere", b"1")
    report = verify(spec(source), cluster_spec)
    assert report.missing == 2
    assert any("only db 0" in d.detail for d in report.differences if d.key == b"elsewhere")
    with pytest.raises(ConfigError, match="only db 0"):
        verify(cluster_spec, spec(source), dbs=[1])


def test_cluster_reads_follow_moved_redirections(cluster_factory):
    # A stale slot map (here: one master said to own every slot) is corrected by MOVED replies.
    cluster = cluster_factory("redis-7.0", masters=3)
    client = cluster.client()
    keys = [f"key:{i}".encode() for i in range(200)]
    for key in keys:
        client.set(key, key)
    side = verify_mod._Side("target", ConnectionSpec(cluster.host, cluster.port), 5.0)
    side.open()
    try:
        first = cluster.masters[0]
        side.client.slots = SlotMap([Node(first.host, first.port, ((0, 16383),))])
        replies = side.run(keys, [[pack(b"GET", key)] for key in keys])
        assert [reply[0] for reply in replies] == keys
        assert len(side.client.slots.masters) == 3, "the slot map was reloaded"
    finally:
        side.close()


# -- each kind of difference ---------------------------------------------------------------


def test_each_kind_of_difference_is_found_and_counted(server_factory):
    source = server_factory("redis-7.0")
    target = server_factory("valkey-9.1")
    src, dst = source.client(), target.client()
    fill(src, 300, binary=False)
    src.hset("h", mapping={"a": "1", "b": "2"})
    src.zadd("z", {"a": 1, "b": 2.5})
    src.rpush("l", "1", "2", "3")
    src.sadd("s", "x", "y")
    src.hset("t", "f", "v")
    src.set("ttl-off", "v", px=3_600_000)
    src.set("ttl-close", "v", px=3_600_000)
    src.set("ttl-removed", "v", px=3_600_000)
    src.set("ttl-added", "v")
    src.set("gone", "v")
    src.xadd("x", {"a": "1"}, id="1-1")
    src.xgroup_create("x", "g", id="0")
    copy(src, dst)
    before = verify(spec(source), spec(target))
    assert before.clean, before.examples

    dst.delete("gone")                                     # missing
    dst.set("new", "v")                                    # extra
    dst.hset("h", "b", "3")                                # a changed hash field
    dst.zadd("z", {"b": 2.25})                             # a changed zset score
    dst.delete("l")
    dst.rpush("l", "3", "2", "1")                          # a list in another order
    dst.delete("t")
    dst.set("t", "v")                                      # another type
    dst.xgroup_destroy("x", "g")                           # a stream without its consumer group
    dst.pexpire("ttl-off", src.pttl("ttl-off") - 5_000)    # TTL off by 5 s
    dst.pexpire("ttl-close", src.pttl("ttl-close") - 300)  # within the tolerance: not a difference
    dst.persist("ttl-removed")                             # TTL removed
    dst.pexpire("ttl-added", 60_000)                       # TTL where the source has none

    report = verify(spec(source), spec(target), ttl_tolerance_ms=1000, max_examples=3)
    assert not report.clean
    assert kinds(report) == {
        MISSING: {b"gone"},
        EXTRA: {b"new"},
        VALUE: {b"h", b"z", b"l", b"x"},
        TYPE: {b"t"},
        TTL: {b"ttl-off", b"ttl-removed", b"ttl-added"},
    }
    assert (report.missing, report.extra, report.different, report.ttl_mismatch) == (1, 1, 5, 3)
    assert report.keys_compared == 300 + 11
    assert len(report.examples) == 3 and report.examples == report.differences[:3]
    details = {(d.key, d.kind): d.detail for d in report.differences}
    assert details[(b"t", TYPE)] == "source hash, target string"
    assert details[(b"ttl-removed", TTL)].startswith("source TTL ") and details[(b"ttl-removed", TTL)].endswith(
        "target none")
    assert "off by 5" in details[(b"ttl-off", TTL)] and "tolerance 1000 ms" in details[(b"ttl-off", TTL)]
    assert details[(b"ttl-added", TTL)].startswith("source TTL none, target ")
    assert details[(b"gone", MISSING)] == "source string, not on the target"
    assert details[(b"new", EXTRA)] == "target string, not on the source"
    assert "hash of 2 fields" in details[(b"h", VALUE)]
    difference = next(d for d in report.differences if d.key == b"h")
    assert difference.key_text == "h" and difference.db == 0

    # Without extra-key detection the target is not scanned; a wider tolerance takes the 5 s.
    report = verify(spec(source), spec(target), check_extra=False, ttl_tolerance_ms=10_000)
    assert report.extra == 0 and kinds(report)[TTL] == {b"ttl-removed", b"ttl-added"}
    # max_differences caps the list, not the counts.
    report = verify(spec(source), spec(target), max_differences=2)
    assert len(report.differences) == 2 and report.missing + report.different + report.ttl_mismatch + report.extra == 10


def test_size_difference_and_match_and_type_filters(server_factory):
    source = server_factory("valkey-9.1")
    target = server_factory("valkey-9.1")
    src, dst = source.client(), target.client()
    fill(src, 120, prefix="a", binary=False)
    fill(src, 120, prefix="b", binary=False)
    copy(src, dst)
    dst.hset("a:hash:1", "added", "1")
    dst.hset("b:hash:7", "added", "1")
    dst.set("a:extra", "1")
    report = verify(spec(source), spec(target))
    assert kinds(report) == {VALUE: {b"a:hash:1", b"b:hash:7"}, EXTRA: {b"a:extra"}}
    size = src.hlen("a:hash:1")
    detail = next(d.detail for d in report.differences if d.key == b"a:hash:1")
    # Field-level detail (issue 11): which field the target has that the source lacks.
    assert detail == f"source hash of {size} fields, target {size + 1} fields: 1 field only on the target ('added')"
    report = verify(spec(source), spec(target), match="a:*")
    assert kinds(report) == {VALUE: {b"a:hash:1"}, EXTRA: {b"a:extra"}} and report.keys_compared == 120
    report = verify(spec(source), spec(target), match="b:*", type="hash")
    assert kinds(report) == {VALUE: {b"b:hash:7"}} and report.keys_compared == 20


def test_ignore_prefixes(server_factory):
    source = server_factory("redis-8.2")
    target = server_factory("redis-8.2")
    src, dst = source.client(), target.client()
    fill(src, 60)
    copy(src, dst)
    src.set("eve:scratch:1", "source only")
    dst.set("eve:probe:2", "target only")
    dst.set("tmp:3", "target only")
    assert verify(spec(source), spec(target), ignore_prefixes=(b"eve:", b"tmp:")).clean
    report = verify(spec(source), spec(target))
    assert kinds(report) == {EXTRA: {b"tmp:3"}}
    report = verify(spec(source), spec(target), ignore_prefixes=())
    assert kinds(report) == {MISSING: {b"eve:scratch:1"}, EXTRA: {b"eve:probe:2", b"tmp:3"}}


# -- big keys --------------------------------------------------------------------------------


def commandstats(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in client.info("commandstats").items()}


def test_big_hash_is_read_in_chunks(server_factory):
    source = server_factory("redis-7.0")
    target = server_factory("valkey-9.1")
    src, dst = source.client(), target.client()
    fields = {f"field:{i}": f"value:{i}" for i in range(20_000)}
    for client in (src, dst):
        pipe = client.pipeline(transaction=False)
        for start in range(0, len(fields), 5000):
            pipe.hset("big", mapping=dict(list(fields.items())[start:start + 5000]))
        pipe.execute()
        client.config_resetstat()
    report = verify(spec(source), spec(target))
    assert report.clean and report.keys_compared == 1
    stats = commandstats(src)
    assert stats.get("hscan", 0) >= 20_000 // verify_mod.CHUNK_ELEMENTS and "hgetall" not in stats

    dst.hset("big", "field:12345", "changed")
    report = verify(spec(source), spec(target))
    assert kinds(report) == {VALUE: {b"big"}}
    assert report.differences[0].detail.startswith("hash of 20000 fields on both sides")


def test_chunked_reads_give_the_same_digests_as_whole_reads(server_factory, monkeypatch):
    # With every threshold at zero each value is read in chunks (GETRANGE, LRANGE, ZRANGE, XRANGE,
    # HSCAN/SSCAN ranges) on both sides: a copy across engines is still clean, a change is still found.
    monkeypatch.setattr(verify_mod, "BIG_ELEMENTS", 0)
    monkeypatch.setattr(verify_mod, "CHUNK_ELEMENTS", 3)
    monkeypatch.setattr(verify_mod, "BIG_STRING_BYTES", 0)
    monkeypatch.setattr(verify_mod, "STRING_CHUNK_BYTES", 16)
    source = server_factory("redis-7.0")
    target = server_factory("valkey-9.1")
    src, dst = source.client(), target.client()
    fill(src, 240, binary=False)
    src.xgroup_create("k:stream:5", "g", id="0")
    copy(src, dst)
    src.config_resetstat()
    report = verify(spec(source), spec(target))
    assert report.clean, report.examples
    stats = commandstats(src)
    assert {"getrange", "lrange", "zrange", "xrange", "hscan", "sscan"} <= set(stats)
    assert not {"get", "hgetall", "smembers"} & set(stats)
    dst.lset("k:list:2", 0, b"changed")
    dst.zadd("k:zset:4", {"m0": 1234.5}, xx=True)
    report = verify(spec(source), spec(target))
    assert kinds(report) == {VALUE: {b"k:list:2", b"k:zset:4"}}


def test_digest_helpers():
    # The same double printed by Redis 7.0 and by Valkey 9.1.
    old = verify_mod._value_digest("zset", [[b"a", b"0.10000000000000001", b"b", b"1.0000000000000001e+300"]])
    new = verify_mod._value_digest("zset", [[b"a", b"0.1", b"b", b"1e+300"]])
    assert old == new
    assert verify_mod._value_digest("zset", [[b"a", b"0.2"]]) != verify_mod._value_digest("zset", [[b"a", b"0.1"]])
    # Hash and set digests do not depend on the order the elements arrive in.
    assert verify_mod._value_digest("hash", [[b"a", b"1", b"b", b"2"]]) == \
        verify_mod._value_digest("hash", [[b"b", b"2", b"a", b"1"]])
    assert verify_mod._value_digest("hash", [[b"a", b"12"]]) != verify_mod._value_digest("hash", [[b"a1", b"2"]])
    assert verify_mod._value_digest("list", [[b"1", b"2"]]) != verify_mod._value_digest("list", [[b"2", b"1"]])
    assert verify_mod._ttl_difference(-1, -1, 1000) is None
    assert verify_mod._ttl_difference(10_000, 9_200, 1000) is None
    assert verify_mod._ttl_difference(10_000, 5_000, 1000) is not None
    assert verify_mod._ttl_difference(10_000, -1, 1000) == "source TTL 10000 ms, target none"


def test_module_type_keys_are_not_differences(server_factory):
    # FalkorDB (shipped with Redis 8.2) serializes one graph differently on each DUMP, so equal
    # graphs cannot be told from different ones: counted as not comparable, never a difference.
    source = server_factory("redis-8.2", with_module=True)
    target = server_factory("redis-8.2", with_module=True)
    src, dst = source.client(), target.client()
    fill(src, 30)
    for name in ("g1", "g2", "g3"):
        src.execute_command("GRAPH.QUERY", name, "CREATE (:P {n:1})-[:K]->(:P {n:2})")
    copy(src, dst)
    report = verify(spec(source), spec(target))
    assert report.clean and report.keys_compared == 33 and report.not_comparable == 3
    dst.delete("g1")
    dst.delete("g2")
    dst.set("g2", "a string now")
    report = verify(spec(source), spec(target))
    assert kinds(report) == {MISSING: {b"g1"}, TYPE: {b"g2"}} and report.not_comparable == 1
    assert next(d.detail for d in report.differences if d.kind == TYPE) == "source graphdata, target string"


# -- source protection and errors ---------------------------------------------------------------


def test_rate_limit_slows_the_pass(server_factory):
    source = server_factory("valkey-9.1")
    target = server_factory("valkey-9.1")
    fill(source.client(), 300)
    copy(source.client(), target.client())
    report = verify(spec(source), spec(target), max_keys_per_second=1000, scan_count=50)
    # 300 source keys + 300 target keys (extra-key pass) at 1000 keys/s, less a 100-key burst.
    assert report.clean and report.seconds >= 0.45


def test_unreachable_side_is_named(server_factory):
    server = server_factory("valkey-9.1")
    closed = ConnectionSpec("127.0.0.1", free_port())
    with pytest.raises(UnavailableError, match=rf"^target unreachable: .*127\.0\.0\.1:{closed.port}"):
        verify(spec(server), closed, timeout=2)
    with pytest.raises(UnavailableError, match=r"^source unreachable"):
        verify(closed, spec(server), timeout=2)


# -- eve verify ---------------------------------------------------------------------------------


def test_verify_command_exit_codes_and_json(server_factory, capsys):
    source = server_factory("redis-7.0")
    target = server_factory("valkey-9.1")
    src, dst = source.client(), target.client()
    fill(src, 100)
    copy(src, dst)
    source_url = f"redis://127.0.0.1:{source.port}"
    target_url = f"redis://127.0.0.1:{target.port}"
    options = {"ttl_tolerance_ms": 1000, "max_examples": 5, "db": None, "match": None}

    assert verify_command(source_url, target_url, as_json=False, **options) == 0
    out = capsys.readouterr().out
    assert "clean: 100 keys compared" in out

    dst.delete("k:string:6")
    dst.set("k:hash:1", "now a string")
    assert verify_command(source_url, target_url, as_json=False, **options) == 1
    out = capsys.readouterr().out.splitlines()
    assert "1 missing, 0 extra, 1 different" in out[0]
    assert any("missing" in line and "k:string:6" in line for line in out[1:])

    assert verify_command(source_url, target_url, as_json=True, **options) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["clean"] is False and document["missing"] == 1 and document["different"] == 1
    assert document["keys_compared"] == 100
    assert {(e["key"], e["kind"]) for e in document["examples"]} == {("k:string:6", "missing"),
                                                                      ("k:hash:1", "type")}
    example = next(e for e in document["examples"] if e["kind"] == "missing")
    assert example["db"] == 0 and example["key_base64"] and example["detail"]

    # A db in the URL (or --db) narrows the pass; db 4 is empty on both sides.
    assert verify_command(source_url + "/4", target_url, as_json=True, **options) == 0
    assert json.loads(capsys.readouterr().out)["keys_compared"] == 0
    assert verify_command(source_url, target_url, as_json=True, **{**options, "match": "k:set:*"}) == 0
    capsys.readouterr()
    # Paced for a busy source: 100 keys at 200 keys/s take about half a second.
    started = time.monotonic()
    assert verify_command(source_url, target_url, as_json=True, **{**options, "max_keys_per_second": 200}) == 1
    assert time.monotonic() - started >= 0.3
    assert json.loads(capsys.readouterr().out)["keys_compared"] == 100
    with pytest.raises(ConfigError):
        verify_command("http://nope", target_url, as_json=True, **options)
