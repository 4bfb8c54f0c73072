"""``eve runs``: the guided workflow (DESIGN.md section 7) of a running coordinator from the
command line, over the MigrationService that grpcurl users call by hand (docs/runbook.md).

    eve runs create ID                       CreateRun
    eve runs setup ID --file run.toml        SubmitSetup (the file mirrors RunSetup)
    eve runs prepare ID                      Prepare, then waits for READY or FAILED
    eve runs review ID                       compatibility, analysis and test run as tables
    eve runs ack ID --all --notes ...        AcknowledgeIssue for each non-blocking issue
    eve runs approve ID                      Approve: the copy starts
    eve runs watch ID [--until STATE]        live progress and events (SubscribeEvents, resumed
                                             after a disconnect from the last seq seen)
    eve runs traffic ID --reads 50 | --cutover    SetTraffic
    eve runs verify|complete|rollback|cancel ID
    eve runs list | show ID | errors ID

Exit codes are those of ``eve migrate`` (eve.cli.main): 0 done, 1 finished with failures
(a FAILED run, a verification with differences, blocking issues in a review, keys still
failing a retry), 2 bad input, unknown name, unreachable coordinator or refused token, 5 the
run is not in a state that allows the call, 130 interrupted.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from collections import Counter
from datetime import UTC
from typing import TYPE_CHECKING, Any

from eve.cli.exits import EXIT_FAILURES, EXIT_OK, EXIT_STATE
from eve.cli.remote import (
    Api,
    Output,
    add_api_command,
    message_dict,
    parse_message,
    read_document,
)
from eve.core.errors import ConfigError

if TYPE_CHECKING:
    import grpc

    from eve.v1 import workflows_pb2

__all__ = [
    "IN_SYNC",
    "RUN_STATES",
    "EventFollower",
    "UntilCheck",
    "add_run_commands",
    "setup_from_document",
]

# The run states in the order a run passes them, and the rollback path: "reached" means the run
# is in that state or further along the same path (eve.workflow.runs.TRANSITIONS).
_FORWARD = ("CREATED", "CONFIGURED", "PREPARING", "READY", "APPROVED", "COPYING", "SYNCING", "CUTTING_OVER",
            "CUT_OVER", "COMPLETED")
_ROLLBACK = ("ROLLING_BACK", "ROLLED_BACK")
RUN_STATES = _FORWARD + _ROLLBACK + ("FAILED", "CANCELLED")
# The server ends SubscribeEvents in these; FAILED is not among them (a failed copy can be
# approved again), but it ends a watch: someone has to look.
TERMINAL = frozenset({"COMPLETED", "ROLLED_BACK", "CANCELLED"})
# Not a state: an online run is SYNCING from the end of the bulk copy, but SetTraffic needs it
# in sync (the "in sync" event of eve.live.run), which is what an operator waits for.
IN_SYNC = "IN_SYNC"
_ONLINE_ONLY = frozenset({"SYNCING", "CUTTING_OVER", IN_SYNC})
# How long a watch keeps trying to get back to a coordinator it lost (a restart, a network blip).
DEFAULT_RECONNECT_SECONDS = 300.0
POLL_SECONDS = 1.0
# The server replays stored events without pausing; this long without one means the watch has
# caught up with the run and follows it live.
CAUGHT_UP_SECONDS = 0.5


def _state_name(value: int) -> str:
    from eve.v1 import workflows_pb2

    return workflows_pb2.RunState.Name(value)


def _online(run: workflows_pb2.Run) -> bool:
    """An online strategy (its traffic moves); a run without a setup yet counts as offline."""
    from eve.v1 import workflows_pb2 as wpb

    return run.setup.strategy not in (wpb.STRATEGY_UNSPECIFIED, wpb.OFFLINE)


def _reached(current: str, wanted: str) -> bool:
    for path in (_FORWARD, _ROLLBACK):
        if current in path and wanted in path:
            return path.index(current) >= path.index(wanted)
    return current == wanted


# -- setup files --------------------------------------------------------------------------


def setup_from_document(path: str) -> workflows_pb2.RunSetup:
    """A RunSetup from a TOML (or JSON) file that mirrors the message: proto field names, enum
    names as the API spells them (``strategy = "ONLINE_PHASED"``), a Duration as ``"86400s"``."""
    from eve.v1 import workflows_pb2

    source = "stdin" if path == "-" else path
    return parse_message(read_document(path), workflows_pb2.RunSetup(), source=source)


def _describe_setup(setup: workflows_pb2.RunSetup) -> str:
    from eve.v1 import workflows_pb2 as wpb

    def name(enum: Any, value: int, default: str) -> str:
        return enum.Name(value) if value else default

    parts = [f"{setup.source or '?'} -> {setup.target or '?'}"]
    if setup.mirror_targets:
        parts[0] += f" (+ mirrors {', '.join(setup.mirror_targets)})"
    strategy = name(wpb.Strategy, setup.strategy, "OFFLINE")
    parts.append(strategy + (f" via interlay {setup.interlay}" if setup.interlay else ""))
    parts.append(f"mode {name(wpb.DataMovementMode, setup.mode, 'AUTO')}")
    parts.append(f"conflicts {name(wpb.ConflictPolicy, setup.conflict_policy, 'REPLACE')}")
    if strategy != "OFFLINE":
        parts.append(f"writes {name(wpb.WriteConsistency, setup.write_consistency, 'SOURCE_AUTHORITATIVE')}")
    parts.append("TTLs " + ("dropped" if setup.HasField("preserve_ttl") and not setup.preserve_ttl else "kept"))
    limits = setup.rate_limits
    if limits.max_keys_per_second:
        parts.append(f"at most {limits.max_keys_per_second:,} keys/s")
    if limits.max_bytes_per_second:
        parts.append(f"at most {_size(limits.max_bytes_per_second)}/s")
    return ", ".join(parts)


# -- printing -----------------------------------------------------------------------------


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1024
    return f"{count:,.1f} TiB"  # pragma: no cover - the loop returns


def _print_run(out: Output, run: workflows_pb2.Run) -> None:
    state = _state_name(run.state)
    out.print(f"run [bold]{run.id}[/] {state}{': ' + run.description if run.description else ''}")
    if run.HasField("setup") and run.setup.source:
        out.print(f"  setup: {_describe_setup(run.setup)}")
    if _online(run):
        writes = "on the target" if run.writes_on_target else "on the source"
        out.print(f"  traffic: {run.read_percent_target}% of reads on the target, writes {writes}")
    if run.failure_reason:
        out.print(f"  [red]failure[/]: {run.failure_reason}")


def _metrics_lines(metrics: workflows_pb2.RunMetrics, online: bool) -> list[str]:
    eta = f"{metrics.eta_seconds:,.0f}s" if metrics.eta_seconds else "-"
    lines = [(f"copy: {metrics.keys_scanned:,} of {metrics.source_keys:,} keys scanned, {metrics.keys_restored:,} "
              f"restored, {metrics.keys_skipped:,} skipped, {metrics.keys_conflicting:,} conflicts, "
              f"{metrics.keys_failed:,} failed; {_size(metrics.bytes)}, {metrics.keys_per_second:,.0f} keys/s, "
              f"eta {eta}")]
    if online:
        lines.append(f"live: {metrics.dirty_backlog:,} dirty keys (lag {metrics.dirty_lag_seconds:.1f}s), "
                     f"{metrics.keys_recopied:,} re-copied, {metrics.dual_write_failures:,} dual-write failures, "
                     f"authoritative {metrics.authoritative or 'source'}, interlay "
                     f"{metrics.interlay_ops_per_second:,.1f} ops/s")
    return lines


def _next_step(run: workflows_pb2.Run) -> str:
    state, run_id = _state_name(run.state), run.id
    online = _online(run)
    return {
        "CREATED": f"eve runs setup {run_id} --file run.toml",
        "CONFIGURED": f"eve runs prepare {run_id}",
        "PREPARING": f"eve runs watch {run_id} --until READY",
        "READY": f"eve runs review {run_id}, then eve runs approve {run_id}",
        "APPROVED": f"eve runs watch {run_id}",
        "COPYING": f"eve runs watch {run_id} --until {IN_SYNC if online else 'CUT_OVER'}",
        "SYNCING": f"eve runs traffic {run_id} --reads 10 (or --cutover)",
        "CUT_OVER": f"eve runs verify {run_id}, then eve runs complete {run_id}",
        "FAILED": f"eve runs show {run_id}; eve runs prepare {run_id} (or approve again to resume the copy)",
    }.get(state, "")


def _print_next(out: Output, run: workflows_pb2.Run) -> None:
    step = _next_step(run)
    if step:
        out.print(f"next: {step}", markup=False)


def _event_line(event: workflows_pb2.Event) -> str:
    when = event.time.ToDatetime(tzinfo=UTC).astimezone().strftime("%H:%M:%S")
    return f"#{event.seq:<5} {when} {_state_name(event.state):<12} {event.type:<10} {event.message}"


# -- the simple calls ---------------------------------------------------------------------


def _run_reply(out: Output, run: workflows_pb2.Run, *, done: str = "") -> int:
    if out.as_json:
        out.reply(run)
        return EXIT_OK
    if done:
        out.print(done, markup=False)
    _print_run(out, run)
    _print_next(out, run)
    return EXIT_OK


def _runs_create(api: Api, out: Output, args: argparse.Namespace) -> int:
    from eve.v1 import workflows_pb2 as wpb

    run = api.call(api.migrations.CreateRun, wpb.CreateRunRequest(id=args.id or "", description=args.description))
    if args.file:
        run = api.call(api.migrations.SubmitSetup, wpb.SubmitSetupRequest(run=run.id,
                                                                          setup=setup_from_document(args.file)))
    return _run_reply(out, run, done=f"created run {run.id}")


def _runs_setup(api: Api, out: Output, args: argparse.Namespace) -> int:
    from eve.v1 import workflows_pb2 as wpb

    run = api.call(api.migrations.SubmitSetup, wpb.SubmitSetupRequest(run=args.run_id,
                                                                      setup=setup_from_document(args.file)))
    return _run_reply(out, run, done=f"setup of run {run.id} saved")


def _runs_prepare(api: Api, out: Output, args: argparse.Namespace) -> int:
    from eve.v1 import workflows_pb2 as wpb

    run = api.call(api.migrations.Prepare, wpb.PrepareRequest(run=args.run_id))
    if args.no_wait:
        return _run_reply(out, run, done=f"preparing run {run.id}")
    if not out.as_json:
        out.print(f"preparing run {run.id}: compatibility checks, keyspace analysis, test run ...")
    while _state_name(run.state) == "PREPARING":
        time.sleep(0.5)
        run = api.call(api.migrations.GetRun, wpb.GetRunRequest(run=args.run_id))
    if out.as_json:
        out.reply(run)
    else:
        _print_run(out, run)
        if _state_name(run.state) == "READY":
            report = api.call(api.migrations.GetCompatibility, wpb.GetCompatibilityRequest(run=args.run_id))
            blocking = sum(1 for issue in report.issues if issue.blocking)
            out.print(f"  {len(report.issues)} compatibility issue(s), {blocking} blocking")
        _print_next(out, run)
    return EXIT_OK if _state_name(run.state) == "READY" else EXIT_FAILURES


def _runs_approve(api: Api, out: Output, args: argparse.Namespace) -> int:
    from eve.v1 import workflows_pb2 as wpb

    run = api.call(api.migrations.Approve, wpb.ApproveRequest(run=args.run_id, notes=args.notes or ""))
    return _run_reply(out, run, done=f"run {run.id} approved: the copy starts")


def _runs_traffic(api: Api, out: Output, args: argparse.Namespace) -> int:
    from eve.v1 import workflows_pb2 as wpb

    if args.reads is None and not args.cutover:
        raise ConfigError("say where traffic goes: --reads PERCENT and/or --cutover", field="traffic")
    if args.reads is not None and not 0 <= args.reads <= 100:
        raise ConfigError(f"must be between 0 and 100, got {args.reads}", field="--reads")
    reads = args.reads if args.reads is not None else 100
    run = api.call(api.migrations.SetTraffic, wpb.SetTrafficRequest(run=args.run_id, read_percent_target=reads,
                                                                    cutover_writes=args.cutover))
    done = "writes cut over to the target" if args.cutover else f"{reads}% of reads on the target"
    return _run_reply(out, run, done=f"run {run.id}: {done}")


def _runs_complete(api: Api, out: Output, args: argparse.Namespace) -> int:
    from eve.v1 import workflows_pb2 as wpb

    run = api.call(api.migrations.Complete, wpb.CompleteRequest(
        run=args.run_id, accept_differences=args.accept_differences, notes=args.notes or ""), wait=True)
    return _run_reply(out, run, done=f"run {run.id} completed: the target is accepted")


def _runs_rollback(api: Api, out: Output, args: argparse.Namespace) -> int:
    from eve.v1 import workflows_pb2 as wpb

    run = api.call(api.migrations.Rollback, wpb.RollbackRequest(run=args.run_id, reason=args.reason or ""), wait=True)
    return _run_reply(out, run, done=f"run {run.id} rolled back: all traffic on the source")


def _runs_cancel(api: Api, out: Output, args: argparse.Namespace) -> int:
    from eve.v1 import workflows_pb2 as wpb

    run = api.call(api.migrations.Cancel, wpb.CancelRequest(run=args.run_id, reason=args.reason or ""), wait=True)
    return _run_reply(out, run, done=f"run {run.id} cancelled")


def _runs_list(api: Api, out: Output, args: argparse.Namespace) -> int:
    from rich.table import Table

    from eve.v1 import workflows_pb2 as wpb

    reply = api.call(api.migrations.ListRuns, wpb.ListRunsRequest())
    if out.as_json:
        out.reply(reply)
        return EXIT_OK
    table = Table("run", "state", "source -> target", "strategy", "updated", "description")
    for run in reply.runs:
        strategy = wpb.Strategy.Name(run.setup.strategy) if run.setup.strategy else ("OFFLINE" if run.setup.source
                                                                                      else "-")
        sides = f"{run.setup.source} -> {run.setup.target}" if run.setup.source else "-"
        updated = run.update_time.ToDatetime(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(run.id, _state_name(run.state), sides, strategy, updated, run.description)
    out.print(table if reply.runs else "no runs (eve runs create ID)")
    return EXIT_OK


def _runs_show(api: Api, out: Output, args: argparse.Namespace) -> int:
    from eve.v1 import workflows_pb2 as wpb

    run = api.call(api.migrations.GetRun, wpb.GetRunRequest(run=args.run_id))
    metrics = api.call(api.migrations.GetMetrics, wpb.GetMetricsRequest(run=args.run_id))
    if out.as_json:
        out.replies(run=run, metrics=metrics)
        return EXIT_OK
    _print_run(out, run)
    for line in _metrics_lines(metrics, online=_online(run)):
        out.print(f"  {line}", markup=False)
    _print_next(out, run)
    return EXIT_OK


# -- review and acknowledgement ----------------------------------------------------------


def _runs_review(api: Api, out: Output, args: argparse.Namespace) -> int:
    from rich.table import Table

    from eve.v1 import workflows_pb2 as wpb

    compatibility = api.call(api.migrations.GetCompatibility, wpb.GetCompatibilityRequest(run=args.run_id))
    analysis = api.call(api.migrations.GetAnalysis, wpb.GetAnalysisRequest(run=args.run_id))
    test_run = api.call(api.migrations.GetTestRun, wpb.GetTestRunRequest(run=args.run_id))
    blocking = [issue for issue in compatibility.issues if issue.blocking]
    open_issues = [issue for issue in compatibility.issues if not issue.blocking and not issue.acknowledged]
    status = EXIT_FAILURES if blocking else EXIT_OK
    if out.as_json:
        out.replies(compatibility=compatibility, analysis=analysis, test_run=test_run)
        return status

    table = Table("id", "code", "blocking", "acknowledged", "message", "evidence", title="compatibility")
    for issue in compatibility.issues:
        evidence = ", ".join(f"{k}={v}" for k, v in sorted(issue.evidence.items()))
        acknowledged = ("yes" + (f" ({issue.notes})" if issue.notes else "")) if issue.acknowledged else "no"
        table.add_row(issue.id, issue.code, "[red]yes[/]" if issue.blocking else "no", acknowledged,
                      issue.message, evidence)
    out.print(table if compatibility.issues else "compatibility: no issues, source and target are compatible")

    table = Table("db", "type", "keys", "memory", title="keyspace analysis" + (
        f" (sampled: {analysis.sampled_keys:,} keys)" if analysis.sampled else ""))
    for db in analysis.dbs:
        for stats in db.types:
            table.add_row(str(db.db), stats.type, f"{stats.keys:,}", _size(stats.memory_bytes))
    out.print(table)
    for db in analysis.dbs:
        out.print(f"db {db.db}: {db.keys:,} keys, {db.keys_with_ttl:,} with a TTL")
    out.print(f"used memory on the source: {_size(analysis.used_memory_bytes)}"
              + (f"; module types: {', '.join(analysis.module_types)}" if analysis.module_types else ""))
    if analysis.ttl_distribution:
        out.print("TTLs: " + ", ".join(f"{b.bucket} {b.keys:,}" for b in analysis.ttl_distribution), markup=False)
    if analysis.big_keys:
        table = Table("key", "db", "type", "memory", title="largest keys")
        for big in analysis.big_keys:
            table.add_row(big.key_text or repr(big.key), str(big.db), big.type, _size(big.memory_bytes))
        out.print(table)

    from eve.prepare.testrun import describe

    table = Table("type", "keys", "verified", "changed on the source", "refused or corrupted", title="test run")
    for result in test_run.results:
        table.add_row(result.type, f"{result.keys:,}", f"{result.ok:,}", f"{result.changed:,}",
                      f"[red]{result.failed:,}[/]" if result.failed else "0")
    out.print(table)
    out.print("test run: " + describe(sum(r.ok for r in test_run.results), sum(r.changed for r in test_run.results),
                                      sum(r.failed for r in test_run.results)), markup=False)
    out.print(f"test run took {test_run.seconds:.2f}s; the whole copy should take about "
              f"{test_run.estimated_seconds:,.1f}s")
    for line in test_run.changed:
        out.print(f"  changed on the source meanwhile: {line}", markup=False)
    for error in test_run.errors:
        out.print(f"  test run error: {error}", markup=False)

    if blocking:
        out.print(f"[red]{len(blocking)} blocking issue(s)[/]: fix them, then eve runs prepare {args.run_id}")
    elif open_issues:
        out.print(f"{len(open_issues)} issue(s) to acknowledge: eve runs ack {args.run_id} --all --notes '...', "
                  f"then eve runs approve {args.run_id}")
    else:
        out.print(f"ready for approval: eve runs approve {args.run_id}")
    return status


def _runs_ack(api: Api, out: Output, args: argparse.Namespace) -> int:
    import json

    from eve.v1 import workflows_pb2 as wpb

    ids = list(args.issues)
    if args.all:
        report = api.call(api.migrations.GetCompatibility, wpb.GetCompatibilityRequest(run=args.run_id))
        ids += [issue.id for issue in report.issues
                if not issue.blocking and not issue.acknowledged and issue.id not in ids]
        skipped = [issue for issue in report.issues if issue.blocking]
        if skipped and not out.as_json:
            out.print(f"not acknowledged (blocking: fix them and prepare again): "
                      f"{', '.join(f'{i.id} {i.code}' for i in skipped)}", markup=False)
    elif not ids:
        raise ConfigError("name the issues to acknowledge (ids from eve runs review), or --all", field="ack")
    acknowledged = [api.call(api.migrations.AcknowledgeIssue,
                             wpb.AcknowledgeIssueRequest(run=args.run_id, issue_id=issue_id, notes=args.notes))
                    for issue_id in ids]
    if out.as_json:
        print(json.dumps([message_dict(issue) for issue in acknowledged], indent=2), flush=True)
        return EXIT_OK
    for issue in acknowledged:
        out.print(f"acknowledged {issue.id} {issue.code}: {issue.message}", markup=False)
    if not acknowledged:
        out.print("nothing to acknowledge")
    return EXIT_OK


# -- verification and error keys ----------------------------------------------------------


def _runs_verify(api: Api, out: Output, args: argparse.Namespace) -> int:
    from rich.table import Table

    from eve.v1 import workflows_pb2 as wpb

    if not out.as_json:
        out.print(f"verifying run {args.run_id}: comparing every key's type, value and TTL ...")
    report = api.call(api.migrations.Verify, wpb.VerifyRequest(run=args.run_id, ttl_tolerance_ms=args.ttl_tolerance_ms),
                      wait=True)
    status = EXIT_OK if report.clean else EXIT_FAILURES
    if out.as_json:
        out.reply(report)
        return status
    verdict = "clean" if report.clean else "[red]differences found[/]"
    out.print(f"verification {verdict}: {report.keys_compared:,} keys compared, {report.missing:,} missing on the "
              f"target, {report.extra:,} extra, {report.different:,} different, {report.ttl_mismatch:,} TTL "
              f"mismatches")
    if report.examples:
        table = Table("key", "db", "kind", "detail", title="examples")
        for difference in report.examples:
            table.add_row(difference.key_text or repr(difference.key), str(difference.db), difference.kind,
                          difference.detail)
        out.print(table)
    out.print(f"next: eve runs complete {args.run_id}" if report.clean else
              f"next: fix them and verify again, or eve runs complete {args.run_id} --accept-differences --notes '...'",
              markup=False)
    return status


def _runs_errors(api: Api, out: Output, args: argparse.Namespace) -> int:
    from eve.v1 import workflows_pb2 as wpb

    if args.export and args.retry:
        raise ConfigError("--export and --retry are separate steps", field="errors")
    if args.keys and not args.retry:
        raise ConfigError("keys are given to --retry", field="errors")
    if args.export:
        return _export_error_keys(api, args)
    if args.retry:
        outcome = api.call(api.migrations.RetryErrorKeys, wpb.RetryErrorKeysRequest(
            run=args.run_id, keys=[key.encode() for key in args.keys]), wait=True)
        if out.as_json:
            out.reply(outcome)
        else:
            out.print(f"retried {outcome.retried:,} error keys: {outcome.succeeded:,} copied, "
                      f"{outcome.still_failing:,} still failing")
        return EXIT_FAILURES if outcome.still_failing else EXIT_OK
    return _list_error_keys(api, out, args)


def _list_error_keys(api: Api, out: Output, args: argparse.Namespace) -> int:
    from rich.table import Table

    from eve.v1 import workflows_pb2 as wpb

    listed = wpb.ListErrorKeysResponse()
    token = ""
    while True:
        size = min(1000, args.limit - len(listed.error_keys)) if args.limit else 1000
        page = api.call(api.migrations.ListErrorKeys, wpb.ListErrorKeysRequest(run=args.run_id, page_size=size,
                                                                               page_token=token))
        listed.error_keys.extend(page.error_keys)
        token = listed.next_page_token = page.next_page_token
        if not token or (args.limit and len(listed.error_keys) >= args.limit):
            break
    if out.as_json:
        out.reply(listed)
        return EXIT_OK
    if not listed.error_keys:
        out.print(f"run {args.run_id} has no error keys")
        return EXIT_OK
    reasons = Counter(error.reason for error in listed.error_keys)
    table = Table("reason", "keys", title="error keys by reason" + (" (first page)" if token else ""))
    for reason, count in reasons.most_common():
        table.add_row(reason, f"{count:,}")
    out.print(table)
    table = Table("key", "db", "type", "size", "node", "attempts", "reason")
    for error in listed.error_keys:
        table.add_row(error.key_text or repr(error.key), str(error.db), error.type, f"{error.size:,}", error.node,
                      str(error.attempts), error.reason)
    out.print(table)
    if token:
        out.print(f"more error keys than --limit {args.limit}; "
                  f"eve runs errors {args.run_id} --export FILE has them all",
                  markup=False)
    return EXIT_OK


def _export_error_keys(api: Api, args: argparse.Namespace) -> int:
    from eve.v1 import workflows_pb2 as wpb

    fmt = wpb.CSV if args.format == "csv" or (args.format is None and args.export.endswith(".csv")) else wpb.JSONL
    call = api.stream(api.migrations.ExportErrorKeys, wpb.ExportErrorKeysRequest(run=args.run_id, format=fmt))
    if args.export == "-":
        for chunk in call:
            sys.stdout.buffer.write(chunk.data)
        sys.stdout.buffer.flush()
        return EXIT_OK
    count = 0
    with open(args.export, "wb") as sink:
        for chunk in call:
            sink.write(chunk.data)
            count += chunk.data.count(b"\n")
    if fmt == wpb.CSV:
        count = max(0, count - 1)  # the header line
    print(f"exported {count:,} error keys to {args.export}", file=sys.stderr)
    return EXIT_OK


# -- watch ----------------------------------------------------------------------------------


def _transient(exc: grpc.RpcError) -> bool:
    """A failure a reconnect can cure: the coordinator restarting, a network blip."""
    name = exc.code().name if exc.code() is not None else "UNKNOWN"
    if name in ("UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED"):
        return True
    # A connection that ends mid-stream surfaces as INTERNAL/UNKNOWN from the HTTP/2 layer, not
    # as the coordinator's own INTERNAL (which says "internal error in ...").
    details = exc.details() or ""
    return name in ("INTERNAL", "UNKNOWN") and any(
        words in details for words in ("RST_STREAM", "Stream removed", "Socket closed", "GOAWAY"))


class EventFollower(threading.Thread):
    """SubscribeEvents in a thread, put on ``events`` one at a time. After a disconnect it
    subscribes again with ``after_seq`` = the last seq it received, so every event arrives once
    and in order; it gives up when the coordinator stays away ``reconnect_seconds``.

    Items put: ``("event", Event)``, ``("lost", message)``, ``("resumed", message)``,
    ``("end", None)`` (the server ended the stream: the run is terminal), ``("failed", RpcError)``.
    """

    def __init__(self, api: Api, run: str, after_seq: int, *, reconnect_seconds: float) -> None:
        super().__init__(name=f"eve-watch-{run}", daemon=True)
        self.api, self.run_id, self.last_seq = api, run, after_seq
        self.reconnect_seconds = reconnect_seconds
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stopping = threading.Event()
        self._call: Any = None

    def stop(self) -> None:
        self._stopping.set()
        call = self._call
        if call is not None:
            call.cancel()

    def run(self) -> None:
        import grpc

        from eve.v1 import workflows_pb2 as wpb

        lost_at: float | None = None
        delay = 0.2
        while not self._stopping.is_set():
            try:
                if lost_at is not None:
                    # A unary call first: it says the coordinator is back even when the run is idle
                    # and no event would come for a while.
                    self.api.call(self.api.migrations.GetRun, wpb.GetRunRequest(run=self.run_id))
                    notice = (f"reconnected after {time.monotonic() - lost_at:.1f}s; "
                              f"resuming after event #{self.last_seq}")
                    self.events.put(("resumed", notice))
                    lost_at, delay = None, 0.2
                self._call = self.api.stream(self.api.migrations.SubscribeEvents,
                                             wpb.SubscribeEventsRequest(run=self.run_id, after_seq=self.last_seq))
                if self._stopping.is_set():
                    self._call.cancel()
                for event in self._call:
                    self.last_seq = event.seq
                    self.events.put(("event", event))
                self.events.put(("end", None))
                return
            except grpc.RpcError as exc:
                if self._stopping.is_set():
                    return
                if not _transient(exc):
                    self.events.put(("failed", exc))
                    return
                now = time.monotonic()
                if lost_at is None:
                    lost_at = now
                    notice = (f"lost the coordinator ({exc.code().name}: {exc.details()}); "
                              f"reconnecting for up to {self.reconnect_seconds:g}s")
                    self.events.put(("lost", notice))
                elif now - lost_at > self.reconnect_seconds:
                    self.events.put(("failed", exc))
                    return
                self._stopping.wait(delay)
                delay = min(delay * 2, 2.0)


class UntilCheck:
    """When a watch is done: the run reached ``until`` (or, without one, a terminal state), or
    can no longer reach it; ``verdict`` returns the exit code then, else None."""

    def __init__(self, until: str | None) -> None:
        self.until = until
        self.seen: set[str] = set()  # states the events showed (replayed or live)
        self.in_sync = False

    def saw(self, event: workflows_pb2.Event) -> None:
        state = _state_name(event.state)
        self.seen.add(state)
        if event.type == "live" and event.message.startswith("in sync"):
            self.in_sync = True
        elif event.message.startswith("coordinator restarted") or not _reached(state, "SYNCING"):
            # After a restart the live run catches up again (and says "in sync" again).
            self.in_sync = False

    def verdict(self, current: str) -> int | None:
        until = self.until
        if until == IN_SYNC:
            if self.in_sync and _reached(current, "SYNCING") and current in _FORWARD:
                return EXIT_OK
        elif until is not None and until in self.seen and _reached(current, until):
            return EXIT_OK
        if current == "FAILED":
            return EXIT_FAILURES
        if current in TERMINAL:
            return EXIT_OK if until is None else EXIT_STATE
        return None


class _WatchView:
    """Progress bars on a terminal (copy, catch-up with backlog and dual-write failures), the
    events printed above them; plain event lines otherwise."""

    def __init__(self, out: Output, run: workflows_pb2.Run) -> None:
        self.out = out
        self.online = _online(run)
        self.bars: Any = None
        if out.as_json or not out.console.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bars = Progress(TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[detail]}"), console=out.console, transient=False)
        self.copy = self.bars.add_task("copy", total=None, detail="", visible=False)
        self.catch_up = self.bars.add_task("catch-up", total=None, detail="", visible=False)
        self.bars.start()

    def event(self, event: workflows_pb2.Event) -> None:
        if self.out.as_json:
            self.out.line(event)
        elif self.bars is None:
            print(_event_line(event), flush=True)
        elif event.type not in ("progress", "metrics"):  # the bars show those numbers
            self.out.print(_event_line(event), markup=False, highlight=False)

    def notice(self, message: str) -> None:
        if self.bars is not None:
            self.bars.console.print(f"[yellow]{message}[/]")
        else:
            print(f"eve runs watch: {message}", file=sys.stderr, flush=True)

    def metrics(self, metrics: workflows_pb2.RunMetrics, state: str) -> None:
        if self.bars is None:
            return
        copying = state == "COPYING"
        copied = _reached(state, "SYNCING") and state in _FORWARD
        # Rates and ETA mean something while the copy runs; once it is done, the bar is full.
        rate = f", {metrics.keys_per_second:,.0f} keys/s" if copying else ""
        eta = f", eta {metrics.eta_seconds:,.0f}s" if copying and metrics.eta_seconds else ""
        self.bars.update(self.copy, completed=metrics.keys_scanned,
                         total=metrics.source_keys or (metrics.keys_scanned if copied else None),
                         visible=_reached(state, "APPROVED") or metrics.keys_scanned > 0,
                         detail=f"{metrics.keys_restored:,} restored, {metrics.keys_failed:,} failed{rate}{eta}")
        if self.online:
            recopied, backlog = metrics.keys_recopied, metrics.dirty_backlog
            self.bars.update(self.catch_up, completed=recopied, total=recopied + backlog or None,
                             visible=_reached(state, "SYNCING") or recopied + backlog > 0,
                             detail=f"backlog {backlog:,} (lag {metrics.dirty_lag_seconds:.1f}s), "
                                    f"dual-write failures {metrics.dual_write_failures:,}, "
                                    f"authoritative {metrics.authoritative or 'source'}")

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()


def _runs_watch(api: Api, out: Output, args: argparse.Namespace) -> int:
    import grpc

    from eve.v1 import workflows_pb2 as wpb

    run = api.call(api.migrations.GetRun, wpb.GetRunRequest(run=args.run_id))
    until = args.until
    if until in _ONLINE_ONLY and run.setup.source and not _online(run):
        raise ConfigError(f"run {run.id} is OFFLINE: it never reaches {until} (use CUT_OVER)", field="--until")
    current = _state_name(run.state)
    check = UntilCheck(until)
    check.seen.add(current)  # it is there now, even if --after-seq skips the event that said so
    follower = EventFollower(api, args.run_id, args.after_seq, reconnect_seconds=args.reconnect_seconds)
    view = _WatchView(out, run)
    follower.start()
    last_poll = 0.0
    last_event = time.monotonic()
    last_event_state = ""
    connected = True
    ended = False
    status: int | None = None
    try:
        while status is None:
            try:
                kind, item = follower.events.get(timeout=0.2)
            except queue.Empty:
                kind, item = "idle", None
            now = time.monotonic()
            if kind == "event":
                last_event = now
                check.saw(item)
                view.event(item)
                if _state_name(item.state) != last_event_state:
                    last_event_state = _state_name(item.state)
                    last_poll = 0.0  # a transition: learn where the run is now
            elif kind == "lost":
                connected = False
                view.notice(item)
            elif kind == "resumed":
                connected = True
                view.notice(item)
            elif kind == "failed":
                raise item
            elif kind == "end":
                ended = True
            caught_up = ended or (follower.events.empty() and now - last_event >= CAUGHT_UP_SECONDS)
            if connected and (now - last_poll >= POLL_SECONDS or ended):
                last_poll = now
                try:
                    current = _state_name(api.call(api.migrations.GetRun, wpb.GetRunRequest(run=args.run_id)).state)
                    if view.bars is not None:
                        view.metrics(api.call(api.migrations.GetMetrics, wpb.GetMetricsRequest(run=args.run_id)),
                                     current)
                except grpc.RpcError as exc:
                    if not _transient(exc):
                        raise
            if caught_up:
                status = check.verdict(current)
                if status is None and ended:
                    status = EXIT_STATE  # the stream ended without the run reaching what was asked
    finally:
        follower.stop()
        view.close()
    if not out.as_json:
        reached = "reached " + (until or current) if status == EXIT_OK else f"is {current}"
        if status == EXIT_STATE and until:
            reached = f"is {current}: it will not reach {until}"
        print(f"run {args.run_id} {reached} (last event #{follower.last_seq})", file=sys.stderr, flush=True)
    return status


# -- the parser ---------------------------------------------------------------------------


def add_run_commands(commands: Any) -> None:
    """``eve runs ...`` under the ``eve`` command's subparsers."""
    add_action = add_api_command(
        commands, "runs", help="drive guided migration runs on a running coordinator (eve serve)",
        description="The guided workflow of eve serve: create, setup, prepare, review, ack, approve, watch, "
                    "traffic, verify, complete (or rollback, cancel). Exit codes: 0 done, 1 finished with "
                    "failures (a FAILED run, differences found, blocking issues, keys still failing), 2 bad "
                    "input, unknown run, unreachable coordinator or refused token, 5 not allowed in the run's "
                    "state, 130 interrupted.")

    def action(name: str, handler: Any, help: str, *, run: bool = True) -> argparse.ArgumentParser:
        sub = add_action(name, handler, help)
        if run:
            sub.add_argument("run_id", metavar="RUN", help="the run's id")
        return sub

    create = action("create", _runs_create, "create a run", run=False)
    create.add_argument("id", nargs="?", help="the run's id (default: one is generated)")
    create.add_argument("--description", default="", help="what the run is for")
    create.add_argument("--file", metavar="PATH", help="also submit this setup (as eve runs setup does)")
    setup = action("setup", _runs_setup, "submit the run's setup from a TOML (or JSON) file mirroring RunSetup")
    setup.add_argument("--file", required=True, metavar="PATH", help="the setup; - reads stdin")
    prepare = action("prepare", _runs_prepare,
                     "run the compatibility checks, keyspace analysis and test run; waits for READY or FAILED")
    prepare.add_argument("--no-wait", action="store_true", help="return once preparing has started")
    action("review", _runs_review, "show the compatibility issues, keyspace analysis and test run "
                                   "(exit 1 while a blocking issue is open)")
    ack = action("ack", _runs_ack, "acknowledge non-blocking compatibility issues, with notes")
    ack.add_argument("issues", nargs="*", metavar="ISSUE", help="issue ids (from eve runs review)")
    ack.add_argument("--all", action="store_true", help="every non-blocking issue not acknowledged yet")
    ack.add_argument("--notes", required=True, help="why it is fine (kept with the issue)")
    approve = action("approve", _runs_approve, "approve the run: the copy starts")
    approve.add_argument("--notes", help="the approval's notes (a change number, ...)")
    watch = action("watch", _runs_watch,
                   "follow a run: progress bars (copy, catch-up, backlog, dual-write failures) and its events; "
                   "resumes after a disconnect; ends at a terminal state, FAILED, or --until")
    watch.add_argument("--until", type=str.upper, choices=[*RUN_STATES, IN_SYNC], metavar="STATE",
                       help="end once the run reached STATE (exit 0), or cannot any more (exit 5); IN_SYNC waits "
                            "for an online run's \"in sync\" event, after which traffic can move")
    watch.add_argument("--after-seq", type=int, default=0, metavar="N",
                       help="only events after seq N (default: the whole history, then live)")
    watch.add_argument("--reconnect-seconds", type=float, default=DEFAULT_RECONNECT_SECONDS, metavar="S",
                       help="how long to keep reconnecting to a coordinator that went away (default %(default)g)")
    traffic = action("traffic", _runs_traffic, "move an online run's traffic: a share of reads, then writes")
    traffic.add_argument("--reads", type=int, metavar="PERCENT",
                         help="serve this share of reads from the target (ONLINE_PHASED; by key hash)")
    traffic.add_argument("--cutover", action="store_true",
                         help="cut writes over: the target becomes authoritative (reads 100%% unless --reads)")
    verify = action("verify", _runs_verify, "compare every key of source and target (exit 1 on differences)")
    verify.add_argument("--ttl-tolerance-ms", type=int, default=1000, metavar="MS",
                        help="TTLs this close are equal (default %(default)s)")
    complete = action("complete", _runs_complete, "accept the target: end reverse sync, release the source")
    complete.add_argument("--notes", help="the acceptance's notes")
    complete.add_argument("--accept-differences", action="store_true",
                          help="complete although verification found differences (give --notes)")
    rollback = action("rollback", _runs_rollback, "return all traffic to the source (any time before complete)")
    rollback.add_argument("--reason", help="why")
    cancel = action("cancel", _runs_cancel, "cancel a run that has not copied yet")
    cancel.add_argument("--reason", help="why")
    action("list", _runs_list, "list the runs", run=False)
    action("show", _runs_show, "show a run, its setup, traffic and metrics")
    errors = action("errors", _runs_errors, "list, export or retry the run's error keys")
    errors.add_argument("keys", nargs="*", metavar="KEY", help="with --retry: only these keys (default: all)")
    errors.add_argument("--limit", type=int, default=100, metavar="N",
                        help="list at most N keys (default %(default)s; 0 for all)")
    errors.add_argument("--export", metavar="FILE", help="write every error key to FILE (- for stdout)")
    errors.add_argument("--format", choices=["jsonl", "csv"],
                        help="export format (default: csv for a .csv FILE, else jsonl)")
    errors.add_argument("--retry", action="store_true", help="copy the error keys again (exit 1 if some still fail)")
