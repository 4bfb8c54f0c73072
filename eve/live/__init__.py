"""The live part of an online run (DESIGN.md section 6): the run"s phases, cutover and rollback,
the dirty-key backlog, the re-copy loop, keyspace notifications, verification, and the
interlay supervisor.
"""

__all__ = ["run", "sync", "verify", "interlays"]
