"""Where a live run sends a client's commands (DESIGN.md sections 5 and 6).

Outside a run an interlay forwards everything to its one backend. During an
online run the supervisor sends a ``messages.Route``: which side is
*authoritative* (the source until writes are cut over, then the target),
which other sides receive *dual writes*, under which write consistency
policy, and which share of reads the target serves. This module holds that
state and the two reply sinks of a dual write; ``proxy.client`` asks
``Router.decide`` about each stateless request.

A dual write is sent to the authoritative side and to every other side at
once. ``WriteConsistency`` (``eve.core.enums``; its values are the strings a
``messages.Route`` carries) is applied in one place, ``DualWrite._settle``:

=====================  =====================================  ==================================
policy                 the client's reply                     a failure on another side
=====================  =====================================  ==================================
SOURCE_AUTHORITATIVE   the source's, as soon as it arrives    counted per side, reported, re-copied
TARGET_AUTHORITATIVE   the target's, as soon as it arrives    counted per side, reported, re-copied
BOTH_REQUIRED          the authoritative side's, once every   an error to the client; re-copied
                       side answered; an error if one failed
BEST_EFFORT            the authoritative side's               counted only
=====================  =====================================  ==================================

(SOURCE_ and TARGET_AUTHORITATIVE differ by which side is authoritative; the
workflow flips it at cutover.)

Why a dual write's keys are marked dirty only once *every* side answered: the
re-copy loop copies a dirty key's value from the authoritative side over the
others. Were the mark sent after the authoritative reply alone, a re-copy could
land on the target before the mirrored command does, and the mirrored command
would then apply twice (an ``INCR`` counted two times). Marked after the last
reply, every re-copy starts after every copy of the write executed, so the
target converges whatever a mirrored command did.

Only stateless writes are mirrored. Writes of a pinned client (``MULTI``/
``EXEC``, a non-zero db, blocking commands) and scripts not declared
deterministic run on the authoritative side alone and reach the others by
re-copy of their keys. ``SCRIPT LOAD``/``FLUSH`` and ``FUNCTION LOAD``/
``DELETE``/``FLUSH``/``RESTORE`` go to every side; an ``EVALSHA`` answered
``NOSCRIPT`` by another side is retried there after loading the script, when
the interlay saw its body (``SCRIPT LOAD`` or ``EVAL`` through it).
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from redis.crc import key_slot

from eve.core.enums import WriteConsistency
from eve.redis import resp
from proxy import messages
from proxy.backend import Backend, Node
from proxy.dirty import SCRIPT_NAMES
from proxy.parts import Parts
from proxy.slots import ClusterSide, CrossSlot

Side = Node | ClusterSide   # a standalone side is one node; a cluster side routes by slot (proxy.slots)

__all__ = ["DualWrite", "MirrorReply", "Router", "Side", "Writer", "PLAIN", "DUAL", "READ_TARGET", "SOURCE", "TARGET"]

PLAIN, DUAL, READ_TARGET = 0, 1, 2   # Router.decide
SOURCE, TARGET = "source", "target"  # side names; mirror targets are "mirror:<endpoint>"

MAX_SCRIPTS = 10_000        # script bodies remembered for NOSCRIPT healing
SLOTS = 16384
_SCRIPT_SUBCOMMANDS = {b"script": frozenset((b"load", b"flush")),
                       b"function": frozenset((b"load", b"delete", b"flush", b"restore"))}


def _identity(frame: bytes | None) -> bytes | None:
    return frame


def _discard(frame: bytes | None) -> bytes | None:
    return None


def _is_error(frame: bytes) -> bool:
    return frame[:1] in (b"-", b"!")


def _error_text(frame: bytes) -> str:
    if frame[:1] == b"!":  # RESP3 blob error: !<length>\r\n<text>\r\n
        frame = b"-" + frame.split(b"\r\n", 1)[-1]
    return frame[1:].split(b"\r\n", 1)[0].decode("utf-8", "replace")


def _error_frame(message: str) -> bytes:
    return b"-" + message.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace") + b"\r\n"


class Writer(Protocol):
    """The client a dual write answers (``proxy.client.Client``)."""

    slot: int              # which of a node's shared connections it uses
    protocol: int          # its RESP version
    announce: str

    def deliver_soon(self, frame: bytes) -> None: ...
    def broken(self, conn: Backend) -> None: ...
    def pause_reading(self, reason: str) -> None: ...


def reads_from_target(key: bytes, percent: int) -> bool:
    """Whether ``key`` is read from the target when ``percent`` of reads are: by hash
    slot, so one key (and one hash tag) always reads from one side."""
    return key_slot(key) * 100 < percent * SLOTS


class SideStats:
    __slots__ = ("ops", "failures", "last_error")

    def __init__(self) -> None:
        self.ops = 0            # dual writes sent to this side
        self.failures = 0       # of them, answered with an error or lost
        self.last_error = ""


class Router:
    """The route of one proxy process; changed only by ``apply`` (a ``messages.Route``)."""

    def __init__(self, parts: Parts, source: Node) -> None:
        self.parts = parts
        self.source = source                # the node the interlay fronts, outside a run the only one
        self.active = False                 # a route is set: decide() is asked
        self.authoritative = SOURCE
        self.primary: Side | None = None    # the authoritative side
        self.slotted = False                # it is a cluster: every command is routed by slot
        self.target: Side | None = None     # the side reads shift to
        self.mirrors: list[tuple[str, Side]] = []
        self.policy = WriteConsistency.SOURCE_AUTHORITATIVE
        self.both = False
        self.read_percent = 0
        self.scripts_deterministic = False
        self.sides: dict[str, Side] = {}    # side name -> where its commands go, the source's included
        self.side_stats: dict[str, SideStats] = {}
        self.scripts: dict[bytes, bytes] = {}   # lowercase hex sha1 -> body
        self.pending = 0                    # dual writes not fully answered
        self.cross_slot = CrossSlot()       # commands whose keys span slots (proxy.slots)

    # -- route changes ------------------------------------------------------------------

    def apply(self, route: messages.Route) -> bool:
        """Take a new route; True when the authoritative side changed (clients move)."""
        source = self.source
        names = {SOURCE, *(name for name, _ in route.sides)}
        try:
            policy: WriteConsistency | None = WriteConsistency(route.policy)
        except ValueError:
            policy = None
        if route.authoritative not in names or not set(route.mirror_to) <= names or policy is None \
                or not 0 <= route.read_percent <= 100:
            raise ValueError(f"malformed route: authoritative {route.authoritative!r}, sides {sorted(names)}, "
                             f"mirror_to {route.mirror_to}, policy {route.policy!r}, reads {route.read_percent}%")
        clusters = dict(route.clusters)
        sides: dict[str, Side] = {SOURCE: self._source_side(clusters.get(SOURCE))}
        for name, spec in route.sides:
            node = self.sides.get(name)
            masters = clusters.get(name)
            if node is None or node.spec != spec or isinstance(node, ClusterSide) != (masters is not None):
                if node is not None:
                    node.close_all()
                node = Node(self.parts, len(sides), spec) if masters is None else \
                    ClusterSide(self.parts, spec, masters)
            elif masters is not None:
                node.use(masters)  # type: ignore[union-attr]
            sides[name] = node
        for name, node in self.sides.items():
            if node is not source and node is not sides.get(name):
                node.close_all()
        self.sides = sides
        previous = self.primary
        self.authoritative = route.authoritative
        # The source authoritative: each client on its own listener's node, as outside a run.
        self.primary = source if route.authoritative == SOURCE else sides[route.authoritative]
        self.slotted = isinstance(self.primary, ClusterSide)
        self.mirrors = [(name, sides[name]) for name in route.mirror_to if name != route.authoritative]
        for name, _ in self.mirrors:
            self.side_stats.setdefault(name, SideStats())
        self.policy = policy
        self.both = policy is WriteConsistency.BOTH_REQUIRED
        self.read_percent = route.read_percent if route.authoritative == SOURCE else 0
        self.target = sides.get(TARGET) if self.read_percent else None
        self.scripts_deterministic = route.scripts_deterministic
        self.active = bool(self.mirrors) or self.read_percent > 0 or self.slotted
        return previous is not None and previous is not self.primary or \
            (previous is None and self.primary is not source)

    def _source_side(self, masters: tuple | None) -> Side:
        """The source as the other side of writes (reverse sync after a cutover): its one
        node, or by slot when it is a cluster (its masters are the listeners' nodes, but
        a write may come through any listener once the target serves by slot)."""
        if masters is None:
            return self.source
        current = self.sides.get(SOURCE)
        if isinstance(current, ClusterSide):
            current.use(masters)
            return current
        return ClusterSide(self.parts, self.source.spec, masters)

    # -- per request ----------------------------------------------------------------------

    def decide(self, args: list[bytes], may_write: bool) -> int:
        """PLAIN (the client's authoritative connection), DUAL or READ_TARGET."""
        name = args[0].lower()
        subcommands = _SCRIPT_SUBCOMMANDS.get(name)
        if subcommands is not None:
            # SCRIPT LOAD/FLUSH, FUNCTION LOAD/DELETE/FLUSH/RESTORE: every side; the
            # other subcommands (FUNCTION LIST, STATS, KILL...) the authoritative side.
            sub = args[1].lower() if len(args) > 1 else b""
            if sub not in subcommands:
                return PLAIN
            if name == b"script" and sub == b"load" and len(args) > 2:
                self.remember_script(args[2])
            return DUAL if self.mirrors else PLAIN
        if may_write:
            if not self.mirrors:
                return PLAIN
            if name in SCRIPT_NAMES:
                if name == b"eval" and len(args) > 1:
                    self.remember_script(args[1])
                return DUAL if self.scripts_deterministic else PLAIN
            return DUAL
        if self.read_percent and self.target is not None:
            keys = self.parts.commands.keys(args)
            if keys and reads_from_target(keys[0], self.read_percent):
                return READ_TARGET
        return PLAIN

    def remember_script(self, body: bytes) -> None:
        if len(self.scripts) < MAX_SCRIPTS:
            self.scripts[hashlib.sha1(body).hexdigest().encode()] = bytes(body)

    def side_failed(self, name: str, frame: bytes) -> None:
        stats = self.side_stats.setdefault(name, SideStats())
        stats.failures += 1
        stats.last_error = _error_text(frame)[:300]

    def report(self) -> tuple[tuple[str, int, int, str], ...]:
        return tuple((name, s.ops, s.failures, s.last_error) for name, s in self.side_stats.items())

    # -- sending ----------------------------------------------------------------------------

    def send_dual(self, client: Writer, conn: Backend | ClusterSide, args: list[bytes], raw: bytes,
                  marks: list) -> DualWrite:
        """Send one write to ``conn`` (the authoritative side's connection, or the side itself
        when it is a cluster) and to every mirrored side; returns the sink the client's reply
        comes through."""
        dual = DualWrite(client, self, marks)
        self.pending += 1
        slot, protocol = client.slot, client.protocol
        by_slot = isinstance(conn, ClusterSide)
        if not by_slot:
            conn.send(dual, raw, 1, _identity)  # type: ignore[call-arg]
        for name, node in self.mirrors:
            stats = self.side_stats[name]
            stats.ops += 1
            if isinstance(node, ClusterSide):
                dual.left += 1
                node.send(MirrorReply(dual, name, node, protocol, slot, raw), args, raw, protocol, slot)
                continue
            # On the connection of the client's protocol: the client's reads shifted to
            # this side travel on it too, and so come after its writes.
            mconn = node.shared_conn(protocol, slot)
            if mconn is None:
                dual.left += 1
                dual.side_result(name, node.unavailable())
                continue
            dual.left += 1
            mconn.send(MirrorReply(dual, name, node, protocol, slot, raw), raw, 1, _identity)
            if mconn.write_paused:
                # A side that cannot keep up slows the clients down.
                mconn.hold(client)
        if by_slot:
            # Last: a cluster side may answer at once (CROSSSLOT, no master), and the join
            # must know every side it waits for by then.
            conn.send(dual, args, raw, protocol, slot, order=client)  # type: ignore[call-arg]
        return dual


class DualWrite:
    """The authoritative side's reply sink of one dual write, and the join of all its replies."""

    __slots__ = ("client", "router", "marks", "left", "reply", "failure", "announce")
    stream_to = None   # a client's ``current`` may be a DualWrite: nothing streams through it
    transport = None
    waits_for_replies = True   # told by Backend.close when its connection goes

    def __init__(self, client: Writer, router: Router, marks: list) -> None:
        self.client = client
        self.router = router
        self.marks = marks
        self.left = 1                 # replies still to come (the authoritative side's, plus one per mirror)
        self.reply: bytes | None = None
        self.failure = ""             # the first other side's error: "target: ERR ..."
        self.announce = client.announce

    def deliver(self, data: bytes, frames: int) -> None:
        if self.router.both:
            self.reply = data
        else:
            self.client.deliver_soon(data)
        self._arrived()

    def backend_failed(self, conn: Backend, count: int, error: bytes) -> None:
        self.router.parts.stats.errors += 1
        self.deliver(error, 1)

    def broken(self, conn: Backend) -> None:  # pragma: no cover - a tagged reply is never streamed
        self.client.broken(conn)

    def side_result(self, name: str, frame: bytes) -> None:
        if _is_error(frame):
            self.router.side_failed(name, frame)
            if not self.failure:
                self.failure = f"{name}: {_error_text(frame)}"
        self._arrived()

    def _arrived(self) -> None:
        self.left -= 1
        if self.left:
            return
        router = self.router
        router.pending -= 1
        if self.marks:
            router.parts.dirty.record(self.marks)
        if router.both:
            self._settle()

    def _settle(self) -> None:
        """BOTH_REQUIRED: the write succeeded only if every side applied it."""
        reply = self.reply or b""
        if self.failure and not _is_error(reply):
            reply = _error_frame(f"ERR interlay: BOTH_REQUIRED write applied on {self.router.authoritative} but "
                                 f"failed on {self.failure}; its keys are re-copied")
            self.router.parts.stats.errors += 1
        self.client.deliver_soon(reply)


class MirrorReply:
    """The reply sink of one dual write on one other side."""

    __slots__ = ("dual", "side", "node", "protocol", "slot", "raw", "retried")
    waits_for_replies = True

    def __init__(self, dual: DualWrite, side: str, node: Side, protocol: int, slot: int, raw: bytes) -> None:
        self.dual = dual
        self.side = side
        self.node = node
        self.protocol = protocol
        self.slot = slot
        self.raw = raw
        self.retried = False

    def deliver(self, data: bytes, frames: int) -> None:
        if data[:9] == b"-NOSCRIPT" and not self.retried and self._load_script():
            return
        self.dual.side_result(self.side, data)

    def backend_failed(self, conn: Backend, count: int, error: bytes) -> None:
        self.dual.side_result(self.side, error)

    def broken(self, conn: Backend) -> None:  # pragma: no cover - a tagged reply is never streamed
        self.dual.side_result(self.side, b"-ERR interlay: reply lost\r\n")

    def _load_script(self) -> bool:
        """EVALSHA unknown on this side: load the body the interlay saw, then run it again."""
        try:
            args = resp.parse_command(self.raw, 0)[0]
        except (resp.ProtocolError, ValueError, TypeError, IndexError):
            return False
        if not args or args[0].lower() != b"evalsha" or len(args) < 2:
            return False
        body = self.dual.router.scripts.get(bytes(args[1]).lower())
        if isinstance(self.node, ClusterSide):
            return False  # SCRIPT LOAD reached every master of it already
        conn = self.node.shared_conn(self.protocol, self.slot)
        if body is None or conn is None:
            return False
        self.retried = True
        conn.send(None, resp.encode_command(b"SCRIPT", b"LOAD", body), 1, _discard)
        conn.send(self, self.raw, 1, _identity)
        return True
