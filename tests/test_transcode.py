"""DUMP payload transcoding (eve.redis.rdb): the CRC on known vectors, the table of what each
target format reads, and the table checked on the real engines for every type and encoding."""

from __future__ import annotations

from typing import Any

import keyspace
import pytest

from eve.redis.rdb import (
    AS_IS,
    LOGICAL,
    RELABEL,
    REDIS,
    VALKEY,
    TargetFormat,
    crc64,
    describe_type,
    payload_rdb_version,
    rdb_version_of,
    relabel,
    target_format,
)

ENGINES = ("redis-7.0", "redis-8.2", "valkey-8.1", "valkey-9.1")
REDIS_70 = TargetFormat(REDIS, "7.0.15", 10)
REDIS_82 = TargetFormat(REDIS, "8.2.3", 12)
VALKEY_81 = TargetFormat(VALKEY, "8.1.8", 11)
VALKEY_91 = TargetFormat(VALKEY, "9.1.2", 80)

# DUMP of SET k hello, and of SADD s a b, as each engine wrote them here.
HELLO = {
    "redis-7.0": b"\x00\x05hello\n\x00cr\xdfve4 \n",
    "redis-8.2": b"\x00\x05hello\x0c\x00\xa8\x04\xeb\xb6\x9f\x1e\xbeC",
    "valkey-8.1": b"\x00\x05hello\x0b\x00\n\xadb\x05\x98\xab\xc9\x83",
    "valkey-9.1": b"\x00\x05helloP\x00\xacX\x16\xe7\xfbfG\xfe",
}
SET_LISTPACK = {
    "valkey-8.1": b"\x14\r\r\x00\x00\x00\x02\x00\x81a\x02\x81b\x02\xff\x0b\x00\n\xec\n\xb4I\xa3\xd6T",
    "valkey-9.1": b"\x14\r\r\x00\x00\x00\x02\x00\x81a\x02\x81b\x02\xffP\x00\xac\x19~V*nX)",
}


# -- the CRC and the relabelling, on known vectors -------------------------------------------------


def test_crc64_is_crc64_redis():
    assert crc64(b"123456789") == 0xE9C6D914C4B8D9CA   # the catalogue's check value (Redis src/crc64.c)
    assert crc64(b"") == 0


@pytest.mark.parametrize("engine", sorted(HELLO))
def test_crc64_matches_what_the_servers_wrote(engine):
    payload = HELLO[engine]
    assert crc64(payload[:-8]).to_bytes(8, "little") == payload[-8:]


def test_relabelled_payload_is_byte_for_byte_what_the_older_server_writes():
    assert relabel(HELLO["redis-8.2"], 10) == HELLO["redis-7.0"]
    assert relabel(HELLO["valkey-9.1"], 11) == HELLO["valkey-8.1"]
    assert relabel(HELLO["redis-7.0"], 80) == HELLO["valkey-9.1"]
    assert relabel(SET_LISTPACK["valkey-9.1"], 11) == SET_LISTPACK["valkey-8.1"]
    assert payload_rdb_version(relabel(HELLO["redis-8.2"], 11)) == 11


@pytest.mark.parametrize("size", [0, 1000, 64 << 10, 3 << 20])   # below and above the in-place size
def test_relabelled_crc_is_the_crc_of_the_relabelled_payload(size):
    payload = b"\x00" + bytes(range(256)) * (size // 256) + (12).to_bytes(2, "little") + bytes(8)
    relabelled = relabel(payload, 10)
    assert relabelled[:-10] == payload[:-10] and payload_rdb_version(relabelled) == 10
    assert relabelled[-8:] == crc64(relabelled[:-8]).to_bytes(8, "little")
    assert crc64(relabelled[-9:-8], crc64(relabelled[:-9])) == crc64(relabelled[:-8]), "a CRC goes on from another"


# -- the table ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "version", "rdb"), [
    (REDIS, "5.0.14", 9), (REDIS, "6.2.7", 9), (REDIS, "7.0.15", 10), (REDIS, "7.2.4", 11), (REDIS, "7.4.1", 12),
    (REDIS, "8.2.3", 12), (REDIS, "9.0.0", 12), (VALKEY, "7.2.5", 11), (VALKEY, "8.1.8", 11),
    (VALKEY, "9.0.0", 80), (VALKEY, "9.1.2", 80),
])
def test_rdb_version_of_each_release(family, version, rdb):
    assert rdb_version_of(family, version) == rdb


def test_target_format_from_info_server():
    assert target_format({"redis_version": "7.2.4", "valkey_version": "9.1.2"}) == VALKEY_91
    assert target_format({"redis_version": "8.2.3"}) == REDIS_82
    assert str(VALKEY_81) == "valkey 8.1.8 (RDB 11)"


def test_versions_each_format_accepts():
    assert [v for v in (9, 10, 11, 12, 80) if REDIS_70.accepts_version(v)] == [9, 10]
    assert [v for v in (9, 10, 11, 12, 80) if REDIS_82.accepts_version(v)] == [9, 10, 11, 12]
    assert [v for v in (9, 10, 11, 12, 80) if VALKEY_81.accepts_version(v)] == [9, 10, 11]
    # Valkey 9 refuses 12..79 while rdb-version-check is strict (its default).
    assert [v for v in (9, 10, 11, 12, 80) if VALKEY_91.accepts_version(v)] == [9, 10, 11, 80]


def test_shared_type_codes_per_format():
    rdb9 = TargetFormat(REDIS, "6.2.7", 9)
    assert [code for code in range(30) if rdb9.knows_type(code)] == [0, 1, 2, 3, 4, 5, *range(9, 16)]
    assert [code for code in range(30) if REDIS_70.knows_type(code)] == [0, 1, 2, 3, 4, 5, *range(9, 20)]
    for target in (REDIS_82, VALKEY_81, VALKEY_91):
        # 22 and up differ between the families; module values (6, 7) are the module's own format.
        assert [code for code in range(30) if target.knows_type(code)] == [0, 1, 2, 3, 4, 5, *range(9, 22)]


def test_plan_per_payload():
    assert REDIS_82.plan(HELLO["redis-8.2"]) == AS_IS
    assert VALKEY_91.plan(HELLO["redis-8.2"]) == RELABEL
    assert REDIS_70.plan(HELLO["valkey-9.1"]) == RELABEL
    assert REDIS_70.plan(SET_LISTPACK["valkey-9.1"]) == LOGICAL   # RDB 10 has no set-listpack
    assert REDIS_82.plan(SET_LISTPACK["valkey-9.1"]) == RELABEL
    field_ttl_hash = b"\x18" + HELLO["redis-8.2"][1:]
    assert VALKEY_91.plan(field_ttl_hash) == LOGICAL              # 24: never relabelled
    assert describe_type(20) == "set-listpack (20)" and describe_type(99) == "unknown (99)"


# -- the table on the real engines -----------------------------------------------------------------------


def _format_of(client: Any) -> TargetFormat:
    return target_format({str(k): str(v) for k, v in client.info("server").items()})


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("source_engine", ENGINES)
def test_every_type_and_encoding_transcoded_to_every_other_engine(server_factory, source_engine):
    """DUMP on the source, transcode per the table, RESTORE on each other engine, compare the value.
    Payloads the table sends to a logical copy are checked to be refused even when relabelled, so
    the table is neither too bold nor too timid."""
    source = server_factory(source_engine).client()
    keys = keyspace.fill_every_encoding(source)
    payloads = {name: source.dump(key) for name, key in keys.items()}
    assert all(payloads.values())
    planned: dict[str, set[str]] = {}
    for target_engine in ENGINES:
        if target_engine == source_engine:
            continue
        target = server_factory(target_engine).client()
        fmt = _format_of(target)
        for name, payload in payloads.items():
            how = fmt.plan(payload)
            planned.setdefault(how, set()).add(f"{target_engine}:{name}")
            if how == LOGICAL:
                with pytest.raises(Exception, match="payload version or checksum|Bad data format"):
                    target.restore(keys[name], 0, relabel(payload, fmt.rdb))
                continue
            target.restore(keys[name], 0, relabel(payload, fmt.rdb) if how == RELABEL else payload)
        restored = {key for name, key in keys.items() if fmt.plan(payloads[name]) != LOGICAL}
        assert keyspace.assert_same(source, target, keys=restored) == len(restored)
    # What the engines measured here say (DESIGN.md 8): only set-listpack and stream-listpacks-3
    # of RDB 11+ sources, towards Redis 7.0, need a logical copy.
    logical = {entry.split(":", 1)[0] + ":" + describe_type(payloads[entry.split(":", 1)[1]][0])
               for entry in planned.get(LOGICAL, set())}
    if source_engine == "redis-7.0":
        assert logical == set() and RELABEL not in planned
    else:
        assert logical == {"redis-7.0:set-listpack (20)", "redis-7.0:stream-listpacks-3 (21)"}
