"""The coordinator's gRPC server: the servicers of ``eve.api.servicers`` behind the
interceptors of ``eve.api.interceptors``, with health, reflection and a span per RPC."""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import (
    server_interceptor as otel_server_interceptor,
)
from opentelemetry.sdk.trace import TracerProvider

from eve.api.interceptors import STATUS_CODES, ErrorInterceptor, TokenInterceptor
from eve.api.servicers import EndpointServicer, InterlayServicer, MigrationServicer
from eve.core.errors import (
    ConfigError,
)
from eve.core.store import Store
from eve.live.interlays import InterlaySupervisor
from eve.v1 import (
    endpoints_pb2,
    endpoints_pb2_grpc,
    interlays_pb2,
    interlays_pb2_grpc,
    workflows_pb2,
    workflows_pb2_grpc,
)
from eve.workflow.registry import Coordinator
from eve.workflow.runs import Workflow

__all__ = ["ServerOptions", "build_server", "serve", "parse_listen", "STATUS_CODES"]

log = logging.getLogger("eve.api.server")

SERVICE_NAMES = (
    endpoints_pb2.DESCRIPTOR.services_by_name["EndpointService"].full_name,
    interlays_pb2.DESCRIPTOR.services_by_name["InterlayService"].full_name,
    workflows_pb2.DESCRIPTOR.services_by_name["MigrationService"].full_name,
)


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
