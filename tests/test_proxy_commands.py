"""The proxy's parsing pieces: the command table built from each engine's own
COMMAND reply (checked against the server's COMMAND GETKEYS), the request
scanner, cluster reply rewriting, latency histograms and the options; and
the parts one proxy process shares (``proxy.parts``, the dirty-key recorder)."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import subprocess
import sys
import time

import pytest

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import ConfigError
from eve.redis import resp
from eve.redis.connections import RedisConnection
from eve.redis.framing import RequestScanner, partial_request
from proxy import messages
from proxy.cluster import ClusterMap
from proxy.commands import CommandTable
from proxy.dirty import DIRTY_FLUSH_KEYS, DirtyRecorder
from proxy.options import ProxyOptions
from proxy.parts import BLOCKING, SHARED, SPECIAL, XREAD, Clients, CommandCache
from proxy.stats import Stats, histogram, merge, percentile

MB = 1024 * 1024

# (arguments, keys): the key specs of the server must find exactly these.
KEY_CASES = [
    (["SET", "k", "v"], ["k"]),
    (["SET", "k", "v", "GET", "EX", "10"], ["k"]),
    (["GET", "k"], ["k"]),
    (["GETEX", "k", "EX", "10"], ["k"]),
    (["MSET", "a", "1", "b", "2", "c", "3"], ["a", "b", "c"]),
    (["MGET", "a", "b"], ["a", "b"]),
    (["DEL", "a", "b", "c"], ["a", "b", "c"]),
    (["RENAME", "a", "b"], ["a", "b"]),
    (["ZUNIONSTORE", "dst", "2", "z1", "z2", "WEIGHTS", "1", "2"], ["dst", "z1", "z2"]),
    (["ZINTERCARD", "2", "z1", "z2", "LIMIT", "5"], ["z1", "z2"]),
    (["XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"], ["s1", "s2"]),
    (["XREAD", "BLOCK", "0", "STREAMS", "s1", "$"], ["s1"]),
    (["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s1", ">"], ["s1"]),
    (["EVAL", "return 1", "2", "k1", "k2", "arg"], ["k1", "k2"]),
    (["EVAL", "return 1", "0"], []),
    (["EVALSHA", "a" * 40, "1", "k1", "arg"], ["k1"]),
    (["FCALL", "fn", "1", "k1", "arg"], ["k1"]),
    (["LMPOP", "2", "l1", "l2", "LEFT", "COUNT", "2"], ["l1", "l2"]),
    (["BLPOP", "l1", "l2", "0"], ["l1", "l2"]),
    (["BLMOVE", "src", "dst", "LEFT", "RIGHT", "0"], ["src", "dst"]),
    (["BZMPOP", "1", "2", "z1", "z2", "MIN"], ["z1", "z2"]),
    (["SINTERCARD", "2", "s1", "s2"], ["s1", "s2"]),
    (["XINFO", "STREAM", "s1"], ["s1"]),
    (["OBJECT", "ENCODING", "k"], ["k"]),
    (["GEORADIUS", "g", "0", "0", "1", "km", "STORE", "dst"], ["g", "dst"]),
    (["PUBLISH", "channel", "message"], []),
    (["PING"], []),
]


def _table(server) -> CommandTable:
    spec = ConnectionSpec(server.host, server.port, password=server.password)
    with RedisConnection(spec) as conn:
        return CommandTable.from_reply(conn.call("COMMAND"))


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_keys_from_each_engines_key_specs(engine, server_factory) -> None:
    server = server_factory(engine)
    table = _table(server)
    assert len(table) > 150
    direct = RedisConnection(ConnectionSpec(server.host, server.port))
    direct.open()
    for args, keys in KEY_CASES:
        encoded = [arg.encode() for arg in args]
        assert table.keys(encoded) == [key.encode() for key in keys], args
        if keys:
            # The server agrees (COMMAND GETKEYS runs its own key extraction).
            found = resp.to_python(direct.call("COMMAND", "GETKEYS", *args))
            assert found == [key.encode() for key in keys], args
    # Flags come from the server too.
    assert table.is_write([b"SET", b"k", b"v"])
    assert "readonly" in table.flags([b"GET", b"k"])
    assert table.is_blocking(b"blpop") and table.is_blocking(b"BZPOPMIN") and not table.is_blocking(b"get")
    assert "pubsub" in table.flags([b"SUBSCRIBE", b"c"])
    assert table.lookup([b"xinfo", b"stream", b"s"]).name == "xinfo|stream"
    assert table.lookup([b"no-such"]) is None
    # Only commands that can name more than one key are looked at for cross-slot counts.
    assert table.at_most_one_key(b"SET") and table.at_most_one_key(b"hset") and table.at_most_one_key(b"GET")
    for name in (b"MSET", b"MGET", b"DEL", b"SORT", b"EVAL", b"LMOVE", b"OBJECT", b"SINTERSTORE"):
        assert not table.at_most_one_key(name), name
    # SORT ... STORE: the STORE key is found by SORT's own code, not by a key spec.
    assert table.lookup([b"SORT", b"k"]).incomplete_keys
    assert table.keys([b"SORT", b"k", b"STORE", b"dst"])[0] == b"k"
    direct.close()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_changed_keys_agrees_with_the_key_specs(engine, server_factory) -> None:
    """The fast path for writes whose one key is argument 1 finds what the key specs do,
    for every write command of the engine, spelled as clients spell it."""
    table = _table(server_factory(engine))
    args_tail = [b"a1", b"a2", b"a3", b"a4", b"a5", b"a6"]
    checked = 0
    for name, info in table.commands.items():
        if "write" not in info.flags or info.subcommands:
            continue
        for spelling in (name.encode(), name.upper().encode()):
            args = [spelling, *args_tail[: max(abs(info.arity), 2) - 1]]
            assert table.changed_keys(args) == table.write_keys(args), (name, args)
            checked += 1
    assert checked > 60
    assert table.changed_keys([b"SET", b"k", b"v"]) == [b"k"]
    assert table.changed_keys([b"GET", b"k"]) == [] and table.changed_keys([b"nope", b"k"]) == []


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_table_in_resp3_matches_resp2(server_factory) -> None:
    server = server_factory("valkey-9.1")
    spec2 = ConnectionSpec(server.host, server.port)
    spec3 = ConnectionSpec(server.host, server.port, protocol_version=3)
    with RedisConnection(spec2) as conn2, RedisConnection(spec3) as conn3:
        table2 = CommandTable.from_reply(conn2.call("COMMAND"))
        table3 = CommandTable.from_reply(conn3.call("COMMAND"))
    assert set(table2.commands) == set(table3.commands)
    for args, keys in KEY_CASES:
        encoded = [arg.encode() for arg in args]
        assert table3.keys(encoded) == table2.keys(encoded) == [key.encode() for key in keys]


def test_malformed_key_arguments_find_nothing() -> None:
    reply = [[b"eval", -3, [b"movablekeys"], 0, 0, 0, [], [], [
        [b"flags", [b"RW"], b"begin_search", [b"type", b"index", b"spec", [b"index", 2]],
         b"find_keys", [b"type", b"keynum", b"spec", [b"keynumidx", 0, b"firstkey", 1, b"keystep", 1]]]], []]]
    table = CommandTable.from_reply(reply)
    assert table.keys([b"EVAL", b"s", b"x"]) == []        # numkeys not a number
    assert table.keys([b"EVAL", b"s", b"5", b"a"]) == []  # more keys than arguments
    assert table.keys([b"EVAL", b"s"]) == []              # numkeys missing
    assert table.keys([b"EVAL", b"s", b"1", b"a"]) == [b"a"]


# --------------------------------------------------------------------------- request scanner


def _scan(data: bytes, max_bulk: int = 512 * MB):
    return RequestScanner(max_bulk, 1024 * 1024).scan(data)


def test_scanner_splits_canonical_requests() -> None:
    data = resp.encode_command("SET", "k", "v" * 200) + resp.encode_command("GET", "k")
    requests, end, error = _scan(data)
    assert [(r[0], r[2], r[3]) for r in requests] == [(len(data) - 20, b"SET", 3), (len(data), b"GET", 2)]
    assert end == len(data) and error is None


def test_scanner_keeps_an_incomplete_request() -> None:
    whole = resp.encode_command("PING") + resp.encode_command("SET", "key", "value")
    for cut in range(len(resp.encode_command("PING")), len(whole)):
        requests, end, error = _scan(whole[:cut])
        assert [r[2] for r in requests] == [b"PING"] and end == 14 and error is None


@pytest.mark.parametrize("data, error", [
    (b"*1\r\n+PING\r\n", "Protocol error: expected '$', got '+'"),
    (b"*2\r\n$3\r\nGET\r\n=7\r\ntxt:foo\r\n", "Protocol error: expected '$', got '='"),
    (b"*1\r\n$4\r\nPINGXY", "Protocol error: bulk data not followed by CRLF"),
    (b"*1\r\n$04\r\nPING\r\n", None),  # leading zero: left to the exact scanner, which reads 4
    (b"*x\r\n", "Protocol error: invalid multibulk length"),
    (b"*2\r\n*1\r\n$1\r\na\r\n", "Protocol error: expected '$', got '*'"),
    (b"*1\r\n$700000000\r\n", "Protocol error: invalid bulk length"),
])
def test_scanner_refuses_what_a_server_refuses(data, error) -> None:
    _, _, found = _scan(resp.encode_command("PING") + data)
    assert found == error


def test_scanner_reads_inline_commands() -> None:
    requests, _, error = _scan(b"SET a \"b c\"\r\n\r\nPING\n")
    assert [(r[2], r[3]) for r in requests] == [(b"SET", 3), (b"", 0), (b"PING", 1)]
    assert error is None


def test_partial_request_knows_the_big_argument() -> None:
    data = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000000\r\n" + b"x" * 10
    partial = partial_request(data, 0)
    assert partial.name == b"SET" and partial.args_left == 1 and partial.bulk_len == 1000000
    assert partial.data_start == len(data) - 10


def test_partial_request_before_the_length_of_an_argument() -> None:
    head = b"*3\r\n$3\r\nSET\r\n"
    for data, arg_pos in ((head, len(head)), (head + b"$1\r\nk\r\n$10", len(head) + 7)):
        partial = partial_request(data, 0)
        assert (partial.name, partial.arg_pos, partial.bulk_len, partial.data_start) == \
            (b"SET", arg_pos, -1, -1), data
    assert partial_request(b"*2\r\n$100\r\nabc", 0).name is None
    assert partial_request(resp.encode_command("PING"), 0) is None       # complete
    assert partial_request(b"PING\r", 0) is None                        # inline


def test_scan_canonical_is_the_hot_path_check() -> None:
    """Only a buffer of complete canonical requests of the forwardable kind is
    forwarded whole; the scanner goes on working after each refusal."""
    scanner = RequestScanner(512 * MB, 1024 * 1024)
    data = resp.encode_command("SET", "k", "v") + resp.encode_command("GET", "k")
    kinds = {b"SET": SHARED, b"GET": SHARED}
    assert scanner.scan_canonical(data, kinds, SHARED, None) == (len(data), 2)
    assert scanner.scan_canonical(data, {b"SET": SHARED, b"GET": BLOCKING}, SHARED, None)[0] == -1
    assert scanner.scan_canonical(data + b"*1\r\n$4\r\nPI", kinds, SHARED, None) == (len(data), 2)
    assert scanner.scan_canonical(b"*1\r\n$04\r\nPING\r\n", {b"PING": SHARED}, SHARED, None)[0] == -1
    assert scanner.scan_canonical(b"PING\r\n", {b"PING": SHARED}, SHARED, None)[0] == -1
    requests: list = []
    assert scanner.scan_canonical(data, None, SHARED, requests) == (len(data), 2)
    assert [(r[2], r[3]) for r in requests] == [(b"SET", 3), (b"GET", 2)]
    assert scanner.scan(data)[1:] == (len(data), None)


# --------------------------------------------------------------------------- cluster rewriting


def test_cluster_map_rewrites_redirections_and_nodes() -> None:
    cluster = ClusterMap([("10.0.0.1", 7000), ("10.0.0.2", 7000)], [6200, 6201])
    assert cluster.rewrite_redirect(b"-MOVED 42 10.0.0.2:7000\r\n", "127.0.0.1") == b"-MOVED 42 127.0.0.1:6201\r\n"
    assert cluster.rewrite_redirect(b"-ASK 7 10.0.0.1:7000\r\n", "::1") == b"-ASK 7 ::1:6200\r\n"
    assert cluster.rewrite_redirect(b"-MOVED 1 10.9.9.9:7001\r\n", "h") == b"-MOVED 1 10.9.9.9:7001\r\n"
    text = (b"aaa 10.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-8191\n"
            b"bbb 10.0.0.2:7000@17000,host2 master - 0 0 2 connected 8192-16383\n"
            b"ccc 10.0.0.3:7000@17000 slave aaa 0 0 1 connected\n")
    rewritten = cluster.rewrite_nodes_text(text, "127.0.0.1")
    assert rewritten == (b"aaa 127.0.0.1:6200@17000 myself,master - 0 0 1 connected 0-8191\n"
                         b"bbb 127.0.0.1:6201@17000,host2 master - 0 0 2 connected 8192-16383\n")
    slots = resp.encode(resp.Array([resp.Array([
        resp.Integer(0), resp.Integer(8191),
        resp.Array([resp.BulkString(b"10.0.0.1"), resp.Integer(7000), resp.BulkString(b"aaa")]),
        resp.Array([resp.BulkString(b"10.0.0.3"), resp.Integer(7000), resp.BulkString(b"ccc")])])]))
    value = resp.parse(cluster.rewrite_reply(b"slots", slots, "127.0.0.1"))[0]
    assert resp.to_python(value) == [[0, 8191, [b"127.0.0.1", 6200, b"aaa"]]]


# --------------------------------------------------------------------------- stats and options


def test_latency_histograms_merge_and_percentiles() -> None:
    first = histogram([0.1] * 98 + [5.0, 5.0])
    second = histogram([0.1] * 100)
    merged = merge([first, second])
    assert sum(merged) == 200
    assert 0.09 <= percentile(merged, 50) <= 0.111
    assert 0.09 <= percentile(merged, 99) <= 0.111
    assert 4.5 <= percentile(first, 99) <= 5.5
    assert percentile((), 99) == 0.0


def test_options_are_validated_and_picklable() -> None:
    import pickle

    node = ConnectionSpec("127.0.0.1", 6379, password="secret")
    options = ProxyOptions(interlay_id="cache", listen_host="127.0.0.1", ports=[6200], nodes=[node])
    assert pickle.loads(pickle.dumps(options)) == options
    assert "secret" not in repr(options)
    with pytest.raises(ConfigError, match="ports"):
        ProxyOptions(interlay_id="cache", listen_host="127.0.0.1", ports=(6200, 6201), nodes=(node,))
    with pytest.raises(ConfigError, match="pool_size"):
        ProxyOptions(interlay_id="cache", listen_host="127.0.0.1", ports=(6200,), nodes=(node,), pool_size=0)


# --------------------------------------------------------------------------- the parts of a process


def test_import_proxy_loads_no_server() -> None:
    """``import proxy`` is for callers that want the options, the messages or the
    command table: the asyncio server (and uvloop) load only once ``proxy.main`` is asked for."""
    code = ("import sys, proxy; from proxy import messages; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('asyncio', 'uvloop', 'proxy')))\n"
            "proxy.main; print('proxy.server' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded, server = out.stdout.splitlines()
    assert loaded == str(["proxy", "proxy.commands", "proxy.messages", "proxy.options"])
    assert server == "True"


def test_clients_are_admitted_up_to_the_limit() -> None:
    stats = Stats()
    clients = Clients(stats, limit=2)
    first, second, third = object(), object(), object()
    assert clients.admit(first) and clients.admit(second)
    assert not clients.admit(third) and stats.rejected == 1
    clients.closed(first)
    clients.closed(first)  # counted once
    assert stats.connections == 1 and len(clients) == 1
    assert clients.admit(third) and set(clients) == {second, third}
    clients.admitting = False  # the process stops
    assert not clients.admit(object()) and stats.connections == 2
    assert (clients.next_id(), clients.next_id()) == (1, 2)


def test_clients_share_the_limit_across_workers() -> None:
    counter = multiprocessing.Array("q", 2, lock=False)
    counter[0] = 1  # another worker's client
    stats = Stats()
    clients = Clients(stats, limit=2, counter=counter, slot=1)
    first = object()
    assert clients.admit(first) and list(counter) == [1, 1]
    assert not clients.admit(object()) and stats.rejected == 1
    clients.closed(first)
    assert list(counter) == [1, 0] and stats.connections == 0


def _raw_reply(server, request: bytes) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(request)
        data = sock.recv(1 << 20)
        while resp.frame_end(data) < 0:
            chunk = sock.recv(1 << 20)
            assert chunk, "connection closed before the reply"
            data += chunk
        return data


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_command_cache_before_and_after_the_table(server_factory) -> None:
    server = server_factory("valkey-9.1")
    cache = CommandCache("interlay=test worker=0", cluster=False)
    # Before the table: kinds and writes by name alone, and what may change is not kept.
    assert cache.classify(b"BLPOP") == BLOCKING and cache.classify(b"get") == SHARED
    assert cache.classify(b"XREADGROUP") == XREAD and cache.classify(b"Multi") == SPECIAL
    assert cache.classify(b"CLUSTER") == SHARED and cache.classify(b"BLMOVE") == BLOCKING
    assert cache.may_write(b"FLUSHDB") and cache.may_write(b"evalsha") and not cache.may_write(b"SET")
    assert cache.writes == {} and cache.keys([b"GET", b"k"]) == []
    assert cache.marks([b"FLUSHDB"], 2) == [(2, None)] and cache.marks([b"SET", b"k", b"v"], 0) == []
    request, on_table = cache.table_request()
    assert cache.table_request() is None  # one connection asks
    on_table(_raw_reply(server, request))
    assert cache.table is not None and len(cache.table) > 150 and cache.table_request() is None
    # The table replaces the guesses.
    assert cache.kinds == {} and cache.writes == {}
    assert cache.may_write(b"SET") and cache.writes == {b"SET": True} and not cache.may_write(b"GET")
    assert cache.classify(b"BZPOPMIN") == BLOCKING and cache.kinds == {b"BZPOPMIN": BLOCKING}
    assert cache.marks([b"SET", b"k", b"v"], 3) == [(3, b"k")]
    assert cache.keys([b"MGET", b"a", b"b"]) == [b"a", b"b"]
    assert CommandCache("x", cluster=True).classify(b"cluster") == SPECIAL


def test_command_cache_survives_a_bad_table() -> None:
    cache = CommandCache("interlay=test worker=0", cluster=False)
    _, on_table = cache.table_request()
    on_table(b"-ERR unknown command\r\n")
    assert cache.table is None and not cache.loading
    _, on_table = cache.table_request()  # asked again by the next connection
    on_table(None)                       # that connection closed first
    assert cache.table is None and cache.table_request() is not None


def test_dirty_recorder_sends_batches() -> None:
    sent: list[messages.DirtyReport] = []

    async def scenario() -> None:
        recorder = DirtyRecorder(3, sent.append)
        recorder.record([(0, b"before")])  # tracking is off: nothing is kept
        recorder.set_tracking(True)
        recorder.record([(0, b"a")])
        recorder.record([(1, b"b"), (0, b"a")])  # written again: sent once
        assert list(recorder.pending) == [(0, b"a"), (1, b"b")]
        deadline = time.monotonic() + 5
        while not sent and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert [(report.worker, report.keys) for report in sent] == [(3, ((0, b"a"), (1, b"b")))]
        recorder.record([(0, b"k%d" % i) for i in range(DIRTY_FLUSH_KEYS)])
        assert len(sent) == 2 and len(sent[1].keys) == DIRTY_FLUSH_KEYS  # at once, not after the timer
        recorder.record([(None, None)])
        recorder.set_tracking(False)  # what is pending goes first
        assert sent[2].keys == ((None, None),) and not recorder.pending
        recorder.record([(0, b"after")])
        assert not recorder.pending

    asyncio.run(scenario())


def test_at_most_one_key_by_key_specs_and_legacy_triples() -> None:
    """Commands whose requests name one key at most need no cross-slot look (issue 20)."""
    from proxy.commands import CommandInfo, CommandTable, KeySpec

    one = KeySpec(flags=frozenset({"RW"}), begin=("index", 1), find=("range", 0, 1, 0))
    many = KeySpec(flags=frozenset({"RO"}), begin=("index", 1), find=("range", -1, 1, 0))
    numkeys = KeySpec(flags=frozenset({"RO"}), begin=("index", 2), find=("keynum", 0, 1, 1))
    table = CommandTable({
        "set": CommandInfo(name="set", arity=-2, flags=frozenset(), key_specs=(one,)),
        "mget": CommandInfo(name="mget", arity=-2, flags=frozenset(), key_specs=(many,)),
        "eval": CommandInfo(name="eval", arity=-2, flags=frozenset(), key_specs=(numkeys,)),
        "lmove": CommandInfo(name="lmove", arity=-2, flags=frozenset(), key_specs=(
            one, KeySpec(flags=frozenset({"RW"}), begin=("index", 2), find=("range", 0, 1, 0)))),
        "ping": CommandInfo(name="ping", arity=-2, flags=frozenset()),
        "legacy-get": CommandInfo(name="legacy-get", arity=-2, flags=frozenset(), first_key=1, last_key=1, step=1),
        "legacy-del": CommandInfo(name="legacy-del", arity=-2, flags=frozenset(), first_key=1, last_key=-1, step=1),
    })
    assert table.at_most_one_key(b"SET") and table.at_most_one_key("ping") and table.at_most_one_key("legacy-get")
    for name in ("mget", "eval", "lmove", "legacy-del", "unknown"):
        assert not table.at_most_one_key(name), name
