"""Direct Read/Write calls through a real coordinator against every engine, RESP2 and RESP3."""

from __future__ import annotations

import time

import grpc
import pytest
from eve_process import EveServer
from servers import free_port

from eve.v1 import endpoints_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def eve(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eve")
    server = EveServer(state=tmp / "eve.db", log_path=tmp / "eve.log").start()
    yield server
    server.stop()


def create(eve: EveServer, name: str, port: int, protocol: int, **credentials) -> None:
    stub = eve.endpoints()
    config = pb.EndpointConfig(target=pb.Connection(host="127.0.0.1", port=port, protocol_version=protocol))
    if credentials:
        config.write_credentials.CopyFrom(pb.Credentials(**credentials))
        config.read_credentials.CopyFrom(pb.Credentials(**credentials))
    try:
        stub.DeleteEndpoint(pb.DeleteEndpointRequest(endpoint=name))
    except grpc.RpcError:
        pass
    stub.CreateEndpoint(pb.CreateEndpointRequest(endpoint=name, kind="redis", config=config))


def call(eve: EveServer, method: str, name: str, *command, db: int = 0):
    request = pb.CommandRequest(endpoint=name, db=db)
    if any(isinstance(part, bytes) for part in command):
        request.command_bytes.extend(p if isinstance(p, bytes) else str(p).encode() for p in command)
    else:
        request.command.extend(str(p) for p in command)
    return getattr(eve.endpoints(), method)(request, timeout=15).reply


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
def test_read_write_typed_replies(eve, redis_server, protocol):
    name = f"e-{redis_server.engine.name}-{protocol}"
    create(eve, name, redis_server.port, protocol)

    assert call(eve, "Write", name, "SET", "greeting", "hello").simple_string == "OK"
    reply = call(eve, "Read", name, "GET", "greeting")
    assert reply.bulk_string == b"hello" and reply.text == "hello"
    assert call(eve, "Read", name, "GET", "missing").nil
    assert call(eve, "Write", name, "INCRBY", "counter", "41").integer == 41
    call(eve, "Write", name, "HSET", "user:1", "name", "ada", "lang", "py")
    hash_reply = call(eve, "Read", name, "HGETALL", "user:1")
    if protocol == 3:
        entries = {e.key.text: e.value.text for e in hash_reply.map.entries}
    else:
        items = [item.text for item in hash_reply.array.items]
        entries = dict(zip(items[::2], items[1::2]))
    assert entries == {"name": "ada", "lang": "py"}
    call(eve, "Write", name, "ZADD", "board", "1.5", "ada")
    score = call(eve, "Read", name, "ZSCORE", "board", "ada")
    assert (score.double == 1.5) if protocol == 3 else (score.bulk_string == b"1.5")
    call(eve, "Write", name, "SADD", "tags", "a")
    members = call(eve, "Read", name, "SMEMBERS", "tags")
    assert [m.text for m in (members.set.items if protocol == 3 else members.array.items)] == ["a"]

    # Binary keys and values survive both ways.
    key, value = b"\xff\x00bin", bytes(range(256))
    assert call(eve, "Write", name, b"SET", key, value).simple_string == "OK"
    binary = call(eve, "Read", name, b"GET", key)
    assert binary.bulk_string == value and binary.text == ""

    # Logical databases through the db field.
    call(eve, "Write", name, "SET", "in-db-3", "x", db=3)
    assert call(eve, "Read", name, "GET", "in-db-3", db=3).text == "x"
    assert call(eve, "Read", name, "GET", "in-db-3").nil

    # Backend errors are replies, not failures.
    assert call(eve, "Write", name, "NOSUCHCOMMAND").error.startswith("ERR unknown command")
    assert call(eve, "Write", name, "LPUSH", "greeting", "x").error.startswith("WRONGTYPE")
    # A read-only admin query is allowed on Read; the reply comes back typed.
    assert call(eve, "Read", name, "CONFIG", "GET", "maxmemory").WhichOneof("value") in ("array", "map")


def test_read_refuses_writes_from_command_info(eve, redis_server):
    name = f"ro-{redis_server.engine.name}"
    create(eve, name, redis_server.port, 2)
    for command in (["SET", "k", "v"], ["DEL", "k"], ["FLUSHALL"], ["EXPIRE", "k", "10"], ["CONFIG", "SET", "maxmemory", "0"]):
        with pytest.raises(grpc.RpcError) as info:
            call(eve, "Read", name, *command)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "command" in info.value.details() and "run it with Write" in info.value.details()
        assert "COMMAND INFO flags" in info.value.details()
    assert call(eve, "Read", name, "EXISTS", "k").integer == 0, "nothing was written"
    with pytest.raises(grpc.RpcError) as info:
        call(eve, "Write", name, "SELECT", "2")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "db field" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        eve.endpoints().Read(pb.CommandRequest(endpoint=name), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in info.value.details()


def test_credentials_and_auth_failures(eve, engine, server_factory):
    server = server_factory(engine, password="s3cret-pass")
    create(eve, f"auth-{engine.name}", server.port, 3, password="s3cret-pass")
    assert call(eve, "Write", f"auth-{engine.name}", "SET", "k", "v").simple_string == "OK"
    create(eve, f"bad-{engine.name}", server.port, 2, password="wrong-pass")
    with pytest.raises(grpc.RpcError) as info:
        call(eve, "Read", f"bad-{engine.name}", "GET", "k")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "wrong-pass" not in info.value.details()
    create(eve, f"none-{engine.name}", server.port, 2)
    # No credentials configured: the server's NOAUTH comes back as the reply.
    assert call(eve, "Read", f"none-{engine.name}", "GET", "k").error.startswith("NOAUTH")
    assert "s3cret-pass" not in eve.log() and "wrong-pass" not in eve.log()


def test_unreachable_endpoint_is_unavailable(eve):
    port = free_port()
    create(eve, "gone", port, 2)
    with pytest.raises(grpc.RpcError) as info:
        call(eve, "Read", "gone", "PING")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"127.0.0.1:{port}" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        call(eve, "Read", "no-such-endpoint", "PING")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
def test_credentials_never_come_back_from_a_direct_call(eve, server_factory, protocol):
    secret = "Secr3t-requirepass"
    server = server_factory("valkey-9.1", password=secret)
    name = f"secret-{protocol}"
    create(eve, name, server.port, protocol, password=secret)
    server.client().execute_command("ACL", "SETUSER", "app", "on", ">app-Pa55w0rd", "~*", "+@all")
    for method in ("Read", "Write"):
        for pattern in ("requirepass", "*pass*", "*auth*", "*"):
            reply = call(eve, method, name, "CONFIG", "GET", pattern)
            assert secret.encode() not in reply.SerializeToString(), (method, pattern)
    reply = call(eve, "Read", name, "CONFIG", "GET", "requirepass")
    values = [e.value.text for e in reply.map.entries] if protocol == 3 else [i.text for i in reply.array.items][1::2]
    assert values == ["<redacted>"]
    listed = call(eve, "Read", name, "ACL", "LIST").SerializeToString()
    assert b"#<redacted>" in listed and b"app-Pa55w0rd" not in listed
    # Other parameters still answer as they are.
    reply = call(eve, "Read", name, "CONFIG", "GET", "maxmemory-policy")
    assert b"noeviction" in reply.SerializeToString()


def test_a_blocking_write_ends_with_the_call_and_takes_nothing_later(eve, server_factory):
    server = server_factory("redis-7.0")
    create(eve, "blocking", server.port, 2)
    request = pb.CommandRequest(endpoint="blocking", command=["BLPOP", "jobs", "0"])
    with pytest.raises(grpc.RpcError) as info:
        eve.endpoints().Write(request, timeout=2)
    assert info.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    client = server.client()
    # Eve's connection is gone once the call ended: no client is still blocked on 'jobs' ...
    deadline = time.monotonic() + 10
    while int(client.info("clients")["blocked_clients"]):
        assert time.monotonic() < deadline, "Eve's BLPOP is still blocked after the call ended"
        time.sleep(0.05)
    # ... so an element another application pushes stays for it.
    client.rpush("jobs", "payload")
    assert client.lrange("jobs", 0, -1) == [b"payload"]
    # A bound given as timeout_seconds ends the command the same way, with a reply saying so.
    request = pb.CommandRequest(endpoint="blocking", command=["BLPOP", "other", "0"], timeout_seconds=0.5)
    with pytest.raises(grpc.RpcError) as info:
        eve.endpoints().Write(request, timeout=15)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "still blocked" in info.value.details()


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1.0])
def test_a_bad_timeout_is_refused(eve, server_factory, timeout):
    server = server_factory("redis-7.0")
    create(eve, "timeouts", server.port, 2)
    request = pb.CommandRequest(endpoint="timeouts", command=["PING"], timeout_seconds=timeout)
    with pytest.raises(grpc.RpcError) as info:
        eve.endpoints().Read(request, timeout=15)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "timeout_seconds" in info.value.details()
