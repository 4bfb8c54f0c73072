"""The restorer's options: everything one restorer process needs, frozen and picklable
(it crosses the ``spawn`` boundary; STYLE.md habit 1)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from eve.core.endpoints import ConnectionSpec
from eve.core.enums import ConflictPolicy, DataMovementMode
from eve.core.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_PIPELINE",
    "DEFAULT_RECONNECT_SECONDS",
    "DEFAULT_RETRY_DELAY",
    "DEFAULT_TIMEOUT",
    "RestorerOptions",
]

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RETRY_DELAY = 0.05
DEFAULT_TIMEOUT = 30.0
DEFAULT_RECONNECT_SECONDS = 30.0
DEFAULT_MAX_PIPELINE = 1000


@dataclass(frozen=True)
class RestorerOptions:
    run_id: str
    worker: str                 # "restorer-1": names the process in logs, results and temp keys
    target: ConnectionSpec      # the target endpoint (any node when it is a cluster)
    target_cluster: bool
    mirrors: tuple[tuple[ConnectionSpec, bool], ...] = ()   # (spec, is_cluster) of each mirror target
    conflict: ConflictPolicy = ConflictPolicy.REPLACE
    preserve_ttl: bool = True
    # AUTO: RESTORE, relabelled where the target needs it, else a logical copy; DUMP_RESTORE:
    # RESTORE only; LOGICAL: every key with ordinary commands (restorer.worker, _Target.route).
    mode: DataMovementMode = DataMovementMode.AUTO
    # The source, for logical copies (read again at copy time: restorer.logical_copy) and big keys
    # (read in chunks: restorer.bigkeys); None: neither is possible, and such keys become error keys.
    source: ConnectionSpec | None = None
    source_cluster: bool = False
    max_attempts: int = DEFAULT_MAX_ATTEMPTS   # per key, for transient errors (OOM, LOADING, BUSY, TRYAGAIN, timeouts)
    retry_delay: float = DEFAULT_RETRY_DELAY   # first backoff between attempts, doubled each time
    timeout: float = DEFAULT_TIMEOUT           # socket timeout of every target connection
    reconnect_seconds: float = DEFAULT_RECONNECT_SECONDS  # keep retrying a lost target this long, then fail
    max_pipeline: int = DEFAULT_MAX_PIPELINE   # RESTOREs per pipeline (one sendall)
    log_level: int = logging.INFO              # the coordinator's level, passed down (spawned processes inherit none)
    # The job's trace context (eve.core.telemetry.carrier): the parent of a restore batch whose
    # frame carries none; a frame's own (its scan batch) wins.
    trace_context: tuple[tuple[str, str], ...] = ()
    # (address, run_id) of every node of the target and mirror targets the job wrote to: a node that
    # answers with another run_id restarted, and the restorer reports RESTARTED instead of going on.
    # Nodes not listed are learned on first contact.
    server_run_ids: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        known = self.server_run_ids
        pairs = known.items() if isinstance(known, Mapping) else known
        object.__setattr__(self, "server_run_ids", tuple((str(address), str(run_id)) for address, run_id in pairs))
        if not isinstance(self.conflict, ConflictPolicy):
            object.__setattr__(self, "conflict", ConflictPolicy(self.conflict))
        if not isinstance(self.mode, DataMovementMode):
            object.__setattr__(self, "mode", DataMovementMode(self.mode))
        if self.max_attempts < 1:
            raise ConfigError(f"must be at least 1, got {self.max_attempts}", field="max_attempts")
        if self.max_pipeline < 1:
            raise ConfigError(f"must be at least 1, got {self.max_pipeline}", field="max_pipeline")
        if self.timeout <= 0:
            raise ConfigError(f"must be positive, got {self.timeout}", field="timeout")
        if self.retry_delay < 0:
            raise ConfigError(f"must not be negative, got {self.retry_delay}", field="retry_delay")
        if self.reconnect_seconds < 0:
            raise ConfigError(f"must not be negative, got {self.reconnect_seconds}", field="reconnect_seconds")
