"""The typed setup of a guided run, and the endpoint snapshot it works from.

``parse_setup`` is the one place a setup from the API (a request's fields as a dict with
proto field names) is validated, into a frozen ``RunSetup`` that carries the policy enums
of ``eve.core.enums`` end to end. The store keeps it as JSON (``RunSetup.to_stored``);
``RunSetup.from_stored`` reads that form back, including the dicts older versions of Eve
saved (the same keys; fields added since take their defaults). Protobuf conversion lives
in ``eve.api.convert``.

The endpoints a run uses are snapshotted when Prepare starts, confirmed unchanged at
Approve, and the run works from that snapshot until it ends; ``endpoint_changes`` says,
with every password masked, which endpoint differs from it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from eve.bulk.error_keys import DEFAULT_MAX_ERROR_RATIO
from eve.bulk.pipeline import MAX_RESTORERS
from eve.redis.rdb import CORE_TYPES, is_type_name
from eve.core import endpoints as endpoint_model
from eve.core.enums import ConflictPolicy, DataMovementMode, Strategy, WriteConsistency
from eve.core.errors import ConfigError, StateError
from eve.core.store import RunEndpointRecord

__all__ = ["Filters", "RateLimits", "RunSetup", "parse_setup", "guided_setup", "endpoint_changes",
           "describe_config_change", "is_migrate_job", "MIGRATE_JOB_KIND", "ROLE_FIELDS", "MAX_DB",
           "MAX_PIPELINE_DEPTH", "MAX_RESTORERS"]

# ``eve migrate`` jobs share the runs table; their setup is a dict of its own with this "kind".
MIGRATE_JOB_KIND = "migrate"
MAX_DB = 1_000_000
MAX_PIPELINE_DEPTH = 100_000
# The setup field that names an endpoint in each role (for errors about that endpoint).
ROLE_FIELDS = {"source": "setup.source", "target": "setup.target", "mirror": "setup.mirror_targets"}


@dataclass(frozen=True)
class Filters:
    key_pattern: str = ""           # SCAN MATCH glob; empty: every key
    dbs: tuple[int, ...] = ()       # empty: every db that holds keys
    types: tuple[str, ...] = ()     # SCAN TYPE name (one at most); empty: every type


@dataclass(frozen=True)
class RateLimits:
    max_keys_per_second: int = 0    # 0: unlimited
    max_bytes_per_second: int = 0   # 0: unlimited
    max_pipeline_depth: int = 0     # 0: the pipeline's default


@dataclass(frozen=True)
class RunSetup:
    """What the operator asked for; endpoints by name (their configs are snapshotted
    separately, at Prepare)."""

    source: str
    target: str
    mirror_targets: tuple[str, ...] = ()
    strategy: Strategy = Strategy.OFFLINE
    mode: DataMovementMode = DataMovementMode.AUTO
    conflict_policy: ConflictPolicy = ConflictPolicy.REPLACE
    write_consistency: WriteConsistency = WriteConsistency.SOURCE_AUTHORITATIVE
    preserve_ttl: bool = True
    filters: Filters = field(default_factory=Filters)
    rate_limits: RateLimits = field(default_factory=RateLimits)
    rollback_window_seconds: float = 0.0
    interlay: str = ""              # the interlay the applications use (online strategies)
    scripts_deterministic: bool = False
    big_key_threshold_bytes: int = 0  # 0: the default
    restorers: int = 0              # 0: the coordinator's default
    keyspace_notifications: bool = False
    # The copy fails the run above this share of error keys per key scanned (eve.bulk.error_keys).
    max_error_ratio: float = DEFAULT_MAX_ERROR_RATIO

    @property
    def online(self) -> bool:
        """Online strategies move live traffic through the interlay."""
        return self.strategy != Strategy.OFFLINE

    @property
    def roles(self) -> dict[str, str]:
        """Endpoint name -> its role in the run (source, target, mirror)."""
        return {self.source: "source", self.target: "target", **{m: "mirror" for m in self.mirror_targets}}

    def to_stored(self) -> dict[str, Any]:
        """The JSON form the store keeps (the keys older versions saved, enums as their values)."""
        return _encode(dataclasses.asdict(self))

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> RunSetup:
        """Read a stored setup: this version's ``to_stored`` or an older Eve's saved dict.
        Stored values were validated when saved; a value this Eve does not know is a
        StateError (the state file is from another version), not a ConfigError."""
        try:
            return _decode(cls, stored)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"the saved setup cannot be read by this Eve ({type(exc).__name__}: {exc})") from None


def is_migrate_job(stored: Mapping[str, Any] | None) -> bool:
    """An ``eve migrate`` job (kept in the runs table too), not a guided run."""
    return bool(stored) and stored.get("kind") == MIGRATE_JOB_KIND


def guided_setup(stored: Mapping[str, Any] | None) -> RunSetup | None:
    """The typed setup of a stored run: None before SubmitSetup, and for an ``eve migrate``
    job (whose setup has a shape of its own)."""
    if not stored or is_migrate_job(stored):
        return None
    return RunSetup.from_stored(stored)


# -- parsing the API's setup ------------------------------------------------------------------


def _enum(enum: type[Enum], value: Any, field: str, default: Enum) -> Any:
    if value in (None, "", 0) or (isinstance(value, str) and value.endswith("_UNSPECIFIED")):
        return default
    try:
        return enum(value)
    except ValueError:
        raise ConfigError(f"{value!r} is not one of {', '.join(m.value for m in enum)}", field=field) from None


def _non_negative(value: Any, field: str, maximum: int | None = None) -> int:
    # int64 fields arrive as strings in proto JSON; a float only when whole (never NaN/inf).
    if isinstance(value, bool) or (isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
        raise ConfigError(f"must be a whole number, got {value!r}", field=field)
    try:
        number = int(value or 0)
    except (TypeError, ValueError):
        raise ConfigError(f"must be a whole number, got {value!r}", field=field) from None
    if number < 0 or (maximum is not None and number > maximum):
        allowed = f"between 0 and {maximum}" if maximum is not None else "0 or more"
        raise ConfigError(f"must be {allowed}, got {number}", field=field)
    return number


def _flag(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {value!r}", field=f"setup.{key}")
    return value


def _list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"must be a list, got {type(value).__name__}", field=field)
    return list(value)


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"must be an object, got {type(value).__name__}", field=field)
    return value


def _duration_seconds(value: Any, field: str) -> float:
    """A proto JSON Duration ("3600s", "0.5s") as seconds: finite and not negative."""
    if not value:
        return 0.0
    text = str(value)
    if not text.endswith("s"):
        raise ConfigError(f"{text!r} is not a duration like \"3600s\"", field=field)
    try:
        seconds = float(text[:-1])
    except ValueError:
        raise ConfigError(f"{text!r} is not a duration like \"3600s\"", field=field) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"must be a duration of 0s or more, got {text!r}", field=field)
    return seconds


def _ratio(value: Any, field: str, default: float) -> float:
    """A share between 0 and 1; ``default`` when not given."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"must be a number from 0 to 1 (a share of the keys), got {value!r}", field=field)
    return float(value)


def parse_setup(raw: Mapping[str, Any]) -> RunSetup:
    """Validate a setup dict (proto field names) into a ``RunSetup``, with field-level errors.
    Endpoint existence is checked by the workflow, which knows the store."""
    source = endpoint_model.validate_name(raw.get("source"), field="setup.source")
    target = endpoint_model.validate_name(raw.get("target"), field="setup.target")
    mirrors = tuple(endpoint_model.validate_name(m, field="setup.mirror_targets")
                    for m in _list(raw.get("mirror_targets"), "setup.mirror_targets"))
    roles = [source, target, *mirrors]
    duplicates = sorted({name for name in roles if roles.count(name) > 1})
    if duplicates:
        raise ConfigError(f"endpoint {duplicates[0]!r} has two roles; source, target and mirror targets must be "
                          "separate endpoints", field="setup")
    filters = _object(raw.get("filters"), "setup.filters")
    dbs = tuple(_non_negative(db, "setup.filters.dbs", MAX_DB) for db in _list(filters.get("dbs"), "setup.filters.dbs"))
    types = tuple(str(t) for t in _list(filters.get("types"), "setup.filters.types"))
    if len(types) > 1:
        raise ConfigError("one type at most (SCAN TYPE takes one)", field="setup.filters.types")
    for name in types:
        if not is_type_name(name):
            raise ConfigError(f"{name[:40]!r} is not a type: use one of {', '.join(CORE_TYPES)}, or a module's "
                              "9-character type name", field="setup.filters.types")
    limits = _object(raw.get("rate_limits"), "setup.rate_limits")
    setup = RunSetup(
        source=source,
        target=target,
        mirror_targets=mirrors,
        strategy=_enum(Strategy, raw.get("strategy"), "setup.strategy", Strategy.OFFLINE),
        mode=_enum(DataMovementMode, raw.get("mode"), "setup.mode", DataMovementMode.AUTO),
        conflict_policy=_enum(ConflictPolicy, raw.get("conflict_policy"), "setup.conflict_policy",
                              ConflictPolicy.REPLACE),
        write_consistency=_enum(WriteConsistency, raw.get("write_consistency"), "setup.write_consistency",
                                WriteConsistency.SOURCE_AUTHORITATIVE),
        preserve_ttl=_flag(raw, "preserve_ttl", True),
        filters=Filters(key_pattern=str(filters.get("key_pattern", "")), dbs=dbs, types=types),
        rate_limits=RateLimits(
            max_keys_per_second=_non_negative(limits.get("max_keys_per_second"),
                                              "setup.rate_limits.max_keys_per_second"),
            max_bytes_per_second=_non_negative(limits.get("max_bytes_per_second"),
                                               "setup.rate_limits.max_bytes_per_second"),
            max_pipeline_depth=_non_negative(limits.get("max_pipeline_depth"),
                                             "setup.rate_limits.max_pipeline_depth", MAX_PIPELINE_DEPTH),
        ),
        rollback_window_seconds=_duration_seconds(raw.get("rollback_window"), "setup.rollback_window"),
        interlay=str(raw.get("interlay") or ""),
        scripts_deterministic=_flag(raw, "scripts_deterministic", False),
        big_key_threshold_bytes=_non_negative(raw.get("big_key_threshold_bytes"), "setup.big_key_threshold_bytes"),
        restorers=_non_negative(raw.get("restorers"), "setup.restorers", MAX_RESTORERS),
        keyspace_notifications=_flag(raw, "keyspace_notifications", False),
        max_error_ratio=_ratio(raw.get("max_error_ratio"), "setup.max_error_ratio", DEFAULT_MAX_ERROR_RATIO),
    )
    if setup.online and not setup.interlay:
        raise ConfigError(f"strategy {setup.strategy.value} moves live traffic: name the interlay the applications "
                          "use instead of the source", field="setup.interlay")
    return setup


# -- the stored form ----------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(item) for item in value]
    return value


def _decode(cls: type, stored: Mapping[str, Any]) -> Any:
    """A dataclass from its stored dict, field by field by the field's type; a field the
    dict lacks (saved before the field existed) takes its default."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if item.name not in stored:
            continue
        kind, value = hints[item.name], stored[item.name]
        if isinstance(kind, type) and issubclass(kind, Enum):
            value = kind(value)
        elif isinstance(kind, type) and dataclasses.is_dataclass(kind):
            value = _decode(kind, value or {})
        elif typing.get_origin(kind) is tuple:
            value = tuple(value or ())
        values[item.name] = value
    return cls(**values)


# -- the endpoint snapshot ------------------------------------------------------------------------


_UNSET = object()


def _leaves(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_leaves(value, f"{path}."))
        else:
            out[path] = value
    return out


def describe_config_change(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """The fields that differ, as ``target.port: was 6379, now 6380``; a secret only as
    ``changed`` (values are shown as ``redact_config`` shows them, never a password)."""
    old, new = _leaves(saved), _leaves(current)
    old_shown = _leaves(endpoint_model.redact_config(saved))
    new_shown = _leaves(endpoint_model.redact_config(current))
    parts = []
    for path in sorted(set(old) | set(new)):
        before, after = old.get(path, _UNSET), new.get(path, _UNSET)
        if before == after:
            continue
        if endpoint_model.REDACTED in (old_shown.get(path), new_shown.get(path)):
            parts.append(f"{path}: changed")
            continue
        parts.append(f"{path}: was {'unset' if before is _UNSET else repr(before)}, "
                     f"now {'unset' if after is _UNSET else repr(after)}")
    return "; ".join(parts)


def endpoint_changes(endpoints: list[RunEndpointRecord], since: str) -> str:
    """Which endpoints differ from the run's snapshot, one phrase each ("endpoint 'dst'
    (target) changed <since> (target.port: was 6380, now 6381)"), passwords masked; empty
    when none did. Endpoints without a snapshot yet are not compared."""
    return "; ".join(
        f"endpoint {endpoint.endpoint!r} ({endpoint.role}) changed {since} "
        f"({describe_config_change(endpoint.snapshot, endpoint.config)})"
        for endpoint in endpoints if endpoint.snapshot is not None and endpoint.snapshot != endpoint.config)
