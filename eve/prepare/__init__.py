"""A run"s Prepare step (DESIGN.md section 7): compatibility checks, keyspace analysis and the
test run.
"""

__all__ = ["compat", "analysis", "testrun"]
