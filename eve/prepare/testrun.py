"""The test run of a run's Prepare step (DESIGN.md section 7).

A sample of source keys, spread over the types present, is copied to the
target the way the bulk copy does it in the run's mode (``DUMP`` + ``PTTL`` from
the source, ``RESTORE`` on the target of the payload as it is or relabelled for
the target's format, a logical copy where the target cannot read it in ``AUTO``,
and of every key in ``LOGICAL``: ``eve.redis.rdb``, ``restorer.logical_copy``),
each under a scratch name
``eve:testrun:<run_id>:<n>`` in db 0 of the target, then read back and
compared with the source key by type (module types by their DUMP payloads).
A copy that differs is told apart in words (issue 24): the source key is
re-read (``DUMP``), and when it no longer holds what was copied, it **changed
on the source while being verified** (an application wrote it: not a failure,
the bulk copy and a live run's re-copy carry the new value); otherwise the
copy was refused or corrupted by the target, a failure.
The copy is timed to estimate the full copy. Every scratch key is deleted at
the end, whatever happened, and is restored with a TTL of ``SCRATCH_TTL_MS``
so that even a crash cannot leave one behind for long.

Both sides are ``eve.redis.cluster.ClusterClient``s (the slot maps read with the
admin connection when it may): a cluster target gets each scratch key on the
master that owns its slot, redirections (``MOVED``, ``ASK`` with ``ASKING``) are
followed and transient replies retried like in the bulk copy. A payload the
target still refuses (``ERR DUMP payload version or checksum are wrong``) goes
to a logical copy in ``AUTO``; in ``DUMP_RESTORE`` it counts as a failure of its
type, the reason in ``errors``. Each type's result says how many keys went
transcoded and how many logically. Transport failures raise
``UnavailableError`` naming the side.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from eve.core.endpoints import EndpointConfig
from eve.core.enums import ConflictPolicy, DataMovementMode
from eve.core.errors import AuthError, ConfigError, EndpointError, SourceError, TargetError, UnavailableError
from eve.prepare.analysis import endpoint_masters, key_text
from eve.redis.cluster import ClientOptions, ClusterClient, payload_refused
from eve.redis.rdb import AS_IS, LOGICAL, RELABEL, relabel, target_format
from eve.redis.wire import ReplyError, pack
from restorer.logical_copy import LogicalWriter, SourceRead, SourceReader
from restorer.policies import RESTORED, conflict_handling

__all__ = [
    "SCRATCH_PREFIX",
    "SCRATCH_TTL_MS",
    "TestRunReport",
    "TypeResult",
    "describe",
    "scratch_key",
    "test_run",
]

SCRATCH_PREFIX = "eve:testrun:"
SCRATCH_TTL_MS = 300_000          # a crash leaves scratch keys for 5 minutes at most
DEFAULT_SAMPLE = 200
DEFAULT_TIMEOUT = 10.0
SCAN_COUNT = 1000
MIN_SCAN_BUDGET = 2000            # keys looked at to find the sample, at least ...
SCAN_BUDGET_PER_SAMPLED_KEY = 20  # ... or this many per sampled key
MAX_KEY_BYTES = 8 << 20           # bigger keys are copied in chunks by the bulk copy: not sampled
MAX_ERRORS = 50
CLIENT_NAME = "eve-testrun"
_VANISHED = "vanished"
_TRAILER = 10                     # RDB version + CRC64 at the end of a DUMP payload


@dataclass(frozen=True)
class TypeResult:
    type: str
    keys: int      # sampled keys of this type that were copied
    ok: int        # restored and verified equal
    failed: int    # refused by the target, or read back different from an unchanged source key
    transcoded: int = 0   # of ``keys``, restored with their payload relabelled (not failed)
    logical: int = 0      # of ``keys``, copied logically (not failed)
    changed: int = 0      # of ``keys``, changed on the source while being verified: not failures

    @property
    def as_is(self) -> int:
        """Keys restored from their payload as the source dumped it."""
        return self.keys - self.transcoded - self.logical - self.failed


@dataclass(frozen=True)
class TestRunReport:
    __test__ = False  # not a pytest test class

    results: tuple[TypeResult, ...]
    errors: tuple[str, ...]          # one line per failed key (at most MAX_ERRORS, then a count)
    seconds: float                   # the whole test run
    estimated_seconds: float         # total_keys / measured keys per second of the copy
    keys: int                        # keys copied
    keys_per_second: float = 0.0     # measured copy rate (DUMP+PTTL read and RESTORE write)
    total_keys: int = 0              # what the estimate is for
    changed: tuple[str, ...] = ()    # one line per key that changed on the source meanwhile (at most MAX_ERRORS)

    @property
    def failed(self) -> int:
        return sum(result.failed for result in self.results)

    @property
    def changed_keys(self) -> int:
        return sum(result.changed for result in self.results)

    def summary(self) -> str:
        """The test run in words (the workflow's event, ``eve demo``): what was verified, what
        changed on the source meanwhile, what the target refused or corrupted."""
        return describe(sum(result.ok for result in self.results), self.changed_keys, self.failed)


def describe(verified: int, changed: int, failed: int) -> str:
    words = [f"{verified:,} keys copied and verified"]
    if changed:
        words.append(f"{changed:,} changed on the source while being verified (written meanwhile: re-read, "
                     "not a failure; the copy carries their new value)")
    # Only a real failure reads as one: scripts and people grep for "failed"/"refused".
    words.append(f"{failed:,} failed: refused or corrupted by the target" if failed else "no failure on the target")
    return "; ".join(words)


def scratch_key(run_id: str, n: int) -> bytes:
    return f"{SCRATCH_PREFIX}{run_id}:{n}".encode()


@dataclass
class _Sampled:
    node: str           # the source node it was found on
    db: int
    key: bytes
    type: str
    payload: bytes | None = None
    scratch: bytes = b""
    placed: str | None = None   # target node the scratch key was sent to
    ok: bool | None = None
    reason: str = ""
    how: str = AS_IS            # AS_IS, RELABEL or LOGICAL: how it was copied
    original: bytes | None = None  # the source's DUMP payload that was copied, before any relabelling
    changed: bool = False       # the source key changed between the copy and its verification


def _side(config: EndpointConfig, role: str, timeout: float) -> ClusterClient:
    """The role's connection (read on the source, write on the target) as a cluster client; the
    slot map as the admin connection reads it (topology is admin work)."""
    spec_role = "read" if role == "source" else "write"
    try:
        masters = endpoint_masters(config, role=spec_role, timeout=timeout)
    except UnavailableError as exc:
        raise UnavailableError(f"{role} unreachable: {exc}") from exc
    except AuthError as exc:
        raise AuthError(f"{role}: {exc}") from exc
    return ClusterClient(config.for_role(spec_role), role=role, error=SourceError if role == "source" else TargetError,
                         masters=masters,
                         options=ClientOptions(timeout=timeout, reconnect_seconds=0, client_name=CLIENT_NAME))


def _pipeline(side: ClusterClient, db: int, keys: Sequence[bytes], commands: Sequence[Sequence[Any]],
              per_key: int = 1) -> list[Any]:
    """Commands (``per_key`` per key) routed by key; their final replies, in order."""
    if not keys:
        return []
    routed = side.execute(db, keys, [pack(*command) for command in commands], per_key=per_key)
    return [reply for _node, replies in routed.by_key(len(keys)) for reply in replies]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- sampling


def _find_sample(source: ClusterClient, sample: int) -> tuple[list[_Sampled], int]:
    """Up to ``sample`` keys spread over the types present, and the source's key count.

    SCAN steps go round-robin over every node and database so the sample is
    not drawn from the first one only; at most a bounded number of keys is looked at.
    """
    cursors: list[tuple[str, int]] = []
    total = 0
    for node in source.nodes:
        for db, (keys, _) in sorted(source.keyspace(node).items()):
            total += keys
            if keys:
                cursors.append((node, db))
    by_type: dict[str, list[_Sampled]] = defaultdict(list)
    budget = max(MIN_SCAN_BUDGET, sample * SCAN_BUDGET_PER_SAMPLED_KEY)
    looked = 0
    position: dict[tuple[str, int], bytes] = {place: b"0" for place in cursors}
    seen: set[tuple[str, int, bytes]] = set()
    while position and looked < budget:
        for place in list(position):
            node, db = place
            reply = source.call(node, "SCAN", position[place], "COUNT", SCAN_COUNT, db=db)
            if isinstance(reply, ReplyError):
                raise SourceError(f"source: SCAN failed on {node} db {db}: {reply}")
            cursor, keys = reply[0], [k for k in reply[1] if (node, db, k) not in seen]
            if cursor in (b"0", 0):
                del position[place]
            else:
                position[place] = cursor
            if not keys:
                continue
            seen.update((node, db, k) for k in keys)
            looked += len(keys)
            commands = [command for key in keys for command in (("TYPE", key), ("MEMORY", "USAGE", key))]
            replies = _pipeline(source, db, keys, commands, per_key=2)
            for i, key in enumerate(keys):
                kind, size = replies[2 * i], replies[2 * i + 1]
                if isinstance(kind, ReplyError) or _text(kind) == "none":
                    continue
                if isinstance(size, int) and size > MAX_KEY_BYTES:
                    continue
                by_type[_text(kind)].append(_Sampled(node, db, key, _text(kind)))
            if looked >= budget:
                break
    # Round-robin over the types: every type present gets keys before any gets many.
    picked: list[_Sampled] = []
    pools = [iter(by_type[kind]) for kind in sorted(by_type)]
    while pools and len(picked) < sample:
        for pool in list(pools):
            entry = next(pool, None)
            if entry is None:
                pools.remove(pool)
            elif len(picked) < sample:
                picked.append(entry)
    return picked, total


def _by_db(entries: Sequence[_Sampled]) -> Iterator[tuple[int, list[_Sampled]]]:
    keyed = sorted(entries, key=lambda e: e.db)
    for db, group in itertools.groupby(keyed, key=lambda e: e.db):
        yield db, list(group)


# --------------------------------------------------------------------------- copy


def _copy(entries: list[_Sampled], source: ClusterClient, target: ClusterClient, mode: DataMovementMode) -> None:
    """Each sampled key to its scratch name the way the restorer would move it in ``mode``."""
    fmt = target_format(target.info("server"))
    restoring: list[_Sampled] = []
    logical: list[_Sampled] = []
    for entry in entries:
        assert entry.payload is not None
        how = LOGICAL if mode is DataMovementMode.LOGICAL else fmt.plan(entry.payload)
        if how == RELABEL:
            entry.payload, entry.how = relabel(entry.payload, fmt.rdb), RELABEL
        if how == LOGICAL and mode is not DataMovementMode.DUMP_RESTORE:
            logical.append(entry)
        else:
            restoring.append(entry)
    _restore(restoring, target)
    if mode is DataMovementMode.AUTO:
        logical += [entry for entry in restoring if entry.ok is False and payload_refused(entry.reason)]
    _copy_logically(logical, source, target)


def _restore(entries: list[_Sampled], target: ClusterClient) -> None:
    """RESTORE each payload under its scratch name on the node owning its slot (db 0)."""
    keys = [e.scratch for e in entries]
    routed = target.execute(0, keys, [pack("RESTORE", e.scratch, SCRATCH_TTL_MS, e.payload) for e in entries])
    for entry, (node, (reply,)) in zip(entries, routed.by_key(len(keys))):
        entry.placed = node
        if isinstance(reply, ReplyError):
            entry.ok, entry.reason = False, f"RESTORE refused: {reply}"


def _copy_logically(entries: list[_Sampled], source: ClusterClient, target: ClusterClient) -> None:
    """Read each key on the source and write it under its scratch name (restorer.logical_copy)."""
    reader = SourceReader(source, max_pipeline=SCAN_COUNT, preserve_ttl=False)
    writer = LogicalWriter(target, conflict_handling(ConflictPolicy.REPLACE, CLIENT_NAME), CLIENT_NAME, 1)
    for db, group in _by_db(entries):
        reads = reader.read(db, [entry.key for entry in group])
        expiry = time.time_ns() // 1_000_000 + SCRATCH_TTL_MS
        writing: list[tuple[_Sampled, SourceRead]] = []
        for entry, read in zip(group, reads):
            entry.how, entry.ok, entry.reason = LOGICAL, None, ""
            if read.error is not None:
                entry.ok, entry.reason = False, f"logical copy failed: {read.error}"
            elif read.value is None:
                entry.reason = _VANISHED
            else:
                writing.append((entry, SourceRead(read.value, expiry)))
        written = writer.write(0, [(entry.scratch, read) for entry, read in writing])
        for (entry, _read), outcome in zip(writing, written):
            entry.placed = target.node_for_key(entry.scratch)
            if outcome.status != RESTORED:
                entry.ok, entry.reason = False, f"logical copy failed: {outcome.detail}"


# --------------------------------------------------------------------------- verify


def _read_command(kind: str, key: bytes) -> tuple[Any, ...]:
    return {
        "string": ("GET", key),
        "hash": ("HGETALL", key),
        "list": ("LRANGE", key, 0, -1),
        "set": ("SMEMBERS", key),
        "zset": ("ZRANGE", key, 0, -1, "WITHSCORES"),
        "stream": ("XRANGE", key, "-", "+"),
    }.get(kind, ("DUMP", key))


def _normalized(kind: str, reply: Any) -> Any:
    """A value comparable across engines (set order, score formatting, payload trailer)."""
    if isinstance(reply, ReplyError) or reply is None:
        return reply if reply is None else ("error", str(reply))
    if kind == "hash":
        return dict(zip(reply[::2], reply[1::2]))
    if kind == "set":
        return sorted(reply)
    if kind == "zset":
        return [(member, float(score)) for member, score in zip(reply[::2], reply[1::2])]
    if kind in ("string", "list", "stream"):
        return reply
    return reply[:-_TRAILER] if isinstance(reply, bytes) else reply  # module type: DUMP payload


def _verify(entries: list[_Sampled], source: ClusterClient, target: ClusterClient) -> None:
    restored = [e for e in entries if e.ok is None and e.placed is not None]
    source_values: dict[int, Any] = {}
    for db, group in _by_db(restored):
        replies = _pipeline(source, db, [e.key for e in group], [_read_command(e.type, e.key) for e in group])
        source_values.update((id(e), _normalized(e.type, r)) for e, r in zip(group, replies))
    replies = _pipeline(target, 0, [e.scratch for e in restored], [_read_command(e.type, e.scratch) for e in restored])
    differing: list[tuple[_Sampled, Any]] = []
    for entry, reply in zip(restored, replies):
        copy, original = _normalized(entry.type, reply), source_values[id(entry)]
        if original is None:
            entry.reason = _VANISHED  # expired or deleted on the source meanwhile: nothing to compare
        elif copy is None:
            entry.ok, entry.reason = False, "the scratch copy is missing on the target"
        elif copy != original:
            differing.append((entry, copy))
        else:
            entry.ok = True
    _recheck(differing, source)


def _recheck(differing: list[tuple[_Sampled, Any]], source: ClusterClient) -> None:
    """Tell a key that changed on the source while it was verified from a copy the target got
    wrong: re-read the source key. A DUMP that no longer matches the payload copied means the
    source moved on (an application wrote it); one that still matches, the copy is compared with
    the value read again (a key written and written back meanwhile); a copy that still differs
    from an unchanged source key is a failure."""
    for db, group in _by_db([entry for entry, _copy in differing]):
        keys = [entry.key for entry in group]
        commands = [command for entry in group
                    for command in (("DUMP", entry.key), _read_command(entry.type, entry.key))]
        replies = _pipeline(source, db, keys, commands, per_key=2)
        copies = {id(entry): copy for entry, copy in differing}
        for i, entry in enumerate(group):
            dump, value = replies[2 * i], _normalized(entry.type, replies[2 * i + 1])
            if dump is None or value is None:
                entry.reason = _VANISHED  # deleted on the source meanwhile
            elif isinstance(dump, bytes) and entry.original is not None and \
                    dump[:-_TRAILER] != entry.original[:-_TRAILER]:
                entry.ok, entry.changed = True, True
                entry.reason = "changed on the source while being verified"
            elif value == copies[id(entry)]:
                entry.ok = True
            else:
                entry.ok, entry.reason = False, ("the copy differs from the source key, which did not change: "
                                                 "the target refused or corrupted it")


def _cleanup(entries: list[_Sampled], target: ClusterClient) -> str | None:
    keys = [entry.scratch for entry in entries if entry.placed is not None]
    problems = []
    try:
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            # One DEL per key: a cluster node refuses a multi-key DEL across slots.
            routed = target.execute(0, chunk, [pack("DEL", key) for key in chunk])
            problems += [f"{node}: {replies[0]}" for node, replies in routed.by_key(len(chunk))
                         if isinstance(replies[0], ReplyError)][:1]
    except EndpointError as exc:
        problems.append(str(exc))
    if problems:
        return (f"could not remove every scratch key ({'; '.join(problems)}); "
                f"they expire within {SCRATCH_TTL_MS // 1000} s")
    return None


# --------------------------------------------------------------------------- the run


def test_run(source: EndpointConfig, target: EndpointConfig, *, run_id: str, sample: int = DEFAULT_SAMPLE,
             total_keys: int | None = None, timeout: float = DEFAULT_TIMEOUT,
             mode: DataMovementMode = DataMovementMode.AUTO) -> TestRunReport:
    """Copy a sample of keys to scratch names on the target in ``mode``, verify, time, remove them."""
    if not run_id or any(ch.isspace() for ch in run_id):
        raise ConfigError("a run id without spaces is required", field="run_id")
    if sample < 1:
        raise ConfigError(f"sample must be at least 1, got {sample}", field="sample")
    started = time.monotonic()
    entries: list[_Sampled] = []
    copy_seconds = 0.0
    cleanup_problem: str | None = None
    with _side(source, "source", timeout) as sources, _side(target, "target", timeout) as targets:
        entries, source_keys = _find_sample(sources, sample)
        total = source_keys if total_keys is None else total_keys
        copy_started = time.monotonic()
        for db, group in _by_db(entries):
            replies = _pipeline(sources, db, [e.key for e in group],
                                [command for e in group for command in (("DUMP", e.key), ("PTTL", e.key))], per_key=2)
            for i, entry in enumerate(group):
                payload = replies[2 * i]
                if isinstance(payload, ReplyError):
                    entry.ok, entry.reason = False, f"DUMP refused: {payload}"
                elif payload is None or replies[2 * i + 1] == -2:
                    entry.reason = _VANISHED  # gone since SCAN: not part of the test
                else:
                    entry.payload = entry.original = payload
        entries = [e for e in entries if e.reason != _VANISHED]
        for n, entry in enumerate(entries):
            entry.scratch = scratch_key(run_id, n)
        try:
            _copy([e for e in entries if e.payload is not None], sources, targets, DataMovementMode(mode))
            copy_seconds = time.monotonic() - copy_started
            _verify(entries, sources, targets)
        finally:
            cleanup_problem = _cleanup(entries, targets)
    return _report(entries, started, copy_seconds, total, cleanup_problem)


test_run.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def _report(entries: list[_Sampled], started: float, copy_seconds: float, total: int,
            cleanup_problem: str | None) -> TestRunReport:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0])
    errors: list[str] = []
    changed: list[str] = []
    for entry in entries:
        if entry.reason == _VANISHED:
            continue
        tally = counts[entry.type]
        tally[0] += 1
        tally[3] += entry.how == RELABEL and entry.ok is True    # a key that failed did not move
        tally[4] += entry.how == LOGICAL and entry.ok is True
        if entry.changed:
            tally[5] += 1
            changed.append(f"{entry.type} key {key_text(entry.key)!r} (db {entry.db}): {entry.reason}")
        elif entry.ok:
            tally[1] += 1
        else:
            tally[2] += 1
            errors.append(f"{entry.type} key {key_text(entry.key)!r} (db {entry.db}): "
                          f"{entry.reason or 'not copied'}")
    if len(errors) > MAX_ERRORS:
        errors = errors[:MAX_ERRORS] + [f"... and {len(errors) - MAX_ERRORS} more failed keys"]
    if len(changed) > MAX_ERRORS:
        changed = changed[:MAX_ERRORS] + [f"... and {len(changed) - MAX_ERRORS} more changed keys"]
    if cleanup_problem:
        errors.append(cleanup_problem)
    rate = len(entries) / copy_seconds if entries and copy_seconds > 0 else 0.0
    tested = sum(tally[0] for tally in counts.values())
    return TestRunReport(
        results=tuple(TypeResult(kind, *counts[kind]) for kind in sorted(counts)),
        errors=tuple(errors),
        seconds=round(time.monotonic() - started, 6),
        estimated_seconds=total / rate if rate else 0.0,
        keys=tested,
        keys_per_second=rate,
        total_keys=total,
        changed=tuple(changed),
    )
