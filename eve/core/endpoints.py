"""The endpoint model: parsing and validating endpoint configs, per-role connections.

An endpoint config comes in one of the two shapes of the product brief:

* ``read_conn`` / ``write_conn`` (and optionally ``admin_conn``), each a full
  connection; a missing one of read/write falls back to the other;
* ``target`` plus per-role ``read_credentials`` / ``write_credentials`` /
  ``admin_credentials``.

Mixing them is refused, so the shape stays unambiguous. Configs are plain dicts
(as JSON stores them, and as ``google.protobuf.json_format.MessageToDict`` with
``preserving_proto_field_name`` produces them); protobuf stops at the servicer.
"""

from __future__ import annotations

import copy
import ipaddress
import math
import os
import re
import ssl
from dataclasses import dataclass, field
from typing import Any, Mapping

from eve.core.errors import ConfigError

__all__ = [
    "KINDS",
    "ROLES",
    "REDACTED",
    "DEFAULT_PORT",
    "DEFAULT_POOL_SIZE",
    "ConnectionSpec",
    "EndpointConfig",
    "validate_name",
    "validate_kind",
    "parse_config",
    "redact_config",
    "merge_redacted",
]

KINDS = ("redis",)
ROLES = ("read", "write", "admin")
REDACTED = "<redacted>"
DEFAULT_PORT = 6379
DEFAULT_PROTOCOL_VERSION = 2
DEFAULT_POOL_SIZE = 1
MAX_POOL_SIZE = 1024

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_CONN_FIELDS = {
    "host", "port", "tls", "protocol_version", "username", "password",
    "tls_ca_file", "tls_insecure_skip_verify", "tls_server_name",
}
_CRED_FIELDS = {"username", "password"}
_POOL_FIELDS = {"multiplexed_connections"}
_CONN_KEYS = ("read_conn", "write_conn", "admin_conn")
_CRED_KEYS = ("read_credentials", "write_credentials", "admin_credentials")
_CONFIG_FIELDS = {"target", "connection_pool", *_CONN_KEYS, *_CRED_KEYS}


@dataclass(frozen=True)
class ConnectionSpec:
    """Everything needed to open one connection. Picklable; ``repr`` masks the password."""

    host: str
    port: int = DEFAULT_PORT
    tls: bool = False
    protocol_version: int = DEFAULT_PROTOCOL_VERSION
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca_file: str | None = None
    tls_insecure_skip_verify: bool = False
    tls_server_name: str | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        secret = ", password=***" if self.password else ""
        user = f", username={self.username!r}" if self.username else ""
        return (
            f"ConnectionSpec({self.address}, tls={self.tls}, "
            f"resp{self.protocol_version}{user}{secret})"
        )


@dataclass(frozen=True)
class EndpointConfig:
    """A validated endpoint config: one connection per role and the pool size."""

    read: ConnectionSpec
    write: ConnectionSpec
    admin: ConnectionSpec
    pool_size: int = DEFAULT_POOL_SIZE

    def for_role(self, role: str) -> ConnectionSpec:
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r} (expected one of {', '.join(ROLES)})", field="role")
        return getattr(self, role)


def validate_name(name: Any, *, field: str = "endpoint") -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError("a name is required", field=field)
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"{name[:80]!r} is not a valid name (1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit)",
            field=field,
        )
    return name


def validate_kind(kind: Any) -> str:
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"a kind is required (supported: {', '.join(KINDS)})", field="kind")
    if kind.lower() not in KINDS:
        raise ConfigError(f"unknown kind {kind[:40]!r} (supported: {', '.join(KINDS)})", field="kind")
    return kind.lower()


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"must be an object, got {type(value).__name__}", field=path)
    return value


def _check_fields(value: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for key in value:
        if key not in allowed:
            raise ConfigError(f"unknown field (expected one of {', '.join(sorted(allowed))})",
                              field=f"{path}.{key}" if isinstance(key, str) else path)


def _string(value: Mapping[str, Any], key: str, path: str) -> str | None:
    raw = value.get(key)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        # Never echo the value: it may be a password.
        raise ConfigError(f"must be a string, got {type(raw).__name__}", field=f"{path}.{key}")
    return raw


def _bool(value: Mapping[str, Any], key: str, path: str) -> bool:
    raw = value.get(key, False)
    if not isinstance(raw, bool):
        raise ConfigError(f"must be true or false, got {type(raw).__name__}", field=f"{path}.{key}")
    return raw


def _int(value: Mapping[str, Any], key: str, path: str, default: int) -> int:
    raw = value.get(key, default)
    # bool is an int in Python; a JSON float like 6379.0 is accepted only when whole.
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ConfigError(f"must be an integer, got {type(raw).__name__}", field=f"{path}.{key}")
    if isinstance(raw, float):
        if not math.isfinite(raw) or not raw.is_integer():
            raise ConfigError(f"must be an integer, got {raw!r}", field=f"{path}.{key}")
        raw = int(raw)
    if isinstance(raw, str):
        try:
            raw = int(raw.strip(), 10)
        except ValueError:
            raise ConfigError(f"must be an integer, got {raw[:40]!r}", field=f"{path}.{key}") from None
    return raw


def _host(value: Mapping[str, Any], path: str) -> str:
    host = _string(value, "host", path)
    if host is None:
        raise ConfigError("host is required", field=f"{path}.host")
    if len(host) > 253 or any(ch.isspace() or ch in "/@?#" for ch in host):
        raise ConfigError(f"{host[:80]!r} is not a valid host name or address", field=f"{path}.host")
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and (host.count(":") == 1 or name.endswith("]")):
        raise ConfigError(f"{host[:80]!r} carries a port: give the host alone and the port in "
                          f"{path}.port", field=f"{path}.host")
    bare = host.strip("[]") if host.startswith("[") else host
    if ":" in bare:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            raise ConfigError(f"{host[:80]!r} is not a valid host name or IPv6 address", field=f"{path}.host") from None
    return bare


def _ca_file(conn: Mapping[str, Any], path: str) -> str | None:
    """A CA bundle that exists and holds PEM certificates: found now, not at the first TLS handshake."""
    ca_file = _string(conn, "tls_ca_file", path)
    if ca_file is None:
        return None
    where = f"{path}.tls_ca_file"
    if not os.path.isfile(ca_file):
        raise ConfigError(f"{ca_file!r} does not exist (or is not a file) on the coordinator's host", field=where)
    try:
        ssl.create_default_context(cafile=ca_file)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{ca_file!r} holds no PEM CA certificate Eve can load: {exc}", field=where) from None
    except OSError as exc:
        raise ConfigError(f"{ca_file!r} cannot be read: {exc.strerror or exc}", field=where) from None
    return ca_file


def _parse_connection(value: Any, path: str, credentials: tuple[str | None, str | None]) -> ConnectionSpec:
    conn = _mapping(value, path)
    _check_fields(conn, _CONN_FIELDS, path)
    host = _host(conn, path)
    port = _int(conn, "port", path, DEFAULT_PORT)
    if not 1 <= port <= 65535:
        raise ConfigError(f"port {port} is outside 1..65535", field=f"{path}.port")
    protocol = _int(conn, "protocol_version", path, DEFAULT_PROTOCOL_VERSION)
    if protocol not in (2, 3):
        raise ConfigError(f"protocol_version {protocol} is not supported (use 2 or 3)",
                          field=f"{path}.protocol_version")
    username = _string(conn, "username", path)
    password = _string(conn, "password", path)
    role_user, role_password = credentials
    if (username or password) and (role_user or role_password):
        raise ConfigError("credentials are set both on the connection and in the role's "
                          "*_credentials; set them in one place", field=path)
    return ConnectionSpec(
        host=host,
        port=port,
        tls=_bool(conn, "tls", path),
        protocol_version=protocol,
        username=username or role_user,
        password=password or role_password,
        tls_ca_file=_ca_file(conn, path),
        tls_insecure_skip_verify=_bool(conn, "tls_insecure_skip_verify", path),
        tls_server_name=_string(conn, "tls_server_name", path),
    )


def _parse_credentials(config: Mapping[str, Any], role: str) -> tuple[str | None, str | None]:
    key = f"{role}_credentials"
    raw = config.get(key)
    if raw is None:
        return None, None
    path = f"config.{key}"
    creds = _mapping(raw, path)
    _check_fields(creds, _CRED_FIELDS, path)
    username, password = _string(creds, "username", path), _string(creds, "password", path)
    if username and not password:
        raise ConfigError("a username needs a password", field=f"{path}.password")
    return username, password


def parse_config(config: Any) -> EndpointConfig:
    """Validate a config dict of either shape; raise ConfigError naming the field."""
    config = _mapping(config, "config")
    _check_fields(config, _CONFIG_FIELDS, "config")
    creds = {role: _parse_credentials(config, role) for role in ROLES}
    present = [key for key in _CONN_KEYS if config.get(key) is not None]
    if config.get("target") is not None:
        if present:
            raise ConfigError(
                f"target cannot be combined with {', '.join(present)}: use either target with "
                "*_credentials, or read_conn/write_conn", field="config.target")
        specs = {role: _parse_connection(config["target"], "config.target", creds[role]) for role in ROLES}
        if not creds["admin"][1]:
            # No admin credentials: admin work runs with the write credentials.
            specs["admin"] = specs["write"]
    else:
        if "read_conn" not in present and "write_conn" not in present:
            raise ConfigError("set either target or read_conn/write_conn", field="config")
        specs = {}
        for role in ROLES:
            key = f"{role}_conn"
            if config.get(key) is not None:
                specs[role] = _parse_connection(config[key], f"config.{key}", creds[role])
        if "read" not in specs:
            specs["read"] = specs["write"]  # one of the two is set (checked above)
        specs.setdefault("write", specs["read"])
        specs.setdefault("admin", specs["write"])
    pool = config.get("connection_pool") or {}
    pool = _mapping(pool, "config.connection_pool")
    _check_fields(pool, _POOL_FIELDS, "config.connection_pool")
    size = _int(pool, "multiplexed_connections", "config.connection_pool", DEFAULT_POOL_SIZE)
    if not 1 <= size <= MAX_POOL_SIZE:
        raise ConfigError(f"must be between 1 and {MAX_POOL_SIZE}, got {size}",
                          field="config.connection_pool.multiplexed_connections")
    return EndpointConfig(read=specs["read"], write=specs["write"], admin=specs["admin"], pool_size=size)


def _password_slots(config: Mapping[str, Any]):
    for key in ("target", *_CONN_KEYS, *_CRED_KEYS):
        section = config.get(key)
        if isinstance(section, Mapping) and section.get("password"):
            yield key


def redact_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy with every password replaced by ``REDACTED``."""
    redacted = copy.deepcopy(dict(config))
    for key in _password_slots(config):
        redacted[key] = {**redacted[key], "password": REDACTED}
    return redacted


def merge_redacted(new: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """For an update: a password given back as ``REDACTED`` keeps the stored one."""
    merged = copy.deepcopy(dict(new))
    for key, section in merged.items():
        if isinstance(section, Mapping) and section.get("password") == REDACTED:
            stored = old.get(key)
            previous: Mapping[str, Any] = stored if isinstance(stored, Mapping) else {}
            if not previous.get("password"):
                raise ConfigError(f"{REDACTED!r} given but no password is stored here; "
                                  "send the password itself", field=f"config.{key}.password")
            merged[key] = {**section, "password": previous["password"]}
    return merged
