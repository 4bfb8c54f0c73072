"""``eve migrate``, ``eve errors`` and ``eve jobs``: one-shot bulk jobs on the bulk pipeline.

A job lives in a state file (``--state``): its setup (without credentials: they
are never stored), checkpoints, counters, error keys and conflicts. ``--resume``
continues an unfinished job and is refused when the source, target or setup
differ from the saved ones; ``--force`` starts a new job instead. A job that
failed before it copied anything leaves nothing to resume (it is discarded), so
a bad option never traps the state file.

Before a job exists, a pre-flight (``eve.prepare.preflight``) recognises the
servers by what they say of themselves: the same server twice (``run_id``), sides
linked by replication, a read-only target, a db the servers do not have, missing
credentials. Those are bad input (exit 2, naming the flag); nothing is written.
Passwords can come from the URL, a file (``--source-password-file``) or the
environment (``EVE_SOURCE_PASSWORD``, ``EVE_TARGET_PASSWORD``,
``EVE_MIRROR_PASSWORD``), so they need not show in ``ps``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eve.bulk import error_keys as export_mod
from eve.bulk.pipeline import (
    DEFAULT_SOURCE_SHARE,
    MAX_RESTORERS,
    BulkCopy,
    BulkOptions,
    CopyStopped,
    Progress,
    retry_error_keys,
)
from eve.cli.exits import EXIT_INTERRUPTED
from eve.cli.progress import TerminalProgress
from eve.cli.urls import PASSWORD_ENV, mask_url, parse_redis_url, password_for
from eve.core.endpoints import ConnectionSpec
from eve.core.enums import ConflictPolicy, DataMovementMode
from eve.core.errors import AuthError, ConfigError, Side, StateError
from eve.core.store import RunRecord, Store
from eve.prepare import preflight
from eve.redis.rdb import CORE_TYPES, is_type_name
from scanner.options import DEFAULT_BIG_KEY_THRESHOLD_BYTES

__all__ = ["MigrateArgs", "run_migrate", "errors_command", "jobs_command"]

UNFINISHED = ("COPYING", "FAILED")
DISCARDED = "DISCARDED"          # a job that is over without finishing: never resumed
DEFAULT_ERROR_LIST_LIMIT = 100

log = logging.getLogger("eve.cli.migrate")


@dataclass(frozen=True)
class MigrateArgs:
    source: str
    target: str
    mirrors: tuple[str, ...] = ()
    conflict: str = "replace"
    mode: str | None = None            # auto, dump-restore, logical; None: auto, or the resumed job's
    preserve_ttl: bool = True
    match: str | None = None
    type: str | None = None
    db: int | None = None
    restorers: int = 2
    max_keys_per_sec: int = 0
    max_bytes_per_sec: int = 0
    errors_out: str | None = None
    resume: bool = False
    json: bool = False
    state: str = "eve-migrate.db"
    scan_count: int = 1000
    progress: bool = True
    source_share: float | None = None  # None: DEFAULT_SOURCE_SHARE
    backoff_latency_ms: float = 0.0
    latency_budget_ms: float = 0.0     # 0: off
    big_key_bytes: int = DEFAULT_BIG_KEY_THRESHOLD_BYTES   # 0: every key DUMPed whole
    source_password_file: str | None = None
    target_password_file: str | None = None
    dry_run: bool = False
    force: bool = False
    metrics_port: int | None = None    # serve /metrics on 127.0.0.1 while the job runs
    # Copy everything else when the target lacks a module the source's keys need (MODULES_DIFFER):
    # those keys become error keys naming the module (issue 23).
    skip_module_keys: bool = False
    # ALIAS=INDEX: search index aliases to set on the target (RediSearch has no command listing them).
    index_aliases: tuple[str, ...] = ()
    command: tuple[str, ...] = ()      # the words after ``eve``, to print the command to run next


def _identity(spec: ConnectionSpec) -> dict[str, Any]:
    """What identifies a server in a saved setup: never the password."""
    return {"address": spec.address, "tls": spec.tls, "username": spec.username}


def _setup(args: MigrateArgs, source: ConnectionSpec, target: ConnectionSpec, mirrors: list[ConnectionSpec],
           dbs: tuple[int, ...] | None) -> dict[str, Any]:
    return {"kind": "migrate", "source": _identity(source), "target": _identity(target),
            "mirrors": [_identity(m) for m in mirrors], "dbs": list(dbs) if dbs is not None else None,
            "match": args.match, "type": args.type, "conflict": args.conflict.upper(),
            "mode": _mode(args).value, "preserve_ttl": args.preserve_ttl}


def _mode(args: MigrateArgs) -> DataMovementMode:
    """``--mode`` as the enum (``dump-restore`` -> DUMP_RESTORE); AUTO when not given."""
    return DataMovementMode((args.mode or "auto").upper().replace("-", "_"))


def _saved_setup(job: RunRecord) -> dict[str, Any]:
    """A job's saved setup; one saved before ``--mode`` existed ran in AUTO."""
    return {"mode": DataMovementMode.AUTO.value, **(job.setup or {})}


def _describe_difference(saved: dict[str, Any], wanted: dict[str, Any]) -> str:
    diffs = [f"{k}: saved {saved.get(k)!r}, now {wanted.get(k)!r}" for k in wanted if saved.get(k) != wanted.get(k)]
    return "; ".join(diffs)


def _jobs(store: Store) -> list[RunRecord]:
    return [r for r in store.list_runs() if r.setup and r.setup.get("kind") == "migrate"]


def _latest_job(store: Store) -> RunRecord | None:
    jobs = _jobs(store)
    return jobs[-1] if jobs else None


def _check_options(args: MigrateArgs) -> None:
    """Bad values are refused before anything connects, naming the flag."""
    if not 1 <= args.restorers <= MAX_RESTORERS:
        raise ConfigError(f"must be between 1 and {MAX_RESTORERS}, got {args.restorers}", field="--restorers")
    if args.source_share is not None and not 0 < args.source_share <= 1:
        raise ConfigError(f"must be above 0 and at most 1 (1 is full speed), got {args.source_share:g}",
                          field="--source-share")
    if args.scan_count < 1:
        raise ConfigError(f"must be at least 1, got {args.scan_count}", field="--scan-count")
    if not args.backoff_latency_ms >= 0:  # NaN too
        raise ConfigError(f"must be 0 (off) or more, got {args.backoff_latency_ms}", field="--backoff-latency-ms")
    if not 0 <= args.latency_budget_ms < float("inf"):  # NaN too
        raise ConfigError(f"must be 0 (off) or a number of milliseconds, got {args.latency_budget_ms}",
                          field="--latency-budget-ms")
    if args.type is not None and not is_type_name(args.type):
        raise ConfigError(f"{args.type!r} is not a type: use one of {', '.join(CORE_TYPES)}, or a module's "
                          "9-character type name", field="--type")
    if args.mode is not None and args.mode.upper().replace("-", "_") not in DataMovementMode.__members__:
        raise ConfigError(f"{args.mode!r} is not one of auto, dump-restore, logical", field="--mode")
    if args.resume and args.force:
        raise ConfigError("--resume continues the unfinished job and --force starts a new one: choose one",
                          field="--force")


def _parse(args: MigrateArgs) -> tuple[ConnectionSpec, ConnectionSpec, list[ConnectionSpec], tuple[int, ...] | None,
                                      int | None]:
    _check_options(args)
    source, source_db = parse_redis_url(args.source, field="--source")
    target, target_db = parse_redis_url(args.target, field="--target")
    source = password_for(source, flag="--source", password_file=args.source_password_file)
    target = password_for(target, flag="--target", password_file=args.target_password_file)
    mirrors = [password_for(parse_redis_url(url, field="--mirror")[0], flag="--mirror", password_file=None)
               for url in args.mirrors]
    if args.db is not None and source_db is not None and args.db != source_db:
        raise ConfigError(f"--db {args.db} differs from the source URL's db {source_db}", field="--db")
    db = args.db if args.db is not None else source_db
    if target_db is not None and db is not None and target_db != db:
        # Keys land in the db they come from; a target URL naming another db would send
        # them where the user did not ask.
        raise ConfigError(f"the target URL names db {target_db}, but the job copies db {db}; keys land in the db "
                          f"they come from: copy db {target_db} (--db {target_db}), or name db {db} or no db in "
                          "the target URL", field="--target")
    if args.errors_out:
        export_mod.format_for_path(args.errors_out)
    if source.address == target.address:
        raise ConfigError(f"source and target are the same server ({source.address})", field="--target")
    return source, target, mirrors, ((db,) if db is not None else None), target_db


def _next_command(args: MigrateArgs, *extra: str) -> str:
    """The command to run next: this one (passwords masked), without --resume/--force/--dry-run,
    plus ``extra``."""
    words = [mask_url(word) if "://" in word else word for word in args.command
             if word not in ("--resume", "--force", "--dry-run")]
    if not words:
        words = ["migrate", "--source", mask_url(args.source), "--target", mask_url(args.target)]
    if "--state" not in words and args.state != "eve-migrate.db":
        words += ["--state", args.state]
    return "eve " + " ".join(shlex.quote(word) for word in [*words, *extra])


def _flag_of(side: Side) -> str:
    return "--source" if side is Side.SOURCE else "--target"


def _preflight(source: ConnectionSpec, target: ConnectionSpec, mirrors: list[ConnectionSpec],
               dbs: tuple[int, ...] | None, target_db: int | None, args: MigrateArgs) -> tuple[list[preflight.SideFacts],
                                                                        list[preflight.Finding]]:
    """Who the sides are; raises ConfigError (exit 2) for a blocking finding, returns the rest."""
    try:
        facts = [preflight.inspect(source, Side.SOURCE, "source"), preflight.inspect(target, Side.TARGET, "target")]
        facts += [preflight.inspect(spec, Side.TARGET, f"mirror target {spec.address}") for spec in mirrors]
    except AuthError as exc:
        flag = _flag_of(exc.side or Side.SOURCE)
        raise ConfigError(f"{exc}; give the password in the URL, with {flag}-password-file, or in "
                          f"{PASSWORD_ENV[flag]}", field=flag) from None
    if dbs is None and target_db is not None and set(facts[0].dbs) - {target_db}:
        raise ConfigError(f"the target URL names db {target_db}, but the source holds keys in db "
                          f"{', '.join(map(str, facts[0].dbs))}, and every db is copied into the same db; choose "
                          f"the db to copy (--db {target_db}), or drop /{target_db} from the target URL",
                          field="--target")
    for db in dbs or ():
        preflight.check_db(facts[0], db, field="--db")
        for other in facts[1:]:
            preflight.check_db(other, db, field="--target" if other is facts[1] else "--mirror")
    findings = preflight.check(facts[0], facts[1:], replace=args.conflict == "replace")
    blocking = [finding for finding in findings if finding.blocking]
    if blocking:
        raise ConfigError("; ".join(finding.message for finding in blocking) + "; nothing was copied",
                          field="--target")
    _check_modules(source, [target, *mirrors], args)
    return facts, findings


def _index_aliases(args: MigrateArgs) -> tuple[tuple[str, str], ...]:
    """``--index-alias ALIAS=INDEX`` as (alias, index) pairs; bad input is a ConfigError (exit 2)."""
    pairs = []
    for given in args.index_aliases:
        alias, sep, index = given.partition("=")
        if not sep or not alias or not index:
            raise ConfigError(f"{given!r} is not ALIAS=INDEX", field="--index-alias")
        pairs.append((alias, index))
    return tuple(pairs)


def _check_modules(source: ConnectionSpec, targets: list[ConnectionSpec], args: MigrateArgs) -> None:
    """MODULES_DIFFER before anything is copied (issue 23): refused (exit 2) when the source holds
    keys of a module a target lacks, unless ``--skip-module-keys``; the rest are warnings."""
    from eve.prepare.compat import module_issues

    issues = module_issues(source, targets)
    blocking = [issue for issue in issues if issue.blocking]
    if blocking and not args.skip_module_keys:
        modules = ", ".join(sorted({issue.evidence["module"] for issue in blocking}))
        raise ConfigError(f"modules differ ({modules}): " + " ".join(issue.message for issue in blocking)
                          + " Nothing was copied; --skip-module-keys copies everything else, those keys "
                          "becoming error keys naming the module", field="--skip-module-keys")
    for issue in issues:
        _warn(issue.message)


def _source_share(args: MigrateArgs) -> float:
    """The share of the source's time the scan may take: the flag, else full speed under a latency
    budget (the budget is the brake then), else the default."""
    if args.source_share is not None:
        return args.source_share
    return 1.0 if args.latency_budget_ms else DEFAULT_SOURCE_SHARE


def _plan_lines(facts: list[preflight.SideFacts], dbs: tuple[int, ...] | None, args: MigrateArgs) -> list[str]:
    share = _source_share(args)
    budget = f", source latency budget {args.latency_budget_ms:g} ms" if args.latency_budget_ms else ""
    lines = [preflight.describe(side) for side in facts]
    lines.append(f"copy {'db ' + ', '.join(map(str, dbs)) if dbs is not None else 'every db with keys'}"
                 f"{' matching ' + repr(args.match) if args.match else ''}"
                 f"{' of type ' + args.type if args.type else ''}: {_MOVES[_mode(args)]}, conflict policy "
                 f"{args.conflict.upper()}, TTLs {'preserved' if args.preserve_ttl else 'dropped'}, "
                 f"{args.restorers} restorer(s), source share {share:g}{budget}")
    return lines


_MOVES = {
    DataMovementMode.AUTO: "SCAN/DUMP/PTTL/RESTORE (payloads relabelled for the target's format where it needs "
                           "it, else a logical copy of the key)",
    DataMovementMode.DUMP_RESTORE: "SCAN/DUMP/PTTL/RESTORE (relabelled where the target needs it, no logical copy)",
    DataMovementMode.LOGICAL: "SCAN, then a logical copy of every key (read and written with ordinary commands)",
}


class _ProgressView:
    """Keys copied, rate, errors, elapsed and time left on a terminal; nothing elsewhere."""

    def __init__(self, enabled: bool) -> None:
        self._bar = TerminalProgress(enabled, "copying", "errors 0")
        self.enabled = self._bar.enabled

    def update(self, progress: Progress) -> None:
        self._bar.update(completed=progress.scanned, total=progress.source_keys or None,
                         rate=progress.keys_per_second, extra=f"errors {progress.failed:,}")

    def close(self) -> None:
        self._bar.close()


def _warn(message: str) -> None:
    print(f"eve migrate: warning: {message}", file=sys.stderr)


def run_migrate(args: MigrateArgs) -> int:
    source, target, mirrors, dbs, target_db = _parse(args)
    facts, findings = _preflight(source, target, mirrors, dbs, target_db, args)
    if args.dry_run:
        return _dry_run(args, facts, findings, dbs)
    for finding in findings:
        if not (args.resume and finding.code == preflight.TARGET_NOT_EMPTY):  # a resumed job's own keys
            _warn(finding.message)
    store = Store(args.state)
    exporter = None
    try:
        job = _latest_job(store)
        if args.resume and job is not None and args.mode is None:
            # --resume goes on in the mode the job was started with.
            args = dataclasses.replace(args, mode=_saved_setup(job)["mode"].lower().replace("_", "-"))
        setup = _setup(args, source, target, mirrors, dbs)
        if args.resume:
            if job is None or job.state not in UNFINISHED:
                raise StateError(f"nothing to resume in {args.state}; start the job with: {_next_command(args)}")
            if _saved_setup(job) != setup:
                raise StateError(f"resume refused: job {job.id} in {args.state} was started with another setup ("
                                 f"{_describe_difference(_saved_setup(job), setup)}); start a new job with: "
                                 f"{_next_command(args, '--force')}")
            run_id = job.id
        else:
            if job is not None and job.state in UNFINISHED:
                if not args.force:
                    raise StateError(f"job {job.id} in {args.state} did not finish; continue it with: "
                                     f"{_next_command(args, '--resume')}  or start over with: "
                                     f"{_next_command(args, '--force')}")
                store.set_run_state(job.id, DISCARDED, f"replaced by a new job (--force): {job.failure_reason}")
            run_id = f"migrate-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        options = BulkOptions(
            run_id=run_id, source=source, target=target, mirrors=tuple(mirrors), dbs=dbs, match=args.match,
            type=args.type, conflict=ConflictPolicy(args.conflict.upper()), preserve_ttl=args.preserve_ttl,
            mode=_mode(args), restorers=args.restorers, scan_count=args.scan_count,
            max_keys_per_second=args.max_keys_per_sec, max_bytes_per_second=args.max_bytes_per_sec,
            max_source_share=_source_share(args), backoff_latency_ms=args.backoff_latency_ms,
            latency_budget_ms=args.latency_budget_ms, big_key_threshold_bytes=args.big_key_bytes,
            index_aliases=_index_aliases(args))
        exporter = _metrics_exporter(args, run_id)  # before the job is recorded: a port in use leaves no job
        copy = BulkCopy(options, store)
        copy.prepare()  # unreachable servers fail here, before a job is recorded
        job = store.set_run_state(run_id, "COPYING") if args.resume else store.create_run(run_id, "COPYING", setup)
        view = _ProgressView(args.progress and not args.json)
        copy.on_progress = view.update
        if exporter is not None:
            def on_progress(progress: Progress) -> None:
                view.update(progress)
                exporter.update(progress)
            copy.on_progress = on_progress
        stop = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
        try:
            progress = copy.run(stop_event=stop)
            if exporter is not None:
                exporter.update(progress, "COMPLETED")
        except CopyStopped:
            store.set_run_state(job.id, "COPYING")
            view.close()
            print(f"eve migrate: stopped; continue with: {_next_command(args, '--resume')}", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as exc:
            _record_failure(store, job.id, exc)
            raise
        finally:
            signal.signal(signal.SIGINT, previous)
            view.close()
        # A job in which no key arrived failed, whatever else it says (a few error keys do not fail it:
        # the exit code and the error key list tell of those).
        failure = export_mod.copy_failure(store, job.id, progress, max_error_ratio=float("inf"))
        if failure:
            store.set_run_state(job.id, "FAILED", failure)
        else:
            store.set_run_state(job.id, "COMPLETED")
        return _summary(args, store, job.id, progress, failure)
    finally:
        if exporter is not None:
            exporter.stop()
        store.close()


def _metrics_exporter(args: MigrateArgs, run_id: str) -> Any:
    """``--metrics-port``: /metrics of this job on 127.0.0.1, fed by the progress bar's numbers."""
    if args.metrics_port is None:
        return None
    from eve.api.metrics import JobMetrics

    exporter = JobMetrics(run_id, args.metrics_port)
    print(f"eve migrate: metrics at {exporter.url}", file=sys.stderr, flush=True)
    return exporter


def _record_failure(store: Store, run_id: str, exc: BaseException) -> None:
    """FAILED keeps the job for --resume; a job that wrote nothing and committed no cursor has
    nothing to resume, so it is discarded and a plain rerun starts afresh."""
    copied_anything = any(store.counters(run_id).values()) or bool(store.checkpoints(run_id)) or \
        store.error_key_count(run_id) > 0
    if copied_anything:
        store.set_run_state(run_id, "FAILED", str(exc))
    else:
        store.set_run_state(run_id, DISCARDED, f"failed before copying anything: {exc}")


def _summary(args: MigrateArgs, store: Store, run_id: str, progress: Progress, failure: str | None) -> int:
    error_count = store.error_key_count(run_id)
    if args.errors_out:
        _write_export(store, run_id, args.errors_out)
    summary = {"run_id": run_id, **progress.as_dict(), "error_keys": error_count,
               "source_keys": progress.source_keys}
    if failure:
        summary["failure"] = failure
    if args.errors_out:
        summary["errors_out"] = args.errors_out
    if progress.side_restarts:
        summary["side_restart_reasons"] = progress.side_restart_reasons
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"eve migrate: {run_id}: scanned {progress.scanned:,}, restored {progress.restored:,}, "
              f"skipped {progress.skipped:,}, conflicts {progress.conflicts:,}, errors {error_count:,} "
              f"in {progress.elapsed:,.1f}s ({progress.keys_per_second:,.0f} keys/s)")
        if progress.side_restarts:
            print(f"  restarts: a side restarted {progress.side_restarts:,} time(s) during the job and may have lost "
                  "what it held; every key was copied again from the start, and the numbers above count only "
                  f"that last copy ({progress.side_restart_reasons[-1]})")
        if progress.skipped:
            print(f"  skipped: {progress.skipped:,} keys expired or were deleted on the source between SCAN and "
                  "DUMP (or their TTL ran out in transit); they are not on the target, as on the source")
        if progress.conflicts:
            print(f"  conflicts: {progress.conflicts:,} keys existed on the target and were kept (--conflict "
                  f"{args.conflict}); list them with: eve errors conflicts --state {args.state}")
        verify = ["eve", "verify", "--source", mask_url(args.source), "--target", mask_url(args.target)]
        print(f"  check the copy with: {' '.join(shlex.quote(word) for word in verify)}")
        if error_count:
            where = args.errors_out or f"eve errors list --state {args.state}"
            print(f"eve migrate: {error_count:,} error keys: see {where}", file=sys.stderr)
    if failure:
        hint = "" if _mode(args) is DataMovementMode.AUTO else "; --mode auto copies refused keys logically"
        print(f"eve migrate: failed: {failure}{hint}", file=sys.stderr)
    return 1 if error_count else 0


def _dry_run(args: MigrateArgs, facts: list[preflight.SideFacts], findings: list[preflight.Finding],
             dbs: tuple[int, ...] | None) -> int:
    plan = _plan_lines(facts, dbs, args)
    if args.json:
        print(json.dumps({"dry_run": True, "plan": plan, "source_keys": facts[0].keys,
                          "findings": [dataclasses.asdict(finding) for finding in findings]}))
        return 0
    print("eve migrate: dry run, nothing copied; the plan:")
    for line in plan:
        print(f"  {line}")
    for finding in findings:
        print(f"  warning: {finding.message}")
    print(f"  run it with: {_next_command(args)}")
    return 0


def _write_export(store: Store, run_id: str, path: str, *, conflicts: bool = False) -> None:
    fmt = export_mod.format_for_path(path, field="--out" if conflicts else "--errors-out")
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as out:
        chunks = export_mod.export_conflicts(store.conflict_keys(run_id), fmt) if conflicts else \
            export_mod.export(store.error_keys(run_id), fmt)
        for chunk in chunks:
            out.write(chunk)
    tmp.replace(target)


def _open_state(state: str) -> Store:
    if not Path(state).exists():
        raise ConfigError(f"{state} does not exist", field="--state")
    return Store(state)


def errors_command(action: str, *, state: str, run: str | None, out: str | None, source: str | None,
                   target: str | None, as_json: bool, limit: int | None = DEFAULT_ERROR_LIST_LIMIT,
                   source_password_file: str | None = None, target_password_file: str | None = None) -> int:
    store = _open_state(state)
    try:
        job = store.get_run(run) if run else _latest_job(store)
        if job is None:
            raise StateError(f"no migrate job in {state}")
        if action == "list":
            return _list_error_keys(store, job, limit=limit, as_json=as_json)
        if action == "conflicts":
            return _list_conflicts(store, job, out=out, limit=limit, as_json=as_json)
        if action == "export":
            if out:
                _write_export(store, job.id, out)
            else:
                for chunk in export_mod.export(store.error_keys(job.id), "jsonl"):
                    sys.stdout.buffer.write(chunk)
            return 0
        if not source or not target:
            raise ConfigError("retry needs --source and --target (credentials are never stored)", field="--source")
        source_spec = password_for(parse_redis_url(source, field="--source")[0], flag="--source",
                                   password_file=source_password_file)
        target_spec = password_for(parse_redis_url(target, field="--target")[0], flag="--target",
                                   password_file=target_password_file)
        saved = job.setup or {}
        if saved.get("source", {}).get("address") != source_spec.address or \
                saved.get("target", {}).get("address") != target_spec.address:
            raise StateError(f"job {job.id} copied {saved.get('source', {}).get('address')} to "
                             f"{saved.get('target', {}).get('address')}; retry against the same servers")
        outcome = retry_error_keys(store, job.id, source_spec, target_spec,
                                   conflict=ConflictPolicy(saved.get("conflict", "REPLACE")),
                                   preserve_ttl=saved.get("preserve_ttl", True),
                                   mode=DataMovementMode(_saved_setup(job)["mode"]))
        if as_json:
            print(json.dumps(outcome))
        else:
            print(f"eve errors retry: retried {outcome['retried']:,}, succeeded {outcome['succeeded']:,}, "
                  f"still failing {outcome['still_failing']:,}")
        return 1 if outcome["still_failing"] else 0
    finally:
        store.close()


def _key_text(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def _list_error_keys(store: Store, job: RunRecord, *, limit: int | None, as_json: bool) -> int:
    total = store.error_key_count(job.id)
    records = store.error_keys(job.id, limit=limit or None)
    summary = export_mod.reason_summary(record.reason for record in store.error_keys(job.id))
    if as_json:
        print(json.dumps({"run_id": job.id, "total": total, "shown": len(records),
                          "by_reason": [{"reason": reason, "keys": count} for reason, count in summary],
                          "error_keys": [json.loads(line) for chunk in export_mod.export(records, "jsonl")
                                         for line in chunk.decode().splitlines()]}))
        return 0
    print(f"eve errors: job {job.id}: {total:,} error keys")
    for reason, count in summary:
        print(f"  {count:>10,}  {reason}")
    if records:
        print()
    for record in records:
        print(f"db={record.db} key={_key_text(record.key)!r} type={record.type} size={record.size} "
              f"attempts={record.attempts} node={record.node} reason={record.reason}")
    if len(records) < total:
        print(f"... and {total - len(records):,} more (--limit 0 lists all; eve errors export writes them to a "
              "file)")
    return 0


def _list_conflicts(store: Store, job: RunRecord, *, out: str | None, limit: int | None, as_json: bool) -> int:
    if out:
        _write_export(store, job.id, out, conflicts=True)
        return 0
    conflicts = store.conflict_keys(job.id)
    shown = conflicts[:limit] if limit else conflicts
    if as_json:
        print(json.dumps({"run_id": job.id, "total": len(conflicts), "shown": len(shown),
                          "conflicts": [{"db": db, "key": _key_text(key), "type": kind, "reason": reason}
                                        for db, key, kind, reason in shown]}))
        return 0
    print(f"eve errors: job {job.id}: {len(conflicts):,} conflicts (keys kept as they were on the target)")
    for db, key, kind, reason in shown:
        print(f"db={db} key={_key_text(key)!r} type={kind} reason={reason}")
    if len(shown) < len(conflicts):
        print(f"... and {len(conflicts) - len(shown):,} more (--limit 0 lists all; --out FILE exports them)")
    return 0


def jobs_command(action: str, *, state: str, run: str | None, as_json: bool) -> int:
    """``eve jobs list``: the jobs in a state file; ``eve jobs discard``: give up an unfinished job
    (its error keys stay listed) so that a plain ``eve migrate`` starts a new one."""
    store = _open_state(state)
    try:
        jobs = _jobs(store)
        if action == "list":
            rows = [_job_row(store, job) for job in jobs]
            if as_json:
                print(json.dumps({"jobs": rows}))
            elif not rows:
                print(f"eve jobs: no jobs in {state}")
            else:
                for row in rows:
                    reason = f"  ({row['reason']})" if row["reason"] else ""
                    print(f"{row['id']}  {row['state']:<10} {row['source']} -> {row['target']}  restored "
                          f"{row['restored']:,}, errors {row['error_keys']:,}{reason}")
            return 0
        job = store.get_run(run) if run else (jobs[-1] if jobs else None)
        if job is None or not job.setup or job.setup.get("kind") != "migrate":
            raise StateError(f"no migrate job {'named ' + run + ' ' if run else ''}in {state}")
        if job.state not in UNFINISHED:
            raise StateError(f"job {job.id} is {job.state}: only an unfinished job (COPYING, FAILED) is discarded")
        store.set_run_state(job.id, DISCARDED, f"discarded by the operator (was {job.state})")
        print(f"eve jobs: discarded {job.id}; a plain 'eve migrate' now starts a new job")
        return 0
    finally:
        store.close()


def _job_row(store: Store, job: RunRecord) -> dict[str, Any]:
    setup = job.setup or {}
    counters = store.counters(job.id)
    return {"id": job.id, "state": job.state, "source": setup.get("source", {}).get("address"),
            "target": setup.get("target", {}).get("address"), "restored": counters.get("restored", 0),
            "error_keys": store.error_key_count(job.id), "reason": job.failure_reason}
