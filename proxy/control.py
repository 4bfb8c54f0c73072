"""How a proxy process outlives its coordinator (DESIGN.md section 5, issue 12).

Interlays are the data plane: when the coordinator dies (kill -9, a crash), a
proxy process keeps serving its clients under its last route, and a restarted
coordinator re-attaches to it instead of starting a new one. Three pieces make
that possible, all here:

* ``ControlOptions``: what the supervisor tells a process that may outlive it:
  the Unix socket to listen on for the next coordinator, the secret that
  coordinator must prove it knows, the route to start under, the spool's bound.
* ``ControlListener``: a thread accepting coordinators on that socket. The
  socket sits in a directory only the coordinator's user can enter (0700) and
  is itself 0600; ``multiprocessing.connection`` then runs its HMAC
  challenge-response with the token both ways before a single message is
  unpickled, so only a process that holds the token attaches.
* ``Spool``: the keys a coordinator could still lose, bounded: those it was
  sent and has not confirmed re-copied yet, and those of the writes answered
  while no coordinator listens. Past ``limit`` keys it drops them and remembers
  that it overflowed: the run then compares every key instead of trusting a
  partial list.

``start_identity(pid)`` tells a live process from a recycled pid: the kernel's
start time of the process (``/proc/<pid>/stat``, field 22), recorded when the
proxy started and compared before the coordinator trusts or signals that pid.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Listener, answer_challenge, deliver_challenge
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from proxy import messages

__all__ = ["DEFAULT_SPOOL_KEYS", "ControlListener", "ControlOptions", "Spool", "describe_route", "start_identity"]

log = logging.getLogger("eve.proxy")

# About 100 bytes a key with its tuple: a spool of this many stays near 10 MB.
DEFAULT_SPOOL_KEYS = 100_000


@dataclass(frozen=True)
class ControlOptions:
    """A proxy process that outlives its coordinator. ``token`` never appears in a repr."""

    socket_path: str
    token: bytes = field(repr=False)
    route: messages.Route | None = None     # the live run's route to start under (a restart after a cutover)
    spool_keys: int = DEFAULT_SPOOL_KEYS


class Spool:
    """The dirty-key marks a coordinator could still lose, at most ``limit`` of them: those of
    the reports sent on the current control connection that it has not confirmed re-copied
    yet (numbered 1, 2, ... as sent), and those held while no coordinator listened (0).

    A coordinator killed with keys in its backlog loses them; the next one gets them from
    here (``replay``), so a restart needs no full compare unless the spool overflowed. Past
    ``limit`` the spool keeps none and says so; while attached it heals once the coordinator
    confirmed every report sent meanwhile."""

    __slots__ = ("limit", "entries", "size", "sent", "overflowed", "_overflow_upto")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.entries: collections.deque[tuple[int, tuple]] = collections.deque()
        self.size = 0                    # marks kept
        self.sent = 0                    # reports sent on the current control connection
        self.overflowed = False
        self._overflow_upto = 0          # the last report whose marks were not kept

    def hold(self, marks: tuple) -> None:
        """Marks recorded while no coordinator listens."""
        self._keep(0, marks)

    def sent_report(self, marks: tuple) -> None:
        """Marks just sent to the coordinator in its next report."""
        self.sent += 1
        self._keep(self.sent, marks)

    def _keep(self, number: int, marks: tuple) -> None:
        if not self.overflowed and self.size + len(marks) > self.limit:
            # A partial list would read as complete: keep none, and say so.
            self.entries.clear()
            self.size = 0
            self.overflowed = True
            log.warning("dirty-key spool overflowed past %d keys: after a coordinator restart the run compares "
                        "every key", self.limit)
        if self.overflowed:
            self._overflow_upto = self.sent
            return
        self.entries.append((number, marks))
        self.size += len(marks)

    def confirm(self, reports: int) -> None:
        """The coordinator re-copied every key of the first ``reports`` reports of this connection."""
        entries = self.entries
        while entries and 0 < entries[0][0] <= reports:
            self.size -= len(entries.popleft()[1])
        if self.overflowed and self.sent and reports >= self._overflow_upto:
            self.overflowed = False  # every mark it dropped is re-copied

    def attach(self) -> None:
        """A new control connection: every mark kept is to be sent again, numbering starts over."""
        self.entries = collections.deque((0, marks) for _, marks in self.entries)
        self.sent = self._overflow_upto = 0

    def replay(self) -> tuple:
        """Every mark kept, in order, for the next coordinator's first report (then ``sent_report``
        it); an overflow is one mark of every db, ``(None, None)`` (what FLUSHALL marks: the run
        compares the sides in full)."""
        marks = ((None, None),) if self.overflowed else tuple(mark for _, batch in self.entries for mark in batch)
        self.clear()
        return marks

    def clear(self) -> None:
        self.entries.clear()
        self.size = 0
        self.overflowed = False

    def __len__(self) -> int:
        return self.size


class ControlListener:
    """Accepts authenticated coordinators on ``socket_path``; hands each to ``on_attach``
    (called from this listener's thread: the callee moves it to its event loop)."""

    def __init__(self, options: ControlOptions, on_attach: Callable[[Connection], None]) -> None:
        self.options = options
        self.on_attach = on_attach
        path = options.socket_path
        if os.path.exists(path):
            os.unlink(path)  # left by a process of this interlay that died: nobody listens on it
        previous = os.umask(0o177)
        try:
            self._listener = Listener(path, family="AF_UNIX")
        finally:
            os.umask(previous)
        self._thread = threading.Thread(target=self._accept, name="interlay-control", daemon=True)
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept()
            except OSError:
                if not self._closed:
                    log.exception("control socket %s: accept failed", self.options.socket_path)
                return
            # The challenge runs on a thread of its own: a peer that never answers holds only it.
            threading.Thread(target=self._authenticate, args=(conn,), name="interlay-control-auth",
                             daemon=True).start()

    def _authenticate(self, conn: Connection) -> None:
        """HMAC challenge-response both ways (``multiprocessing.connection``), before any message."""
        try:
            deliver_challenge(conn, self.options.token)
            answer_challenge(conn, self.options.token)
        except Exception as exc:  # noqa: BLE001 - AuthenticationError, EOFError, OSError: not our coordinator
            log.warning("control socket %s: a connection that did not prove the token was refused (%s)",
                        self.options.socket_path, type(exc).__name__)
            conn.close()
            return
        self.on_attach(conn)

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.close()  # unlinks the socket file
        except OSError:
            pass


def describe_route(route: messages.Route | None) -> str:
    """What a process serves under, for the logs of both ends of the control channel."""
    if route is None:
        return "plain forwarding"
    return f"route: {route.authoritative} authoritative, dual writes to {','.join(route.mirror_to) or 'nobody'}"


def start_identity(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (clock ticks since boot), or None when no
    such process runs (or it is a zombie). Equal identities mean the same process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3, starttime field 22 (proc(5)).
    if fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()
