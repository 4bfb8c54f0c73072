"""The proxy process: listeners, backend nodes, stats, and the worker loop.

``main`` is the ``multiprocessing`` spawn target. It follows the shape every
Eve worker has: report READY (or FAILED saying who failed), then serve until
STOP arrives on the control pipe (or the pipe closes: the supervisor is gone),
drain, report STOPPED and exit 0. Every ``stats_interval`` seconds it sends a
STATS report.

Given ``ControlOptions`` (``proxy.control``), the process outlives its
coordinator instead: it keeps in a bounded spool the dirty keys it reported
until the coordinator CONFIRMs them re-copied; when the control pipe closes it
keeps serving under its last route, spools the keys of the writes it answers,
and waits on its control socket for the next coordinator, which becomes its
control connection (ATTACHED first) and gets the spool with its first TRACK on.

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
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import metrics

from eve.core.child_process import die_with_parent, ignore_interrupts, outlive_parent
from eve.core.errors import ConfigError
from eve.core.tls import server_context
from eve.core.telemetry import setup
from proxy import messages
from proxy.backend import Node
from proxy.client import Client
from proxy.control import ControlListener, ControlOptions, Spool, describe_route
from proxy.options import TLS_SETTINGS, ProxyOptions
from proxy.parts import Clients, Parts
from proxy.routing import Router
from proxy.slots import ClusterSide

__all__ = ["Proxy", "main", "run_proxy"]

log = logging.getLogger("eve.proxy")

LISTEN_BACKLOG = 1024
GC_THRESHOLD = 20_000
DETACHED_LOG_SECONDS = 600.0   # a process nobody controls says so this often


class Proxy:
    """Everything one proxy process serves."""

    def __init__(self, options: ProxyOptions, control: Any = None, counter: Any = None,
                 detachable: ControlOptions | None = None) -> None:
        self.options = options
        self.control = control
        self.detachable = detachable
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.parts = Parts.of(options, self._send)
        self.stats = self.parts.stats
        self.clients = Clients(self.stats, options.max_connections, counter, options.worker)
        self.servers: list[asyncio.base_events.Server] = []
        self.stopping = False
        self.nodes = [Node(self.parts, i, spec) for i, spec in enumerate(options.nodes)]
        # A live run's route (DESIGN.md sections 5 and 6), set by the supervisor.
        self.router = Router(self.parts, self.nodes[0])
        self.route: messages.Route | None = None       # the last route applied
        # Outliving the coordinator (proxy.control): reported dirty keys stay in the spool until
        # re-copied; while ``spooling`` (from the moment the coordinator goes until the next
        # one switches tracking on) they are only kept there.
        self.spool = Spool(detachable.spool_keys) if detachable is not None else None
        self.spooling = False
        self.detached_since: float | None = None
        self._control_listener: ControlListener | None = None
        self._stopped: asyncio.Future | None = None
        self._drain = 0.0

    # -- dirty keys -------------------------------------------------------------------------

    def set_tracking(self, on: bool) -> None:
        """Dirty-key tracking (DESIGN.md section 6), switched on by the supervisor. The keys
        the spool kept for a new coordinator go first (on), or are dropped (off)."""
        if self.spooling:
            self.parts.dirty.flush()   # recorded while spooling: spooled too, after the older ones
            self.spooling = False
            spooled = self.spool.replay() if self.spool is not None else ()
            if on and spooled:
                log.info("%s: %s", self.options.name, "the spool overflowed: the run compares every key"
                         if spooled == ((None, None),) else f"{len(spooled)} spooled keys sent")
                self._send(messages.DirtyReport(self.options.worker, spooled))
        elif not on and self.spool is not None:
            self.spool.clear()         # no run tracks writes: nobody needs them
        self.parts.dirty.set_tracking(on)
        log.info("%s: dirty-key tracking %s", self.options.name, "on" if on else "off")

    # -- live route ---------------------------------------------------------------------------

    def apply_route(self, route: messages.Route) -> None:
        self.route = route
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
        """Bind every listener; raises OSError (EADDRINUSE...) naming nothing: the caller does,
        and ConfigError when the TLS files for clients do not load."""
        self.loop = asyncio.get_running_loop()
        options = self.options
        ports: list[int] = []
        parts, clients, router = self.parts, self.clients, self.router
        tls = client_tls(options)
        for node, port in zip(self.nodes, options.ports):
            server = await self.loop.create_server(
                lambda node=node: Client(parts, clients, router, node), options.listen_host, port,
                reuse_address=True, reuse_port=options.workers > 1 or None, backlog=LISTEN_BACKLOG, ssl=tls)
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
        if control is None:
            return
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
                elif isinstance(message, messages.DirtyConfirm):
                    if self.spool is not None:
                        self.spool.confirm(message.reports)
        except (EOFError, OSError):
            self.loop.remove_reader(control.fileno())
            if self.detachable is None:
                # The supervisor is gone: nobody will ever send STOP.
                self.request_stop(0.0)
            elif control is self.control:
                self._detach()
        except ValueError as exc:
            log.error("%s: %s", self.options.name, exc)

    # -- outliving the coordinator (proxy.control) -------------------------------------------

    def _detach(self) -> None:
        """The coordinator is gone: keep serving, spool dirty keys, wait for the next one."""
        control, self.control = self.control, None
        if control is not None:
            control.close()
        self.detached_since = time.monotonic()
        self.spooling = self.parts.dirty.tracking
        log.warning("%s pid=%d: the coordinator is gone; serving on %s (%s)%s; a restarted coordinator "
                    "re-attaches through %s; SIGTERM stops this process", self.options.name, os.getpid(),
                    ",".join(map(str, self.options.ports)), describe_route(self.route),
                    f", dirty keys spooled (at most {self.spool.limit})" if self.spooling and self.spool else "",
                    self.detachable.socket_path if self.detachable else "")

    def attach(self, conn: Any) -> None:
        """A coordinator proved the token on the control socket (called from its thread)."""
        self.loop.call_soon_threadsafe(self._attach, conn)

    def _attach(self, conn: Any) -> None:
        previous, self.control = self.control, conn
        if previous is not None:
            # Only one coordinator controls a process: the newest (the previous one is gone
            # or about to be; two coordinators on one state file are not supported).
            try:
                self.loop.remove_reader(previous.fileno())
            except (OSError, ValueError):
                pass
            previous.close()
            log.warning("%s: a new coordinator attached; the previous control connection is closed",
                        self.options.name)
        detached = time.monotonic() - self.detached_since if self.detached_since is not None else 0.0
        self.detached_since = None
        self.loop.add_reader(conn.fileno(), self._on_control)
        if self.spool is not None:
            # Unconfirmed reports were sent to a coordinator that is gone: kept for this one.
            self.spooling = self.spooling or self.parts.dirty.tracking
            self.spool.attach()
            self.parts.dirty.flush()   # the spool as it is now, for ATTACHED to tell
        options = self.options
        self._send(messages.Attached(
            options.worker, os.getpid(), options.ports, tuple(node.address for node in options.nodes), self.route,
            self.parts.dirty.tracking, len(self.spool) if self.spool is not None else 0,
            bool(self.spool is not None and self.spool.overflowed), round(detached, 3)))
        self._send(self._stats_report())
        log.info("%s pid=%d: a coordinator attached after %.1fs detached", options.name, os.getpid(), detached)

    def _send(self, message: messages.Message) -> None:
        report = isinstance(message, messages.DirtyReport) and self.spool is not None
        if report and self.spooling:
            self.spool.hold(message.keys)  # type: ignore[union-attr]
            return
        if self.control is None:
            return
        try:
            self.control.send(message)
        except (OSError, ValueError):
            if report:
                self.spooling = True   # the reader notices the coordinator is gone next
                self.spool.hold(message.keys)  # type: ignore[union-attr]
            return
        if report:
            self.spool.sent_report(message.keys)  # type: ignore[union-attr]

    def _stats_report(self) -> messages.StatsReport:
        options = self.options
        return self.stats.report(options.worker, options.backend_label, self.router.report(),
                                 len(self.parts.dirty.pending), self.router.cross_slot.report())

    async def _report_stats(self) -> None:
        options = self.options
        reminded = time.monotonic()
        while True:
            await asyncio.sleep(options.stats_interval)
            self._send(self._stats_report())
            now = time.monotonic()
            if self.detached_since is not None and now - reminded >= DETACHED_LOG_SECONDS:
                reminded = now
                log.warning("%s pid=%d: no coordinator for %.0fs; still serving (SIGTERM stops this process)",
                            options.name, os.getpid(), now - self.detached_since)

    async def serve(self) -> bool:
        """READY, serve until STOP, drain, STOPPED. False when the listeners could not start."""
        options = self.options
        self.loop = asyncio.get_running_loop()
        self._stopped = self.loop.create_future()
        detachable = self.detachable
        if detachable is not None and detachable.route is not None:
            # Restarted after a cutover: the first client already meets the target as authoritative.
            self.apply_route(detachable.route)
        if self.control is not None:
            # What the supervisor put in the pipe before starting this process (a restart under a
            # live run: its route, dirty-key tracking) applies before the first client (issue 19).
            self._on_control()
        try:
            if detachable is not None:
                self._control_listener = ControlListener(detachable, self.attach)
            ports = await self.start()
        except ConfigError as exc:
            log.error("%s: %s", options.name, exc)
            self._send(messages.Failed(options.worker, "config", str(exc)))
            for node in self.nodes:
                node.close_all()
            return False
        except OSError as exc:
            for server in self.servers:
                server.close()
            if self._control_listener is not None:
                self._control_listener.close()
            elif detachable is not None:
                reason = f"cannot listen on the control socket {detachable.socket_path}: {exc.strerror or exc}"
                log.error("%s: %s", options.name, reason)
                self._send(messages.Failed(options.worker, "config", reason))
                return False
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
        if self._control_listener is not None:
            self._control_listener.start()
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
            if self._control_listener is not None:
                self._control_listener.close()
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


def client_tls(options: ProxyOptions) -> ssl.SSLContext | None:
    """The TLS context of the client listeners (``rediss://`` clients), None for plaintext."""
    if not options.tls:
        return None
    return server_context(options.tls_cert_file, options.tls_key_file, options.tls_ca_file or None,
                          fields=TLS_SETTINGS)


def _observe(proxy: Proxy, meter: metrics.Meter) -> None:
    """OpenTelemetry instruments reading the proxy's counters when an exporter collects."""
    attributes: dict[str, str | int] = {"interlay": proxy.options.interlay_id, "worker": proxy.options.worker}
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
              meter: metrics.Meter | None = None, detachable: ControlOptions | None = None) -> bool:
    """Run one proxy in this process (uvloop when installed) until it stops."""
    # Every request allocates a few short-lived objects; collecting the young
    # generation less often (and never scanning what start-up allocated) keeps
    # the collector's pauses out of the latency.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    proxy = Proxy(options, control, counter, detachable)
    if meter is not None:
        _observe(proxy, meter)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(proxy.serve())
    return uvloop.run(proxy.serve())


def main(options: ProxyOptions, control: Any, counter: Any = None,
         detachable: ControlOptions | None = None) -> None:
    """Entry point of a proxy process (``multiprocessing`` spawn target).

    Dies with its parent, unless ``detachable``: then it outlives it, in a
    session of its own (a hangup of the coordinator's terminal does not reach
    it). Ignores Ctrl-C (the supervisor decides), logs to stderr, never raises:
    an unexpected exception becomes FAILED("internal"). Exits 0 after STOPPED,
    1 otherwise.
    """
    if detachable is None:
        die_with_parent()
    else:
        outlive_parent()
    ignore_interrupts()
    logging.basicConfig(level=options.log_level, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(message)s")
    ok = False
    telemetry = None
    try:
        telemetry = setup("eve-proxy")
        ok = run_proxy(options, control, counter, telemetry.meter("eve.proxy"), detachable)
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
