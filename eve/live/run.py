"""The live part of an online run (DESIGN.md section 6): dirty keys, catch-up,
dual writes, traffic shift, cutover, rollback.

One ``LiveRun`` per online run, owned by the workflow. Its phases:

1. ``start_tracking``: before the bulk copy, the interlay records the keys of
   every write it forwards (and, optionally, keyspace notifications on the
   source add keys written around it) into ``dirty``.
2. ``start_sync`` + ``catch_up``: after the bulk copy a ``DirtyKeySync``
   re-copies dirty keys from the authoritative side to every other side;
   the backlog shrinks until it is small and steady. The bulk copy has
   finished by then, so no stale bulk batch can land after a re-copy.
3. ``go_in_sync``: the interlay writes to every side under the run's write
   consistency policy; every write still marks its keys dirty (after every
   side answered), so the re-copy loop keeps the other sides exact.
4. ``set_reads``: a share of reads, by key hash, served by the target.
5. ``cutover``: clients paused, every reply and dirty mark in, the backlog
   drained (the target is exact), then the target becomes authoritative and
   the source is kept in sync in reverse; clients resume.
6. ``rollback``: the reverse of whatever was done; after a cutover it is a
   cutover back (pause, drain target -> source, flip). ``complete`` ends the
   reverse sync and leaves the interlay forwarding to the target alone.

Overflowed backlogs and whole-db writes (FLUSHDB, SWAPDB, FLUSHALL) leave no
list of keys: ``reconcile`` compares the sides (``eve.live.verify``) and marks what
differs.

After a coordinator restart (issue 12) the backlog the dead coordinator held is
gone, so a resumed run always compares the sides in full; the keys its interlay
spooled meanwhile arrive with ``start_tracking`` and are re-copied first. A run
whose writes were cut over resumes with ``resume_cut_over``: the target stays
authoritative (the interlay that kept serving has that route, one started afresh
was started with it: ``route_for``), the source is compared to it in full, and
reverse sync goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from eve.core.endpoints import ConnectionSpec
from eve.core.enums import WriteConsistency
from eve.core.errors import EndpointError, EveError, StateError, UnavailableError
from eve.live.backlog import DirtyKeys
from eve.live.notifications import KeyspaceNotifications
from eve.live.recopy import DirtyKeySync, RecopyFailure, SyncOptions
from eve.redis.cluster import quotes_transient
from eve.redis.topology import Node, cluster_layout
from proxy import messages
from proxy.routing import SOURCE, TARGET

__all__ = ["LiveOptions", "LiveRun", "CATCH_UP_BACKLOG", "CATCH_UP_STEADY_SECONDS", "route_for"]

log = logging.getLogger("eve.live.run")

CATCH_UP_BACKLOG = 1000           # in sync once the backlog stays at most this...
CATCH_UP_STEADY_SECONDS = 1.0     # ...for this long
DEFAULT_PAUSE_SECONDS = 2.0       # the longest clients wait at a cutover for replies in flight
DEFAULT_DRAIN_SECONDS = 30.0      # the longest the backlog may take to drain at a cutover
BARRIER_SECONDS = 10.0
# Confirming re-copied reports to the interlay scans the backlog: not while it is longer than this.
CONFIRM_MAX_BACKLOG = 10_000
TOPOLOGY_SECONDS = 5.0            # the longest a side may take to tell its masters when a route is built


def _transient(exc: EndpointError) -> bool:
    """A side that answers again soon: unreachable for now, or a transient reply (CLUSTERDOWN,
    LOADING, TRYAGAIN...) quoted at the end of the message."""
    return isinstance(exc, UnavailableError) or quotes_transient(str(exc))


@dataclass(frozen=True)
class LiveOptions:
    run_id: str
    interlay_id: str
    source: ConnectionSpec
    target: ConnectionSpec
    mirrors: tuple[tuple[str, ConnectionSpec], ...] = ()   # ("mirror:<endpoint>", spec)
    policy: WriteConsistency = WriteConsistency.SOURCE_AUTHORITATIVE
    scripts_deterministic: bool = False
    keyspace_notifications: bool = False
    preserve_ttl: bool = True
    sync_workers: int = 2
    pause_seconds: float = DEFAULT_PAUSE_SECONDS
    drain_seconds: float = DEFAULT_DRAIN_SECONDS

    def __post_init__(self) -> None:
        # A policy given by its name ("BOTH_REQUIRED") is the member; an unknown one is a ValueError here.
        object.__setattr__(self, "policy", WriteConsistency(self.policy))


def _sides(options: LiveOptions) -> tuple[tuple[str, ConnectionSpec], ...]:
    return ((TARGET, options.target), *options.mirrors)


def _others(options: LiveOptions, authoritative: str) -> list[str]:
    return [name for name in (SOURCE, TARGET, *(m for m, _ in options.mirrors)) if name != authoritative]


def read_clusters(options: LiveOptions, layouts: dict[str, tuple[Node, ...]] | None = None,
                  ) -> tuple[tuple[str, tuple[Node, ...]], ...]:
    """The sides that are clusters (the source included), with their masters and slots now:
    the interlay routes their commands by slot (``proxy.slots``) and follows their
    redirections from there. ``layouts`` (side -> masters, updated) keeps the last layout
    known of a side that does not answer for now."""
    layouts = {} if layouts is None else layouts
    for name, spec in ((SOURCE, options.source), *_sides(options)):
        try:
            layouts[name] = cluster_layout(spec, timeout=TOPOLOGY_SECONDS, client_name="eve-live-route")
        except EveError as exc:
            # Down for now (a restart, a failover): the last layout known; the interlay
            # follows the redirections once the side answers again.
            log.warning("run %s: cannot read the topology of the %s (%s)", options.run_id, name, exc)
    return tuple((name, masters) for name, masters in layouts.items() if masters)


def route_for(options: LiveOptions, authoritative: str, dual: bool, read_percent: int = 0, *,
              clusters: tuple[tuple[str, tuple[Node, ...]], ...] = ()) -> messages.Route:
    """The interlay's route for a run with ``authoritative`` taking the writes (every other side
    receiving them too when ``dual``); ``clusters``: ``read_clusters``."""
    return messages.Route(
        authoritative=authoritative, sides=_sides(options),
        mirror_to=tuple(_others(options, authoritative)) if dual else (), policy=options.policy,
        read_percent=read_percent if authoritative == SOURCE else 0,
        scripts_deterministic=options.scripts_deterministic, clusters=clusters)


class LiveRun:
    """The interlay route and the re-copy loop of one online run. Thread-safe; every
    step that changes the route holds ``_lock``."""

    def __init__(self, options: LiveOptions, interlays: Any, *,
                 on_event: Callable[[str, str, dict[str, Any]], None] = lambda *_: None,
                 on_failures: Callable[[list[RecopyFailure]], None] = lambda _: None) -> None:
        self.options = options
        self.interlays = interlays
        self.on_event = on_event
        self.on_failures = on_failures
        self.dirty = DirtyKeys()
        # address -> run_id of the servers the bulk copy wrote to (``BulkCopy.server_run_ids``):
        # the re-copy loop takes a server with another run_id as restarted (a full resync).
        self.server_run_ids: dict[str, str] = {}
        self.authoritative = SOURCE
        self.dual = False
        self.read_percent = 0
        self._lock = threading.RLock()
        self._sync: DirtyKeySync | None = None
        self._sync_thread: threading.Thread | None = None
        self._sync_stop = threading.Event()
        self._sync_error: BaseException | None = None
        self._notifications: KeyspaceNotifications | None = None
        self._tracking = False
        self._reconciling = False
        self._reconciled_at = 0.0      # time.monotonic when the last full compare had marked what differed
        self._layouts: dict[str, tuple[Node, ...]] = {}   # side -> its masters (none: standalone)
        self._routed = False           # a route was given to the interlay (before: plain forwarding to the source)

    def __repr__(self) -> str:
        return (f"LiveRun({self.options.run_id} via {self.options.interlay_id}: authoritative {self.authoritative}, "
                f"dual={self.dual}, reads on target {self.read_percent}%, backlog {self.dirty.backlog})")

    # -- sides --------------------------------------------------------------------------

    def _spec(self, side: str) -> ConnectionSpec:
        return self.options.source if side == SOURCE else dict(_sides(self.options))[side]

    def _others(self, authoritative: str) -> list[str]:
        return _others(self.options, authoritative)

    def _clusters(self) -> tuple[tuple[str, tuple[Node, ...]], ...]:
        return read_clusters(self.options, self._layouts)

    def _route(self) -> None:
        self._routed = True
        self.interlays.route(self.options.interlay_id, self.current_route())

    def current_route(self) -> messages.Route | None:
        """The route a proxy process of the run's interlay must serve under now (issue 19: every
        start of one takes it); None before the run gave one (plain forwarding to the source)."""
        if not self._routed and self.authoritative == SOURCE:
            return None
        return route_for(self.options, self.authoritative, self.dual, self.read_percent, clusters=self._clusters())

    def interlay_down(self) -> bool:
        """The run tracks writes and its interlay is not running (it failed and could not be restarted)."""
        return self._tracking and not self.interlays.running(self.options.interlay_id)

    def interlay_restarted(self, reason: str) -> None:
        """A proxy process of the interlay died and another serves in its place (``InterlaySupervisor``
        marked every db dirty: the keys the dead one had not reported are gone)."""
        self.on_event("interlay", f"the interlay's proxy process died ({reason}) and was started again on the "
                      f"same ports under the run's route; the dirty keys it had not reported are gone, so the "
                      f"sides are compared in full and what differs is re-copied from the {self.authoritative}",
                      {"reason": reason, "authoritative": self.authoritative})

    # -- 1. tracking ------------------------------------------------------------------------

    def start_tracking(self) -> None:
        with self._lock:
            self.interlays.track_dirty(self.options.interlay_id, self.dirty)
            self._tracking = True
            if self.options.keyspace_notifications and self._notifications is None:
                self._notifications = KeyspaceNotifications(self.options.source, self.dirty)
                self._notifications.start()
        self.on_event("live", "the interlay records every write's keys as dirty", {})

    @property
    def tracking(self) -> bool:
        return self._tracking

    def wait_synced(self, timeout: float) -> bool:
        """True once every write answered before the call has been re-copied."""
        deadline = time.monotonic() + timeout
        if not self.barrier(min(timeout, BARRIER_SECONDS)):
            return False
        while self.dirty.backlog:
            self.check_sync()
            if time.monotonic() >= deadline:
                return False
            self.dirty.wait_for_change(0.05)
        return True

    def barrier(self, timeout: float = BARRIER_SECONDS) -> bool:
        """True once every write answered before the call is marked dirty."""
        ok = self.interlays.dirty_barrier(self.options.interlay_id, timeout)
        if ok and self._notifications is not None:
            ok = self._notifications.barrier(timeout)
        return ok

    # -- 2. catch-up ------------------------------------------------------------------------

    def start_sync(self) -> None:
        """Re-copy dirty keys from the authoritative side, in the background, until stopped."""
        with self._lock:
            self._stop_sync()
            others = tuple(self._spec(name) for name in self._others(self.authoritative))
            sync = DirtyKeySync(SyncOptions(authoritative=self._spec(self.authoritative), others=others,
                                            preserve_ttl=self.options.preserve_ttl,
                                            workers=self.options.sync_workers,
                                            server_run_ids=tuple(self.server_run_ids.items())),
                                self.dirty, on_error=self.on_failures)
            self._sync = sync
            self._sync_stop = threading.Event()
            self._sync_error = None
            stop = self._sync_stop

            def body() -> None:
                try:
                    sync.run(stop)
                except BaseException as exc:  # noqa: BLE001 - reported through sync_error
                    log.exception("run %s: the re-copy loop stopped", self.options.run_id)
                    self._sync_error = exc
                finally:
                    sync.close()

            self._sync_thread = threading.Thread(target=body, name=f"live-{self.options.run_id}", daemon=True)
            self._sync_thread.start()
        self.on_event("live", f"re-copying dirty keys from {self.authoritative} to "
                      f"{', '.join(self._others(self.authoritative))}", {"backlog": self.dirty.backlog})

    def _stop_sync(self) -> None:
        thread, self._sync_thread = self._sync_thread, None
        self._sync_stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        self._sync = None

    def catch_up(self, stop_event: threading.Event, *, backlog: int = CATCH_UP_BACKLOG,
                 steady_seconds: float = CATCH_UP_STEADY_SECONDS) -> bool:
        """Wait until the backlog stays at most ``backlog`` for ``steady_seconds``; False when stopped."""
        steady_since: float | None = None
        last_event = 0.0
        while not stop_event.is_set():
            self.check_sync()
            self.reconcile_if_needed()
            self.confirm_recopied()
            now = time.monotonic()
            size = self.dirty.backlog
            if size <= backlog:
                steady_since = steady_since if steady_since is not None else now
                if now - steady_since >= steady_seconds:
                    return True
            else:
                steady_since = None
            if now - last_event >= 2.0:
                last_event = now
                metrics = self.metrics()
                why = f"; {metrics['refusing']}" if metrics["refusing"] else ""  # issue 19: why keys wait
                self.on_event("progress", f"catching up: {size} dirty keys, lag {self.dirty.lag_seconds:.1f}s{why}",
                              metrics)
            stop_event.wait(0.1)
        return False

    def check_sync(self) -> None:
        """StateError when the re-copy loop stopped, or the interlay did (its writes are
        no longer tracked)."""
        if self._sync_error is not None:
            raise StateError(f"the re-copy loop stopped: {self._sync_error}")
        if self._tracking and not self.interlays.running(self.options.interlay_id):
            status = self.interlays.status(self.options.interlay_id)
            raise StateError(f"interlay {self.options.interlay_id!r} is {status.state.lower()}"
                             f"{': ' + status.reason if status.reason else ''}; writes are no longer tracked")

    def reconcile_if_needed(self) -> bool:
        """A whole db changed (FLUSHDB...), a side restarted or marks were dropped: compare and
        mark what differs. False when a side could not be compared for now (a cluster electing
        a master, a server loading): the comparison is flagged again for the next call."""
        if not self.dirty.overflowed:
            return True
        from eve.live.verify import verify

        self._reconciling = True
        try:
            dbs = self.dirty.reset_overflow()
            self.on_event("live", "whole-db writes or a full backlog: comparing the sides to find what changed",
                          {"dbs": "all" if dbs is None else ",".join(map(str, sorted(dbs)))})
            for name in self._others(self.authoritative):
                report = verify(self._spec(self.authoritative), self._spec(name),
                                dbs=None if dbs is None else sorted(dbs), max_examples=0,
                                max_differences=self.dirty.max_backlog)
                for difference in report.differences:
                    self.dirty.mark(difference.db, difference.key)
        except EndpointError as exc:
            if not _transient(exc):
                raise
            for db in sorted(dbs) if dbs else (None,):
                self.dirty.mark_all(db)
            log.warning("run %s: comparing the sides is put off: %s", self.options.run_id, exc)
            return False
        finally:
            self._reconciled_at = time.monotonic()
            self._reconciling = False
        return True

    def confirm_recopied(self) -> None:
        """Tell the interlay which of its dirty-key reports are re-copied, so that it keeps for
        a next coordinator (should this one die, its backlog dies with it) only the keys that
        are not. Nothing is confirmed while marks may have been lost (an overflow, a compare
        under way) or while what the last compare found is not re-copied yet."""
        if not self._tracking or self._reconciling or self.dirty.overflowed or \
                self.dirty.backlog > CONFIRM_MAX_BACKLOG:
            return
        now = time.monotonic()   # before looking: a mark made after it is not confirmed
        oldest = self.dirty.oldest_pending()
        cutoff = now if oldest is None else oldest
        if cutoff > self._reconciled_at:
            self.interlays.confirm_dirty(self.options.interlay_id, cutoff)

    # -- 3, 4. in sync, reads ----------------------------------------------------------------

    def go_in_sync(self) -> None:
        """Dual writes from now on. Under TARGET_AUTHORITATIVE the target also becomes the
        authoritative side now (its replies reach the clients, its values win), with the
        source kept in sync in reverse; the other policies keep the source authoritative
        until ``cutover``."""
        with self._lock:
            self.dual = True
            if self.options.policy == WriteConsistency.TARGET_AUTHORITATIVE and self.authoritative != TARGET:
                self._flip(TARGET)
            else:
                self._route()
        self.on_event("live", f"in sync: writes go to every side under {self.options.policy.value}, "
                      f"{self.authoritative} authoritative", {"policy": self.options.policy.value,
                                                               "authoritative": self.authoritative})

    def set_reads(self, percent: int) -> None:
        with self._lock:
            if self.authoritative != SOURCE:
                raise StateError("the target is authoritative: every read and write is on the target already")
            self.read_percent = percent
            self._route()
        self.on_event("traffic", f"{percent}% of reads served by the target", {"read_percent_target": percent})

    # -- 5. cutover -----------------------------------------------------------------------------

    def _flip(self, to: str) -> None:
        """Pause clients, let every write land and be re-copied, make ``to`` authoritative,
        re-copy the other way from then on, resume. StateError (and clients resumed on the
        old side) when the backlog cannot drain in time."""
        options = self.options
        with self._lock:
            settled = self.interlays.pause(options.interlay_id, options.pause_seconds)
            try:
                if not settled:
                    # A write still in flight could land on either side after the flip: its
                    # outcome would decide which value the re-copy spreads. Not now, then.
                    raise StateError(f"replies were still in flight after {options.pause_seconds:g}s (a slow "
                                     f"side, or a proxy process that died?); clients resumed on the "
                                     f"{self.authoritative}, try again")
                if not self.barrier():
                    raise StateError("the interlay did not report its last dirty keys in time")
                if not self.reconcile_if_needed():
                    raise StateError(f"a side could not be compared for now (see the log); clients resumed on "
                                     f"the {self.authoritative}, try again")
                sync = self._sync
                if sync is None:
                    raise StateError("no re-copy loop is running")
                if not sync.drain(options.drain_seconds):
                    raise StateError(f"the dirty-key backlog ({self.dirty.backlog} keys) did not drain within "
                                     f"{options.drain_seconds:g}s; clients resumed on the {self.authoritative}")
                self.check_sync()
                self.authoritative = to
                self._route()
                self.start_sync()
            finally:
                self.interlays.resume(options.interlay_id)

    def cutover(self) -> None:
        if self.authoritative != TARGET:
            self._flip(TARGET)
        self.on_event("traffic", "writes cut over: the target is authoritative, the source is kept in sync "
                      "in reverse", {"writes_on_target": True})

    def resume_cut_over(self) -> None:
        """After a coordinator restart with writes cut over: the target stays authoritative with
        dual writes to the source; whatever nobody tracked meanwhile may be missing on the
        source, so every key is compared target -> source and what differs re-copied (the
        catch-up does it), and reverse sync goes on, keeping the source exact for a rollback."""
        with self._lock:
            self.authoritative, self.dual, self.read_percent = TARGET, True, 0
            self._route()
            self.dirty.mark_all(None)
            self.start_tracking()
            self.start_sync()
        self.on_event("traffic", "coordinator restarted after the cutover: the target stays authoritative; "
                      "comparing the source to it in full, then reverse sync goes on", {"writes_on_target": True})

    # -- 6. rollback, complete -------------------------------------------------------------------

    def rollback(self) -> None:
        """All traffic back on the source, which holds every write."""
        with self._lock:
            if not self.interlays.running(self.options.interlay_id):
                self._rollback_without_interlay()
                return
            if self.authoritative == TARGET:
                self._flip(SOURCE)
            self.dual = False
            self.read_percent = 0
            self._route()
            self.close()
        self.on_event("traffic", "all traffic on the source", {"read_percent_target": 0,
                                                               "writes_on_target": False})

    def _rollback_without_interlay(self) -> None:
        """The interlay died: no client writes anywhere now. Copy back what the reverse
        sync still owes the source; started again, the interlay fronts the source."""
        sync = self._sync
        drained = True
        if self.authoritative == TARGET and sync is not None:
            drained = sync.drain(self.options.drain_seconds)
        self.authoritative, self.dual, self.read_percent = SOURCE, False, 0
        self.close()
        self.on_event("traffic", "the interlay is not running: started again, it forwards to the source"
                      + ("" if drained else f"; {self.dirty.backlog} keys written on the target could not be "
                         "copied back"), {"writes_on_target": False})

    def complete(self) -> None:
        """The target alone serves the interlay's clients; the source is released."""
        with self._lock:
            if self.authoritative != TARGET:
                raise StateError("writes are not cut over to the target")
            self.dual = False
            self._route()
            self.close()
        self.on_event("traffic", "reverse sync ended: the interlay forwards to the target alone", {})

    def close(self) -> None:
        """Stop the re-copy loop, the notifications and the tracking (the route stays)."""
        with self._lock:
            self._stop_sync()
            if self._notifications is not None:
                self._notifications.stop()
                self._notifications = None
            if self._tracking:
                self._tracking = False
                try:
                    self.interlays.track_dirty(self.options.interlay_id, None)
                except Exception:  # noqa: BLE001 - the interlay is gone: nothing is tracked anyway
                    pass

    # -- progress ---------------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        sync = self._sync
        stats = sync.stats().as_dict() if sync is not None else {}
        return {"dirty_backlog": self.dirty.backlog, "lag_seconds": round(self.dirty.lag_seconds, 3),
                "recopied": stats.get("copied", 0), "recopy_failed": stats.get("failed", 0),
                "authoritative": self.authoritative, "read_percent_target": self.read_percent,
                "refusing": stats.get("refusing") or ""}

    def side_failures(self) -> Sequence[dict[str, Any]]:
        try:
            return self.interlays.stats(self.options.interlay_id).get("sides", [])
        except Exception:  # noqa: BLE001 - not running: no numbers
            return []
