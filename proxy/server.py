"""The proxy process: listeners, backend nodes, stats, and the worker loop.

``main`` is the ``multiprocessing`` spawn target. It follows the shape every
Eve worker has: report READY (or FAILED saying who failed), then serve until
STOP arrives on the control pipe (or the pipe closes: the supervisor is gone),
drain, report STOPPED and exit 0. Every ``stats_interval`` seconds it sends a
STATS report.

``Proxy`` builds the parts of the process (``proxy.parts``) and ties them
together: the nodes (``proxy.backend``), the router (``proxy.routing``) and,
per accepted connection, a ``proxy.client.Client``; nothing below this module
knows it. It acts on the clients through their own methods only.

Stopping (``Proxy.stop``): listeners close at once; clients stop being read;
requests already forwarded get up to ``drain_seconds`` to be answered; then
every connection is closed.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import metrics

from eve.core.child_process import die_with_parent, ignore_interrupts
from eve.core.telemetry import setup
from proxy import messages
from proxy.backend import Node
from proxy.client import Client
from proxy.options import ProxyOptions
from proxy.parts import Clients, Parts
from proxy.routing import Router
from proxy.slots import ClusterSide

__all__ = ["Proxy", "main", "run_proxy"]

log = logging.getLogger("eve.proxy")

LISTEN_BACKLOG = 1024
GC_THRESHOLD = 20_000


class Proxy:
    """Everything one proxy process serves."""

    def __init__(self, options: ProxyOptions, control: Any = None, counter: Any = None) -> None:
        self.options = options
        self.control = control
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.parts = Parts.of(options, self._send)
        self.stats = self.parts.stats
        self.clients = Clients(self.stats, options.max_connections, counter)
        self.servers: list[asyncio.base_events.Server] = []
        self.stopping = False
        self.nodes = [Node(self.parts, i, spec) for i, spec in enumerate(options.nodes)]
        # A live run's route (DESIGN.md sections 5 and 6), set by the supervisor.
        self.router = Router(self.parts, self.nodes[0])
        self._stopped: asyncio.Future | None = None
        self._drain = 0.0

    # -- dirty keys -------------------------------------------------------------------------

    def set_tracking(self, on: bool) -> None:
        """Dirty-key tracking (DESIGN.md section 6), switched on by the supervisor."""
        self.parts.dirty.set_tracking(on)
        log.info("%s: dirty-key tracking %s", self.options.name, "on" if on else "off")

    # -- live route ---------------------------------------------------------------------------

    def apply_route(self, route: messages.Route) -> None:
        if self.router.apply(route):
            # The authoritative side changed (the supervisor paused everyone first).
            primary = self.router.primary
            for client in self.clients:
                client.follow(primary)  # type: ignore[arg-type]
        log.info("%s: route: authoritative %s, dual writes to %s under %s, %d%% of reads on the target",
                 self.options.name, route.authoritative, ",".join(route.mirror_to) or "nobody", route.policy,
                 route.read_percent)

    async def _pause(self, token: int, timeout: float) -> None:
        """Stop reading clients; wait until every reply (dual writes included) arrived.
        Pinned clients get a moment, then are closed: a blocking command would never
        settle, and their state lives on the side being left."""
        clients = self.clients
        clients.paused = True
        for client in clients:
            client.pause_reading("pause")
        loop = self.loop
        start = loop.time()
        deadline = start + max(0.0, timeout)
        pinned_grace = start + min(0.5, max(0.0, timeout))
        settled = False
        while True:
            now = loop.time()
            pinned_too = now < pinned_grace
            if not any(client.awaiting_replies(pinned_too) for client in clients.connected) \
                    and not self.router.pending:
                settled = True
                break
            if now >= deadline:
                break
            await asyncio.sleep(0.002)
        for client in clients:
            client.close_if_pinned()
        self.parts.dirty.flush()
        if clients.paused:
            self._send(messages.Paused(self.options.worker, token, settled))

    def resume_clients(self) -> None:
        if not self.clients.paused:
            return
        self.clients.paused = False
        for client in self.clients:
            client.unpause()

    # -- serving ----------------------------------------------------------------------------

    async def start(self) -> list[int]:
        """Bind every listener; raises OSError (EADDRINUSE...) naming nothing: the caller does."""
        self.loop = asyncio.get_running_loop()
        options = self.options
        ports: list[int] = []
        parts, clients, router = self.parts, self.clients, self.router
        for node, port in zip(self.nodes, options.ports):
            server = await self.loop.create_server(
                lambda node=node: Client(parts, clients, router, node), options.listen_host, port,
                reuse_address=True, reuse_port=options.workers > 1 or None, backlog=LISTEN_BACKLOG)
            self.servers.append(server)
            ports.append(server.sockets[0].getsockname()[1] if server.sockets else port)
        # Warm the pools: the first client should not pay for the connections,
        # and the command table arrives before traffic does.
        protocol = options.nodes[0].protocol_version if options.nodes[0].protocol_version in (2, 3) else 2
        for node in self.nodes:
            for slot in range(node.pool_size):
                node.shared_conn(protocol, slot)
        return ports

    async def stop(self, drain_seconds: float) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.clients.admitting = False
        for node in self._all_nodes():
            node.stop_idling()
        for server in self.servers:
            server.close()
        for client in self.clients:
            client.pause_reading("stop")
        deadline = time.monotonic() + max(0.0, drain_seconds)
        while any(client.busy() for client in self.clients.connected) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for client in self.clients:
            client.close()
        for node in self._all_nodes():
            node.close_all()
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 1.0)
            except (TimeoutError, Exception):
                pass
        await asyncio.sleep(0)

    def _all_nodes(self) -> list[Node]:
        """The source's nodes and those of the other sides of a live run."""
        nodes = list(self.nodes)
        for side in self.router.sides.values():
            for node in side.all_nodes() if isinstance(side, ClusterSide) else (side,):
                if node not in nodes:
                    nodes.append(node)
        return nodes

    def request_stop(self, drain_seconds: float) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._drain = drain_seconds
            self._stopped.set_result(None)

    def _on_control(self) -> None:
        control = self.control
        try:
            while control.poll():
                message = messages.check(control.recv())
                if isinstance(message, messages.Stop):
                    self.request_stop(message.drain_seconds)
                elif isinstance(message, messages.TrackDirty):
                    self.set_tracking(message.on)
                elif isinstance(message, messages.DirtyBarrier):
                    # Every key recorded before the barrier arrived goes first, in order.
                    self.parts.dirty.flush()
                    self._send(messages.DirtyBarrierDone(self.options.worker, message.token))
                elif isinstance(message, messages.Route):
                    self.apply_route(message)
                elif isinstance(message, messages.Pause):
                    self.loop.create_task(self._pause(message.token, message.timeout))
                elif isinstance(message, messages.Resume):
                    self.resume_clients()
        except (EOFError, OSError):
            # The supervisor is gone: nobody will ever send STOP.
            self.loop.remove_reader(control.fileno())
            self.request_stop(0.0)
        except ValueError as exc:
            log.error("%s: %s", self.options.name, exc)

    def _send(self, message: messages.Message) -> None:
        if self.control is None:
            return
        try:
            self.control.send(message)
        except (OSError, ValueError):
            pass

    async def _report_stats(self) -> None:
        options = self.options
        while True:
            await asyncio.sleep(options.stats_interval)
            self._send(self.stats.report(options.worker, options.backend_label, self.router.report(),
                                         len(self.parts.dirty.pending), self.router.cross_slot.report()))

    async def serve(self) -> bool:
        """READY, serve until STOP, drain, STOPPED. False when the listeners could not start."""
        options = self.options
        self.loop = asyncio.get_running_loop()
        self._stopped = self.loop.create_future()
        try:
            ports = await self.start()
        except OSError as exc:
            for server in self.servers:
                server.close()
            port = getattr(exc, "eve_port", None) or options.ports[len(self.servers)]
            if exc.errno == errno.EADDRINUSE:
                reason = f"port {port} on {options.listen_host} is already in use"
            else:
                reason = f"cannot listen on {options.listen_host}:{port}: {exc.strerror or exc}"
            log.error("%s: %s", options.name, reason)
            self._send(messages.Failed(options.worker, "config", reason))
            for node in self.nodes:
                node.close_all()
            return False
        if self.control is not None:
            self.loop.add_reader(self.control.fileno(), self._on_control)
        try:
            self.loop.add_signal_handler(signal.SIGTERM, self.request_stop, 0.0)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        log.info("%s pid=%d listening on %s ports %s", options.name, os.getpid(), options.listen_host,
                 ",".join(map(str, ports)))
        self._send(messages.Ready(options.worker, os.getpid(), tuple(ports)))
        reporter = self.loop.create_task(self._report_stats())
        try:
            await self._stopped
        finally:
            reporter.cancel()
            await self.stop(self._drain)
            self.parts.dirty.flush()
            if self.control is not None:
                try:
                    self.loop.remove_reader(self.control.fileno())
                except (OSError, ValueError):
                    pass
        self._send(self.stats.report(options.worker, options.backend_label,
                                     cross_slot=self.router.cross_slot.report()))
        self._send(messages.Stopped(options.worker))
        log.info("%s pid=%d stopped", options.name, os.getpid())
        return True


def _observe(proxy: Proxy, meter: metrics.Meter) -> None:
    """OpenTelemetry instruments reading the proxy's counters when an exporter collects."""
    attributes = {"interlay": proxy.options.interlay_id, "worker": proxy.options.worker}
    stats = proxy.stats

    def observe(value: Callable[[], float]) -> Callable[[metrics.CallbackOptions], list[metrics.Observation]]:
        return lambda _options: [metrics.Observation(value(), attributes)]

    meter.create_observable_counter("eve.interlay.ops", [observe(lambda: stats.ops)],
                                    description="commands answered for clients")
    meter.create_observable_counter("eve.interlay.errors", [observe(lambda: stats.errors + stats.backend_errors)],
                                    description="errors answered to clients")
    meter.create_observable_up_down_counter("eve.interlay.connections", [observe(lambda: stats.connections)],
                                            description="clients connected")


def run_proxy(options: ProxyOptions, control: Any = None, counter: Any = None,
              meter: metrics.Meter | None = None) -> bool:
    """Run one proxy in this process (uvloop when installed) until it stops."""
    # Every request allocates a few short-lived objects; collecting the young
    # generation less often (and never scanning what start-up allocated) keeps
    # the collector's pauses out of the latency.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    proxy = Proxy(options, control, counter)
    if meter is not None:
        _observe(proxy, meter)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(proxy.serve())
    return uvloop.run(proxy.serve())


def main(options: ProxyOptions, control: Any, counter: Any = None) -> None:
    """Entry point of a proxy process (``multiprocessing`` spawn target).

    Dies with its parent, ignores Ctrl-C (the supervisor decides), logs to
    stderr, never raises: an unexpected exception becomes FAILED("internal").
    Exits 0 after STOPPED, 1 otherwise.
    """
    die_with_parent()
    ignore_interrupts()
    logging.basicConfig(level=options.log_level, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(message)s")
    ok = False
    telemetry = None
    try:
        telemetry = setup("eve-proxy")
        ok = run_proxy(options, control, counter, telemetry.meter("eve.proxy"))
    except BaseException as exc:
        log.exception("%s pid=%d crashed", options.name, os.getpid())
        try:
            control.send(messages.Failed(options.worker, "internal", repr(exc)[:1000]))
        except BaseException:
            pass
    finally:
        if telemetry is not None:
            try:
                telemetry.shutdown()
            except Exception:
                pass
    sys.exit(0 if ok else 1)
