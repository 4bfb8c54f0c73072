"""``eve migrate`` and ``eve errors``: one-shot bulk jobs on the bulk pipeline.

A job lives in a state file (``--state``): its setup (without credentials: they
are never stored), checkpoints, counters, error keys and conflicts. ``--resume``
continues an unfinished job and is refused when the source, target or setup
differ from the saved ones.
"""

from __future__ import annotations

import json
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
    BulkCopy,
    BulkOptions,
    CopyStopped,
    Progress,
    retry_error_keys,
)
from eve.cli.urls import parse_redis_url
from eve.core.endpoints import ConnectionSpec
from eve.core.enums import ConflictPolicy
from eve.core.errors import ConfigError, StateError
from eve.core.store import RunRecord, Store

__all__ = ["MigrateArgs", "run_migrate", "errors_command"]

UNFINISHED = ("COPYING", "FAILED")


@dataclass(frozen=True)
class MigrateArgs:
    source: str
    target: str
    mirrors: tuple[str, ...] = ()
    conflict: str = "replace"
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


def _identity(spec: ConnectionSpec) -> dict[str, Any]:
    """What identifies a server in a saved setup: never the password."""
    return {"address": spec.address, "tls": spec.tls, "username": spec.username}


def _setup(args: MigrateArgs, source: ConnectionSpec, target: ConnectionSpec, mirrors: list[ConnectionSpec],
           dbs: tuple[int, ...] | None) -> dict[str, Any]:
    return {"kind": "migrate", "source": _identity(source), "target": _identity(target),
            "mirrors": [_identity(m) for m in mirrors], "dbs": list(dbs) if dbs is not None else None,
            "match": args.match, "type": args.type, "conflict": args.conflict.upper(),
            "preserve_ttl": args.preserve_ttl}


def _describe_difference(saved: dict[str, Any], wanted: dict[str, Any]) -> str:
    diffs = [f"{k}: saved {saved.get(k)!r}, now {wanted.get(k)!r}" for k in wanted if saved.get(k) != wanted.get(k)]
    return "; ".join(diffs)


def _latest_job(store: Store) -> RunRecord | None:
    jobs = [r for r in store.list_runs() if r.setup and r.setup.get("kind") == "migrate"]
    return jobs[-1] if jobs else None


def _parse(args: MigrateArgs) -> tuple[ConnectionSpec, ConnectionSpec, list[ConnectionSpec], tuple[int, ...] | None]:
    source, source_db = parse_redis_url(args.source, field="--source")
    target, target_db = parse_redis_url(args.target, field="--target")
    mirrors = [parse_redis_url(url, field="--mirror")[0] for url in args.mirrors]
    if args.db is not None and source_db is not None and args.db != source_db:
        raise ConfigError(f"--db {args.db} differs from the source URL's db {source_db}", field="--db")
    db = args.db if args.db is not None else source_db
    if target_db is not None and db is not None and target_db != db:
        raise ConfigError(f"keys land in the same db as on the source ({db}); the target URL names db {target_db}",
                          field="--target")
    if args.errors_out:
        export_mod.format_for_path(args.errors_out)
    if source.address == target.address:
        raise ConfigError(f"source and target are the same server ({source.address})", field="--target")
    return source, target, mirrors, ((db,) if db is not None else None)


class _ProgressView:
    """A progress bar on a terminal (rich); nothing otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._bar = None
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn("copying"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]:>10} keys/s"), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True)
            self._task = self._bar.add_task("copy", total=None, rate="-")
            self._bar.start()

    def update(self, progress: Progress) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=progress.scanned, total=progress.source_keys or None,
                             rate=f"{progress.keys_per_second:,.0f}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def run_migrate(args: MigrateArgs) -> int:
    source, target, mirrors, dbs = _parse(args)
    setup = _setup(args, source, target, mirrors, dbs)
    store = Store(args.state)
    try:
        job = _latest_job(store)
        if args.resume:
            if job is None or job.state not in UNFINISHED:
                raise StateError(f"nothing to resume in {args.state}")
            if job.setup != setup:
                raise StateError(f"resume refused: job {job.id} in {args.state} was started with another setup ("
                                 f"{_describe_difference(job.setup or {}, setup)})")
            run_id = job.id
        else:
            if job is not None and job.state in UNFINISHED:
                raise StateError(f"job {job.id} in {args.state} did not finish; continue it with --resume, "
                                 "or use another --state")
            run_id = f"migrate-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        options = BulkOptions(
            run_id=run_id, source=source, target=target, mirrors=tuple(mirrors), dbs=dbs, match=args.match,
            type=args.type, conflict=ConflictPolicy(args.conflict.upper()), preserve_ttl=args.preserve_ttl,
            restorers=args.restorers or 1, scan_count=args.scan_count or 1000,
            max_keys_per_second=args.max_keys_per_sec, max_bytes_per_second=args.max_bytes_per_sec,
            max_source_share=args.source_share or DEFAULT_SOURCE_SHARE, backoff_latency_ms=args.backoff_latency_ms)
        copy = BulkCopy(options, store)
        copy.prepare()  # unreachable servers fail here, before a job is recorded
        job = store.set_run_state(run_id, "COPYING") if args.resume else store.create_run(run_id, "COPYING", setup)
        view = _ProgressView(args.progress and not args.json)
        copy.on_progress = view.update
        stop = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
        try:
            progress = copy.run(stop_event=stop)
        except CopyStopped:
            store.set_run_state(job.id, "COPYING")
            raise StateError(f"stopped; continue with: eve migrate ... --resume --state {args.state}") from None
        except Exception as exc:
            store.set_run_state(job.id, "FAILED", str(exc))
            raise
        finally:
            signal.signal(signal.SIGINT, previous)
            view.close()
        store.set_run_state(job.id, "COMPLETED")
        error_count = store.error_key_count(job.id)
        if args.errors_out:
            _write_export(store, job.id, args.errors_out)
        summary = {"run_id": job.id, **progress.as_dict(), "error_keys": error_count,
                   "source_keys": progress.source_keys}
        if args.errors_out:
            summary["errors_out"] = args.errors_out
        if args.json:
            print(json.dumps(summary))
        else:
            print(f"eve migrate: {job.id}: scanned {progress.scanned}, restored {progress.restored}, "
                  f"skipped {progress.skipped}, conflicts {progress.conflicts}, errors {error_count} "
                  f"in {progress.elapsed:.1f}s ({progress.keys_per_second:,.0f} keys/s)")
            if error_count:
                where = args.errors_out or f"eve errors export --state {args.state}"
                print(f"eve migrate: {error_count} error keys: see {where}", file=sys.stderr)
        return 1 if error_count else 0
    finally:
        store.close()


def _write_export(store: Store, run_id: str, path: str) -> None:
    fmt = export_mod.format_for_path(path)
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as out:
        for chunk in export_mod.export(store.error_keys(run_id), fmt):
            out.write(chunk)
    tmp.replace(target)


def errors_command(action: str, *, state: str, run: str | None, out: str | None, source: str | None,
                   target: str | None, as_json: bool) -> int:
    if not Path(state).exists():
        raise ConfigError(f"{state} does not exist", field="--state")
    store = Store(state)
    try:
        job = store.get_run(run) if run else _latest_job(store)
        if job is None:
            raise StateError(f"no migrate job in {state}")
        if action == "list":
            for record in store.error_keys(job.id):
                key = record.key.decode("utf-8", "backslashreplace")
                print(f"db={record.db} key={key!r} type={record.type} size={record.size} "
                      f"attempts={record.attempts} node={record.node} reason={record.reason}")
            return 0
        if action == "export":
            if out:
                _write_export(store, job.id, out)
            else:
                for chunk in export_mod.export(store.error_keys(job.id), "jsonl"):
                    sys.stdout.buffer.write(chunk)
            return 0
        if not source or not target:
            raise ConfigError("retry needs --source and --target (credentials are never stored)", field="--source")
        source_spec, _ = parse_redis_url(source, field="--source")
        target_spec, _ = parse_redis_url(target, field="--target")
        saved = job.setup or {}
        if saved.get("source", {}).get("address") != source_spec.address or \
                saved.get("target", {}).get("address") != target_spec.address:
            raise StateError(f"job {job.id} copied {saved.get('source', {}).get('address')} to "
                             f"{saved.get('target', {}).get('address')}; retry against the same servers")
        outcome = retry_error_keys(store, job.id, source_spec, target_spec,
                                   conflict=ConflictPolicy(saved.get("conflict", "REPLACE")),
                                   preserve_ttl=saved.get("preserve_ttl", True))
        if as_json:
            print(json.dumps(outcome))
        else:
            print(f"eve errors retry: retried {outcome['retried']}, succeeded {outcome['succeeded']}, "
                  f"still failing {outcome['still_failing']}")
        return 1 if outcome["still_failing"] else 0
    finally:
        store.close()
