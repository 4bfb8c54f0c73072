"""The REST/JSON API of ``eve serve --http``: the gRPC services over HTTP, route by route as the
protos declare them (``google.api.http`` options in proto/eve/v1), transcoded by one generic
handler rather than a hand-written route per call.

- **Routes** come from the method descriptors: ``{field}`` in a path template binds that request
  field; ``body: "*"`` takes the other fields from a JSON object, ``body: "setup"`` takes that
  one field from the whole body; with no body, fields come from the query string
  (``?after_seq=12``). A key the request type does not have is a 400 naming it, so a typo never
  passes silently as a default. Every route is served under ``/api/v1`` as declared, and also
  without that prefix, so ``$EDEN`` may be the server's root or its ``/api/v1``.
- **Replies** are ``json_format`` with proto field names, zero values shown and int64 as
  numbers (``convert.reply_to_dict``). ``response_body`` names the field sent alone: the
  bytes of ``ExportErrorKeys`` arrive as the file they are.
- **Streams** (``SubscribeEvents``): server-sent events with ``Accept: text/event-stream``
  (``id:`` is the event's ``seq``, and ``Last-Event-ID`` resumes after it, as EventSource
  does), else JSON Lines; either resumes with ``?after_seq=N``.
- **Errors**: the status the gRPC server would give (``interceptors.failure``) turned into an
  HTTP status by ``HTTP_STATUS``, the one table, with a body
  ``{"error": {"code": 404, "status": "NOT_FOUND", "message": "..."}}``.
- **Auth**: with a token, every request needs ``Authorization: Bearer <token>`` (the gRPC
  check, ``interceptors.bearer_matches``).

The servicers are the very objects the gRPC server runs, called in-process on worker threads
with a ``LocalCallContext``: no second listener, no serialization round trip, and TLS needs
no client certificate of its own. The server is uvicorn (ASGI, h11) on a thread of the
coordinator, under starlette's routing; ``/metrics`` (Prometheus) is served beside the API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.api import annotations_pb2
from google.protobuf import descriptor as descriptor_mod
from google.protobuf import message_factory
from google.protobuf.message import Message
from opentelemetry import trace
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from eve.api.context import CallAborted, LocalCallContext
from eve.api.convert import parse_json, reply_to_dict, secret_values
from eve.api.interceptors import bearer_matches, failure
from eve.api.tls import TlsFiles
from eve.core.errors import ConfigError

__all__ = ["API_PREFIX", "HTTP_STATUS", "HttpRoute", "HttpServer", "build_app", "http_routes"]

log = logging.getLogger("eve.api.http")

API_PREFIX = "/api/v1"
# A stream's first message is awaited this long before the headers go out, so that a stream
# that fails at once (an unknown run) is answered with its status rather than a 200 and an error line.
FIRST_MESSAGE_WAIT_SECONDS = 1.0
SHUTDOWN_GRACE_SECONDS = 5  # as the gRPC server's stop(grace=5)
# Server-sent events: a streamed message's field that becomes the event id, and the request
# field that Last-Event-ID fills, so an EventSource that reconnects resumes without a gap.
SSE_ID_FIELD = "seq"
SSE_RESUME_FIELD = "after_seq"
JSON_LINES = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"
TOKEN_REQUIRED = "missing or invalid token: send the header 'Authorization: Bearer <token>'"
# The gRPC server takes messages of up to 4 MiB; a JSON body says the same in up to about twice
# that (base64 for bytes, field names).
MAX_BODY_BYTES = 8 * 1024 * 1024
# How deep a JSON body may nest (objects and arrays). Eve's deepest request is a few levels;
# the protobuf JSON parser stops at 100. A deeper body is a 400 saying so, never a
# RecursionError (issue 19).
MAX_JSON_DEPTH = 64

# gRPC status -> HTTP status, the one table. FAILED_PRECONDITION is 409: the request conflicts
# with the state of the run, endpoint or interlay (approve before prepare, delete an endpoint in use).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

_VERBS = ("get", "put", "post", "delete", "patch")
_INTEGER_TYPES = {descriptor_mod.FieldDescriptor.TYPE_INT32, descriptor_mod.FieldDescriptor.TYPE_INT64,
                  descriptor_mod.FieldDescriptor.TYPE_UINT32, descriptor_mod.FieldDescriptor.TYPE_UINT64,
                  descriptor_mod.FieldDescriptor.TYPE_SINT32, descriptor_mod.FieldDescriptor.TYPE_SINT64,
                  descriptor_mod.FieldDescriptor.TYPE_FIXED32, descriptor_mod.FieldDescriptor.TYPE_FIXED64,
                  descriptor_mod.FieldDescriptor.TYPE_SFIXED32, descriptor_mod.FieldDescriptor.TYPE_SFIXED64}
_FLOAT_TYPES = {descriptor_mod.FieldDescriptor.TYPE_FLOAT, descriptor_mod.FieldDescriptor.TYPE_DOUBLE}


# -- routes from the descriptors ------------------------------------------------------------------


@dataclass(frozen=True)
class HttpRoute:
    """One ``google.api.http`` binding of one rpc, and the servicer method that answers it."""

    verb: str                 # "GET", "POST", ...
    template: str             # "/api/v1/runs/{run}/approve"
    method: Any               # the rpc's MethodDescriptor
    body: str                 # "" (none: the query string), "*" (every other field) or one field's name
    response_body: str        # "" (the whole reply) or the reply's field sent alone
    call: Callable[[Message, LocalCallContext], Any]
    request_type: type[Message]

    @property
    def rpc(self) -> str:
        return f"{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def streaming(self) -> bool:
        return bool(self.method.server_streaming)


def http_routes(servicers: Iterable[tuple[Any, Any]]) -> list[HttpRoute]:
    """Every binding declared on the services: ``servicers`` pairs a ServiceDescriptor with the
    servicer object whose methods (named as the rpcs) answer it."""
    routes = []
    for service, servicer in servicers:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            rule = options.Extensions[annotations_pb2.http]
            request_type = message_factory.GetMessageClass(method.input_type)
            for binding in (rule, *rule.additional_bindings):
                verb = binding.WhichOneof("pattern")
                if verb not in _VERBS:
                    raise ValueError(f"{method.full_name}: HTTP pattern {verb!r} is not supported")
                routes.append(HttpRoute(
                    verb=verb.upper(), template=getattr(binding, verb), method=method, body=binding.body,
                    response_body=binding.response_body or rule.response_body,
                    call=getattr(servicer, method.name), request_type=request_type))
    return routes


def _starlette_path(template: str) -> str:
    """``/runs/{run}`` as starlette writes it; a dotted binding ``{setup.source}`` becomes the
    parameter ``setup__source``. Wildcard bindings (``{name=**}``) are not used by Eve's protos."""
    out, rest = [], template
    while "{" in rest:
        before, _, rest = rest.partition("{")
        name, _, rest = rest.partition("}")
        if "=" in name or "*" in name:
            raise ValueError(f"{template}: only plain {{field}} bindings are supported")
        out += [before, "{", name.replace(".", "__"), "}"]
    return "".join(out) + rest


# -- request -> message ---------------------------------------------------------------------------


def _bind(document: dict[str, Any], dotted: str, value: Any, *, where: str) -> None:
    """Sets ``document[a][b] = value`` for ``a.b``; a value already there must be the same one."""
    *parents, last = dotted.split(".")
    node = document
    for name in parents:
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            raise ConfigError(f"is bound by the {where} and must be an object in the body", field=name)
        node = child
    if last in node and node[last] != value:
        raise ConfigError(f"the {where} says {value!r} and the body {node[last]!r}", field=dotted)
    node[last] = value


def _query_field(descriptor: Any, dotted: str) -> Any:
    field = None
    for name in dotted.split("."):
        if descriptor is None:
            field = None
            break
        field = descriptor.fields_by_name.get(name)
        if field is None:
            break
        descriptor = field.message_type
    if field is None:
        known = ", ".join(f.name for f in descriptor.fields) if descriptor is not None else ""
        raise ConfigError(f"unknown query parameter (the request has: {known})", field=dotted)
    return field


def _query_value(field: Any, text: str, dotted: str) -> Any:
    kind = field.type
    if kind == descriptor_mod.FieldDescriptor.TYPE_BOOL:
        if text.lower() in ("true", "1"):
            return True
        if text.lower() in ("false", "0"):
            return False
        raise ConfigError(f"must be true or false, got {text!r}", field=dotted)
    try:
        if kind in _INTEGER_TYPES:
            return int(text)
        if kind in _FLOAT_TYPES:
            return float(text)
    except ValueError:
        raise ConfigError(f"must be a number, got {text!r}", field=dotted) from None
    if kind == descriptor_mod.FieldDescriptor.TYPE_MESSAGE and \
            not field.message_type.full_name.startswith("google.protobuf."):
        raise ConfigError("is a message: send it in a JSON body, not in the query string", field=dotted)
    return text  # strings, bytes (base64), enums by name, Timestamp/Duration in their JSON form


def _is_repeated(field: Any) -> bool:
    # FieldDescriptor.is_repeated (protobuf 6+); ``label`` before it.
    repeated = getattr(field, "is_repeated", None)
    return bool(repeated) if repeated is not None else field.label == descriptor_mod.FieldDescriptor.LABEL_REPEATED


class BodyTooLarge(Exception):
    pass


async def _read_body(request: Request) -> bytes:
    """The body, refused past MAX_BODY_BYTES (also when it comes chunked, without a length)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


_TOO_DEEP = f"the body nests objects and arrays deeper than {MAX_JSON_DEPTH} levels, the limit"


def _depth(value: Any) -> int:
    """How deep ``value`` nests objects and arrays (a scalar is 0), without recursion; stops
    counting past the limit."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if level > deepest:
            deepest = level
            if deepest > MAX_JSON_DEPTH:
                break
        stack.extend((child, level + 1) for child in children)
    return deepest


async def _request_message(route: HttpRoute, request: Request) -> Message:
    raw = await _read_body(request)
    document: dict[str, Any] = {}
    if raw.strip():
        if not route.body:
            raise ConfigError(f"{route.verb} {route.template} takes no body: its fields go in the path and the "
                              "query string")
        try:
            parsed = json.loads(raw)
        except RecursionError:
            raise ConfigError(_TOO_DEEP) from None
        except UnicodeDecodeError:
            raise ConfigError("the body is not UTF-8 JSON") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"the body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        if _depth(parsed) > MAX_JSON_DEPTH:
            raise ConfigError(_TOO_DEEP)
        if route.body == "*":
            if not isinstance(parsed, dict):
                raise ConfigError(f"the body must be a JSON object, got {type(parsed).__name__}")
            document = parsed
        else:
            document = {route.body: parsed}
    bound = set()
    for name, value in request.path_params.items():
        dotted = name.replace("__", ".")
        _bind(document, dotted, value, where="path")
        bound.add(dotted)
    descriptor = route.request_type.DESCRIPTOR
    for key in dict.fromkeys(request.query_params.keys()):
        if route.body == "*":
            raise ConfigError(f"{route.verb} {route.template} takes its fields in the JSON body, not the query "
                              "string", field=key)
        if key in bound or (route.body and key.split(".")[0] == route.body):
            raise ConfigError("is given by the path or the body already", field=key)
        field = _query_field(descriptor, key)
        values = [_query_value(field, text, key) for text in request.query_params.getlist(key)]
        if not _is_repeated(field) and len(values) > 1:
            raise ConfigError(f"is given {len(values)} times and takes one value", field=key)
        _bind(document, key, values if _is_repeated(field) else values[0], where="query string")
    last_event_id = request.headers.get("last-event-id")
    if last_event_id and SSE_RESUME_FIELD in descriptor.fields_by_name and SSE_RESUME_FIELD not in document:
        if not last_event_id.isdigit():
            raise ConfigError(f"Last-Event-ID must be an event's seq, got {last_event_id!r}")
        document[SSE_RESUME_FIELD] = int(last_event_id)
    return parse_json(document, route.request_type(), secrets=secret_values(document))


# -- message -> response --------------------------------------------------------------------------


def _json_bytes(value: Any, *, indent: int | None = 2) -> bytes:
    return (json.dumps(value, indent=indent, ensure_ascii=False) + "\n").encode()


def error_response(code: grpc.StatusCode, message: str, *, http_status: int | None = None,
                   headers: Mapping[str, str] | None = None) -> Response:
    """The error body with the HTTP status of ``code`` (``http_status`` where the HTTP layer
    itself says more precisely what went wrong: 405, 413)."""
    status = http_status or HTTP_STATUS.get(code, 500)
    extra = dict(headers or {})
    if code is grpc.StatusCode.UNAUTHENTICATED:
        extra["WWW-Authenticate"] = "Bearer"
    return Response(_json_bytes(_error_body(code, message, status)), status_code=status,
                    media_type="application/json", headers=extra or None)


def _error_body(code: grpc.StatusCode, message: str, http_status: int | None = None) -> dict[str, Any]:
    return {"error": {"code": http_status or HTTP_STATUS.get(code, 500), "status": code.name, "message": message}}


def _failure(exc: BaseException, rpc: str, context: LocalCallContext | None = None) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, CallAborted):
        return exc.code, exc.details
    if isinstance(exc, NotImplementedError) and context is not None and context.code() is not None:
        return context.code(), context.details()  # a generated base class: UNIMPLEMENTED and its words
    return failure(exc, rpc)


def _field_value(message: Message, name: str) -> Any:
    value = getattr(message, name)
    return reply_to_dict(value) if isinstance(value, Message) else value


def _render(route: HttpRoute, reply: Message) -> Response:
    if route.response_body:
        value = _field_value(reply, route.response_body)
        if isinstance(value, bytes):
            return Response(value, media_type="application/octet-stream")
        return Response(_json_bytes(value), media_type="application/json")
    return Response(_json_bytes(reply_to_dict(reply)), media_type="application/json")


class _StreamEncoder:
    """How one stream's messages are written: raw bytes (``response_body`` of a bytes field),
    server-sent events, or JSON Lines."""

    def __init__(self, route: HttpRoute, accept: str) -> None:
        self.route = route
        self.raw = bool(route.response_body) and \
            route.method.output_type.fields_by_name[route.response_body].type == \
            descriptor_mod.FieldDescriptor.TYPE_BYTES
        self.sse = not self.raw and EVENT_STREAM in accept
        self.media_type = "application/octet-stream" if self.raw else EVENT_STREAM if self.sse else JSON_LINES
        self.has_id = SSE_ID_FIELD in route.method.output_type.fields_by_name

    def message(self, message: Message) -> bytes:
        if self.raw:
            return getattr(message, self.route.response_body)
        value = _field_value(message, self.route.response_body) if self.route.response_body else \
            reply_to_dict(message)
        if not self.sse:
            return _json_bytes(value, indent=None)
        head = f"id: {getattr(message, SSE_ID_FIELD)}\n" if self.has_id else ""
        return f"{head}data: {json.dumps(value, ensure_ascii=False)}\n\n".encode()

    def error(self, code: grpc.StatusCode, message: str) -> bytes:
        if self.raw:
            return b""  # a file cannot carry an error after its first bytes: the log has it
        if self.sse:
            return f"event: error\ndata: {json.dumps(_error_body(code, message), ensure_ascii=False)}\n\n".encode()
        return _json_bytes(_error_body(code, message), indent=None)


_END = object()


def _advance(iterator: Iterator[Any]) -> Any:
    try:
        return next(iterator)
    except StopIteration:
        return _END


async def _close_after(pending: Any, iterator: Iterator[Any]) -> None:
    try:
        await pending
    except Exception as exc:  # noqa: BLE001 - said in the stream already, or nobody is listening any more
        log.debug("stream ended with %s", exc)
    close = getattr(iterator, "close", None)
    if close is not None:
        await run_in_threadpool(close)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (once the body was read, ``receive`` says nothing else)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# -- the application ------------------------------------------------------------------------------


class _Api:
    """The handlers of the declared routes, and the calls in flight (ended when the listener stops)."""

    def __init__(self, routes: list[HttpRoute], token: str | None, tracer: trace.Tracer) -> None:
        self.routes = routes
        self.token = token
        self.tracer = tracer
        self._lock = threading.Lock()
        self._calls: set[LocalCallContext] = set()
        self._cleanups: set[asyncio.Future[None]] = set()

    def authorized(self, request: Request) -> bool:
        return not self.token or bearer_matches(self.token, request.headers.get("authorization", ""))

    def _open(self, route: HttpRoute, request: Request) -> LocalCallContext:
        client = request.client
        context = LocalCallContext(route.rpc, peer=f"{client.host}:{client.port}" if client else "")
        with self._lock:
            self._calls.add(context)
        return context

    def _close(self, context: LocalCallContext) -> None:
        context.end()
        with self._lock:
            self._calls.discard(context)

    def close(self) -> None:
        """Ends every call in flight: event streams stop following, direct calls drop their connection."""
        with self._lock:
            calls = list(self._calls)
        for context in calls:
            context.end()

    def handler(self, route: HttpRoute) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            if not self.authorized(request):
                return error_response(grpc.StatusCode.UNAUTHENTICATED, TOKEN_REQUIRED)
            span = self.tracer.start_span(route.rpc, kind=trace.SpanKind.SERVER, attributes={
                "rpc.system": "http", "rpc.method": route.method.name,
                "rpc.service": route.method.containing_service.full_name,
                "http.request.method": route.verb, "http.route": route.template})
            try:
                message = await _request_message(route, request)
            except ConfigError as exc:
                span.end()
                return error_response(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except BodyTooLarge:
                span.end()
                return error_response(grpc.StatusCode.RESOURCE_EXHAUSTED, "the body is larger than "
                                      f"{MAX_BODY_BYTES // (1024 * 1024)} MiB", http_status=413)
            context = self._open(route, request)
            if route.streaming:
                return await self._stream(route, message, context, request, span)
            try:
                with trace.use_span(span, end_on_exit=True):
                    reply = await self._unary(route, message, context, request)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status, as over gRPC
                return error_response(*_failure(exc, route.rpc, context))
            finally:
                self._close(context)
            return _render(route, reply)

        return endpoint

    async def _unary(self, route: HttpRoute, message: Message, context: LocalCallContext,
                     request: Request) -> Message:
        call = asyncio.ensure_future(run_in_threadpool(route.call, message, context))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({call, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not call.done():
                # The caller went away: end the call as grpc does, so a direct call's connection is
                # shut and a blocking command nobody waits for takes nothing later.
                context.end()
            return await call
        finally:
            gone.cancel()

    async def _stream(self, route: HttpRoute, message: Message, context: LocalCallContext, request: Request,
                      span: trace.Span) -> Response:
        encoder = _StreamEncoder(route, request.headers.get("accept", ""))
        try:
            iterator = iter(await run_in_threadpool(route.call, message, context))
            first = asyncio.ensure_future(run_in_threadpool(_advance, iterator))
            await asyncio.wait_for(asyncio.shield(first), FIRST_MESSAGE_WAIT_SECONDS)
        except TimeoutError:
            pass  # nothing to send yet (no new event): the headers go out, the stream follows
        except Exception as exc:  # noqa: BLE001 - a stream that fails at once is answered with its status
            self._close(context)
            span.end()
            return error_response(*_failure(exc, route.rpc, context))

        async def body() -> AsyncIterator[bytes]:
            gone = asyncio.ensure_future(_disconnected(request))
            gone.add_done_callback(lambda _: context.end())  # is_active() turns False: the servicer stops
            pending: Any = first
            try:
                while True:
                    try:
                        # Shielded: when the client goes, this generator is cancelled, but the next()
                        # running on a worker thread cannot be; _close_after waits for it.
                        item = await asyncio.shield(pending)
                    except Exception as exc:  # noqa: BLE001 - said in the stream's own format
                        code, text = _failure(exc, route.rpc, context)
                        log.warning("%s over HTTP ended with %s: %s", route.rpc, code.name, text)
                        yield encoder.error(code, text)
                        return
                    if item is _END or not context.is_active():
                        return
                    yield encoder.message(item)
                    pending = asyncio.ensure_future(run_in_threadpool(_advance, iterator))
            finally:
                gone.cancel()
                self._close(context)
                span.end()
                # The servicer's generator is closed once the next() in flight returns (it notices
                # is_active() soon), so whatever it holds is released now, not at garbage collection.
                cleanup = asyncio.ensure_future(_close_after(pending, iterator))
                self._cleanups.add(cleanup)  # the loop holds tasks weakly
                cleanup.add_done_callback(self._cleanups.discard)

        return StreamingResponse(body(), media_type=encoder.media_type,
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def index(self, request: Request) -> Response:
        """``GET /api/v1``: the routes, so ``curl $EDEN`` shows what the API has."""
        if not self.authorized(request):
            return error_response(grpc.StatusCode.UNAUTHENTICATED, TOKEN_REQUIRED)
        return Response(_json_bytes({"routes": [
            {"method": r.verb, "path": r.template, "rpc": r.rpc, "body": r.body, "stream": r.streaming}
            for r in self.routes]}), media_type="application/json")


def _dispatch(verbs: dict[str, Callable[[Request], Any]]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        # Starlette adds HEAD to a GET route: it is answered as the GET (the server drops the body).
        return await verbs.get(request.method, verbs.get("GET"))(request)  # type: ignore[misc]
    return endpoint


def _routing_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405 in the API's error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(grpc.StatusCode.NOT_FOUND,
                              f"no route {request.method} {request.url.path} (GET {API_PREFIX} lists the routes)")
    if exc.status_code == 405:
        code, message = grpc.StatusCode.UNIMPLEMENTED, f"{request.method} is not a method of {request.url.path}"
    else:
        code, message = grpc.StatusCode.UNKNOWN, str(exc.detail)
    return error_response(code, message, http_status=exc.status_code, headers=exc.headers)


def build_app(servicers: Iterable[tuple[Any, Any]], *, token: str | None = None,
              metrics: Callable[[Request], Any] | None = None,
              tracer_provider: trace.TracerProvider | None = None) -> Starlette:
    """The ASGI application: the declared routes of ``servicers``, ``GET /api/v1``, and
    ``metrics`` (an endpoint, eve.api.metrics) at ``/metrics`` when given."""
    routes = http_routes(servicers)
    api = _Api(routes, token, trace.get_tracer("eve.api.http", tracer_provider=tracer_provider))
    by_path: dict[str, dict[str, Callable[[Request], Any]]] = {}
    for route in routes:
        paths = [route.template]
        if route.template.startswith(API_PREFIX + "/"):
            paths.append(route.template[len(API_PREFIX):])  # $EDEN at the root, as the brief's curl lines use it
        for path in paths:
            verbs = by_path.setdefault(_starlette_path(path), {})
            if route.verb in verbs:
                raise ValueError(f"two rpcs are bound to {route.verb} {path}")
            verbs[route.verb] = api.handler(route)
    # One starlette route per path, so that a wrong method is a 405 whose Allow header lists them all.
    table: list[Route] = [Route(API_PREFIX, api.index, methods=["GET"])]
    table += [Route(path, _dispatch(verbs), methods=list(verbs)) for path, verbs in by_path.items()]
    if metrics is not None:
        async def scrape(request: Request) -> Response:
            if not api.authorized(request):
                return error_response(grpc.StatusCode.UNAUTHENTICATED, TOKEN_REQUIRED)
            return await metrics(request)

        table.append(Route("/metrics", scrape, methods=["GET"]))
    app = Starlette(routes=table, exception_handlers={HTTPException: _routing_error})
    app.state.api = api
    return app


# -- the listener ---------------------------------------------------------------------------------


class HttpServer:
    """uvicorn serving ``app`` on a thread of its own. The socket is bound here, in the caller's
    thread, so a port in use is a ConfigError at start (and port 0 tells the port it got)."""

    def __init__(self, app: Starlette, host: str, port: int, *, tls: TlsFiles | None = None) -> None:
        import ssl

        import uvicorn

        # uvicorn's INFO lines ("Started server process") repeat what this class logs, under a
        # logger named uvicorn.error; its warnings and errors still show.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self.app = app
        self.host = host
        self.tls = tls
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may bind at once
        try:
            self._socket.bind((host, port))
        except OSError as exc:
            self._socket.close()
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", field="--http") from None
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", ws="none", server_header=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
            ssl_certfile=tls.cert if tls else None, ssl_keyfile=tls.key if tls else None,
            ssl_ca_certs=tls.client_ca if tls else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca else ssl.CERT_NONE)
        config.load()  # TLS files are read now, in the caller's thread
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="eve-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"the HTTP listener on {self.url} did not start (see the log)", field="--http")
            time.sleep(0.01)
        log.info("http listening on %s", self.url)
        return self.url

    def stop(self) -> None:
        api = getattr(self.app.state, "api", None)
        if api is not None:
            api.close()  # event streams end, so the graceful shutdown does not wait for them
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=SHUTDOWN_GRACE_SECONDS + 5)
            self._thread = None
        self._socket.close()
