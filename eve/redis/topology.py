"""What a Redis deployment looks like: standalone or cluster, its masters and
slots, and which logical databases hold keys.

The parsers here are the only ones of CLUSTER SLOTS, INFO and INFO keyspace;
routing by slot (the slot map, MOVED/ASK) lives in ``eve.redis.cluster``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from redis.crc import key_slot

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import EndpointError
from eve.redis.wire import FastConnection, ReplyError

__all__ = ["parse_info", "info_section", "parse_keyspace", "Node", "is_cluster", "cluster_masters", "cluster_layout",
           "masters_from_slots", "node_spec", "key_slot", "SLOTS"]

SLOTS = 16384


@dataclass(frozen=True, order=True)
class Node:
    host: str
    port: int
    slots: tuple[tuple[int, int], ...] = ()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_info(reply: Any) -> dict[str, str]:
    """An INFO reply as ``{field: value}`` (section headers dropped)."""
    fields: dict[str, str] = {}
    for line in _text(reply).splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def info_section(conn: FastConnection, section: str) -> dict[str, str]:
    reply = conn.execute("INFO", section)
    if isinstance(reply, ReplyError):
        raise EndpointError(f"INFO {section} failed on {conn.spec.address}: {reply}")
    return parse_info(reply)


def is_cluster(conn: FastConnection) -> bool:
    return info_section(conn, "cluster").get("cluster_enabled") == "1"


def cluster_masters(conn: FastConnection) -> list[Node]:
    """The masters and their slot ranges, from CLUSTER SLOTS (supported by every engine Eve targets)."""
    reply = conn.execute("CLUSTER", "SLOTS")
    if isinstance(reply, ReplyError):
        raise EndpointError(f"CLUSTER SLOTS failed on {conn.spec.address}: {reply}")
    return masters_from_slots(reply, conn.spec.host)


def cluster_layout(spec: ConnectionSpec, *, timeout: float, client_name: str) -> tuple[Node, ...]:
    """The masters of the cluster ``spec`` names, with their slots; () for a standalone server."""
    with FastConnection(spec, timeout=timeout, client_name=client_name) as conn:
        return tuple(cluster_masters(conn)) if is_cluster(conn) else ()


def masters_from_slots(reply: Any, asked_host: str) -> list[Node]:
    """A CLUSTER SLOTS reply as its masters (sorted), each with its slot ranges."""
    ranges: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for entry in reply:
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        # A node reports an empty host for itself when it has no announced address.
        host = _text(master[0]) or asked_host
        ranges.setdefault((host, int(master[1])), []).append((start, end))
    return sorted(Node(host, port, tuple(sorted(slots))) for (host, port), slots in ranges.items())


def node_spec(spec: ConnectionSpec, node: Node) -> ConnectionSpec:
    """The endpoint's connection settings (credentials, TLS) aimed at one node."""
    return dataclasses.replace(spec, host=node.host, port=node.port)


def parse_keyspace(fields: dict[str, str]) -> dict[int, tuple[int, int]]:
    """INFO keyspace fields (``db0: keys=10,expires=1,...``) as ``{db: (keys, expires)}``."""
    counts: dict[int, tuple[int, int]] = {}
    for name, value in fields.items():
        if name.startswith("db") and name[2:].isdigit():
            parts = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
            counts[int(name[2:])] = (int(parts.get("keys", 0)), int(parts.get("expires", 0)))
    return counts
