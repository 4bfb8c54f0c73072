"""What a Redis deployment looks like: standalone or cluster, its masters and
slots, and which logical databases hold keys."""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass
from typing import Any

from redis.crc import key_slot

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import EndpointError
from eve.redis.wire import FastConnection, ReplyError

__all__ = ["parse_info", "info_section", "Node", "SlotMap", "is_cluster", "cluster_masters", "node_spec", "dbs_with_keys", "key_slot",
           "SLOTS"]

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
    ranges: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for entry in reply:
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        # A node reports an empty host for itself when it has no announced address.
        host = _text(master[0]) or conn.spec.host
        ranges.setdefault((host, int(master[1])), []).append((start, end))
    return sorted(Node(host, port, tuple(sorted(slots))) for (host, port), slots in ranges.items())


def node_spec(spec: ConnectionSpec, node: Node) -> ConnectionSpec:
    """The endpoint's connection settings (credentials, TLS) aimed at one node."""
    return dataclasses.replace(spec, host=node.host, port=node.port)


class SlotMap:
    """Slot -> owning master, for grouping a cluster target's writes by node."""

    def __init__(self, masters: list[Node]) -> None:
        spans = sorted((start, end, node) for node in masters for start, end in node.slots)
        self._starts = [span[0] for span in spans]
        self._spans = spans
        self.masters = masters

    def owner(self, slot: int) -> Node | None:
        index = bisect.bisect_right(self._starts, slot) - 1
        if index >= 0:
            start, end, node = self._spans[index]
            if start <= slot <= end:
                return node
        return None

    def node_for_key(self, key: bytes) -> Node | None:
        return self.owner(key_slot(key))


def dbs_with_keys(conn: FastConnection) -> list[int]:
    """Databases that hold keys, from INFO keyspace (``db0:keys=10,expires=1,...``)."""
    return sorted(int(name[2:]) for name, value in info_section(conn, "keyspace").items()
                  if name.startswith("db") and name[2:].isdigit() and "keys=" in value)


def keyspace_counts(conn: FastConnection) -> dict[int, int]:
    counts: dict[int, int] = {}
    for name, value in info_section(conn, "keyspace").items():
        if name.startswith("db") and name[2:].isdigit():
            fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
            counts[int(name[2:])] = int(fields.get("keys", 0))
    return counts
