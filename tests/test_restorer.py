"""The restorer in-process on real servers: batches built by hand from DUMP + PTTL of a
source, applied by ``run_restorer``, checked on the target and in the Result frames."""

from __future__ import annotations

import pickle
import queue
import time
from collections.abc import Callable
from typing import Any

import pytest
import keyspace
from opentelemetry import propagate
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from servers import free_port

from eve.core import telemetry
from eve.core.endpoints import ConnectionSpec
from eve.core.enums import ConflictPolicy, DataMovementMode
from eve.core.frames import Batch, BatchHeader, Failed, Result, Stop, decode, encode
from eve.redis.cluster import classify
from eve.redis.rdb import payload_rdb_version, payload_type
from eve.redis.topology import key_slot
from restorer import RestorerOptions, run_restorer
from restorer import main as restorer_main
from restorer.policies import MERGE_SCRIPT, MERGE_TMP_TTL_MS, merge_tmp_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TYPES = keyspace.TYPES
HOUR_MS = 3_600_000


# -- helpers ------------------------------------------------------------------------------


def spec(server: Any) -> ConnectionSpec:
    return ConnectionSpec(host=server.host, port=server.port)


def options(target: Any, **kw: Any) -> RestorerOptions:
    defaults: dict[str, Any] = {"run_id": "run-1", "worker": "restorer-1", "target": spec(target),
                                "target_cluster": False, "retry_delay": 0.01, "reconnect_seconds": 2.0}
    defaults.update(kw)
    return RestorerOptions(**defaults)


def header(seq: int = 0, db: int = 0, trace_context: dict[str, str] | None = None) -> BatchHeader:
    return BatchHeader(run_id="run-1", node="127.0.0.1:1", db=db, epoch=0, seq=seq, cursor=seq + 1,
                       scanned=0, trace=trace_context or {})


def fill(client: Any, prefix: str, count: int = 60, ttl_every: int = 3) -> list[bytes]:
    """``count`` keys of every type under ``prefix`` (tests/keyspace.py's data)."""
    return keyspace.fill(client, count, prefix=prefix, ttl_every=ttl_every)


def dump_rows(client: Any, keys: list[bytes]) -> list[tuple[bytes, int, bytes]]:
    """(key, absolute expiry ms or 0, payload), as a scanner sends them."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.dump(key)
        pipe.pttl(key)
    replies = pipe.execute()
    now = int(time.time() * 1000)
    return [(key, now + ttl if ttl > 0 else 0, payload)
            for key, payload, ttl in zip(keys, replies[::2], replies[1::2])]


def assert_same(source: Any, target: Any, keys: list[bytes]) -> None:
    keyspace.assert_same(source, target, keys=set(keys))


class Batches:
    """A batches queue that runs a hook before handing out each frame (to change the
    target between batches); frames are encoded as the coordinator sends them."""

    def __init__(self, frames: list[Any], hooks: dict[int, Callable[[], None]] | None = None) -> None:
        self.frames = [encode(frame) for frame in frames]
        self.hooks = hooks or {}
        self.taken = 0

    def get(self) -> bytes:
        hook = self.hooks.get(self.taken)
        if hook:
            hook()
        frame = self.frames[self.taken]
        self.taken += 1
        return frame


def run(opts: RestorerOptions, batches: list[Batch], hooks: dict[int, Callable[[], None]] | None = None,
        **kw: Any) -> tuple[bool, list[Any]]:
    """Run the restorer over the batches and a STOP; the frames it sent back."""
    results: queue.Queue[bytes] = queue.Queue()
    ok = run_restorer(opts, Batches([*batches, Stop("coordinator")], hooks), results, **kw)
    frames = []
    while not results.empty():
        frames.append(decode(results.get_nowait()))
    return ok, frames


def results_of(frames: list[Any]) -> list[Result]:
    assert isinstance(frames[-1], Stop) and frames[-1].worker == "restorer-1", frames[-1]
    return [frame for frame in frames if isinstance(frame, Result)]


# -- every type, every engine ----------------------------------------------------------


@pytest.mark.parametrize("target_engine", ["redis-7.0", "redis-8.2", "valkey-8.1", "valkey-9.1"])
def test_every_type_restored_with_absolute_ttl(server_factory, target_engine):
    source, target = server_factory("redis-7.0"), server_factory(target_engine)
    src, dst = source.client(), target.client()
    keys = fill(src, "k")
    rows = dump_rows(src, keys)
    assert {payload_type(payload) for _, _, payload in rows} == set(TYPES)
    assert {payload_rdb_version(payload) for _, _, payload in rows} == {10}
    now = int(time.time() * 1000)
    expired = [(b"gone:1", now - 1, rows[0][2]), (b"gone:2", now - 60_000, rows[1][2])]
    batches = [Batch(header(0), rows[:25] + expired[:1]), Batch(header(1), rows[25:] + expired[1:])]

    ok, frames = run(options(target, max_pipeline=16), batches)

    assert ok
    results = results_of(frames)
    assert [r.header.seq for r in results] == [0, 1]
    assert sum(r.restored for r in results) == len(keys)
    assert sum(r.skipped for r in results) == 2
    assert sum(r.failed + r.conflicts for r in results) == 0
    assert sum(r.bytes for r in results) == sum(len(payload) for _, _, payload in rows)
    assert all(r.worker == "restorer-1" for r in results)
    assert_same(src, dst, keys)
    assert dst.exists(b"gone:1", b"gone:2") == 0  # expired in transit: not created
    assert dst.dbsize() == len(keys)


def test_db_and_ttl_options(server_factory):
    source, target = server_factory("redis-7.0"), server_factory("valkey-9.1")
    src, dst = source.client(), target.client()
    keys = fill(src, "db", count=12, ttl_every=2)
    rows = dump_rows(src, keys)

    # The last batch of a db may carry no rows (only the final cursor): it still gets a Result.
    ok, frames = run(options(target, preserve_ttl=False), [Batch(header(0, db=3), rows), Batch(header(1, db=3), [])])

    assert ok
    first, last = results_of(frames)
    assert first.restored == len(keys) and (last.header.seq, last.restored, last.failed) == (1, 0, 0)
    assert dst.dbsize() == 0
    in_db3 = target.client(db=3)
    assert in_db3.dbsize() == len(keys)
    assert all(in_db3.pttl(key) == -1 for key in keys)  # TTL preservation off


# -- conflict policies ---------------------------------------------------------------


def test_replace_overwrites(server_factory):
    source, target = server_factory("redis-7.0"), server_factory("valkey-9.1")
    src, dst = source.client(), target.client()
    keys = fill(src, "r", count=12)
    for key in keys:
        dst.set(key, b"old target value")
    dst.set(b"untouched", b"x")

    ok, frames = run(options(target, conflict=ConflictPolicy.REPLACE), [Batch(header(), dump_rows(src, keys))])

    assert ok
    result = results_of(frames)[0]
    assert (result.restored, result.conflicts, result.failed) == (len(keys), 0, 0)
    assert_same(src, dst, keys)
    assert dst.get(b"untouched") == b"x"


def test_none_keeps_target_and_reports_busykey(server_factory):
    source, target = server_factory("redis-7.0"), server_factory("redis-8.2")
    src, dst = source.client(), target.client()
    keys = fill(src, "n", count=12)
    taken = keys[:6]  # one of each type
    for key in taken:
        dst.set(key, b"target wins")
    dst.expire(taken[0], 500)

    ok, frames = run(options(target, conflict=ConflictPolicy.NONE), [Batch(header(), dump_rows(src, keys))])

    assert ok
    result = results_of(frames)[0]
    assert (result.restored, result.conflicts, result.failed) == (6, 6, 0)
    assert {(c.key, c.db, c.type, c.reason) for c in result.conflict_keys} == {
        (key, 0, kind, "BUSYKEY") for key, kind in zip(taken, TYPES)}
    assert all(dst.get(key) == b"target wins" for key in taken)
    assert 490 <= dst.ttl(taken[0]) <= 500
    assert_same(src, dst, keys[6:])


@pytest.mark.parametrize("target_engine", ["redis-7.0", "valkey-9.1"])
def test_merge_unions_hash_set_zset_source_wins(server_factory, target_engine):
    source, target = server_factory("redis-7.0"), server_factory(target_engine)
    src, dst = source.client(), target.client()
    src.hset(b"h", mapping={"shared": "source", "only-source": "1"})
    dst.hset(b"h", mapping={"shared": "target", "only-target": "2"})
    dst.expire(b"h", 900)  # the target key's TTL is kept
    src.sadd(b"{user:1}:s", "a", "b")
    dst.sadd(b"{user:1}:s", "b", "c")
    src.zadd(b"z", {"m1": 10, "m2": 2.5, "inf": float("inf")})
    dst.zadd(b"z", {"m2": 99, "m3": -1})
    src.set(b"str", b"source")
    dst.set(b"str", b"target")
    src.rpush(b"list", b"s1")
    dst.rpush(b"list", b"t1")
    src.hset(b"mismatch", "f", "v")
    dst.sadd(b"mismatch", "m")
    src.set(b"new", b"fresh")
    src.pexpire(b"new", HOUR_MS)
    keys = [b"h", b"{user:1}:s", b"z", b"str", b"list", b"mismatch", b"new"]
    rows = dump_rows(src, keys)

    def flush_scripts() -> None:
        dst.script_flush()  # the second batch must fall back to EVAL on NOSCRIPT

    dst.hset(b"h2", "t", "1")
    src.hset(b"h2", "s", "2")
    rows2 = dump_rows(src, [b"h2"])
    ok, frames = run(options(target, conflict=ConflictPolicy.MERGE),
                     [Batch(header(0), rows), Batch(header(1), rows2)], hooks={1: flush_scripts})

    assert ok
    first, second = results_of(frames)
    assert (first.restored, first.conflicts, first.failed) == (4, 3, 0)
    assert {(c.key, c.type, c.reason) for c in first.conflict_keys} == {
        (b"str", "string", "no merge semantics for string"),
        (b"list", "list", "no merge semantics for list"),
        (b"mismatch", "hash", "type differs (target set, source hash)"),
    }
    assert dst.hgetall(b"h") == {b"shared": b"source", b"only-source": b"1", b"only-target": b"2"}
    assert 890 <= dst.ttl(b"h") <= 900
    assert dst.smembers(b"{user:1}:s") == {b"a", b"b", b"c"}
    assert dst.zrange(b"z", 0, -1, withscores=True) == [
        (b"m3", -1.0), (b"m2", 2.5), (b"m1", 10.0), (b"inf", float("inf"))]
    assert dst.get(b"str") == b"target" and dst.lrange(b"list", 0, -1) == [b"t1"]
    assert dst.type(b"mismatch") == b"set"
    assert_same(src, dst, [b"new"])
    assert (second.restored, second.conflicts) == (1, 0)
    assert dst.hgetall(b"h2") == {b"t": b"1", b"s": b"2"}
    assert not list(dst.scan_iter(match=b"*eve-merge*"))  # temporary keys are gone

    # The target key vanished between BUSYKEY and the merge: the source value moves into
    # place with the source's expiry, as a plain RESTORE would have done.
    expiry = int(time.time() * 1000) + HOUR_MS
    dst.restore(b"tmp", MERGE_TMP_TTL_MS, rows[0][2], replace=True)
    assert dst.eval(MERGE_SCRIPT, 2, b"vanished", b"tmp", expiry) == [2, b"restored"]
    assert dst.hgetall(b"vanished") == src.hgetall(b"h") and not dst.exists(b"tmp")
    assert abs(dst.pexpiretime(b"vanished") - expiry) <= 1


def test_merge_tmp_key_stays_in_the_key_slot():
    for key in [b"plain", b"{tag}rest", b"a{b}c{d}", b"{}empty-tag", b"a}b", b"x{y", b"}{", b"{a}}", b""]:
        tmp = merge_tmp_key(key, "restorer-2")
        assert key_slot(tmp) == key_slot(key), key
        assert tmp != key and b"restorer-2" in tmp


def test_classify():
    assert classify("BUSYKEY Target key name already exists.")[0] == "busykey"
    kind, reason = classify("ERR DUMP payload version or checksum are wrong")
    assert kind == "permanent" and reason.startswith("target refused the DUMP payload")
    assert classify("ERR Bad data format")[0] == "permanent"
    kind, reason = classify("OOM command not allowed when used memory > 'maxmemory'.")
    assert kind == "transient" and reason.startswith("target out of memory (maxmemory): OOM")
    for message in ("LOADING Redis is loading", "BUSY Redis is busy running a script", "TRYAGAIN x"):
        assert classify(message)[0] == "transient"
    assert classify("MOVED 3999 127.0.0.1:6381")[0] == "moved"
    assert classify("ASK 3999 127.0.0.1:6381")[0] == "ask"
    assert classify("ERR something else") == ("permanent", "ERR something else")


def test_options_are_picklable():
    opts = RestorerOptions(run_id="r", worker="restorer-3", target=ConnectionSpec("h", 1, password="secret"),
                           target_cluster=True, mirrors=((ConnectionSpec("m", 2), False),),
                           conflict=ConflictPolicy.MERGE)
    assert pickle.loads(pickle.dumps(opts)) == opts
    assert "secret" not in repr(opts)


# -- error keys -------------------------------------------------------------------------


def test_refused_payload_becomes_error_keys_and_the_batch_goes_on(server_factory):
    """DUMP_RESTORE: Redis 8.2 payloads of plain types are relabelled for Valkey 8.1 and restored;
    the module key the target refuses is an error key naming both formats and the server's reply."""
    old, new = server_factory("redis-7.0"), server_factory("redis-8.2", with_module=True)
    target = server_factory("valkey-8.1")
    old_keys = fill(old.client(), "old", count=6)
    new_keys = fill(new.client(), "new", count=6)
    new.client().execute_command("GRAPH.QUERY", "graph", "CREATE (:A {x: 1})")
    new_rows = dump_rows(new.client(), new_keys + [b"graph"])
    assert {payload_rdb_version(payload) for _, _, payload in new_rows} == {12}
    rows = [row for pair in zip(dump_rows(old.client(), old_keys), new_rows) for row in pair] + new_rows[-1:]

    ok, frames = run(options(target, mode=DataMovementMode.DUMP_RESTORE), [Batch(header(0, db=0), rows)])

    assert ok
    result = results_of(frames)[0]
    assert (result.restored, result.failed, result.conflicts) == (12, 1, 0)
    [error] = result.error_keys
    payload = new_rows[-1][2]
    assert (error.key, error.type, error.db, error.attempts, error.size) == (b"graph", "module", 0, 1, len(payload))
    assert error.node == f"{target.host}:{target.port}"
    assert error.reason.startswith("target valkey 8.1.8 (RDB 11) cannot restore the module-2 (7) payload of "
                                   "RDB 12: ERR ")
    assert error.reason.endswith("(mode DUMP_RESTORE has no logical fallback)")
    assert_same(old.client(), target.client(), old_keys)
    assert_same(new.client(), target.client(), new_keys)
    assert target.client().dbsize() == 12


def test_out_of_memory_is_retried_then_an_error_key(server_factory):
    source = server_factory("redis-7.0")
    target = server_factory("redis-7.0", extra_args=["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"])
    src = source.client()
    keys = [b"big:%03d" % i for i in range(120)]
    src.mset({key: b"x" * 4000 for key in keys})
    rows = dump_rows(src, keys)

    ok, frames = run(options(target, max_attempts=3, max_pipeline=20), [Batch(header(), rows)])

    assert ok
    result = results_of(frames)[0]
    assert result.restored > 0 and result.failed > 0
    assert result.restored + result.failed == len(keys)
    for error in result.error_keys:
        assert error.reason.startswith("target out of memory (maxmemory): OOM"), error.reason
        assert error.attempts == 3 and error.type == "string"
    restored = [key for key in keys if key not in {e.key for e in result.error_keys}]
    assert target.client().dbsize() == len(restored)
    assert_same(src, target.client(), restored)


# -- cluster and mirror targets ------------------------------------------------------------


def test_cluster_target_groups_per_node_and_follows_moved_and_ask(server_factory, cluster_factory):
    source = server_factory("redis-7.0")
    cluster = cluster_factory("valkey-9.1", masters=3)
    src = source.client()
    keys = fill(src, "c", count=90) + fill(src, "{tag}", count=12)
    a, b = cluster.masters[0].client(), cluster.masters[1].client()
    b_id = b.execute_command("CLUSTER", "MYID").decode()
    a_id = a.execute_command("CLUSTER", "MYID").decode()
    # Two empty slots of the first master: one moves to the second master after the
    # restorer read the slot map (MOVED), one is being migrated there (ASK).
    moved_key, asked_key = _key_in_slot_of(0, "moved"), _key_in_slot_of(0, "asked")
    moved_slot, asked_slot = key_slot(moved_key), key_slot(asked_key)
    for key in (moved_key, asked_key):
        src.hset(key, mapping={"f": key})
    dst = cluster.client()
    # MERGE on a cluster: the temporary key must share the key's slot.
    src.hset(b"merge:h", mapping={"s": "1"})
    dst.hset(b"merge:h", mapping={"t": "2"})

    def move_slots() -> None:
        a.execute_command("CLUSTER", "SETSLOT", moved_slot, "NODE", b_id)
        if key_slot(moved_key) not in _own_slots(b):  # the news may have reached b already
            b.execute_command("CLUSTER", "SETSLOT", moved_slot, "NODE", b_id)
        b.execute_command("CLUSTER", "SETSLOT", asked_slot, "IMPORTING", a_id)
        a.execute_command("CLUSTER", "SETSLOT", asked_slot, "MIGRATING", b_id)

    batches = [Batch(header(0), dump_rows(src, keys)),
               Batch(header(1), dump_rows(src, [moved_key, asked_key, b"merge:h"]))]
    ok, frames = run(options(cluster.masters[2], target_cluster=True, conflict=ConflictPolicy.MERGE),
                     batches, hooks={1: move_slots})

    assert ok
    first, second = results_of(frames)
    assert (first.restored, first.failed) == (len(keys), 0)
    assert (second.restored, second.failed, second.conflicts) == (3, 0, 0), second
    assert_same(src, dst, keys)
    sizes = [master.client().dbsize() for master in cluster.masters]
    assert all(size > 0 for size in sizes) and sum(sizes) == len(keys) + 3
    for slot in (moved_slot, asked_slot):  # both keys landed on the second master
        assert b.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
        assert a.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    assert dst.hgetall(b"merge:h") == {b"s": b"1", b"t": b"2"}

    # A cluster has only db 0: rows of another db are error keys, not written to db 0.
    ok, frames = run(options(cluster.masters[0], target_cluster=True), [Batch(header(0, db=2), batches[1].rows)])
    result = results_of(frames)[0]
    assert ok and result.failed == 3 and "only db 0" in result.error_keys[0].reason


def _own_slots(client: Any) -> set[int]:
    port = client.connection_pool.connection_kwargs["port"]
    return {slot for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS")
            if int(master[1]) == port for slot in range(int(start), int(end) + 1)}


def _key_in_slot_of(master: int, name: str) -> bytes:
    """A key whose slot belongs to the master'th third of the slots (start_cluster's split)."""
    low, high = master * 16384 // 3, (master + 1) * 16384 // 3 - 1
    n = 0
    while not low <= key_slot(b"%s:%d" % (name.encode(), n)) <= high:
        n += 1
    return b"%s:%d" % (name.encode(), n)


def test_mirror_receives_the_same_keys_and_reports_its_own_failures(server_factory):
    old, newer = server_factory("redis-7.0"), server_factory("valkey-8.1")
    target, mirror = server_factory("valkey-9.1"), server_factory("redis-7.0")
    old_keys = fill(old.client(), "old", count=12)
    newer_keys = fill(newer.client(), "newer", count=6)
    rows = dump_rows(old.client(), old_keys) + dump_rows(newer.client(), newer_keys)
    exporter = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    tel = telemetry.setup("eve-restorer-test", span_exporter=exporter, metric_reader=reader, set_global=False)
    scanner_tracer = tel.tracer("scanner")
    with scanner_tracer.start_as_current_span("scan batch") as scan_span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)

    ok, frames = run(options(target, mirrors=((spec(mirror), False),), mode=DataMovementMode.DUMP_RESTORE),
                     [Batch(header(0, trace_context=carrier), rows)],
                     tracer=tel.tracer("eve.restorer"), meter=tel.meter("eve.restorer"))

    assert ok
    result = results_of(frames)[0]
    # Counts are the primary target's; the mirror's failures are added to failed. Redis 7.0 (RDB 10)
    # takes the Valkey 8.1 payloads relabelled, but for set-listpack (20) and stream-listpacks-3 (21).
    refused = [key for key in newer_keys if key.split(b":")[1] in (b"set", b"stream")]
    assert len(refused) == 2
    assert (result.restored, result.failed) == (len(rows), len(refused))
    mirror_address = f"{mirror.host}:{mirror.port}"
    assert {(e.key, e.node) for e in result.error_keys} == {(key, mirror_address) for key in refused}
    assert_same(old.client(), target.client(), old_keys)
    assert_same(newer.client(), target.client(), newer_keys)
    assert_same(old.client(), mirror.client(), old_keys)
    assert_same(newer.client(), mirror.client(), set(newer_keys) - set(refused))
    assert mirror.client().dbsize() == len(rows) - len(refused)
    spans = [span for span in exporter.get_finished_spans() if span.name == "restore batch"]
    assert len(spans) == 1
    span = spans[0]
    # A child of the scan batch whose frame it applied: one trace per job (issue 24).
    assert span.parent.span_id == scan_span.get_span_context().span_id
    assert span.context.trace_id == scan_span.get_span_context().trace_id
    assert span.attributes["eve.keys"] == len(rows) and span.attributes["eve.failed"] == len(refused)
    counters = {metric.name: sum(point.value for point in metric.data.data_points)
                for resource in reader.get_metrics_data().resource_metrics
                for scope in resource.scope_metrics for metric in scope.metrics}
    assert counters["eve.restorer.keys"] == len(rows) and counters["eve.restorer.errors"] == len(refused)
    assert counters["eve.restorer.bytes"] == result.bytes > 0
    tel.shutdown()


# -- lost targets ----------------------------------------------------------------------


def test_unreachable_target_fails_naming_the_address():
    port = free_port()
    opts = RestorerOptions(run_id="run-1", worker="restorer-1", target=ConnectionSpec("127.0.0.1", port),
                           target_cluster=False, reconnect_seconds=0.3)
    results: queue.Queue[bytes] = queue.Queue()
    batches: queue.Queue[bytes] = queue.Queue()
    batches.put(encode(Batch(header(), [(b"k", 0, b"\x00")])))
    batches.put(encode(Stop("coordinator")))
    started = time.monotonic()
    assert run_restorer(opts, batches, results) is False
    assert time.monotonic() - started < 5
    failed = decode(results.get_nowait())
    assert isinstance(failed, Failed) and failed.worker == "restorer-1" and failed.who == "target"
    assert f"127.0.0.1:{port}" in failed.reason
    assert results.empty()


def test_connection_lost_mid_run_is_reopened_then_a_dead_target_fails(server_factory):
    source, target = server_factory("redis-7.0"), server_factory("valkey-9.1")
    src, dst = source.client(), target.client()
    keys = fill(src, "lost", count=30)
    rows = dump_rows(src, keys)

    def kill_restorer_connection() -> None:
        clients = [c for c in dst.client_list() if c["name"] == "eve-restorer-1"]
        assert clients
        for client in clients:
            dst.client_kill_filter(_id=client["id"])

    ok, frames = run(options(target, max_pipeline=10),
                     [Batch(header(0), rows[:10]), Batch(header(1), rows[10:])],
                     hooks={1: kill_restorer_connection})
    assert ok
    assert sum(r.restored for r in results_of(frames)) == len(keys)
    assert_same(src, dst, keys)

    ok, frames = run(options(target, reconnect_seconds=0.3),
                     [Batch(header(0), rows[:5]), Batch(header(1), rows[5:])], hooks={1: target.stop})
    assert not ok
    assert isinstance(frames[0], Result) and frames[0].restored == 5
    assert isinstance(frames[-1], Failed) and frames[-1].who == "target"
    assert f"{target.host}:{target.port}" in frames[-1].reason


def test_main_in_a_spawned_process(server_factory):
    import multiprocessing

    source, target = server_factory("redis-7.0"), server_factory("valkey-8.1")
    keys = fill(source.client(), "spawn", count=12)
    context = multiprocessing.get_context("spawn")
    batches, results = context.Queue(4), context.Queue()
    process = context.Process(target=restorer_main, args=(options(target), batches, results), name="restorer-1")
    process.start()
    try:
        batches.put(encode(Batch(header(), dump_rows(source.client(), keys))))
        batches.put(encode(Stop("coordinator")))
        result, stop = decode(results.get(timeout=30)), decode(results.get(timeout=30))
        process.join(30)
    finally:
        if process.is_alive():
            process.kill()
            process.join()
    assert isinstance(result, Result) and result.restored == len(keys)
    assert stop == Stop("restorer-1") and process.exitcode == 0
    assert_same(source.client(), target.client(), keys)


# -- the job's own writes, restarted targets --------------------------------------------


def _with_big_values(src: Any, keys: list[bytes]) -> list[bytes]:
    """Big sets and hashes (hashtable-encoded: their DUMP follows the server's own table order,
    so two servers serialize one value differently) besides the small ones."""
    src.sadd(b"big:set", *[f"member:{i}" for i in range(700)])
    src.hset(b"big:hash", mapping={f"field:{i}": f"value:{i}" for i in range(700)})
    src.zadd(b"big:zset", {f"member:{i}": i / 3 for i in range(700)})
    src.pexpire(b"big:hash", HOUR_MS)
    return [*keys, b"big:set", b"big:hash", b"big:zset"]


@pytest.mark.parametrize("target_engine", ["redis-7.0", "valkey-9.1"])
def test_none_counts_the_jobs_own_writes_as_restored(server_factory, target_engine):
    """A batch sent again (after a lost connection or a killed restorer) finds the keys it
    restored the first time: those are not conflicts. redis-7.0: the target's DUMP equals the
    payload; valkey-9.1: it never does (another RDB version), the comparison goes through the
    payload restored into a temporary key."""
    source, target = server_factory("redis-7.0"), server_factory(target_engine)
    src, dst = source.client(), target.client()
    keys = _with_big_values(src, fill(src, "own", count=48))
    ok, frames = run(options(target, conflict=ConflictPolicy.NONE), [Batch(header(0), dump_rows(src, keys))])
    assert ok and results_of(frames)[0].restored == len(keys)

    time.sleep(0.01)  # the rows sent again carry expiries computed again, a few ms apart
    ok, frames = run(options(target, conflict=ConflictPolicy.NONE), [Batch(header(0), dump_rows(src, keys))])
    assert ok
    again = results_of(frames)[0]
    assert (again.restored, again.conflicts, again.failed) == (len(keys), 0, 0), again.conflict_keys[:3]
    assert again.bytes == sum(len(payload) for _, _, payload in dump_rows(src, keys))

    # Real conflicts stay conflicts: another value, or the same value with another expiry.
    dst.set(keys[0], b"someone else's")
    dst.sadd(b"big:set", "one more")
    dst.pexpire(keys[1], 5000)
    dst.persist(b"big:hash")
    ok, frames = run(options(target, conflict=ConflictPolicy.NONE), [Batch(header(0), dump_rows(src, keys))])
    assert ok
    third = results_of(frames)[0]
    assert {c.key for c in third.conflict_keys} == {keys[0], keys[1], b"big:set", b"big:hash"}
    assert (third.restored, third.conflicts) == (len(keys) - 4, 4)
    assert dst.get(keys[0]) == b"someone else's"
    assert not list(dst.scan_iter(match=b"*eve-compare*")), "temporary keys are gone"


def test_merge_does_not_report_its_own_unmergeable_writes(server_factory):
    source, target = server_factory("redis-7.0"), server_factory("valkey-9.1")
    src, dst = source.client(), target.client()
    keys = fill(src, "merge-own", count=24)
    batch = [Batch(header(0), dump_rows(src, keys))]
    assert results_of(run(options(target, conflict=ConflictPolicy.MERGE), batch)[1])[0].restored == len(keys)
    dst.rpush(keys[2], b"a target element")  # a list: no merge semantics, and no longer the source's
    ok, frames = run(options(target, conflict=ConflictPolicy.MERGE), [Batch(header(0), dump_rows(src, keys))])
    assert ok
    result = results_of(frames)[0]
    assert (result.restored, result.conflicts) == (len(keys) - 1, 1)
    assert [(c.key, c.reason) for c in result.conflict_keys] == [(keys[2], "no merge semantics for list")]


def test_restarted_target_is_reported_not_gone_over(server_factory):
    source, target = server_factory("redis-7.0"), server_factory("valkey-9.1")
    src = source.client()
    keys = fill(src, "restart", count=30)
    rows = dump_rows(src, keys)
    before = target.client().info("server")["run_id"]

    def restart_target() -> None:
        target.kill()
        target.start()

    ok, frames = run(options(target), [Batch(header(0), rows[:10]), Batch(header(1), rows[10:])],
                     hooks={1: restart_target})
    assert not ok
    assert [type(frame).__name__ for frame in frames] == ["Result", "Restarted"]
    restarted = frames[-1]
    after = target.client().info("server")["run_id"]
    assert (restarted.worker, restarted.who, restarted.role) == ("restorer-1", "target", "target")
    assert (restarted.address, restarted.before, restarted.after) == (f"{target.host}:{target.port}", before, after)
    assert target.client().dbsize() == 0, "the batch after the restart was not applied"

    # A restorer started later, told which server the job wrote to, reports it before any batch.
    ok, frames = run(options(target, server_run_ids={f"{target.host}:{target.port}": before}),
                     [Batch(header(0), rows)])
    assert not ok and len(frames) == 1 and (frames[0].before, frames[0].after) == (before, after)
    # Told the server it is now, it restores.
    ok, frames = run(options(target, server_run_ids=((f"{target.host}:{target.port}", after),)),
                     [Batch(header(0), rows)])
    assert ok and results_of(frames)[0].restored == len(keys)
