"""The bulk copy and Verify on a Ray cluster (issue 22): a local multi-node cluster on this
machine (``ray.cluster_utils.Cluster``), kept small: few CPUs per node, no dashboard, a
100 MB object store, no worker logs on the driver. Every test leaves no Ray process behind.

Only the first test runs in the fast step; a Ray cluster costs seconds to start, and the
fault and end-to-end tests are marked slow."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eve_process import migrate, summary
from keyspace import assert_same, fill

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402 - after importorskip

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

NODE = {"num_cpus": 2, "object_store_memory": 100 * 1024 * 1024}
HEAD = {**NODE, "include_dashboard": False}


def url(server, db: int | None = None) -> str:
    return f"redis://127.0.0.1:{server.port}" + (f"/{db}" if db is not None else "")


def start_ray(nodes: int) -> Cluster:
    cluster = Cluster(initialize_head=True, head_node_args=HEAD)
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**NODE)
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


@pytest.fixture(scope="module")
def ray_cluster():
    """Three Ray nodes on this machine, shared by the tests that do not change it."""
    cluster = start_ray(3)
    try:
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def own_ray_cluster():
    """Three Ray nodes a test may take apart."""
    clusters: list[Cluster] = []

    def start(nodes: int = 3) -> Cluster:
        clusters.append(start_ray(nodes))
        return clusters[-1]

    try:
        yield start
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for cluster in clusters:
            cluster.shutdown()


def test_standalone_to_three_master_cluster_on_ray(ray_cluster, server_factory, cluster_factory, tmp_path):
    source = server_factory("redis-7.0")
    target = cluster_factory("valkey-9.1", masters=3)
    fill(source.client(), 1200, binary=False)
    result = migrate("--source", url(source), "--target", target.url, "--ray", ray_cluster.address, "--json",
                     "--scan-count", "100", state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    report = summary(result)
    assert report["scanned"] == 1200 and report["restored"] == 1200 and report["error_keys"] == 0
    assert report["restarts"] == 0
    assert assert_same(source.client(), target.client()) == 1200


def _wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _start_migrate(*args: str, state: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "eve", "-v", "migrate", *args, "--state", str(state), "--no-progress", "--json"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, timeout: float = 150) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"eve migrate did not end; stderr:\n{err}") from None
    return process.returncode, out, err


def test_a_ray_address_nobody_listens_on_fails_at_once(server_factory, tmp_path):
    source, target = server_factory("redis-7.0"), server_factory("redis-7.0")
    source.client().set("k", "v")
    with socket.socket() as probe:   # a port bound and closed: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = migrate("--source", url(source), "--target", url(target), "--ray", f"127.0.0.1:{port}",
                     state=tmp_path / "s.db", timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in result.stderr
    assert target.client().dbsize() == 0
    blank = migrate("--source", url(source), "--target", url(target), "--ray", " ", state=tmp_path / "s.db")
    assert blank.returncode == 2 and "a Ray address is 'local'" in blank.stderr, blank.stderr


@pytest.mark.slow
def test_three_masters_to_two_masters_on_ray(ray_cluster, cluster_factory, tmp_path):
    source = cluster_factory("redis-7.0", masters=3)
    target = cluster_factory("valkey-9.1", masters=2)
    fill(source.client(), 1500, binary=False)
    result = migrate("--source", source.url, "--target", target.url, "--ray", ray_cluster.address, "--json",
                     "--restorers", "1", state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    report = summary(result)
    assert report["scanned"] == 1500 and report["restored"] == 1500 and report["error_keys"] == 0
    assert assert_same(source.client(), target.client()) == 1500


@pytest.mark.slow
def test_every_db_values_and_ttls_on_ray(ray_cluster, server_factory, tmp_path):
    source = server_factory("redis-7.0")
    target = server_factory("valkey-8.1")
    for db in (0, 3, 9):
        fill(source.client(db=db), 400, prefix=f"d{db}", seed=db)
    result = migrate("--source", url(source), "--target", url(target), "--ray", ray_cluster.address, "--json",
                     "--restorers", "1", state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    assert summary(result)["restored"] == 1200
    for db in (0, 3, 9):
        assert assert_same(source.client(db=db), target.client(db=db)) == 400


@pytest.mark.slow
def test_a_node_removed_mid_copy_restarts_from_the_cursors(own_ray_cluster, server_factory, tmp_path):
    cluster = own_ray_cluster(3)
    source = server_factory("redis-7.0")
    target = server_factory("redis-7.0")
    for db in (0, 2):
        fill(source.client(db=db), 4000, prefix=f"d{db}", seed=db, binary=False)
    process = _start_migrate("--source", url(source), "--target", url(target), "--ray", cluster.address,
                             "--restorers", "2", "--scan-count", "100", "--max-keys-per-sec", "1500",
                             state=tmp_path / "s.db")
    try:
        _wait_for(lambda: target.client().dbsize() >= 1500 or process.poll() is not None, 90, "the copy to start")
        assert process.poll() is None, "the copy ended before a node could be removed"
        # Every node holds restorers (SPREAD, two per node): this one's are lost mid-copy.
        cluster.remove_node(next(iter(cluster.worker_nodes)))
        code, out, err = _finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, err
    report = summary(subprocess.CompletedProcess([], code, out, err))
    assert report["restarts"] >= 1, report
    reasons = report["restart_reasons"]
    named = [reason for reason in reasons if "Ray node" in reason and ("died with" in reason or "lost on" in reason)]
    assert named, (reasons, err[-4000:])
    # Nothing lost, nothing counted twice.
    assert report["scanned"] == 8000 and report["restored"] == 8000 and report["error_keys"] == 0
    for db in (0, 2):
        assert assert_same(source.client(db=db), target.client(db=db)) == 4000


@pytest.mark.slow
def test_resume_after_the_ray_cluster_went_away(own_ray_cluster, server_factory, tmp_path):
    cluster = own_ray_cluster(2)
    source = server_factory("redis-7.0")
    target = server_factory("redis-7.0")
    fill(source.client(), 6000, binary=False)
    state = tmp_path / "s.db"
    process = _start_migrate("--source", url(source), "--target", url(target), "--ray", cluster.address,
                             "--restorers", "1", "--scan-count", "100", "--max-keys-per-sec", "500", state=state)
    try:
        _wait_for(lambda: target.client().dbsize() >= 1000 or process.poll() is not None, 90, "the copy to start")
        assert process.poll() is None, "the copy ended before the Ray cluster could go"
        cluster.shutdown()
        code, out, err = _finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 2, err     # unreachable: what an unreachable server gives too
    assert "Ray cluster" in err and "--resume" in err, err
    result = migrate("--source", url(source), "--target", url(target), "--resume", "--json", "--restorers", "1",
                     state=state)
    assert result.returncode == 0, result.stderr
    report = summary(result)
    assert report["scanned"] == 6000 and report["restored"] == 6000
    assert assert_same(source.client(), target.client()) == 6000


@pytest.mark.slow
def test_guided_run_through_serve_on_ray(ray_cluster, cluster_factory, server_factory, tmp_path):
    from eve_process import EveServer, wait_state

    from eve.v1 import endpoints_pb2 as epb
    from eve.v1 import workflows_pb2 as wpb

    source = cluster_factory("redis-7.0", masters=3)
    target = server_factory("valkey-9.1")
    fill(source.client(), 900, binary=False)
    eve = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log",
                    extra_args=("--ray", ray_cluster.address)).start(timeout=60)
    try:
        for name, server in (("src", source.masters[0]), ("dst", target)):
            eve.endpoints().CreateEndpoint(epb.CreateEndpointRequest(
                endpoint=name, kind="redis",
                config=epb.EndpointConfig(target=epb.Connection(host="127.0.0.1", port=server.port))))
        stub = eve.migrations()
        run = stub.CreateRun(wpb.CreateRunRequest(id="on-ray")).id
        stub.SubmitSetup(wpb.SubmitSetupRequest(run=run, setup=wpb.RunSetup(
            source="src", target="dst", strategy=wpb.OFFLINE, conflict_policy=wpb.REPLACE)))
        stub.Prepare(wpb.PrepareRequest(run=run))
        wait_state(stub, run, "READY")
        for issue in stub.GetCompatibility(wpb.GetCompatibilityRequest(run=run)).issues:
            stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=run, issue_id=issue.id, notes="ok"))
        stub.Approve(wpb.ApproveRequest(run=run, notes="go"))
        wait_state(stub, run, "CUT_OVER", timeout=150)
        metrics = stub.GetMetrics(wpb.GetMetricsRequest(run=run))
        assert metrics.keys_scanned == 900 and metrics.keys_restored == 900
        verified = stub.Verify(wpb.VerifyRequest(run=run))
        assert verified.clean and verified.keys_compared == 900
        assert stub.Complete(wpb.CompleteRequest(run=run, notes="accepted")).state == wpb.COMPLETED
        log = eve.log()
        assert "on Ray (3 nodes)" in log and "comparing actors" in log, log[-3000:]
    finally:
        eve.stop()
    assert_same(source.client(), target.client())


@pytest.mark.slow
def test_verify_on_ray_sends_back_the_differences(ray_cluster, cluster_factory, tmp_path):
    import json

    source = cluster_factory("redis-7.0", masters=3)
    target = cluster_factory("valkey-9.1", masters=2)
    fill(source.client(), 600, binary=False)
    result = migrate("--source", source.url, "--target", target.url, "--json", state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr

    def eve_verify(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "eve", "verify", "--source", source.url, "--target", target.url,
                               "--ray", ray_cluster.address, "--json", "--no-progress", *extra],
                              capture_output=True, text=True, timeout=180)

    clean = eve_verify()
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["clean"] and json.loads(clean.stdout)["keys_compared"] == 600
    dst = target.client()
    dst.delete("k:string:0")
    dst.set("k:string:6", b"changed")
    dst.set("only-on-target", b"x")
    out = tmp_path / "differences.jsonl"
    dirty = eve_verify("--out", str(out))
    assert dirty.returncode == 1, dirty.stderr
    report = json.loads(dirty.stdout)
    assert (report["missing"], report["different"], report["extra"]) == (1, 1, 1), report
    kinds = sorted(json.loads(line)["kind"] for line in out.read_text().splitlines())
    assert kinds == ["extra", "missing", "value"]
    refused = eve_verify("--fix")
    assert refused.returncode == 2 and "--fix" in refused.stderr


def test_verify_by_node_adds_up_to_the_whole_pass(cluster_factory, server_factory):
    """The hook the comparing actors use (verify's ``nodes``): a pass per source master, and one per
    target master for the extra keys, find together what one pass finds."""
    from eve.cli.urls import parse_redis_url
    from eve.live.ray_verify import _masters, _merge
    from eve.live.verify import verify

    source = cluster_factory("redis-7.0", masters=3)
    target = server_factory("redis-7.0")
    fill(source.client(), 300, binary=False)
    dst = target.client()
    for key in source.client().scan_iter(count=500):
        dst.restore(key, 0, source.client().dump(key), replace=True)
    dst.delete("k:string:0")
    dst.set("k:string:6", b"changed")
    dst.set("only-on-target", b"x")
    source_spec, target_spec = parse_redis_url(source.url)[0], parse_redis_url(url(target))[0]
    whole = verify(source_spec, target_spec)
    masters = _masters(source_spec, "source")
    assert len(masters) == 3
    parts = [verify(source_spec, target_spec, check_extra=False, nodes=((node,), ())) for node in masters]
    parts.append(verify(source_spec, target_spec, nodes=((), tuple(_masters(target_spec, "target")))))
    assert [p.keys_compared for p in parts[:3]] != [0, 0, 0] and all(p.keys_compared < 300 for p in parts[:3])
    merged = _merge(parts, 1.0, max_examples=20, max_differences=100)
    assert (merged.keys_compared, merged.missing, merged.different, merged.extra) == \
        (whole.keys_compared, whole.missing, whole.different, whole.extra) == (300, 1, 1, 1)
    assert not merged.clean
    assert sorted(d.kind for d in merged.differences) == sorted(d.kind for d in whole.differences)
