"""The policy enums of a migration. Each is applied in exactly one function:
ConflictPolicy in ``restorer.policies``, WriteConsistency in the proxy's router,
DataMovementMode in the restorer's writer choice, Strategy in the workflow.

They are ``StrEnum``s: a member equals, prints and serializes (JSON, pickles to the
interlay) as its value, so messages read ``SOURCE_AUTHORITATIVE``, never
``WriteConsistency.SOURCE_AUTHORITATIVE``; code still compares members, not strings."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ConflictPolicy", "DataMovementMode", "Strategy", "WriteConsistency"]


class ConflictPolicy(StrEnum):
    REPLACE = "REPLACE"  # source overwrites target (RESTORE ... REPLACE)
    NONE = "NONE"        # target key kept; counted and listed as a conflict, never a failure
    MERGE = "MERGE"      # hash/set/zset unioned, source wins; other types are conflicts


class DataMovementMode(StrEnum):
    AUTO = "AUTO"
    DUMP_RESTORE = "DUMP_RESTORE"
    LOGICAL = "LOGICAL"


class Strategy(StrEnum):
    OFFLINE = "OFFLINE"
    ONLINE_CUTOVER = "ONLINE_CUTOVER"
    ONLINE_PHASED = "ONLINE_PHASED"


class WriteConsistency(StrEnum):
    SOURCE_AUTHORITATIVE = "SOURCE_AUTHORITATIVE"
    TARGET_AUTHORITATIVE = "TARGET_AUTHORITATIVE"
    BOTH_REQUIRED = "BOTH_REQUIRED"
    BEST_EFFORT = "BEST_EFFORT"
