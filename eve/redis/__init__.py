"""Everything that speaks to a Redis-compatible server, shared by the coordinator and the
worker processes: blocking and pipelined connections, the cluster client (slot map, MOVED/ASK,
reconnects, the reply classifier), topology and INFO parsing, the RESP
codec and framing, RDB payload facts, and the logical (type-aware) copy of one key.
"""

__all__ = ["connections", "wire", "topology", "cluster", "resp", "framing", "rdb", "logical"]
