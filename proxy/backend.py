"""Connections from a proxy process to a backend node.

A ``Backend`` is one connection, in one of four kinds:

* ``SHARED``: one of the node's multiplexed connections
  (``connection_pool.multiplexed_connections`` per RESP version), carrying the
  stateless commands of many clients. Replies are matched to clients by
  counting: every command gets exactly one reply, in order. Scripts (EVAL,
  FCALL...) have shared connections of their own (``script_conn``): a busy
  script holds up other scripts only, never the other commands, which reach
  the server at once and are answered ``-BUSY`` past its busy-reply-threshold,
  as directly.
* ``DEDICATED``: pinned to one client for as long as it is in a stateful mode
  (MULTI, WATCH, a blocking command, Pub/Sub, SELECT of another db, CLIENT
  state, another ACL user); a clean one goes back to the node's idle cache
  for the next pin. Handshaken like a shared one.
* ``BARE``: dedicated, but with no handshake at all, for clients that have not
  authenticated yet when the endpoint needs credentials: whatever they send,
  AUTH included, is checked by the backend itself (DESIGN.md section 5).
* ``CONTROL``: one multiplexed connection per node and RESP version for the
  commands that act on other connections or on a busy server (``SCRIPT
  KILL``, ``FUNCTION KILL``, ``CLIENT KILL``/``UNPAUSE``..., ``SHUTDOWN``:
  ``proxy.client.CONTROL_COMMANDS``), so they never queue behind a shared connection
  that waits on a busy script or a paused client.

A shared connection that is stuck (its oldest request has waited longer than
``stuck_after`` and nothing arrived on it for half that: a script past the
server's busy-reply-threshold, DEBUG SLEEP, a write held by CLIENT PAUSE; a
connection that is merely loaded keeps receiving replies) is *retired*: it takes no new commands and closes
once it has answered what it carries, and its slot gets a fresh connection.
Clients with replies owed on it wait for them (a client's replies stay in
order); the others go on at once on the fresh one, where the server answers
them as it answers any client meanwhile: ``-BUSY`` during a busy script,
as directly. At most ``MAX_RETIRED`` per node are kept.

Counting stops working when the server sends frames no command asked for:
Pub/Sub messages, MONITOR output, or nothing at all after ``CLIENT REPLY
OFF``. A dedicated connection in such a mode is *raw*: every frame goes to its
owner uncounted, and when the interlay needs to know that everything sent so
far has been answered, it sends a barrier (``PING <random token>``) and waits
for its echo, which it swallows.

Replies are forwarded as the bytes that arrived; a frame larger than
``stream_threshold`` is passed to the client piece by piece as it arrives, so
no copy of a large value is held per client.

Handshake (``HELLO 3 AUTH``, or ``AUTH``, and ``CLIENT SETNAME``) is pipelined
ahead of the commands queued while connecting; a connection that fails or is
lost answers every command still waiting with an error, and the node backs
off before the next attempt, so clients get errors instead of hangs while
the backend is away, and service resumes by itself when it returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from eve.core.endpoints import ConnectionSpec
from eve.redis import resp
from eve.redis.framing import scan_reply
from proxy.parts import Parts

__all__ = ["Backend", "Node", "Owner", "ReplySink", "SHARED", "DEDICATED", "BARE", "CONTROL", "set_no_delay"]

log = logging.getLogger("eve.proxy")

SHARED, DEDICATED, BARE, CONTROL = "shared", "dedicated", "bare", "control"
MIN_RETRY_SECONDS = 0.05
MAX_RETRY_SECONDS = 1.0
# Retired shared connections a node keeps waiting on at once; past it a stuck
# connection stays in its slot (a server that is stuck for everyone gains
# nothing from more connections).
MAX_RETIRED = 16

_PUBSUB_REGULAR = frozenset((b"subscribe", b"unsubscribe", b"psubscribe", b"punsubscribe"))
_PUBSUB_SHARD = frozenset((b"ssubscribe", b"sunsubscribe"))

perf_counter = time.perf_counter


def _ssl_context(spec: ConnectionSpec) -> ssl.SSLContext | None:
    if not spec.tls:
        return None
    context = ssl.create_default_context(cafile=spec.tls_ca_file)
    if spec.tls_insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _error_frame(message: str) -> bytes:
    return b"-" + message.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace") + b"\r\n"


def set_no_delay(transport: asyncio.BaseTransport) -> None:
    """Small requests and replies go out at once (no Nagle delay)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class ReplySink(Protocol):
    """Where the replies of a pending entry go: a client, or one side of a dual
    write. (A client also has ``announce``: the host a cluster redirection is
    rewritten to; dual writes happen only in front of a standalone source.)"""

    def deliver(self, data: bytes, frames: int) -> None:
        """``data`` holds ``frames`` complete replies (0: a piece of one, or uncounted frames)."""

    def backend_failed(self, conn: Backend, count: int, error: bytes) -> None:
        """The connection is gone: ``count`` replies will never come."""

    def broken(self, conn: Backend) -> None:
        """Half a reply was forwarded and the rest will never come."""


class Owner(ReplySink, Protocol):
    """The client a dedicated connection is pinned to."""

    write_paused: bool   # its socket takes no more for now: a reply streaming to it waits

    def pinned_lost(self, conn: Backend, error: bytes) -> None: ...
    def barrier_reply(self, conn: Backend, settled: bool) -> None: ...
    def reset_reply(self, conn: Backend) -> None: ...
    def resume_reading(self, reason: str) -> None: ...
    def hold_backend(self, conn: Backend) -> None: ...


class Node:
    """One backend node as this process sees it: its pools, idle cache and health."""

    def __init__(self, parts: Parts, index: int, spec: ConnectionSpec) -> None:
        options = parts.options
        self.parts = parts
        self.process = options.name     # names the process in logs
        self.index = index
        self.spec = spec
        self.address = spec.address
        self.auth_required = bool(spec.password)
        # The ACL user the pools are authenticated as; AUTH as this user leaves
        # a client free to use them.
        self.user = (spec.username or "default").encode()
        self.ssl = _ssl_context(spec)
        self.pool_size = options.pool_size
        self.idle_max = options.idle_connections
        self.shared: dict[int, list[Backend | None]] = {2: [None] * self.pool_size, 3: [None] * self.pool_size}
        self.scripting: dict[int, list[Backend | None]] = {2: [None] * self.pool_size,
                                                           3: [None] * self.pool_size}
        self.control: dict[int, Backend | None] = {2: None, 3: None}
        self.idle: dict[int, deque[Backend]] = {2: deque(), 3: deque()}
        self.connections: set[Backend] = set()
        self.retired: set[Backend] = set()
        self.stuck_after = options.stuck_after
        self.watch: asyncio.TimerHandle | None = None
        self.down_until = 0.0
        self.retry_delay = MIN_RETRY_SECONDS
        self.down = False
        self.last_error = ""
        name = f"eve-interlay-{options.interlay_id}"
        self._setname = name if all(33 <= ord(ch) < 127 for ch in name) else "eve-interlay"

    # -- handshake ------------------------------------------------------------------

    def handshake(self, protocol: int, named: bool = True) -> list[bytes]:
        """The commands that open a connection. A dedicated connection (``named`` False)
        becomes one client's own: it carries no name of the interlay's, so the client's
        ``CLIENT GETNAME``/``INFO``/``LIST`` show what it set itself, as directly."""
        spec = self.spec
        user = spec.username or "default"
        if protocol == 3:
            args: list[Any] = ["HELLO", 3]
            if spec.password:
                args += ["AUTH", user, spec.password]
            if named:
                args += ["SETNAME", self._setname]
            return [resp.encode_command(*args)]
        commands = []
        if spec.password:
            auth = ["AUTH", user, spec.password] if spec.username else ["AUTH", spec.password]
            commands.append(resp.encode_command(*auth))
        if named:
            commands.append(resp.encode_command("CLIENT", "SETNAME", self._setname))
        return commands

    def on_handshake_reply(self, frame: bytes) -> None:
        if frame[:1] in (b"-", b"!"):
            message = frame[1:].strip().decode("utf-8", "replace")
            if "SETNAME" in message.upper() or "CLIENT" in message.upper():
                return  # a server (or ACL) refusing CLIENT SETNAME is not a reason to fail
            log.warning("%s: backend %s refused the interlay's handshake: %s", self.process,
                        self.address, message[:200])

    # -- health -----------------------------------------------------------------------

    def is_down(self) -> bool:
        return self.down and time.monotonic() < self.down_until

    def connect_failed(self, reason: str) -> None:
        if not self.down:
            log.warning("%s: backend %s is unavailable: %s", self.process, self.address, reason)
        self.down = True
        self.last_error = reason
        self.down_until = time.monotonic() + self.retry_delay
        self.retry_delay = min(self.retry_delay * 2, MAX_RETRY_SECONDS)

    def connect_ok(self) -> None:
        if self.down:
            log.info("%s: backend %s is back", self.process, self.address)
        self.down = False
        self.retry_delay = MIN_RETRY_SECONDS

    def unavailable(self) -> bytes:
        return _error_frame(f"ERR interlay: backend {self.address} is unavailable: {self.last_error}")

    # -- connections ------------------------------------------------------------------

    def shared_conn(self, protocol: int, slot: int) -> Backend | None:
        """The client's multiplexed connection, (re)connecting it; None while the node is down."""
        return self._multiplexed(self.shared[protocol], protocol, slot)

    def script_conn(self, protocol: int, slot: int) -> Backend | None:
        """The client's multiplexed connection for scripts, (re)connecting it; None while the node is down."""
        return self._multiplexed(self.scripting[protocol], protocol, slot)

    def _multiplexed(self, conns: list[Backend | None], protocol: int, slot: int) -> Backend | None:
        conn = conns[slot]
        if conn is not None and not conn.closed:
            return conn
        if self.is_down():
            return None
        conn = Backend(self, protocol, SHARED)
        conns[slot] = conn
        conn.open()
        if self.watch is None:
            self._watch()
        return conn

    def control_conn(self, protocol: int) -> Backend | None:
        """The node's connection for control commands, (re)connecting it; None while the node is down."""
        conn = self.control[protocol]
        if conn is not None and not conn.closed:
            return conn
        if self.is_down():
            return None
        conn = self.control[protocol] = Backend(self, protocol, CONTROL)
        conn.open()
        return conn

    # -- stuck shared connections ---------------------------------------------------------

    def _watch(self) -> None:
        """Every half ``stuck_after``: retire the shared connections that are stuck
        (nothing read since the previous look, the oldest request older than ``stuck_after``)."""
        self.watch = asyncio.get_running_loop().call_later(self.stuck_after / 2, self._watch)
        oldest = perf_counter() - self.stuck_after
        for conns in (*self.shared.values(), *self.scripting.values()):
            for slot, conn in enumerate(conns):
                if conn is None:
                    continue
                if conn.reads == conn.reads_seen and conn.up and conn.pending and conn.pending[0][3] < oldest \
                        and len(self.retired) < MAX_RETIRED:
                    self._retire(conns, slot, conn)
                conn.reads_seen = conn.reads

    def _retire(self, conns: list[Backend | None], slot: int, conn: Backend) -> None:
        log.info("%s: a shared connection to %s has waited %.0f ms on its oldest request; new commands go "
                 "to a fresh one", self.process, self.address, (perf_counter() - conn.pending[0][3]) * 1000)
        conn.retired = True
        conns[slot] = None
        self.retired.add(conn)

    def dedicated(self, protocol: int) -> Backend | None:
        idle = self.idle[protocol]
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        if self.is_down():
            return None
        conn = Backend(self, protocol, DEDICATED)
        conn.open()
        return conn

    def bare(self) -> Backend | None:
        if self.is_down():
            return None
        conn = Backend(self, 2, BARE)
        conn.open()
        return conn

    def release(self, conn: Backend) -> None:
        """A dedicated connection its client no longer needs: idle if clean, else closed."""
        conn.owner = None
        if conn.closed:
            return
        idle = self.idle[conn.protocol]
        if conn.raw or conn.pending or conn.buf or conn.frame_state is not None or conn.user != self.user \
                or len(idle) >= self.idle_max:
            conn.close()
            return
        idle.append(conn)

    def stop_idling(self) -> None:
        """The process is stopping: a connection released from now on is closed, not kept."""
        self.idle_max = 0

    def close_all(self) -> None:
        """Close every connection; one released later is closed too."""
        self.stop_idling()
        if self.watch is not None:
            self.watch.cancel()
        for conn in list(self.connections):
            conn.close()


class Backend(asyncio.Protocol):
    """One connection to a node. Pending entries are ``[sink, count, tag, sent_at]``:
    the next ``count`` replies go to ``sink`` (a client, or None for the
    interlay's own commands); a ``tag`` is called with the reply frame and
    returns the bytes to deliver (a rewritten reply) or None."""

    __slots__ = (
        "node", "parts", "stats", "cluster", "protocol", "kind", "transport", "closed", "out", "pending", "buf",
        "owner",
        "raw", "monitor", "user", "stream_left", "stream_to", "frame_state", "barrier", "sent_since_barrier",
        "barrier_settled", "sub_regular", "sub_shard", "paused_clients", "write_paused", "reset_pending",
        "max_bulk", "threshold", "up", "flush_scheduled", "loop", "retired", "reads", "reads_seen",
    )

    def __init__(self, node: Node, protocol: int, kind: str) -> None:
        self.node = node
        parts = self.parts = node.parts
        self.stats = parts.stats
        self.cluster = parts.cluster
        self.protocol = protocol
        self.kind = kind
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.out: list[bytes] = []  # writes of this loop iteration (or queued until the connection is up)
        self.up = False
        self.flush_scheduled = False
        self.pending: deque[list] = deque()
        self.buf: bytes = b""
        self.owner: Owner | None = None
        self.raw = False
        self.monitor = False
        self.user: bytes | None = None if kind == BARE else node.user
        self.stream_left = 0
        self.stream_to: ReplySink | None = None
        self.frame_state: tuple[int, list] | None = None
        self.barrier: bytes | None = None
        self.sent_since_barrier = 0
        self.barrier_settled = False
        self.sub_regular = 0
        self.sub_shard = 0
        self.paused_clients: list = []
        self.write_paused = False
        self.reset_pending = False
        self.retired = False          # takes no new commands; closes once it has answered (Node._retire)
        self.reads = 0                # data_received calls, and their count when Node._watch last looked
        self.reads_seen = 0
        self.max_bulk = parts.options.max_bulk
        self.threshold = parts.options.stream_threshold
        self.loop = asyncio.get_running_loop()
        node.connections.add(self)

    def __repr__(self) -> str:
        return f"Backend({self.node.address} {self.kind} resp{self.protocol})"

    # -- connecting ---------------------------------------------------------------------

    def open(self) -> None:
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        node = self.node
        spec = node.spec
        loop = self.loop
        timeout = self.parts.options.connect_timeout
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: self, spec.host, spec.port, ssl=node.ssl,
                                       server_hostname=(spec.tls_server_name or spec.host) if node.ssl else None),
                timeout)
        except TimeoutError:
            self._connect_failed(f"no answer within {timeout:g}s")
            return
        except (OSError, ssl.SSLError) as exc:
            self._connect_failed(getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
            return
        if self.closed:
            if self.transport is not None:
                self.transport.close()
            return
        node.connect_ok()
        # The interlay's own commands go ahead of the clients' queued ones.
        front: list[tuple[bytes, Callable]] = []
        if self.kind != BARE:
            front = [(command, self._on_handshake)
                     for command in node.handshake(self.protocol, named=self.kind != DEDICATED)]
            table = self.parts.commands.table_request()
            if table is not None:
                front.append(table)
        now = perf_counter()
        for _, callback in reversed(front):
            self.pending.appendleft([None, 1, callback, now])
        self.out[:0] = [command for command, _ in front]
        self.up = True
        self._flush()

    def _on_handshake(self, frame: bytes) -> None:
        self.node.on_handshake_reply(frame)

    def _connect_failed(self, reason: str) -> None:
        self.node.connect_failed(reason)
        self.fail(self.node.unavailable())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_no_delay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed:
            reason = f"connection lost: {exc}" if exc else "connection closed by the server"
            self.node.last_error = reason
            self.fail(_error_frame(f"ERR interlay: backend {self.node.address} {reason}"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def hold(self, client: Any) -> None:
        """This connection takes no more for now: ``client`` is not read until
        it does, rather than the interlay buffering without bound."""
        client.pause_reading("backend")
        self.paused_clients.append(client)

    def resume_writing(self) -> None:
        self.write_paused = False
        paused, self.paused_clients = self.paused_clients, []
        for client in paused:
            client.resume_reading("backend")

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Close without failing anyone: callers close only connections nobody waits on,
        or whose clients are gone."""
        if self.closed:
            return
        pending = self._drop()
        self._cancel_internal(pending)
        for sink, count, _, _ in pending:
            # A dual write waits for every reply, even when its client is gone: an
            # abandoned one is a failed one (its keys are re-copied), not a hang.
            if getattr(sink, "waits_for_replies", False):
                sink.backend_failed(self, count, _error_frame(f"ERR interlay: connection to {self.node.address} "
                                                              "closed before the reply"))

    def _cancel_internal(self, pending: deque) -> None:
        """The interlay's own commands that will get no reply (the command table) are told so."""
        for sink, _, tag, _ in pending:
            if sink is None and tag is not None and tag != self._on_handshake:
                try:
                    tag(None)
                except Exception:
                    log.exception("callback failed")

    def _drop(self) -> deque:
        """Closed for good and forgotten by its node; returns the entries still waiting."""
        self._forget()
        if self.transport is not None:
            self.transport.close()
        pending, self.pending = self.pending, deque()
        return pending

    def _forget(self) -> None:
        self.closed = True
        node = self.node
        node.connections.discard(self)
        if self.kind == SHARED:
            node.retired.discard(self)
            for conns in (node.shared[self.protocol], node.scripting[self.protocol]):
                for i, conn in enumerate(conns):
                    if conn is self:
                        conns[i] = None
        elif self.kind == CONTROL:
            if node.control[self.protocol] is self:
                node.control[self.protocol] = None
        else:
            try:
                node.idle[self.protocol].remove(self)
            except ValueError:
                pass
        paused, self.paused_clients = self.paused_clients, []
        for client in paused:
            client.resume_reading("backend")

    def fail(self, error: bytes) -> None:
        """The connection is gone: every command waiting on it is answered with ``error``."""
        if self.closed:
            return
        pending = self._drop()
        stream_to = self.stream_to
        self.stream_to = None
        if stream_to is not None:
            stream_to.broken(self)  # half a reply was sent: that client cannot be resynchronised
        stats = self.stats
        for sink, count, _, _ in pending:
            if sink is not None:
                stats.backend_errors += count
                sink.backend_failed(self, count, error)
        self._cancel_internal(pending)
        owner = self.owner
        if owner is not None:
            owner.pinned_lost(self, error)

    # -- sending ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes for the backend. Writes of one event-loop iteration go out
        together: many clients' commands in one system call."""
        self.out.append(data)
        if self.up and not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if not out or self.transport is None or self.closed:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.transport.write(data)

    def send(self, sink: Any, data: bytes, count: int, tag: Callable[[bytes | None], bytes | None] | None = None) -> None:
        self.pending.append([sink, count, tag, perf_counter()])
        self.out.append(data)
        if self.up and not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def send_raw(self, data: bytes) -> None:
        """Raw mode: no reply is counted."""
        self.sent_since_barrier += 1
        self.barrier_settled = False
        self.write(data)

    def enter_raw(self) -> None:
        """From now on every frame goes to the owner, uncounted. Replies still
        pending are the owner's and arrive first, so they need no counting either."""
        if self.raw:
            return
        self.raw = True
        self.pending = deque(entry for entry in self.pending if entry[0] is not self.owner)

    def leave_raw(self) -> None:
        self.raw = False
        self.barrier = None

    def send_barrier(self) -> None:
        """PING with a token nobody else knows: its echo proves every earlier reply arrived."""
        if self.barrier is not None or self.closed:
            return
        token = b"eve-barrier-" + os.urandom(8).hex().encode()
        self.barrier = token
        self.sent_since_barrier = 0
        self.barrier_settled = False
        self.write(resp.encode_command(b"PING", token))

    # -- receiving ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        try:
            if self.stream_left or self.frame_state is not None:
                data = self._continue_stream(data)  # type: ignore[assignment]
                if not data:
                    return
            if self.buf:
                data = self.buf + data
                self.buf = b""
            if self.raw:
                self._raw_received(data)
            else:
                self._received(data)
        except (resp.ProtocolError, ValueError) as exc:
            self._unframeable(exc)
            return
        if self.retired and not self.pending and self.stream_to is None:
            self.close()

    def _unframeable(self, exc: Exception) -> None:
        """A reply that cannot be framed: where it ends, and so which reply is
        whose after it, is unknown. The client it was for is disconnected
        without an answer (any answer could be taken for another command's),
        and the connection fails: every other command waiting on it gets an error."""
        log.error("%s: backend %s sent a reply that cannot be framed (%s); closing that connection",
                  self.node.process, self.node.address, exc)
        culprit = self.stream_to
        if culprit is None:
            culprit = self.pending[0][0] if self.pending and not self.raw else self.owner
        if culprit is not None:
            culprit.broken(self)
        self.fail(_error_frame(f"ERR interlay: backend {self.node.address} sent a reply that cannot be framed"))

    def _frame_end(self, buf: bytes, pos: int, n: int) -> int:
        """End of the frame at pos, -1 if incomplete (having started streaming it
        when it is large), -2 if incomplete and to be kept whole."""
        t = buf[pos]
        find = buf.find
        if t == 36:  # $
            eol = find(b"\r\n", pos + 1)
            if eol < 0:
                return -2
            if buf[pos + 1] == 45:  # $-1
                return eol + 2
            end = eol + int(buf[pos + 1 : eol]) + 4
            if end <= n:
                return end
            if end - pos > self.threshold and self._start_stream(buf, pos, n, 1, [], end):
                return -1
            return -2
        stack: list = []
        end, scan_pos, remaining, need = scan_reply(buf, pos, 1, stack, self.max_bulk)
        if end >= 0:
            return end
        if (n - pos > self.threshold or need - pos > self.threshold) and \
                self._start_stream(buf, pos, n, remaining, stack, need, scan_pos):
            return -1
        return -2

    def _received(self, buf: bytes) -> None:
        """Counting mode: each pending entry takes its next ``count`` frames;
        consecutive frames of one entry go to its client in one write."""
        n = len(buf)
        pos = 0
        pending = self.pending
        find = buf.find
        errors = 0
        stats = self.stats
        cluster = self.cluster
        max_bulk = self.max_bulk
        while pos < n:
            if not pending:
                # Nobody asked: only an owner can want it (a push, a reply after CLIENT REPLY ON...).
                end = scan_reply(buf, pos, 1, [], max_bulk)[0]
                if end < 0:
                    break
                if self.owner is not None:
                    self.owner.deliver(buf[pos:end], 0)
                pos = end
                continue
            entry = pending[0]
            if entry[2] is None:
                want = entry[1]
                start = pos
                got = 0
                stop = 0  # 1: incomplete frame at pos; 2: a frame at pos needs its own handling
                while got < want:
                    if pos >= n:
                        stop = 1
                        break
                    t = buf[pos]
                    if t == 43 or t == 58:  # + :
                        eol = find(b"\r\n", pos + 1)
                        if eol < 0:
                            stop = 1
                            break
                        pos = eol + 2
                    elif t == 36:  # $
                        eol = find(b"\r\n", pos + 1)
                        if eol < 0:
                            stop = 1
                            break
                        if buf[pos + 1] == 45:  # $-1
                            pos = eol + 2
                        else:
                            end = eol + int(buf[pos + 1 : eol]) + 4
                            if end > n:
                                stop = 1
                                break
                            pos = end
                    elif t == 45:  # -
                        eol = find(b"\r\n", pos + 1)
                        if eol < 0:
                            stop = 1
                            break
                        errors += 1
                        if cluster is not None and cluster.is_redirect(buf[pos : eol + 2]):
                            stop = 2
                            break
                        pos = eol + 2
                    elif t == 62:  # > out-of-band push
                        stop = 2
                        break
                    else:
                        end = scan_reply(buf, pos, 1, [], max_bulk)[0]
                        if end < 0:
                            stop = 1
                            break
                        pos = end
                    got += 1
                if got:
                    if got == want:
                        pending.popleft()
                        stats.samples.append(perf_counter() - entry[3])
                    else:
                        entry[1] = want - got
                    entry[0].deliver(buf if start == 0 and pos == n else buf[start:pos], got)
                if not stop:
                    continue
                if stop == 1:
                    if pos < n and self._maybe_stream(buf, pos, n):
                        if errors:
                            stats.backend_errors += errors
                        return
                    break
            # A frame on its own: a tagged reply (its tag sees it whole), a push
            # (the owner's), a redirection (rewritten).
            end = scan_reply(buf, pos, 1, [], max_bulk)[0]
            if end < 0:
                break
            t = buf[pos]
            if t == 62:  # > out-of-band push
                if self.owner is not None:
                    self.owner.deliver(buf[pos:end], 0)
            else:
                frame = buf[pos:end]
                self._deliver_one(pending, frame, t == 45 and cluster is not None and cluster.is_redirect(frame))
            pos = end
        if errors:
            stats.backend_errors += errors
        if pos < n:
            self.buf = buf[pos:]

    def _maybe_stream(self, buf: bytes, pos: int, n: int) -> bool:
        """The incomplete reply at ``pos`` is large: start passing it through."""
        threshold = self.threshold
        if buf[pos] == 36:
            eol = buf.find(b"\r\n", pos + 1)
            if eol < 0 or buf[pos + 1] == 45:
                return False
            end = eol + int(buf[pos + 1 : eol]) + 4
            return end - pos > threshold and self._start_stream(buf, pos, n, 1, [], end)
        if buf[pos] == 62 or n - pos < 4096:
            return False
        stack: list = []
        end, scan_pos, remaining, need = scan_reply(buf, pos, 1, stack, self.max_bulk)
        if end >= 0 or (n - pos <= threshold and need - pos <= threshold):
            return False
        return self._start_stream(buf, pos, n, remaining, stack, need, scan_pos)

    def _deliver_one(self, pending: deque, frame: bytes, redirect: bool = False) -> None:
        entry = pending[0]
        sink, tag = entry[0], entry[2]
        if entry[1] > 1:
            entry[1] -= 1
        else:
            pending.popleft()
            self.stats.samples.append(perf_counter() - entry[3])
        if redirect and sink is not None:
            frame = self.cluster.rewrite_redirect(frame, sink.announce)  # type: ignore[union-attr]
        if tag is not None:
            out = tag(frame)
            if sink is not None:
                sink.deliver(out if out is not None else b"", 1)
        elif sink is not None:
            sink.deliver(frame, 1)

    # -- raw mode -----------------------------------------------------------------------

    def _raw_received(self, buf: bytes) -> None:
        n = len(buf)
        pos = 0
        owner = self.owner
        group_start = 0
        cluster = self.cluster
        pending = self.pending
        while pos < n:
            end = scan_reply(buf, pos, 1, [], self.max_bulk)[0]
            if end < 0:
                if owner is not None and pos > group_start:
                    owner.deliver(buf[group_start:pos], 0)
                group_start = pos
                if self._frame_end(buf, pos, n) == -1:
                    return
                break
            if pending and pending[0][0] is None:
                # The interlay's own commands (handshake of a fresh connection) came first.
                if owner is not None and pos > group_start:
                    owner.deliver(buf[group_start:pos], 0)
                self._deliver_one(pending, buf[pos:end])
                pos = group_start = end
                continue
            t = buf[pos]
            special = False
            if end - pos < 160:
                frame = buf[pos:end]
                if self.barrier is not None and self.barrier in frame:
                    special = True
                elif (t == 42 or t == 62) and b"subscribe" in frame[:40]:
                    self._pubsub_count(frame)
                elif t == 43 and frame == b"+RESET\r\n" and self.reset_pending:
                    special = True
                elif t == 45 and cluster is not None and cluster.is_redirect(frame):
                    special = True
            if special:
                if owner is not None and pos > group_start:
                    owner.deliver(buf[group_start:pos], 0)
                frame = buf[pos:end]
                group_start = end
                pos = end
                if self.barrier is not None and self.barrier in frame:
                    self.barrier = None
                    settled = self.sent_since_barrier == 0
                    self.barrier_settled = settled
                    if owner is not None:
                        owner.barrier_reply(self, settled)
                elif frame == b"+RESET\r\n":
                    self.reset_pending = False
                    if owner is not None:
                        owner.reset_reply(self)
                elif owner is not None:
                    owner.deliver(cluster.rewrite_redirect(frame, owner.announce), 0)  # type: ignore[union-attr]
                continue
            pos = end
        if owner is not None and pos > group_start:
            owner.deliver(buf[group_start:pos] if group_start or pos < n else buf, 0)
        if pos < n:
            self.buf = buf[pos:]

    def _pubsub_count(self, frame: bytes) -> None:
        parsed = resp.parse(frame)
        if parsed is None:
            return
        value = parsed[0]
        items = getattr(value, "items", None)
        if not items or len(items) < 3 or not isinstance(items[0], resp.BulkString) or \
                not isinstance(items[2], resp.Integer):
            return
        kind = items[0].value.lower()
        if kind in _PUBSUB_REGULAR:
            self.sub_regular = items[2].value
        elif kind in _PUBSUB_SHARD:
            self.sub_shard = items[2].value

    @property
    def subscribed(self) -> bool:
        return bool(self.sub_regular or self.sub_shard)

    # -- streaming large frames -------------------------------------------------------

    def _start_stream(self, buf: bytes, pos: int, n: int, remaining: int, stack: list, need: int,
                      scan_pos: int | None = None) -> bool:
        """Forward the start of a large frame now and the rest as it arrives."""
        if self.raw:
            sink = self.owner
        elif self.pending and self.pending[0][2] is None:
            sink = self.pending[0][0]
        else:
            return False
        if sink is None:
            return False
        self.stream_to = sink
        if scan_pos is None or need > n + 1:
            # Inside a bulk string whose length is known: pass the rest through.
            sink.deliver(buf[pos:n], 0)
            self.stream_left = need - n
            self.frame_state = (remaining, stack)
            self.buf = b""
        else:
            sink.deliver(buf[pos:scan_pos], 0)
            self.frame_state = (remaining, stack)
            self.buf = buf[scan_pos:]
        if sink.write_paused:
            sink.hold_backend(self)
        return True

    def _continue_stream(self, data: bytes) -> bytes | None:
        sink = self.stream_to
        if self.stream_left:
            left = self.stream_left
            if len(data) < left:
                self.stream_left = left - len(data)
                sink.deliver(data, 0)
                return None
            sink.deliver(data[:left] if len(data) > left else data, 0)
            data = data[left:]
            self.stream_left = 0
            remaining, stack = self.frame_state  # type: ignore[misc]
            remaining -= 1
            while not remaining:
                if not stack:
                    self._stream_done()
                    return data
                remaining = stack.pop() - 1
            self.frame_state = (remaining, stack)
            if not data:
                return None
        buf = self.buf + data if self.buf else data
        self.buf = b""
        remaining, stack = self.frame_state  # type: ignore[misc]
        n = len(buf)
        end, scan_pos, remaining, need = scan_reply(buf, 0, remaining, stack, self.max_bulk)
        if end >= 0:
            sink.deliver(buf[:end], 0)
            self._stream_done()
            return buf[end:]
        if need > n + 1:
            sink.deliver(buf, 0)
            self.stream_left = need - n
        else:
            if scan_pos:
                sink.deliver(buf[:scan_pos], 0)
            self.buf = buf[scan_pos:]
        self.frame_state = (remaining, stack)
        return None

    def _stream_done(self) -> None:
        sink = self.stream_to
        self.stream_to = None
        self.frame_state = None
        if self.raw:
            return
        pending = self.pending
        if pending:
            entry = pending[0]
            if entry[1] > 1:
                entry[1] -= 1
            else:
                pending.popleft()
                self.stats.samples.append(perf_counter() - entry[3])
        if sink is not None:
            sink.deliver(b"", 1)
