"""Function libraries copied at the start of a bulk copy (eve.bulk.functions): FUNCTION DUMP +
RESTORE where the target reads the payload, FUNCTION LOAD from the code where it is older,
the conflict policy for a library of the same name, every master of a cluster target."""

from __future__ import annotations

import subprocess
import sys

import pytest

from eve.bulk.functions import copy_functions
from eve.core.endpoints import ConnectionSpec
from eve.core.enums import ConflictPolicy
from eve.core.errors import SourceError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

LIB = "#!lua name={name}\nredis.register_function('{name}_get', function(keys, args) return '{answer}' end)"
KEYED = ("#!lua name=counters\nredis.register_function('bump', function(keys, args) "
         "return redis.call('INCRBY', keys[1], args[1]) end)")


def spec(server) -> ConnectionSpec:
    return ConnectionSpec(server.host, server.port, password=server.password)


def load(client, name: str, answer: str = "source", *, replace: bool = False) -> None:
    client.function_load(LIB.format(name=name, answer=answer), replace=replace)


def libraries(client) -> dict[bytes, bytes]:
    listed = (dict(zip(entry[0::2], entry[1::2])) for entry in client.function_list(withcode=True))
    return {fields[b"library_name"]: fields[b"library_code"] for fields in listed}


@pytest.mark.parametrize("pair, by", [(("redis-7.0", "valkey-9.1"), "restore"), (("redis-8.2", "redis-7.0"), "load"),
                                      (("valkey-9.1", "valkey-8.1"), "load"), (("redis-8.2", "valkey-9.1"), "load")],
                         ids=lambda value: "->".join(value) if isinstance(value, tuple) else value)
def test_libraries_are_copied_between_engines(server_factory, pair, by):
    source_server, target_server = server_factory(pair[0]), server_factory(pair[1])
    source, target = source_server.client(), target_server.client()
    load(source, "alpha")
    source.function_load(KEYED)
    report = copy_functions(spec(source_server), [spec(target_server)])
    assert report.libraries == ("alpha", "counters") and report.copied == 2 and not report.conflicts
    assert libraries(target) == libraries(source)
    assert target.fcall("alpha_get", 0) == b"source"
    assert target.fcall("bump", 1, "n", 5) == 5
    stats = target.info("commandstats")
    restored = stats.get("cmdstat_function|restore", {})
    if by == "restore":
        assert restored.get("calls") == 1 and not restored.get("failed_calls")
    else:   # the older format refused, each library loaded from its code
        assert restored.get("failed_calls", 0) + restored.get("rejected_calls", 0) == 1
        assert stats["cmdstat_function|load"]["calls"] == 2


def test_the_conflict_policy_decides_for_a_library_of_the_same_name(server_factory):
    source_server, target_server = server_factory("valkey-9.1"), server_factory("redis-8.2")
    source, target = source_server.client(), target_server.client()
    load(source, "alpha")
    load(source, "beta")
    load(source, "same")
    load(target, "alpha", "target")      # other code: the policy decides
    load(target, "same")                 # the same code: nothing to do
    load(target, "own", "target")        # the target's own: always kept
    for policy in (ConflictPolicy.NONE, ConflictPolicy.MERGE):
        report = copy_functions(spec(source_server), [spec(target_server)], policy)
        assert report.conflicts == [f"alpha on 127.0.0.1:{target_server.port}"]
        assert target.fcall("alpha_get", 0) == b"target" and target.fcall("beta_get", 0) == b"source"
    assert (report.copied, report.unchanged) == (0, 2), "beta was there from the first pass"
    report = copy_functions(spec(source_server), [spec(target_server)], ConflictPolicy.REPLACE)
    assert (report.copied, report.unchanged, report.conflicts) == (1, 2, [])
    assert target.fcall("alpha_get", 0) == b"source" and target.fcall("own_get", 0) == b"target"
    assert set(libraries(target)) == {b"alpha", b"beta", b"same", b"own"}


def test_a_source_without_libraries_copies_nothing(server_factory):
    source_server, target_server = server_factory("redis-7.0"), server_factory("valkey-9.1")
    load(target_server.client(), "own")
    report = copy_functions(spec(source_server), [spec(target_server)])
    assert (report.libraries, report.copied, report.reason) == ((), 0, None)
    assert set(libraries(target_server.client())) == {b"own"}


def test_every_master_of_a_cluster_target_and_every_mirror(server_factory, cluster_factory):
    source_server = server_factory("redis-7.0")
    cluster, mirror = cluster_factory("valkey-9.1", masters=3), server_factory("valkey-8.1")
    load(source_server.client(), "alpha")
    report = copy_functions(spec(source_server), [ConnectionSpec(cluster.host, cluster.port), spec(mirror)])
    assert report.copied == 4
    for node in (*cluster.masters, mirror):
        assert node.client().fcall("alpha_get", 0) == b"source"


def test_a_cluster_source_whose_masters_disagree_is_refused(server_factory, cluster_factory):
    cluster, target_server = cluster_factory("redis-7.0", masters=2), server_factory("valkey-9.1")
    load(cluster.masters[0].client(), "alpha", "one")
    load(cluster.masters[1].client(), "alpha", "two")
    with pytest.raises(SourceError, match="'alpha' has other code"):
        copy_functions(ConnectionSpec(cluster.host, cluster.port), [spec(target_server)])


def test_eve_migrate_copies_the_libraries(server_factory, tmp_path):
    source_server, target_server = server_factory("redis-7.0"), server_factory("valkey-9.1")
    source = source_server.client()
    source.function_load(KEYED)
    source.set("n", 1)
    result = subprocess.run([sys.executable, "-m", "eve", "migrate", "--source", f"redis://127.0.0.1:{source_server.port}",
                             "--target", f"redis://127.0.0.1:{target_server.port}", "--state", str(tmp_path / "s.db"),
                             "--no-progress"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert target_server.client().fcall("bump", 1, "n", 2) == 3
