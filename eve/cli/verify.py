"""``eve verify``: compare a source and a target given as Redis URLs, print what differs.

On a terminal a progress bar (rich, on stderr) shows the keys compared, the rate,
the time left (from the key counts of ``INFO keyspace``) and the differences so
far; nothing when stderr is not a terminal or with ``--json``. ``--out FILE``
(``.jsonl`` or ``.csv``, like ``eve errors export``) gets every difference as it
is found, not only the examples printed. ``--fix`` re-copies what differs from
the source (``eve.live.verify``'s ``fix``), so that the target equals the source
for the compared keys, keys only on the target deleted; then compares those keys
again: the exit code is 0 only when nothing differs any more.

TTLs print in human units ("expires in 2h 3m", "no expiry", "TTL differs by
4.2 s"); ``--json`` and ``--out`` keep them in milliseconds (``source_ttl_ms``,
``target_ttl_ms``: -1 for no expiry, empty where the key is not there).
"""

from __future__ import annotations

import base64
import csv
import json
import sys
from pathlib import Path
from typing import IO, Any

from eve.bulk.error_keys import format_for_path
from eve.cli.progress import TerminalProgress
from eve.cli.urls import mask_url, parse_redis_url, password_for
from eve.core.errors import ConfigError
from eve.live.verify import (
    DEFAULT_MAX_DIFFERENCES,
    EXTRA,
    MISSING,
    TTL,
    KeyDifference,
    VerifyProgress,
    VerifyReport,
    verify,
)

__all__ = ["verify_command", "DIFFERENCE_COLUMNS", "human_duration"]

DIFFERENCE_COLUMNS = ("key", "key_base64", "db", "kind", "detail", "source_type", "target_type", "source_ttl_ms",
                      "target_ttl_ms")


def _on_ray(address: str) -> tuple[Any, Any]:
    """``--ray ADDRESS``: a runner joined to the cluster, and ``verify`` on it."""
    import functools

    from eve.bulk.ray_runner import RayOptions, RayRunner
    from eve.live.ray_verify import verify_on_ray

    runner = RayRunner(RayOptions(address=address))
    runner.connect()
    return runner, functools.partial(verify_on_ray, runner)


def verify_command(source_url: str, target_url: str, *, ttl_tolerance_ms: int, as_json: bool, max_examples: int,
                   db: int | None, match: str | None, max_keys_per_second: int = 0,
                   source_password_file: str | None = None, target_password_file: str | None = None,
                   out: str | None = None, fix: bool = False, progress: bool = True, ray: str | None = None) -> int:
    """``eve verify``: print the summary and examples (or one JSON object); 0 when clean (with ``fix``:
    when clean after the fix), 1 otherwise.

    The db is ``db``, else the one the URLs name (they must agree), else every db with keys.
    Errors (unreachable server, bad URL) propagate for the CLI to map to its exit codes.
    ``ray``: compare on that Ray cluster, an actor per source master (``eve.live.ray_verify``)."""
    source, source_db = parse_redis_url(source_url, field="--source")
    target, target_db = parse_redis_url(target_url, field="--target")
    source = password_for(source, flag="--source", password_file=source_password_file)
    target = password_for(target, flag="--target", password_file=target_password_file)
    if db is None:
        if source_db is not None and target_db is not None and source_db != target_db:
            raise ConfigError(f"the URLs name different dbs ({source_db} and {target_db}); verify compares one db "
                              "on both sides, choose it with --db", field="--db")
        db = source_db if source_db is not None else target_db
    if ray and fix:
        raise ConfigError("--fix re-copies through this host: run it without --ray", field="--fix")
    differences_file = _DifferenceFile(out) if out else None
    view = _ProgressView(progress and not as_json)
    runner = None
    try:
        compare: Any = verify
        if ray:
            runner, compare = _on_ray(ray)
        # The report keeps the examples only: every difference goes to the file as it is found
        # (on Ray, as the actors send them back: every one, for the file).
        report = compare(source, target, dbs=None if db is None else [db], match=match,
                        ttl_tolerance_ms=ttl_tolerance_ms, max_examples=max_examples,
                        max_differences=max_examples if not (ray and out) else DEFAULT_MAX_DIFFERENCES,
                        max_keys_per_second=max_keys_per_second,
                        on_difference=differences_file.write if differences_file else None,
                        on_progress=view.update if view.enabled else None, fix=fix)
    except ConfigError as exc:
        if differences_file:
            differences_file.discard()
        if exc.field == "fix":
            raise ConfigError(str(exc).removeprefix("fix: "), field="--fix") from None
        raise
    except BaseException:
        if differences_file:
            differences_file.discard()
        raise
    finally:
        view.close()
        if runner is not None:
            runner.close()
    if differences_file:
        differences_file.finish()
    if as_json:
        document = {"source": mask_url(source_url), "target": mask_url(target_url), **report.as_dict()}
        if differences_file:
            document["out"] = out
        print(json.dumps(document, sort_keys=False))
    else:
        _print_report(source.address, target.address, report, out=out, tolerance_ms=ttl_tolerance_ms)
    sys.stdout.flush()
    if report.fix is not None:
        return 0 if report.fix.clean else 1
    return 0 if report.clean else 1


# --------------------------------------------------------------------------- text output


def human_duration(ms: float) -> str:
    """'4.2 s', '3m 12s', '2h 3m', '5d 2h': a TTL a person reads at a glance."""
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def _expiry(pttl_ms: int | None) -> str:
    if pttl_ms is None:
        return "not there"
    return "no expiry" if pttl_ms < 0 else f"expires in {human_duration(pttl_ms)}"


def _ttl_text(difference: KeyDifference, tolerance_ms: int) -> str:
    source, target = difference.source_ttl_ms, difference.target_ttl_ms
    if source is not None and target is not None and source >= 0 and target >= 0:
        return (f"TTL differs by {human_duration(abs(source - target))}: source {_expiry(source)}, target in "
                f"{human_duration(target)} (tolerance {human_duration(tolerance_ms)})")
    return f"source {_expiry(source)}, target {_expiry(target)}"


def _line(difference: KeyDifference, tolerance_ms: int) -> str:
    if difference.kind == TTL and (difference.source_ttl_ms is not None or difference.target_ttl_ms is not None):
        detail = _ttl_text(difference, tolerance_ms)
    elif difference.kind == MISSING and difference.source_ttl_ms is not None:
        detail = f"{difference.detail} ({_expiry(difference.source_ttl_ms)})"
    elif difference.kind == EXTRA and difference.target_ttl_ms is not None:
        detail = f"{difference.detail} ({_expiry(difference.target_ttl_ms)})"
    else:
        detail = difference.detail
    return f"{difference.kind:<7} db{difference.db} {difference.key_text!r}: {detail}"


def _print_report(source: str, target: str, report: VerifyReport, *, out: str | None, tolerance_ms: int) -> None:
    print(f"verify {source} -> {target}: {report.summary()}")
    for difference in report.examples:
        print(f"  {_line(difference, tolerance_ms)}")
    found = report.missing + report.extra + report.different + report.ttl_mismatch
    if out:
        print(f"  every difference ({found:,}) is in {out}")
    elif found > len(report.examples):
        print(f"  ... and {found - len(report.examples):,} more (--out FILE.jsonl or FILE.csv lists every one)")
    fix = report.fix
    if fix is None:
        return
    if report.clean:
        print("fix: nothing to fix")
        return
    print(f"fix: {fix.recopied:,} keys copied again from the source, {fix.deleted:,} deleted on the target (not on "
          f"the source), {fix.failed:,} refused")
    for failure in fix.failures:
        print(f"  refused db{failure.db} {failure.key.decode('utf-8', 'backslashreplace')!r} on {failure.node}: "
              f"{failure.reason}")
    recheck = fix.recheck
    if fix.clean:
        print(f"fix: clean: the target now equals the source for the {recheck.keys_compared + fix.deleted:,} keys "
              "that differed")
        return
    print(f"fix: still different after the fix: {recheck.summary()}")
    for difference in recheck.examples:
        print(f"  {_line(difference, tolerance_ms)}")


# --------------------------------------------------------------------------- --out


class _DifferenceFile:
    """Every difference, written as it is found, into ``FILE.tmp``, renamed to ``FILE`` when the pass
    ends: a file under the name asked for is always whole. The key as ``eve errors export`` writes
    it: ``key`` its UTF-8 text (empty when it is not UTF-8), ``key_base64`` its exact bytes."""

    def __init__(self, path: str) -> None:
        self.format = format_for_path(path, field="--out")
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            # Open for the whole pass: rows arrive one by one from verify(on_difference=...).
            self._file: IO[str] = open(self.tmp, "w", encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(f"cannot write {self.tmp}: {exc.strerror}", field="--out") from None
        self._csv: Any = None
        if self.format == "csv":
            self._csv = csv.DictWriter(self._file, fieldnames=DIFFERENCE_COLUMNS, lineterminator="\n")
            self._csv.writeheader()
        self.rows = 0

    def write(self, difference: KeyDifference) -> None:
        try:
            text = difference.key.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        row = {"key": text, "key_base64": base64.b64encode(difference.key).decode("ascii"), "db": difference.db,
               "kind": difference.kind, "detail": difference.detail, "source_type": difference.source_type,
               "target_type": difference.target_type, "source_ttl_ms": difference.source_ttl_ms,
               "target_ttl_ms": difference.target_ttl_ms}
        if self._csv is not None:
            self._csv.writerow(row)
        else:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows += 1

    def finish(self) -> None:
        self._file.close()
        self.tmp.replace(self.path)

    def discard(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- progress


class _ProgressView:
    """Keys compared, rate, time left and differences so far on a terminal; nothing elsewhere."""

    def __init__(self, enabled: bool) -> None:
        self._bar = TerminalProgress(enabled, "comparing", "differences 0")
        self.enabled = self._bar.enabled

    def update(self, progress: VerifyProgress) -> None:
        total = None if progress.keys_expected is None else max(progress.keys_expected, progress.keys_scanned)
        differences = f"differences {progress.differences:,}"
        if progress.fixed:
            differences += f", fixed {progress.fixed:,}"
        self._bar.update(completed=progress.keys_scanned, total=total, rate=progress.keys_per_second,
                         extra=differences, description=progress.phase)

    def close(self) -> None:
        self._bar.close()
