import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from eve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Connection(_message.Message):
    __slots__ = ("host", "port", "tls", "protocol_version", "username", "password", "tls_ca_file", "tls_insecure_skip_verify", "tls_server_name")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    TLS_CA_FILE_FIELD_NUMBER: _ClassVar[int]
    TLS_INSECURE_SKIP_VERIFY_FIELD_NUMBER: _ClassVar[int]
    TLS_SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    tls: bool
    protocol_version: int
    username: str
    password: str
    tls_ca_file: str
    tls_insecure_skip_verify: bool
    tls_server_name: str
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ..., tls: _Optional[bool] = ..., protocol_version: _Optional[int] = ..., username: _Optional[str] = ..., password: _Optional[str] = ..., tls_ca_file: _Optional[str] = ..., tls_insecure_skip_verify: _Optional[bool] = ..., tls_server_name: _Optional[str] = ...) -> None: ...

class Credentials(_message.Message):
    __slots__ = ("username", "password")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class ConnectionPool(_message.Message):
    __slots__ = ("multiplexed_connections",)
    MULTIPLEXED_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    multiplexed_connections: int
    def __init__(self, multiplexed_connections: _Optional[int] = ...) -> None: ...

class EndpointConfig(_message.Message):
    __slots__ = ("read_conn", "write_conn", "admin_conn", "target", "read_credentials", "write_credentials", "admin_credentials", "connection_pool")
    READ_CONN_FIELD_NUMBER: _ClassVar[int]
    WRITE_CONN_FIELD_NUMBER: _ClassVar[int]
    ADMIN_CONN_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    READ_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    WRITE_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    ADMIN_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_POOL_FIELD_NUMBER: _ClassVar[int]
    read_conn: Connection
    write_conn: Connection
    admin_conn: Connection
    target: Connection
    read_credentials: Credentials
    write_credentials: Credentials
    admin_credentials: Credentials
    connection_pool: ConnectionPool
    def __init__(self, read_conn: _Optional[_Union[Connection, _Mapping]] = ..., write_conn: _Optional[_Union[Connection, _Mapping]] = ..., admin_conn: _Optional[_Union[Connection, _Mapping]] = ..., target: _Optional[_Union[Connection, _Mapping]] = ..., read_credentials: _Optional[_Union[Credentials, _Mapping]] = ..., write_credentials: _Optional[_Union[Credentials, _Mapping]] = ..., admin_credentials: _Optional[_Union[Credentials, _Mapping]] = ..., connection_pool: _Optional[_Union[ConnectionPool, _Mapping]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("endpoint", "kind", "config", "description", "create_time", "update_time")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    kind: str
    config: EndpointConfig
    description: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, endpoint: _Optional[str] = ..., kind: _Optional[str] = ..., config: _Optional[_Union[EndpointConfig, _Mapping]] = ..., description: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateEndpointRequest(_message.Message):
    __slots__ = ("endpoint", "kind", "config", "description")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    kind: str
    config: EndpointConfig
    description: str
    def __init__(self, endpoint: _Optional[str] = ..., kind: _Optional[str] = ..., config: _Optional[_Union[EndpointConfig, _Mapping]] = ..., description: _Optional[str] = ...) -> None: ...

class GetEndpointRequest(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    def __init__(self, endpoint: _Optional[str] = ...) -> None: ...

class ListEndpointsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListEndpointsResponse(_message.Message):
    __slots__ = ("endpoints",)
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class UpdateEndpointRequest(_message.Message):
    __slots__ = ("endpoint", "kind", "config", "description")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    kind: str
    config: EndpointConfig
    description: str
    def __init__(self, endpoint: _Optional[str] = ..., kind: _Optional[str] = ..., config: _Optional[_Union[EndpointConfig, _Mapping]] = ..., description: _Optional[str] = ...) -> None: ...

class DeleteEndpointRequest(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    def __init__(self, endpoint: _Optional[str] = ...) -> None: ...

class DeleteEndpointResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CommandRequest(_message.Message):
    __slots__ = ("endpoint", "command", "command_bytes", "db", "timeout_seconds")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    COMMAND_BYTES_FIELD_NUMBER: _ClassVar[int]
    DB_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    command: _containers.RepeatedScalarFieldContainer[str]
    command_bytes: _containers.RepeatedScalarFieldContainer[bytes]
    db: int
    timeout_seconds: float
    def __init__(self, endpoint: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., command_bytes: _Optional[_Iterable[bytes]] = ..., db: _Optional[int] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class CommandResponse(_message.Message):
    __slots__ = ("reply", "role", "address")
    REPLY_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    reply: _common_pb2.RespValue
    role: str
    address: str
    def __init__(self, reply: _Optional[_Union[_common_pb2.RespValue, _Mapping]] = ..., role: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...
