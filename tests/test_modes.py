"""Data movement modes end to end on real servers (DESIGN.md 4, Modes): AUTO between every ordered
pair of the four engines (payloads relabelled, a logical copy where the target cannot read them),
LOGICAL from each engine to itself, the conflict policies on logical copies, and copies that fail."""

from __future__ import annotations

import itertools
from pathlib import Path

import keyspace
import pytest
from eve_process import EveServer, migrate, summary, wait_state

from eve.core.store import Store
from eve.v1 import endpoints_pb2 as epb
from eve.v1 import workflows_pb2 as wpb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ENGINES = ("redis-7.0", "redis-8.2", "valkey-8.1", "valkey-9.1")
QUICK_AUTO = (("redis-8.2", "valkey-9.1"), ("valkey-9.1", "redis-7.0"))
QUICK_LOGICAL = "valkey-9.1"
HOUR_MS = 3_600_000
DBS = (0, 1)


FIELD_TTL_ENGINES = ("redis-8.2", "valkey-9.1")   # HPEXPIREAT: Redis 7.4+, Valkey 9
BIG_KEY_BYTES = 1 << 20   # --big-key-bytes: the big keys below are copied in chunks, the rest whole
LIBRARY = ("#!lua name=evelib\n"
           "redis.register_function('eve_echo', function(keys, args) return args[1] end)\n")
FIELD_TTL_KEY = b"ttl:fields\xff"
NO_FUNCTIONS = ("redis-6.2",)   # FUNCTION arrived in Redis 7.0


def _fill_two_dbs(server) -> int:
    """Every type (tests/keyspace.py: random values, TTLs, binary keys) and every encoding, in db 0
    and db 1; in db 0 also a stream with consumer groups and pending entries, big keys of every
    type (above BIG_KEY_BYTES), per-field hash TTLs where the engine has them, and a function
    library. Returns the number of keys."""
    total = 0
    for db in DBS:
        client = server.client(db=db)
        total += len(keyspace.fill(client, 120, prefix=f"db{db}", seed=db))
        total += len(keyspace.fill_every_encoding(client, prefix=f"enc{db}", ttl_ms=HOUR_MS if db else 0))
    client = server.client(db=0)
    keyspace.fill_stream_with_groups(client, b"groups:stream\xff")
    total += 1 + len(keyspace.fill_big_keys(client, 20_000, string_bytes=2 << 20))
    if server.engine.name in FIELD_TTL_ENGINES:
        keyspace.fill_field_ttls(client, FIELD_TTL_KEY)
        total += 1
    if server.engine.name not in NO_FUNCTIONS:
        client.execute_command("FUNCTION", "LOAD", LIBRARY)
    return total


def _libraries(client) -> list[tuple[bytes, bytes]]:
    libraries = client.execute_command("FUNCTION", "LIST", "WITHCODE")
    return sorted((dict(_pairs(lib))[b"library_name"], dict(_pairs(lib))[b"library_code"]) for lib in libraries)


def _pairs(item) -> list:
    if isinstance(item, dict):
        return [(k.encode() if isinstance(k, str) else k, v) for k, v in item.items()]
    return [(item[i].encode() if isinstance(item[i], str) else item[i], item[i + 1]) for i in range(0, len(item), 2)]


def _assert_copied(source, target, *, field_ttls_lost: bool = False) -> None:
    for db in DBS:
        src, dst = source.client(db=db), target.client(db=db)
        if db == 0 and field_ttls_lost:
            assert not dst.exists(FIELD_TTL_KEY), "a hash whose field TTLs the target cannot hold was written"
            src.delete(FIELD_TTL_KEY)   # the one error key: every other key is compared
        assert keyspace.assert_same(src, dst) == dst.dbsize(), f"db {db}: the target has keys the source lacks"
    src, dst = source.client(), target.client()
    entries_read = source.engine.name != "redis-6.2"   # 6.2 does not count entries read
    for stream in (b"groups:stream\xff", b"big:stream\xff"):
        assert (keyspace.groups_of(dst, stream, entries_read=entries_read)
                == keyspace.groups_of(src, stream, entries_read=entries_read))
    if not field_ttls_lost and src.exists(FIELD_TTL_KEY):
        assert keyspace.field_ttls_of(dst, FIELD_TTL_KEY) == keyspace.field_ttls_of(src, FIELD_TTL_KEY)
    if source.engine.name not in NO_FUNCTIONS:
        assert _libraries(dst) == _libraries(src)


def _copy(server_factory, tmp_path: Path, source_engine: str, target_engine: str, mode: str) -> None:
    source, target = server_factory(source_engine), server_factory(target_engine)
    keys = _fill_two_dbs(source)
    # A hash with field TTLs cannot go to a target without them: an error key saying so, the rest exact.
    lost = source_engine in FIELD_TTL_ENGINES and target_engine not in FIELD_TTL_ENGINES
    # URLs without a db: every db is copied into the db it comes from.
    result = migrate("--source", source.url[:-2], "--target", target.url[:-2], "--mode", mode, "--json",
                     "--big-key-bytes", str(BIG_KEY_BYTES), state=tmp_path / "s.db", timeout=150)
    assert result.returncode == (1 if lost else 0), result.stderr
    report = summary(result)
    assert (report["scanned"], report["restored"], report["error_keys"]) == (keys, keys - lost, int(lost)), report
    if lost:
        assert "per-field hash TTLs" in migrate_errors(tmp_path / "s.db")
    _assert_copied(source, target, field_ttls_lost=lost)


# -- AUTO between every ordered pair, LOGICAL from each engine to itself -------------------------------


@pytest.mark.parametrize(("source_engine", "target_engine"), QUICK_AUTO, ids="->".join)
def test_auto_copies_every_type_and_encoding(server_factory, tmp_path, source_engine, target_engine):
    _copy(server_factory, tmp_path, source_engine, target_engine, "auto")


@pytest.mark.slow
@pytest.mark.parametrize(("source_engine", "target_engine"),
                         [pair for pair in itertools.product(ENGINES, ENGINES) if pair not in QUICK_AUTO],
                         ids="->".join)
def test_auto_between_every_pair_of_engines(server_factory, tmp_path, source_engine, target_engine):
    _copy(server_factory, tmp_path, source_engine, target_engine, "auto")


# Redis 6.2 (RDB 9, ziplist encodings, no FUNCTION) as a source to every engine (issue 23).
QUICK_FROM_6_2 = "redis-7.0"


def test_auto_from_redis_6_2(server_factory, tmp_path):
    _copy(server_factory, tmp_path, "redis-6.2", QUICK_FROM_6_2, "auto")


@pytest.mark.slow
@pytest.mark.parametrize("target_engine", [engine for engine in ENGINES if engine != QUICK_FROM_6_2])
def test_auto_from_redis_6_2_to_every_engine(server_factory, tmp_path, target_engine):
    _copy(server_factory, tmp_path, "redis-6.2", target_engine, "auto")


def test_logical_copies_every_type_and_encoding(server_factory, tmp_path):
    _copy(server_factory, tmp_path, QUICK_LOGICAL, QUICK_LOGICAL, "logical")


@pytest.mark.slow
@pytest.mark.parametrize("engine", [engine for engine in ENGINES if engine != QUICK_LOGICAL])
def test_logical_from_each_engine_to_itself(server_factory, tmp_path, engine):
    _copy(server_factory, tmp_path, engine, engine, "logical")


# -- conflict policies on logical copies -------------------------------------------------------------


def _conflicts(server_factory):
    """Valkey 9.1 -> Redis 7.0: sets (set-listpack) and streams go logically in AUTO."""
    source, target = server_factory("valkey-9.1"), server_factory("redis-7.0")
    src, dst = source.client(), target.client()
    src.sadd("set", "x", "y"), dst.sadd("set", "y", "z")
    src.xadd("stream", {"a": "1"}, id="1-1"), dst.xadd("stream", {"b": "2"}, id="5-5")
    src.sadd("same", "m"), dst.sadd("same", "m")          # equal on both sides
    src.sadd("new", "only-source")
    dst.set("mixed", "string"), src.sadd("mixed", "member")
    return source, target, src, dst


@pytest.mark.parametrize("mode", ["auto", "logical"])
def test_none_keeps_the_target_key_of_a_logical_copy(server_factory, tmp_path, mode):
    source, target, src, dst = _conflicts(server_factory)
    result = migrate("--source", source.url, "--target", target.url, "--mode", mode, "--conflict", "none", "--json",
                     state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    report = summary(result)
    assert (report["restored"], report["conflicts"], report["error_keys"]) == (2, 3, 0), report
    assert dst.smembers("set") == {b"y", b"z"} and [entry[0] for entry in dst.xrange("stream")] == [b"5-5"]
    assert dst.get("mixed") == b"string" and dst.smembers("new") == {b"only-source"}
    store = Store(tmp_path / "s.db")
    try:
        assert {key for _, key, _, _ in store.conflict_keys(report["run_id"])} == {b"set", b"stream", b"mixed"}
    finally:
        store.close()


def test_merge_and_replace_on_logical_copies(server_factory, tmp_path):
    source, target, src, dst = _conflicts(server_factory)
    dst.expire("set", 5000)
    merged = migrate("--source", source.url, "--target", target.url, "--mode", "logical", "--conflict", "merge",
                     "--json", state=tmp_path / "merge.db")
    assert merged.returncode == 0, merged.stderr
    assert summary(merged)["conflicts"] == 2, "a stream has no merge semantics, a type mismatch is a conflict"
    assert dst.smembers("set") == {b"x", b"y", b"z"} and 0 < dst.ttl("set") <= 5000, "the target keeps its TTL"
    assert [entry[0] for entry in dst.xrange("stream")] == [b"5-5"] and dst.get("mixed") == b"string"
    replaced = migrate("--source", source.url, "--target", target.url, "--mode", "logical", "--json",
                       state=tmp_path / "replace.db")
    assert replaced.returncode == 0, replaced.stderr
    assert keyspace.assert_same(src, dst) == 5


def test_dump_restore_has_no_logical_fallback(server_factory, tmp_path):
    source, target = server_factory("valkey-9.1"), server_factory("redis-7.0")
    source.client().sadd("set", "x"), source.client().set("string", "v")
    result = migrate("--source", source.url, "--target", target.url, "--mode", "dump-restore", "--json",
                     state=tmp_path / "s.db")
    assert result.returncode == 1
    report = summary(result)
    assert (report["restored"], report["error_keys"]) == (1, 1) and "failure" not in report
    listed = migrate_errors(tmp_path / "s.db")
    assert "cannot restore the set-listpack (20) payload of RDB 80" in listed
    assert target.client().get("string") == b"v" and not target.client().exists("set")


def migrate_errors(state: Path) -> str:
    store = Store(state)
    try:
        run = store.list_runs()[-1].id
        return "\n".join(record.reason for record in store.error_keys(run))
    finally:
        store.close()


# -- copies that fail ----------------------------------------------------------------------------


def _graphs(server_factory, count: int = 3):
    """Redis 8.2 with FalkorDB holding graph keys only: a module type no other engine can hold."""
    source = server_factory("redis-8.2", with_module=True)
    for i in range(count):
        source.client().execute_command("GRAPH.QUERY", f"graph:{i}", "CREATE (:A {x: 1})")
    return source


def test_cli_fails_with_the_reason_when_no_key_arrives(server_factory, tmp_path):
    source, target = _graphs(server_factory), server_factory("valkey-9.1")
    # FalkorDB keeps telemetry streams beside its graphs: the graphs alone are copied. The target
    # lacks the module: --skip-module-keys asks to copy anyway (else exit 2, tests/test_modules.py).
    result = migrate("--source", source.url, "--target", target.url, "--type", "graphdata", "--json",
                     "--skip-module-keys", state=tmp_path / "s.db")
    assert result.returncode == 1
    report = summary(result)
    assert (report["scanned"], report["restored"], report["error_keys"]) == (3, 0, 3)
    assert report["failure"].startswith("no key reached the target: all 3 keys scanned failed")
    assert "cannot be copied logically" in report["failure"], "the most common reason is named"
    assert "eve migrate: failed: no key reached the target" in result.stderr
    store = Store(tmp_path / "s.db")
    try:
        job = store.list_runs()[-1]
        assert job.state == "FAILED" and job.failure_reason == report["failure"]
    finally:
        store.close()


def test_resume_keeps_the_jobs_mode(server_factory, tmp_path):
    source, target = server_factory("valkey-9.1"), server_factory("redis-7.0")
    keyspace.fill(source.client(), 30)
    state = tmp_path / "s.db"
    first = migrate("--source", source.url, "--target", target.url, "--mode", "logical", "--json", state=state)
    assert first.returncode == 0, first.stderr
    store = Store(state)
    store.set_run_state(summary(first)["run_id"], "FAILED", "pretend it stopped")
    store.close()
    other = migrate("--source", source.url, "--target", target.url, "--resume", "--mode", "auto", state=state)
    assert other.returncode != 0 and "mode: saved 'LOGICAL', now 'AUTO'" in other.stderr
    resumed = migrate("--source", source.url, "--target", target.url, "--resume", "--json", state=state)
    assert resumed.returncode == 0, resumed.stderr
    assert summary(resumed)["run_id"] == summary(first)["run_id"]


# -- through the API ----------------------------------------------------------------------------------


def _endpoint(eve: EveServer, name: str, server, *, user: tuple[str, str] | None = None) -> None:
    credentials = epb.Credentials(username=user[0], password=user[1]) if user else None
    eve.endpoints().CreateEndpoint(epb.CreateEndpointRequest(
        endpoint=name, kind="redis", config=epb.EndpointConfig(
            target=epb.Connection(host=server.host, port=server.port), write_credentials=credentials)))


def _run(eve: EveServer, run: str, source: str, target: str, **setup) -> wpb.Run:
    """Create, set up, prepare, acknowledge every issue and approve; the run once it stops moving."""
    stub = eve.migrations()
    stub.CreateRun(wpb.CreateRunRequest(id=run))
    stub.SubmitSetup(wpb.SubmitSetupRequest(run=run, setup=wpb.RunSetup(source=source, target=target, **setup)))
    stub.Prepare(wpb.PrepareRequest(run=run))
    wait_state(stub, run, "READY")
    for issue in stub.GetCompatibility(wpb.GetCompatibilityRequest(run=run)).issues:
        stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=run, issue_id=issue.id, notes="seen"))
    stub.Approve(wpb.ApproveRequest(run=run))
    return wait_state(stub, run, "CUT_OVER", "FAILED")


def test_api_logical_run_and_a_run_in_which_every_key_fails(eve, server_factory):
    source, target = server_factory("valkey-9.1"), server_factory("redis-7.0")
    keyspace.fill(source.client(), 60)
    _endpoint(eve, "src", source)
    _endpoint(eve, "dst", target)
    stub = eve.migrations()
    logical = _run(eve, "logical", "src", "dst", mode=wpb.LOGICAL)
    assert logical.state == wpb.CUT_OVER and logical.setup.mode == wpb.LOGICAL
    testrun = stub.GetTestRun(wpb.GetTestRunRequest(run="logical"))
    assert sum(r.logical for r in testrun.results) == sum(r.keys for r in testrun.results) > 0
    assert keyspace.assert_same(source.client(), target.client()) == 60

    # A target user allowed Eve's own scratch and probe keys only: Prepare passes, every key fails.
    target.client().flushall()
    target.client().execute_command("ACL", "SETUSER", "scratch-only", "on", ">pw", "~eve:*", "+@all")
    _endpoint(eve, "scratch-only", target, user=("scratch-only", "pw"))
    nothing = _run(eve, "nothing", "src", "scratch-only", max_error_ratio=1)
    assert nothing.state == wpb.FAILED
    assert nothing.failure_reason.startswith("copy failed: no key reached the target: all 60 keys scanned failed")
    assert "NOPERM" in nothing.failure_reason

    too_many = _run(eve, "too-many", "src", "dst", max_error_ratio=0, mode=wpb.DUMP_RESTORE)
    assert too_many.state == wpb.FAILED
    assert "20 error keys for 60 keys scanned (33.3%), above the allowed 0.0%" in too_many.failure_reason
    assert "cannot restore the set-listpack (20) payload of RDB 80" in too_many.failure_reason


# -- when a finished copy failed (no server) ---------------------------------------------------------


def test_copy_failure_rules(tmp_path):
    from eve.bulk.error_keys import DEFAULT_MAX_ERROR_RATIO, copy_failure
    from eve.bulk.pipeline import Progress
    from eve.core.frames import ErrorKeyRow

    store = Store(tmp_path / "s.db")
    try:
        store.create_run("r", "COPYING", {"kind": "migrate"})
        store.add_error_keys("r", [ErrorKeyRow(b"k%d" % i, 0, "n", "set", 10, "no room for sets", 1) for i in range(3)]
                             + [ErrorKeyRow(b"m", 0, "n", "module", 10, "a module key", 1)])
        assert copy_failure(store, "r", Progress(scanned=100, restored=100)) is None
        assert copy_failure(store, "r", Progress(scanned=100, restored=96, failed=4)) is None, "4% is allowed"
        assert copy_failure(store, "r", Progress(scanned=100, restored=0, conflicts=96, failed=4)) is None, \
            "conflicts are the policy's choice"
        everything = copy_failure(store, "r", Progress(scanned=4, failed=4), max_error_ratio=1.0)
        assert everything == ("no key reached the target: all 4 keys scanned failed (4 error keys); "
                              "most common reason (3 keys): no room for sets")
        too_many = copy_failure(store, "r", Progress(scanned=100, restored=80, failed=20))
        assert too_many is not None and too_many.startswith(
            f"20 error keys for 100 keys scanned (20.0%), above the allowed {DEFAULT_MAX_ERROR_RATIO:.1%}")
        assert copy_failure(store, "r", Progress(scanned=100, restored=99, failed=1), max_error_ratio=0) is not None
    finally:
        store.close()
