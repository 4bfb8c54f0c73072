"""The coordinator's gRPC server: thin servicers, error mapping, authentication,
health, reflection and a span per RPC.

Servicers parse the request, call ``eve.coordinator``, and convert the result.
Eve's errors become gRPC status codes in exactly one place (``STATUS_CODES``).
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import server_interceptor as otel_server_interceptor
from opentelemetry.sdk.trace import TracerProvider

from eve import convert
from eve.coordinator import Coordinator
from eve.errors import (
    AlreadyExistsError,
    AuthError,
    ConfigError,
    EveError,
    NotFoundError,
    StateError,
    UnavailableError,
)
from eve.interlay_supervisor import InterlaySupervisor
from eve.store import Store
from eve.workflow import Workflow
from eve.v1 import (
    endpoints_pb2,
    endpoints_pb2_grpc,
    interlays_pb2,
    interlays_pb2_grpc,
    workflows_pb2,
    workflows_pb2_grpc,
)

__all__ = ["ServerOptions", "build_server", "serve", "parse_listen", "STATUS_CODES"]

log = logging.getLogger("eve.server")

# Most specific class first: the first isinstance match wins.
STATUS_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (StateError, grpc.StatusCode.FAILED_PRECONDITION),
    (AuthError, grpc.StatusCode.PERMISSION_DENIED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (EveError, grpc.StatusCode.FAILED_PRECONDITION),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
]

SERVICE_NAMES = (
    endpoints_pb2.DESCRIPTOR.services_by_name["EndpointService"].full_name,
    interlays_pb2.DESCRIPTOR.services_by_name["InterlayService"].full_name,
    workflows_pb2.DESCRIPTOR.services_by_name["MigrationService"].full_name,
)


def status_for(exc: BaseException) -> grpc.StatusCode:
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


# -- interceptors ---------------------------------------------------------------


def _wrap_handler(handler: grpc.RpcMethodHandler, wrap: Callable[[Callable], Callable]) -> grpc.RpcMethodHandler:
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream), handler.request_deserializer, handler.response_serializer)
    return handler  # Eve has no client-streaming calls; reflection's stream is left as is.


class ErrorInterceptor(grpc.ServerInterceptor):
    """Turns Eve's errors into status codes; anything unexpected is logged and INTERNAL."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def wrap(behavior):
            def fail(exc: BaseException, context: grpc.ServicerContext):
                code = status_for(exc)
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("unexpected error in %s", method)
                    context.abort(code, f"internal error in {method}: {type(exc).__name__} (see the coordinator log)")
                context.abort(code, str(exc) or code.name)

            if handler.unary_stream:
                def stream(request, context):
                    try:
                        yield from behavior(request, context)
                    except Exception as exc:
                        if context.code() is not None:  # already aborted on purpose
                            raise
                        fail(exc, context)
                return stream

            def unary(request, context):
                try:
                    return behavior(request, context)
                except Exception as exc:
                    if context.code() is not None:  # already aborted on purpose
                        raise
                    fail(exc, context)
            return unary

        return _wrap_handler(handler, wrap)


class TokenInterceptor(grpc.ServerInterceptor):
    """With a token configured, every call needs ``authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        if isinstance(given, str) and hmac.compare_digest(given.encode(), self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        message = "missing or invalid token: send metadata 'authorization: Bearer <token>'"

        def deny(behavior):
            def unary(request, context):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            return unary

        if handler.stream_stream or handler.stream_unary:
            def deny_stream(request_iterator, context):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            if handler.stream_stream:
                return grpc.stream_stream_rpc_method_handler(
                    deny_stream, handler.request_deserializer, handler.response_serializer)
            return grpc.stream_unary_rpc_method_handler(
                deny_stream, handler.request_deserializer, handler.response_serializer)
        return _wrap_handler(handler, deny)


# -- servicers ------------------------------------------------------------------


def _command(request: endpoints_pb2.CommandRequest) -> list[bytes | str]:
    if request.command and request.command_bytes:
        raise ConfigError("set command or command_bytes, not both", field="command")
    return list(request.command) or list(request.command_bytes)


class EndpointServicer(endpoints_pb2_grpc.EndpointServiceServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def CreateEndpoint(self, request, context):
        record = self.coordinator.create_endpoint(
            request.endpoint, request.kind, convert.message_to_dict(request.config), request.description)
        return convert.endpoint_to_proto(record)

    def GetEndpoint(self, request, context):
        return convert.endpoint_to_proto(self.coordinator.get_endpoint(request.endpoint))

    def ListEndpoints(self, request, context):
        return endpoints_pb2.ListEndpointsResponse(
            endpoints=[convert.endpoint_to_proto(r) for r in self.coordinator.list_endpoints()])

    def UpdateEndpoint(self, request, context):
        record = self.coordinator.update_endpoint(
            request.endpoint, request.kind, convert.message_to_dict(request.config), request.description)
        return convert.endpoint_to_proto(record)

    def DeleteEndpoint(self, request, context):
        self.coordinator.delete_endpoint(request.endpoint)
        return endpoints_pb2.DeleteEndpointResponse()

    def _call(self, request, run):
        result = run(request.endpoint, _command(request), db=request.db, timeout=request.timeout_seconds)
        return endpoints_pb2.CommandResponse(
            reply=convert.resp_to_proto(result.reply), role=result.role, address=result.address)

    def Read(self, request, context):
        return self._call(request, self.coordinator.read)

    def Write(self, request, context):
        return self._call(request, self.coordinator.write)


class InterlayServicer(interlays_pb2_grpc.InterlayServiceServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def CreateInterlay(self, request, context):
        settings = convert.message_to_dict(request.settings)
        record = self.coordinator.create_interlay(request.id, request.endpoint, request.port, settings)
        return convert.interlay_to_proto(record)

    def _interlay(self, record):
        status, stats = self.coordinator.interlay_status(record.id)
        return convert.interlay_to_proto(record, status, stats)

    def GetInterlay(self, request, context):
        return self._interlay(self.coordinator.get_interlay(request.id))

    def ListInterlays(self, request, context):
        return interlays_pb2.ListInterlaysResponse(
            interlays=[self._interlay(r) for r in self.coordinator.list_interlays()])

    def DeleteInterlay(self, request, context):
        self.coordinator.delete_interlay(request.id)
        return interlays_pb2.DeleteInterlayResponse()

    def StartInterlay(self, request, context):
        return self._interlay(self.coordinator.start_interlay(request.id))

    def StopInterlay(self, request, context):
        return self._interlay(self.coordinator.stop_interlay(request.id))


class MigrationServicer(workflows_pb2_grpc.MigrationServiceServicer):
    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow

    def _run(self, record):
        return convert.run_to_proto(record, self.workflow.store.traffic(record.id))

    def CreateRun(self, request, context):
        return self._run(self.workflow.create(request.id, request.description))

    def GetRun(self, request, context):
        return self._run(self.workflow.get(request.run))

    def ListRuns(self, request, context):
        return workflows_pb2.ListRunsResponse(runs=[self._run(r) for r in self.workflow.list()
                                                    if not (r.setup or {}).get("kind") == "migrate"])

    def SubmitSetup(self, request, context):
        return self._run(self.workflow.submit_setup(request.run, convert.message_to_dict(request.setup)))

    def Prepare(self, request, context):
        return self._run(self.workflow.prepare(request.run))

    def GetCompatibility(self, request, context):
        issues = self.workflow.issues(request.run)
        if self.workflow.state(request.run).value in ("CREATED", "CONFIGURED", "PREPARING") and not issues:
            raise StateError(f"run {request.run!r} has no compatibility report yet (it is "
                             f"{self.workflow.state(request.run).value})")
        return workflows_pb2.CompatibilityReport(issues=[convert.issue_to_proto(i) for i in issues],
                                                 compatible=not any(i["blocking"] for i in issues))

    def AcknowledgeIssue(self, request, context):
        return convert.issue_to_proto(self.workflow.acknowledge(request.run, request.issue_id, request.notes))

    def GetAnalysis(self, request, context):
        return convert.analysis_to_proto(self.workflow.report(request.run, "analysis"))

    def GetTestRun(self, request, context):
        return convert.testrun_to_proto(self.workflow.report(request.run, "testrun"))

    def Approve(self, request, context):
        return self._run(self.workflow.approve(request.run, request.notes))

    def SubscribeEvents(self, request, context):
        for event in self.workflow.events(request.run, request.after_seq, is_active=context.is_active):
            yield convert.event_to_proto(request.run, event)

    def GetMetrics(self, request, context):
        return convert.metrics_to_proto(self.workflow.metrics(request.run))

    def ListErrorKeys(self, request, context):
        self.workflow.get(request.run)
        size = request.page_size if 0 < request.page_size <= 1000 else 100
        after = _decode_page_token(request.page_token) if request.page_token else None
        records = self.workflow.store.error_keys(request.run, limit=size + 1, after=after)
        token = ""
        if len(records) > size:
            records = records[:size]
            last = records[-1]
            token = _encode_page_token(last.db, last.key, last.node)
        return workflows_pb2.ListErrorKeysResponse(error_keys=[convert.error_key_to_proto(r) for r in records],
                                                   next_page_token=token)

    def ExportErrorKeys(self, request, context):
        from eve import error_keys

        self.workflow.get(request.run)
        fmt = "csv" if request.format == workflows_pb2.CSV else "jsonl"
        for chunk in error_keys.export(self.workflow.store.error_keys(request.run), fmt):
            if chunk:
                yield workflows_pb2.ExportChunk(data=chunk)

    def RetryErrorKeys(self, request, context):
        outcome = self.workflow.retry_error_keys(request.run, list(request.keys) or None)
        return workflows_pb2.RetryErrorKeysResponse(**outcome)

    def SetTraffic(self, request, context):
        return self._run(self.workflow.set_traffic(request.run, request.read_percent_target,
                                                   request.cutover_writes))

    def Verify(self, request, context):
        return convert.verify_to_proto(self.workflow.verify(request.run, request.ttl_tolerance_ms))

    def Complete(self, request, context):
        return self._run(self.workflow.complete(request.run, request.accept_differences, request.notes))

    def Rollback(self, request, context):
        return self._run(self.workflow.rollback(request.run, request.reason))

    def Cancel(self, request, context):
        return self._run(self.workflow.cancel(request.run, request.reason))


def _encode_page_token(db: int, key: bytes, node: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([db, base64.b64encode(key).decode(), node]).encode()).decode()


def _decode_page_token(token: str) -> tuple[int, bytes, str]:
    try:
        db, key, node = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(db), base64.b64decode(key), str(node)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise ConfigError("not a page token from ListErrorKeys", field="page_token") from None


# -- server ---------------------------------------------------------------------


@dataclass(frozen=True)
class ServerOptions:
    listen: str = "127.0.0.1:50051"
    state_path: str = "eve-state.db"
    token: str | None = None
    max_workers: int = 32


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"{listen!r} is not HOST:PORT", field="listen")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is outside 0..65535", field="listen")
    host = host.strip("[]")
    if not host:
        raise ConfigError(f"{listen!r} has no host (use 127.0.0.1, [::1] or 0.0.0.0)", field="listen")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_server(coordinator: Coordinator, *, token: str | None = None, max_workers: int = 32,
                 tracer_provider: TracerProvider | None = None, workflow: Workflow | None = None) -> grpc.Server:
    interceptors: list[grpc.ServerInterceptor] = [otel_server_interceptor(tracer_provider=tracer_provider)]
    if token:
        interceptors.append(TokenInterceptor(token))
    interceptors.append(ErrorInterceptor())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="eve-rpc"),
        interceptors=interceptors,
        # Without this a second coordinator could bind the same port silently.
        options=[("grpc.so_reuseport", 0)],
    )
    endpoints_pb2_grpc.add_EndpointServiceServicer_to_server(EndpointServicer(coordinator), server)
    interlays_pb2_grpc.add_InterlayServiceServicer_to_server(InterlayServicer(coordinator), server)
    workflows_pb2_grpc.add_MigrationServiceServicer_to_server(
        MigrationServicer(workflow or Workflow(coordinator.store)), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server)
    return server


def serve(options: ServerOptions, *, on_ready: Callable[[str], None] | None = None,
          stop_event: threading.Event | None = None, tracer_provider: TracerProvider | None = None) -> None:
    """Run the coordinator until SIGTERM/SIGINT (or ``stop_event``)."""
    host, port = parse_listen(options.listen)
    if not options.token and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without a token: set EVE_TOKEN or --token-file, "
            "or listen on a loopback address", field="listen")
    store = Store(options.state_path)
    coordinator = Coordinator(store)
    coordinator.interlays = InterlaySupervisor(on_state=coordinator.interlay_failed)
    workflow = Workflow(store, interlays=coordinator.interlays)
    server = build_server(coordinator, token=options.token, max_workers=options.max_workers,
                          tracer_provider=tracer_provider, workflow=workflow)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        bound = 0
        log.debug("bind failed: %s", exc)
    if not bound:
        coordinator.interlays.stop_all()
        store.close()
        raise ConfigError(f"cannot listen on {address}: the address is in use or not available here",
                          field="listen")
    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    server.start()
    actual = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    log.info("coordinator listening on %s state=%s auth=%s", actual, options.state_path,
             "token" if options.token else "off")
    coordinator.restart_interlays()
    workflow.resume()
    if on_ready:
        on_ready(actual)
    stop.wait()
    log.info("coordinator stopping")
    stopped = server.stop(grace=5)
    workflow.shutdown()
    coordinator.shutdown_interlays()
    stopped.wait()
    store.close()
