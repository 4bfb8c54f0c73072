"""The bulk copy on a Ray cluster: the same scanner and restorer loops, in Ray actors (issue 22).

    scanner actor (one per source master) --ref--> bounded Ray queue --> restorer actors (SPREAD)
    restorer actors --RESULT--> Ray queue --> BulkCopy (eve.bulk.pipeline): checkpoints, counters,
                                              error keys, conflicts, restarts: exactly as without Ray

Only the transport changes. ``BulkCopy`` plans the work, builds the same frozen
``ScannerOptions``/``RestorerOptions`` and supervises the same typed frames
(``eve.core.frames``); this runner starts ``run_scanner``/``run_restorer`` in actors
instead of processes, and gives them Ray queues instead of ``multiprocessing`` queues:

* a BATCH frame is ``ray.put`` by the scanner into its own node's object store and only its
  reference travels through the batches queue, so frames go from the scanner's node to the
  restorer's node directly; the queue holds at most ``queue_depth`` references, so a slow
  target slows the scanners and every node's memory stays bounded (backpressure);
* the coordinator stays the only owner of state: results come back through a queue actor
  pinned to the coordinator's own node, and ``BulkCopy._acknowledge`` commits a cursor only
  after every batch before it was acknowledged;
* an actor that dies (its process killed, its node removed: ``RayActorError``) is handled
  like a worker process that died: the pipeline is torn down and started again from the
  committed cursors with a new epoch, on the nodes alive then; the restart's reason names the
  actor (and so the shard) and what Ray said;
* the Ray cluster gone entirely is ``RayUnavailable``, a failure that names the address;
  the job's checkpoints stay, so ``eve migrate --resume`` continues it, on Ray or locally.

Placement: restorers are spread over the nodes (``SPREAD``), ``restorers_per_node`` of
them per alive node (None: the job's ``restorers``, per node); each asks for
``cpus_per_actor`` CPUs, and a node whose CPUs hold fewer gets fewer (the per-node cap).
Scanners, one per source master, ask for no CPU (none may wait for a slot) and are spread
too. The queue actors ask for no CPU and live on the head node.

``ray`` is an optional dependency (``pip install 'eve-migrate[ray]'``): this module imports
it only when a runner connects.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from eve.core import frames
from eve.core.errors import ConfigError, Side, UnavailableError
from restorer import RestorerOptions
from scanner import ScannerOptions

if TYPE_CHECKING:  # pragma: no cover
    from eve.bulk.pipeline import BulkCopy, _Stream

__all__ = ["RayOptions", "RayRunner", "RayUnavailable", "LOCAL", "DEFAULT_CPUS_PER_ACTOR", "import_ray"]

log = logging.getLogger("eve.bulk.ray")

LOCAL = "local"                    # --ray local: start a Ray instance on this machine
DEFAULT_CPUS_PER_ACTOR = 0.5
NAMESPACE = "eve"
INLINE_BYTES = 16 * 1024           # frames up to this size travel inside the queue, larger ones by reference
KILL_WAIT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5.0
PLACEMENT_SECONDS = 120.0          # every actor of an epoch started, or the copy fails saying so
WATCHDOG_SECONDS = 1.0             # how often the GCS is asked during a copy
GCS_LOST_SECONDS = 10.0            # unanswered that long, the cluster is gone (Ray itself gives up at 60 s)
LOSS_WAIT_SECONDS = 5.0            # after a failure: how long to wait for Ray to report what it lost


class RayUnavailable(UnavailableError):
    """The Ray cluster cannot be reached (or went away mid-copy); ``side`` is internal: no Redis
    side failed. The job's checkpoints are kept: ``--resume`` continues it, on Ray or locally."""

    side_of_class = Side.INTERNAL


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ConfigError("--ray needs the ray package: pip install 'eve-migrate[ray]'", field="ray") from exc
    return ray


@dataclass(frozen=True)
class RayOptions:
    address: str = LOCAL                     # "local", or what ray.init(address=...) accepts
    restorers_per_node: int | None = None    # None: the job's restorers (BulkOptions.restorers), per node
    cpus_per_actor: float = DEFAULT_CPUS_PER_ACTOR
    local_cpus: int | None = None            # "local": the CPUs the started instance offers (None: all)

    def __post_init__(self) -> None:
        if not self.address or not self.address.strip():
            raise ConfigError("a Ray address is 'local' or what ray.init(address=...) accepts "
                              "(ray://host:10001, host:6379, auto)", field="ray")
        if self.restorers_per_node is not None and self.restorers_per_node < 1:
            raise ConfigError("must be 1 or more", field="restorers_per_node")
        if self.cpus_per_actor < 0:
            raise ConfigError("must be 0 or more", field="cpus_per_actor")


# --------------------------------------------------------------------------- queues


class _FrameQueue:
    """A bounded Ray queue of frames with the ``put``/``get`` the worker loops use.

    A frame above ``INLINE_BYTES`` is ``ray.put`` where it was made and only its reference is
    queued (in a tuple: Ray would resolve a bare reference given as an actor call's argument).
    Picklable: actors receive it and use the same queue actor.
    """

    def __init__(self, maxsize: int, node_id: str | None) -> None:
        ray = import_ray()
        from ray.util.queue import Queue

        actor_options: dict[str, Any] = {"num_cpus": 0}
        if node_id is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            actor_options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=True)
        self.queue = Queue(maxsize=maxsize, actor_options=actor_options)
        self._ray = ray

    def __getstate__(self) -> dict[str, Any]:
        return {"queue": self.queue}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.queue = state["queue"]
        self._ray = import_ray()

    def put(self, item: bytes) -> None:
        if len(item) > INLINE_BYTES:
            self.queue.put((self._ray.put(item),))
        else:
            self.queue.put(item)

    def get(self, timeout: float | None = None) -> bytes:
        item = self.queue.get(block=True, timeout=timeout)   # ray.util.queue.Empty is a queue.Empty
        if isinstance(item, tuple):
            return self._ray.get(item[0])
        return item

    def close(self) -> None:
        try:
            self.queue.shutdown(force=True)
        except Exception:  # noqa: BLE001 - a queue whose node is gone is gone already
            pass


# --------------------------------------------------------------------------- actors


class _Worker:
    """One scanner or restorer: the worker loop of ``scanner``/``restorer``, run in an actor.

    As ``scanner.main``/``restorer.main`` do for a process: logging that names the worker,
    OpenTelemetry (``OTEL_*`` of the actor's environment), and an unexpected exception turned
    into FAILED("internal") on the queue the coordinator reads, never raised.
    """

    def __init__(self, name: str, log_level: int) -> None:
        from eve.core import telemetry

        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        self.name = name
        self.telemetry = telemetry.setup("eve-scanner" if name.startswith("scanner") else "eve-restorer")

    def where(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def scan(self, options: ScannerOptions, batches: _FrameQueue) -> bool:
        from scanner import run_scanner

        try:
            return run_scanner(options, batches, tracer=self.telemetry.tracer("eve.scanner"))
        except BaseException as exc:  # noqa: BLE001 - the worker reports, never raises
            logging.getLogger("eve.scanner").exception("%s pid=%d crashed", options.worker, os.getpid())
            batches.put(frames.encode(frames.Failed(options.worker, Side.INTERNAL, repr(exc)[:1000])))
            return False
        finally:
            self._flush()

    def restore(self, options: RestorerOptions, batches: _FrameQueue, results: _FrameQueue) -> bool:
        from restorer import run_restorer

        try:
            return run_restorer(options, batches, results, tracer=self.telemetry.tracer("eve.restorer"),
                                meter=self.telemetry.meter("eve.restorer"))
        except BaseException as exc:  # noqa: BLE001 - the worker reports, never raises
            logging.getLogger("eve.restorer").exception("%s pid=%d crashed", options.worker, os.getpid())
            results.put(frames.encode(frames.Failed(options.worker, Side.INTERNAL,
                                                    f"{type(exc).__name__}: {exc}"[:1000])))
            return False
        finally:
            self._flush()

    def _flush(self) -> None:
        try:
            self.telemetry.tracer_provider.force_flush()
            self.telemetry.meter_provider.force_flush()
        except Exception:  # noqa: BLE001 - exporting is best effort
            pass


_remote_worker: Any = None
_remote_lock = threading.Lock()


def _worker_class() -> Any:
    global _remote_worker
    with _remote_lock:
        if _remote_worker is None:
            ray = import_ray()
            # No restarts by Ray: a lost actor restarts the whole pipeline from the committed
            # cursors (a new epoch), as a lost process does.
            _remote_worker = ray.remote(max_restarts=0, max_task_retries=0)(_Worker)
        return _remote_worker


class _ActorProcess:
    """A worker actor seen as the pipeline's supervisor sees a process: ``exitcode`` is None while
    its loop runs, 0 when it returned True, 1 when False; -1 when the actor was lost (``lost``
    says how)."""

    def __init__(self, name: str, actor: Any, ref: Any) -> None:
        self.name = name
        self.actor = actor
        self.ref = ref
        self.lost: str | None = None
        self._exitcode: int | None = None

    @property
    def exitcode(self) -> int | None:
        if self._exitcode is None:
            ray = import_ray()
            ready, _ = ray.wait([self.ref], timeout=0)
            if ready:
                try:
                    self._exitcode = 0 if ray.get(self.ref) else 1
                except ray.exceptions.RayActorError as exc:
                    self.lost = _first_line(exc)
                    self._exitcode = -1
                except ray.exceptions.RayError as exc:
                    self.lost = _first_line(exc)
                    self._exitcode = -1
        return self._exitcode


def _check_reachable(address: str) -> None:
    """A HOST:PORT (or ray://HOST:PORT) nobody listens on fails at once: ray.init would wait long."""
    if address in (LOCAL, "auto"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return   # something else ray.init understands; it says what is wrong itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_SECONDS).close()
    except OSError as exc:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def _head_node(nodes: list[dict[str, Any]]) -> str | None:
    """The head node's id: the queues live there, by the cluster's control plane (GCS), which the
    coordinator cannot do without anyway; a worker node may go without taking the queues along."""
    for node in nodes:
        if any(name.startswith("node:__internal_head__") for name in node.get("Resources", {})):
            return node["NodeID"]
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


# --------------------------------------------------------------------------- the runner


class _Watchdog:
    """Watches the cluster's control plane (GCS) while an epoch runs: a Ray driver whose GCS stays
    unreachable is terminated by Ray itself after a minute ("Failed to connect to GCS ... The
    program will terminate"), whatever the code was doing, and calls to a cluster gone can block
    until then. After ``GCS_LOST_SECONDS`` without a TCP answer from the GCS this calls
    ``on_lost(message)`` first, so that the caller can fail the job with a clear reason (and keep
    it resumable) before Ray ends the process."""

    def __init__(self, address: str, gcs: str, on_lost: Callable[[str], None]) -> None:
        self.address = address
        host, _, port = gcs.rpartition(":")
        self.gcs = (host.strip("[]"), int(port))
        self.on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eve-ray-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        unreachable_since: float | None = None
        while not self._stop.wait(WATCHDOG_SECONDS):
            try:
                socket.create_connection(self.gcs, timeout=WATCHDOG_SECONDS).close()
                unreachable_since = None
            except OSError as exc:
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since >= GCS_LOST_SECONDS and not self._stop.is_set():
                    self.on_lost(f"the Ray cluster at {self.address} went away: its control plane "
                                 f"{self.gcs[0]}:{self.gcs[1]} has not answered for {GCS_LOST_SECONDS:.0f} s "
                                 f"({exc.strerror or exc})")
                    return


class RayRunner:
    """Runs a ``BulkCopy``'s pipeline on a Ray cluster (``BulkCopy(..., runner=RayRunner(...))``).

    ``on_lost(message)``: called from another thread when the cluster's control plane stays
    unreachable during a copy (``_Watchdog``); None leaves the process to Ray, which ends it."""

    def __init__(self, options: RayOptions, *, on_lost: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.on_lost = on_lost
        self._started_here = False
        self.placements: dict[str, str] = {}   # worker -> Ray node id of its last epoch

    # -- the cluster ----------------------------------------------------------------

    def connect(self) -> None:
        """Join (or, for ``local``, start) the Ray cluster; a clear RayUnavailable when it cannot."""
        ray = import_ray()
        if ray.is_initialized():
            return
        _check_reachable(self.options.address)
        try:
            if self.options.address == LOCAL:
                ray.init(num_cpus=self.options.local_cpus, include_dashboard=False, log_to_driver=False,
                         namespace=NAMESPACE, configure_logging=False)
            else:
                ray.init(address=self.options.address, log_to_driver=False, namespace=NAMESPACE,
                         configure_logging=False)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
            raise RayUnavailable(f"cannot reach the Ray cluster at {self.options.address}: {_first_line(exc)}") from exc
        self._started_here = True
        log.info("joined the Ray cluster at %s: %d nodes alive", self.options.address, len(self.alive_nodes()))

    def close(self) -> None:
        if self._started_here:
            ray = import_ray()
            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001 - leaving a cluster that is gone
                pass
            self._started_here = False

    def alive_nodes(self) -> list[dict[str, Any]]:
        ray = import_ray()
        try:
            return [node for node in ray.nodes() if node.get("Alive")]
        except Exception as exc:  # noqa: BLE001
            raise RayUnavailable(f"the Ray cluster at {self.options.address} is gone: {_first_line(exc)}") from exc

    # -- one epoch ------------------------------------------------------------------

    def run(self, copy: "BulkCopy", scanners: list[ScannerOptions], restorers: list[RestorerOptions],
            streams: dict[tuple[str, int], "_Stream"], stop_event: threading.Event | None) -> None:
        """One epoch of ``copy``'s pipeline on actors; raises as ``BulkCopy._supervise`` does."""
        from eve.bulk.pipeline import _Restart

        ray = import_ray()
        self.connect()
        nodes = self.alive_nodes()
        if not nodes:
            raise RayUnavailable(f"the Ray cluster at {self.options.address} has no node alive")
        count = self._restorer_count(nodes, self.options.restorers_per_node or len(restorers))
        template = restorers[0]
        restorers = [dataclasses.replace(template, worker=f"restorer-{i + 1}") for i in range(count)]
        here = _head_node(nodes)
        depth = copy.options.queue_depth or 2 * len(restorers) + 2
        batches = results = None
        workers: dict[str, _ActorProcess] = {}
        watchdog = self._watchdog()
        try:
            batches, results = _FrameQueue(depth, here), _FrameQueue(0, here)
            worker = _worker_class()
            level = logging.getLogger().getEffectiveLevel()
            spread = {"num_cpus": self.options.cpus_per_actor, "scheduling_strategy": "SPREAD"}
            # A scanner per source master, whatever the CPUs: no CPU asked, so none waits for a slot.
            scanning = {"num_cpus": 0, "scheduling_strategy": "SPREAD"}
            where: dict[str, Any] = {}
            # An actor runs its calls one at a time, in order: where() is asked before the worker
            # loop takes the actor over.
            for r in restorers:
                actor = worker.options(**spread).remote(r.worker, level)
                where[r.worker] = actor.where.remote()
                workers[r.worker] = _ActorProcess(r.worker, actor, actor.restore.remote(r, batches, results))
            for s in scanners:
                actor = worker.options(**scanning).remote(s.worker, level)
                where[s.worker] = actor.where.remote()
                workers[s.worker] = _ActorProcess(s.worker, actor, actor.scan.remote(s, batches))
            self._record_placements(where)
            log.info("bulk copy epoch=%d on Ray (%d nodes): scanners=%d restorers=%d streams=%d", copy.epoch,
                     len(nodes), len(scanners), len(restorers), len(streams))
            try:
                copy._supervise(streams, workers, [r.worker for r in restorers], batches, results, stop_event)
            except _Restart as restart:
                reason = self._loss(workers, {node["NodeID"] for node in nodes})
                if reason:
                    raise _Restart(f"{reason} (first sign: {restart})") from restart
                raise
            except ray.exceptions.RayError as exc:
                log.warning("a Ray call of the coordinator failed: %s", _first_line(exc), exc_info=True)
                reason = self._loss(workers, {node["NodeID"] for node in nodes})
                raise _Restart(f"{reason or 'Ray'} (first sign: {_first_line(exc)})") from exc
        except (ConnectionError, ray.exceptions.RaySystemError) as exc:
            raise RayUnavailable(f"the Ray cluster at {self.options.address} is gone: {_first_line(exc)}") from exc
        finally:
            if watchdog is not None:
                watchdog.stop()
            self._tear_down(workers, batches, results)

    def _watchdog(self) -> _Watchdog | None:
        if self.on_lost is None or self.options.address.startswith("ray://"):
            return None   # a Ray Client driver gets ConnectionError instead of being ended
        try:
            gcs = import_ray().get_runtime_context().gcs_address
        except Exception:  # noqa: BLE001 - no GCS address known: nothing to watch
            return None
        if not gcs or ":" not in gcs:
            return None
        watchdog = _Watchdog(self.options.address, gcs, self.on_lost)
        watchdog.start()
        return watchdog

    def _restorer_count(self, nodes: list[dict[str, Any]], per_node: int) -> int:
        """``per_node`` restorers on each alive node, fewer where its CPUs do not hold that many
        actors of ``cpus_per_actor`` (Ray would leave the others waiting for a slot forever)."""
        cpus = self.options.cpus_per_actor
        count = 0
        for node in nodes:
            fits = int(node.get("Resources", {}).get("CPU", 0) // cpus) if cpus > 0 else per_node
            count += min(per_node, fits)
        if count < per_node * len(nodes):
            log.warning("the Ray nodes' CPUs hold %d restorers of %.2f CPU, not %d per node", count, cpus, per_node)
        if count == 0:
            raise RayUnavailable(f"no Ray node has {cpus} CPU free for a restorer")
        return count

    def _record_placements(self, refs: dict[str, Any]) -> None:
        ray = import_ray()
        try:
            placed = dict(zip(refs, ray.get(list(refs.values()), timeout=PLACEMENT_SECONDS)))
        except ray.exceptions.GetTimeoutError:
            raise RayUnavailable(f"the Ray cluster at {self.options.address} did not start the copy's {len(refs)} "
                                 f"actors within {PLACEMENT_SECONDS:.0f} s (CPUs taken by other work?)") from None
        except Exception:  # noqa: BLE001 - a placement is only reported; a lost actor shows in its exitcode
            return
        self.placements.update(placed)
        per_node: dict[str, int] = {}
        for node in placed.values():
            per_node[node] = per_node.get(node, 0) + 1
        log.info("actors per Ray node: %s", ", ".join(f"{node[:12]}={n}" for node, n in sorted(per_node.items())))

    def _loss(self, workers: dict[str, _ActorProcess], alive_before: set[str]) -> str | None:
        """What Ray lost, if anything: the nodes gone since the epoch started (with the workers
        they held) and the actors reported dead. A failing worker is often the first sign of a
        node gone with others (a restorer whose batch went with the scanner's node): wait a
        little for Ray to tell. None when Ray lost nothing (an ordinary worker failure)."""
        ray = import_ray()
        deadline = time.monotonic() + LOSS_WAIT_SECONDS
        while True:
            self._check_cluster()
            gone = alive_before - {node["NodeID"] for node in self.alive_nodes()}
            lost = [w for w in workers.values() if w.exitcode is not None and w.lost]
            if gone or lost or time.monotonic() >= deadline:
                break
            running = [w.ref for w in workers.values() if w.exitcode is None]
            try:
                ray.wait(running, num_returns=1, timeout=0.2)
            except Exception:  # noqa: BLE001 - the loss is read again above
                time.sleep(0.2)
        parts = []
        for node in sorted(gone):
            held = sorted(name for name, where in self.placements.items() if where == node and name in workers)
            parts.append(f"Ray node {node[:12]} died with {', '.join(held) or 'no worker of this copy'}")
        parts += [f"{w.name} lost on Ray node {self.placements.get(w.name, '?')[:12]} ({w.lost})"
                  for w in lost if self.placements.get(w.name) not in gone]
        return "; ".join(parts) or None

    def _check_cluster(self) -> None:
        """After a loss: is the cluster still there? (Then the pipeline restarts; else RayUnavailable.)"""
        nodes = self.alive_nodes()
        if not nodes:
            raise RayUnavailable(f"the Ray cluster at {self.options.address} went away: no node alive")

    def _tear_down(self, workers: dict[str, _ActorProcess], batches: _FrameQueue | None,
                   results: _FrameQueue | None) -> None:
        ray = import_ray()
        for worker in workers.values():
            try:
                ray.kill(worker.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - an actor whose node is gone is gone already
                pass
        for q in (batches, results):
            if q is not None:
                q.close()
        # Wait (briefly) for the actors to be gone, so no restorer of this epoch writes after it.
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        pending = [w.ref for w in workers.values()]
        while pending and time.monotonic() < deadline:
            try:
                _ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2)
            except Exception:  # noqa: BLE001
                break
