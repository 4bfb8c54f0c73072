"""Exporting error keys as JSON Lines or CSV.

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

from eve.core.errors import ConfigError
from eve.core.store import ErrorKeyRecord

__all__ = ["FORMATS", "format_for_path", "export", "read_back", "COLUMNS"]

FORMATS = ("jsonl", "csv")
COLUMNS = ("key", "key_base64", "db", "node", "type", "size", "reason", "attempts", "first_seen", "last_seen")


def format_for_path(path: str) -> str:
    lowered = path.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    raise ConfigError(f"{path}: name the file .jsonl or .csv", field="--errors-out")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def _row(record: ErrorKeyRecord) -> dict[str, object]:
    try:
        text = record.key.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    return {"key": text, "key_base64": base64.b64encode(record.key).decode("ascii"), "db": record.db,
            "node": record.node, "type": record.type, "size": record.size, "reason": record.reason,
            "attempts": record.attempts, "first_seen": _iso(record.first_seen), "last_seen": _iso(record.last_seen)}


def export(records: Iterable[ErrorKeyRecord], fmt: str) -> Iterator[bytes]:
    """The export as chunks of bytes (for files and for gRPC streams alike)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r} (use {' or '.join(FORMATS)})", field="format")
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow(_row(record))
            if buffer.tell() > 1 << 16:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue().encode()
        return
    chunk: list[str] = []
    for record in records:
        chunk.append(json.dumps(_row(record), ensure_ascii=False))
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
