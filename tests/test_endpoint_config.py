"""Unit tests of the endpoint config parser: no servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eve.core.endpoints import (
    REDACTED,
    merge_redacted,
    parse_config,
    redact_config,
    validate_kind,
    validate_name,
)
from eve.core.errors import ConfigError

pytestmark = pytest.mark.timeout(60)
DATA = Path(__file__).parent / "data"


def brief(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def test_brief_conn_shape():
    config = parse_config(brief("brief_source_endpoint.json")["config"])
    assert config.read.address == "redis-source.internal:6379"
    assert config.write.address == "redis-source.internal:6379"
    assert config.admin == config.write
    assert config.read.protocol_version == 2 and not config.read.tls
    assert config.pool_size == 1


def test_brief_target_shape_per_role_credentials():
    config = parse_config(brief("brief_target_endpoint.json")["config"])
    assert {config.read.username, config.write.username, config.admin.username} == {"reader", "writer", "admin"}
    assert config.read.password == "<read-password>"
    assert config.write.tls and config.write.port == 6380


def test_defaults_and_fallbacks():
    config = parse_config({"write_conn": {"host": "h"}})
    assert config.read.port == 6379 and config.read == config.write == config.admin
    config = parse_config({"target": {"host": "h"}, "write_credentials": {"password": "p"}})
    assert config.admin.password == "p" and config.read.password is None


@pytest.mark.parametrize(
    "config, field",
    [
        ({}, "config"),
        ({"read_conn": {"port": 6379}}, "config.read_conn.host"),
        ({"read_conn": {"host": ""}}, "config.read_conn.host"),
        ({"target": {"host": "h", "port": 0}}, "config.target.port"),
        ({"target": {"host": "h", "port": 65536}}, "config.target.port"),
        ({"target": {"host": "h", "port": -1}}, "config.target.port"),
        ({"target": {"host": "h", "port": "x"}}, "config.target.port"),
        ({"target": {"host": "h", "protocol_version": 1}}, "config.target.protocol_version"),
        ({"target": {"host": "h", "protocol_version": 4}}, "config.target.protocol_version"),
        ({"target": {"host": "h"}, "read_conn": {"host": "h"}}, "config.target"),
        ({"target": {"host": "h"}, "write_conn": {"host": "h"}}, "config.target"),
        ({"target": {"host": "h"}, "connection_pool": {"multiplexed_connections": 0}},
         "config.connection_pool.multiplexed_connections"),
        ({"target": {"host": "h", "tls": "yes"}}, "config.target.tls"),
        ({"target": {"host": "h", "bogus": 1}}, "config.target.bogus"),
        ({"target": {"host": "h"}, "extra": {}}, "config.extra"),
        ({"read_conn": {"host": "h", "password": "p"}, "read_credentials": {"password": "q"}}, "config.read_conn"),
        ({"target": {"host": "h"}, "read_credentials": {"username": "u"}}, "config.read_credentials.password"),
        ({"target": "h:6379"}, "config.target"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_invalid_configs_name_the_field(config, field):
    with pytest.raises(ConfigError) as info:
        parse_config(config)
    assert info.value.field == field
    assert str(info.value).startswith(field)


def test_kind_and_name():
    assert validate_kind("redis") == "redis"
    assert validate_kind("Redis") == "redis"
    for bad in ("", "memcached", None):
        with pytest.raises(ConfigError, match="kind"):
            validate_kind(bad)
    assert validate_name("redis-source") == "redis-source"
    for bad in ("", "a b", "-x", "x" * 64, "a/b"):
        with pytest.raises(ConfigError, match="endpoint"):
            validate_name(bad)


def test_errors_never_echo_passwords():
    secret = "hunter2-very-secret"
    for config in ({"target": {"host": "h", "password": 12345}},
                   {"read_conn": {"host": "h", "password": secret}, "read_credentials": {"password": secret}}):
        with pytest.raises(ConfigError) as info:
            parse_config(config)
        assert secret not in str(info.value) and "12345" not in str(info.value)
    spec = parse_config({"target": {"host": "h", "password": secret}})
    assert secret not in repr(spec) and secret not in str(spec)


def test_redaction_and_update_merge():
    config = brief("brief_target_endpoint.json")["config"]
    redacted = redact_config(config)
    text = json.dumps(redacted)
    for secret in ("<read-password>", "<write-password>", "<admin-password>"):
        assert secret not in text
    assert redacted["read_credentials"]["password"] == REDACTED
    assert config["read_credentials"]["password"] == "<read-password>", "redaction must not mutate"
    merged = merge_redacted(redacted, config)
    assert merged == config
    with pytest.raises(ConfigError, match="config.target.password"):
        merge_redacted({"target": {"host": "h", "password": REDACTED}}, {"target": {"host": "h"}})


# -- property-based ------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
hosts = st.from_regex(r"[a-z][a-z0-9.-]{0,30}", fullmatch=True)
connections = st.fixed_dictionaries(
    {"host": hosts},
    optional={
        "port": st.integers(min_value=1, max_value=65535),
        "tls": st.booleans(),
        "protocol_version": st.sampled_from([2, 3]),
    },
)
field_names = st.sampled_from(["target", "read_conn", "write_conn", "admin_conn", "read_credentials",
                               "write_credentials", "admin_credentials", "connection_pool", "host", "port",
                               "tls", "protocol_version", "password", "username", "multiplexed_connections"])
configs_with_junk = st.recursive(
    json_values,
    lambda children: st.dictionaries(field_names | st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(configs_with_junk)
def test_parser_total_on_arbitrary_input(config):
    """Any JSON-like input either parses or raises ConfigError naming a config field."""
    try:
        parsed = parse_config(config)
    except ConfigError as exc:
        assert exc.field and exc.field.startswith("config")
    else:
        for spec in (parsed.read, parsed.write, parsed.admin):
            assert 1 <= spec.port <= 65535 and spec.protocol_version in (2, 3) and spec.host


@settings(max_examples=200, deadline=None)
@given(read=connections, write=connections, pool=st.integers(min_value=1, max_value=1024),
       password=st.text(min_size=6, max_size=30).map(lambda p: "pw!" + p))
def test_valid_conn_shape_round_trips(read, write, pool, password):
    config = {"read_conn": {**read, "password": password}, "write_conn": write,
              "connection_pool": {"multiplexed_connections": pool}}
    parsed = parse_config(config)
    assert parsed.read.host == read["host"] and parsed.read.port == read.get("port", 6379)
    assert parsed.write.protocol_version == write.get("protocol_version", 2)
    assert parsed.read.password == password and parsed.pool_size == pool
    assert password not in repr(parsed)
    redacted = redact_config(config)
    assert redacted["read_conn"]["password"] == REDACTED
    assert parse_config(merge_redacted(redacted, config)) == parsed


@settings(max_examples=200, deadline=None)
@given(conn=connections, port=st.integers().filter(lambda p: not 1 <= p <= 65535))
def test_ports_outside_range_always_refused(conn, port):
    with pytest.raises(ConfigError) as info:
        parse_config({"target": {**conn, "port": port}})
    assert info.value.field == "config.target.port"


@pytest.mark.parametrize("host", ["127.0.0.1:6379", "redis.internal:6380", "[::1]:6379"])
def test_a_host_with_a_port_in_it_is_refused(host):
    with pytest.raises(ConfigError, match="carries a port") as info:
        parse_config({"target": {"host": host}})
    assert info.value.field == "config.target.host"


@pytest.mark.parametrize("host,address", [("::1", "[::1]:6379"), ("[::1]", "[::1]:6379"),
                                          ("fe80::1", "[fe80::1]:6379"), ("redis-1.internal", "redis-1.internal:6379")])
def test_hosts_and_ipv6_literals_are_accepted(host, address):
    assert parse_config({"target": {"host": host}}).read.address == address


def test_a_tls_ca_file_must_exist_and_hold_a_certificate(tmp_path):
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match="does not exist") as info:
        parse_config({"target": {"host": "h", "tls": True, "tls_ca_file": str(missing)}})
    assert info.value.field == "config.target.tls_ca_file"
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="no PEM CA certificate") as info:
        parse_config({"read_conn": {"host": "h", "tls": True, "tls_ca_file": str(garbage)}})
    assert info.value.field == "config.read_conn.tls_ca_file"
