"""The ``eve`` command line: ``serve``, ``migrate``, ``verify``, ``errors``, ``demo``; Redis URL
parsing; the embedded engines the demo runs on.
"""

__all__ = ["main", "migrate", "verify", "demo", "urls", "engines"]
