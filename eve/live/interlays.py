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

Interlays outlive the coordinator (issue 12) when the supervisor has a
``control_dir`` (``eve serve`` puts it next to the state file): each proxy
process then listens on a Unix socket there, the token a coordinator must
prove is kept in ``<control_dir>/<interlay>.json`` (0600, in a 0700
directory) with each process's pid and start identity, and a coordinator
killed with SIGKILL leaves its interlays serving under their last route
(``proxy.control``). ``recover(wanted)`` in the next coordinator re-attaches
to them (an interlay not wanted any more is stopped), and the first
``track_dirty`` after that receives the keys they spooled meanwhile: those
written while no coordinator listened, and those reported to the dead one that
it had not confirmed re-copied (``confirm_dirty``). Without a ``control_dir``
the processes die with the coordinator, as workers do.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import secrets
import select
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eve.core.endpoints import ConnectionSpec, EndpointConfig
from eve.core.errors import ConfigError, EveError, NotFoundError, StateError
from eve.core.tls import server_context
from eve.redis.topology import cluster_masters, is_cluster, node_spec
from eve.redis.wire import FastConnection
from proxy import messages
from proxy import stats as latency
from proxy.control import DEFAULT_SPOOL_KEYS, ControlOptions, describe_route, start_identity
from proxy.options import DEFAULT_STATS_INTERVAL, TLS_SETTINGS, ProxyOptions
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
    "PROXY_SETTINGS",
    "proxy_settings",
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
ATTACH_TIMEOUT = 5.0
# A proxy process that dies is started again at once on the same ports (issue 19); one that
# keeps dying is started again after a growing pause, and given up on (the interlay FAILED,
# with the reason) after RESTART_LIMIT deaths within RESTART_WINDOW seconds: a crash loop.
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
RESTART_BACKOFF = 0.25            # the pause before the second restart in a row; doubles after
RESTART_BACKOFF_MAX = 4.0
# A Unix socket's path holds at most 107 bytes (unix(7)); a longer control dir gets its sockets elsewhere.
MAX_SOCKET_PATH = 100


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
    attached: messages.Attached | None = None   # its first message, when this supervisor re-attached to it
    # DIRTY reports received on this connection, and when each was marked: (monotonic time, number).
    received: int = 0
    receipts: collections.deque = field(default_factory=collections.deque)
    confirmed: int = 0                          # the latest CONFIRM sent
    replaced: bool = False                      # died; a new process takes its place (or the interlay failed)
    taken_over: bool = False                    # its pipe closed while it lived on: another coordinator has it


@dataclass
class _Interlay:
    interlay_id: str
    nodes: tuple[str, ...]         # backend node behind each port
    cluster: bool
    workers: list[_Worker]
    counter: Any
    state: str = STARTING
    reason: str = ""
    ports: tuple[int, ...] = ()
    started: float = field(default_factory=time.monotonic)
    dirty: Any = None              # eve.live.backlog.DirtyKeys receiving the written keys, or None
    route: messages.Route | None = None   # the last route its processes were given
    attached: messages.Attached | None = None   # how a re-attached interlay said it was doing
    # What a restart of one of its processes needs: each process's options and control options
    # (none for an interlay this supervisor re-attached to and was not told how to start).
    options: tuple[ProxyOptions, ...] = ()
    controls: list[ControlOptions] = field(default_factory=list)
    generation: int = 0            # processes replaced since it started (a barrier or pause spanning one fails)
    deaths: collections.deque = field(default_factory=collections.deque)   # monotonic times of recent deaths


class _AttachedProcess:
    """A proxy process this coordinator did not spawn (it re-attached to it), with the part
    of ``multiprocessing.Process`` the supervisor uses. A pidfd stands for the process, so a
    signal never reaches another process that got its pid; ``exitcode`` is unknown (None)."""

    def __init__(self, pid: int, identity: str) -> None:
        self.pid = pid
        self.identity = identity
        self.sentinel = os.pidfd_open(pid)
        self.exitcode: int | None = None
        self._closing = threading.Lock()

    def is_alive(self) -> bool:
        return start_identity(self.pid) == self.identity

    def join(self, timeout: float | None = None) -> None:
        try:
            select.select([self.sentinel], [], [], timeout)
        except (OSError, ValueError):
            pass   # closed (by stop() on another thread): nothing to wait for

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.sentinel < 0:
            return
        try:
            signal.pidfd_send_signal(self.sentinel, signum)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        # Once, whichever thread comes first (the monitor when it died, stop() when it stops).
        with self._closing:
            fd, self.sentinel = self.sentinel, -1
        if fd >= 0:
            os.close(fd)


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


# Settings of an interlay (InterlaySettings, docs/configuration.md) that its
# proxy processes apply: setting -> (ProxyOptions field, type, scale to the field's unit).
_PROXY_SETTINGS: dict[str, tuple[str, type, float]] = {
    "output_buffer_hard_limit_bytes": ("output_hard_limit", int, 1),
    "output_buffer_soft_limit_bytes": ("output_soft_limit", int, 1),
    "output_buffer_soft_seconds": ("output_soft_seconds", float, 1),
    "stuck_connection_ms": ("stuck_after", float, 0.001),
    "tls_cert_file": ("tls_cert_file", str, 1),
    "tls_key_file": ("tls_key_file", str, 1),
    "tls_ca_file": ("tls_ca_file", str, 1),
}
PROXY_SETTINGS = frozenset(_PROXY_SETTINGS)
_KIND_NAMES = {int: "an integer", float: "a number", str: "a path"}


def proxy_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ProxyOptions`` fields an interlay's settings set, checked: a value of
    the wrong type or range, or TLS files that do not load, is a ConfigError
    naming the setting (at CreateInterlay, and again at StartInterlay: files change)."""
    fields: dict[str, Any] = {}
    for name, (field_name, kind, scale) in _PROXY_SETTINGS.items():
        value = settings.get(name)
        if value is None or value == "":
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"must be {_KIND_NAMES[kind]}, got {value!r}", field=f"settings.{name}")
        if kind is not str and value < 0:
            raise ConfigError(f"must be 0 or more, got {value!r}", field=f"settings.{name}")
        fields[field_name] = value * scale if scale != 1 else value
    for name in ("output_soft_seconds", "stuck_after"):
        if fields.get(name) == 0:
            setting = next(key for key, spec in _PROXY_SETTINGS.items() if spec[0] == name)
            raise ConfigError("must be more than 0", field=f"settings.{setting}")
    cert, key, ca = (fields.get(name, "") for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"))
    if cert or key or ca:
        if not cert or not key:
            raise ConfigError("TLS for the interlay's clients needs both tls_cert_file and tls_key_file",
                              field="settings.tls_key_file" if cert else "settings.tls_cert_file")
        server_context(cert, key, ca or None, fields=TLS_SETTINGS)
    return fields


class InterlaySupervisor:
    """The interlays' proxy processes of one coordinator. Thread-safe."""

    def __init__(self, *, workers: int = 1, start_timeout: float = DEFAULT_START_TIMEOUT,
                 stats_interval: float = DEFAULT_STATS_INTERVAL,
                 on_state: Callable[[str, str, str], None] | None = None,
                 proxy_options: dict[str, Any] | None = None, control_dir: str | Path | None = None,
                 spool_keys: int = DEFAULT_SPOOL_KEYS, restart_limit: int = RESTART_LIMIT) -> None:
        """``workers``: proxy processes per interlay, sharing its ports (SO_REUSEPORT).
        ``on_state(interlay_id, state, reason)`` is called from the supervisor's
        thread when an interlay changes state on its own (FAILED).
        ``proxy_options``: further ``ProxyOptions`` fields for every process.
        ``control_dir``: where the interlays that outlive this coordinator keep their
        control sockets and tokens (None: they die with it); ``spool_keys`` bounds the
        dirty keys each process keeps meanwhile. ``restart_limit``: deaths of its processes an interlay
        survives within ``RESTART_WINDOW`` (each process started again in its place); one more is a
        crash loop, and the interlay FAILED (0: never restarted)."""
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
        self.control_dir = Path(control_dir) if control_dir is not None else None
        self.spool_keys = spool_keys
        self.restart_limit = restart_limit
        self._socket_dir: str | None = None   # for sockets whose path in control_dir would be too long
        if self.control_dir is not None:
            self.control_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.control_dir.chmod(0o700)
        # The live runs' side of their interlays (``Workflow`` sets them): ``run_route(id)`` ->
        # (route, dirty): the route of the run that carries the interlay's traffic, and the
        # ``DirtyKeys`` its writes go to (None: not tracked), for every process started without
        # a route given; ``on_restart(id, reason)``: a process of it died and another took its place.
        self.run_route: Callable[[str], tuple[messages.Route | None, Any]] | None = None
        self.on_restart: Callable[[str, str], None] | None = None
        self._restarts: dict[str, tuple[int, str]] = {}   # interlay -> (processes started again, why last)
        self._restart_jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._restarter: threading.Thread | None = None

    # -- API ------------------------------------------------------------------------------

    def start(self, interlay_id: str, port: int, listen_host: str, endpoint: EndpointConfig,
              max_concurrent_connections: int, settings: Mapping[str, Any] | None = None,
              route: messages.Route | None = None) -> list[int]:
        """Spawn the interlay's proxy process(es); return the listener ports once they listen.
        ``settings``: further ``ProxyOptions`` fields of this interlay (``proxy_settings``
        of its stored settings), over the supervisor's own ``proxy_options``. ``route``: a
        live run's route the processes serve under from their first client on (a restart
        after a cutover: the target is authoritative)."""
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
        dirty = None
        if route is None and self.run_route is not None:
            # Every start takes the route of the run that carries the interlay's traffic (issue 19):
            # never plain forwarding to the source after a cutover, never to the target before one.
            route, dirty = self.run_route(interlay_id)
        options, nodes, cluster = self._options(interlay_id, port, listen_host, endpoint,
                                                max_concurrent_connections, settings)
        ports = options[0].ports
        for listener in ports:
            check_port_free(listen_host, listener)
        # One connection count per process, no lock (proxy.parts.Clients): a process killed
        # with SIGKILL leaves no lock held; its successor's slot is zeroed.
        counter = self._context.Array("q", self.workers, lock=False)
        interlay = _Interlay(interlay_id, tuple(node.address for node in nodes), cluster, [], counter, ports=ports,
                             route=route, dirty=dirty, options=options)
        controls = self._control_options(interlay_id, route)
        interlay.controls = controls
        if dirty is not None:
            # A process of this interlay died under a live run: the keys it had not reported are gone.
            dirty.mark_all(None)
        with self._lock:
            self._interlays[interlay_id] = interlay
        try:
            for opts in options:
                interlay.workers.append(self._spawn(interlay, opts))
            if controls:
                # Before they listen: a coordinator killed from here on leaves processes the next one finds.
                self._write_control_file(interlay, controls)
            self._wait_ready(interlay)
        except BaseException:
            with self._lock:
                self._interlays.pop(interlay_id, None)
            self._terminate(interlay, 0.0)
            self._remove_control_file(interlay_id)
            raise
        with self._lock:
            interlay.state = RUNNING
            self._changed.notify_all()
        self._ensure_monitor()
        if dirty is not None:
            self._restarted(interlay_id, "started again while its run tracked writes")
        return list(ports)

    def _options(self, interlay_id: str, port: int, listen_host: str, endpoint: EndpointConfig,
                 max_concurrent_connections: int, settings: Mapping[str, Any] | None,
                 ) -> tuple[tuple[ProxyOptions, ...], list[ConnectionSpec], bool]:
        """Each process's options, the nodes fronted and whether they are a cluster's masters."""
        nodes, cluster = self._discover(interlay_id, endpoint.write)
        ports = tuple(port + i for i in range(len(nodes)))
        if ports[-1] > 65535:
            raise ConfigError(f"{len(nodes)} listeners from port {port} go past 65535", field="port")
        options = tuple(ProxyOptions(
            interlay_id=interlay_id, listen_host=listen_host, ports=ports, nodes=tuple(nodes), cluster=cluster,
            pool_size=endpoint.pool_size, max_connections=max_concurrent_connections, worker=i,
            workers=self.workers, stats_interval=self.stats_interval,
            log_level=logging.getLogger().getEffectiveLevel(), **{**self.proxy_options, **(settings or {})})
            for i in range(self.workers))
        return options, nodes, cluster

    def _spawn(self, interlay: _Interlay, opts: ProxyOptions) -> _Worker:
        """Start one proxy process. Its route and dirty-key tracking are in its pipe before it
        starts: it applies them before it listens, so its first client meets them."""
        parent, child = self._context.Pipe(duplex=True)
        if interlay.route is not None:
            parent.send(interlay.route)
        if interlay.dirty is not None:
            parent.send(messages.TrackDirty(True))
        detachable = interlay.controls[opts.worker] if interlay.controls else None
        if detachable is not None and detachable.route != interlay.route:
            detachable = dataclasses.replace(detachable, route=interlay.route)
        process = self._context.Process(target=proxy_main, args=(opts, child, interlay.counter, detachable),
                                        name=f"interlay-{interlay.interlay_id}-{opts.worker}", daemon=True)
        process.start()
        child.close()
        log.info("interlay %s worker=%d pid=%d started (ports %s, backend %s)", interlay.interlay_id,
                 opts.worker, process.pid, ",".join(map(str, opts.ports)),
                 ",".join(node.address for node in opts.nodes))
        return _Worker(opts.worker, process, parent)

    def restarts(self, interlay_id: str) -> tuple[int, str]:
        """How many times a process of the interlay was started again after it died (or the
        interlay was started again while its run tracked writes), and why the last time."""
        with self._lock:
            return self._restarts.get(interlay_id, (0, ""))

    def _restarted(self, interlay_id: str, reason: str) -> None:
        with self._lock:
            count = self._restarts.get(interlay_id, (0, ""))[0] + 1
            self._restarts[interlay_id] = (count, reason)
        if self.on_restart is not None:
            try:
                self.on_restart(interlay_id, reason)
            except Exception:
                log.exception("on_restart callback failed")

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
            self._remove_control_file(interlay_id)
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
            generation = interlay.generation
        for worker in workers:
            if not self._send(worker, messages.DirtyBarrier(token)):
                return False
        with self._changed:
            while True:
                # A process that died meanwhile took its unreported keys along (the run compares in full).
                if interlay.state != RUNNING or interlay.generation != generation:
                    return False
                if all(worker.barrier_done >= token for worker in workers):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))

    def confirm_dirty(self, interlay_id: str, marked_before: float) -> None:
        """Every key of the reports marked before ``marked_before`` (``time.monotonic``) is
        re-copied: the interlay's processes need not keep them for a next coordinator."""
        with self._lock:
            interlay = self._interlays.get(interlay_id)
            if interlay is None or interlay.state != RUNNING:
                return
            confirms = []
            for worker in interlay.workers:
                number = worker.confirmed
                while worker.receipts and worker.receipts[0][0] < marked_before:
                    number = worker.receipts.popleft()[1]
                if number > worker.confirmed:
                    worker.confirmed = number
                    confirms.append((worker, number))
        for worker, number in confirms:
            self._send(worker, messages.DirtyConfirm(number))

    def route(self, interlay_id: str, route: messages.Route) -> None:
        """Set a live run's route on every process of the interlay (``proxy.routing``)."""
        with self._lock:
            interlay = self._interlays.get(interlay_id)
            if interlay is None or interlay.state != RUNNING:
                raise StateError(f"interlay {interlay_id!r} is not running")
            workers = list(interlay.workers)
            interlay.route = route
        for worker in workers:
            if not self._send(worker, route) and not worker.replaced and worker.process.is_alive():
                raise StateError(f"interlay {interlay_id!r}: proxy process pid={worker.process.pid} is gone")
            # (one that died is being replaced: its successor starts under ``interlay.route``)
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
            generation = interlay.generation
        for worker in workers:
            self._send(worker, messages.Pause(token, timeout))
        with self._changed:
            while True:
                if interlay.state != RUNNING or interlay.generation != generation:
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
            restarter, self._restarter = self._restarter, None
        self._wake()
        monitor = self._monitor
        if monitor is not None:
            monitor.join(timeout=5)
            self._monitor = None
        if restarter is not None:
            self._restart_jobs.put(None)
            restarter.join(timeout=10)
        with self._lock:
            self._closing = False

    def detach_all(self) -> list[str]:
        """Leave every interlay serving, as a coordinator killed with SIGKILL does, and return
        their ids (issue 24: a graceful stop of ``eve serve``, what systemd and Kubernetes send,
        must not cut the applications' connections). Needs a ``control_dir``, through which the
        next coordinator re-attaches; without one the interlays are stopped, as before.

        The monitor stops first (a closed pipe is then no failure), each pipe is closed (the
        proxy process sees it as its coordinator's death and detaches), and each process is
        taken off ``multiprocessing``'s children, whose exit handler would terminate it."""
        if self.control_dir is None:
            self.stop_all()
            return []
        with self._lock:
            self._closing = True
            interlays = list(self._interlays.values())
            self._interlays.clear()
        self._wake()
        monitor = self._monitor
        if monitor is not None:
            monitor.join(timeout=5)
            self._monitor = None
        with self._lock:
            self._closing = False
        for interlay in interlays:
            for worker in interlay.workers:
                try:
                    worker.pipe.close()
                except OSError:
                    pass
                multiprocessing.process._children.discard(worker.process)  # type: ignore[attr-defined]
            log.info("interlay %s left serving (pids %s); the next coordinator re-attaches", interlay.interlay_id,
                     ",".join(str(worker.process.pid) for worker in interlay.workers))
        return [interlay.interlay_id for interlay in interlays]

    def running(self, interlay_id: str) -> bool:
        with self._lock:
            interlay = self._interlays.get(interlay_id)
            # RUNNING while a process that died is being replaced (issue 19): its clients
            # reconnect on the same ports in a moment, and the others are served meanwhile.
            return interlay is not None and interlay.state == RUNNING

    def status(self, interlay_id: str) -> InterlayStatus:
        with self._lock:
            interlay = self._interlays.get(interlay_id)
            if interlay is None:
                return InterlayStatus(interlay_id, STOPPED, "", (), (), ())
            return InterlayStatus(interlay_id, interlay.state, interlay.reason, interlay.ports,
                                  tuple(worker.process.pid or 0 for worker in interlay.workers),
                                  interlay.nodes)

    def stats(self, interlay_id: str) -> dict[str, Any]:
        """The latest reports of the interlay's processes, added up::

            {"connections": int, "ops_per_second": float, "errors": int, "ops": int,
             "backends": [{"backend": "source", "ops": int, "errors": int,
                           "p50_ms": float, "p99_ms": float,
                           "latency_buckets": (int, ...), "latency_sum_seconds": float}],
             "sides": [{"side": "target", "writes": int, "failures": int, "last_error": str}],
             "dirty_pending": int, "noscript_replies": int,
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
                entry = backends.setdefault(backend.backend, {"ops": 0, "errors": 0, "histograms": [],
                                                              "since_start": [], "latency_sum_seconds": 0.0})
                entry["ops"] += backend.ops
                entry["errors"] += backend.errors
                entry["histograms"].append(backend.histogram)
                entry["since_start"].append(getattr(backend, "latency_buckets", ()))  # issue 24
                entry["latency_sum_seconds"] += getattr(backend, "latency_sum_seconds", 0.0)
        backend_stats = []
        for name, entry in backends.items():
            merged = latency.merge(entry["histograms"])
            backend_stats.append({"backend": name, "ops": entry["ops"], "errors": entry["errors"],
                                  "p50_ms": round(latency.percentile(merged, 50), 4),
                                  "p99_ms": round(latency.percentile(merged, 99), 4),
                                  "latency_buckets": latency.merge(entry["since_start"]),
                                  "latency_sum_seconds": entry["latency_sum_seconds"]})
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
            "noscript_replies": sum(report.noscript_replies for report in reports),
            "cross_slot": sorted(cross_slot.values(), key=lambda entry: -entry["count"]),
        }

    def last_route(self, interlay_id: str) -> messages.Route | None:
        """The route the interlay's processes serve under (None: plain forwarding, or not running)."""
        with self._lock:
            interlay = self._interlays.get(interlay_id)
            return interlay.route if interlay is not None else None

    def attached(self, interlay_id: str) -> messages.Attached | None:
        """How an interlay this supervisor re-attached to was doing (None: it started it);
        ``spooled`` and ``overflowed`` are those of all its processes."""
        with self._lock:
            interlay = self._interlays.get(interlay_id)
            return interlay.attached if interlay is not None else None

    # -- outliving the coordinator -----------------------------------------------------------

    def recover(self, wanted: set[str] | frozenset[str]) -> list[str]:
        """Re-attach to the interlays a previous coordinator of this ``control_dir`` left
        running, and return their ids. One not in ``wanted`` (stopped or deleted meanwhile)
        is stopped; one whose processes are gone, or only some of them, is forgotten (its
        survivors killed): the caller starts it again."""
        if self.control_dir is None:
            return []
        recovered = []
        for path in sorted(self.control_dir.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                interlay_id = record["interlay"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("control file %s is unreadable (%s); removed", path, exc)
                path.unlink(missing_ok=True)
                continue
            with self._lock:
                if interlay_id in self._interlays:
                    continue
            interlay = self._reattach(record)
            if interlay is None:
                path.unlink(missing_ok=True)
                continue
            if interlay_id not in wanted:
                log.warning("interlay %s: its proxy processes served on without a coordinator, but the interlay "
                            "is no longer meant to run (stopped or deleted meanwhile): stopping them", interlay_id)
                self._terminate(interlay, DEFAULT_DRAIN_SECONDS)
                path.unlink(missing_ok=True)
                continue
            interlay.state = RUNNING
            with self._lock:
                self._interlays[interlay_id] = interlay
            attached = interlay.attached
            log.info("interlay %s: re-attached to pids %s (ports %s) after %.1fs without a coordinator; %s",
                     interlay_id, ",".join(str(worker.process.pid) for worker in interlay.workers),
                     ",".join(map(str, interlay.ports)), attached.detached_seconds if attached else 0.0,
                     describe_route(interlay.route))
            recovered.append(interlay_id)
        if recovered:
            self._ensure_monitor()
        return recovered

    def _reattach(self, record: dict[str, Any]) -> _Interlay | None:
        """Connect to every process of one control file; None (survivors killed) unless all answer."""
        interlay_id = record["interlay"]
        token = bytes.fromhex(record["token"])
        workers: list[_Worker] = []
        missing = []
        for entry in record["workers"]:
            worker = self._connect(interlay_id, entry, token)
            if worker is None:
                missing.append(str(entry.get("pid")))
            else:
                workers.append(worker)
        if missing or not workers:
            if workers:
                log.warning("interlay %s: proxy process(es) %s are gone; stopping the others to start it afresh",
                            interlay_id, ",".join(missing))
            interlay = _Interlay(interlay_id, (), False, workers, None)
            self._terminate(interlay, 0.0)
            return None
        reports = [worker.attached for worker in workers if worker.attached is not None]
        first = dataclasses.replace(reports[0], spooled=sum(report.spooled for report in reports),
                                    overflowed=any(report.overflowed for report in reports))
        controls = [ControlOptions(entry["socket"], token, None, self.spool_keys)
                    for entry in sorted(record["workers"], key=lambda entry: int(entry["worker"]))]
        return _Interlay(interlay_id, first.nodes, bool(record.get("cluster")), workers, None,
                         ports=first.ports, route=first.route, attached=first,
                         controls=controls if len(controls) == len(workers) else [])

    def adopt(self, interlay_id: str, port: int, listen_host: str, endpoint: EndpointConfig,
              max_concurrent_connections: int, settings: Mapping[str, Any] | None = None) -> None:
        """How to start again a process of an interlay this supervisor re-attached to (``recover``),
        should one die: as ``start`` would. StateError when the interlay's ports differ from those
        it serves on (its source's topology changed): a death then fails it, to be started by hand."""
        listen_host = listen_host or "127.0.0.1"
        options, _, _ = self._options(interlay_id, port, listen_host, endpoint, max_concurrent_connections, settings)
        with self._lock:
            interlay = self._interlays.get(interlay_id)
            if interlay is None or interlay.options:
                return
            if options[0].ports != interlay.ports or len(options) != len(interlay.workers) or \
                    len(interlay.controls) != len(options):
                raise StateError(f"interlay {interlay_id!r} serves ports {interlay.ports} with "
                                 f"{len(interlay.workers)} processes; it would start with {options[0].ports} and "
                                 f"{len(options)}")
            interlay.options = options

    def _connect(self, interlay_id: str, entry: dict[str, Any], token: bytes) -> _Worker | None:
        """One surviving process, attached: it proved to be the one that started (pid and start
        identity), and it answered the token's challenge on its socket with ATTACHED."""
        pid, identity = int(entry["pid"]), str(entry["start"])
        if start_identity(pid) != identity:
            return None
        try:
            process = _AttachedProcess(pid, identity)
        except ProcessLookupError:
            return None
        try:
            conn = multiprocessing.connection.Client(entry["socket"], family="AF_UNIX", authkey=token)
            if not conn.poll(ATTACH_TIMEOUT):
                raise TimeoutError(f"no answer within {ATTACH_TIMEOUT:g}s")
            message = messages.check(conn.recv())
            if not isinstance(message, messages.Attached):
                raise ValueError(f"{type(message).__name__} instead of ATTACHED")
        except (OSError, EOFError, ValueError, multiprocessing.AuthenticationError) as exc:
            log.warning("interlay %s: cannot re-attach to proxy pid=%d (%s)", interlay_id, pid, exc)
            process.kill()
            process.close()
            return None
        return _Worker(int(entry["worker"]), process, conn, ready=True, attached=message)

    def _control_options(self, interlay_id: str, route: messages.Route | None) -> list[ControlOptions]:
        """One per worker process, sharing a fresh token; none without a control dir."""
        if self.control_dir is None:
            return []
        token = secrets.token_bytes(32)
        return [ControlOptions(self._socket_path(interlay_id, worker), token, route, self.spool_keys)
                for worker in range(self.workers)]

    def _socket_path(self, interlay_id: str, worker: int) -> str:
        assert self.control_dir is not None
        path = str(self.control_dir / f"{interlay_id}.{worker}.sock")
        if len(path) <= MAX_SOCKET_PATH:
            return path
        # A private directory of its own (0700): the control file says where it is.
        if self._socket_dir is None:
            self._socket_dir = tempfile.mkdtemp(prefix="eve-interlays-")
        return os.path.join(self._socket_dir, f"{secrets.token_hex(6)}.{worker}.sock")

    def _control_file(self, interlay_id: str) -> Path:
        assert self.control_dir is not None
        return self.control_dir / f"{interlay_id}.json"

    def _write_control_file(self, interlay: _Interlay, controls: list[ControlOptions]) -> None:
        """What the next coordinator needs to find and attach to the processes; 0600 (the token)."""
        record = {"interlay": interlay.interlay_id, "token": controls[0].token.hex(), "cluster": interlay.cluster,
                  "workers": [{"worker": worker.index, "pid": worker.process.pid,
                               "start": start_identity(worker.process.pid),
                               "socket": controls[worker.index].socket_path} for worker in interlay.workers]}
        path = self._control_file(interlay.interlay_id)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(record, file)
        os.replace(temporary, path)

    def _remove_control_file(self, interlay_id: str) -> None:
        if self.control_dir is not None:
            self._control_file(interlay_id).unlink(missing_ok=True)

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

    def _wait_ready(self, interlay: _Interlay, workers: list[_Worker] | None = None) -> None:
        deadline = time.monotonic() + self.start_timeout
        pending = {worker.pipe: worker for worker in (interlay.workers if workers is None else workers)}
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
                except (EOFError, OSError) as exc:
                    # The process is gone (its end of the pipe closed): say so now, not at the timeout.
                    log.debug("interlay %s: pipe of pid=%s: %r", interlay.interlay_id, worker.process.pid, exc)
                    worker.process.join(timeout=1.0)
                    raise StateError(f"interlay {interlay.interlay_id!r}: proxy process pid={worker.process.pid} "
                                     f"exited with code {worker.process.exitcode} before listening") from None
                except ValueError:
                    continue
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
            InterlaySupervisor._close_worker(worker)

    @staticmethod
    def _close_worker(worker: _Worker) -> None:
        """Its pipe, and the pidfd of a re-attached process: closed once it is gone."""
        try:
            worker.pipe.close()
        except OSError:
            pass
        if isinstance(worker.process, _AttachedProcess):
            worker.process.close()

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
                        if not worker.replaced and worker.process.sentinel >= 0:
                            watched[worker.process.sentinel] = (interlay, worker, "exit")
            try:
                ready = multiprocessing.connection.wait([self._wake_r, *watched], timeout=1.0)
            except (OSError, ValueError):
                ready = []  # a pipe or pidfd closed under us by stop(): look again
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
                    with self._lock:  # after the marks: a receipt older than a mark is never confirmed early
                        worker.received += 1
                        worker.receipts.append((time.monotonic(), worker.received))
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
        except EOFError:
            # A process that dies closes its pipe as it exits; one that lives on closed it for a
            # newer coordinator that attached (proxy.control): then it is no longer ours to restart.
            if interlay.state != RUNNING:
                return   # being stopped: nothing to decide
            worker.process.join(timeout=0.5)
            if worker.process.is_alive():
                worker.taken_over = True
                worker.pipe.close()   # on the monitor thread, which alone reads it
        except OSError:
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
        """A process died without being asked to: another takes its place on the same ports at
        once (issue 19), under the interlay's last route; with more than one process per
        interlay the others serve meanwhile. The dirty keys it had not reported are gone: a
        run tracking writes is told to compare the sides in full (``mark_all``)."""
        with self._lock:
            if interlay.state != RUNNING or self._interlays.get(interlay.interlay_id) is not interlay \
                    or worker.replaced:
                return
            worker.process.join(timeout=1.0)
            code = worker.process.exitcode
            reason = worker.failure or f"proxy process pid={worker.process.pid} exited" + \
                (f" with code {code}" if code is not None else "")
            worker.replaced = True
            interlay.generation += 1
            deaths = self._death(interlay)
            dirty = interlay.dirty
            self._changed.notify_all()
        # Closed here, on the monitor thread that reads them (its last messages were read before).
        self._close_worker(worker)
        if dirty is not None:
            dirty.mark_all(None)
        if worker.taken_over:
            self._give_up(interlay, f"{reason}; another coordinator had taken it over")
            return
        if not interlay.options:
            self._give_up(interlay, f"{reason}; it was started by an earlier coordinator and cannot be "
                          "restarted by this one: StartInterlay it")
            return
        log.error("interlay %s worker=%d: %s; restarting it", interlay.interlay_id, worker.index, reason)
        with self._lock:
            self._restart_jobs.put((interlay, worker, reason, deaths))
            if self._restarter is None or not self._restarter.is_alive():
                # One thread that lives as long as the processes it starts: Linux kills a
                # process whose parent *thread* ends (PR_SET_PDEATHSIG, die_with_parent).
                self._restarter = threading.Thread(target=self._restarts_loop, name="interlay-restarter",
                                                   daemon=True)
                self._restarter.start()

    def _restarts_loop(self) -> None:
        while True:
            job = self._restart_jobs.get()
            if job is None:
                return
            try:
                self._restart(*job)
            except Exception:
                log.exception("interlay %s: restart failed", job[0].interlay_id)

    @staticmethod
    def _death(interlay: _Interlay) -> int:
        """Record one death of a process of ``interlay``; how many there were within the window."""
        now = time.monotonic()
        interlay.deaths.append(now)
        while interlay.deaths and now - interlay.deaths[0] > RESTART_WINDOW:
            interlay.deaths.popleft()
        return len(interlay.deaths)

    def _restart(self, interlay: _Interlay, dead: _Worker, reason: str, deaths: int) -> None:
        """Start a process in the place of ``dead``: at once the first time, after a doubling
        pause when they keep dying; FAILED (``_give_up``) on a crash loop or a port taken."""
        cause = reason
        while True:
            if deaths > self.restart_limit:
                self._give_up(interlay, f"{reason}; crash loop: its proxy processes died or failed to start "
                              f"{deaths} times within {RESTART_WINDOW:g}s (the last: {cause}); not restarted again")
                return
            if deaths > 1:
                time.sleep(min(RESTART_BACKOFF_MAX, RESTART_BACKOFF * 2 ** (deaths - 2)))
            with self._lock:
                if interlay.state != RUNNING or self._interlays.get(interlay.interlay_id) is not interlay or \
                        self._closing:
                    return
                alone = all(other.replaced for other in interlay.workers)
            try:
                if alone:
                    # Nobody of this interlay listens now: someone else may have taken a port meanwhile.
                    for listener in interlay.ports:
                        check_port_free(interlay.options[0].listen_host, listener)
                if interlay.counter is not None:
                    interlay.counter[dead.index] = 0   # the dead process's clients are gone
                worker = self._spawn(interlay, interlay.options[dead.index])
                try:
                    self._wait_ready(interlay, [worker])
                except BaseException:
                    worker.replaced = True
                    self._reap_worker(worker)
                    raise
            except StateError as exc:
                if "already in use" in str(exc) or "cannot listen" in str(exc):
                    self._give_up(interlay, f"{reason}; it cannot be restarted: {exc}")
                    return
                cause = str(exc)
                with self._lock:
                    deaths = self._death(interlay)
                log.error("interlay %s worker=%d: restart failed (%s)", interlay.interlay_id, dead.index, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - spawning failed (no memory, no file descriptors...)
                self._give_up(interlay, f"{reason}; it cannot be restarted: {type(exc).__name__}: {exc}")
                return
            break
        with self._lock:
            abandoned = interlay.state != RUNNING or self._interlays.get(interlay.interlay_id) is not interlay
            if not abandoned:
                interlay.workers[interlay.workers.index(dead)] = worker
                route, tracking = interlay.route, interlay.dirty is not None
                self._changed.notify_all()
        if abandoned:   # stopped meanwhile
            self._reap_worker(worker)
            return
        # A route or tracking set while it started went to the others only: again, to be sure.
        if route is not None:
            self._send(worker, route)
        self._send(worker, messages.TrackDirty(tracking))
        if interlay.controls:
            self._write_control_file(interlay, interlay.controls)
        self._wake()
        log.warning("interlay %s worker=%d restarted as pid=%d on ports %s (%s); %s", interlay.interlay_id,
                    worker.index, worker.process.pid, ",".join(map(str, interlay.ports)), reason,
                    describe_route(interlay.route))
        self._restarted(interlay.interlay_id, reason)
        if self.on_state is not None:
            try:
                self.on_state(interlay.interlay_id, RUNNING, f"restarted after: {reason}")
            except Exception:
                log.exception("on_state callback failed")

    @staticmethod
    def _reap_worker(worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5)
        try:
            worker.pipe.close()
        except OSError:
            pass

    def _give_up(self, interlay: _Interlay, reason: str) -> None:
        """The interlay cannot serve again on its own: FAILED, with the reason, everywhere."""
        with self._lock:
            if interlay.state != RUNNING or self._interlays.get(interlay.interlay_id) is not interlay:
                return
            interlay.state = FAILED
            interlay.reason = reason
            for worker in interlay.workers:
                worker.replaced = True
            self._changed.notify_all()
        log.error("interlay %s FAILED: %s", interlay.interlay_id, reason)
        # The other workers of the interlay would serve only part of its clients.
        for other in interlay.workers:
            if other.process.is_alive():
                other.process.kill()
        if self.on_state is not None:
            try:
                self.on_state(interlay.interlay_id, FAILED, reason)
            except Exception:
                log.exception("on_state callback failed")
