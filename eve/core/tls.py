"""A TLS server context from PEM files, checked: one implementation for every
listener Eve runs (the coordinator's gRPC and HTTP listeners, ``eve.api.tls``;
an interlay's client listeners, ``proxy.server``).

A wrong path, a key that does not match its certificate or a CA file without
a certificate is a ``ConfigError`` naming the setting it came from, said when
the listener is configured rather than as a failed handshake on the first call.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from eve.core.errors import ConfigError

__all__ = ["server_context"]


def server_context(cert: str, key: str, client_ca: str | None, *, fields: tuple[str, str, str]) -> ssl.SSLContext:
    """The context of a TLS listener presenting ``cert``/``key``; with ``client_ca``,
    clients must present a certificate it signed. ``fields`` names the three
    settings (cert, key, CA) in errors."""
    cert_field, key_field, ca_field = fields
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for path, field in ((cert, cert_field), (key, key_field), (client_ca, ca_field)):
        if path and not Path(path).is_file():
            raise ConfigError(f"{path!r} does not exist (or is not a file)", field=field)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(f"{cert} and {key} are not a PEM certificate and its unencrypted key "
                          f"({exc.reason or exc})", field=key_field) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {cert} or {key}: {exc.strerror or exc}", field=cert_field) from None
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"{client_ca!r} holds no PEM CA certificate: {exc}", field=ca_field) from None
        except OSError as exc:
            raise ConfigError(f"cannot read {client_ca}: {exc.strerror or exc}", field=ca_field) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
