"""Keyspace notifications as a source of dirty keys (DESIGN.md 6.3): keys written by clients
that bypass the interlay are marked in the run's backlog from ``__keyspace@*__:*`` on every
master of the source.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import EndpointError, SourceError, UnavailableError
from eve.live.backlog import ALL_DBS, DirtyKeys, Item
from eve.redis.cluster import RECONNECT_FIRST_DELAY, RECONNECT_MAX_DELAY, ClientOptions, ClusterClient
from eve.redis.topology import info_section
from eve.redis.wire import FastConnection, ReplyError

__all__ = ["KeyspaceNotifications", "parse_keyspace_channel"]

log = logging.getLogger("eve.live.notifications")

CLIENT_NAME = "eve-keyspace"


# --------------------------------------------------------------------------- keyspace notifications


_KEYSPACE_PREFIX = b"__keyspace@"
_PATTERN = b"__keyspace@*__:*"
# A channel the pattern matches but that names no db: barrier tokens travel on it, in order
# with the notifications of the node they are published on.
_BARRIER_PREFIX = b"__keyspace@eve-barrier__:"
# What 'A' stands for (https://redis.io/docs/latest/develop/use/keyspace-notifications/).
_EVENT_CLASSES = "g$lshzxet"
_WHOLE_DB_COMMANDS = ("flushdb", "flushall", "swapdb")  # they notify nothing per key


def parse_keyspace_channel(channel: bytes) -> Item | None:
    """``__keyspace@<db>__:<key>`` -> (db, key). Keys are binary and may contain ``__:``
    themselves; the db never does, so the first ``__:`` ends it."""
    if not channel.startswith(_KEYSPACE_PREFIX):
        return None
    db, sep, key = channel[len(_KEYSPACE_PREFIX):].partition(b"__:")
    if not sep or not db.isdigit():
        return None
    return int(db), key


def _flags_enough(flags: str) -> bool:
    return "K" in flags and ("A" in flags or all(c in flags for c in _EVENT_CLASSES))


class _Subscriber:
    """PSUBSCRIBE __keyspace@*__:* on one master, in a thread of its own."""

    def __init__(self, spec: ConnectionSpec, dirty: DirtyKeys, *, configure: bool, poll_seconds: float) -> None:
        self.spec = spec
        self.address = spec.address
        self.dirty = dirty
        self.configure = configure
        self.poll_seconds = poll_seconds
        self.notified = 0
        self.reconnects = 0
        self._control = FastConnection(spec, timeout=10.0, client_name=CLIENT_NAME)
        # Its own connection: once subscribed, a connection only receives.
        self._subscription = FastConnection(spec, timeout=10.0, client_name=CLIENT_NAME)
        self._previous: str | None = None   # notify-keyspace-events before we changed it
        self._applied: str | None = None    # ... and after
        self._whole_db_calls: int | None = None
        self._control_lock = threading.Lock()   # the loop's INFO polls and barrier()'s PUBLISH
        self._barriers: dict[bytes, threading.Event] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- setup -------------------------------------------------------------------

    def enable(self) -> None:
        """Make the server publish keyspace events (K + A), remembering the previous setting."""
        reply = self._control.execute("CONFIG", "GET", "notify-keyspace-events")
        if isinstance(reply, ReplyError):
            if not self.configure:
                log.info("keyspace %s: CONFIG GET refused (%s); trusting that notify-keyspace-events "
                         "includes 'KA'", self.address, reply)
                return
            raise SourceError(self._refused("CONFIG GET notify-keyspace-events", reply))
        current = _config_value(reply)
        if _flags_enough(current):
            return
        if not self.configure:
            raise SourceError(f"keyspace notifications on {self.address}: notify-keyspace-events is "
                              f"{current!r}, which lacks 'K' and 'A'; set it to include 'KA'")
        wanted = current + "".join(c for c in "KA" if c not in current)
        reply = self._control.execute("CONFIG", "SET", "notify-keyspace-events", wanted)
        if isinstance(reply, ReplyError):
            raise SourceError(self._refused("CONFIG SET notify-keyspace-events", reply))
        self._previous = current
        self._applied = _config_value(self._control.execute("CONFIG", "GET", "notify-keyspace-events"))
        log.info("keyspace %s: notify-keyspace-events %r -> %r", self.address, current, self._applied)

    def _refused(self, what: str, reply: Any) -> str:
        return (f"cannot enable keyspace notifications on {self.address}: {what} was refused ({reply}). "
                "Set notify-keyspace-events to include 'KA' on the server (a parameter group on managed "
                "services) and start with configure=False, or send every client through an interlay")

    def restore(self) -> None:
        """Put notify-keyspace-events back, unless someone changed it since we did."""
        if self._previous is None:
            return
        try:
            current = _config_value(self._control.execute("CONFIG", "GET", "notify-keyspace-events"))
            if current != self._applied:
                log.warning("keyspace %s: notify-keyspace-events changed to %r since Eve set %r; "
                            "leaving it", self.address, current, self._applied)
            else:
                self._control.execute("CONFIG", "SET", "notify-keyspace-events", self._previous)
                log.info("keyspace %s: notify-keyspace-events restored to %r", self.address, self._previous)
            self._previous = None
        except EndpointError as exc:
            log.warning("keyspace %s: cannot restore notify-keyspace-events to %r: %s", self.address,
                        self._previous, exc)
        finally:
            self._control.close()

    def subscribe(self) -> None:
        """Connect and PSUBSCRIBE; returns once the server confirmed, so no later write is missed."""
        subscription = self._subscription
        try:
            subscription.open()
            confirmation = subscription.execute("PSUBSCRIBE", _PATTERN)
            if isinstance(confirmation, ReplyError) or not isinstance(confirmation, list):
                raise SourceError(f"keyspace {self.address}: PSUBSCRIBE refused: {confirmation}")
        except BaseException:
            subscription.close()
            raise
        self._whole_db_calls = self._count_whole_db_commands()

    def close_socket(self) -> None:
        self._subscription.close()

    # -- the loop ----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"eve-keyspace {self.address}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.close_socket()

    def _loop(self) -> None:
        next_poll = time.monotonic() + self.poll_seconds
        while not self._stopping.is_set():
            try:
                self._read()
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.poll_seconds
                    self._check_whole_db_commands()
            except (OSError, EndpointError) as exc:
                if self._stopping.is_set():
                    return
                self._resubscribe(exc)

    def _read(self) -> None:
        mark = self.dirty.mark
        for message in self._subscription.receive(min(self.poll_seconds, 0.5)):
            # [b"pmessage", pattern, b"__keyspace@<db>__:<key>", event]
            if message.__class__ is list and len(message) == 4 and message[0] == b"pmessage":
                item = parse_keyspace_channel(message[2])
                if item is not None:
                    mark(*item)
                    self.notified += 1
                elif message[2].startswith(_BARRIER_PREFIX):
                    # Tokens of other masters arrive too (PUBLISH is cluster-wide): not ours, no entry.
                    event = self._barriers.pop(message[2][len(_BARRIER_PREFIX):], None)
                    if event is not None:
                        event.set()

    def barrier(self, timeout: float) -> bool:
        """True once every notification this master published before the call was marked."""
        token = os.urandom(12).hex().encode()
        reached = self._barriers[token] = threading.Event()
        try:
            with self._control_lock:
                reply = self._control.execute("PUBLISH", _BARRIER_PREFIX + token, b"")
            if isinstance(reply, ReplyError):
                raise SourceError(f"keyspace {self.address}: PUBLISH refused: {reply}")
            return reached.wait(timeout)
        finally:
            self._barriers.pop(token, None)

    def _resubscribe(self, exc: BaseException) -> None:
        """Writes made while the subscription was down were not seen: flag a full resync."""
        self.dirty.mark_all(ALL_DBS)
        log.warning("keyspace %s: subscription lost (%s); marks may be missing, a full re-verify is "
                    "flagged; resubscribing", self.address, exc)
        delay = RECONNECT_FIRST_DELAY
        while not self._stopping.is_set():
            try:
                self.subscribe()
                self.reconnects += 1
                log.info("keyspace %s: resubscribed", self.address)
                return
            except EndpointError as retry_exc:
                log.debug("keyspace %s: resubscribe failed: %s", self.address, retry_exc)
            except OSError as retry_exc:
                log.debug("keyspace %s: resubscribe failed: %s", self.address, retry_exc)
            self._stopping.wait(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    def _count_whole_db_commands(self) -> int | None:
        """FLUSHDB, FLUSHALL and SWAPDB publish no keyspace event: INFO commandstats counts them.
        None when the server refuses INFO commandstats (the check is then off)."""
        try:
            with self._control_lock:
                stats = info_section(self._control, "commandstats")
        except UnavailableError:
            raise
        except EndpointError as exc:
            log.warning("keyspace %s: INFO commandstats refused (%s); FLUSHDB/FLUSHALL/SWAPDB by clients "
                        "that bypass the interlay will not be noticed", self.address, exc)
            self.poll_seconds = float("inf")
            return None
        total = 0
        for name in _WHOLE_DB_COMMANDS:
            fields = dict(part.split("=", 1) for part in stats.get(f"cmdstat_{name}", "").split(",") if "=" in part)
            total += int(fields.get("calls", 0))
        return total

    def _check_whole_db_commands(self) -> None:
        calls = self._count_whole_db_commands()
        previous, self._whole_db_calls = self._whole_db_calls, calls
        if previous is not None and calls is not None and calls != previous:
            # Which db is not known (and a CONFIG RESETSTAT may have hidden one): all of them.
            log.warning("keyspace %s: FLUSHDB/FLUSHALL/SWAPDB ran on the source; a full resync is flagged",
                        self.address)
            self.dirty.mark_all(ALL_DBS)


def _config_value(reply: Any) -> str:
    """CONFIG GET's [name, value] (a map in RESP3) -> value."""
    if isinstance(reply, dict):
        values = list(reply.values())
    else:
        values = list(reply or [])[1::2]
    value = values[0] if values else b""
    return value.decode() if isinstance(value, bytes) else str(value)


class KeyspaceNotifications:
    """Marks keys written by clients that bypass the interlay, from keyspace notifications.

    Subscribes to ``__keyspace@*__:*`` on every master of ``source`` (notifications
    are node-local in a cluster). With ``configure`` (the default) it enables 'K'
    and 'A' in ``notify-keyspace-events`` and puts the previous value back on
    ``stop``; a server that refuses CONFIG raises ``SourceError`` saying what to do.
    FLUSHDB, FLUSHALL and SWAPDB publish nothing per key: ``INFO commandstats`` is
    polled every ``poll_seconds`` and a change flags a full resync
    (``dirty.mark_all(ALL_DBS)``), as does a lost subscription.

    Subscribe on the side clients write to, which is the authoritative side. Never
    on a side ``DirtyKeySync`` copies to: its own RESTOREs would mark the keys again,
    forever (after cutover, stop the source's notifications before reverse sync).
    """

    def __init__(self, source: ConnectionSpec, dirty: DirtyKeys, *, configure: bool = True,
                 poll_seconds: float = 1.0) -> None:
        self.source = source
        self.dirty = dirty
        self.configure = configure
        self.poll_seconds = poll_seconds
        self._subscribers: list[_Subscriber] = []

    def __repr__(self) -> str:
        return f"KeyspaceNotifications({self.source.address}, masters={len(self._subscribers)})"

    def __enter__(self) -> "KeyspaceNotifications":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def notified(self) -> int:
        return sum(s.notified for s in self._subscribers)

    def barrier(self, timeout: float) -> bool:
        """True once every write the source executed before this call has been marked dirty
        (a token published on each master comes back behind its notifications); False
        after ``timeout``. For cutover: stop the writes, ``barrier``, then ``drain``."""
        deadline = time.monotonic() + timeout
        return all(subscriber.barrier(max(deadline - time.monotonic(), 0.0))
                   for subscriber in list(self._subscribers))

    def start(self) -> None:
        """Subscribed on every master when it returns; SourceError/UnavailableError otherwise."""
        if self._subscribers:
            return
        # Notifications are node-local in a cluster: one subscription per master.
        with ClusterClient(self.source, role="source", error=SourceError,
                           options=ClientOptions(timeout=10.0, reconnect_seconds=0, client_name=CLIENT_NAME)) as client:
            specs = [client.spec_for(address) for address in client.nodes]
        subscribers = [_Subscriber(spec, self.dirty, configure=self.configure, poll_seconds=self.poll_seconds)
                       for spec in specs]
        try:
            for subscriber in subscribers:
                self._subscribers.append(subscriber)
                subscriber.enable()
                subscriber.subscribe()
        except BaseException:
            self.stop()
            raise
        for subscriber in subscribers:
            subscriber.start()
        log.info("keyspace notifications: subscribed on %s", ", ".join(s.address for s in subscribers))

    def stop(self) -> None:
        subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            subscriber.stop()
        for subscriber in subscribers:
            subscriber.restore()
