"""The scanner process: SCAN + DUMP + PTTL of one source node, as BATCH frames.

The worker loop has the one shape every Eve stage shares (STYLE.md, after
pgcopydb): for each database, check for a stop, take one SCAN step, read its
keys, put one frame; end with an explicit STOP, or a FAILED saying who failed.

One step is ``SCAN cursor [MATCH m] COUNT n [TYPE t]`` followed by pipelined
``DUMP key`` + ``PTTL key`` for the keys it returned (DESIGN.md section 4):

* ``PTTL`` -2 or ``DUMP`` nil: the key vanished since SCAN; it is counted in
  ``header.skipped``, not sent.
* ``PTTL`` -1: no expiry (row expiry 0). ``PTTL`` >= 0: the absolute expiry in
  Unix milliseconds, from the wall clock read right after the reply; a PTTL of
  0 still sends the key (expiring now) and the restorer decides.
  With ``preserve_ttl`` off no PTTL is sent at all and every expiry is 0.
* A per-key error reply (a module type that cannot be dumped, a key that moved
  to another cluster node, ...) skips the key with a warning naming it.
  Errors that concern the node rather than the key are not skipped
  (``eve.redis.cluster.classify``): denied ones (``NOPERM``/``NOAUTH``/
  ``WRONGPASS``) fail the scanner (every key would fail alike) and transient
  ones (``LOADING``, ``BUSY``, ``TRYAGAIN``, ``CLUSTERDOWN``, ``MASTERDOWN``, ...;
  the one set every part of Eve retries) redo the step.

Big keys: with ``big_key_threshold_bytes`` set (the default), the step's keys go through
pipelined ``MEMORY USAGE`` first; a key above the threshold is never DUMPed (DUMP of a
2,000,000-member sorted set holds the source for a long time) but sent in the batch's
``big`` list, for the restorer to copy in chunks (``restorer.bigkeys``).

Frames: one BATCH per SCAN reply, ``seq`` counting from 0 per database within
this epoch (also when resuming from a start cursor). An empty SCAN reply whose
cursor is not 0 is folded into the next batch; the last batch of a database
(cursor 0, ``last=True``) is always sent, even with no rows.

Failures: a lost connection (or a retryable error reply) redoes the current
step from the same cursor (SCAN is idempotent at a cursor), reconnecting with
``eve.redis.cluster.Backoff`` (0.05 s doubling to 2 s) for up to
``reconnect_seconds``; then FAILED("source", reason naming the address). The
scanner reads one node only, so it redoes whole steps rather than resending
pipelines through the cluster client. The first connection gets the
same grace. Refused credentials, and error replies to SCAN itself
(``NOPERM``, a bad TYPE, ...), fail at once.

Restarts: every connection the scanner opens reads the node's ``run_id``
(``eve.redis.cluster.ServerRunIds``) and compares it with the one the job
planned with (``ScannerOptions.server_run_id``). Another one means the
source restarted: its SCAN cursors (and the keys a non-persistent one held) are
gone, so the scanner puts RESTARTED("source", both run_ids) and ends rather
than scanning on from a cursor that means nothing now.

Stopping: ``stop_event`` is checked before every step and wakes every sleep
(rate limit, latency backoff, reconnect). The step in progress is dropped,
never half sent (its cursor was not acknowledged, so a resume redoes it), then
STOP is put and ``run_scanner`` returns True. A ``put`` blocked on a full queue
is not interrupted: backpressure wins, the consumer has to drain.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import statistics
import sys
import time
from typing import Any, Callable, Protocol, Sequence

from opentelemetry import metrics, trace
from opentelemetry.propagate import inject

from eve.core.errors import AuthError, EndpointError, Side, SourceError, UnavailableError
from eve.core.frames import Batch, BatchHeader, Failed, Restarted, Stop, encode
from eve.core.telemetry import context_of, setup
from eve.core.worker_logs import forward_to
from eve.redis.cluster import (
    DENIED,
    RECONNECT_FIRST_DELAY,
    RECONNECT_MAX_DELAY,
    TRANSIENT,
    Backoff,
    ServerRestarted,
    ServerRunIds,
    classify,
)
from eve.redis.wire import FastConnection, ReplyError, pack
from scanner.options import DEFAULT_MAX_PIPELINE, ScannerOptions

__all__ = [
    "run_scanner",
    "main",
    "rows_from_replies",
    "TokenBucket",
    "LatencyGuard",
    "LatencyBudget",
    "BASELINE_ROUND_TRIPS",
    "DECREASE_INTERVAL",
    "MIN_DEPTH",
    "MIN_SHARE",
    "PROBE_WINDOW_SECONDS",
    "TOLERATED_OVER_BUDGET",
    "DEPTH_INCREASE_PER_SECOND",
    "SHARE_INCREASE_PER_SECOND",
    "MAX_BACKOFF_SECONDS",
    "RECONNECT_MIN_DELAY",
    "RECONNECT_MAX_DELAY",
]

log = logging.getLogger("eve.scanner")

Row = tuple[bytes, int, bytes]

RECONNECT_MIN_DELAY = RECONNECT_FIRST_DELAY
BASELINE_ROUND_TRIPS = 5     # DUMP/PTTL round trips that set the latency baseline
MAX_BACKOFF_SECONDS = 2.0    # longest single latency backoff
# The latency budget's AIMD (LatencyBudget): the pipeline depth, then the share of wall time the
# scanner may spend in round trips, is halved on a probe over budget, at most once per
# DECREASE_INTERVAL (one slow spell is one signal, not one per round trip caught in it), and
# grows back linearly: from the least to the most in about ten seconds of a source within budget.
MIN_SHARE = 0.02
MIN_DEPTH = 16               # keys per DUMP/PTTL round trip, at the least
DECREASE = 0.5               # what a cut leaves of the depth, then of the share
SHARE_INCREASE_PER_SECOND = 0.1
DEPTH_INCREASE_PER_SECOND = 0.1  # of the largest depth
DECREASE_INTERVAL = 0.1
# The budget bounds the source's p99 latency, not its maximum (a host's scheduler alone delays
# a command now and then, whatever the scanner does): a late probe is a reason to back off when
# the late probes of the last PROBE_WINDOW_SECONDS waited beyond the budget more than 1% of it
# in all. Time, not a count of probes: they come thick while the source is quick and one per
# stall while it is not, so counting them would hide the stalls.
PROBE_WINDOW_SECONDS = 1.0
TOLERATED_OVER_BUDGET = 0.01
BUCKET_SECONDS = 0.1         # a token bucket holds this much of a second's budget
STOP_POLL_SECONDS = 0.1      # how often main()'s combined stop signal is looked at while sleeping
KEY_REPR_LIMIT = 80
CLIENT_NAME = "eve-scanner"

# One key's commands, formatted in a list comprehension per chunk and joined
# once: the cheapest way found to build thousands of commands in Python.
_DUMP_PTTL = b"*2\r\n$4\r\nDUMP\r\n$%d\r\n%s\r\n*2\r\n$4\r\nPTTL\r\n$%d\r\n%s\r\n"
_DUMP = b"*2\r\n$4\r\nDUMP\r\n$%d\r\n%s\r\n"
_TIME = pack("TIME")
_MEMORY_USAGE = b"*3\r\n$6\r\nMEMORY\r\n$5\r\nUSAGE\r\n$%d\r\n%s\r\n"


class StopEvent(Protocol):
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class BatchQueue(Protocol):
    def put(self, item: bytes) -> None: ...


class _Stopped(Exception):
    """The stop event was set while the scanner waited."""


class _Transient(Exception):
    """An error reply worth retrying like a lost connection."""


# --------------------------------------------------------------------------- rows


def rows_from_replies(keys: Sequence[bytes], replies: Sequence[Any], now_ms: int,
                      preserve_ttl: bool) -> tuple[list[Row], int, list[tuple[bytes, ReplyError]]]:
    """Turn a chunk's replies into rows: ``(rows, skipped, key_errors)``.

    ``replies`` alternate DUMP and PTTL per key (only DUMP without
    ``preserve_ttl``). ``skipped`` counts vanished keys and keys answered with
    an error; ``key_errors`` lists the latter for the caller to judge.
    """
    if preserve_ttl:
        dumps, pttls = replies[0::2], replies[1::2]
        try:
            # The common case in one comprehension: no per-key function call.
            rows = [(key, now_ms + pttl if pttl >= 0 else 0, payload)
                    for key, payload, pttl in zip(keys, dumps, pttls)
                    if pttl != -2 and payload.__class__ is bytes]
        except TypeError:  # a PTTL error reply next to a payload
            rows = []
    else:
        rows = [(key, 0, payload) for key, payload in zip(keys, replies) if payload.__class__ is bytes]
    if len(rows) == len(keys):
        return rows, 0, []
    # Something was skipped: go again, key by key, to tell vanished keys from errors.
    rows, skipped = [], 0
    errors: list[tuple[bytes, ReplyError]] = []
    for index, key in enumerate(keys):
        payload = replies[2 * index] if preserve_ttl else replies[index]
        pttl = replies[2 * index + 1] if preserve_ttl else -1
        if isinstance(payload, ReplyError):
            errors.append((key, payload))
        elif isinstance(pttl, ReplyError):
            errors.append((key, pttl))
        elif payload is None or pttl == -2:
            skipped += 1
        else:
            rows.append((key, now_ms + pttl if pttl >= 0 and preserve_ttl else 0, payload))
    return rows, skipped + len(errors), errors


def _key_repr(key: bytes) -> str:
    return repr(key[:KEY_REPR_LIMIT]) + ("..." if len(key) > KEY_REPR_LIMIT else "")


# --------------------------------------------------------------------------- source protection


class TokenBucket:
    """``rate`` units per second, holding at most ``burst``; ``charge`` says how long to sleep.

    Charging may overdraw the bucket (a chunk is never cut to fit); the caller
    then sleeps until the debt is paid, so the long-run rate is ``rate``.
    """

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = max(float(burst), 1.0)
        self.tokens = self.burst
        self._clock = clock
        self._stamp = clock()

    def charge(self, amount: float) -> float:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate) - amount
        self._stamp = now
        return -self.tokens / self.rate if self.tokens < 0 else 0.0


class LatencyGuard:
    """The latency backoff rule of ``ScannerOptions.backoff_latency_ms`` (see its docstring).

    ``observe(seconds, keys)`` takes one DUMP/PTTL round trip and returns how
    long to sleep before the next one (0 while the source keeps its pace).
    """

    def __init__(self, budget_ms: float, *, baseline_round_trips: int = BASELINE_ROUND_TRIPS) -> None:
        self.budget = budget_ms / 1000.0
        self.baseline_round_trips = baseline_round_trips
        self.baseline: float | None = None  # seconds per key
        self._samples: list[float] = []
        self._streak = 0

    def observe(self, seconds: float, keys: int) -> float:
        if keys <= 0:
            return 0.0
        per_key = seconds / keys
        if self.baseline is None:
            self._samples.append(per_key)
            if len(self._samples) >= self.baseline_round_trips:
                self.baseline = statistics.median(self._samples)
            return 0.0
        if per_key < self.baseline:
            self.baseline = per_key
        excess = seconds - self.baseline * keys
        if excess <= self.budget:
            self._streak = 0
            return 0.0
        self._streak += 1
        return min(excess * 2 ** (self._streak - 1), MAX_BACKOFF_SECONDS)


class LatencyBudget:
    """``ScannerOptions.latency_budget_ms``: AIMD on how hard the scanner loads the source, so
    that the source's command latency stays within the budget.

    The latency is what any client of the source sees while the scanner loads it: a probe
    (``TIME``) on a connection of its own, sent right behind each DUMP/PTTL pipeline, waits
    for the part of the pipeline the server works through first (the scanner's own round
    trip would mostly measure the scanner: a thousand replies to read). Two measures of one
    probe: its round trip, and how long after it was sent the server ran it (the server's
    ``TIME`` minus the scanner's clock at the send). The round trip also counts the scanner
    itself waiting for a CPU (on a busy host, often), the other an offset between the two
    clocks that may drift; each against its idle baseline, the lesser of the two excesses is
    the server's lateness. ``idle(round_trip, server_delay)`` gives the baselines (probes
    with nothing of the scanner in flight; lowered later by any faster probe), and
    ``observe(round_trip_of_probe, round_trip, server_delay)`` takes one probe and the
    DUMP/PTTL round trip it rode on. ``server_delay`` is optional (None: the round trip alone).

    Two levers, in this order: the pipeline ``depth`` (keys per round trip: how long one
    pipeline holds the server's event loop, hence how long a client's command can wait
    behind it) and the ``share`` of wall time spent in round trips (how many of the clients'
    commands meet one; the pause after a round trip is ``round_trip * (1 / share - 1)``).

    * A probe that waited more than the budget beyond the idle latency, when the late probes
      of the last ``PROBE_WINDOW_SECONDS`` waited beyond the budget more than
      ``TOLERATED_OVER_BUDGET`` of it in all (the budget is for the p99 latency), halves the
      depth, down to ``MIN_DEPTH``, then the share, down to ``MIN_SHARE``; at most once per
      ``DECREASE_INTERVAL`` (one slow spell is one signal).
    * A probe within the budget grows them back, the share first: by
      ``SHARE_INCREASE_PER_SECOND`` and ``DEPTH_INCREASE_PER_SECOND`` of ``max_depth`` per
      second since the previous probe. Down fast when the source's clients start waiting,
      up smoothly when they stop.

    Both start at their maximum (``max_depth``, ``max_share``). ``state()`` is what the
    controller did, for logs and tests.
    """

    def __init__(self, budget_ms: float, *, max_share: float = 1.0, max_depth: int = DEFAULT_MAX_PIPELINE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not budget_ms > 0:
            raise ValueError("budget_ms must be positive")
        self.budget = budget_ms / 1000.0
        self.max_share = max_share
        self.min_share = min(MIN_SHARE, max_share)
        self.max_depth = max_depth
        self.min_depth = min(MIN_DEPTH, max_depth)
        self.share = max_share
        self.depth = max_depth
        self.lowest_share = max_share
        self.lowest_depth = max_depth
        self.baseline: float | None = None   # seconds: a probe's round trip on the idle source
        self.server_baseline: float | None = None  # seconds: its server delay then (clock offset included)
        self.probes = 0
        self.over_budget = 0       # probes that waited more than the budget
        self.decreases = 0         # times the depth or the share was cut
        self.last_excess: float | None = None
        self.max_excess = 0.0
        self._depth = float(max_depth)
        # (when, seconds it waited beyond the budget) of the late probes of the last PROBE_WINDOW_SECONDS
        self._late: collections.deque[tuple[float, float]] = collections.deque()
        self._late_seconds = 0.0
        self._clock = clock
        self._last = clock()
        self._last_decrease: float | None = None

    def idle(self, latency: float, server_delay: float | None = None) -> None:
        if self.baseline is None or latency < self.baseline:
            self.baseline = latency
        if server_delay is not None and (self.server_baseline is None or server_delay < self.server_baseline):
            self.server_baseline = server_delay

    def observe(self, latency: float, round_trip: float, server_delay: float | None = None) -> float:
        """One probe; returns the pause before the next round trip."""
        now = self._clock()
        since, self._last = now - self._last, now
        self.probes += 1
        self.idle(latency, server_delay)  # a quieter moment than any before lowers the baselines
        assert self.baseline is not None
        excess = latency - self.baseline
        if server_delay is not None and self.server_baseline is not None:
            excess = min(excess, server_delay - self.server_baseline)
        self.last_excess = excess
        self.max_excess = max(self.max_excess, excess)
        over = excess > self.budget
        late_share = self._late_share(now, excess - self.budget if over else 0.0)
        if over:
            self.over_budget += 1
        if over and late_share > TOLERATED_OVER_BUDGET:
            if self._last_decrease is None or now - self._last_decrease >= DECREASE_INTERVAL:
                self._last_decrease = now
                self.decreases += 1
                if self._depth >= 2 * self.min_depth:
                    self._depth = max(float(self.min_depth), self._depth * DECREASE)
                else:  # as shallow as it goes (or about: it may have grown a little since)
                    self._depth = float(self.min_depth)
                    self.share = max(self.min_share, self.share * DECREASE)
        elif over:
            pass  # tolerated: the source was late for less time than the p99 allows
        elif self.share < self.max_share:
            self.share = min(self.max_share, self.share + SHARE_INCREASE_PER_SECOND * since)
        else:
            self._depth = min(float(self.max_depth), self._depth + DEPTH_INCREASE_PER_SECOND * self.max_depth * since)
        self.depth = max(self.min_depth, int(self._depth))
        self.lowest_share = min(self.lowest_share, self.share)
        self.lowest_depth = min(self.lowest_depth, self.depth)
        return self.pause(round_trip)

    def _late_share(self, now: float, late: float) -> float:
        """The share of the window the late probes (this one included) waited beyond the budget."""
        window = self._late
        if late:
            window.append((now, late))
            self._late_seconds += late
        while window and window[0][0] < now - PROBE_WINDOW_SECONDS:
            self._late_seconds -= window.popleft()[1]
        return self._late_seconds / PROBE_WINDOW_SECONDS

    def pause(self, round_trip: float) -> float:
        return round_trip * (1.0 / self.share - 1.0)

    def state(self) -> dict[str, float | int | None]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        return {"budget_ms": ms(self.budget), "depth": self.depth, "lowest_depth": self.lowest_depth,
                "share": round(self.share, 4), "lowest_share": round(self.lowest_share, 4), "probes": self.probes,
                "over_budget": self.over_budget, "decreases": self.decreases, "idle_ms": ms(self.baseline),
                "last_excess_ms": ms(self.last_excess), "max_excess_ms": ms(self.max_excess)}


# --------------------------------------------------------------------------- the worker


class _Log(logging.LoggerAdapter):
    """Every message names the process: ``scanner node=127.0.0.1:7000 pid=123 ...``."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['prefix']} {msg}", kwargs  # type: ignore[index]


class _Scanner:
    def __init__(self, options: ScannerOptions, batches: BatchQueue, stop_event: StopEvent | None,
                 tracer: trace.Tracer | None, meter: metrics.Meter | None) -> None:
        self.options = options
        self.batches = batches
        self.stop_event = stop_event
        self.tracer = tracer or trace.get_tracer(__name__)
        self.trace_parent = context_of(options.trace_context)  # the job's span (eve.core.telemetry)
        meter = meter or metrics.get_meter("eve.scanner")
        self.keys_counter = meter.create_counter("eve.scanner.keys", unit="{key}",
                                                 description="keys read from the source and sent")
        self.bytes_counter = meter.create_counter("eve.scanner.bytes", unit="By",
                                                  description="DUMP payload bytes read from the source")
        self.skipped_counter = meter.create_counter("eve.scanner.skipped", unit="{key}",
                                                    description="keys that vanished or could not be read")
        self.log = _Log(log, {"prefix": f"{options.worker} pid={os.getpid()}"})
        self.address = options.source.address
        known = {self.address: options.server_run_id} if options.server_run_id else None
        self.run_ids = ServerRunIds(known, log=self.log)
        self.conn = FastConnection(options.source, timeout=options.timeout, client_name=CLIENT_NAME,
                                   on_open=self._check_run_id)
        self.pipeline_size = options.max_pipeline
        self.key_bucket: TokenBucket | None = None
        self.byte_bucket: TokenBucket | None = None
        if options.max_keys_per_second:
            rate = options.max_keys_per_second
            # Round trips of at most a tenth of a second's keys keep a low rate smooth.
            self.pipeline_size = min(self.pipeline_size, max(1, int(rate * BUCKET_SECONDS)))
            self.key_bucket = TokenBucket(rate, rate * BUCKET_SECONDS)
        if options.max_bytes_per_second:
            rate = options.max_bytes_per_second
            self.byte_bucket = TokenBucket(rate, rate * BUCKET_SECONDS)
        self.guard = LatencyGuard(options.backoff_latency_ms) if options.backoff_latency_ms else None
        self.budget = (LatencyBudget(options.latency_budget_ms, max_share=options.max_source_share,
                                     max_depth=self.pipeline_size) if options.latency_budget_ms else None)
        # The latency budget's probe: a command any client could send, on a connection of its own.
        self.probe = (FastConnection(options.source, timeout=options.timeout, client_name=CLIENT_NAME + "-probe",
                                     on_open=self._check_run_id) if self.budget is not None else None)
        # With a latency budget the share moves (LatencyBudget); without, it is fixed.
        self.share_pause = 0.0 if self.budget is not None else 1.0 / options.max_source_share - 1.0
        scan_tail: list[str | int] = []
        if options.match is not None:
            scan_tail += ["MATCH", options.match]
        scan_tail += ["COUNT", options.count]
        if options.type is not None:
            scan_tail += ["TYPE", options.type]
        self.scan_tail = tuple(scan_tail)
        self.keys = self.skipped = self.bytes = self.batch_count = self.backoffs = 0
        self.big_key_threshold = options.big_key_threshold_bytes
        self._next_scan: tuple[int, int, Any] | None = None   # (db, cursor, its SCAN reply), read ahead

    # -- the loop ------------------------------------------------------------------

    def run(self) -> bool:
        options = self.options
        began = time.monotonic()
        self.log.info("starting: source=%r dbs=%s epoch=%d", options.source, list(options.dbs), options.epoch)
        try:
            for db in options.dbs:
                self._scan_db(db)
        except _Stopped as stopped:
            self.log.info("stop requested: stopped before %s (keys=%d)", stopped, self.keys)
        except ServerRestarted as exc:
            self.log.error("%s: ending, its SCAN cursors mean nothing now", exc)
            self.batches.put(encode(Restarted(options.worker, Side.SOURCE, exc.role, exc.address, exc.before,
                                              exc.after)))
            return False
        except SourceError as exc:
            self.log.error("failed: %s", exc)
            self.batches.put(encode(Failed(options.worker, Side.SOURCE, str(exc))))
            return False
        else:
            elapsed = time.monotonic() - began
            budget = "" if self.budget is None else " latency_budget=" + " ".join(
                f"{name}={value}" for name, value in self.budget.state().items())
            self.log.info("finished: keys=%d skipped=%d bytes=%d batches=%d backoffs=%d in %.1fs (%.0f keys/s)%s",
                          self.keys, self.skipped, self.bytes, self.batch_count, self.backoffs, elapsed,
                          self.keys / elapsed if elapsed > 0 else 0.0, budget)
        finally:
            self.conn.close()
            if self.probe is not None:
                self.probe.close()
        self.batches.put(encode(Stop(options.worker)))
        return True

    def _check_run_id(self, conn: Any) -> None:
        """Every connection's ``on_open``: the source is still the server the job planned with."""
        self.run_ids.check(conn, role="source", side=Side.SOURCE)

    def _scan_db(self, db: int) -> None:
        options = self.options
        cursor = options.start_cursor(db)
        seq = keys = skipped = 0
        began = time.monotonic()
        span_start: int | None = None
        attributes: dict[str, str | int] = {"node": options.node, "db": db}
        self.log.info("db=%d scanning from cursor=%d", db, cursor)
        while True:
            if self.stop_event is not None and self.stop_event.is_set():
                raise _Stopped(f"db={db} cursor={cursor}")
            if span_start is None:
                span_start = time.time_ns()
            cursor, scanned, rows, big, batch_skipped, nbytes = self._retrying(self._step, db, cursor)
            if scanned == 0 and cursor != 0:
                continue  # an empty reply: fold it into the next batch
            span = self.tracer.start_span("scan batch", context=self.trace_parent, start_time=span_start, attributes={
                "node": options.node, "db": db, "keys": len(rows), "big_keys": len(big), "bytes": nbytes,
                # OpenTelemetry attributes are int64; a SCAN cursor is unsigned 64-bit.
                "cursor": cursor if cursor < 1 << 63 else str(cursor),
                "skipped": batch_skipped, "seq": seq, "epoch": options.epoch})
            carrier: dict[str, str] = {}
            inject(carrier, context=trace.set_span_in_context(span))
            header = BatchHeader(options.run_id, options.node, db, options.epoch, seq, cursor,
                                 cursor == 0, scanned, batch_skipped, carrier)
            frame = encode(Batch(header, rows, big))
            span.end()
            self.batches.put(frame)  # blocks while the queue is full: backpressure
            seq += 1
            span_start = None
            keys += len(rows) + len(big)
            skipped += batch_skipped
            self.keys += len(rows) + len(big)
            self.skipped += batch_skipped
            self.bytes += nbytes
            self.batch_count += 1
            self.keys_counter.add(len(rows) + len(big), attributes)
            self.bytes_counter.add(nbytes, attributes)
            if batch_skipped:
                self.skipped_counter.add(batch_skipped, attributes)
            if cursor == 0:
                break
        elapsed = time.monotonic() - began
        self.log.info("db=%d done keys=%d skipped=%d batches=%d in %.1fs (%.0f keys/s)", db, keys, skipped, seq,
                      elapsed, keys / elapsed if elapsed > 0 else 0.0)

    # -- one step: SCAN, then DUMP/PTTL of its keys --------------------------------

    def _step(self, db: int, cursor: int) -> tuple[int, int, list[Row], list[tuple[bytes, int]], int, int]:
        """``(cursor_after, scanned, rows, big_keys, skipped, payload_bytes)`` of one SCAN call."""
        self.conn.select(db)
        reply, self._next_scan = (self._next_scan[2] if self._next_scan and self._next_scan[:2] == (db, cursor)
                                  else self.conn.pipeline(pack("SCAN", cursor, *self.scan_tail), 1)[0]), None
        if isinstance(reply, ReplyError):
            self._raise_for(reply, f"SCAN {cursor}")
        keys, after = reply[1], int(reply[0])
        if not keys:
            return after, 0, [], [], 0, 0
        big: list[tuple[bytes, int]] = []
        if self.big_key_threshold:
            keys, big = self._sort_out_big_keys(db, keys, after)
        rows, skipped, nbytes = self._read(db, keys) if keys else ([], 0, 0)
        return after, len(keys) + len(big), rows, big, skipped, nbytes

    def _sort_out_big_keys(self, db: int, keys: list[bytes], after: int) -> tuple[list[bytes], list[tuple[bytes, int]]]:
        """``(keys to DUMP, [(big key, bytes)])`` by ``MEMORY USAGE`` (ScannerOptions docstring).
        A key MEMORY USAGE does not find (nil: gone since SCAN) is left to DUMP to skip. The
        next step's SCAN (from ``after``) rides in the first round trip, so that telling big
        keys apart costs no round trip of its own: a step still takes two, as without it."""
        small: list[bytes] = []
        big: list[tuple[bytes, int]] = []
        step = self.pipeline_size
        for start in range(0, len(keys), step):
            chunk = keys[start:start + step]
            packed = b"".join([_MEMORY_USAGE % (len(key), key) for key in chunk])
            prefetch = start == 0 and after != 0
            replies = self.conn.pipeline(packed + pack("SCAN", after, *self.scan_tail) if prefetch else packed,
                                         len(chunk) + prefetch)
            if prefetch:
                self._next_scan = (db, after, replies.pop())
            refused = next((reply for reply in replies if isinstance(reply, ReplyError)), None)
            if refused is not None:
                if classify(str(refused))[0] == TRANSIENT:
                    raise _Transient(f"{self.address} answered MEMORY USAGE with: {refused}")
                self.log.warning("the source refuses MEMORY USAGE (%s): big keys are not told apart, every key is "
                                 "DUMPed whole", refused)
                self.big_key_threshold = 0
                return keys, []
            threshold = self.big_key_threshold
            for key, usage in zip(chunk, replies):
                if usage is not None and usage > threshold:
                    big.append((key, usage))
                else:
                    small.append(key)
        return (keys if not big else small), big

    def _read(self, db: int, keys: list[bytes]) -> tuple[list[Row], int, int]:
        preserve_ttl = self.options.preserve_ttl
        budget = self.budget
        rows: list[Row] = []
        skipped = nbytes = 0
        start = 0
        while start < len(keys):
            # Under a latency budget the depth moves from one round trip to the next.
            size = self.pipeline_size if budget is None else min(self.pipeline_size, budget.depth)
            chunk = keys if start == 0 and len(keys) <= size else keys[start:start + size]
            start += len(chunk)
            if self.key_bucket is not None:
                self._sleep(self.key_bucket.charge(len(chunk)))
            if preserve_ttl:
                packed = b"".join([_DUMP_PTTL % (len(key), key, len(key), key) for key in chunk])
                count = 2 * len(chunk)
            else:
                packed = b"".join([_DUMP % (len(key), key) for key in chunk])
                count = len(chunk)
            sent = time.monotonic()
            if self.budget is None:
                replies = self.conn.pipeline(packed, count)
            else:
                replies, latency, server_delay = self._probed(packed, count)
            now_ms = int(time.time() * 1000)
            elapsed = time.monotonic() - sent
            chunk_rows, chunk_skipped, errors = rows_from_replies(chunk, replies, now_ms, preserve_ttl)
            if errors:
                self._key_errors(db, errors)
            chunk_bytes = sum([len(row[2]) for row in chunk_rows])
            if rows:
                rows += chunk_rows
            else:
                rows = chunk_rows
            skipped += chunk_skipped
            nbytes += chunk_bytes
            if self.byte_bucket is not None:
                self._sleep(self.byte_bucket.charge(chunk_bytes))
            if self.share_pause:
                self._sleep(elapsed * self.share_pause)
            if budget is not None:
                before = budget.decreases
                pause = budget.observe(latency, elapsed, server_delay)
                if budget.decreases != before:
                    self.backoffs += 1
                    self.log.debug("db=%d the source ran a probe %.2fms later than when idle (budget %.2fms): "
                                   "now %d keys per round trip, share %.3f", db, (budget.last_excess or 0) * 1000,
                                   budget.budget * 1000, budget.depth, budget.share)
                self._sleep(pause)
            if self.guard is not None:
                pause = self.guard.observe(elapsed, len(chunk))
                if pause:
                    self.backoffs += 1
                    self.log.debug("db=%d source latency %.1fms for %d keys is above the baseline; backing off %.3fs",
                                   db, elapsed * 1000, len(chunk), pause)
                    self._sleep(pause)
        return rows, skipped, nbytes

    def _probed(self, packed: bytes, count: int) -> tuple[list[Any], float, float | None]:
        """One DUMP/PTTL pipeline with the latency budget's probe, sent right behind it and run
        while the source works through it: (replies, the probe's round trip, its server delay)."""
        budget = self.budget
        assert budget is not None
        if budget.baseline is None:
            # The idle baselines: probes with nothing of the scanner in flight.
            for _ in range(BASELINE_ROUND_TRIPS):
                budget.idle(*self._probe())
        self.conn.send(packed)
        try:
            latency, server_delay = self._probe()
        except BaseException:
            self.conn.close()  # its replies were never read: it cannot carry anything else
            raise
        return self.conn.replies(count), latency, server_delay

    def _probe(self) -> tuple[float, float | None]:
        """``TIME`` on the probe connection: (its round trip, how long after the send the server
        ran it by the server's clock; None when the reply is not a time)."""
        probe = self.probe
        assert probe is not None
        sent_at, began = time.time(), time.monotonic()
        reply = probe.pipeline(_TIME, 1)[0]
        latency = time.monotonic() - began
        try:
            server_time = int(reply[0]) + int(reply[1]) / 1e6
        except (TypeError, ValueError, IndexError):  # TIME refused (ACL): the round trip alone
            return latency, None
        return latency, server_time - sent_at

    def _key_errors(self, db: int, errors: list[tuple[bytes, ReplyError]]) -> None:
        for key, error in errors:
            text = str(error)
            kind = classify(text)[0]
            # Denied: skipping would silently drop every key. Transient: the node cannot
            # answer right now (loading, a slow script, the cluster reconfiguring).
            if kind == DENIED:
                raise SourceError(f"{self.address} refused DUMP/PTTL of {_key_repr(key)}: {text}")
            if kind == TRANSIENT:
                raise _Transient(f"{self.address} answered DUMP/PTTL of {_key_repr(key)} with: {text}")
        for key, error in errors:
            self.log.warning("db=%d skipped key %s: the source could not read it: %s", db, _key_repr(key), error,
                             extra={"reason": f"the source could not read a key: {error}"})

    def _raise_for(self, reply: ReplyError, what: str) -> None:
        text = str(reply)
        if classify(text)[0] == TRANSIENT:
            raise _Transient(f"{self.address} answered {what} with: {text}")
        raise SourceError(f"{what} failed on {self.address}: {text}")

    # -- waiting and retrying -------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self.stop_event is None:
            time.sleep(seconds)
        elif self.stop_event.wait(seconds):
            raise _Stopped("the step in progress")

    def _retrying(self, step: Callable[..., Any], *args: Any) -> Any:
        """Run ``step``, redoing it after a lost connection until ``reconnect_seconds`` pass."""
        backoff: Backoff | None = None
        while True:
            try:
                result = step(*args)
            except AuthError as exc:
                raise SourceError(str(exc)) from exc
            except ServerRestarted:
                raise
            except (UnavailableError, _Transient) as exc:
                if backoff is None:
                    backoff = Backoff(self.options.reconnect_seconds)
                    if self.options.reconnect_seconds:
                        self.log.warning("%s; retrying for up to %gs", exc, self.options.reconnect_seconds)
                delay = backoff.next()
                if delay is None:
                    raise SourceError(f"source {self.address} unavailable for "
                                      f"{self.options.reconnect_seconds:g}s: {exc}") from exc
                self._sleep(delay)
                continue
            except EndpointError as exc:
                raise SourceError(str(exc)) from exc
            if backoff is not None:
                self.log.info("source %s answers again", self.address)
            return result


def run_scanner(options: ScannerOptions, batches: BatchQueue, *, stop_event: StopEvent | None = None,
                tracer: trace.Tracer | None = None, meter: metrics.Meter | None = None) -> bool:
    """Scan ``options.dbs`` of one source node into ``batches``; True when it ended with STOP.

    ``batches`` is any queue with a blocking ``put(bytes)`` (a bounded
    ``multiprocessing`` queue in production). Exactly one of STOP (returns
    True: finished, or stopped by ``stop_event``) or FAILED (returns False)
    is the last frame put. Unexpected exceptions (bugs) propagate; ``main``
    turns them into FAILED("internal").
    """
    return _Scanner(options, batches, stop_event, tracer, meter).run()


# --------------------------------------------------------------------------- process entry point


class _StopSignal:
    """The caller's stop event, or SIGTERM/SIGINT: whichever comes first.

    The signal handler only sets a flag (taking a lock in a handler can
    deadlock); sleeps look at the flag every ``STOP_POLL_SECONDS``.
    """

    def __init__(self, event: StopEvent | None) -> None:
        self.event = event
        self.signalled = False

    def handle(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def is_set(self) -> bool:
        return self.signalled or (self.event is not None and self.event.is_set())

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            remaining = STOP_POLL_SECONDS if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return False
            slice_ = min(remaining, STOP_POLL_SECONDS)
            if self.event is not None:
                self.event.wait(slice_)
            else:
                time.sleep(slice_)
        return True


def main(options: ScannerOptions, batches: BatchQueue, stop_event: StopEvent | None = None, *,
         log_queue: Any = None) -> None:
    """Entry point of a scanner process (``multiprocessing`` spawn target).

    Logs to stderr, sets up OpenTelemetry as ``eve-scanner``, treats SIGTERM and
    SIGINT like ``stop_event`` (stop at the next batch, put STOP), never raises:
    an unexpected exception becomes FAILED("internal"). Exits 0 after STOP, 1
    otherwise. The process exits only once its frames are flushed into the
    queue's pipe, so the consumer must read until STOP or FAILED.
    """
    from eve.core.child_process import die_with_parent

    die_with_parent()
    if log_queue is not None:  # through the parent's logging (eve.core.worker_logs)
        forward_to(log_queue, options.log_level)
    else:
        logging.basicConfig(level=options.log_level, stream=sys.stderr, force=True,
                            format="%(asctime)s %(levelname)s %(message)s")
    stop = _StopSignal(stop_event)
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(signum, stop.handle)
        except ValueError:  # not the main thread (run in-process): keep the defaults
            pass
    ok = False
    telemetry = None
    try:
        telemetry = setup("eve-scanner")
        ok = run_scanner(options, batches, stop_event=stop, tracer=telemetry.tracer("eve.scanner"))
    except BaseException as exc:  # noqa: BLE001 - the process reports, never raises
        log.exception("%s pid=%d crashed", options.worker, os.getpid())
        try:
            batches.put(encode(Failed(options.worker, Side.INTERNAL, repr(exc)[:1000])))
        except BaseException:  # noqa: BLE001 - nothing more can be reported
            pass
    finally:
        if telemetry is not None:
            try:
                telemetry.shutdown()
            except Exception:  # noqa: BLE001 - exporting is best effort at exit
                pass
    sys.exit(0 if ok else 1)
