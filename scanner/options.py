"""What one scanner process is told to do: a frozen, picklable value.

The coordinator builds one ``ScannerOptions`` per source node and hands it to
the process it spawns; the worker reads nothing else (no globals, no protobuf,
no environment), so a scanner can also be run alone from a test or a CLI.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import ConfigError

__all__ = [
    "ScannerOptions",
    "DEFAULT_COUNT",
    "DEFAULT_MAX_PIPELINE",
    "DEFAULT_TIMEOUT",
    "DEFAULT_RECONNECT_SECONDS",
    "DEFAULT_BIG_KEY_THRESHOLD_BYTES",
]

DEFAULT_COUNT = 1000
DEFAULT_MAX_PIPELINE = 1000
DEFAULT_TIMEOUT = 30.0
DEFAULT_RECONNECT_SECONDS = 30.0
# A key above this (MEMORY USAGE) is copied in chunks, never DUMPed: DUMP serializes a value in
# one command, and a 16 MiB sorted set (~150,000 members) already holds the source for tens
# of milliseconds (bench/bigkeys.py measures it).
DEFAULT_BIG_KEY_THRESHOLD_BYTES = 16 << 20


@dataclass(frozen=True)
class ScannerOptions:
    """One scanner: one source node, its databases, filters and source protection.

    Source protection (DESIGN.md section 4) combines three independent brakes:

    * ``max_keys_per_second`` / ``max_bytes_per_second``: token buckets holding
      at most a tenth of a second of traffic; the scanner sleeps off any deficit.
      Bytes are DUMP payload bytes, charged once they are read, so a batch
      bigger than the budget delays the next round trip instead of being cut.
    * ``max_pipeline``: at most this many keys' ``DUMP`` + ``PTTL`` per round
      trip; a SCAN reply with more keys takes several round trips, still one frame.
    * ``backoff_latency_ms``: back off when the source slows down. The first
      round trips of the run set a baseline: the median time per key of the
      first ``BASELINE_ROUND_TRIPS`` DUMP/PTTL round trips (lowered whenever a
      later round trip is faster). A round trip of ``n`` keys is then expected
      to take ``n * baseline``; when it takes more than that plus
      ``backoff_latency_ms``, other clients are competing for the server, and
      the scanner sleeps for as long as the excess (doubling on each consecutive
      slow round trip, at most 2 s), so the server gets the time it lost back
      for its live clients. 0 turns the rule off.
    * ``max_source_share``: after a DUMP/PTTL round trip of ``t`` seconds the
      scanner pauses ``t * (1 / share - 1)``, so its round trips take at most
      that share of the wall time and the source's event loop (and, on a small
      machine, the CPU) stays free for live clients the rest of the time.
      1.0 (the default) never pauses.
    * ``latency_budget_ms``: hold the source's (p99) command latency within a
      budget instead of at a fixed share. A probe (``TIME``) on a connection of
      its own, sent right behind each DUMP/PTTL pipeline, waits as any client's
      command would; probes before the scan set the idle latency. AIMD
      (``scanner.worker.LatencyBudget``) then steers the keys per round trip
      (how long one pipeline holds the server) and the share of wall time spent
      in round trips: halved when the source was late beyond the budget for
      more than 1% of the last second, grown back smoothly while it keeps
      within it, the share never above ``max_source_share``. 0 turns it off
      (the fixed share applies).

    ``big_key_threshold_bytes``: before DUMP, each key's ``MEMORY USAGE`` (``SAMPLES 5``,
    the server's default: a few elements sampled, cheap however big the key) is read in
    the same round trips; a key above the threshold is sent in the batch's ``big`` list,
    not DUMPed, and the restorer copies it in chunks (``restorer.bigkeys``). 0 turns
    the check off (every key is DUMPed). A source that refuses ``MEMORY USAGE``
    (an ACL, a managed service) turns it off too, with a warning.

    ``server_run_id`` is the source node's ``run_id`` when the job planned the
    scan: a connection that finds another one (the source restarted: its SCAN
    cursors mean nothing now, and a non-persistent one lost its keys) ends the
    scanner with ``RESTARTED`` instead of scanning on.
    """

    run_id: str
    worker: str                 # names the process in logs and in STOP/FAILED frames
    source: ConnectionSpec      # aimed at this node (credentials/TLS from the endpoint)
    node: str                   # node address label used in batch headers
    dbs: tuple[int, ...]        # databases to scan, in this order (cluster: (0,))
    start_cursors: tuple[tuple[int, int], ...] = ()  # (db, cursor) to resume from (or a dict); others start at 0
    epoch: int = 0
    match: str | None = None    # SCAN MATCH glob
    type: str | None = None     # SCAN TYPE: string, list, set, zset, hash, stream, or a module type name
    count: int = DEFAULT_COUNT  # SCAN COUNT hint; each non-empty SCAN reply becomes one batch
    preserve_ttl: bool = True   # False: every row's expiry is 0 (and PTTL is not even sent)
    max_keys_per_second: int = 0      # 0 = unlimited
    max_bytes_per_second: int = 0     # DUMP payload bytes; 0 = unlimited
    max_pipeline: int = DEFAULT_MAX_PIPELINE  # keys whose DUMP+PTTL share one round trip
    backoff_latency_ms: float = 0     # 0 = off; see the class docstring
    timeout: float = DEFAULT_TIMEOUT  # socket timeout of one round trip
    reconnect_seconds: float = DEFAULT_RECONNECT_SECONDS  # keep retrying a lost source this long
    max_source_share: float = 1.0     # share of wall time spent in DUMP/PTTL round trips; see the docstring
    latency_budget_ms: float = 0      # 0 = off; see the class docstring
    big_key_threshold_bytes: int = DEFAULT_BIG_KEY_THRESHOLD_BYTES  # 0 = off; see the class docstring
    server_run_id: str | None = None  # the node's run_id when planned; None: learned on first contact
    log_level: int = logging.INFO     # the coordinator's level, passed down (spawned processes inherit none)
    # The job's trace context (eve.core.telemetry.carrier): each scan batch span is its child.
    trace_context: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.source, ConnectionSpec):
            raise ConfigError(f"must be a ConnectionSpec, got {type(self.source).__name__}", field="source")
        # Tuples keep the value hashable and picklable however it was built.
        object.__setattr__(self, "dbs", tuple(self.dbs))
        cursors = self.start_cursors.items() if isinstance(self.start_cursors, Mapping) else self.start_cursors
        object.__setattr__(self, "start_cursors", tuple((int(db), int(cursor)) for db, cursor in cursors))
        for db in self.dbs:
            if isinstance(db, bool) or not isinstance(db, int) or db < 0:
                raise ConfigError(f"{db!r} is not a database number", field="dbs")
        if len(set(self.dbs)) != len(self.dbs):
            raise ConfigError(f"a database is listed twice: {self.dbs}", field="dbs")
        for db, cursor in self.start_cursors:
            if cursor < 0:
                raise ConfigError(f"cursor {cursor} of db {db} is negative", field="start_cursors")
        for name in ("count", "max_pipeline"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be at least 1, got {getattr(self, name)}", field=name)
        if not 0 < self.max_source_share <= 1:
            raise ConfigError(f"must be in (0, 1], got {self.max_source_share}", field="max_source_share")
        for name in ("max_keys_per_second", "max_bytes_per_second", "backoff_latency_ms", "latency_budget_ms",
                     "reconnect_seconds", "big_key_threshold_bytes"):
            if not getattr(self, name) >= 0:  # NaN too
                raise ConfigError(f"must be 0 or more, got {getattr(self, name)}", field=name)
        if not self.timeout > 0:
            raise ConfigError(f"must be more than 0, got {self.timeout}", field="timeout")
        for name in ("match", "type"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError("must be a non-empty string or None", field=name)

    def start_cursor(self, db: int) -> int:
        """Where the scan of ``db`` starts: its resume cursor, or 0."""
        for start_db, cursor in self.start_cursors:
            if start_db == db:
                return cursor
        return 0
