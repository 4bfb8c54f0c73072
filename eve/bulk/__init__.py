"""The bulk copy (DESIGN.md section 4): the pipeline"s supervisor, which spawns scanners and
restorers, commits checkpoints and restarts workers, and the error keys it leaves (export,
retry).
"""

__all__ = ["pipeline", "error_keys"]
