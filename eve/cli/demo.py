"""``eve demo``: a whole live migration on embedded engines, through the API.

Starts a source and a target from the installed engines (Redis 7.0 from PATH
when present, else Valkey 8.1, to Valkey 9.1), fills the source with a small
but realistic keyspace, starts a coordinator on loopback, and drives a run
through its gRPC API exactly as an operator would: endpoints, an interlay,
setup, prepare, review, approve, progress, catch-up, cutover, verify,
complete. Meanwhile an "application" thread keeps writing through the
interlay and counts what it was told succeeded; at the end the target must
hold every one of those writes. ``offline=True`` runs the offline strategy
instead (no interlay, no application). Everything it starts, it stops.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

import grpc

from eve.api.server import build_server
from eve.cli.engines import (
    EmbeddedServer,
    EngineNotFound,
    free_loopback_port,
    get_engine,
)
from eve.core.errors import ConfigError
from eve.core.store import Store
from eve.live.interlays import InterlaySupervisor
from eve.v1 import endpoints_pb2 as epb
from eve.v1 import endpoints_pb2_grpc, interlays_pb2_grpc, workflows_pb2_grpc
from eve.v1 import interlays_pb2 as ipb
from eve.v1 import workflows_pb2 as wpb
from eve.workflow.registry import Coordinator
from eve.workflow.runs import Workflow

__all__ = ["demo_testrun_line", "run_demo"]

DEFAULT_KEYS = 20_000


def _fill(url: str, keys: int, seed: int = 1) -> None:
    """Sessions (hashes with TTLs), counters, leaderboards, queues, tags and event streams."""
    import redis

    client = redis.Redis.from_url(url)
    rng = random.Random(seed)
    pipe = client.pipeline(transaction=False)
    for i in range(keys):
        kind = i % 10
        if kind < 4:
            pipe.hset(f"session:{i}", mapping={"user": f"u{rng.randint(1, 5000)}", "cart": rng.randint(0, 9),
                                              "seen": int(time.time())})
            pipe.expire(f"session:{i}", rng.randint(1800, 86400))
        elif kind < 6:
            pipe.set(f"page:views:{i}", rng.randint(0, 10**6))
        elif kind == 6:
            pipe.zadd(f"leaderboard:{i % 50}", {f"player:{i}": rng.random() * 1000})
        elif kind == 7:
            pipe.rpush(f"queue:jobs:{i % 100}", f"job-{i}")
        elif kind == 8:
            pipe.sadd(f"tags:item:{i}", *[f"t{rng.randint(0, 40)}" for _ in range(3)])
        else:
            pipe.xadd(f"events:{i % 20}", {"type": "click", "item": str(i)})
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()
    client.close()


class _Application:
    """Writes through the interlay as a web application would, and counts its page views:
    every INCR it was told succeeded must be on the target after the cutover."""

    def __init__(self, port: int) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No client-side retries: a retried INCR whose first try did land would count twice.
        self.client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10, retry=Retry(NoBackoff(), 0))
        self.stop = threading.Event()
        self.views = 0          # acknowledged INCRs of demo:page:views
        self.unknown = 0        # INCRs answered with an error (outcome unknown)
        self.commands = 0
        self.thread = threading.Thread(target=self._run, name="demo-application", daemon=True)

    def _run(self) -> None:
        import redis

        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                self.client.incr("demo:page:views")
                self.views += 1
            except redis.RedisError:
                self.unknown += 1
            try:
                pipe = self.client.pipeline(transaction=False)
                pipe.hset(f"session:live:{n % 500}", mapping={"user": f"u{n % 97}", "seen": n})
                pipe.expire(f"session:live:{n % 500}", 3600)
                pipe.zincrby("leaderboard:live", 1, f"player:{n % 50}")
                pipe.lpush("queue:live", n)
                pipe.ltrim("queue:live", 0, 999)
                pipe.execute()
                self.commands += 6
            except redis.RedisError:
                pass
            time.sleep(0.002)

    def __enter__(self) -> "_Application":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.client.close()


def demo_testrun_line(testrun: wpb.TestRunReport) -> str:
    """The test run in words: keys the demo's application wrote while they were verified are
    said to have changed on the source (re-read: it moved on), not to have failed (issue 24)."""
    from eve.prepare.testrun import describe

    words = describe(sum(r.ok for r in testrun.results), sum(r.changed for r in testrun.results),
                     sum(r.failed for r in testrun.results))
    return f"test run: {words}; estimated full copy {testrun.estimated_seconds:.1f}s"


def _engines() -> tuple[str, str]:
    try:
        get_engine("redis-7.0")
        source = "redis-7.0"
    except EngineNotFound:
        source = "valkey-8.1"
    return source, "valkey-9.1"


def _wait(stub, run: str, states: set[int], on_tick=None, timeout: float = 300) -> wpb.Run:
    deadline = time.monotonic() + timeout
    while True:
        record = stub.GetRun(wpb.GetRunRequest(run=run))
        if record.state in states or record.state == wpb.FAILED:
            return record
        if on_tick:
            on_tick()
        if time.monotonic() > deadline:
            raise ConfigError(f"demo run stuck in {wpb.RunState.Name(record.state)}")
        time.sleep(0.2)


def run_demo(keys: int = DEFAULT_KEYS, *, offline: bool = False) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    console = Console()
    started = time.monotonic()
    source_engine, target_engine = _engines()
    state_dir = Path(tempfile.mkdtemp(prefix="eve-demo-"))
    servers: list[EmbeddedServer] = []
    server = store = workflow = interlays = None
    application: _Application | None = None
    try:
        console.print(f"[bold]Eve demo[/]: {'an offline' if offline else 'a live'} migration, "
                      f"{source_engine} -> {target_engine}")
        servers.append(EmbeddedServer(get_engine(source_engine)))
        servers.append(EmbeddedServer(get_engine(target_engine)))
        source, target = servers
        console.print(f"  source {source_engine} on {source.host}:{source.port}, "
                      f"target {target_engine} on {target.host}:{target.port}")
        _fill(source.url, keys)
        console.print(f"  source filled with sessions, counters, leaderboards, queues, tags and streams "
                      f"({keys:,} writes)")
        store = Store(state_dir / "eve.db")
        interlays = InterlaySupervisor()
        coordinator = Coordinator(store, interlays)
        workflow = Workflow(store, interlays=interlays)
        server = build_server(coordinator, workflow=workflow)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        console.print(f"  coordinator on 127.0.0.1:{port} (gRPC; try: grpcurl -plaintext 127.0.0.1:{port} list)")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        endpoints = endpoints_pb2_grpc.EndpointServiceStub(channel)
        runs = workflows_pb2_grpc.MigrationServiceStub(channel)
        for name, srv in (("demo-source", source), ("demo-target", target)):
            endpoints.CreateEndpoint(epb.CreateEndpointRequest(
                endpoint=name, kind="redis", description=f"embedded {srv.engine.name}",
                config=epb.EndpointConfig(target=epb.Connection(host=srv.host, port=srv.port))))
        setup = wpb.RunSetup(source="demo-source", target="demo-target", strategy=wpb.OFFLINE,
                             conflict_policy=wpb.REPLACE)
        if not offline:
            app_port = free_loopback_port()
            stub = interlays_pb2_grpc.InterlayServiceStub(channel)
            stub.CreateInterlay(ipb.CreateInterlayRequest(id="demo-app", endpoint="demo-source", port=app_port))
            stub.StartInterlay(ipb.StartInterlayRequest(id="demo-app"))
            console.print(f"  interlay on 127.0.0.1:{app_port}: the application writes there, not to the source")
            application = _Application(app_port).__enter__()
            setup = wpb.RunSetup(source="demo-source", target="demo-target", strategy=wpb.ONLINE_CUTOVER,
                                 interlay="demo-app", conflict_policy=wpb.REPLACE,
                                 write_consistency=wpb.SOURCE_AUTHORITATIVE)
        run = runs.CreateRun(wpb.CreateRunRequest(id="demo", description="eve demo")).id
        runs.SubmitSetup(wpb.SubmitSetupRequest(run=run, setup=setup))
        console.print("[bold]prepare[/]: compatibility checks, keyspace analysis, test run")
        runs.Prepare(wpb.PrepareRequest(run=run))
        record = _wait(runs, run, {wpb.READY})
        if record.state == wpb.FAILED:
            console.print(f"[red]prepare failed[/]: {record.failure_reason}")
            return 1

        compat = runs.GetCompatibility(wpb.GetCompatibilityRequest(run=run))
        table = Table(title="compatibility", show_lines=False)
        for column in ("issue", "blocking", "message"):
            table.add_column(column)
        for issue in compat.issues:
            table.add_row(issue.code, "yes" if issue.blocking else "no", issue.message)
        if not compat.issues:
            table.add_row("-", "-", "no issues: source and target are compatible")
        console.print(table)
        analysis = runs.GetAnalysis(wpb.GetAnalysisRequest(run=run))
        table = Table(title="keyspace analysis")
        for column in ("db", "type", "keys", "memory"):
            table.add_column(column, justify="right")
        for db in analysis.dbs:
            for stats in db.types:
                table.add_row(str(db.db), stats.type, f"{stats.keys:,}", f"{stats.memory_bytes / 1024:,.0f} KiB")
        console.print(table)
        testrun = runs.GetTestRun(wpb.GetTestRunRequest(run=run))
        console.print(demo_testrun_line(testrun), markup=False)
        for issue in compat.issues:
            if not issue.blocking:
                runs.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=run, issue_id=issue.id,
                                                                  notes="acknowledged by eve demo"))
        runs.Approve(wpb.ApproveRequest(run=run, notes="eve demo"))
        with Progress(TextColumn("[bold]copy[/]"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]} keys/s"), console=console, transient=True) as bar:
            task = bar.add_task("copy", total=None, rate="-")

            def tick() -> None:
                metrics = runs.GetMetrics(wpb.GetMetricsRequest(run=run))
                bar.update(task, completed=metrics.keys_scanned, total=metrics.source_keys or None,
                           rate=f"{metrics.keys_per_second:,.0f}")

            record = _wait(runs, run, {wpb.CUT_OVER, wpb.SYNCING}, on_tick=tick)
        if record.state == wpb.FAILED:
            console.print(f"[red]copy failed[/]: {record.failure_reason}")
            return 1
        metrics = runs.GetMetrics(wpb.GetMetricsRequest(run=run))
        console.print(f"[bold]bulk copy[/]: {metrics.keys_scanned:,} keys scanned, {metrics.keys_restored:,} "
                      f"restored, {metrics.keys_failed} failed at {metrics.keys_per_second:,.0f} keys/s")
        if application is not None:
            if not _wait_in_sync(runs, run):
                console.print(f"[red]catch-up failed[/]: {runs.GetRun(wpb.GetRunRequest(run=run)).failure_reason}")
                return 1
            live = runs.GetMetrics(wpb.GetMetricsRequest(run=run))
            console.print(f"[bold]in sync[/]: {live.keys_recopied:,} keys the application wrote meanwhile "
                          f"re-copied; writes now reach both sides ({live.dirty_backlog} dirty keys waiting)")
            time.sleep(1.0)
            cut = runs.SetTraffic(wpb.SetTrafficRequest(run=run, read_percent_target=100, cutover_writes=True))
            console.print(f"[bold]cutover[/]: run {wpb.RunState.Name(cut.state)}; the target is authoritative, "
                          "the source follows in reverse until Complete")
            time.sleep(1.0)
            application.__exit__()
        report = runs.Verify(wpb.VerifyRequest(run=run))
        done = runs.Complete(wpb.CompleteRequest(run=run, notes="verified by eve demo"))
        events = list(runs.SubscribeEvents(wpb.SubscribeEventsRequest(run=run), timeout=30))
        ok = report.clean and done.state == wpb.COMPLETED
        if application is not None:
            import redis

            views = int(redis.Redis(host=target.host, port=target.port).get("demo:page:views") or 0)
            kept = application.views <= views <= application.views + application.unknown
            ok = ok and kept
            console.print(f"[bold]application[/]: {application.commands + application.views:,} writes through the "
                          f"interlay during the run; {application.views:,} page views acknowledged, "
                          f"{views:,} on the target: {'none lost' if kept else '[red]writes lost[/]'}")
            interlays_pb2_grpc.InterlayServiceStub(channel).StopInterlay(ipb.StopInterlayRequest(id="demo-app"))
        channel.close()
        console.print(f"[bold]report[/]: run {run} {wpb.RunState.Name(done.state)}; verification "
                      f"{'clean' if report.clean else 'found differences'} over {report.keys_compared:,} keys; "
                      f"{len(events)} events; {time.monotonic() - started:.1f}s in all")
        return 0 if ok else 1
    finally:
        if application is not None:
            application.__exit__()
        if workflow is not None:
            workflow.shutdown()
        if interlays is not None:
            interlays.stop_all()
        if server is not None:
            server.stop(None)
        if store is not None:
            store.close()
        for srv in servers:
            srv.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def _wait_in_sync(runs, run: str, timeout: float = 120) -> bool:
    """True once the run's events say it is in sync; False when it failed or took too long."""
    deadline = time.monotonic() + timeout
    after = 0
    while time.monotonic() < deadline:
        try:
            for event in runs.SubscribeEvents(wpb.SubscribeEventsRequest(run=run, after_seq=after), timeout=1.0):
                after = event.seq
                if event.type == "live" and event.message.startswith("in sync"):
                    return True
                if event.state == wpb.FAILED:
                    return False
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
    return False
