"""The guided migration workflow (DESIGN.md section 7): the persisted run state machine
(``states``), the typed run setup and the endpoint snapshot a run works from (``setup``), the
runs and their steps (``runs``), and the registry of endpoints and interlays with direct
endpoint calls (``registry``).
"""

__all__ = ["states", "setup", "runs", "registry"]
