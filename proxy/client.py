"""One application client of an interlay, and where its commands go.

Routing (DESIGN.md section 5):

* Stateless commands go to the client's multiplexed connection (one of the
  node's ``pool_size`` shared connections for the client's RESP version),
  forwarded as the bytes that arrived, consecutive commands in one write.
* A client entering a stateful mode is *pinned* to a dedicated connection of
  its own until the mode ends: ``MULTI``/``WATCH`` until ``EXEC``/``DISCARD``/
  ``UNWATCH``; a blocking command (flag ``blocking`` in the backend's command
  table, ``XREAD``/``XREADGROUP`` only with ``BLOCK``) until its reply
  (``WAIT``/``WAITAOF`` go where the client's writes went: its shared connection,
  for at most ``MAX_SHARED_WAIT_MS``); Pub/Sub until the server confirms no subscription is left;
  ``SELECT`` of another db until ``SELECT 0``; ``ASKING`` for the command after
  it; a large request while it streams. CLIENT state (``SETNAME``,
  ``TRACKING``, ``REPLY``...), ``MONITOR`` and authenticating as another ACL
  user pin for the rest of the connection (or until ``RESET``).
* Authentication is the backend's: when the endpoint has credentials, a client
  starts on a connection without any (``BARE``), so whatever it sends, AUTH and
  HELLO AUTH included, is answered by the backend itself; once the backend
  accepts AUTH as the endpoint's own user, the client may use the shared
  connections. A failed AUTH leaves it unauthenticated.
* ``QUIT`` and ``RESET`` (when not pinned) are answered by the interlay; so
  are protocol errors, after which the connection is closed.
* Scripts (``EVAL``, ``FCALL`` and their ``_RO`` forms) go to the node's
  script connections, so nothing queues behind a busy script; control
  commands (``CONTROL_COMMANDS``: ``SCRIPT KILL``, ``CLIENT UNPAUSE``...) to its control
  connection (``proxy.backend``), once the client's earlier replies arrived.
* A client that does not read its replies has them buffered up to its output
  limits (hard, soft for some seconds), then is disconnected (issue 12).

Replies always come back in request order: a client has outstanding replies
on at most one backend connection at a time; a command for another one (or
answered locally) waits until those have arrived ("settled").

How a buffer of requests is routed (``_process``): a buffer of nothing but
complete stateless requests goes to the shared connection as it is (the hot
path); anything else is split into requests (``_route``), and consecutive
requests for one connection still go in one write (a *run*). The commands
that change a connection's mode are looked up in two tables: those that
leave counted replies behind (``_MODE_COMMANDS``: QUIT, RESET, Pub/Sub,
MONITOR) and those whose state the interlay follows (``_STATE_COMMANDS``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from eve.redis import resp
from eve.redis.framing import RequestScanner
from eve.redis.resp import MAX_INLINE
from proxy.backend import DEDICATED, Backend, Node, set_no_delay
from proxy.parts import BLOCKING, CONTROL, SCRIPTED, SHARED, SPECIAL, XREAD, Clients, Parts
from proxy.routing import COUNTED, DUAL, PLAIN, READ_TARGET, SCRIPT, SOURCE, DualBatch, Router
from proxy.slots import ClusterSide

__all__ = ["Client"]

log = logging.getLogger("eve.proxy")

SUBSCRIBE_NAMES = frozenset((b"subscribe", b"psubscribe", b"ssubscribe"))
UNSUBSCRIBE_NAMES = frozenset((b"unsubscribe", b"punsubscribe", b"sunsubscribe"))
# CLIENT subcommands that neither read nor change the calling connection's own state.
CLIENT_SHARED = frozenset((b"list", b"kill", b"pause", b"unpause", b"unblock", b"setinfo", b"help"))
# Control commands: they act on other connections or on a busy server, so they
# go to the node's control connection instead of queueing behind a shared one
# (issue 12): what the server runs while a script is busy (its ``allow_busy``
# commands that change no connection state: SCRIPT KILL, FUNCTION KILL and
# STATS, SHUTDOWN), and what must pass a stuck connection (CLIENT KILL,
# UNBLOCK, PAUSE, UNPAUSE: an UNPAUSE behind a paused write would never run).
# name -> subcommands (None: every form).
CONTROL_COMMANDS: dict[bytes, frozenset[bytes] | None] = {
    b"script": frozenset((b"kill",)),
    b"function": frozenset((b"kill", b"stats")),
    b"shutdown": None,
    b"client": frozenset((b"kill", b"unblock", b"pause", b"unpause")),
}
REPLICATION_NAMES = frozenset((b"sync", b"psync", b"replconf"))
CLUSTER_REWRITES = frozenset((b"slots", b"shards", b"nodes"))
# On a raw connection replies are not counted, so the outcome of these is
# unknown: they keep the connection pinned for good.
_RAW_STATE_NAMES = frozenset((b"multi", b"watch", b"select", b"auth", b"hello", b"client", b"asking"))
# Pin the client before they are sent (SELECT, CLIENT and HELLO only with some arguments).
_PINNING_NAMES = frozenset((b"multi", b"watch", b"asking", b"monitor", b"auth")) | SUBSCRIBE_NAMES \
    | UNSUBSCRIBE_NAMES

_OK = b"+OK\r\n"
# WAIT and WAITAOF count the replicas that acknowledged the calling connection's writes, so
# they go to the shared connection that carried them (a dedicated one made no write and
# answers at once); they hold it for at most this long, since other clients share it.
_WAIT_NAMES = frozenset((b"wait", b"waitaof"))
MAX_SHARED_WAIT_MS = 2000
_MULTI = resp.encode_command(b"MULTI")
_EMPTY_EXEC = b"*0\r\n"
_RESET = b"+RESET\r\n"
_MAX_CLIENTS = b"-ERR max number of clients reached\r\n"
MERGE_MARKS = 64   # keys of consecutive writes recorded together, at most
# A shared connection streaming a large reply to a client that does not read as
# fast is held for it while the client reads at least this many bytes per
# second, measured over each window (Client.hold_backend).
HOLD_MIN_RATE = 10 << 20
HOLD_WINDOW = 1.0
_NO_MAINT_NOTIFICATIONS = b"-ERR interlay: CLIENT MAINT_NOTIFICATIONS is not available through an interlay\r\n"
_NO_REPLICATION = b"-ERR interlay: replication commands (SYNC, PSYNC, REPLCONF) are not forwarded\r\n"
_NIL = {2: b"$-1\r\n", 3: b"_\r\n"}   # CLIENT GETNAME of a connection never named, by protocol

Tag = Callable[[bytes | None], bytes | None]   # sees a reply frame, returns the bytes to deliver


def _bounded_wait(args: list[bytes], raw: bytes) -> bytes:
    """WAIT/WAITAOF with its timeout (the last argument) at most ``MAX_SHARED_WAIT_MS``
    (0, wait for ever, included); a malformed one is left for the server to refuse."""
    timeout = args[-1]
    if len(args) < 3 or not timeout.isdigit() or 0 < int(timeout) <= MAX_SHARED_WAIT_MS:
        return raw
    return resp.encode_command(*args[:-1], MAX_SHARED_WAIT_MS)


def _swallow(frame: bytes | None) -> bytes | None:
    return None


def _xread_blocks(args: list[bytes]) -> bool:
    for arg in args[1:]:
        lower = arg.lower()
        if lower == b"streams":
            return False
        if lower == b"block":
            return True
    return False


def _is_error(frame: bytes | None) -> bool:
    return frame is None or frame[:1] in (b"-", b"!")


def _db_index(args: list[bytes]) -> int | None:
    """The db of ``SELECT n``, when it is one."""
    if len(args) == 2 and args[1].isdigit() and len(args[1]) < 10:
        return int(args[1])
    return None


class Client(asyncio.Protocol):
    __slots__ = (
        "stats", "commands", "kinds", "dirty", "router", "clients", "cluster", "loop",
        "node", "transport", "id", "slot", "buf", "protocol", "authenticated", "outstanding",
        "current", "shared", "pinned", "forever", "in_multi", "watching", "db", "asking", "stalled",
        "closing", "close_error", "quitting", "resetting", "reset_done", "req_stream", "write_paused",
        "pause_reasons", "paused_backend", "resume_scheduled", "rejected", "announce", "max_bulk", "max_args",
        "threshold", "scanner", "issued", "answered", "marks", "multi_marks", "wdb", "multi_deferred", "listener",
        "hard_limit", "soft_limit", "soft_seconds", "soft_since", "process", "hold_spent", "lib_info",
    )

    def __init__(self, parts: Parts, clients: Clients, router: Router, node: Node) -> None:
        self.stats = parts.stats
        self.commands = parts.commands
        self.kinds = parts.commands.kinds   # name as sent -> kind, read for every request
        self.dirty = parts.dirty
        self.cluster = parts.cluster
        self.router = router
        self.clients = clients
        self.loop = asyncio.get_running_loop()
        # The source master behind the listener it reached (the one node of a standalone source):
        # a cluster source's topology replies keep coming from there, whatever side serves the rest.
        self.listener = node
        self.node = self._side_node(router.primary)
        self.transport: asyncio.Transport | None = None
        self.id = clients.next_id()
        self.slot = self.id % node.pool_size
        self.buf = b""
        self.protocol = 2
        self.authenticated = not node.auth_required
        self.outstanding = 0          # replies owed by `current`
        self.current: Backend | None = None
        self.shared: Backend | None = None
        self.pinned: Backend | None = None
        self.forever = False          # pinned for the rest of the connection
        # CLIENT SETINFO requests (by attribute) sent on a shared connection: replayed on the
        # client's own connection once it asks about itself (CLIENT INFO/ID/LIST...).
        self.lib_info: dict[bytes, bytes] = {}
        self.in_multi = False
        self.watching = False
        self.db = 0
        self.asking = False
        self.stalled = False          # input waits until replies settle
        self.closing = False          # a protocol error: close once settled
        self.close_error = b""
        self.quitting = False
        self.resetting = False
        self.reset_done = False
        self.req_stream: list | None = None  # [conn, args_left, bytes_left, partial header]
        self.write_paused = False
        self.pause_reasons: set[str] = set()
        self.paused_backend: Backend | None = None
        self.resume_scheduled = False
        self.rejected = False
        options = parts.options
        self.process = options.name     # names the process in logs
        # The host cluster redirections name (the address the client reached, once connected).
        self.announce = options.listen_host if self.cluster is not None else ""
        self.max_bulk = options.max_bulk
        self.max_args = options.max_args
        self.threshold = options.stream_threshold
        # Output buffer limits (``client-output-buffer-limit normal``), checked
        # while the socket takes no more: ``soft_since`` is when the buffer went
        # over the soft limit (0: it is under).
        self.hard_limit = options.output_hard_limit
        self.soft_limit = options.output_soft_limit
        self.soft_seconds = options.output_soft_seconds
        self.soft_since = 0.0
        self.hold_spent = False       # a shared connection was held for it as long as it may be
        self.scanner = RequestScanner(options.max_bulk, options.max_args)
        # Dirty-key tracking: counted replies asked for and received since the
        # start; ``marks`` holds ``(issued count of the write, [(db, key)...])``
        # until its reply arrives; ``multi_marks`` the keys of writes queued in
        # MULTI until EXEC is sent; ``wdb`` the db the backend connection will
        # be in when it runs the next command (SELECT counts once sent).
        self.issued = 0
        self.answered = 0
        self.marks: deque | None = None
        self.multi_marks: list | None = None
        self.wdb = 0
        # MULTI answered by the interlay, to be sent with the first command queued after it
        # (on a cluster side, to the master of that command's keys).
        self.multi_deferred = False

    @property
    def peer(self) -> str:
        """The client's address, for logs."""
        peername = self.transport.get_extra_info("peername") if self.transport is not None else None
        return f"addr={peername[0]}:{peername[1]}" if peername else "addr=?"

    # -- transport events ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.clients.admit(self):
            self.rejected = True
            transport.write(_MAX_CLIENTS)  # type: ignore[attr-defined]
            transport.close()
            self.transport = None
            return
        set_no_delay(transport)
        if self.cluster is not None:
            sockname = transport.get_extra_info("sockname")
            if sockname:
                self.announce = sockname[0]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.rejected:
            return
        self.clients.closed(self)
        self.multi_marks = None
        conn = self.pinned
        if conn is not None:
            self.pinned = None
            conn.owner = None
            if self.req_stream is not None or conn.raw or self.forever or self.in_multi or self.watching \
                    or self.db or self.outstanding or conn.stream_to is self:
                conn.close()
                if self.marks:
                    # Replies owed on it will never come: the outcome is unknown.
                    self._release_marks(True)
            else:
                conn.node.release(conn)
        self.req_stream = None
        backend = self.paused_backend
        if backend is not None and backend.transport is not None:
            self.paused_backend = None
            backend.transport.resume_reading()

    def pause_writing(self) -> None:
        # The client does not read its replies: stop reading its requests too,
        # and hold a large reply streaming to it at the backend.
        self.write_paused = True
        self.pause_reading("write")
        for conn in (self.current, self.pinned):
            if conn is not None and conn.stream_to is self:
                self.hold_backend(conn)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.soft_since = 0.0
        self.hold_spent = False
        backend = self.paused_backend
        if backend is not None:
            self.paused_backend = None
            if backend.transport is not None:
                backend.transport.resume_reading()
        self.resume_reading("write")

    def hold_backend(self, conn: Backend) -> None:
        """``conn`` streams a large reply to this client, which does not read:
        ``conn`` is not read either until the client reads again, so a client
        reading a large value at its own pace costs the interlay no memory. A
        shared connection carries other clients' replies too (issue 12): it is
        held only while the client keeps reading, at least ``HOLD_MIN_RATE``
        over each ``HOLD_WINDOW``; past that it is not held again until the
        client has read what is buffered, and meanwhile what it brings for this
        client is buffered within the output limits. (New commands of others
        do not wait meanwhile: a held connection reads nothing, so it is soon
        retired as stuck, ``proxy.backend``.)"""
        shared = conn is not self.pinned
        transport = self.transport
        if conn.transport is not None and transport is not None and not (shared and self.hold_spent):
            conn.transport.pause_reading()
            self.paused_backend = conn
            if shared:
                self.loop.call_later(HOLD_WINDOW, self._end_hold, conn, transport.get_write_buffer_size())

    def _end_hold(self, conn: Backend, buffered_then: int) -> None:
        """The hold of a shared connection ends unless the client read enough since ``buffered_then``."""
        if self.paused_backend is not conn:
            return
        transport = self.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        if buffered and buffered_then - buffered >= HOLD_MIN_RATE * HOLD_WINDOW:
            self.loop.call_later(HOLD_WINDOW, self._end_hold, conn, buffered)
        else:
            self.hold_spent = True
            self.paused_backend = None
            if conn.transport is not None:
                conn.transport.resume_reading()

    def pause_reading(self, reason: str) -> None:
        if not self.pause_reasons and self.transport is not None:
            self.transport.pause_reading()
        self.pause_reasons.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason in self.pause_reasons:
            self.pause_reasons.discard(reason)
            if not self.pause_reasons and self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.req_stream is not None:
            data = self._stream_request(data)  # type: ignore[assignment]
            if not data:
                return
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.stalled or self.closing or self.clients.paused:
            self.buf = data
            if len(data) > 2 * self.threshold:
                self.pause_reading("stall")
            return
        self._process(data)

    # -- asked by the process (proxy.server) -----------------------------------------------

    def follow(self, primary: Node | ClusterSide) -> None:
        """A live run moved the authoritative side: a stateless client follows at
        its next command; a pinned client's state lives on the old side, so it is
        closed and reconnects."""
        if self.pinned is not None:
            self.close()
            return
        self.node = self._side_node(primary)
        self.shared = None

    def _side_node(self, primary: Node | ClusterSide | None) -> Node:
        """The node this client's commands go to while ``primary`` is authoritative (for a
        cluster side, the one it pins to and sends keyless state commands to)."""
        if primary is None or (self.cluster is not None and self.router.authoritative == SOURCE):
            return self.listener  # a cluster source: each listener's own master
        return primary.first if isinstance(primary, ClusterSide) else primary

    def awaiting_replies(self, pinned_too: bool) -> bool:
        """Replies are owed to it (to a pinned client: only when ``pinned_too``)."""
        return bool(self.outstanding) and (pinned_too or self.pinned is None)

    def close_if_pinned(self) -> None:
        if self.pinned is not None:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def unpause(self) -> None:
        """Read again after a pause; what arrived meanwhile is routed now."""
        self.resume_reading("pause")
        if self.buf and self.transport is not None:
            self.stalled = True
            self._schedule_resume()

    def busy(self) -> bool:
        """Requests in flight (for draining at stop)."""
        return bool(self.outstanding or self.req_stream is not None or (self.pinned is not None and
                    not self.pinned.raw and self.pinned.pending))

    # -- replies from backends ------------------------------------------------------------

    def deliver(self, data: bytes, frames: int) -> None:
        if frames:
            self.outstanding -= frames
            self.answered += frames
            if self.marks:
                self._release_marks(False)
            if not self.outstanding:
                self.current = None
                if (self.stalled or self.pinned is not None or self.closing) and not self.resume_scheduled:
                    self.resume_scheduled = True
                    self.loop.call_soon(self._resume)
        if data:
            transport = self.transport
            if transport is not None:
                transport.write(data)
                if self.write_paused:
                    self._check_output(transport)

    def _check_output(self, transport: asyncio.Transport) -> None:
        """Disconnect a client whose unread replies passed its output limits,
        freeing them: over the hard limit at once, over the soft one once it has
        stayed over for ``soft_seconds`` (the server's rule, ``networking.c``
        ``checkClientOutputBufferLimits``)."""
        size = transport.get_write_buffer_size()
        if self.hard_limit and size > self.hard_limit:
            self._over_limit(size, f"its hard limit of {self.hard_limit} bytes")
        elif self.soft_limit and size > self.soft_limit:
            now = time.monotonic()
            if not self.soft_since:
                self.soft_since = now
            elif now - self.soft_since >= self.soft_seconds:
                self._over_limit(size, f"its soft limit of {self.soft_limit} bytes for {self.soft_seconds:g}s")
        else:
            self.soft_since = 0.0

    def _over_limit(self, size: int, limit: str) -> None:
        log.warning("%s: client id=%d %s disconnected: %d bytes of unread replies, over %s",
                    self.process, self.id, self.peer, size, limit)
        self._abort()

    # -- dirty keys -----------------------------------------------------------------------

    def _release_marks(self, everything: bool) -> None:
        """Record the keys of the writes answered so far (all of them: their outcome is unknown)."""
        marks = self.marks
        answered = self.answered
        record = self.dirty.record
        while marks and (everything or marks[0][0] <= answered):
            record(marks.popleft()[1])

    def _uncounted(self) -> None:
        """Replies still owed will arrive uncounted (the connection went raw or
        was dropped): their writes' outcome is as good as known."""
        self.answered = self.issued
        if self.marks:
            self._release_marks(True)

    def _track(self, args: list[bytes], seq: int) -> None:
        """A write forwarded as the ``seq``-th counted request: its keys, once answered."""
        items = self.commands.marks(args, self.wdb)
        if items:
            self._track_marks(items, seq)

    def _track_marks(self, items: list, seq: int) -> None:
        """Marks to record once the ``seq``-th counted request is answered (those of
        writes queued in MULTI: once EXEC is)."""
        if self.in_multi:
            if self.multi_marks is None:
                self.multi_marks = items
            else:
                self.multi_marks.extend(items)
            return
        marks = self.marks
        if marks is None:
            marks = self.marks = deque()
        elif marks and marks[-1][0] == seq - 1 and len(marks[-1][1]) < MERGE_MARKS:
            # The write right before this one: recorded together, once this one is
            # answered (its reply follows the other's immediately).
            last = marks[-1][1]
            last.extend(items)
            marks[-1] = (seq, last)
            return
        marks.append((seq, items))

    def backend_failed(self, conn: Backend, count: int, error: bytes) -> None:
        self.stats.errors += count
        self.deliver(error * count, count)

    def broken(self, conn: Backend) -> None:
        """Half a reply was forwarded and the rest will never come, or the reply
        cannot be framed: the stream is lost, and nothing more may reach the client."""
        self._abort()

    def pinned_lost(self, conn: Backend, error: bytes) -> None:
        if self.pinned is not conn:
            return
        self.pinned = None
        if self.req_stream is not None and self.req_stream[0] is conn:
            self.req_stream = None
            self._abort()
            return
        if self.quitting:
            self.close()
            return
        if conn.raw or self.forever or self.in_multi or self.watching or self.db or not self.authenticated:
            # The connection's state (subscriptions, transaction, db, user...) is
            # gone with it; the server going away would have closed ours too.
            self.close()
            return
        self._schedule_resume()

    def barrier_reply(self, conn: Backend, settled: bool) -> None:
        self._schedule_resume()

    def reset_reply(self, conn: Backend) -> None:
        self.deliver(_RESET, 0)
        self.reset_done = True
        self._schedule_resume()

    def _schedule_resume(self) -> None:
        if not self.resume_scheduled:
            self.resume_scheduled = True
            self.loop.call_soon(self._resume)

    def _resume(self) -> None:
        self.resume_scheduled = False
        if self.transport is None:
            return
        if self.reset_done:
            self.reset_done = False
            self.resetting = False
            conn = self.pinned
            self.pinned = None
            if conn is not None:
                conn.owner = None
                conn.close()
            self._reset_state()
        self._maybe_release()
        if self.closing:
            if self._settled():
                self._finish_close()
            else:
                self._stall()
            return
        if self.stalled and not self.quitting and not self.resetting:
            self.stalled = False
            buf, self.buf = self.buf, b""
            if buf:
                self._process(buf)
            if not self.stalled:
                self.resume_reading("stall")

    # -- settling ---------------------------------------------------------------------

    def _settled(self) -> bool:
        conn = self.pinned
        if conn is not None and conn.raw:
            return conn.monitor or conn.barrier_settled
        return not self.outstanding and self.req_stream is None

    def _stall(self) -> bool:
        self.stalled = True
        conn = self.pinned
        if conn is not None and conn.raw and not conn.monitor and not conn.barrier_settled:
            conn.send_barrier()
        return False

    def _local(self, frame: bytes, *, error: bool = False) -> bool:
        """Answer from the interlay, in order: once earlier replies have arrived."""
        if not self._settled():
            return self._stall()
        stats = self.stats
        stats.ops += 1
        if error:
            stats.errors += 1
        if self.transport is not None:
            self.transport.write(frame)
        return True

    def _maybe_release(self) -> None:
        conn = self.pinned
        if conn is None:
            return
        if conn.raw:
            if self.forever or conn.monitor or conn.subscribed or self.resetting:
                return
            if conn.barrier_settled:
                conn.leave_raw()
            else:
                conn.send_barrier()
                return
        if self.outstanding or self.forever or self.in_multi or self.watching or self.db or self.asking \
                or self.req_stream is not None or not self.authenticated or conn.user != self.node.user \
                or conn.protocol != self.protocol or self.resetting or conn.stream_to is not None:
            return
        self.pinned = None
        conn.node.release(conn)

    # -- requests -------------------------------------------------------------------------

    def _process(self, buf: bytes) -> None:
        """Route every complete request in ``buf``; keep the rest for later."""
        if self.commands.table is None and (self.dirty.tracking or self.router.active) and self._await_table():
            self.buf = buf + self.buf if self.buf else buf
            return
        n = len(buf)
        if self.pinned is None and self.authenticated and not self.dirty.tracking and not self.router.active \
                and not self.clients.paused and not self.multi_deferred:
            # The hot path (kept inline: it runs for every read): only stateless
            # requests, all complete, for the shared connection in one write.
            end, count = self.scanner.scan_canonical(buf, self.kinds, SHARED, None)
            if end == n:
                conn = self.shared
                if conn is None or conn.closed or conn.retired:
                    conn = self._connect_shared()
                if conn is not None and (not self.outstanding or self.current is conn):
                    self._send(conn, buf, count)
                    return
        requests, end, error = self.scanner.scan(buf, not self.authenticated)
        if end == n and (self.dirty.tracking or self.router.active) and self._send_whole(buf, requests):
            return
        pos, routed_all = self._route(buf, requests)
        if routed_all:
            # Every complete request was routed: what follows is a protocol
            # error, or the start of a request still arriving.
            if error is not None:
                if error in _UNAUTHENTICATED_ERRORS and not self._settled():
                    # Redis judges a request by the AUTH before it: wait for its reply.
                    self.buf = buf[pos:] + self.buf if self.buf else buf[pos:]
                    self._stall()
                    return
                if not self.closing and self.transport is not None:
                    self._protocol_error(error)
                return
            if n - pos > MAX_INLINE and not self.stalled and not self.closing:
                pos = self._incomplete(buf, pos, n)
        if pos < n and not self.closing:
            self.buf = buf[pos:] + self.buf if self.buf else buf[pos:]
            if self.stalled and len(self.buf) > 2 * self.threshold:
                self.pause_reading("stall")

    def _await_table(self) -> bool:
        """Which requests write is known from the backend's command table only: a write
        sent before it arrived would be neither mirrored nor tracked, and so missing on the
        other sides. True when the requests wait (stalled) for it (``CommandCache.wait_for_table``)."""
        conn = self.shared
        if conn is None or conn.closed:
            self._connect_shared()   # a fresh connection asks for the table first
        if not self.commands.wait_for_table(self):
            return False
        self.stalled = True
        return True

    def _route(self, buf: bytes, requests: list) -> tuple[int, bool]:
        """Send the ``requests`` that ``RequestScanner.scan`` found in ``buf``, in
        order, until one has to wait. Consecutive stateless requests for one
        connection form a *run*, sent in one write when a request does not join
        it; consecutive dual writes form a run of their own, sent to every side
        in one write per side (``proxy.routing``). Returns where the requests
        routed end, and whether that is all of them."""
        kinds = self.kinds
        commands = self.commands
        clients = self.clients
        tracking = self.dirty.tracking
        router = self.router
        routing = router.active
        # From approval on, commands whose keys span slots are counted (proxy.slots.CrossSlot).
        cross_slot = router.cross_slot if tracking or routing else None
        pos = 0
        # The run: buf[run_start:pos] holds run_count requests for run_conn, not sent yet
        # (a run of all of buf slices to buf itself: no copy); run_dual: a run of dual
        # writes; run_writes: the arguments of its writes, whose keys are marked dirty.
        run_conn: Backend | None = None
        run_start = 0
        run_count = 0
        run_dual = False
        run_writes: list[list[bytes]] = []
        routed_all = False
        for end, args, name, argc in requests:
            if self.stalled or self.closing or self.transport is None or clients.paused:
                break
            if not argc:
                # An empty request: no reply. Skipped, or sent inside the run it stands in.
                if not run_count:
                    run_start = end
                pos = end
                continue
            if self.multi_deferred:
                if args is None:
                    args = self._args(buf[pos:end])
                opened = self._open_multi(args)
                if opened is None:
                    break
                if opened:
                    pos = end
                    continue
            kind = kinds.get(name)
            if kind is None:
                kind = commands.classify(name)
            if kind == CONTROL:
                if args is None:
                    args = self._args(buf[pos:end])
                # SCRIPT's other forms (LOAD, FLUSH, EXISTS) are the router's, like EVAL's.
                kind = SPECIAL if _is_control(args) else SCRIPTED if name.lower() == b"script" else SHARED
            stateless = (kind == SHARED or kind == SCRIPTED) and self.authenticated
            writes = False
            if cross_slot is not None and argc > 2 and commands.may_span(name):
                if args is None:
                    args = self._args(buf[pos:end])
                cross_slot.check(name, commands.keys(args))
            if stateless:
                if self.asking:
                    self.asking = False  # ASKING applies to the command right after it
                conn = self.pinned
                route = PLAIN
                # A live run's route (proxy.routing): stateless writes go to every side (a
                # pinned client's too, unless queued in MULTI, in another db, or on a raw
                # connection), a share of reads to the target.
                # On a cluster side (proxy.slots) every command is routed by slot.
                routable = routing and (conn is None or not (self.in_multi or self.wdb or conn.raw))
                writes = (tracking or routable) and commands.may_write(name)
                if kind == SCRIPTED:
                    if args is None:
                        args = self._args(buf[pos:end])
                    route = router.script_route(args, writes, routable)
                elif routable and (writes or (router.read_percent and conn is None) or router.every_side(name)):
                    if args is None:
                        args = self._args(buf[pos:end])
                    route = router.decide(args, writes)
                if route == READ_TARGET:
                    target = router.target
                    conn = target if target.__class__ is ClusterSide else \
                        target.shared_conn(self.protocol, self.slot)  # type: ignore[union-attr]
                elif conn is None and routable and router.slotted:
                    conn = router.primary  # type: ignore[assignment]
                if conn is None:
                    if kind == SCRIPTED:
                        conn = self.node.script_conn(self.protocol, self.slot)
                    else:
                        conn = self.shared
                        if conn is None or conn.closed or conn.retired:
                            conn = self._connect_shared()
                if conn.__class__ is ClusterSide:
                    # No NOSCRIPT healing by slot (the scripts were loaded on every master):
                    # an EVALSHA is a dual write or goes to its slot's master like any command.
                    if route == SCRIPT:
                        route = DUAL if writes and router.scripts_deterministic and router.mirrors else PLAIN
                    elif route == COUNTED:
                        route = PLAIN
                    dual = route == DUAL
                    # Dual writes make runs (the router splits them per request); the rest go one by one.
                    joins = run_count and dual and run_dual and conn is run_conn
                else:
                    dual = route == DUAL
                    joins = run_count and conn is run_conn and dual == run_dual and route != SCRIPT \
                        and route != COUNTED
            else:
                joins = False
            if not joins:
                if run_count:
                    # The run ends before this request.
                    self._send_run(run_conn, buf[run_start:pos], run_count, run_dual,  # type: ignore[arg-type]
                                   run_writes)
                    run_count = 0
                    run_writes = []
                if not stateless:
                    raw = buf[pos:end]
                    if not self._special(kind, self._args(raw) if args is None else args, raw):
                        break
                    pos = end
                    continue
                if conn is None:
                    if not self._local(self.node.unavailable(), error=True):
                        break
                    pos = end
                    continue
                if conn.__class__ is ClusterSide and not dual:
                    if not self._send_by_slot(conn, self._args(buf[pos:end]) if args is None else args,  # type: ignore[arg-type]
                                              buf[pos:end]):
                        break
                    pos = end
                    continue
                if not self._may_send(conn, route == SCRIPT or (dual and router.both)):
                    self._stall()
                    break
                if conn.raw:
                    self._send_uncounted(conn, name, args, buf[pos:end])
                    pos = end
                    continue
                if route == SCRIPT or route == COUNTED:
                    self._script_call(conn, route, args, writes, buf[pos:end])  # type: ignore[arg-type]
                    pos = end
                    continue
                run_conn = conn
                run_start = pos
                run_dual = dual
            run_count += 1
            if tracking and writes:
                run_writes.append(self._args(buf[pos:end]) if args is None else args)
            pos = end
        else:
            routed_all = True
        if run_count:
            self._send_run(run_conn, buf[run_start:pos], run_count, run_dual, run_writes)  # type: ignore[arg-type]
        return pos, routed_all

    def _args(self, raw: bytes) -> list[bytes]:
        """The arguments of one request (which the scanner found complete)."""
        return resp.parse_command(raw, 0, max_bulk=self.max_bulk, max_args=self.max_args)[0]  # type: ignore[index]

    def _connect_shared(self) -> Backend | None:
        """The client's shared connection for its RESP version, (re)connected; None while the node is down."""
        conn = self.shared = self.node.shared_conn(self.protocol, self.slot)
        return conn

    def _send(self, conn: Backend, data: bytes, count: int, tag: Tag | None = None) -> None:
        """``count`` requests to ``conn``, their replies to this client (on a raw
        connection they are not counted)."""
        stats = self.stats
        stats.ops += count
        stats.backend_ops += count
        if conn.raw:
            conn.send_raw(data)
        else:
            conn.send(self, data, count, tag)
            self.outstanding += count
            self.issued += count
            self.current = conn
        if conn.write_paused:
            conn.hold(self)

    def _send_uncounted(self, conn: Backend, name: bytes, args: list[bytes] | None, raw: bytes) -> None:
        """A request on a raw connection (Pub/Sub, MONITOR, CLIENT REPLY OFF). No reply
        is counted there, so a write's keys are recorded as soon as it is forwarded."""
        self._send(conn, raw, 1)
        if self.dirty.tracking and self.commands.may_write(name):
            if args is None:
                args = self._args(raw)
            self.dirty.record(self.commands.marks(args, self.wdb))

    def _send_by_slot(self, side: ClusterSide, args: list[bytes], raw: bytes) -> bool:
        """A request for a cluster side: to the master(s) owning its keys (``proxy.slots``);
        its reply comes back in order with the client's others on that side."""
        if self.outstanding and self.current is not side:
            return self._stall()
        if self.dirty.tracking and self.commands.may_write(args[0]):
            self._track(args, self.issued + 1)
        stats = self.stats
        stats.ops += 1
        stats.backend_ops += 1
        # Counted before sending: a refused request (CROSSSLOT) is answered at once.
        self.outstanding += 1
        self.issued += 1
        self.current = side  # type: ignore[assignment]
        side.send(self, args, raw, self.protocol, self.slot, order=self)
        return True

    def _send_whole(self, buf: bytes, requests: list) -> bool:
        """The hot path while dirty keys are tracked or a route is set: ``buf`` holds
        nothing but complete stateless requests for the client's shared connection
        (under a route: nothing but writes mirrored to every side), sent as one run
        in one write per side, the keys of its writes marked together. False
        (nothing sent) when ``buf`` needs ``_route``."""
        router = self.router
        routing = router.active
        if self.pinned is not None or not self.authenticated or self.asking or self.clients.paused \
                or self.multi_deferred or (routing and (router.read_percent or not router.mirrors or router.slotted)):
            return False
        kinds = self.kinds
        may_write = self.commands.may_write
        may_span = self.commands.may_span
        writes = []
        spanning = None
        for _, args, name, argc in requests:
            if args is None or kinds.get(name) != SHARED:
                return False
            if may_write(name):
                if routing and not router.always_mirrored(name):
                    return False
                writes.append(args)
            elif routing:
                return False  # a read among dual writes: _route makes runs of each
            if argc > 2 and may_span(name):
                if spanning is None:
                    spanning = []
                spanning.append(args)
        conn = self.shared
        if conn is None or conn.closed or conn.retired:
            conn = self._connect_shared()
        if conn is None or not self._may_send(conn, routing and router.both):
            return False
        if spanning:
            # From approval on, commands whose keys span slots are counted (proxy.slots.CrossSlot).
            keys, check = self.commands.keys, router.cross_slot.check
            for args in spanning:
                check(args[0], keys(args))
        self._send_run(conn, buf, len(requests), routing, writes if self.dirty.tracking else [])
        return True

    def _may_send(self, conn: Backend | ClusterSide, held: bool) -> bool:
        """Whether a request for ``conn`` can go now: no reply is owed on another
        connection. A batch whose replies are held (BOTH_REQUIRED, a healable
        EVALSHA) may follow another held batch on ``conn``: they are delivered in order."""
        current = self.current
        if not self.outstanding or current is conn:
            return True
        return held and current.__class__ is DualBatch and current.conn is conn  # type: ignore[union-attr]

    def _send_run(self, conn: Backend | ClusterSide, data: bytes, count: int, dual: bool, writes: list[list[bytes]]) -> None:
        """A run of ``count`` requests; ``writes``: the arguments of its writes, whose
        keys are marked dirty once answered (on every side, for dual writes)."""
        marks = self.commands.batch_marks(writes, self.wdb) if writes else []
        if dual:
            self._dual_write(conn, data, count, marks)
            return
        if marks:
            self._track_marks(marks, self.issued + count)
        self._send(conn, data, count)

    def _dual_write(self, conn: Backend | ClusterSide, data: bytes, count: int, marks: list, *, heal: bool = False,
                    mirror: bool = True) -> None:
        """A batch of requests for every side of a live run (``proxy.routing``), or (not
        ``mirror``) for the authoritative side alone, its NOSCRIPT healed (``heal``)."""
        stats = self.stats
        stats.ops += count
        stats.backend_ops += count
        router = self.router
        held = heal or router.both
        current = self.current
        before = current if held and self.outstanding and current.__class__ is DualBatch else None
        # Counted before sending: a cluster side may answer some at once (CROSSSLOT, no master).
        self.outstanding += count
        self.issued += count
        sink = router.send_batch(self, conn, data, count, marks, before,  # type: ignore[arg-type]
                                 mirror=mirror, heal=heal)
        # Held replies come through the batch: what does not follow it waits for it.
        if self.outstanding:
            self.current = sink if held else conn  # type: ignore[assignment]

    def _script_call(self, conn: Backend, route: int, args: list[bytes], writes: bool, raw: bytes) -> None:
        """An EVALSHA on its own: its NOSCRIPT reply healed when the interlay knows the
        script (SCRIPT), or counted on its way to the client (COUNTED)."""
        marks = self.commands.marks(args, self.wdb) if writes and self.dirty.tracking else []
        router = self.router
        if route == SCRIPT:
            mirror = writes and router.scripts_deterministic and bool(router.mirrors)
            self._dual_write(conn, raw, 1, marks, heal=True, mirror=mirror)
            return
        if marks:
            self._track_marks(marks, self.issued + 1)
        self._send(conn, raw, 1, router.noscript_tag)

    def _special(self, kind: int, args: list[bytes], raw: bytes) -> bool:
        """One request that needs more than forwarding; False when it has to wait."""
        name = args[0].lower()
        if self.pinned is not None:
            return self._pinned_command(name, args, raw)
        if name == b"quit":
            return self._quit()
        if name == b"reset":
            if not self._settled():
                return self._stall()
            self._reset_state()
            return self._local(_RESET)
        if not self.authenticated:
            # Until the backend accepts its AUTH, the client talks to a connection
            # that carries no credentials: the backend answers it, NOAUTH included.
            if not self._settled():
                return self._stall()
            if name in REPLICATION_NAMES:
                return self._local(_NO_REPLICATION, error=True)
            conn = self.node.bare()
            if conn is None:
                return self._local(self.node.unavailable(), error=True)
            self._pin(conn)
            return self._pinned_command(name, args, raw)
        if name in _WAIT_NAMES:
            return self._send_shared(_bounded_wait(args, raw))
        if kind == BLOCKING or (kind == XREAD and _xread_blocks(args)):
            return self._pin_and_send(name, args, raw)
        if kind == XREAD:
            return self._send_shared(raw, track=args)
        if name == b"multi" and self.router.slotted:
            # The transaction runs on the master of its keys, known with its first command.
            if not self._settled():
                return self._stall()
            self.multi_deferred = True
            return self._local(_OK)
        if name in _PINNING_NAMES:
            return self._pin_and_send(name, args, raw)
        if name == b"select":
            if len(args) == 2 and args[1] != b"0" and args[1].isdigit():
                return self._pin_and_send(name, args, raw)
            return self._send_shared(raw)
        if name in CONTROL_COMMANDS and _is_control(args):
            return self._send_control(raw)
        if name == b"client":
            sub = args[1].lower() if len(args) > 1 else b""
            if sub == b"getname" and len(args) == 2:
                # Never named (a SETNAME pins the client to a connection of its own):
                # nil, as the server answers, and no connection spent on it.
                return self._local(_NIL[self.protocol])
            if sub == b"setinfo" and len(args) == 4:
                self.lib_info[args[2].lower()] = raw
            if sub in CLIENT_SHARED or not sub:
                return self._send_shared(raw)
            if sub == b"maint_notifications":
                # Maintenance push notifications describe the backend's own node moves,
                # which the interlay hides; clients (redis-py 8 "auto") go on without.
                return self._local(_NO_MAINT_NOTIFICATIONS, error=True)
            return self._pin_and_send(name, args, raw)
        if name == b"hello":
            proto, user, setname = _hello_options(args)
            if user is not None or setname:
                return self._pin_and_send(name, args, raw)
            protocol = proto if proto in (2, 3) else self.protocol
            return self._send_shared(raw, protocol=protocol, tag=self._hello_tag(None, proto, None))
        if name in REPLICATION_NAMES:
            return self._local(_NO_REPLICATION, error=True)
        if name == b"cluster":
            sub = args[1].lower() if len(args) > 1 else b""
            if sub in CLUSTER_REWRITES:
                return self._send_topology(raw, self._cluster_tag(sub))
            return self._send_shared(raw)
        # exec, discard, unwatch outside a transaction: stateless on a clean connection.
        return self._send_shared(raw)

    def _send_shared(self, raw: bytes, *, protocol: int | None = None, tag: Tag | None = None,
                     track: list[bytes] | None = None) -> bool:
        protocol = self.protocol if protocol is None else protocol
        if protocol == self.protocol:
            conn = self.shared
            if conn is None or conn.closed or conn.retired:
                conn = self._connect_shared()
        else:
            conn = self.node.shared_conn(protocol, self.slot)
        if conn is None:
            return self._local(self.node.unavailable(), error=True)
        if self.outstanding and self.current is not conn:
            return self._stall()
        if track is not None and self.dirty.tracking and self.commands.may_write(track[0]):
            self._track(track, self.issued + 1)
        self._send(conn, raw, 1, tag)
        return True

    def _send_control(self, raw: bytes) -> bool:
        """A control command, on the node's control connection, once earlier replies arrived."""
        if not self._settled():
            return self._stall()
        conn = self.node.control_conn(self.protocol)
        if conn is None:
            return self._local(self.node.unavailable(), error=True)
        self._send(conn, raw, 1)
        return True

    def _send_topology(self, raw: bytes, tag: Tag) -> bool:
        """CLUSTER SLOTS/SHARDS/NODES of a cluster source, rewritten to the interlay's listeners:
        asked of the listener's own source master even after a cutover, so the clients keep the
        topology they know while every other command goes by slot to the target."""
        if self.node is self.listener:
            return self._send_shared(raw, tag=tag)
        conn = self.listener.shared_conn(self.protocol, self.slot)
        if conn is None:
            return self._local(self.listener.unavailable(), error=True)
        if self.outstanding and self.current is not conn:
            return self._stall()
        self._send(conn, raw, 1, tag)
        return True

    def _pin(self, conn: Backend) -> None:
        self.pinned = conn
        conn.owner = self

    def _open_multi(self, args: list[bytes]) -> bool | None:
        """The first command after a deferred MULTI: pin to the master of its keys and send
        MULTI there first (its ``+OK`` was the interlay's). True when the command was
        answered here (EXEC or DISCARD of an empty transaction, or no master reachable),
        False when it goes on to the pinned connection, None when it has to wait."""
        name = args[0].lower()
        if name in (b"exec", b"discard"):
            if not self._local(_EMPTY_EXEC if name == b"exec" else _OK):
                return None
            self.multi_deferred = False
            return True
        if not self._settled():
            self._stall()
            return None
        self.multi_deferred = False
        primary: ClusterSide = self.router.primary  # type: ignore[assignment]
        conn = primary.node_for(self.commands.keys(args)).dedicated(self.protocol)
        if conn is None:
            # No transaction was opened: EXEC will say so ("EXEC without MULTI").
            return True if self._local(primary.unavailable(), error=True) else None
        self._pin(conn)
        conn.send(None, _MULTI, 1, _swallow)
        self.in_multi = True
        return False

    def _pin_and_send(self, name: bytes, args: list[bytes], raw: bytes) -> bool:
        if not self._settled():
            return self._stall()
        node = self.node
        primary = self.router.primary
        if self.router.slotted:
            node = primary.node_for(self.commands.keys(args))  # type: ignore[union-attr]  # BLPOP waits where its key lives
        conn = node.dedicated(self.protocol)
        if conn is None:
            return self._local(self.node.unavailable(), error=True)
        self._pin(conn)
        return self._pinned_command(name, args, raw)

    # -- pinned clients -------------------------------------------------------------------

    def _pinned_command(self, name: bytes, args: list[bytes], raw: bytes) -> bool:
        """A request of a pinned client: forwarded to its connection, following the
        mode it enters or leaves (``_MODE_COMMANDS``, ``_STATE_COMMANDS``)."""
        conn: Backend = self.pinned  # type: ignore[assignment]
        if name in REPLICATION_NAMES:
            return self._local(_NO_REPLICATION, error=True)
        mode = _MODE_COMMANDS.get(name)
        if mode is not None:
            mode(self, conn, raw)
            return True
        if conn.raw:
            if name in _RAW_STATE_NAMES:
                self.forever = True
            self._send_uncounted(conn, name, args, raw)
            return True
        if self.asking and name != b"asking":
            self.asking = False
        state = _STATE_COMMANDS.get(name)
        tag = state(self, conn, name, args) if state is not None else None
        if self.dirty.tracking and self.commands.may_write(name):
            self._track(args, self.issued + 1)
        self._send(conn, raw, 1, tag)
        return True

    def _go_raw(self, conn: Backend) -> None:
        """From now on every frame of ``conn`` comes to this client uncounted."""
        conn.enter_raw()
        self.outstanding = 0
        self.current = None
        self._uncounted()

    # Commands after which counted replies stop (or nothing after them is read):
    # ``(self, conn, raw)``, each sends the request itself.

    def _mode_quit(self, conn: Backend, raw: bytes) -> None:
        # Answered by the backend; nothing after it is read.
        self.quitting = True
        self.stalled = True
        self._send(conn, raw, 1)

    def _mode_reset(self, conn: Backend, raw: bytes) -> None:
        # Answered by the backend, which then closes this connection; nothing
        # after it is read until the reply.
        self.resetting = True
        self.stalled = True
        if conn.raw:
            conn.reset_pending = True
            self._send(conn, raw, 1)
        else:
            self._send(conn, raw, 1, self._reset_tag())

    def _mode_subscribe(self, conn: Backend, raw: bytes) -> None:
        if not conn.raw:
            self._go_raw(conn)
        self._send(conn, raw, 1)

    def _mode_unsubscribe(self, conn: Backend, raw: bytes) -> None:
        self._mode_subscribe(conn, raw)
        if not self.forever:
            # The confirmations tell how many subscriptions are left; the
            # barrier tells when they have all arrived.
            conn.send_barrier()

    def _mode_monitor(self, conn: Backend, raw: bytes) -> None:
        self._go_raw(conn)
        conn.monitor = True
        self.forever = True
        self._send(conn, raw, 1)

    # Commands whose effect on the connection the interlay follows:
    # ``(self, conn, name, args)`` -> the tag that sees their reply, or None.

    def _state_multi(self, conn: Backend, name: bytes, args: list[bytes]) -> Tag | None:
        self.in_multi = True
        return None

    def _state_transaction_end(self, conn: Backend, name: bytes, args: list[bytes]) -> Tag | None:
        """EXEC or DISCARD."""
        if self.in_multi and self.multi_marks and name == b"exec":
            self.router.cross_slot.check(name, [key for _, key in self.multi_marks if key is not None])
            # The queued writes run when EXEC does: recorded after its reply.
            if self.marks is None:
                self.marks = deque()
            self.marks.append((self.issued + 1, self.multi_marks))
        self.multi_marks = None
        self.in_multi = False
        self.watching = False
        return None

    def _state_watch(self, conn: Backend, name: bytes, args: list[bytes]) -> Tag | None:
        if not self.in_multi:
            self.watching = True
        return None

    def _state_unwatch(self, conn: Backend, name: bytes, args: list[bytes]) -> Tag | None:
        if not self.in_multi:
            self.watching = False
        return None

    def _state_asking(self, conn: Backend, name: bytes, args: list[bytes]) -> Tag | None:
        self.asking = True
        return None

    def _state_select(self, conn: Backend, name: bytes, args: list[bytes]) -> Tag | None:
        db = _db_index(args)
        if self.in_multi:
            self.forever = True  # queued: its outcome is only known inside EXEC's reply
            if db is not None:
                self.wdb = db
            return None
        if db is None:
            return None
        self.wdb = db
        return self._select_tag(db)

    def _state_auth(self, conn: Backend, name: bytes, args: list[bytes]) -> Tag | None:
        if self.in_multi:
            self.forever = True  # queued: its outcome is only known inside EXEC's reply
            return None
        if len(args) == 2:
            return self._auth_tag(conn, b"default", None)
        if len(args) == 3:
            return self._auth_tag(conn, args[1], None)
        return None

    def _state_hello(self, conn: Backend, name: bytes, args: list[bytes]) -> Tag | None:
        if self.in_multi:
            self.forever = True  # queued: its outcome is only known inside EXEC's reply
            return None
        proto, user, setname = _hello_options(args)
        if setname:
            self._replay_identity(conn)
            self.forever = True
        return self._hello_tag(conn, proto, user)

    def _state_client(self, conn: Backend, name: bytes, args: list[bytes]) -> Tag | None:
        sub = args[1].lower() if len(args) > 1 else b""
        if sub == b"reply" and len(args) > 2 and args[2].lower() in (b"off", b"skip"):
            # Replies stop coming (or skip one): nothing can be counted any more.
            self._go_raw(conn)
            self.forever = True
        elif sub == b"setinfo":
            # Set on the client's own connection: it must not go back to the idle pool with it.
            self.forever = True
        elif sub and sub not in CLIENT_SHARED:
            self._replay_identity(conn)
            self.forever = True
        return None

    def _replay_identity(self, conn: Backend) -> None:
        """The connection becomes the client's own for good (it asks about itself or names
        itself): what it told the shared connection about itself (CLIENT SETINFO) is told
        again here first, so CLIENT INFO/LIST show it as directly."""
        if not self.forever and conn.kind == DEDICATED:
            for raw in self.lib_info.values():
                conn.send(None, raw, 1, _swallow)

    def _state_cluster(self, conn: Backend, name: bytes, args: list[bytes]) -> Tag | None:
        sub = args[1].lower() if len(args) > 1 else b""
        if self.cluster is not None and sub in CLUSTER_REWRITES:
            return self._cluster_tag(sub)
        return None

    # -- reply tags -----------------------------------------------------------------------

    def _auth_tag(self, conn: Backend, user: bytes, protocol: int | None) -> Tag:
        def on_reply(frame: bytes | None) -> bytes | None:
            if not _is_error(frame):
                conn.user = user
                self.authenticated = True
                if protocol in (2, 3):
                    conn.protocol = protocol  # type: ignore[assignment]
                    self._set_protocol(protocol)  # type: ignore[arg-type]
                if user != self.node.user:
                    self.forever = True  # another ACL user: its permissions are not the pool's
            return frame
        return on_reply

    def _hello_tag(self, conn: Backend | None, proto: int | None, user: bytes | None) -> Tag:
        if conn is not None and user is not None:
            return self._auth_tag(conn, user, proto)

        def on_reply(frame: bytes | None) -> bytes | None:
            if not _is_error(frame) and proto in (2, 3):
                if conn is not None:
                    conn.protocol = proto  # type: ignore[assignment]
                self._set_protocol(proto)  # type: ignore[arg-type]
            return frame
        return on_reply

    def _select_tag(self, db: int) -> Tag:
        def on_reply(frame: bytes | None) -> bytes | None:
            if not _is_error(frame):
                self.db = db
            elif self.wdb == db:
                self.wdb = self.db
            return frame
        return on_reply

    def _reset_tag(self) -> Tag:
        def on_reply(frame: bytes | None) -> bytes | None:
            self.reset_done = True
            self._schedule_resume()
            return frame
        return on_reply

    def _cluster_tag(self, sub: bytes) -> Tag:
        cluster = self.cluster

        def on_reply(frame: bytes | None) -> bytes | None:
            if frame is None or cluster is None:
                return frame
            try:
                return cluster.rewrite_reply(sub, frame, self.announce)
            except (resp.ProtocolError, ValueError, TypeError):
                log.exception("cannot rewrite CLUSTER %s", sub.decode())
                return frame
        return on_reply

    def _set_protocol(self, protocol: int) -> None:
        if protocol != self.protocol:
            self.protocol = protocol
            self.shared = None

    def _reset_state(self) -> None:
        self.protocol = 2
        self.shared = None
        self.authenticated = not self.node.auth_required
        self.forever = self.in_multi = self.watching = self.asking = self.multi_deferred = False
        self.db = 0
        self.wdb = 0
        self.multi_marks = None

    # -- closing ------------------------------------------------------------------------

    def _quit(self) -> bool:
        if not self._local(_OK):
            return False
        self.quitting = True
        self.stalled = True
        self.close()
        return True

    def _protocol_error(self, message: str) -> None:
        """Redis answers ``-ERR Protocol error: ...`` and closes; earlier replies go first."""
        self.stats.protocol_errors += 1
        log.info("%s: client id=%d %s: %s; closing the connection", self.process, self.id, self.peer, message)
        self.closing = True
        self.close_error = b"-ERR " + message.encode("utf-8", "replace") + b"\r\n"
        self.buf = b""
        self.pause_reading("closing")
        if self._settled():
            self._finish_close()
        else:
            self._stall()

    def _finish_close(self) -> None:
        transport = self.transport
        if transport is None:
            return
        self.stats.errors += 1
        transport.write(self.close_error)
        transport.close()

    def _abort(self) -> None:
        """Close at once, dropping what is buffered; nothing is written after it."""
        transport = self.transport
        if transport is not None:
            self.transport = None
            transport.abort()

    # -- large requests -------------------------------------------------------------------

    def _incomplete(self, buf: bytes, pos: int, n: int) -> int:
        """An incomplete request with a lot buffered: stream it to a dedicated
        connection as it arrives instead of holding it whole. Returns the new position."""
        info = self.scanner.partial(buf, pos)
        if info is None or info.name is None:
            return pos
        if n - pos <= self.threshold and info.bulk_len <= self.threshold:
            return pos
        kind = self.commands.classify(info.name)
        if kind == SPECIAL or not self.authenticated:
            return pos
        if self.dirty.tracking and self.commands.may_write(info.name) or self.router.slotted:
            # Its keys are needed once it is answered, or to route it: buffered whole, not streamed.
            return pos
        conn = self.pinned
        if conn is None:
            if not self._settled():
                self._stall()
                self.pause_reading("stall")
                return pos
            conn = self.node.dedicated(self.protocol)
            if conn is None:
                return pos
            self._pin(conn)
        elif conn.raw:
            return pos
        self._send(conn, buf[pos:n], 1)
        if info.bulk_len >= 0:
            left, head = info.data_start + info.bulk_len + 2 - n, b""
        else:
            left, head = 0, buf[info.arg_pos:n]
        self.req_stream = [conn, info.args_left, left, head]
        return n

    def _stream_request(self, data: bytes) -> bytes | None:
        state = self.req_stream
        conn, args_left, left, head = state  # type: ignore[misc]
        n = len(data)
        i = 0
        while args_left:
            if left:
                take = min(left, n - i)
                i += take
                left -= take
                if left:
                    break
                args_left -= 1
                continue
            if i >= n:
                break
            newline = data.find(b"\n", i)
            if newline < 0:
                head += data[i:]
                i = n
                if len(head) > MAX_INLINE:
                    return self._stream_error(conn, "Protocol error: too big bulk count string")
                break
            line = head + data[i : newline + 1]
            head = b""
            i = newline + 1
            digits = line[1:-2]
            if line[:1] != b"$" or line[-2:] != b"\r\n" or not digits.isdigit() or len(digits) > 18:
                return self._stream_error(conn, "Protocol error: invalid bulk length")
            length = int(digits)
            if length > self.max_bulk:
                return self._stream_error(conn, "Protocol error: invalid bulk length")
            left = length + 2
        if conn.closed:
            self.req_stream = None
            self._abort()
            return None
        chunk = data if i == n else data[:i]
        conn.write(chunk)
        if conn.write_paused:
            conn.hold(self)
        if args_left:
            state[1], state[2], state[3] = args_left, left, head  # type: ignore[index]
            return None
        self.req_stream = None
        if not self.outstanding:
            self._schedule_resume()
        return data[i:] if i < n else None

    def _stream_error(self, conn: Backend, message: str) -> None:
        # The backend holds half a request: that connection cannot be used again.
        self.req_stream = None
        if self.pinned is conn:
            self.pinned = None
        conn.owner = None
        conn.close()
        self.outstanding = 0
        self.current = None
        self._uncounted()
        self.stats.protocol_errors += 1
        self.closing = True
        self.close_error = b"-ERR " + message.encode() + b"\r\n"
        self._finish_close()


_UNAUTHENTICATED_ERRORS = frozenset((resp.E_UNAUTHENTICATED_MULTIBULK, resp.E_UNAUTHENTICATED_BULK))

_ModeCommand = Callable[[Client, Backend, bytes], None]
_StateCommand = Callable[[Client, Backend, bytes, list], "Tag | None"]

_MODE_COMMANDS: dict[bytes, _ModeCommand] = {
    b"quit": Client._mode_quit,
    b"reset": Client._mode_reset,
    **{name: Client._mode_subscribe for name in SUBSCRIBE_NAMES},
    **{name: Client._mode_unsubscribe for name in UNSUBSCRIBE_NAMES},
    b"monitor": Client._mode_monitor,
}
_STATE_COMMANDS: dict[bytes, _StateCommand] = {
    b"multi": Client._state_multi,
    b"exec": Client._state_transaction_end,
    b"discard": Client._state_transaction_end,
    b"watch": Client._state_watch,
    b"unwatch": Client._state_unwatch,
    b"asking": Client._state_asking,
    b"select": Client._state_select,
    b"auth": Client._state_auth,
    b"hello": Client._state_hello,
    b"client": Client._state_client,
    b"cluster": Client._state_cluster,
}


def _is_control(args: list[bytes]) -> bool:
    """Whether a request is a control command (``CONTROL_COMMANDS``)."""
    subs = CONTROL_COMMANDS.get(args[0].lower(), frozenset())
    return subs is None or (len(args) > 1 and args[1].lower() in subs)


def _hello_options(args: list[bytes]) -> tuple[int | None, bytes | None, bool]:
    """HELLO [protover [AUTH username password] [SETNAME clientname]]: (protover, username, setname)."""
    proto = None
    if len(args) > 1:
        try:
            proto = int(args[1])
        except ValueError:
            proto = -1
    user = None
    setname = False
    i = 2
    while i < len(args):
        option = args[i].lower()
        if option == b"auth" and i + 2 < len(args):
            user = args[i + 1]
            i += 3
        elif option == b"setname" and i + 1 < len(args):
            setname = True
            i += 2
        else:
            break
    return proto, user, setname
