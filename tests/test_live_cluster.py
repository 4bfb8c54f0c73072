"""Live migrations with clusters (issue 14).

The quick part drives an interlay's route by hand (``InterlaySupervisor.route``):
dual writes reach the master owning each key's slot, and after a cutover every
command is routed by slot, multi-key commands split and merged, the rest refused
with ``CROSSSLOT``, redirections after a resharding followed. The slow part
(``pytest.mark.slow``) runs whole online runs through the API while client threads
write through the interlay.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import redis
from eve_process import EveServer, wait_state
from keyspace import fill
from live_runs import SHORT_TTL_SECONDS, Writers, assert_identical, start_interlay_and_run, wait_in_sync
from proxies import endpoint_for, free_ports, wait_for
from servers import move_slot

from eve.core.enums import WriteConsistency
from eve.redis.topology import cluster_layout, key_slot
from eve.v1 import endpoints_pb2 as epb
from eve.v1 import workflows_pb2 as wpb
from proxy import messages
from proxy.routing import SOURCE, TARGET

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ENGINE = "valkey-8.1"
# Keys of three different slots (hash tags), and one more in the first one's slot.
A, B, C, A2 = "{a}1", "{b}1", "{c}1", "{a}2"


def cluster_route(cluster, *, authoritative: str = SOURCE, mirror: bool = True,
                  policy: WriteConsistency = WriteConsistency.SOURCE_AUTHORITATIVE) -> messages.Route:
    """The route of a live run from the interlay's standalone source to ``cluster``."""
    spec = endpoint_for(cluster.host, cluster.port).write
    other = TARGET if authoritative == SOURCE else SOURCE
    return messages.Route(authoritative=authoritative, sides=((TARGET, spec),), mirror_to=(other,) if mirror else (),
                          policy=policy, read_percent=0,
                          clusters=((TARGET, cluster_layout(spec, timeout=5, client_name="eve-test")),))


def set_route(supervisor, it, route: messages.Route) -> None:
    supervisor.route(it.id, route)
    assert supervisor.dirty_barrier(it.id, timeout=5)  # answered after the route was applied


def owner_of(cluster, key: str):
    """The master owning ``key``'s slot now."""
    slot = key_slot(key.encode())
    spec = endpoint_for(cluster.host, cluster.port).write
    for master in cluster_layout(spec, timeout=5, client_name="eve-test"):
        if any(start <= slot <= end for start, end in master.slots):
            return next(server for server in cluster.masters if server.port == master.port)
    raise AssertionError(f"no owner for slot {slot}")


@pytest.fixture
def sides(server_factory, cluster_factory, interlay):
    source = server_factory(ENGINE)
    cluster = cluster_factory(ENGINE, masters=3)
    return source, cluster, interlay(source)


def test_dual_writes_reach_the_master_owning_each_slot_on_the_target_and_a_mirror(supervisor, sides,
                                                                                  cluster_factory):
    source, cluster, it = sides
    mirror = cluster_factory(ENGINE, masters=2)
    route = cluster_route(cluster)
    mirror_spec = endpoint_for(mirror.host, mirror.port).write
    set_route(supervisor, it, messages.Route(
        authoritative=SOURCE, sides=(*route.sides, ("mirror:m", mirror_spec)), mirror_to=(TARGET, "mirror:m"),
        policy=route.policy, read_percent=0,
        clusters=(*route.clusters, ("mirror:m", cluster_layout(mirror_spec, timeout=5, client_name="eve-test")))))
    client = it.client()
    assert client.mset({A: "1", B: "2", C: "3"})
    assert client.incr(A2) == 1 and client.hset("{b}h", "f", "v") == 1
    assert client.delete(C, "{c}none") == 1
    for deployment in (cluster, mirror):
        other = deployment.client()
        wait_for(lambda: other.get(A) == b"1" and other.get(B) == b"2" and other.exists(C) == 0
                 and other.get(A2) == b"1" and other.hgetall("{b}h") == {b"f": b"v"},
                 what=f"the writes on {deployment}")
        # Each key on its own master, as the cluster itself placed them.
        for key in (A, B, A2):
            assert owner_of(deployment, key).client().get(key) is not None
        other.close()
    assert source.client().get(A) == b"1"
    # Stats arrive every stats_interval: the report that counts the 4 writes on both sides.
    wait_for(lambda: {side["side"]: side["writes"] for side in supervisor.stats(it.id)["sides"]}
             == {TARGET: 4, "mirror:m": 4}, timeout=10, what="the dual writes counted per side")
    assert all(side["failures"] == 0 for side in supervisor.stats(it.id)["sides"])


def test_after_cutover_commands_are_routed_by_slot_split_merged_or_refused(supervisor, sides):
    _, cluster, it = sides
    set_route(supervisor, it, cluster_route(cluster, authoritative=TARGET, mirror=False))
    client = it.client()
    assert client.mset({A: "a", B: "b", C: "c"}) is True
    assert client.mget(B, "{x}missing", A, C, A2) == [b"b", None, b"a", b"c", None]
    assert client.exists(A, B, C, "{x}missing") == 3
    assert client.dbsize() == 3
    assert sorted(client.keys("*")) == sorted(k.encode() for k in (A, B, C))
    with pytest.raises(redis.ResponseError, match="hash to the same slot"):
        client.msetnx({A2: "x", "{b}2": "y"})
    with pytest.raises(redis.ResponseError, match="hash to the same slot"):
        client.sunionstore(A2, [B, C])
    # A pipeline across masters: every reply in request order.
    pipe = client.pipeline(transaction=False)
    for n in range(30):
        pipe.incr(f"{{k{n % 7}}}counter")
        pipe.get(A if n % 2 else B)
    replies = pipe.execute()
    assert replies[1::2] == [b"a" if n % 2 else b"b" for n in range(30)]
    assert sum(int(v) for v in replies[0::2] if v is not None) > 0
    assert client.delete(A, B, C) == 3
    # A transaction and a script run on the master of their keys' one slot.
    for tag in ("a", "b", "c"):
        pipe = client.pipeline(transaction=True)
        pipe.incr(f"{{{tag}}}tx")
        pipe.hset(f"{{{tag}}}txh", "f", tag)
        assert pipe.execute() == [1, 1]
    assert client.eval("return redis.call('incr', KEYS[1]) + redis.call('incr', KEYS[2])", 2, A, A2) == 2
    with pytest.raises(redis.ResponseError, match="hash to the same slot"):
        client.eval("return 1", 2, A, B)
    # A blocking command waits on the master of its key.
    pusher = threading.Timer(0.2, lambda: cluster.client().rpush(C, "x"))
    pusher.start()
    assert client.blpop([C], timeout=5) == (C.encode(), b"x")
    pusher.join()


def test_pipelined_dual_writes_are_split_by_slot_on_either_side(supervisor, sides):
    """A pipeline of dual writes travels as one batch (proxy.routing); a side that is a cluster
    takes its requests one by one, each to its slot's master, whether it mirrors the writes or,
    after a cutover, answers them (replies in order, a CROSSSLOT among them in its place)."""
    source, cluster, it = sides
    set_route(supervisor, it, cluster_route(cluster))
    client = it.client()
    pipe = client.pipeline(transaction=False)
    for n in range(40):
        pipe.incr(f"{{k{n % 9}}}n")
        pipe.set(f"{{s{n}}}v", n)
    pipe.mset({A: "1", B: "2", C: "3"})
    pipe.sunionstore(A2, ["{b}set", "{c}set"])   # across slots: fine on the source, CROSSSLOT on the target
    pipe.delete(C, "{c}none")
    replies = pipe.execute(raise_on_error=False)
    assert replies[:80:2] == [n // 9 + 1 for n in range(40)] and all(r is True for r in replies[1:80:2])
    assert replies[80:] == [True, 0, 1]
    target = cluster.client()
    expected = {f"{{k{n}}}n": str(len(range(n, 40, 9))).encode() for n in range(9)}
    expected.update({f"{{s{n}}}v": str(n).encode() for n in range(40)}, **{A: b"1", B: b"2"})
    wait_for(lambda: all(target.get(key) == value for key, value in expected.items()) and not target.exists(C),
             what="the pipelined writes on the cluster target")
    wait_for(lambda: [(s["writes"], s["failures"]) for s in supervisor.stats(it.id)["sides"]] == [(83, 1)],
             timeout=10, what="83 dual writes counted, the cross-slot one failed")
    # After the cutover, BOTH_REQUIRED: the cluster answers, the source mirrors.
    set_route(supervisor, it, cluster_route(cluster, authoritative=TARGET,
                                            policy=WriteConsistency.BOTH_REQUIRED))
    pipe = client.pipeline(transaction=False)
    for n in range(20):
        pipe.set(f"{{t{n}}}v", n)   # one batch
    for n in range(30):
        pipe.incr(f"{{k{n % 9}}}n")
        pipe.get(A if n % 2 else B)
    pipe.sunionstore(A2, ["{b}set", "{c}set"])
    pipe.mset({A: "x", B: "y"})
    pipe.mget(A, B, "{x}missing")
    replies = pipe.execute(raise_on_error=False)
    assert all(reply is True for reply in replies[:20])
    assert replies[21:80:2] == [b"1" if n % 2 else b"2" for n in range(30)]
    assert replies[20:80:2] == [int(expected[f"{{k{n % 9}}}n"]) + n // 9 + 1 for n in range(30)]
    assert isinstance(replies[80], redis.ResponseError) and "same slot" in str(replies[80])
    assert replies[81:] == [True, [b"x", b"y", None]]
    src = source.client()
    wait_for(lambda: src.mget(A, B) == [b"x", b"y"] and all(
        src.get(f"{{k{n}}}n") == target.get(f"{{k{n}}}n") for n in range(9))
        and all(src.get(f"{{t{n}}}v") == str(n).encode() for n in range(20)), what="reverse sync to the source")


def test_a_slot_moved_between_masters_is_followed(supervisor, sides):
    _, cluster, it = sides
    set_route(supervisor, it, cluster_route(cluster, authoritative=TARGET, mirror=False))
    client = it.client()
    keys = [f"{{a}}{n}" for n in range(20)]
    for key in keys:
        client.set(key, key)
    owner = owner_of(cluster, A)
    destination = next(master for master in cluster.masters if master is not owner)
    move_slot(cluster, owner, destination, key_slot(A.encode()))
    assert client.mget(keys) == [key.encode() for key in keys]
    assert client.incr(A2 + "c") == 1 and destination.client().get(A2 + "c") == b"1"


def test_wait_counts_the_replicas_that_have_the_clients_writes(server_factory, interlay):
    """WAIT through the interlay waits on the connection that made the writes (issue 14);
    on a connection of its own it would answer 0 at once."""
    source = server_factory(ENGINE)
    replica = server_factory(ENGINE, extra_args=("--replicaof", source.host, str(source.port)))
    wait_for(lambda: replica.client().info("replication")["master_link_status"] == "up", timeout=20,
             what="the replica linked")
    client = interlay(source).client()
    client.set("k", "v")
    assert client.execute_command("WAIT", 1, 5000) == 1
    assert replica.client().get("k") == b"v"
    # Two replicas with no timeout (0: for ever) would hold the shared connection for good:
    # bounded, it answers how many there are (the test's timeout catches a hang).
    assert client.execute_command("WAIT", 2, 0) == 1
    assert client.get("k") == b"v"


# --------------------------------------------------------------------------- whole runs (slow)

class Live:
    """One online run driven through the API, between any two deployments (server or cluster)."""

    def __init__(self, eve: EveServer, source, target, policy: int = wpb.SOURCE_AUTHORITATIVE,
                 keys: int = 1500) -> None:
        self.eve, self.source, self.target = eve, source, target
        fill(source.client(), keys, prefix="pre", binary=False)
        for name, deployment in (("src", source), ("dst", target)):
            eve.endpoints().CreateEndpoint(epb.CreateEndpointRequest(
                endpoint=name, kind="redis",
                config=epb.EndpointConfig(target=epb.Connection(host=deployment.host, port=deployment.port))))
        self.listeners = len(getattr(source, "masters", [source]))
        self.port = free_ports(self.listeners)
        self.stub, self.run, self.events = start_interlay_and_run(eve, self.port)
        self.stub.SubmitSetup(wpb.SubmitSetupRequest(run=self.run, setup=wpb.RunSetup(
            source="src", target="dst", strategy=wpb.ONLINE_PHASED, write_consistency=policy, interlay="app")))
        self.prepare()

    def prepare(self) -> list:
        self.stub.Prepare(wpb.PrepareRequest(run=self.run))
        wait_state(self.stub, self.run, "READY")
        issues = list(self.stub.GetCompatibility(wpb.GetCompatibilityRequest(run=self.run)).issues)
        for issue in issues:
            if not issue.blocking:
                self.stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=self.run, issue_id=issue.id, notes="ok"))
        return issues

    def approve(self) -> None:
        self.stub.Approve(wpb.ApproveRequest(run=self.run, notes="go"))

    def wait_in_sync(self, timeout: float = 90) -> None:
        wait_in_sync(self.stub, self.run, self.events, timeout)

    def cutover(self) -> wpb.Run:
        return self.stub.SetTraffic(wpb.SetTrafficRequest(run=self.run, read_percent_target=100, cutover_writes=True))

    def settle(self) -> None:
        """After the writes stopped: let the last ones be re-copied and the short TTLs pass."""
        time.sleep(SHORT_TTL_SECONDS + 1.5)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("engines", [
    pytest.param(("redis-7.0", "valkey-8.1"), id="redis-7.0-to-valkey-8.1"),
    pytest.param(("valkey-8.1", "redis-8.2"), id="valkey-8.1-to-redis-8.2"),
])
def test_standalone_to_cluster_cutover_and_complete(eve, server_factory, cluster_factory, engines):
    source, target = server_factory(engines[0]), cluster_factory(engines[1], masters=3)
    live = Live(eve, source, target)
    with Writers(live.port, cluster=True) as writers:
        writers.wait_ops(200)
        live.approve()
        live.wait_in_sync()
        writers.wait_ops(500)
        cut = live.cutover()
        assert cut.state == wpb.CUT_OVER and cut.writes_on_target
        writers.wait_ops(500)
    live.settle()
    cluster = target.client()
    writers.check_counters(cluster)
    assert assert_identical(source.client(), cluster, "source and target") > 1500
    verified = live.stub.Verify(wpb.VerifyRequest(run=live.run))
    assert verified.clean, verified
    assert live.stub.Complete(wpb.CompleteRequest(run=live.run, notes="accepted")).state == wpb.COMPLETED
    client = redis.Redis(host="127.0.0.1", port=live.port)
    client.mset({A: "1", B: "2"})
    assert cluster.get(A) == b"1" and cluster.get(B) == b"2" and not source.client().exists(A)


def _owner_and_other(cluster, key: str):
    owner = owner_of(cluster, key)
    return owner, next(master for master in cluster.masters if master is not owner)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("disturbance", ["target-master-restarted", "slot-moved"])
def test_standalone_to_cluster_topology_changes_lose_nothing_then_rollback(eve, server_factory, cluster_factory,
                                                                           disturbance):
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    source, target = server_factory(ENGINE), cluster_factory(ENGINE, masters=3, extra_args=aof)
    live = Live(eve, source, target)

    def disturb(key: str) -> None:
        owner, other = _owner_and_other(target, key)
        if disturbance == "slot-moved":
            move_slot(target, owner, other, key_slot(key.encode()))
        else:
            owner.stop()
            owner.start()
            # Back as a master of its slots once the others saw it again: what a failover waits for too.
            wait_for(lambda: all(b"cluster_state:ok" in master.client().execute_command("CLUSTER", "INFO")
                                 for master in target.masters), timeout=30, what="the cluster ok again")

    with Writers(live.port, cluster=True) as writers:
        writers.wait_ops(200)
        live.approve()
        live.wait_in_sync()
        writers.wait_ops(300)
        disturb("w0:counter")   # while dual writes go to the target
        writers.wait_ops(400)
        assert live.cutover().state == wpb.CUT_OVER
        writers.wait_ops(300)
        disturb("w1:counter")   # while the target is authoritative
        writers.wait_ops(400)
    live.settle()
    cluster = target.client()
    writers.check_counters(cluster)
    assert_identical(source.client(), cluster, "source and target")
    rolled = live.stub.Rollback(wpb.RollbackRequest(run=live.run, reason=f"rollback after {disturbance}"))
    assert rolled.state == wpb.ROLLED_BACK
    writers.check_counters(source.client())
    errors = live.stub.ListErrorKeys(wpb.ListErrorKeysRequest(run=live.run, page_size=10))
    assert not errors.error_keys, errors


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_cross_slot_commands_show_in_metrics_and_in_the_next_prepare(eve, server_factory, cluster_factory):
    source, target = server_factory(ENGINE), cluster_factory(ENGINE, masters=3)
    live = Live(eve, source, target, keys=100)
    live.approve()
    live.wait_in_sync()
    client = redis.Redis(host="127.0.0.1", port=live.port)
    client.mset({A: "1", B: "2"})                       # split per slot on a cluster
    client.mget(A, B, C)
    client.sunionstore("{a}u", ["{b}s", "{c}s"])        # refused by a cluster
    client.eval("return 1", 2, A, B)
    pipe = client.pipeline(transaction=True)
    pipe.incr(A)
    pipe.incr(B)
    pipe.execute()
    client.mget(A, A2)                                  # one slot: not counted

    def cross_slot() -> dict:
        metrics = live.stub.GetMetrics(wpb.GetMetricsRequest(run=live.run))
        return {c.command: c for c in metrics.cross_slot_commands}

    wait_for(lambda: {"mset", "mget", "sunionstore", "eval", "exec"} <= set(cross_slot()), timeout=10,
             what="the cross-slot commands in the run's metrics")
    found = cross_slot()
    assert found["mget"].count == 1 and not found["mget"].fails_on_cluster
    assert found["sunionstore"].fails_on_cluster and found["exec"].fails_on_cluster and found["eval"].fails_on_cluster
    assert found["sunionstore"].examples == ["{a}u {b}s {c}s"]
    live.stub.Rollback(wpb.RollbackRequest(run=live.run, reason="the application needs hash tags first"))
    # A later run through the same interlay is told before it is approved.
    again = live.stub.CreateRun(wpb.CreateRunRequest(id="again")).id
    live.run = again
    live.stub.SubmitSetup(wpb.SubmitSetupRequest(run=again, setup=wpb.RunSetup(
        source="src", target="dst", strategy=wpb.ONLINE_PHASED, write_consistency=wpb.SOURCE_AUTHORITATIVE,
        interlay="app")))
    issues = {issue.code: issue for issue in live.prepare()}
    issue = issues["CROSS_SLOT_COMMANDS"]
    assert issue.blocking and "SUNIONSTORE (1x)" in issue.message and "EXEC" in issue.message \
        and "MGET (1x)" in issue.message, issue.message
    with pytest.raises(grpc.RpcError, match="approval refused"):
        live.approve()
    live.stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=again, issue_id=issue.id,
                                                           notes="those commands move to hash tags first"))
    live.approve()
    live.wait_in_sync()
    live.stub.Rollback(wpb.RollbackRequest(run=again, reason="test over"))


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("masters,target_masters,engines", [
    pytest.param(3, 2, ("valkey-9.1", "valkey-9.1"), id="3-masters-to-2-valkey-9.1"),
    pytest.param(2, 5, ("redis-8.2", "redis-8.2"), id="2-masters-to-5-redis-8.2"),
    pytest.param(2, 0, ("redis-7.0", "redis-8.2"), id="2-masters-to-standalone-redis-7.0-to-8.2"),
])
def test_cluster_source_cutover_keeps_the_clients_topology(eve, server_factory, cluster_factory, masters,
                                                          target_masters, engines):
    source = cluster_factory(engines[0], masters=masters)
    target = cluster_factory(engines[1], masters=target_masters) if target_masters else server_factory(engines[1])
    live = Live(eve, source, target)
    topology = None
    with Writers(live.port, cluster=True, cluster_client=True) as writers:
        writers.wait_ops(200)
        live.approve()
        live.wait_in_sync()
        writers.wait_ops(400)
        listeners = redis.Redis(host="127.0.0.1", port=live.port)
        topology = listeners.execute_command("CLUSTER", "SLOTS")
        assert live.cutover().state == wpb.CUT_OVER
        writers.wait_ops(500)
        # The clients still see the interlay's listeners, one per source master, owning what they owned.
        assert listeners.execute_command("CLUSTER", "SLOTS") == topology
        assert {entry[2][1] for entry in topology} == set(range(live.port, live.port + masters))
    live.settle()
    assert not [e for e in writers.errors() if "MOVED" in e or "CROSSSLOT" in e], writers.errors()[:5]
    after = target.client()
    writers.check_counters(after)
    assert assert_identical(source.client(), after, "source and target") > 1500
    verified = live.stub.Verify(wpb.VerifyRequest(run=live.run))
    assert verified.clean, verified
    rolled = live.stub.Rollback(wpb.RollbackRequest(run=live.run, reason="the source is exact"))
    assert rolled.state == wpb.ROLLED_BACK
    writers.check_counters(source.client())
