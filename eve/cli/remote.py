"""What every command that talks to a running coordinator (``eve serve``) shares: where it
listens and how to authenticate (``--address``/``EVE_ADDRESS``, ``EVE_TOKEN``/``--token-file``,
``--tls-ca``, and a client certificate for a coordinator that requires mutual TLS:
``--tls-cert``/``--tls-key`` or ``EVE_TLS_CERT``/``EVE_TLS_KEY``), the call with its metadata
and deadline, gRPC status codes mapped to exit codes in one place (``STATUS_EXIT_CODES``), and
the output: ``--json`` (the API's reply) or tables.

The token travels as ``authorization: Bearer <token>`` metadata and is never printed; endpoint
configs come back from the API with their passwords redacted.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eve.cli.exits import EXIT_INTERNAL, EXIT_OK, EXIT_STATE, EXIT_USAGE, read_token
from eve.core.errors import ConfigError

if TYPE_CHECKING:
    import grpc
    from google.protobuf.message import Message
    from rich.console import Console

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_TIMEOUT_SECONDS",
    "STATUS_EXIT_CODES",
    "Api",
    "ApiOptions",
    "Output",
    "add_api_arguments",
    "add_api_command",
    "api_command",
    "exit_code_for_status",
    "message_dict",
    "message_json",
    "parse_message",
    "read_document",
]

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT_SECONDS = 60.0
# Wide enough that a table piped to a file or grep keeps each row on one line.
PIPE_WIDTH = 200

# The exit codes of the ``eve`` command (eve.cli.main's docstring). main imports this module to
# register the commands, so the numbers are named here again rather than imported back.

# gRPC status -> exit code, the one place (the server maps Eve's errors to these statuses in
# eve.api.interceptors.STATUS_CODES). A status not listed is the coordinator's own failure.
STATUS_EXIT_CODES: dict[str, int] = {
    "OK": EXIT_OK,
    "INVALID_ARGUMENT": EXIT_USAGE,      # ConfigError: a field of the request
    "NOT_FOUND": EXIT_USAGE,             # no endpoint, interlay or run of that name
    "ALREADY_EXISTS": EXIT_USAGE,        # the name is taken
    "OUT_OF_RANGE": EXIT_USAGE,
    "UNAVAILABLE": EXIT_USAGE,           # the coordinator (or a server it calls) cannot be reached
    "DEADLINE_EXCEEDED": EXIT_USAGE,     # no answer within --timeout
    "UNAUTHENTICATED": EXIT_USAGE,       # the token is missing or wrong
    "PERMISSION_DENIED": EXIT_USAGE,     # a Redis server refused the endpoint's credentials
    "FAILED_PRECONDITION": EXIT_STATE,   # StateError: not in this state (approve before prepare, ...)
    "ABORTED": EXIT_STATE,
    "UNIMPLEMENTED": EXIT_USAGE,         # a coordinator older than this CLI
}


def exit_code_for_status(code: grpc.StatusCode) -> int:
    return STATUS_EXIT_CODES.get(code.name, EXIT_INTERNAL)


# -- options ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiOptions:
    """Where the coordinator listens and how to reach it. ``repr`` never shows the token."""

    address: str = DEFAULT_ADDRESS
    token: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None  # --tls-cert/EVE_TLS_CERT: the client certificate (mutual TLS)
    tls_key: str | None = None   # --tls-key/EVE_TLS_KEY: its private key (PEM, unencrypted)
    timeout: float | None = None  # --timeout; None: DEFAULT_TIMEOUT_SECONDS, or none for long calls

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ApiOptions:
        address = args.address or os.environ.get("EVE_ADDRESS") or DEFAULT_ADDRESS
        if args.tls_ca:
            _check_ca_file(args.tls_ca)
        if args.timeout is not None and args.timeout <= 0:
            raise ConfigError(f"must be positive, got {args.timeout:g}", field="--timeout")
        cert = getattr(args, "tls_cert", None) or os.environ.get("EVE_TLS_CERT") or None
        key = getattr(args, "tls_key", None) or os.environ.get("EVE_TLS_KEY") or None
        _check_client_certificate(cert, key)
        return cls(address=address, token=read_token(args.token_file), tls_ca=args.tls_ca, tls_cert=cert,
                   tls_key=key, timeout=args.timeout)

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)


def _check_client_certificate(cert: str | None, key: str | None) -> None:
    """Both files or neither, and a key that belongs to the certificate: said now, by flag,
    not as a handshake the coordinator refuses."""
    if bool(cert) != bool(key):
        missing = "--tls-key (or EVE_TLS_KEY)" if cert else "--tls-cert (or EVE_TLS_CERT)"
        raise ConfigError(f"a client certificate needs both files: {missing} is missing",
                          field="--tls-key" if cert else "--tls-cert")
    if not cert or not key:
        return
    for path, flag in ((cert, "--tls-cert"), (key, "--tls-key")):
        if not os.path.isfile(path):
            raise ConfigError(f"{path!r} does not exist (or is not a file)", field=flag)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(f"{cert} and {key} are not a PEM certificate and its unencrypted key: "
                          f"{exc.reason or exc}", field="--tls-key") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {cert} or {key}: {exc.strerror or exc}", field="--tls-cert") from None


def _check_ca_file(path: str) -> None:
    """A CA bundle that exists and holds PEM certificates: said now, not as a failed handshake."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path!r} does not exist (or is not a file)", field="--tls-ca")
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{path!r} holds no PEM CA certificate: {exc}", field="--tls-ca") from None
    except OSError as exc:
        raise ConfigError(f"{path!r} cannot be read: {exc.strerror or exc}", field="--tls-ca") from None


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every command that calls the coordinator."""
    group = parser.add_argument_group("coordinator")
    group.add_argument("--address", metavar="HOST:PORT",
                       help=f"where eve serve listens (default: $EVE_ADDRESS, else {DEFAULT_ADDRESS})")
    group.add_argument("--token-file", metavar="PATH",
                       help="send the token in PATH as 'authorization: Bearer <token>' (default: $EVE_TOKEN)")
    group.add_argument("--tls-ca", metavar="PATH",
                       help="connect with TLS, trusting the CA certificates in PATH (PEM)")
    group.add_argument("--tls-cert", metavar="PATH",
                       help="present this client certificate (PEM) to a coordinator that requires mutual TLS "
                            "(eve serve --tls-client-ca); connects with TLS (default: $EVE_TLS_CERT)")
    group.add_argument("--tls-key", metavar="PATH",
                       help="the client certificate's private key (PEM, unencrypted; default: $EVE_TLS_KEY)")
    group.add_argument("--timeout", type=float, metavar="SECONDS",
                       help=f"deadline of each call (default {DEFAULT_TIMEOUT_SECONDS:g}; verify, complete "
                            "and rollback wait as long as they take)")
    parser.add_argument("--json", action="store_true",
                        help="print the API's reply as JSON (proto field names, zero values included)")


# -- the connection -----------------------------------------------------------------------


class Api:
    """A channel to the coordinator and a stub per service; every call carries the token."""

    def __init__(self, options: ApiOptions) -> None:
        import grpc

        from eve.v1 import endpoints_pb2_grpc, interlays_pb2_grpc, workflows_pb2_grpc

        self.options = options
        if options.tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(options.tls_ca).read_bytes() if options.tls_ca else None,
                private_key=Path(options.tls_key).read_bytes() if options.tls_key else None,
                certificate_chain=Path(options.tls_cert).read_bytes() if options.tls_cert else None)
            self.channel = grpc.secure_channel(options.address, credentials)
        else:
            if options.token and not _is_loopback(options.address):  # the token would cross the network in clear
                print(f"eve: warning: sending the token to {options.address} without TLS; use --tls-ca",
                      file=sys.stderr)
            self.channel = grpc.insecure_channel(options.address)
        self.endpoints = endpoints_pb2_grpc.EndpointServiceStub(self.channel)
        self.interlays = interlays_pb2_grpc.InterlayServiceStub(self.channel)
        self.migrations = workflows_pb2_grpc.MigrationServiceStub(self.channel)
        self._metadata = (("authorization", f"Bearer {options.token}"),) if options.token else ()

    def call(self, method: Callable[..., Any], request: Message, *, wait: bool = False) -> Any:
        """One unary call; ``wait`` lifts the deadline for calls that take as long as the data
        (Verify compares every key) unless ``--timeout`` was given."""
        timeout = self.options.timeout
        if timeout is None and not wait:
            timeout = DEFAULT_TIMEOUT_SECONDS
        return method(request, metadata=self._metadata, timeout=timeout)

    def stream(self, method: Callable[..., Any], request: Message) -> Any:
        """A server stream without a deadline: the returned call iterates and can be cancelled."""
        return method(request, metadata=self._metadata)

    def describe_failure(self, exc: grpc.RpcError) -> str:
        """What went wrong, in the operator's words; never the token."""
        code, details = exc.code(), exc.details() or ""
        name = code.name if code is not None else "UNKNOWN"
        where = self.options.address
        if name == "UNAVAILABLE" and ("failed to connect" in details or "Socket closed" in details
                                      or "Connection refused" in details or "handshake" in details.lower()):
            if self.options.tls:
                ca = f"CA {self.options.tls_ca}" if self.options.tls_ca else "the system's CAs"
                cert = (f", client certificate {self.options.tls_cert}" if self.options.tls_cert
                        else "; a coordinator that requires mutual TLS needs --tls-cert/--tls-key")
                return (f"cannot reach the coordinator at {where} over TLS ({ca}{cert}): {details}; "
                        "is it serving TLS? Without --tls-ca the CLI connects in plaintext")
            return f"cannot reach the coordinator at {where}: {details} (is eve serve running there? --address)"
        if name == "UNAUTHENTICATED":
            hint = ("the token was refused" if self.options.token
                    else "the coordinator needs a token: set EVE_TOKEN or --token-file")
            return f"{hint} ({details})"
        if name == "DEADLINE_EXCEEDED":
            seconds = self.options.timeout or DEFAULT_TIMEOUT_SECONDS
            return f"no answer from the coordinator at {where} within {seconds:g}s (--timeout)"
        return f"{details or name} ({name})"

    def close(self) -> None:
        self.channel.close()


def _is_loopback(address: str) -> bool:
    from eve.api.server import is_loopback

    host = address.rpartition(":")[0] if ":" in address else address
    return is_loopback(host.strip("[]"))


# -- output -------------------------------------------------------------------------------


def message_dict(message: Message) -> dict[str, Any]:
    """A reply as JSON values (``eve.api.convert.reply_to_dict``: zero values shown, int64 as numbers)."""
    from eve.api.convert import reply_to_dict

    return reply_to_dict(message)


def message_json(message: Message, *, indent: int | None = 2) -> str:
    return json.dumps(message_dict(message), indent=indent, ensure_ascii=False)


class Output:
    """Where a command prints: the API's reply as JSON with ``--json``, else text and tables."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            console = Console(highlight=False)
            if not console.is_terminal and "COLUMNS" not in os.environ:
                console = Console(highlight=False, width=PIPE_WIDTH)
            self._console = console
        return self._console

    def reply(self, message: Message) -> None:
        print(message_json(message), flush=True)

    def replies(self, **messages: Message) -> None:
        """The replies of a command that makes several calls, as one object keyed by what they are."""
        print(json.dumps({name: message_dict(m) for name, m in messages.items()}, indent=2), flush=True)

    def line(self, message: Message) -> None:
        """One message of a stream: JSON Lines, so ``jq`` and ``grep`` read it as it arrives."""
        print(message_json(message, indent=None), flush=True)

    def print(self, *objects: Any, **kw: Any) -> None:
        self.console.print(*objects, **kw)


def api_command(handler: Callable[[Api, Output, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """The ``run`` of a subcommand: connect, call ``handler``, map a failed call to its exit code."""

    def run(args: argparse.Namespace) -> int:
        import grpc

        api = Api(ApiOptions.from_args(args))
        try:
            return handler(api, Output(args.json), args)
        except grpc.RpcError as exc:
            words = " ".join(word for word in (args.command, getattr(args, "action", None)) if word)
            print(f"eve {words}: {api.describe_failure(exc)}", file=sys.stderr)
            return exit_code_for_status(exc.code())
        finally:
            api.close()

    return run


Handler = Callable[[Api, Output, argparse.Namespace], int]


def add_api_command(commands: Any, name: str, *, help: str,
                    description: str) -> Callable[[str, Handler, str], argparse.ArgumentParser]:
    """``eve NAME ACTION ...`` under the ``eve`` command's subparsers; returns the function that
    adds one ACTION (with the coordinator options) and returns its parser."""
    parser = commands.add_parser(name, help=help, description=description)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def add_action(action: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(action, help=help, description=help)
        add_api_arguments(sub)
        sub.set_defaults(run=api_command(handler))
        return sub

    return add_action


# -- input documents ------------------------------------------------------------------------


def read_document(path: str, *, field: str = "--file") -> dict[str, Any]:
    """A JSON or TOML file (``-``: stdin) as a dict. ``.json``/``.toml`` decide; otherwise a body
    that starts with ``{`` is JSON."""
    import tomllib

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", field=field) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text", field=field) from None
    name = "stdin" if path == "-" else path
    as_json = path.endswith(".json") or (not path.endswith(".toml") and text.lstrip().startswith("{"))
    try:
        body = json.loads(text) if as_json else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                          field=field) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name} is not valid TOML: {exc}", field=field) from None
    if not isinstance(body, dict):
        raise ConfigError(f"{name} must hold one object (a table), got {type(body).__name__}", field=field)
    return body


def parse_message(body: Mapping[str, Any], message: Message, *, source: str, field: str = "--file",
                  secrets: tuple[str, ...] = ()) -> Message:
    """``body`` into ``message`` with ``json_format.ParseDict`` (so fields added to the proto
    work without a change here); an unknown key is named with its dotted path. ``secrets`` are
    masked in any message, since a parse error may quote the value it could not read."""
    from eve.api.convert import parse_json

    try:
        return parse_json(body, message, secrets=secrets)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}", field=field) from None
