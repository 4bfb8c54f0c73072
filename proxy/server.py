"""The proxy process: listeners, backend nodes, stats, and the worker loop.

``main`` is the ``multiprocessing`` spawn target. It follows the shape every
Eve worker has: report READY (or FAILED saying who failed), then serve until
STOP arrives on the control pipe (or the pipe closes: the supervisor is gone),
drain, report STOPPED and exit 0. Every ``stats_interval`` seconds it sends a
STATS report.

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
from eve.redis import resp
from proxy import dirty, messages
from proxy.backend import Node
from proxy.client import Client, classify
from proxy.cluster import ClusterMap
from proxy.commands import CommandTable
from proxy.options import ProxyOptions
from proxy.routing import Router
from proxy.stats import histogram

__all__ = ["Proxy", "Stats", "main", "run_proxy"]

log = logging.getLogger("eve.proxy")

MAX_KIND_CACHE = 10_000
DIRTY_FLUSH_SECONDS = 0.05   # recorded keys go to the supervisor at least this often...
DIRTY_FLUSH_KEYS = 1000      # ...or as soon as this many are waiting
MAX_SAMPLES = 100_000
LISTEN_BACKLOG = 1024
GC_THRESHOLD = 20_000


class Stats:
    """Counters of one process; ``samples`` are backend round trips (seconds) since the last report."""

    __slots__ = ("ops", "errors", "protocol_errors", "backend_ops", "backend_errors", "samples", "connections",
                 "rejected", "_last_ops", "_last_time")

    def __init__(self) -> None:
        self.ops = 0
        self.errors = 0           # errors the interlay itself answered (unavailable backend, protocol errors)
        self.protocol_errors = 0
        self.backend_ops = 0
        self.backend_errors = 0   # error replies from the backend, and commands a lost connection failed
        self.samples: list[float] = []
        self.connections = 0
        self.rejected = 0
        self._last_ops = 0
        self._last_time = time.monotonic()

    def report(self, worker: int, label: str, sides: tuple = (), dirty_pending: int = 0) -> messages.StatsReport:
        now = time.monotonic()
        samples, self.samples = self.samples, []
        if len(samples) > MAX_SAMPLES:
            samples = samples[:: len(samples) // MAX_SAMPLES + 1]
        interval_ops, self._last_ops = self.ops - self._last_ops, self.ops
        seconds, self._last_time = now - self._last_time, now
        backend = messages.BackendReport(label, self.backend_ops, self.backend_errors,
                                         histogram(sample * 1000.0 for sample in samples))
        return messages.StatsReport(worker=worker, connections=self.connections, ops=self.ops,
                                    errors=self.errors + self.backend_errors, interval_ops=interval_ops,
                                    interval_seconds=seconds, backends=(backend,), sides=sides,
                                    dirty_pending=dirty_pending)


class Proxy:
    """Everything one proxy process serves."""

    def __init__(self, options: ProxyOptions, control: Any = None, counter: Any = None) -> None:
        self.options = options
        self.control = control
        self.counter = counter          # multiprocessing.Value shared by the workers, or None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.stats = Stats()
        self.kinds: dict[bytes, int] = {}
        self.table: CommandTable | None = None
        self.table_loading = False
        self.clients: set[Client] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self.stopping = False
        self.cluster_map = ClusterMap([(node.host, node.port) for node in options.nodes], list(options.ports)) \
            if options.cluster else None
        self.nodes = [Node(self, i, spec) for i, spec in enumerate(options.nodes)]
        # Dirty-key tracking (DESIGN.md section 6), switched on by the supervisor.
        self.tracking = False
        self.writes: dict[bytes, bool] = {}     # command name as sent -> may change keys
        self.dirty: list[dirty.Mark] = []       # recorded, not sent yet
        self._dirty_timer: asyncio.TimerHandle | None = None
        # A live run's route (DESIGN.md sections 5 and 6), set by the supervisor.
        self.router = Router(self)
        self.paused = False                     # clients are not read (a cutover or rollback flips sides)
        self._next_id = 0
        self._stopped: asyncio.Future | None = None
        self._drain = 0.0

    # -- clients --------------------------------------------------------------------------

    def next_client_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def admit(self, client: Client) -> bool:
        if self.stopping:
            return False
        limit = self.options.max_connections
        counter = self.counter
        if counter is not None:
            with counter.get_lock():
                if counter.value >= limit:
                    self.stats.rejected += 1
                    return False
                counter.value += 1
        elif self.stats.connections >= limit:
            self.stats.rejected += 1
            return False
        self.stats.connections += 1
        self.clients.add(client)
        return True

    def client_closed(self, client: Client) -> None:
        if client in self.clients:
            self.clients.discard(client)
            self.stats.connections -= 1
            if self.counter is not None:
                with self.counter.get_lock():
                    self.counter.value -= 1

    # -- commands ---------------------------------------------------------------------------

    def classify(self, name: bytes) -> int:
        kind = classify(name, self.table, self.cluster_map is not None)
        if len(self.kinds) < MAX_KIND_CACHE:
            self.kinds[bytes(name)] = kind
        return kind

    def table_request(self) -> tuple[bytes, Any] | None:
        """``COMMAND`` and its callback, for a fresh connection to send ahead of
        the clients' commands, until the table has arrived."""
        if self.table is not None or self.table_loading:
            return None
        self.table_loading = True
        return resp.encode_command("COMMAND"), self._on_table

    def _on_table(self, frame: bytes | None) -> None:
        self.table_loading = False
        if frame is None:
            return
        try:
            parsed = resp.parse(frame)
            if parsed is None:
                raise ValueError("incomplete COMMAND reply")
            self.table = CommandTable.from_reply(parsed[0])
        except (ValueError, resp.ProtocolError, TypeError, IndexError) as exc:
            log.warning("%s: cannot read the backend's command table: %s", self.options.name, exc)
            return
        self.kinds.clear()
        self.writes.clear()
        log.info("%s: command table of %d commands loaded", self.options.name, len(self.table))
        return

    # -- dirty keys -------------------------------------------------------------------------

    def may_write(self, name: bytes) -> bool:
        """Whether a request named ``name`` can change keys (cached by name as sent)."""
        found = self.writes.get(name)
        if found is None:
            found = dirty.may_write(self.table, name)
            if self.table is not None and len(self.writes) < MAX_KIND_CACHE:
                self.writes[bytes(name)] = found
        return found

    def write_marks(self, args: list[bytes], db: int) -> list[dirty.Mark]:
        return dirty.marks(self.table, args, db)

    def record_dirty(self, items: list[dirty.Mark]) -> None:
        """Keys whose writes were answered (or whose outcome became unknown)."""
        if not self.tracking:
            return
        pending = self.dirty
        pending.extend(items)
        if len(pending) >= DIRTY_FLUSH_KEYS:
            self.flush_dirty()
        elif self._dirty_timer is None:
            self._dirty_timer = self.loop.call_later(DIRTY_FLUSH_SECONDS, self.flush_dirty)

    def flush_dirty(self) -> None:
        timer, self._dirty_timer = self._dirty_timer, None
        if timer is not None:
            timer.cancel()
        if self.dirty:
            items, self.dirty = self.dirty, []
            self._send(messages.DirtyReport(self.options.worker, tuple(items)))

    def set_tracking(self, on: bool) -> None:
        if not on:
            self.flush_dirty()
        self.tracking = on
        log.info("%s: dirty-key tracking %s", self.options.name, "on" if on else "off")

    # -- live route ---------------------------------------------------------------------------

    def apply_route(self, route: messages.Route) -> None:
        if self.cluster_map is not None:
            log.error("%s: a live route needs a standalone source; ignored", self.options.name)
            return
        moved = self.router.apply(route, lambda index, spec: Node(self, index, spec))
        if moved:
            # The authoritative side changed: stateless clients follow at their next
            # command; a pinned client's state lives on the old side, so it is closed
            # and reconnects (the supervisor paused everyone first).
            primary = self.router.primary
            for client in list(self.clients):
                if client.pinned is not None:
                    if client.transport is not None:
                        client.transport.close()
                    continue
                client.node = primary
                client.shared = None
        log.info("%s: route: authoritative %s, dual writes to %s under %s, %d%% of reads on the target",
                 self.options.name, route.authoritative, ",".join(route.mirror_to) or "nobody", route.policy,
                 route.read_percent)

    async def _pause(self, token: int, timeout: float) -> None:
        """Stop reading clients; wait until every reply (dual writes included) arrived.
        Pinned clients get a moment, then are closed: a blocking command would never
        settle, and their state lives on the side being left."""
        self.paused = True
        for client in list(self.clients):
            client.pause_reading("pause")
        loop = self.loop
        start = loop.time()
        deadline = start + max(0.0, timeout)
        pinned_grace = start + min(0.5, max(0.0, timeout))
        settled = False
        while True:
            now = loop.time()
            busy = [c for c in self.clients if c.outstanding and (c.pinned is None or now < pinned_grace)]
            if not busy and not self.router.pending:
                settled = True
                break
            if now >= deadline:
                break
            await asyncio.sleep(0.002)
        for client in list(self.clients):
            if client.pinned is not None and client.transport is not None:
                client.transport.close()
        self.flush_dirty()
        if self.paused:
            self._send(messages.Paused(self.options.worker, token, settled))

    def resume_clients(self) -> None:
        if not self.paused:
            return
        self.paused = False
        for client in list(self.clients):
            client.resume_reading("pause")
            if client.buf and client.transport is not None:
                client.stalled = True
                client._schedule_resume()

    # -- serving ----------------------------------------------------------------------------

    async def start(self) -> list[int]:
        """Bind every listener; raises OSError (EADDRINUSE...) naming nothing: the caller does."""
        self.loop = asyncio.get_running_loop()
        options = self.options
        ports: list[int] = []
        for node, port in zip(self.nodes, options.ports):
            server = await self.loop.create_server(
                lambda node=node: Client(self, node), options.listen_host, port,
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
        for server in self.servers:
            server.close()
        for client in list(self.clients):
            client.pause_reading("stop")
        deadline = time.monotonic() + max(0.0, drain_seconds)
        while any(client.busy() for client in self.clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.close()
        for node in self.nodes:
            node.close_all()
        for node in self.router.sides.values():
            node.close_all()
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 1.0)
            except (TimeoutError, Exception):
                pass
        await asyncio.sleep(0)

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
                    self.flush_dirty()
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
                                         len(self.dirty)))

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
            self.flush_dirty()
            if self.control is not None:
                try:
                    self.loop.remove_reader(self.control.fileno())
                except (OSError, ValueError):
                    pass
        self._send(self.stats.report(options.worker, options.backend_label))
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
