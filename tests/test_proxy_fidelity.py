"""The interlay's own connections are invisible to its clients (issue 20, item 4).

A client's ``CLIENT GETNAME``/``INFO``/``ID`` and its own ``CLIENT LIST`` entry answer
what the client set, or what the server would answer on a connection of its own:
never the interlay's connection name. Compared with the same server directly, over
RESP2 and RESP3, with redis-py's defaults (it sends ``CLIENT SETINFO LIB-NAME`` and
``LIB-VER`` on connect).
"""

from __future__ import annotations

import pytest
import redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _info_fields(info: dict) -> dict:
    """What a client sees of itself in CLIENT INFO that does not depend on the connection."""
    return {field: info.get(field) for field in ("name", "lib-name", "lib-ver", "db", "resp")}


@pytest.mark.parametrize("engine_name", ["redis-7.0", "valkey-9.1"])
@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
def test_client_identity_as_directly(server_factory, interlay, engine_name: str, protocol: int) -> None:
    server = server_factory(engine_name)
    it = interlay(server)
    direct = redis.Redis(host=server.host, port=server.port, protocol=protocol, socket_timeout=10)
    proxied = it.client(protocol=protocol)
    try:
        for client in (direct, proxied):
            client.set("warm", "1")  # the connection is open and its SETINFO sent
        assert proxied.client_getname() is None
        assert proxied.client_getname() == direct.client_getname()
        assert _info_fields(proxied.client_info()) == _info_fields(direct.client_info())
        own_id = proxied.client_id()
        assert isinstance(own_id, int)
        # The id names the connection the client's commands run on: its own entry in CLIENT LIST.
        assert proxied.client_info()["id"] == own_id
        entries = [c for c in proxied.client_list() if int(c["id"]) == own_id]
        assert len(entries) == 1
        assert entries[0]["name"] == "" and entries[0].get("lib-name") == direct.client_info().get("lib-name")
        # A name the client sets is its own, read back as set.
        for client in (direct, proxied):
            assert client.client_setname("app-worker-1")
        assert proxied.client_getname() == direct.client_getname()
        assert proxied.client_getname() in ("app-worker-1", b"app-worker-1")
        assert _info_fields(proxied.client_info()) == _info_fields(direct.client_info())
        assert proxied.client_info()["id"] == proxied.client_id()
    finally:
        direct.close()
        proxied.close()


def test_getname_of_an_unnamed_client_does_not_pin_it(server_factory, interlay) -> None:
    """CLIENT GETNAME of a client that never named itself is answered without a
    connection of its own: a thousand clients asking do not cost a thousand connections."""
    server = server_factory("redis-7.0")
    it = interlay(server)
    clients = [it.client() for _ in range(20)]
    try:
        for client in clients:
            assert client.client_getname() is None
            assert client.get("nothing") is None
        direct = server.client()
        unnamed = [c for c in direct.client_list() if c.get("name") == "" and c.get("cmd") != "client|list"]
        assert len(unnamed) <= 2, unnamed
    finally:
        for client in clients:
            client.close()


def _exchange(host: str, port: int, requests: list[list[str]]) -> list[bytes]:
    """Each request's raw reply bytes, read on one connection (replies end when the
    socket has been quiet for a moment: enough for these short replies)."""
    import socket

    from eve.redis import resp

    replies = []
    with socket.create_connection((host, port), timeout=10) as sock:
        for request in requests:
            sock.sendall(resp.encode_command(*request))
            data = b""
            sock.settimeout(10)
            data += sock.recv(65536)
            sock.settimeout(0.2)
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except TimeoutError:
                pass
            replies.append(data)
    return replies


# Scripts whose RESP3 replies the server writes in ways a strict parser refuses
# (Redis 7.0's unit/scripting "big number" and "RESP3 map/set/double..." cases).
_SCRIPTS = [
    "return {big_number='123\\r\\n123'}",
    "redis.setresp(3); return redis.call('debug', 'protocol', 'map')",
    "redis.setresp(3); return redis.call('debug', 'protocol', 'set')",
    "redis.setresp(3); return redis.call('debug', 'protocol', 'double')",
    "redis.setresp(3); return redis.call('debug', 'protocol', 'bignum')",
    "redis.setresp(3); return redis.call('debug', 'protocol', 'null')",
    "redis.setresp(3); return redis.call('debug', 'protocol', 'verbatim')",
    "redis.setresp(3); return redis.call('debug', 'protocol', 'true')",
    "redis.setresp(3); return redis.call('debug', 'protocol', 'attrib')",
]


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
def test_script_resp3_replies_forwarded_byte_for_byte(server_factory, interlay, protocol: int) -> None:
    server = server_factory("redis-7.0")
    it = interlay(server)
    requests = [["HELLO", str(protocol)], ["DEBUG", "set-disable-deny-scripts", "1"]]
    requests += [["EVAL", script, "0"] for script in _SCRIPTS]
    requests += [["PING"]]
    direct = _exchange(server.host, server.port, requests)
    proxied = _exchange(it.host, it.port, requests)
    assert direct[-1] == b"+PONG\r\n"
    # HELLO's reply names the connection's id: everything after it must be the same bytes.
    assert proxied[1:] == direct[1:]
    if protocol == 3:
        assert proxied[2] == b"(123  123\r\n"
