"""The gRPC API: the server (reflection, health, interceptors), one servicer per service, and
the conversion between protobuf messages and Eve"s domain values. The only package that
imports the generated stubs in ``eve.v1``.
"""

__all__ = ["server", "convert"]
