"""One client for one Redis endpoint, standalone or cluster: where the coordinator and the
workers route by slot (the interlay's asyncio side does it in ``proxy.slots``; both take
slots from ``eve.redis.topology.key_slot``).

Everything that sends per-key commands to a side (the restorer, the re-copy loop,
verification, the test run, error-key retries) goes through ``ClusterClient``::

    client = ClusterClient(spec, role="target", error=TargetError)
    routed = client.execute(db, keys, commands)      # packed commands, ``per_key`` of them per key
    for group in routed.groups:                      # the final replies, one group per node
        ...

A standalone server is the one-node case of the same class: no slot map, every
key on the seed, ``SELECT db`` before a pipeline. A cluster has only db 0.

Routing (cluster)
    The slot map comes from ``CLUSTER SLOTS`` of the first node that answers (the
    seed, then every master known). Keys are grouped per owning master and each
    group is one pipeline (one ``sendall``). Per key, the first error reply among
    its commands that is a redirection or transient decides:

    ``MOVED``        resent to the node named; the map is refreshed after the round
    ``ASK``          resent to the node named with ``ASKING`` before each command
                     (ASKING covers only the next command); the map is unchanged
    transient        resent after a backoff (``retry_delay`` doubling per round),
                     up to ``max_attempts`` answers; ``TRYAGAIN``, ``CLUSTERDOWN``
                     and ``READONLY`` also refresh the map
    no master        a slot absent from the map is answered, without a round trip,
                     ``CLUSTERDOWN slot N has no master ...`` (transient: the map is
                     refreshed and the key retried, then that is its final reply)

    One limit, ``max_redirects``, counts MOVED, ASK and re-routes per key; past it
    the key's final reply is an error saying the cluster kept redirecting it.
    (Redirections: https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/)

Error replies: ``classify``, the one classifier every part of Eve uses
    ``BUSYKEY``                      busykey: the conflict policy's business
    ``MOVED`` / ``ASK``              moved / ask: followed here
    ``LOADING`` ``BUSY`` ``TRYAGAIN``  transient (``TRANSIENT_CODES``, whole codes:
    ``MASTERDOWN`` ``CLUSTERDOWN``     ``BUSY`` is not ``BUSYKEY`` or ``BUSYGROUP``):
    ``READONLY`` ``OOM``               retried here, then final
    ``NOPERM`` ``NOAUTH`` ``WRONGPASS``  denied: every key would fail alike
    anything else                    permanent for that key; ``payload_refused`` says
                                     whether RESTORE could not read the payload
    Final replies are the caller's to judge with ``classify``.

Connections
    One ``FastConnection`` per node, opened lazily. A connection lost mid-pipeline
    is reopened at once, then with backoff (``RECONNECT_FIRST_DELAY`` doubling to
    ``RECONNECT_MAX_DELAY``) for ``reconnect_seconds`` in all, and the pipeline sent
    again; after that ``UnavailableError`` naming the role and the node. While a
    cluster node stays unreachable the map is refreshed: when the node is no longer
    a master (a failover, a replacement), its keys are routed again by slot. A
    pipeline whose connection drops ``max_attempts`` times although the node comes
    back each time is sent key by key, so only the key the server chokes on fails.
    Refused credentials raise ``AuthError`` at once. Errors name the role the caller
    gave (``source``, ``target``, ``mirror target``, ...); failures that are neither
    transport nor credentials raise the caller's ``error`` class.

Restarts
    A server that restarted is not the server the caller wrote to: a non-persistent one
    came back empty, a persistent one reloaded a snapshot that may predate the last
    writes. Every connection a client opens (the first and each reopen) reads the
    server's ``run_id`` (``INFO server``: a new random value each time the process
    starts) and compares it with the one known for that address (``ServerRunIds``: given
    by the caller, or learned on first contact). Another one raises ``ServerRestarted``
    naming the role, the address and both run_ids, instead of carrying on as if nothing
    happened; the caller decides what the server may have lost (copy again, resync,
    fail) and ``accept_restart`` lets the client go on with the new server.

Everything is resent after a lost connection, so callers send idempotent commands
(DUMP, PTTL, RESTORE, DEL, reads, scripts and MULTI blocks that converge).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Callable, Iterable, Sequence

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import AuthError, EndpointError, ServerRestarted, Side, UnavailableError
from eve.redis.topology import SLOTS, Node, key_slot, masters_from_slots, node_spec, parse_info, parse_keyspace
from eve.redis.wire import FastConnection, ReplyError, pack

__all__ = [
    "ASK",
    "BUSYKEY",
    "DENIED",
    "MOVED",
    "PERMANENT",
    "TRANSIENT",
    "TRANSIENT_CODES",
    "ClientOptions",
    "ClusterClient",
    "NodeLeft",
    "NodeReplies",
    "PipelineKeepsFailing",
    "Routed",
    "ServerRestarted",
    "ServerRunIds",
    "SlotMap",
    "Backoff",
    "classify",
    "error_code",
    "is_transient",
    "quotes_transient",
    "payload_refused",
    "refreshes_slots",
    "refusal",
    "REFUSALS",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_REDIRECTS",
    "DEFAULT_RECONNECT_SECONDS",
    "DEFAULT_RETRY_DELAY",
    "DEFAULT_TIMEOUT",
    "RECONNECT_FIRST_DELAY",
    "RECONNECT_MAX_DELAY",
]

log = logging.getLogger("eve.redis.cluster")

DEFAULT_TIMEOUT = 30.0
DEFAULT_RECONNECT_SECONDS = 30.0
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RETRY_DELAY = 0.05
DEFAULT_MAX_REDIRECTS = 5
RECONNECT_FIRST_DELAY = 0.05
RECONNECT_MAX_DELAY = 2.0


# --------------------------------------------------------------------------- error replies

# What classify() says an error reply is.
TRANSIENT, PERMANENT, BUSYKEY, MOVED, ASK, DENIED = "transient", "permanent", "busykey", "moved", "ask", "denied"

# Error codes (the first word of the reply) that say the node cannot answer right now, not
# that the key or the command is bad: loading its dataset, running a slow script (BUSY; not
# BUSYKEY or BUSYGROUP, which are answers about a key), a slot being moved or unserved, a
# replica that lost its master or was asked to write, maxmemory reached.
TRANSIENT_CODES = frozenset({"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "READONLY", "OOM"})
# Transient codes that mean the cluster's layout changed under us: read the slot map again.
_SLOT_CHANGE_CODES = frozenset({"TRYAGAIN", "CLUSTERDOWN", "READONLY"})
# The credentials lack a permission (or were never accepted): the same for every key.
_DENIED_CODES = frozenset({"NOPERM", "NOAUTH", "WRONGPASS"})
# RESTORE refusing a payload it cannot read: a newer RDB format, or a module type it lacks.
_PAYLOAD_REFUSED = ("DUMP payload version or checksum are wrong", "Bad data format")


def error_code(message: str) -> str:
    """The error code of a reply: ``"BUSY"`` for ``"BUSY Redis is busy running a script..."``."""
    return message.split(" ", 1)[0]


# Why a server refuses writes, by its reply's error code: said in a live run's events beside
# the reply itself, so an operator reads the cause rather than a growing backlog (issue 19).
REFUSALS = {
    "OOM": "out of memory: used memory is over maxmemory and the eviction policy frees nothing",
    "READONLY": "read-only: a replica",
    "LOADING": "loading its dataset",
    "MASTERDOWN": "a replica whose link to its master is down",
    "MISCONF": "refusing writes since its last RDB save failed (stop-writes-on-bgsave-error)",
    "NOREPLICAS": "short of good replicas (min-replicas-to-write)",
    "BUSY": "busy running a script or function",
    "CLUSTERDOWN": "in a cluster that is down",
    "TRYAGAIN": "moving the keys' slots (resharding)",
    "NOPERM": "denying Eve's user the command (ACL)",
    "NOAUTH": "asking for authentication",
    "WRONGPASS": "refusing Eve's credentials",
}


def refusal(message: str) -> str | None:
    """``"OOM (out of memory: ...)"`` for an error reply that refuses writes (or a message
    quoting one after ``": "``), None for any other."""
    for text in (message, message.rpartition(": ")[2]):
        code = error_code(text)
        if code in REFUSALS:
            return f"{code} ({REFUSALS[code]})"
    return None


def is_transient(message: str) -> bool:
    return error_code(message) in TRANSIENT_CODES


def quotes_transient(message: str) -> bool:
    """A transient reply, or a message that ends quoting one after ``": "`` (``"target x:
    TYPE/PTTL failed: CLUSTERDOWN The cluster is down"``): the side answers again soon."""
    return is_transient(message) or is_transient(message.rpartition(": ")[2])


def refreshes_slots(message: str) -> bool:
    """A transient reply after which a cluster's slot map is worth reading again."""
    return error_code(message) in _SLOT_CHANGE_CODES


def payload_refused(message: str) -> bool:
    """The reply says the server cannot read the DUMP payload (a newer RDB format, or a
    module type it does not have): the key needs a logical copy."""
    return any(text in message for text in _PAYLOAD_REFUSED)


def classify(message: str) -> tuple[str, str]:
    """(kind, reason) of an error reply; the reason is what an error key says.

    ``BUSYKEY`` is the conflict policy's business; ``MOVED``/``ASK`` redirections;
    transient replies are worth retrying; ``DENIED`` ones fail every key alike;
    everything else (a refused payload included) is permanent for that key.
    """
    code = error_code(message)
    if code == "BUSYKEY":
        return BUSYKEY, message
    if payload_refused(message):
        return PERMANENT, f"target refused the DUMP payload (RDB format of a newer server?): {message}"
    if code == "OOM":
        return TRANSIENT, f"target out of memory (maxmemory): {message}"
    if code == "MOVED":
        return MOVED, message
    if code == "ASK":
        return ASK, message
    if code in TRANSIENT_CODES:
        return TRANSIENT, message
    if code in _DENIED_CODES:
        return DENIED, message
    return PERMANENT, message


_CLIENTS_BUSINESS = (MOVED, ASK, TRANSIENT)


def _redirect_or_retry(replies: Iterable[Any]) -> tuple[str, str] | None:
    """(kind, message) of the first reply that is a redirection or transient, else None."""
    for reply in replies:
        if reply.__class__ is ReplyError:
            message = str(reply)
            kind = classify(message)[0]
            if kind in _CLIENTS_BUSINESS:
                return kind, message
    return None


# --------------------------------------------------------------------------- backoff


class Backoff:
    """Waits between reconnect attempts: ``first`` doubling to ``cap``, within ``seconds`` in all.

    ``next()`` is the next wait, cut so as not to pass the deadline (one attempt is
    then made at the deadline), or None once the deadline has passed.
    """

    def __init__(self, seconds: float, *, first: float = RECONNECT_FIRST_DELAY, cap: float = RECONNECT_MAX_DELAY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._deadline = clock() + seconds
        self._delay = first
        self._cap = cap

    def next(self) -> float | None:
        remaining = self._deadline - self._clock()
        if remaining <= 0:
            return None
        delay = min(self._delay, remaining)
        self._delay = min(self._delay * 2, self._cap)
        return delay


# --------------------------------------------------------------------------- restarts


class ServerRunIds:
    """The ``run_id`` (``INFO server``) each address answered with: ``check`` runs on every
    fresh connection and raises ``ServerRestarted`` when the server behind an address
    changed since (module docstring).

    ``known`` (address -> run_id) is what the caller knew when it wrote to the servers
    (a job's sides when it started); one ``ServerRunIds`` may serve several clients (the
    threads of one re-copy loop), so a restart one of them accepts is known to all. A
    server that does not tell its run_id (``INFO`` refused by an ACL, a server without
    the field) cannot be checked: that is logged once per address.
    """

    def __init__(self, known: dict[str, str] | None = None, *,
                 log: logging.Logger | logging.LoggerAdapter = log) -> None:
        self._run_ids: dict[str, str] = dict(known or {})
        self._unchecked: set[str] = set()
        self.log = log

    def __repr__(self) -> str:
        return f"ServerRunIds({len(self._run_ids)} servers)"

    def get(self, address: str) -> str | None:
        return self._run_ids.get(address)

    def as_dict(self) -> dict[str, str]:
        return dict(self._run_ids)

    def check(self, conn: FastConnection, *, role: str, side: Side | None = None) -> str | None:
        """The run_id behind a freshly opened connection, learned on first contact; raises
        ``ServerRestarted`` when the address knew another one."""
        address = conn.spec.address
        reply = conn.execute("INFO", "server")
        run_id = parse_info(reply).get("run_id") if reply.__class__ is bytes else None
        if not run_id:
            if address not in self._unchecked:
                self._unchecked.add(address)
                self.log.warning("%s %s does not tell its run_id (INFO server: %s): a restart of it cannot be "
                                 "noticed", role, address, str(reply)[:200] if reply.__class__ is ReplyError
                                 else "no run_id")
            return None
        known = self._run_ids.setdefault(address, run_id)
        if known != run_id:
            raise ServerRestarted(role, address, known, run_id, side=side)
        return run_id

    def accept(self, restarted: ServerRestarted) -> None:
        """From now on the restarted server is the one its address is known by."""
        self._run_ids[restarted.address] = restarted.after


# --------------------------------------------------------------------------- slot map


class SlotMap:
    """Slot -> owning master, from CLUSTER SLOTS. ``address_of`` is one list index per key."""

    def __init__(self, masters: list[Node]) -> None:
        self.masters = masters
        table: list[str | None] = [None] * SLOTS
        for node in masters:
            address = node.address
            for start, end in node.slots:
                table[start:end + 1] = [address] * (end - start + 1)
        self.table = table

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.masters]

    def owner(self, slot: int) -> Node | None:
        address = self.table[slot]
        return next((node for node in self.masters if node.address == address), None) if address else None

    def node_for_key(self, key: bytes) -> Node | None:
        return self.owner(key_slot(key))

    def address_of(self, key: bytes) -> str | None:
        return self.table[key_slot(key)]


# --------------------------------------------------------------------------- results


class NodeLeft(Exception):
    """A cluster node stayed unreachable and is no longer a master: route its keys again."""

    def __init__(self, address: str) -> None:
        super().__init__(f"{address} is no longer a master of the cluster")
        self.address = address


class PipelineKeepsFailing(Exception):
    """The connection dropped max_attempts times on one pipeline although the node came back."""


@dataclass(slots=True)
class NodeReplies:
    """Final replies of some keys, from one node: ``per_key`` replies per index, in order."""

    address: str        # the node that answered
    asking: bool        # sent after an ASK redirection (ASKING before each command)
    indexes: Sequence[int]  # positions in the caller's keys
    replies: list[Any]
    clean: bool         # no error reply among them (every reply == expect, when one was given)


class Routed:
    """What ``ClusterClient.execute`` ended with: every key's final replies, grouped per node."""

    __slots__ = ("groups", "attempts", "_starts", "_width")

    def __init__(self, width: int, starts: Sequence[int] | None) -> None:
        self.groups: list[NodeReplies] = []
        self.attempts: dict[int, int] = {}   # index -> error answers, for keys whose final reply is an error
        self._width = width
        self._starts = starts

    def attempts_of(self, index: int) -> int:
        """How many times the key was answered with an error (1 when never retried)."""
        return self.attempts.get(index, 1)

    def by_key(self, count: int) -> list[tuple[str, list[Any]]]:
        """(node, replies) per key, in the caller's order."""
        out: list[tuple[str, list[Any]] | None] = [None] * count
        starts = self._starts
        for group in self.groups:
            address, replies, at = group.address, group.replies, 0
            for index in group.indexes:
                width = self._width if starts is None else starts[index + 1] - starts[index]
                out[index] = (address, replies[at:at + width])
                at += width
        return out  # type: ignore[return-value]


# --------------------------------------------------------------------------- the client


@dataclass(frozen=True)
class ClientOptions:
    """How one client waits and retries; frozen and picklable (it crosses process boundaries
    inside the workers' options)."""

    timeout: float = DEFAULT_TIMEOUT                      # socket timeout of one round trip
    reconnect_seconds: float = DEFAULT_RECONNECT_SECONDS  # keep reopening a lost node this long (0: fail at once)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS              # answers per key to transient errors; drops per pipeline
    retry_delay: float = DEFAULT_RETRY_DELAY              # first wait before transient retries, doubled per round
    max_redirects: int = DEFAULT_MAX_REDIRECTS            # MOVED, ASK and re-routes per key
    client_name: str = "eve"                              # CLIENT SETNAME, so operators find Eve in CLIENT LIST


_ASKING = pack("ASKING")
_PING = pack("PING")


class ClusterClient:
    """One endpoint (standalone or cluster) as one side of a job sees it (module docstring).

    ``cluster`` is known after ``connect`` (or given). Not thread-safe: one per thread.
    ``on_reconnect(address)`` is called when a node's connection is reopened (state kept
    per connection, such as loaded scripts, is gone). ``run_ids``: the nodes' run_ids the
    caller knows (module docstring, Restarts); a fresh ``ServerRunIds`` learns them.
    """

    def __init__(self, spec: ConnectionSpec, *, role: str, options: ClientOptions = ClientOptions(),
                 error: type[EndpointError] = EndpointError, cluster: bool | None = None,
                 masters: list[Node] | None = None, stopping: Callable[[], bool] | None = None,
                 on_reconnect: Callable[[str], None] | None = None,
                 run_ids: ServerRunIds | None = None,
                 log: logging.Logger | logging.LoggerAdapter = log) -> None:
        self.spec = spec
        self.role = role
        self.address = spec.address
        self.options = options
        self.error = error
        # Which side of a run its errors blame (EndpointError.side): known from the caller's class.
        self.side = error.side_of_class
        self.cluster = cluster if masters is None else bool(masters)
        self.slots: SlotMap | None = None
        self.log = log
        self._stopping = stopping
        self._on_reconnect = on_reconnect
        # Who each node is: a reopened connection to a restarted one raises ServerRestarted.
        self.run_ids = run_ids if run_ids is not None else ServerRunIds(log=log)
        self._conns: dict[str, FastConnection] = {}
        self._specs: dict[str, ConnectionSpec] = {spec.address: spec}
        self._connected = False
        if masters:
            self._use_map(masters)

    def __repr__(self) -> str:
        return f"ClusterClient({self.role} {self.address}, cluster={self.cluster})"

    def __enter__(self) -> "ClusterClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- topology ----------------------------------------------------------------

    def connect(self) -> None:
        """Open the seed (retrying for reconnect_seconds), learn whether it is a cluster and
        load its slot map. Idempotent; every other call connects first."""
        if self._connected:
            return
        if self.cluster is None:
            self.cluster = self.info("cluster").get("cluster_enabled") == "1"
        else:
            self._on_node(self.address, lambda conn: conn.connected or conn.open())
        if self.cluster and self.slots is None:
            self.refresh_slots()
        self._connected = True

    @property
    def masters(self) -> list[Node]:
        """The cluster's masters, or the seed alone for a standalone server."""
        self.connect()
        if self.slots is None:
            return [Node(self.spec.host, self.spec.port, ((0, SLOTS - 1),))]
        return list(self.slots.masters)

    @property
    def nodes(self) -> list[str]:
        """Addresses to scan: every master, or the seed."""
        return [node.address for node in self.masters]

    def identify(self) -> dict[str, str]:
        """The run_id of every master (the seed of a standalone server): address -> run_id, for
        the servers that tell it. A PING on each connection first, so that one left idle while
        its server restarted is reopened (and checked) now: raises ``ServerRestarted`` for a node
        known by another run_id."""
        for address in self.nodes:
            self._on_node(address, lambda conn: conn.pipeline(_PING, 1))
        return {address: run_id for address in self.nodes if (run_id := self.run_ids.get(address))}

    def accept_restart(self, restarted: ServerRestarted) -> None:
        """Go on with the restarted server (the caller took care of what it lost)."""
        self.run_ids.accept(restarted)

    def spec_for(self, address: str) -> ConnectionSpec:
        """The endpoint's connection settings (credentials, TLS) aimed at one node."""
        return self._specs[address]

    def has_db(self, db: int) -> bool:
        self.connect()
        return db == 0 or not self.cluster

    def node_for_key(self, key: bytes) -> str:
        """The node a key's commands go to now (the seed while its slot has no master)."""
        self.connect()
        if self.slots is None:
            return self.address
        return self.slots.address_of(key) or self.address

    def refresh_slots(self) -> None:
        """CLUSTER SLOTS from the first node that answers: the seed, then every master known."""
        last: Exception | None = None
        known = self.slots.addresses if self.slots is not None else []
        for address in dict.fromkeys([self.address, *known, *self._conns]):
            conn = self._connection(address)
            try:
                reply = conn.execute("CLUSTER", "SLOTS")
            except AuthError as exc:
                raise AuthError(f"{self.role}: {exc}", side=self.side) from exc
            except ServerRestarted:
                raise
            except EndpointError as exc:
                last = exc
                continue
            if reply.__class__ is ReplyError:
                self._raise_if_denied(address, "CLUSTER SLOTS", reply)
                last = EndpointError(f"CLUSTER SLOTS failed on {address}: {reply}")
                continue
            if not reply:
                last = EndpointError(f"{address} knows no slots (CLUSTER SLOTS is empty)")
                continue
            self._use_map(masters_from_slots(reply, self._specs[address].host))
            return
        raise UnavailableError(f"{self.role} unreachable: no node of {self.address} answered CLUSTER SLOTS: {last}",
                               side=self.side)

    def _use_map(self, masters: list[Node]) -> None:
        for node in masters:
            self._specs.setdefault(node.address, node_spec(self.spec, node))
        self.slots = SlotMap(masters)

    def _refresh_quietly(self) -> None:
        try:
            self.refresh_slots()
        except (AuthError, ServerRestarted):
            raise
        except EndpointError as exc:
            self.log.warning("%s %s: cannot refresh the slot map: %s", self.role, self.address, exc)

    # -- single commands ---------------------------------------------------------

    def call(self, address: str | None, *args: Any, db: int = 0) -> Any:
        """One command on one node (the seed when ``address`` is None), reconnecting; the reply
        (an error reply is a ``ReplyError`` value)."""
        self.connect()
        address = address or self.address
        refusal = self._db_refusal(db, address)
        if refusal is not None:
            return refusal
        packed = pack(*args)
        return self._on_node(address, lambda conn: conn.pipeline(packed, 1))[0]

    def info(self, section: str, address: str | None = None) -> dict[str, str]:
        """``INFO section`` of one node (the seed by default) as fields; a refusal raises."""
        address = address or self.address
        packed = pack("INFO", section)
        reply = self._on_node(address, lambda conn: conn.pipeline(packed, 1))[0]
        if reply.__class__ is ReplyError:
            self._raise_if_denied(address, f"INFO {section}", reply)
            raise self.error(f"{self.role} {address}: INFO {section} failed: {reply}")
        return parse_info(reply)

    def dbs_with_keys(self) -> list[int]:
        """Databases that hold keys (a cluster: db 0)."""
        self.connect()
        if self.cluster:
            return [0]
        return sorted(db for db, (keys, _) in self.keyspace().items() if keys)

    def keyspace(self, address: str | None = None) -> dict[int, tuple[int, int]]:
        """``{db: (keys, expires)}`` of one node, from INFO keyspace."""
        return parse_keyspace(self.info("keyspace", address))

    # -- routed pipelines --------------------------------------------------------

    def execute(self, db: int, keys: Sequence[bytes], commands: Sequence[bytes], *,
                per_key: int | Sequence[int] = 1, expect: Any = None) -> Routed:
        """Send ``commands`` (pre-packed; ``per_key`` of them per key, in key order) to the nodes
        owning ``keys``, following redirections and retrying transient replies (module
        docstring). Returns every key's final replies, grouped per node.

        ``expect``: the reply every command gives when all is well (``b"OK"`` for RESTORE);
        a group whose replies all equal it is clean without looking at each.
        """
        self.connect()
        count = len(keys)
        if isinstance(per_key, int):
            routed = Routed(per_key, None)
        else:
            routed = Routed(0, [0, *accumulate(per_key)])
        if not count:
            return routed
        everything = range(count)
        refusal = self._db_refusal(db)
        if refusal is not None:
            total = routed._width * count if routed._starts is None else routed._starts[-1]
            routed.groups.append(NodeReplies(self.address, False, everything, [refusal] * total, False))
            return routed
        # The common case, one pipeline of every command as given, costs no per-key work here.
        whole = commands if routed._starts is None and routed._width == 1 else None
        state = _Round(keys, routed)
        work = [(self.address, False, everything)] if self.slots is None else self._route(state, everything)
        while work:
            state.next_round()
            for address, asking, indexes in work:
                selected = whole if indexes is everything and whole is not None else state.commands_of(commands,
                                                                                                     indexes)
                replies = self._send_group(state, address, asking, indexes, selected)
                if replies is None:
                    pass
                elif (replies.count(expect) == len(replies) if expect is not None
                      else ReplyError not in map(type, replies)):
                    routed.groups.append(NodeReplies(address, asking, indexes, replies, True))
                else:
                    self._sort_replies(state, address, asking, indexes, replies)
            work = self._next_work(state)
        return routed

    def _send_group(self, state: "_Round", address: str, asking: bool, indexes: Sequence[int],
                    selected: Sequence[bytes]) -> list[Any] | None:
        """One node's pipeline; None when its keys went elsewhere (node left, sent one by one)."""
        if asking:
            packed, sent = _ASKING + _ASKING.join(selected), 2 * len(selected)
        else:
            packed, sent = b"".join(selected), len(selected)
        options = self.options
        try:
            replies = self.send(address, packed, sent)
        except NodeLeft:
            for index in indexes:
                if state.hop(index, options.max_redirects):
                    state.rerouted.append(index)
                else:
                    state.final(address, index, f"ERR {self.role}: gave up after {options.max_redirects} "
                                                f"re-routes: {address} left the cluster")
            return None
        except PipelineKeepsFailing as exc:
            if len(indexes) > 1:
                self.log.warning("%s %s: a pipeline of %d keys failed %d times; sending them one by one",
                                 self.role, address, len(indexes), options.max_attempts)
                state.singles.extend((address, asking, [index]) for index in indexes)
            else:
                state.final(address, indexes[0], f"ERR connection to {address} lost or timed out "
                                                 f"{options.max_attempts} times while sending this key: {exc}",
                            attempts=options.max_attempts)
            return None
        return replies[1::2] if asking else replies

    def _sort_replies(self, state: "_Round", address: str, asking: bool, indexes: Sequence[int],
                      replies: list[Any]) -> None:
        """Per key of a pipeline with error replies: final, redirected, or retried later."""
        options, tries, routed = self.options, state.tries, state.routed
        kept_indexes: list[int] = []
        kept_replies: list[Any] = []
        at = 0
        for index in indexes:
            size = state.width(index)
            job = replies[at:at + size]
            at += size
            verdict = _redirect_or_retry(job)
            if verdict is None:
                if ReplyError in map(type, job):
                    routed.attempts[index] = tries.get(index, 0) + 1
            elif verdict[0] == TRANSIENT:
                tries[index] = tries.get(index, 0) + 1
                if tries[index] < options.max_attempts:
                    state.again.append(index)
                    state.refresh = state.refresh or refreshes_slots(verdict[1])
                    continue
                routed.attempts[index] = tries[index]
            else:
                kind, message = verdict
                routed.attempts[index] = tries.get(index, 0) + 1
                if self.cluster:  # a standalone server that redirects is answered as it is
                    if state.hop(index, options.max_redirects):
                        target = self._learn(message.split()[2])
                        state.redirected.setdefault((target, kind == ASK), []).append(index)
                        state.refresh = state.refresh or kind == MOVED
                        continue
                    job = [ReplyError(f"ERR the cluster kept redirecting the key ({options.max_redirects} "
                                      f"MOVED/ASK hops): {message}")] * size
            kept_indexes.append(index)
            kept_replies.extend(job)
        if kept_indexes:
            routed.groups.append(NodeReplies(address, asking, kept_indexes, kept_replies, False))

    def _next_work(self, state: "_Round") -> list[tuple[str, bool, Sequence[int]]]:
        """After a round: refresh the map if a reply said so, back off for transient replies,
        and the next round's pipelines."""
        if state.refresh and self.cluster:
            self._refresh_quietly()
        if state.again:
            time.sleep(self.options.retry_delay * 2 ** state.backoffs)
            state.backoffs += 1
        work = state.singles + [(address, asking, indexes) for (address, asking), indexes in state.redirected.items()]
        again = state.rerouted + state.again
        if again:
            work += self._route(state, again) if self.slots is not None else [(self.address, False, again)]
        return work

    def run(self, db: int, keys: Sequence[bytes], jobs: Sequence[Sequence[bytes]]) -> list[tuple[str, list[Any]]]:
        """``execute`` for jobs of several commands per key: (node, replies) per key, in order."""
        widths = [len(job) for job in jobs]
        commands = [command for job in jobs for command in job]
        uniform = widths[0] if widths and widths.count(widths[0]) == len(widths) else None
        routed = self.execute(db, keys, commands, per_key=uniform if uniform is not None else widths)
        return routed.by_key(len(keys))

    def send(self, address: str, packed: bytes, count: int) -> list[Any]:
        """One pre-encoded pipeline to one node, reconnecting (and sending it all again) when
        the connection drops: its replies. Raises ``NodeLeft``, ``PipelineKeepsFailing``,
        ``UnavailableError`` and ``AuthError`` (module docstring)."""
        return self._on_node(address, lambda conn: conn.pipeline(packed, count), routed=True)

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        self._connected = False

    # -- routing -----------------------------------------------------------------

    def _route(self, state: "_Round", indexes: Iterable[int]) -> list[tuple[str, bool, Sequence[int]]]:
        """Work items (node, asking, indexes): one per owning master. A key whose slot has no
        master counts a transient answer; after max_attempts that is its final reply."""
        assert self.slots is not None
        table, keys = self.slots.table, state.keys
        groups: dict[str, list[int]] = {}
        unserved: list[int] = []
        for index in indexes:
            address = table[key_slot(keys[index])]
            if address is None:
                unserved.append(index)
            elif address in groups:
                groups[address].append(index)
            else:
                groups[address] = [index]
        work: list[tuple[str, bool, Sequence[int]]] = [(address, False, group) for address, group in groups.items()]
        if unserved:
            self._refresh_quietly()
            retry = []
            for index in unserved:
                tries = state.tries[index] = state.tries.get(index, 0) + 1
                if tries < self.options.max_attempts:
                    retry.append(index)
                else:
                    state.final(self.address, index, f"CLUSTERDOWN slot {key_slot(keys[index])} has no master "
                                                     f"in CLUSTER SLOTS of {self.role} {self.address}",
                                attempts=tries)
            if retry:
                time.sleep(self.options.retry_delay)
                work += self._route(state, retry)
        return work

    def _learn(self, address: str) -> str:
        """The address of a MOVED/ASK reply ("host:port", "[v6]:port", bare v6, or ":port"
        for a node without an announced address), known from now on."""
        host, _, port = address.rpartition(":")
        spec = dataclasses.replace(self.spec, host=host.strip("[]") or self.spec.host, port=int(port))
        self._specs.setdefault(spec.address, spec)
        return spec.address

    def _db_refusal(self, db: int, address: str | None = None) -> ReplyError | None:
        """Why nothing of ``db`` can be sent: a cluster has only db 0; a standalone server
        that refuses SELECT. The connection selects ``db`` otherwise."""
        if self.cluster:
            if db == 0:
                return None
            return ReplyError(f"ERR {self.role} {self.address} is a cluster: it has only db 0, the key is in db {db}")
        address = address or self.address
        if self._connection(address).db == db:
            return None
        return self._select(address, db)

    def _select(self, address: str, db: int) -> ReplyError | None:
        packed = pack("SELECT", db)
        reply = self._on_node(address, lambda conn: conn.pipeline(packed, 1))[0]
        if reply.__class__ is ReplyError:
            self._raise_if_denied(address, f"SELECT {db}", reply)
            return ReplyError(f"ERR SELECT {db} failed on {self.role} {address}: {reply}")
        # Reopened connections select it again (FastConnection's handshake).
        self._connection(address).db = db
        return None

    # -- connections -------------------------------------------------------------

    def _connection(self, address: str) -> FastConnection:
        conn = self._conns.get(address)
        if conn is None:
            conn = FastConnection(self._specs[address], timeout=self.options.timeout,
                                  client_name=self.options.client_name, on_open=self._check_run_id)
            self._conns[address] = conn
        return conn

    def _check_run_id(self, conn: Any) -> None:
        """Every connection's ``on_open``: the server behind it is still the one it was."""
        self.run_ids.check(conn, role=self.role, side=self.side)

    def _raise_if_denied(self, address: str, what: str, reply: ReplyError) -> None:
        if error_code(str(reply)) in _DENIED_CODES:
            raise AuthError(f"{self.role} {address} refused {what} for user "
                            f"{self.spec.username or 'default'!r}: {reply}", side=self.side)

    def _on_node(self, address: str, call: Callable[[FastConnection], Any], *, routed: bool = False) -> Any:
        """``call(conn)`` on the node's connection (opened on demand), reopening it while the
        node is unreachable (module docstring); ``call`` raises only transport errors.

        ``routed``: the caller can send the keys elsewhere, so a node gone from the slot map
        raises ``NodeLeft`` and a connection that keeps dropping ``PipelineKeepsFailing``;
        otherwise both are ``UnavailableError``."""
        failures = 0
        while True:
            conn = self._connection(address)
            try:
                return call(conn)
            except AuthError as exc:
                raise AuthError(f"{self.role}: {exc}", side=self.side) from exc
            except ServerRestarted:
                raise
            except EndpointError as exc:  # unreachable, timed out, or a malformed reply (connection closed)
                conn.close()
                failures += 1
                try:
                    self._reconnect(address, exc)
                except NodeLeft as left:
                    if routed:
                        raise
                    raise UnavailableError(f"{self.role} unreachable: {left}", side=self.side) from exc
                if failures >= self.options.max_attempts:
                    if routed:
                        raise PipelineKeepsFailing(str(exc)) from exc
                    raise UnavailableError(f"{self.role} unreachable: the connection to {address} dropped "
                                           f"{failures} times although it reopens: {exc}", side=self.side) from exc

    def _reconnect(self, address: str, error: EndpointError) -> None:
        """Reopen ``address``: at once, then with backoff for reconnect_seconds; NodeLeft when a
        fresh slot map no longer has that master, UnavailableError when time is up."""
        seconds = self.options.reconnect_seconds
        if self._on_reconnect is not None:
            self._on_reconnect(address)
        if seconds:
            self.log.warning("%s %s: %s; reconnecting for up to %gs", self.role, address, error, seconds)
        backoff = Backoff(seconds)
        last: EndpointError = error
        while True:
            if self._stopping is not None and self._stopping():
                raise UnavailableError(f"{self.role} unreachable: {last} (stopping)", side=self.side) from last
            try:
                self._connection(address).open()
            except AuthError as exc:
                raise AuthError(f"{self.role}: {exc}", side=self.side) from exc
            except ServerRestarted:
                raise
            except EndpointError as exc:
                last = exc
            else:
                self.log.info("%s %s: reconnected", self.role, address)
                return
            if self.cluster and self.slots is not None:
                # A failover (or an operator) may have given the node's slots to another master.
                try:
                    self.refresh_slots()
                except (AuthError, ServerRestarted):
                    raise
                except EndpointError:
                    pass
                else:
                    if address not in self.slots.addresses:
                        self.log.warning("%s %s: no longer a master; routing its keys again", self.role, address)
                        raise NodeLeft(address)
            delay = backoff.next()
            if delay is None:
                raise UnavailableError(f"{self.role} unreachable: {last}"
                                       + (f" (retried for {seconds:g}s)" if seconds else ""), side=self.side) from last
            time.sleep(delay)


class _Round:
    """The bookkeeping of one ``execute``: per key, transient answers and redirections so far,
    and what the current round leaves for the next."""

    def __init__(self, keys: Sequence[bytes], routed: Routed) -> None:
        self.keys = keys
        self.routed = routed
        self.tries: dict[int, int] = {}     # transient answers per key
        self.hops: dict[int, int] = {}      # MOVED, ASK and re-routes per key
        self.backoffs = 0
        self.next_round()

    def next_round(self) -> None:
        self.redirected: dict[tuple[str, bool], list[int]] = {}   # (node, asking) -> keys
        self.again: list[int] = []       # routed by slot after a backoff (transient)
        self.rerouted: list[int] = []    # routed by slot at once (their node left)
        self.singles: list[tuple[str, bool, Sequence[int]]] = []
        self.refresh = False

    def width(self, index: int) -> int:
        starts = self.routed._starts
        return self.routed._width if starts is None else starts[index + 1] - starts[index]

    def commands_of(self, commands: Sequence[bytes], indexes: Sequence[int]) -> list[bytes]:
        """The commands of some keys, in their order."""
        width, starts = self.routed._width, self.routed._starts
        if starts is None:
            if width == 1:
                return [commands[index] for index in indexes]
            return [commands[at] for index in indexes for at in range(index * width, index * width + width)]
        return [commands[at] for index in indexes for at in range(starts[index], starts[index + 1])]

    def hop(self, index: int, limit: int) -> bool:
        """Count one redirection or re-route of a key; False once past the limit."""
        hops = self.hops[index] = self.hops.get(index, 0) + 1
        return hops <= limit

    def final(self, address: str, index: int, message: str, *, attempts: int = 1) -> None:
        """Give a key an error of our own as its final reply (to each of its commands)."""
        self.routed.groups.append(NodeReplies(address, False, [index], [ReplyError(message)] * self.width(index),
                                              False))
        self.routed.attempts[index] = attempts
