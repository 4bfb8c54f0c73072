"""Messages between a proxy process and its supervisor, over one duplex
``multiprocessing`` pipe per worker.

    READY    proxy -> supervisor: listening on these ports
    STATS    proxy -> supervisor: counters, every ``stats_interval`` seconds
    STOPPED  proxy -> supervisor: drained and closed, about to exit 0
    FAILED   proxy -> supervisor: gave up; ``who`` says which side failed
             ("config" for a port in use, "internal" for a bug)
    STOP     supervisor -> proxy: stop accepting, drain for at most ``drain_seconds``
    TRACK    supervisor -> proxy: record the keys of every write (on) or stop (off)
    DIRTY    proxy -> supervisor: keys written since the last DIRTY (a batch, while tracking)
    BARRIER  supervisor -> proxy: flush the keys recorded so far, then answer BARRIER_DONE
    BARRIER_DONE proxy -> supervisor: every key recorded before BARRIER arrived was sent
    ROUTE    supervisor -> proxy: the live run's route (authoritative side, dual writes, reads)
    PAUSE    supervisor -> proxy: stop reading clients, let every reply arrive, answer PAUSED
    PAUSED   proxy -> supervisor: no request is in flight (``settled``) or the timeout passed
    RESUME   supervisor -> proxy: read clients again
    ATTACHED proxy -> supervisor: first message to a coordinator that re-attached over the
             control socket (``proxy.control``): what the process serves and under which route
    CONFIRM  supervisor -> proxy: the keys of the first ``reports`` DIRTY of this connection are
             re-copied: the spool need not keep them for the next coordinator

Every message is a small frozen dataclass carrying the format version; a
message of another version is refused (``check``) rather than misread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from eve.core.endpoints import ConnectionSpec

if TYPE_CHECKING:  # the message module stays light: importing proxy loads no server (nor asyncio)
    from eve.redis.topology import Node

__all__ = [
    "FORMAT_VERSION",
    "Attached",
    "DirtyConfirm",
    "BackendReport",
    "Pause",
    "Paused",
    "Resume",
    "Route",
    "DirtyBarrier",
    "DirtyBarrierDone",
    "DirtyReport",
    "Failed",
    "Message",
    "Ready",
    "StatsReport",
    "Stop",
    "Stopped",
    "TrackDirty",
    "check",
]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Ready:
    worker: int
    pid: int
    ports: tuple[int, ...]
    version: int = FORMAT_VERSION


@dataclass(frozen=True)
class BackendReport:
    backend: str                 # "source" (every node of a cluster together)
    ops: int                     # commands answered since the start
    errors: int                  # error replies and failed commands since the start
    histogram: tuple[int, ...]   # round-trip latencies of the last interval (proxy.stats buckets)
    # Every round trip since the start: counts per proxy.stats.LATENCY_BUCKETS_SECONDS bound
    # (then those above), and their sum in seconds: the exported histogram (issue 24).
    latency_buckets: tuple[int, ...] = ()
    latency_sum_seconds: float = 0.0


@dataclass(frozen=True)
class StatsReport:
    worker: int
    connections: int             # clients connected now
    ops: int                     # commands since the start
    errors: int                  # errors sent to clients since the start (backend's and the interlay's own)
    interval_ops: int            # commands during the last interval
    interval_seconds: float
    backends: tuple[BackendReport, ...]
    # Dual writes per other side: (side, writes sent, writes failed, last error).
    sides: tuple[tuple[str, int, int, str], ...] = ()
    dirty_pending: int = 0       # keys recorded and not sent yet
    noscript_replies: int = 0    # NOSCRIPT errors sent to clients since the start (EVALSHA of an unknown script)
    # Commands whose keys span slots since the start (proxy.slots.CrossSlot):
    # (command, count, example key lists).
    cross_slot: tuple[tuple[str, int, tuple[tuple[bytes, ...], ...]], ...] = ()
    version: int = FORMAT_VERSION


@dataclass(frozen=True)
class Stopped:
    worker: int
    version: int = FORMAT_VERSION


@dataclass(frozen=True)
class Failed:
    worker: int
    who: str                     # "config" (e.g. port in use), "internal"
    reason: str
    version: int = FORMAT_VERSION


@dataclass(frozen=True)
class Stop:
    drain_seconds: float
    version: int = FORMAT_VERSION


@dataclass(frozen=True)
class TrackDirty:
    on: bool
    version: int = FORMAT_VERSION


@dataclass(frozen=True)
class DirtyReport:
    """``keys``: ``(db, key)`` pairs in the order their writes were first answered
    (a key written again before the report is sent is in it once).
    ``key`` None means the whole ``db`` changed (FLUSHDB, SWAPDB); ``db`` None
    too means every db (FLUSHALL)."""

    worker: int
    keys: tuple[tuple[int | None, bytes | None], ...]
    version: int = FORMAT_VERSION


@dataclass(frozen=True)
class DirtyBarrier:
    token: int
    version: int = FORMAT_VERSION


@dataclass(frozen=True)
class DirtyBarrierDone:
    worker: int
    token: int
    version: int = FORMAT_VERSION


@dataclass(frozen=True)
class Route:
    """The route of a live run (``proxy.routing``). ``sides`` names the nodes other
    than the source (``"target"``, ``"mirror:<endpoint>"``); ``authoritative`` is
    ``"source"`` or one of them; ``mirror_to`` the sides receiving dual writes;
    ``read_percent`` the share of reads the target serves while the source is
    authoritative. ``clusters`` names the sides that are clusters, with their
    masters and slots as ``CLUSTER SLOTS`` reported them when the route was built
    (``proxy.slots``)."""

    authoritative: str
    sides: tuple[tuple[str, ConnectionSpec], ...]
    mirror_to: tuple[str, ...]
    policy: str
    read_percent: int
    scripts_deterministic: bool = False
    clusters: tuple[tuple[str, tuple[Node, ...]], ...] = ()
    version: int = FORMAT_VERSION


@dataclass(frozen=True)
class Pause:
    token: int
    timeout: float               # seconds to wait for replies in flight
    version: int = FORMAT_VERSION


@dataclass(frozen=True)
class Paused:
    worker: int
    token: int
    settled: bool                # every reply arrived (False: the timeout passed first)
    version: int = FORMAT_VERSION


@dataclass(frozen=True)
class Resume:
    version: int = FORMAT_VERSION


@dataclass(frozen=True)
class Attached:
    """A process that served on while no coordinator listened. ``route`` is the last one it
    was given (None: plain forwarding); while ``tracking``, the keys written meanwhile wait in
    its spool (``spooled`` of them, or ``overflowed``) for the next TRACK on."""

    worker: int
    pid: int
    ports: tuple[int, ...]
    nodes: tuple[str, ...]       # backend address behind each port
    route: Route | None
    tracking: bool
    spooled: int
    overflowed: bool
    detached_seconds: float      # how long no coordinator listened (0: it never left)
    version: int = FORMAT_VERSION


@dataclass(frozen=True)
class DirtyConfirm:
    reports: int                 # DIRTY messages of this control connection, counted from 1
    version: int = FORMAT_VERSION


Message = Union[Ready, StatsReport, Stopped, Failed, Stop, TrackDirty, DirtyReport, DirtyBarrier, DirtyBarrierDone,
                Route, Pause, Paused, Resume, Attached, DirtyConfirm]
_TYPES = (Ready, StatsReport, Stopped, Failed, Stop, TrackDirty, DirtyReport, DirtyBarrier, DirtyBarrierDone,
          Route, Pause, Paused, Resume, Attached, DirtyConfirm)


def check(message: object) -> Message:
    """The message itself, or ValueError when it is not one of ours or of another version."""
    if not isinstance(message, _TYPES):
        raise ValueError(f"not a proxy message: {type(message).__name__}")
    if message.version != FORMAT_VERSION:
        raise ValueError(f"proxy message of format version {message.version}, expected {FORMAT_VERSION}")
    return message
