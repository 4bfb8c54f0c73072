"""Compatibility checks of the Prepare step, each shown firing on a real setup
built to trip it and quiet on a compatible pair (DESIGN.md section 7)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from servers import free_port

from eve.core.endpoints import EndpointConfig, parse_config
from eve.core.errors import UnavailableError
from eve.prepare.compat import (
    CODES,
    CompatIssue,
    check_compatibility,
    rdb_format,
    server_version,
    source_version_issue,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def endpoint(server, *, write_user: tuple[str, str] | None = None) -> EndpointConfig:
    config: dict = {"target": {"host": server.host, "port": server.port}}
    if server.password:
        config["read_credentials"] = {"password": server.password}
    if write_user:
        config["write_credentials"] = {"username": write_user[0], "password": write_user[1]}
    return parse_config(config)


def codes(issues: list[CompatIssue]) -> set[str]:
    return {issue.code for issue in issues}


def only(issues: list[CompatIssue], code: str) -> CompatIssue:
    found = [issue for issue in issues if issue.code == code]
    assert len(found) == 1, issues
    return found[0]


def fill_strings(server, count: int, size: int, db: int = 0) -> None:
    pipe = server.client(db=db).pipeline(transaction=False)
    for i in range(count):
        pipe.set(f"s:{i}", b"x" * size)
    pipe.execute()


def assert_jsonable(issues: list[CompatIssue]) -> None:
    for issue in issues:
        assert issue.code in CODES
        assert all(isinstance(v, str) for v in issue.evidence.values()), issue
    json.dumps([asdict(issue) for issue in issues])


# --------------------------------------------------------------------------- unit: versions


def test_source_version_logic_from_info():
    old = server_version({"redis_version": "4.0.14", "redis_mode": "standalone"})
    issue = source_version_issue(old)
    assert issue is not None and issue.code == "SOURCE_VERSION_TOO_OLD" and issue.blocking
    assert issue.evidence == {"source_engine": "redis", "source_version": "4.0.14", "minimum_version": "5.0"}
    assert "redis 4.0.14" in issue.message
    assert source_version_issue(server_version({"redis_version": "5.0.0"})) is None
    valkey = server_version({"redis_version": "7.2.4", "valkey_version": "8.1.8", "server_name": "valkey"})
    assert (valkey.engine, valkey.version, valkey.major, valkey.redis_major) == ("valkey", "8.1.8", 8, 7)
    assert source_version_issue(valkey) is None


def test_rdb_version_fallback_matches_measured_engines():
    # DESIGN.md 8: 10 (Redis 7.0) -> all; 11 (Valkey 8.1) -> 12, 80; 12 and 80 -> none of the others.
    versions = {"redis-7.0": server_version({"redis_version": "7.0.15"}),
                "valkey-8.1": server_version({"redis_version": "7.2.4", "valkey_version": "8.1.8"}),
                "redis-8.2": server_version({"redis_version": "8.2.3"}),
                "valkey-9.1": server_version({"redis_version": "7.2.4", "valkey_version": "9.1.2"})}
    formats = {name: rdb_format(version) for name, version in versions.items()}
    assert {name: fmt.rdb for name, fmt in formats.items()} == {"redis-7.0": 10, "valkey-8.1": 11, "redis-8.2": 12,
                                                                 "valkey-9.1": 80}
    accepted = {(s, t) for s in formats for t in formats
                if s != t and formats[t].accepts_version(formats[s].rdb)}
    assert accepted == {("redis-7.0", "valkey-8.1"), ("redis-7.0", "redis-8.2"), ("redis-7.0", "valkey-9.1"),
                        ("valkey-8.1", "redis-8.2"), ("valkey-8.1", "valkey-9.1")}


def test_unreachable_target_raises_naming_it(server_factory):
    source = server_factory("redis-7.0")
    gone = parse_config({"target": {"host": "127.0.0.1", "port": free_port()}})
    with pytest.raises(UnavailableError, match="target 'new-cache'"):
        check_compatibility(endpoint(source), gone, target_name="new-cache", timeout=2)


# --------------------------------------------------------------------------- real setups


def test_compatible_pair_has_no_issues(server_factory):
    source, target = server_factory("redis-7.0"), server_factory("valkey-9.1")
    fill_strings(source, 50, 100)
    for mode in ("AUTO", "DUMP_RESTORE", "LOGICAL"):
        assert check_compatibility(endpoint(source), endpoint(target), mode=mode, conflict_policy="MERGE",
                                   interlay_listeners=1) == []
    assert source.client().dbsize() == 50 and target.client().dbsize() == 0  # probes cleaned up


def test_relabelled_probe_restores_where_the_raw_payload_would_not(server_factory):
    """Redis 8.2 (RDB 12) payloads, relabelled for Valkey 8.1 (RDB 11) as the copy does, restore."""
    source, target = server_factory("redis-8.2"), server_factory("valkey-8.1")
    for mode in ("AUTO", "DUMP_RESTORE"):
        issues = check_compatibility(endpoint(source), endpoint(target), mode=mode)
        assert codes(issues) == {"TARGET_OLDER_VERSION"}, issues
    assert source.client().dbsize() == 0 and target.client().dbsize() == 0


def test_dump_version_mismatch_from_a_real_probe(server_factory):
    """A probe payload the target cannot read even relabelled: set-listpack (20) towards RDB 10."""
    source, target = server_factory("redis-8.2"), server_factory("redis-7.0")
    source.client().sadd("only-sets", "a", "b")
    reader = _read_only(source)
    issues = check_compatibility(reader, endpoint(target))
    assert_jsonable(issues)
    assert codes(issues) == {"DUMP_VERSION_MISMATCH", "TARGET_OLDER_VERSION"}
    dump = only(issues, "DUMP_VERSION_MISMATCH")
    assert not dump.blocking and dump.evidence["fallback"] == "logical copy"
    assert (dump.evidence["source_rdb_version"], dump.evidence["target_rdb_version"]) == ("12", "10")
    assert "payload version or checksum" in dump.evidence["target_reply"]
    assert not only(issues, "TARGET_OLDER_VERSION").blocking

    strict = only(check_compatibility(reader, endpoint(target), mode="DUMP_RESTORE"), "DUMP_VERSION_MISMATCH")
    assert strict.blocking and "DUMP_RESTORE" in strict.message
    assert "existing source key" in strict.evidence["probe"]
    assert source.client().dbsize() == 1 and target.client().dbsize() == 0


def _read_only(server) -> EndpointConfig:
    """A read-only user (as on a replica): the probe uses the DUMP of an existing key."""
    server.client().execute_command("ACL", "SETUSER", "reader", "on", ">pw", "~*", "&*", "+@all", "-@write")
    return parse_config({"target": {"host": server.host, "port": server.port, "username": "reader",
                                    "password": "pw"}})


def test_key_movement_per_type_with_the_analysis_counts(server_factory):
    from eve.prepare.analysis import analyze
    from keyspace import fill

    source, target = server_factory("valkey-9.1"), server_factory("redis-7.0")
    fill(source.client(), 120)
    analysis = analyze(endpoint(source))
    auto = only(check_compatibility(endpoint(source), endpoint(target), analysis=analysis), "KEY_MOVEMENT")
    assert_jsonable([auto])
    assert not auto.blocking
    assert auto.evidence["target_format"] == "redis 7.0.15 (RDB 10)" and auto.evidence["source_rdb_version"] == "80"
    moves = {name: int(count) for name, count in auto.evidence.items() if ": " in name}
    assert moves["logical: set listpack set-listpack (20)"] == 20
    assert moves["logical: stream stream stream-listpacks-3 (21)"] == 20
    assert moves["transcoded: string embstr string (0)"] + moves.get("transcoded: string raw string (0)", 0) == 20
    assert sum(moves.values()) == 120 and not [name for name in moves if name.startswith("cannot")]
    assert "copied logically" in auto.message and "transcoded" in auto.message

    strict = only(check_compatibility(endpoint(source), endpoint(target), mode="DUMP_RESTORE", analysis=analysis),
                  "KEY_MOVEMENT")
    assert not strict.blocking, "most keys still move"
    assert int(strict.evidence["cannot: set listpack set-listpack (20)"]) == 20 and "error keys" in strict.message

    sets = server_factory("valkey-9.1")
    sets.client().sadd("s1", "a"), sets.client().sadd("s2", "b")
    only_sets = only(check_compatibility(endpoint(sets), endpoint(target), mode="DUMP_RESTORE",
                                         analysis=analyze(endpoint(sets))), "KEY_MOVEMENT")
    assert only_sets.blocking and "choose AUTO or LOGICAL" in only_sets.message
    assert check_compatibility(endpoint(target), endpoint(source), analysis=analyze(endpoint(target))) == [], \
        "Redis 7.0 payloads restore as they are on Valkey 9.1: nothing to say"


def test_modules_differ_blocking_only_with_module_keys(server_factory):
    source = server_factory("redis-8.2", with_module=True)
    target = server_factory("redis-8.2")  # lists the built-in "vectorset" only
    fill_strings(source, 20, 10)
    issues = check_compatibility(endpoint(source), endpoint(target))
    assert codes(issues) == {"MODULES_DIFFER"}
    issue = only(issues, "MODULES_DIFFER")
    assert not issue.blocking and issue.evidence["module"] == "graph"

    source.client().execute_command("GRAPH.QUERY", "g", "CREATE (:P {n:1})")
    issue = only(check_compatibility(endpoint(source), endpoint(target)), "MODULES_DIFFER")
    assert issue.blocking, issue
    assert issue.evidence["source_module_key_types"] == "graphdata"
    assert "graphdata" in issue.message and issue.evidence["target_module_version"] == "none"


@pytest.mark.parametrize("acl_rules, method", [
    (("+@all", "-restore"), "ACL DRYRUN"),
    (("+@all", "-restore", "-acl"), "MULTI/DISCARD probe"),  # may not run ACL DRYRUN itself
], ids=["dryrun", "multi-probe"])
def test_acl_user_without_restore_on_the_target(server_factory, acl_rules, method):
    source, target = server_factory("redis-7.0"), server_factory("valkey-9.1")
    target.client().execute_command("ACL", "SETUSER", "limited", "on", ">pw", "~*", "&*", *acl_rules)
    issues = check_compatibility(endpoint(source), endpoint(target, write_user=("limited", "pw")))
    assert_jsonable(issues)
    assert codes(issues) == {"ACL_MISSING_COMMANDS"}, issues
    issue = only(issues, "ACL_MISSING_COMMANDS")
    assert issue.blocking
    assert issue.evidence == {"endpoint": "target", "role": "write", "user": "limited",
                              "missing_commands": "restore", "checked_with": method}
    assert "RESTORE" in issue.message and "limited" in issue.message
    assert target.client().dbsize() == 0


def test_cluster_topology_checks(server_factory, cluster_factory):
    standalone = server_factory("redis-7.0")
    cluster = cluster_factory("redis-7.0", masters=3)
    fill_strings(standalone, 10, 10)

    issue = only(check_compatibility(endpoint(standalone), endpoint(cluster)), "CLUSTER_MODE_DIFFERS")
    assert not issue.blocking and issue.evidence["target_cluster"] == "yes"

    fill_strings(standalone, 3, 10, db=3)
    issues = check_compatibility(endpoint(standalone), endpoint(cluster))
    assert codes(issues) == {"CLUSTER_MODE_DIFFERS"}
    issue = only(issues, "CLUSTER_MODE_DIFFERS")
    assert issue.blocking and "db 3" in issue.message and issue.evidence["source_dbs_with_keys"] == "0, 3"

    # Cluster source -> standalone target: non-blocking; the interlay needs one listener per master.
    issues = check_compatibility(endpoint(cluster), endpoint(standalone), interlay_listeners=1)
    assert codes(issues) == {"CLUSTER_MODE_DIFFERS", "INTERLAY_LISTENERS_MISMATCH"}
    assert not only(issues, "CLUSTER_MODE_DIFFERS").blocking
    interlay = only(issues, "INTERLAY_LISTENERS_MISMATCH")
    assert interlay.blocking and interlay.evidence["source_masters"] == "3"
    assert codes(check_compatibility(endpoint(cluster), endpoint(standalone), interlay_listeners=3)) == \
        {"CLUSTER_MODE_DIFFERS"}
    assert sum(master.client().dbsize() for master in cluster.masters) == 0  # probes cleaned up


def test_target_memory_too_small_on_a_mirror(server_factory):
    source = server_factory("redis-7.0")
    target = server_factory("valkey-9.1")
    mirror = server_factory("valkey-8.1", extra_args=["--maxmemory", "1mb"])
    fill_strings(source, 40, 100_000)  # ~4 MB
    issues = check_compatibility(endpoint(source), endpoint(target), mirrors=[endpoint(mirror)])
    assert_jsonable(issues)
    assert codes(issues) == {"TARGET_MEMORY_TOO_SMALL"}, issues
    issue = only(issues, "TARGET_MEMORY_TOO_SMALL")
    assert issue.blocking and issue.evidence["endpoint"] == "mirror target 1"
    assert int(issue.evidence["target_maxmemory_bytes"]) == 1 << 20
    assert int(issue.evidence["source_used_memory_bytes"]) > 4_000_000


def test_online_runs_need_writes_on_the_source(server_factory):
    """After a cutover the re-copy loop writes to the source: its write user must be allowed to."""
    source, target = server_factory("valkey-8.1"), server_factory("valkey-8.1")
    source.client().execute_command("ACL", "SETUSER", "reader", "on", ">pw", "~*", "&*", "+@all", "-@write",
                                    "-config|set")
    config = endpoint(source, write_user=("reader", "pw"))
    assert check_compatibility(config, endpoint(target)) == [], "an offline run only reads the source"
    issues = check_compatibility(config, endpoint(target), online=True, keyspace_notifications=True)
    assert_jsonable(issues)
    issue = only(issues, "ACL_MISSING_COMMANDS")
    assert issue.blocking and issue.evidence["role"] == "write" and issue.evidence["endpoint"] == "source"
    assert set(issue.evidence["missing_commands"].split(", ")) == {"restore", "del", "pexpireat", "config set"}
    assert check_compatibility(endpoint(source), endpoint(target), online=True, keyspace_notifications=True) == []


def test_scripts_cached_on_the_source_are_a_warning(server_factory):
    source, target = server_factory("redis-7.0"), server_factory("valkey-9.1")
    assert "SCRIPTS_NOT_CARRIED" not in codes(check_compatibility(endpoint(source), endpoint(target)))
    client = source.client()
    client.script_load("return 1")
    client.eval("return 2", 0)  # EVAL caches its script too
    issues = check_compatibility(endpoint(source), endpoint(target))
    assert_jsonable(issues)
    issue = only(issues, "SCRIPTS_NOT_CARRIED")
    assert not issue.blocking
    assert issue.evidence == {"source_cached_scripts": "2"}
    assert "NOSCRIPT" in issue.message and "interlay" in issue.message
