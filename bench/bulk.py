#!/usr/bin/env python3
"""Bulk copy benchmark: Eve against the plain redis-py loop and the server's own MIGRATE.

    python bench/bulk.py [--keys N] [--engine redis-7.0] [--restorers N] [--json]
                         [--latency-budget-ms MS]

One run starts its own source and target servers (tests/servers.py, loopback,
free ports), loads a mixed keyspace into the source (not timed), and copies the
same data to the target with each method in turn:

    eve            ``eve migrate --source ... --target ... --json`` as a subprocess
                   (the default source share); peak RSS of its whole process tree is
                   sampled from /proc
    eve-full       the same at full speed (``--source-share 1``): what Eve can do when
                   the source's clients do not matter
    eve-latency    the same under a latency budget (``--latency-budget-ms``, 1 ms by
                   default): the concurrent client's p99 shows whether the source kept
                   within it, the keys/s what copy speed that leaves
    migrate        SCAN COUNT 1000 on the source, one
                   ``MIGRATE host port "" 0 5000 COPY REPLACE KEYS ...`` per SCAN batch
    redis-py-loop  SCAN COUNT 1000, then DUMP, PTTL, RESTORE ... REPLACE one
                   command at a time: the plain loop a user writes

Across engine versions (not in the default --methods; each pair on servers of its
own, the source loaded once per engine, the same keyspace):

    same-8.2, same-9.1           eve --mode dump-restore from Redis 8.2 (Valkey 9.1)
                                 to itself: the baseline of the rows below
    auto-8.2-9.1, auto-9.1-7.0   eve --mode auto, Redis 8.2 -> Valkey 9.1 (payloads
                                 relabelled) and Valkey 9.1 -> Redis 7.0 (relabelled,
                                 set-listpack and stream keys copied logically)
    logical-8.2-9.1, logical-9.1-7.0   eve --mode logical on the same pairs

The target is flushed before each method and its DBSIZE compared with the
source's after. While a method runs, a separate client process does GET/SET
of random existing string keys against the source in a closed loop (one
connection); its ops/s and p99 latency are compared with an idle window
measured before any method, which is what "source impact" means here.

A method's keys/s is keys copied / wall-clock seconds of the method; for Eve
that includes starting the interpreter and its workers (the keys_per_sec of
its own summary is shown next to it). Every ratio compares numbers measured in
this run on this machine, so they travel between machines better than the
absolute rates do. Everything shares the machine's cores (servers, Eve's
processes, the client): the CPU count is printed with the results, and
idle-priority spinners keep the CPUs awake during every client window (see
KeepAwake; --no-keep-awake turns them off).

Exit status: 0 when every method that ran copied the whole keyspace, 1 when one
failed, timed out or left the target short, 2 for bad arguments or a missing
engine, 130 on Ctrl-C. Targets (the ratios' goals) are reported, not enforced.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# The servers come from the test harness (DESIGN.md section 8): the same
# engines, ports and shutdown rules as the tests.
_REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_REPO / "tests"))

from servers import (  # noqa: E402
    ENGINE_NAMES,
    EngineNotFound,
    RedisServer,
    ServerStartError,
    get_engine,
    start_server,
    stop_all,
)

DEFAULT_METHODS = ("eve", "eve-full", "eve-latency", "migrate", "redis-py-loop")
# method -> (source engine, target engine, eve migrate --mode): the cross-version rows.
CROSS_VERSION = {
    "same-8.2": ("redis-8.2", "redis-8.2", "dump-restore"),
    "auto-8.2-9.1": ("redis-8.2", "valkey-9.1", "auto"),
    "logical-8.2-9.1": ("redis-8.2", "valkey-9.1", "logical"),
    "same-9.1": ("valkey-9.1", "valkey-9.1", "dump-restore"),
    "auto-9.1-7.0": ("valkey-9.1", "redis-7.0", "auto"),
    "logical-9.1-7.0": ("valkey-9.1", "redis-7.0", "logical"),
}
METHODS = (*DEFAULT_METHODS, *CROSS_VERSION)
EVE_METHODS = ("eve", "eve-full", "eve-latency", *CROSS_VERSION)
DEFAULT_LATENCY_BUDGET_MS = 1.0
DEFAULT_KEYS = 1_000_000
DEFAULT_ENGINE = "redis-7.0"
DEFAULT_IDLE_SECONDS = 5.0
DEFAULT_SEED = 1
SCAN_COUNT = 1000
MIGRATE_TIMEOUT_MS = 5000
RSS_SAMPLE_INTERVAL = 0.05
EVE_HELP_TIMEOUT = 60.0
CLIENT_START_TIMEOUT = 60.0

# The keyspace, per 100 consecutive key numbers: mostly 100-byte strings.
STRING_VALUE_BYTES = 100
ELEMENTS = 10          # fields of a hash, items of a list, members of a set / zset
STREAM_ENTRIES = 5
TTL_SHARE = 0.10       # keys with a TTL of one hour, give or take ten minutes
TTL_MS, TTL_JITTER_MS = 3_600_000, 600_000
KEY_MIX = (("string", 80), ("hash", 4), ("list", 4), ("set", 4), ("zset", 4), ("stream", 4))
KIND_OF_SLOT = tuple(kind for kind, share in KEY_MIX for _ in range(share))
assert len(KIND_OF_SLOT) == 100
LOAD_WINDOW_KEYS = 5000  # keys per pipelined chunk while loading

# The concurrent client: a cache-like mix of reads and writes.
CLIENT_READ_SHARE = 0.8
CLIENT_CHECK_EVERY = 64  # operations between looks at the stop flag

# Latency histogram: 1 us buckets below 100 ms, then 1 ms buckets up to 60 s.
_FINE_US = 100_000
_COARSE_BUCKETS = 60_000 - _FINE_US // 1000

# Eve's JSON summary (the contract of `eve migrate --json`).
EVE_FIELDS = ("scanned", "restored", "skipped", "conflicts", "errors", "seconds", "keys_per_sec")

# Goals for the ratios; reported, not enforced.
TARGETS = (
    # name, what, comparison, goal (None: reported, no goal)
    ("eve_vs_migrate", "eve keys/s / MIGRATE keys/s", ">=", 0.75),
    ("eve_full_vs_migrate", "eve full speed keys/s / MIGRATE keys/s", ">=", 0.85),
    ("eve_latency_client_p99_ms", "client p99 under eve's latency budget (ms)", "<=", DEFAULT_LATENCY_BUDGET_MS),
    ("eve_latency_vs_migrate", "eve under the budget keys/s / MIGRATE", ">=", None),
    ("eve_vs_redis_py_loop", "eve keys/s / redis-py loop keys/s", ">=", 2.5),
    ("eve_peak_rss_mb", "eve peak RSS, whole process tree (MB)", "<", 400.0),
    ("client_ops_during_eve_vs_idle", "client ops/s during eve / idle", ">=", 0.5),
    ("auto_8.2_9.1_vs_same", "AUTO 8.2->9.1 keys/s / 8.2->8.2", ">=", 0.9),
    ("auto_9.1_7.0_vs_same", "AUTO 9.1->7.0 keys/s / 9.1->9.1", ">=", 0.9),
    ("logical_8.2_9.1_vs_same", "LOGICAL 8.2->9.1 keys/s / 8.2->8.2", ">=", 0.4),
    ("logical_9.1_7.0_vs_same", "LOGICAL 9.1->7.0 keys/s / 9.1->9.1", ">=", 0.4),
)
# ratio name -> (row, its baseline row)
CROSS_RATIOS = {
    "auto_8.2_9.1_vs_same": ("auto-8.2-9.1", "same-8.2"),
    "auto_9.1_7.0_vs_same": ("auto-9.1-7.0", "same-9.1"),
    "logical_8.2_9.1_vs_same": ("logical-8.2-9.1", "same-8.2"),
    "logical_9.1_7.0_vs_same": ("logical-9.1-7.0", "same-9.1"),
}


class BenchError(RuntimeError):
    """The benchmark itself cannot go on (loading failed, a server is gone)."""


# --------------------------------------------------------------------------- options and results


@dataclass(frozen=True)
class BenchOptions:
    keys: int
    engine: str
    restorers: int | None
    methods: tuple[str, ...]
    idle_seconds: float
    method_timeout: float
    seed: int
    eve_command: tuple[str, ...]
    eve_args: tuple[str, ...]
    keep_awake: bool
    as_json: bool
    latency_budget_ms: float = DEFAULT_LATENCY_BUDGET_MS


@dataclass
class ClientStats:
    """The concurrent client over one window."""

    ops: int
    errors: int
    seconds: float
    ops_per_sec: float
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class MethodResult:
    method: str
    keys: int = 0                 # keys the method reports as copied
    seconds: float = 0.0          # wall clock, start to end (a subprocess's startup included)
    keys_per_sec: float = 0.0
    source_keys: int = 0
    target_keys: int = 0
    verified: bool = False        # target DBSIZE == source DBSIZE afterwards
    timed_out: bool = False
    error: str | None = None
    client: ClientStats | None = None
    client_ops_vs_idle: float | None = None
    client_p99_vs_idle: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # method specific


# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the table or the JSON."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def _pack(*args: bytes) -> bytes:
    """One command as a RESP array of bulk strings (what redis-cli --pipe sends)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def key_name(number: int) -> bytes:
    return b"%s:%d" % (KIND_OF_SLOT[number % 100].encode(), number)


def _client(server: RedisServer, timeout: float) -> redis.Redis:
    return server.client(socket_timeout=timeout, socket_connect_timeout=5)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


# --------------------------------------------------------------------------- loading


def _key_commands(number: int, rng: random.Random) -> list[bytes]:
    """The commands that create key `number` (with its TTL for about one key in ten)."""
    kind = KIND_OF_SLOT[number % 100]
    key = key_name(number)
    ttl = b"%d" % (TTL_MS + rng.randint(-TTL_JITTER_MS, TTL_JITTER_MS)) if rng.random() < TTL_SHARE else None
    if kind == "string":
        value = rng.randbytes(STRING_VALUE_BYTES)
        return [_pack(b"SET", key, value, b"PX", ttl) if ttl else _pack(b"SET", key, value)]
    if kind == "hash":
        pairs: list[bytes] = []
        for i in range(ELEMENTS):
            pairs += [b"field:%d" % i, rng.randbytes(16)]
        commands = [_pack(b"HSET", key, *pairs)]
    elif kind == "list":
        commands = [_pack(b"RPUSH", key, *(rng.randbytes(16) for _ in range(ELEMENTS)))]
    elif kind == "set":
        commands = [_pack(b"SADD", key, *(b"member:%d:%s" % (i, rng.randbytes(8).hex().encode())
                                          for i in range(ELEMENTS)))]
    elif kind == "zset":
        scored: list[bytes] = []
        for i in range(ELEMENTS):
            scored += [b"%d" % rng.randrange(1_000_000), b"member:%d" % i]
        commands = [_pack(b"ZADD", key, *scored)]
    else:
        commands = [_pack(b"XADD", key, b"*", b"event", b"%d" % i, b"payload", rng.randbytes(16))
                    for i in range(STREAM_ENTRIES)]
    if ttl:
        commands.append(_pack(b"PEXPIRE", key, ttl))
    return commands


def _read_replies(sock: socket.socket, reader: hiredis.Reader, count: int, deadline: float,
                  errors: list[str]) -> None:
    got = 0
    while got < count:
        reply = reader.gets()
        if reply is False:
            sock.settimeout(max(_remaining(deadline), 0.001))
            try:
                data = sock.recv(1 << 20)
            except socket.timeout as exc:
                raise BenchError("loading did not finish before its deadline") from exc
            if not data:
                raise BenchError("the source closed the loading connection")
            reader.feed(data)
            continue
        got += 1
        if isinstance(reply, hiredis.ReplyError) and len(errors) < 5:
            errors.append(str(reply))


def load_keyspace(server: RedisServer, keys: int, seed: int, deadline: float) -> dict[str, Any]:
    """Write `keys` keys over one raw socket, in pipelined chunks, as redis-cli --pipe does.

    While the server works on one chunk the next is being encoded, so loading
    costs about the encoding time. Not part of any measurement.
    """
    rng = random.Random(seed)
    started = time.perf_counter()
    errors: list[str] = []
    commands_sent = 0
    reader = hiredis.Reader()
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        pending = 0  # replies owed for the chunk the server is working on
        for first in range(0, keys, LOAD_WINDOW_KEYS):
            chunk: list[bytes] = []
            for number in range(first, min(first + LOAD_WINDOW_KEYS, keys)):
                chunk += _key_commands(number, rng)
            _read_replies(sock, reader, pending, deadline, errors)
            sock.settimeout(max(_remaining(deadline), 0.001))
            sock.sendall(b"".join(chunk))
            pending = len(chunk)
            commands_sent += len(chunk)
        _read_replies(sock, reader, pending, deadline, errors)
    if errors:
        raise BenchError(f"loading failed: {errors}")
    seconds = time.perf_counter() - started
    with _client(server, 30) as check:
        loaded = check.dbsize()
    if loaded != keys:
        raise BenchError(f"loaded {loaded} keys into the source, expected {keys}")
    return {"keys": keys, "commands": commands_sent, "seconds": round(seconds, 3),
            "keys_per_sec": round(keys / seconds, 1) if seconds else None}


# --------------------------------------------------------------------------- the concurrent client


def _bucket(latency_us: int) -> int:
    if latency_us < _FINE_US:
        return latency_us
    return _FINE_US + min((latency_us - _FINE_US) // 1000, _COARSE_BUCKETS - 1)


def _bucket_us(index: int) -> int:
    return index if index < _FINE_US else _FINE_US + (index - _FINE_US) * 1000


def _percentile_ms(histogram: list[int], total: int, share: float) -> float:
    if total == 0:
        return 0.0
    rank = max(math.ceil(share * total), 1)
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return _bucket_us(index) / 1000
    return _bucket_us(len(histogram) - 1) / 1000


def _client_process(host: str, port: int, keys: int, seed: int, max_seconds: float,
                    ready: Any, go: Any, stop: Any, results: Any) -> None:
    """GET/SET of random existing string keys, one connection, one command at a time.

    Runs in its own process so it never competes with the benchmark's threads
    for the GIL; stops on `stop` or after `max_seconds`, whichever comes first.
    """
    # Ctrl-C reaches the whole foreground process group; the parent stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # No retries: a failed command is counted as an error, not hidden in a
    # latency (redis-py's default retries back off for up to seconds).
    client = redis.Redis(host=host, port=port, socket_timeout=10, socket_connect_timeout=5,
                         retry=Retry(NoBackoff(), 0))
    client.ping()
    rng = random.Random(seed)
    value = rng.randbytes(STRING_VALUE_BYTES)
    histogram = [0] * (_FINE_US + _COARSE_BUCKETS)
    ops = errors = 0
    max_us = 0
    ready.set()
    if not go.wait(CLIENT_START_TIMEOUT):
        results.put(None)
        return
    clock = time.perf_counter
    started = clock()
    deadline = started + max_seconds
    now = started
    while not stop.is_set() and now < deadline:
        for _ in range(CLIENT_CHECK_EVERY):
            number = rng.randrange(keys)
            while KIND_OF_SLOT[number % 100] != "string":
                number = rng.randrange(keys)
            key = b"string:%d" % number
            before = clock()
            try:
                if rng.random() < CLIENT_READ_SHARE:
                    client.get(key)
                else:
                    # KEEPTTL: the keyspace (and its TTLs) stays what was loaded.
                    client.set(key, value, keepttl=True)
            except redis.RedisError:
                errors += 1
                if stop.is_set():  # the server may be gone: do not retry 64 times
                    break
            now = clock()
            latency_us = int((now - before) * 1_000_000)
            histogram[_bucket(latency_us)] += 1
            max_us = max(max_us, latency_us)
            ops += 1
    seconds = now - started
    results.put({
        "ops": ops,
        "errors": errors,
        "seconds": round(seconds, 3),
        "ops_per_sec": round(ops / seconds, 1) if seconds else 0.0,
        "p50_ms": round(_percentile_ms(histogram, ops, 0.50), 4),
        "p99_ms": round(_percentile_ms(histogram, ops, 0.99), 4),
        "max_ms": round(max_us / 1000, 3),
    })


class ConcurrentClient:
    """One measuring window of the concurrent client: start, run, stop, collect."""

    def __init__(self, server: RedisServer, keys: int, seed: int, max_seconds: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._ready, self._go, self._stop = context.Event(), context.Event(), context.Event()
        self._results = context.Queue()
        self._process = context.Process(
            target=_client_process,
            args=(server.host, server.port, keys, seed, max_seconds,
                  self._ready, self._go, self._stop, self._results),
            name="bench-client", daemon=True)

    def __enter__(self) -> "ConcurrentClient":
        self._process.start()
        deadline = time.monotonic() + CLIENT_START_TIMEOUT
        while not self._ready.wait(0.1):
            if not self._process.is_alive() or time.monotonic() > deadline:
                raise BenchError("the concurrent client did not start "
                                 f"(exit code {self._process.exitcode})")
        self._go.set()
        return self

    def end_window(self) -> None:
        """The measured window ends now (the method is done); collect later with stop()."""
        self._stop.set()

    def stop(self) -> ClientStats:
        self.end_window()
        # The client stops within CLIENT_CHECK_EVERY operations, or at its own deadline.
        try:
            stats = self._results.get(timeout=30)
        except Exception as exc:  # queue.Empty, or a broken pipe if the process died
            raise BenchError(f"the concurrent client gave no result "
                             f"(exit code {self._process.exitcode})") from exc
        if stats is None:
            raise BenchError("the concurrent client was never told to go")
        self._process.join(10)
        return ClientStats(**stats)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


# Keeps a core busy only when nothing else wants it (SCHED_IDLE, sched(7)), and
# gives up when its parent goes away or its time is up.
_SPINNER = """
import os, sys, time
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
parent, end = os.getppid(), time.monotonic() + float(sys.argv[1])
while time.monotonic() < end and os.getppid() == parent:
    for _ in range(100_000):
        pass
"""


class KeepAwake:
    """One SCHED_IDLE spinner per CPU for as long as client windows are measured.

    A closed-loop client and a server on otherwise idle virtual CPUs pay for
    every wake-up. On a 2-vCPU KVM guest (haltpoll cpuidle) the idle client
    measured 7-19k ops/s with p99 0.13-0.2 ms, and 11-20k with p99 0.10-0.12
    ms with idle-priority spinners keeping the CPUs awake. While a method runs
    the CPUs are busy anyway, so without them the idle baseline is the slow
    one and "client ops/s during a method / idle" flatters the method (one
    run measured 2.8x idle during a 0.3 s Eve startup). SCHED_IDLE spinners
    run only when nothing else wants a CPU, so they take (almost) nothing from
    the servers, Eve or the client.
    """

    def __init__(self, enabled: bool, seconds: float) -> None:
        self.enabled = enabled and hasattr(os, "SCHED_IDLE")
        self.seconds = seconds
        self._spinners: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> "KeepAwake":
        if self.enabled:
            for _ in range(os.cpu_count() or 1):
                # Same session as everything else: with autogroup scheduling
                # (sched(7)) a session of its own would get a fair share of the
                # CPUs as a group, SCHED_IDLE or not. Its own process group
                # keeps Ctrl-C (and its traceback) away from it.
                self._spinners.append(subprocess.Popen(
                    [sys.executable, "-c", _SPINNER, str(self.seconds)],
                    stdin=subprocess.DEVNULL, process_group=0))
        return self

    def __exit__(self, *exc: object) -> None:
        for spinner in self._spinners:
            spinner.kill()
        for spinner in self._spinners:
            spinner.wait()
        self._spinners.clear()


# --------------------------------------------------------------------------- peak RSS of a process tree


def _proc_stat_fields(pid: str) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain ") ": fields
    # start after the last one (proc(5): state ppid pgrp session ...).
    return raw.rpartition(b")")[2].split()


def _vm_rss_kb(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0  # gone, a zombie, or a kernel thread


def group_processes(group_id: int) -> list[str]:
    """Pids of the processes in a process group.

    Eve is started as a process group leader, so its workers (multiprocessing
    spawn children, the resource tracker) share its group id even when a parent
    exits and they are reparented: the tree cannot lose a member that way.
    """
    members = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fields = _proc_stat_fields(pid)
        if fields is not None and len(fields) > 2 and int(fields[2]) == group_id:
            members.append(pid)
    return members


class TreeRssSampler(threading.Thread):
    """Sum VmRSS over a process group every ~50 ms; keep the maximum."""

    def __init__(self, group_id: int, interval: float = RSS_SAMPLE_INTERVAL) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.group_id = group_id
        self.interval = interval
        self.peak_kb = 0
        self.peak_processes = 0
        self.max_processes = 0
        self.samples = 0
        self._done = threading.Event()

    def sample(self) -> None:
        pids = group_processes(self.group_id)
        total = sum(_vm_rss_kb(pid) for pid in pids)
        self.samples += 1
        self.max_processes = max(self.max_processes, len(pids))
        if total > self.peak_kb:
            self.peak_kb, self.peak_processes = total, len(pids)

    def run(self) -> None:
        while True:
            self.sample()
            if self._done.wait(self.interval):
                return

    def stop(self) -> None:
        self._done.set()
        self.join(5)


# --------------------------------------------------------------------------- the methods


def _scan_batches(source: redis.Redis, deadline: float) -> Iterator[list[bytes]]:
    cursor = 0
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError
        cursor, keys = source.scan(cursor, count=SCAN_COUNT)
        if keys:
            yield keys
        if cursor == 0:
            return


def run_redis_py_loop(source_server: RedisServer, target_server: RedisServer,
                      deadline: float, result: MethodResult, end_window: Callable[[], None]) -> None:
    """SCAN, then DUMP + PTTL + RESTORE REPLACE one command at a time."""
    source = _client(source_server, 30)
    target = _client(target_server, 30)
    restored = vanished = failed = 0
    first_error: str | None = None
    started = time.perf_counter()
    try:
        for keys in _scan_batches(source, deadline):
            for key in keys:
                payload = source.dump(key)
                if payload is None:
                    vanished += 1
                    continue
                pttl = source.pttl(key)
                if pttl == -2:  # gone since DUMP
                    vanished += 1
                    continue
                try:
                    target.restore(key, max(pttl, 0), payload, replace=True)
                    restored += 1
                except redis.ResponseError as exc:
                    failed += 1
                    first_error = first_error or str(exc)
    except TimeoutError:
        result.timed_out = True
    finally:
        result.seconds = time.perf_counter() - started
        end_window()
        result.keys = restored
        result.detail = {"vanished": vanished, "failed": failed, "first_error": first_error}
        source.close()
        target.close()


def run_migrate(source_server: RedisServer, target_server: RedisServer,
                deadline: float, result: MethodResult, end_window: Callable[[], None]) -> None:
    """SCAN, then one MIGRATE ... COPY REPLACE KEYS per SCAN batch (the server moves the data)."""
    # MIGRATE blocks the source until the target has acknowledged the batch;
    # its own timeout (5 s) is per I/O, so a batch may take longer in total.
    source = _client(source_server, 60)
    migrated = batches = failed_batches = nokey_batches = 0
    first_error: str | None = None
    started = time.perf_counter()
    try:
        for keys in _scan_batches(source, deadline):
            batches += 1
            try:
                reply = source.execute_command(
                    "MIGRATE", target_server.host, target_server.port, "", 0, MIGRATE_TIMEOUT_MS,
                    "COPY", "REPLACE", "KEYS", *keys)
            except redis.ResponseError as exc:
                failed_batches += 1
                first_error = first_error or str(exc)
                continue
            if reply in (b"NOKEY", "NOKEY"):
                nokey_batches += 1
            else:
                migrated += len(keys)
    except TimeoutError:
        result.timed_out = True
    finally:
        result.seconds = time.perf_counter() - started
        end_window()
        result.keys = migrated
        result.detail = {"batches": batches, "failed_batches": failed_batches,
                         "nokey_batches": nokey_batches, "first_error": first_error}
        source.close()


def eve_available(eve_command: Sequence[str]) -> tuple[bool, str]:
    """`eve migrate --help` exits 0 once the bulk pipeline has landed."""
    try:
        done = subprocess.run([*eve_command, "migrate", "--help"], capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=EVE_HELP_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{shlex.join(eve_command)} migrate --help failed: {exc}"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()[-1:]
        return False, (f"{shlex.join(eve_command)} migrate --help exited {done.returncode}"
                       + (f": {tail[0]}" if tail else ""))
    return True, ""


def _reap_group(group_id: int, grace: float = 3.0) -> int:
    """Give a group we started `grace` seconds to empty, then SIGKILL what is left.

    Returns how many processes had to be killed. The grace period is for the
    multiprocessing resource tracker, which exits only after it sees its
    parent's pipe close.
    """
    deadline = time.monotonic() + grace
    while (left := group_processes(group_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(left)


def _parse_eve_summary(stdout: str) -> dict[str, Any] | None:
    text = stdout.strip()
    candidates = [text] + [line for line in reversed(text.splitlines()) if line.startswith("{")]
    for candidate in candidates:
        try:
            summary = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(summary, dict):
            return summary
    return None


def eve_method_args(method: str, options: BenchOptions) -> list[str]:
    """What makes an eve row what it is: the default share, full speed, or a latency budget."""
    if method == "eve-full":
        return ["--source-share", "1"]
    if method == "eve-latency":
        return ["--latency-budget-ms", f"{options.latency_budget_ms:g}"]
    if method in CROSS_VERSION:
        return ["--mode", CROSS_VERSION[method][2]]
    return []


def run_eve(source_server: RedisServer, target_server: RedisServer, options: BenchOptions,
            log_path: Path, deadline: float, result: MethodResult,
            end_window: Callable[[], None], method_args: Sequence[str] = ()) -> None:
    """`eve migrate ... --json` as a subprocess, its process tree's RSS sampled meanwhile."""
    argv = [*options.eve_command, "migrate",
            "--source", f"redis://{source_server.host}:{source_server.port}",
            "--target", f"redis://{target_server.host}:{target_server.port}",
            "--json"]
    if options.restorers is not None:
        argv += ["--restorers", str(options.restorers)]
    argv += [*method_args, *options.eve_args]
    result.detail["command"] = shlex.join(argv)
    with log_path.open("wb") as stderr:
        started = time.perf_counter()
        # A process group of its own: the RSS sampler finds the tree by group
        # id, Ctrl-C on the terminal does not reach it, and cleanup kills
        # exactly it. Not a session of its own: with autogroup scheduling
        # (sched(7)) that would make Eve's processes share one CPU share as a
        # group against the servers and the client.
        # cwd: whatever eve leaves behind (its job state file) stays in the workdir.
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=stderr, process_group=0, cwd=log_path.parent)
        sampler = TreeRssSampler(process.pid)
        sampler.start()
        stdout = b""
        finished = False
        try:
            try:
                stdout, _ = process.communicate(timeout=_remaining(deadline))
                finished = True
            except subprocess.TimeoutExpired:
                result.timed_out = True
        finally:
            result.seconds = time.perf_counter() - started
            end_window()
            sampler.stop()
            # Timed out or interrupted: the whole group goes at once (its
            # workers hold eve's stdout open, so killing eve alone is not enough).
            leftovers = _reap_group(process.pid, grace=3.0 if finished else 0.0)
            if not finished:
                stdout, _ = process.communicate(timeout=10)
    result.detail.update({
        "exit_code": process.returncode,
        "peak_rss_mb": round(sampler.peak_kb / 1024, 1),
        "peak_rss_processes": sampler.peak_processes,
        "max_processes": sampler.max_processes,
        "rss_samples": sampler.samples,
        "leftover_processes": leftovers,
    })
    if leftovers and not result.timed_out:
        result.detail["warning"] = f"{leftovers} process(es) of eve's tree outlived it (killed)"
    summary = _parse_eve_summary(stdout.decode(errors="replace"))
    result.detail["summary"] = summary
    if summary is not None:
        missing = [name for name in EVE_FIELDS if name not in summary]
        if missing:
            result.detail["summary_missing_fields"] = missing
        result.keys = int(summary.get("restored", 0) or 0)
    if result.timed_out:
        return
    if process.returncode != 0 or summary is None:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        what = f"exited {process.returncode}" if process.returncode else "printed no JSON summary"
        result.error = f"eve {what}; stderr tail:\n{tail}" if tail else f"eve {what}"


# --------------------------------------------------------------------------- the run


def measure_idle(source: RedisServer, options: BenchOptions) -> ClientStats:
    with ConcurrentClient(source, options.keys, options.seed + 1000,
                          options.idle_seconds + 30) as client:
        time.sleep(options.idle_seconds)
        return client.stop()


def run_method(method: str, source: RedisServer, target: RedisServer, options: BenchOptions,
               workdir: Path, idle: ClientStats) -> MethodResult:
    result = MethodResult(method=method)
    source_db, target_db = _client(source, 60), _client(target, 60)
    try:
        target_db.flushall()
        result.source_keys = source_db.dbsize()
        deadline = time.monotonic() + options.method_timeout
        seed = options.seed + 1000 + METHODS.index(method) + 1
        with ConcurrentClient(source, options.keys, seed, options.method_timeout + 30) as client:
            try:
                if method in EVE_METHODS:
                    run_eve(source, target, options, workdir / f"{method}.stderr.log", deadline, result,
                            client.end_window, eve_method_args(method, options))
                elif method == "migrate":
                    run_migrate(source, target, deadline, result, client.end_window)
                else:
                    run_redis_py_loop(source, target, deadline, result, client.end_window)
            except redis.RedisError as exc:
                result.error = f"{type(exc).__name__}: {exc}"
            result.client = client.stop()
        result.target_keys = target_db.dbsize()
    finally:
        source_db.close()
        target_db.close()
    result.keys_per_sec = round(result.keys / result.seconds, 1) if result.seconds else 0.0
    result.seconds = round(result.seconds, 3)
    result.verified = (result.error is None and not result.timed_out
                       and result.target_keys == result.source_keys)
    result.client_ops_vs_idle = _round(_ratio(result.client.ops_per_sec, idle.ops_per_sec))
    result.client_p99_vs_idle = _round(_ratio(result.client.p99_ms, idle.p99_ms))
    return result


def compute_ratios(results: dict[str, MethodResult]) -> dict[str, float | None]:
    def rate(method: str) -> float | None:
        found = results.get(method)
        return found.keys_per_sec if found is not None and found.verified else None

    eve = results.get("eve")
    latency = results.get("eve-latency")
    return {
        "eve_vs_migrate": _round(_ratio(rate("eve"), rate("migrate"))),
        "eve_full_vs_migrate": _round(_ratio(rate("eve-full"), rate("migrate"))),
        "eve_latency_client_p99_ms": (latency.client.p99_ms if latency is not None and latency.client is not None
                                      and latency.verified else None),
        "eve_latency_vs_migrate": _round(_ratio(rate("eve-latency"), rate("migrate"))),
        "eve_vs_redis_py_loop": _round(_ratio(rate("eve"), rate("redis-py-loop"))),
        "eve_peak_rss_mb": eve.detail.get("peak_rss_mb") if eve is not None else None,
        "client_ops_during_eve_vs_idle": eve.client_ops_vs_idle if eve is not None else None,
        **{name: _round(_ratio(rate(row), rate(baseline))) for name, (row, baseline) in CROSS_RATIOS.items()},
    }


def judge_targets(ratios: dict[str, float | None], budget_ms: float = DEFAULT_LATENCY_BUDGET_MS
                  ) -> list[dict[str, Any]]:
    judged = []
    for name, what, comparison, goal in TARGETS:
        value = ratios.get(name)
        if name == "eve_latency_client_p99_ms":
            goal = budget_ms  # the goal is the budget the row ran with
        if goal is None or value is None:
            met = None
        elif comparison == ">=":
            met = value >= goal
        elif comparison == "<=":
            met = value <= goal
        else:
            met = value < goal
        judged.append({"name": name, "what": what, "value": value,
                       "target": "-" if goal is None else f"{comparison} {goal:g}", "met": met})
    return judged


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_report(report: dict[str, Any], idle: ClientStats, results: dict[str, MethodResult]) -> None:
    env = report["environment"]
    load = report["load"]
    print(f"Eve bulk copy benchmark: {env['engine']} (cross-version rows: the engines they name), "
          f"{report['options']['keys']:,} keys "
          f"(loaded in {load['seconds']:.1f} s), {env['cpus']} CPUs, "
          f"restorers={report['options']['restorers'] or 'default'}")
    header = (f"{'method':<16} {'keys':>10} {'seconds':>8} {'keys/s':>10} {'ok':>3}   "
              f"{'client ops/s':>12} {'x idle':>6}  {'p99 ms':>7} {'x idle':>6}")
    print(header)
    print("-" * len(header))
    print(f"{'idle':<16} {'-':>10} {idle.seconds:>8.1f} {'-':>10} {'-':>3}   "
          f"{idle.ops_per_sec:>12,.0f} {'1.00':>6}  {idle.p99_ms:>7.3f} {'1.00':>6}")
    for method, result in results.items():
        client = result.client
        mark = "yes" if result.verified else "NO"
        print(f"{method:<16} {result.keys:>10,} {result.seconds:>8.1f} "
              f"{_fmt_rate(result.keys_per_sec):>10} {mark:>3}   "
              f"{_fmt_rate(client.ops_per_sec if client else None):>12} "
              f"{_fmt_ratio(result.client_ops_vs_idle):>6}  "
              f"{(f'{client.p99_ms:.3f}' if client else '-'):>7} "
              f"{_fmt_ratio(result.client_p99_vs_idle):>6}")
    eve = results.get("eve")
    if eve is not None:
        summary = eve.detail.get("summary") or {}
        own = summary.get("keys_per_sec")
        print(f"eve: peak RSS {eve.detail.get('peak_rss_mb', 0):.1f} MB over "
              f"{eve.detail.get('peak_rss_processes', 0)} processes; its own summary: "
              + (", ".join(f"{name}={summary[name]}" for name in EVE_FIELDS if name in summary)
                 or "none")
              + (" (keys/s in the table is wall clock, eve's startup included)"
                 if isinstance(own, (int, float)) else ""))
    print()
    print(f"{'ratio':<42} {'value':>8} {'target':>8}  result")
    for target in report["targets"]:
        value = target["value"]
        shown = "-" if value is None else (f"{value:.1f}" if "rss" in target["name"] else f"{value:.2f}")
        verdict = ("reported" if target["target"] == "-" and value is not None
                   else {True: "met", False: "MISSED", None: "n/a"}[target["met"]])
        print(f"{target['what']:<42} {shown:>8} {target['target']:>8}  {verdict}")
    for warning in report["warnings"]:
        print(f"warning: {warning}")


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies over all CPUs, from the first line of /proc/stat (proc(5))."""
    with open("/proc/stat", "rb") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])  # guest time is already counted in user


def measure_other_load(warnings: list[str], seconds: float = 1.0) -> float | None:
    """Share of the CPUs busy before the benchmark starts anything; warns above 25%.

    Everything here shares the CPUs, so other work (a test suite, another
    benchmark) moves every number, Eve's most of all. Returns None off Linux.
    """
    try:
        idle_before, total_before = _cpu_times()
        time.sleep(seconds)
        idle_after, total_after = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    total = total_after - total_before
    busy = 1 - (idle_after - idle_before) / total if total > 0 else 0.0
    if busy > 0.25:
        warnings.append(f"machine busy before the run: {busy:.0%} of {os.cpu_count()} CPUs in use "
                        "by other work; every number here is affected")
        log(f"warning: {warnings[-1]}")
    return round(busy, 3)


class Pairs:
    """The servers of every row: the --engine pair for the default rows, and for each
    cross-version row a source of its engine (started and loaded once per engine, with its own
    idle client window) and a target of its engine."""

    def __init__(self, options: BenchOptions, workdir: Path, servers: list[RedisServer]) -> None:
        self.options = options
        self.workdir = workdir
        self.servers = servers
        self.sources: dict[str, tuple[RedisServer, dict[str, Any], ClientStats]] = {}
        self.targets: dict[str, RedisServer] = {}

    def source(self, engine: str) -> tuple[RedisServer, dict[str, Any], ClientStats]:
        """The loaded source of ``engine``, its load report and its idle client window."""
        if engine not in self.sources:
            options = self.options
            server = self._start(engine, f"source-{engine}")
            log(f"loading {options.keys:,} keys into the {engine} source on port {server.port}")
            load = load_keyspace(server, options.keys, options.seed, time.monotonic() + 60 + options.keys / 5000)
            log(f"loaded in {load['seconds']:.1f} s; idle client window of {options.idle_seconds:g} s")
            idle = measure_idle(server, options)
            log(f"idle client of {engine}: {idle.ops_per_sec:,.0f} ops/s, p99 {idle.p99_ms:.3f} ms")
            self.sources[engine] = (server, load, idle)
        return self.sources[engine]

    def target(self, engine: str) -> RedisServer:
        if engine not in self.targets:
            self.targets[engine] = self._start(engine, f"target-{engine}")
        return self.targets[engine]

    def for_method(self, method: str) -> tuple[RedisServer, RedisServer, ClientStats]:
        source_engine, target_engine = CROSS_VERSION[method][:2] if method in CROSS_VERSION else (
            self.options.engine, self.options.engine)
        source, _load, idle = self.source(source_engine)
        return source, self.target(target_engine), idle

    def _start(self, engine: str, name: str) -> RedisServer:
        log(f"starting {name} in {self.workdir}")
        server = start_server(get_engine(engine), self.workdir / name)
        self.servers.append(server)
        return server


def run(options: BenchOptions) -> int:
    engine = get_engine(options.engine)
    workdir = Path(tempfile.mkdtemp(prefix="eve-bench-"))
    servers: list[RedisServer] = []
    warnings: list[str] = []
    results: dict[str, MethodResult] = {}
    stack = contextlib.ExitStack()
    try:
        methods = list(options.methods)
        eve_rows = [method for method in methods if method in EVE_METHODS]
        if eve_rows:
            available, why = eve_available(options.eve_command)
            if not available:
                warnings.append(f"{', '.join(eve_rows)} skipped: `eve migrate` is not available ({why})")
                log(warnings[-1])
                methods = [method for method in methods if method not in EVE_METHODS]
        cpu_busy_before = measure_other_load(warnings)
        pairs = Pairs(options, workdir, servers)
        keep_awake = KeepAwake(options.keep_awake,
                               (options.idle_seconds + options.method_timeout + 120) * (len(methods) + 2))
        stack.enter_context(keep_awake)
        first = methods[0] if methods else None
        _source, load, idle = pairs.source(CROSS_VERSION[first][0] if first in CROSS_VERSION else engine.name)
        for method in methods:
            source, target, idle_of_source = pairs.for_method(method)
            log(f"{method}: copying to the target on port {target.port}")
            result = run_method(method, source, target, options, workdir, idle_of_source)
            results[method] = result
            log(f"{method}: {result.keys:,} keys in {result.seconds:.1f} s = "
                f"{result.keys_per_sec:,.0f} keys/s; target {result.target_keys:,} "
                f"of {result.source_keys:,}")
            if result.timed_out:
                warnings.append(f"{method} timed out after {options.method_timeout:g} s")
            if result.error:
                warnings.append(f"{method} failed: {result.error}")
            if result.target_keys != result.source_keys:
                warnings.append(f"{method}: target DBSIZE {result.target_keys} != "
                                f"source DBSIZE {result.source_keys}; result marked unverified")
            if result.detail.get("warning"):
                warnings.append(f"{method}: {result.detail['warning']}")
            for warning in warnings:
                if warning.startswith(method):
                    log(f"warning: {warning}")
        ratios = compute_ratios(results)
        report = {
            "options": {name: value for name, value in asdict(options).items() if name != "as_json"},
            "environment": {
                "engine": engine.name, "cpus": os.cpu_count(), "python": platform.python_version(),
                "platform": platform.platform(), "redis_py": redis.__version__,
                "keep_awake": keep_awake.enabled,
                "cpu_busy_before": cpu_busy_before,
            },
            "keyspace": {"mix_percent": dict(KEY_MIX), "string_bytes": STRING_VALUE_BYTES,
                         "elements": ELEMENTS, "stream_entries": STREAM_ENTRIES,
                         "ttl_share": TTL_SHARE, "ttl_ms": [TTL_MS - TTL_JITTER_MS, TTL_MS + TTL_JITTER_MS]},
            "load": load,
            "idle_client": asdict(idle),
            "methods": {method: asdict(result) for method, result in results.items()},
            "ratios": ratios,
            "targets": judge_targets(ratios, options.latency_budget_ms),
            "warnings": warnings,
        }
        if options.as_json:
            print(json.dumps(report, indent=2, default=str))
        else:
            print_report(report, idle, results)
        return 0 if all(result.verified for result in results.values()) else 1
    finally:
        try:
            stack.close()
            stop_all(reversed(servers))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> BenchOptions:
    parser = argparse.ArgumentParser(
        prog="bench/bulk.py",
        description="Bulk copy: eve migrate vs a plain redis-py loop vs the server's MIGRATE, "
                    "with the impact on a concurrent client of the source.")
    parser.add_argument("--keys", type=int, default=DEFAULT_KEYS,
                        help="keys to load into the source (default %(default)s)")
    parser.add_argument("--engine", default=DEFAULT_ENGINE, choices=ENGINE_NAMES,
                        help="engine of both servers (default %(default)s)")
    parser.add_argument("--restorers", type=int, default=None,
                        help="passed to eve migrate --restorers (default: eve's own)")
    parser.add_argument("--json", dest="as_json", action="store_true",
                        help="print one JSON object instead of the table")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)} (default %(default)s)")
    parser.add_argument("--idle-seconds", type=float, default=DEFAULT_IDLE_SECONDS,
                        help="length of the idle client window (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="deadline per method in seconds (default 120 + keys/1000)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="keyspace seed")
    parser.add_argument("--eve-cmd", default=f"{shlex.quote(sys.executable)} -m eve",
                        help="how to run eve (default: this interpreter's -m eve)")
    parser.add_argument("--eve-args", default="",
                        help="extra eve migrate options, e.g. '--source-share 0.5'")
    parser.add_argument("--latency-budget-ms", type=float, default=DEFAULT_LATENCY_BUDGET_MS, metavar="MS",
                        help="the eve-latency row's eve migrate --latency-budget-ms (default %(default)s)")
    parser.add_argument("--no-keep-awake", dest="keep_awake", action="store_false",
                        help="do not run idle-priority spinners during client windows "
                             "(see KeepAwake)")
    args = parser.parse_args(argv)
    methods = tuple(dict.fromkeys(name.strip() for name in args.methods.split(",") if name.strip()))
    unknown = [name for name in methods if name not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    if args.keys < 100:
        parser.error("--keys must be at least 100 (the client needs string keys to use)")
    if args.restorers is not None and args.restorers < 1:
        parser.error("--restorers must be at least 1")
    if args.idle_seconds <= 0:
        parser.error("--idle-seconds must be positive")
    if not args.latency_budget_ms > 0:
        parser.error("--latency-budget-ms must be positive")
    return BenchOptions(
        keys=args.keys,
        engine=args.engine,
        restorers=args.restorers,
        methods=methods,
        idle_seconds=args.idle_seconds,
        method_timeout=args.timeout if args.timeout else 120 + args.keys / 1000,
        seed=args.seed,
        eve_command=tuple(shlex.split(args.eve_cmd)),
        eve_args=tuple(shlex.split(args.eve_args)),
        keep_awake=args.keep_awake,
        as_json=args.as_json,
        latency_budget_ms=args.latency_budget_ms,
    )


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C, so every finally block stops what it started.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(options)
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        return 130
    except (EngineNotFound, ServerStartError) as exc:
        log(str(exc))
        return 2
    except BenchError as exc:
        log(f"failed: {exc}")
        return 1
    except redis.RedisError as exc:
        log(f"failed: a server stopped answering: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
