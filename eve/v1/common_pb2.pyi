from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RespValue(_message.Message):
    __slots__ = ("simple_string", "bulk_string", "integer", "double", "nil", "array", "map", "error", "boolean", "big_number", "set", "push", "verbatim", "text")
    SIMPLE_STRING_FIELD_NUMBER: _ClassVar[int]
    BULK_STRING_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_FIELD_NUMBER: _ClassVar[int]
    NIL_FIELD_NUMBER: _ClassVar[int]
    ARRAY_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BOOLEAN_FIELD_NUMBER: _ClassVar[int]
    BIG_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    VERBATIM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    simple_string: str
    bulk_string: bytes
    integer: int
    double: float
    nil: bool
    array: RespList
    map: RespMap
    error: str
    boolean: bool
    big_number: str
    set: RespList
    push: RespList
    verbatim: Verbatim
    text: str
    def __init__(self, simple_string: _Optional[str] = ..., bulk_string: _Optional[bytes] = ..., integer: _Optional[int] = ..., double: _Optional[float] = ..., nil: _Optional[bool] = ..., array: _Optional[_Union[RespList, _Mapping]] = ..., map: _Optional[_Union[RespMap, _Mapping]] = ..., error: _Optional[str] = ..., boolean: _Optional[bool] = ..., big_number: _Optional[str] = ..., set: _Optional[_Union[RespList, _Mapping]] = ..., push: _Optional[_Union[RespList, _Mapping]] = ..., verbatim: _Optional[_Union[Verbatim, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class RespList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RespValue]
    def __init__(self, items: _Optional[_Iterable[_Union[RespValue, _Mapping]]] = ...) -> None: ...

class RespMap(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[RespMapEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[RespMapEntry, _Mapping]]] = ...) -> None: ...

class RespMapEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: RespValue
    value: RespValue
    def __init__(self, key: _Optional[_Union[RespValue, _Mapping]] = ..., value: _Optional[_Union[RespValue, _Mapping]] = ...) -> None: ...

class Verbatim(_message.Message):
    __slots__ = ("format", "value")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    format: str
    value: bytes
    def __init__(self, format: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
