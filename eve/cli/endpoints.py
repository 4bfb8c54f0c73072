"""``eve endpoints`` and ``eve interlays``: the EndpointService and InterlayService of a running
coordinator from the command line.

An endpoint's config comes from a JSON or TOML file (or stdin), either the ``EndpointConfig``
alone or a whole request/``Endpoint`` body as ``eve endpoints get --json`` prints it. Passwords
may stay out of that file and off the command line: ``--password-file`` and ``--password-env``
put one into the config's connections or credentials. Replies carry ``"<redacted>"`` instead of
any password; a ``"<redacted>"`` sent back by ``update`` keeps the stored one.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eve.cli.exits import EXIT_FAILURES, EXIT_OK
from eve.cli.remote import (
    Api,
    Output,
    add_api_command,
    parse_message,
    read_document,
)
from eve.core.errors import ConfigError

if TYPE_CHECKING:
    from eve.v1 import common_pb2, endpoints_pb2, interlays_pb2

__all__ = [
    "INTERLAY_FLAGS",
    "PASSWORD_SLOTS",
    "add_endpoint_commands",
    "add_interlay_commands",
    "apply_passwords",
    "format_reply",
    "interlay_settings",
]

CONNECTION_SLOTS = ("target", "read_conn", "write_conn", "admin_conn")
CREDENTIAL_SLOTS = ("read_credentials", "write_credentials", "admin_credentials")
PASSWORD_SLOTS = CONNECTION_SLOTS + CREDENTIAL_SLOTS
REDACTED = "<redacted>"
# Output fields of an Endpoint that a request does not take; dropped so `get --json` can be edited
# and sent back with `update`.
_OUTPUT_ONLY = ("create_time", "update_time")


# -- passwords ----------------------------------------------------------------------------


def _split_slot(value: str, flag: str) -> tuple[str | None, str]:
    """``SLOT=VALUE`` or ``VALUE``; a prefix that is not a slot name is part of the value."""
    slot, sep, rest = value.partition("=")
    if sep and slot in PASSWORD_SLOTS:
        if not rest:
            raise ConfigError(f"{slot}= names no {'file' if flag.endswith('file') else 'variable'}", field=flag)
        return slot, rest
    return None, value


def _password_from(flag: str, value: str) -> str:
    if flag == "--password-file":
        try:
            password = Path(value).read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"cannot read {value}: {exc.strerror}", field=flag) from None
        if not password:
            raise ConfigError(f"{value} is empty", field=flag)
        return password
    password = os.environ.get(value)
    if not password:
        raise ConfigError(f"the environment variable {value} is not set or empty", field=flag)
    return password


def apply_passwords(config: dict[str, Any], sources: list[tuple[str, str]]) -> list[str]:
    """Put the passwords of ``sources`` (``(flag, [SLOT=]file-or-variable)``) into ``config``;
    returns them, so messages can mask them. Without a SLOT a password goes to every slot that
    has none: the role credentials when the config has some, else its connections (the API
    refuses credentials on both)."""
    passwords = []
    for flag, value in sources:
        slot, where = _split_slot(value, flag)
        password = _password_from(flag, where)
        passwords.append(password)
        if slot is not None:
            section = config.setdefault(slot, {})
            if not isinstance(section, dict):
                raise ConfigError(f"config.{slot} is not an object", field=flag)
            if section.get("password") not in (None, "", REDACTED):
                raise ConfigError(f"config.{slot} already has a password; give it in one place", field=flag)
            section["password"] = password
            continue
        present = [s for s in CREDENTIAL_SLOTS if isinstance(config.get(s), dict)] or \
                  [s for s in CONNECTION_SLOTS if isinstance(config.get(s), dict)]
        empty = [s for s in present if config[s].get("password") in (None, "")]
        if not empty:
            raise ConfigError("every connection and credential of the config has a password already; "
                              f"name one with {flag} SLOT=... ({', '.join(PASSWORD_SLOTS)})", field=flag)
        for slot in empty:
            config[slot]["password"] = password
    return passwords


def _endpoint_request(args: argparse.Namespace, request: Any) -> Any:
    """A Create/UpdateEndpointRequest from ``--file`` and the flags (the flags win)."""
    body = read_document(args.file)
    source = "stdin" if args.file == "-" else args.file
    if "config" in body:  # a whole request or Endpoint, as `eve endpoints get --json` prints it
        body = {key: value for key, value in body.items() if key not in _OUTPUT_ONLY}
        if body.get("endpoint") and body["endpoint"] != args.name:
            raise ConfigError(f"{source} is for endpoint {body['endpoint']!r}, not {args.name!r}", field="--file")
        config = body.pop("config")
        if not isinstance(config, dict):
            raise ConfigError(f"{source}: config must be an object", field="--file")
    else:
        config, body = body, {}
    sources = [("--password-file", v) for v in args.password_file or ()] + \
              [("--password-env", v) for v in args.password_env or ()]
    secrets = tuple(apply_passwords(config, sources))
    secrets += tuple(section["password"] for section in config.values()
                     if isinstance(section, dict) and isinstance(section.get("password"), str)
                     and section["password"] not in ("", REDACTED))
    parse_message(body, request, source=source, secrets=secrets)
    parse_message(config, request.config, source=f"{source}: config", secrets=secrets)
    request.endpoint = args.name
    if args.kind:
        request.kind = args.kind
    elif not request.kind:
        request.kind = "redis"
    if args.description is not None:
        request.description = args.description
    if args.pool_size is not None:
        request.config.connection_pool.multiplexed_connections = args.pool_size
    return request


# -- printing -----------------------------------------------------------------------------


def _connection_rows(config: endpoints_pb2.EndpointConfig) -> list[tuple[str, ...]]:
    rows = []
    for slot in CONNECTION_SLOTS:
        if config.HasField(slot):
            conn = getattr(config, slot)
            port = conn.port if conn.HasField("port") else 6379
            protocol = conn.protocol_version if conn.HasField("protocol_version") else 2
            rows.append((slot, f"{conn.host}:{port}", "yes" if conn.tls else "no", f"RESP{protocol}",
                         conn.username or "-", "set" if conn.password else "-"))
    for slot in CREDENTIAL_SLOTS:
        if config.HasField(slot):
            creds = getattr(config, slot)
            rows.append((slot, "", "", "", creds.username or "-", "set" if creds.password else "-"))
    return rows


def _addresses(config: endpoints_pb2.EndpointConfig) -> str:
    return ", ".join(dict.fromkeys(row[1] for row in _connection_rows(config) if row[1]))


def _print_endpoint(out: Output, endpoint: endpoints_pb2.Endpoint) -> None:
    from rich.table import Table

    out.print(f"endpoint [bold]{endpoint.endpoint}[/] ({endpoint.kind})"
              f"{': ' + endpoint.description if endpoint.description else ''}")
    table = Table("connection", "address", "tls", "protocol", "username", "password")
    for row in _connection_rows(endpoint.config):
        table.add_row(*row)
    out.print(table)
    pool = endpoint.config.connection_pool
    size = pool.multiplexed_connections if pool.HasField("multiplexed_connections") else 1
    out.print(f"{size} multiplexed backend connection(s) for interlays")


def format_reply(reply: common_pb2.RespValue, indent: str = "") -> str:
    """A RESP reply the way redis-cli shows it: ``(integer) 1``, ``(nil)``, quoted strings,
    numbered items; multi-line text (INFO) as it is."""
    kind = reply.WhichOneof("value")
    if kind == "simple_string":
        return reply.simple_string
    if kind in ("bulk_string", "verbatim"):
        if reply.text and "\n" in reply.text:
            return reply.text.rstrip("\r\n").replace("\r\n", "\n")
        if reply.text or not (reply.bulk_string or reply.verbatim.value):
            return f'"{reply.text}"'
        raw = reply.bulk_string if kind == "bulk_string" else reply.verbatim.value
        return '"' + raw.decode("latin-1").encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if kind == "integer":
        return f"(integer) {reply.integer}"
    if kind == "double":
        return f"(double) {reply.double:g}"
    if kind == "nil":
        return "(nil)"
    if kind == "error":
        return f"(error) {reply.error}"
    if kind == "boolean":
        return f"(boolean) {'true' if reply.boolean else 'false'}"
    if kind == "big_number":
        return f"(big number) {reply.big_number}"
    if kind == "map":
        if not reply.map.entries:
            return "(empty hash)"
        lines = []
        for number, entry in enumerate(reply.map.entries, start=1):
            prefix = f"{number}# "
            key = format_reply(entry.key, indent + " " * len(prefix))
            value = format_reply(entry.value, indent + " " * len(prefix))
            lines.append(f"{prefix}{key} => {value}")
        return f"\n{indent}".join(lines)
    items = getattr(reply, kind).items if kind in ("array", "set", "push") else []
    if not items:
        return "(empty array)" if kind != "set" else "(empty set)"
    lines = []
    width = len(str(len(items)))
    for number, item in enumerate(items, start=1):
        prefix = f"{number:>{width}}) "
        lines.append(prefix + format_reply(item, indent + " " * len(prefix)))
    return f"\n{indent}".join(lines)


def _print_interlay(out: Output, interlay: interlays_pb2.Interlay) -> None:
    from rich.table import Table

    from eve.v1 import interlays_pb2

    state = interlays_pb2.InterlayState.Name(interlay.state).removeprefix("INTERLAY_")
    ports = ", ".join(map(str, interlay.listener_ports)) or str(interlay.port)
    host = interlay.settings.listen_host or "127.0.0.1"
    out.print(f"interlay [bold]{interlay.id}[/] {state}: {host}:{ports} in front of endpoint "
              f"{interlay.endpoint}{' (' + interlay.last_error + ')' if interlay.last_error else ''}")
    stats = interlay.stats
    out.print(f"  {stats.connections} connections, {stats.ops_per_second:,.1f} ops/s, {stats.errors} errors, "
              f"{stats.dirty_keys_pending} dirty keys pending")
    if stats.backends:
        table = Table("backend", "ops", "errors", "p50 ms", "p99 ms")
        for backend in stats.backends:
            table.add_row(backend.backend, f"{backend.ops:,}", f"{backend.errors:,}", f"{backend.p50_ms:.2f}",
                          f"{backend.p99_ms:.2f}")
        out.print(table)
    if stats.dual_writes:
        table = Table("dual writes to", "writes", "failures", "last error")
        for side in stats.dual_writes:
            table.add_row(side.side, f"{side.writes:,}", f"{side.failures:,}", side.last_error or "-")
        out.print(table)


# -- eve endpoints ------------------------------------------------------------------------


def _endpoints_create(api: Api, out: Output, args: argparse.Namespace) -> int:
    from eve.v1 import endpoints_pb2

    return _endpoint_put(api, out, args, endpoints_pb2.CreateEndpointRequest(), api.endpoints.CreateEndpoint,
                         "created")


def _endpoints_update(api: Api, out: Output, args: argparse.Namespace) -> int:
    from eve.v1 import endpoints_pb2

    return _endpoint_put(api, out, args, endpoints_pb2.UpdateEndpointRequest(), api.endpoints.UpdateEndpoint,
                         "updated")


def _endpoint_put(api: Api, out: Output, args: argparse.Namespace, request: Any, method: Any, done: str) -> int:
    """CreateEndpoint and UpdateEndpoint: the same request body, the same reply."""
    endpoint = api.call(method, _endpoint_request(args, request))
    if out.as_json:
        out.reply(endpoint)
    else:
        out.print(f"{done} endpoint {endpoint.endpoint} ({_addresses(endpoint.config)})")
    return EXIT_OK


def _endpoints_get(api: Api, out: Output, args: argparse.Namespace) -> int:
    from eve.v1 import endpoints_pb2

    endpoint = api.call(api.endpoints.GetEndpoint, endpoints_pb2.GetEndpointRequest(endpoint=args.name))
    if out.as_json:
        out.reply(endpoint)
    else:
        _print_endpoint(out, endpoint)
    return EXIT_OK


def _endpoints_list(api: Api, out: Output, args: argparse.Namespace) -> int:
    from rich.table import Table

    from eve.v1 import endpoints_pb2

    reply = api.call(api.endpoints.ListEndpoints, endpoints_pb2.ListEndpointsRequest())
    if out.as_json:
        out.reply(reply)
        return EXIT_OK
    table = Table("endpoint", "kind", "address", "description")
    for endpoint in reply.endpoints:
        table.add_row(endpoint.endpoint, endpoint.kind, _addresses(endpoint.config), endpoint.description)
    out.print(table if reply.endpoints else "no endpoints (eve endpoints create NAME --file config.json)")
    return EXIT_OK


def _endpoints_delete(api: Api, out: Output, args: argparse.Namespace) -> int:
    from eve.v1 import endpoints_pb2

    reply = api.call(api.endpoints.DeleteEndpoint, endpoints_pb2.DeleteEndpointRequest(endpoint=args.name))
    if out.as_json:
        out.reply(reply)
    else:
        out.print(f"deleted endpoint {args.name}")
    return EXIT_OK


def _endpoints_command(api: Api, out: Output, args: argparse.Namespace) -> int:
    from eve.v1 import endpoints_pb2

    request = endpoints_pb2.CommandRequest(endpoint=args.name, command=args.words, db=args.db,
                                           timeout_seconds=args.command_timeout or 0)
    method = api.endpoints.Read if args.action == "read" else api.endpoints.Write
    reply = api.call(method, request)
    if out.as_json:
        out.reply(reply)
    else:
        out.print(format_reply(reply.reply), markup=False)
    return EXIT_FAILURES if reply.reply.WhichOneof("value") == "error" else EXIT_OK


def _endpoint_file_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--file", required=required, metavar="PATH",
                        help="the EndpointConfig (or a whole request, as `get --json` prints it) as JSON or "
                             "TOML; - reads stdin")
    parser.add_argument("--kind", help="the endpoint's kind (default: the file's, else redis)")
    parser.add_argument("--description", help="a description (default: the file's)")
    parser.add_argument("--pool-size", type=int, metavar="N",
                        help="multiplexed backend connections per node that an interlay in front of this "
                             "endpoint shares among its clients (connection_pool.multiplexed_connections; "
                             "default: the file's, else 1)")
    parser.add_argument("--password-file", action="append", metavar="[SLOT=]PATH",
                        help="a password from PATH, for every connection or credential of the config that has "
                             "none, or only for SLOT (target, read_conn, write_credentials, ...); repeatable")
    parser.add_argument("--password-env", action="append", metavar="[SLOT=]VAR",
                        help="the same, from the environment variable VAR")


def add_endpoint_commands(commands: Any) -> None:
    """``eve endpoints ...`` under the ``eve`` command's subparsers."""
    action = add_api_command(
        commands, "endpoints", help="create, inspect, change and call endpoints on a running coordinator",
        description="The EndpointService of eve serve. Exit codes: 0 done, 1 the server answered an error "
                    "(read, write), 2 bad input, unknown name, unreachable coordinator or refused token, "
                    "5 refused in this state (an endpoint in use).")

    create = action("create", _endpoints_create, "create an endpoint from a config file")
    create.add_argument("name", help="the endpoint's name")
    _endpoint_file_arguments(create, required=True)
    action("get", _endpoints_get, "show an endpoint (passwords redacted)").add_argument("name")
    action("list", _endpoints_list, "list the endpoints")
    update = action("update", _endpoints_update,
                    "replace an endpoint's kind, config and description (a \"<redacted>\" password keeps "
                    "the stored one)")
    update.add_argument("name")
    _endpoint_file_arguments(update, required=True)
    action("delete", _endpoints_delete, "delete an endpoint (refused while an interlay or run uses it)") \
        .add_argument("name")
    for name, help in (("read", "run one read-only command on the endpoint's read connection"),
                       ("write", "run one command on the endpoint's write connection")):
        call = action(name, _endpoints_command, help)
        call.add_argument("name", help="the endpoint")
        call.add_argument("words", nargs="+", metavar="COMMAND",
                          help="the command and its arguments (after -- when one starts with -)")
        call.add_argument("--db", type=int, default=0, metavar="N", help="logical database (default 0)")
        call.add_argument("--command-timeout", type=float, metavar="SECONDS",
                          help="how long the server may take (default 5)")


# -- eve interlays ------------------------------------------------------------------------


def _interlay_reply(method_name: str, request_name: str, done: str):
    def handler(api: Api, out: Output, args: argparse.Namespace) -> int:
        from eve.v1 import interlays_pb2

        reply = api.call(getattr(api.interlays, method_name), getattr(interlays_pb2, request_name)(id=args.id))
        if out.as_json:
            out.reply(reply)
        elif done:
            out.print(f"{done} interlay {args.id}")
        if not out.as_json and isinstance(reply, interlays_pb2.Interlay):
            _print_interlay(out, reply)
        return EXIT_OK
    return handler


# Every InterlaySettings field has a flag (a test checks it against the message): flag ->
# (field, type, help). The help states the default and the unit, as docs/configuration.md does.
INTERLAY_FLAGS: dict[str, tuple[str, type, str]] = {
    "--max-connections": ("max_concurrent_connections", int,
                          "clients at most; the next one is refused (default 10000)"),
    "--listen-host": ("listen_host", str,
                      "address the listeners bind (default 127.0.0.1; 0.0.0.0 for application hosts)"),
    "--output-buffer-hard-limit": ("output_buffer_hard_limit_bytes", int,
                                   ("bytes of replies a client has not read, at most; over it the client is "
                                    "disconnected (default 268435456 = 256 MB; 0: no limit)")),
    "--output-buffer-soft-limit": ("output_buffer_soft_limit_bytes", int,
                                   ("bytes of unread replies a client may hold for --output-buffer-soft-seconds "
                                    "before it is disconnected (default 67108864 = 64 MB; 0: no limit)")),
    "--output-buffer-soft-seconds": ("output_buffer_soft_seconds", float,
                                     "seconds a client may stay over the soft limit (default 60)"),
    "--stuck-connection-ms": ("stuck_connection_ms", int,
                              ("milliseconds the oldest request on a shared backend connection may wait "
                               "before the connection takes no new commands (default 100)")),
    "--tls-cert-file": ("tls_cert_file", str,
                        "serve clients over TLS (rediss://) with this PEM certificate chain (default: no TLS)"),
    "--tls-key-file": ("tls_key_file", str, "the certificate's private key, PEM, unencrypted (default: none)"),
    "--tls-ca-file": ("tls_ca_file", str,
                      ("require client certificates signed by the CA certificates in this PEM file "
                       "(default: none, clients need no certificate)")),
}


def interlay_settings(args: argparse.Namespace) -> interlays_pb2.InterlaySettings:
    """The InterlaySettings of ``eve interlays create``'s flags; a flag not given leaves its
    field unset, so the coordinator's default applies."""
    from eve.v1 import interlays_pb2

    settings = interlays_pb2.InterlaySettings()
    for flag, (name, _kind, _help) in INTERLAY_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None and value != "":
            setattr(settings, name, value)
    return settings


def _interlays_create(api: Api, out: Output, args: argparse.Namespace) -> int:
    from eve.v1 import interlays_pb2

    interlay = api.call(api.interlays.CreateInterlay, interlays_pb2.CreateInterlayRequest(
        id=args.id, endpoint=args.endpoint, port=args.port, settings=interlay_settings(args)))
    if out.as_json:
        out.reply(interlay)
    else:
        out.print(f"created interlay {interlay.id} on port {interlay.port} in front of {interlay.endpoint}; "
                  f"start it with: eve interlays start {interlay.id}")
    return EXIT_OK


def _interlays_list(api: Api, out: Output, args: argparse.Namespace) -> int:
    from rich.table import Table

    from eve.v1 import interlays_pb2

    reply = api.call(api.interlays.ListInterlays, interlays_pb2.ListInterlaysRequest())
    if out.as_json:
        out.reply(reply)
        return EXIT_OK
    table = Table("interlay", "endpoint", "listen", "state", "connections", "ops/s", "last error")
    for interlay in reply.interlays:
        ports = ",".join(map(str, interlay.listener_ports)) or str(interlay.port)
        table.add_row(interlay.id, interlay.endpoint, f"{interlay.settings.listen_host or '127.0.0.1'}:{ports}",
                      interlays_pb2.InterlayState.Name(interlay.state).removeprefix("INTERLAY_"),
                      str(interlay.stats.connections), f"{interlay.stats.ops_per_second:,.1f}",
                      interlay.last_error or "-")
    out.print(table if reply.interlays else "no interlays (eve interlays create ID --endpoint E --port P)")
    return EXIT_OK


def add_interlay_commands(commands: Any) -> None:
    """``eve interlays ...`` under the ``eve`` command's subparsers."""
    action = add_api_command(
        commands, "interlays", help="create, start, stop and inspect interlays (RESP proxies) on a running "
                                    "coordinator",
        description="The InterlayService of eve serve. Exit codes: 0 done, 2 bad input, unknown id, unreachable "
                    "coordinator or refused token, 5 refused in this state (a port in use, a run carries its "
                    "traffic).")

    create = action("create", _interlays_create, "create an interlay in front of an endpoint (not started)")
    create.add_argument("id", help="the interlay's id")
    create.add_argument("--endpoint", required=True, help="the endpoint it fronts (a run's source)")
    create.add_argument("--port", required=True, type=int, help="the port applications connect to")
    metavars = {int: "N", float: "SECONDS", str: "PATH"}
    for flag, (name, kind, help) in INTERLAY_FLAGS.items():
        metavar = "HOST" if name == "listen_host" else ("MS" if name.endswith("_ms") else
                                                        "BYTES" if name.endswith("_bytes") else metavars[kind])
        create.add_argument(flag, type=kind, metavar=metavar, help=help)
    for name, method, request, done, help in (
            ("get", "GetInterlay", "GetInterlayRequest", "", "show an interlay, its listeners and live stats"),
            ("start", "StartInterlay", "StartInterlayRequest", "started", "start the proxy process"),
            ("stop", "StopInterlay", "StopInterlayRequest", "stopped",
             "drain and stop it (refused while an online run carries its traffic)"),
            ("delete", "DeleteInterlay", "DeleteInterlayRequest", "deleted", "delete a stopped interlay")):
        action(name, _interlay_reply(method, request, done), help).add_argument("id")
    action("list", _interlays_list, "list the interlays")
