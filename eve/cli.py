"""The ``eve`` command line.

Exit codes say who failed: 0 success, 1 the job finished with failures (error
keys), 2 bad input or an unreachable server, 3 a failure in the source, 4 in
the target, 5 a call in the wrong state, 70 an internal error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from eve.errors import ConfigError, EveError, SourceError, StateError, TargetError, UnavailableError

__all__ = ["main", "EXIT_OK", "EXIT_FAILURES", "EXIT_USAGE", "EXIT_SOURCE", "EXIT_TARGET", "EXIT_STATE"]

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_SOURCE = 3
EXIT_TARGET = 4
EXIT_STATE = 5
EXIT_INTERNAL = 70


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, (ConfigError, UnavailableError)):
        return EXIT_USAGE
    if isinstance(exc, SourceError):
        return EXIT_SOURCE
    if isinstance(exc, TargetError):
        return EXIT_TARGET
    if isinstance(exc, StateError):
        return EXIT_STATE
    return EXIT_INTERNAL if not isinstance(exc, EveError) else EXIT_FAILURES


def _setup_logging(process: str, verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s {process} pid=%(process)d %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _read_token(token_file: str | None) -> str | None:
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {token_file}: {exc.strerror}", field="--token-file") from exc
        if not token:
            raise ConfigError(f"{token_file} is empty", field="--token-file")
        return token
    return os.environ.get("EVE_TOKEN") or None


def _cmd_serve(args: argparse.Namespace) -> int:
    from eve import telemetry
    from eve.server import ServerOptions, serve

    _setup_logging("coordinator", args.verbose)
    telemetry.setup("eve-coordinator")
    options = ServerOptions(listen=args.listen, state_path=args.state, token=_read_token(args.token_file))

    def ready(address: str) -> None:
        # One machine-readable line: scripts and test fixtures wait for it.
        print(f"eve: listening on {address}", flush=True)

    serve(options, on_ready=ready)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eve", description="Eve: live migration of Redis-compatible databases.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run the coordinator (gRPC API)")
    serve.add_argument("--listen", default="127.0.0.1:50051", metavar="HOST:PORT",
                       help="gRPC listen address (default %(default)s; port 0 picks a free one)")
    serve.add_argument("--state", default="eve-state.db", metavar="PATH",
                       help="SQLite state file, created on first start (default %(default)s)")
    serve.add_argument("--token-file", metavar="PATH",
                       help="require 'authorization: Bearer <token>' on every call (or set EVE_TOKEN)")
    serve.set_defaults(run=_cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except EveError as exc:
        print(f"eve {args.command}: {exc}", file=sys.stderr)
        return exit_code_for(exc)


if __name__ == "__main__":
    sys.exit(main())
