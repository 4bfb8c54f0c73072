"""The coordinator's gRPC server: the servicers of ``eve.api.servicers`` behind the
interceptors of ``eve.api.interceptors``, with health, reflection and a span per RPC; and,
with ``http_listen``, the same servicers over HTTP/JSON with ``/metrics`` (``eve.api.http``).

Exposure rules (``check_exposure``): off loopback a listener needs a token, and a token
without TLS is refused unless ``insecure`` says the network is trusted, since the token and
the endpoints' passwords would cross it in clear."""

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
from eve.api.tls import TlsFiles
from eve.core.errors import (
    ConfigError,
)
from eve.core.secrets import KEY_ENV, StateKey
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

__all__ = ["ServerOptions", "build_server", "build_servicers", "serve", "parse_listen", "check_exposure",
           "STATUS_CODES"]

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
    http_listen: str | None = None  # HOST:PORT of the HTTP/JSON API and /metrics; None: no HTTP listener
    tls: TlsFiles | None = None     # for both listeners; None: plaintext
    insecure: bool = False          # accept a token without TLS off loopback
    state_key: StateKey | None = None  # seals the passwords in the state file; None: kept in clear


def parse_listen(listen: str, *, field: str = "listen") -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"{listen!r} is not HOST:PORT", field=field)
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is outside 0..65535", field=field)
    host = host.strip("[]")
    if not host:
        raise ConfigError(f"{listen!r} has no host (use 127.0.0.1, [::1] or 0.0.0.0)", field=field)
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, options: ServerOptions, *, field: str) -> None:
    """Off loopback: a token is needed, and TLS for it unless ``insecure``."""
    if is_loopback(host):
        return
    if not options.token:
        raise ConfigError(
            f"refusing to listen on {host} without a token: set EVE_TOKEN or --token-file, "
            "or listen on a loopback address", field=field)
    if options.tls is None and not options.insecure:
        raise ConfigError(
            f"refusing to listen on {host} without TLS: the token and the endpoints' passwords would cross the "
            "network in clear; give --tls-cert and --tls-key, or --insecure if the network is trusted", field=field)


def build_servicers(coordinator: Coordinator, workflow: Workflow | None = None) -> list[tuple[object, object]]:
    """One servicer per service, paired with its ServiceDescriptor: the gRPC server and the HTTP
    API share these objects."""
    return [
        (endpoints_pb2.DESCRIPTOR.services_by_name["EndpointService"], EndpointServicer(coordinator)),
        (interlays_pb2.DESCRIPTOR.services_by_name["InterlayService"], InterlayServicer(coordinator)),
        (workflows_pb2.DESCRIPTOR.services_by_name["MigrationService"],
         MigrationServicer(workflow or Workflow(coordinator.store))),
    ]


def build_server(coordinator: Coordinator, *, token: str | None = None, max_workers: int = 32,
                 tracer_provider: TracerProvider | None = None, workflow: Workflow | None = None,
                 servicers: list[tuple[object, object]] | None = None) -> grpc.Server:
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
    endpoint_servicer, interlay_servicer, migration_servicer = (
        servicer for _, servicer in (servicers or build_servicers(coordinator, workflow)))
    endpoints_pb2_grpc.add_EndpointServiceServicer_to_server(endpoint_servicer, server)
    interlays_pb2_grpc.add_InterlayServiceServicer_to_server(interlay_servicer, server)
    workflows_pb2_grpc.add_MigrationServiceServicer_to_server(migration_servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server)
    return server


def interlay_control_dir(state_path: str) -> str | None:
    """Where the interlays of the coordinator of ``state_path`` keep their control sockets and
    tokens: ``<state file>.interlays/`` (none for an in-memory store: nothing survives it)."""
    return None if state_path == ":memory:" else f"{state_path}.interlays"


def serve(options: ServerOptions, *, on_ready: Callable[[str], None] | None = None,
          on_http_ready: Callable[[str], None] | None = None,
          stop_event: threading.Event | None = None, tracer_provider: TracerProvider | None = None) -> None:
    """Run the coordinator until SIGTERM/SIGINT (or ``stop_event``). ``on_ready(address)`` is told
    the gRPC address once both listeners serve, then ``on_http_ready(url)`` the HTTP one's."""
    host, port = parse_listen(options.listen)
    check_exposure(host, options, field="listen")
    http_address = parse_listen(options.http_listen, field="--http") if options.http_listen else None
    if http_address is not None:
        check_exposure(http_address[0], options, field="--http")
    store = Store(options.state_path, options.state_key)
    if options.state_key is None and options.state_path != ":memory:":
        log.warning("no state key (--key-file or %s): endpoint passwords are stored in clear in %s",
                    KEY_ENV, options.state_path)
    coordinator = Coordinator(store)
    # Interlays outlive the coordinator (issue 12): their control sockets and tokens live by the state file.
    coordinator.interlays = InterlaySupervisor(on_state=coordinator.interlay_failed,
                                               control_dir=interlay_control_dir(options.state_path))
    workflow = Workflow(store, interlays=coordinator.interlays)
    servicers = build_servicers(coordinator, workflow)
    server = build_server(coordinator, token=options.token, max_workers=options.max_workers,
                          tracer_provider=tracer_provider, workflow=workflow, servicers=servicers)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if options.tls is not None:
            bound = server.add_secure_port(address, options.tls.grpc_credentials())
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        bound = 0
        log.debug("bind failed: %s", exc)
    http_server = None
    try:
        if not bound:
            raise ConfigError(f"cannot listen on {address}: the address is in use or not available here",
                              field="listen")
        if http_address is not None:
            from eve.api import http, metrics

            registry = metrics.new_registry(metrics.coordinator_collector(servicers[2][1], servicers[1][1]))
            app = http.build_app(servicers, token=options.token, metrics=metrics.metrics_endpoint(registry),
                                 tracer_provider=tracer_provider)
            http_server = http.HttpServer(app, *http_address, tls=options.tls)
    except BaseException:
        server.stop(None)
        coordinator.interlays.stop_all()
        store.close()
        raise
    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    server.start()
    http_url = http_server.start() if http_server is not None else None
    actual = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    log.info("coordinator listening on %s state=%s auth=%s tls=%s%s", actual, options.state_path,
             "token" if options.token else "off",
             ("mutual" if options.tls.client_ca else "on") if options.tls else "off",
             f" http={http_url}" if http_url else "")
    coordinator.restart_interlays(workflow.restart_routes())
    workflow.resume()
    if on_ready:
        on_ready(actual)
    if http_url and on_http_ready:
        on_http_ready(http_url)
    stop.wait()
    log.info("coordinator stopping")
    if http_server is not None:
        http_server.stop()
    stopped = server.stop(grace=5)
    workflow.shutdown()
    coordinator.shutdown_interlays()
    stopped.wait()
    store.close()
