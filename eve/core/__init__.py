"""The foundation every other layer stands on: the error tree, the policy enums, the endpoint
model, the SQLite store, telemetry, the frame contracts between processes, and the helpers a
worker process calls on itself.
"""

__all__ = ["errors", "enums", "endpoints", "store", "telemetry", "frames", "child_process"]
