"""Conversions between protobuf messages and Eve's domain values.

Protobuf types stop here and in ``eve.api.server``. Every endpoint config that leaves
the process passes through ``redact_config`` on the way.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from eve.core.endpoints import redact_config
from eve.core.errors import ConfigError
from eve.core.store import EndpointRecord, InterlayRecord, RunRecord
from eve.redis import resp
from eve.v1 import common_pb2, endpoints_pb2, interlays_pb2, workflows_pb2
from eve.workflow.setup import RunSetup, parse_setup
from proxy.slots import fails_on_cluster

__all__ = ["message_to_dict", "reply_to_dict", "unknown_field", "parse_json", "secret_values", "endpoint_to_proto",
           "interlay_to_proto", "resp_to_proto", "timestamp", "setup_from_proto", "setup_to_proto", "run_to_proto"]


def message_to_dict(message: Message) -> dict[str, Any]:
    """Fields as set by the caller, with proto field names (``read_conn``)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def interlay_settings_to_dict(settings: interlays_pb2.InterlaySettings) -> dict[str, Any]:
    """An interlay's settings as set by the caller; byte sizes (int64) as numbers, not the
    strings the proto3 JSON mapping makes of them."""
    return json_format.MessageToDict(settings, preserving_proto_field_name=True, unquote_int64_if_possible=True)


def reply_to_dict(message: Message) -> dict[str, Any]:
    """A reply as JSON values, the way the documentation reads it: proto field names, zero values
    shown (a ``"clean": false`` or ``"keys_failed": 0`` must not vanish), int64 as numbers where
    they are exact (the proto3 JSON mapping quotes them), enums by name."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True, unquote_int64_if_possible=True)


def unknown_field(body: Mapping[str, Any], descriptor: Any, path: str = "") -> str | None:
    """The dotted path of the first key of ``body`` the message type has no field for, said with
    the fields it has; None when every key is a field. (``ParseDict`` would name the message
    type, not where the key sits in a nested body.)"""
    names = {f.name: f for f in descriptor.fields} | {f.json_name: f for f in descriptor.fields}
    for key, value in body.items():
        where = f"{path}.{key}" if path else str(key)
        found = names.get(key)
        if found is None:
            known = ", ".join(f.name for f in descriptor.fields)
            return f"unknown key {where!r}: {descriptor.name} has no such field (it has: {known})"
        inner = found.message_type
        # Maps take any key; google.protobuf types (Duration, Timestamp) have a JSON form of their own.
        if inner is None or inner.GetOptions().map_entry or inner.full_name.startswith("google.protobuf."):
            continue
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            if isinstance(item, Mapping):
                at = f"{where}[{index}]" if isinstance(value, list) else where
                problem = unknown_field(item, inner, at)
                if problem:
                    return problem
    return None


def parse_json(body: Mapping[str, Any], message: Message, *, secrets: tuple[str, ...] = ()) -> Message:
    """``body`` (JSON values) into ``message`` with ``json_format.ParseDict``, unknown keys refused
    (a typo must not pass silently as a default): ConfigError naming the key. ``secrets`` are masked
    in the message, since a parse error may quote the value it could not read."""
    problem = unknown_field(body, message.DESCRIPTOR)
    if problem:
        raise ConfigError(problem)
    try:
        return json_format.ParseDict(body, message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        text = str(exc)
        for secret in secrets:
            if secret:
                text = text.replace(secret, "<redacted>")
        raise ConfigError(text) from None


def secret_values(body: Any) -> tuple[str, ...]:
    """Every ``password`` value in a request body, to mask in what is said back about it."""
    found: list[str] = []
    if isinstance(body, Mapping):
        for key, value in body.items():
            if key == "password" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(secret_values(value))
    elif isinstance(body, list):
        for item in body:
            found.extend(secret_values(item))
    return tuple(found)


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def endpoint_to_proto(record: EndpointRecord) -> endpoints_pb2.Endpoint:
    config = json_format.ParseDict(redact_config(record.config), endpoints_pb2.EndpointConfig())
    return endpoints_pb2.Endpoint(
        endpoint=record.name, kind=record.kind, config=config, description=record.description,
        create_time=timestamp(record.create_time), update_time=timestamp(record.update_time))


def interlay_to_proto(record: InterlayRecord, status: Any = None,
                      stats: dict[str, Any] | None = None) -> interlays_pb2.Interlay:
    """The stored interlay; ``status`` (the supervisor's) wins on state and ports while it knows
    the interlay, ``stats`` are the live numbers of a running one."""
    settings = interlays_pb2.InterlaySettings(**record.settings)
    state, last_error = record.state, record.last_error
    if status is not None and status.state != "STOPPED":
        state, last_error = status.state, status.reason or last_error
    elif status is not None and state == "RUNNING":
        state = "STOPPED"  # recorded as running, but no process: it did not come back
    out = interlays_pb2.Interlay(
        id=record.id, endpoint=record.endpoint, port=record.port, settings=settings,
        state=interlays_pb2.InterlayState.Value(f"INTERLAY_{state}"), last_error=last_error,
        listener_ports=list(status.ports) if status is not None else [],
        create_time=timestamp(record.create_time), update_time=timestamp(record.update_time))
    if stats:
        out.stats.connections = stats["connections"]
        out.stats.ops_per_second = stats["ops_per_second"]
        out.stats.errors = stats["errors"]
        for backend in stats["backends"]:
            out.stats.backends.add(backend=backend["backend"], ops=backend["ops"], errors=backend["errors"],
                                   p50_ms=backend["p50_ms"], p99_ms=backend["p99_ms"])
        for side in stats.get("sides", []):
            out.stats.dual_writes.add(side=side["side"], writes=side["writes"], failures=side["failures"],
                                      last_error=side["last_error"])
        out.stats.dirty_keys_pending = stats.get("dirty_pending", 0)
        out.stats.noscript_replies = stats.get("noscript_replies", 0)
    return out


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return ""


def resp_to_proto(value: Any) -> common_pb2.RespValue:
    """A typed ``eve.redis.resp`` value as a ``RespValue``, recursively."""
    out = common_pb2.RespValue()
    if isinstance(value, resp.SimpleString):
        out.simple_string = _text(value.value) or value.value.decode("latin-1")
    elif isinstance(value, resp.BulkString):
        out.bulk_string = value.value
        out.text = _text(value.value)
    elif isinstance(value, resp.Integer):
        out.integer = value.value
    elif isinstance(value, resp.Double):
        out.double = value.value if not math.isnan(value.value) else math.nan
    elif isinstance(value, resp.Nil):
        out.nil = True
    elif isinstance(value, resp.Error):
        out.error = value.value.decode("utf-8", "replace")
    elif isinstance(value, resp.Boolean):
        out.boolean = value.value
    elif isinstance(value, resp.BigNumber):
        out.big_number = str(value.value)
    elif isinstance(value, resp.Verbatim):
        out.verbatim.format = value.format.decode("ascii", "replace")
        out.verbatim.value = value.value
        out.text = _text(value.value)
    elif isinstance(value, resp.Map):
        out.map.SetInParent()
        for key, item in value.items:
            out.map.entries.add(key=resp_to_proto(key), value=resp_to_proto(item))
    elif isinstance(value, (resp.Array, resp.Set, resp.Push)):
        target = {resp.Array: out.array, resp.Set: out.set, resp.Push: out.push}[type(value)]
        target.SetInParent()
        target.items.extend(resp_to_proto(item) for item in value.items)
    elif isinstance(value, resp.Attribute):
        # Attributes annotate a reply (RESP3 client-side caching hints); the reply is what counts.
        return resp_to_proto(value.value)
    else:  # pragma: no cover - the codec produces nothing else
        raise TypeError(f"not a RESP value: {type(value).__name__}")
    return out


# -- the guided workflow ------------------------------------------------------------------


def setup_from_proto(message: workflows_pb2.RunSetup) -> RunSetup:
    """The request's setup, validated by the one parser (``parse_setup``: ConfigError naming the field)."""
    return parse_setup(message_to_dict(message))


def setup_to_proto(setup: RunSetup) -> workflows_pb2.RunSetup:
    # The enums share their members' names with the proto enums (unprefixed, see workflows.proto).
    out = workflows_pb2.RunSetup(
        source=setup.source, target=setup.target, mirror_targets=list(setup.mirror_targets),
        strategy=workflows_pb2.Strategy.Value(setup.strategy.value),
        mode=workflows_pb2.DataMovementMode.Value(setup.mode.value),
        conflict_policy=workflows_pb2.ConflictPolicy.Value(setup.conflict_policy.value),
        write_consistency=workflows_pb2.WriteConsistency.Value(setup.write_consistency.value),
        preserve_ttl=setup.preserve_ttl,
        filters=workflows_pb2.Filters(key_pattern=setup.filters.key_pattern, dbs=list(setup.filters.dbs),
                                      types=list(setup.filters.types)),
        rate_limits=workflows_pb2.RateLimits(max_keys_per_second=setup.rate_limits.max_keys_per_second,
                                             max_bytes_per_second=setup.rate_limits.max_bytes_per_second,
                                             max_pipeline_depth=setup.rate_limits.max_pipeline_depth),
        interlay=setup.interlay, scripts_deterministic=setup.scripts_deterministic,
        big_key_threshold_bytes=setup.big_key_threshold_bytes, restorers=setup.restorers,
        keyspace_notifications=setup.keyspace_notifications, max_error_ratio=setup.max_error_ratio)
    out.rollback_window.SetInParent()
    out.rollback_window.FromNanoseconds(round(setup.rollback_window_seconds * 1e9))
    return out


def run_to_proto(record: RunRecord, setup: RunSetup | None = None,
                 traffic: tuple[int, bool] = (0, False)) -> workflows_pb2.Run:
    """``setup``: the record's typed setup (``Workflow.setup``), None before SubmitSetup."""
    run = workflows_pb2.Run(
        id=record.id, state=workflows_pb2.RunState.Value(record.state), description=record.description,
        failure_reason=record.failure_reason, read_percent_target=traffic[0], writes_on_target=traffic[1],
        create_time=timestamp(record.create_time), update_time=timestamp(record.update_time))
    if setup is not None:
        run.setup.CopyFrom(setup_to_proto(setup))
    return run


def issue_to_proto(issue: dict[str, Any]) -> workflows_pb2.CompatibilityIssue:
    return workflows_pb2.CompatibilityIssue(
        id=issue["id"], code=issue["code"], blocking=issue["blocking"], message=issue["message"],
        evidence={str(k): str(v) for k, v in issue["evidence"].items()}, acknowledged=issue["acknowledged"],
        notes=issue["notes"])


def analysis_to_proto(body: dict[str, Any]) -> workflows_pb2.Analysis:
    out = workflows_pb2.Analysis(used_memory_bytes=int(body.get("used_memory_bytes", 0)),
                                 sampled=bool(body.get("sampled")), sampled_keys=int(body.get("sampled_keys", 0)),
                                 module_types=list(body.get("module_types", [])),
                                 search_indexes=list(body.get("search_indexes", [])))
    for db in body.get("dbs", []):
        out.dbs.add(db=db["db"], keys=db["keys"], keys_with_ttl=db["keys_with_ttl"],
                    types=[workflows_pb2.TypeStats(**t) for t in db.get("types", [])])
    for big in body.get("big_keys", []):
        out.big_keys.add(key=base64.b64decode(big["key_base64"]), key_text=big.get("key_text", ""), db=big["db"],
                         type=big["type"], memory_bytes=big["memory_bytes"])
    for bucket, keys in body.get("ttl_distribution", []):
        out.ttl_distribution.add(bucket=bucket, keys=keys)
    return out


def testrun_to_proto(body: dict[str, Any]) -> workflows_pb2.TestRunReport:
    return workflows_pb2.TestRunReport(
        results=[workflows_pb2.TypeResult(type=r["type"], keys=r["keys"], ok=r["ok"], failed=r["failed"],
                                          transcoded=r.get("transcoded", 0), logical=r.get("logical", 0))
                 for r in body.get("results", [])],
        errors=list(body.get("errors", [])), seconds=float(body.get("seconds", 0)),
        estimated_seconds=float(body.get("estimated_seconds", 0)))


def event_to_proto(run_id: str, event: dict[str, Any]) -> workflows_pb2.Event:
    return workflows_pb2.Event(
        seq=event["seq"], run=run_id, time=timestamp(event["time"]), type=event["type"], message=event["message"],
        state=workflows_pb2.RunState.Value(event["state"]), attributes=event["attributes"])


def metrics_to_proto(attributes: dict[str, Any]) -> workflows_pb2.RunMetrics:
    eta = attributes.get("eta_seconds")
    return workflows_pb2.RunMetrics(
        keys_scanned=int(attributes["keys_scanned"]), keys_restored=int(attributes["keys_restored"]),
        keys_skipped=int(attributes["keys_skipped"]), keys_conflicting=int(attributes["keys_conflicting"]),
        keys_failed=int(attributes["keys_failed"]), bytes=int(attributes["bytes"]),
        keys_per_second=float(attributes["keys_per_second"]), eta_seconds=float(eta) if eta not in ("", None) else 0,
        source_keys=int(attributes["source_keys"]), dirty_backlog=int(attributes.get("dirty_backlog", 0)),
        interlay_ops_per_second=float(attributes.get("interlay_ops_per_second", 0)),
        dirty_lag_seconds=float(attributes.get("dirty_lag_seconds", 0)),
        keys_recopied=int(attributes.get("keys_recopied", 0)),
        dual_write_failures=int(attributes.get("dual_write_failures", 0)),
        authoritative=str(attributes.get("authoritative", "")),
        noscript_replies=int(attributes.get("noscript_replies", 0)),
        cross_slot_commands=[cross_slot_to_proto(entry) for entry in attributes.get("cross_slot", ())])


def cross_slot_to_proto(entry: dict[str, Any]) -> workflows_pb2.CrossSlotCommand:
    """One entry of ``InterlaySupervisor.stats()["cross_slot"]``."""
    return workflows_pb2.CrossSlotCommand(
        command=entry["command"], count=entry["count"], fails_on_cluster=fails_on_cluster(entry["command"]),
        examples=[" ".join(key.decode("utf-8", "backslashreplace") for key in keys) for keys in entry["examples"]])


def error_key_to_proto(record: Any) -> workflows_pb2.ErrorKey:
    return workflows_pb2.ErrorKey(
        key=record.key, key_text=_text(record.key), db=record.db, node=record.node, type=record.type,
        size=record.size, reason=record.reason, attempts=record.attempts,
        first_seen=timestamp(record.first_seen), last_seen=timestamp(record.last_seen))


def verify_to_proto(report: Any) -> workflows_pb2.VerifyReport:
    return workflows_pb2.VerifyReport(
        clean=report.clean, keys_compared=report.keys_compared, missing=report.missing, extra=report.extra,
        different=report.different, ttl_mismatch=report.ttl_mismatch,
        examples=[workflows_pb2.KeyDifference(key=d.key, key_text=d.key_text, db=d.db, kind=d.kind, detail=d.detail)
                  for d in report.examples],
        index_differences=list(getattr(report, "index_differences", ())))
