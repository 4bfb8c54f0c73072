"""Starts, watches and stops interlay proxy processes (DESIGN.md sections 2 and 5).

The coordinator owns one ``InterlaySupervisor``. ``start`` spawns the proxy
process(es) of an interlay with the ``spawn`` start method and returns once
every one listens; a thread reads their messages (READY, STATS, STOPPED,
FAILED) from one duplex pipe per process, keeps the latest stats, and notices
a process that dies without being asked to: the interlay becomes FAILED with
the reason, and ``on_state`` (if given) is told, so the coordinator can
record it.

    supervisor = InterlaySupervisor()
    ports = supervisor.start("cache", 6200, "127.0.0.1", endpoint, 10_000)
    supervisor.stats("cache")      # {"connections": 3, "ops_per_second": ..., "backends": [...]}
    supervisor.stop("cache", drain_seconds=5)

Dirty keys (DESIGN.md section 6): ``track_dirty("cache", dirty)`` has every
proxy process record the keys of the writes it forwards (after their replies)
and send them in batches; the monitor thread marks them in ``dirty``
(``eve.live.backlog.DirtyKeys``). ``dirty_barrier("cache", timeout)`` returns True once
every key recorded before the call has been marked. ``track_dirty("cache",
None)`` switches tracking off (the default: plain forwarding pays nothing).

A cluster source gets one listener per master, on ``port`` and the ports
after it; the masters are read from the source when the interlay starts. A
source that cannot be reached then is not a reason to refuse starting: the
interlay starts with one listener, and clients get errors until the source
answers. A port that is already in use is (``StateError``).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eve.core.endpoints import ConnectionSpec, EndpointConfig
from eve.core.errors import ConfigError, EveError, NotFoundError, StateError
from eve.redis.topology import cluster_masters, is_cluster, node_spec
from eve.redis.wire import FastConnection
from proxy import messages
from proxy import stats as latency
from proxy.options import DEFAULT_STATS_INTERVAL, ProxyOptions
from proxy.server import main as proxy_main
from proxy.slots import CrossSlot

if TYPE_CHECKING:  # pragma: no cover
    from eve.live.backlog import DirtyKeys

__all__ = [
    "InterlaySupervisor",
    "InterlayStatus",
    "STOPPED",
    "STARTING",
    "RUNNING",
    "STOPPING",
    "FAILED",
    "DEFAULT_START_TIMEOUT",
    "DEFAULT_DRAIN_SECONDS",
]

log = logging.getLogger("eve.interlays")

# The states of an interlay, as eve.core.store and interlays.proto spell them.
STOPPED = "STOPPED"      # no process
STARTING = "STARTING"    # processes spawned, not all listening yet
RUNNING = "RUNNING"      # every process listens
STOPPING = "STOPPING"    # asked to stop, draining
FAILED = "FAILED"        # a process died or gave up; `reason` says why

DEFAULT_START_TIMEOUT = 15.0
DEFAULT_DRAIN_SECONDS = 5.0
DISCOVERY_TIMEOUT = 3.0
STOP_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class InterlayStatus:
    interlay_id: str
    state: str
    reason: str
    ports: tuple[int, ...]
    pids: tuple[int, ...]
    nodes: tuple[str, ...]   # backend node behind each port


@dataclass
class _Worker:
    index: int
    process: Any
    pipe: Any
    ready: bool = False
    stopped: bool = False
    failure: str = ""
    report: messages.StatsReport | None = None
    barrier_done: int = 0          # the latest dirty barrier token this process answered
    paused: int = 0                # the latest pause token this process answered
    settled: bool = False          # ... and whether every reply had arrived then


@dataclass
class _Interlay:
    interlay_id: str
    options: tuple[ProxyOptions, ...]
    workers: list[_Worker]
    counter: Any
    state: str = STARTING
    reason: str = ""
    ports: tuple[int, ...] = ()
    started: float = field(default_factory=time.monotonic)
    dirty: Any = None              # eve.live.backlog.DirtyKeys receiving the written keys, or None


def _addresses(host: str, port: int) -> list[tuple[int, tuple]]:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve listen address {host!r}: {exc.strerror}", field="listen_host") from exc
    return list(dict.fromkeys((family, address) for family, _, _, _, address in infos))


def check_port_free(host: str, port: int) -> None:
    """StateError when ``port`` is taken on ``host`` (by anyone, SO_REUSEPORT sockets included)."""
    for family, address in _addresses(host, port):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR ignores connections of an old listener in TIME_WAIT,
            # as the proxy's own listener will; without SO_REUSEPORT, any
            # socket listening there makes bind fail.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
                probe.listen(1)
            except OSError as exc:
                raise StateError(f"port {port} on {host} is already in use"
                                 if exc.errno in (98, 48, 10048) else
                                 f"cannot listen on port {port} on {host}: {exc.strerror or exc}") from exc


class InterlaySupervisor:
    """The interlays' proxy processes of one coordinator. Thread-safe."""

    def __init__(self, *, workers: int = 1, start_timeout: float = DEFAULT_START_TIMEOUT,
                 stats_interval: float = DEFAULT_STATS_INTERVAL,
                 on_state: Callable[[str, str, str], None] | None = None,
                 proxy_options: dict[str, Any] | None = None) -> None:
        """``workers``: proxy processes per interlay, sharing its ports (SO_REUSEPORT).
        ``on_state(interlay_id, state, reason)`` is called from the supervisor's
        thread when an interlay changes state on its own (FAILED).
        ``proxy_options``: further ``ProxyOptions`` fields for every process."""
        if workers < 1:
            raise ConfigError(f"must be at least 1, got {workers}", field="workers")
        self.workers = workers
        self.start_timeout = start_timeout
        self.stats_interval = stats_interval
        self.on_state = on_state
        self.proxy_options = dict(proxy_options or {})
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.RLock()
        self._interlays: dict[str, _Interlay] = {}
        self._monitor: threading.Thread | None = None
        self._closing = False
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        self._changed = threading.Condition(self._lock)   # a dirty barrier was answered
        self._send_lock = threading.Lock()                # supervisor -> proxy messages
        self._barrier_token = 0

    # -- API ------------------------------------------------------------------------------

    def start(self, interlay_id: str, port: int, listen_host: str, endpoint: EndpointConfig,
              max_concurrent_connections: int) -> list[int]:
        """Spawn the interlay's proxy process(es); return the listener ports once they listen."""
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ConfigError(f"port {port} is outside 1..65535", field="port")
        if max_concurrent_connections < 1:
            raise ConfigError(f"must be at least 1, got {max_concurrent_connections}",
                              field="settings.max_concurrent_connections")
        listen_host = listen_host or "127.0.0.1"
        with self._lock:
            existing = self._interlays.get(interlay_id)
            if existing is not None:
                if existing.state in (STARTING, RUNNING, STOPPING):
                    raise StateError(f"interlay {interlay_id!r} is already {existing.state.lower()}")
                self._reap(existing)
                del self._interlays[interlay_id]
        spec = endpoint.write
        nodes, cluster = self._discover(interlay_id, spec)
        ports = tuple(port + i for i in range(len(nodes)))
        if ports[-1] > 65535:
            raise ConfigError(f"{len(nodes)} listeners from port {port} go past 65535", field="port")
        for listener in ports:
            check_port_free(listen_host, listener)
        options = tuple(ProxyOptions(
            interlay_id=interlay_id, listen_host=listen_host, ports=ports, nodes=tuple(nodes), cluster=cluster,
            pool_size=endpoint.pool_size, max_connections=max_concurrent_connections, worker=i,
            workers=self.workers, stats_interval=self.stats_interval,
            log_level=logging.getLogger().getEffectiveLevel(), **self.proxy_options)
            for i in range(self.workers))
        counter = self._context.Value("q", 0)
        interlay = _Interlay(interlay_id, options, [], counter, ports=ports)
        with self._lock:
            self._interlays[interlay_id] = interlay
        try:
            for opts in options:
                parent, child = self._context.Pipe(duplex=True)
                process = self._context.Process(target=proxy_main, args=(opts, child, counter),
                                                name=f"interlay-{interlay_id}-{opts.worker}", daemon=True)
                process.start()
                child.close()
                interlay.workers.append(_Worker(opts.worker, process, parent))
                log.info("interlay %s worker=%d pid=%d started (ports %s, backend %s)", interlay_id,
                         opts.worker, process.pid, ",".join(map(str, ports)),
                         ",".join(node.address for node in nodes))
            self._wait_ready(interlay)
        except BaseException:
            with self._lock:
                self._interlays.pop(interlay_id, None)
            self._terminate(interlay, 0.0)
            raise
        with self._lock:
            interlay.state = RUNNING
            self._changed.notify_all()
        self._ensure_monitor()
        return list(ports)

    def stop(self, interlay_id: str, drain_seconds: float = DEFAULT_DRAIN_SECONDS) -> None:
        """Stop accepting clients, give requests in flight ``drain_seconds`` to
        finish, close everything and wait for the processes to exit. An
        interlay this supervisor does not run (never started, already stopped)
        has nothing to stop: that is not an error."""
        with self._lock:
            interlay = self._interlays.get(interlay_id)
            if interlay is None:
                return
            if interlay.state == STOPPING:
                raise StateError(f"interlay {interlay_id!r} is already stopping")
            interlay.state = STOPPING
        try:
            self._terminate(interlay, drain_seconds)
        finally:
            with self._lock:
                interlay.state = STOPPED
                self._interlays.pop(interlay_id, None)
            self._wake()
        log.info("interlay %s stopped", interlay_id)

    def track_dirty(self, interlay_id: str, dirty: DirtyKeys | None) -> None:
        """Record the keys of every write the interlay forwards into ``dirty``
        (``eve.live.backlog.DirtyKeys``: ``mark_many``, and ``mark_all`` for FLUSHDB,
        FLUSHALL, SWAPDB); ``None`` switches tracking off. NotFoundError when the
        interlay is not running."""
        with self._lock:
            interlay = self._interlays.get(interlay_id)
            if interlay is None or interlay.state not in (STARTING, RUNNING):
                raise NotFoundError(f"interlay {interlay_id!r} is not running")
            interlay.dirty = dirty
            workers = list(interlay.workers)
        for worker in workers:
            self._send(worker, messages.TrackDirty(dirty is not None))
        log.info("interlay %s: dirty-key tracking %s", interlay_id, "on" if dirty is not None else "off")

    def dirty_barrier(self, interlay_id: str, timeout: float = 5.0) -> bool:
        """True once every key the interlay's processes recorded before this call
        has been marked; False after ``timeout`` seconds, or when the interlay is
        not running (or a process of it died)."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            interlay = self._interlays.get(interlay_id)
            if interlay is None or interlay.state != RUNNING:
                return False
            self._barrier_token += 1
            token = self._barrier_token
            workers = list(interlay.workers)
        for worker in workers:
            if not self._send(worker, messages.DirtyBarrier(token)):
                return False
        with self._changed:
            while True:
                if interlay.state != RUNNING:
                    return False
                if all(worker.barrier_done >= token for worker in workers):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))

    def route(self, interlay_id: str, route: messages.Route) -> None:
        """Set a live run's route on every process of the interlay (``proxy.routing``)."""
        with self._lock:
            interlay = self._interlays.get(interlay_id)
            if interlay is None or interlay.state != RUNNING:
                raise StateError(f"interlay {interlay_id!r} is not running")
            workers = list(interlay.workers)
        for worker in workers:
            if not self._send(worker, route):
                raise StateError(f"interlay {interlay_id!r}: proxy process pid={worker.process.pid} is gone")
        log.info("interlay %s: route authoritative=%s dual writes to %s policy=%s reads on target=%d%%",
                 interlay_id, route.authoritative, ",".join(route.mirror_to) or "nobody", route.policy,
                 route.read_percent)

    def pause(self, interlay_id: str, timeout: float = 2.0) -> bool:
        """Stop reading the interlay's clients and wait for every reply in flight (pinned
        clients are closed). True when everything settled; False when ``timeout`` passed
        first (clients stay paused: ``resume`` them either way)."""
        deadline = time.monotonic() + max(0.0, timeout) + 2.0
        with self._lock:
            interlay = self._interlays.get(interlay_id)
            if interlay is None or interlay.state != RUNNING:
                raise StateError(f"interlay {interlay_id!r} is not running")
            self._barrier_token += 1
            token = self._barrier_token
            workers = list(interlay.workers)
        for worker in workers:
            self._send(worker, messages.Pause(token, timeout))
        with self._changed:
            while True:
                if interlay.state != RUNNING:
                    return False
                if all(worker.paused >= token for worker in workers):
                    return all(worker.settled for worker in workers)
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))

    def resume(self, interlay_id: str) -> None:
        with self._lock:
            interlay = self._interlays.get(interlay_id)
            workers = list(interlay.workers) if interlay is not None else []
        for worker in workers:
            self._send(worker, messages.Resume())

    def _send(self, worker: _Worker, message: messages.Message) -> bool:
        with self._send_lock:
            try:
                worker.pipe.send(message)
                return True
            except (OSError, ValueError):
                return False

    def stop_all(self, drain_seconds: float = 0.0) -> None:
        with self._lock:
            ids = list(self._interlays)
        for interlay_id in ids:
            try:
                self.stop(interlay_id, drain_seconds)
            except (NotFoundError, StateError):
                pass
        with self._lock:
            self._closing = True
        self._wake()
        monitor = self._monitor
        if monitor is not None:
            monitor.join(timeout=5)
            self._monitor = None
        with self._lock:
            self._closing = False

    def running(self, interlay_id: str) -> bool:
        with self._lock:
            interlay = self._interlays.get(interlay_id)
            return interlay is not None and interlay.state == RUNNING and \
                all(worker.process.is_alive() for worker in interlay.workers)

    def status(self, interlay_id: str) -> InterlayStatus:
        with self._lock:
            interlay = self._interlays.get(interlay_id)
            if interlay is None:
                return InterlayStatus(interlay_id, STOPPED, "", (), (), ())
            return InterlayStatus(interlay_id, interlay.state, interlay.reason, interlay.ports,
                                  tuple(worker.process.pid or 0 for worker in interlay.workers),
                                  tuple(node.address for node in interlay.options[0].nodes))

    def stats(self, interlay_id: str) -> dict[str, Any]:
        """The latest reports of the interlay's processes, added up::

            {"connections": int, "ops_per_second": float, "errors": int, "ops": int,
             "backends": [{"backend": "source", "ops": int, "errors": int,
                           "p50_ms": float, "p99_ms": float}],
             "sides": [{"side": "target", "writes": int, "failures": int, "last_error": str}],
             "dirty_pending": int,
             "cross_slot": [{"command": "mget", "count": int, "examples": [[bytes, ...], ...]}]}

        ``sides``: the dual writes of a live run, per side other than the authoritative one.
        ``cross_slot``: the commands whose keys spanned slots since the interlay started,
        counted while a live run tracked or routed its writes (``proxy.slots.CrossSlot``).

        ``p50_ms``/``p99_ms`` are backend round trips of the last report
        interval (about a second); ``ops`` and ``errors`` count from the start.
        """
        with self._lock:
            interlay = self._interlays.get(interlay_id)
            if interlay is None:
                raise NotFoundError(f"interlay {interlay_id!r} is not running")
            reports = [worker.report for worker in interlay.workers if worker.report is not None]
        backends: dict[str, dict[str, Any]] = {}
        for report in reports:
            for backend in report.backends:
                entry = backends.setdefault(backend.backend, {"ops": 0, "errors": 0, "histograms": []})
                entry["ops"] += backend.ops
                entry["errors"] += backend.errors
                entry["histograms"].append(backend.histogram)
        backend_stats = []
        for name, entry in backends.items():
            merged = latency.merge(entry["histograms"])
            backend_stats.append({"backend": name, "ops": entry["ops"], "errors": entry["errors"],
                                  "p50_ms": round(latency.percentile(merged, 50), 4),
                                  "p99_ms": round(latency.percentile(merged, 99), 4)})
        sides: dict[str, dict[str, Any]] = {}
        for report in reports:
            for side, writes, failures, last_error in report.sides:
                entry = sides.setdefault(side, {"side": side, "writes": 0, "failures": 0, "last_error": ""})
                entry["writes"] += writes
                entry["failures"] += failures
                entry["last_error"] = last_error or entry["last_error"]
        cross_slot: dict[str, dict[str, Any]] = {}
        for report in reports:
            for command, count, examples in report.cross_slot:
                entry = cross_slot.setdefault(command, {"command": command, "count": 0, "examples": []})
                entry["count"] += count
                entry["examples"] = (entry["examples"] + [list(example) for example in examples])[
                    :CrossSlot.MAX_EXAMPLES]
        return {
            "connections": sum(report.connections for report in reports),
            "ops_per_second": round(sum(report.interval_ops / report.interval_seconds
                                        for report in reports if report.interval_seconds > 0), 1),
            "errors": sum(report.errors for report in reports),
            "ops": sum(report.ops for report in reports),
            "backends": backend_stats,
            "sides": list(sides.values()),
            "dirty_pending": sum(report.dirty_pending for report in reports),
            "cross_slot": sorted(cross_slot.values(), key=lambda entry: -entry["count"]),
        }

    # -- starting -----------------------------------------------------------------------------

    def _discover(self, interlay_id: str, spec: ConnectionSpec) -> tuple[list[ConnectionSpec], bool]:
        """The nodes to front: the masters of a cluster, else the endpoint itself."""
        try:
            with FastConnection(spec, timeout=DISCOVERY_TIMEOUT, client_name="eve-interlay") as conn:
                if not is_cluster(conn):
                    return [spec], False
                masters = cluster_masters(conn)
        except EveError as exc:
            log.warning("interlay %s: cannot read the topology of %s (%s); starting with one listener, "
                        "clients get errors until it answers", interlay_id, spec.address, exc)
            return [spec], False
        if not masters:
            return [spec], False
        return [node_spec(spec, master) for master in masters], True

    def _wait_ready(self, interlay: _Interlay) -> None:
        deadline = time.monotonic() + self.start_timeout
        pending = {worker.pipe: worker for worker in interlay.workers}
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StateError(f"interlay {interlay.interlay_id!r} did not start listening within "
                                 f"{self.start_timeout:g}s")
            sentinels = {worker.process.sentinel: worker for worker in pending.values()}
            ready = multiprocessing.connection.wait(list(pending) + list(sentinels), timeout=min(left, 0.5))
            for item in ready:
                worker = pending.get(item)
                if worker is None:
                    continue
                try:
                    message = messages.check(worker.pipe.recv())
                except (EOFError, OSError, ValueError):
                    continue  # the process is gone: its sentinel says so below
                if isinstance(message, messages.Ready):
                    worker.ready = True
                    del pending[worker.pipe]
                elif isinstance(message, messages.Failed):
                    raise StateError(message.reason) if message.who == "config" else \
                        StateError(f"interlay {interlay.interlay_id!r} failed to start: {message.reason}")
            for item in ready:
                worker = sentinels.get(item)
                if worker is not None and worker.pipe in pending and not worker.pipe.poll():
                    worker.process.join(timeout=1.0)
                    raise StateError(f"interlay {interlay.interlay_id!r}: proxy process pid="
                                     f"{worker.process.pid} exited with code {worker.process.exitcode} "
                                     "before listening")

    # -- stopping ---------------------------------------------------------------------------

    def _terminate(self, interlay: _Interlay, drain_seconds: float) -> None:
        for worker in interlay.workers:
            if worker.process.is_alive():
                self._send(worker, messages.Stop(max(0.0, float(drain_seconds))))
        deadline = time.monotonic() + max(0.0, drain_seconds) + STOP_GRACE_SECONDS
        for worker in interlay.workers:
            worker.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.warning("interlay %s worker=%d pid=%d did not stop in time; terminating",
                            interlay.interlay_id, worker.index, worker.process.pid)
                worker.process.terminate()
                worker.process.join(timeout=2)
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()
        self._reap(interlay)

    @staticmethod
    def _reap(interlay: _Interlay) -> None:
        for worker in interlay.workers:
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            try:
                worker.pipe.close()
            except OSError:
                pass

    # -- watching -------------------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(None)
        except (OSError, ValueError):
            pass

    def _ensure_monitor(self) -> None:
        with self._lock:
            if self._monitor is not None and self._monitor.is_alive():
                self._wake()
                return
            self._monitor = threading.Thread(target=self._watch, name="interlay-supervisor", daemon=True)
            self._monitor.start()

    def _watch(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                watched: dict[Any, tuple[_Interlay, _Worker, str]] = {}
                for interlay in self._interlays.values():
                    if interlay.state not in (RUNNING, STOPPING):
                        continue
                    for worker in interlay.workers:
                        if not worker.pipe.closed:
                            watched[worker.pipe] = (interlay, worker, "pipe")
                        watched[worker.process.sentinel] = (interlay, worker, "exit")
            try:
                ready = multiprocessing.connection.wait([self._wake_r, *watched], timeout=1.0)
            except OSError:
                ready = []  # a pipe closed under us by stop(): look again
            for item in ready:
                if item is self._wake_r:
                    try:
                        while self._wake_r.poll():
                            self._wake_r.recv()
                    except (EOFError, OSError):
                        return
                    continue
                interlay, worker, kind = watched[item]
                if kind == "pipe":
                    self._receive(interlay, worker)
            for item in ready:
                found = watched.get(item)
                if found is not None and found[2] == "exit":
                    self._exited(*found[:2])

    def _receive(self, interlay: _Interlay, worker: _Worker) -> None:
        try:
            while worker.pipe.poll():
                message = messages.check(worker.pipe.recv())
                if isinstance(message, messages.DirtyReport):
                    self._mark(interlay, message.keys)
                    continue
                with self._lock:
                    if isinstance(message, messages.DirtyBarrierDone):
                        worker.barrier_done = max(worker.barrier_done, message.token)
                        self._changed.notify_all()
                    elif isinstance(message, messages.Paused):
                        worker.paused = max(worker.paused, message.token)
                        worker.settled = message.settled
                        self._changed.notify_all()
                    elif isinstance(message, messages.StatsReport):
                        worker.report = message
                    elif isinstance(message, messages.Stopped):
                        worker.stopped = True
                    elif isinstance(message, messages.Failed):
                        worker.failure = message.reason
        except (EOFError, OSError):
            pass
        except ValueError as exc:
            log.error("interlay %s worker=%d: %s", interlay.interlay_id, worker.index, exc)

    @staticmethod
    def _mark(interlay: _Interlay, keys: tuple) -> None:
        """Route one batch of written keys into the interlay's DirtyKeys, in order."""
        dirty = interlay.dirty
        if dirty is None:
            return  # tracking was switched off meanwhile
        run_db: int | None = None
        run: list[bytes] = []
        try:
            for db, key in keys:
                if key is None:
                    if run:
                        dirty.mark_many(run_db, run)
                        run = []
                    dirty.mark_all(db)
                    continue
                if db != run_db and run:
                    dirty.mark_many(run_db, run)
                    run = []
                run_db = db
                run.append(key)
            if run:
                dirty.mark_many(run_db, run)
        except Exception:
            log.exception("interlay %s: cannot mark dirty keys", interlay.interlay_id)

    def _exited(self, interlay: _Interlay, worker: _Worker) -> None:
        with self._lock:
            if interlay.state != RUNNING or self._interlays.get(interlay.interlay_id) is not interlay:
                return
            worker.process.join(timeout=1.0)
            code = worker.process.exitcode
            reason = worker.failure or f"proxy process pid={worker.process.pid} exited with code {code}"
            interlay.state = FAILED
            interlay.reason = reason
            self._changed.notify_all()
        log.error("interlay %s FAILED: %s", interlay.interlay_id, reason)
        # The other workers of the interlay would serve only part of its clients.
        for other in interlay.workers:
            if other is not worker and other.process.is_alive():
                other.process.kill()
        if self.on_state is not None:
            try:
                self.on_state(interlay.interlay_id, FAILED, reason)
            except Exception:
                log.exception("on_state callback failed")

