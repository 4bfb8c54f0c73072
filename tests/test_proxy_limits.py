"""Request headers past the limits (issue 19, item 3): an interlay answers them
byte for byte as Redis 7.0 does, and checks them before any work that grows
with them, so one client's header costs the other clients no time.

Before the fix the hiredis reader sized a list by ``*N`` and freed it slot by
slot: another client's ``PING`` waited 4.4 s after ``*1000000000``."""

from __future__ import annotations

import socket
import time

import pytest
from proxies import LOOPBACK

from eve.redis import resp
from eve.redis.framing import PartialRequest, RequestScanner, partial_request

PASSWORD = "limits-secret"
PING = b"*1\r\n$4\r\nPING\r\n"

# Headers and how they arrive: a list of packets.
OVERSIZED = {
    "count-int-max": [b"*2147483647\r\n"],
    "count-past-int-max": [b"*2147483648\r\n"],
    "count-2e9": [b"*2000000000\r\n"],
    "bulk-int-max": [b"*1\r\n$2147483647\r\n"],
    "bulk-in-a-request": [b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2147483647\r\n"],
    "nested": [b"*2\r\n*2147483647\r\n"],
    "nested-set": [b"*2\r\n~1000000000\r\n"],
    "nested-push": [b"*2\r\n>1000000000\r\n"],
    "nested-attribute": [b"*2\r\n|1000000000\r\n"],
    "nested-map": [b"*2\r\n%1000000000\r\n"],
    "after-a-ping": [PING + b"*2147483647\r\n"],
    "split-count": [b"*21474", b"83647\r", b"\n"],
    "split-after-a-ping": [PING + b"*1000", b"000000\r\n$1\r\n"],
    "dribbled": [b"*2147483647\r\n", b"$1\r\n", b"a", b"\r\n", b"$"],
    "split-bulk": [b"*2\r\n$3\r\nGET\r\n$21474", b"83647\r\n"],
}


def _exchange(port: int, packets: list[bytes], wait: float = 0.3) -> bytes:
    """What a connection gets back for ``packets``, and whether it was then
    closed or left waiting for more."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        for packet in packets:
            try:
                sock.sendall(packet)
            except (BrokenPipeError, ConnectionResetError):
                break  # closed after an error reply: read it
            time.sleep(0.01)
        sock.settimeout(wait)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return data + b"<waiting>"
            except ConnectionResetError:
                return data + b"<closed>"
            if not chunk:
                return data + b"<closed>"
            data += chunk


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("auth", [False, True], ids=["no-auth", "unauthenticated"])
def test_oversized_headers_answered_as_redis_does(server_factory, interlay, auth) -> None:
    """Every header above, and Redis' tighter limits for a client that has not
    authenticated yet: the same bytes from the interlay as from the server."""
    server = server_factory("redis-7.0", password=PASSWORD if auth else None)
    it = interlay(server, password=PASSWORD if auth else None)
    cases = dict(OVERSIZED)
    cases.update({
        "eleven-args": [b"*11\r\n"],
        "bulk-16385": [b"*1\r\n$16385\r\n"],
        "bulk-past-max": [b"*1\r\n$536870913\r\n"],
        "count-20-digits": [b"*99999999999999999999\r\n"],
        "bulk-negative": [b"*1\r\n$-1\r\n"],
    })
    if auth:
        # After AUTH, in the same packet: the full limits apply to what follows it.
        auth_cmd = resp.encode_command("AUTH", PASSWORD)
        cases["after-auth"] = [auth_cmd + b"*11\r\n$1\r\nx\r\n"]
    for name, packets in cases.items():
        expected = _exchange(server.port, packets)
        assert _exchange(it.port, packets) == expected, name


# A request of 150,000 empty arguments (900 KB, under the size the interlay streams from),
# then more of it one byte per packet: each piece used to walk the whole request again
# (180 ms of the process per byte).
BIG_PARTIAL = b"*200000\r\n" + b"$0\r\n\r\n" * 150_000
DRIBBLE = [b"$", b"1", b"\r", b"\n", b"a", b"\r", b"\n", b"$", b"0", b"\r", b"\n"]


def _ping_seconds(sock: socket.socket) -> float:
    started = time.perf_counter()
    sock.sendall(PING)
    reply = b""
    while len(reply) < 7:
        chunk = sock.recv(64)
        assert chunk, "the interlay closed a neighbour's connection"
        reply += chunk
    elapsed = time.perf_counter() - started
    assert reply == b"+PONG\r\n"
    return elapsed


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_oversized_headers_cost_other_clients_no_time(server_factory, interlay) -> None:
    """A neighbour's PING right after each header stays near its idle time.
    The bound is generous for a loaded machine: the bug cost seconds."""
    server = server_factory("redis-7.0")
    it = interlay(server)
    with socket.create_connection((LOOPBACK, it.port), timeout=30) as neighbour:
        idle = max(_ping_seconds(neighbour) for _ in range(20))
        for name, packets in OVERSIZED.items():
            with socket.create_connection((LOOPBACK, it.port), timeout=5) as bad:
                for packet in packets:
                    bad.sendall(packet)
                    time.sleep(0.005)
                time.sleep(0.05)  # the interlay has read the header
                during = _ping_seconds(neighbour)
                assert during < idle + 0.1, f"{name}: PING took {during * 1000:.0f} ms (idle {idle * 1000:.1f} ms)"
        # The pipelined PING of the after-a-ping cases was answered, the rest closed or waiting;
        # the neighbour still works.
        assert _ping_seconds(neighbour) < idle + 0.1
        with socket.create_connection((LOOPBACK, it.port), timeout=5) as bad:
            bad.sendall(BIG_PARTIAL)
            time.sleep(0.5)
            worst = 0.0
            for piece in DRIBBLE:
                bad.sendall(piece)
                time.sleep(0.01)
                worst = max(worst, _ping_seconds(neighbour))
            assert worst < idle + 0.1, f"dribbled: PING took {worst * 1000:.0f} ms (idle {idle * 1000:.1f} ms)"


# --------------------------------------------------------------------------- unit


@pytest.mark.parametrize("buf, error", [
    (b"*2147483648\r\n", "Protocol error: invalid multibulk length"),
    (b"*1\r\n$536870913\r\n", "Protocol error: invalid bulk length"),
    (b"*2\r\n*2147483647\r\n", "Protocol error: expected '$', got '*'"),
    (b"*2147483647\r\n", None),
    (PING + b"*2147483647\r\n$3\r\nab", None),
], ids=["count", "bulk", "nested", "count-waits", "after-a-ping-waits"])
def test_scanner_checks_headers_first(buf, error) -> None:
    scanner = RequestScanner(resp.DEFAULT_MAX_BULK, resp.DEFAULT_MAX_ARGS)
    requests, end, found = scanner.scan(buf)
    assert found == error
    assert [request[3] for request in requests] == ([1] if buf.startswith(PING) else [])
    assert end == (len(PING) if buf.startswith(PING) else 0)


def test_scanner_resumes_a_request_arriving_in_pieces(monkeypatch) -> None:
    """The client's way: keep what is not a whole request, append what arrives, scan again.
    Every request is found once, and the walk of the long one resumes where it stopped."""
    mset = resp.encode_command("MSET", *[f"k{i}" for i in range(2000)])
    stream = PING + mset + PING + b"PING\r\n" + resp.encode_command("GET", "k")
    starts: list[int] = []
    walk = resp._walk_arguments

    def counting(buf, pos, count, done, *rest):
        starts.append(done)
        return walk(buf, pos, count, done, *rest)

    monkeypatch.setattr(resp, "_walk_arguments", counting)
    scanner = RequestScanner(resp.DEFAULT_MAX_BULK, resp.DEFAULT_MAX_ARGS)
    buf = b""
    found = []
    partials = []
    for i in range(0, len(stream), 7):
        buf += stream[i:i + 7]
        requests, end, error = scanner.scan(buf)
        assert error is None
        found += [(name, argc) for _, _, name, argc in requests]
        if end < len(buf) and buf[end] == 0x2A:
            info = scanner.partial(buf, end)  # None while its count line is incomplete
            mark = len(starts)
            expected = partial_request(buf, end)  # walks the request again: not counted
            del starts[mark:]
            assert (info is None) == (expected is None)
            if info is not None:
                assert [getattr(info, a) for a in PartialRequest.__slots__] == \
                    [getattr(expected, a) for a in PartialRequest.__slots__]
            partials.append(info)
        buf = buf[end:]
    assert buf == b""
    assert found == [(b"PING", 1), (b"MSET", 2001), (b"PING", 1), (b"PING", 1), (b"GET", 2)]
    mset_partials = [info for info in partials if info is not None and info.name == b"MSET"]
    assert len(mset_partials) > 100 and all(1 <= info.args_left <= 2000 for info in mset_partials)
    # Piece after piece of the MSET resumed its walk: it never started over from argument 0.
    assert starts.count(0) < 10 and max(starts) > 1900
    # A byte that breaks the request mid-way is still an error, found on resuming.
    scanner = RequestScanner(resp.DEFAULT_MAX_BULK, resp.DEFAULT_MAX_ARGS)
    assert scanner.scan(mset[:500])[2] is None
    assert scanner.scan(mset[:500] + b"+")[2] in (None, "Protocol error: expected '$', got '+'")


@pytest.mark.parametrize("buf, error", [
    (b"*11\r\n", "Protocol error: unauthenticated multibulk length"),
    (b"*1\r\n$16385\r\n", "Protocol error: unauthenticated bulk length"),
    (b"*2147483648\r\n", "Protocol error: invalid multibulk length"),
    (b"*1\r\n$536870913\r\n", "Protocol error: invalid bulk length"),
    (b"*10\r\n$16384\r\n", None),
])
def test_scanner_unauthenticated_limits(buf, error) -> None:
    scanner = RequestScanner(resp.DEFAULT_MAX_BULK, resp.DEFAULT_MAX_ARGS)
    assert scanner.scan(buf, True)[2] == error
    assert scanner.scan(buf)[2] is None or error and "invalid" in error

