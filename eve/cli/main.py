"""The ``eve`` command line. Exit codes: ``eve.cli.exits``."""

from __future__ import annotations

import argparse
from importlib import metadata
import logging
import os
import sys

from eve.cli.exits import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    exit_code_for,
    read_token,
)
from eve.core.errors import EveError
from scanner.options import DEFAULT_BIG_KEY_THRESHOLD_BYTES

__all__ = ["main", "build_parser"]


def _setup_logging(process: str, verbose: bool, *, quiet: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO),
        format=f"%(asctime)s {process} pid=%(process)d %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from eve.api.server import ServerOptions, serve
    from eve.api.tls import TlsFiles
    from eve.core import telemetry
    from eve.core.secrets import StateKey

    _setup_logging("coordinator", args.verbose)
    telemetry.setup("eve-coordinator")
    options = ServerOptions(listen=args.listen, state_path=args.state, token=read_token(args.token_file),
                            http_listen=args.http, insecure=args.insecure,
                            state_key=StateKey.from_options(args.key_file, os.environ),
                            tls=TlsFiles.from_flags(args.tls_cert, args.tls_key, args.tls_client_ca))

    def ready(address: str) -> None:
        # One machine-readable line: scripts and test fixtures wait for it.
        print(f"eve: listening on {address}", flush=True)

    def http_ready(url: str) -> None:
        print(f"eve: http listening on {url}", flush=True)  # the second line, with --http

    serve(options, on_ready=ready, on_http_ready=http_ready)
    return EXIT_OK


def _cmd_migrate(args: argparse.Namespace) -> int:
    from eve.cli.migrate import MigrateArgs, run_migrate

    _setup_logging("eve-migrate", args.verbose, quiet=not args.verbose)
    return run_migrate(MigrateArgs(
        source=args.source, target=args.target, mirrors=tuple(args.mirror or ()), conflict=args.conflict,
        mode=args.mode,
        preserve_ttl=not args.no_ttl, match=args.match, type=args.type, db=args.db, restorers=args.restorers,
        max_keys_per_sec=args.max_keys_per_second, max_bytes_per_sec=args.max_bytes_per_second,
        errors_out=args.errors_out, resume=args.resume, json=args.json, state=args.state,
        scan_count=args.scan_count, progress=not args.no_progress, source_share=args.source_share,
        backoff_latency_ms=args.backoff_latency_ms, latency_budget_ms=args.latency_budget_ms,
        big_key_bytes=args.big_key_bytes, source_password_file=args.source_password_file,
        target_password_file=args.target_password_file, dry_run=args.dry_run, force=args.force,
        metrics_port=args.metrics_port, skip_module_keys=args.skip_module_keys,
        index_aliases=tuple(args.index_alias or ()), command=tuple(args.argv)))


def _cmd_errors(args: argparse.Namespace) -> int:
    from eve.cli.migrate import errors_command

    _setup_logging("eve-errors", args.verbose, quiet=not args.verbose)
    return errors_command(args.action, state=args.state, run=args.run_id, out=args.out,
                          source=args.source, target=args.target, as_json=args.json, limit=args.limit,
                          source_password_file=args.source_password_file,
                          target_password_file=args.target_password_file)


def _cmd_jobs(args: argparse.Namespace) -> int:
    from eve.cli.migrate import jobs_command

    _setup_logging("eve-jobs", args.verbose, quiet=not args.verbose)
    return jobs_command(args.action, state=args.state, run=args.run_id, as_json=args.json)


def _cmd_demo(args: argparse.Namespace) -> int:
    from eve.cli.demo import run_demo

    _setup_logging("eve-demo", args.verbose, quiet=not args.verbose)
    return run_demo(keys=args.keys, offline=args.offline)


def _cmd_verify(args: argparse.Namespace) -> int:
    from eve.cli.verify import verify_command

    _setup_logging("eve-verify", args.verbose, quiet=not args.verbose)
    return verify_command(args.source, args.target, ttl_tolerance_ms=args.ttl_tolerance_ms, as_json=args.json,
                          max_examples=args.max_examples, db=args.db, match=args.match,
                          max_keys_per_second=args.max_keys_per_second,
                          source_password_file=args.source_password_file,
                          target_password_file=args.target_password_file, out=args.out, fix=args.fix,
                          progress=not args.no_progress)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _port(text: str) -> int:
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0..65535)")
    return value


def _version() -> str:
    try:
        return metadata.version("eve-migrate")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eve", description="Eve: live migration of Redis-compatible databases.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"eve {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run the coordinator (gRPC API; HTTP/JSON and /metrics with --http)")
    serve.add_argument("--listen", default="127.0.0.1:50051", metavar="HOST:PORT",
                       help="gRPC listen address (default %(default)s; port 0 picks a free one)")
    serve.add_argument("--state", default="eve-state.db", metavar="PATH",
                       help="SQLite state file, created on first start (default %(default)s)")
    serve.add_argument("--key-file", metavar="PATH",
                       help="seal the endpoint passwords in the state file with this key (EVE_STATE_KEY works "
                            "too; 'eve state new-key FILE' writes one); without a key they are stored in clear")
    serve.add_argument("--token-file", metavar="PATH",
                       help="require 'authorization: Bearer <token>' on every call (or set EVE_TOKEN)")
    serve.add_argument("--http", metavar="HOST:PORT",
                       help="also serve the API as HTTP/JSON (the brief's REST routes under /api/v1) and "
                            "Prometheus metrics at /metrics on this address (port 0 picks a free one)")
    serve.add_argument("--tls-cert", metavar="PATH", help="serve gRPC and HTTP over TLS with this PEM certificate")
    serve.add_argument("--tls-key", metavar="PATH", help="the certificate's private key (PEM, unencrypted)")
    serve.add_argument("--tls-client-ca", metavar="PATH",
                       help="require client certificates signed by this CA (mutual TLS)")
    serve.add_argument("--insecure", action="store_true",
                       help="allow a token without TLS off loopback (a trusted network): it crosses in clear")
    serve.set_defaults(run=_cmd_serve)

    migrate = commands.add_parser(
        "migrate", help="copy every key from a source to a target (one-shot bulk job, resumable)",
        description="Copy every key (values and TTLs) from --source to --target with SCAN/DUMP/PTTL/RESTORE. "
                    "URLs: redis://[user:pass@]host:port[/db], rediss:// for TLS; clusters are detected. "
                    "Passwords: in the URL, in a file (--source-password-file, --target-password-file) or in "
                    "EVE_SOURCE_PASSWORD / EVE_TARGET_PASSWORD / EVE_MIRROR_PASSWORD, so that ps does not show "
                    "them. Before anything is written, a pre-flight refuses the same server twice, sides "
                    "linked by replication, a read-only target and a db the servers do not have. "
                    "Exit codes: 0 done, 1 done with error keys, 2 bad input, unreachable server or refused "
                    "credentials, 3 source failed, 4 target failed, 5 resume refused, 130 interrupted.")
    migrate.add_argument("--source", required=True, metavar="URL", help="the server to copy from")
    migrate.add_argument("--target", required=True, metavar="URL",
                         help="the server to copy to; a db in its URL must be the db copied")
    migrate.add_argument("--mirror", action="append", metavar="URL", help="also copy to this target (repeatable)")
    migrate.add_argument("--source-password-file", metavar="PATH", help="read the source's password from PATH")
    migrate.add_argument("--target-password-file", metavar="PATH", help="read the target's password from PATH")
    migrate.add_argument("--conflict", choices=["replace", "none", "merge"], default="replace",
                         help="when the key exists on the target: overwrite (default), keep the target's and "
                              "report a conflict, or merge hashes/sets/sorted sets")
    migrate.add_argument("--mode", choices=["auto", "dump-restore", "logical"], default=None,
                         help="how keys move: auto (default; DUMP/RESTORE, payloads relabelled for an older or "
                              "foreign target, a logical copy where the target cannot read them), dump-restore "
                              "(no logical copy: refused keys are error keys), or logical (every key with "
                              "ordinary commands); --resume keeps the job's mode")
    migrate.add_argument("--no-ttl", action="store_true", help="restore keys without their TTLs")
    migrate.add_argument("--match", metavar="GLOB", help="only keys matching this SCAN MATCH pattern")
    migrate.add_argument("--type", metavar="T",
                         help="only keys of this type: string, list, set, zset, hash, stream, or a module type")
    migrate.add_argument("--db", type=_positive, metavar="N", help="only this database (default: every db with keys)")
    migrate.add_argument("--restorers", type=_positive, default=2, metavar="N",
                         help="restorer processes, 1 to 64 (default %(default)s)")
    migrate.add_argument("--max-keys-per-second", "--max-keys-per-sec", dest="max_keys_per_second",
                         type=_positive, default=0, metavar="N",
                         help="copy at most N keys per second, to spare the source (default: no limit)")
    migrate.add_argument("--max-bytes-per-second", "--max-bytes-per-sec", dest="max_bytes_per_second",
                         type=_positive, default=0, metavar="N",
                         help="copy at most N payload bytes per second (default: no limit)")
    migrate.add_argument("--source-share", type=float, default=None, metavar="F",
                         help="pause the scan so DUMP/PTTL round trips take at most this share (0-1] of the "
                              "wall time, leaving the source to its live clients (default 0.6; 1 is full speed)")
    migrate.add_argument("--backoff-latency-ms", type=float, default=0.0, metavar="MS",
                         help="back off when a round trip to the source is this much slower than its baseline")
    migrate.add_argument("--latency-budget-ms", type=float, default=0.0, metavar="MS",
                         help="hold the source's command latency within MS of its idle pace: the scan slows "
                              "down when the source's clients wait longer and speeds up when they stop (up to "
                              "--source-share, which defaults to 1 with a budget)")
    migrate.add_argument("--big-key-bytes", type=_positive, default=DEFAULT_BIG_KEY_THRESHOLD_BYTES, metavar="N",
                         help="copy keys above N bytes (MEMORY USAGE) in chunks instead of one DUMP; 0 DUMPs every "
                              "key whole (default %(default)s: 16 MiB)")
    migrate.add_argument("--scan-count", type=_positive, default=1000, metavar="N", help="SCAN COUNT (default 1000)")
    migrate.add_argument("--errors-out", metavar="FILE", help="write error keys to FILE (.jsonl or .csv)")
    migrate.add_argument("--resume", action="store_true", help="continue the unfinished job in --state")
    migrate.add_argument("--force", action="store_true",
                         help="start a new job even though the one in --state did not finish (it is discarded)")
    migrate.add_argument("--skip-module-keys", action="store_true",
                         help="copy everything else when the target lacks a module whose keys the source holds "
                              "(they become error keys naming the module); without it such a job is refused")
    migrate.add_argument("--index-alias", action="append", metavar="ALIAS=INDEX",
                         help="set this search index alias on the target too (RediSearch has no command that "
                              "lists aliases); repeat for each")
    migrate.add_argument("--dry-run", action="store_true",
                         help="run the pre-flight and print the plan; copy nothing")
    migrate.add_argument("--state", default="eve-migrate.db", metavar="PATH",
                         help="job state (checkpoints, error keys); default %(default)s")
    migrate.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    migrate.add_argument("--no-progress", action="store_true", help="no progress bar")
    migrate.add_argument("--metrics-port", type=_port, metavar="N",
                         help="serve Prometheus metrics at http://127.0.0.1:N/metrics while the job runs "
                              "(0 picks a free port; the address is printed on stderr)")
    migrate.set_defaults(run=_cmd_migrate)

    demo = commands.add_parser("demo", help="run a whole live migration on embedded engines")
    demo.add_argument("--keys", type=_positive, default=20_000, help="keys in the demo keyspace (default %(default)s)")
    demo.add_argument("--offline", action="store_true",
                      help="the offline strategy: no interlay, no application writing meanwhile")
    demo.set_defaults(run=_cmd_demo)

    verify = commands.add_parser("verify", help="compare a source and a target key by key (type, value, TTL)",
                                 description="Compare every key of --source with --target: missing, extra, type, "
                                             "value (with the fields, members or bytes that differ) and TTL. "
                                             "Exit codes: 0 the sides are identical (with --fix: after the fix), "
                                             "1 they differ, 2 bad input, unreachable server or refused "
                                             "credentials.")
    verify.add_argument("--source", required=True, metavar="URL", help="the side whose keys are the reference")
    verify.add_argument("--target", required=True, metavar="URL", help="the side compared with it")
    verify.add_argument("--source-password-file", metavar="PATH", help="read the source's password from PATH")
    verify.add_argument("--target-password-file", metavar="PATH", help="read the target's password from PATH")
    verify.add_argument("--ttl-tolerance-ms", type=_positive, default=1000, metavar="MS",
                        help="TTLs that differ by at most this much are equal (default %(default)s)")
    verify.add_argument("--db", type=_positive, metavar="N", help="only this database (default: every db with keys)")
    verify.add_argument("--match", metavar="GLOB", help="only keys matching this SCAN MATCH pattern")
    verify.add_argument("--max-keys-per-second", "--max-keys-per-sec", dest="max_keys_per_second",
                        type=_positive, default=0, metavar="N",
                        help="keys compared per second at most, to spare a busy source (default: no limit)")
    verify.add_argument("--max-examples", type=_positive, default=20, metavar="N",
                        help="differences shown (default %(default)s)")
    verify.add_argument("--out", metavar="FILE",
                        help="write every difference to FILE (.jsonl or .csv), not only the examples shown")
    verify.add_argument("--fix", action="store_true",
                        help="make the target equal to the source for the compared keys (--db, --match): copy "
                             "what differs again from the source (DUMP/RESTORE REPLACE, or a logical copy) and "
                             "DELETE keys that are only on the target; then compare those keys again. Refused "
                             "when both URLs reach one server")
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.add_argument("--no-progress", action="store_true", help="no progress bar")
    verify.set_defaults(run=_cmd_verify)

    errors = commands.add_parser("errors", help="list, export or retry the error keys (or conflicts) of a job")
    errors.add_argument("action", choices=["list", "export", "retry", "conflicts"],
                        help="list: a summary by reason and the keys; export: JSON Lines or CSV; retry: copy "
                             "them again; conflicts: the keys kept on the target (--conflict none/merge)")
    errors.add_argument("--state", default="eve-migrate.db", metavar="PATH", help="the job's state file")
    errors.add_argument("--run", dest="run_id", metavar="ID", help="job id (default: the latest job in --state)")
    errors.add_argument("--out", metavar="FILE", help="export, conflicts: .jsonl or .csv (default: stdout)")
    errors.add_argument("--limit", type=_positive, default=100, metavar="N",
                        help="list, conflicts: show at most N keys (default %(default)s; 0 for all)")
    errors.add_argument("--source", metavar="URL", help="retry: the job's source")
    errors.add_argument("--target", metavar="URL", help="retry: the job's target")
    errors.add_argument("--source-password-file", metavar="PATH", help="retry: the source's password")
    errors.add_argument("--target-password-file", metavar="PATH", help="retry: the target's password")
    errors.add_argument("--json", action="store_true", help="print one JSON object")
    errors.set_defaults(run=_cmd_errors)

    jobs = commands.add_parser("jobs", help="list the jobs of a state file, or discard an unfinished one")
    jobs.add_argument("action", choices=["list", "discard"],
                      help="list: every job with its state; discard: give up the unfinished job so that a "
                           "plain eve migrate starts a new one")
    jobs.add_argument("--state", default="eve-migrate.db", metavar="PATH", help="the state file")
    jobs.add_argument("--run", dest="run_id", metavar="ID", help="discard: this job (default: the latest)")
    jobs.add_argument("--json", action="store_true", help="print one JSON object")
    jobs.set_defaults(run=_cmd_jobs)

    from eve.cli import state as state_cli

    state_cli.add_state_commands(commands)

    # Clients of a running coordinator (eve serve): eve.cli.runs, eve.cli.endpoints.
    from eve.cli import endpoints as endpoints_cli, runs as runs_cli

    runs_cli.add_run_commands(commands)
    endpoints_cli.add_endpoint_commands(commands)
    endpoints_cli.add_interlay_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(words)
    args.argv = [word for word in words if word not in ("-v", "--verbose")]
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (eve errors export | head): end quietly. Python would complain
        # again when it flushes stdout at exit, so point stdout at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except EveError as exc:
        print(f"eve {args.command}: {exc}", file=sys.stderr)
        return exit_code_for(exc)


if __name__ == "__main__":
    sys.exit(main())
