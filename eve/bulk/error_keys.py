"""Exporting error keys (and the conflicts of a job) as JSON Lines or CSV, and whether a copy
with error keys failed.

Keys are bytes and may be anything: every row carries ``key_base64`` (exact) and
``key`` (the UTF-8 text when the key is valid UTF-8, else empty), so a file read
back gives the same bytes.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import datetime, timezone
from typing import IO, Iterable, Iterator

from eve.bulk.pipeline import Progress
from eve.core.errors import ConfigError
from eve.core.store import ErrorKeyRecord, Store

__all__ = ["FORMATS", "format_for_path", "export", "export_conflicts", "read_back", "COLUMNS", "CONFLICT_COLUMNS",
           "DEFAULT_MAX_ERROR_RATIO", "copy_failure", "reason_summary"]

# A copy fails when more than this share of the keys it scanned became error keys: a few keys of a
# module type the target lacks leave a run going, a format the target cannot read at all does not.
DEFAULT_MAX_ERROR_RATIO = 0.1

FORMATS = ("jsonl", "csv")
COLUMNS = ("key", "key_base64", "db", "node", "type", "size", "reason", "attempts", "first_seen", "last_seen")
CONFLICT_COLUMNS = ("key", "key_base64", "db", "type", "reason")


def format_for_path(path: str, *, field: str = "--errors-out") -> str:
    lowered = path.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    raise ConfigError(f"{path}: name the file .jsonl or .csv", field=field)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def _key_fields(key: bytes) -> dict[str, object]:
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    return {"key": text, "key_base64": base64.b64encode(key).decode("ascii")}


def _row(record: ErrorKeyRecord) -> dict[str, object]:
    return {**_key_fields(record.key), "db": record.db,
            "node": record.node, "type": record.type, "size": record.size, "reason": record.reason,
            "attempts": record.attempts, "first_seen": _iso(record.first_seen), "last_seen": _iso(record.last_seen)}


def export(records: Iterable[ErrorKeyRecord], fmt: str) -> Iterator[bytes]:
    """The export as chunks of bytes (for files and for gRPC streams alike)."""
    return _export((_row(record) for record in records), COLUMNS, fmt)


def export_conflicts(conflicts: Iterable[tuple[int, bytes, str, str]], fmt: str) -> Iterator[bytes]:
    """A job's conflicts (``Store.conflict_keys``: db, key, type, reason) in the same formats."""
    rows = ({**_key_fields(key), "db": db, "type": kind, "reason": reason} for db, key, kind, reason in conflicts)
    return _export(rows, CONFLICT_COLUMNS, fmt)


def reason_summary(reasons: Iterable[str], *, width: int = 120) -> list[tuple[str, int]]:
    """How many keys failed for each reason, most first. Reasons that differ only after their
    first line (or past ``width``) count as one."""
    counts: dict[str, int] = {}
    for reason in reasons:
        line = (reason.splitlines() or [""])[0][:width]
        counts[line] = counts.get(line, 0) + 1
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def copy_failure(store: Store, run_id: str, progress: Progress,
                 max_error_ratio: float = DEFAULT_MAX_ERROR_RATIO) -> str | None:
    """Why a finished copy failed, or None: no key arrived while keys failed (always a failure,
    whatever the ratio), or error keys above ``max_error_ratio`` of the keys scanned. The
    reason names the most common error key reason."""
    failed, scanned = progress.failed, progress.scanned
    if not failed:
        return None
    if not progress.restored and not progress.conflicts:
        verdict = f"no key reached the target: all {scanned:,} keys scanned failed ({failed:,} error keys)"
    elif failed > max_error_ratio * scanned:
        verdict = (f"{failed:,} error keys for {scanned:,} keys scanned ({failed / max(scanned, 1):.1%}), above "
                   f"the allowed {max_error_ratio:.1%} (setup max_error_ratio)")
    else:
        return None
    reasons = reason_summary((record.reason for record in store.error_keys(run_id, limit=10_000)), width=400)
    if reasons:
        reason, count = reasons[0]
        verdict += f"; most common reason ({count:,} keys): {reason}"
    return verdict


def _export(rows: Iterable[dict[str, object]], columns: tuple[str, ...], fmt: str) -> Iterator[bytes]:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r} (use {' or '.join(FORMATS)})", field="format")
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            if buffer.tell() > 1 << 16:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue().encode()
        return
    chunk: list[str] = []
    for row in rows:
        chunk.append(json.dumps(row, ensure_ascii=False))
        if len(chunk) >= 1000:
            yield ("\n".join(chunk) + "\n").encode()
            chunk = []
    if chunk:
        yield ("\n".join(chunk) + "\n").encode()


def read_back(stream: IO[str], fmt: str) -> list[dict[str, object]]:
    """Rows of an export with ``key`` as the exact bytes (for retries and tests)."""
    rows: list[dict[str, object]] = list(csv.DictReader(stream)) if fmt == "csv" else [
        json.loads(line) for line in stream if line.strip()]
    for row in rows:
        row["key"] = base64.b64decode(str(row["key_base64"]))
    return rows
