"""Pre-flight: which servers the sides of a job really are, before anything is written.

A URL says nothing reliable about the server behind it (``localhost`` and
``127.0.0.1`` are one server; a DNS name may point anywhere), so a side is
recognised by what the server says of itself (``INFO server``/``replication``):

* ``run_id``: two sides with a common ``run_id`` are one server. Copying a
  server onto itself "succeeds" and changes nothing, and a rollback would have
  nothing to go back to.
* ``master_replid``: a replica reports its master's replication id as its own, so
  two sides with one ``master_replid`` are one replication group. A target that
  is a replica of the source refuses every write (``READONLY``); a source that is
  a replica of the target would receive the copy back through replication.
* ``role``: a target that is a replica cannot be written (``READONLY``).
* the number of databases (``CONFIG GET databases``): a db the server does not
  have fails every SELECT, so it is refused as bad input before a job exists.

``inspect`` reads one side (every master of a cluster); ``check`` compares the
sides and returns ``Finding``s, blocking or not. ``eve migrate`` refuses to start
on a blocking one (exit 2), and prints the others as warnings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import AuthError, ConfigError, EndpointError, Side, UnavailableError
from eve.redis.topology import cluster_masters, info_section, is_cluster, node_spec, parse_keyspace
from eve.redis.wire import FastConnection, ReplyError

__all__ = ["Finding", "ServerFacts", "SideFacts", "check", "check_db", "describe", "inspect"]

log = logging.getLogger("eve.prepare.preflight")

DEFAULT_TIMEOUT = 10.0
SAME_SERVER = "SAME_SERVER"
REPLICATION_LINK = "REPLICATION_LINK"
TARGET_READ_ONLY = "TARGET_READ_ONLY"
SOURCE_IS_REPLICA = "SOURCE_IS_REPLICA"
TARGET_NOT_EMPTY = "TARGET_NOT_EMPTY"


@dataclass(frozen=True)
class ServerFacts:
    """One server (a standalone server, or one master of a cluster) as it describes itself."""

    address: str             # as Eve reaches it
    run_id: str
    replid: str              # master_replid: shared by a master and its replicas
    role: str                # "master" or "slave" (INFO's words)
    master: str | None       # host:port of its master when it is a replica
    version: str
    keys: int                # keys in every db
    dbs: tuple[int, ...]     # the dbs that hold keys (INFO keyspace)
    databases: int | None    # CONFIG GET databases; None when CONFIG is refused


@dataclass(frozen=True)
class SideFacts:
    label: str                        # "source", "target", "mirror target 127.0.0.1:7003"
    side: Side
    cluster: bool
    servers: tuple[ServerFacts, ...]  # one per master

    @property
    def keys(self) -> int:
        return sum(server.keys for server in self.servers)

    @property
    def dbs(self) -> tuple[int, ...]:
        """The dbs that hold keys on any of its servers."""
        return tuple(sorted({db for server in self.servers for db in server.dbs}))

    @property
    def databases(self) -> int | None:
        """The databases every server has (1 for a cluster), None when unknown."""
        if self.cluster:
            return 1
        known = [server.databases for server in self.servers if server.databases is not None]
        return min(known) if known else None


@dataclass(frozen=True)
class Finding:
    code: str
    blocking: bool
    message: str
    evidence: dict[str, str] = field(default_factory=dict)


def _databases(conn: FastConnection) -> int | None:
    try:
        reply = conn.execute("CONFIG", "GET", "databases")
    except ReplyError:
        return None  # CONFIG refused (managed services, ACLs): the SELECT of the job will tell
    values = list(reply.values()) if isinstance(reply, dict) else list(reply or [])[1::2]
    try:
        return int(values[0]) if values else None
    except (TypeError, ValueError):
        return None


def _server(spec: ConnectionSpec, conn: FastConnection) -> ServerFacts:
    server = info_section(conn, "server")
    counts = {db: keys for db, (keys, _) in parse_keyspace(info_section(conn, "keyspace")).items()}
    replication = info_section(conn, "replication")
    role = replication.get("role", "master")
    master = None
    if role == "slave" and replication.get("master_host"):
        master = f"{replication['master_host']}:{replication.get('master_port', '6379')}"
    return ServerFacts(
        address=spec.address, run_id=server.get("run_id", ""), replid=replication.get("master_replid", ""),
        role=role, master=master,
        version=server.get("valkey_version") or server.get("redis_version", "?"),
        keys=sum(counts.values()), dbs=tuple(sorted(db for db, count in counts.items() if count)),
        databases=_databases(conn))


def inspect(spec: ConnectionSpec, side: Side, label: str, *, timeout: float = DEFAULT_TIMEOUT) -> SideFacts:
    """What the side is: every master of a cluster, or the one server.

    Errors name the side: an unreachable server or refused credentials is an
    ``UnavailableError``/``AuthError`` whose ``side`` and message say which."""
    try:
        with FastConnection(spec, timeout=timeout) as conn:
            cluster = is_cluster(conn)
            if not cluster:
                return SideFacts(label, side, False, (_server(spec, conn),))
            masters = cluster_masters(conn)
        servers = []
        for node in masters:
            node_connection = node_spec(spec, node)
            with FastConnection(node_connection, timeout=timeout) as conn:
                servers.append(_server(node_connection, conn))
        return SideFacts(label, side, True, tuple(servers))
    except (UnavailableError, AuthError) as exc:
        raise type(exc)(f"the {label} {spec.address}: {exc}", side=side) from exc
    except EndpointError as exc:
        # INFO answered NOAUTH (no password given) or NOPERM (an ACL user that may not run it).
        if any(word in str(exc) for word in ("NOAUTH", "NOPERM", "WRONGPASS")):
            hint = "give its password" if "NOAUTH" in str(exc) else "check its user's ACL"
            raise AuthError(f"the {label} {spec.address} refused Eve: {exc} ({hint})", side=side) from exc
        raise exc.on_side(side)  # noqa: B904 - the same exception, now naming its side


def check_db(facts: SideFacts, db: int | None, *, field: str) -> None:
    """Refuse a db the side does not have (ConfigError naming ``field``)."""
    if db is None:
        return
    if facts.cluster and db != 0:
        raise ConfigError(f"the {facts.label} is a cluster: it has db 0 only, not db {db}", field=field)
    databases = facts.databases
    if databases is not None and db >= databases:
        raise ConfigError(f"the {facts.label} has databases 0..{databases - 1}; there is no db {db}", field=field)


def _addresses(facts: SideFacts) -> str:
    return ", ".join(server.address for server in facts.servers)


def check(source: SideFacts, targets: Sequence[SideFacts], *, replace: bool = True) -> list[Finding]:
    """Compare the source with each target (the target and mirror targets), and the targets with
    each other: one server twice, a replication link, a read-only target, a non-empty target."""
    findings: list[Finding] = []
    sides = [source, *targets]
    for i, first in enumerate(sides):
        for second in sides[i + 1:]:
            findings.extend(_pair(first, second))
    for server in source.servers:
        if server.role == "slave":
            findings.append(Finding(
                SOURCE_IS_REPLICA, False,
                f"the source {server.address} is a replica of {server.master}: keys are read from the replica, "
                "which may lag behind its master; writes made on the master meanwhile may be missing",
                {"source": server.address, "master": server.master or "?"}))
    for target in targets:
        for server in target.servers:
            if server.role == "slave":
                findings.append(Finding(
                    TARGET_READ_ONLY, True,
                    f"the {target.label} {server.address} is a replica (of {server.master}): it refuses writes "
                    "(READONLY); copy to its master, or promote it first (REPLICAOF NO ONE)",
                    {"target": server.address, "master": server.master or "?"}))
        if target.keys and replace:
            findings.append(Finding(
                TARGET_NOT_EMPTY, False,
                f"the {target.label} ({_addresses(target)}) already holds {target.keys:,} keys; under the REPLACE "
                "conflict policy the source's keys overwrite those of the same name",
                {"target": _addresses(target), "keys": str(target.keys)}))
    return findings


def _pair(first: SideFacts, second: SideFacts) -> list[Finding]:
    findings: list[Finding] = []
    by_run_id = {server.run_id: server for server in first.servers if server.run_id}
    for server in second.servers:
        twin = by_run_id.get(server.run_id)
        if twin is not None:
            findings.append(Finding(
                SAME_SERVER, True,
                f"the {first.label} {twin.address} and the {second.label} {server.address} are the same server "
                f"(run_id {server.run_id[:12]}...): a copy onto itself changes nothing and leaves nothing to roll "
                "back to",
                {first.label: twin.address, second.label: server.address, "run_id": server.run_id}))
    if findings:
        return findings
    by_replid = {server.replid: server for server in first.servers if server.replid}
    for server in second.servers:
        twin = by_replid.get(server.replid)
        if twin is None:
            continue
        if server.role == "slave" and twin.role != "slave":
            how = f"the {second.label} {server.address} is a replica of the {first.label} {twin.address}"
        elif twin.role == "slave" and server.role != "slave":
            how = f"the {first.label} {twin.address} is a replica of the {second.label} {server.address}"
        else:
            how = (f"the {first.label} {twin.address} and the {second.label} {server.address} replicate from one "
                   "master")
        findings.append(Finding(
            REPLICATION_LINK, True,
            f"{how} (master_replid {server.replid[:12]}...): writes to one side reach the other by replication, "
            "so the copy would fight replication; break the link first (REPLICAOF NO ONE) or copy between "
            "unrelated servers",
            {first.label: twin.address, second.label: server.address, "master_replid": server.replid}))
    return findings


def describe(facts: SideFacts) -> str:
    """One line for a plan: 'Redis 7.0.15 standalone, 1,200 keys' or '3-master cluster'."""
    versions = sorted({server.version for server in facts.servers})
    shape = f"{len(facts.servers)}-master cluster" if facts.cluster else "standalone"
    return f"{facts.label} {_addresses(facts)}: {shape}, version {'/'.join(versions)}, {facts.keys:,} keys"
