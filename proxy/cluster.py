"""Cluster sources behind an interlay (DESIGN.md section 5).

The interlay has one listener per source master: the interlay's port and the
ports after it, in the order of ``ProxyOptions.nodes``. Everything that tells a
cluster client where a node is gets rewritten to those listeners, so clients
keep their topology and never talk to the nodes directly:

* ``-MOVED slot host:port`` and ``-ASK slot host:port`` redirections;
* ``CLUSTER SLOTS``, ``CLUSTER SHARDS`` and ``CLUSTER NODES`` replies.

Replicas have no listener, so they are left out of those replies (a client
reading from replicas would otherwise bypass the interlay). A node the
interlay has no listener for (added after the interlay started) is left as
the server reported it.
"""

from __future__ import annotations

from eve.redis import resp

__all__ = ["ClusterMap"]

_REDIRECTS = (b"-MOVED ", b"-ASK ")


def _text(value: object) -> str:
    if isinstance(value, (resp.BulkString, resp.SimpleString, resp.Verbatim)):
        return value.value.decode("utf-8", "replace")
    return ""


class ClusterMap:
    """Backend node address -> interlay listener port."""

    def __init__(self, nodes: list[tuple[str, int]], ports: list[int]) -> None:
        self._by_address = {(host, int(port)): listener for (host, port), listener in zip(nodes, ports)}
        by_port: dict[int, list[int]] = {}
        for (_, port), listener in zip(nodes, ports):
            by_port.setdefault(int(port), []).append(listener)
        # A node may be reported under another spelling of its host (an empty
        # host, a hostname): fall back to the port when it is unambiguous.
        self._by_port = {port: found[0] for port, found in by_port.items() if len(found) == 1}

    def listener(self, host: str, port: int) -> int | None:
        found = self._by_address.get((host, port))
        return found if found is not None else self._by_port.get(port)

    @staticmethod
    def is_redirect(frame: bytes) -> bool:
        return frame.startswith(_REDIRECTS)

    def rewrite_redirect(self, frame: bytes, announce: str) -> bytes:
        """``-MOVED 3999 127.0.0.1:7002`` -> ``-MOVED 3999 <announce>:<listener>``."""
        line = frame[:-2] if frame.endswith(b"\r\n") else frame
        head, _, address = line.rpartition(b" ")
        host, _, port = address.rpartition(b":")
        if not port.isdigit():
            return frame
        listener = self.listener(host.decode("utf-8", "replace"), int(port))
        if listener is None:
            return frame
        return head + b" " + f"{announce}:{listener}".encode() + b"\r\n"

    # -- CLUSTER SLOTS ------------------------------------------------------------

    def rewrite_slots(self, value: object, announce: str) -> object:
        if not isinstance(value, resp.Array):
            return value
        entries = []
        for entry in value.items:
            if not isinstance(entry, resp.Array) or len(entry.items) < 3:
                entries.append(entry)
                continue
            master = entry.items[2]
            if isinstance(master, resp.Array) and len(master.items) >= 2 and \
                    isinstance(master.items[1], resp.Integer):
                listener = self.listener(_text(master.items[0]), master.items[1].value)
                if listener is not None:
                    items = list(master.items)
                    items[0] = resp.BulkString(announce.encode())
                    items[1] = resp.Integer(listener)
                    master = resp.Array(items)
            entries.append(resp.Array([entry.items[0], entry.items[1], master]))
        return resp.Array(entries)

    # -- CLUSTER SHARDS -----------------------------------------------------------

    @staticmethod
    def _fields(value: object) -> list[list] | None:
        """A shard or node description as [key, value] pairs (RESP2 flat array or RESP3 map)."""
        if isinstance(value, resp.Map):
            return [[key, val] for key, val in value.items]
        if isinstance(value, resp.Array) and len(value.items) % 2 == 0:
            return [[value.items[i], value.items[i + 1]] for i in range(0, len(value.items), 2)]
        return None

    @staticmethod
    def _rebuild(original: object, pairs: list[list]) -> object:
        if isinstance(original, resp.Map):
            return resp.Map([(key, val) for key, val in pairs])
        return resp.Array([item for pair in pairs for item in pair])

    def _rewrite_shard_node(self, node: object, announce: str) -> object | None:
        pairs = self._fields(node)
        if pairs is None:
            return node
        fields = {_text(key): val for key, val in pairs}
        if _text(fields.get("role")) not in ("master", "primary", ""):
            return None
        host = _text(fields.get("ip")) or _text(fields.get("endpoint"))
        port = fields.get("port")
        if not isinstance(port, resp.Integer):
            return node
        listener = self.listener(host, port.value)
        if listener is None:
            return node
        out = []
        for key, val in pairs:
            name = _text(key)
            if name == "tls-port":
                continue
            if name == "port":
                val = resp.Integer(listener)
            elif name in ("ip", "endpoint"):
                val = resp.BulkString(announce.encode())
            out.append([key, val])
        return self._rebuild(node, out)

    def rewrite_shards(self, value: object, announce: str) -> object:
        if not isinstance(value, resp.Array):
            return value
        shards = []
        for shard in value.items:
            pairs = self._fields(shard)
            if pairs is None:
                shards.append(shard)
                continue
            for pair in pairs:
                if _text(pair[0]) == "nodes" and isinstance(pair[1], resp.Array):
                    nodes = [self._rewrite_shard_node(node, announce) for node in pair[1].items]
                    pair[1] = resp.Array([node for node in nodes if node is not None])
            shards.append(self._rebuild(shard, pairs))
        return resp.Array(shards)

    # -- CLUSTER NODES ------------------------------------------------------------

    def rewrite_nodes_text(self, text: bytes, announce: str) -> bytes:
        lines = []
        for line in text.split(b"\n"):
            if not line.strip():
                continue
            parts = line.split(b" ")
            if len(parts) >= 3:
                flags = parts[2].split(b",")
                if b"slave" in flags or b"replica" in flags:
                    continue
                address, sep, rest = parts[1].partition(b"@")
                host, _, port = address.rpartition(b":")
                if port.isdigit():
                    listener = self.listener(host.decode("utf-8", "replace"), int(port))
                    if listener is not None:
                        parts[1] = f"{announce}:{listener}".encode() + sep + rest
            lines.append(b" ".join(parts))
        return b"".join(line + b"\n" for line in lines)

    def rewrite_nodes(self, value: object, announce: str) -> object:
        if isinstance(value, resp.BulkString):
            return resp.BulkString(self.rewrite_nodes_text(value.value, announce))
        if isinstance(value, resp.Verbatim):
            return resp.Verbatim(value.format, self.rewrite_nodes_text(value.value, announce))
        return value

    def rewrite_reply(self, subcommand: bytes, frame: bytes, announce: str) -> bytes:
        """A whole CLUSTER SLOTS / SHARDS / NODES reply frame, rewritten."""
        parsed = resp.parse(frame)
        if parsed is None:
            return frame
        value = parsed[0]
        if isinstance(value, resp.Error):
            return frame
        if subcommand == b"slots":
            value = self.rewrite_slots(value, announce)
        elif subcommand == b"shards":
            value = self.rewrite_shards(value, announce)
        elif subcommand == b"nodes":
            value = self.rewrite_nodes(value, announce)
        return resp.encode(value)
