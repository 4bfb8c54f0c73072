"""Applications writing through an interlay during an online run (tests/test_live.py,
tests/test_live_cluster.py).

Client threads write every data type at a steady rate. Each thread counts the increments
the interlay acknowledged, so a lost write shows as a counter below its count. With
``cluster=True`` the transaction's and the script's keys share a hash tag (a cluster runs
them only within one slot) and multi-key commands span slots (the interlay splits them);
with ``cluster_client=True`` (an interlay in front of a cluster source) the writers are
cluster clients of the interlay's listeners, which refuse cross-slot commands themselves.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import redis
import redis.cluster
from eve_process import EveServer, Subscriber, wait_state
from keyspace import fill, keys_of, value_of
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import free_port

from eve.v1 import endpoints_pb2 as epb
from eve.v1 import interlays_pb2 as ipb
from eve.v1 import workflows_pb2 as wpb

ENGINE = "valkey-8.1"      # the engine of Live's sides unless told
SHORT_TTL_SECONDS = 2     # SETEX keys; the comparison waits them out
LONG_TTL_SECONDS = 600    # EXPIRE keys: their TTLs are compared within a second
SCRIPT = "redis.call('incr', KEYS[1]); redis.call('lpush', KEYS[2], ARGV[1]); return redis.call('ltrim', KEYS[2], 0, 49)"
_ONE_SLOT = frozenset(("tx", "txh", "script", "slist"))   # keys of the transaction and the script


@dataclass
class Counter:
    ok: int = 0          # acknowledged increments
    unknown: int = 0     # increments answered with an error or lost with the connection

    def check(self, value: int, what: str) -> None:
        assert self.ok <= value <= self.ok + self.unknown, \
            f"{what}: {value} on the server, {self.ok} acknowledged (+{self.unknown} of unknown outcome)"


@dataclass
class Writer:
    number: int
    port: int
    stop: threading.Event
    cluster: bool = False
    cluster_client: bool = False
    counters: dict[str, Counter] = field(default_factory=dict)
    ops: int = 0
    errors: list[str] = field(default_factory=list)

    def key(self, name: str) -> str:
        if self.cluster and name in _ONE_SLOT:
            return f"{{w{self.number}}}:{name}"
        return f"w{self.number}:{name}"

    def counted(self, name: str, call) -> None:
        if self.stop.is_set():
            return
        counter = self.counters.setdefault(self.key(name), Counter())
        try:
            call()
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            counter.unknown += 1
            self.errors.append(f"{type(exc).__name__}: {exc}")
        else:
            counter.ok += 1

    def plain(self, call) -> None:
        if self.stop.is_set():
            return
        try:
            call()
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def run(self) -> None:
        # No retries: a write whose connection was lost is of unknown outcome, and is counted so;
        # a retry could apply it twice.
        kind = redis.cluster.RedisCluster if self.cluster_client else redis.Redis
        client = kind(host="127.0.0.1", port=self.port, socket_timeout=10, socket_connect_timeout=5,
                      retry=Retry(NoBackoff(), 0))
        script = client.register_script(SCRIPT)
        k = self.key
        n = 0
        while not self.stop.is_set():
            n += 1
            self.counted("counter", lambda: client.incr(k("counter")))
            self.counted("hash", lambda: client.hincrby(k("hash"), f"f{n % 20}", 1))
            self.counted("zset", lambda: client.zincrby(k("zset"), 1, f"m{n % 10}"))
            self.plain(lambda: client.lpush(k("list"), n))
            self.plain(lambda: client.ltrim(k("list"), 0, 99))
            self.plain(lambda: client.xadd(k("stream"), {"n": n}, maxlen=100, approximate=False))
            self.plain(lambda: client.execute_command("SETEX", k(f"short:{n % 50}"), SHORT_TTL_SECONDS, n))
            self.plain(lambda: client.set(k(f"ttl:{n % 20}"), n))
            self.plain(lambda: client.expire(k(f"ttl:{n % 20}"), LONG_TTL_SECONDS))
            self.plain(lambda: client.set(k(f"gone:{n % 30}"), n))
            self.plain(lambda: client.delete(k(f"gone:{(n + 15) % 30}")))
            if self.cluster and not self.cluster_client:
                # Keys of several slots in one command: split per slot on a cluster side.
                self.plain(lambda: client.mset({k(f"m:{n % 7}"): n, k(f"m:{(n + 3) % 7}"): n}))
                self.plain(lambda: client.mget(k("m:1"), k("m:2"), k("counter")))
                self.plain(lambda: client.delete(k(f"m:{(n + 5) % 7}"), k(f"gone:{n % 30}")))
                self.ops += 3

            def transaction() -> None:
                pipe = client.pipeline(transaction=True)
                pipe.incr(k("tx"))
                pipe.hset(k("txh"), f"f{n % 10}", n)
                pipe.execute()

            self.counted("tx", transaction)
            self.counted("script", lambda: script(keys=[k("script"), k("slist")], args=[n]))
            self.ops += 13
            time.sleep(0.004)
        client.close()


class Writers:
    def __init__(self, port: int, threads: int = 3, *, cluster: bool = False, cluster_client: bool = False) -> None:
        self.stop = threading.Event()
        self.writers = [Writer(i, port, self.stop, cluster, cluster_client) for i in range(threads)]
        self.threads = [threading.Thread(target=w.run, daemon=True, name=f"writer-{i}")
                        for i, w in enumerate(self.writers)]

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    @property
    def ops(self) -> int:
        return sum(w.ops for w in self.writers)

    def wait_ops(self, more: int, timeout: float = 30, at_least: float = 0.6) -> None:
        """Let at least ``more`` further writes through, for at least ``at_least`` seconds."""
        goal = self.ops + more
        start = time.monotonic()
        deadline = start + timeout
        while self.ops < goal or time.monotonic() - start < at_least:
            assert time.monotonic() < deadline, f"writers stalled at {self.ops} ops: {self.errors()[-3:]}"
            time.sleep(0.05)

    def errors(self) -> list[str]:
        return [e for w in self.writers for e in w.errors]

    def check_counters(self, client: redis.Redis) -> None:
        for writer in self.writers:
            for key, counter in writer.counters.items():
                kind = key.rsplit(":", 1)[1]
                if kind in ("counter", "tx", "script"):
                    counter.check(int(client.get(key) or 0), key)
                elif kind == "hash":
                    counter.check(sum(int(v) for v in client.hvals(key)), key)
                elif kind == "zset":
                    counter.check(int(sum(score for _, score in client.zrange(key, 0, -1, withscores=True))), key)


def assert_identical(first: redis.Redis, second: redis.Redis, what: str) -> int:
    keys = keys_of(first)
    assert keys == keys_of(second), f"{what}: keys differ: {sorted(keys ^ keys_of(second))[:5]}"
    for key in keys:
        assert value_of(first, key) == value_of(second, key), f"{what}: value of {key!r} differs"
        ttl_a, ttl_b = first.pttl(key), second.pttl(key)
        assert (ttl_a < 0 and ttl_a == ttl_b) or abs(ttl_a - ttl_b) <= 1000, \
            f"{what}: TTL of {key!r}: {ttl_a} ms and {ttl_b} ms"
    return len(keys)


def wait_in_sync(stub, run: str, events, timeout: float = 90) -> None:
    """Until the run's "in sync" event (``events``: an ``eve_process.Subscriber``)."""
    deadline = time.monotonic() + timeout
    while not any(e.type == "live" and e.message.startswith("in sync") for e in list(events.events)):
        record = stub.GetRun(wpb.GetRunRequest(run=run))
        assert record.state in (wpb.APPROVED, wpb.COPYING, wpb.SYNCING), record.failure_reason
        assert time.monotonic() < deadline, "the run did not get in sync"
        time.sleep(0.1)


def start_interlay_and_run(eve, port: int):
    """The interlay "app" in front of the endpoint "src" on ``port`` (and the ports after it
    for a cluster), started; the run "live" created, its events followed. Returns
    ``(stub, run, events)``."""
    eve.interlays().CreateInterlay(ipb.CreateInterlayRequest(
        id="app", endpoint="src", port=port, settings=ipb.InterlaySettings(max_concurrent_connections=100)))
    eve.interlays().StartInterlay(ipb.StartInterlayRequest(id="app"))
    stub = eve.migrations()
    run = stub.CreateRun(wpb.CreateRunRequest(id="live")).id
    events = Subscriber(stub, run)
    events.start()
    return stub, run, events


class Live:
    """One online run driven through the API."""

    def __init__(self, eve: EveServer, server_factory, policy: int, *, mirror: bool = False,
                 strategy: int = wpb.ONLINE_PHASED, target_args: tuple[str, ...] = (), max_keys_per_second: int = 0,
                 keys: int = 1500, keyspace_notifications: bool = False,
                 engines: tuple[str, str] = (ENGINE, ENGINE)) -> None:
        self.eve = eve
        self.source = server_factory(engines[0])
        self.target = server_factory(engines[1], extra_args=target_args)
        self.mirror = server_factory(ENGINE) if mirror else None
        fill(self.source.client(), keys, prefix="pre")
        for name, server in (("src", self.source), ("dst", self.target), ("mir", self.mirror)):
            if server is not None:
                eve.endpoints().CreateEndpoint(epb.CreateEndpointRequest(
                    endpoint=name, kind="redis",
                    config=epb.EndpointConfig(target=epb.Connection(host="127.0.0.1", port=server.port))))
        self.port = free_port()
        self.stub, self.run, self.events = start_interlay_and_run(eve, self.port)
        self.stub.SubmitSetup(wpb.SubmitSetupRequest(run=self.run, setup=wpb.RunSetup(
            source="src", target="dst", mirror_targets=["mir"] if mirror else [], strategy=strategy,
            write_consistency=policy, interlay="app", keyspace_notifications=keyspace_notifications,
            rate_limits=wpb.RateLimits(max_keys_per_second=max_keys_per_second))))
        self.stub.Prepare(wpb.PrepareRequest(run=self.run))
        wait_state(self.stub, self.run, "READY")
        for issue in self.stub.GetCompatibility(wpb.GetCompatibilityRequest(run=self.run)).issues:
            self.stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=self.run, issue_id=issue.id, notes="ok"))

    def approve(self) -> None:
        self.stub.Approve(wpb.ApproveRequest(run=self.run, notes="go"))

    def wait_in_sync(self, timeout: float = 90) -> None:
        wait_in_sync(self.stub, self.run, self.events, timeout)

    def traffic(self, percent: int = 0, cutover: bool = False) -> wpb.Run:
        return self.stub.SetTraffic(wpb.SetTrafficRequest(run=self.run, read_percent_target=percent,
                                                          cutover_writes=cutover))

    def state(self) -> int:
        return self.stub.GetRun(wpb.GetRunRequest(run=self.run)).state

    def assert_forwarded_to_source_alone(self, key: str, timeout: float = 15.0) -> None:
        """A write through the interlay lands on the source and on no other side. Waits on the
        interlay's own accounting instead of a fixed sleep: until its stats count the write on the
        source backend, and then a PING sent after it (so a dual write of the SET, dispatched with
        it, has been answered and counted); then no dual write may have been counted since."""
        stub = self.eve.interlays()

        def stats() -> ipb.InterlayStats:
            return stub.GetInterlay(ipb.GetInterlayRequest(id="app")).stats

        def source_ops(current: ipb.InterlayStats) -> int:
            return sum(backend.ops for backend in current.backends if backend.backend == "source")

        def dual_writes(current: ipb.InterlayStats) -> dict[str, int]:
            return {dual.side: dual.writes + dual.failures for dual in current.dual_writes}

        current = stats()
        client = redis.Redis(host="127.0.0.1", port=self.port)
        # A PING first: once it is counted, the stats are a report made after everything before it.
        for step, command in enumerate((client.ping, lambda: client.set(key, 1), client.ping)):
            counted = source_ops(current)
            command()
            deadline = time.monotonic() + timeout
            while source_ops(current := stats()) <= counted:
                assert time.monotonic() < deadline, f"the interlay never counted the write on the source: {current}"
                time.sleep(0.05)
            if step == 0:
                before = current
        client.close()
        assert dual_writes(current) == dual_writes(before), f"a dual write after the rollback: {current}"
        assert self.source.client().get(key) == b"1" and not self.target.client().exists(key)

    def settle(self) -> None:
        """After the writes stopped: let the last ones be re-copied and the short TTLs pass."""
        time.sleep(SHORT_TTL_SECONDS + 1.5)
