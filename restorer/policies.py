"""The conflict policy: what happens when a restored key already exists on the target.

``conflict_handling`` is the one place that switches on ``ConflictPolicy``
(DESIGN.md 4.4):

- ``REPLACE``: ``RESTORE ... REPLACE``; the source overwrites the target.
- ``NONE``: ``RESTORE`` without ``REPLACE``; a ``BUSYKEY`` reply keeps the
  target's key and reports a conflict (never a failure), unless the key is the
  job's own write (below).
- ``MERGE``: ``RESTORE`` without ``REPLACE``; on ``BUSYKEY`` a hash, set or
  sorted set is restored into a temporary key in the same hash slot and merged
  server-side by a Lua script (source fields, members and scores win; the
  target key keeps its TTL). Other types, and a type that differs between the
  two sides, are reported as conflicts and left untouched. Merged hash fields
  are written with HSET, so per-field TTLs (Redis 7.4+ / Valkey 9 HFE) of the
  source fields are not carried over by a merge.

The job's own writes are not conflicts. A batch is sent again when its RESTOREs
may have landed without the restorer knowing: the connection dropped before the
replies came (the pipeline is resent whole), or a restorer died before its batch
was acknowledged (the pipeline restarts from the last checkpoint). Such a key
answers ``BUSYKEY`` although nobody but Eve wrote it. So under ``NONE``, and under
``MERGE`` for a type without merge semantics, a ``BUSYKEY`` key is first compared
with the row (``_same_as_source``): when the target holds exactly the source's
value (its DUMP equals the payload, or equals the DUMP of the payload restored
into a temporary key in the same slot: the target's own serialization, for a
target of another RDB version or encoding) and the source's expiry (within
``SAME_EXPIRY_TOLERANCE_MS``; none when the row has none), the key counts as
restored: it is what the copy would write. Any other value is a conflict, as
before; a comparison that cannot be made (DUMP refused, the payload refused by
the target) is a conflict too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from eve.core.enums import ConflictPolicy
from eve.redis.logical import MERGE_SCRIPT, MERGE_SHA, SAME_EXPIRY_TOLERANCE_MS
from eve.redis.rdb import MERGEABLE_TYPES, payload_type
from eve.redis.topology import key_slot
from eve.redis.wire import ReplyError, pack

__all__ = [
    "CONFLICT",
    "ERROR",
    "MERGE_SCRIPT",
    "MERGE_TMP_TTL_MS",
    "RESTORED",
    "SAME_EXPIRY_TOLERANCE_MS",
    "ConflictHandling",
    "compare_tmp_key",
    "conflict_handling",
    "merge_tmp_key",
]

# How each BUSYKEY row ended: (RESTORED, None), (CONFLICT, reason) or
# (ERROR, server message) for the worker to classify like any RESTORE error.
RESTORED, CONFLICT, ERROR = "restored", "conflict", "error"
Resolution = tuple[str, Any]
Row = tuple[bytes, int, bytes]
# send(packed, count) -> replies, with the worker's reconnect handling.
Send = Callable[[bytes, int], list[Any]]

# A crash between restoring the temporary key and the merge (or the comparison) must
# not leave it behind for good: it expires by itself.
MERGE_TMP_TTL_MS = 60_000


_ASKING = pack("ASKING")
_OK = b"OK"
_BUSYKEY_CONFLICT: Resolution = (CONFLICT, "BUSYKEY")
_OWN_WRITE: Resolution = (RESTORED, None)


def _hash_tag(key: bytes) -> bytes | None:
    """The key's hash tag per the cluster spec: between the first '{' and the next '}', non-empty."""
    start = key.find(b"{")
    if start < 0:
        return None
    end = key.find(b"}", start + 1)
    if end < 0 or end == start + 1:
        return None
    return key[start + 1:end]


def merge_tmp_key(key: bytes, worker: str) -> bytes:
    """A temporary key in the same hash slot as ``key``, private to one restorer.

    A key with a hash tag keeps it by appending; any other key is wrapped in
    braces so that the whole key becomes the tag. The wrap cannot work for an
    untagged key that contains '}' (the tag would end early) or for the empty
    key (an empty tag is no tag): those get a tag searched for their slot
    (rare, and still one slot: the script needs both keys there).
    """
    return _tmp_key(key, b":eve-merge:" + worker.encode())


def compare_tmp_key(key: bytes, worker: str) -> bytes:
    """Like ``merge_tmp_key``, for the own-write comparison (module docstring)."""
    return _tmp_key(key, b":eve-compare:" + worker.encode())


def _tmp_key(key: bytes, suffix: bytes) -> bytes:
    if _hash_tag(key) is not None:
        return key + suffix
    if key and b"}" not in key:
        return b"{" + key + b"}" + suffix
    slot = key_slot(key)
    n = 0
    while key_slot(b"%d" % n) != slot:
        n += 1
    return b"{%d}" % n + suffix


class ConflictHandling:
    """How one policy restores: with REPLACE or not, and what a BUSYKEY reply becomes."""

    policy: ConflictPolicy
    replace: bool
    merges = False   # hash, set and zset keys are merged into the target's (a logical copy asks)

    def resolve(self, send: Send, address: str, rows: Sequence[Row], asking: bool) -> list[Resolution]:
        """One resolution per BUSYKEY row, in order."""
        raise NotImplementedError

    def forget(self, address: str) -> None:
        """The connection to ``address`` was reopened: per-connection state is gone."""


class _Replace(ConflictHandling):
    policy, replace = ConflictPolicy.REPLACE, True

    def resolve(self, send: Send, address: str, rows: Sequence[Row], asking: bool) -> list[Resolution]:
        # RESTORE ... REPLACE never answers BUSYKEY; if a server does, keep its key and say so.
        return [_BUSYKEY_CONFLICT] * len(rows)


def _same_as_source(send: Send, rows: Sequence[Row], indexes: Sequence[int], asking: bool,
                    worker: str) -> list[bool]:
    """Per row: does the target key hold the source's value and expiry already (the job's
    own write, module docstring)? One pipeline: DUMP and PTTL of the key, and the payload
    restored into a temporary key, DUMPed and deleted."""
    if not indexes:
        return []
    prefix = _ASKING if asking else b""
    commands = []
    for index in indexes:
        key, _expiry, payload = rows[index]
        tmp = compare_tmp_key(key, worker)
        commands.append(prefix + pack("DUMP", key) + prefix + pack("PTTL", key)
                        + prefix + pack("RESTORE", tmp, MERGE_TMP_TTL_MS, payload, "REPLACE")
                        + prefix + pack("DUMP", tmp) + prefix + pack("DEL", tmp))
    step = 2 if asking else 1
    per_row = 5 * step
    replies = send(b"".join(commands), per_row * len(indexes))
    now_ms = time.time_ns() // 1_000_000
    same: list[bool] = []
    for i, index in enumerate(indexes):
        _key, expiry, payload = rows[index]
        dump, pttl, restored, tmp_dump = (replies[i * per_row + step * (n + 1) - 1] for n in range(4))
        if dump.__class__ is not bytes or pttl.__class__ is not int or pttl == -2:
            same.append(False)  # gone since BUSYKEY, or DUMP/PTTL refused: no proof it is ours
            continue
        value_same = dump == payload or (restored == _OK and tmp_dump == dump)
        if expiry:
            expiry_same = pttl >= 0 and abs(now_ms + pttl - expiry) <= SAME_EXPIRY_TOLERANCE_MS
        else:
            expiry_same = pttl == -1
        same.append(value_same and expiry_same)
    return same


class _KeepTarget(ConflictHandling):
    policy, replace = ConflictPolicy.NONE, False

    def __init__(self, worker: str) -> None:
        self.worker = worker

    def resolve(self, send: Send, address: str, rows: Sequence[Row], asking: bool) -> list[Resolution]:
        same = _same_as_source(send, rows, range(len(rows)), asking, self.worker)
        return [_OWN_WRITE if ours else _BUSYKEY_CONFLICT for ours in same]


class _Merge(ConflictHandling):
    policy, replace, merges = ConflictPolicy.MERGE, False, True

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self._loaded: set[str] = set()  # addresses whose connection has the script loaded

    def forget(self, address: str) -> None:
        self._loaded.discard(address)

    def resolve(self, send: Send, address: str, rows: Sequence[Row], asking: bool) -> list[Resolution]:
        resolutions: list[Resolution | None] = [None] * len(rows)
        mergeable: list[int] = []
        unmergeable: list[int] = []
        for index, (_key, _expiry, payload) in enumerate(rows):
            (mergeable if payload_type(payload) in MERGEABLE_TYPES else unmergeable).append(index)
        # Merging a key with itself changes nothing: only a type without merge semantics needs
        # the own-write comparison to tell the job's own write from a conflict.
        for index, ours in zip(unmergeable, _same_as_source(send, rows, unmergeable, asking, self.worker)):
            resolutions[index] = _OWN_WRITE if ours else (CONFLICT,
                                                          f"no merge semantics for {payload_type(rows[index][2])}")
        if mergeable:
            use_sha = True
            if address not in self._loaded:
                reply = send(pack("SCRIPT", "LOAD", MERGE_SCRIPT), 1)[0]
                if isinstance(reply, ReplyError):
                    use_sha = False  # SCRIPT refused (ACL): EVAL still works
                else:
                    self._loaded.add(address)
            pending = mergeable
            merged = self._merge(send, rows, pending, asking, use_sha)
            retry = [index for index, reply in zip(pending, merged) if _is_noscript(reply)]
            if retry:
                # The script cache was flushed (SCRIPT FLUSH, restart): EVAL carries the script.
                self._loaded.discard(address)
                merged_again = self._merge(send, rows, retry, asking, False)
                by_index = dict(zip(retry, merged_again))
                merged = [by_index.get(index, reply) for index, reply in zip(pending, merged)]
            for index, resolution in zip(pending, merged):
                resolutions[index] = resolution
        return resolutions  # type: ignore[return-value]

    def _merge(self, send: Send, rows: Sequence[Row], indexes: list[int], asking: bool,
               use_sha: bool) -> list[Any]:
        """RESTORE the source value into the temporary key, run the script, drop the temporary key."""
        prefix = _ASKING if asking else b""
        commands = []
        for index in indexes:
            key, expiry, payload = rows[index]
            tmp = merge_tmp_key(key, self.worker)
            script = (pack("EVALSHA", MERGE_SHA, 2, key, tmp, expiry) if use_sha
                      else pack("EVAL", MERGE_SCRIPT, 2, key, tmp, expiry))
            commands.append(prefix + pack("RESTORE", tmp, MERGE_TMP_TTL_MS, payload, "REPLACE")
                            + prefix + script + prefix + pack("DEL", tmp))
        per_row = 6 if asking else 3
        replies = send(b"".join(commands), per_row * len(indexes))
        step = 2 if asking else 1
        results: list[Any] = []  # Resolution, or the NOSCRIPT reply itself
        for i in range(len(indexes)):
            restore_reply, script_reply = replies[i * per_row + step - 1], replies[i * per_row + 2 * step - 1]
            if isinstance(restore_reply, ReplyError):
                results.append((ERROR, str(restore_reply)))
            elif isinstance(script_reply, ReplyError):
                results.append(script_reply if _is_noscript(script_reply) else (ERROR, str(script_reply)))
            else:
                code, message = script_reply[0], script_reply[1]
                message = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
                results.append((RESTORED, None) if code in (1, 2) else (CONFLICT, message))
        return results


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT")


def conflict_handling(policy: ConflictPolicy, worker: str) -> ConflictHandling:
    """The one switch on ConflictPolicy (eve.core.enums)."""
    if policy is ConflictPolicy.REPLACE:
        return _Replace()
    if policy is ConflictPolicy.NONE:
        return _KeepTarget(worker)
    if policy is ConflictPolicy.MERGE:
        return _Merge(worker)
    raise ValueError(f"unknown conflict policy {policy!r}")
