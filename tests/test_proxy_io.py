"""The interlay's I/O against real servers (issue 12, part 0): a client that
does not read its replies stalls nobody and is disconnected at its output
limit, the memory its replies took comes back, and malformed requests in any
position get ``-ERR Protocol error`` and a closed connection, as from the server."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest
from proxies import LOOPBACK, Interlay, endpoint_for, free_ports, recv_until_closed, wait_for

from eve.core.errors import ConfigError
from eve.live.interlays import InterlaySupervisor, proxy_settings
from eve.redis.resp import encode_command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PING_BOUND = 2.0   # seconds: a correctness bound (the interlay answers at all), not a benchmark
MB = 1 << 20


@pytest.fixture
def limited(supervisor: InterlaySupervisor) -> Callable[..., Interlay]:
    """An interlay with ``ProxyOptions`` fields of the test's choosing."""
    counter = iter(range(1000))

    def start(server, **options: object) -> Interlay:
        interlay_id = f"io{next(counter)}"
        ports = supervisor.start(interlay_id, free_ports(1), LOOPBACK, endpoint_for(server.host, server.port), 100,
                                 settings=options)
        return Interlay(supervisor, interlay_id, LOOPBACK, ports)

    return start


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def server_sent_everything(server) -> bool:
    """No client of the server has replies waiting in its output buffer."""
    return all(int(client["omem"]) == 0 for client in server.client().client_list())


def slow_reader(it: Interlay, key: bytes, count: int) -> socket.socket:
    """A connection that pipelines ``count`` GETs of ``key`` and reads nothing."""
    sock = socket.create_connection((it.host, it.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(encode_command(b"GET", key) * count)
    return sock


def timed_ping(it: Interlay) -> float:
    """Seconds a PING on a new connection took to be answered. RESP2, as the slow
    readers speak: each RESP version has shared connections of its own."""
    start = time.monotonic()
    client = it.client(socket_timeout=PING_BOUND * 5, protocol=2)
    try:
        assert client.ping()
    finally:
        client.close()
    return time.monotonic() - start


def assert_answers_promptly(it: Interlay, rounds: int = 5) -> None:
    took = [timed_ping(it) for _ in range(rounds)]
    assert max(took) < PING_BOUND, f"PING took {took}"


@pytest.fixture
def open_sockets() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


# --------------------------------------------------------------------------- slow readers


def test_a_client_that_reads_nothing_stalls_nobody(server_factory, interlay, open_sockets) -> None:
    """The issue's finding: 20 pipelined GETs of a 1 MB value, never read, hung every
    client of the interlay, before and after that client closed."""
    server = server_factory("redis-7.0")
    server.client().set("big", b"x" * MB)
    it = interlay(server, pool=1)
    stuck = slow_reader(it, b"big", 20)
    open_sockets.append(stuck)
    assert_answers_promptly(it)
    # Other clients' large replies still flow on the shared connection meanwhile.
    client = it.client(protocol=2)
    assert [len(v) for v in client.mget(["big"] * 3)] == [MB] * 3
    stuck.close()
    assert_answers_promptly(it)


def test_slow_readers_with_large_pipelined_replies_keep_others_answering(server_factory, limited,
                                                                          open_sockets) -> None:
    """Several slow readers, each past its soft limit and under its hard one, while
    other clients keep being answered; the proxy holds no more than the limits allow."""
    server = server_factory("redis-7.0")
    server.client().set("v", b"y" * (100 * 1024))
    it = limited(server, output_hard_limit=24 * MB, output_soft_limit=8 * MB, output_soft_seconds=3600.0)
    pid = it.pids[0]
    before = rss_kb(pid)
    for _ in range(3):
        open_sockets.append(slow_reader(it, b"v", 150))   # ~15 MB of replies each
    assert_answers_promptly(it, rounds=10)
    wait_for(lambda: it.supervisor.stats(it.id)["connections"] == 3, what="the stats to count the slow readers")
    held = rss_kb(pid) - before
    assert held < 3 * 24 * 1024 + 64 * 1024, f"the proxy grew by {held} kB"


def test_unread_replies_past_the_hard_limit_disconnect_and_memory_returns(server_factory, limited,
                                                                         open_sockets) -> None:
    """The issue's memory finding: thousands of unread GETs of a 100 KB value grew the
    proxy by gigabytes, kept after the client left. With a hard limit the client is
    disconnected and its buffer freed."""
    server = server_factory("redis-7.0")
    server.client().set("v", b"z" * (100 * 1024))
    it = limited(server, output_hard_limit=16 * MB)
    pid = it.pids[0]
    assert_answers_promptly(it, rounds=1)
    before = rss_kb(pid)
    stuck = slow_reader(it, b"v", 3000)   # 300 MB of replies
    open_sockets.append(stuck)
    wait_for(lambda: it.supervisor.stats(it.id)["connections"] == 0, timeout=30,
             what="the slow reader to be disconnected")
    # The replies the server still sends for it are read and dropped, while others are answered ...
    assert timed_ping(it) < 10 * PING_BOUND
    wait_for(lambda: server_sent_everything(server), timeout=30, what="the server to send its last reply")
    # ... and once they are through, the memory they took is back, and PING is prompt.
    assert rss_kb(pid) - before < 96 * 1024, "the proxy kept the unread replies"
    assert_answers_promptly(it)


def test_soft_limit_held_for_its_seconds_disconnects(server_factory, limited, open_sockets) -> None:
    server = server_factory("redis-7.0")
    server.client().set("v", b"s" * (100 * 1024))
    it = limited(server, output_hard_limit=256 * MB, output_soft_limit=2 * MB, output_soft_seconds=0.5)
    stuck = slow_reader(it, b"v", 100)   # 10 MB: over the soft limit, far under the hard one
    open_sockets.append(stuck)
    wait_for(lambda: it.supervisor.stats(it.id)["connections"] == 0, timeout=30,
             what="the client over its soft limit to be disconnected")
    # ... while a client that reads what it asked for is never disconnected.
    reader = it.client()
    assert [len(v) for v in reader.mget(["v"] * 100)] == [100 * 1024] * 100


@pytest.mark.parametrize(("settings", "message"), [
    ({"output_buffer_hard_limit_bytes": -1}, "settings.output_buffer_hard_limit_bytes: must be 0 or more"),
    ({"output_buffer_soft_limit_bytes": "64mb"}, "settings.output_buffer_soft_limit_bytes: must be an integer"),
    ({"output_buffer_soft_seconds": 0}, "settings.output_buffer_soft_seconds: must be more than 0"),
    ({"stuck_connection_ms": 0}, "settings.stuck_connection_ms: must be more than 0"),
])
def test_bad_output_settings_are_refused_naming_the_setting(settings, message) -> None:
    with pytest.raises(ConfigError, match=message):
        proxy_settings(settings)


def test_output_settings_become_proxy_options() -> None:
    assert proxy_settings({"output_buffer_hard_limit_bytes": 8 * MB, "output_buffer_soft_limit_bytes": 0,
                           "output_buffer_soft_seconds": 5, "stuck_connection_ms": 250}) == {
        "output_hard_limit": 8 * MB, "output_soft_limit": 0, "output_soft_seconds": 5.0, "stuck_after": 0.25}


# --------------------------------------------------------------------------- protocol errors


@pytest.mark.parametrize("request_bytes", [
    pytest.param(b"*1\r\n*1\r\n$4\r\nPING\r\n", id="nested-array-as-name"),
    pytest.param(b"*2\r\n$3\r\nGET\r\n:1\r\n", id="integer-as-argument"),
    pytest.param(b"*1\r\n$-5\r\n", id="negative-bulk-length"),
    pytest.param(b"*x\r\n", id="bad-count"),
    pytest.param(b"PING\r\n*1\r\n*1\r\n$4\r\nPING\r\n", id="after-an-inline-command"),
    pytest.param(b"*1\r\n$4\r\nPING\r\n*1\r\n+PING\r\n", id="after-a-pipelined-command"),
])
def test_protocol_errors_in_any_position_answer_like_the_server(server_factory, interlay, request_bytes) -> None:
    server = server_factory("redis-7.0")
    it = interlay(server)

    def answer(port: int) -> bytes:
        with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
            sock.sendall(request_bytes)
            return recv_until_closed(sock)

    direct = answer(server.port)
    through = answer(it.port)
    assert direct.endswith(b"\r\n") and b"-ERR Protocol error" in direct
    assert through == direct
    assert_answers_promptly(it, rounds=1)


# --------------------------------------------------------------------------- deep replies


SELF_REFERENCING_TABLE = "local t = {}; t[1] = t; return t"


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_reply_nested_to_the_servers_lua_stack_limit_arrives_whole(server_factory, interlay, protocol) -> None:
    """The issue's finding: a script returning a self-referencing table is answered with
    arrays nested far deeper than the proxy's 128 levels; the interlay answered an error
    and every later reply on the connection was the previous command's."""
    server = server_factory("redis-7.0")
    it = interlay(server, pool=1)
    request = b""
    if protocol == 3:
        request += encode_command("HELLO", 3)
    request += encode_command("EVAL", SELF_REFERENCING_TABLE, 0) + encode_command("PING", "after")

    def answer(port: int) -> bytes:
        with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
            sock.sendall(request)
            data = b""
            while not data.endswith(b"$5\r\nafter\r\n"):
                chunk = sock.recv(1 << 16)
                assert chunk, f"connection closed after {data[-200:]!r}"
                data += chunk
            return data

    direct = answer(server.port)
    assert direct.count(b"*1\r\n") > 1000   # nested far past 128 levels
    through = answer(it.port)
    hello_end = through.index(b"*1\r\n") if protocol == 3 else 0
    assert through[hello_end:] == direct[direct.index(b"*1\r\n"):]
