"""The scanner process: SCAN + DUMP + PTTL of one source node into BATCH frames.

``main`` is the process entry point, ``run_scanner`` the worker loop (usable
in-process), ``ScannerOptions`` everything it is told.
"""

from scanner.options import ScannerOptions
from scanner.worker import main, run_scanner

__all__ = ["ScannerOptions", "run_scanner", "main"]
