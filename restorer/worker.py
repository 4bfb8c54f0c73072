"""The restorer process: batches in, ``RESTORE ... ABSTTL`` pipelines out, one Result per batch.

The worker loop has one shape (pgcopydb's): take a frame, switch on its kind,
``STOP`` ends the loop, ``BATCH`` is applied to the target and to each mirror
target, a target that stays unreachable ends the loop with ``FAILED``. A key
that fails never stops the batch or the run: it becomes an error key.

Per key, the server's reply decides (``classify``):

    OK                              restored
    BUSYKEY                         the conflict policy decides (restorer.policies)
    DUMP payload version/checksum,  permanent: the target cannot read this RDB format
      Bad data format
    OOM, LOADING, BUSY, TRYAGAIN,   transient: retried with backoff, up to max_attempts,
      MASTERDOWN, CLUSTERDOWN,        then an error key
      READONLY
    MOVED / ASK                     cluster target: sent to the node named (ASKING first
                                      for ASK), the slot map refreshed; not an attempt
    anything else                   permanent, with the server's message

A connection lost mid-pipeline is reopened with backoff (0.05 s doubling to
2 s) for up to ``reconnect_seconds``, then the whole pipeline is sent again.
``RESTORE ... REPLACE`` makes that harmless; under ``NONE`` a key the lost
pipeline had already restored answers ``BUSYKEY`` the second time and is
reported as a conflict (and under ``MERGE`` it is merged with itself). A
pipeline that keeps failing although the server comes back (a payload the
server drops the connection on, a key slower than the timeout) is retried one
key at a time, so only the offending key becomes an error key.

Rows whose absolute expiry has passed are skipped (``Result.skipped``), with or
without TTL preservation: the key is gone from the source too. A cluster
target has only db 0, so rows of another db become error keys there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections import defaultdict
from typing import Any, Protocol

from opentelemetry import metrics, propagate, trace

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import AuthError, EndpointError, UnavailableError
from eve.core.frames import (
    COORDINATOR,
    Batch,
    ConflictRow,
    ErrorKeyRow,
    Failed,
    FrameError,
    Result,
    Stop,
    decode,
    encode,
)
from eve.redis.rdb import payload_type
from eve.redis.topology import SlotMap, cluster_masters, key_slot, node_spec
from eve.redis.wire import FastConnection, ReplyError
from restorer.options import RestorerOptions
from restorer.policies import CONFLICT, RESTORED, conflict_handling

__all__ = ["classify", "main", "payload_refused", "run_restorer"]

logger = logging.getLogger("eve.restorer")

OK = b"OK"
MAX_REDIRECTS = 5            # MOVED/ASK hops (and re-routes) per key before it is an error key
RECONNECT_FIRST_DELAY = 0.05
RECONNECT_MAX_DELAY = 2.0

# Reply kinds, from classify().
RESTORED_KIND, BUSYKEY, TRANSIENT, PERMANENT, MOVED, ASK = "ok", "busykey", "transient", "permanent", "moved", "ask"
_TRANSIENT_PREFIXES = ("LOADING", "BUSY ", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "READONLY")
_PAYLOAD_REFUSED = ("DUMP payload version or checksum are wrong", "Bad data format")
_ASKING = b"*1\r\n$6\r\nASKING\r\n"

Row = tuple[bytes, int, bytes]


class _Queue(Protocol):
    def get(self) -> Any: ...
    def put(self, item: Any) -> None: ...


class _TargetLost(Exception):
    """A target (or mirror target) stayed unreachable for reconnect_seconds; the message names it."""


class _PipelineKeepsFailing(Exception):
    """The connection dropped max_attempts times on one pipeline although the server came back."""


class _Reroute(Exception):
    """A cluster node is gone from the slot map: its rows must be routed again."""


def payload_refused(message: str) -> bool:
    """The reply says the server cannot read the DUMP payload (a newer RDB format, or a
    module type it does not have): the key needs a logical copy."""
    return any(text in message for text in _PAYLOAD_REFUSED)


def classify(message: str) -> tuple[str, str]:
    """(kind, reason) for an error reply to RESTORE; the reason is what an error key says."""
    if message.startswith("BUSYKEY"):
        return BUSYKEY, message
    if payload_refused(message):
        return PERMANENT, f"target refused the DUMP payload (RDB format of a newer server?): {message}"
    if message.startswith("OOM"):
        return TRANSIENT, f"target out of memory (maxmemory): {message}"
    if message.startswith("MOVED "):
        return MOVED, message
    if message.startswith("ASK "):
        return ASK, message
    if message.startswith(_TRANSIENT_PREFIXES):
        return TRANSIENT, message
    return PERMANENT, message


class _Log(logging.LoggerAdapter):
    """Every line names the process: ``restorer-1 pid=1234 ...`` (STYLE.md habit 7)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        worker = self.extra["worker"] if self.extra else "restorer"
        return f"{worker} pid={os.getpid()} {msg}", kwargs


@dataclasses.dataclass
class _Outcome:
    """What one target did with one batch."""

    restored: int = 0
    bytes: int = 0
    conflicts: list[ConflictRow] = dataclasses.field(default_factory=list)
    errors: list[ErrorKeyRow] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Round:
    """What one round of pipelines left for the next round."""

    again: list[Row] = dataclasses.field(default_factory=list)        # route again (slot map)
    transient: list[Row] = dataclasses.field(default_factory=list)    # route again after a backoff
    redirected: dict[tuple[str, bool], list[Row]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    singles: list[tuple[str, list[Row], bool, bool]] = dataclasses.field(default_factory=list)
    refresh: bool = False


class _Target:
    """One target endpoint (the target or a mirror target): a FastConnection per master."""

    def __init__(self, options: RestorerOptions, spec: ConnectionSpec, cluster: bool, role: str,
                 log: _Log) -> None:
        self.options = options
        self.spec = spec
        self.cluster = cluster
        self.role = role
        self.address = spec.address
        self.log = log
        self.handling = conflict_handling(options.conflict, options.worker)
        self._client_name = f"eve-{options.worker}"
        self._conns: dict[str, FastConnection] = {}
        self._specs: dict[str, ConnectionSpec] = {spec.address: spec}
        self._slots: SlotMap | None = None
        self._masters: set[str] = set()
        # RESTORE key ttl payload ABSTTL [REPLACE], and RESTORE key 0 payload [REPLACE]
        # for keys without expiry: two templates, one %-format per key.
        replace = b"$7\r\nREPLACE\r\n" if self.handling.replace else b""
        extra = 1 if self.handling.replace else 0
        self._with_ttl = (b"*%d\r\n$7\r\nRESTORE\r\n" % (5 + extra)
                          + b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$6\r\nABSTTL\r\n" + replace)
        self._without_ttl = (b"*%d\r\n$7\r\nRESTORE\r\n" % (4 + extra)
                             + b"$%d\r\n%b\r\n$1\r\n0\r\n$%d\r\n%b\r\n" + replace)

    # -- connections -------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection(s), retrying for reconnect_seconds; _TargetLost when that fails."""
        self._retry_until_connected(self.address, first_error=None)
        if self.cluster:
            self.log.info("%s %s: cluster of %d masters", self.role, self.address, len(self._masters))
        else:
            self.log.info("%s %s: connected", self.role, self.address)

    def _open(self, address: str) -> None:
        if self.cluster and self._slots is None:
            self._refresh_slots()
        conn = self._connection(address)
        if not conn.connected:
            conn.open()

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _connection(self, address: str) -> FastConnection:
        conn = self._conns.get(address)
        if conn is None:
            conn = FastConnection(self._specs[address], timeout=self.options.timeout, db=0,
                                  client_name=self._client_name)
            self._conns[address] = conn
        return conn

    def _spec_for(self, host: str, port: int) -> str:
        spec = dataclasses.replace(self.spec, host=host or self.spec.host, port=port)
        self._specs.setdefault(spec.address, spec)
        return spec.address

    def _refresh_slots(self) -> None:
        """CLUSTER SLOTS from the first node that answers: the seed, then every master known."""
        last: Exception | None = None
        for address in dict.fromkeys([self.address, *self._masters, *self._conns]):
            conn = self._connection(address)
            try:
                masters = cluster_masters(conn)
            except AuthError:
                raise
            except EndpointError as exc:
                conn.close()
                last = exc
                continue
            for node in masters:
                self._specs.setdefault(node.address, node_spec(self.spec, node))
            self._slots = SlotMap(masters)
            self._masters = {node.address for node in masters}
            return
        raise last or UnavailableError(f"no node of {self.address} answered CLUSTER SLOTS")

    def _retry_until_connected(self, address: str, first_error: Exception | None) -> None:
        """Reopen ``address`` with backoff for reconnect_seconds: _TargetLost, or _Reroute when
        a cluster's slot map no longer has that master."""
        deadline = time.monotonic() + self.options.reconnect_seconds
        delay = RECONNECT_FIRST_DELAY
        last = first_error
        if first_error is not None:
            self.handling.forget(address)
            self.log.warning("%s %s: %s; reconnecting for up to %gs", self.role, address, first_error,
                             self.options.reconnect_seconds)
        while True:
            try:
                self._open(address)
                if last is not None:
                    self.log.info("%s %s: reconnected", self.role, address)
                return
            except AuthError as exc:
                raise _TargetLost(f"{self.role} {address} refused the credentials: {exc}") from exc
            except EndpointError as exc:
                last = exc
            if self.cluster and self._slots is not None:
                # A failover may have replaced the node: ask the others who owns its slots now.
                try:
                    self._refresh_slots()
                except EndpointError:
                    pass
                else:
                    if address not in self._masters:
                        self.log.warning("%s %s: no longer a master; routing its keys again",
                                         self.role, address)
                        raise _Reroute(address)
            if time.monotonic() + delay > deadline:
                raise _TargetLost(f"{self.role} {address} still unreachable after retrying for "
                                  f"{self.options.reconnect_seconds:g}s: {last}")
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    def _send(self, address: str, packed: bytes, count: int) -> list[Any]:
        """One pipeline, reconnecting (and sending it all again) when the connection drops."""
        failures = 0
        while True:
            try:
                return self._connection(address).pipeline(packed, count)
            except AuthError as exc:
                raise _TargetLost(f"{self.role} {address} refused the credentials: {exc}") from exc
            except EndpointError as exc:  # UnavailableError, or a malformed reply (connection closed)
                failures += 1
                self._retry_until_connected(address, exc)
                if failures >= self.options.max_attempts:
                    raise _PipelineKeepsFailing(str(exc)) from exc

    def _select(self, db: int) -> str | None:
        """SELECT db on a standalone target; the refusal's message, or None."""
        conn = self._connection(self.address)
        while True:
            try:
                conn.select(db)
                return None
            except AuthError as exc:
                raise _TargetLost(f"{self.role} {self.address} refused the credentials: {exc}") from exc
            except UnavailableError as exc:
                self._retry_until_connected(self.address, exc)
            except EndpointError as exc:
                return str(exc)

    # -- restoring ---------------------------------------------------------------

    def restore(self, db: int, rows: list[Row]) -> _Outcome:
        out = _Outcome()
        if not rows:
            return out
        refused = None
        if self.cluster and db != 0:
            refused = f"{self.role} is a cluster: it has only db 0, the source key is in db {db}"
        elif not self.cluster:
            refused = self._select(db)
        if refused is not None:
            for row in rows:
                self._error(out, db, self.address, row, refused, 1)
            return out
        step = self.options.max_pipeline
        for start in range(0, len(rows), step):
            self._restore_rows(db, rows[start:start + step], out)
        return out

    def _pack(self, rows: list[Row], asking: bool) -> bytes:
        with_ttl, without_ttl = self._with_ttl, self._without_ttl
        commands = [
            without_ttl % (len(key), key, len(payload), payload) if not expiry
            else with_ttl % (len(key), key, len(ttl := b"%d" % expiry), ttl, len(payload), payload)
            for key, expiry, payload in rows
        ]
        if asking:
            return _ASKING + _ASKING.join(commands)
        return b"".join(commands)

    def _route(self, rows: list[Row], tries: dict[bytes, int], state: _Round,
               out: _Outcome, db: int) -> list[tuple[str, list[Row], bool, bool]]:
        """Work items (address, rows, asking, single): one per node."""
        if not rows:
            return []
        if not self.cluster:
            return [(self.address, rows, False, False)]
        assert self._slots is not None
        groups: dict[str, list[Row]] = defaultdict(list)
        node_for_key = self._slots.node_for_key
        for row in rows:
            node = node_for_key(row[0])
            if node is None:
                # A slot without a master: the cluster is being reconfigured.
                self._transient(out, db, self.address, row,
                                f"CLUSTERDOWN slot {key_slot(row[0])} has no master in CLUSTER SLOTS",
                                tries, state)
                state.refresh = True
            else:
                groups[node.address].append(row)
        return [(address, node_rows, False, False) for address, node_rows in groups.items()]

    def _restore_rows(self, db: int, rows: list[Row], out: _Outcome) -> None:
        tries: dict[bytes, int] = {}   # transient failures per key
        hops: dict[bytes, int] = {}    # redirects and re-routes per key
        state = _Round()
        work = self._route(rows, tries, state, out, db)
        backoffs = 0
        while work or state.again or state.transient or state.redirected or state.singles:
            for address, node_rows, asking, single in work:
                self._restore_on(db, address, node_rows, asking, single, tries, hops, state, out)
            if state.refresh:
                try:
                    self._refresh_slots()
                except EndpointError as exc:
                    self.log.warning("%s %s: cannot refresh the slot map: %s", self.role, self.address, exc)
            if state.transient:
                backoffs += 1
                time.sleep(self.options.retry_delay * 2 ** (backoffs - 1))
            previous, state = state, _Round()
            work = previous.singles + [(address, node_rows, asking, False)
                                       for (address, asking), node_rows in previous.redirected.items()]
            work += self._route(previous.again + previous.transient, tries, state, out, db)

    def _restore_on(self, db: int, address: str, rows: list[Row], asking: bool, single: bool,
                    tries: dict[bytes, int], hops: dict[bytes, int], state: _Round, out: _Outcome) -> None:
        """One pipeline of RESTOREs to one node, and what each reply means."""
        count = len(rows)
        try:
            replies = self._send(address, self._pack(rows, asking), 2 * count if asking else count)
        except _PipelineKeepsFailing as exc:
            if single:
                self._error(out, db, address, rows[0],
                            f"connection to {address} lost or timed out {self.options.max_attempts} times "
                            f"while restoring this key: {exc}", self.options.max_attempts)
            else:
                self.log.warning("%s %s: a pipeline of %d keys failed %d times; sending them one by one",
                                 self.role, address, count, self.options.max_attempts)
                state.singles.extend((address, [row], asking, True) for row in rows)
            return
        except _Reroute:
            self._requeue(out, db, address, rows, hops, state, "its node left the cluster")
            return
        if asking:
            replies = replies[1::2]
        if replies.count(OK) == count:
            out.restored += count
            out.bytes += sum([len(row[2]) for row in rows])
            return
        busy: list[Row] = []
        for row, reply in zip(rows, replies):
            if reply == OK:
                out.restored += 1
                out.bytes += len(row[2])
            elif isinstance(reply, ReplyError):
                message = str(reply)
                if message.startswith("BUSYKEY"):
                    busy.append(row)
                else:
                    self._settle(db, address, row, message, asking, tries, hops, state, out)
            else:
                self._error(out, db, address, row, f"unexpected reply to RESTORE: {reply!r:.200}",
                            tries.get(row[0], 0) + 1)
        if busy:
            self._resolve(db, address, busy, asking, tries, hops, state, out)

    def _resolve(self, db: int, address: str, busy: list[Row], asking: bool, tries: dict[bytes, int],
                 hops: dict[bytes, int], state: _Round, out: _Outcome) -> None:
        """BUSYKEY rows: the conflict policy decides."""
        try:
            resolutions = self.handling.resolve(lambda packed, count: self._send(address, packed, count),
                                                address, busy, asking)
        except (_PipelineKeepsFailing, _Reroute) as exc:
            self._requeue(out, db, address, busy, hops, state, f"merge failed: {exc}")
            return
        for row, (status, detail) in zip(busy, resolutions):
            if status == RESTORED:
                out.restored += 1
                out.bytes += len(row[2])
            elif status == CONFLICT:
                out.conflicts.append(ConflictRow(row[0], db, payload_type(row[2]), detail))
            else:
                self._settle(db, address, row, detail, asking, tries, hops, state, out)

    def _settle(self, db: int, address: str, row: Row, message: str, asking: bool,
                tries: dict[bytes, int], hops: dict[bytes, int], state: _Round, out: _Outcome) -> None:
        """An error reply for one key: retry, redirect, conflict or error key."""
        kind, reason = classify(message)
        if kind == TRANSIENT:
            self._transient(out, db, address, row, reason, tries, state)
            if self.cluster and message.startswith(("READONLY", "CLUSTERDOWN", "TRYAGAIN")):
                state.refresh = True
        elif kind in (MOVED, ASK) and self.cluster:
            key = row[0]
            hops[key] = hops.get(key, 0) + 1
            if hops[key] > MAX_REDIRECTS:
                self._error(out, db, address, row, f"the cluster kept redirecting the key: {message}",
                            tries.get(key, 0) + 1)
                return
            target = self._spec_for(*_split(message.split()[2]))
            state.redirected[(target, kind == ASK)].append(row)
            if kind == MOVED:
                state.refresh = True
        elif kind == BUSYKEY:
            out.conflicts.append(ConflictRow(row[0], db, payload_type(row[2]), "BUSYKEY"))
        else:
            self._error(out, db, address, row, reason, tries.get(row[0], 0) + 1)

    def _transient(self, out: _Outcome, db: int, address: str, row: Row, reason: str,
                   tries: dict[bytes, int], state: _Round) -> None:
        attempts = tries[row[0]] = tries.get(row[0], 0) + 1
        if attempts >= self.options.max_attempts:
            self._error(out, db, address, row, reason, attempts)
        else:
            state.transient.append(row)

    def _requeue(self, out: _Outcome, db: int, address: str, rows: list[Row], hops: dict[bytes, int],
                 state: _Round, why: str) -> None:
        for row in rows:
            key = row[0]
            hops[key] = hops.get(key, 0) + 1
            if hops[key] > MAX_REDIRECTS:
                self._error(out, db, address, row, f"gave up after {MAX_REDIRECTS} re-routes: {why}", hops[key])
            else:
                state.again.append(row)

    def _error(self, out: _Outcome, db: int, address: str, row: Row, reason: str, attempts: int) -> None:
        key, _expiry, payload = row
        out.errors.append(ErrorKeyRow(key, db, address, payload_type(payload), len(payload), reason, attempts))


def _split(address: str) -> tuple[str, int]:
    """"host:port" (also "[v6]:port" and the bare v6 form of MOVED replies) -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class _Restorer:
    """Applies batches to the target and every mirror target; builds Result frames."""

    def __init__(self, options: RestorerOptions, tracer: trace.Tracer, meter: metrics.Meter, log: _Log) -> None:
        self.options = options
        self.tracer = tracer
        self.log = log
        self.target = _Target(options, options.target, options.target_cluster, "target", log)
        self.mirrors = [_Target(options, spec, cluster, "mirror target", log) for spec, cluster in options.mirrors]
        self._attributes = {"eve.worker": options.worker, "eve.run_id": options.run_id}
        self._keys = meter.create_counter("eve.restorer.keys", unit="{key}", description="keys restored")
        self._bytes = meter.create_counter("eve.restorer.bytes", unit="By", description="DUMP payload bytes restored")
        self._conflicts = meter.create_counter("eve.restorer.conflicts", unit="{key}",
                                               description="keys left as they were on the target (conflicts)")
        self._errors = meter.create_counter("eve.restorer.errors", unit="{key}", description="error keys")

    def connect(self) -> None:
        for target in (self.target, *self.mirrors):
            target.connect()

    def close(self) -> None:
        for target in (self.target, *self.mirrors):
            target.close()

    def apply(self, batch: Batch) -> Result:
        header = batch.header
        links = []
        if header.trace:
            scanned = trace.get_current_span(propagate.extract(header.trace)).get_span_context()
            if scanned.is_valid:
                links.append(trace.Link(scanned))
        with self.tracer.start_as_current_span("restore batch", links=links) as span:
            rows = batch.rows
            # ABSTTL: the expiry is absolute, so a key whose expiry passed in transit
            # is skipped rather than created (DESIGN.md 4.3). It is gone from the
            # source too, so it is skipped whether or not TTLs are preserved.
            now_ms = time.time_ns() // 1_000_000
            live = [row for row in rows if not row[1] or row[1] > now_ms]
            skipped = len(rows) - len(live)
            if not self.options.preserve_ttl:
                live = [(key, 0, payload) for key, _expiry, payload in live]
            out = self.target.restore(header.db, live)
            error_keys = list(out.errors)
            for mirror in self.mirrors:
                error_keys += mirror.restore(header.db, live).errors
            result = Result(header, self.options.worker, restored=out.restored, skipped=skipped,
                            conflicts=len(out.conflicts), failed=len(error_keys), bytes=out.bytes,
                            error_keys=error_keys, conflict_keys=out.conflicts)
            span.set_attributes({
                "eve.node": header.node, "eve.db": header.db, "eve.seq": header.seq,
                "eve.target": self.target.address, "eve.keys": len(rows), "eve.restored": result.restored,
                "eve.skipped": skipped, "eve.conflicts": result.conflicts, "eve.failed": result.failed,
            })
        self._keys.add(result.restored, self._attributes)
        self._bytes.add(result.bytes, self._attributes)
        if result.conflicts:
            self._conflicts.add(result.conflicts, self._attributes)
        if result.failed:
            self._errors.add(result.failed, self._attributes)
            first = error_keys[0]
            self.log.warning("batch node=%s db=%d seq=%d: %d error keys (first: %r on %s: %s)", header.node,
                             header.db, header.seq, result.failed, first.key[:100], first.node, first.reason)
        return result


def run_restorer(options: RestorerOptions, batches: _Queue, results: _Queue, *,
                 tracer: trace.Tracer | None = None, meter: metrics.Meter | None = None) -> bool:
    """The worker loop. True when it stopped on STOP; False after putting a FAILED frame.

    The target and mirror targets are connected before the first frame is taken:
    one unreachable at start gives ``Failed(worker, "target", ...)`` and leaves
    every frame in the queue for the other restorers. A target lost while a batch
    is applied gives the same FAILED frame and that batch gets no Result (its
    cursor must not be committed). Result counts are the primary target's; a
    mirror target's error keys are added to ``failed`` and ``error_keys`` (``node``
    names the mirror), its conflicts are not reported.
    """
    log = _Log(logger, {"worker": options.worker})
    worker = options.worker
    restorer = _Restorer(options, tracer or trace.get_tracer("eve.restorer"),
                         meter or metrics.get_meter("eve.restorer"), log)
    mirrors = "".join(f", mirror {spec.address}" for spec, _cluster in options.mirrors)
    log.info("run %s: restoring into %s%s (%s) under conflict policy %s%s", options.run_id,
             options.target.address, " (cluster)" if options.target_cluster else "", "TTL kept"
             if options.preserve_ttl else "TTL dropped", options.conflict.value, mirrors)
    batches_done = 0
    try:
        try:
            restorer.connect()
        except _TargetLost as exc:
            log.error("%s", exc)
            results.put(encode(Failed(worker, "target", str(exc))))
            return False
        while True:
            raw = batches.get()
            try:
                frame = decode(raw)
            except FrameError as exc:
                log.error("%s", exc)
                results.put(encode(Failed(worker, "internal", str(exc))))
                return False
            if isinstance(frame, (Stop, Failed)) and frame.worker != COORDINATOR:
                # A scanner's end or failure travels behind its batches; the
                # coordinator reads it from the results queue.
                results.put(raw)
                continue
            if isinstance(frame, Stop):
                log.info("stop after %d batches", batches_done)
                results.put(encode(Stop(worker)))
                return True
            if not isinstance(frame, Batch):
                reason = f"unexpected {type(frame).__name__} frame on the batches queue"
                log.error("%s", reason)
                results.put(encode(Failed(worker, "internal", reason)))
                return False
            try:
                result = restorer.apply(frame)
            except _TargetLost as exc:
                log.error("%s (batch node=%s db=%d seq=%d not applied)", exc, frame.header.node,
                          frame.header.db, frame.header.seq)
                results.put(encode(Failed(worker, "target", str(exc))))
                return False
            results.put(encode(result))
            batches_done += 1
    finally:
        restorer.close()


def main(options: RestorerOptions, batches: _Queue, results: _Queue) -> None:
    """Entry point of a spawned restorer process; exits 0 after STOP, 1 after FAILED."""
    from eve.core import telemetry
    from eve.core.child_process import die_with_parent, ignore_interrupts

    die_with_parent()
    ignore_interrupts()
    logging.basicConfig(level=options.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log = _Log(logger, {"worker": options.worker})
    ok = False
    tel = None
    try:
        tel = telemetry.setup("eve-restorer")
        ok = run_restorer(options, batches, results, tracer=tel.tracer("eve.restorer"),
                          meter=tel.meter("eve.restorer"))
    except BaseException as exc:
        log.exception("internal error")
        try:
            results.put(encode(Failed(options.worker, "internal", f"{type(exc).__name__}: {exc}")))
        except Exception:
            log.exception("cannot report the failure to the coordinator")
    finally:
        if tel is not None:
            try:
                tel.shutdown()
            except Exception:
                log.exception("telemetry shutdown failed")
    sys.exit(0 if ok else 1)
