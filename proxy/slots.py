"""A side of a live run that is a cluster (issue 14, DESIGN.md sections 5 and 6).

``Router.sides`` maps a side's name to where its commands go. A standalone
side is one ``proxy.backend.Node``; a cluster side is a ``ClusterSide``: one
``Node`` per master and the slot map saying which master owns each slot, as
the supervisor read it with ``CLUSTER SLOTS`` when it built the route
(``messages.Route.clusters``; ``eve.redis.topology`` parses it, the one
parser of that reply). ``ClusterSide.send`` takes one command and its reply
sink and does what a cluster proxy does (envoy's redis proxy and
redis-cluster-proxy were the models):

* A command whose keys share one slot goes to that slot's owner, as the bytes
  the client sent.
* ``MGET``, ``MSET``, ``DEL``, ``UNLINK``, ``EXISTS`` and ``TOUCH`` whose keys
  span slots are split into one command per slot, and the replies merged in
  the client's order (``MGET``: the values in key order; the counts: their
  sum; ``MSET``: ``OK`` when every part is). ``MSETNX`` cannot be split
  atomically, and neither can a transaction, a script or any other multi-key
  command: across slots they are answered ``-CROSSSLOT``, as a cluster would.
* Keyless commands go to the first master, except those that act on the whole
  keyspace (``FLUSHALL``/``FLUSHDB``, ``SCRIPT``/``FUNCTION`` loading,
  ``DBSIZE``, ``KEYS``), which reach every master and merge.
* ``-MOVED`` updates the slot's owner at once, refreshes the whole map in the
  background and sends the command again to the new owner; ``-ASK`` sends it
  to the node named, after ``ASKING`` on that connection; ``-TRYAGAIN`` and
  ``-CLUSTERDOWN`` (a resharding or a failover under way) retry after a
  moment, the map refreshed. A lost connection fails the command (its outcome
  is unknown, as it would be on the cluster itself) and refreshes the map, so
  the next command reaches the new master after a failover.

Replies reach a sink whole: pieces of a large reply are joined, so a sink
never sees half a frame. Replies to one client come back in its request
order even when its commands went to several masters: the ``order`` given
to ``send`` (the client) queues them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from eve.core.endpoints import ConnectionSpec
from eve.redis import resp
from eve.redis.topology import Node as Master
from eve.redis.topology import SLOTS, key_slot, masters_from_slots, node_spec
from proxy.backend import Node
from proxy.parts import Parts

__all__ = ["ClusterSide", "CROSSSLOT", "CrossSlot", "MAX_REDIRECTS", "SPLIT", "fails_on_cluster", "merge_replies",
           "plan", "split_by_slot"]

log = logging.getLogger("eve.proxy")

CROSSSLOT = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"
MAX_REDIRECTS = 5           # MOVED, ASK and retries per command before its reply is an error
RETRY_SECONDS = 0.05        # TRYAGAIN / CLUSTERDOWN: the next attempt after this, doubling

# Multi-key commands split per slot, and how the parts' replies merge.
SPLIT = {b"mget": "ordered", b"mset": "ok", b"del": "sum", b"unlink": "sum", b"exists": "sum", b"touch": "sum"}
# Keyless commands for every master, and how their replies merge.
BROADCAST = {b"flushall": "ok", b"flushdb": "ok", b"dbsize": "sum", b"keys": "concat", b"script": "ok",
             b"function": "ok"}
_RETRIED = (b"-TRYAGAIN", b"-CLUSTERDOWN")
_ASKING = resp.encode_command(b"ASKING")


def _is_error(frame: bytes) -> bool:
    return frame[:1] in (b"-", b"!")


def _error_frame(message: str) -> bytes:
    return b"-" + message.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace") + b"\r\n"


# -- planning (pure: unit-tested without servers) ----------------------------------------------

def split_by_slot(args: Sequence[bytes]) -> list[tuple[int, list[bytes], list[int]]]:
    """A splittable multi-key command as ``(slot, command, positions)`` per slot, in the
    order the slots first appear; ``positions`` are the indexes of its keys in the request
    (``MSET`` takes key-value pairs)."""
    name = bytes(args[0]).lower()
    step = 2 if name == b"mset" else 1
    groups: dict[int, list[int]] = {}
    for position, i in enumerate(range(1, len(args), step)):
        groups.setdefault(key_slot(args[i]), []).append(position)
    parts = []
    for slot, positions in groups.items():
        command = [args[0]]
        for position in positions:
            start = 1 + position * step
            command.extend(args[start:start + step])
        parts.append((slot, command, positions))
    return parts


def plan(name: bytes, args: Sequence[bytes], keys: Sequence[bytes]) -> tuple[str, Any]:
    """How one command goes to a cluster:

    ``("slot", slot)``      every key in one slot (or no key: slot None, the first master)
    ``("split", parts)``    ``split_by_slot``, merged by ``SPLIT[name]``
    ``("all", how)``        every master, merged by ``how``
    ``("refuse", frame)``   answered at once: ``-CROSSSLOT``
    """
    if not keys:
        how = BROADCAST.get(name)
        return ("all", how) if how is not None else ("slot", None)
    first = key_slot(keys[0])
    for key in keys[1:]:
        if key_slot(key) != first:
            break
    else:
        return "slot", first
    if name in SPLIT:
        return "split", split_by_slot(args)
    if name == b"msetnx":
        return "refuse", _error_frame("CROSSSLOT Keys in request don't hash to the same slot "
                                      "(MSETNX across slots cannot be split atomically)")
    return "refuse", CROSSSLOT


class CrossSlot:
    """The commands seen whose keys span slots (issue 14): by command name, how many and a
    few example keys, bounded. Counted while a live run tracks or routes the interlay's
    writes, so Prepare can say what would fail on a cluster target before the cutover does;
    ``exec`` stands for transactions whose writes span slots."""

    MAX_COMMANDS = 64        # command names kept
    MAX_EXAMPLES = 3         # example key lists per command
    MAX_EXAMPLE_KEYS = 3     # keys per example, each cut at MAX_KEY_BYTES
    MAX_KEY_BYTES = 100

    __slots__ = ("found",)

    def __init__(self) -> None:
        self.found: dict[str, list] = {}   # name -> [count, [examples]]

    def check(self, name: bytes, keys: Sequence[bytes]) -> None:
        """Count ``name`` when ``keys`` span slots."""
        if len(keys) < 2:
            return
        first = key_slot(keys[0])
        if all(key_slot(key) == first for key in keys[1:]):
            return
        text = bytes(name).lower().decode("utf-8", "replace")
        entry = self.found.get(text)
        if entry is None:
            if len(self.found) >= self.MAX_COMMANDS:
                return
            entry = self.found[text] = [0, []]
        entry[0] += 1
        if len(entry[1]) < self.MAX_EXAMPLES:
            entry[1].append(tuple(bytes(key[:self.MAX_KEY_BYTES]) for key in keys[:self.MAX_EXAMPLE_KEYS]))

    def report(self) -> tuple[tuple[str, int, tuple[tuple[bytes, ...], ...]], ...]:
        return tuple((name, count, tuple(examples)) for name, (count, examples) in self.found.items())


def fails_on_cluster(command: str) -> bool:
    """Whether a command whose keys span slots is refused by a cluster (and by an interlay in
    front of one): every multi-key command but those split per slot (``SPLIT``)."""
    return command.encode() not in SPLIT


def _elements(frame: bytes) -> list[bytes]:
    """The element frames of an array reply."""
    eol = frame.index(b"\r\n")
    count = int(frame[1:eol])
    out = []
    pos = eol + 2
    for _ in range(max(count, 0)):
        end = resp.frame_end(frame, pos)
        out.append(frame[pos:end])
        pos = end
    return out


def merge_replies(how: str, replies: Sequence[bytes], positions: Sequence[Sequence[int]] = ()) -> bytes:
    """The one reply of a command split into ``replies`` (one per part, in part order).
    The first error among them is the reply."""
    for reply in replies:
        if _is_error(reply):
            return reply
    if how == "sum":
        return b":%d\r\n" % sum(int(reply[1:-2]) for reply in replies)
    if how == "ok":
        return replies[0]
    if how == "concat":
        elements = [element for reply in replies for element in _elements(reply)]
        return b"*%d\r\n" % len(elements) + b"".join(elements)
    if how == "ordered":
        total = sum(len(p) for p in positions)
        ordered: list[bytes] = [b""] * total
        for reply, where in zip(replies, positions):
            for position, element in zip(where, _elements(reply)):
                ordered[position] = element
        return b"*%d\r\n" % total + b"".join(ordered)
    raise ValueError(f"unknown merge {how!r}")


# -- sending -------------------------------------------------------------------------------------

class _Request:
    """One command of a sink: its parts' replies, merged once all are in."""

    __slots__ = ("sink", "how", "positions", "replies", "left", "reply")

    def __init__(self, sink: Any, how: str, positions: Sequence[Sequence[int]], parts: int) -> None:
        self.sink = sink
        self.how = how
        self.positions = positions
        self.replies: list[bytes] = [b""] * parts
        self.left = parts
        self.reply: bytes | None = None

    def part_done(self, index: int, frame: bytes) -> bool:
        """True once the last part arrived (``reply`` is then set)."""
        self.replies[index] = frame
        self.left -= 1
        if self.left:
            return False
        self.reply = self.replies[0] if len(self.replies) == 1 else \
            merge_replies(self.how, self.replies, self.positions)
        return True


class _Part:
    """The reply sink of one part of a request on one master's connection."""

    __slots__ = ("side", "request", "index", "slot", "node", "raw", "protocol", "conn_slot", "attempts", "pieces",
                 "order")
    write_paused = False   # pieces of a large reply are joined here: nothing streams to a client
    waits_for_replies = True
    announce = ""          # a redirection reaches it as the master sent it

    def __init__(self, side: ClusterSide, request: _Request, index: int, slot: int | None, node: Node | None,
                 raw: bytes, protocol: int, conn_slot: int, order: Any) -> None:
        self.side = side
        self.request = request
        self.index = index
        self.slot = slot
        self.node = node          # a fixed master (a broadcast, an ASK), else None: the slot's owner
        self.raw = raw
        self.protocol = protocol
        self.conn_slot = conn_slot
        self.attempts = 0
        self.pieces: list[bytes] | None = None
        self.order = order

    def send(self, asking: bool = False) -> None:
        node = self.node if self.node is not None else self.side.owner(self.slot)
        conn = node.shared_conn(self.protocol, self.conn_slot) if node is not None else None
        if conn is None:
            self.side.refresh()
            self.done(node.unavailable() if node is not None else
                      _error_frame(f"CLUSTERDOWN Hash slot {self.slot} not served by {self.side.spec.address}"))
            return
        if asking:
            conn.send(None, _ASKING, 1, _discard)
        conn.send(self, self.raw, 1, None)

    def deliver(self, data: bytes, frames: int) -> None:
        if not frames:
            if self.pieces is None:
                self.pieces = []
            self.pieces.append(data)
            return
        if self.pieces is not None:
            data = b"".join(self.pieces) + data
            self.pieces = None
        if data[:1] == b"-" and self._redirected(data):
            return
        self.done(data)

    def backend_failed(self, conn: Any, count: int, error: bytes) -> None:
        self.side.refresh()
        self.done(error)

    def broken(self, conn: Any) -> None:
        self.done(b"-ERR interlay: reply lost\r\n")

    def hold_backend(self, conn: Any) -> None:  # pragma: no cover - write_paused is never set
        pass

    def done(self, frame: bytes) -> None:
        if self.request.part_done(self.index, frame):
            self.side.answered(self.request, self.order)

    def _redirected(self, frame: bytes) -> bool:
        """MOVED / ASK / TRYAGAIN / CLUSTERDOWN: sent again (True), or the final reply (False)."""
        moved = frame.startswith(b"-MOVED ")
        ask = not moved and frame.startswith(b"-ASK ")
        if not (moved or ask or frame.startswith(_RETRIED)):
            return False
        self.attempts += 1
        if self.attempts > MAX_REDIRECTS:
            self.done(_error_frame(f"ERR interlay: {self.side.spec.address} kept redirecting the command "
                                   f"({frame[1:-2].decode('utf-8', 'replace')})"))
            return True
        side = self.side
        if moved or ask:
            _, slot, address = frame[1:-2].split(b" ")[:3]
            host, _, port = address.decode().rpartition(":")
            node = side.node_at(host.strip("[]") or side.spec.host, int(port))
            if moved:
                side.moved(int(slot), node)
                if self.slot is not None:
                    self.node = None   # by slot again (an ASK may have fixed it)
                self.send()
            else:
                self.node = node
                self.send(asking=True)
            return True
        side.refresh()
        asyncio.get_running_loop().call_later(RETRY_SECONDS * 2 ** (self.attempts - 1), self.send)
        return True


def _discard(frame: bytes | None) -> bytes | None:
    return None


class ClusterSide:
    """A cluster as one side of a live run: a ``Node`` per master and the slot map."""

    by_slot = True         # what ``proxy.client`` and ``proxy.routing`` check for
    write_paused = False   # backpressure is per master connection, not per side
    raw = False            # a client's connection may be one: never this side

    def __init__(self, parts: Parts, spec: ConnectionSpec, masters: Sequence[Master]) -> None:
        if not masters:
            raise ValueError(f"cluster {spec.address}: no master serves a slot")
        self.parts = parts
        self.spec = spec
        self.address = spec.address
        self.auth_required = bool(spec.password)
        self.user = (spec.username or "default").encode()
        self.pool_size = parts.options.pool_size
        self.nodes: dict[str, Node] = {}
        self.table: list[Node | None] = [None] * SLOTS
        self.first: Node = None  # type: ignore[assignment]
        self.refreshing = False
        self.queues: dict[int, deque[_Request]] = {}   # id(order) -> its requests not delivered yet
        self.use(masters)

    def __repr__(self) -> str:
        return f"ClusterSide({self.address}: {len(self.nodes)} masters)"

    # -- the map ------------------------------------------------------------------------------

    def node_at(self, host: str, port: int) -> Node:
        master = Master(host, port)
        node = self.nodes.get(master.address)
        if node is None:
            node = self.nodes[master.address] = Node(self.parts, len(self.nodes), node_spec(self.spec, master))
        return node

    def use(self, masters: Sequence[Master]) -> None:
        """A new slot map (``masters`` from ``CLUSTER SLOTS``); nodes no longer masters are closed."""
        table: list[Node | None] = [None] * SLOTS
        current = set()
        for master in masters:
            node = self.node_at(master.host, master.port)
            current.add(master.address)
            for start, end in master.slots:
                table[start:end + 1] = [node] * (end - start + 1)
        self.table = table
        self.first = self.nodes[min(current)] if current else self.first
        for address in [a for a in self.nodes if a not in current]:
            self.nodes.pop(address).close_all()

    def owner(self, slot: int | None) -> Node | None:
        return self.first if slot is None else self.table[slot]

    def node_for(self, keys: Sequence[bytes]) -> Node:
        """The master of the first key's slot (the first master for none)."""
        return (self.table[key_slot(keys[0])] if keys else None) or self.first

    def moved(self, slot: int, node: Node) -> None:
        self.table[slot] = node
        self.refresh()

    def refresh(self) -> None:
        """Read ``CLUSTER SLOTS`` again, in the background (one refresh at a time)."""
        if self.refreshing:
            return
        for node in (self.first, *self.nodes.values()):
            conn = node.shared_conn(2, 0)
            if conn is not None:
                self.refreshing = True
                conn.send(None, resp.encode_command(b"CLUSTER", b"SLOTS"), 1, self._on_slots(node))
                return

    def _on_slots(self, node: Node) -> Any:
        def on_reply(frame: bytes | None) -> None:
            self.refreshing = False
            if frame is None or _is_error(frame):
                return None
            try:
                parsed = resp.parse(frame)
                masters = masters_from_slots(resp.to_python(parsed[0]), node.spec.host) if parsed else []
            except (resp.ProtocolError, ValueError, TypeError, IndexError) as exc:
                log.warning("%s: unreadable CLUSTER SLOTS from %s: %s", self.parts.options.name, node.address, exc)
                return None
            if masters:
                self.use(masters)
            return None
        return on_reply

    # -- sending ------------------------------------------------------------------------------

    def send(self, sink: Any, args: Sequence[bytes], raw: bytes, protocol: int, conn_slot: int,
             order: Any = None) -> None:
        """One command to the master(s) owning its keys; ``sink.deliver(reply, 1)`` once with
        the (merged) reply. Replies of one ``order`` (a client) are delivered in send order."""
        name = bytes(args[0]).lower()
        kind, detail = plan(name, args, self.parts.commands.keys(args))
        if kind == "slot":
            request = _Request(sink, "ok", (), 1)
            parts = [_Part(self, request, 0, detail, None, raw, protocol, conn_slot, order)]
        elif kind == "split":
            request = _Request(sink, SPLIT[name], [positions for _, _, positions in detail], len(detail))
            parts = [_Part(self, request, i, slot, None, resp.encode_command(*command), protocol, conn_slot, order)
                     for i, (slot, command, _) in enumerate(detail)]
        elif kind == "all":
            masters = list(self.nodes.values())
            request = _Request(sink, detail, (), len(masters))
            parts = [_Part(self, request, i, None, node, raw, protocol, conn_slot, order)
                     for i, node in enumerate(masters)]
        else:
            request = _Request(sink, "ok", (), 1)
            parts = []
        if order is not None:
            self.queues.setdefault(id(order), deque()).append(request)
        if not parts:
            request.part_done(0, detail)
            self.answered(request, order)
            return
        for part in parts:
            part.send()

    def answered(self, request: _Request, order: Any) -> None:
        """``request`` has its reply: delivered, after every earlier one of its ``order``."""
        if order is None:
            request.sink.deliver(request.reply, 1)
            return
        key = id(order)
        queue = self.queues.get(key)
        while queue and queue[0].reply is not None:
            done = queue.popleft()
            done.sink.deliver(done.reply, 1)
        if not queue:
            self.queues.pop(key, None)

    # -- what a client asks of the side it is on ----------------------------------------------

    def unavailable(self) -> bytes:
        return _error_frame(f"ERR interlay: cluster {self.address} has no reachable master")

    def close_all(self) -> None:
        """Close every master's connections: the requests on them fail, and their replies
        (errors) still reach their sinks in order."""
        for node in self.nodes.values():
            node.close_all()

    def all_nodes(self) -> list[Node]:
        return list(self.nodes.values())
