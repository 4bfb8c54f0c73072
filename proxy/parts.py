"""What the parts of one proxy process share: its options, counters, the
backend's command table with what is asked of it per request, the dirty-key
recorder, the cluster rewriting, and the registry of its clients.

Everything here sits below the backend connections (``proxy.backend``), the
router (``proxy.routing``) and the clients (``proxy.client``), and knows none
of them: each of those gets the ``Parts`` it needs, and ``proxy.server``
builds them and ties them together.

Command kinds (``classify``), by name:

* ``SHARED``: stateless; forwarded on the client's multiplexed connection;
* ``BLOCKING``: pins the client to a connection of its own until its reply;
* ``XREAD``: ``XREAD``/``XREADGROUP``, blocking only with ``BLOCK``;
* ``SPECIAL``: changes the connection's state or is answered by the interlay;
* ``CONTROL``: ``SCRIPT``, ``FUNCTION``, ``SHUTDOWN``: some of their forms are
  control commands (``proxy.client.CONTROL_COMMANDS``); SCRIPT's others are
  ``SCRIPTED``, FUNCTION's and SHUTDOWN's ``SHARED``;
* ``SCRIPTED``: runs or carries a script (``EVAL``, ``EVALSHA``, ``FCALL``, their
  ``_RO`` forms, ``SCRIPT LOAD/FLUSH``): stateless, but on the node's script
  connections, so no other command queues behind a busy script, and never
  forwarded without the router's look (it remembers bodies and heals NOSCRIPT).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from eve.redis import resp
from proxy import dirty
from proxy.cluster import ClusterMap
from proxy.commands import CommandTable
from proxy.dirty import DirtyRecorder
from proxy.options import ProxyOptions
from proxy.stats import Stats

__all__ = ["BLOCKING", "CONTROL", "SCRIPTED", "SHARED", "SPECIAL", "XREAD", "Clients", "CommandCache", "Parts",
           "classify"]

log = logging.getLogger("eve.proxy")

SHARED, BLOCKING, XREAD, SPECIAL, CONTROL, SCRIPTED = 0, 1, 2, 3, 4, 5
MAX_NAME_CACHE = 10_000   # distinct spellings of command names remembered

SPECIAL_NAMES = frozenset((
    b"multi", b"exec", b"discard", b"watch", b"unwatch", b"select", b"auth", b"hello", b"client",
    b"subscribe", b"psubscribe", b"ssubscribe", b"unsubscribe", b"punsubscribe", b"sunsubscribe",
    b"monitor", b"reset", b"quit", b"asking", b"sync", b"psync", b"replconf",
))
# Blocking commands known before the backend's command table has arrived.
# WAIT and WAITAOF carry no "blocking" flag but wait for replicas.
BLOCKING_NAMES = frozenset((
    b"blpop", b"brpop", b"brpoplpush", b"blmove", b"blmpop", b"bzpopmin", b"bzpopmax", b"bzmpop",
    b"wait", b"waitaof",
))
CONTROL_NAMES = frozenset((b"script", b"function", b"shutdown"))
SCRIPTED_NAMES = frozenset((b"eval", b"evalsha", b"eval_ro", b"evalsha_ro", b"fcall", b"fcall_ro"))


def classify(name: bytes, table: CommandTable | None, cluster: bool) -> int:
    lower = name.lower()
    if lower in SPECIAL_NAMES:
        return SPECIAL
    if cluster and lower == b"cluster":
        return SPECIAL
    if lower == b"xread" or lower == b"xreadgroup":
        return XREAD
    if lower in CONTROL_NAMES:
        return CONTROL
    if lower in SCRIPTED_NAMES:
        return SCRIPTED
    if lower in BLOCKING_NAMES or (table is not None and table.is_blocking(lower)):
        return BLOCKING
    return SHARED


class CommandCache:
    """The backend's command table (``COMMAND``, asked by the first connection
    that comes up) and, cached by command name as sent, what the parts ask of
    it for every request: its kind, whether it may write, and the keys it changes."""

    __slots__ = ("process", "cluster", "table", "loading", "failed", "waiting", "kinds", "writes", "first_key",
                 "one_key")

    def __init__(self, process: str, cluster: bool) -> None:
        self.process = process          # names the process in logs
        self.cluster = cluster
        self.table: CommandTable | None = None
        self.loading = False
        self.failed = False             # the table could not be read: names alone decide
        self.waiting: set[Any] = set()  # clients whose requests wait for the table (wait_for_table)
        # Read directly on the clients' hot path; cleared (never replaced) when the table arrives.
        self.kinds: dict[bytes, int] = {}
        self.writes: dict[bytes, bool] = {}
        self.first_key: dict[bytes, bool] = {}   # name as sent -> a write whose one key is argument 1
        self.one_key: dict[bytes, bool] = {}     # name as sent -> names at most one key (may_span)

    def classify(self, name: bytes) -> int:
        kind = classify(name, self.table, self.cluster)
        if len(self.kinds) < MAX_NAME_CACHE:
            self.kinds[bytes(name)] = kind
        return kind

    def may_write(self, name: bytes) -> bool:
        """Whether a request named ``name`` can change keys."""
        found = self.writes.get(name)
        if found is None:
            found = dirty.may_write(self.table, name)
            # Before the table arrives the answer is a guess from names alone: not kept.
            if self.table is not None and len(self.writes) < MAX_NAME_CACHE:
                self.writes[bytes(name)] = found
        return found

    def marks(self, args: list[bytes], db: int) -> list[dirty.Mark]:
        """The ``(db, key)`` pairs one request may change (``proxy.dirty.marks``)."""
        return dirty.marks(self.table, args, db)

    def batch_marks(self, requests: list[list[bytes]], db: int) -> list[dirty.Mark]:
        """The marks of the writes of one pipeline run (``proxy.dirty.batch_marks``)."""
        return dirty.batch_marks(self.table, requests, db, self.first_key)

    def may_span(self, name: bytes) -> bool:
        """Whether a request named ``name`` (as sent) may name keys of more than one slot:
        only then are its keys looked up for the cross-slot count (``proxy.slots.CrossSlot``)."""
        one = self.one_key.get(name)
        if one is None:
            table = self.table
            one = table is not None and table.at_most_one_key(name)
            if table is not None and len(self.one_key) < MAX_NAME_CACHE:
                self.one_key[bytes(name)] = one
        return not one

    def keys(self, args: Sequence[bytes]) -> list[bytes]:
        """The keys of a request (none before the table arrives)."""
        table = self.table
        return table.keys(args) if table is not None else []

    def wait_for_table(self, client: Any) -> bool:
        """Whether ``client``'s requests must wait for the table (a live run's route or
        dirty-key tracking needs to know which requests write); its ``_schedule_resume``
        is called once the table arrived, or could not be read. False when no connection
        is asking for it (none could be opened): the requests go on, and get the backend's errors."""
        if self.failed or not self.loading:
            return False
        self.waiting.add(client)
        return True

    def table_request(self) -> tuple[bytes, Callable[[bytes | None], None]] | None:
        """``COMMAND`` and its callback, for a fresh connection to send ahead of
        the clients' commands, until the table has arrived."""
        if self.table is not None or self.loading:
            return None
        self.loading = True
        return resp.encode_command("COMMAND"), self._on_table

    def _on_table(self, frame: bytes | None) -> None:
        self.loading = False
        if frame is None:   # the connection went before the reply: the next one asks again
            self._wake()
            return
        try:
            parsed = resp.parse(frame)
            if parsed is None:
                raise ValueError("incomplete COMMAND reply")
            self.table = CommandTable.from_reply(parsed[0])
        except (ValueError, resp.ProtocolError, TypeError, IndexError) as exc:
            log.error("%s: cannot read the backend's command table (%s): writes are told from reads by "
                      "their names alone, and commands outside Eve's list are neither mirrored nor tracked",
                      self.process, exc)
            self.failed = True
            self._wake()
            return
        self.kinds.clear()
        self.writes.clear()
        self.first_key.clear()
        self.one_key.clear()
        log.info("%s: command table of %d commands loaded", self.process, len(self.table))
        self._wake()

    def _wake(self) -> None:
        waiting, self.waiting = self.waiting, set()
        for client in waiting:
            client._schedule_resume()


class Clients:
    """The clients of one process: who is connected, admission under
    ``max_connections`` (across the workers of an interlay through the
    counters their supervisor shares), and whether clients are read at all.

    ``counter``: a shared array (``multiprocessing.Array("q", workers, lock=False)``) with one
    slot per worker, ``slot`` this one's. Each worker writes its own slot alone and reads the
    others': no lock, so a worker killed with SIGKILL can neither leave one held (freezing the
    others and its successor) nor leak its count (its successor starts from a zeroed slot,
    issue 19). Workers admitting at the same instant may go past the limit by one each."""

    __slots__ = ("stats", "limit", "counter", "slot", "connected", "admitting", "paused", "_last_id")

    def __init__(self, stats: Stats, limit: int, counter: Any = None, slot: int = 0) -> None:
        self.stats = stats
        self.limit = limit
        self.counter = counter          # the workers' shared connection counts, or None
        self.slot = slot
        self.connected: set[Any] = set()
        self.admitting = True           # False once the process stops
        self.paused = False             # clients are not read (a cutover or rollback flips sides)
        self._last_id = 0

    def __iter__(self) -> Iterator[Any]:
        # A copy: closing a client while iterating removes it.
        return iter(list(self.connected))

    def __len__(self) -> int:
        return len(self.connected)

    def next_id(self) -> int:
        self._last_id += 1
        return self._last_id

    def admit(self, client: Any) -> bool:
        if not self.admitting:
            return False
        stats = self.stats
        counter = self.counter
        if (sum(counter) if counter is not None else stats.connections) >= self.limit:
            stats.rejected += 1
            return False
        stats.connections += 1
        if counter is not None:
            counter[self.slot] = stats.connections
        self.connected.add(client)
        return True

    def closed(self, client: Any) -> None:
        if client in self.connected:
            self.connected.discard(client)
            self.stats.connections -= 1
            if self.counter is not None:
                self.counter[self.slot] = self.stats.connections


@dataclass(frozen=True, slots=True)
class Parts:
    """What the backend connections, the router and the clients of one process use."""

    options: ProxyOptions
    stats: Stats
    commands: CommandCache
    dirty: DirtyRecorder
    cluster: ClusterMap | None      # rewriting for a cluster source, None for a standalone one

    @classmethod
    def of(cls, options: ProxyOptions, send: Callable[[Any], None]) -> Parts:
        """The parts of a process that sends its messages to the supervisor through ``send``."""
        cluster = ClusterMap([(node.host, node.port) for node in options.nodes], list(options.ports)) \
            if options.cluster else None
        return cls(options, Stats(), CommandCache(options.name, cluster is not None),
                   DirtyRecorder(options.worker, send), cluster)
