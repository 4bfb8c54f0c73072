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

from eve.core.errors import (
    ConfigError,
    EveError,
    SourceError,
    StateError,
    TargetError,
    UnavailableError,
)

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


def _setup_logging(process: str, verbose: bool, *, quiet: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO),
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
    from eve.api.server import ServerOptions, serve
    from eve.core import telemetry

    _setup_logging("coordinator", args.verbose)
    telemetry.setup("eve-coordinator")
    options = ServerOptions(listen=args.listen, state_path=args.state, token=_read_token(args.token_file))

    def ready(address: str) -> None:
        # One machine-readable line: scripts and test fixtures wait for it.
        print(f"eve: listening on {address}", flush=True)

    serve(options, on_ready=ready)
    return EXIT_OK


def _cmd_migrate(args: argparse.Namespace) -> int:
    from eve.cli.migrate import MigrateArgs, run_migrate

    _setup_logging("eve-migrate", args.verbose, quiet=not args.verbose)
    return run_migrate(MigrateArgs(
        source=args.source, target=args.target, mirrors=tuple(args.mirror or ()), conflict=args.conflict,
        preserve_ttl=not args.no_ttl, match=args.match, type=args.type, db=args.db, restorers=args.restorers,
        max_keys_per_sec=args.max_keys_per_sec, max_bytes_per_sec=args.max_bytes_per_sec,
        errors_out=args.errors_out, resume=args.resume, json=args.json, state=args.state,
        scan_count=args.scan_count, progress=not args.no_progress, source_share=args.source_share,
        backoff_latency_ms=args.backoff_latency_ms))


def _cmd_errors(args: argparse.Namespace) -> int:
    from eve.cli.migrate import errors_command

    _setup_logging("eve-errors", args.verbose, quiet=not args.verbose)
    return errors_command(args.action, state=args.state, run=args.run_id, out=args.out,
                          source=args.source, target=args.target, as_json=args.json)


def _cmd_demo(args: argparse.Namespace) -> int:
    from eve.cli.demo import run_demo

    _setup_logging("eve-demo", args.verbose, quiet=not args.verbose)
    return run_demo(keys=args.keys, offline=args.offline)


def _cmd_verify(args: argparse.Namespace) -> int:
    from eve.cli.verify import verify_command

    _setup_logging("eve-verify", args.verbose, quiet=not args.verbose)
    return verify_command(args.source, args.target, ttl_tolerance_ms=args.ttl_tolerance_ms, as_json=args.json,
                          max_examples=args.max_examples, db=args.db, match=args.match,
                          max_keys_per_second=args.max_keys_per_second)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


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

    migrate = commands.add_parser(
        "migrate", help="copy every key from a source to a target (one-shot bulk job, resumable)",
        description="Copy every key (values and TTLs) from --source to --target with SCAN/DUMP/PTTL/RESTORE. "
                    "URLs: redis://[user:pass@]host:port[/db], rediss:// for TLS; clusters are detected. "
                    "Exit codes: 0 done, 1 done with error keys, 2 bad input or unreachable server, "
                    "3 source failed, 4 target failed, 5 resume refused.")
    migrate.add_argument("--source", required=True, metavar="URL")
    migrate.add_argument("--target", required=True, metavar="URL")
    migrate.add_argument("--mirror", action="append", metavar="URL", help="also copy to this target (repeatable)")
    migrate.add_argument("--conflict", choices=["replace", "none", "merge"], default="replace",
                         help="when the key exists on the target: overwrite (default), keep the target's and "
                              "report a conflict, or merge hashes/sets/sorted sets")
    migrate.add_argument("--no-ttl", action="store_true", help="restore keys without their TTLs")
    migrate.add_argument("--match", metavar="GLOB", help="only keys matching this SCAN MATCH pattern")
    migrate.add_argument("--type", metavar="T", help="only keys of this type (SCAN TYPE)")
    migrate.add_argument("--db", type=_positive, metavar="N", help="only this database (default: every db with keys)")
    migrate.add_argument("--restorers", type=_positive, default=2, metavar="N", help="restorer processes (default 2)")
    migrate.add_argument("--max-keys-per-sec", type=_positive, default=0, metavar="N", help="source protection")
    migrate.add_argument("--max-bytes-per-sec", type=_positive, default=0, metavar="N", help="source protection")
    migrate.add_argument("--source-share", type=float, default=None, metavar="F",
                         help="pause the scan so DUMP/PTTL round trips take at most this share (0-1] of the "
                              "wall time, leaving the source to its live clients (default 0.6; 1 is full speed)")
    migrate.add_argument("--backoff-latency-ms", type=float, default=0.0, metavar="MS",
                         help="back off when a round trip to the source is this much slower than its baseline")
    migrate.add_argument("--scan-count", type=_positive, default=1000, metavar="N", help="SCAN COUNT (default 1000)")
    migrate.add_argument("--errors-out", metavar="FILE", help="write error keys to FILE (.jsonl or .csv)")
    migrate.add_argument("--resume", action="store_true", help="continue the unfinished job in --state")
    migrate.add_argument("--state", default="eve-migrate.db", metavar="PATH",
                         help="job state (checkpoints, error keys); default %(default)s")
    migrate.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    migrate.add_argument("--no-progress", action="store_true", help="no progress bar")
    migrate.set_defaults(run=_cmd_migrate)

    demo = commands.add_parser("demo", help="run a whole live migration on embedded engines")
    demo.add_argument("--keys", type=_positive, default=20_000, help="keys in the demo keyspace (default %(default)s)")
    demo.add_argument("--offline", action="store_true",
                      help="the offline strategy: no interlay, no application writing meanwhile")
    demo.set_defaults(run=_cmd_demo)

    verify = commands.add_parser("verify", help="compare a source and a target key by key (type, value, TTL)")
    verify.add_argument("--source", required=True, metavar="URL")
    verify.add_argument("--target", required=True, metavar="URL")
    verify.add_argument("--ttl-tolerance-ms", type=_positive, default=1000, metavar="MS")
    verify.add_argument("--db", type=_positive, metavar="N")
    verify.add_argument("--match", metavar="GLOB")
    verify.add_argument("--max-keys-per-second", type=_positive, default=0, metavar="N",
                        help="keys compared per second at most, to spare a busy source (default: no limit)")
    verify.add_argument("--max-examples", type=_positive, default=20, metavar="N")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(run=_cmd_verify)

    errors = commands.add_parser("errors", help="list, export or retry the error keys of a migrate job")
    errors.add_argument("action", choices=["list", "export", "retry"])
    errors.add_argument("--state", default="eve-migrate.db", metavar="PATH")
    errors.add_argument("--run", dest="run_id", metavar="ID", help="job id (default: the latest job in --state)")
    errors.add_argument("--out", metavar="FILE", help="export: .jsonl or .csv (default: JSON Lines on stdout)")
    errors.add_argument("--source", metavar="URL", help="retry: the job's source")
    errors.add_argument("--target", metavar="URL", help="retry: the job's target")
    errors.add_argument("--json", action="store_true")
    errors.set_defaults(run=_cmd_errors)
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
