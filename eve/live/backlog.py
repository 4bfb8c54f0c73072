"""The dirty-key backlog of a live run (DESIGN.md 6): every write that passes an interlay (or
that keyspace notifications report) marks its ``(db, key)``; the re-copy loop
(``eve.live.recopy``) takes keys from here and reports them done.

A key is in flight at most once: a key marked again while its re-copy is in flight
is held until that re-copy is done, then queued again, so every write is followed by
a read that starts after it and two copies of one key never race.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Iterable, Sequence

from eve.core.errors import ConfigError

__all__ = ["ALL_DBS", "DEFAULT_MAX_BACKLOG", "DirtyKeys", "Item"]

log = logging.getLogger("eve.live.backlog")

DEFAULT_MAX_BACKLOG = 1_000_000
ALL_DBS = None               # resync_dbs() when a full resync must cover every db

Item = tuple[int, bytes]


# --------------------------------------------------------------------------- the backlog


class DirtyKeys:
    """A bounded, de-duplicating backlog of ``(db, key)`` in insertion order.

    ``mark`` is O(1) and thread-safe. A key marked again while it is queued is not
    queued twice. A key marked while its re-copy is in flight is queued again once
    that re-copy is ``done`` (its DUMP may predate the write) and is not handed out
    before: one key is only ever in flight once.

    The backlog (queued + in flight) never grows past ``max_backlog``: a
    mark beyond it is dropped and ``overflowed`` is set, meaning "marks were lost,
    run a full re-verify of ``resync_dbs()``". ``mark_all`` (FLUSHDB, FLUSHALL,
    SWAPDB) sets the same flag: a whole db changed and no list of keys says how.
    """

    def __init__(self, max_backlog: int = DEFAULT_MAX_BACKLOG) -> None:
        if max_backlog < 1:
            raise ConfigError(f"must be at least 1, got {max_backlog}", field="max_backlog")
        self.max_backlog = max_backlog
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # item -> monotonic time of its first pending mark (for the lag)
        self._queued: collections.OrderedDict[Item, float] = collections.OrderedDict()
        self._in_flight: dict[Item, float] = {}
        self._again: dict[Item, float] = {}        # marked while in flight
        self._overflowed = False
        self._resync_all = False
        self._resync: set[int] = set()
        self.marked = 0      # marks that queued a key (repeats of a queued key not counted)
        # ``watch``: keys whose next marks are noted (a verification telling writes that passed the
        # interlay from writes made around it), and those of them marked since.
        self._watched: set[Item] = set()
        self._watch_hits: set[Item] = set()
        self.dropped = 0     # marks dropped because the backlog was full

    def __repr__(self) -> str:
        return (f"DirtyKeys(backlog={self.backlog}, max_backlog={self.max_backlog}, "
                f"overflowed={self._overflowed})")

    # -- producers ---------------------------------------------------------------

    def mark(self, db: int, key: bytes) -> None:
        """Call *after* the write executed (after its reply, or after its outcome became
        unknown): a mark made before could be consumed by a re-copy that reads the
        key before the write lands, and the write would then never be copied."""
        if key.__class__ is not bytes:
            key = key.encode() if isinstance(key, str) else bytes(key)
        item = (db, key)
        with self._lock:
            if self._watched and item in self._watched:
                self._watch_hits.add(item)
            if item in self._queued:
                return
            if item in self._in_flight:
                # Counted in the backlog already: held, queued again by done().
                self._again.setdefault(item, time.monotonic())
                return
            if self._full():
                self._drop(db)
                return
            self._queued[item] = time.monotonic()
            self.marked += 1
            if len(self._queued) == 1:
                self._changed.notify_all()

    def watch(self, items: Iterable[Item]) -> None:
        """Note which of ``items`` are marked from now on (``watched_marks``); replaces an earlier watch."""
        with self._lock:
            self._watched = set(items)
            self._watch_hits = set()

    def watched_marks(self) -> set[Item]:
        """The watched keys marked since ``watch``; ends the watch."""
        with self._lock:
            hits, self._watch_hits, self._watched = self._watch_hits, set(), set()
            return hits

    def mark_many(self, db: int, keys: Iterable[bytes]) -> None:
        for key in keys:
            self.mark(db, key)

    def mark_all(self, db: int | None) -> None:
        """The whole ``db`` (every db with None) changed: a full resync is needed (the flag)."""
        with self._lock:
            self._overflowed = True
            if db is None:
                self._resync_all = True
            else:
                self._resync.add(db)
            self._changed.notify_all()

    # -- the consumer ------------------------------------------------------------

    def take(self, n: int) -> list[Item]:
        """Up to ``n`` queued keys, oldest first; they are in flight until ``done`` or ``requeue``."""
        with self._lock:
            count = min(n, len(self._queued))
            items: list[Item] = []
            for _ in range(count):
                item, marked_at = self._queued.popitem(last=False)
                self._in_flight[item] = marked_at
                items.append(item)
            return items

    def done(self, items: Iterable[Item]) -> None:
        """The re-copy of ``items`` finished (copied, deleted or failed): marks made while
        they were in flight queue them again."""
        with self._lock:
            for item in items:
                if self._in_flight.pop(item, None) is None:
                    continue
                marked_at = self._again.pop(item, None)
                if marked_at is not None:
                    self._queued[item] = marked_at
            self._changed.notify_all()

    def requeue(self, items: Sequence[Item]) -> None:
        """The re-copy of ``items`` did not happen (a side was unreachable): queue them again,
        at the front, with their original mark times."""
        with self._lock:
            for item in reversed(items):
                marked_at = self._in_flight.pop(item, None)
                if marked_at is None:
                    continue
                again = self._again.pop(item, None)
                self._queued[item] = min(marked_at, again) if again is not None else marked_at
                self._queued.move_to_end(item, last=False)
            self._changed.notify_all()

    def wait_for_work(self, timeout: float) -> bool:
        """Sleep until a key is queued (True) or ``timeout`` passed (False). Never spins."""
        with self._lock:
            if not self._queued:
                self._changed.wait(timeout)
            return bool(self._queued)

    def wait_for_change(self, timeout: float) -> None:
        with self._lock:
            self._changed.wait(timeout)

    # -- overflow ----------------------------------------------------------------

    @property
    def overflowed(self) -> bool:
        return self._overflowed

    def resync_dbs(self) -> frozenset[int] | None:
        """The dbs a full re-verify must cover: empty when none, ``ALL_DBS`` (None) for every db."""
        with self._lock:
            return ALL_DBS if self._resync_all else frozenset(self._resync)

    def reset_overflow(self) -> frozenset[int] | None:
        """Clear the flag when a full re-verify starts; returns what it must cover
        (as ``resync_dbs``). Marks made from now on are queued again as usual."""
        with self._lock:
            needed = ALL_DBS if self._resync_all else frozenset(self._resync)
            self._overflowed = self._resync_all = False
            self._resync = set()
            return needed

    # -- counters ----------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Keys still to re-copy: queued or in flight (one marked again while in flight counts once)."""
        with self._lock:
            return len(self._queued) + len(self._in_flight)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def lag_seconds(self) -> float:
        """Age of the oldest pending mark (0.0 with an empty backlog)."""
        with self._lock:
            oldest = None
            if self._queued:
                oldest = next(iter(self._queued.values()))
            for pending in (self._in_flight, self._again):
                if pending:
                    first = min(pending.values())
                    oldest = first if oldest is None else min(oldest, first)
        return 0.0 if oldest is None else max(time.monotonic() - oldest, 0.0)

    def oldest_pending(self) -> float | None:
        """The ``time.monotonic`` of the oldest mark not re-copied yet (queued, in flight, or
        marked again while in flight), None with an empty backlog: every mark made before it
        is re-copied. O(backlog): keys queued again keep their first mark's time, out of order."""
        with self._lock:
            return min((min(pending.values()) for pending in (self._queued, self._in_flight, self._again)
                        if pending), default=None)

    def _full(self) -> bool:
        return len(self._queued) + len(self._in_flight) >= self.max_backlog

    def _drop(self, db: int) -> None:
        if not self._overflowed:
            log.warning("dirty-key backlog full (%d keys): dropping marks; a full re-verify is needed",
                        self.max_backlog)
        self._overflowed = True
        self._resync.add(db)
        self.dropped += 1
        self._changed.notify_all()
