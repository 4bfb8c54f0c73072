"""Reply framing never desynchronises (issue 12, part 1): random RESP2/RESP3
replies, deeply nested and split at random points, fed through the proxy's
own reply path (``proxy.backend.Backend.data_received`` with several clients
multiplexed on one connection, small stream thresholds so large frames are
streamed piece by piece) reach each client exactly as its own replies, in
order; pushes nobody asked for reach nobody. A reply that cannot be framed
disconnects its client and fails the others' commands with an error: nobody
ever gets bytes of a reply that is not its own.

A unit test of the framing code path: the clients are fakes that record what
they are given (the real-server cases are in test_proxy_io.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eve.core.endpoints import ConnectionSpec
from proxy.backend import SHARED, Backend, Node
from proxy.options import ProxyOptions
from proxy.parts import Parts

pytestmark = pytest.mark.timeout(300)

CLIENTS = 4


@dataclass
class FakeClient:
    """A reply sink that records what the backend connection gives it."""

    data: bytearray = field(default_factory=bytearray)
    frames: int = 0
    failed: int = 0
    is_broken: bool = False
    write_paused: bool = False
    announce: str = ""

    def deliver(self, data: bytes, frames: int) -> None:
        assert not self.is_broken, "bytes after the connection was broken"
        self.data += data
        self.frames += frames

    def backend_failed(self, conn: Backend, count: int, error: bytes) -> None:
        assert error.startswith(b"-ERR interlay:")
        self.failed += count

    def broken(self, conn: Backend) -> None:
        self.is_broken = True

    def hold_backend(self, conn: Backend) -> None:
        raise AssertionError("nobody pauses here")


# --------------------------------------------------------------------------- replies


def _line(prefix: bytes, text: bytes) -> bytes:
    return prefix + text + b"\r\n"


_TEXT = st.binary(max_size=24).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_BULK = st.binary(max_size=600)
_LEAVES = st.one_of(
    _TEXT.map(lambda t: _line(b"+", t)),
    _TEXT.map(lambda t: _line(b"-ERR ", t)),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: b":%d\r\n" % i),
    _BULK.map(lambda b: b"$%d\r\n%s\r\n" % (len(b), b)),
    st.just(b"$-1\r\n"),
    st.just(b"*-1\r\n"),
    st.just(b"_\r\n"),
    st.sampled_from([b"#t\r\n", b"#f\r\n"]),
    st.sampled_from([b",1.5\r\n", b",-0.25\r\n", b",inf\r\n", b",-inf\r\n", b",nan\r\n", b",3e10\r\n", b",7\r\n"]),
    st.integers(-(10**60), 10**60).map(lambda i: b"(%d\r\n" % i),
    _BULK.map(lambda b: b"=%d\r\ntxt:%s\r\n" % (len(b) + 4, b)),
    _BULK.map(lambda b: b"!%d\r\nERR %s\r\n" % (len(b) + 4, b)),
)


def _aggregates(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    pairs = st.tuples(children, children).map(b"".join)
    return st.one_of(
        st.lists(children, max_size=6).map(lambda xs: b"*%d\r\n" % len(xs) + b"".join(xs)),
        st.lists(children, max_size=4).map(lambda xs: b"~%d\r\n" % len(xs) + b"".join(xs)),
        st.lists(pairs, max_size=3).map(lambda xs: b"%%%d\r\n" % len(xs) + b"".join(xs)),
        # An attribute annotates the value that follows it: one reply, both frames.
        st.tuples(st.lists(pairs, min_size=1, max_size=2), children).map(
            lambda a: b"|%d\r\n" % len(a[0]) + b"".join(a[0]) + a[1]),
    )


_NESTED = st.recursive(_LEAVES, _aggregates, max_leaves=25)
# Far deeper than the codec's DEFAULT_MAX_DEPTH (128): the self-referencing Lua
# table's reply is arrays of one element down to the server's Lua stack limit.
_DEEP = st.tuples(st.integers(129, 3000), _LEAVES).map(lambda d: b"*1\r\n" * d[0] + d[1])
_LARGE = st.integers(2_000, 40_000).map(lambda n: b"$%d\r\n%s\r\n" % (n, b"v" * n))
REPLIES = st.one_of(_NESTED, _NESTED, _NESTED, _DEEP, _LARGE)
PUSH = st.lists(_LEAVES, min_size=1, max_size=3).map(lambda xs: b">%d\r\n" % len(xs) + b"".join(xs))


@st.composite
def conversations(draw):
    """Commands of several clients in the order they were sent (consecutive ones of
    one client may share one pending entry), the server's byte stream answering
    them (with pushes between replies), and where the stream is cut into reads."""
    commands = draw(st.lists(st.tuples(st.integers(0, CLIENTS - 1), REPLIES, st.booleans()),
                             min_size=1, max_size=25))
    stream = bytearray()
    for _, reply, _ in commands:
        if draw(st.integers(0, 9)) == 0:
            stream += draw(PUSH)
        stream += reply
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=30, unique=True)))
    return commands, bytes(stream), cuts


def _reads(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def run_backend(commands, reads: list[bytes], threshold: int) -> list[FakeClient]:
    """Send ``commands`` on one shared connection and feed it ``reads``."""
    async def scenario() -> list[FakeClient]:
        options = ProxyOptions(interlay_id="prop", listen_host="127.0.0.1", ports=(1,),
                               nodes=(ConnectionSpec(host="127.0.0.1", port=1),), stream_threshold=threshold)
        node = Node(Parts.of(options, lambda message: None), 0, options.nodes[0])
        conn = Backend(node, 2, SHARED)   # never opened: what it would send stays queued
        clients = [FakeClient() for _ in range(CLIENTS)]
        previous = None
        for index, _, joins in commands:
            if joins and previous == index:
                conn.pending[-1][1] += 1
            else:
                conn.send(clients[index], b"", 1)
            previous = index
        for data in reads:
            if conn.closed:
                break
            conn.data_received(data)
        return clients

    return asyncio.run(scenario())


def expected(commands) -> list[bytes]:
    own = [bytearray() for _ in range(CLIENTS)]
    for index, reply, _ in commands:
        own[index] += reply
    return [bytes(b) for b in own]


# --------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(conversations(), st.sampled_from([64, 1024, 1 << 20]))
def test_each_client_gets_exactly_its_own_replies_in_order(conversation, threshold) -> None:
    commands, stream, cuts = conversation
    clients = run_backend(commands, _reads(stream, cuts), threshold)
    for index, (client, own) in enumerate(zip(clients, expected(commands))):
        assert bytes(client.data) == own, f"client {index}"
        assert client.frames == sum(1 for i, _, _ in commands if i == index)
        assert not client.failed and not client.is_broken


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(conversations(), st.data(), st.sampled_from([64, 1 << 20]))
def test_a_reply_that_cannot_be_framed_reaches_nobody(conversation, data, threshold) -> None:
    commands, _, _ = conversation
    bad = data.draw(st.integers(0, len(commands) - 1), label="unframeable reply")
    replies = [reply for _, reply, _ in commands]
    # A line's text (``#maybe``, ``(123  123``) is forwarded as the server wrote it, as a
    # client gets it directly: only what cannot be framed at all is garbage here.
    garbage = data.draw(st.sampled_from([b"?what\r\n", b"$abc\r\n", b"*x\r\n", b"%-2\r\n", b"!x\r\n"]))
    stream = b"".join(replies[:bad]) + garbage + b"".join(replies[bad + 1:])
    cuts = sorted(data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=20, unique=True)))
    clients = run_backend(commands, _reads(stream, cuts), threshold)
    culprit = commands[bad][0]
    for index, (client, own) in enumerate(zip(clients, expected(commands))):
        mine = [reply for i, reply, _ in commands if i == index]
        assert own.startswith(bytes(client.data)), f"client {index} got bytes that are not its own"
        if index == culprit:
            assert client.is_broken
            continue
        # Everyone else: whole replies of its own, then errors for the rest.
        whole = client.frames
        assert bytes(client.data) == b"".join(mine[:whole])
        assert whole + client.failed == len(mine)
        assert not client.is_broken
