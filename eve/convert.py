"""Conversions between protobuf messages and Eve's domain values.

Protobuf types stop here and in ``eve.server``. Every endpoint config that leaves
the process passes through ``redact_config`` on the way.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from eve.endpoints import redact_config
from eve.store import EndpointRecord, InterlayRecord
from eve.v1 import common_pb2, endpoints_pb2, interlays_pb2
from proxy import resp

__all__ = ["message_to_dict", "endpoint_to_proto", "interlay_to_proto", "resp_to_proto", "timestamp"]


def message_to_dict(message: Message) -> dict[str, Any]:
    """Fields as set by the caller, with proto field names (``read_conn``)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def endpoint_to_proto(record: EndpointRecord) -> endpoints_pb2.Endpoint:
    config = json_format.ParseDict(redact_config(record.config), endpoints_pb2.EndpointConfig())
    return endpoints_pb2.Endpoint(
        endpoint=record.name, kind=record.kind, config=config, description=record.description,
        create_time=timestamp(record.create_time), update_time=timestamp(record.update_time))


def interlay_to_proto(record: InterlayRecord) -> interlays_pb2.Interlay:
    settings = interlays_pb2.InterlaySettings(
        max_concurrent_connections=record.settings.get("max_concurrent_connections"),
        listen_host=record.settings.get("listen_host", ""))
    return interlays_pb2.Interlay(
        id=record.id, endpoint=record.endpoint, port=record.port, settings=settings,
        state=interlays_pb2.InterlayState.Value(f"INTERLAY_{record.state}"),
        last_error=record.last_error,
        create_time=timestamp(record.create_time), update_time=timestamp(record.update_time))


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return ""


def resp_to_proto(value: Any) -> common_pb2.RespValue:
    """A typed ``proxy.resp`` value as a ``RespValue``, recursively."""
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
