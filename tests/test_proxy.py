"""Interlays against real servers and real clients: redis-py (sync and asyncio,
RESP2 and RESP3), redis-cli and redis-benchmark, through proxy processes
started by ``InterlaySupervisor`` as the coordinator starts them.

What a client must not be able to tell from the server (the issue's list):
pipelining, RESP3, AUTH checked by the backend, SELECT, transactions with
connection affinity, blocking commands, Pub/Sub, scripts and functions,
CLIENT state, MONITOR, large values, QUIT/RESET; and the interlay's own
limits: the connection limit, protocol errors, a backend that goes away.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import redis
import redis.asyncio
from proxies import LOOPBACK, Interlay, endpoint_for, recv_exactly, recv_until_closed, wait_for
from servers import free_port

from eve.core.endpoints import parse_config
from eve.core.errors import StateError
from eve.live.interlays import FAILED, RUNNING, InterlaySupervisor
from eve.redis import resp
from eve.redis.resp import encode_command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

def proxy_rss_peak_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------- forwarding


def test_forwarding_is_faithful(engine, server_factory, interlay) -> None:
    """The core behaviours against every engine, with redis-py RESP2 and RESP3."""
    server = server_factory(engine)
    it = interlay(server, pool=2)
    client = it.client()
    direct = server.client()

    assert client.ping()
    assert client.set("k", "v") and client.get("k") == b"v"
    # Pipelining: a thousand replies come back in request order.
    pipe = client.pipeline(transaction=False)
    for i in range(1000):
        pipe.set(f"p:{i}", i)
        pipe.incr(f"p:{i}")
        pipe.get(f"p:{i}")
    replies = pipe.execute()
    assert replies[2::3] == [str(i + 1).encode() for i in range(1000)]
    assert direct.get("p:999") == b"1000"
    # Error replies are forwarded as errors, and the connection carries on.
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        client.execute_command("LPUSH", "k", "x")
    with pytest.raises(redis.ResponseError, match="unknown command"):
        client.execute_command("NO-SUCH-COMMAND")
    # Transactions and WATCH.
    tx = client.pipeline(transaction=True)
    tx.set("t", 1).incr("t").get("t")
    assert tx.execute() == [True, 2, b"2"]
    with client.pipeline(transaction=True) as watched:
        watched.watch("t")
        direct.incr("t")
        watched.multi()
        watched.set("t", 100)
        with pytest.raises(redis.WatchError):
            watched.execute()
    assert client.get("t") == b"3"
    # Scripts and functions.
    sha = client.script_load("return redis.call('GET', KEYS[1])")
    assert client.evalsha(sha, 1, "k") == b"v"
    assert client.eval("return ARGV[1]", 0, "hello") == b"hello"
    assert client.script_exists(sha) == [True]
    library = ("#!lua name=evelib\n"
               "redis.register_function('evefn', function(keys, args) return redis.call('INCR', keys[1]) end)")
    assert client.function_load(library, replace=True) == b"evelib"
    assert client.fcall("evefn", 1, "f") == 1
    # CLIENT state pins the connection: the name sticks.
    named = it.client(client_name="app-1")
    assert named.client_getname() in ("app-1", b"app-1")
    assert named.get("k") == b"v"
    # SELECT: another db, isolated, on its own connection.
    db1 = it.client(db=1)
    db1.set("k", "in-db-1")
    assert db1.get("k") == b"in-db-1" and client.get("k") == b"v"
    # Blocking commands that time out.
    assert client.blpop(["empty-list"], timeout=0.1) is None
    assert client.xread({"no-stream": "$"}, block=100) in (None, [], {})
    assert client.execute_command("WAIT", 0, 100) == 0
    # A value larger than the stream threshold, both ways.
    big = os.urandom(3 * 1024 * 1024)
    client.set("big", big)
    assert client.get("big") == big
    assert direct.strlen("big") == len(big)
    # RESP3.
    resp3 = it.client(protocol=3)
    assert resp3.hset("h", mapping={"a": 1, "b": 2}) == 2
    assert resp3.hgetall("h") == {b"a": b"1", b"b": b"2"}
    assert resp3.execute_command("HELLO", 3)[b"proto"] == 3
    assert resp3.get("k") == b"v"
    tx3 = resp3.pipeline(transaction=True)
    tx3.incr("t3").incr("t3")
    assert tx3.execute() == [1, 2]
    assert client.get("k") == b"v"  # the RESP2 client still gets RESP2 replies
    for c in (client, named, db1, resp3, direct):
        c.close()


def test_asyncio_clients_share_the_multiplexed_connection(server_factory, interlay) -> None:
    server = server_factory("valkey-9.1")
    it = interlay(server, pool=1)

    async def main() -> None:
        clients = [redis.asyncio.Redis(host=it.host, port=it.port, protocol=p) for p in (2, 3) * 10]
        try:
            async def work(i: int, client: redis.asyncio.Redis) -> None:
                for j in range(50):
                    await client.set(f"a:{i}:{j}", j)
                    assert await client.get(f"a:{i}:{j}") == str(j).encode()
                async with client.pipeline(transaction=True) as tx:
                    tx.incr(f"a:{i}:n").incr(f"a:{i}:n")
                    assert await tx.execute() == [1, 2]
            await asyncio.gather(*(work(i, c) for i, c in enumerate(clients)))
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(main())
    stats = wait_for(lambda: (s := it.supervisor.stats(it.id)) and s["ops"] >= 20 * 104 and s, what="stats")
    assert stats["backends"][0]["backend"] == "source"
    assert stats["backends"][0]["ops"] >= 20 * 104
    assert stats["backends"][0]["p99_ms"] > 0
    # The histogram exported to Prometheus counts every round trip since the start (issue 24).
    assert sum(stats["backends"][0]["latency_buckets"]) >= 20 * 50
    assert stats["backends"][0]["latency_sum_seconds"] > 0
    # Twenty clients, one multiplexed connection (plus the dedicated ones MULTI borrowed).
    listing = server.client().client_list()
    assert sum(1 for c in listing if c.get("name", "").startswith("eve-interlay")) <= 1 + 20


def test_redis_cli_and_redis_benchmark(server_factory, interlay) -> None:
    server = server_factory("redis-7.0")
    it = interlay(server, pool=2)
    cli = ["redis-cli", "-h", it.host, "-p", str(it.port)]
    out = subprocess.run(cli + ["SET", "cli", "x y"], capture_output=True, text=True, timeout=20)
    assert out.stdout.strip() == "OK"
    out = subprocess.run(cli + ["GET", "cli"], capture_output=True, text=True, timeout=20)
    assert out.stdout.strip() == "x y"
    out = subprocess.run(cli + ["-3", "HGETALL", "none"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0
    # Commands piped in, one per line (inline protocol through --pipe is tested by raw sockets below).
    out = subprocess.run(cli, input="INCR n\nINCR n\nGET n\n", capture_output=True, text=True, timeout=20)
    assert out.stdout.split() == ["1", "2", "2"]
    bench = subprocess.run(["redis-benchmark", "-h", it.host, "-p", str(it.port), "-c", "20", "-n", "4000",
                            "-P", "8", "-t", "set,get,lpush,lpop,incr", "-q"],
                           capture_output=True, text=True, timeout=60)
    assert bench.returncode == 0, bench.stderr
    results = [line for line in bench.stdout.replace("\r", "\n").splitlines() if "requests per second" in line]
    assert len(results) == 5, bench.stdout


def test_inline_commands(server_factory, interlay) -> None:
    server = server_factory("redis-7.0")
    it = interlay(server)
    sock = it.raw()
    sock.sendall(b"SET inline \"a b\"\r\nGET inline\r\n\r\nPING\n")
    assert recv_exactly(sock, len(b"+OK\r\n$3\r\na b\r\n+PONG\r\n")) == b"+OK\r\n$3\r\na b\r\n+PONG\r\n"
    sock.close()


def test_pipeline_across_modes_keeps_order(server_factory, interlay) -> None:
    """One write holding shared, pinned and local requests: every reply once, in order."""
    server = server_factory("valkey-9.1")
    it = interlay(server, pool=1)
    commands = [
        ("SET", "a", "1"), ("MULTI",), ("SET", "b", "2"), ("INCR", "a"), ("EXEC",), ("GET", "a"),
        ("GET", "b"), ("BLPOP", "none", "0.01"), ("GET", "a"), ("SELECT", "3"), ("SET", "a", "db3"),
        ("SELECT", "0"), ("GET", "a"), ("WATCH", "a"), ("UNWATCH",), ("ECHO", "end"),
    ]
    expected = (b"+OK\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:2\r\n$1\r\n2\r\n$1\r\n2\r\n"
                b"*-1\r\n$1\r\n2\r\n+OK\r\n+OK\r\n+OK\r\n$1\r\n2\r\n+OK\r\n+OK\r\n$3\r\nend\r\n")
    sock = it.raw()
    sock.sendall(b"".join(encode_command(*command) for command in commands))
    assert recv_exactly(sock, len(expected)) == expected
    sock.sendall(encode_command("ECHO", "more"))
    assert recv_exactly(sock, 10) == b"$4\r\nmore\r\n"
    sock.close()
    assert server.client(db=3).get("a") == b"db3"


# --------------------------------------------------------------------------- authentication


def test_auth_is_checked_by_the_backend(server_factory, interlay) -> None:
    server = server_factory("redis-7.0", password="s3cret")
    direct = server.client()
    direct.acl_setuser("reader", enabled=True, passwords=["+readpw"], keys=["*"], commands=["+get", "+ping"])
    it = interlay(server, password="s3cret", pool=1)

    anonymous = it.raw()
    anonymous.sendall(b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n")
    assert anonymous.recv(100).startswith(b"-NOAUTH")
    anonymous.sendall(b"*2\r\n$4\r\nAUTH\r\n$5\r\nwrong\r\n")
    assert anonymous.recv(100).startswith(b"-WRONGPASS")
    anonymous.sendall(b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n")  # a failed AUTH leaves it unauthenticated
    assert anonymous.recv(100).startswith(b"-NOAUTH")
    anonymous.sendall(b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$1\r\n1\r\n")
    assert recv_exactly(anonymous, 10) == b"+OK\r\n+OK\r\n"
    anonymous.close()
    # Once authenticated as the endpoint's user, clients share the pool.
    assert _eve_connections(direct) <= 2

    # redis-py authenticating on connect, RESP2 (AUTH) and RESP3 (HELLO 3 AUTH).
    assert it.client(password="s3cret").get("x") == b"1"
    resp3 = it.client(password="s3cret", protocol=3)
    assert resp3.hgetall("none") == {}
    assert resp3.get("x") == b"1"
    with pytest.raises(redis.AuthenticationError):
        it.client(password="nope").get("x")
    # Another ACL user keeps its own permissions.
    reader = it.client(username="reader", password="readpw")
    assert reader.get("x") == b"1"
    with pytest.raises(redis.exceptions.NoPermissionError):
        reader.set("x", "2")
    assert direct.get("x") == b"1"
    assert _eve_connections(direct, user="reader") == 1


def _eve_connections(direct: redis.Redis, user: str | None = None) -> int:
    return sum(1 for c in direct.client_list() if c.get("user") == user) if user else \
        sum(1 for c in direct.client_list() if c.get("name", "").startswith("eve-interlay"))


def test_auth_when_the_endpoint_has_no_credentials(server_factory, interlay) -> None:
    server = server_factory("valkey-9.1")
    it = interlay(server)
    client = it.client()
    with pytest.raises(redis.RedisError, match="without any password configured"):
        client.execute_command("AUTH", "anything")
    assert client.set("a", 1)


def test_tls_backend(server_factory, interlay, tmp_path) -> None:
    """The interlay reaches the endpoint with the endpoint's TLS settings."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    tls_port = free_port()
    server = server_factory("redis-7.0", password="pw", extra_args=[
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"])
    endpoint = parse_config({"target": {"host": LOOPBACK, "port": tls_port, "tls": True, "tls_ca_file": str(cert),
                                        "password": "pw"}})
    it = interlay(endpoint=endpoint)
    client = it.client(password="pw")
    assert client.set("over-tls", "yes") and client.get("over-tls") == b"yes"
    assert server.client().get("over-tls") == b"yes"
    tls_clients = [c for c in server.client().client_list() if c.get("name", "").startswith("eve-interlay")]
    assert tls_clients


# --------------------------------------------------------------------------- multiplexing and modes


def test_transactions_on_one_multiplexed_connection_do_not_interleave(server_factory, interlay) -> None:
    server = server_factory("redis-8.2")
    it = interlay(server, pool=1)
    a, b = it.client(), it.client()
    a.execute_command("MULTI")
    a.execute_command("SET", "tx", "from-a")
    b.execute_command("MULTI")
    b.execute_command("SET", "tx", "from-b")
    b.execute_command("INCR", "counter")
    # A third client's plain commands run between them, outside both transactions.
    c = it.client()
    assert c.set("tx", "from-c") and c.get("tx") == b"from-c"
    assert b.execute_command("EXEC") == [b"OK", 1]
    assert c.get("tx") == b"from-b"
    assert a.execute_command("EXEC") == [b"OK"]
    assert c.get("tx") == b"from-a"
    with pytest.raises(redis.ResponseError, match="without MULTI"):
        a.execute_command("EXEC")
    # Back on the shared connection after the transaction.
    assert a.get("counter") == b"1"


def test_blocking_command_does_not_delay_other_clients(server_factory, interlay) -> None:
    server = server_factory("valkey-8.1")
    it = interlay(server, pool=1)
    blocked = it.client()
    result: list = []
    waiter = threading.Thread(target=lambda: result.append(blocked.blpop(["queue"], timeout=10)))
    waiter.start()
    time.sleep(0.3)
    other = it.client()
    started = time.monotonic()
    for i in range(100):
        other.set(f"o:{i}", i)
    assert other.get("o:99") == b"99"
    assert time.monotonic() - started < 2.0
    assert waiter.is_alive()
    other.rpush("queue", "job")
    waiter.join(timeout=10)
    assert result == [(b"queue", b"job")]
    # The blocked client is back to normal afterwards.
    assert blocked.get("o:1") == b"1"
    # BLMOVE, BZPOPMIN and XREAD BLOCK wake up too.
    got: dict = {}
    threads = [
        threading.Thread(target=lambda: got.setdefault("blmove", it.client().blmove("src", "dst", 10))),
        threading.Thread(target=lambda: got.setdefault("bzpopmin", it.client().bzpopmin(["zs"], 10))),
        threading.Thread(target=lambda: got.setdefault("xread", it.client().xread({"st": "$"}, block=10000))),
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    other.rpush("src", "m")
    other.zadd("zs", {"z": 1})
    other.xadd("st", {"f": "v"})
    for thread in threads:
        thread.join(timeout=10)
    assert got["blmove"] == b"m"
    assert got["bzpopmin"] == (b"zs", b"z", 1.0)
    assert got["xread"][0][0] == b"st"


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
def test_pubsub_through_the_interlay(server_factory, interlay, protocol) -> None:
    server = server_factory("redis-7.0")
    it = interlay(server, pool=1)
    subscriber = it.client(protocol=protocol)
    pubsub = subscriber.pubsub()
    pubsub.subscribe("news")
    pubsub.psubscribe("sport.*")
    for _ in range(2):
        assert pubsub.get_message(timeout=5)["type"] in ("subscribe", "psubscribe")
    publisher = it.client()
    assert publisher.publish("news", "hello") == 1
    assert publisher.publish("sport.tennis", "ace") == 1
    message = pubsub.get_message(timeout=5)
    assert (message["type"], message["channel"], message["data"]) == ("message", b"news", b"hello")
    message = pubsub.get_message(timeout=5)
    assert (message["type"], message["channel"], message["data"]) == ("pmessage", b"sport.tennis", b"ace")
    pubsub.ping()
    assert pubsub.get_message(timeout=5)["type"] == "pong"
    pubsub.unsubscribe()
    pubsub.punsubscribe()
    for _ in range(2):
        assert pubsub.get_message(timeout=5)["type"] in ("unsubscribe", "punsubscribe")
    assert publisher.publish("news", "nobody") == 0
    # The connection left Pub/Sub mode: ordinary commands work on it again.
    connection = pubsub.connection
    connection.send_command("SET", "after-pubsub", "1")
    assert connection.read_response() == b"OK"
    pubsub.close()
    # Sharded Pub/Sub (Redis 7+).
    shard = it.client(protocol=protocol).pubsub()
    shard.ssubscribe("orders")
    assert shard.get_sharded_message(timeout=5)["type"] == "ssubscribe"
    assert publisher.spublish("orders", "o-1") == 1
    message = shard.get_sharded_message(timeout=5)
    assert (message["type"], message["data"]) == ("smessage", b"o-1")
    shard.close()


def test_monitor_sees_other_clients(server_factory, interlay) -> None:
    server = server_factory("redis-7.0")
    it = interlay(server)
    watcher = it.client()
    with watcher.monitor() as monitor:
        it.client().set("watched", "1")
        seen = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            event = monitor.next_command()
            seen.append(event["command"])
            if "watched" in event["command"]:
                break
        assert any("SET watched 1" in command for command in seen), seen


def test_quit_and_reset(server_factory, interlay) -> None:
    server = server_factory("valkey-9.1")
    it = interlay(server)
    sock = it.raw()
    sock.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nq\r\n$1\r\n1\r\n*1\r\n$4\r\nQUIT\r\n*1\r\n$4\r\nPING\r\n")
    assert recv_until_closed(sock) == b"+OK\r\n+OK\r\n"
    sock.close()
    # RESET while in a transaction on a dedicated connection: everything is undone.
    sock = it.raw()
    sock.sendall(b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n*1\r\n$5\r\nMULTI\r\n*1\r\n$5\r\nRESET\r\n"
                 b"*2\r\n$3\r\nGET\r\n$1\r\nq\r\n")
    assert recv_exactly(sock, len(b"+OK\r\n+OK\r\n+RESET\r\n$1\r\n1\r\n")) == \
        b"+OK\r\n+OK\r\n+RESET\r\n$1\r\n1\r\n"
    sock.sendall(b"*1\r\n$5\r\nRESET\r\n*1\r\n$4\r\nPING\r\n")
    assert recv_exactly(sock, len(b"+RESET\r\n+PONG\r\n")) == b"+RESET\r\n+PONG\r\n"
    sock.close()


def test_dedicated_connections_are_reused_not_leaked(server_factory, interlay) -> None:
    server = server_factory("redis-7.0")
    it = interlay(server, pool=1)
    client = it.client()
    for i in range(20):  # BLPOP's 10 ms timeout takes the server's 100 ms tick
        tx = client.pipeline(transaction=True)
        tx.incr("loop").get("loop")
        assert tx.execute() == [i + 1, str(i + 1).encode()]
        assert client.blpop(["nothing"], timeout=0.01) is None
        pubsub = client.pubsub()
        pubsub.subscribe("c")
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        pubsub.unsubscribe()
        assert pubsub.get_message(timeout=5)["type"] == "unsubscribe"
        pubsub.close()
    # One shared connection, and a few idle dedicated ones for the next pins.
    assert _eve_connections(server.client()) <= 4


def test_client_tracking_pushes_and_client_reply(server_factory, interlay) -> None:
    server = server_factory("redis-8.2")
    it = interlay(server, pool=1)
    sock = it.raw()
    sock.sendall(encode_command("HELLO", "3"))
    sock.settimeout(5)
    hello = b""
    while not hello.endswith(b"\r\n") or b"modules" not in hello:
        hello += sock.recv(4096)
    sock.sendall(encode_command("CLIENT", "TRACKING", "on") + encode_command("GET", "tracked"))
    assert recv_exactly(sock, len(b"+OK\r\n_\r\n")) == b"+OK\r\n_\r\n"
    it.client().set("tracked", "changed")
    # The invalidation is a RESP3 push on the client's own (pinned) connection.
    push = recv_exactly(sock, len(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$7\r\ntracked\r\n"))
    assert push == b">2\r\n$10\r\ninvalidate\r\n*1\r\n$7\r\ntracked\r\n"
    # CLIENT REPLY OFF: nothing comes back until ON.
    sock.sendall(encode_command("CLIENT", "REPLY", "OFF") + encode_command("SET", "quiet", "1")
                 + encode_command("CLIENT", "REPLY", "ON") + encode_command("GET", "quiet"))
    assert recv_exactly(sock, len(b"+OK\r\n$1\r\n1\r\n")) == b"+OK\r\n$1\r\n1\r\n"
    sock.close()


def test_subscriber_is_closed_when_the_backend_goes_away(server_factory, interlay) -> None:
    server = server_factory("valkey-8.1")
    it = interlay(server)
    sock = it.raw()
    sock.sendall(encode_command("SUBSCRIBE", "x"))
    assert recv_exactly(sock, len(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nx\r\n:1\r\n")).startswith(b"*3")
    server.stop()
    assert recv_until_closed(sock) == b""  # its subscriptions are gone: the connection closes
    sock.close()


def test_large_values_are_streamed(server_factory, interlay) -> None:
    server = server_factory("redis-7.0", extra_args=["--proto-max-bulk-len", "512mb"])
    it = interlay(server, pool=2)
    pid = it.pids[0]
    before = proxy_rss_peak_kb(pid)
    value = os.urandom(1024 * 1024) * 150  # 150 MB
    digest = hashlib.sha256(value).hexdigest()
    client = it.client(socket_timeout=60)
    other = it.client()
    assert client.set("huge", value)
    assert other.get("small") is None  # others are served meanwhile
    fetched = client.get("huge")
    assert len(fetched) == len(value) and hashlib.sha256(fetched).hexdigest() == digest
    del fetched, value
    grown_mb = (proxy_rss_peak_kb(pid) - before) / 1024
    # Neither direction held the value whole in the proxy.
    assert grown_mb < 100, f"the proxy's peak RSS grew by {grown_mb:.0f} MB"
    assert client.strlen("huge") == 150 * 1024 * 1024
    assert client.set("after", "ok") and client.get("after") == b"ok"
    # A large aggregate reply (arrays and RESP3 maps) is streamed element by element.
    items = [os.urandom(100) for _ in range(30_000)]
    client.rpush("biglist", *items)
    assert client.lrange("biglist", 0, -1) == items
    resp3 = it.client(protocol=3, socket_timeout=60)
    fields = {f"f{i}".encode(): os.urandom(64) for i in range(30_000)}
    resp3.hset("bighash", mapping=fields)
    assert resp3.hgetall("bighash") == fields
    assert resp3.lrange("biglist", -2, -1) == items[-2:]


# --------------------------------------------------------------------------- limits and bad input


def test_connection_limit(server_factory, interlay) -> None:
    server = server_factory("redis-7.0")
    it = interlay(server, max_connections=3)
    clients = [it.client() for _ in range(3)]
    for client in clients:
        assert client.ping()
    extra = it.raw()
    assert recv_until_closed(extra) == b"-ERR max number of clients reached\r\n"
    extra.close()
    for i, client in enumerate(clients):
        assert client.set(f"c{i}", i)
    clients[0].close()
    # A slot is free again once a client leaves.
    replacement = wait_for(lambda: _ping_new_client(it), what="a free connection slot")
    assert replacement


def _ping_new_client(it: Interlay) -> bool:
    client = it.client()
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.mark.parametrize("garbage, message", [
    (b"*1\r\n$x\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*2\r\n$3\r\nGET\r\n+foo\r\n", b"-ERR Protocol error: expected '$', got '+'\r\n"),
    (b"*1\r\n$600000000\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*2147483648\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),  # past INT_MAX
    (b"SET a \"unbalanced\r\n", b"-ERR Protocol error: unbalanced quotes in request\r\n"),
], ids=["bad-length", "not-a-bulk", "oversized-bulk", "too-many-args", "unbalanced-quotes"])
def test_malformed_request_closes_only_that_connection(server_factory, interlay, garbage, message) -> None:
    server = server_factory("redis-7.0")
    it = interlay(server, pool=1)
    neighbour = it.client()
    pipe = neighbour.pipeline(transaction=False)
    for i in range(200):
        pipe.set(f"n:{i}", i)
    bad = it.raw()
    # Valid requests before the garbage are answered first.
    bad.sendall(b"*1\r\n$4\r\nPING\r\n" + garbage)
    assert recv_until_closed(bad) == b"+PONG\r\n" + message
    bad.close()
    assert pipe.execute() == [True] * 200
    assert neighbour.get("n:199") == b"199"


def test_backend_restart_recovers(server_factory, interlay) -> None:
    server = server_factory("redis-7.0")
    it = interlay(server, pool=2)
    client = it.client()
    assert client.set("r", "1")
    server.stop()
    started = time.monotonic()
    with pytest.raises(redis.RedisError, match="unavailable|closed|lost"):
        client.get("r")
    assert time.monotonic() - started < 5  # an error, not a hang
    server.start()
    assert wait_for(lambda: _try_set(client), timeout=15, what="the interlay to reconnect")
    assert it.supervisor.running(it.id)


def _try_set(client: redis.Redis) -> bool:
    try:
        return bool(client.set("r", "2"))
    except redis.RedisError:
        return False


def test_unreachable_backend_does_not_prevent_starting(server_factory, interlay) -> None:
    port = free_port()
    it = interlay(endpoint=endpoint_for(LOOPBACK, port))
    client = it.client()
    with pytest.raises(redis.ResponseError, match="unavailable"):
        client.ping()
    server = server_factory("redis-7.0", port=port)
    assert wait_for(lambda: _try_set(client), timeout=15, what="the backend to come")
    assert server.client().get("r") == b"2"


# --------------------------------------------------------------------------- supervision


def test_port_already_in_use(server_factory, supervisor) -> None:
    server = server_factory("redis-7.0")
    port = free_port()
    with socket.socket() as taken:
        taken.bind((LOOPBACK, port))
        taken.listen(1)
        with pytest.raises(StateError, match=f"port {port} on {LOOPBACK} is already in use"):
            supervisor.start("busy", port, LOOPBACK, endpoint_for(server.host, server.port), 10)
    assert not supervisor.running("busy")


def test_stats_running_and_stop(server_factory, interlay) -> None:
    server = server_factory("redis-7.0")
    it = interlay(server)
    client = it.client()
    for i in range(100):
        client.set(f"s:{i}", i)
    with pytest.raises(redis.ResponseError):
        client.execute_command("NO-SUCH")
    stats = wait_for(lambda: (s := it.supervisor.stats(it.id)) and s["ops"] >= 101 and s, what="stats")
    assert stats["connections"] == 1
    assert stats["errors"] >= 1
    assert stats["ops_per_second"] >= 0
    assert it.supervisor.running(it.id)
    # Stopping lets the request in flight finish.
    slow = it.client(socket_timeout=10)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(slow.execute_command("DEBUG", "SLEEP", "0.5")))
    thread.start()
    time.sleep(0.2)
    it.supervisor.stop(it.id, drain_seconds=5)
    thread.join(timeout=10)
    assert result == [b"OK"]
    assert not it.supervisor.running(it.id)
    with pytest.raises(redis.ConnectionError):
        it.client().ping()


def test_crashed_proxy_is_noticed(server_factory, supervisor) -> None:
    """With restarts off (issue 19 restarts a dead proxy: tests/test_interlay_restart.py)."""
    server = server_factory("redis-7.0")
    supervisor.restart_limit = 0
    states: list = []
    supervisor.on_state = lambda interlay_id, state, reason: states.append((interlay_id, state, reason))
    port = free_port()
    supervisor.start("crash", port, LOOPBACK, endpoint_for(server.host, server.port), 10)
    assert supervisor.status("crash").state == RUNNING
    pid = supervisor.status("crash").pids[0]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: supervisor.status("crash").state == FAILED, what="FAILED")
    status = supervisor.status("crash")
    assert "exited with code -9" in status.reason and "not restarted again" in status.reason
    assert not supervisor.running("crash")
    assert states and states[0][:2] == ("crash", FAILED)
    # It can be started again.
    assert supervisor.start("crash", port, LOOPBACK, endpoint_for(server.host, server.port), 10) == [port]
    supervisor.stop("crash")


def test_several_workers_share_the_port(server_factory) -> None:
    server = server_factory("redis-7.0")
    sup = InterlaySupervisor(workers=2, stats_interval=0.2)
    try:
        port = free_port()
        sup.start("multi", port, LOOPBACK, endpoint_for(server.host, server.port), 4)
        assert len(set(sup.status("multi").pids)) == 2
        clients = [redis.Redis(host=LOOPBACK, port=port) for _ in range(4)]
        for i, client in enumerate(clients):
            assert client.set(f"w{i}", i)
        # The connection limit holds across the workers.
        extra = socket.create_connection((LOOPBACK, port), timeout=5)
        assert recv_until_closed(extra) == b"-ERR max number of clients reached\r\n"
        extra.close()
        stats = wait_for(lambda: (s := sup.stats("multi")) and s["connections"] == 4 and s, what="stats")
        assert stats["ops"] >= 4
    finally:
        sup.stop_all()


# --------------------------------------------------------------------------- randomized


def _random_batches(rng, client: int, batches: int) -> list[list[tuple]]:
    """Pipelined batches mixing stateless commands with every stateful mode;
    each client has keys of its own, so replies do not depend on interleaving."""
    k, n, lst = f"c{client}:k", f"c{client}:n", f"c{client}:l"
    script = "return redis.call('INCR', KEYS[1])"
    snippets = [
        lambda: [("SET", k, str(rng.randrange(1000)))],
        lambda: [("GET", k)],
        lambda: [("INCR", n)],
        lambda: [("RPUSH", lst, "x"), ("LRANGE", lst, "0", "-1")],
        lambda: [("MULTI",), ("INCR", n), ("GET", k), ("EXEC",)],
        lambda: [("MULTI",), ("INCR", n), ("DISCARD",)],
        lambda: [("WATCH", k), ("GET", k), ("MULTI",), ("SET", k, "w"), ("EXEC",)],
        lambda: [("SELECT", "1"), ("INCR", n), ("SELECT", "0"), ("GET", n)],
        lambda: [("BLPOP", f"c{client}:empty", "0.01")],
        lambda: [("EVAL", script, "1", n)],
        lambda: [("ECHO", "x" * rng.randrange(0, 3000))],
        lambda: [("PING",)],
        lambda: [("INCR", k)],  # an error reply when k holds a non-number
        lambda: [("NO-SUCH-COMMAND", "x")],
        lambda: [("SUBSCRIBE", f"c{client}:ch"), ("PING",), ("UNSUBSCRIBE", f"c{client}:ch")],
        lambda: [("SSUBSCRIBE", f"c{client}:sh"), ("SUNSUBSCRIBE",)],
        lambda: [("SET", f"c{client}:big", "y" * 1_500_000), ("GET", f"c{client}:big")],  # streamed both ways
    ]
    start = [[("HELLO", "3")]] if client % 2 else []
    return start + [[cmd for _ in range(rng.randrange(1, 5)) for cmd in rng.choice(snippets)()] for _ in range(batches)]


async def _run_batches(port: int, batches: list[list[tuple]]) -> list:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    replies = []
    parser = resp.Reader()
    try:
        for batch in batches:
            writer.write(b"".join(encode_command(*command) for command in batch))
            got = 0
            while got < len(batch):
                value = parser.get()
                if value is None:
                    data = await asyncio.wait_for(reader.read(65536), 10)
                    assert data, "connection closed"
                    parser.feed(data)
                    continue
                replies.append(value)
                got += 1
    finally:
        writer.close()
    return replies


@pytest.mark.parametrize("stream_threshold", [None, 700], ids=["default", "streaming-everything"])
def test_random_pipelines_match_the_server(server_factory, stream_threshold) -> None:
    """Many clients, random mixes of shared and pinned requests in one write:
    every client gets exactly the replies the server itself gives. With a tiny
    stream threshold, most frames are forwarded piece by piece."""

    proxied, reference = server_factory("redis-7.0"), server_factory("redis-7.0")
    extra = {"stream_threshold": stream_threshold} if stream_threshold else {}
    sup = InterlaySupervisor(proxy_options=extra)
    try:
        port = free_port()
        sup.start("random", port, LOOPBACK, endpoint_for(proxied.host, proxied.port, pool=2), 100)
        _compare_random_pipelines(port, reference.port)
    finally:
        sup.stop_all()


def _compare_random_pipelines(port: int, reference_port: int) -> None:
    import random

    rng = random.Random(1234)
    plans = [_random_batches(rng, client, 25) for client in range(16)]

    async def run_all(port: int) -> list:
        return await asyncio.gather(*(_run_batches(port, plan) for plan in plans))

    through = asyncio.run(run_all(port))
    direct = asyncio.run(run_all(reference_port))
    for client, (got, expected) in enumerate(zip(through, direct)):
        if client % 2:  # HELLO 3 names the connection's id: compare its protocol only
            assert resp.to_python(got.pop(0))[b"proto"] == resp.to_python(expected.pop(0))[b"proto"] == 3
        assert got == expected, f"client {client} differs"
