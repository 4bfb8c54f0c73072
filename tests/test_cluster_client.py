"""The one cluster client (eve/redis/cluster.py) against real servers and clusters.

Every redirect and failure path is produced on a real cluster: slots migrated with
CLUSTER SETSLOT IMPORTING/MIGRATING and MIGRATE, masters killed, slots taken away,
credentials refused. Error replies for the classifier come from real servers
wherever a server can be made to give them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from servers import RedisServer, begin_migration, finish_migration, free_port, migrate_keys, node_id

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import AuthError, EndpointError, TargetError, UnavailableError
from eve.redis.cluster import (
    ASK,
    BUSYKEY,
    DENIED,
    MOVED,
    PERMANENT,
    TRANSIENT,
    ClientOptions,
    ClusterClient,
    ServerRestarted,
    ServerRunIds,
    classify,
    is_transient,
    payload_refused,
    refreshes_slots,
)
from eve.redis.topology import key_slot
from eve.redis.wire import FastConnection, ReplyError, pack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

QUICK = ClientOptions(timeout=5.0, reconnect_seconds=1.0, retry_delay=0.01, client_name="eve-test")


def spec(server: RedisServer, password: str | None = None) -> ConnectionSpec:
    return ConnectionSpec(server.host, server.port, password=password if password is not None else server.password)


def client_of(server: RedisServer, options: ClientOptions = QUICK, **kw: Any) -> ClusterClient:
    return ClusterClient(spec(server), role="target", error=TargetError, options=options, **kw)


def address(server: RedisServer) -> str:
    return f"{server.host}:{server.port}"


def owner_and_other(cluster: Any, client: ClusterClient, key: bytes) -> tuple[RedisServer, RedisServer]:
    """The master owning ``key``'s slot (as the client's map says) and another master."""
    owner = next(master for master in cluster.masters if address(master) == client.node_for_key(key))
    return owner, next(master for master in cluster.masters if master is not owner)


def tagged(tag: str, count: int) -> tuple[list[bytes], int]:
    """Keys sharing one hash tag, and their one slot."""
    keys = [b"{%s}:%d" % (tag.encode(), n) for n in range(count)]
    return keys, key_slot(keys[0])


def sets(keys: list[bytes]) -> list[bytes]:
    return [pack("SET", key, key) for key in keys]


def gets(keys: list[bytes]) -> list[bytes]:
    return [pack("GET", key) for key in keys]


def values(client: ClusterClient, keys: list[bytes]) -> list[Any]:
    return [replies[0] for _node, replies in client.execute(0, keys, gets(keys)).by_key(len(keys))]


def allow_partial_coverage(cluster: Any) -> None:
    # A slot without a master would otherwise take the whole cluster down (cluster_state:fail).
    for master in cluster.masters:
        master.client().config_set("cluster-require-full-coverage", "no")


# --------------------------------------------------------------------------- routing


def test_routes_by_slot_across_masters_one_pipeline_per_node(cluster_factory):
    cluster = cluster_factory("redis-7.0", masters=3)
    keys = [b"route:%d" % n for n in range(300)]
    with client_of(cluster.masters[0]) as client:
        routed = client.execute(0, keys, sets(keys), expect=b"OK")
        assert client.cluster and len(client.masters) == 3
        assert sorted(group.address for group in routed.groups) == sorted(address(m) for m in cluster.masters)
        assert all(group.clean and not group.asking for group in routed.groups)
        for group in routed.groups:
            owner = next(m for m in cluster.masters if address(m) == group.address)
            slots = {key_slot(keys[index]) for index in group.indexes}
            own = {slot for start, end, master, *_ in owner.client().execute_command("CLUSTER", "SLOTS")
                   if int(master[1]) == owner.port for slot in range(int(start), int(end) + 1)}
            assert slots <= own
        assert sum(master.client().dbsize() for master in cluster.masters) == len(keys)
        assert all(master.client().dbsize() > 50 for master in cluster.masters)
        # Several commands per key come back per key, in the caller's order.
        replies = client.run(0, keys, [(pack("GET", key), pack("PTTL", key)) for key in keys])
        assert [found for _node, (found, _ttl) in replies] == keys
        assert {ttl for _node, (_found, ttl) in replies} == {-1}
        # A connection dropped under the client is reopened and the pipeline sent again.
        for master in cluster.masters:
            master.client().client_kill_filter(_type="normal", skipme=True)
        assert values(client, keys) == keys


def test_standalone_is_the_one_node_case(server_factory):
    server = server_factory("valkey-9.1")
    keys = [b"solo:%d" % n for n in range(50)]
    with client_of(server) as client:
        routed = client.execute(3, keys, sets(keys), expect=b"OK")
        assert client.cluster is False and client.nodes == [address(server)]
        assert [(group.address, group.clean, list(group.indexes)) for group in routed.groups] == [
            (address(server), True, list(range(len(keys))))]
        assert server.client(db=3).dbsize() == len(keys) and server.client().dbsize() == 0
        assert client.dbs_with_keys() == [3] and client.has_db(3)
        assert values(client, keys) == [None] * len(keys)       # db 0: nothing there
        assert [r[0] for _n, r in client.execute(3, keys, gets(keys)).by_key(len(keys))] == keys
        # A db the server does not have fails each key, with the server's reason.
        [group] = client.execute(99, keys[:2], gets(keys[:2])).groups
        assert all("SELECT 99" in str(reply) for reply in group.replies)
        assert classify(str(group.replies[0]))[0] == PERMANENT


def test_a_cluster_has_only_db_0(cluster_factory):
    cluster = cluster_factory("valkey-9.1", masters=3)
    with client_of(cluster.masters[1]) as client:
        assert not client.has_db(2)
        [group] = client.execute(2, [b"a", b"b"], gets([b"a", b"b"])).groups
        assert all("only db 0" in str(reply) for reply in group.replies)


# --------------------------------------------------------------------------- redirections


@pytest.mark.parametrize("engine_name", ["redis-7.0", "valkey-9.1"])
def test_moved_after_a_slot_is_migrated_mid_run(cluster_factory, engine_name):
    cluster = cluster_factory(engine_name, masters=3)
    keys, slot = tagged("moving", 20)
    with client_of(cluster.masters[0]) as client:
        assert client.execute(0, keys, sets(keys), expect=b"OK").groups[0].clean
        owner, destination = owner_and_other(cluster, client, keys[0])
        # The slot moves while the client holds the old map.
        begin_migration(owner, destination, slot)
        migrate_keys(owner, destination, keys)
        finish_migration(cluster, destination, slot)
        assert client.node_for_key(keys[0]) == address(owner)   # stale
        routed = client.execute(0, keys, gets(keys))
        assert [replies[0] for _n, replies in routed.by_key(len(keys))] == keys
        assert [(group.address, group.asking) for group in routed.groups] == [(address(destination), False)]
        assert client.node_for_key(keys[0]) == address(destination), "MOVED refreshes the slot map"
        assert destination.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == len(keys)


@pytest.mark.parametrize("engine_name", ["redis-7.0", "valkey-9.1"])
def test_ask_while_a_slot_is_half_migrated(cluster_factory, engine_name):
    cluster = cluster_factory(engine_name, masters=3)
    keys, slot = tagged("half", 10)
    with client_of(cluster.masters[0]) as client:
        client.execute(0, keys, sets(keys), expect=b"OK")
        owner, destination = owner_and_other(cluster, client, keys[0])
        begin_migration(owner, destination, slot)
        migrate_keys(owner, destination, keys[:5])
        routed = client.execute(0, keys, gets(keys))
        # The moved keys are found on the importing node: ASKING went before each GET
        # (without it the importing node answers MOVED back to the owner).
        assert [replies[0] for _n, replies in routed.by_key(len(keys))] == keys
        asked = [group for group in routed.groups if group.asking]
        assert [(group.address, sorted(group.indexes)) for group in asked] == [(address(destination), [0, 1, 2, 3, 4])]
        # A new key of the slot is created on the importing node.
        new = b"{half}:new"
        assert client.execute(0, [new], sets([new])).by_key(1)[0] == (address(destination), [b"OK"])
        assert destination.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 6
        assert client.node_for_key(keys[0]) == address(owner), "ASK leaves the slot map alone"


def test_the_redirect_limit(cluster_factory):
    cluster = cluster_factory("redis-7.0", masters=3)
    key = b"{loop}:missing"
    slot = key_slot(key)
    options = ClientOptions(timeout=5.0, reconnect_seconds=1.0, max_redirects=3)
    with client_of(cluster.masters[0], options) as client:
        owner, other = owner_and_other(cluster, client, key)
        # MIGRATING without IMPORTING on the other side: the owner answers ASK (the key is not
        # there), the other node answers MOVED back (it is not importing), and so on.
        owner.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(other))
        [group] = client.execute(0, [key], gets([key])).groups
        [reply] = group.replies
        assert isinstance(reply, ReplyError)
        assert "kept redirecting the key (3 MOVED/ASK hops)" in str(reply)
        assert classify(str(reply))[0] == PERMANENT


# --------------------------------------------------------------------------- failures


def test_a_killed_master_is_unavailable_after_the_reconnect_deadline(cluster_factory):
    cluster = cluster_factory("redis-7.0", masters=3)
    seed, victim = cluster.masters[0], cluster.masters[2]
    with client_of(seed) as client:
        keys = [key for key in (b"dead:%d" % n for n in range(200)) if client.node_for_key(key) == address(victim)]
        assert client.execute(0, keys, sets(keys), expect=b"OK").groups[0].clean
        victim.kill()
        began = time.monotonic()
        with pytest.raises(UnavailableError, match=rf"^target unreachable: .*{victim.host}:{victim.port}"):
            client.execute(0, keys, gets(keys))
        assert 1.0 <= time.monotonic() - began < 10


def test_a_replacement_is_found_when_the_slot_map_changes(cluster_factory):
    cluster = cluster_factory("valkey-9.1", masters=3)
    allow_partial_coverage(cluster)
    seed, survivor, victim = cluster.masters
    # Retries of a slot left without a master (between FORGET and ADDSLOTSRANGE) span a second.
    options = ClientOptions(timeout=5.0, reconnect_seconds=15.0, max_attempts=5, retry_delay=0.2)
    with client_of(seed, options) as client:
        keys = [key for key in (b"moved-on:%d" % n for n in range(200)) if client.node_for_key(key) == address(victim)]
        ranges = next(node.slots for node in client.masters if node.address == address(victim))
        victim_id = node_id(victim)
        victim.kill()

        def replace() -> None:
            # The operator gives the dead master's slots to the seed (a failover would hand them
            # to a replica): the client, retrying the dead node, learns it from the slot map.
            time.sleep(0.5)
            for node in (seed, survivor):
                node.client().execute_command("CLUSTER", "FORGET", victim_id)
            seed.client().execute_command("CLUSTER", "ADDSLOTSRANGE", *(bound for span in ranges for bound in span))

        replacing = threading.Thread(target=replace)
        replacing.start()
        try:
            routed = client.execute(0, keys, sets(keys), expect=b"OK")
        finally:
            replacing.join()
        assert [(group.address, group.clean) for group in routed.groups] == [(address(seed), True)]
        assert [seed.client().get(key) for key in keys] == keys
        assert address(victim) not in client.nodes


def test_a_slot_without_a_master_is_a_clear_error_naming_it(cluster_factory):
    cluster = cluster_factory("redis-7.0", masters=3)
    allow_partial_coverage(cluster)
    orphan, served = b"orphan", b"served"
    slot = key_slot(orphan)
    for master in cluster.masters:
        master.client().execute_command("CLUSTER", "DELSLOTS", slot)
    options = ClientOptions(timeout=5.0, reconnect_seconds=1.0, max_attempts=2, retry_delay=0.01)
    with client_of(cluster.masters[0], options) as client:
        client.connect()
        assert client.slots is not None and client.slots.owner(slot) is None
        routed = client.execute(0, [orphan, served], sets([orphan, served]))
        (_, (orphan_reply,)), (_, (served_reply,)) = routed.by_key(2)
        assert served_reply == b"OK"
        assert isinstance(orphan_reply, ReplyError)
        assert str(orphan_reply) == (f"CLUSTERDOWN slot {slot} has no master in CLUSTER SLOTS of target "
                                     f"{address(cluster.masters[0])}")
        assert classify(str(orphan_reply))[0] == TRANSIENT
        assert routed.attempts_of(0) == 2


def test_refused_credentials_are_an_auth_error_naming_the_side(cluster_factory):
    password = "s3cret-pw"
    cluster = cluster_factory("redis-7.0", masters=3, password=password)
    seed = cluster.masters[0]
    wrong = ClusterClient(spec(seed, password="not-it"), role="target", options=QUICK)
    with pytest.raises(AuthError) as refused:
        wrong.connect()
    assert str(refused.value).startswith("target: ") and "not-it" not in str(refused.value)
    nothing = ClusterClient(ConnectionSpec(seed.host, seed.port), role="source", options=QUICK)
    with pytest.raises(AuthError, match="^source ") as refused:
        nothing.connect()
    assert "NOAUTH" in str(refused.value) and password not in str(refused.value)
    # The right password reaches every master (each node's spec carries the credentials).
    keys = [b"auth:%d" % n for n in range(60)]
    with client_of(seed) as client:
        routed = client.execute(0, keys, sets(keys), expect=b"OK")
        assert len(routed.groups) == 3 and all(group.clean for group in routed.groups)


def test_an_unreachable_seed_is_unavailable_naming_it():
    closed = ConnectionSpec("127.0.0.1", free_port())
    began = time.monotonic()
    with pytest.raises(UnavailableError, match=rf"^source unreachable: .*127\.0\.0\.1:{closed.port}.*0\.3s"):
        ClusterClient(closed, role="source", options=ClientOptions(reconnect_seconds=0.3)).connect()
    assert 0.3 <= time.monotonic() - began < 5


# --------------------------------------------------------------------------- the classifier


def _reply(conn: FastConnection, *args: Any) -> str:
    reply = conn.execute(*args)
    assert isinstance(reply, ReplyError), reply
    return str(reply)


def test_a_restarted_server_is_told_apart_by_its_run_id(server_factory):
    server = server_factory("valkey-9.1")
    with client_of(server) as client:
        before = client.identify()
        assert before == {address(server): server.client().info("server")["run_id"]}
        client.execute(0, [b"k"], [pack("SET", "k", "v")])
        server.kill()
        server.start()
        after = server.client().info("server")["run_id"]
        with pytest.raises(ServerRestarted) as raised:
            client.execute(0, [b"k"], [pack("GET", "k")])
        restarted = raised.value
        assert (restarted.role, restarted.address, restarted.before, restarted.after) == (
            "target", address(server), before[address(server)], after)
        assert restarted.side == "target" and isinstance(restarted, EndpointError)
        assert "restarted" in str(restarted) and after in str(restarted)
        with pytest.raises(ServerRestarted):  # until the caller accepts it
            client.call(None, "PING")
        client.accept_restart(restarted)
        assert client.call(None, "GET", "k") is None  # a non-persistent server came back empty
        assert client.identify() == {address(server): after}

    # Known from a caller (a job that wrote to the server before the restart): the first
    # connection already tells.
    with client_of(server, run_ids=ServerRunIds(before)) as late:
        with pytest.raises(ServerRestarted):
            late.connect()
    # One ServerRunIds shared by two clients: accepted through one, known to the other.
    shared = ServerRunIds(before)
    first, second = client_of(server, run_ids=shared), client_of(server, run_ids=shared)
    with first, second:
        with pytest.raises(ServerRestarted) as raised:
            first.connect()
        first.accept_restart(raised.value)
        second.connect()
        assert shared.as_dict() == {address(server): after}


def test_the_run_ids_of_a_clusters_masters(cluster_factory):
    cluster = cluster_factory("valkey-9.1", masters=3)
    with client_of(cluster.masters[0]) as client:
        run_ids = client.identify()
    assert run_ids == {address(master): master.client().info("server")["run_id"] for master in cluster.masters}
    assert len(set(run_ids.values())) == 3


def test_the_classifier_on_real_error_replies_of_a_server(server_factory):
    server = server_factory("redis-7.0")
    conn = FastConnection(spec(server), timeout=5)
    conn.execute("SET", "string", "v")
    payload = conn.execute("DUMP", "string")

    busykey = _reply(conn, "RESTORE", "string", 0, payload)
    assert classify(busykey) == (BUSYKEY, busykey)
    refused = _reply(conn, "RESTORE", "other", 0, b"not a dump payload")
    assert payload_refused(refused)
    assert classify(refused) == (PERMANENT, f"target refused the DUMP payload (RDB format of a newer server?): {refused}")
    wrongtype = _reply(conn, "LPUSH", "string", "x")
    assert classify(wrongtype) == (PERMANENT, wrongtype)
    conn.execute("XGROUP", "CREATE", "stream", "group", "$", "MKSTREAM")
    busygroup = _reply(conn, "XGROUP", "CREATE", "stream", "group", "$")
    assert busygroup.startswith("BUSYGROUP") and classify(busygroup)[0] == PERMANENT  # not BUSY

    conn.execute("CONFIG", "SET", "maxmemory", 1)
    oom = _reply(conn, "SET", "more", "x" * 100)
    conn.execute("CONFIG", "SET", "maxmemory", 0)
    assert classify(oom) == (TRANSIENT, f"target out of memory (maxmemory): {oom}")

    # BUSY: another connection runs a script past busy-reply-threshold.
    conn.execute("CONFIG", "SET", "busy-reply-threshold", 50)
    looping = threading.Thread(target=_run_forever, args=(server,), daemon=True)
    looping.start()
    deadline = time.monotonic() + 10
    while not str(reply := conn.execute("GET", "string")).startswith("BUSY") and time.monotonic() < deadline:
        time.sleep(0.05)
    busy = str(reply)
    conn.execute("SCRIPT", "KILL")
    looping.join(10)
    assert busy.startswith("BUSY ") and classify(busy) == (TRANSIENT, busy) and not refreshes_slots(busy)

    conn.execute("ACL", "SETUSER", "reader", "on", ">reader-pw", "~*", "+get", "+client", "+ping")
    limited = FastConnection(ConnectionSpec(server.host, server.port, username="reader", password="reader-pw"))
    noperm = _reply(limited, "SET", "string", "w")
    assert classify(noperm) == (DENIED, noperm)
    limited.close()

    conn.execute("CONFIG", "SET", "requirepass", "pw")
    anonymous = FastConnection(ConnectionSpec(server.host, server.port), timeout=5)
    noauth = _reply(anonymous, "GET", "string")
    wrongpass = _reply(anonymous, "AUTH", "not-pw")
    assert classify(noauth) == (DENIED, noauth) and classify(wrongpass) == (DENIED, wrongpass)
    anonymous.close()
    conn.execute("CONFIG", "SET", "requirepass", "")   # the fixture stops it with SHUTDOWN
    conn.close()


def _run_forever(server: RedisServer) -> None:
    try:
        server.client(socket_timeout=30).eval("while true do end", 0)
    except Exception:  # noqa: BLE001 - killed by SCRIPT KILL, as intended
        pass


def test_the_classifier_on_real_replies_of_replicas(server_factory):
    master = server_factory("redis-7.0")
    replica = server_factory("redis-7.0", extra_args=["--replicaof", master.host, str(master.port)])
    # A replica of a master that never answers; it stops serving stale data once told so
    # (started that way, it would not even answer the fixture's PING).
    stale = server_factory("redis-7.0", extra_args=["--replicaof", "127.0.0.1", str(free_port())])
    readonly = _reply(FastConnection(spec(replica), timeout=5), "SET", "k", "v")
    assert readonly.startswith("READONLY") and classify(readonly)[0] == TRANSIENT and refreshes_slots(readonly)
    conn = FastConnection(spec(stale), timeout=5)
    conn.execute("CONFIG", "SET", "replica-serve-stale-data", "no")
    masterdown = _reply(conn, "GET", "k")
    conn.execute("CONFIG", "SET", "replica-serve-stale-data", "yes")
    assert masterdown.startswith("MASTERDOWN") and classify(masterdown) == (TRANSIENT, masterdown)


def test_the_classifier_on_real_replies_of_a_cluster(cluster_factory):
    cluster = cluster_factory("redis-7.0", masters=3)
    allow_partial_coverage(cluster)
    with client_of(cluster.masters[0]) as client:
        keys, slot = tagged("replies", 2)
        client.execute(0, keys, sets(keys))
        owner, other = owner_and_other(cluster, client, keys[0])
        third = next(m for m in cluster.masters if m is not owner and m is not other)
        at_other = FastConnection(spec(other), timeout=5)
        at_owner = FastConnection(spec(owner), timeout=5)
        moved = _reply(at_other, "GET", keys[0])
        assert classify(moved) == (MOVED, moved) and moved.split()[1] == str(slot)
        begin_migration(owner, other, slot)
        migrate_keys(owner, other, keys[:1])
        ask = _reply(at_owner, "GET", keys[0])
        assert classify(ask) == (ASK, ask)
        tryagain = _reply(at_owner, "MGET", *keys)   # one key moved, one not yet
        assert tryagain.startswith("TRYAGAIN") and classify(tryagain)[0] == TRANSIENT and refreshes_slots(tryagain)
        lonely = next(key for key in (b"lonely:%d" % n for n in range(1000)) if client.node_for_key(key) == address(third))
        for master in cluster.masters:
            master.client().execute_command("CLUSTER", "DELSLOTS", key_slot(lonely))
        clusterdown = _reply(FastConnection(spec(third), timeout=5), "GET", lonely)
        assert clusterdown.startswith("CLUSTERDOWN") and classify(clusterdown)[0] == TRANSIENT
        assert refreshes_slots(clusterdown)


def test_the_classifier_on_documented_replies_and_prefixes():
    # LOADING cannot be produced on demand: the server's documented text.
    assert classify("LOADING Redis is loading the dataset in memory")[0] == TRANSIENT
    # Codes are whole words: BUSY is transient, BUSYKEY and BUSYGROUP are answers about a key.
    assert is_transient("BUSY Redis is busy running a script.") and not is_transient("BUSYKEY Target key name")
    assert not is_transient("BUSYGROUP Consumer Group name already exists")
    assert classify("BUSY")[0] == TRANSIENT
    assert classify("ERR Bad data format")[0] == PERMANENT and payload_refused("ERR Bad data format")
    assert classify("EXECABORT Transaction discarded because of previous errors.")[0] == PERMANENT
    assert classify("ERR something else") == (PERMANENT, "ERR something else")
