"""`eve migrate` while a side restarts (issue 11): a server killed -9 and started again on
its port is never reported as holding a copy it lost. Real servers; the job runs as the
CLI does, in a subprocess, slowed by --max-keys-per-sec so that the restart lands mid-copy."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from keyspace import assert_same, fill, keys_of

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import EndpointError, Side
from eve.core.frames import Restarted, decode, encode
from eve.live.verify import verify

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

KEYS = 60_001
RATE = 12_000          # keys/s: the 60,001 keys take ~5 s, the restart lands at a third
RESTART_AT = 20_000    # keys on the target when it is killed
# Everysec: the default of a persistent server; kill -9 may lose the last second of writes.
AOF = ["--appendonly", "yes", "--appendfsync", "everysec"]


def url(server) -> str:
    return f"redis://127.0.0.1:{server.port}"


def start_job(source, target, state: Path, log_path: Path, *extra: str, rate: int = RATE,
              json_out: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "eve", "-v", "migrate", "--source", url(source), "--target", url(target),
           "--no-progress", "--state", str(state), "--max-keys-per-sec", str(rate), *extra]
    if json_out:
        cmd.append("--json")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log_path, "w"), text=True)


def wait_for(server, minimum: int, job: subprocess.Popen, deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while server.client().dbsize() < minimum:
        assert job.poll() is None, "the job ended before the restart"
        assert time.monotonic() < end, "the copy made no progress"
        time.sleep(0.02)


def restart(server) -> str:
    """kill -9, then start again on the same port and dir; the new run_id."""
    server.kill()
    server.start()
    return server.client().info("server")["run_id"]


def finish(job: subprocess.Popen, log_path: Path, timeout: float = 180) -> tuple[int, str]:
    try:
        out, _ = job.communicate(timeout=timeout)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    return job.returncode, out


def summary_of(out: str, log_path: Path) -> dict:
    assert out.strip(), f"no summary; log:\n{log_path.read_text()[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def assert_copied(source, target, sample: int = 3000) -> None:
    """Every key of the source is on the target (and nothing else); a sample compared in full."""
    src, dst = source.client(), target.client()
    wanted = keys_of(src)
    assert keys_of(dst) == wanted, f"{len(wanted - keys_of(dst))} keys missing on the target"
    assert_same(src, dst, keys=set(random.Random(3).sample(sorted(wanted), min(sample, len(wanted)))))


# -- the target ------------------------------------------------------------------------


@pytest.mark.parametrize("persistence", ["none", "aof"])
def test_target_killed_and_restarted_mid_copy_gets_every_key(server_factory, tmp_path, persistence):
    """The issue's table, first row: before, "restored 60001, errors 0" with 21,010 keys missing."""
    source = server_factory("redis-7.0")
    target = server_factory("valkey-9.1", extra_args=AOF if persistence == "aof" else ())
    fill(source.client(), KEYS)
    before = target.client().info("server")["run_id"]
    log_path = tmp_path / "job.log"
    job = start_job(source, target, tmp_path / "s.db", log_path)
    try:
        wait_for(target, RESTART_AT, job)
        after = restart(target)
    finally:
        code, out = finish(job, log_path)
    assert code == 0, log_path.read_text()[-3000:]
    report = summary_of(out, log_path)
    assert report["side_restarts"] >= 1
    reason = report["side_restart_reasons"][0]
    assert f"target 127.0.0.1:{target.port} restarted" in reason and before in reason and after in reason
    # Honest counters: the last copy, from the start, into the restarted server.
    assert report["scanned"] == report["restored"] == KEYS and report["conflicts"] == 0
    assert report["error_keys"] == 0
    assert target.client().dbsize() == KEYS
    assert_copied(source, target)


def test_mirror_target_restarted_mid_copy_gets_every_key(server_factory, tmp_path):
    source = server_factory("redis-7.0")
    target, mirror = server_factory("valkey-9.1"), server_factory("valkey-9.1")
    fill(source.client(), 30_000)
    log_path = tmp_path / "job.log"
    job = start_job(source, target, tmp_path / "s.db", log_path, "--mirror", url(mirror), json_out=False)
    try:
        wait_for(mirror, 8000, job)
        restart(mirror)
    finally:
        code, out = finish(job, log_path)
    assert code == 0, log_path.read_text()[-3000:]
    assert "restored 30,000" in out, out
    assert "restarts: a side restarted 1 time(s)" in out and f"mirror target 127.0.0.1:{mirror.port}" in out, out
    assert_copied(source, target)
    assert_copied(source, mirror)


def test_target_restarted_while_the_job_is_down_is_copied_again_on_resume(server_factory, tmp_path):
    source = server_factory("redis-7.0")
    target = server_factory("valkey-9.1")
    fill(source.client(), 20_000)
    state, log_path = tmp_path / "s.db", tmp_path / "job.log"
    job = start_job(source, target, state, log_path, rate=4000)
    try:
        wait_for(target, 6000, job)
    finally:
        job.kill()
        job.wait()
    time.sleep(0.5)  # the workers die with their parent
    restart(target)
    assert target.client().dbsize() == 0
    resumed = subprocess.run([sys.executable, "-m", "eve", "migrate", "--source", url(source), "--target",
                              url(target), "--resume", "--json", "--no-progress", "--state", str(state)],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert report["side_restarts"] == 1 and "restarted since the job last ran" in report["side_restart_reasons"][0]
    assert report["restored"] == 20_000
    assert_copied(source, target)


def test_a_target_that_keeps_restarting_fails_the_job_with_the_reason(server_factory, tmp_path):
    source = server_factory("redis-7.0")
    target = server_factory("valkey-9.1")
    fill(source.client(), 20_000, ttl_every=0)
    log_path = tmp_path / "job.log"
    job = start_job(source, target, tmp_path / "s.db", log_path, rate=4000)
    try:
        for _ in range(4):  # one more than the job accepts (DEFAULT_MAX_SIDE_RESTARTS)
            wait_for(target, 1500, job)
            restart(target)
    finally:
        code, out = finish(job, log_path)
    assert code == 4, log_path.read_text()[-3000:]   # the target failed
    assert not out.strip(), "no success summary"
    last = log_path.read_text().strip().splitlines()[-1]
    assert "restarted" in last and "giving up" in last, last


# -- the source ------------------------------------------------------------------------


def test_persistent_source_restarted_mid_scan_is_scanned_again(server_factory, tmp_path):
    """A restarted source has a new hash seed: its SCAN cursors mean nothing now. The scan
    starts again from the beginning, and nothing is missed."""
    source = server_factory("redis-7.0", extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    target = server_factory("valkey-9.1")
    fill(source.client(), 30_000)
    log_path = tmp_path / "job.log"
    job = start_job(source, target, tmp_path / "s.db", log_path, rate=8000)
    try:
        wait_for(target, 8000, job)
        restart(source)
        assert source.client().dbsize() == 30_000, "the AOF kept every key"
    finally:
        code, out = finish(job, log_path)
    assert code == 0, log_path.read_text()[-3000:]
    report = summary_of(out, log_path)
    assert report["side_restarts"] >= 1 and f"source 127.0.0.1:{source.port} restarted" in \
        report["side_restart_reasons"][0]
    assert report["restored"] == 30_000
    assert_copied(source, target)


# -- verification ------------------------------------------------------------------------


def test_verify_with_a_target_restarting_mid_pass_is_never_clean(server_factory):
    """Verification reads the target through the same cluster client: a restart mid-pass
    fails the pass (the target is unreachable for a moment, or answers with a new run_id), or
    the pass sees what the target lost; it is never a clean report."""
    source, target = server_factory("redis-7.0"), server_factory("redis-7.0")
    keys = fill(source.client(), 6000, ttl_every=0)
    src, dst = source.client(), target.client()
    for start in range(0, len(keys), 500):  # the target holds a copy: a pass that missed the restart is clean
        chunk = keys[start:start + 500]
        payloads = src.pipeline(transaction=False)
        for key in chunk:
            payloads.dump(key)
        restore = dst.pipeline(transaction=False)
        for key, payload in zip(chunk, payloads.execute()):
            restore.restore(key, 0, payload, replace=True)
        restore.execute()
    restarter = threading.Timer(0.5, lambda: restart(target))
    restarter.start()
    try:
        report = verify(ConnectionSpec("127.0.0.1", source.port), ConnectionSpec("127.0.0.1", target.port),
                        max_keys_per_second=3000)
    except EndpointError as exc:
        assert exc.side == "target", exc
    else:
        assert not report.clean and report.missing > 0, report.summary()
    finally:
        restarter.join()


def test_restarted_frame_round_trip():
    frame = Restarted("restorer-2", Side.TARGET, "mirror target", "127.0.0.1:7000", "a" * 40, "b" * 40)
    assert decode(encode(frame)) == frame
    assert "mirror target 127.0.0.1:7000 restarted" in frame.reason and "a" * 40 in frame.reason
