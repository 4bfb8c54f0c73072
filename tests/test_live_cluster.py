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

import pytest
import redis
from proxies import endpoint_for, wait_for
from servers import move_slot

from eve.core.enums import WriteConsistency
from eve.redis.topology import cluster_layout, key_slot
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


def test_dual_writes_reach_the_master_owning_each_slot(supervisor, sides):
    source, cluster, it = sides
    set_route(supervisor, it, cluster_route(cluster))
    client = it.client()
    assert client.mset({A: "1", B: "2", C: "3"})
    assert client.incr(A2) == 1 and client.hset("{b}h", "f", "v") == 1
    assert client.delete(C, "{c}none") == 1
    target = cluster.client()
    wait_for(lambda: target.get(A) == b"1" and target.get(B) == b"2" and target.exists(C) == 0
             and target.get(A2) == b"1" and target.hgetall("{b}h") == {b"f": b"v"}, what="the writes on the cluster")
    # Each key on its own master, as the cluster itself placed them.
    for key in (A, B, A2):
        assert owner_of(cluster, key).client().get(key) is not None
    assert source.client().get(A) == b"1"
    stats = supervisor.stats(it.id)["sides"]
    assert all(side["failures"] == 0 for side in stats), stats
    target.close()


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
    # A blocking command waits on the master of its key.
    pusher = threading.Timer(0.2, lambda: cluster.client().rpush(C, "x"))
    pusher.start()
    assert client.blpop([C], timeout=5) == (C.encode(), b"x")
    pusher.join()


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
