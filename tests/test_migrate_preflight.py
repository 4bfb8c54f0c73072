"""`eve migrate` refuses what would copy to the wrong place or trap the job, before anything is
written: the same server twice, replication between the sides, a read-only target, missing
credentials, a db the server does not have, bad option values (issue 11). And the job state
never traps: a job that failed before copying is not one to resume, --force, eve jobs."""

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
from keyspace import TYPES, fill

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def eve(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eve", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def migrate(*args: str, state: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return eve("migrate", *args, "--state", str(state), "--no-progress", env=env)


def url(server, host: str = "127.0.0.1", db: int | None = None) -> str:
    return f"redis://{host}:{server.port}" + (f"/{db}" if db is not None else "")


def wait_replicating(replica, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while replica.client().info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the replica never linked to its master"
        time.sleep(0.05)


def test_the_same_server_under_another_name_is_refused(server_factory, tmp_path):
    server = server_factory("redis-7.0")
    fill(server.client(), 50)
    result = migrate("--source", url(server), "--target", url(server, host="localhost"), state=tmp_path / "s.db")
    assert result.returncode == 2, result.stderr
    assert "are the same server" in result.stderr and "run_id" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s.db").exists() or "migrate-" not in eve("jobs", "list", "--state",
                                                                     str(tmp_path / "s.db")).stdout


def test_a_target_that_replicates_the_source_is_refused(server_factory, tmp_path):
    source = server_factory("redis-7.0")
    fill(source.client(), 80)
    replica = server_factory("redis-7.0", extra_args=("--replicaof", "127.0.0.1", str(source.port)))
    wait_replicating(replica)
    result = migrate("--source", url(source), "--target", url(replica), state=tmp_path / "s.db")
    assert result.returncode == 2, result.stderr
    assert f"is a replica of the source 127.0.0.1:{source.port}" in result.stderr
    assert "refuses writes (READONLY)" in result.stderr and "nothing was copied" in result.stderr
    # And the other way round: the source is a replica, the target its master.
    result = migrate("--source", url(replica), "--target", url(source), state=tmp_path / "t.db")
    assert result.returncode == 2, result.stderr
    assert f"the source 127.0.0.1:{replica.port} is a replica of the target" in result.stderr
    assert source.client().dbsize() == 80


def test_a_source_replica_copies_with_a_warning(server_factory, tmp_path):
    master = server_factory("valkey-8.1")
    fill(master.client(), 60)
    replica = server_factory("valkey-8.1", extra_args=("--replicaof", "127.0.0.1", str(master.port)))
    wait_replicating(replica)
    deadline = time.monotonic() + 30
    while replica.client().dbsize() < 60:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    target = server_factory("valkey-9.1")
    result = migrate("--source", url(replica), "--target", url(target), "--json", state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    assert "warning: the source" in result.stderr and "is a replica of" in result.stderr
    assert target.client().dbsize() == 60


def test_missing_password_names_the_flag_and_other_ways_to_give_it(server_factory, tmp_path):
    source = server_factory("redis-7.0")
    fill(source.client(), 40)
    secret = "s3cret-Pa55"
    target = server_factory("valkey-9.1", password=secret)
    result = migrate("--source", url(source), "--target", url(target), state=tmp_path / "a.db")
    assert result.returncode == 2, result.stderr
    assert "--target:" in result.stderr and "NOAUTH" in result.stderr
    assert "--target-password-file" in result.stderr and "EVE_TARGET_PASSWORD" in result.stderr
    # From the environment: nothing on the command line.
    result = migrate("--source", url(source), "--target", url(target), "--json", state=tmp_path / "b.db",
                     env={"EVE_TARGET_PASSWORD": secret})
    assert result.returncode == 0, result.stderr
    assert target.client().dbsize() == 40
    assert secret not in result.stdout + result.stderr
    # From a file.
    target.client().flushall()
    password_file = tmp_path / "target.pass"
    password_file.write_text(secret + "\n")
    result = migrate("--source", url(source), "--target", url(target), "--target-password-file",
                     str(password_file), "--json", state=tmp_path / "c.db")
    assert result.returncode == 0, result.stderr
    assert target.client().dbsize() == 40
    result = migrate("--source", url(source), "--target", url(target), "--target-password-file",
                     str(tmp_path / "nope"), state=tmp_path / "d.db")
    assert result.returncode == 2 and "--target-password-file" in result.stderr


@pytest.mark.parametrize("args,flag", [
    (("--db", "99"), "--db"),
    (("--source-share", "0"), "--source-share"),
    (("--restorers", "0"), "--restorers"),
    (("--restorers", "500"), "--restorers"),
    (("--type", "nosuchtype"), "--type"),
    (("--scan-count", "0"), "--scan-count"),
    (("--latency-budget-ms", "nan"), "--latency-budget-ms"),
    (("--latency-budget-ms", "-1"), "--latency-budget-ms"),
    (("--resume", "--force"), "--force"),
], ids=lambda value: value if isinstance(value, str) else "-".join(value))
def test_bad_options_exit_2_naming_the_flag_and_never_trap_the_state(server_factory, tmp_path, args, flag):
    source, target = server_factory("redis-7.0"), server_factory("redis-7.0")
    fill(source.client(), 30)
    state = tmp_path / "s.db"
    result = migrate("--source", url(source), "--target", url(target), *args, state=state)
    assert result.returncode == 2, result.stderr
    assert f"{flag}:" in result.stderr and "Traceback" not in result.stderr
    assert target.client().dbsize() == 0
    # The next plain run is not blocked by the refused one.
    result = migrate("--source", url(source), "--target", url(target), "--json", state=state)
    assert result.returncode == 0, result.stderr
    assert target.client().dbsize() == 30


def test_a_target_db_that_is_not_the_copied_db_is_refused(server_factory, tmp_path):
    source, target = server_factory("redis-7.0"), server_factory("valkey-9.1")
    fill(source.client(), 30)
    target.client().set("keep", "mine")
    result = migrate("--source", url(source), "--target", url(target, db=2), state=tmp_path / "s.db")
    assert result.returncode == 2, result.stderr
    assert "the target URL names db 2" in result.stderr and "--target:" in result.stderr
    assert target.client().dbsize() == 1 and target.client(db=2).dbsize() == 0
    # Naming the same db on both sides copies that db.
    fill(source.client(db=2), 20, prefix="two")
    result = migrate("--source", url(source, db=2), "--target", url(target, db=2), "--json",
                     state=tmp_path / "t.db")
    assert result.returncode == 0, result.stderr
    assert target.client(db=2).dbsize() == 20 and target.client().get("keep") == b"mine"


def test_dry_run_prints_the_plan_and_copies_nothing(server_factory, tmp_path):
    source, target = server_factory("redis-7.0"), server_factory("valkey-9.1")
    fill(source.client(), 120)
    target.client().set("already", "here")
    result = migrate("--source", url(source), "--target", url(target), "--dry-run", state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    assert "dry run, nothing copied" in result.stdout
    assert f"source 127.0.0.1:{source.port}: standalone" in result.stdout and "120 keys" in result.stdout
    assert "already holds 1 keys" in result.stdout and "run it with: eve migrate" in result.stdout
    assert target.client().dbsize() == 1
    document = json.loads(migrate("--source", url(source), "--target", url(target), "--dry-run", "--json",
                                  state=tmp_path / "s.db").stdout)
    assert document["dry_run"] and document["source_keys"] == 120
    assert [finding["code"] for finding in document["findings"]] == ["TARGET_NOT_EMPTY"]
    # The estimate (issue 24): a timed sample, and per type how keys move; Valkey 9.1 reads
    # Redis 7.0's payloads as they are.
    assert re.search(r"estimate: (about \d+s|under a second) for 120 keys, from a timed sample of "
                     r"100 keys copied at [\d,]+ keys/s", result.stdout), result.stdout
    assert "  string: as is" in result.stdout
    estimate = document["estimate"]
    assert estimate["total_keys"] == 120 and estimate["sample_keys"] == 100 and estimate["keys_per_second"] > 0
    assert estimate["estimated_seconds"] == pytest.approx(120 / estimate["keys_per_second"], rel=0.01, abs=0.001)
    assert set(estimate["types"]) == set(TYPES)
    assert all(moves["as_is"] == sum(moves.values()) > 0 for moves in estimate["types"].values())
    assert target.client().dbsize() == 1, "the sample's scratch keys are removed"


@pytest.mark.parametrize(("mode", "moves"), [
    ("auto", {"set": "logical", "stream": "logical"}),
    ("dump-restore", {"set": "failed", "stream": "failed"}),
], ids=["auto", "dump-restore"])
def test_dry_run_estimates_how_each_type_moves(server_factory, tmp_path, mode, moves):
    """Redis 8.2 to Redis 7.0: payloads relabelled (transcoded) but set-listpack and stream-listpacks-3,
    which Redis 7.0 cannot read: copied logically in AUTO, not at all in DUMP_RESTORE."""
    source, target = server_factory("redis-8.2"), server_factory("redis-7.0")
    fill(source.client(), 60)
    result = migrate("--source", url(source), "--target", url(target), "--dry-run", "--json", "--mode", mode,
                     state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    types = json.loads(result.stdout)["estimate"]["types"]
    for kind, counts in types.items():
        expected = moves.get(kind, "transcoded")
        assert counts[expected] > 0 and counts[expected] == sum(counts.values()), (kind, counts)
    text = migrate("--source", url(source), "--target", url(target), "--dry-run", "--mode", mode,
                   state=tmp_path / "s.db").stdout
    assert ("  set: logically" if mode == "auto" else "  set: not at all") in text, text
    assert "  string: transcoded" in text
    assert target.client().dbsize() == 0


def _slow_job(source, target, state: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eve", "migrate", "--source", url(source), "--target",
                             url(target), "--no-progress", "--state", str(state), "--max-keys-per-second", "2000",
                             "--scan-count", "100"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_keys(server, minimum: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while server.client().dbsize() < minimum:
        assert time.monotonic() < deadline, "the copy made no progress"
        time.sleep(0.05)


def test_ctrl_c_exits_130_with_the_command_to_resume(server_factory, tmp_path):
    source, target = server_factory("redis-7.0"), server_factory("redis-7.0")
    fill(source.client(), 6000, ttl_every=0)
    state = tmp_path / "s.db"
    job = _slow_job(source, target, state)
    _wait_for_keys(target, 500)
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 130, stderr
    assert "continue with: eve migrate --source" in stderr and "--resume" in stderr
    result = migrate("--source", url(source), "--target", url(target), "--resume", "--json", state=state)
    assert result.returncode == 0, result.stderr
    assert target.client().dbsize() == 6000


def test_unfinished_job_jobs_list_discard_and_force(server_factory, tmp_path):
    source, target = server_factory("redis-7.0"), server_factory("redis-7.0")
    fill(source.client(), 6000, ttl_every=0)
    state = tmp_path / "s.db"
    job = _slow_job(source, target, state)
    _wait_for_keys(target, 500)
    job.kill()
    job.wait(timeout=30)
    refused = migrate("--source", url(source), "--target", url(target), state=state)
    assert refused.returncode == 5, refused.stderr
    assert "did not finish" in refused.stderr and "--resume" in refused.stderr and "--force" in refused.stderr
    listed = json.loads(eve("jobs", "list", "--state", str(state), "--json").stdout)["jobs"]
    assert [row["state"] for row in listed] == ["COPYING"]
    discarded = eve("jobs", "discard", "--state", str(state))
    assert discarded.returncode == 0, discarded.stderr
    result = migrate("--source", url(source), "--target", url(target), "--json", state=state)
    assert result.returncode == 0, result.stderr
    assert [row["state"] for row in json.loads(eve("jobs", "list", "--state", str(state), "--json").stdout)[
        "jobs"]] == ["DISCARDED", "COMPLETED"]
    # --force replaces an unfinished job without a separate discard.
    target.client().flushall()
    job = _slow_job(source, target, state)
    _wait_for_keys(target, 500)
    job.kill()
    job.wait(timeout=30)
    result = migrate("--source", url(source), "--target", url(target), "--force", "--json", state=state)
    assert result.returncode == 0, result.stderr
    assert target.client().dbsize() == 6000
    assert eve("jobs", "discard", "--state", str(state)).returncode == 5  # nothing unfinished left


def test_error_listing_summary_limit_json_and_a_closed_pipe(server_factory, tmp_path):
    source = server_factory("redis-7.0")
    target = server_factory("redis-7.0", extra_args=("--maxmemory", "2mb", "--maxmemory-policy", "noeviction"))
    src = source.client()
    for i in range(300):
        src.set(f"big:{i}", os.urandom(20_000))
    state = tmp_path / "s.db"
    result = migrate("--source", url(source), "--target", url(target), "--json", state=state)
    assert result.returncode == 1, result.stderr
    failed = json.loads(result.stdout.strip().splitlines()[-1])["error_keys"]
    assert failed > 20
    listed = eve("errors", "list", "--state", str(state), "--limit", "5")
    assert listed.returncode == 0, listed.stderr
    assert f"{failed:,} error keys" in listed.stdout and "out of memory" in listed.stdout
    assert listed.stdout.count("db=0 key=") == 5 and f"and {failed - 5:,} more" in listed.stdout
    document = json.loads(eve("errors", "list", "--state", str(state), "--json", "--limit", "0").stdout)
    assert document["total"] == failed == len(document["error_keys"])
    assert sum(row["keys"] for row in document["by_reason"]) == failed
    # A reader that goes away early ends the export quietly (`true` exits before eve writes).
    for action in ("export", "list"):
        pipe = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m eve errors {action} --state "
                               f"{state} --limit 0 | true"], capture_output=True, text=True, timeout=60)
        assert pipe.returncode == 141, pipe.stderr
        assert "Traceback" not in pipe.stderr and "BrokenPipe" not in pipe.stderr and "Exception" not in pipe.stderr


def test_version() -> None:
    result = eve("--version")
    assert result.returncode == 0 and result.stdout.startswith("eve ")
