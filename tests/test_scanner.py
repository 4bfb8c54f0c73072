"""The scanner worker against real servers: SCAN + DUMP + PTTL into BATCH frames.

run_scanner runs in-process (in a thread where a bounded queue needs a
consumer); main() once in a spawned process, as the coordinator starts it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import re
import threading
import time
from collections import Counter

import hiredis
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from servers import engine_names, free_port

from eve.core import telemetry
from eve.core.endpoints import ConnectionSpec
from eve.core.errors import ConfigError
from eve.core.frames import Batch, Failed, Restarted, Stop, decode
from eve.redis.topology import cluster_masters, key_slot, node_spec
from eve.redis.wire import FastConnection
from scanner import ScannerOptions, main, run_scanner
from scanner.worker import (
    DECREASE_INTERVAL,
    DEPTH_INCREASE_PER_SECOND,
    MIN_DEPTH,
    MIN_SHARE,
    SHARE_INCREASE_PER_SECOND,
    LatencyBudget,
    LatencyGuard,
    TokenBucket,
    rows_from_replies,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class Sink:
    """An unbounded queue: collects frames, decoded."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []

    def put(self, frame: bytes) -> None:
        self.raw.append(frame)

    @property
    def frames(self) -> list:
        return [decode(frame) for frame in self.raw]


def options_for(server, **kw) -> ScannerOptions:
    spec = ConnectionSpec(server.host, server.port, password=server.password)
    address = f"{server.host}:{server.port}"
    values = dict(run_id="run-1", worker=f"scanner node={address}", source=spec, node=address, dbs=(0,),
                  reconnect_seconds=2.0)
    values.update(kw)
    return ScannerOptions(**values)


def scan(server, **kw) -> tuple[bool, list]:
    sink = Sink()
    ok = run_scanner(options_for(server, **kw), sink)
    return ok, sink.frames


def batches_of(frames: list) -> list[Batch]:
    assert isinstance(frames[-1], Stop), frames[-1]
    assert all(isinstance(frame, Batch) for frame in frames[:-1])
    return frames[:-1]


def rows_by_key(batches: list[Batch]) -> dict[bytes, tuple[int, bytes]]:
    counts = Counter(key for batch in batches for key, _, _ in batch.rows)
    assert not [key for key, n in counts.items() if n != 1], "a key was emitted more than once"
    return {key: (expiry, payload) for batch in batches for key, expiry, payload in batch.rows}


def snapshot(client, key: bytes):
    kind = client.type(key)
    read = {
        b"string": client.get,
        b"list": lambda k: client.lrange(k, 0, -1),
        b"set": client.smembers,
        b"zset": lambda k: client.zrange(k, 0, -1, withscores=True),
        b"hash": client.hgetall,
        b"stream": lambda k: client.xrange(k),
    }[kind]
    return kind, read(key)


@pytest.fixture
def source(server_factory):
    """A standalone server of the first selected engine, for tests that need just one."""
    return server_factory(engine_names()[0])


def fill_every_type(client, prefix: str = "") -> dict[bytes, int]:
    """Keys of every core type; returns key -> TTL in ms (0 = none)."""
    ttls: dict[bytes, int] = {}
    for i in range(40):
        key = f"{prefix}str:{i}".encode()
        client.set(key, f"value-{i}" * (i % 5 + 1))
        ttls[key] = 0
    binary = prefix.encode() + b"bin:\x00\xff\r\n key"
    client.set(binary, b"\x00\x01\x02")
    ttls[binary] = 0
    client.rpush(f"{prefix}list", *[f"item{i}" for i in range(50)])
    client.sadd(f"{prefix}set", *[f"m{i}" for i in range(30)])
    client.zadd(f"{prefix}zset", {f"z{i}": i / 3 for i in range(30)})
    client.hset(f"{prefix}hash", mapping={f"f{i}": f"v{i}" for i in range(30)})
    client.xadd(f"{prefix}stream", {"a": "1"})
    client.xadd(f"{prefix}stream", {"b": "2"})
    for name in ("list", "set", "zset", "hash", "stream"):
        ttls[f"{prefix}{name}".encode()] = 0
    for i in range(10):
        key = f"{prefix}ttl:{i}".encode()
        client.set(key, "expiring", px=60_000 + i * 1000)
        ttls[key] = 60_000 + i * 1000
    client.hset(f"{prefix}hash-ttl", "f", "v")
    client.pexpire(f"{prefix}hash-ttl", 120_000)
    ttls[f"{prefix}hash-ttl".encode()] = 120_000
    return ttls


# --------------------------------------------------------------------------- the bulk path


def test_every_key_once_with_payload_and_expiry(redis_server, engine):
    client = redis_server.client()
    ttls = fill_every_type(client)
    started_ms = int(time.time() * 1000)
    # Small COUNT and pipeline: many batches, SCAN replies split into several round trips.
    ok, frames = scan(redis_server, count=7, max_pipeline=3)
    assert ok
    batches = batches_of(frames)
    rows = rows_by_key(batches)
    assert set(rows) == set(ttls)

    assert [batch.header.seq for batch in batches] == list(range(len(batches)))
    assert [batch.header.last for batch in batches] == [False] * (len(batches) - 1) + [True]
    assert batches[-1].header.cursor == 0 and all(batch.header.cursor for batch in batches[:-1])
    assert sum(batch.header.scanned for batch in batches) == len(ttls)
    for batch in batches:
        assert batch.header.node == f"{redis_server.host}:{redis_server.port}"
        assert (batch.header.run_id, batch.header.db, batch.header.epoch) == ("run-1", 0, 0)
        assert batch.header.scanned == len(batch.rows) and batch.header.skipped == 0

    # The payloads are the values: RESTORE them (into db 1) and compare.
    restored = redis_server.client(db=1)
    for key, (expiry, payload) in rows.items():
        if ttls[key]:
            assert abs(expiry - (started_ms + ttls[key])) <= 1000, (key, expiry)
        else:
            assert expiry == 0, key
        restored.execute_command("RESTORE", key, expiry, payload, "ABSTTL")
    for key in ttls:
        assert snapshot(restored, key) == snapshot(client, key), key
        if ttls[key]:
            assert abs(restored.pttl(key) - client.pttl(key)) <= 1000, key
        else:
            assert restored.pttl(key) == -1, key


def test_rows_from_replies_vanished_expiring_and_errors():
    now = 1_700_000_000_000
    error = hiredis.ReplyError("ERR cannot dump this")
    keys = [b"plain", b"ttl", b"gone", b"dump-nil", b"expiring", b"broken", b"pttl-error"]
    replies = [b"p1", -1, b"p2", 5000, b"p3", -2, None, 100, b"p5", 0, error, -1, b"p7", error]
    rows, skipped, errors = rows_from_replies(keys, replies, now, True)
    # PTTL 0: about to expire, still sent with an expiry of now (the restorer decides).
    assert rows == [(b"plain", 0, b"p1"), (b"ttl", now + 5000, b"p2"), (b"expiring", now, b"p5")]
    assert skipped == 4
    assert errors == [(b"broken", error), (b"pttl-error", error)]

    fast = rows_from_replies([b"a", b"b"], [b"pa", 10, b"pb", -1], now, True)
    assert fast == ([(b"a", now + 10, b"pa"), (b"b", 0, b"pb")], 0, [])
    no_ttl = rows_from_replies([b"a", b"b", b"c"], [b"pa", None, error], now, False)
    assert no_ttl == ([(b"a", 0, b"pa")], 2, [(b"c", error)])


def test_keys_vanishing_between_scan_and_dump_are_skipped(source):
    client = source.client()
    with client.pipeline(transaction=False) as pipe:
        for i in range(50):
            pipe.set(f"short:{i}", "v", px=250)
        pipe.execute()
    # 100 keys/s: the 50 keys SCAN returns at once are read 10 per 0.1 s, so
    # the last ones are read after their 250 ms expired: PTTL -2 / DUMP nil.
    ok, frames = scan(source, count=1000, max_keys_per_second=100)
    assert ok
    batches = batches_of(frames)
    assert sum(batch.header.scanned for batch in batches) == 50
    skipped = sum(batch.header.skipped for batch in batches)
    assert skipped >= 10
    assert skipped + sum(len(batch.rows) for batch in batches) == 50
    assert all(expiry > 0 for batch in batches for _, expiry, _ in batch.rows)


def test_preserve_ttl_off_gives_no_expiry(source):
    client = source.client()
    client.set("with-ttl", "v", ex=100)
    client.set("without", "v")
    ok, frames = scan(source, preserve_ttl=False)
    assert ok
    rows = rows_by_key(batches_of(frames))
    assert set(rows) == {b"with-ttl", b"without"}
    assert {expiry for expiry, _ in rows.values()} == {0}


def test_match_and_type_filters(source):
    client = source.client()
    fill_every_type(client, prefix="a:")
    fill_every_type(client, prefix="b:")
    ok, frames = scan(source, match="a:*", count=5)
    assert ok
    keys = set(rows_by_key(batches_of(frames)))
    assert keys and all(key.startswith(b"a:") for key in keys)
    assert len(keys) == len(fill_every_type(client, prefix="a:"))

    ok, frames = scan(source, type="hash", count=5)
    assert ok
    assert set(rows_by_key(batches_of(frames))) == {b"a:hash", b"a:hash-ttl", b"b:hash", b"b:hash-ttl"}

    ok, frames = scan(source, match="b:*", type="zset")
    assert ok
    assert set(rows_by_key(batches_of(frames))) == {b"b:zset"}


@pytest.mark.timeout(60)
@pytest.mark.skipif("redis-8.2" not in engine_names(), reason="redis-8.2 not selected")
def test_type_filter_takes_a_module_type(server_factory):
    server = server_factory("redis-8.2", with_module=True)
    client = server.client()
    client.execute_command("GRAPH.QUERY", "g", "CREATE (:node {n: 1})")
    client.set("plain", "v")
    ok, frames = scan(server, type="graphdata")
    assert ok
    rows = rows_by_key(batches_of(frames))
    assert list(rows) == [b"g"] and rows[b"g"][1]


def test_several_dbs_each_end_with_a_last_batch(source):
    for db, n in ((0, 30), (2, 0), (5, 12)):
        client = source.client(db=db)
        for i in range(n):
            client.set(f"db{db}:{i}", i)
    ok, frames = scan(source, dbs=(5, 0, 2), count=4)
    assert ok
    batches = batches_of(frames)
    assert [batch.header.db for batch in batches if batch.header.last] == [5, 0, 2]
    for db, n in ((0, 30), (2, 0), (5, 12)):
        mine = [batch for batch in batches if batch.header.db == db]
        assert [batch.header.seq for batch in mine] == list(range(len(mine)))
        assert mine[-1].header.last and mine[-1].header.cursor == 0
        assert {key for batch in mine for key, _, _ in batch.rows} == {f"db{db}:{i}".encode() for i in range(n)}
    empty = [batch for batch in batches if batch.header.db == 2]
    assert len(empty) == 1 and empty[0].rows == [] and empty[0].header.scanned == 0


def test_resume_from_a_start_cursor(source):
    client = source.client()
    everything = {f"k:{i}".encode() for i in range(500)}
    for key in everything:
        client.set(key, "v")
    cursor, first_page = client.scan(0, count=100)
    assert cursor != 0 and first_page
    ok, frames = scan(source, start_cursors=((0, cursor),), epoch=3, count=100)
    assert ok
    batches = batches_of(frames)
    resumed = set(rows_by_key(batches))
    # SCAN's guarantee: a key present all along is returned at least once; on
    # a table that did not rehash, exactly once: resuming skips the first page.
    assert resumed == everything - set(first_page)
    assert [batch.header.seq for batch in batches] == list(range(len(batches)))
    assert {batch.header.epoch for batch in batches} == {3}


# --------------------------------------------------------------------------- queues and stopping


class WatchedQueue(queue.Queue):
    """A bounded queue that records how far puts ever got ahead of gets."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.puts = self.gets = self.ahead = 0

    def put(self, item, block=True, timeout=None):
        super().put(item, block, timeout)
        self.puts += 1
        self.ahead = max(self.ahead, self.puts - self.gets)

    def get(self, block=True, timeout=None):
        item = super().get(block, timeout)
        self.gets += 1
        return item


def run_in_thread(options, batches, **kw):
    result: dict[str, bool] = {}
    thread = threading.Thread(target=lambda: result.setdefault("ok", run_scanner(options, batches, **kw)),
                              daemon=True)
    thread.start()
    return thread, result


def drain(batches, *, delay: float = 0.0, on_frame=None) -> list:
    frames = []
    while True:
        frame = decode(batches.get(timeout=30))
        frames.append(frame)
        if on_frame:
            on_frame(frame)
        if isinstance(frame, (Stop, Failed, Restarted)):
            return frames
        time.sleep(delay)


def test_bounded_queue_applies_backpressure(source):
    client = source.client()
    for i in range(400):
        client.set(f"k:{i}", i)
    batches = WatchedQueue(maxsize=1)
    thread, result = run_in_thread(options_for(source, count=20), batches)
    frames = drain(batches, delay=0.01)
    thread.join(10)
    assert result == {"ok": True}
    assert len(rows_by_key(batches_of(frames))) == 400
    assert len(frames) > 10
    # One frame in the queue, at most one more counted by a put racing a get.
    assert batches.ahead <= 2


def test_stop_event_stops_at_a_batch_boundary(source):
    client = source.client()
    for i in range(400):
        client.set(f"k:{i}", i)
    stop = threading.Event()
    batches = WatchedQueue(maxsize=1)
    thread, result = run_in_thread(options_for(source, count=10), batches, stop_event=stop)
    frames = drain(batches, delay=0.01, on_frame=lambda frame: stop.set())
    thread.join(10)
    assert result == {"ok": True}
    batches_seen = batches_of(frames)
    assert batches_seen and not any(batch.header.last for batch in batches_seen)
    assert len(rows_by_key(batches_seen)) < 400


def test_stop_event_wakes_a_rate_limit_sleep(source):
    client = source.client()
    for i in range(200):
        client.set(f"k:{i}", i)
    stop = threading.Event()
    sink = Sink()
    threading.Timer(0.3, stop.set).start()
    began = time.monotonic()
    assert run_scanner(options_for(source, max_keys_per_second=10), sink, stop_event=stop)
    assert time.monotonic() - began < 2
    assert isinstance(sink.frames[-1], Stop)


def test_rate_limits_slow_the_scan(source):
    client = source.client()
    for i in range(600):
        client.set(f"k:{i}", os.urandom(100))  # random: DUMP would compress repeated bytes
    began = time.monotonic()
    ok, frames = scan(source, max_keys_per_second=2000)
    # 600 keys at 2000/s, less the bucket's initial tenth of a second.
    assert ok and time.monotonic() - began >= 0.2
    assert len(rows_by_key(batches_of(frames))) == 600
    began = time.monotonic()
    ok, frames = scan(source, max_bytes_per_second=200_000)
    # ~70 KB of payload at 200 KB/s.
    assert ok and time.monotonic() - began >= 0.2
    assert len(rows_by_key(batches_of(frames))) == 600


def test_token_bucket_and_latency_guard_rules():
    now = [0.0]
    bucket = TokenBucket(100, 10, clock=lambda: now[0])
    assert bucket.charge(10) == 0.0          # the burst is free
    assert bucket.charge(50) == pytest.approx(0.5)  # overdrawn: sleep the debt off
    now[0] = 0.5
    assert bucket.charge(0) == 0.0

    guard = LatencyGuard(5.0, baseline_round_trips=3)
    assert [guard.observe(0.010, 1000) for _ in range(3)] == [0.0] * 3  # baseline: 10 µs per key
    assert guard.baseline == pytest.approx(10e-6)
    assert guard.observe(0.014, 1000) == 0.0                    # 4 ms over: within the budget
    assert guard.observe(0.030, 1000) == pytest.approx(0.020)   # 20 ms over: sleep that long
    assert guard.observe(0.030, 1000) == pytest.approx(0.040)   # still slow: twice as long
    assert guard.observe(10.0, 1000) == 2.0                     # capped
    assert guard.observe(0.011, 1000) == 0.0                    # back to pace: streak reset
    assert guard.observe(0.008, 1000) == 0.0 and guard.baseline == pytest.approx(8e-6)


def _scan_with_stalls(source, caplog, **options) -> str:
    """Scan 20,000 keys, 10 keys per DUMP/PTTL round trip, while another client stalls the source
    with DEBUG SLEEP bursts (as a slow command of a live client would) from the second batch
    on (the first round trips set the baseline), at most 3 s of them; the scanner's "finished"
    line. Bursts, not one stall: a single one may land on a SCAN, which is not measured."""
    caplog.set_level(logging.INFO, logger="eve.scanner")
    client = source.client()
    with client.pipeline(transaction=False) as pipe:
        for i in range(20_000):
            pipe.set(f"k:{i}", i)
        pipe.execute()
    batches = WatchedQueue(maxsize=1)
    thread, result = run_in_thread(options_for(source, count=1000, max_pipeline=10, **options), batches)
    scanning, stalling, done = threading.Event(), threading.Event(), threading.Event()

    def stall_source() -> None:
        scanning.wait(30)
        stalls = source.client()
        stalls.ping()
        # The first stall is on the wire before the scanner is let go, so its next round trips
        # meet it whatever the threads' timing (on a quiet machine the scanner used to finish
        # its last batches before a 50 ms burst reached the server).
        conn = stalls.connection_pool.get_connection()
        try:
            conn.send_command("DEBUG", "SLEEP", "0.3")
            stalling.set()
            conn.read_response()
        finally:
            stalls.connection_pool.release(conn)
        deadline = time.monotonic() + 3
        while not done.is_set() and time.monotonic() < deadline:
            stalls.execute_command("DEBUG", "SLEEP", "0.05")
            time.sleep(0.02)

    staller = threading.Thread(target=stall_source, daemon=True)
    staller.start()
    seen = []

    def note(frame) -> None:
        if isinstance(frame, Batch):
            seen.append(frame)
            if len(seen) == 2:
                # Hold the scanner (its next put waits on this consumer) until the stalls run:
                # on a loaded machine it could otherwise finish before the first one.
                scanning.set()
                stalling.wait(10)

    try:
        frames = drain(batches, on_frame=note)
    finally:
        done.set()
        scanning.set()
        staller.join(10)
    thread.join(10)
    assert result == {"ok": True}
    assert len(rows_by_key(batches_of(frames))) == 20_000
    [finished] = [record.getMessage() for record in caplog.records if " finished: " in record.getMessage()]
    return finished


def test_source_latency_makes_the_scanner_back_off(source, caplog):
    finished = _scan_with_stalls(source, caplog, backoff_latency_ms=20)
    assert int(re.search(r"backoffs=(\d+)", finished).group(1)) >= 1, finished


def test_latency_budget_controller_backs_off_fast_and_speeds_up_smoothly():
    now = [0.0]
    budget = LatencyBudget(1.0, max_depth=1000, clock=lambda: now[0])

    def probe(latency: float, step: float = 0.001, round_trip: float = 0.002) -> float:
        """One probe ``step`` seconds after the previous one (the time it stands for)."""
        now[0] += step
        return budget.observe(latency, round_trip)

    for latency in (0.0002, 0.0001, 0.00015):  # PINGs on the idle source
        budget.idle(latency)
    assert budget.baseline == pytest.approx(0.0001)
    assert (budget.depth, budget.share) == (1000, 1.0)
    for _ in range(1000):                      # a second at 0.2 ms over idle: within the budget, at the top
        assert probe(0.0003) == 0.0
    # Late for a moment (4.9 ms of the last second): the budget is a p99, it allows that.
    assert probe(0.005) == 0.0 and budget.over_budget == 1 and budget.decreases == 0
    # Late for longer (another 20 ms): shallower pipelines first.
    assert probe(0.020) == 0.0 and (budget.depth, budget.decreases) == (500, 1)
    probe(0.005, step=DECREASE_INTERVAL / 4)
    assert (budget.depth, budget.decreases) == (500, 1)                       # the same slow spell: one cut
    for _ in range(4):
        probe(0.005, step=DECREASE_INTERVAL)
    assert budget.depth == 31 and budget.share == 1.0
    assert probe(0.005, step=DECREASE_INTERVAL) == pytest.approx(0.002)       # as shallow as it goes: then the share
    assert (budget.depth, budget.share) == (MIN_DEPTH, 0.5)
    for _ in range(20):
        probe(0.05, step=DECREASE_INTERVAL)
    assert budget.share == MIN_SHARE == budget.lowest_share and budget.depth == MIN_DEPTH == budget.lowest_depth
    assert probe(0.0003, step=1.0) == pytest.approx(0.002 * (1 / (MIN_SHARE + SHARE_INCREASE_PER_SECOND) - 1))
    assert budget.share == pytest.approx(MIN_SHARE + SHARE_INCREASE_PER_SECOND)  # smoothly: a tenth per second
    for _ in range(9):
        probe(0.0003, step=1.0)
    assert budget.share == 1.0 and budget.depth == MIN_DEPTH                  # the share first, then the depth
    probe(0.0003, step=1.0)
    assert budget.depth == MIN_DEPTH + int(DEPTH_INCREASE_PER_SECOND * 1000)
    for _ in range(20):
        probe(0.0003, step=1.0)
    assert (budget.depth, budget.share) == (1000, 1.0)                        # back to the top, no further
    for _ in range(1000):
        probe(0.00005)                                                        # a quieter moment lowers the baseline
    assert budget.baseline == pytest.approx(0.00005)
    decreases = budget.decreases
    probe(0.005)
    assert budget.decreases == decreases, "the slow spell has left the window: one late probe is allowed again"
    state = budget.state()
    assert state["budget_ms"] == 1.0 and state["depth"] == 1000 and state["lowest_share"] == MIN_SHARE
    assert state["decreases"] == decreases and state["idle_ms"] == 0.05 and state["max_excess_ms"] == pytest.approx(49.9)

    capped = LatencyBudget(1.0, max_share=0.6, max_depth=10, clock=lambda: now[0])
    capped.idle(0.0001)
    assert capped.observe(0.0002, 0.01) == pytest.approx(0.01 * (1 / 0.6 - 1))  # a source share caps it
    now[0] += 100
    capped.observe(0.0002, 0.01)
    assert (capped.share, capped.depth) == (0.6, 10)
    with pytest.raises(ValueError):
        LatencyBudget(0)


def test_latency_budget_slows_the_scan_when_the_source_is_made_slow(source, caplog):
    """The source stalled by another client: the controller's probes wait far beyond the
    budget, so it cuts how hard the scan loads the source. Asserts on the controller's own
    report, never on wall-clock ratios."""
    finished = _scan_with_stalls(source, caplog, latency_budget_ms=5)
    state = dict(re.findall(r"(\w+)=([\d.]+|None)", finished.split("latency_budget=", 1)[1]))
    assert float(state["budget_ms"]) == 5.0
    assert int(state["decreases"]) >= 1 and int(state["over_budget"]) >= 1, finished
    # 10 keys per round trip is below MIN_DEPTH: the depth cannot go lower, the share went down.
    assert int(state["lowest_depth"]) == 10 and float(state["lowest_share"]) <= 0.5, finished
    assert float(state["idle_ms"]) > 0 and float(state["max_excess_ms"]) > 5
    assert int(re.search(r"backoffs=(\d+)", finished).group(1)) == int(state["decreases"])


# --------------------------------------------------------------------------- failures


def test_restarted_source_ends_the_scan_with_restarted(source):
    client = source.client()
    with client.pipeline(transaction=False) as pipe:
        for i in range(3000):
            pipe.set(f"k:{i}", i)
        pipe.execute()
    before = client.info("server")["run_id"]
    batches = WatchedQueue(maxsize=1)
    thread, result = run_in_thread(options_for(source, count=500, server_run_id=before), batches)
    restarts = []

    def restart_source(frame) -> None:
        if isinstance(frame, Batch) and not restarts:
            source.kill()
            source.start()
            restarts.append(source.client().info("server")["run_id"])

    frames = drain(batches, on_frame=restart_source)
    thread.join(10)
    assert result == {"ok": False}
    restarted = frames[-1]
    assert isinstance(restarted, Restarted), restarted
    assert (restarted.who, restarted.role, restarted.address) == ("source", "source", f"{source.host}:{source.port}")
    assert (restarted.before, restarted.after) == (before, restarts[0])
    assert all(isinstance(frame, Batch) for frame in frames[:-1])

    # Planned against the server before the restart: nothing is scanned at all.
    ok, frames = scan(source, server_run_id=before)
    assert not ok and [type(frame).__name__ for frame in frames] == ["Restarted"]


def test_unreachable_source_fails_naming_the_address():
    port = free_port()
    spec = ConnectionSpec("127.0.0.1", port)
    options = ScannerOptions(run_id="r", worker=f"scanner node=127.0.0.1:{port}", source=spec,
                             node=f"127.0.0.1:{port}", dbs=(0,), reconnect_seconds=0.3)
    sink = Sink()
    began = time.monotonic()
    assert run_scanner(options, sink) is False
    assert 0.3 <= time.monotonic() - began < 3
    [failed] = sink.frames
    assert isinstance(failed, Failed)
    assert (failed.worker, failed.who) == (options.worker, "source")
    assert f"127.0.0.1:{port}" in failed.reason and "0.3s" in failed.reason


def test_lost_connection_is_retried_from_the_same_cursor(source):
    client = source.client()
    for i in range(1000):
        client.set(f"k:{i}", i)
    batches = WatchedQueue(maxsize=2)
    thread, result = run_in_thread(options_for(source, count=50, max_keys_per_second=5000), batches)
    killed = []

    def kill_scanner_connection(frame) -> None:
        if not killed and isinstance(frame, Batch):
            ids = [c["id"] for c in client.client_list() if c["name"] == "eve-scanner"]
            killed.extend(client.client_kill_filter(_id=conn_id) for conn_id in ids)

    frames = drain(batches, on_frame=kill_scanner_connection)
    thread.join(10)
    assert killed == [1]
    assert result == {"ok": True}
    assert len(rows_by_key(batches_of(frames))) == 1000


def test_wrong_password_fails_at_once(server_factory):
    server = server_factory(engine_names()[0], password="s3cret")
    options = options_for(server, source=ConnectionSpec(server.host, server.port, password="wrong"),
                          reconnect_seconds=30)
    sink = Sink()
    began = time.monotonic()
    assert run_scanner(options, sink) is False
    assert time.monotonic() - began < 5
    [failed] = sink.frames
    assert isinstance(failed, Failed) and failed.who == "source"
    assert f"{server.host}:{server.port}" in failed.reason and "wrong" not in failed.reason


@pytest.mark.parametrize("denied", ["scan", "dump"])
def test_permission_denied_fails_instead_of_skipping(source, denied):
    client = source.client()
    client.set("k", "v")
    client.execute_command("ACL", "SETUSER", "mover", "on", ">pw", "~*", "+@all", f"-{denied}")
    spec = ConnectionSpec(source.host, source.port, username="mover", password="pw")
    ok, frames = scan(source, source=spec, reconnect_seconds=30)
    assert ok is False
    [failed] = frames
    assert isinstance(failed, Failed) and failed.who == "source" and "NOPERM" in failed.reason


def test_options_are_checked_and_picklable():
    spec = ConnectionSpec("127.0.0.1", 6379, password="secret")
    options = ScannerOptions(run_id="r", worker="w", source=spec, node="n", dbs=[0, 3],
                             start_cursors=[(3, 17)])
    assert pickle.loads(pickle.dumps(options)) == options
    assert options.dbs == (0, 3) and options.start_cursor(3) == 17 and options.start_cursor(0) == 0
    assert "secret" not in repr(options)
    for bad in (dict(count=0), dict(max_pipeline=0), dict(dbs=(0, 0)), dict(dbs=(-1,)),
                dict(max_keys_per_second=-1), dict(timeout=0), dict(type="")):
        with pytest.raises(ConfigError):
            ScannerOptions(**{**dict(run_id="r", worker="w", source=spec, node="n", dbs=(0,)), **bad})


# --------------------------------------------------------------------------- cluster, telemetry, process


@pytest.mark.parametrize("engine", ["redis-7.0"], indirect=True)
def test_cluster_master_yields_only_its_own_keys(redis_cluster):
    client = redis_cluster.client()
    keys = {f"user:{i}".encode() for i in range(300)}
    for key in keys:
        client.set(key, "v")
    client.close()
    # As the coordinator does it: the masters from CLUSTER SLOTS, one scanner each.
    endpoint = ConnectionSpec(redis_cluster.host, redis_cluster.port)
    with FastConnection(endpoint) as conn:
        masters = cluster_masters(conn)
    assert len(masters) == 3
    seen: set[bytes] = set()
    for master in masters:
        options = options_for(redis_cluster, source=node_spec(endpoint, master), node=master.address, count=25)
        sink = Sink()
        assert run_scanner(options, sink)
        batches = batches_of(sink.frames)
        assert {batch.header.node for batch in batches} == {master.address}
        mine = set(rows_by_key(batches))
        assert mine and not mine & seen
        assert all(any(start <= key_slot(key) <= end for start, end in master.slots) for key in mine)
        seen |= mine
    assert seen == keys


def test_span_per_batch_carried_in_the_header_and_metrics(source):
    client = source.client()
    for i in range(100):
        client.set(f"k:{i}", "value")
    client.set("gone-soon", "v")
    exporter = InMemorySpanExporter()
    tel = telemetry.setup("eve-scanner-test", span_exporter=exporter, set_global=False)
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    sink = Sink()
    assert run_scanner(options_for(source, count=30), sink, tracer=tel.tracer("eve.scanner"), meter=meter)
    batches = batches_of(sink.frames)
    spans = [span for span in exporter.get_finished_spans() if span.name == "scan batch"]
    assert len(spans) == len(batches)
    for batch, span in zip(batches, spans):
        context = span.get_span_context()
        version, trace_id, span_id, flags = batch.header.trace["traceparent"].split("-")
        assert (trace_id, span_id) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
        assert int(flags, 16) & 1  # sampled
        assert span.attributes["node"] == f"{source.host}:{source.port}"
        assert (span.attributes["db"], span.attributes["keys"], span.attributes["cursor"]) == (
            0, len(batch.rows), batch.header.cursor)
        assert span.attributes["bytes"] == sum(len(payload) for _, _, payload in batch.rows)
    totals = {metric.name: sum(point.value for point in metric.data.data_points)
              for resource in reader.get_metrics_data().resource_metrics
              for scope in resource.scope_metrics for metric in scope.metrics}
    assert totals["eve.scanner.keys"] == 101
    assert totals["eve.scanner.bytes"] == sum(span.attributes["bytes"] for span in spans)
    tel.shutdown()


@pytest.mark.timeout(60)
def test_main_in_a_spawned_process(source):
    client = source.client()
    for i in range(100):
        client.set(f"k:{i}", i)
    context = multiprocessing.get_context("spawn")
    batches = context.Queue(maxsize=4)
    process = context.Process(target=main, args=(options_for(source, count=10), batches))
    process.start()
    frames = drain(batches)
    process.join(30)
    assert process.exitcode == 0
    assert len(rows_by_key(batches_of(frames))) == 100

    port = free_port()
    unreachable = options_for(source, source=ConnectionSpec("127.0.0.1", port), reconnect_seconds=0)
    process = context.Process(target=main, args=(unreachable, batches))
    process.start()
    [failed] = drain(batches)
    process.join(30)
    assert process.exitcode == 1
    assert isinstance(failed, Failed) and f"127.0.0.1:{port}" in failed.reason
