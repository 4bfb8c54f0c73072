"""Verify on a Ray cluster (issue 22): one comparing actor per source master, only differences back.

``verify_on_ray`` splits a pass of ``eve.live.verify.verify`` by node: an actor per source
master compares the keys that master holds with the target (the target is read wherever
each key lives, slot by slot), and, with ``check_extra``, an actor per target master looks
for keys the source lacks. Each actor runs the very same ``verify`` on its node only
(``nodes=``), so digests, TTL tolerance, field-level detail and the restart checks are the
ones of a local pass; what comes back is its report: counts and the differences, never
the keys that matched. The reports are merged here, in the coordinator.

The key rate limit is shared: each actor gets its part of ``max_keys_per_second``. ``fix``
stays local (it re-copies through the coordinator's re-copy loop): ask for it without Ray.
An actor lost mid-pass (its node gone) fails the pass with the reason; a pass is simply run
again.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

from eve.bulk.ray_runner import RayRunner, RayUnavailable, import_ray
from eve.core.endpoints import ConnectionSpec
from eve.core.errors import ConfigError, EveError, SourceError, TargetError
from eve.live.verify import (
    COMPARING,
    DEFAULT_IGNORE_PREFIXES,
    DEFAULT_MAX_DIFFERENCES,
    DEFAULT_MAX_EXAMPLES,
    DEFAULT_SCAN_COUNT,
    DEFAULT_TIMEOUT,
    DEFAULT_TTL_TOLERANCE_MS,
    KeyDifference,
    VerifyProgress,
    VerifyReport,
    verify,
)
from eve.redis.cluster import ClientOptions, ClusterClient

__all__ = ["verify_on_ray"]

log = logging.getLogger("eve.live.ray_verify")


class _Comparer:
    """An actor: ``verify`` of one node's share (``nodes``); an error comes back as a value."""

    def compare(self, source: ConnectionSpec, target: ConnectionSpec, kwargs: dict[str, Any]) -> Any:
        try:
            return verify(source, target, **kwargs)
        except EveError as exc:   # picklable, with its side: raised again in the coordinator
            return exc


_remote_comparer: Any = None


def _comparer_class() -> Any:
    global _remote_comparer
    if _remote_comparer is None:
        _remote_comparer = import_ray().remote(max_restarts=0)(_Comparer)
    return _remote_comparer


def _masters(spec: ConnectionSpec, role: str) -> list[str]:
    error = SourceError if role == "source" else TargetError
    options = ClientOptions(timeout=10.0, reconnect_seconds=0, client_name="eve-verify-plan")
    with ClusterClient(spec, role=role, error=error, options=options) as client:
        client.connect()
        return list(client.nodes)


def verify_on_ray(runner: RayRunner, source: ConnectionSpec, target: ConnectionSpec, *,
                  dbs: Sequence[int] | None = None, match: str | None = None, type: str | None = None,
                  ttl_tolerance_ms: int = DEFAULT_TTL_TOLERANCE_MS, max_examples: int = DEFAULT_MAX_EXAMPLES,
                  max_differences: int = DEFAULT_MAX_DIFFERENCES, max_keys_per_second: int = 0,
                  scan_count: int = DEFAULT_SCAN_COUNT, check_extra: bool = True,
                  ignore_prefixes: Sequence[bytes] = DEFAULT_IGNORE_PREFIXES, timeout: float = DEFAULT_TIMEOUT,
                  on_difference: Callable[[KeyDifference], None] | None = None,
                  on_progress: Callable[[VerifyProgress], None] | None = None, fix: bool = False) -> VerifyReport:
    """``eve.live.verify.verify``, a node per actor on ``runner``'s cluster (module docstring)."""
    if fix:
        raise ConfigError("a fix re-copies through this host: run it without Ray", field="fix")
    if max_keys_per_second < 0:
        raise ConfigError("must be 0 (no limit) or more", field="max_keys_per_second")
    ray = import_ray()
    runner.connect()
    started = time.monotonic()
    shares: list[tuple[Sequence[str], Sequence[str], bool]] = \
        [((node,), (), False) for node in _masters(source, "source")]
    if check_extra:
        shares += [((), (node,), True) for node in _masters(target, "target")]
    rate = -(-max_keys_per_second // len(shares)) if max_keys_per_second else 0
    common = {"dbs": dbs, "match": match, "type": type, "ttl_tolerance_ms": ttl_tolerance_ms,
              "max_examples": max_differences, "max_differences": max_differences, "max_keys_per_second": rate,
              "scan_count": scan_count, "ignore_prefixes": tuple(ignore_prefixes), "timeout": timeout}
    comparer = _comparer_class()
    actors, pending = [], {}
    try:
        for source_nodes, target_nodes, extra in shares:
            actor = comparer.options(num_cpus=runner.options.cpus_per_actor, scheduling_strategy="SPREAD").remote()
            actors.append(actor)
            ref = actor.compare.remote(source, target, {**common, "check_extra": extra,
                                                        "nodes": (source_nodes, target_nodes)})
            pending[ref] = source_nodes[0] if source_nodes else f"{target_nodes[0]} (extra keys)"
        log.info("verify %s -> %s on Ray: %d comparing actors", source.address, target.address, len(pending))
        reports: list[VerifyReport] = []
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            try:
                outcome = ray.get(done[0])
            except ray.exceptions.RayActorError as exc:
                raise RayUnavailable(f"the comparing actor of {pending[done[0]]} was lost: "
                                     f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                                     "run the verification again") from exc
            if isinstance(outcome, BaseException):
                raise outcome
            reports.append(outcome)
            if on_progress is not None:
                on_progress(VerifyProgress(COMPARING, sum(r.keys_compared for r in reports), 0, None,
                                           sum(_found(r) for r in reports), 0, time.monotonic() - started))
    except (ConnectionError, ray.exceptions.RaySystemError) as exc:
        raise RayUnavailable(f"the Ray cluster at {runner.options.address} is gone: {exc}") from exc
    finally:
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - an actor whose node is gone is gone already
                pass
    report = _merge(reports, time.monotonic() - started, max_examples=max_examples, max_differences=max_differences)
    if on_difference is not None:
        for difference in report.differences:
            on_difference(difference)
    log.info("verify %s -> %s on Ray: %s", source.address, target.address, report.summary())
    return report


def _found(report: VerifyReport) -> int:
    return report.missing + report.extra + report.different + report.ttl_mismatch


def _merge(reports: list[VerifyReport], seconds: float, *, max_examples: int, max_differences: int) -> VerifyReport:
    differences = tuple(d for r in reports for d in r.differences)[:max_differences]
    return VerifyReport(
        clean=all(r.clean for r in reports), keys_compared=sum(r.keys_compared for r in reports),
        missing=sum(r.missing for r in reports), extra=sum(r.extra for r in reports),
        different=sum(r.different for r in reports), ttl_mismatch=sum(r.ttl_mismatch for r in reports),
        examples=differences[:max_examples], differences=differences, seconds=seconds,
        not_comparable=sum(r.not_comparable for r in reports))
