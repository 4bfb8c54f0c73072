"""Compatibility checks of a run's Prepare step (DESIGN.md section 7).

``check_compatibility`` looks at the source, the target and each mirror target
and returns the problems it found as ``CompatIssue`` values: a stable code,
whether it blocks approval, a message in operator words and the evidence
(strings only, so an issue stores and prints as JSON). A compatible pair gives
an empty list. A server that cannot be reached raises ``UnavailableError``
(refused credentials ``AuthError``) naming the endpoint; the caller turns that
into a failed Prepare.

Codes (``CODES``):

* ``SOURCE_VERSION_TOO_OLD`` (blocking): the source is older than Redis 5.
* ``DUMP_VERSION_MISMATCH``: the target refuses the source's DUMP payloads,
  found by restoring a real probe payload (relabelled for the target's format
  where the copy would relabel it: ``eve.redis.rdb``). Blocking in
  ``DUMP_RESTORE`` mode; in ``AUTO``/``LOGICAL`` refused keys are copied
  logically (DESIGN.md 4).
* ``KEY_MOVEMENT``: not every key restores as it is; per type and encoding,
  with the keyspace analysis' counts, how the keys will move to that target
  (``as is``, ``transcoded``: relabelled and restored at full speed,
  ``logical``: copied with ordinary commands, ``cannot``: an error key). Needs
  the analysis (``check_compatibility(analysis=...)``). Blocking when no key
  of a core type could move (``DUMP_RESTORE`` towards a format that knows none
  of them); module keys are ``MODULES_DIFFER``'s business.
* ``MODULES_DIFFER``: the source has a module the target lacks (or has in an
  older major version). Blocking when the source holds keys of a type the
  module provides. The message names the module, the key types with their
  counts (from the keyspace analysis when given, else from a sample) and the
  search indexes affected (every index when RediSearch is missing; those ``ON
  JSON`` when RedisJSON is). Blocking but acknowledgeable (``ACKNOWLEDGEABLE``):
  an operator who acknowledges it gets everything else copied, and those keys as
  error keys naming the module (issue 23).
* ``ACL_MISSING_COMMANDS``: a role's user cannot run a command Eve needs in
  that role. Blocking for the commands the chosen mode needs.
* ``CLUSTER_MODE_DIFFERS``: standalone vs cluster. Blocking only when a
  standalone source holds keys outside db 0 and the target is a cluster.
* ``INTERLAY_LISTENERS_MISMATCH`` (blocking): the interlay's listener count
  differs from the source's number of masters.
* ``TARGET_MEMORY_TOO_SMALL`` (blocking): the target's maxmemory is below the
  source's dataset.
* ``TARGET_OLDER_VERSION`` (non-blocking): the target is an older major version.
* ``SCRIPTS_NOT_CARRIED`` (non-blocking): the source's script cache holds
  scripts (``number_of_cached_scripts`` in ``INFO memory``). The cache is not
  data: only the scripts loaded through the interlay (``SCRIPT LOAD``, ``EVAL``)
  reach the target; an ``EVALSHA`` of another one gets ``NOSCRIPT`` there
  after the cutover, until the application loads it again.
* ``CROSS_SLOT_COMMANDS``: commands through the run's interlay whose keys spanned
  hash slots (counted from approval on: found on a later Prepare), for a target
  that is a cluster. Blocking, but acknowledgeable (``ACKNOWLEDGEABLE``), when some
  of them will fail after the cutover (transactions, scripts, every multi-key
  command a cluster cannot split); non-blocking when the interlay splits them all.
* ``SAME_SERVER``, ``REPLICATION_LINK``, ``TARGET_READ_ONLY`` (blocking) and
  ``SOURCE_IS_REPLICA`` (non-blocking): who the sides really are, by ``run_id``
  and ``master_replid`` (``eve.prepare.preflight``, the same check as ``eve
  migrate``'s): two endpoint names for one server, sides linked by replication,
  a target that is a replica.

Every probe key is a scratch key (``eve:probe:{<random>}``) with a short TTL,
deleted in the same pipeline that wrote it, so a crash leaves nothing for long.
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

from eve.core.endpoints import ConnectionSpec, EndpointConfig
from eve.core.enums import DataMovementMode
from eve.core.errors import (
    AuthError,
    ConfigError,
    EndpointError,
    Side,
    UnavailableError,
)
from eve.prepare import preflight
from eve.prepare.analysis import Analysis
from eve.redis.rdb import (
    AS_IS,
    LOGICAL,
    RELABEL,
    TargetFormat,
    describe_type,
    payload_rdb_version,
    rdb_version_of,
    relabel,
    type_code_for,
)
from eve.redis.topology import Node, cluster_masters, key_slot, node_spec, parse_info
from eve.redis.wire import FastConnection, ReplyError, pack
from proxy.slots import fails_on_cluster

__all__ = [
    "ACKNOWLEDGEABLE",
    "CODES",
    "CORE_TYPES",
    "MIN_SOURCE_MAJOR",
    "CompatIssue",
    "ServerVersion",
    "blocking",
    "check_compatibility",
    "module_issues",
    "rdb_format",
    "server_version",
    "source_version_issue",
]

CODES = (
    "SOURCE_VERSION_TOO_OLD",
    "DUMP_VERSION_MISMATCH",
    "KEY_MOVEMENT",
    "MODULES_DIFFER",
    "ACL_MISSING_COMMANDS",
    "CLUSTER_MODE_DIFFERS",
    "INTERLAY_LISTENERS_MISMATCH",
    "TARGET_MEMORY_TOO_SMALL",
    "TARGET_OLDER_VERSION",
    "SCRIPTS_NOT_CARRIED",
    "CROSS_SLOT_COMMANDS",
    preflight.SAME_SERVER,
    preflight.REPLICATION_LINK,
    preflight.TARGET_READ_ONLY,
    preflight.SOURCE_IS_REPLICA,
)
# Blocking issues an operator may still acknowledge: the application may stop using those
# commands, or accept their errors, before the cutover.
# MODULES_DIFFER: an operator who acknowledges it gets everything else copied, and the module's
# keys as error keys naming the module (issue 23).
ACKNOWLEDGEABLE = frozenset({"CROSS_SLOT_COMMANDS", "MODULES_DIFFER"})
# The pre-flight findings Prepare reports (a non-empty target is the conflict policy's business).
_IDENTITY_CODES = frozenset({preflight.SAME_SERVER, preflight.REPLICATION_LINK, preflight.TARGET_READ_ONLY,
                             preflight.SOURCE_IS_REPLICA})

MIN_SOURCE_MAJOR = 5
CORE_TYPES = frozenset({"string", "list", "set", "zset", "hash", "stream"})
DEFAULT_TIMEOUT = 10.0
PROBE_TTL_MS = 10_000          # the source's probe key lives this long at most
TARGET_PROBE_TTL_MS = 60_000   # the restored probe copy on the target
MODULE_SCAN_LIMIT = 10_000     # keys per node and db looked at to find module-typed keys
CLIENT_NAME = "eve-compat"

# Modules that ship inside the engine and are listed by MODULE LIST without
# being loaded: Valkey 9 lists "lua", Redis 8 lists "vectorset".
_BUILTIN_MODULES = frozenset({"lua", "vectorset"})
# Key types (as TYPE names them) of well-known modules, to tell whether the
# source holds data of a module the target lacks.
_MODULE_KEY_TYPES: dict[str, frozenset[str]] = {
    "graph": frozenset({"graphdata"}),  # FalkorDB / RedisGraph
    "ReJSON": frozenset({"ReJSON-RL"}),
    "timeseries": frozenset({"TSDB-TYPE"}),
    "bf": frozenset({"MBbloom--", "MBbloomCF", "TopK-TYPE", "CMSk-TYPE", "TDIS-TYPE"}),
    "search": frozenset(),  # RediSearch keeps indexes beside the keyspace, no key type (eve.bulk.indexes)
}
_PAYLOAD_REFUSED = "payload version or checksum"
_DENIED = ("NOPERM", "NOAUTH")


@dataclass(frozen=True)
class CompatIssue:
    code: str                 # one of CODES
    blocking: bool            # approval is refused while a blocking issue is open
    message: str              # the problem, in operator words
    evidence: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- versions


@dataclass(frozen=True)
class ServerVersion:
    """What a server says it is. Valkey reports ``redis_version:7.2.4`` (the
    Redis level it is compatible with) and its own ``valkey_version``."""

    engine: str          # "redis", "valkey", ...
    version: str         # the engine's own version
    redis_version: str   # the Redis version it is compatible with

    @property
    def major(self) -> int:
        return _major(self.version)

    @property
    def redis_major(self) -> int:
        return _major(self.redis_version)

    def __str__(self) -> str:
        return f"{self.engine} {self.version}"


def _major(version: str) -> int:
    match = re.match(r"\s*(\d+)", version)
    return int(match.group(1)) if match else 0


def server_version(info: Mapping[str, str]) -> ServerVersion:
    """Engine and version from ``INFO server`` fields."""
    redis_version = info.get("redis_version", "0")
    if info.get("valkey_version"):
        return ServerVersion("valkey", info["valkey_version"], redis_version)
    engine = info.get("server_name") or "redis"
    own = info.get(f"{engine}_version") or redis_version
    return ServerVersion(engine, own, redis_version)


def source_version_issue(version: ServerVersion) -> CompatIssue | None:
    """SOURCE_VERSION_TOO_OLD when the source is below Redis 5 (by its Redis-compatible level)."""
    if version.redis_major >= MIN_SOURCE_MAJOR:
        return None
    return CompatIssue(
        "SOURCE_VERSION_TOO_OLD", True,
        f"The source runs {version}; Eve supports sources from Redis {MIN_SOURCE_MAJOR}.0 on "
        "(older servers lack commands and DUMP formats the copy relies on). Upgrade the source first.",
        {"source_engine": version.engine, "source_version": version.version,
         "minimum_version": f"{MIN_SOURCE_MAJOR}.0"})


def _older_version_issue(source: ServerVersion, target: ServerVersion, label: str) -> CompatIssue | None:
    # Within one engine family the engine's own major counts; across families
    # (Redis <-> Valkey) the Redis-compatible level each reports.
    if source.engine == target.engine:
        older, source_major, target_major = target.major < source.major, source.major, target.major
    else:
        older = target.redis_major < source.redis_major
        source_major, target_major = source.redis_major, target.redis_major
    if not older:
        return None
    return CompatIssue(
        "TARGET_OLDER_VERSION", False,
        f"The {label} runs {target}, an older major version than the source ({source}); the target "
        "should be the same major version or newer, or commands and data formats the application "
        "uses may be missing there.",
        {"endpoint": label, "source_version": str(source), "target_version": str(target),
         "source_major": str(source_major), "target_major": str(target_major)})


def rdb_format(version: ServerVersion) -> TargetFormat:
    """The payload format a server reads and writes (``eve.redis.rdb``): Valkey by its own
    version, any other engine as the Redis version it reports."""
    if version.engine == "valkey":
        return TargetFormat("valkey", version.version, rdb_version_of("valkey", version.version))
    return TargetFormat("redis", version.redis_version, rdb_version_of("redis", version.redis_version))


# --------------------------------------------------------------------------- connections


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _denied(reply: Any) -> bool:
    return isinstance(reply, ReplyError) and str(reply).startswith(_DENIED)


class _Side:
    """One endpoint of the check (source, target or a mirror target): its
    connections, opened on first use and cached per connection spec."""

    def __init__(self, label: str, config: EndpointConfig, timeout: float) -> None:
        self.label = label
        self.config = config
        self.timeout = timeout
        self._conns: dict[ConnectionSpec, FastConnection] = {}
        self.cluster = False
        self.masters: list[Node] = []

    def conn(self, spec: ConnectionSpec) -> FastConnection:
        conn = self._conns.get(spec)
        if conn is None:
            conn = FastConnection(spec, timeout=self.timeout, client_name=CLIENT_NAME)
            try:
                conn.open()
            except (UnavailableError, AuthError) as exc:
                raise self._named(exc) from exc
            self._conns[spec] = conn
        return conn

    def specs(self, roles: Sequence[str]) -> list[ConnectionSpec]:
        """The distinct connection specs of ``roles``, in order."""
        seen: list[ConnectionSpec] = []
        for role in roles:
            spec = self.config.for_role(role)
            if spec not in seen:
                seen.append(spec)
        return seen

    def node_specs(self, spec: ConnectionSpec) -> list[ConnectionSpec]:
        """The spec aimed at each master (cluster), or the spec itself (standalone)."""
        return [node_spec(spec, node) for node in self.masters] if self.cluster else [spec]

    def _named(self, exc: EndpointError) -> EndpointError:
        """The same error, its message starting with the endpoint's label."""
        if str(exc).startswith(self.label):
            return exc
        return type(exc)(f"{self.label}: {exc}")

    def call(self, spec: ConnectionSpec, *args: Any) -> Any:
        return self.pipeline(spec, [args])[0]

    def pipeline(self, spec: ConnectionSpec, commands: Sequence[Sequence[Any]]) -> list[Any]:
        conn = self.conn(spec)
        try:
            return conn.pipeline(b"".join(pack(*c) for c in commands), len(commands))
        except UnavailableError as exc:
            raise self._named(exc) from exc

    def in_db(self, spec: ConnectionSpec, db: int, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Run commands in database ``db``; the connection is back in db 0 afterwards."""
        if not db:
            return self.pipeline(spec, commands)
        replies = self.pipeline(spec, [("SELECT", db), *commands, ("SELECT", 0)])
        if isinstance(replies[0], ReplyError):
            raise EndpointError(f"SELECT {db} failed on the {self.label}: {replies[0]}")
        return replies[1:-1]

    def scan(self, spec: ConnectionSpec, db: int, limit: int, count: int = 1000) -> Iterator[list[bytes]]:
        """Batches of keys from SCAN, until the cursor returns to 0 or ``limit`` keys were seen."""
        cursor: Any = b"0"
        seen = 0
        while seen < limit:
            reply = self.in_db(spec, db, [("SCAN", cursor, "COUNT", count)])[0]
            if isinstance(reply, ReplyError):
                return
            cursor, keys = reply[0], reply[1]
            seen += len(keys)
            if keys:
                yield keys
            if cursor in (b"0", 0):
                return

    def ask(self, *args: Any, roles: Sequence[str] = ("admin", "read", "write"),
            node: Node | None = None) -> Any:
        """Run a command with the first role's credentials that are allowed to."""
        reply: Any = None
        for spec in self.specs(roles):
            reply = self.call(node_spec(spec, node) if node else spec, *args)
            if not _denied(reply):
                return reply
        return reply

    def info(self, section: str, node: Node | None = None) -> dict[str, str]:
        reply = self.ask("INFO", section, node=node)
        if isinstance(reply, ReplyError):
            raise EndpointError(f"INFO {section} failed on the {self.label}: {reply}")
        return parse_info(reply)

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


@dataclass
class _Facts:
    version: ServerVersion
    cluster: bool
    masters: int                            # 1 for a standalone server
    dbs: list[int]                          # databases holding keys
    used_memory: int                        # dataset bytes, summed over masters
    used_memory_field: str                  # which INFO field that came from
    maxmemory: int                          # summed over masters; 0 when any node is unlimited
    modules: dict[str, tuple[int, str]] | None  # name -> (version, path); None: unknown


def _gather(side: _Side) -> _Facts:
    version = server_version(side.info("server"))
    side.cluster = side.info("cluster").get("cluster_enabled") == "1"
    if side.cluster:
        error: Exception | None = None
        for spec in side.specs(("admin", "read", "write")):
            try:
                side.masters = cluster_masters(side.conn(spec))
                break
            except EndpointError as exc:
                if isinstance(exc, (UnavailableError, AuthError)):
                    raise side._named(exc) from exc
                error = exc
        else:
            raise EndpointError(f"CLUSTER SLOTS failed on the {side.label}: {error}")
    nodes: list[Node | None] = list(side.masters) if side.cluster else [None]
    dbs: set[int] = set()
    used = maxmemory = 0
    used_field = "used_memory_dataset"
    unlimited = False
    for node in nodes:
        memory = side.info("memory", node)
        if "used_memory_dataset" in memory:
            used += int(memory["used_memory_dataset"])
        else:
            used_field = "used_memory"
            used += int(memory.get("used_memory", 0))
        limit = _maxmemory(side, node, memory)
        unlimited = unlimited or limit == 0
        maxmemory += limit
        keyspace = side.info("keyspace", node)
        dbs.update(int(name[2:]) for name, value in keyspace.items()
                   if name.startswith("db") and name[2:].isdigit() and not value.startswith("keys=0,"))
    return _Facts(version, side.cluster, len(side.masters) if side.cluster else 1, sorted(dbs), used,
                  used_field, 0 if unlimited else maxmemory, _modules(side))


def _maxmemory(side: _Side, node: Node | None, memory: Mapping[str, str]) -> int:
    reply = side.ask("CONFIG", "GET", "maxmemory", node=node)
    if isinstance(reply, list) and len(reply) == 2:
        return int(reply[1])
    # CONFIG may be renamed or refused (managed services): INFO memory has it too.
    return int(memory.get("maxmemory", 0))


def _modules(side: _Side) -> dict[str, tuple[int, str]] | None:
    reply = side.ask("MODULE", "LIST")
    if not isinstance(reply, list):
        return None  # refused or unknown command: nothing to compare
    modules: dict[str, tuple[int, str]] = {}
    for entry in reply:
        fields = dict(zip(entry[::2], entry[1::2])) if isinstance(entry, list) else {}
        name = _text(fields.get(b"name", b""))
        path = _text(fields.get(b"path", b""))
        if not name or name in _BUILTIN_MODULES or path in ("", name):
            continue
        modules[name] = (int(fields.get(b"ver", 0) or 0), path)
    return modules


# --------------------------------------------------------------------------- scratch keys


def _scratch_token(node: Node | None) -> str:
    """A random hash tag whose slot the node serves (any tag for a standalone server)."""
    while True:
        token = secrets.token_hex(6)
        if node is None:
            return token
        slot = key_slot(f"{{{token}}}".encode())
        if any(start <= slot <= end for start, end in node.slots):
            return token


def _probe_node(side: _Side) -> Node | None:
    return side.masters[0] if side.cluster and side.masters else None


# --------------------------------------------------------------------------- DUMP probe


@dataclass
class _DumpProbe:
    source_rdb: int | None = None
    target_rdb: int | None = None
    accepted: bool | None = None     # None: could not be tried
    target_reply: str = ""
    how: str = ""


def _source_payload(source: _Side) -> tuple[bytes | None, str]:
    """A DUMP payload written by the source, and how it was obtained."""
    node = _probe_node(source)
    refusal = ""
    for spec in source.specs(("admin", "write")):
        key = f"eve:probe:{{{_scratch_token(node)}}}"
        # SET, DUMP and DEL in one round trip: the key exists for that long only
        # (and its TTL removes it even if DEL were refused).
        replies = source.pipeline(node_spec(spec, node) if node else spec, [
            ("SET", key, "eve-probe", "PX", PROBE_TTL_MS), ("DUMP", key), ("DEL", key)])
        if isinstance(replies[1], bytes):
            return replies[1], "DUMP of a probe key written on the source, restored on the target under a scratch name"
        refusal = _text(replies[0] if isinstance(replies[0], ReplyError) else replies[1])
    # A read-only source (a replica, or a user without writes): DUMP an existing key.
    for spec in source.node_specs(source.config.read):
        for db in _dbs_of(source, spec):
            for keys in source.scan(spec, db, 100, count=100):
                for payload in source.in_db(spec, db, [("DUMP", key) for key in keys[:20]]):
                    if isinstance(payload, bytes):
                        return payload, (f"the probe key could not be written on the source ({refusal}); "
                                         "used the DUMP of an existing source key")
    return None, f"the probe key could not be written on the source ({refusal}) and no source key could be read"


def _dbs_of(side: _Side, spec: ConnectionSpec) -> list[int]:
    reply = side.call(spec, "INFO", "keyspace")
    if isinstance(reply, ReplyError):
        return [0]
    return sorted(int(name[2:]) for name in parse_info(reply) if name.startswith("db") and name[2:].isdigit())


def _probe_dump(source: _Side, target: _Side, target_format: TargetFormat) -> _DumpProbe:
    """Restore a real source payload on the target under a scratch name, relabelled when the
    copy would relabel it.

    The target's own RDB version comes from a DUMP of a scratch key written
    there. When the target user cannot RESTORE (its ACL is reported on its own),
    the verdict falls back to the table of ``eve.redis.rdb`` (``TargetFormat.plan``).
    """
    probe = _DumpProbe()
    payload, probe.how = _source_payload(source)
    fallback = None
    if payload is not None:
        try:
            probe.source_rdb = payload_rdb_version(payload)
        except ValueError:
            payload = None
    if payload is not None:
        how = target_format.plan(payload)
        fallback = how != LOGICAL
        if how == RELABEL:
            payload = relabel(payload, target_format.rdb)
            probe.how += f", relabelled from RDB {probe.source_rdb} to {target_format.rdb} as the copy does"
    node = _probe_node(target)
    for spec in target.specs(("admin", "write")):
        token = _scratch_token(node)
        restored, written = f"eve:probe:{{{token}}}", f"eve:probe:{{{token}}}:rdb"
        commands: list[tuple[Any, ...]] = []
        restoring = payload is not None and probe.accepted is None
        if restoring:
            commands += [("RESTORE", restored, TARGET_PROBE_TTL_MS, payload), ("DEL", restored)]
        commands += [("SET", written, "eve-probe", "PX", PROBE_TTL_MS), ("DUMP", written), ("DEL", written)]
        replies = target.pipeline(node_spec(spec, node) if node else spec, commands)
        if restoring:
            reply = replies[0]
            if not isinstance(reply, ReplyError):
                probe.accepted, probe.target_reply = True, _text(reply)
            elif _PAYLOAD_REFUSED in str(reply):
                probe.accepted, probe.target_reply = False, str(reply)
            else:
                probe.target_reply = str(reply)
        if isinstance(replies[-2], bytes) and probe.target_rdb is None:
            probe.target_rdb = payload_rdb_version(replies[-2])
        if probe.accepted is not None and probe.target_rdb is not None:
            break
    if probe.accepted is None and fallback is not None:
        probe.accepted = fallback
        probe.how += (f"; but the target could not try it ({probe.target_reply or 'no payload'}), "
                      "so the RDB versions were compared")
    return probe


def _dump_issue(probe: _DumpProbe, mode: str, source: _Facts, target: _Facts, label: str) -> CompatIssue | None:
    if probe.accepted is not False:
        return None
    evidence = {
        "endpoint": label,
        "source_version": str(source.version), "target_version": str(target.version),
        "source_rdb_version": str(probe.source_rdb) if probe.source_rdb is not None else "unknown",
        "target_rdb_version": str(probe.target_rdb) if probe.target_rdb is not None else "unknown",
        "probe": probe.how,
        "mode": mode,
    }
    if probe.target_reply:
        evidence["target_reply"] = probe.target_reply
    blocking = mode == DataMovementMode.DUMP_RESTORE.value
    if blocking:
        consequence = ("In DUMP_RESTORE mode every key would fail; choose AUTO or LOGICAL mode, "
                       "or a target that reads this format.")
    elif mode == DataMovementMode.AUTO.value:
        consequence = ("AUTO mode copies each refused key with ordinary commands (a logical copy) instead, "
                       "which is slower; the test run shows the rate.")
        evidence["fallback"] = "logical copy"
    else:
        consequence = "LOGICAL mode copies keys with ordinary commands and does not depend on DUMP payloads."
        evidence["fallback"] = "logical copy"
    return CompatIssue(
        "DUMP_VERSION_MISMATCH", blocking,
        f"The {label} ({target.version}) refuses DUMP payloads of the source ({source.version}): "
        f"RDB format {evidence['source_rdb_version']} is newer than the target reads. {consequence}",
        evidence)


# --------------------------------------------------------------------------- key movement

_CANNOT = "cannot"
_MOVES = (AS_IS, RELABEL, LOGICAL, _CANNOT)
_MEANING = {AS_IS: "restored as they are", RELABEL: "transcoded (payload relabelled, restored at full speed)",
            LOGICAL: "copied logically (ordinary commands, slower)", _CANNOT: "cannot move (error keys)"}


def _how_keys_move(kind: str, encoding: str, source_rdb: int, target: TargetFormat, mode: str,
                   module_on_target: bool) -> str:
    """One of AS_IS, RELABEL, LOGICAL, _CANNOT for keys of this type and encoding (the restorer's
    decision, restorer.worker ``_Target.route``, made ahead of time)."""
    module = kind not in CORE_TYPES
    if mode == DataMovementMode.LOGICAL.value:
        return _CANNOT if module else LOGICAL
    how = target.plan_for(type_code_for(kind, encoding, source_rdb), source_rdb)
    if module:
        return AS_IS if how == AS_IS and module_on_target else _CANNOT
    if how == LOGICAL and mode == DataMovementMode.DUMP_RESTORE.value:
        return _CANNOT
    return how


def _movement_issue(analysis: Analysis | None, probe: _DumpProbe, src: _Facts, tgt: _Facts, mode: str,
                    label: str) -> CompatIssue | None:
    """KEY_MOVEMENT (module docstring); None when every key restores as it is."""
    if analysis is None or not analysis.encodings:
        return None
    source_rdb = probe.source_rdb if probe.source_rdb is not None else rdb_format(src.version).rdb
    target = rdb_format(tgt.version)
    counts: dict[str, dict[str, int]] = {how: {} for how in _MOVES}
    core = {AS_IS: 0, RELABEL: 0, LOGICAL: 0, _CANNOT: 0}
    for stats in analysis.encodings:
        provides = any(stats.type in _MODULE_KEY_TYPES.get(name, ()) for name in tgt.modules or {})
        how = _how_keys_move(stats.type, stats.encoding, source_rdb, target, mode, module_on_target=provides)
        code = describe_type(type_code_for(stats.type, stats.encoding, source_rdb))
        name = f"{stats.type} {stats.encoding} {code}"
        counts[how][name] = counts[how].get(name, 0) + stats.keys
        if stats.type in CORE_TYPES:
            core[how] += stats.keys
    if not any(counts[how] for how in (RELABEL, LOGICAL, _CANNOT)):
        return None
    blocking = core[_CANNOT] > 0 and core[_CANNOT] == sum(core.values())
    parts = [f"{_MEANING[how]}: " + ", ".join(f"{name} {n:,} keys" for name, n in sorted(counts[how].items()))
             for how in _MOVES if counts[how]]
    evidence = {"endpoint": label, "mode": mode, "source_rdb_version": str(source_rdb), "target_format": str(target),
                "sampled": str(analysis.sampled).lower()}
    evidence.update({f"{how}: {name}": str(n) for how in _MOVES for name, n in counts[how].items()})
    if blocking:
        advice = " In DUMP_RESTORE mode none of these keys can move: choose AUTO or LOGICAL."
    elif counts[_CANNOT]:
        advice = " Keys that cannot move become error keys."
    else:
        advice = ""
    return CompatIssue(
        "KEY_MOVEMENT", blocking,
        f"Keys move from the source (RDB {source_rdb}) to the {label}, {target}, in {mode} mode as follows "
        f"(counts from the keyspace analysis{', scaled from a sample' if analysis.sampled else ''}): "
        f"{'; '.join(parts)}.{advice}",
        evidence)


# --------------------------------------------------------------------------- modules


def _module_key_types(side: _Side) -> tuple[Counter[str], int]:
    """Non-core key types on the source with their counts, from a bounded SCAN + TYPE sample per
    node and db."""
    found: Counter[str] = Counter()
    looked = 0
    for spec in side.node_specs(side.config.read):
        for db in _dbs_of(side, spec):
            for keys in side.scan(spec, db, MODULE_SCAN_LIMIT):
                types = side.in_db(spec, db, [("TYPE", key) for key in keys])
                found.update(_text(t) for t in types if not isinstance(t, ReplyError))
                looked += len(keys)
    for kind in ("none", *CORE_TYPES):
        found.pop(kind, None)
    return found, looked


def _search_indexes(side: _Side) -> dict[str, str]:
    """The source's search indexes by name -> key type (HASH / JSON); {} without RediSearch."""
    names = side.ask("FT._LIST")
    if isinstance(names, ReplyError) or not isinstance(names, list):
        return {}
    indexes = {}
    for name in names:
        info = side.ask("FT.INFO", name)
        key_type = "HASH"
        if isinstance(info, list):
            fields = {_text(info[i]): info[i + 1] for i in range(0, len(info) - 1, 2)}
            definition = fields.get("index_definition")
            if isinstance(definition, list) and b"key_type" in definition:
                key_type = _text(definition[definition.index(b"key_type") + 1])
        indexes[_text(name)] = key_type
    return indexes


def _module_issues(source: _Side, src: _Facts, tgt: _Facts, label: str,
                   analysis: Analysis | None = None) -> list[CompatIssue]:
    if src.modules is None or tgt.modules is None:
        return []
    differing: list[tuple[str, str]] = []
    for name, (version, _) in sorted(src.modules.items()):
        if name not in tgt.modules:
            differing.append((name, "missing on the target"))
        elif tgt.modules[name][0] // 10000 < version // 10000:
            differing.append((name, f"version {tgt.modules[name][0]} on the target, {version} on the source"))
    if not differing:
        return []
    found, looked = _module_key_types(source)
    if analysis is not None:
        # The analysis walked (or sampled and scaled) the whole keyspace: its counts are better.
        counted: Counter[str] = Counter()
        for db in analysis.dbs:
            for stats in db.types:
                if stats.type not in CORE_TYPES:
                    counted[stats.type] += stats.keys
        found = counted + Counter({kind: count for kind, count in found.items() if kind not in counted})
    indexes = _search_indexes(source) if any(name in ("search", "ReJSON") for name, _ in differing) else {}
    target_types = set().union(*(_MODULE_KEY_TYPES.get(name, frozenset()) for name in tgt.modules))
    known_types = set().union(*_MODULE_KEY_TYPES.values())
    issues = []
    for name, why in differing:
        if name in _MODULE_KEY_TYPES:
            holding = set(found) & _MODULE_KEY_TYPES[name]
        else:
            # An unknown module may own any module type the target cannot serve.
            holding = set(found) - target_types - known_types
        affected = sorted(indexes) if name == "search" else \
            sorted(index for index, key_type in indexes.items() if key_type == "JSON") if name == "ReJSON" else []
        counts = ", ".join(f"{found[kind]} {kind}" for kind in sorted(holding))
        evidence = {"endpoint": label, "module": name, "difference": why,
                    "source_module_version": str(src.modules[name][0]),
                    "target_module_version": str(tgt.modules[name][0]) if name in tgt.modules else "none",
                    "source_module_key_types": ", ".join(sorted(found)) or "none",
                    "module_keys": counts or "none",
                    "indexes": ", ".join(affected) or "none",
                    "keys_sampled": str(looked)}
        on_indexes = f"; search indexes affected: {', '.join(affected)}" if affected else ""
        if holding:
            message = (f"The source has module {name!r} ({why}) and holds keys of its types ({counts}){on_indexes}; "
                       f"the {label} cannot store them. Load the module on the target, exclude those keys, or "
                       "acknowledge it to copy everything else (those keys become error keys naming the module).")
        elif affected:
            message = (f"The source has module {name!r} ({why}){on_indexes}: they cannot be created on the "
                       f"{label}, and commands of the module will fail there.")
        else:
            message = (f"The source has module {name!r} ({why}); no keys of a type it provides were found in "
                       f"a sample of {looked} keys, but commands of the module will fail on the {label}.")
        issues.append(CompatIssue("MODULES_DIFFER", bool(holding), message, evidence))
    return issues


# --------------------------------------------------------------------------- ACL

_K = "eve:acl-check"
# (command as operators know it, arguments that satisfy its arity)
_SOURCE_READ = [("scan", ("SCAN", "0")), ("dump", ("DUMP", _K)), ("pttl", ("PTTL", _K)), ("type", ("TYPE", _K)),
                ("info", ("INFO", "server")), ("memory usage", ("MEMORY", "USAGE", _K)), ("exists", ("EXISTS", _K))]
_SOURCE_LOGICAL = [("get", ("GET", _K)), ("getrange", ("GETRANGE", _K, "0", "1")), ("hscan", ("HSCAN", _K, "0")),
                   ("sscan", ("SSCAN", _K, "0")), ("zscan", ("ZSCAN", _K, "0")), ("lrange", ("LRANGE", _K, "0", "1")),
                   ("xrange", ("XRANGE", _K, "-", "+")),
                   ("eval", ("EVAL", "return 1", "0"))]   # a logical read is one script (eve.redis.logical)
_TARGET_RESTORE = [("restore", ("RESTORE", _K, "0", "x"))]
_TARGET_WRITE = [("del", ("DEL", _K)), ("pexpireat", ("PEXPIREAT", _K, "0")), ("select", ("SELECT", "0"))]
_TARGET_LOGICAL = [("set", ("SET", _K, "v")), ("hset", ("HSET", _K, "f", "v")), ("sadd", ("SADD", _K, "m")),
                   ("zadd", ("ZADD", _K, "1", "m")), ("rpush", ("RPUSH", _K, "v")),
                   ("xadd", ("XADD", _K, "*", "f", "v")), ("rename", ("RENAME", _K, _K + ":tmp"))]
_TARGET_SCRIPTS = [("evalsha", ("EVALSHA", "0" * 40, "0")), ("eval", ("EVAL", "return 1", "0")),
                   ("script load", ("SCRIPT", "LOAD", "return 1"))]
# Online runs: both sides are read and written by the re-copy loop (the source is
# written once writes are cut over), through each endpoint's write connection.
_LIVE = [("dump", ("DUMP", _K)), ("pttl", ("PTTL", _K)), ("restore", ("RESTORE", _K, "0", "x")),
         ("del", ("DEL", _K)), ("pexpireat", ("PEXPIREAT", _K, "0")), ("eval", ("EVAL", "return 1", "0"))]
_NOTIFICATIONS = [("config set", ("CONFIG", "SET", "notify-keyspace-events", "")),
                  ("psubscribe", ("PSUBSCRIBE", "__keyspace@*__:*"))]
_ADMIN = [("info", ("INFO", "server")), ("config get", ("CONFIG", "GET", "maxmemory"))]
_ADMIN_CLUSTER = [("cluster slots", ("CLUSTER", "SLOTS"))]

_RUN_DENIED = re.compile(r"permissions to run the '([^']+)' command", re.I)


def _whoami(side: _Side, spec: ConnectionSpec) -> str | None:
    reply = side.call(spec, "ACL", "WHOAMI")
    return None if isinstance(reply, ReplyError) else _text(reply)


def _dryrun(side: _Side, runner: ConnectionSpec, user: str,
            commands: Sequence[tuple[str, tuple[str, ...]]]) -> dict[str, bool] | None:
    """name -> allowed, from ACL DRYRUN (Redis 7.0+, Valkey); None when the runner may not use it."""
    replies = side.pipeline(runner, [("ACL", "DRYRUN", user, *args) for _, args in commands])
    if any(_denied(r) or (isinstance(r, ReplyError) and "DRYRUN" in str(r).upper()) for r in replies):
        return None
    allowed: dict[str, bool] = {}
    for (name, _), reply in zip(commands, replies):
        if isinstance(reply, ReplyError):
            continue  # unknown command on this engine: not a permission question
        allowed[name] = _text(reply) == "OK" or not _RUN_DENIED.search(_text(reply))
    return allowed


def _multi_probe(side: _Side, spec: ConnectionSpec,
                 commands: Sequence[tuple[str, tuple[str, ...]]]) -> dict[str, bool] | None:
    """name -> allowed, by queueing each command in MULTI and discarding it.

    The ACL check runs before a command is queued (NOPERM instead of QUEUED),
    and DISCARD executes nothing: a harmless probe for users that may not run
    ACL DRYRUN. None when MULTI itself is refused.
    """
    if isinstance(side.call(spec, "MULTI"), ReplyError):
        return None
    replies = side.pipeline(spec, [args for _, args in commands] + [("DISCARD",)])
    allowed: dict[str, bool] = {}
    for (name, _), reply in zip(commands, replies):
        denied = isinstance(reply, ReplyError) and str(reply).startswith("NOPERM") and \
            bool(_RUN_DENIED.search(str(reply)))
        allowed[name] = not denied
    return allowed


def _permissions(side: _Side, role: str,
                 commands: Sequence[tuple[str, tuple[str, ...]]]) -> tuple[str, dict[str, bool], str] | None:
    """(user, name -> allowed, method) for the role's connection, or None when nothing could tell."""
    spec = side.config.for_role(role)
    user = _whoami(side, spec)
    if user is not None:
        for runner in side.specs((role, "admin")):
            allowed = _dryrun(side, runner, user, commands)
            if allowed is not None:
                return user, allowed, "ACL DRYRUN"
    allowed = _multi_probe(side, spec, commands)
    if allowed is None:
        return None
    return user or spec.username or "default", allowed, "MULTI/DISCARD probe"


def _merge_scripting(allowed: dict[str, bool]) -> None:
    """The restorer's MERGE uses EVALSHA after SCRIPT LOAD, or EVAL when SCRIPT is
    refused: either way is enough, so only both missing counts."""
    if "eval" not in allowed and "evalsha" not in allowed:
        return
    if allowed.get("eval", False) or (allowed.get("evalsha", False) and allowed.get("script load", False)):
        for name in ("eval", "evalsha", "script load"):
            allowed[name] = True


def _acl_issues(side: _Side, role: str, required: Sequence[tuple[str, tuple[str, ...]]],
                optional: Sequence[tuple[str, tuple[str, ...]]] = (), why_optional: str = "") -> list[CompatIssue]:
    result = _permissions(side, role, [*required, *optional])
    if result is None:
        return []
    user, allowed, method = result
    _merge_scripting(allowed)
    issues = []
    for commands, blocking in ((required, True), (optional, False)):
        missing = [name for name, _ in commands if allowed.get(name) is False]
        if not missing:
            continue
        listed = ", ".join(m.upper() for m in missing)
        purpose = f"Eve needs them in the {role} role" if blocking else why_optional
        grant = " ".join("+" + m.replace(" ", "|") for m in missing)
        issues.append(CompatIssue(
            "ACL_MISSING_COMMANDS", blocking,
            f"User {user!r} of the {side.label} ({role} role) cannot run {listed}: {purpose}. "
            f"Grant them, e.g. ACL SETUSER {user} {grant}.",
            {"endpoint": side.label, "role": role, "user": user, "missing_commands": ", ".join(missing),
             "checked_with": method}))
    return issues


def _admin_acl(side: _Side) -> list[CompatIssue]:
    return _acl_issues(side, "admin", [*_ADMIN, *(_ADMIN_CLUSTER if side.cluster else [])])


def _source_acl(side: _Side, logical_needed: bool | None) -> list[CompatIssue]:
    """``logical_needed``: True (LOGICAL mode, or payloads refused), False (DUMP_RESTORE), None (maybe)."""
    required = [*_SOURCE_READ, *(_SOURCE_LOGICAL if logical_needed else [])]
    optional = _SOURCE_LOGICAL if logical_needed is None else []
    issues = _acl_issues(side, "read", required, optional,
                         "AUTO mode reads big keys in chunks with them")
    return issues + _admin_acl(side)


def _target_acl(side: _Side, mode: str, dump_refused: bool, conflict_policy: str | None) -> list[CompatIssue]:
    required: list[tuple[str, tuple[str, ...]]] = [*_TARGET_WRITE]
    optional: list[tuple[str, tuple[str, ...]]] = []
    reasons = []
    if mode == DataMovementMode.LOGICAL.value:
        required += _TARGET_LOGICAL
    elif mode == DataMovementMode.DUMP_RESTORE.value:
        required += _TARGET_RESTORE
    else:  # AUTO: logical writes for refused payloads (then required) and for big keys
        required += _TARGET_RESTORE
        (required if dump_refused else optional).extend(_TARGET_LOGICAL)
        reasons.append("AUTO mode writes big keys in chunks with them")
    if conflict_policy == "MERGE":
        required += _TARGET_SCRIPTS
    elif conflict_policy is None:
        optional += _TARGET_SCRIPTS
        reasons.append("the MERGE conflict policy runs a script (EVAL, or EVALSHA after SCRIPT LOAD)")
    issues = _acl_issues(side, "write", required, optional, "; ".join(reasons))
    return issues + _admin_acl(side)


# --------------------------------------------------------------------------- topology and memory


def _cluster_issue(src: _Facts, tgt: _Facts, label: str) -> CompatIssue | None:
    if src.cluster == tgt.cluster:
        return None
    evidence = {"endpoint": label, "source_cluster": "yes" if src.cluster else "no",
                "target_cluster": "yes" if tgt.cluster else "no",
                "source_dbs_with_keys": ", ".join(map(str, src.dbs)) or "none"}
    if tgt.cluster:
        other_dbs = [db for db in src.dbs if db != 0]
        if other_dbs:
            return CompatIssue(
                "CLUSTER_MODE_DIFFERS", True,
                f"The source is a standalone server with keys in db {', '.join(map(str, other_dbs))}, but the "
                f"{label} is a cluster, which has only db 0. Move those keys to db 0 or filter them out.",
                evidence)
        return CompatIssue(
            "CLUSTER_MODE_DIFFERS", False,
            f"The source is a standalone server and the {label} a cluster: keys are spread over the "
            "cluster's masters; multi-key commands across slots stop working for the application.",
            evidence)
    return CompatIssue(
        "CLUSTER_MODE_DIFFERS", False,
        f"The source is a cluster and the {label} a standalone server: every key lands in db 0 of one server.",
        evidence)


def _cross_slot_issue(cross_slot: Sequence[Mapping[str, Any]], tgt: _Facts, label: str) -> CompatIssue | None:
    """``cross_slot``: ``InterlaySupervisor.stats()["cross_slot"]`` of the run's interlay."""
    if not tgt.cluster or not cross_slot:
        return None
    failing = [entry for entry in cross_slot if fails_on_cluster(entry["command"])]
    split = [entry for entry in cross_slot if not fails_on_cluster(entry["command"])]

    def listed(entries: Sequence[Mapping[str, Any]]) -> str:
        return ", ".join(f"{entry['command'].upper()} ({entry['count']}x)" for entry in entries)

    evidence = {"endpoint": label, **{f"{entry['command']}_count": str(entry["count"]) for entry in cross_slot},
                **{f"{entry['command']}_example": " ".join(key.decode("utf-8", "backslashreplace")
                                                             for key in entry["examples"][0])
                   for entry in cross_slot if entry["examples"]}}
    if failing:
        message = (f"The {label} is a cluster and the applications sent commands whose keys span hash slots "
                   f"through the interlay: {listed(failing)} will fail after the cutover (CROSSSLOT; "
                   "'exec' counts transactions). Put their keys in one slot with a hash tag, or acknowledge.")
        if split:
            message += f" {listed(split)} are split per slot by the interlay and keep working."
        return CompatIssue("CROSS_SLOT_COMMANDS", True, message, evidence)
    return CompatIssue(
        "CROSS_SLOT_COMMANDS", False,
        f"The {label} is a cluster and the applications sent {listed(split)} with keys of several hash slots "
        "through the interlay: it splits them per slot and merges the replies, so they keep working, but they "
        "are no longer atomic and cost one round trip per slot.", evidence)


def _interlay_issue(listeners: int | None, src: _Facts) -> CompatIssue | None:
    if listeners is None or listeners == src.masters:
        return None
    shape = f"a cluster of {src.masters} masters" if src.cluster else "a standalone server (1 listener)"
    return CompatIssue(
        "INTERLAY_LISTENERS_MISMATCH", True,
        f"The interlay has {listeners} listener(s) but the source is {shape}; an interlay needs one "
        "listener per source master so cluster clients keep their topology.",
        {"interlay_listeners": str(listeners), "source_masters": str(src.masters),
         "source_cluster": "yes" if src.cluster else "no"})


def _scripts_issue(source: _Side) -> CompatIssue | None:
    """Scripts cached on the source now (issue 12): the script cache is no key, so no copy
    carries it; the interlay carries only the scripts it sees loaded from its start."""
    nodes: list[Node | None] = list(source.masters) if source.cluster else [None]
    cached = sum(int(source.info("memory", node).get("number_of_cached_scripts", 0) or 0) for node in nodes)
    if not cached:
        return None
    return CompatIssue(
        "SCRIPTS_NOT_CARRIED", False,
        f"The source has {cached} Lua script(s) in its script cache. The cache is not copied: only scripts "
        "loaded through the interlay after it started (SCRIPT LOAD, EVAL) are loaded on the target, so an "
        "EVALSHA of another script gets NOSCRIPT once the target is authoritative. Have the application "
        "load its scripts again through the interlay (or fall back from NOSCRIPT to EVAL) before the cutover.",
        {"source_cached_scripts": str(cached)})


def _memory_issue(src: _Facts, tgt: _Facts, label: str) -> CompatIssue | None:
    if not tgt.maxmemory or tgt.maxmemory >= src.used_memory:
        return None
    return CompatIssue(
        "TARGET_MEMORY_TOO_SMALL", True,
        f"The {label}'s maxmemory ({_human(tgt.maxmemory)}) is smaller than the source's data "
        f"({_human(src.used_memory)}); the copy would run out of memory. Raise maxmemory or add shards.",
        {"endpoint": label, "target_maxmemory_bytes": str(tgt.maxmemory),
         "source_used_memory_bytes": str(src.used_memory), "source_memory_field": src.used_memory_field})


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


# --------------------------------------------------------------------------- the check


def _mode(mode: Any) -> str:
    value = str(getattr(mode, "value", mode)).upper()
    if value not in DataMovementMode.__members__:
        raise ConfigError(f"unknown data movement mode {value!r} (expected one of "
                          f"{', '.join(DataMovementMode.__members__)})", field="mode")
    return value


def _label(role: str, name: str | None) -> str:
    return f"{role} {name!r}" if name else role


def check_compatibility(source: EndpointConfig, target: EndpointConfig, *, mirrors: Sequence[EndpointConfig] = (),
                        interlay_listeners: int | None = None, mode: str | DataMovementMode = "AUTO",
                        conflict_policy: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                        source_name: str | None = None, target_name: str | None = None,
                        mirror_names: Sequence[str] | None = None, online: bool = False,
                        keyspace_notifications: bool = False, analysis: Analysis | None = None,
                        cross_slot: Sequence[Mapping[str, Any]] = ()) -> list[CompatIssue]:
    """The compatibility issues between a source and its target(s); empty when they fit.

    ``mode`` is the run's data movement mode; ``conflict_policy`` (when known)
    decides whether the target user needs scripting for MERGE. ``online``: the
    re-copy loop of a live run reads and writes every side through its write
    connection (the source too, after the cutover), and ``keyspace_notifications``
    subscribes on the source. ``cross_slot``: what the run's interlay counted
    (``CROSS_SLOT_COMMANDS``). Names, when given, appear in messages and evidence
    ("target 'cache-new'"); otherwise "source", "target", "mirror target 1", ...
    ``analysis`` (the source's keyspace analysis) gives KEY_MOVEMENT its counts.
    """
    mode = _mode(mode)
    policy = str(getattr(conflict_policy, "value", conflict_policy)).upper() if conflict_policy else None
    mirror_names = list(mirror_names or [])
    sides = [_Side(_label("source", source_name), source, timeout),
             _Side(_label("target", target_name), target, timeout)]
    for i, mirror in enumerate(mirrors):
        name = mirror_names[i] if i < len(mirror_names) else None
        sides.append(_Side(_label(f"mirror target {i + 1}", name), mirror, timeout))
    issues: list[CompatIssue] = _identity_issues(sides, timeout)
    try:
        src_side, target_sides = sides[0], sides[1:]
        src = _gather(src_side)
        issues += [i for i in (source_version_issue(src.version), _interlay_issue(interlay_listeners, src),
                               _scripts_issue(src_side)) if i]
        any_refused = False
        for side in target_sides:
            tgt = _gather(side)
            probe = _probe_dump(src_side, side, rdb_format(tgt.version))
            movement = _movement_issue(analysis, probe, src, tgt, mode, side.label)
            # Keys copied logically need the logical commands, whether the probe found it or the analysis.
            refused = probe.accepted is False or (movement is not None and any(
                name.startswith(f"{LOGICAL}: ") for name in movement.evidence))
            any_refused = any_refused or refused
            issues += [i for i in (_older_version_issue(src.version, tgt.version, side.label),
                                   _dump_issue(probe, mode, src, tgt, side.label), movement) if i]
            issues += _module_issues(src_side, src, tgt, side.label, analysis)
            issues += [i for i in (_cluster_issue(src, tgt, side.label), _memory_issue(src, tgt, side.label),
                                   _cross_slot_issue(cross_slot, tgt, side.label)) if i]
            issues += _target_acl(side, mode, refused, policy)
        logical = True if mode == DataMovementMode.LOGICAL.value or any_refused else (
            False if mode == DataMovementMode.DUMP_RESTORE.value else None)
        issues += _source_acl(src_side, logical)
        if online:
            for side in sides:
                extra = _NOTIFICATIONS if keyspace_notifications and side is src_side else []
                issues += _acl_issues(side, "write", [*_LIVE, *extra])
    finally:
        for side in sides:
            side.close()
    return issues


def module_issues(source: ConnectionSpec, targets: Sequence[ConnectionSpec], *,
                  timeout: float = DEFAULT_TIMEOUT) -> list[CompatIssue]:
    """``MODULES_DIFFER`` alone, between a source and each target (``eve migrate`` asks it before
    anything is copied, issue 23); every connection is the one spec given."""
    src_side = _Side("source", EndpointConfig(read=source, write=source, admin=source), timeout)
    sides = [src_side]
    issues: list[CompatIssue] = []
    try:
        src = _gather(src_side)
        for i, spec in enumerate(targets):
            side = _Side("target" if i == 0 else f"mirror target {spec.address}",
                         EndpointConfig(read=spec, write=spec, admin=spec), timeout)
            sides.append(side)
            issues += _module_issues(src_side, src, _gather(side), side.label)
    finally:
        for side in sides:
            side.close()
    return issues


def _identity_issues(sides: Sequence[_Side], timeout: float) -> list[CompatIssue]:
    """One server under two endpoint names, replication between the sides, a read-only target:
    found by what the servers say of themselves, before anything else is probed."""
    facts = [preflight.inspect(side.config.for_role("admin"), Side.SOURCE if i == 0 else Side.TARGET, side.label,
                               timeout=timeout) for i, side in enumerate(sides)]
    return [CompatIssue(finding.code, finding.blocking, finding.message, dict(finding.evidence))
            for finding in preflight.check(facts[0], facts[1:], replace=False) if finding.code in _IDENTITY_CODES]


def blocking(issues: Iterable[CompatIssue]) -> list[CompatIssue]:
    """The issues that block approval."""
    return [issue for issue in issues if issue.blocking]
