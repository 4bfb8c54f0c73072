import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    CREATED: _ClassVar[RunState]
    CONFIGURED: _ClassVar[RunState]
    PREPARING: _ClassVar[RunState]
    READY: _ClassVar[RunState]
    APPROVED: _ClassVar[RunState]
    COPYING: _ClassVar[RunState]
    SYNCING: _ClassVar[RunState]
    CUTTING_OVER: _ClassVar[RunState]
    CUT_OVER: _ClassVar[RunState]
    COMPLETED: _ClassVar[RunState]
    ROLLING_BACK: _ClassVar[RunState]
    ROLLED_BACK: _ClassVar[RunState]
    FAILED: _ClassVar[RunState]
    CANCELLED: _ClassVar[RunState]

class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_UNSPECIFIED: _ClassVar[Strategy]
    OFFLINE: _ClassVar[Strategy]
    ONLINE_CUTOVER: _ClassVar[Strategy]
    ONLINE_PHASED: _ClassVar[Strategy]

class DataMovementMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_MOVEMENT_MODE_UNSPECIFIED: _ClassVar[DataMovementMode]
    AUTO: _ClassVar[DataMovementMode]
    DUMP_RESTORE: _ClassVar[DataMovementMode]
    LOGICAL: _ClassVar[DataMovementMode]

class ConflictPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONFLICT_POLICY_UNSPECIFIED: _ClassVar[ConflictPolicy]
    REPLACE: _ClassVar[ConflictPolicy]
    NONE: _ClassVar[ConflictPolicy]
    MERGE: _ClassVar[ConflictPolicy]

class WriteConsistency(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WRITE_CONSISTENCY_UNSPECIFIED: _ClassVar[WriteConsistency]
    SOURCE_AUTHORITATIVE: _ClassVar[WriteConsistency]
    TARGET_AUTHORITATIVE: _ClassVar[WriteConsistency]
    BOTH_REQUIRED: _ClassVar[WriteConsistency]
    BEST_EFFORT: _ClassVar[WriteConsistency]

class ExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_FORMAT_UNSPECIFIED: _ClassVar[ExportFormat]
    JSONL: _ClassVar[ExportFormat]
    CSV: _ClassVar[ExportFormat]
RUN_STATE_UNSPECIFIED: RunState
CREATED: RunState
CONFIGURED: RunState
PREPARING: RunState
READY: RunState
APPROVED: RunState
COPYING: RunState
SYNCING: RunState
CUTTING_OVER: RunState
CUT_OVER: RunState
COMPLETED: RunState
ROLLING_BACK: RunState
ROLLED_BACK: RunState
FAILED: RunState
CANCELLED: RunState
STRATEGY_UNSPECIFIED: Strategy
OFFLINE: Strategy
ONLINE_CUTOVER: Strategy
ONLINE_PHASED: Strategy
DATA_MOVEMENT_MODE_UNSPECIFIED: DataMovementMode
AUTO: DataMovementMode
DUMP_RESTORE: DataMovementMode
LOGICAL: DataMovementMode
CONFLICT_POLICY_UNSPECIFIED: ConflictPolicy
REPLACE: ConflictPolicy
NONE: ConflictPolicy
MERGE: ConflictPolicy
WRITE_CONSISTENCY_UNSPECIFIED: WriteConsistency
SOURCE_AUTHORITATIVE: WriteConsistency
TARGET_AUTHORITATIVE: WriteConsistency
BOTH_REQUIRED: WriteConsistency
BEST_EFFORT: WriteConsistency
EXPORT_FORMAT_UNSPECIFIED: ExportFormat
JSONL: ExportFormat
CSV: ExportFormat

class Filters(_message.Message):
    __slots__ = ("key_pattern", "dbs", "types")
    KEY_PATTERN_FIELD_NUMBER: _ClassVar[int]
    DBS_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    key_pattern: str
    dbs: _containers.RepeatedScalarFieldContainer[int]
    types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key_pattern: _Optional[str] = ..., dbs: _Optional[_Iterable[int]] = ..., types: _Optional[_Iterable[str]] = ...) -> None: ...

class RateLimits(_message.Message):
    __slots__ = ("max_keys_per_second", "max_bytes_per_second", "max_pipeline_depth")
    MAX_KEYS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MAX_PIPELINE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    max_keys_per_second: int
    max_bytes_per_second: int
    max_pipeline_depth: int
    def __init__(self, max_keys_per_second: _Optional[int] = ..., max_bytes_per_second: _Optional[int] = ..., max_pipeline_depth: _Optional[int] = ...) -> None: ...

class RunSetup(_message.Message):
    __slots__ = ("source", "target", "mirror_targets", "strategy", "mode", "conflict_policy", "write_consistency", "preserve_ttl", "filters", "rate_limits", "rollback_window", "interlay", "scripts_deterministic", "big_key_threshold_bytes", "restorers", "keyspace_notifications", "max_error_ratio")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MIRROR_TARGETS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CONFLICT_POLICY_FIELD_NUMBER: _ClassVar[int]
    WRITE_CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    PRESERVE_TTL_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_WINDOW_FIELD_NUMBER: _ClassVar[int]
    INTERLAY_FIELD_NUMBER: _ClassVar[int]
    SCRIPTS_DETERMINISTIC_FIELD_NUMBER: _ClassVar[int]
    BIG_KEY_THRESHOLD_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESTORERS_FIELD_NUMBER: _ClassVar[int]
    KEYSPACE_NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATIO_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    mirror_targets: _containers.RepeatedScalarFieldContainer[str]
    strategy: Strategy
    mode: DataMovementMode
    conflict_policy: ConflictPolicy
    write_consistency: WriteConsistency
    preserve_ttl: bool
    filters: Filters
    rate_limits: RateLimits
    rollback_window: _duration_pb2.Duration
    interlay: str
    scripts_deterministic: bool
    big_key_threshold_bytes: int
    restorers: int
    keyspace_notifications: bool
    max_error_ratio: float
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ..., mirror_targets: _Optional[_Iterable[str]] = ..., strategy: _Optional[_Union[Strategy, str]] = ..., mode: _Optional[_Union[DataMovementMode, str]] = ..., conflict_policy: _Optional[_Union[ConflictPolicy, str]] = ..., write_consistency: _Optional[_Union[WriteConsistency, str]] = ..., preserve_ttl: _Optional[bool] = ..., filters: _Optional[_Union[Filters, _Mapping]] = ..., rate_limits: _Optional[_Union[RateLimits, _Mapping]] = ..., rollback_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., interlay: _Optional[str] = ..., scripts_deterministic: _Optional[bool] = ..., big_key_threshold_bytes: _Optional[int] = ..., restorers: _Optional[int] = ..., keyspace_notifications: _Optional[bool] = ..., max_error_ratio: _Optional[float] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("id", "state", "setup", "description", "failure_reason", "read_percent_target", "writes_on_target", "create_time", "update_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SETUP_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    READ_PERCENT_TARGET_FIELD_NUMBER: _ClassVar[int]
    WRITES_ON_TARGET_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: RunState
    setup: RunSetup
    description: str
    failure_reason: str
    read_percent_target: int
    writes_on_target: bool
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., setup: _Optional[_Union[RunSetup, _Mapping]] = ..., description: _Optional[str] = ..., failure_reason: _Optional[str] = ..., read_percent_target: _Optional[int] = ..., writes_on_target: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateRunRequest(_message.Message):
    __slots__ = ("id", "description")
    ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    description: str
    def __init__(self, id: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ...) -> None: ...

class SubmitSetupRequest(_message.Message):
    __slots__ = ("run", "setup")
    RUN_FIELD_NUMBER: _ClassVar[int]
    SETUP_FIELD_NUMBER: _ClassVar[int]
    run: str
    setup: RunSetup
    def __init__(self, run: _Optional[str] = ..., setup: _Optional[_Union[RunSetup, _Mapping]] = ...) -> None: ...

class PrepareRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class GetCompatibilityRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class CompatibilityIssue(_message.Message):
    __slots__ = ("id", "code", "blocking", "message", "evidence", "acknowledged", "notes")
    class EvidenceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    BLOCKING_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    code: str
    blocking: bool
    message: str
    evidence: _containers.ScalarMap[str, str]
    acknowledged: bool
    notes: str
    def __init__(self, id: _Optional[str] = ..., code: _Optional[str] = ..., blocking: _Optional[bool] = ..., message: _Optional[str] = ..., evidence: _Optional[_Mapping[str, str]] = ..., acknowledged: _Optional[bool] = ..., notes: _Optional[str] = ...) -> None: ...

class CompatibilityReport(_message.Message):
    __slots__ = ("issues", "compatible")
    ISSUES_FIELD_NUMBER: _ClassVar[int]
    COMPATIBLE_FIELD_NUMBER: _ClassVar[int]
    issues: _containers.RepeatedCompositeFieldContainer[CompatibilityIssue]
    compatible: bool
    def __init__(self, issues: _Optional[_Iterable[_Union[CompatibilityIssue, _Mapping]]] = ..., compatible: _Optional[bool] = ...) -> None: ...

class AcknowledgeIssueRequest(_message.Message):
    __slots__ = ("run", "issue_id", "notes")
    RUN_FIELD_NUMBER: _ClassVar[int]
    ISSUE_ID_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    run: str
    issue_id: str
    notes: str
    def __init__(self, run: _Optional[str] = ..., issue_id: _Optional[str] = ..., notes: _Optional[str] = ...) -> None: ...

class GetAnalysisRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class TypeStats(_message.Message):
    __slots__ = ("type", "keys", "memory_bytes")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    type: str
    keys: int
    memory_bytes: int
    def __init__(self, type: _Optional[str] = ..., keys: _Optional[int] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class DbStats(_message.Message):
    __slots__ = ("db", "keys", "keys_with_ttl", "types")
    DB_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    KEYS_WITH_TTL_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    db: int
    keys: int
    keys_with_ttl: int
    types: _containers.RepeatedCompositeFieldContainer[TypeStats]
    def __init__(self, db: _Optional[int] = ..., keys: _Optional[int] = ..., keys_with_ttl: _Optional[int] = ..., types: _Optional[_Iterable[_Union[TypeStats, _Mapping]]] = ...) -> None: ...

class BigKey(_message.Message):
    __slots__ = ("key", "key_text", "db", "type", "memory_bytes")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_TEXT_FIELD_NUMBER: _ClassVar[int]
    DB_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    key_text: str
    db: int
    type: str
    memory_bytes: int
    def __init__(self, key: _Optional[bytes] = ..., key_text: _Optional[str] = ..., db: _Optional[int] = ..., type: _Optional[str] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class TtlBucket(_message.Message):
    __slots__ = ("bucket", "keys")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    keys: int
    def __init__(self, bucket: _Optional[str] = ..., keys: _Optional[int] = ...) -> None: ...

class Analysis(_message.Message):
    __slots__ = ("dbs", "big_keys", "ttl_distribution", "module_types", "used_memory_bytes", "sampled", "sampled_keys", "search_indexes")
    DBS_FIELD_NUMBER: _ClassVar[int]
    BIG_KEYS_FIELD_NUMBER: _ClassVar[int]
    TTL_DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    MODULE_TYPES_FIELD_NUMBER: _ClassVar[int]
    USED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_KEYS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_INDEXES_FIELD_NUMBER: _ClassVar[int]
    dbs: _containers.RepeatedCompositeFieldContainer[DbStats]
    big_keys: _containers.RepeatedCompositeFieldContainer[BigKey]
    ttl_distribution: _containers.RepeatedCompositeFieldContainer[TtlBucket]
    module_types: _containers.RepeatedScalarFieldContainer[str]
    used_memory_bytes: int
    sampled: bool
    sampled_keys: int
    search_indexes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dbs: _Optional[_Iterable[_Union[DbStats, _Mapping]]] = ..., big_keys: _Optional[_Iterable[_Union[BigKey, _Mapping]]] = ..., ttl_distribution: _Optional[_Iterable[_Union[TtlBucket, _Mapping]]] = ..., module_types: _Optional[_Iterable[str]] = ..., used_memory_bytes: _Optional[int] = ..., sampled: _Optional[bool] = ..., sampled_keys: _Optional[int] = ..., search_indexes: _Optional[_Iterable[str]] = ...) -> None: ...

class GetTestRunRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class TypeResult(_message.Message):
    __slots__ = ("type", "keys", "ok", "failed", "transcoded", "logical")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    TRANSCODED_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_FIELD_NUMBER: _ClassVar[int]
    type: str
    keys: int
    ok: int
    failed: int
    transcoded: int
    logical: int
    def __init__(self, type: _Optional[str] = ..., keys: _Optional[int] = ..., ok: _Optional[int] = ..., failed: _Optional[int] = ..., transcoded: _Optional[int] = ..., logical: _Optional[int] = ...) -> None: ...

class TestRunReport(_message.Message):
    __slots__ = ("results", "errors", "seconds", "estimated_seconds")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TypeResult]
    errors: _containers.RepeatedScalarFieldContainer[str]
    seconds: float
    estimated_seconds: float
    def __init__(self, results: _Optional[_Iterable[_Union[TypeResult, _Mapping]]] = ..., errors: _Optional[_Iterable[str]] = ..., seconds: _Optional[float] = ..., estimated_seconds: _Optional[float] = ...) -> None: ...

class ApproveRequest(_message.Message):
    __slots__ = ("run", "notes")
    RUN_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    run: str
    notes: str
    def __init__(self, run: _Optional[str] = ..., notes: _Optional[str] = ...) -> None: ...

class SubscribeEventsRequest(_message.Message):
    __slots__ = ("run", "after_seq")
    RUN_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    run: str
    after_seq: int
    def __init__(self, run: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "run", "time", "type", "message", "state", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    seq: int
    run: str
    time: _timestamp_pb2.Timestamp
    type: str
    message: str
    state: RunState
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, seq: _Optional[int] = ..., run: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., type: _Optional[str] = ..., message: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetMetricsRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class RunMetrics(_message.Message):
    __slots__ = ("keys_scanned", "keys_restored", "keys_skipped", "keys_conflicting", "keys_failed", "bytes", "keys_per_second", "bytes_per_second", "eta_seconds", "source_keys", "dirty_backlog", "interlay_ops_per_second", "dirty_lag_seconds", "keys_recopied", "dual_write_failures", "authoritative", "noscript_replies", "cross_slot_commands")
    KEYS_SCANNED_FIELD_NUMBER: _ClassVar[int]
    KEYS_RESTORED_FIELD_NUMBER: _ClassVar[int]
    KEYS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    KEYS_CONFLICTING_FIELD_NUMBER: _ClassVar[int]
    KEYS_FAILED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    KEYS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KEYS_FIELD_NUMBER: _ClassVar[int]
    DIRTY_BACKLOG_FIELD_NUMBER: _ClassVar[int]
    INTERLAY_OPS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    DIRTY_LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    KEYS_RECOPIED_FIELD_NUMBER: _ClassVar[int]
    DUAL_WRITE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    AUTHORITATIVE_FIELD_NUMBER: _ClassVar[int]
    NOSCRIPT_REPLIES_FIELD_NUMBER: _ClassVar[int]
    CROSS_SLOT_COMMANDS_FIELD_NUMBER: _ClassVar[int]
    keys_scanned: int
    keys_restored: int
    keys_skipped: int
    keys_conflicting: int
    keys_failed: int
    bytes: int
    keys_per_second: float
    bytes_per_second: float
    eta_seconds: float
    source_keys: int
    dirty_backlog: int
    interlay_ops_per_second: float
    dirty_lag_seconds: float
    keys_recopied: int
    dual_write_failures: int
    authoritative: str
    noscript_replies: int
    cross_slot_commands: _containers.RepeatedCompositeFieldContainer[CrossSlotCommand]
    def __init__(self, keys_scanned: _Optional[int] = ..., keys_restored: _Optional[int] = ..., keys_skipped: _Optional[int] = ..., keys_conflicting: _Optional[int] = ..., keys_failed: _Optional[int] = ..., bytes: _Optional[int] = ..., keys_per_second: _Optional[float] = ..., bytes_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., source_keys: _Optional[int] = ..., dirty_backlog: _Optional[int] = ..., interlay_ops_per_second: _Optional[float] = ..., dirty_lag_seconds: _Optional[float] = ..., keys_recopied: _Optional[int] = ..., dual_write_failures: _Optional[int] = ..., authoritative: _Optional[str] = ..., noscript_replies: _Optional[int] = ..., cross_slot_commands: _Optional[_Iterable[_Union[CrossSlotCommand, _Mapping]]] = ...) -> None: ...

class CrossSlotCommand(_message.Message):
    __slots__ = ("command", "count", "examples", "fails_on_cluster")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    FAILS_ON_CLUSTER_FIELD_NUMBER: _ClassVar[int]
    command: str
    count: int
    examples: _containers.RepeatedScalarFieldContainer[str]
    fails_on_cluster: bool
    def __init__(self, command: _Optional[str] = ..., count: _Optional[int] = ..., examples: _Optional[_Iterable[str]] = ..., fails_on_cluster: _Optional[bool] = ...) -> None: ...

class ErrorKey(_message.Message):
    __slots__ = ("key", "key_text", "db", "node", "type", "size", "reason", "attempts", "first_seen", "last_seen")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_TEXT_FIELD_NUMBER: _ClassVar[int]
    DB_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    key_text: str
    db: int
    node: str
    type: str
    size: int
    reason: str
    attempts: int
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    def __init__(self, key: _Optional[bytes] = ..., key_text: _Optional[str] = ..., db: _Optional[int] = ..., node: _Optional[str] = ..., type: _Optional[str] = ..., size: _Optional[int] = ..., reason: _Optional[str] = ..., attempts: _Optional[int] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListErrorKeysRequest(_message.Message):
    __slots__ = ("run", "page_size", "page_token")
    RUN_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    run: str
    page_size: int
    page_token: str
    def __init__(self, run: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListErrorKeysResponse(_message.Message):
    __slots__ = ("error_keys", "next_page_token")
    ERROR_KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    error_keys: _containers.RepeatedCompositeFieldContainer[ErrorKey]
    next_page_token: str
    def __init__(self, error_keys: _Optional[_Iterable[_Union[ErrorKey, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExportErrorKeysRequest(_message.Message):
    __slots__ = ("run", "format")
    RUN_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    run: str
    format: ExportFormat
    def __init__(self, run: _Optional[str] = ..., format: _Optional[_Union[ExportFormat, str]] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class RetryErrorKeysRequest(_message.Message):
    __slots__ = ("run", "keys")
    RUN_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    run: str
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, run: _Optional[str] = ..., keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class RetryErrorKeysResponse(_message.Message):
    __slots__ = ("retried", "succeeded", "still_failing")
    RETRIED_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    STILL_FAILING_FIELD_NUMBER: _ClassVar[int]
    retried: int
    succeeded: int
    still_failing: int
    def __init__(self, retried: _Optional[int] = ..., succeeded: _Optional[int] = ..., still_failing: _Optional[int] = ...) -> None: ...

class SetTrafficRequest(_message.Message):
    __slots__ = ("run", "read_percent_target", "cutover_writes")
    RUN_FIELD_NUMBER: _ClassVar[int]
    READ_PERCENT_TARGET_FIELD_NUMBER: _ClassVar[int]
    CUTOVER_WRITES_FIELD_NUMBER: _ClassVar[int]
    run: str
    read_percent_target: int
    cutover_writes: bool
    def __init__(self, run: _Optional[str] = ..., read_percent_target: _Optional[int] = ..., cutover_writes: _Optional[bool] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("run", "ttl_tolerance_ms")
    RUN_FIELD_NUMBER: _ClassVar[int]
    TTL_TOLERANCE_MS_FIELD_NUMBER: _ClassVar[int]
    run: str
    ttl_tolerance_ms: int
    def __init__(self, run: _Optional[str] = ..., ttl_tolerance_ms: _Optional[int] = ...) -> None: ...

class KeyDifference(_message.Message):
    __slots__ = ("key", "key_text", "db", "kind", "detail")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_TEXT_FIELD_NUMBER: _ClassVar[int]
    DB_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    key_text: str
    db: int
    kind: str
    detail: str
    def __init__(self, key: _Optional[bytes] = ..., key_text: _Optional[str] = ..., db: _Optional[int] = ..., kind: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class VerifyReport(_message.Message):
    __slots__ = ("clean", "keys_compared", "missing", "extra", "different", "ttl_mismatch", "examples", "index_differences")
    CLEAN_FIELD_NUMBER: _ClassVar[int]
    KEYS_COMPARED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    DIFFERENT_FIELD_NUMBER: _ClassVar[int]
    TTL_MISMATCH_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    INDEX_DIFFERENCES_FIELD_NUMBER: _ClassVar[int]
    clean: bool
    keys_compared: int
    missing: int
    extra: int
    different: int
    ttl_mismatch: int
    examples: _containers.RepeatedCompositeFieldContainer[KeyDifference]
    index_differences: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, clean: _Optional[bool] = ..., keys_compared: _Optional[int] = ..., missing: _Optional[int] = ..., extra: _Optional[int] = ..., different: _Optional[int] = ..., ttl_mismatch: _Optional[int] = ..., examples: _Optional[_Iterable[_Union[KeyDifference, _Mapping]]] = ..., index_differences: _Optional[_Iterable[str]] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("run", "accept_differences", "notes")
    RUN_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_DIFFERENCES_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    run: str
    accept_differences: bool
    notes: str
    def __init__(self, run: _Optional[str] = ..., accept_differences: _Optional[bool] = ..., notes: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("run", "reason")
    RUN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run: str
    reason: str
    def __init__(self, run: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("run", "reason")
    RUN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run: str
    reason: str
    def __init__(self, run: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
