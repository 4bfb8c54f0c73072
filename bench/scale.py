#!/usr/bin/env python3
"""Scaling benchmark (issue 22): the bulk copy of a cluster, on this host's processes and on Ray.

    python bench/scale.py [--keys 200000] [--source-masters 6] [--target-masters 3]
                          [--restorers 2] [--nodes 1,2,3] [--timeout 600] [--json]

One invocation starts a ``--source-masters`` cluster and a ``--target-masters`` cluster
(tests/servers.py, loopback, free ports), loads ``--keys`` keys into the source (not
timed: 80% strings of 100 bytes, the rest hashes, lists, sets and sorted sets of 10
elements, 10% with a TTL), then copies them with each method in turn, the target
flushed before each:

    multiprocessing   BulkCopy in this process with its scanner and restorer processes
                      (the embedded default), --restorers restorers
    ray-N             BulkCopy with eve.bulk.ray_runner on a ray.cluster_utils.Cluster of N
                      nodes on this machine, --restorers restorers per node

For each: keys/s (keys copied / wall-clock seconds of BulkCopy.run, workers' start
included), its ratio to the multiprocessing pipeline, peak resident memory per node (the
process tree of each Ray node's raylet: its workers and object store; for
multiprocessing the coordinator's process tree), the coordinator's own CPU seconds
(this process: planning, acknowledging, committing; Ray's own daemons excluded) and
checkpoint writes per second (``Store.commit_batches`` transactions), and the state
file's size per million keys. These are the figures docs/scaling.md's model uses.

On a host with few cores the Ray nodes share the same cores, so 2 and 3 nodes cannot
be faster than one: the ratios for 2 and 3 nodes show the cost of the spread, not a
speed-up; the per-node figures are what the model extrapolates. Run it on a quiet
machine: every number here depends on what else the cores are doing.

Exit status: 0 when every method copied every key, 1 when one failed, timed out or
left the target short, 2 for bad arguments or a missing engine or package.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers import RedisCluster, available_engines, start_cluster

from eve.bulk.pipeline import BulkCopy, BulkOptions, CopyStopped
from eve.cli.urls import parse_redis_url
from eve.core.store import Store

DEFAULT_KEYS = 200_000
DEFAULT_NODES = "1,2,3"
SAMPLE_SECONDS = 0.1
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(message: str) -> None:
    print(f"[scale] {message}", file=sys.stderr, flush=True)


@dataclass
class MethodResult:
    method: str
    nodes: int
    ok: bool
    keys: int = 0
    seconds: float = 0.0
    keys_per_second: float = 0.0
    mb_per_second: float = 0.0                 # DUMP payload bytes restored
    ratio: float | None = None                 # keys/s against the multiprocessing pipeline
    peak_mb_per_node: list[float] = field(default_factory=list)
    coordinator_cpu_seconds: float = 0.0
    coordinator_cpu_share: float = 0.0         # of one core, over the copy
    checkpoint_writes: int = 0
    checkpoint_writes_per_second: float = 0.0
    state_bytes_per_million_keys: float = 0.0
    restarts: int = 0
    error: str = ""


# --------------------------------------------------------------------------- memory


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _tree_rss_mb(root: int, tree: dict[int, list[int]]) -> float:
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * PAGE_KB
        except OSError:
            pass
        todo += tree.get(pid, [])
    return total / 1024


class PeakMemory:
    """Samples the process trees of some roots (one per node) until stopped: the peak of each."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.peaks = [0.0] * len(roots)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            tree = _children()
            for index, root in enumerate(self.roots):
                self.peaks[index] = max(self.peaks[index], _tree_rss_mb(root, tree))


# --------------------------------------------------------------------------- data


def load(cluster: RedisCluster, keys: int, seed: int = 7) -> None:
    client = cluster.client()
    rng = random.Random(seed)
    pipe = client.pipeline(transaction=False)
    for number in range(keys):
        key = f"scale:{number}"
        kind = number % 25
        if kind < 20:
            pipe.set(key, rng.randbytes(100))
        elif kind == 20:
            pipe.hset(key, mapping={f"f{i}": rng.randbytes(10) for i in range(10)})
        elif kind == 21:
            pipe.rpush(key, *[rng.randbytes(10) for _ in range(10)])
        elif kind == 22:
            pipe.sadd(key, *[f"m{i}" for i in range(10)])
        else:
            pipe.zadd(key, {f"m{i}": float(i) for i in range(10)})
        if number % 10 == 0:
            pipe.expire(key, 3600)
        if number % 2000 == 1999:
            pipe.execute()
    pipe.execute()


def dbsize(cluster: RedisCluster) -> int:
    return sum(master.client().dbsize() for master in cluster.masters)


def flush(cluster: RedisCluster) -> None:
    for master in cluster.masters:
        master.client().flushall()


# --------------------------------------------------------------------------- methods


class _CountingStore(Store):
    commits = 0

    def commit_batches(self, *args: Any, **kwargs: Any) -> None:
        self.commits += 1
        super().commit_batches(*args, **kwargs)


def store_commits_per_second(workdir: Path, commits: int = 3000) -> float:
    """What the coordinator's state store sustains: ``commit_batches`` transactions per second, each
    the checkpoint of one acknowledged batch (a cursor and the counters; no error key)."""
    store = Store(str(workdir / "commits.db"))
    try:
        store.create_run("commits", "COPYING", {"bench": "scale"})
        counters = {"scanned": 1000, "restored": 1000, "skipped": 0, "conflicts": 0, "failed": 0, "bytes": 150_000}
        started = time.monotonic()
        for number in range(commits):
            store.commit_batches("commits", f"10.0.0.{number % 100}:6379", 0, number + 1, False, counters, [], [])
        return round(commits / (time.monotonic() - started), 1)
    finally:
        store.close()


def _empty_store_bytes(workdir: Path) -> int:
    path = workdir / "empty.db"
    if not path.exists():
        Store(str(path)).close()
    return path.stat().st_size


def copy_once(method: str, nodes: int, source: RedisCluster, target: RedisCluster, keys: int, args: argparse.Namespace,
              workdir: Path, runner: Any = None, memory_roots: list[int] | None = None) -> MethodResult:
    flush(target)
    state = workdir / f"{method}.db"
    store = _CountingStore(str(state))
    source_spec = parse_redis_url(source.url)[0]
    target_spec = parse_redis_url(target.url)[0]
    options = BulkOptions(run_id=f"scale-{method}", source=source_spec, target=target_spec,
                          restorers=args.restorers, max_source_share=1.0)
    store.create_run(options.run_id, "COPYING", {"bench": "scale"})
    copy = BulkCopy(options, store, runner=runner)
    stop = threading.Event()
    timer = threading.Timer(args.timeout, stop.set)
    result = MethodResult(method, nodes, ok=False)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    timer.start()
    try:
        with PeakMemory(memory_roots or [os.getpid()]) as memory:
            progress = copy.run(stop_event=stop)
        result.peak_mb_per_node = [round(peak, 1) for peak in memory.peaks]
    except CopyStopped:
        result.error = f"timed out after {args.timeout} s"
        return result
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, then goes on
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    finally:
        timer.cancel()
        store.close()
    seconds = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    result.seconds = round(seconds, 2)
    result.keys = dbsize(target)
    result.ok = result.keys == keys and progress.restored == keys
    if not result.ok:
        result.error = f"target holds {result.keys} keys, restored {progress.restored}, source {keys}"
    result.keys_per_second = round(progress.restored / seconds, 1)
    result.mb_per_second = round(progress.bytes / seconds / 1e6, 2)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    result.coordinator_cpu_seconds = round(cpu, 2)
    result.coordinator_cpu_share = round(cpu / seconds, 3)
    result.checkpoint_writes = store.commits
    result.checkpoint_writes_per_second = round(store.commits / seconds, 1)
    # What the job added to the state file: an empty store's own size (schema, first pages) left out.
    result.state_bytes_per_million_keys = round(max(state.stat().st_size - _empty_store_bytes(workdir), 0)
                                                / keys * 1_000_000)
    result.restarts = progress.restarts
    return result


def run_ray(nodes: int, source: RedisCluster, target: RedisCluster, keys: int, args: argparse.Namespace,
            workdir: Path) -> MethodResult:
    import ray
    from ray.cluster_utils import Cluster

    from eve.bulk.ray_runner import RayOptions, RayRunner

    node_args = {"num_cpus": args.cpus_per_node, "object_store_memory": args.object_store_mb * 1024 * 1024}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**node_args)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        runner = RayRunner(RayOptions(address=cluster.address, restorers_per_node=args.restorers))
        raylets = [node.all_processes["raylet"][0].process.pid for node in cluster.list_all_nodes()]
        return copy_once(f"ray-{nodes}", nodes, source, target, keys, args, workdir, runner=runner,
                         memory_roots=raylets)
    finally:
        ray.shutdown()
        cluster.shutdown()


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=DEFAULT_KEYS)
    parser.add_argument("--engine", default="redis-7.0")
    parser.add_argument("--source-masters", type=int, default=6)
    parser.add_argument("--target-masters", type=int, default=3)
    parser.add_argument("--restorers", type=int, default=2, help="multiprocessing: in all; Ray: per node")
    parser.add_argument("--nodes", default=DEFAULT_NODES, help="Ray node counts to run, comma-separated ('' for none)")
    parser.add_argument("--cpus-per-node", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--object-store-mb", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per method")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    if args.keys <= 0 or args.restorers <= 0 or args.source_masters <= 0 or args.target_masters <= 0:
        parser.error("--keys, --restorers and the master counts must be positive")
    try:
        args.node_counts = [int(n) for n in args.nodes.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--nodes {args.nodes!r} is not a comma-separated list of node counts")
    if any(n <= 0 for n in args.node_counts):
        parser.error("--nodes: node counts are positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    engines = {engine.name: engine for engine in available_engines()}
    if args.engine not in engines:
        print(f"engine {args.engine} is not available here ({', '.join(sorted(engines))})", file=sys.stderr)
        return 2
    if args.node_counts:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("the Ray methods need ray: pip install 'eve-migrate[ray]' (or --nodes '')", file=sys.stderr)
            return 2
    results: list[MethodResult] = []
    with tempfile.TemporaryDirectory(prefix="eve-scale-") as tmp:
        workdir = Path(tmp)
        commits = store_commits_per_second(workdir)
        log(f"the state store sustains {commits:,.0f} checkpoint commits/s")
        source = start_cluster(engines[args.engine], workdir / "source", masters=args.source_masters)
        target = start_cluster(engines[args.engine], workdir / "target", masters=args.target_masters)
        try:
            log(f"loading {args.keys:,} keys into {args.source_masters} source masters")
            load(source, args.keys)
            keys = dbsize(source)
            log("multiprocessing pipeline")
            results.append(copy_once("multiprocessing", 1, source, target, keys, args, workdir))
            for nodes in args.node_counts:
                log(f"Ray, {nodes} node(s)")
                results.append(run_ray(nodes, source, target, keys, args, workdir))
        finally:
            source.stop()
            target.stop()
    base = results[0].keys_per_second if results and results[0].ok else None
    for result in results:
        if base and result.ok:
            result.ratio = round(result.keys_per_second / base, 3)
    report = {"keys": args.keys, "source_masters": args.source_masters, "target_masters": args.target_masters,
              "restorers": args.restorers, "cpus": os.cpu_count(), "cpus_per_node": args.cpus_per_node,
              "store_commits_per_second": commits,
              "methods": [asdict(result) for result in results],
              "ray_1_node_at_least_0_8x": next((r.ratio >= 0.8 for r in results
                                                if r.method == "ray-1" and r.ratio is not None), None)}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.keys:,} keys, {args.source_masters} -> {args.target_masters} masters, {os.cpu_count()} CPUs, "
              f"restorers {args.restorers} (per Ray node)")
        print(f"state store: {commits:,.0f} checkpoint commits/s sustained")
        print(f"{'method':<16}{'keys/s':>10}{'MB/s':>7}{'ratio':>8}{'seconds':>9}{'coord CPU':>11}{'ckpt/s':>8}"
              f"{'state B/Mkey':>14}  peak MB per node")
        for r in results:
            if not r.ok:
                print(f"{r.method:<16} FAILED: {r.error}")
                continue
            ratio = r.ratio if r.ratio is not None else '-'
            print(f"{r.method:<16}{r.keys_per_second:>10,.0f}{r.mb_per_second:>7.1f}{ratio:>8}"
                  f"{r.seconds:>9.1f}{r.coordinator_cpu_share:>10.0%} {r.checkpoint_writes_per_second:>8.1f}"
                  f"{r.state_bytes_per_million_keys:>14,.0f}  {', '.join(f'{p:.0f}' for p in r.peak_mb_per_node)}")
        if (os.cpu_count() or 1) <= 4 and len(args.node_counts) > 1:
            print("note: the Ray nodes share this host's cores: more nodes cannot be faster here; the ratios show "
                  "the cost of spreading, the per-node figures feed docs/scaling.md")
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
