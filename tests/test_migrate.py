"""`eve migrate` end to end on real servers: values, TTLs, dbs, clusters, conflict
policies, error keys, kill -9 and resume, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eve_process import migrate, summary
from keyspace import assert_same, fill, keys_of
from servers import free_port

from eve.bulk import error_keys as export_mod

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]


def url(server, db: int | None = None) -> str:
    return f"redis://127.0.0.1:{server.port}" + (f"/{db}" if db is not None else "")


# -- every key, every type, exact values and TTLs ---------------------------------------

TARGET_ENGINES = ["redis-7.0", "redis-8.2", "valkey-8.1", "valkey-9.1"]


@pytest.mark.parametrize("target_engine", TARGET_ENGINES)
def test_standalone_every_type_to_each_engine(server_factory, tmp_path, target_engine):
    source = server_factory("redis-7.0")
    target = server_factory(target_engine)
    src, dst = source.client(), target.client()
    fill(src, 900)
    result = migrate("--source", url(source), "--target", url(target), "--json", state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    report = summary(result)
    assert report["scanned"] == 900 and report["restored"] == 900 and report["error_keys"] == 0
    assert assert_same(src, dst) == 900
    assert dst.dbsize() == 900


def test_newer_format_source_to_compatible_target(server_factory, tmp_path):
    source = server_factory("valkey-8.1")
    target = server_factory("valkey-9.1")
    fill(source.client(), 300)
    result = migrate("--source", url(source), "--target", url(target), "--json", state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    assert_same(source.client(), target.client())


def test_several_dbs_land_in_the_same_db(server_factory, tmp_path):
    source = server_factory("redis-7.0")
    target = server_factory("valkey-9.1")
    for db in (0, 3, 9):
        fill(source.client(db=db), 60, prefix=f"db{db}")
    result = migrate("--source", url(source), "--target", url(target), "--json", state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    for db in (0, 3, 9):
        assert_same(source.client(db=db), target.client(db=db))
    assert target.client(db=1).dbsize() == 0
    # --db (or a db in the source URL) copies just that one.
    other = server_factory("valkey-9.1")
    result = migrate("--source", url(source, 3), "--target", url(other), "--json", state=tmp_path / "t.db")
    assert result.returncode == 0, result.stderr
    assert other.client(db=3).dbsize() == 60 and other.client(db=0).dbsize() == 0


def test_expired_in_transit_and_no_ttl(server_factory, tmp_path):
    source = server_factory("redis-7.0")
    target = server_factory("redis-7.0")
    src = source.client()
    fill(src, 120)
    for i in range(200):
        src.set(f"short:{i}", "x", px=150 + i)
    result = migrate("--source", url(source), "--target", url(target), "--json", state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    # Wait until the source's short keys expired (one clock, one absolute expiry on both sides):
    # from then on, one of them still on the target would have outlived its TTL there.
    deadline = time.monotonic() + 10
    while any(src.scan_iter(match="short:*")):
        assert time.monotonic() < deadline, "the source's short keys did not expire"
        time.sleep(0.05)
    dst = target.client()
    assert not [k for k in dst.scan_iter(match="short:*")], "a key whose TTL ran out must not live on"
    assert_same(src, dst)
    # With --no-ttl every key arrives without an expiry.
    plain = server_factory("redis-7.0")
    result = migrate("--source", url(source), "--target", url(plain), "--no-ttl", "--json", state=tmp_path / "t.db")
    assert result.returncode == 0, result.stderr
    assert all(plain.client().pttl(k) == -1 for k in keys_of(plain.client()))
    assert plain.client().dbsize() == src.dbsize()


def test_match_and_type_filters(server_factory, tmp_path):
    source = server_factory("redis-7.0")
    target = server_factory("redis-7.0")
    src = source.client()
    fill(src, 120, prefix="keep")
    fill(src, 120, prefix="skip")
    result = migrate("--source", url(source), "--target", url(target), "--match", "keep:*", "--type", "hash",
                     "--json", state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    copied = keys_of(target.client())
    assert copied and all(k.startswith(b"keep:hash:") for k in copied)
    assert len(copied) == 20


def test_latency_budget_copies_everything_and_says_so_in_the_plan(server_factory, tmp_path):
    source = server_factory("redis-7.0")
    target = server_factory("valkey-9.1")
    fill(source.client(), 3000)
    plan = migrate("--source", url(source), "--target", url(target), "--latency-budget-ms", "2", "--dry-run",
                   state=tmp_path / "s.db")
    assert plan.returncode == 0 and "source share 1, source latency budget 2 ms" in plan.stdout, plan.stdout
    result = migrate("--source", url(source), "--target", url(target), "--latency-budget-ms", "2", "--json",
                     state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    assert summary(result)["restored"] == 3000
    assert_same(source.client(), target.client())


# -- clusters -------------------------------------------------------------------------


def test_cluster_source_to_standalone_and_back_to_cluster(cluster_factory, server_factory, tmp_path):
    cluster = cluster_factory("valkey-9.1")
    fill(cluster.client(), 600, binary=False)
    middle = server_factory("valkey-9.1")
    result = migrate("--source", cluster.url, "--target", url(middle), "--json", state=tmp_path / "a.db")
    assert result.returncode == 0, result.stderr
    assert summary(result)["scanned"] == 600
    assert_same(cluster.client(), middle.client())
    other = cluster_factory("valkey-9.1")
    result = migrate("--source", url(middle), "--target", other.url, "--json", state=tmp_path / "b.db")
    assert result.returncode == 0, result.stderr
    assert_same(middle.client(), other.client())
    for node in other.masters:
        assert node.client().dbsize() > 0, "keys spread over every master"


# -- conflict policies ----------------------------------------------------------------


def _conflict_setup(server_factory):
    source = server_factory("redis-7.0")
    target = server_factory("redis-7.0")
    src, dst = source.client(), target.client()
    src.set("s", "source"), dst.set("s", "target")
    src.hset("h", mapping={"a": "src", "b": "src"}), dst.hset("h", mapping={"b": "tgt", "c": "tgt"})
    src.sadd("set", "x", "y"), dst.sadd("set", "y", "z")
    src.zadd("z", {"m1": 1, "m2": 2}), dst.zadd("z", {"m2": 20, "m3": 30})
    src.rpush("l", "a"), dst.rpush("l", "b")
    src.set("new", "only-source")
    dst.set("mixed", "string"), src.hset("mixed", "f", "v")
    return source, target, src, dst


def test_conflict_replace(server_factory, tmp_path):
    source, target, src, dst = _conflict_setup(server_factory)
    result = migrate("--source", url(source), "--target", url(target), "--conflict", "replace", "--json",
                     state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    assert_same(src, dst)


def test_conflict_none_keeps_target_and_lists_conflicts(server_factory, tmp_path):
    source, target, src, dst = _conflict_setup(server_factory)
    result = migrate("--source", url(source), "--target", url(target), "--conflict", "none", "--json",
                     state=tmp_path / "s.db")
    assert result.returncode == 0, "conflicts are not failures: " + result.stderr
    report = summary(result)
    assert report["conflicts"] == 6 and report["error_keys"] == 0
    assert dst.get("s") == b"target" and dst.hgetall("h") == {b"b": b"tgt", b"c": b"tgt"}
    assert dst.get("new") == b"only-source"
    from eve.core.store import Store
    store = Store(tmp_path / "s.db")
    listed = {key for _, key, _, _ in store.conflict_keys(report["run_id"])}
    store.close()
    assert listed == {b"s", b"h", b"set", b"z", b"l", b"mixed"}


def test_conflict_merge(server_factory, tmp_path):
    source, target, src, dst = _conflict_setup(server_factory)
    dst.expire("h", 5000)
    result = migrate("--source", url(source), "--target", url(target), "--conflict", "merge", "--json",
                     state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    assert dst.hgetall("h") == {b"a": b"src", b"b": b"src", b"c": b"tgt"}, "source wins on the same field"
    assert 4990 <= dst.ttl("h") <= 5000, "the target keeps its TTL"
    assert dst.smembers("set") == {b"x", b"y", b"z"}
    assert dict(dst.zrange("z", 0, -1, withscores=True)) == {b"m1": 1, b"m2": 2, b"m3": 30}
    assert dst.get("s") == b"target" and dst.lrange("l", 0, -1) == [b"b"], "no merge semantics: left alone"
    assert dst.get("mixed") == b"string", "a type mismatch is a conflict"
    assert summary(result)["conflicts"] == 3


# -- error keys -----------------------------------------------------------------------


def test_refused_payloads_become_error_keys(server_factory, tmp_path):
    """--mode dump-restore: Redis 8.2 payloads are relabelled for Redis 7.0, but its set-listpack and
    stream-listpacks-3 payloads (RDB 10 lacks the type codes) are error keys, with no logical copy."""
    source = server_factory("redis-8.2")
    target = server_factory("redis-7.0")
    keys = fill(source.client(), 60)
    refused = {key for key in keys if key.split(b":")[1] in (b"set", b"stream")}
    out = tmp_path / "errors.jsonl"
    result = migrate("--source", url(source), "--target", url(target), "--mode", "dump-restore", "--json",
                     "--errors-out", str(out), state=tmp_path / "s.db")
    assert result.returncode == 1, "error keys make the exit code 1: " + result.stderr
    report = summary(result)
    assert report["error_keys"] == len(refused) == 20 and report["scanned"] == 60 and report["restored"] == 40
    assert "failure" not in report, "a copy in which keys arrived did not fail"
    with open(out) as fp:
        rows = export_mod.read_back(fp, "jsonl")
    assert {row["key"] for row in rows} == refused, "binary keys survive the export"
    assert all("redis 7.0" in str(row["reason"]) and "DUMP payload version" in str(row["reason"])
               and "no logical fallback" in str(row["reason"]) for row in rows)
    assert {row["type"] for row in rows} == {"set", "stream"}
    assert_same(source.client(), target.client(), keys=set(keys) - refused)
    csv_out = tmp_path / "errors.csv"
    listed = subprocess.run([sys.executable, "-m", "eve", "errors", "export", "--state", str(tmp_path / "s.db"),
                             "--out", str(csv_out)], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    with open(csv_out, newline="") as fp:
        assert {row["key"] for row in export_mod.read_back(fp, "csv")} == refused


def test_out_of_memory_error_keys_then_retry(server_factory, tmp_path):
    source = server_factory("redis-7.0")
    target = server_factory("redis-7.0", extra_args=["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"])
    src = source.client()
    for i in range(400):
        src.set(f"big:{i}", os.urandom(20_000))
    state = tmp_path / "s.db"
    result = migrate("--source", url(source), "--target", url(target), "--json", state=state)
    assert result.returncode == 1, result.stderr
    report = summary(result)
    assert report["error_keys"] > 0 and report["restored"] + report["error_keys"] == 400
    rows = subprocess.run([sys.executable, "-m", "eve", "errors", "list", "--state", str(state)],
                          capture_output=True, text=True, timeout=60).stdout
    assert "out of memory" in rows
    target.client().config_set("maxmemory", "0")
    retry = subprocess.run([sys.executable, "-m", "eve", "errors", "retry", "--state", str(state),
                            "--source", url(source), "--target", url(target), "--json"],
                           capture_output=True, text=True, timeout=120)
    assert retry.returncode == 0, retry.stderr
    outcome = json.loads(retry.stdout)
    assert outcome["succeeded"] == report["error_keys"] and outcome["still_failing"] == 0
    assert_same(src, target.client())


# -- kill -9 and resume ---------------------------------------------------------------


def _worker_pids(log_text: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"started (\S+(?: node=\S+)?) pid=(\d+)", log_text)}


def _start_slow_job(source, target, state: Path, log_path: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "eve", "-v", "migrate", "--source", url(source), "--target", url(target),
           "--json", "--no-progress", "--state", str(state), "--max-keys-per-sec", "4000", "--scan-count", "200",
           *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log_path, "w"), text=True)


def _wait_for_progress(target, minimum: int, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while target.client().dbsize() < minimum:
        assert time.monotonic() < end, "the copy made no progress"
        time.sleep(0.1)


@pytest.mark.parametrize("victim", ["scanner", "restorer", "whole-job"])
def test_kill_and_resume_loses_nothing(server_factory, tmp_path, victim):
    source = server_factory("redis-7.0")
    target = server_factory("redis-7.0")
    fill(source.client(), 12_000, ttl_every=0, binary=False)
    state, log_path = tmp_path / "s.db", tmp_path / "job.log"
    job = _start_slow_job(source, target, state, log_path)
    try:
        _wait_for_progress(target, 2000)
        if victim == "whole-job":
            job.kill()
            job.wait(timeout=30)
            time.sleep(0.5)  # the workers die with their parent
            copied = target.client().dbsize()
            assert copied < 12_000, "the job must be killed mid-copy"
            result = migrate("--source", url(source), "--target", url(target), "--resume", "--json", state=state)
            assert result.returncode == 0, result.stderr
        else:
            pids = _worker_pids(log_path.read_text())
            victims = [pid for name, pid in pids.items() if name.startswith(victim)]
            assert victims, f"no {victim} in the log:\n{log_path.read_text()}"
            os.kill(victims[0], signal.SIGKILL)
            out, _ = job.communicate(timeout=120)
            assert job.returncode == 0, log_path.read_text()[-3000:]
            assert json.loads(out.strip().splitlines()[-1])["restarts"] >= 1
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert_same(source.client(), target.client())
    assert target.client().dbsize() == 12_000


@pytest.mark.parametrize("target_engine", ["redis-7.0", "valkey-9.1"])
def test_conflict_none_after_a_killed_restorer_counts_only_real_conflicts(server_factory, tmp_path, target_engine):
    """Batches a killed restorer had restored but not acknowledged come back after the restart
    and answer BUSYKEY: they are the job's own writes (before: "conflicts 1000"). Keys the
    target held before the job are conflicts still, and keep their values."""
    source = server_factory("redis-7.0")
    target = server_factory(target_engine)
    src, dst = source.client(), target.client()
    keys = fill(src, 12_000, binary=False)
    theirs = [keys[5], keys[6_001], keys[11_998]]
    for key in theirs:
        dst.set(key, b"the target's own value")
    state, log_path = tmp_path / "s.db", tmp_path / "job.log"
    job = _start_slow_job(source, target, state, log_path, "--conflict", "none")
    try:
        _wait_for_progress(target, 3000)
        restorers = [pid for name, pid in _worker_pids(log_path.read_text()).items() if name.startswith("restorer")]
        assert restorers, log_path.read_text()
        # Kill a restorer whose RESTOREs are sent but unanswered: with the target paused, the
        # restorers' next pipelines wait in its socket buffer; the killed one's still run once
        # the target goes on (the restorer closed its socket after them), but their batch is
        # never acknowledged, so it comes back after the pipeline's restart and finds its keys.
        os.kill(target.pid, signal.SIGSTOP)
        try:
            time.sleep(0.5)
            os.kill(restorers[0], signal.SIGKILL)
        finally:
            os.kill(target.pid, signal.SIGCONT)
        out, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 0, log_path.read_text()[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["restarts"] >= 1
    assert report["conflicts"] == len(theirs), report
    assert report["restored"] == len(keys) - len(theirs) and report["error_keys"] == 0
    from eve.core.store import Store
    store = Store(state)
    assert {key for _, key, _, _ in store.conflict_keys(report["run_id"])} == set(theirs)
    store.close()
    assert all(dst.get(key) == b"the target's own value" for key in theirs)
    assert_same(src, dst, keys=set(keys) - set(theirs))
    assert dst.dbsize() == len(keys)


def test_resume_with_another_setup_is_refused(server_factory, tmp_path):
    source = server_factory("redis-7.0")
    target = server_factory("redis-7.0")
    other = server_factory("redis-7.0")
    fill(source.client(), 8000, ttl_every=0, binary=False)
    state, log_path = tmp_path / "s.db", tmp_path / "job.log"
    job = _start_slow_job(source, target, state, log_path)
    try:
        _wait_for_progress(target, 500)
    finally:
        job.kill()
        job.wait()
    refused = migrate("--source", url(source), "--target", url(other), "--resume", state=state)
    assert refused.returncode == 5 and "resume refused" in refused.stderr and "target" in refused.stderr
    again = migrate("--source", url(source), "--target", url(target), state=state)
    assert again.returncode == 5 and "--resume" in again.stderr
    resumed = migrate("--source", url(source), "--target", url(target), "--resume", "--json", state=state)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(source.client(), target.client())


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--source", "http://127.0.0.1:1", "--target", "redis://127.0.0.1:2"], "scheme"),
        (["--source", "redis://127.0.0.1:99999", "--target", "redis://127.0.0.1:2"], "--source"),
        (["--source", "redis://:hunter2@127.0.0.1:1/x", "--target", "redis://127.0.0.1:2"], "database number"),
        (["--source", "redis://127.0.0.1:1", "--target", "redis://127.0.0.1:1"], "same server"),
        (["--source", "redis://127.0.0.1:1", "--target", "redis://127.0.0.1:2", "--errors-out", "x.txt"], ".jsonl"),
    ],
    ids=["scheme", "port", "db-path", "same-server", "errors-out"],
)
def test_bad_input_one_line_exit_2(tmp_path, args, needle):
    result = migrate(*args, state=tmp_path / "s.db", timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "hunter2" not in result.stderr


def test_unreachable_server_one_line_exit_2(server_factory, tmp_path):
    source = server_factory("redis-7.0")
    port = free_port()
    result = migrate("--source", url(source), "--target", f"redis://:pw@127.0.0.1:{port}", state=tmp_path / "s.db",
                     timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "target" in lines[0]
    result = migrate("--source", f"redis://127.0.0.1:{port}", "--target", url(source), state=tmp_path / "t.db",
                     timeout=60)
    assert result.returncode == 2 and "source" in result.stderr.strip().splitlines()[0]


def test_tls_and_password_source(server_factory, tmp_path):
    """rediss:// with a CA file and a password; the password never shows in output."""
    import shutil as _shutil

    if _shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    tls_port = free_port()
    source = server_factory("redis-7.0", password="s3cret-src", extra_args=[
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"])
    target = server_factory("valkey-9.1")
    fill(source.client(), 300)
    result = migrate("--source", f"rediss://:s3cret-src@127.0.0.1:{tls_port}?ssl_ca_certs={cert}",
                     "--target", url(target), "--json", state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    assert "s3cret-src" not in result.stdout + result.stderr
    assert_same(source.client(), target.client())
    from eve.core.store import Store
    store = Store(tmp_path / "s.db")
    assert "s3cret-src" not in json.dumps([r.setup for r in store.list_runs()]), "credentials are never stored"
    store.close()
