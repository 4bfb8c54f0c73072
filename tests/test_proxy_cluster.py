"""Interlays in front of cluster sources (DESIGN.md section 5): one listener per
master, and every address a cluster client learns rewritten to them."""

from __future__ import annotations

import pytest
import redis
import redis.cluster
from proxies import LOOPBACK, endpoint_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.mark.parametrize("engine_name", ["redis-7.0", "valkey-9.1"])
def test_cluster_clients_keep_working_through_the_interlay(cluster_factory, interlay, engine_name) -> None:
    cluster = cluster_factory(engine_name, masters=3)
    it = interlay(endpoint=endpoint_for(cluster.host, cluster.port, pool=2), count=3)
    assert len(it.ports) == 3 and it.ports == [it.port, it.port + 1, it.port + 2]
    backend_ports = {master.port for master in cluster.masters}

    # Each listener fronts one master, in address order.
    masters = sorted(cluster.masters, key=lambda master: (master.host, master.port))
    for listener, master in zip(it.ports, masters):
        through = redis.Redis(host=LOOPBACK, port=listener)
        assert through.execute_command("CLUSTER", "MYID") == master.client().execute_command("CLUSTER", "MYID")
        through.close()

    # CLUSTER SLOTS / SHARDS / NODES name the interlay's listeners only.
    plain = redis.Redis(host=LOOPBACK, port=it.port)
    slots = plain.execute_command("CLUSTER", "SLOTS")
    assert {int(entry[2][1]) for entry in slots} == set(it.ports)
    assert {entry[2][0] for entry in slots} == {LOOPBACK.encode()}
    assert sum(int(entry[1]) - int(entry[0]) + 1 for entry in slots) == 16384
    nodes = plain.execute_command("CLUSTER", "NODES")
    text = nodes if isinstance(nodes, str) else str(nodes)
    for port in backend_ports:
        assert f":{port}@" not in text
    for port in it.ports:
        assert f"{LOOPBACK}:{port}@" in text
    shards = redis.Redis(host=LOOPBACK, port=it.port, protocol=3).execute_command("CLUSTER", "SHARDS")
    shard_ports = {node[b"port"] for shard in shards for node in shard[b"nodes"]}
    assert shard_ports == set(it.ports)

    # MOVED names the listener of the node that owns the slot.
    owner_of: dict[int, int] = {}
    for entry in slots:
        for slot in range(int(entry[0]), int(entry[1]) + 1):
            owner_of[slot] = int(entry[2][1])
    key = next(f"k{i}" for i in range(1000)
               if owner_of[redis.cluster.key_slot(f"k{i}".encode())] != it.port)
    with pytest.raises(redis.ResponseError) as moved:
        plain.get(key)
    slot = redis.cluster.key_slot(key.encode())
    assert str(moved.value).endswith(f"{slot} {LOOPBACK}:{owner_of[slot]}")  # redis-py drops "MOVED"
    plain.close()

    # A cluster client started from the interlay reads and writes every slot.
    client = redis.cluster.RedisCluster(host=LOOPBACK, port=it.port)
    try:
        assert {node.port for node in client.get_nodes()} == set(it.ports)
        for i in range(300):
            client.set(f"key:{i}", i)
        assert [client.get(f"key:{i}") for i in range(300)] == [str(i).encode() for i in range(300)]
        pipe = client.pipeline()
        for i in range(300):
            pipe.incr(f"key:{i}")
        assert pipe.execute() == [i + 1 for i in range(300)]
    finally:
        client.close()
    direct = cluster.client()
    assert direct.get("key:299") == b"300"
    direct.close()


def test_ask_redirection_and_asking(cluster_factory, interlay) -> None:
    cluster = cluster_factory("redis-8.2", masters=2)
    it = interlay(endpoint=endpoint_for(cluster.host, cluster.port), count=2)
    # servers.py gives the first master slots 0..8191; listeners follow address order.
    by_address = sorted(cluster.masters, key=lambda master: (master.host, master.port))
    listener = {master.port: it.ports[by_address.index(master)] for master in cluster.masters}
    source_node, target_node = cluster.masters
    source, target = source_node.client(), target_node.client()
    source_id = source.execute_command("CLUSTER", "MYID")
    target_id = target.execute_command("CLUSTER", "MYID")
    key = next(f"m{i}" for i in range(1000) if redis.cluster.key_slot(f"m{i}".encode()) < 8192)
    slot = redis.cluster.key_slot(key.encode())
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    first = redis.Redis(host=LOOPBACK, port=listener[source_node.port])
    second = redis.Redis(host=LOOPBACK, port=listener[target_node.port])
    with pytest.raises(redis.ResponseError) as ask:
        first.get(key)  # not on the migrating node: ASK, naming the target's listener
    assert str(ask.value).endswith(f"{slot} {LOOPBACK}:{listener[target_node.port]}")
    with pytest.raises(redis.ResponseError) as moved:
        second.get(key)  # the importing node answers MOVED without ASKING
    assert str(moved.value).endswith(f"{slot} {LOOPBACK}:{listener[source_node.port]}")
    pipe = second.pipeline(transaction=False)
    pipe.execute_command("ASKING")
    pipe.set(key, "imported")
    pipe.execute_command("ASKING")
    pipe.get(key)
    assert pipe.execute() == [True, True, True, b"imported"]
    assert target.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
