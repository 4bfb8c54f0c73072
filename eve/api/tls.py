"""TLS of the coordinator's listeners (gRPC and HTTP): one certificate and key for both, and
optionally a client CA, which makes both require a client certificate it signed (mTLS).

The files are read and checked when the coordinator starts, so a wrong path or a key that
does not match its certificate is said then, naming the flag, rather than as a failed
handshake on the first call."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from eve.core.errors import ConfigError
from eve.core.tls import server_context

__all__ = ["TlsFiles"]


@dataclass(frozen=True)
class TlsFiles:
    cert: str              # PEM certificate chain the listeners present (--tls-cert)
    key: str               # its private key, PEM, unencrypted (--tls-key)
    client_ca: str | None = None  # PEM CA bundle; set: clients must present a certificate it signed

    @classmethod
    def from_flags(cls, cert: str | None, key: str | None, client_ca: str | None) -> TlsFiles | None:
        """The TLS setup the flags ask for (None: plaintext), checked: files readable, key matching."""
        if not cert and not key:
            if client_ca:
                raise ConfigError("a client CA needs the server's own certificate: add --tls-cert and --tls-key",
                                  field="--tls-client-ca")
            return None
        if not cert or not key:
            missing = "--tls-cert" if not cert else "--tls-key"
            raise ConfigError("TLS needs both --tls-cert and --tls-key", field=missing)
        files = cls(cert=cert, key=key, client_ca=client_ca or None)
        files.server_context()  # reads and checks every file
        return files

    def server_context(self) -> ssl.SSLContext:
        return server_context(self.cert, self.key, self.client_ca,
                              fields=("--tls-cert", "--tls-key", "--tls-client-ca"))

    def grpc_credentials(self) -> grpc.ServerCredentials:
        client_ca = Path(self.client_ca).read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials([(Path(self.key).read_bytes(), Path(self.cert).read_bytes())],
                                           root_certificates=client_ca, require_client_auth=client_ca is not None)
