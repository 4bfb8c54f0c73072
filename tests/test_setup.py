"""The typed run setup: parsing (every field, bad input), the stored form (this version's
and what older versions saved), protobuf round trips, and the endpoint snapshot's
change descriptions. In process: no servers, no gRPC."""

from __future__ import annotations

import json
import math

import pytest

from eve.api import convert
from eve.bulk.error_keys import DEFAULT_MAX_ERROR_RATIO
from eve.core.enums import ConflictPolicy, DataMovementMode, Strategy, WriteConsistency
from eve.core.errors import ConfigError, StateError
from eve.core.store import RunEndpointRecord, Store
from eve.v1 import workflows_pb2 as wpb
from eve.workflow.setup import (
    Filters,
    RateLimits,
    RunSetup,
    describe_config_change,
    endpoint_changes,
    guided_setup,
    parse_setup,
)

pytestmark = pytest.mark.timeout(30)

FULL = {
    "source": "src", "target": "dst", "mirror_targets": ["m1", "m2"],
    "strategy": "ONLINE_PHASED", "mode": "DUMP_RESTORE", "conflict_policy": "MERGE",
    "write_consistency": "BOTH_REQUIRED", "preserve_ttl": False,
    "filters": {"key_pattern": "user:*", "dbs": [0, 3], "types": ["hash"]},
    "rate_limits": {"max_keys_per_second": "5000", "max_bytes_per_second": "1048576", "max_pipeline_depth": 64},
    "rollback_window": "3600.500s", "interlay": "app", "scripts_deterministic": True,
    "big_key_threshold_bytes": "1000000", "restorers": 4, "keyspace_notifications": True,
}
FULL_SETUP = RunSetup(
    source="src", target="dst", mirror_targets=("m1", "m2"), strategy=Strategy.ONLINE_PHASED,
    mode=DataMovementMode.DUMP_RESTORE, conflict_policy=ConflictPolicy.MERGE,
    write_consistency=WriteConsistency.BOTH_REQUIRED, preserve_ttl=False,
    filters=Filters(key_pattern="user:*", dbs=(0, 3), types=("hash",)),
    rate_limits=RateLimits(max_keys_per_second=5000, max_bytes_per_second=1048576, max_pipeline_depth=64),
    rollback_window_seconds=3600.5, interlay="app", scripts_deterministic=True,
    big_key_threshold_bytes=1_000_000, restorers=4, keyspace_notifications=True)


def test_every_field_parsed_into_its_type():
    setup = parse_setup(FULL)
    assert setup == FULL_SETUP
    assert setup.strategy is Strategy.ONLINE_PHASED and setup.mode is DataMovementMode.DUMP_RESTORE
    assert setup.conflict_policy is ConflictPolicy.MERGE and setup.write_consistency is WriteConsistency.BOTH_REQUIRED
    assert setup.online and setup.roles == {"src": "source", "dst": "target", "m1": "mirror", "m2": "mirror"}
    with pytest.raises(AttributeError):
        setup.strategy = Strategy.OFFLINE  # type: ignore[misc]  # frozen


def test_defaults():
    setup = parse_setup({"source": "src", "target": "dst"})
    assert setup == RunSetup(source="src", target="dst")
    assert setup.strategy is Strategy.OFFLINE and not setup.online
    assert setup.mode is DataMovementMode.AUTO and setup.conflict_policy is ConflictPolicy.REPLACE
    assert setup.write_consistency is WriteConsistency.SOURCE_AUTHORITATIVE
    assert setup.preserve_ttl and setup.rollback_window_seconds == 0.0 and setup.filters == Filters()
    # The proto's UNSPECIFIED values are the defaults.
    assert parse_setup({"source": "src", "target": "dst", "strategy": "STRATEGY_UNSPECIFIED",
                        "conflict_policy": "CONFLICT_POLICY_UNSPECIFIED"}) == setup


@pytest.mark.parametrize("change, field", [
    ({"source": ""}, "setup.source"),
    ({"target": "bad name"}, "setup.target"),
    ({"mirror_targets": ["ok", "-bad"]}, "setup.mirror_targets"),
    ({"mirror_targets": "m1"}, "setup.mirror_targets"),
    ({"strategy": "SIDEWAYS"}, "setup.strategy"),
    ({"mode": "TELEPORT"}, "setup.mode"),
    ({"conflict_policy": "OVERWRITE"}, "setup.conflict_policy"),
    ({"write_consistency": "EVENTUAL"}, "setup.write_consistency"),
    ({"write_consistency": 7}, "setup.write_consistency"),
    ({"preserve_ttl": "false"}, "setup.preserve_ttl"),
    ({"scripts_deterministic": 1}, "setup.scripts_deterministic"),
    ({"keyspace_notifications": "yes"}, "setup.keyspace_notifications"),
    ({"filters": {"dbs": [-1]}}, "setup.filters.dbs"),
    ({"filters": {"dbs": [1_000_001]}}, "setup.filters.dbs"),
    ({"filters": {"dbs": [math.nan]}}, "setup.filters.dbs"),
    ({"filters": {"dbs": [1.5]}}, "setup.filters.dbs"),
    ({"filters": {"types": ["hash", "set"]}}, "setup.filters.types"),
    ({"filters": {"types": ["bogus"]}}, "setup.filters.types"),
    ({"filters": "everything"}, "setup.filters"),
    ({"rate_limits": {"max_keys_per_second": -1}}, "setup.rate_limits.max_keys_per_second"),
    ({"rate_limits": {"max_keys_per_second": math.nan}}, "setup.rate_limits.max_keys_per_second"),
    ({"rate_limits": {"max_bytes_per_second": "-5"}}, "setup.rate_limits.max_bytes_per_second"),
    ({"rate_limits": {"max_bytes_per_second": math.inf}}, "setup.rate_limits.max_bytes_per_second"),
    ({"rate_limits": {"max_pipeline_depth": 100_001}}, "setup.rate_limits.max_pipeline_depth"),
    ({"rate_limits": {"max_pipeline_depth": True}}, "setup.rate_limits.max_pipeline_depth"),
    ({"rollback_window": "3600"}, "setup.rollback_window"),
    ({"rollback_window": "-5s"}, "setup.rollback_window"),
    ({"rollback_window": "nans"}, "setup.rollback_window"),
    ({"rollback_window": "infs"}, "setup.rollback_window"),
    ({"rollback_window": "soons"}, "setup.rollback_window"),
    ({"big_key_threshold_bytes": -1}, "setup.big_key_threshold_bytes"),
    ({"big_key_threshold_bytes": "lots"}, "setup.big_key_threshold_bytes"),
    ({"restorers": 65}, "setup.restorers"),
    ({"restorers": -2}, "setup.restorers"),
    ({"strategy": "ONLINE_CUTOVER", "interlay": ""}, "setup.interlay"),
])
def test_bad_input_names_the_field(change, field):
    raw = {"source": "src", "target": "dst", **change}
    with pytest.raises(ConfigError) as info:
        parse_setup(raw)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_messages_as_before():
    with pytest.raises(ConfigError, match=r"^setup: endpoint 'dst' has two roles"):
        parse_setup({"source": "src", "target": "dst", "mirror_targets": ["dst"]})
    with pytest.raises(ConfigError, match=r"'SIDEWAYS' is not one of OFFLINE, ONLINE_CUTOVER, ONLINE_PHASED"):
        parse_setup({"source": "src", "target": "dst", "strategy": "SIDEWAYS"})
    with pytest.raises(ConfigError, match=r"must be between 0 and 64, got 65"):
        parse_setup({"source": "src", "target": "dst", "restorers": 65})
    with pytest.raises(ConfigError, match=r"max_keys_per_second: must be 0 or more, got -5$"):
        parse_setup({"source": "src", "target": "dst", "rate_limits": {"max_keys_per_second": -5}})
    assert parse_setup({"source": "src", "target": "dst", "filters": {"types": ["graphdata"]}}).filters.types == (
        "graphdata",)  # a module's type name
    with pytest.raises(ConfigError, match=r"must be a whole number, got 'lots'"):
        parse_setup({"source": "src", "target": "dst", "restorers": "lots"})
    with pytest.raises(ConfigError, match=r"strategy ONLINE_CUTOVER moves live traffic"):
        parse_setup({"source": "src", "target": "dst", "strategy": "ONLINE_CUTOVER"})
    assert parse_setup({"source": "src", "target": "dst", "mode": "LOGICAL"}).mode is DataMovementMode.LOGICAL


def test_max_error_ratio():
    assert parse_setup({"source": "src", "target": "dst"}).max_error_ratio == DEFAULT_MAX_ERROR_RATIO == 0.1
    assert parse_setup({"source": "src", "target": "dst", "max_error_ratio": 0}).max_error_ratio == 0.0
    assert parse_setup({"source": "src", "target": "dst", "max_error_ratio": 1}).max_error_ratio == 1.0
    for bad in (-0.1, 1.5, "half", True):
        with pytest.raises(ConfigError, match=r"^setup.max_error_ratio: must be a number from 0 to 1"):
            parse_setup({"source": "src", "target": "dst", "max_error_ratio": bad})
    stored = {"source": "src", "target": "dst"}   # saved before the field existed
    assert RunSetup.from_stored(stored).max_error_ratio == DEFAULT_MAX_ERROR_RATIO


def test_stored_form_round_trip_through_the_store(tmp_path):
    stored = FULL_SETUP.to_stored()
    assert json.loads(json.dumps(stored)) == stored, "plain JSON"
    assert stored["strategy"] == "ONLINE_PHASED" and type(stored["strategy"]) is str
    assert stored["rollback_window_seconds"] == 3600.5 and stored["filters"]["dbs"] == [0, 3]
    path = tmp_path / "eve.db"
    store = Store(path)
    for name in FULL_SETUP.roles:
        store.create_endpoint(name, "redis", {"target": {"host": "h"}}, "")
    store.create_run("r", "CREATED")
    store.set_run_setup("r", stored, FULL_SETUP.roles)
    store.close()
    store = Store(path)
    try:
        loaded = guided_setup(store.get_run("r").setup)
    finally:
        store.close()
    assert loaded == FULL_SETUP
    assert loaded.strategy is Strategy.ONLINE_PHASED and loaded.filters.dbs == (0, 3)


def test_setups_older_versions_stored_still_load():
    # What parse_setup of the version before the typed setup saved: a dict, and before
    # keyspace notifications existed, without that key.
    legacy = {
        "source": "src", "target": "dst", "mirror_targets": ["m1"], "strategy": "ONLINE_CUTOVER", "mode": "AUTO",
        "conflict_policy": "NONE", "write_consistency": "TARGET_AUTHORITATIVE", "preserve_ttl": True,
        "filters": {"key_pattern": "", "dbs": [], "types": []},
        "rate_limits": {"max_keys_per_second": 300, "max_bytes_per_second": 0, "max_pipeline_depth": 0},
        "rollback_window_seconds": 0.0, "interlay": "app", "scripts_deterministic": False,
        "big_key_threshold_bytes": 0, "restorers": 0,
    }
    setup = RunSetup.from_stored(legacy)
    assert setup.strategy is Strategy.ONLINE_CUTOVER and setup.conflict_policy is ConflictPolicy.NONE
    assert setup.write_consistency is WriteConsistency.TARGET_AUTHORITATIVE
    assert setup.mirror_targets == ("m1",) and setup.rate_limits.max_keys_per_second == 300
    assert setup.keyspace_notifications is False, "a field added since takes its default"
    assert setup.to_stored() == {**legacy, "keyspace_notifications": False, "max_error_ratio": 0.1}, \
        "the same keys as before"
    assert guided_setup(None) is None
    assert guided_setup({"kind": "migrate", "source": {"address": "h:1"}}) is None, "eve migrate jobs"


def test_unreadable_stored_setup_is_a_state_error():
    with pytest.raises(StateError, match="saved setup cannot be read"):
        RunSetup.from_stored({"source": "src", "target": "dst", "strategy": "TELEPORT"})
    with pytest.raises(StateError, match="saved setup cannot be read"):
        RunSetup.from_stored({"strategy": "OFFLINE"})


def test_protobuf_round_trip():
    message = convert.setup_to_proto(FULL_SETUP)
    assert message.strategy == wpb.ONLINE_PHASED and message.write_consistency == wpb.BOTH_REQUIRED
    assert message.conflict_policy == wpb.MERGE and message.mode == wpb.DUMP_RESTORE
    assert message.HasField("preserve_ttl") and message.preserve_ttl is False
    assert message.rollback_window.ToNanoseconds() == 3_600_500_000_000
    assert convert.setup_from_proto(message) == FULL_SETUP
    minimal = RunSetup(source="src", target="dst")
    assert convert.setup_from_proto(convert.setup_to_proto(minimal)) == minimal
    # A request that leaves everything but the names unset gets the defaults.
    assert convert.setup_from_proto(wpb.RunSetup(source="src", target="dst")) == minimal
    # ... except preserve_ttl, which is optional in the proto so that false can be said.
    assert not convert.setup_from_proto(wpb.RunSetup(source="src", target="dst", preserve_ttl=False)).preserve_ttl


def test_protobuf_bad_values_name_the_field():
    with pytest.raises(ConfigError) as info:
        convert.setup_from_proto(wpb.RunSetup(source="src", target="dst", write_consistency=42))
    assert info.value.field == "setup.write_consistency"
    with pytest.raises(ConfigError) as info:
        convert.setup_from_proto(wpb.RunSetup(source="src", target="dst",
                                              rate_limits=wpb.RateLimits(max_keys_per_second=-3)))
    assert info.value.field == "setup.rate_limits.max_keys_per_second"
    message = wpb.RunSetup(source="src", target="dst")
    message.rollback_window.FromSeconds(-60)
    with pytest.raises(ConfigError) as info:
        convert.setup_from_proto(message)
    assert info.value.field == "setup.rollback_window"


def test_run_to_proto_carries_the_setup():
    record = type("Record", (), dict(id="r", state="CONFIGURED", description="", failure_reason="",
                                     create_time=1.0, update_time=2.0))()
    run = convert.run_to_proto(record, FULL_SETUP, (25, False))
    assert run.setup == convert.setup_to_proto(FULL_SETUP) and run.read_percent_target == 25
    assert not convert.run_to_proto(record, None).HasField("setup")


def test_config_changes_never_show_a_password():
    saved = {"target": {"host": "h", "port": 6379}, "write_credentials": {"username": "app", "password": "s3cret-1"}}
    current = {"target": {"host": "h", "port": 6380, "tls": True},
               "write_credentials": {"username": "app", "password": "s3cret-2"}}
    text = describe_config_change(saved, current)
    assert text == ("target.port: was 6379, now 6380; target.tls: was unset, now True; "
                    "write_credentials.password: changed")
    assert "s3cret" not in text
    gone = describe_config_change({"read_conn": {"host": "h", "password": "s3cret-1"}}, {"read_conn": {"host": "h"}})
    assert gone == "read_conn.password: changed" and "s3cret" not in gone


def test_endpoint_changes():
    same = {"target": {"host": "h", "port": 1}}
    endpoints = [RunEndpointRecord("src", "source", same, same),
                 RunEndpointRecord("dst", "target", same, {"target": {"host": "h", "port": 2}}),
                 RunEndpointRecord("m", "mirror", None, same)]
    assert endpoint_changes(endpoints, "since the run was approved") == (
        "endpoint 'dst' (target) changed since the run was approved (target.port: was 1, now 2)")
    assert endpoint_changes(endpoints[:1], "since the run was approved") == ""
