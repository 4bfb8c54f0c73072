"""``eve verify``: compare a source and a target given as Redis URLs, print what differs."""

from __future__ import annotations

import json
import sys

from eve.cli.urls import mask_url, parse_redis_url, password_for
from eve.core.errors import ConfigError
from eve.live.verify import verify

__all__ = ["verify_command"]


def verify_command(source_url: str, target_url: str, *, ttl_tolerance_ms: int, as_json: bool, max_examples: int,
                   db: int | None, match: str | None, max_keys_per_second: int = 0,
                   source_password_file: str | None = None, target_password_file: str | None = None) -> int:
    """``eve verify``: print the summary and examples (or one JSON object); 0 when clean, 1 otherwise.

    The db is ``db``, else the one the URLs name (they must agree), else every db with keys.
    Errors (unreachable server, bad URL) propagate for the CLI to map to its exit codes."""
    source, source_db = parse_redis_url(source_url, field="--source")
    target, target_db = parse_redis_url(target_url, field="--target")
    source = password_for(source, flag="--source", password_file=source_password_file)
    target = password_for(target, flag="--target", password_file=target_password_file)
    if db is None:
        if source_db is not None and target_db is not None and source_db != target_db:
            raise ConfigError(f"the URLs name different dbs ({source_db} and {target_db}); verify compares one db "
                              "on both sides, choose it with --db", field="--db")
        db = source_db if source_db is not None else target_db
    report = verify(source, target, dbs=None if db is None else [db], match=match,
                    ttl_tolerance_ms=ttl_tolerance_ms, max_examples=max_examples,
                    max_keys_per_second=max_keys_per_second)
    if as_json:
        document = {"source": mask_url(source_url), "target": mask_url(target_url), **report.as_dict()}
        print(json.dumps(document, sort_keys=False))
    else:
        print(f"verify {source.address} -> {target.address}: {report.summary()}")
        for difference in report.examples:
            print(f"  {difference.kind:<7} db{difference.db} {difference.key_text!r}: {difference.detail}")
        shown = report.missing + report.extra + report.different + report.ttl_mismatch
        if shown > len(report.examples):
            print(f"  ... and {shown - len(report.examples)} more")
    sys.stdout.flush()
    return 0 if report.clean else 1
