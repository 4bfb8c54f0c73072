#!/usr/bin/env python3
"""Interlay benchmark: redis-benchmark against the server, through an interlay,
and through twemproxy, in the same run; then the interlay's live-run modes
(dirty tracking, dual writes) against plain forwarding.

    python bench/proxy.py [--requests N] [--rounds R] [--workers W] [--pool P] [--no-live] [--json]

One run starts a server (tests/servers.py, loopback, a free port), an interlay
in front of it through ``InterlaySupervisor`` (as the coordinator starts one:
spawned proxy process(es), ``connection_pool.multiplexed_connections`` =
``--pool``), and twemproxy (``nutcracker``, a config generated in a temp dir,
the same number of server connections) when it is installed. Then, for each
round, for pipeline 1 and 16, each target in turn gets

    redis-benchmark -c 50 -n N -P <pipeline> -t set,get --csv

(N is ``--requests`` at pipeline 1 and ten times that at pipeline 16, so each
run lasts about as long). Each figure is the median over the rounds.

Live-run modes, each its own interlay in front of the same server, measured
with ``-t set`` only (a GET is never mirrored) in the same rounds:

    tracking   dirty-key tracking on (``track_dirty``), no route
    dual       tracking on + a route that dual-writes to a second server under
               SOURCE_AUTHORITATIVE (the client's reply is the source's)
    both       the same under BOTH_REQUIRED (each reply waits for both servers;
               a client's pipelined batches still go out without waiting)
    best       the same under BEST_EFFORT (mirrored writes' keys are not marked)

and each is reported as a ratio of its SET requests/s to the plain interlay's
(tracking off, no route) of the same rounds. One more row:

    cluster    "dual" with a 3-master cluster as the second side: each write also
               goes to the master owning its key's slot (issue 14)

reported as a ratio of its SET requests/s to the "dual" row's.

Ratios and their targets (issue 20, "The interlay's request lifecycle in
explicit stages"; 2 cores):

    interlay / direct requests/s, pipeline 1          >= 0.8
    interlay / direct requests/s, pipeline 16         >= 0.55
    interlay / twemproxy requests/s, pipeline 16      >= 1.0
    interlay p50 - direct p50, pipeline 1 (ms)        <  0.2
    tracking / interlay SET requests/s, pipeline 16   >= 0.85
    dual / interlay SET requests/s, pipeline 1        >= 0.8
    dual / interlay SET requests/s, pipeline 16       >= 0.6
    both / interlay SET requests/s, pipeline 16       >= 0.5
    best / interlay SET requests/s, pipeline 16       >= 0.8
    cluster / dual SET requests/s, pipeline 16        >= 0.8

Everything shares the machine's cores (server, proxy, redis-benchmark): the
ratios are what travel between machines. Targets are reported, not enforced.
Exit status: 0 when every run completed, 1 when one failed, 2 for bad
arguments or a missing engine or redis-benchmark.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_REPO / "tests"))
sys.path.insert(0, str(_REPO))

from servers import (
    ENGINE_NAMES,
    EngineNotFound,
    ServerStartError,
    free_port,
    get_engine,
    start_cluster,
    start_server,
)

from eve.core.endpoints import parse_config
from eve.core.enums import WriteConsistency
from eve.live.backlog import DirtyKeys
from eve.live.interlays import InterlaySupervisor
from eve.redis.topology import cluster_layout
from proxy import messages
from proxy.routing import SOURCE, TARGET

CLIENTS = 50
PIPELINES = (1, 16)
TESTS = ("SET", "GET")
# Live-run modes: interlay name -> write consistency policy of its route (None: no route).
LIVE_MODES = {"tracking": None, "dual": WriteConsistency.SOURCE_AUTHORITATIVE,
              "both": WriteConsistency.BOTH_REQUIRED, "best": WriteConsistency.BEST_EFFORT}
LIVE_TESTS = ("SET",)
CLUSTER_MODE = "cluster"   # dual writes as "dual", to a 3-master cluster (issue 14)
ALL_TARGETS = ("direct", "interlay", "twemproxy", *LIVE_MODES, CLUSTER_MODE)
DEFAULT_REQUESTS = 200_000
DEFAULT_ROUNDS = 3
RUN_TIMEOUT = 300.0
TARGETS = {
    "interlay / direct rps, P1": (">=", 0.8),
    "interlay / direct rps, P16": (">=", 0.55),
    "interlay / twemproxy rps, P16": (">=", 1.0),
    "interlay p50 - direct p50, P1 (ms)": ("<", 0.2),
    "tracking / interlay SET rps, P16": (">=", 0.85),
    "dual / interlay SET rps, P1": (">=", 0.8),
    "dual / interlay SET rps, P16": (">=", 0.6),
    "both / interlay SET rps, P16": (">=", 0.5),
    "best / interlay SET rps, P16": (">=", 0.8),
    "cluster / dual SET rps, P16": (">=", 0.8),
}


@dataclass
class Run:
    target: str
    pipeline: int
    test: str
    rps: float
    p50_ms: float
    p99_ms: float


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start_twemproxy(workdir: Path, server_port: int, connections: int) -> tuple[subprocess.Popen, int] | None:
    binary = shutil.which("nutcracker")
    if binary is None:
        return None
    port, stats_port = free_port(), free_port()
    config = workdir / "nutcracker.yml"
    config.write_text(
        "bench:\n"
        f"  listen: 127.0.0.1:{port}\n"
        "  hash: fnv1a_64\n"
        "  distribution: ketama\n"
        "  redis: true\n"
        "  preconnect: true\n"
        "  auto_eject_hosts: false\n"
        f"  server_connections: {connections}\n"
        "  servers:\n"
        f"   - 127.0.0.1:{server_port}:1\n")
    process = subprocess.Popen([binary, "-c", str(config), "-o", str(workdir / "nutcracker.log"),
                                "-s", str(stats_port), "-a", "127.0.0.1"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
    except OSError:
        process.kill()
        process.wait()
        log(f"twemproxy did not start; its log:\n{(workdir / 'nutcracker.log').read_text()[-2000:]}")
        return None
    return process, port


def start_live_interlays(supervisor: InterlaySupervisor, endpoint: Any, second: Any) -> dict[str, int]:
    """One interlay per live-run mode, tracking on, its route applied before any traffic."""
    ports = {}
    for mode, policy in LIVE_MODES.items():
        interlay_id = f"bench-{mode}"
        ports[mode] = supervisor.start(interlay_id, free_port(), "127.0.0.1", endpoint, 10_000)[0]
        # Nobody re-copies here: the backlog de-duplicates and is bounded (DirtyKeys).
        supervisor.track_dirty(interlay_id, DirtyKeys())
        if policy is not None:
            supervisor.route(interlay_id, messages.Route(
                authoritative=SOURCE, sides=((TARGET, second.write),), mirror_to=(TARGET,), policy=policy,
                read_percent=0))
        # Answered after every earlier control message: tracking and route are in place.
        if not supervisor.dirty_barrier(interlay_id, timeout=10):
            raise RuntimeError(f"interlay {interlay_id} did not answer")
    return ports


def start_cluster_interlay(supervisor: InterlaySupervisor, endpoint: Any, cluster: Any) -> int:
    """The "dual" mode with a cluster as the other side: each write also goes to the master
    owning its key's slot (proxy.slots); reported against "dual"."""
    interlay_id = f"bench-{CLUSTER_MODE}"
    port = supervisor.start(interlay_id, free_port(), "127.0.0.1", endpoint, 10_000)[0]
    supervisor.track_dirty(interlay_id, DirtyKeys())
    spec = parse_config({"target": {"host": cluster.host, "port": cluster.port}}).write
    supervisor.route(interlay_id, messages.Route(
        authoritative=SOURCE, sides=((TARGET, spec),), mirror_to=(TARGET,),
        policy=WriteConsistency.SOURCE_AUTHORITATIVE, read_percent=0,
        clusters=((TARGET, cluster_layout(spec, timeout=5.0, client_name="eve-bench")),)))
    if not supervisor.dirty_barrier(interlay_id, timeout=10):
        raise RuntimeError(f"interlay {interlay_id} did not answer")
    return port


def redis_benchmark(port: int, pipeline: int, requests: int,
                    tests: Sequence[str] = TESTS) -> list[dict[str, str]]:
    command = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(CLIENTS), "-n", str(requests),
               "-P", str(pipeline), "-t", ",".join(test.lower() for test in tests), "--csv"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stderr[-500:]}")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    if {row.get("test") for row in rows} != set(tests):
        raise RuntimeError(f"unexpected redis-benchmark output: {result.stdout[-500:]!r}")
    return rows


def median_runs(runs: list[Run]) -> dict[tuple[str, int, str], Run]:
    grouped: dict[tuple[str, int, str], list[Run]] = {}
    for run in runs:
        grouped.setdefault((run.target, run.pipeline, run.test), []).append(run)
    return {key: Run(key[0], key[1], key[2], statistics.median(r.rps for r in group),
                     statistics.median(r.p50_ms for r in group), statistics.median(r.p99_ms for r in group))
            for key, group in grouped.items()}


def mean_over_tests(medians: dict, target: str, pipeline: int, field: str) -> float | None:
    values = [getattr(medians[(target, pipeline, test)], field) for test in TESTS
              if (target, pipeline, test) in medians]
    return sum(values) / len(values) if values else None


def compute_ratios(medians: dict) -> dict[str, float | None]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def rps(target: str, pipeline: int) -> float | None:
        return mean_over_tests(medians, target, pipeline, "rps")

    def p50(target: str, pipeline: int) -> float | None:
        return mean_over_tests(medians, target, pipeline, "p50_ms")

    def set_rps(target: str, pipeline: int) -> float | None:
        run = medians.get((target, pipeline, "SET"))
        return run.rps if run is not None else None

    interlay_p50, direct_p50 = p50("interlay", 1), p50("direct", 1)
    live = {f"{mode} / interlay SET rps, P{pipeline}": ratio(set_rps(mode, pipeline), set_rps("interlay", pipeline))
            for mode in LIVE_MODES for pipeline in PIPELINES
            if any(key[0] == mode for key in medians)}  # not with --no-live
    live.update({f"{CLUSTER_MODE} / dual SET rps, P{pipeline}": ratio(set_rps(CLUSTER_MODE, pipeline),
                                                                       set_rps("dual", pipeline))
                 for pipeline in PIPELINES if any(key[0] == CLUSTER_MODE for key in medians)})
    return {
        "interlay / direct rps, P1": ratio(rps("interlay", 1), rps("direct", 1)),
        "interlay / direct rps, P16": ratio(rps("interlay", 16), rps("direct", 16)),
        "interlay / twemproxy rps, P1": ratio(rps("interlay", 1), rps("twemproxy", 1)),
        "interlay / twemproxy rps, P16": ratio(rps("interlay", 16), rps("twemproxy", 16)),
        "twemproxy / direct rps, P1": ratio(rps("twemproxy", 1), rps("direct", 1)),
        "interlay p50 - direct p50, P1 (ms)":
            interlay_p50 - direct_p50 if interlay_p50 is not None and direct_p50 is not None else None,
        "twemproxy p50 - direct p50, P1 (ms)":
            p50("twemproxy", 1) - direct_p50 if p50("twemproxy", 1) is not None and direct_p50 is not None
            else None,
        **live,
    }


def judge(name: str, value: float | None) -> str:
    if name not in TARGETS:
        return ""
    if value is None:
        return "n/a"
    op, goal = TARGETS[name]
    return "met" if (value >= goal if op == ">=" else value < goal) else "MISSED"


def print_report(report: dict[str, Any], medians: dict) -> None:
    print(f"Interlay benchmark: {report['engine']}, {CLIENTS} clients, {report['requests']:,} requests "
          f"(x10 at P16), {report['rounds']} round(s), median shown; {report['cpus']} CPUs, "
          f"interlay workers={report['workers']} pool={report['pool']}")
    print(f"{'target':<11}{'pipeline':>9}{'test':>6}{'requests/s':>14}{'p50 ms':>9}{'p99 ms':>9}")
    print("-" * 58)
    for pipeline in PIPELINES:
        for target in ALL_TARGETS:
            for test in TESTS:
                run = medians.get((target, pipeline, test))
                if run is not None:
                    print(f"{target:<11}{pipeline:>9}{test:>6}{run.rps:>14,.0f}{run.p50_ms:>9.3f}{run.p99_ms:>9.3f}")
    if not report["twemproxy"]:
        print("twemproxy: not installed (apt-get install nutcracker); its ratios are n/a")
    for mode, stats in report["live_stats"].items():
        sides = ", ".join(f"{side['side']} writes={side['writes']:,} failures={side['failures']:,}"
                          for side in stats.get("sides", ())) or "no dual writes"
        print(f"{mode}: {sides}; errors to clients={stats.get('errors', 0):,}")
    print()
    print(f"{'ratio (SET and GET averaged; live modes SET)':<40}{'value':>8}{'target':>10}  result")
    print("-" * 66)
    for name, value in report["ratios"].items():
        target = f"{TARGETS[name][0]} {TARGETS[name][1]:g}" if name in TARGETS else ""
        shown = "n/a" if value is None else f"{value:.2f}" if "ms" not in name else f"{value:.3f}"
        print(f"{name:<40}{shown:>8}{target:>10}  {judge(name, value)}")


def run(options: argparse.Namespace) -> int:
    if shutil.which("redis-benchmark") is None:
        log("redis-benchmark is not installed (Debian package redis-tools)")
        return 2
    try:
        engine = get_engine(options.engine)
    except EngineNotFound as exc:
        log(str(exc))
        return 2
    runs: list[Run] = []
    failures = 0
    live_stats: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="eve-bench-proxy-") as tmp:
        workdir = Path(tmp)
        started = []
        try:
            server = start_server(engine, workdir / "servers")
            started.append(server)
            second = start_server(engine, workdir / "servers") if options.live else None
            if second is not None:
                started.append(second)
                cluster = start_cluster(engine, workdir / "cluster", masters=3)
                started.append(cluster)
        except ServerStartError as exc:
            log(str(exc))
            for running in started:
                running.stop()
            return 2
        supervisor = InterlaySupervisor(workers=options.workers)
        twemproxy = None
        try:
            pool = {"multiplexed_connections": options.pool}
            endpoint = parse_config({"target": {"host": server.host, "port": server.port}, "connection_pool": pool})
            interlay_port = supervisor.start("bench", free_port(), "127.0.0.1", endpoint, 10_000)[0]
            twemproxy = start_twemproxy(workdir, server.port, options.pool)
            # name -> (port, redis-benchmark tests)
            targets = {"direct": (server.port, TESTS), "interlay": (interlay_port, TESTS)}
            if twemproxy is not None:
                targets["twemproxy"] = (twemproxy[1], TESTS)
            if second is not None:
                second_endpoint = parse_config({"target": {"host": second.host, "port": second.port},
                                                "connection_pool": pool})
                for mode, port in start_live_interlays(supervisor, endpoint, second_endpoint).items():
                    targets[mode] = (port, LIVE_TESTS)
                targets[CLUSTER_MODE] = (start_cluster_interlay(supervisor, endpoint, cluster), LIVE_TESTS)
            log(f"server {engine.name} :{server.port}, interlay :{interlay_port}"
                + (f", twemproxy :{twemproxy[1]}" if twemproxy else ", no twemproxy")
                + (f", second server :{second.port}, live modes " + ", ".join(
                    f"{mode} :{targets[mode][0]}" for mode in LIVE_MODES) if second is not None else ""))
            for port, tests in targets.values():  # warm up: connections, allocator, CPU frequency
                redis_benchmark(port, 16, 20_000, tests)
            for round_number in range(1, options.rounds + 1):
                for pipeline in PIPELINES:
                    for name, (port, tests) in targets.items():
                        requests = options.requests * (10 if pipeline > 1 else 1)
                        try:
                            rows = redis_benchmark(port, pipeline, requests, tests)
                        except (RuntimeError, subprocess.TimeoutExpired) as exc:
                            failures += 1
                            log(f"round {round_number} {name} P{pipeline}: {exc}")
                            continue
                        for row in rows:
                            runs.append(Run(name, pipeline, row["test"], float(row["rps"]),
                                            float(row["p50_latency_ms"]), float(row["p99_latency_ms"])))
                        log(f"round {round_number} P{pipeline:<2} {name:<9} " + "  ".join(
                            f"{row['test']} {float(row['rps']):>10,.0f}/s" for row in rows))
            time.sleep(supervisor.stats_interval * 1.5)  # the processes' last counters, reported
            stats = supervisor.stats("bench")
            live_stats = {mode: supervisor.stats(f"bench-{mode}") for mode in (*LIVE_MODES, CLUSTER_MODE)
                          if mode in targets}
        finally:
            if twemproxy is not None:
                twemproxy[0].kill()
                twemproxy[0].wait()
            supervisor.stop_all()
            for running in started:
                running.stop()
    medians = median_runs(runs)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    report = {
        "engine": engine.name, "requests": options.requests, "rounds": options.rounds, "cpus": os.cpu_count(),
        "workers": options.workers, "pool": options.pool, "twemproxy": twemproxy is not None,
        "load_average_1m": load, "interlay_stats": stats, "live_stats": live_stats,
        "runs": [asdict(run) for run in runs], "medians": [asdict(run) for run in medians.values()],
        "ratios": compute_ratios(medians),
    }
    report["results"] = {name: judge(name, report["ratios"].get(name)) for name in TARGETS}
    if options.as_json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, medians)
    return 1 if failures else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS,
                        help=f"requests per redis-benchmark run at pipeline 1 (default {DEFAULT_REQUESTS:,})")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"rounds; each figure is the median (default {DEFAULT_ROUNDS})")
    parser.add_argument("--workers", type=int, default=1, help="interlay proxy processes (default 1)")
    parser.add_argument("--pool", type=int, default=1,
                        help="multiplexed backend connections (interlay) and server_connections (twemproxy)")
    parser.add_argument("--engine", default="redis-7.0", choices=ENGINE_NAMES)
    parser.add_argument("--no-live", dest="live", action="store_false",
                        help="skip the live-run modes (tracking, dual, both, best, cluster) and their second server")
    parser.add_argument("--json", dest="as_json", action="store_true", help="one JSON object on stdout")
    options = parser.parse_args(argv)
    if options.requests < 1000 or options.rounds < 1 or options.workers < 1 or options.pool < 1:
        parser.error("--requests must be at least 1000, --rounds, --workers and --pool at least 1")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
