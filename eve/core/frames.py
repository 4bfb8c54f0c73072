"""Frames that scanners, restorers and the coordinator exchange over
multiprocessing queues: msgpack maps with a format version and a kind.

    BATCH   scanner -> restorers: a header and rows (key, absolute_expiry_ms_or_0, payload), and the
            big keys it found (key, bytes): not DUMPed, copied in chunks by the restorer (restorer.bigkeys)
    RESULT  restorer -> coordinator: what happened to one batch
    STOP    end of a stream (coordinator -> restorer, or a worker saying it finished)
    FAILED  a worker gives up; ``who`` says which side failed (a ``Side``: source, target, internal)
    RESTARTED  a worker found a side's server restarted (another ``run_id`` on its address):
            what it wrote there may be gone, so the copy must not go on as if it were not

A stream's end is always an explicit STOP frame, never ``queue.Empty``.
Frames are bytes on the queue, so nothing but msgpack crosses the process
boundary, and a frame from another format version is refused loudly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import msgpack

from eve.core.errors import FrameError, Side

__all__ = [
    "FORMAT_VERSION",
    "BatchHeader",
    "Batch",
    "ErrorKeyRow",
    "ConflictRow",
    "Result",
    "Stop",
    "Failed",
    "Restarted",
    "Frame",
    "encode",
    "decode",
    "FrameError",
    "COORDINATOR",
]

# 1: BATCH, RESULT, STOP, FAILED; 2: RESTARTED added (a process of version 1 would refuse it
# as an unknown kind, mid-run: the version says so up front); 3: a BATCH carries big keys.
FORMAT_VERSION = 3
COORDINATOR = "coordinator"  # the worker name on the STOP frames the coordinator sends restorers
BATCH, RESULT, STOP, FAILED, RESTARTED = "BATCH", "RESULT", "STOP", "FAILED", "RESTARTED"


@dataclass(frozen=True)
class BatchHeader:
    run_id: str
    node: str            # source node address, "host:port"
    db: int
    epoch: int           # scanner incarnation: a restarted scanner starts a new epoch
    seq: int             # batch number within (node, db, epoch), from 0
    cursor: int          # SCAN cursor after this batch; 0 with last=True at the end of the db
    last: bool = False   # the final batch of this (node, db)
    scanned: int = 0     # keys SCAN returned for this batch (rows + skipped)
    skipped: int = 0     # keys that vanished between SCAN and DUMP (PTTL -2 or DUMP nil)
    trace: dict[str, str] = field(default_factory=dict)  # W3C trace context carrier


@dataclass(frozen=True)
class Batch:
    header: BatchHeader
    rows: list[tuple[bytes, int, bytes]]  # (key, absolute expiry in ms or 0, DUMP payload)
    # (key, bytes by MEMORY USAGE) of the keys above the big-key threshold: never DUMPed, the
    # restorer copies them in chunks and reads their TTL when it begins
    big: list[tuple[bytes, int]] = field(default_factory=list)


@dataclass(frozen=True)
class ErrorKeyRow:
    key: bytes
    db: int
    node: str
    type: str
    size: int
    reason: str
    attempts: int


@dataclass(frozen=True)
class ConflictRow:
    key: bytes
    db: int
    type: str
    reason: str  # "BUSYKEY" or "type differs (string vs hash)", ...


@dataclass(frozen=True)
class Result:
    header: BatchHeader
    worker: str
    restored: int = 0
    skipped: int = 0      # expired in transit, vanished
    conflicts: int = 0
    failed: int = 0
    bytes: int = 0
    error_keys: list[ErrorKeyRow] = field(default_factory=list)
    conflict_keys: list[ConflictRow] = field(default_factory=list)


@dataclass(frozen=True)
class Stop:
    worker: str


@dataclass(frozen=True)
class Failed:
    worker: str
    who: Side     # which side failed: the source, the target, or Eve itself (internal)
    reason: str

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "who", Side(self.who))
        except ValueError:
            raise FrameError(f"a FAILED frame names {self.who!r} as who failed, not one of "
                             f"{', '.join(side.value for side in Side)}") from None


@dataclass(frozen=True)
class Restarted:
    worker: str
    who: Side         # the side whose server restarted: the source, or the target (a mirror target too)
    role: str         # how the worker names it: "source", "target", "mirror target"
    address: str      # the node, "host:port"
    before: str       # the run_id the job wrote to (or read from)
    after: str        # the run_id it answers with now

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "who", Side(self.who))
        except ValueError:
            raise FrameError(f"a RESTARTED frame names {self.who!r} as the side, not one of "
                             f"{', '.join(side.value for side in Side)}") from None

    @property
    def reason(self) -> str:
        return (f"{self.role} {self.address} restarted (run_id {self.before} before, {self.after} now): what was "
                "written to it before may be lost")


Frame = Union[Batch, Result, Stop, Failed, Restarted]


def _header(h: BatchHeader) -> list[Any]:
    return [h.run_id, h.node, h.db, h.epoch, h.seq, h.cursor, h.last, h.scanned, h.skipped, h.trace]


def _unheader(raw: tuple[Any, ...]) -> BatchHeader:
    return BatchHeader(*raw)


def encode(frame: Frame) -> bytes:
    if isinstance(frame, Batch):
        body: Any = [_header(frame.header), frame.rows, frame.big]
        kind = BATCH
    elif isinstance(frame, Result):
        kind = RESULT
        body = [_header(frame.header), frame.worker, frame.restored, frame.skipped, frame.conflicts,
                frame.failed, frame.bytes,
                [[e.key, e.db, e.node, e.type, e.size, e.reason, e.attempts] for e in frame.error_keys],
                [[c.key, c.db, c.type, c.reason] for c in frame.conflict_keys]]
    elif isinstance(frame, Stop):
        kind, body = STOP, [frame.worker]
    elif isinstance(frame, Failed):
        kind, body = FAILED, [frame.worker, frame.who.value, frame.reason]
    elif isinstance(frame, Restarted):
        kind, body = RESTARTED, [frame.worker, frame.who.value, frame.role, frame.address, frame.before, frame.after]
    else:
        raise TypeError(f"not a frame: {type(frame).__name__}")
    return msgpack.packb([FORMAT_VERSION, kind, body], use_bin_type=True)


def decode(data: bytes) -> Frame:
    try:
        # use_list=False: arrays arrive as tuples, built in C (rows are (key, expiry, payload) as they are).
        version, kind, body = msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData) as exc:
        raise FrameError(f"undecodable frame: {exc}") from exc
    if version != FORMAT_VERSION:
        raise FrameError(f"frame format version {version} is not {FORMAT_VERSION}: "
                         "scanner, restorer and coordinator must come from one Eve version")
    if kind == BATCH:
        header, rows, big = body
        return Batch(_unheader(header), list(rows), list(big))
    if kind == RESULT:
        header, worker, restored, skipped, conflicts, failed, nbytes, errors, conflict_rows = body
        return Result(_unheader(header), worker, restored, skipped, conflicts, failed, nbytes,
                      [ErrorKeyRow(*e) for e in errors], [ConflictRow(*c) for c in conflict_rows])
    if kind == STOP:
        return Stop(*body)
    if kind == FAILED:
        return Failed(*body)
    if kind == RESTARTED:
        return Restarted(*body)
    raise FrameError(f"unknown frame kind {kind!r}")
