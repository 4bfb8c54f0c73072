"""Where a live run sends a client's commands (DESIGN.md sections 5 and 6).

Outside a run an interlay forwards everything to its one backend. During an
online run the supervisor sends a ``messages.Route``: which side is
*authoritative* (the source until writes are cut over, then the target),
which other sides receive *dual writes*, under which write consistency
policy, and which share of reads the target serves. This module holds that
state and the reply sinks of dual writes; ``proxy.client`` asks
``Router.decide`` (``Router.script_route`` for scripting commands) about each
stateless request.

Dual writes travel in *batches*: the consecutive dual writes of one client's
read (a pipeline run) go to the authoritative side and to every other side in
one write per side (``Router.send_batch``, one side at a time in
``Router.send_to_side``), and one sink per side settles the whole batch
(``DualBatch`` for the authoritative side, ``SideBatch`` for each other one):
the authoritative replies pass to the client as they arrived, many in one
write, each command still with its own reply. ``WriteConsistency``
(``eve.core.enums``; its values are the strings a ``messages.Route`` carries)
is read by ``Router.apply``, which turns it into what the batches do: ``both``
(replies held, then settled by ``DualBatch._settle``); which side is
authoritative comes with the route:

=====================  =====================================  ==================================
policy                 the client's reply                     a failure on another side
=====================  =====================================  ==================================
SOURCE_AUTHORITATIVE   the source's, as soon as it arrives    counted per side, reported, re-copied
TARGET_AUTHORITATIVE   the target's, as soon as it arrives    counted per side, reported, re-copied
BOTH_REQUIRED          the authoritative side's, once every   an error to the client (that command's
                       side answered; an error if one failed  reply alone); re-copied
BEST_EFFORT            the authoritative side's, as soon as   counted only (no dual_write event);
                       it arrives                             its keys re-copied like any write's
=====================  =====================================  ==================================

Every policy marks the keys of every mirrored write, BEST_EFFORT included: the
marks are what makes a cutover safe (the backlog drained means the new
authoritative side holds every acknowledged write, even where a mirrored command
failed or did something else there, an ``XADD *`` choosing another id). A
BEST_EFFORT without marks would need a full compare inside the cutover.

(SOURCE_ and TARGET_AUTHORITATIVE differ by which side is authoritative; the
workflow flips it at cutover.) Under BOTH_REQUIRED a batch's replies are
*held*, yet the client's next batch is sent at once: held batches of one client
are delivered in the order they were sent (``DualBatch.before``/``after``).

A side may be a cluster (issue 14): ``Router.sides`` then holds a
``proxy.slots.ClusterSide``, which takes requests one at a time and sends each to
its slot's master (splitting MGET/MSET/DEL/UNLINK/EXISTS/TOUCH across slots). A
batch for such a side is split into its requests there: as another side, one
``ClusterSideBatch`` joins their replies and tells the batch once all arrived;
as the authoritative side (after a cutover to a cluster), the ``DualBatch``
itself receives each request's reply, in the client's order. Plain node sides
keep one write per batch.

Why a dual write's keys are marked dirty only once *every* side answered: the
re-copy loop copies a dirty key's value from the authoritative side over the
others. Were the mark sent after the authoritative reply alone, a re-copy could
land on the target before the mirrored command does, and the mirrored command
would then apply twice (an ``INCR`` counted two times). Marked after the last
reply of the batch, every re-copy starts after every copy of the write
executed, so the target converges whatever a mirrored command did.

Only stateless writes are mirrored. Writes of a pinned client (``MULTI``/
``EXEC``, a non-zero db, blocking commands) and scripts not declared
deterministic run on the authoritative side alone and reach the others by
re-copy of their keys. ``SCRIPT LOAD``/``FLUSH`` and ``FUNCTION LOAD``/
``DELETE``/``FLUSH``/``RESTORE`` go to every side.

Search indexes (RediSearch, issue 23) live beside the keyspace like function
libraries: the commands that change an index definition, its aliases, synonyms
or dictionaries (``FT.CREATE``, ``FT.DROPINDEX``, ``FT.ALTER``, ``FT.ALIAS*``,
``FT.SYNUPDATE``, ``FT.DICTADD``/``DEL``) go to every side, whether the module
flags them write or readonly; the keyless reads of an index (``FT.SEARCH``,
``FT.AGGREGATE``, ``FT.CURSOR``, ``FT.INFO``...) are served by the authoritative
side, never shifted by key hash (their "key" is the index name).

Scripts survive the cutover (issue 12): the router remembers every script body
the interlay forwards (``SCRIPT LOAD``, ``EVAL``, ``EVAL_RO``) from the process'
start, with or without a route, up to ``MAX_SCRIPTS`` bodies and
``MAX_SCRIPT_BYTES``; ``SCRIPT FLUSH`` through the interlay forgets them. Every
remembered script is loaded on a side when a route first names it, before any
request is sent there, and a script run on the authoritative side alone is
loaded on the others too. While a route is set, an ``EVALSHA`` of a known script is
sent on its own (``SCRIPT``) and its reply held (the client's next request that
is not another held one waits for it): a ``NOSCRIPT`` from the authoritative side is
healed by loading the body there and running it again, so the client never
sees it; a ``NOSCRIPT`` from another side is healed the same way. The
``NOSCRIPT`` replies that still reach clients (a script the process never
saw) are counted (``Stats.noscript_replies``).
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from typing import Protocol

from redis.crc import key_slot

from eve.core.enums import WriteConsistency
from eve.redis import resp
from eve.redis.framing import RequestScanner, scan_reply
from proxy import messages
from proxy.backend import Backend, Node
from proxy.parts import Parts
from proxy.slots import ClusterSide, CrossSlot

Side = Node | ClusterSide   # a standalone side is one node; a cluster side routes by slot (proxy.slots)

__all__ = ["ClusterSideBatch", "DualBatch", "Router", "Side", "SideBatch", "Writer", "PLAIN", "DUAL", "READ_TARGET",
           "SCRIPT", "COUNTED", "SOURCE", "TARGET", "MAX_SCRIPTS", "MAX_SCRIPT_BYTES"]

log = logging.getLogger("eve.proxy")

# Router.decide / Router.script_route: the client's connection (PLAIN), every side (DUAL), the
# target's connection (READ_TARGET), an EVALSHA of a script the interlay knows, sent on its own
# so that a NOSCRIPT can be healed (SCRIPT), an EVALSHA whose NOSCRIPT reply is only counted (COUNTED).
PLAIN, DUAL, READ_TARGET, SCRIPT, COUNTED = 0, 1, 2, 3, 4
SOURCE, TARGET = "source", "target"  # side names; mirror targets are "mirror:<endpoint>"

# Script bodies remembered (SCRIPT LOAD, EVAL, EVAL_RO) to load on the other sides and to
# heal NOSCRIPT. When either bound is reached, further new bodies are not remembered (the
# ones kept stay, a warning is logged once): an EVALSHA of a forgotten script that finds no
# copy on a side gets NOSCRIPT there, counted as such.
MAX_SCRIPTS = 10_000
MAX_SCRIPT_BYTES = 64 << 20
SLOTS = 16384
_SCRIPT_SUBCOMMANDS = {b"script": frozenset((b"load", b"flush")),
                       b"function": frozenset((b"load", b"delete", b"flush", b"restore"))}
# RediSearch (module docstring): index changes reach every side, index reads the authoritative one.
_EVERY_SIDE = frozenset((b"function", b"ft.create", b"ft.dropindex", b"ft.drop", b"ft.alter", b"ft.aliasadd",
                         b"ft.aliasupdate", b"ft.aliasdel", b"ft.synupdate", b"ft.synadd", b"ft.dictadd",
                         b"ft.dictdel", b"ft._createifnx", b"ft._alterifnx", b"ft._dropindexifx", b"ft._dropifx",
                         b"ft._aliasaddifnx", b"ft._aliasdelifx"))
_INDEX_READS = frozenset((b"ft.search", b"ft.aggregate", b"ft.cursor", b"ft.profile", b"ft.explain",
                          b"ft.explaincli", b"ft.info", b"ft.spellcheck", b"ft.syndump", b"ft.tagvals", b"ft._list",
                          b"ft.dictdump", b"ft.sugget", b"ft.suglen"))
_EVAL_NAMES = frozenset((b"eval", b"eval_ro"))
_EVALSHA_NAMES = frozenset((b"evalsha", b"evalsha_ro"))
_NOSCRIPT = b"-NOSCRIPT"
_MAX_MIRRORED_NAMES = 10_000   # spellings of command names remembered by always_mirrored


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


def _may_hold_error(data: bytes) -> bool:
    """Whether ``data`` (whole reply frames) may hold an error frame: cheap, and never
    wrong the other way (a frame starts the data or follows a CRLF)."""
    return data[:1] in (b"-", b"!") or b"\r\n-" in data or b"\r\n!" in data


def split_frames(data: bytes) -> list[bytes]:
    """The reply frames ``data`` is made of (whole frames, as a backend delivers them)."""
    frames = []
    pos, n = 0, len(data)
    while pos < n:
        end = scan_reply(data, pos, 1, [], n)[0]
        if end < 0:
            raise resp.ProtocolError("incomplete reply frame")
        frames.append(data[pos:end])
        pos = end
    return frames


def count_noscript(data: bytes) -> int:
    """NOSCRIPT error frames in ``data`` (whole reply frames)."""
    if _NOSCRIPT not in data:
        return 0
    return sum(1 for frame in split_frames(data) if frame.startswith(_NOSCRIPT))


def nth_request(raw: bytes, index: int, max_bulk: int, max_args: int) -> tuple[list[bytes], bytes] | None:
    """The arguments and bytes of the ``index``-th request in ``raw`` (empty requests, which
    get no reply, not counted), or None."""
    requests, _, _ = RequestScanner(max_bulk, max_args).scan(raw)
    start = 0
    for end, args, _, argc in requests:
        if argc:
            if not index:
                request = raw[start:end]
                if args is None:
                    args = resp.parse_command(request, 0, max_bulk=max_bulk, max_args=max_args)[0]
                return args, request
            index -= 1
        start = end
    return None


class Writer(Protocol):
    """The client a dual write answers (``proxy.client.Client``)."""

    slot: int              # which of a node's shared connections it uses
    protocol: int          # its RESP version
    announce: str
    write_paused: bool
    max_bulk: int          # its request limits, to find one request of a batch again
    max_args: int

    def deliver(self, data: bytes, frames: int) -> None: ...
    def broken(self, conn: Backend) -> None: ...
    def hold_backend(self, conn: Backend) -> None: ...
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
        self.script_bytes = 0
        self.scripts_full = False           # a bound was reached (logged once)
        self.loaded: dict[str, Side] = {}   # sides holding every remembered script (source: by definition)
        self.pending = 0                    # dual write batches not fully answered
        self.mirrored_names: dict[bytes, bool] = {}   # always_mirrored's answers, by name as sent
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
        self._load_scripts_on_new_sides()
        return previous is not None and previous is not self.primary or \
            (previous is None and self.primary is not source)

    def _load_scripts_on_new_sides(self) -> None:
        """Every script the interlay saw, loaded on each side that joined the route, before
        any dual write or shifted request is sent there: an application that loaded its
        scripts once (through the interlay) keeps running them by sha after the cutover."""
        loaded: dict[str, Side] = {SOURCE: self.source}
        for name, node in self.sides.items():
            if node is self.source:
                continue   # it ran them (a cluster source's other masters are a side of their own)
            if self.loaded.get(name) is not node:
                for body in self.scripts.values():
                    self._send_script_load(node, body)
            loaded[name] = node
        self.loaded = loaded

    # -- scripts ----------------------------------------------------------------------------

    def script_route(self, args: list[bytes], may_write: bool, routable: bool) -> int:
        """Where a scripting request goes (``EVAL``, ``EVAL_RO``, ``EVALSHA``, ``EVALSHA_RO``,
        ``SCRIPT``); remembers the bodies it carries. ``routable``: a route is active and the
        client's connection can follow it (not queued in MULTI, another db or a raw connection)."""
        name = args[0].lower()
        if name in _EVALSHA_NAMES:
            if len(args) > 1 and routable and bytes(args[1]).lower() in self.scripts:
                return SCRIPT
            if routable and may_write and self.mirrors and self.scripts_deterministic:
                return DUAL  # its NOSCRIPT replies are counted by the batch
            return COUNTED
        new_body = False
        if name in _EVAL_NAMES:
            if len(args) > 1:
                new_body = self.remember_script(args[1])
        elif name == b"script" and len(args) > 1:
            sub = args[1].lower()
            if sub == b"load" and len(args) > 2:
                self.remember_script(args[2])
            elif sub == b"flush":
                self.forget_scripts()
        if not routable:
            return PLAIN
        route = self.decide(args, may_write)
        if new_body and route != DUAL:
            # A script first seen run on the authoritative side alone: cached on the others too.
            for _, node in self.mirrors:
                self._send_script_load(node, args[1])
        return route

    def remember_script(self, body: bytes) -> bool:
        """Keep ``body`` for the other sides; True when it was not known yet."""
        sha = hashlib.sha1(body).hexdigest().encode()
        if sha in self.scripts:
            return False
        if len(self.scripts) >= MAX_SCRIPTS or self.script_bytes + len(body) > MAX_SCRIPT_BYTES:
            if not self.scripts_full:
                self.scripts_full = True
                log.warning("%s: %d script bodies (%d bytes) remembered, the most kept; later new scripts are "
                            "not carried to the other sides of a live run", self.parts.options.name,
                            len(self.scripts), self.script_bytes)
            return False
        self.scripts[sha] = bytes(body)
        self.script_bytes += len(body)
        return True

    def forget_scripts(self) -> None:
        """``SCRIPT FLUSH`` went through: the application wants NOSCRIPT from now on."""
        self.scripts.clear()
        self.script_bytes = 0
        self.scripts_full = False

    def _send_script_load(self, node: Side, body: bytes) -> None:
        """``SCRIPT LOAD body`` on a side: on every master of a cluster side."""
        for each in node.all_nodes() if isinstance(node, ClusterSide) else (node,):
            conn = each.shared_conn(2, 0)
            if conn is not None:
                conn.send(None, resp.encode_command(b"SCRIPT", b"LOAD", body), 1, _discard)

    def heal(self, conn: Backend, sink: DualBatch | SideBatch, raw: bytes, args: list[bytes]) -> bool:
        """An ``EVALSHA`` answered NOSCRIPT on ``conn``: load the body the interlay saw there
        and send the request again, its reply to ``sink``. False when it cannot be healed."""
        if len(args) < 2 or args[0].lower() not in _EVALSHA_NAMES or conn.closed:
            return False
        body = self.scripts.get(bytes(args[1]).lower())
        if body is None:
            return False
        conn.send(None, resp.encode_command(b"SCRIPT", b"LOAD", body), 1, _discard)
        conn.send(sink, raw, 1)
        return True

    def noscript_tag(self, frame: bytes | None) -> bytes | None:
        """The tag of a ``COUNTED`` request: counts a NOSCRIPT reply on its way to the client."""
        if frame is not None and frame.startswith(_NOSCRIPT):
            self.parts.stats.noscript_replies += 1
        return frame

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
            return DUAL if self.mirrors else PLAIN
        if name in _EVERY_SIDE:
            return DUAL if self.mirrors else PLAIN
        if name in _INDEX_READS:
            return PLAIN
        if may_write:
            if not self.mirrors:
                return PLAIN
            if name in _EVAL_NAMES or name == b"fcall":
                return DUAL if self.scripts_deterministic else PLAIN
            return DUAL
        if self.read_percent and self.target is not None:
            keys = self.parts.commands.keys(args)
            if keys and reads_from_target(keys[0], self.read_percent):
                return READ_TARGET
        return PLAIN

    @staticmethod
    def every_side(name: bytes) -> bool:
        """Whether a request named ``name`` may reach every side whatever its flags (``decide``):
        ``FUNCTION`` (by subcommand) and the RediSearch commands that change an index."""
        return name.lower() in _EVERY_SIDE

    def always_mirrored(self, name: bytes) -> bool:
        """Whether every write named ``name`` (as sent) is a dual write while the route
        has mirrors, whatever its arguments (``decide``): not FUNCTION (by subcommand)
        nor FCALL (by ``scripts_deterministic``)."""
        found = self.mirrored_names.get(name)
        if found is None:
            lower = name.lower()
            found = lower not in _SCRIPT_SUBCOMMANDS and lower not in _EVAL_NAMES and lower != b"fcall"
            if len(self.mirrored_names) < _MAX_MIRRORED_NAMES:
                self.mirrored_names[bytes(name)] = found
        return found

    def side_failed(self, name: str, frame: bytes) -> None:
        stats = self.side_stats.setdefault(name, SideStats())
        stats.failures += 1
        stats.last_error = _error_text(frame)[:300]

    def report(self) -> tuple[tuple[str, int, int, str], ...]:
        return tuple((name, s.ops, s.failures, s.last_error) for name, s in self.side_stats.items())

    # -- sending ----------------------------------------------------------------------------

    def send_batch(self, client: Writer, conn: Backend | ClusterSide, raw: bytes, count: int, marks: list,
                   before: DualBatch | None, *, mirror: bool = True, heal: bool = False) -> DualBatch:
        """Send ``count`` requests (the bytes ``raw``, one pipeline run of one client) to
        ``conn`` (the authoritative side's connection, or the side itself when it is a
        cluster) and, when ``mirror``, to every mirrored side; returns the sink the client's
        replies come through. ``before``: the client's batch whose replies are still held
        (BOTH_REQUIRED), which this one's must follow. (The caller counts the replies owed
        before: a cluster side may answer some at once, CROSSSLOT or no master.)"""
        batch = DualBatch(client, self, conn, raw, count, marks, before, heal)
        self.pending += 1
        by_slot = conn.__class__ is ClusterSide
        requests = split_requests(raw, client.max_bulk, client.max_args) if by_slot else None
        if not by_slot:
            conn.send(batch, raw, count)  # type: ignore[call-arg]
        if mirror:
            for name, node in self.mirrors:
                self.send_to_side(batch, name, node, raw, count, requests)
        if by_slot:
            # Last: a cluster side may answer at once, and the join must know every side
            # it waits for by then. Each request to its slot's master(s), the replies back
            # in the client's order (``proxy.slots``).
            protocol, slot = client.protocol, client.slot
            for args, request in requests:  # type: ignore[union-attr]
                conn.send(batch, args, request, protocol, slot, order=client)  # type: ignore[call-arg]
        elif conn.write_paused:
            conn.hold(client)
        return batch

    def send_to_side(self, batch: DualBatch, name: str, node: Side, raw: bytes, count: int,
                     requests: list[tuple[list[bytes], bytes]] | None = None) -> None:
        """``count`` requests of ``batch`` (the bytes ``raw``) to one other side, in one
        write, settled together by one ``SideBatch``. A side that is a cluster takes them
        one by one, each to its slot's master(s), settled together by one ``ClusterSideBatch``
        (``requests``: ``raw`` split, when the caller has it)."""
        self.side_stats[name].ops += count
        client = batch.client
        batch.left += 1
        if node.__class__ is ClusterSide:
            if requests is None:
                requests = split_requests(raw, client.max_bulk, client.max_args)
            sink = ClusterSideBatch(batch, name, len(requests))
            protocol, slot = client.protocol, client.slot
            for index, (args, request) in enumerate(requests):
                node.send(_SideReply(sink, index), args, request, protocol, slot)  # type: ignore[call-arg]
            sink.sent()
            return
        # On the connection of the client's protocol: the client's reads shifted to
        # this side travel on it too, and so come after its writes.
        conn = node.shared_conn(client.protocol, client.slot)  # type: ignore[union-attr]
        side = SideBatch(batch, name, raw, count)
        if conn is None:
            side.backend_failed(None, count, node.unavailable())  # type: ignore[arg-type]
            return
        side.conn = conn
        conn.send(side, raw, count)
        if conn.write_paused:
            # A side that cannot keep up slows the clients down.
            conn.hold(client)


def split_requests(raw: bytes, max_bulk: int, max_args: int) -> list[tuple[list[bytes], bytes]]:
    """The requests in ``raw`` (whole ones, as a client's run holds them) as ``(arguments,
    bytes)``; empty requests, which get no reply, left out."""
    requests, _, _ = RequestScanner(max_bulk, max_args).scan(raw)
    out = []
    start = 0
    for end, args, _, argc in requests:
        if argc:
            request = raw[start:end]
            if args is None:
                args = resp.parse_command(request, 0, max_bulk=max_bulk, max_args=max_args)[0]
            out.append((args, request))
        start = end
    return out


class DualBatch:
    """The authoritative side's reply sink of one batch of requests of one client (its
    mirrored writes of one pipeline run, or one EVALSHA that may need healing), and the
    join of every side's replies to it.

    Replies pass straight to the client unless they are *held*: under BOTH_REQUIRED
    (until every side answered, and every earlier held batch of the client was
    delivered) and for a healable EVALSHA (until it ran). Marks are recorded once every
    side answered every request of the batch."""

    __slots__ = ("client", "router", "conn", "raw", "count", "marks", "left", "got", "hold", "held", "failures",
                 "heal", "healed", "before", "after", "done", "delivered")
    stream_to = None   # a client's ``current`` may be a DualBatch: nothing streams through it
    transport = None
    waits_for_replies = True   # told by Backend.close when its connection goes

    def __init__(self, client: Writer, router: Router, conn: Backend, raw: bytes, count: int, marks: list,
                 before: DualBatch | None, heal: bool) -> None:
        self.client = client
        self.router = router
        self.conn = conn
        self.raw = raw
        self.count = count
        self.marks = marks
        self.left = 1                 # sides still owing replies (this one, plus one per mirror)
        self.got = 0                  # the authoritative side's replies so far
        self.heal = heal
        self.healed = False
        self.hold = router.both or heal
        self.held: list[bytes] = []
        self.failures: dict[int, str] = {}   # request index -> "target: ERR ..." (held batches)
        self.before = before if before is not None and not before.delivered else None
        self.after: DualBatch | None = None
        if self.before is not None:
            self.before.after = self
        self.done = False             # every side answered
        self.delivered = False        # the client has its replies

    @property
    def write_paused(self) -> bool:
        return not self.hold and self.client.write_paused

    def hold_backend(self, conn: Backend) -> None:
        if not self.hold:
            self.client.hold_backend(conn)

    def deliver(self, data: bytes, frames: int) -> None:
        if frames and self.heal and not self.healed and data.startswith(_NOSCRIPT):
            self.healed = True
            request = nth_request(self.raw, 0, self.client.max_bulk, self.client.max_args)
            if request is not None and self.router.heal(self.conn, self, request[1], request[0]):
                return
        if self.hold:
            if data:
                self.held.append(data)
        else:
            if frames and _NOSCRIPT in data:
                self.router.parts.stats.noscript_replies += count_noscript(data)
            self.client.deliver(data, frames)
        if frames:
            self.got += frames
            if self.got >= self.count:
                self.arrived()

    def backend_failed(self, conn: Backend, count: int, error: bytes) -> None:
        self.router.parts.stats.errors += count
        self.deliver(error * count, count)

    def broken(self, conn: Backend) -> None:
        self.client.broken(conn)

    def side_failed(self, index: int, name: str, frame: bytes) -> None:
        self.router.side_failed(name, frame)
        if self.hold and index not in self.failures:
            self.failures[index] = f"{name}: {_error_text(frame)}"

    def arrived(self) -> None:
        """One side answered all of the batch."""
        self.left -= 1
        if self.left:
            return
        router = self.router
        router.pending -= 1
        if self.marks:
            router.parts.dirty.record(self.marks)
        self.done = True
        if self.hold and self.before is None:
            self._deliver_held()

    def _deliver_held(self) -> None:
        """The held replies, once every side answered and every earlier held batch of the
        client was delivered; then the next one's, if it is done too."""
        batch: DualBatch | None = self
        while batch is not None and batch.done:
            batch.delivered = True
            batch.client.deliver(batch._settle(), batch.count)
            batch = batch.after
            if batch is not None:
                batch.before = None

    def _settle(self) -> bytes:
        """BOTH_REQUIRED: a write succeeded only if every side applied it."""
        data = b"".join(self.held)
        stats = self.router.parts.stats
        if not self.failures:
            if _NOSCRIPT in data:
                stats.noscript_replies += count_noscript(data)
            return data
        frames = split_frames(data)
        for index, failure in self.failures.items():
            if index < len(frames) and not _is_error(frames[index]):
                frames[index] = _error_frame(
                    f"ERR interlay: BOTH_REQUIRED write applied on {self.router.authoritative} but failed on "
                    f"{failure}; its keys are re-copied")
                stats.errors += 1
        stats.noscript_replies += sum(1 for frame in frames if frame.startswith(_NOSCRIPT))
        return b"".join(frames)


class SideBatch:
    """The reply sink of one batch on one other side: counts its errors (an EVALSHA
    answered NOSCRIPT there is healed first) and tells the batch once all arrived."""

    __slots__ = ("batch", "side", "raw", "count", "got", "retrying", "done", "conn")
    waits_for_replies = True
    write_paused = False   # its replies go nowhere: never a reason to stop reading

    def __init__(self, batch: DualBatch, side: str, raw: bytes, count: int) -> None:
        self.batch = batch
        self.side = side
        self.raw = raw        # the requests sent, to find one again for healing
        self.count = count
        self.got = 0
        self.retrying: deque[int] = deque()   # indexes of healed requests sent again, not answered yet
        self.done = False
        self.conn: Backend | None = None

    def deliver(self, data: bytes, frames: int) -> None:
        if not frames:
            return  # a piece of a large reply: only its end counts
        if self.got >= self.count:
            self._retried(data)
            return
        if data and _may_hold_error(data):
            for i, frame in enumerate(split_frames(data)):
                if _is_error(frame):
                    self._failed(self.got + i, frame)
        self.got += frames
        self._maybe_done()

    def backend_failed(self, conn: Backend | None, count: int, error: bytes) -> None:
        batch = self.batch
        for _ in range(count):
            if self.got < self.count:
                batch.side_failed(self.got, self.side, error)
                self.got += 1
            elif self.retrying:
                batch.side_failed(self.retrying.popleft(), self.side, error)
        self._maybe_done()

    def hold_backend(self, conn: Backend) -> None:  # pragma: no cover - write_paused is False
        pass

    def broken(self, conn: Backend) -> None:  # pragma: no cover - its replies are never streamed to a client
        pass

    def _failed(self, index: int, frame: bytes) -> None:
        batch = self.batch
        if frame.startswith(_NOSCRIPT) and self.conn is not None:
            client = batch.client
            request = nth_request(self.raw, index, client.max_bulk, client.max_args)
            if request is not None and batch.router.heal(self.conn, self, request[1], request[0]):
                self.retrying.append(index)
                return
        batch.side_failed(index, self.side, frame)

    def _retried(self, frame: bytes) -> None:
        """The reply of a healed request (it ran after the batch's later requests: the
        re-copy of its keys, marked once it answered, sets the order right)."""
        index = self.retrying.popleft() if self.retrying else self.count - 1
        if _is_error(frame):
            self.batch.side_failed(index, self.side, frame)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if not self.done and self.got >= self.count and not self.retrying:
            self.done = True
            self.batch.arrived()


class ClusterSideBatch:
    """The join of one batch's requests on one other side that is a cluster: each went on
    its own (``ClusterSide.send``, to its slot's master or split across several); errors
    are counted per request, and the batch is told once every one answered. A NOSCRIPT
    there is not healed: the script was loaded on every master (``Router._send_script_load``),
    and the re-copy of its keys sets the side right."""

    __slots__ = ("batch", "side", "count", "got", "all_sent", "done")

    def __init__(self, batch: DualBatch, side: str, count: int) -> None:
        self.batch = batch
        self.side = side
        self.count = count
        self.got = 0
        self.all_sent = False   # replies may come while the requests are being sent
        self.done = False

    def replied(self, index: int, frame: bytes) -> None:
        if frame and _is_error(frame):
            self.batch.side_failed(index, self.side, frame)
        self.got += 1
        self._maybe_done()

    def sent(self) -> None:
        self.all_sent = True
        self._maybe_done()

    def _maybe_done(self) -> None:
        if not self.done and self.all_sent and self.got >= self.count:
            self.done = True
            self.batch.arrived()


class _SideReply:
    """The reply sink of one request of a ``ClusterSideBatch`` (``proxy.slots`` delivers
    each reply whole, once)."""

    __slots__ = ("sink", "index")
    write_paused = False
    waits_for_replies = True

    def __init__(self, sink: ClusterSideBatch, index: int) -> None:
        self.sink = sink
        self.index = index

    def deliver(self, data: bytes, frames: int) -> None:
        if frames:
            self.sink.replied(self.index, data)

    def backend_failed(self, conn: Backend | None, count: int, error: bytes) -> None:  # pragma: no cover
        self.sink.replied(self.index, error)

    def broken(self, conn: Backend) -> None:  # pragma: no cover - its replies are never streamed
        pass

    def hold_backend(self, conn: Backend) -> None:  # pragma: no cover - write_paused is False
        pass
