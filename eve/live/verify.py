"""Verification: compare a source and a target key by key (DESIGN.md 6.5).

``verify`` scans the source (every master of a cluster, every db that holds
keys) and, for each SCAN step, reads on both sides in pipelines:

1. ``TYPE`` + ``PTTL`` of every key. Source ``TYPE none`` or ``PTTL -2``: the
   key vanished since SCAN and is skipped (DESIGN.md 4.2). Target ``none``:
   **missing** (unless the source TTL is within the tolerance of expiring: the
   target expired it a moment earlier). Types differ: **type**. TTLs: both
   without expiry are equal; one with and one without, or both with and more
   than ``ttl_tolerance_ms`` apart: **ttl**.
2. The size of every key whose type matches (``STRLEN``/``HLEN``/``LLEN``/
   ``SCARD``/``ZCARD``/``XLEN``). Sizes differ: **value**, without reading it.
3. A digest of the logical value on each side, compared. DUMP payloads are
   never compared for the core types: Redis 7.0 and Valkey 9.1 serialize the
   same value differently (RDB 10 vs 80, other encodings), and even Redis 7.0
   and 8.2 print the same zset score differently (``0.10000000000000001`` vs
   ``0.1``), so scores are compared as doubles.

Digests (``_value_digest`` is the reference, the chunked readers give the same bytes):

* string: blake2b of the bytes (``GET``, or ``GETRANGE`` chunks above 8 MiB).
* list: ordered blake2b of length-prefixed elements (``LRANGE``, by ranges
  above ``BIG_ELEMENTS``).
* zset: ordered blake2b of (member, score as an IEEE double) in ``ZRANGE``
  order, which is canonical (score, then member bytes); big zsets by rank ranges.
* stream: ordered blake2b of the entries (``XRANGE``; big ones in ``COUNT``
  pages), then the stream's ``last-generated-id`` and its consumer groups
  (name, ``last-delivered-id``) sorted by name: a copy that lost the groups
  or would hand out old IDs again differs. PELs and consumers are not compared.
* hash and set: order-independent. Each element (field+value, member) is
  hashed to 128 bits and the hashes are **added** modulo 2**128, then the sum
  and the element count are hashed. Addition is commutative, so chunks from
  ``HSCAN``/``SSCAN`` can arrive in any order and no process holds the value;
  unlike XOR, an element seen twice does not cancel out. ``HSCAN`` may return
  an element more than once (a rehash between two calls), which a sum would
  count twice: when a chunked read returns more elements than ``HLEN`` said,
  the key is read again with a set of the element hashes that drops repeats
  (memory only for that key, only in that rare case).
* module types (any other ``TYPE``): Eve cannot read a module's value, so
  ``DUMP`` on both sides. Payloads of the same RDB version (trailer) that are
  byte for byte equal prove the values equal. Anything else is counted in
  ``not_comparable`` and is *not* a difference: payloads of another RDB
  version are encoded differently, and even equal versions prove nothing,
  since a module may serialize one value differently each time (FalkorDB's
  ``graphdata``: two DUMPs of the same untouched graph on one Redis 8.2
  differ). Missing keys and type differences of module keys are found as
  for every key.

Search indexes (RediSearch) are not keys: ``verify`` also compares each index's
definition and, once both sides finished indexing, its document count
(``num_docs``; not when ``match``, ``type`` or ``dbs`` narrow the comparison),
``eve.bulk.indexes.compare_indexes``; a difference is listed in
``VerifyReport.index_differences`` and makes the report not clean (issue 23).

Keys changing while they are compared can show up as differences; the re-copy
loop makes such keys exact again, and a later pass is clean.

With ``check_extra`` the target is scanned too and every key the source lacks
(``EXISTS`` on the source, pipelined) is **extra**. Keys starting with one of
``ignore_prefixes`` (Eve's scratch keys, ``eve:`` by default) are skipped on
both sides. A cluster has only db 0: source keys of another db are missing on
a cluster target, target keys of another db are extra against a cluster source.

``max_keys_per_second`` is a token bucket over the keys looked at on either
side (source keys, and target keys of the extra-key pass, whose ``EXISTS``
runs on the source), so a pass does not starve the source's clients.

Counts: ``missing``, ``extra``, ``different`` (type or value), ``ttl_mismatch``;
a key whose value and TTL both differ is listed twice (once per kind).
``keys_compared`` counts the source keys examined (vanished ones excluded).
Each ``KeyDifference`` carries what was seen of the key on both sides (TYPE,
PTTL) besides its ``detail``.

**Field-level detail.** A value that differs says how, within bounded work:
hashes which fields are missing, only on the target or with another value;
sets and sorted sets which members are missing or only on the target, sorted
sets which scores differ; lists the first differing index (or which end is
missing); strings the first differing byte offset; streams the last entry ID,
the last generated ID and the consumer groups. Each list names a few examples
and counts the rest. The values compared whole are already in memory (they were
read for their digest); a value whose size differs is read once more, only when
it is small. A big key (above ``BIG_ELEMENTS`` elements, a string above
``BIG_STRING_BYTES``) is not diffed element by element, the detail says so: its
digest was streamed in chunks and stays that cheap (a big stream still gets its
``XINFO`` facts, which cost one reply).

**Streaming.** ``on_difference`` gets every difference as it is found (an
export file, the ``--fix`` backlog): the report keeps only the first
``max_differences``, so a pass over millions of differences holds none of them.
``on_progress`` gets a ``VerifyProgress`` after each SCAN step (keys scanned,
the total INFO keyspace announces, differences so far), for a progress display.

**Fix** (``fix=True``, ``eve verify --fix``): what differs is re-copied from the
source with the live run's re-copy loop (``eve.live.recopy.DirtyKeySync`` over a
``DirtyKeys`` backlog: DUMP/RESTORE ... REPLACE, the key deleted on the target
when it is gone from the source, a logical copy where the target refuses the
payload), in chunks of ``FIX_CHUNK`` keys as the pass goes, and each chunk is
then compared again; ``VerifyReport.fix`` says what was re-copied, what the
target refused and what still differs. So the target becomes equal to the
source for the compared keys (``dbs``, ``match``, ``type``): keys only on the
target are deleted. Refused (``ConfigError``) when the two sides are one server
(their ``run_id``), or linked by replication, or the target is a read-only
replica (``eve.prepare.preflight``): a "fix" there would write the wrong server.

Errors: a side that cannot be reached raises ``UnavailableError`` ("source
unreachable: ..."), refused credentials ``AuthError``, any other failure of a
side ``SourceError`` / ``TargetError``; bad arguments ``ConfigError``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import heapq
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from eve.bulk.indexes import compare_indexes
from eve.core.endpoints import ConnectionSpec
from eve.core.errors import (
    AuthError,
    ConfigError,
    EndpointError,
    Side,
    SourceError,
    TargetError,
    UnavailableError,
)
from eve.live.backlog import DirtyKeys
from eve.live.recopy import DirtyKeySync, RecopyFailure, SyncOptions
from eve.prepare import preflight
from eve.redis.cluster import ClientOptions, ClusterClient
from eve.redis.rdb import payload_rdb_version
from eve.redis.wire import ReplyError, pack

__all__ = [
    "KeyDifference",
    "VerifyReport",
    "VerifyProgress",
    "FixReport",
    "verify",
    "MISSING",
    "EXTRA",
    "TYPE",
    "VALUE",
    "TTL",
    "KINDS",
    "CORE_TYPES",
    "BIG_ELEMENTS",
    "DEFAULT_TTL_TOLERANCE_MS",
    "DEFAULT_MAX_EXAMPLES",
    "DEFAULT_MAX_DIFFERENCES",
    "DEFAULT_SCAN_COUNT",
    "DEFAULT_IGNORE_PREFIXES",
    "DEFAULT_TIMEOUT",
    "COMPARING",
    "EXTRA_KEYS",
    "FIXING",
    "FIX_CHUNK",
]

log = logging.getLogger("eve.live.verify")

MISSING, EXTRA, TYPE, VALUE, TTL = "missing", "extra", "type", "value", "ttl"
KINDS = (MISSING, EXTRA, TYPE, VALUE, TTL)
CORE_TYPES = ("string", "hash", "list", "set", "zset", "stream")

DEFAULT_TTL_TOLERANCE_MS = 1000
DEFAULT_MAX_EXAMPLES = 20
DEFAULT_MAX_DIFFERENCES = 100_000
DEFAULT_SCAN_COUNT = 500
DEFAULT_IGNORE_PREFIXES = (b"eve:",)
DEFAULT_TIMEOUT = 10.0

BIG_ELEMENTS = 10_000              # a collection with more elements is read in chunks
CHUNK_ELEMENTS = 1_000             # elements per chunk (HSCAN/SSCAN COUNT, LRANGE/ZRANGE/XRANGE span)
BIG_STRING_BYTES = 8 << 20         # a longer string is read with GETRANGE
STRING_CHUNK_BYTES = 1 << 20
PIPELINE_ELEMENTS = 50_000         # elements read in one pipeline of small values
PIPELINE_BYTES = 16 << 20          # string bytes read in one pipeline
CLIENT_NAME = "eve-verify"
DETAIL_EXAMPLES = 3                # elements named in a field-level detail; the rest are counted
DETAIL_TEXT = 40                   # characters of an element shown in a detail
FIX_CHUNK = 5_000                  # keys re-copied, then compared again, at a time by fix=True
FIX_DRAIN_SECONDS = 300.0          # a chunk not re-copied by then: a side stays unreachable

# VerifyProgress.phase
COMPARING = "comparing"            # the source's keys, against the target
EXTRA_KEYS = "extra keys"          # the target's keys, for those the source lacks
FIXING = "fixing"                  # re-copying a chunk of differences and comparing it again

_SIZE_COMMAND = {"string": b"STRLEN", "hash": b"HLEN", "list": b"LLEN", "set": b"SCARD", "zset": b"ZCARD",
                 "stream": b"XLEN"}
_UNIT = {"string": "bytes", "hash": "fields", "list": "elements", "set": "members", "zset": "members",
         "stream": "entries"}
# An empty hash, list, set or zset does not exist (an empty string or stream does).
_NEVER_EMPTY = frozenset({"hash", "list", "set", "zset"})
_MASK128 = (1 << 128) - 1
_DOUBLE = struct.Struct(">d")


class _Gone:
    """The key vanished between TYPE and the read (nil / empty reply)."""


class _Changed:
    """The key changed type between TYPE and the read (WRONGTYPE)."""


_GONE, _CHANGED = _Gone(), _Changed()


@dataclass(frozen=True)
class KeyDifference:
    key: bytes
    key_text: str
    db: int
    kind: str      # MISSING, EXTRA, TYPE, VALUE or TTL
    detail: str    # "source hash, target string", "source TTL 3600000 ms, target none", ...
    # What TYPE and PTTL said of the key on each side: "" / None where it is not there.
    # PTTL is -1 for a key without expiry.
    source_type: str = ""
    target_type: str = ""
    source_ttl_ms: int | None = None
    target_ttl_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key_text, "key_base64": base64.b64encode(self.key).decode(), "db": self.db,
                "kind": self.kind, "detail": self.detail, "source_type": self.source_type,
                "target_type": self.target_type, "source_ttl_ms": self.source_ttl_ms,
                "target_ttl_ms": self.target_ttl_ms}


class _KeyFacts(NamedTuple):
    """TYPE and PTTL of one key on both sides, as KeyDifference carries them."""

    source_type: str = ""
    target_type: str = ""
    source_ttl_ms: int | None = None
    target_ttl_ms: int | None = None

    def not_on_target(self) -> _KeyFacts:
        return self._replace(target_type="", target_ttl_ms=None)


_NOT_SEEN = _KeyFacts()


@dataclass(frozen=True)
class VerifyProgress:
    """A pass so far (``verify(on_progress=...)``): counts, never a dependency on a display."""

    phase: str                  # COMPARING, EXTRA_KEYS or FIXING
    keys_compared: int          # source keys examined, as the report counts them
    keys_scanned: int           # keys SCAN returned on either side: the work done
    keys_expected: int | None   # what INFO keyspace announces for the whole pass; None with match/type
    differences: int
    fixed: int                  # keys re-copied or deleted on the target so far (fix=True)
    seconds: float

    @property
    def keys_per_second(self) -> float:
        return self.keys_scanned / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        rate = self.keys_per_second
        if self.keys_expected is None or rate <= 0:
            return None
        return max(self.keys_expected - self.keys_scanned, 0) / rate


@dataclass(frozen=True)
class VerifyReport:
    clean: bool
    keys_compared: int
    missing: int
    extra: int
    different: int       # type or value differs
    ttl_mismatch: int
    examples: tuple[KeyDifference, ...]      # the first max_examples differences
    differences: tuple[KeyDifference, ...]   # the first max_differences (error keys, re-copy)
    seconds: float
    not_comparable: int = 0  # module-type keys whose DUMP payloads could not prove equality (not differences)
    fix: FixReport | None = None  # fix=True: what was re-copied and what still differs
    index_differences: tuple[str, ...] = ()  # search indexes missing, extra or different (_verify_indexes)

    def summary(self) -> str:
        if self.clean:
            text = f"clean: {self.keys_compared:,} keys compared in {self.seconds:,.2f} s"
        else:
            text = (f"{self.missing:,} missing, {self.extra:,} extra, {self.different:,} different, "
                    f"{self.ttl_mismatch:,} TTL mismatches; {self.keys_compared:,} keys compared in "
                    f"{self.seconds:,.2f} s")
        if self.not_comparable:
            text += f" ({self.not_comparable:,} module-type keys not comparable)"
        if self.index_differences:
            text += "; " + "; ".join(self.index_differences)
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"clean": self.clean, "keys_compared": self.keys_compared, "missing": self.missing,
                "extra": self.extra, "different": self.different, "ttl_mismatch": self.ttl_mismatch,
                "not_comparable": self.not_comparable, "seconds": round(self.seconds, 3),
                "examples": [difference.as_dict() for difference in self.examples],
                **({"fix": self.fix.as_dict()} if self.fix is not None else {}),
                **({"index_differences": list(self.index_differences)} if self.index_differences else {})}


@dataclass(frozen=True)
class FixReport:
    """What ``fix=True`` did: the differing keys re-copied from the source, then compared again."""

    recopied: int                     # keys written again from the source (RESTORE REPLACE or a logical copy)
    deleted: int                      # keys deleted on the target: gone from the source (extra keys among them)
    failed: int                       # keys the target (or the source) refused; their reasons in failures
    failures: tuple[RecopyFailure, ...]   # the first max_examples
    recheck: VerifyReport             # the re-copied keys compared again: what still differs

    @property
    def clean(self) -> bool:
        """The target equals the source for every key that differed."""
        return self.recheck.clean and not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {"clean": self.clean, "recopied": self.recopied, "deleted": self.deleted, "failed": self.failed,
                "failures": [{"key": _key_text(f.key), "key_base64": base64.b64encode(f.key).decode(),
                              "db": f.db, "node": f.node, "reason": f.reason} for f in self.failures],
                "still_different": {"missing": self.recheck.missing, "extra": self.recheck.extra,
                                    "different": self.recheck.different,
                                    "ttl_mismatch": self.recheck.ttl_mismatch},
                "examples": [difference.as_dict() for difference in self.recheck.examples]}


def _key_text(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- digests


def _element_hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "little")


def _pair(first: bytes, second: bytes) -> bytes:
    # The length prefix makes ("ab", "c") and ("a", "bc") different elements.
    return b"%d:%s%s" % (len(first), first, second)


class _Ordered:
    """Running digest of a sequence: length-prefixed elements in order."""

    def __init__(self, kind: str) -> None:
        self._hash = hashlib.blake2b(kind.encode(), digest_size=32)
        self.count = 0

    def add(self, elements: Iterable[bytes]) -> None:
        parts = []
        for element in elements:
            parts.append(b"%d:" % len(element))
            parts.append(element)
            self.count += 1
        self._hash.update(b"".join(parts))

    def finish(self) -> bytes:
        self._hash.update(b"#%d" % self.count)
        return self._hash.digest()


class _Unordered:
    """Running digest of a set: the sum modulo 2**128 of per-element hashes (see the module docstring).

    With ``dedupe`` an element hash seen before is not added again (a chunked
    read that returned duplicates)."""

    def __init__(self, kind: str, *, dedupe: bool = False) -> None:
        self.kind = kind
        self.total = 0
        self.count = 0
        self._seen: set[int] | None = set() if dedupe else None

    def add(self, elements: Iterable[bytes]) -> None:
        seen = self._seen
        for element in elements:
            value = _element_hash(element)
            if seen is not None:
                if value in seen:
                    continue
                seen.add(value)
            self.total = (self.total + value) & _MASK128
            self.count += 1

    def finish(self) -> bytes:
        return hashlib.blake2b(b"%s#%d#%s" % (self.kind.encode(), self.count, self.total.to_bytes(16, "little")),
                               digest_size=32).digest()


def _pairs(flat: Sequence[bytes]) -> Iterator[bytes]:
    return (_pair(flat[i], flat[i + 1]) for i in range(0, len(flat) - 1, 2))


def _scored(flat: Sequence[bytes]) -> Iterator[bytes]:
    # Scores as doubles: Redis 7.0 prints "%.17g" ("0.10000000000000001"), 7.2+ and
    # Valkey the shortest form ("0.1"); "+ 0.0" folds -0.0 into 0.0.
    return (_pair(flat[i], _DOUBLE.pack(float(flat[i + 1]) + 0.0)) for i in range(0, len(flat) - 1, 2))


def _stream_entries(entries: Sequence[Any]) -> Iterator[bytes]:
    for entry_id, fields in entries:
        yield entry_id
        yield b"".join(b"%d:%s" % (len(part), part) for part in (fields or ()))


def _stream_meta(info: Any, groups: Any) -> list[bytes]:
    """last-generated-id and the groups (name, last-delivered-id), from XINFO STREAM / GROUPS in RESP2."""
    facts = _StreamFacts.of(info, groups)
    return [b"last-generated-id", facts.last_generated or b""] + sorted(
        _pair(name, delivered) for name, delivered in facts.groups.items())


def _reply_error(reply: Any) -> bool:
    return isinstance(reply, ReplyError)


def _value_digest(kind: str, replies: Sequence[Any]) -> bytes | _Gone | _Changed:
    """The digest of one value from the replies of the small-value reads (``_read_commands``)."""
    if any(_reply_error(reply) for reply in replies):
        for reply in replies:
            if _reply_error(reply) and (str(reply).startswith("WRONGTYPE") or "no such key" in str(reply)):
                return _CHANGED if str(reply).startswith("WRONGTYPE") else _GONE
        raise EndpointError(f"{kind} read failed: {next(r for r in replies if _reply_error(r))}")
    first = replies[0]
    if kind == "string":
        if first is None:
            return _GONE
        digest = hashlib.blake2b(first, digest_size=32)
        return digest.digest()
    if kind == "stream":
        ordered = _Ordered(kind)
        ordered.add(_stream_entries(first))
        ordered.add(_stream_meta(replies[1], replies[2]))
        return ordered.finish()
    if not first:  # collections are never empty: the key is gone
        return _GONE
    if kind == "list":
        ordered = _Ordered(kind)
        ordered.add(first)
        return ordered.finish()
    if kind == "zset":
        ordered = _Ordered(kind)
        ordered.add(_scored(first))
        return ordered.finish()
    unordered = _Unordered(kind)
    unordered.add(_pairs(first) if kind == "hash" else first)
    return unordered.finish()


class _KeyCommand:
    """``NAME key`` pre-encoded: a verify pass sends several per key, ``pack`` costs more than the servers."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self._prefix = b"*2\r\n$%d\r\n%s\r\n" % (len(name), name)

    def __call__(self, key: bytes) -> bytes:
        return self._prefix + b"$%d\r\n%s\r\n" % (len(key), key)


_TYPE, _PTTL, _EXISTS, _DUMP = (_KeyCommand(name) for name in (b"TYPE", b"PTTL", b"EXISTS", b"DUMP"))
_GET, _HGETALL, _SMEMBERS = (_KeyCommand(name) for name in (b"GET", b"HGETALL", b"SMEMBERS"))
_SIZE_COMMANDS = {kind: _KeyCommand(name) for kind, name in _SIZE_COMMAND.items()}


def _read_commands(kind: str, key: bytes) -> list[bytes]:
    """The commands that read a small value whole, for ``_value_digest``."""
    if kind == "string":
        return [_GET(key)]
    if kind == "hash":
        return [_HGETALL(key)]
    if kind == "list":
        return [pack(b"LRANGE", key, 0, -1)]
    if kind == "set":
        return [_SMEMBERS(key)]
    if kind == "zset":
        return [pack(b"ZRANGE", key, 0, -1, b"WITHSCORES")]
    if kind == "stream":
        return [pack(b"XRANGE", key, b"-", b"+"), pack(b"XINFO", b"STREAM", key), pack(b"XINFO", b"GROUPS", key)]
    return [_DUMP(key)]


# --------------------------------------------------------------------------- one side


class _Side:
    """One endpoint (standalone or cluster) as the verifier sees it: a cluster client (SCAN per
    node, per-key pipelines routed by slot, redirections followed) and the db being compared.

    Public methods map every failure to an error naming the side (module docstring)."""

    def __init__(self, role: str, spec: ConnectionSpec, timeout: float) -> None:
        self.role = role
        self.spec = spec
        self.error: type[EndpointError] = SourceError if role == "source" else TargetError
        # A pass that loses a side fails at once (it is simply run again): no reconnect wait.
        self.client = ClusterClient(spec, role=role, error=self.error,
                                    options=ClientOptions(timeout=timeout, reconnect_seconds=0,
                                                          client_name=CLIENT_NAME))
        self.db = 0
        self._depth = 0

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        # Only the outermost block names the side: public methods call each other. The
        # client's own errors name it already.
        self._depth += 1
        try:
            yield
        except (SourceError, TargetError, UnavailableError, AuthError):
            raise
        except EndpointError as exc:
            if self._depth > 1:
                raise
            raise self.error(f"{self.role} {self.spec.address}: {exc}") from exc
        finally:
            self._depth -= 1

    @property
    def cluster(self) -> bool:
        return bool(self.client.cluster)

    def open(self) -> None:
        with self._errors():
            self.client.connect()
            self.client.identify()  # every node's run_id now: a node that restarts later is caught

    def identify(self) -> None:
        """Raise ``ServerRestarted`` when a node restarted since ``open``: its keys changed under the pass."""
        with self._errors():
            self.client.identify()

    def close(self) -> None:
        self.client.close()

    @property
    def scan_nodes(self) -> list[str]:
        return self.client.nodes

    def has_db(self, db: int) -> bool:
        return self.client.has_db(db)

    def dbs_with_keys(self) -> list[int]:
        with self._errors():
            return self.client.dbs_with_keys()

    def keys_in(self, dbs: Iterable[int]) -> int:
        """What INFO keyspace says ``dbs`` hold on every node: what a SCAN of them returns."""
        wanted = set(dbs)
        with self._errors():
            return sum(keys for address in self.scan_nodes
                       for db, (keys, _) in self.client.keyspace(address).items() if db in wanted)

    def use_db(self, db: int) -> None:
        self.db = db

    def scan(self, address: str, cursor: bytes, count: int, match: bytes | None,
             key_type: str | None) -> tuple[bytes, list[bytes]]:
        args: list[Any] = [b"SCAN", cursor]
        if match is not None:
            args += [b"MATCH", match]
        args += [b"COUNT", count]
        if key_type is not None:
            args += [b"TYPE", key_type]
        with self._errors():
            reply = self.client.call(address, *args, db=self.db)
            if _reply_error(reply):
                raise EndpointError(f"SCAN failed on {address}: {reply}")
            return reply[0], list(reply[1])

    def run(self, keys: Sequence[bytes], commands: Sequence[Sequence[bytes]]) -> list[list[Any]]:
        """Send each key's pre-encoded commands and return each key's replies, in key order."""
        with self._errors():
            return [replies for _node, replies in self.client.run(self.db, keys, commands)]

    def call(self, key: bytes, *args: Any) -> Any:
        """One command about ``key`` on the node that owns it."""
        return self.run([key], [[pack(*args)]])[0][0]


# --------------------------------------------------------------------------- chunked reads


def _read_big(side: _Side, key: bytes, kind: str, size: int) -> bytes | _Gone | _Changed:
    """The digest of a big value, read in chunks into a running digest."""
    with side._errors():
        try:
            if kind == "string":
                return _big_string(side, key, size)
            if kind == "list":
                return _big_ranges(side, key, kind, b"LRANGE", ())
            if kind == "zset":
                return _big_ranges(side, key, kind, b"ZRANGE", (b"WITHSCORES",))
            if kind == "stream":
                return _big_stream(side, key)
            digest, count = _big_scan(side, key, kind, dedupe=False)
            if count > size:  # more elements than the size said: repeats (see the module docstring)
                digest, count = _big_scan(side, key, kind, dedupe=True)
            return digest
        except _ReadError as exc:
            return exc.outcome


class _ReadError(Exception):
    def __init__(self, outcome: _Gone | _Changed) -> None:
        self.outcome = outcome


def _checked(reply: Any, what: str) -> Any:
    if _reply_error(reply):
        text = str(reply)
        if text.startswith("WRONGTYPE"):
            raise _ReadError(_CHANGED)
        if "no such key" in text:
            raise _ReadError(_GONE)
        raise EndpointError(f"{what} failed: {text}")
    return reply


def _big_string(side: _Side, key: bytes, size: int) -> bytes | _Gone:
    digest = hashlib.blake2b(digest_size=32)
    start = 0
    while True:
        chunk = _checked(side.call(key, b"GETRANGE", key, start, start + STRING_CHUNK_BYTES - 1), "GETRANGE")
        if start == 0 and not chunk and size:
            return _GONE
        digest.update(chunk)
        start += len(chunk)
        if len(chunk) < STRING_CHUNK_BYTES:
            return digest.digest()


def _big_ranges(side: _Side, key: bytes, kind: str, command: bytes, extra: tuple[bytes, ...]) -> bytes | _Gone:
    ordered = _Ordered(kind)
    start = 0
    while True:
        reply = _checked(side.call(key, command, key, start, start + CHUNK_ELEMENTS - 1, *extra), command.decode())
        if start == 0 and not reply:
            return _GONE
        ordered.add(_scored(reply) if kind == "zset" else reply)
        got = len(reply) // 2 if kind == "zset" else len(reply)
        start += got
        if got < CHUNK_ELEMENTS:
            return ordered.finish()


def _big_stream(side: _Side, key: bytes) -> bytes | _Gone:
    ordered = _Ordered("stream")
    start = b"-"
    while True:
        entries = _checked(side.call(key, b"XRANGE", key, start, b"+", b"COUNT", CHUNK_ELEMENTS), "XRANGE")
        ordered.add(_stream_entries(entries))
        if len(entries) < CHUNK_ELEMENTS:
            break
        start = b"(" + entries[-1][0]
    info = _checked(side.call(key, b"XINFO", b"STREAM", key), "XINFO STREAM")
    groups = _checked(side.call(key, b"XINFO", b"GROUPS", key), "XINFO GROUPS")
    ordered.add(_stream_meta(info, groups))
    return ordered.finish()


def _big_scan(side: _Side, key: bytes, kind: str, *, dedupe: bool) -> tuple[bytes | _Gone, int]:
    """HSCAN/SSCAN into an unordered digest, and how many elements were added."""
    unordered = _Unordered(kind, dedupe=dedupe)
    command = b"HSCAN" if kind == "hash" else b"SSCAN"
    cursor = b"0"
    while True:
        cursor, elements = _checked(side.call(key, command, key, cursor, b"COUNT", CHUNK_ELEMENTS), command.decode())
        unordered.add(_pairs(elements) if kind == "hash" else elements)
        if cursor == b"0":
            break
    if unordered.count == 0:
        return _GONE, 0
    return unordered.finish(), unordered.count


# --------------------------------------------------------------------------- the compare pass


class _RateLimit:
    """A token bucket of ``rate`` keys per second (a tenth of a second of burst); charge() sleeps off the debt."""

    def __init__(self, rate: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = float(rate)
        self.burst = max(self.rate / 10, 1.0)
        self.tokens = self.burst
        self._clock, self._sleep = clock, sleep
        self._stamp = clock()

    def charge(self, keys: int) -> None:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate) - keys
        self._stamp = now
        if self.tokens < 0:
            self._sleep(-self.tokens / self.rate)


@dataclass
class _Tally:
    max_examples: int
    max_differences: int
    # Every difference as it is found (module docstring, streaming); the list keeps max_differences.
    on_difference: Callable[[KeyDifference], None] | None = None
    keys_compared: int = 0
    keys_scanned: int = 0
    missing: int = 0
    extra: int = 0
    different: int = 0
    ttl_mismatch: int = 0
    not_comparable: int = 0
    differences: list[KeyDifference] = field(default_factory=list)

    @property
    def found(self) -> int:
        return self.missing + self.extra + self.different + self.ttl_mismatch

    def add(self, key: bytes, db: int, kind: str, detail: str, facts: _KeyFacts = _NOT_SEEN) -> None:
        if kind == MISSING:
            self.missing += 1
        elif kind == EXTRA:
            self.extra += 1
        elif kind == TTL:
            self.ttl_mismatch += 1
        else:
            self.different += 1
        keep = len(self.differences) < self.max_differences
        if keep or self.on_difference is not None:
            difference = KeyDifference(key, _key_text(key), db, kind, detail, *facts)
            if keep:
                self.differences.append(difference)
            if self.on_difference is not None:
                self.on_difference(difference)

    def report(self, seconds: float, fix: FixReport | None = None) -> VerifyReport:
        clean = not (self.missing or self.extra or self.different or self.ttl_mismatch)
        return VerifyReport(clean, self.keys_compared, self.missing, self.extra, self.different, self.ttl_mismatch,
                            tuple(self.differences[:self.max_examples]), tuple(self.differences), seconds,
                            self.not_comparable, fix)


def _ttl_text(pttl: int) -> str:
    return "none" if pttl == -1 else f"{pttl} ms"


def _ttl_difference(source_pttl: int, target_pttl: int, tolerance: int) -> str | None:
    if source_pttl == -1 and target_pttl == -1:
        return None
    if source_pttl >= 0 and target_pttl >= 0:
        off = abs(source_pttl - target_pttl)
        if off <= tolerance:
            return None
        return (f"source TTL {source_pttl} ms, target {target_pttl} ms "
                f"(off by {off} ms, tolerance {tolerance} ms)")
    return f"source TTL {_ttl_text(source_pttl)}, target {_ttl_text(target_pttl)}"


def _kind_of(type_reply: Any) -> str:
    return _text(type_reply)


def _ignored(key: bytes, prefixes: tuple[bytes, ...]) -> bool:
    return bool(prefixes) and key.startswith(prefixes)


class _Comparer:
    def __init__(self, source: _Side, target: _Side, tally: _Tally, *, ttl_tolerance_ms: int) -> None:
        self.source, self.target, self.tally = source, target, tally
        self.tolerance = ttl_tolerance_ms
        self._facts: dict[bytes, _KeyFacts] = {}   # TYPE/PTTL of the current step's keys on both sides

    def _add(self, key: bytes, db: int, kind: str, detail: str, facts: _KeyFacts | None = None) -> None:
        self.tally.add(key, db, kind, detail, facts if facts is not None else self._facts.get(key, _NOT_SEEN))

    def _gone_from_target(self, key: bytes, db: int, kind: str) -> None:
        facts = self._facts.get(key, _NOT_SEEN).not_on_target()
        self._add(key, db, MISSING, f"source {kind}, gone from the target during the comparison", facts)

    def compare(self, db: int, keys: list[bytes]) -> None:
        """One SCAN step's keys: TYPE + PTTL, then sizes, then digests (module docstring)."""
        type_ttl = [[_TYPE(key), _PTTL(key)] for key in keys]
        source_meta = self.source.run(keys, type_ttl)
        if self.target.has_db(db):
            target_meta = self.target.run(keys, type_ttl)
        else:
            target_meta = [[b"none", -2]] * len(keys)
        for replies in (source_meta, target_meta):
            for pair in replies:
                for reply in pair:
                    if _reply_error(reply):
                        side = self.source if replies is source_meta else self.target
                        raise side.error(f"{side.role} {side.spec.address}: TYPE/PTTL failed: {reply}")
        self._facts = {}
        same: list[tuple[bytes, str]] = []
        for key, (s_type, s_ttl), (t_type, t_ttl) in zip(keys, source_meta, target_meta):
            source_kind, target_kind = _kind_of(s_type), _kind_of(t_type)
            if source_kind == "none" or s_ttl == -2:
                continue  # vanished since SCAN
            self.tally.keys_compared += 1
            facts = _KeyFacts(source_kind, target_kind, s_ttl, t_ttl)
            if target_kind == "none" or t_ttl == -2:
                if 0 <= s_ttl <= self.tolerance:
                    continue  # expiring: the target expired it a moment earlier
                where = "" if self.target.has_db(db) else " (the target is a cluster: it has only db 0)"
                self._add(key, db, MISSING, f"source {source_kind}, not on the target{where}", facts.not_on_target())
                continue
            self._facts[key] = facts
            if source_kind != target_kind:
                self._add(key, db, TYPE, f"source {source_kind}, target {target_kind}")
            else:
                same.append((key, source_kind))
            ttl = _ttl_difference(s_ttl, t_ttl, self.tolerance)
            if ttl is not None:
                self._add(key, db, TTL, ttl)
        if same:
            self._compare_values(db, same)

    def _compare_values(self, db: int, same: list[tuple[bytes, str]]) -> None:
        core = [(key, kind) for key, kind in same if kind in _SIZE_COMMAND]
        modules = [(key, kind) for key, kind in same if kind not in _SIZE_COMMAND]
        if modules:
            self._compare_modules(db, modules)
        if not core:
            return
        keys = [key for key, _ in core]
        size_commands = [[_SIZE_COMMANDS[kind](key)] for key, kind in core]
        source_sizes = [r[0] for r in self.source.run(keys, size_commands)]
        target_sizes = [r[0] for r in self.target.run(keys, size_commands)]
        small: list[tuple[bytes, str, int]] = []
        big: list[tuple[bytes, str, int]] = []
        resized: list[tuple[bytes, str, int, int]] = []
        for (key, kind), s_size, t_size in zip(core, source_sizes, target_sizes):
            if _reply_error(s_size) or _reply_error(t_size):
                # WRONGTYPE: the key changed type since TYPE; anything else is a server failure.
                bad = s_size if _reply_error(s_size) else t_size
                if not str(bad).startswith("WRONGTYPE"):
                    side = self.source if _reply_error(s_size) else self.target
                    raise side.error(f"{side.role} {side.spec.address}: {_SIZE_COMMAND[kind].decode()} failed: {bad}")
                self._add(key, db, VALUE, f"{kind} changed type during the comparison")
                continue
            if s_size != t_size:
                if kind in _NEVER_EMPTY and s_size == 0:
                    continue  # vanished from the source since TYPE
                if kind in _NEVER_EMPTY and t_size == 0:
                    self._gone_from_target(key, db, kind)
                    continue
                resized.append((key, kind, s_size, t_size))
                continue
            (big if s_size > _big_limit(kind) else small).append((key, kind, s_size))
        if resized:
            self._explain_sizes(db, resized)
        for batch in _budgeted(small):
            batch_keys = [key for key, _, _ in batch]
            commands = [_read_commands(kind, key) for key, kind, _ in batch]
            source_replies = self.source.run(batch_keys, commands)
            target_replies = self.target.run(batch_keys, commands)
            source_digests = self._digests(self.source, batch, source_replies)
            target_digests = self._digests(self.target, batch, target_replies)
            for (key, kind, size), s_digest, t_digest, s_replies, t_replies in zip(
                    batch, source_digests, target_digests, source_replies, target_replies):
                # The values are in memory already (read for their digests): the detail costs no read.
                self._judge(db, key, kind, size, s_digest, t_digest,
                            lambda kind=kind, s=s_replies, t=t_replies: _field_detail(kind, s, t))
        for key, kind, size in big:
            s_digest = _read_big(self.source, key, kind, size)
            t_digest = _read_big(self.target, key, kind, size)
            self._judge(db, key, kind, size, s_digest, t_digest, lambda key=key, kind=kind: self._big_detail(key, kind))

    def _digests(self, side: _Side, batch: list[tuple[bytes, str, int]], replies: list[list[Any]]) -> list[Any]:
        with side._errors():
            return [_value_digest(kind, key_replies) for (_, kind, _), key_replies in zip(batch, replies)]

    def _explain_sizes(self, db: int, resized: list[tuple[bytes, str, int, int]]) -> None:
        """Values whose sizes differ: read again when small on both sides, for the field-level detail
        (only keys that differ pay for it); a big one says so instead."""
        readable = [(key, kind, max(s_size, t_size)) for key, kind, s_size, t_size in resized
                    if max(s_size, t_size) <= _big_limit(kind)]
        details: dict[bytes, str] = {}
        for batch in _budgeted(readable):
            batch_keys = [key for key, _, _ in batch]
            commands = [_read_commands(kind, key) for key, kind, _ in batch]
            source_replies = self.source.run(batch_keys, commands)
            target_replies = self.target.run(batch_keys, commands)
            for (key, kind, _), s_replies, t_replies in zip(batch, source_replies, target_replies):
                details[key] = _field_detail(kind, s_replies, t_replies)
        for key, kind, s_size, t_size in resized:
            unit = _UNIT[kind]
            detail = details[key] if key in details else self._big_detail(key, kind)
            self._add(key, db, VALUE, _with_detail(f"source {kind} of {s_size} {unit}, target {t_size} {unit}",
                                                   detail))

    def _big_detail(self, key: bytes, kind: str) -> str:
        """What a big key's detail can say without reading it element by element."""
        if kind == "stream":
            commands = [[pack(b"XINFO", b"STREAM", key), pack(b"XINFO", b"GROUPS", key)]]
            source_replies = self.source.run([key], commands)[0]
            target_replies = self.target.run([key], commands)[0]
            if any(_reply_error(reply) for reply in (*source_replies, *target_replies)):
                return ""  # the key changed while it was compared
            return _stream_detail(_StreamFacts.of(*source_replies), _StreamFacts.of(*target_replies), None)
        if kind == "string":
            return f"a big string: the first differing byte is not searched above {BIG_STRING_BYTES >> 20} MiB"
        element = _ELEMENT[kind]
        return f"a big {kind}: not compared {element} by {element} above {BIG_ELEMENTS:,} {_UNIT[kind]}"

    def _judge(self, db: int, key: bytes, kind: str, size: int, source_digest: Any, target_digest: Any,
               explain: Callable[[], str]) -> None:
        if source_digest is _GONE:
            return  # vanished from the source while being read
        if source_digest is _CHANGED or target_digest is _CHANGED:
            self._add(key, db, VALUE, f"{kind} changed type during the comparison")
        elif target_digest is _GONE:
            self._gone_from_target(key, db, kind)
        elif source_digest != target_digest:
            what = "elements or their order differ" if kind in ("list", "zset", "stream") else "contents differ"
            if kind == "stream":
                what = "entries, last ID or consumer groups differ"
            elif kind == "string":
                what = "bytes differ"
            self._add(key, db, VALUE, _with_detail(f"{kind} of {size} {_UNIT[kind]} on both sides, {what}", explain()))

    def _compare_modules(self, db: int, modules: list[tuple[bytes, str]]) -> None:
        keys = [key for key, _ in modules]
        dumps = [[_DUMP(key)] for key in keys]
        source_payloads = [r[0] for r in self.source.run(keys, dumps)]
        target_payloads = [r[0] for r in self.target.run(keys, dumps)]
        for (key, kind), s_payload, t_payload in zip(modules, source_payloads, target_payloads):
            if s_payload is None:
                continue  # vanished from the source
            if t_payload is None:
                self._gone_from_target(key, db, kind)
                continue
            if not isinstance(s_payload, bytes) or not isinstance(t_payload, bytes):
                self.tally.not_comparable += 1  # DUMP refused (a module without RDB support)
                continue
            try:
                s_version, t_version = payload_rdb_version(s_payload), payload_rdb_version(t_payload)
            except ValueError:
                self.tally.not_comparable += 1
                continue
            if s_version != t_version or s_payload != t_payload:
                self.tally.not_comparable += 1  # see the module docstring: not a difference

    def extra(self, db: int, keys: list[bytes]) -> None:
        """Target keys of one SCAN step that the source lacks."""
        if self.source.has_db(db):
            exists = [r[0] for r in self.source.run(keys, [[_EXISTS(key)] for key in keys])]
        else:
            exists = [0] * len(keys)
        absent = []
        for key, reply in zip(keys, exists):
            if _reply_error(reply):
                raise self.source.error(f"source {self.source.spec.address}: EXISTS failed: {reply}")
            if reply == 0:
                absent.append(key)
        if not absent:
            return
        metas = self.target.run(absent, [[_TYPE(key), _PTTL(key)] for key in absent])
        for key, (type_reply, pttl) in zip(absent, metas):
            kind = _kind_of(type_reply) if not _reply_error(type_reply) else "none"
            if kind == "none" or pttl == -2:
                continue  # gone from the target too
            where = "" if self.source.has_db(db) else " (the source is a cluster: it has only db 0)"
            facts = _KeyFacts("", kind, None, pttl if isinstance(pttl, int) else None)
            self._add(key, db, EXTRA, f"target {kind}, not on the source{where}", facts)


# --------------------------------------------------------------------------- field-level detail


_ELEMENT = {"hash": "field", "list": "element", "set": "member", "zset": "member", "stream": "entry"}


def _big_limit(kind: str) -> int:
    return BIG_STRING_BYTES if kind == "string" else BIG_ELEMENTS


def _with_detail(text: str, detail: str) -> str:
    return f"{text}: {detail}" if detail else text


def _show(element: bytes) -> str:
    text = _key_text(element)
    return repr(text if len(text) <= DETAIL_TEXT else text[:DETAIL_TEXT] + "...")


def _count(number: int, singular: str, plural: str | None = None) -> str:
    return f"{number:,} {singular if number == 1 else (plural or singular + 's')}"


def _listed(elements: Sequence[bytes], singular: str, plural: str, where: str) -> str:
    """'2 fields missing on the target ('a', 'b')': a few examples (the smallest), the rest counted."""
    shown = ", ".join(_show(element) for element in heapq.nsmallest(DETAIL_EXAMPLES, elements))
    more = ", ..." if len(elements) > DETAIL_EXAMPLES else ""
    return f"{_count(len(elements), singular, plural)} {where} ({shown}{more})"


def _first_difference(source: bytes, target: bytes) -> int:
    """The first offset where the two differ; the shorter one's length when it is the other's start."""
    end = min(len(source), len(target))
    step = 4096  # slices compare at memcmp speed: only the block that differs is walked byte by byte
    start = 0
    while start < end and source[start:start + step] == target[start:start + step]:
        start += step
    for offset in range(start, min(start + step, end)):
        if source[offset] != target[offset]:
            return offset
    return end


def _string_detail(source: bytes, target: bytes) -> str:
    offset = _first_difference(source, target)
    if offset < min(len(source), len(target)):
        return f"first difference at byte {offset:,}"
    if len(target) < len(source):
        return f"the target holds the source's first {_count(len(target), 'byte')} only"
    if len(target) > len(source):
        return f"the target holds the source's value and {_count(len(target) - len(source), 'byte')} more"
    return ""


def _list_detail(source: Sequence[bytes], target: Sequence[bytes]) -> str:
    for index, (s_element, t_element) in enumerate(zip(source, target)):
        if s_element != t_element:
            return f"first difference at index {index:,} (source {_show(s_element)}, target {_show(t_element)})"
    if len(target) < len(source):
        return f"the target lacks the last {_count(len(source) - len(target), 'element')} (from index {len(target):,})"
    if len(target) > len(source):
        return f"the target has {_count(len(target) - len(source), 'element')} more at the end (from index " \
               f"{len(source):,})"
    return ""


def _hash_detail(source_flat: Sequence[bytes], target_flat: Sequence[bytes]) -> str:
    source = dict(zip(source_flat[0::2], source_flat[1::2]))
    target = dict(zip(target_flat[0::2], target_flat[1::2]))
    parts = []
    missing = [name for name in source if name not in target]
    extra = [name for name in target if name not in source]
    changed = [name for name, value in source.items() if name in target and target[name] != value]
    if missing:
        parts.append(_listed(missing, "field", "fields", "missing on the target"))
    if extra:
        parts.append(_listed(extra, "field", "fields", "only on the target"))
    if changed:
        parts.append(_listed(changed, "field", "fields", "with another value"))
    return "; ".join(parts)


def _members_detail(source: Iterable[bytes], target: Iterable[bytes]) -> str:
    source_members, target_members = set(source), set(target)
    parts = []
    if source_members - target_members:
        parts.append(_listed(list(source_members - target_members), "member", "members", "missing on the target"))
    if target_members - source_members:
        parts.append(_listed(list(target_members - source_members), "member", "members", "only on the target"))
    return "; ".join(parts)


def _zset_detail(source_flat: Sequence[bytes], target_flat: Sequence[bytes]) -> str:
    # Scores as doubles, like the digest: "0.10000000000000001" (Redis 7.0) and "0.1" are one score.
    source = {member: float(score) + 0.0 for member, score in zip(source_flat[0::2], source_flat[1::2])}
    target = {member: float(score) + 0.0 for member, score in zip(target_flat[0::2], target_flat[1::2])}
    parts = [_members_detail(source, target)] if source.keys() != target.keys() else []
    rescored = sorted(member for member, score in source.items() if member in target and target[member] != score)
    if rescored:
        shown = ", ".join(f"{_show(member)}: {source[member]!r} vs {target[member]!r}"
                          for member in rescored[:DETAIL_EXAMPLES])
        more = ", ..." if len(rescored) > DETAIL_EXAMPLES else ""
        parts.append(f"{_count(len(rescored), 'member')} with another score ({shown}{more})")
    return "; ".join(part for part in parts if part)


class _StreamFacts(NamedTuple):
    """What XINFO STREAM / GROUPS (RESP2) say of a stream: a few replies, however long it is."""

    length: int
    last_entry: bytes | None                 # the ID of its last entry
    last_generated: bytes | None             # last-generated-id: where XADD * goes on
    groups: dict[bytes, bytes]               # consumer group -> last-delivered-id

    @classmethod
    def of(cls, info: Any, groups: Any) -> "_StreamFacts":
        stream = dict(zip(info[0::2], info[1::2]))
        last = stream.get(b"last-entry")
        described = {}
        for group in groups or ():
            fields = dict(zip(group[0::2], group[1::2]))
            described[fields.get(b"name") or b""] = fields.get(b"last-delivered-id") or b""
        return cls(int(stream.get(b"length") or 0), last[0] if last else None, stream.get(b"last-generated-id"),
                   described)


def _stream_detail(source: _StreamFacts, target: _StreamFacts, entries: tuple[Any, Any] | None) -> str:
    """Entries (when ``entries`` has both sides' XRANGE), last IDs and consumer groups."""
    parts = []
    if entries is not None:
        source_entries, target_entries = entries
        for (s_id, s_fields), (t_id, t_fields) in zip(source_entries, target_entries):
            if s_id != t_id:
                parts.append(f"first differing entry: {_text(s_id)} on the source, {_text(t_id)} on the target")
                break
            if list(s_fields or ()) != list(t_fields or ()):
                parts.append(f"entry {_text(s_id)} has other fields on the target")
                break
        else:
            fewer = len(source_entries) - len(target_entries)
            if fewer > 0:
                parts.append(f"the target lacks the last {_count(fewer, 'entry', 'entries')}")
            elif fewer < 0:
                parts.append(f"the target has {_count(-fewer, 'entry', 'entries')} more")
    if source.last_entry != target.last_entry:
        parts.append(f"last entry ID {_text(source.last_entry or b'none')} on the source, "
                     f"{_text(target.last_entry or b'none')} on the target")
    if source.last_generated != target.last_generated:
        parts.append(f"last generated ID {_text(source.last_generated or b'?')} on the source, "
                     f"{_text(target.last_generated or b'?')} on the target")
    missing = [name for name in source.groups if name not in target.groups]
    extra = [name for name in target.groups if name not in source.groups]
    moved = sorted(name for name, delivered in source.groups.items()
                   if name in target.groups and target.groups[name] != delivered)
    if missing:
        parts.append(_listed(missing, "consumer group", "consumer groups", "missing on the target"))
    if extra:
        parts.append(_listed(extra, "consumer group", "consumer groups", "only on the target"))
    if moved:
        shown = ", ".join(f"{_show(name)}: {_text(source.groups[name])} vs {_text(target.groups[name])}"
                          for name in moved[:DETAIL_EXAMPLES])
        parts.append(f"{_count(len(moved), 'consumer group')} with another last-delivered ID ({shown}"
                     f"{', ...' if len(moved) > DETAIL_EXAMPLES else ''})")
    return "; ".join(parts)


def _field_detail(kind: str, source_replies: Sequence[Any], target_replies: Sequence[Any]) -> str:
    """How two small values differ, from the replies of ``_read_commands`` on each side; "" when the
    replies cannot say (the key changed or vanished while it was read)."""
    if any(_reply_error(reply) for reply in (*source_replies, *target_replies)):
        return ""
    source, target = source_replies[0], target_replies[0]
    if source is None or target is None:
        return ""
    if kind == "string":
        return _string_detail(source, target)
    if kind == "hash":
        return _hash_detail(source, target)
    if kind == "set":
        return _members_detail(source, target)
    if kind == "zset":
        return _zset_detail(source, target)
    if kind == "list":
        return _list_detail(source, target)
    if kind == "stream":
        return _stream_detail(_StreamFacts.of(*source_replies[1:3]), _StreamFacts.of(*target_replies[1:3]),
                              (source, target))
    return ""


def _budgeted(items: list[tuple[bytes, str, int]]) -> Iterator[list[tuple[bytes, str, int]]]:
    """Small values in pipelines of at most PIPELINE_ELEMENTS elements / PIPELINE_BYTES string bytes."""
    batch: list[tuple[bytes, str, int]] = []
    elements = string_bytes = 0
    for item in items:
        _, kind, size = item
        if batch and (elements >= PIPELINE_ELEMENTS or string_bytes >= PIPELINE_BYTES):
            yield batch
            batch, elements, string_bytes = [], 0, 0
        batch.append(item)
        if kind == "string":
            string_bytes += size
        else:
            elements += size
    if batch:
        yield batch


def _scan_keys(side: _Side, db: int, *, scan_count: int, match: bytes | None, key_type: str | None,
               ignore: tuple[bytes, ...]) -> Iterator[list[bytes]]:
    """The keys of each SCAN step on every node of ``side`` (ignored prefixes left out)."""
    for address in side.scan_nodes:
        cursor = b"0"
        while True:
            cursor, keys = side.scan(address, cursor, scan_count, match, key_type)
            keys = [key for key in keys if not _ignored(key, ignore)]
            if keys:
                yield keys
            if cursor in (b"0", 0):
                break


class _Fixer:
    """``fix=True``: the differences of a pass re-copied from the source by the live run's re-copy
    loop, a chunk at a time, and each chunk compared again (module docstring)."""

    def __init__(self, source: ConnectionSpec, target: ConnectionSpec, recheck: _Comparer, *, check_extra: bool,
                 limit: _RateLimit | None, max_failures: int, timeout: float) -> None:
        self.recheck = recheck
        self.check_extra = check_extra
        self.limit = limit
        self.max_failures = max_failures
        self.failures: list[RecopyFailure] = []
        # The backlog guarantees a key is never in flight twice (DirtyKeySync's docstring);
        # it holds one chunk plus one SCAN step at most, far below its bound.
        self.dirty = DirtyKeys()
        self.sync = DirtyKeySync(SyncOptions(authoritative=source, others=(target,), timeout=timeout), self.dirty,
                                 on_error=self._refused)
        self._pending: dict[tuple[int, bytes], None] = {}   # marked, not compared again yet (in order)

    def _refused(self, failures: list[RecopyFailure]) -> None:
        room = self.max_failures - len(self.failures)
        if room > 0:
            self.failures.extend(failures[:room])

    def add(self, difference: KeyDifference) -> None:
        item = (difference.db, difference.key)
        if item not in self._pending:   # a key whose value and TTL differ is listed twice
            self._pending[item] = None
            self.dirty.mark(*item)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def due(self) -> bool:
        return len(self._pending) >= FIX_CHUNK

    @property
    def fixed(self) -> int:
        stats = self.sync.stats()
        return stats.copied + stats.deleted

    def flush(self) -> None:
        """Re-copy the pending keys, then compare them again. Called between SCAN steps, never
        inside one: a key is compared whole before it is re-copied."""
        if not self._pending:
            return
        if not self.sync.drain(FIX_DRAIN_SECONDS):
            stats = self.sync.stats()
            raise UnavailableError(f"fix: {stats.backlog:,} keys not re-copied after {FIX_DRAIN_SECONDS:.0f} s"
                                   + (f": {stats.last_error}" if stats.last_error else ""))
        by_db: dict[int, list[bytes]] = {}
        for db, key in self._pending:
            by_db.setdefault(db, []).append(key)
        source, target = self.recheck.source, self.recheck.target
        saved = source.db, target.db
        try:
            for db, keys in by_db.items():
                source.use_db(db)
                if target.has_db(db):
                    target.use_db(db)
                for start in range(0, len(keys), DEFAULT_SCAN_COUNT):
                    step = keys[start:start + DEFAULT_SCAN_COUNT]
                    if self.limit is not None:
                        self.limit.charge(len(step))
                    # A key on the source is compared; one only on the target is an extra key:
                    # each pass skips the keys that are the other's.
                    self.recheck.compare(db, step)
                    if self.check_extra:
                        self.recheck.extra(db, step)
        finally:
            source.use_db(saved[0])
            target.use_db(saved[1])
        self._pending.clear()

    def report(self, seconds: float) -> FixReport:
        stats = self.sync.stats()
        return FixReport(stats.copied, stats.deleted, stats.failed, tuple(self.failures),
                         self.recheck.tally.report(seconds))

    def close(self) -> None:
        self.sync.close()


def _refuse_unsafe_fix(source: ConnectionSpec, target: ConnectionSpec, timeout: float) -> None:
    """A fix writes the target: refused when the sides are one server (``run_id``, whatever the
    URLs say), linked by replication, or the target is a replica (eve.prepare.preflight)."""
    findings = preflight.check(preflight.inspect(source, Side.SOURCE, "source", timeout=timeout),
                               [preflight.inspect(target, Side.TARGET, "target", timeout=timeout)], replace=False)
    blocking = [finding.message for finding in findings if finding.blocking]
    if blocking:
        raise ConfigError("refused, nothing was written: " + "; ".join(blocking), field="fix")
    for finding in findings:
        log.warning("verify fix: %s", finding.message)


def _fanout(*sinks: Callable[[KeyDifference], None] | None) -> Callable[[KeyDifference], None] | None:
    present = [sink for sink in sinks if sink is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]

    def each(difference: KeyDifference) -> None:
        for sink in present:
            sink(difference)

    return each


def verify(source: ConnectionSpec, target: ConnectionSpec, *, dbs: Sequence[int] | None = None,
           match: str | None = None, type: str | None = None, ttl_tolerance_ms: int = DEFAULT_TTL_TOLERANCE_MS,
           max_examples: int = DEFAULT_MAX_EXAMPLES, max_differences: int = DEFAULT_MAX_DIFFERENCES,
           max_keys_per_second: int = 0, scan_count: int = DEFAULT_SCAN_COUNT, check_extra: bool = True,
           ignore_prefixes: Sequence[bytes] = DEFAULT_IGNORE_PREFIXES,
           timeout: float = DEFAULT_TIMEOUT, on_difference: Callable[[KeyDifference], None] | None = None,
           on_progress: Callable[[VerifyProgress], None] | None = None, fix: bool = False) -> VerifyReport:
    """Compare every key of the source with the target (module docstring); a report, never an exception
    for a difference. ``on_difference`` gets every difference as it is found, ``on_progress`` the
    counts after each SCAN step; ``fix`` re-copies what differs and compares it again (``report.fix``)."""
    key_type = type
    if ttl_tolerance_ms < 0:
        raise ConfigError("must be 0 or more", field="ttl_tolerance_ms")
    if max_examples < 0 or max_differences < 0:
        raise ConfigError("must be 0 or more", field="max_examples" if max_examples < 0 else "max_differences")
    if max_keys_per_second < 0:
        raise ConfigError("must be 0 (no limit) or more", field="max_keys_per_second")
    if scan_count <= 0:
        raise ConfigError("must be positive", field="scan_count")
    if dbs is not None and any(db < 0 for db in dbs):
        raise ConfigError("database numbers are 0 or more", field="dbs")
    pattern = match.encode() if isinstance(match, str) else match
    ignore = tuple(prefix.encode() if isinstance(prefix, str) else bytes(prefix) for prefix in ignore_prefixes)
    ignore = tuple(prefix for prefix in ignore if prefix)
    started = time.monotonic()
    tally = _Tally(max_examples=min(max_examples, max_differences), max_differences=max_differences)
    limit = _RateLimit(max_keys_per_second) if max_keys_per_second else None
    source_side, target_side = _Side("source", source, timeout), _Side("target", target, timeout)
    fixer: _Fixer | None = None
    try:
        source_side.open()
        target_side.open()
        if dbs is not None and source_side.cluster and set(dbs) - {0}:
            raise ConfigError(f"the source {source.address} is a cluster, which has only db 0", field="dbs")
        comparer = _Comparer(source_side, target_side, tally, ttl_tolerance_ms=ttl_tolerance_ms)
        if fix:
            _refuse_unsafe_fix(source, target, timeout)
            recheck = _Comparer(source_side, target_side,
                                _Tally(max_examples=max_examples, max_differences=max_examples),
                                ttl_tolerance_ms=ttl_tolerance_ms)
            fixer = _Fixer(source, target, recheck, check_extra=check_extra, limit=limit, max_failures=max_examples,
                           timeout=timeout)
        tally.on_difference = _fanout(on_difference, fixer.add if fixer is not None else None)
        source_dbs = sorted(set(dbs)) if dbs is not None else source_side.dbs_with_keys()
        # What SCAN will return, for a rate and an ETA; unknown under MATCH/TYPE, which filter
        # after the scan. The target's count is read again when its pass starts: a fix adds keys.
        counted = on_progress is not None and pattern is None and key_type is None
        expected: int | None = None
        if counted:
            expected = source_side.keys_in(source_dbs)
            if check_extra:
                expected += target_side.keys_in(sorted(set(dbs)) if dbs is not None else target_side.dbs_with_keys())

        def progress(phase: str) -> None:
            if on_progress is not None:
                on_progress(VerifyProgress(phase, tally.keys_compared, tally.keys_scanned, expected, tally.found,
                                           fixer.fixed if fixer is not None else 0, time.monotonic() - started))

        def fix_pending(phase: str, *, due_only: bool) -> None:
            if fixer is not None and fixer.pending and (fixer.due or not due_only):
                progress(FIXING)
                fixer.flush()
                progress(phase)

        progress(COMPARING)
        scan = {"scan_count": scan_count, "match": pattern, "key_type": key_type, "ignore": ignore}
        def scan_pass(side: _Side, other: _Side, pass_dbs: Iterable[int], check: Callable[[int, list[bytes]], Any],
                      phase: str) -> None:
            """SCAN ``side`` db by db and ``check`` each batch of keys against ``other``."""
            for db in pass_dbs:
                if not side.has_db(db):
                    continue
                side.use_db(db)
                if other.has_db(db):
                    other.use_db(db)
                for keys in _scan_keys(side, db, **scan):  # type: ignore[arg-type]
                    if limit is not None:
                        limit.charge(len(keys))
                    check(db, keys)
                    tally.keys_scanned += len(keys)
                    fix_pending(phase, due_only=True)
                    progress(phase)
            fix_pending(phase, due_only=False)

        scan_pass(source_side, target_side, source_dbs, comparer.compare, COMPARING)
        if check_extra:
            target_dbs = sorted(set(dbs)) if dbs is not None else target_side.dbs_with_keys()
            if counted:
                expected = tally.keys_scanned + target_side.keys_in(target_dbs)
            scan_pass(target_side, source_side, target_dbs, comparer.extra, EXTRA_KEYS)
        # A side that restarted after the pass last used a connection to it would make a
        # "clean" that no longer holds: ask every node once more before reporting.
        source_side.identify()
        target_side.identify()
    finally:
        if fixer is not None:
            fixer.close()
        source_side.close()
        target_side.close()
    seconds = time.monotonic() - started
    report = tally.report(seconds, fix=fixer.report(seconds) if fixer is not None else None)
    # Document counts say something only when every key was compared.
    report = _verify_indexes(report, source, target, counts=pattern is None and key_type is None and dbs is None)
    log.info("verify %s -> %s: %s", source.address, target.address, report.summary())
    return report


def _verify_indexes(report: VerifyReport, source: ConnectionSpec, target: ConnectionSpec, *,
                    counts: bool) -> VerifyReport:
    """The report with the search indexes compared too (module docstring, issue 23); ``counts``:
    their document counts too (not when only some keys were compared)."""
    differences = tuple(str(difference) for difference in compare_indexes(source, target, counts=counts))
    if not differences:
        return report
    return dataclasses.replace(report, index_differences=differences, clean=False)
