import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InterlayState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTERLAY_STATE_UNSPECIFIED: _ClassVar[InterlayState]
    INTERLAY_STOPPED: _ClassVar[InterlayState]
    INTERLAY_STARTING: _ClassVar[InterlayState]
    INTERLAY_RUNNING: _ClassVar[InterlayState]
    INTERLAY_STOPPING: _ClassVar[InterlayState]
    INTERLAY_FAILED: _ClassVar[InterlayState]
INTERLAY_STATE_UNSPECIFIED: InterlayState
INTERLAY_STOPPED: InterlayState
INTERLAY_STARTING: InterlayState
INTERLAY_RUNNING: InterlayState
INTERLAY_STOPPING: InterlayState
INTERLAY_FAILED: InterlayState

class InterlaySettings(_message.Message):
    __slots__ = ("max_concurrent_connections", "listen_host", "output_buffer_hard_limit_bytes", "output_buffer_soft_limit_bytes", "output_buffer_soft_seconds", "stuck_connection_ms", "tls_cert_file", "tls_key_file", "tls_ca_file")
    MAX_CONCURRENT_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    LISTEN_HOST_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BUFFER_HARD_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BUFFER_SOFT_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BUFFER_SOFT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STUCK_CONNECTION_MS_FIELD_NUMBER: _ClassVar[int]
    TLS_CERT_FILE_FIELD_NUMBER: _ClassVar[int]
    TLS_KEY_FILE_FIELD_NUMBER: _ClassVar[int]
    TLS_CA_FILE_FIELD_NUMBER: _ClassVar[int]
    max_concurrent_connections: int
    listen_host: str
    output_buffer_hard_limit_bytes: int
    output_buffer_soft_limit_bytes: int
    output_buffer_soft_seconds: float
    stuck_connection_ms: int
    tls_cert_file: str
    tls_key_file: str
    tls_ca_file: str
    def __init__(self, max_concurrent_connections: _Optional[int] = ..., listen_host: _Optional[str] = ..., output_buffer_hard_limit_bytes: _Optional[int] = ..., output_buffer_soft_limit_bytes: _Optional[int] = ..., output_buffer_soft_seconds: _Optional[float] = ..., stuck_connection_ms: _Optional[int] = ..., tls_cert_file: _Optional[str] = ..., tls_key_file: _Optional[str] = ..., tls_ca_file: _Optional[str] = ...) -> None: ...

class BackendStats(_message.Message):
    __slots__ = ("backend", "ops", "errors", "p50_ms", "p99_ms", "latency_bucket_bounds_seconds", "latency_bucket_counts", "latency_sum_seconds")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUCKET_BOUNDS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUCKET_COUNTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SUM_SECONDS_FIELD_NUMBER: _ClassVar[int]
    backend: str
    ops: int
    errors: int
    p50_ms: float
    p99_ms: float
    latency_bucket_bounds_seconds: _containers.RepeatedScalarFieldContainer[float]
    latency_bucket_counts: _containers.RepeatedScalarFieldContainer[int]
    latency_sum_seconds: float
    def __init__(self, backend: _Optional[str] = ..., ops: _Optional[int] = ..., errors: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., latency_bucket_bounds_seconds: _Optional[_Iterable[float]] = ..., latency_bucket_counts: _Optional[_Iterable[int]] = ..., latency_sum_seconds: _Optional[float] = ...) -> None: ...

class DualWriteStats(_message.Message):
    __slots__ = ("side", "writes", "failures", "last_error")
    SIDE_FIELD_NUMBER: _ClassVar[int]
    WRITES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    side: str
    writes: int
    failures: int
    last_error: str
    def __init__(self, side: _Optional[str] = ..., writes: _Optional[int] = ..., failures: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class InterlayStats(_message.Message):
    __slots__ = ("connections", "ops_per_second", "errors", "backends", "dual_writes", "dirty_keys_pending", "noscript_replies")
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    OPS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    DUAL_WRITES_FIELD_NUMBER: _ClassVar[int]
    DIRTY_KEYS_PENDING_FIELD_NUMBER: _ClassVar[int]
    NOSCRIPT_REPLIES_FIELD_NUMBER: _ClassVar[int]
    connections: int
    ops_per_second: float
    errors: int
    backends: _containers.RepeatedCompositeFieldContainer[BackendStats]
    dual_writes: _containers.RepeatedCompositeFieldContainer[DualWriteStats]
    dirty_keys_pending: int
    noscript_replies: int
    def __init__(self, connections: _Optional[int] = ..., ops_per_second: _Optional[float] = ..., errors: _Optional[int] = ..., backends: _Optional[_Iterable[_Union[BackendStats, _Mapping]]] = ..., dual_writes: _Optional[_Iterable[_Union[DualWriteStats, _Mapping]]] = ..., dirty_keys_pending: _Optional[int] = ..., noscript_replies: _Optional[int] = ...) -> None: ...

class Interlay(_message.Message):
    __slots__ = ("id", "endpoint", "port", "settings", "state", "listener_ports", "stats", "last_error", "create_time", "update_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LISTENER_PORTS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    endpoint: str
    port: int
    settings: InterlaySettings
    state: InterlayState
    listener_ports: _containers.RepeatedScalarFieldContainer[int]
    stats: InterlayStats
    last_error: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., endpoint: _Optional[str] = ..., port: _Optional[int] = ..., settings: _Optional[_Union[InterlaySettings, _Mapping]] = ..., state: _Optional[_Union[InterlayState, str]] = ..., listener_ports: _Optional[_Iterable[int]] = ..., stats: _Optional[_Union[InterlayStats, _Mapping]] = ..., last_error: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateInterlayRequest(_message.Message):
    __slots__ = ("id", "endpoint", "port", "settings")
    ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    endpoint: str
    port: int
    settings: InterlaySettings
    def __init__(self, id: _Optional[str] = ..., endpoint: _Optional[str] = ..., port: _Optional[int] = ..., settings: _Optional[_Union[InterlaySettings, _Mapping]] = ...) -> None: ...

class GetInterlayRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListInterlaysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListInterlaysResponse(_message.Message):
    __slots__ = ("interlays",)
    INTERLAYS_FIELD_NUMBER: _ClassVar[int]
    interlays: _containers.RepeatedCompositeFieldContainer[Interlay]
    def __init__(self, interlays: _Optional[_Iterable[_Union[Interlay, _Mapping]]] = ...) -> None: ...

class DeleteInterlayRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteInterlayResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StartInterlayRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class StopInterlayRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...
