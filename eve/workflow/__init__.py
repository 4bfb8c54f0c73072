"""The guided migration workflow (DESIGN.md section 7): the persisted run state machine and its
steps, and the registry of endpoints and interlays with direct endpoint calls.
"""

__all__ = ["runs", "registry"]
