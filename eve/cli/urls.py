"""Redis URLs for the CLI: ``redis://[user:pass@]host:port[/db]``, ``rediss://`` for TLS.

Query parameters: ``protocol=2|3``, ``ssl_cert_reqs=none`` (skip TLS verification),
``ssl_ca_certs=PATH``. Passwords never appear in error messages: URLs are masked
before they are echoed.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import ConfigError

__all__ = ["parse_redis_url", "mask_url", "password_for", "PASSWORD_ENV"]

# Where a password comes from when the URL has none (like redis-cli's REDISCLI_AUTH), so that
# it need not appear on a command line, where ``ps`` shows it to every user of the host.
PASSWORD_ENV = {"--source": "EVE_SOURCE_PASSWORD", "--target": "EVE_TARGET_PASSWORD",
                "--mirror": "EVE_MIRROR_PASSWORD"}

_SCHEMES = {"redis": False, "rediss": True, "valkey": False, "valkeys": True}


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


def parse_redis_url(url: str, *, field: str = "url") -> tuple[ConnectionSpec, int | None]:
    """A ConnectionSpec and the db from the path (None when the URL names none)."""
    shown = mask_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{shown!r} is not a valid URL: {str(exc).replace(url, shown)}", field=field) from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(f"{shown!r}: scheme must be redis:// or rediss:// (TLS)", field=field)
    if not parts.hostname:
        raise ConfigError(f"{shown!r} has no host", field=field)
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"{shown!r}: port {port} is outside 1..65535", field=field)
    db: int | None = None
    path = parts.path.strip("/")
    if path:
        if not path.isdigit():
            raise ConfigError(f"{shown!r}: the path must be a database number, got {path[:20]!r}", field=field)
        db = int(path)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"protocol", "ssl_cert_reqs", "ssl_ca_certs", "db"}
    if unknown:
        raise ConfigError(f"{shown!r}: unknown parameter {sorted(unknown)[0]!r}", field=field)
    if "db" in query:
        if not query["db"].isdigit():
            raise ConfigError(f"{shown!r}: db must be a number", field=field)
        db = int(query["db"])
    protocol = query.get("protocol", "2")
    if protocol not in ("2", "3"):
        raise ConfigError(f"{shown!r}: protocol must be 2 or 3", field=field)
    spec = ConnectionSpec(
        host=parts.hostname,
        port=port or 6379,
        tls=_SCHEMES[parts.scheme],
        protocol_version=int(protocol),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls_ca_file=query.get("ssl_ca_certs"),
        tls_insecure_skip_verify=query.get("ssl_cert_reqs", "").lower() == "none",
    )
    # redis://secret@host (no colon) is redis-py's spelling of a password without a user.
    if spec.username and not spec.password:
        spec = ConnectionSpec(**{**spec.__dict__, "username": None, "password": spec.username})
    return spec, db


def password_for(spec: ConnectionSpec, *, flag: str, password_file: str | None) -> ConnectionSpec:
    """The spec with its password from the URL, else ``password_file``, else the flag's
    environment variable (``PASSWORD_ENV``); unchanged when none gives one."""
    if spec.password:
        return spec
    password = None
    if password_file:
        try:
            password = Path(password_file).read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"cannot read {password_file}: {exc.strerror}", field=f"{flag}-password-file") from None
        if not password:
            raise ConfigError(f"{password_file} is empty", field=f"{flag}-password-file")
    else:
        password = os.environ.get(PASSWORD_ENV.get(flag, "")) or None
    return dataclasses.replace(spec, password=password) if password else spec
