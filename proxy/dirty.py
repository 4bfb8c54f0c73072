"""Which keys a write changes, for the dirty-key backlog (DESIGN.md section 6).

While tracking is on, a proxy records ``(db, key)`` for every key a forwarded
write changes, *after* the backend answered it (or after its outcome became
unknown), and sends them to the supervisor in batches (``messages.DirtyReport``).

``marks(table, args, db)`` is what one request changes:

* commands flagged ``write`` by the backend's command table: the keys of
  their key specs flagged ``OW``/``RW``/``RM`` (``COPY src dst`` marks only
  ``dst``); ``SORT ... STORE dst`` and ``MIGRATE`` (whose keys the key specs
  cannot locate) by their arguments;
* scripts and functions (``EVAL``, ``EVALSHA``, ``FCALL``): their declared keys;
* ``FLUSHDB``: ``(db, None)``, the whole db; ``FLUSHALL``: ``(None, None)``;
  ``SWAPDB a b``: ``(a, None)`` and ``(b, None)``;
  ``MOVE key n``: ``(db, key)`` and ``(n, key)``; ``COPY src dst DB n``: ``(n, dst)``.

``DirtyRecorder`` collects the marks of one process and sends them in batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from proxy import messages
from proxy.commands import CommandTable

__all__ = ["DIRTY_FLUSH_KEYS", "DIRTY_FLUSH_SECONDS", "SCRIPT_NAMES", "DirtyRecorder", "Mark", "batch_marks", "marks",
           "may_write"]

DIRTY_FLUSH_SECONDS = 0.05   # recorded keys go to the supervisor at least this often...
DIRTY_FLUSH_KEYS = 1000      # ...or as soon as this many are waiting

Mark = tuple  # (db | None, key | None)

SCRIPT_NAMES = frozenset((b"eval", b"evalsha", b"fcall"))
_MAX_FIRST_KEY_NAMES = 10_000   # spellings of command names remembered by batch_marks' caller
_SPECIAL = frozenset((b"flushdb", b"flushall", b"swapdb", b"move", b"copy", b"sort", b"migrate"))  # by arguments


def may_write(table: CommandTable | None, name: bytes) -> bool:
    """Whether requests named ``name`` can change keys (cheap: cached by the caller)."""
    lower = name.lower()
    if lower in SCRIPT_NAMES or lower in _SPECIAL:
        return True
    return table is not None and table.may_write(lower)


def _db(arg: bytes) -> int | None:
    return int(arg) if arg.isdigit() and len(arg) < 10 else None


def marks(table: CommandTable | None, args: Sequence[bytes], db: int) -> list[Mark]:
    """The ``(db, key)`` pairs one request may change (empty for reads)."""
    name = args[0].lower()
    if name not in _SPECIAL:
        if table is None:
            return []
        if name in SCRIPT_NAMES:
            return [(db, key) for key in table.keys(args)]
        return [(db, key) for key in table.changed_keys(args)]
    argc = len(args)
    if name == b"flushdb":
        return [(db, None)]
    if name == b"flushall":
        return [(None, None)]
    if name == b"swapdb":
        if argc == 3:
            a, b = _db(args[1]), _db(args[2])
            if a is not None and b is not None:
                return [(a, None), (b, None)]
        return []
    if name == b"move":
        if argc == 3:
            target = _db(args[2])
            key = bytes(args[1])
            return [(db, key)] if target is None else [(db, key), (target, key)]
        return []
    if name == b"copy":
        if argc < 3:
            return []
        target = db
        for i in range(3, argc - 1):
            if args[i].lower() == b"db":
                found = _db(args[i + 1])
                if found is not None:
                    target = found
                break
        return [(target, bytes(args[2]))]
    if name == b"sort":
        for i in range(2, argc - 1):
            if args[i].lower() == b"store":
                return [(db, bytes(args[i + 1]))]
        return []
    if name == b"migrate":
        # MIGRATE host port key|"" destination-db timeout [COPY] [REPLACE] [AUTH ...] [KEYS key ...]
        keys: list[Mark] = []
        if argc > 3 and args[3]:
            keys.append((db, bytes(args[3])))
        for i in range(6, argc):
            if args[i].lower() == b"keys":
                keys.extend((db, bytes(key)) for key in args[i + 1:])
                break
        return keys
    return []


def batch_marks(table: CommandTable | None, requests: Sequence[Sequence[bytes]], db: int,
                first_key: dict[bytes, bool]) -> list[Mark]:
    """``marks`` of many requests in one db (the writes of one pipeline run). The
    commonest write (``SET``, ``INCR``, ``HSET``...: its one key is argument 1) is
    told by one lookup of its name as sent in ``first_key``, a cache the caller
    keeps (and clears when the table changes), instead of a walk of its key specs."""
    out: list[Mark] = []
    append = out.append
    for args in requests:
        name = args[0]
        simple = first_key.get(name)
        if simple is None:
            simple = table is not None and name.lower() not in _SPECIAL and table.first_key_write(name)
            if table is not None and len(first_key) < _MAX_FIRST_KEY_NAMES:
                first_key[bytes(name)] = simple
        if simple:
            if len(args) > 1:
                append((db, bytes(args[1])))
        else:
            out.extend(marks(table, args, db))
    return out


class DirtyRecorder:
    """The keys of answered writes, while tracking is on, sent to the supervisor
    in batches (``messages.DirtyReport``) through ``send``.

    A key written again before its batch is sent is sent once: the backlog keeps
    each key once anyway, and a hot key written thousands of times a second
    would otherwise cost its pickling and pipe bytes every time."""

    __slots__ = ("worker", "send", "tracking", "pending", "_timer")

    def __init__(self, worker: int, send: Callable[[messages.Message], None]) -> None:
        self.worker = worker
        self.send = send
        self.tracking = False
        self.pending: dict[Mark, None] = {}   # recorded, not sent yet, in the order first answered
        self._timer: asyncio.TimerHandle | None = None

    def record(self, items: list[Mark]) -> None:
        """Keys whose writes were answered (or whose outcome became unknown)."""
        if not self.tracking:
            return
        pending = self.pending
        pending.update(dict.fromkeys(items))
        if len(pending) >= DIRTY_FLUSH_KEYS:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(DIRTY_FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if self.pending:
            items, self.pending = self.pending, {}
            self.send(messages.DirtyReport(self.worker, tuple(items)))

    def set_tracking(self, on: bool) -> None:
        if not on:
            self.flush()
        self.tracking = on
