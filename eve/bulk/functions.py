"""Function libraries copied at the start of every bulk copy (issue 13; DESIGN.md 8: they are not keys).

Redis 7.0+ and Valkey keep function libraries (``FUNCTION LOAD``) beside the
keyspace: SCAN never sees them, DUMP/RESTORE of keys does not carry them, so a
copy of every key still loses them. ``copy_functions`` copies them from the
source to the target and every mirror target, on every master of a cluster side
(each node holds its own libraries):

    source: FUNCTION LIST WITHCODE (names and code)    target: FUNCTION LIST WITHCODE
            FUNCTION DUMP (the payload)                         FUNCTION RESTORE payload REPLACE|APPEND
                                                                or, per library, FUNCTION LOAD [REPLACE] code

``FUNCTION RESTORE`` takes the whole payload, which is versioned like a key's
DUMP payload: a target of an older RDB format refuses it ("payload version or
checksum are wrong"), and then each library is loaded from its code, which is
all a library is (the payload carries the code and nothing else), so nothing is
lost by the fallback. A library the target already holds with the same code is
left as it is (a resumed job copies again harmlessly). The conflict policy
decides for a library of that name with other code (DESIGN.md 4.4):

- ``REPLACE``: the source's library replaces it (``FUNCTION RESTORE ... REPLACE``);
- ``NONE`` and ``MERGE`` (a library has no merge semantics): the target's is kept,
  and the name is listed in ``FunctionsCopy.conflicts``.

A source without functions (an engine that answers ``FUNCTION`` as an unknown
command) has nothing to copy: ``FunctionsCopy.reason`` says so. A target without
them, when the source has libraries, raises ``TargetError`` naming the
libraries: they would be lost. A source cluster's masters should hold the same
libraries; a name whose code differs between them raises ``SourceError``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eve.core.endpoints import ConnectionSpec
from eve.core.enums import ConflictPolicy
from eve.core.errors import EndpointError, SourceError, TargetError
from eve.redis.cluster import ClientOptions, ClusterClient, payload_refused
from eve.redis.wire import ReplyError

__all__ = ["FunctionsCopy", "copy_functions"]

log = logging.getLogger("eve.bulk.functions")

_OPTIONS = ClientOptions(timeout=30.0, reconnect_seconds=0, client_name="eve-functions")


@dataclass
class FunctionsCopy:
    """What ``copy_functions`` did, over every target side and master."""

    libraries: tuple[str, ...] = ()           # the source's library names
    copied: int = 0                            # (library, target master) pairs written
    unchanged: int = 0                         # already there with the same code
    conflicts: list[str] = field(default_factory=list)   # "name on address": kept as the target had it
    reason: str | None = None                  # why nothing was copied, when nothing could be

    def as_dict(self) -> dict[str, Any]:
        return {"libraries": list(self.libraries), "copied": self.copied, "unchanged": self.unchanged,
                "conflicts": list(self.conflicts), "reason": self.reason}


def copy_functions(source: ConnectionSpec, targets: Sequence[ConnectionSpec],
                   policy: ConflictPolicy = ConflictPolicy.REPLACE) -> FunctionsCopy:
    """Copy the source's function libraries to each of ``targets`` (the target, then mirror
    targets) under ``policy``; see the module docstring."""
    with ClusterClient(source, role="source", error=SourceError, options=_OPTIONS) as side:
        side.connect()
        libraries, payload = _read_source(side)
    if libraries is None:
        return FunctionsCopy(reason=f"the source {source.address} has no function libraries "
                                    "(it does not know FUNCTION): nothing to copy")
    report = FunctionsCopy(libraries=tuple(sorted(name.decode(errors="replace") for name in libraries)))
    if not libraries:
        return report
    for spec in targets:
        with ClusterClient(spec, role="target", error=TargetError, options=_OPTIONS) as side:
            side.connect()
            for address in side.nodes:
                _write_node(side, address, libraries, payload, policy, report)
    log.info("function libraries %s: %d written, %d unchanged, %d conflicts (kept the target's)",
             ", ".join(report.libraries), report.copied, report.unchanged, len(report.conflicts))
    return report


def _read_source(side: ClusterClient) -> tuple[dict[bytes, bytes] | None, bytes]:
    """name -> code of every library of the source (None: no functions), and its FUNCTION DUMP
    payload (of the first master: every master holds the same libraries)."""
    libraries: dict[bytes, bytes] = {}
    payload = b""
    for address in side.nodes:
        listed = _libraries(side, address, "source", SourceError)
        if listed is None:
            return None, b""
        for name, code in listed.items():
            if libraries.setdefault(name, code) != code:
                raise SourceError(f"function library {name.decode(errors='replace')!r} has other code on "
                                  f"{address} than on another master of the source: which one to copy?")
        if listed and not payload:
            dumped = side.call(address, "FUNCTION", "DUMP")
            if isinstance(dumped, ReplyError):
                raise SourceError(f"FUNCTION DUMP refused by the source {address}: {dumped}")
            payload = dumped
    return libraries, payload


def _libraries(side: ClusterClient, address: str, role: str, error: type[EndpointError]) -> dict[bytes, bytes] | None:
    """``FUNCTION LIST WITHCODE`` of one node: name -> code; None when it has no functions."""
    reply = side.call(address, "FUNCTION", "LIST", "WITHCODE")
    if isinstance(reply, ReplyError):
        if "unknown" in str(reply).lower():
            return None
        raise error(f"FUNCTION LIST refused by the {role} {address}: {reply}")
    try:
        return {fields[b"library_name"]: fields[b"library_code"]
                for fields in (dict(zip(entry[0::2], entry[1::2])) for entry in reply)}
    except (TypeError, KeyError) as exc:
        raise error(f"FUNCTION LIST WITHCODE of the {role} {address} replied {reply!r:.200}") from exc


def _write_node(side: ClusterClient, address: str, libraries: dict[bytes, bytes], payload: bytes,
                policy: ConflictPolicy, report: FunctionsCopy) -> None:
    present = _libraries(side, address, "target", TargetError)
    names = ", ".join(report.libraries)
    if present is None:
        raise TargetError(f"the target {address} has no functions (it does not know FUNCTION): the source's "
                          f"function libraries ({names}) would be lost")
    unchanged = [name for name, code in libraries.items() if present.get(name) == code]
    differing = [name for name in libraries if name in present and name not in unchanged]
    report.unchanged += len(unchanged)
    if policy is not ConflictPolicy.REPLACE:
        report.conflicts += [f"{name.decode(errors='replace')} on {address}" for name in differing]
        differing = []
    wanted = [name for name in libraries if name not in present or name in differing]
    if not wanted:
        return
    if len(wanted) == len(libraries):
        # Every library goes: one FUNCTION RESTORE, unless the target refuses the payload's format.
        reply = side.call(address, "FUNCTION", "RESTORE", payload, "REPLACE" if differing else "APPEND")
        if not isinstance(reply, ReplyError):
            report.copied += len(wanted)
            return
        if not payload_refused(str(reply)):
            raise TargetError(f"FUNCTION RESTORE refused by the target {address}: {reply}")
        log.info("target %s refuses the source's FUNCTION DUMP payload (%s): loading each library from its code",
                 address, reply)
    for name in wanted:
        load = ("FUNCTION", "LOAD", "REPLACE", libraries[name]) if name in differing \
            else ("FUNCTION", "LOAD", libraries[name])
        reply = side.call(address, *load)
        if isinstance(reply, ReplyError):
            raise TargetError(f"FUNCTION LOAD of library {name.decode(errors='replace')!r} refused by the target "
                              f"{address}: {reply}")
        report.copied += 1
