"""Keyspace analysis and the test run of the Prepare step (DESIGN.md section 7),
against real servers."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from keyspace import TYPES, fill

from eve.core.endpoints import EndpointConfig, parse_config
from eve.core.enums import DataMovementMode
from eve.prepare import testrun
from eve.prepare.analysis import TTL_BUCKETS, analyze, ttl_bucket

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BIG_KEY = b"big:\xffblob"


def endpoint(server) -> EndpointConfig:
    return parse_config({"target": {"host": server.host, "port": server.port}})


def types_of(analysis, db: int = 0) -> dict[str, int]:
    stats = next(d for d in analysis.dbs if d.db == db)
    return {t.type: t.keys for t in stats.types}


def scratch_keys(client) -> list[bytes]:
    return list(client.scan_iter(match=testrun.SCRATCH_PREFIX + "*", count=1000))


def test_ttl_buckets():
    assert [ttl_bucket(ms) for ms in (-1, 0, 59_999, 60_000, 3_599_999, 3_600_000, 86_399_999, 86_400_000)] == \
        ["none", "<1m", "<1m", "1m-1h", "1m-1h", "1h-1d", "1h-1d", ">1d"]


def test_analysis_counts_big_keys_and_ttls(server_factory):
    server = server_factory("redis-7.0")
    client = server.client()
    fill(client, 600, ttl_every=5)                   # 100 keys of each type; 120 with a 1-2 h TTL
    client.set(BIG_KEY, b"x" * (1 << 20))            # one 1 MB string among small keys
    client.set("short", 1, px=30_000)                # < 1 minute
    client.set("long", 1, ex=3 * 86_400)             # > 1 day
    fill(server.client(db=3), 30, prefix="other", ttl_every=0)

    analysis = analyze(endpoint(server), big_keys=3)
    assert not analysis.sampled and analysis.sampled_keys == 633
    assert [(d.db, d.keys, d.keys_with_ttl) for d in analysis.dbs] == [(0, 603, 122), (3, 30, 0)]
    assert types_of(analysis) == {"string": 103, "hash": 100, "list": 100, "set": 100, "zset": 100,
                                  "stream": 100}
    assert types_of(analysis, 3) == {kind: 5 for kind in TYPES}
    assert dict(analysis.ttl_distribution) == {"none": 633 - 122, "<1m": 1, "1m-1h": 0, "1h-1d": 120, ">1d": 1}
    assert [bucket for bucket, _ in analysis.ttl_distribution] == list(TTL_BUCKETS)
    biggest = analysis.big_keys[0]
    assert (biggest.key, biggest.type, biggest.db) == (BIG_KEY, "string", 0)
    assert biggest.memory_bytes >= 1 << 20 and biggest.key_text == "big:\\xffblob"
    assert len(analysis.big_keys) == 3 and biggest.memory_bytes > analysis.big_keys[1].memory_bytes
    strings = next(t for t in analysis.dbs[0].types if t.type == "string")
    assert strings.memory_bytes > 1 << 20
    assert analysis.module_types == () and analysis.used_memory_bytes > 1 << 20
    json.dumps(analysis.to_dict())

    # A small sample: counts are extrapolated from INFO keyspace, close to the real ones.
    sampled = analyze(endpoint(server), sample_limit=400, scan_count=50)
    assert sampled.sampled and sampled.sampled_keys == 400 + 30
    assert [(d.db, d.keys, d.keys_with_ttl) for d in sampled.dbs] == [(0, 603, 122), (3, 30, 0)]
    counts = types_of(sampled)
    assert set(counts) == set(TYPES)
    assert abs(sum(counts.values()) - 603) <= 6
    assert all(50 <= n <= 160 for n in counts.values()), counts
    assert abs(sum(n for _, n in sampled.ttl_distribution) - 633) <= 8


def test_module_types_and_test_run_of_a_module_key(server_factory):
    server = server_factory("redis-8.2", with_module=True)
    client = server.client()
    client.execute_command("GRAPH.QUERY", "g", "CREATE (:P {n:1})")
    fill(client, 60)
    analysis = analyze(endpoint(server))
    assert analysis.module_types == ("graphdata",)
    assert types_of(analysis)["graphdata"] == 1

    # Into the same server: the graph's copy is compared by its DUMP payload.
    before = client.dbsize()
    report = testrun.test_run(endpoint(server), endpoint(server), run_id="mod", sample=20)
    results = {r.type: r for r in report.results}
    assert results["graphdata"].ok == 1 and set(results) == {"graphdata", *TYPES}
    assert report.errors == () and report.keys == 20
    assert client.dbsize() == before and scratch_keys(client) == []


def test_test_run_all_ok_and_scratch_keys_removed(server_factory):
    source, target = server_factory("redis-7.0"), server_factory("valkey-9.1")
    fill(source.client(), 600)
    fill(source.client(db=2), 12, prefix="db2")
    target.client().set("already-there", 1)

    report = testrun.test_run(endpoint(source), endpoint(target), run_id="run-1", sample=60)
    assert report.errors == ()
    assert report.keys == 60
    assert {r.type for r in report.results} == set(TYPES)
    assert all(r.ok == r.keys and r.failed == 0 and r.keys >= 5 for r in report.results), report.results
    assert report.total_keys == 612 and report.keys_per_second > 0
    assert report.estimated_seconds == pytest.approx(612 / report.keys_per_second, rel=0.01)
    assert target.client().dbsize() == 1 and scratch_keys(target.client()) == []
    json.dumps(asdict(report))


@pytest.mark.parametrize(("source_engine", "target_engine"), [("redis-8.2", "valkey-9.1"), ("valkey-9.1", "redis-7.0")])
def test_test_run_takes_the_bulk_copys_path_in_auto(server_factory, source_engine, target_engine):
    """AUTO: every payload relabelled for the target's format; towards Redis 7.0 (RDB 10) set-listpack
    and stream-listpacks-3 are copied logically. Every sampled key arrives and reads back equal."""
    source, target = server_factory(source_engine), server_factory(target_engine)
    fill(source.client(), 120)
    report = testrun.test_run(endpoint(source), endpoint(target), run_id="auto", sample=30, total_keys=1000)
    assert report.errors == ()
    assert {r.type: (r.keys, r.ok, r.failed) for r in report.results} == {kind: (5, 5, 0) for kind in TYPES}
    logical = {"set", "stream"} if target_engine == "redis-7.0" else set()
    assert {r.type: (r.transcoded, r.logical) for r in report.results} == {
        kind: (0, 5) if kind in logical else (5, 0) for kind in TYPES}
    assert report.total_keys == 1000
    assert target.client().dbsize() == 0


def test_test_run_reports_refused_payloads_per_type(server_factory):
    """DUMP_RESTORE: no logical copy, so what Redis 7.0 cannot read fails, with the target's reason;
    LOGICAL: every key copied logically."""
    source, target = server_factory("redis-8.2"), server_factory("redis-7.0")
    fill(source.client(), 120)
    report = testrun.test_run(endpoint(source), endpoint(target), run_id="refused", sample=30, total_keys=1000,
                              mode=DataMovementMode.DUMP_RESTORE)
    assert {r.type: (r.keys, r.ok, r.failed) for r in report.results} == {
        kind: (5, 0, 5) if kind in ("set", "stream") else (5, 5, 0) for kind in TYPES}
    assert len(report.errors) == 10
    assert all("payload version or checksum" in error for error in report.errors)
    logical = testrun.test_run(endpoint(source), endpoint(target), run_id="logical", sample=30,
                               mode=DataMovementMode.LOGICAL)
    assert logical.errors == () and {(r.ok, r.logical) for r in logical.results} == {(5, 5)}
    assert target.client().dbsize() == 0


def test_cluster_target_and_cluster_analysis(server_factory, cluster_factory):
    source = server_factory("redis-7.0")
    cluster = cluster_factory("valkey-9.1", masters=3)
    fill(source.client(), 120)

    report = testrun.test_run(endpoint(source), endpoint(cluster), run_id="c", sample=40)
    assert report.errors == () and report.keys == 40
    assert sum(r.ok for r in report.results) == 40
    assert sum(master.client().dbsize() for master in cluster.masters) == 0

    # The cluster as a source: every master is analyzed, db 0 only.
    client = cluster.client()
    fill(client, 90, ttl_every=0, binary=False)
    analysis = analyze(endpoint(cluster))
    assert [(d.db, d.keys) for d in analysis.dbs] == [(0, 90)]
    assert types_of(analysis) == {kind: 15 for kind in TYPES}
    client.close()


def test_test_run_tells_keys_changed_on_the_source_from_keys_the_target_got_wrong(server_factory, monkeypatch):
    """Issue 24: a key written on the source between its copy and its verification changed there
    (re-read: the source moved on), which is no failure; a copy that differs from an unchanged
    source key is one (refused or corrupted by the target). Each said in words."""
    source, target = server_factory("redis-7.0"), server_factory("redis-7.0")
    source.client().mset({f"k:{i}": "0" for i in range(20)})
    written, corrupted = {f"k:{i}".encode() for i in range(6)}, b"k:19"
    verify = testrun._verify

    def writes_meanwhile(entries, sources, targets):
        for key in written:
            source.client().incr(key)
        scratch = next(entry.scratch for entry in entries if entry.key == corrupted)
        target.client().set(scratch, "corrupt", px=60_000)
        verify(entries, sources, targets)

    monkeypatch.setattr(testrun, "_verify", writes_meanwhile)
    report = testrun.test_run(endpoint(source), endpoint(target), run_id="moving", sample=20)
    (strings,) = report.results
    assert (strings.keys, strings.ok, strings.changed, strings.failed) == (20, 13, 6, 1)
    assert len(report.changed) == 6 and all("changed on the source while being verified" in line
                                            for line in report.changed)
    assert report.errors == (("string key 'k:19' (db 0): the copy differs from the source key, which did not "
                              "change: the target refused or corrupted it"),)
    assert report.summary() == ("13 keys copied and verified; 6 changed on the source while being verified (written "
                                "meanwhile: re-read, not a failure; the copy carries their new value); 1 failed: "
                                "refused or corrupted by the target")
    assert target.client().dbsize() == 0


def test_test_run_under_concurrent_writes_reports_no_failure(server_factory):
    """An application incrementing every key while the test run copies and verifies them: every
    key is verified or changed on the source, none failed."""
    import threading

    import redis as redis_py

    source, target = server_factory("redis-7.0"), server_factory("redis-7.0")
    keys = [f"counter:{i}" for i in range(100)]
    source.client().mset({key: 0 for key in keys})
    stop = threading.Event()

    def application() -> None:
        client = redis_py.Redis(host=source.host, port=source.port)
        while not stop.is_set():
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.incr(key)
            pipe.execute()

    writer = threading.Thread(target=application, daemon=True)
    writer.start()
    try:
        report = testrun.test_run(endpoint(source), endpoint(target), run_id="busy", sample=100)
    finally:
        stop.set()
        writer.join(timeout=10)
    (counters,) = report.results
    assert counters.failed == 0 and report.errors == (), report.errors
    assert counters.ok + counters.changed == counters.keys == 100
    assert "no failure on the target" in report.summary()
