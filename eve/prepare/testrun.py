"""The test run of a run's Prepare step (DESIGN.md section 7).

A sample of source keys, spread over the types present, is copied to the
target the way the bulk copy does it (``DUMP`` + ``PTTL`` from the source,
``RESTORE`` on the target), each under a scratch name
``eve:testrun:<run_id>:<n>`` in db 0 of the target, then read back and
compared with the source key by type (module types by their DUMP payloads).
The copy is timed to estimate the full copy. Every scratch key is deleted at
the end, whatever happened, and is restored with a TTL of ``SCRATCH_TTL_MS``
so that even a crash cannot leave one behind for long.

A cluster target gets each scratch key on the master that owns its slot
(a ``MOVED`` reply is followed once). A refused payload (``ERR DUMP payload
version or checksum are wrong``: e.g. Redis 8.2 -> Valkey 8.1) counts as a
failure of its type, the reason in ``errors``. Transport failures raise
``UnavailableError`` naming the side.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from eve.core.endpoints import ConnectionSpec, EndpointConfig
from eve.core.errors import AuthError, ConfigError, EndpointError, UnavailableError
from eve.prepare.analysis import endpoint_masters, key_text, keyspace, source_nodes
from eve.redis.topology import SlotMap, node_spec
from eve.redis.wire import FastConnection, ReplyError, pack_many

__all__ = [
    "SCRATCH_PREFIX",
    "SCRATCH_TTL_MS",
    "TestRunReport",
    "TypeResult",
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
    failed: int    # refused by the target, or read back different


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


def scratch_key(run_id: str, n: int) -> bytes:
    return f"{SCRATCH_PREFIX}{run_id}:{n}".encode()


@dataclass
class _Sampled:
    node: int           # index into the source node specs
    db: int
    key: bytes
    type: str
    payload: bytes | None = None
    scratch: bytes = b""
    placed: ConnectionSpec | None = None  # target node the scratch key was sent to
    ok: bool | None = None
    reason: str = ""


class _Connections:
    """FastConnections by spec, for one side; errors name the side."""

    def __init__(self, side: str, timeout: float) -> None:
        self.side = side
        self.timeout = timeout
        self._conns: dict[ConnectionSpec, FastConnection] = {}

    def get(self, spec: ConnectionSpec) -> FastConnection:
        conn = self._conns.get(spec)
        if conn is None:
            conn = self._conns[spec] = FastConnection(spec, timeout=self.timeout, client_name=CLIENT_NAME)
        return conn

    @contextmanager
    def naming(self) -> Iterator[None]:
        """Transport and credential errors name the side ("source: cannot connect to ...")."""
        try:
            yield
        except (UnavailableError, AuthError) as exc:
            if str(exc).startswith(self.side):
                raise
            raise type(exc)(f"{self.side}: {exc}") from exc

    def pipeline(self, spec: ConnectionSpec, commands: Sequence[Sequence[Any]], db: int = 0) -> list[Any]:
        with self.naming():
            conn = self.get(spec)
            conn.select(db)
            return conn.pipeline(pack_many(commands), len(commands)) if commands else []

    def keyspace(self, spec: ConnectionSpec) -> dict[int, tuple[int, int]]:
        with self.naming():
            return keyspace(self.get(spec))

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- sampling


def _find_sample(nodes: list[ConnectionSpec], conns: _Connections, sample: int,
                 ) -> tuple[list[_Sampled], int]:
    """Up to ``sample`` keys spread over the types present, and the source's key count.

    SCAN steps go round-robin over every node and database so the sample is
    not drawn from the first one only; at most a bounded number of keys is looked at.
    """
    cursors: list[tuple[int, int]] = []
    total = 0
    for index, spec in enumerate(nodes):
        for db, (keys, _) in sorted(conns.keyspace(spec).items()):
            total += keys
            if keys:
                cursors.append((index, db))
    by_type: dict[str, list[_Sampled]] = defaultdict(list)
    budget = max(MIN_SCAN_BUDGET, sample * SCAN_BUDGET_PER_SAMPLED_KEY)
    looked = 0
    position: dict[tuple[int, int], bytes] = {place: b"0" for place in cursors}
    seen: set[tuple[int, int, bytes]] = set()
    while position and looked < budget:
        for place in list(position):
            index, db = place
            reply = conns.pipeline(nodes[index], [("SCAN", position[place], "COUNT", SCAN_COUNT)], db)[0]
            if isinstance(reply, ReplyError):
                raise EndpointError(f"source: SCAN failed on {nodes[index].address} db {db}: {reply}")
            cursor, keys = reply[0], [k for k in reply[1] if (index, db, k) not in seen]
            if cursor in (b"0", 0):
                del position[place]
            else:
                position[place] = cursor
            if not keys:
                continue
            seen.update((index, db, k) for k in keys)
            looked += len(keys)
            commands = [command for key in keys for command in (("TYPE", key), ("MEMORY", "USAGE", key))]
            replies = conns.pipeline(nodes[index], commands, db)
            for i, key in enumerate(keys):
                kind, size = replies[2 * i], replies[2 * i + 1]
                if isinstance(kind, ReplyError) or _text(kind) == "none":
                    continue
                if isinstance(size, int) and size > MAX_KEY_BYTES:
                    continue
                by_type[_text(kind)].append(_Sampled(index, db, key, _text(kind)))
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


def _groups(entries: Sequence[_Sampled]) -> Iterator[tuple[tuple[int, int], list[_Sampled]]]:
    keyed = sorted(entries, key=lambda e: (e.node, e.db))
    for place, group in itertools.groupby(keyed, key=lambda e: (e.node, e.db)):
        yield place, list(group)


# --------------------------------------------------------------------------- copy


def _moved_spec(spec: ConnectionSpec, reply: ReplyError) -> ConnectionSpec | None:
    parts = str(reply).split()
    if len(parts) == 3 and parts[0] in ("MOVED", "ASK"):
        host, _, port = parts[2].rpartition(":")
        return dataclasses.replace(spec, host=host or spec.host, port=int(port))
    return None


def _placement(target: EndpointConfig, timeout: float) -> Callable[[bytes], ConnectionSpec]:
    """scratch key -> the target write connection of the master owning its slot."""
    masters = endpoint_masters(target, role="write", timeout=timeout)
    if not masters:
        return lambda key: target.write
    slots = SlotMap(masters)

    def place(key: bytes) -> ConnectionSpec:
        node = slots.node_for_key(key)
        return node_spec(target.write, node) if node else target.write

    return place


def _restore(entries: list[_Sampled], place: Callable[[bytes], ConnectionSpec], tconns: _Connections) -> None:
    """RESTORE each payload under its scratch name on the node owning its slot."""
    by_node: dict[ConnectionSpec, list[_Sampled]] = defaultdict(list)
    for entry in entries:
        by_node[place(entry.scratch)].append(entry)
    for attempt in range(2):
        redirected: dict[ConnectionSpec, list[_Sampled]] = defaultdict(list)
        for spec, group in by_node.items():
            for entry in group:
                entry.placed = spec
            replies = tconns.pipeline(spec, [("RESTORE", e.scratch, SCRATCH_TTL_MS, e.payload) for e in group])
            for entry, reply in zip(group, replies):
                moved = _moved_spec(spec, reply) if isinstance(reply, ReplyError) else None
                if moved is not None and attempt == 0:
                    redirected[moved].append(entry)
                elif isinstance(reply, ReplyError):
                    entry.ok, entry.reason = False, f"RESTORE refused: {reply}"
        by_node = redirected


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


def _verify(entries: list[_Sampled], nodes: list[ConnectionSpec], sconns: _Connections,
            tconns: _Connections) -> None:
    restored = [e for e in entries if e.ok is None and e.placed is not None]
    source_values: dict[int, Any] = {}
    for (index, db), group in _groups(restored):
        replies = sconns.pipeline(nodes[index], [_read_command(e.type, e.key) for e in group], db)
        source_values.update((id(e), _normalized(e.type, r)) for e, r in zip(group, replies))
    by_node: dict[ConnectionSpec, list[_Sampled]] = defaultdict(list)
    for entry in restored:
        assert entry.placed is not None
        by_node[entry.placed].append(entry)
    for spec, group in by_node.items():
        replies = tconns.pipeline(spec, [_read_command(e.type, e.scratch) for e in group])
        for entry, reply in zip(group, replies):
            copy, original = _normalized(entry.type, reply), source_values[id(entry)]
            if original is None:
                entry.reason = _VANISHED  # expired or deleted on the source meanwhile: nothing to compare
            elif copy is None:
                entry.ok, entry.reason = False, "the scratch copy is missing on the target"
            elif copy != original:
                entry.ok, entry.reason = False, ("the copy differs from the source key (it may have "
                                                 "changed on the source since it was read)")
            else:
                entry.ok = True


def _cleanup(entries: list[_Sampled], tconns: _Connections) -> str | None:
    by_node: dict[ConnectionSpec, list[bytes]] = defaultdict(list)
    for entry in entries:
        if entry.placed is not None:
            by_node[entry.placed].append(entry.scratch)
    problems = []
    for spec, keys in by_node.items():
        try:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                # One DEL per key: a cluster node refuses a multi-key DEL across slots.
                replies = tconns.pipeline(spec, [("DEL", key) for key in chunk])
                problems += [f"{spec.address}: {r}" for r in replies if isinstance(r, ReplyError)][:1]
        except EndpointError as exc:
            problems.append(str(exc))
    if problems:
        return (f"could not remove every scratch key ({'; '.join(problems)}); "
                f"they expire within {SCRATCH_TTL_MS // 1000} s")
    return None


# --------------------------------------------------------------------------- the run


def test_run(source: EndpointConfig, target: EndpointConfig, *, run_id: str, sample: int = DEFAULT_SAMPLE,
             total_keys: int | None = None, timeout: float = DEFAULT_TIMEOUT) -> TestRunReport:
    """Copy a sample of keys to scratch names on the target, verify, time, remove them."""
    if not run_id or any(ch.isspace() for ch in run_id):
        raise ConfigError("a run id without spaces is required", field="run_id")
    if sample < 1:
        raise ConfigError(f"sample must be at least 1, got {sample}", field="sample")
    started = time.monotonic()
    sconns, tconns = _Connections("source", timeout), _Connections("target", timeout)
    entries: list[_Sampled] = []
    copy_seconds = 0.0
    cleanup_problem: str | None = None
    try:
        with sconns.naming():
            nodes = source_nodes(source, timeout=timeout)
        with tconns.naming():
            place = _placement(target, timeout)
        entries, source_keys = _find_sample(nodes, sconns, sample)
        total = source_keys if total_keys is None else total_keys
        copy_started = time.monotonic()
        for (index, db), group in _groups(entries):
            commands = [command for e in group for command in (("DUMP", e.key), ("PTTL", e.key))]
            replies = sconns.pipeline(nodes[index], commands, db)
            for i, entry in enumerate(group):
                payload = replies[2 * i]
                if isinstance(payload, ReplyError):
                    entry.ok, entry.reason = False, f"DUMP refused: {payload}"
                elif payload is None or replies[2 * i + 1] == -2:
                    entry.reason = _VANISHED  # gone since SCAN: not part of the test
                else:
                    entry.payload = payload
        entries = [e for e in entries if e.reason != _VANISHED]
        for n, entry in enumerate(entries):
            entry.scratch = scratch_key(run_id, n)
        try:
            _restore([e for e in entries if e.payload is not None], place, tconns)
            copy_seconds = time.monotonic() - copy_started
            _verify(entries, nodes, sconns, tconns)
        finally:
            cleanup_problem = _cleanup(entries, tconns)
    finally:
        sconns.close()
        tconns.close()
    return _report(entries, started, copy_seconds, total, cleanup_problem)


test_run.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def _report(entries: list[_Sampled], started: float, copy_seconds: float, total: int,
            cleanup_problem: str | None) -> TestRunReport:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    errors: list[str] = []
    for entry in entries:
        if entry.reason == _VANISHED:
            continue
        tally = counts[entry.type]
        tally[0] += 1
        if entry.ok:
            tally[1] += 1
        else:
            tally[2] += 1
            errors.append(f"{entry.type} key {key_text(entry.key)!r} (db {entry.db}): "
                          f"{entry.reason or 'not copied'}")
    if len(errors) > MAX_ERRORS:
        errors = errors[:MAX_ERRORS] + [f"... and {len(errors) - MAX_ERRORS} more failed keys"]
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
    )
