"""``eve verify`` for real work (issue 11, item 4) on real servers: field-level detail and human
TTLs in the text output, every difference in ``--out`` files (JSON Lines and CSV), ``--fix``
on a standalone and on a cluster target (then a clean verify, key by key identical), ``--fix``
refused on one server, and the progress bar only on a terminal."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time

import pytest
import redis
from keyspace import assert_same, fill, keys_of

from eve.bulk.error_keys import read_back
from eve.cli.exits import EXIT_FAILURES, EXIT_OK, EXIT_USAGE
from eve.cli.main import main
from eve.cli.verify import DIFFERENCE_COLUMNS, human_duration, verify_command
from eve.core.endpoints import ConnectionSpec
from eve.core.errors import ConfigError
from eve.live import verify as verify_mod
from eve.live.verify import COMPARING, EXTRA, EXTRA_KEYS, FIXING, MISSING, TTL, TYPE, VALUE, verify

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

OPTIONS = {"ttl_tolerance_ms": 1000, "max_examples": 50, "db": None, "match": None}


def url(server) -> str:
    return f"redis://{server.host}:{server.port}"


def copy(source: redis.Redis, target) -> None:
    """DUMP + PTTL, RESTORE ... ABSTTL (a cluster client routes by key): the target starts identical."""
    now = int(time.time() * 1000)
    for key in source.scan_iter(count=1000):
        payload, pttl = source.dump(key), source.pttl(key)
        if payload is not None and pttl != -2:
            expiry = now + pttl if pttl >= 0 else 0
            target.restore(key, expiry, payload, replace=True, absttl=expiry > 0)


def seed(src: redis.Redis, *, groups: bool = True) -> None:
    """The source: a mixed keyspace plus one key for each hand-made difference below."""
    fill(src, 120, binary=True)
    src.hset("h", mapping={"a": "1", "b": "2", "c": "3"})
    src.sadd("s", "x", "y", "z")
    src.zadd("z", {"a": 1, "b": 2.5})
    src.rpush("l", "1", "2", "3")
    src.set("str", "hello world")
    src.set("t", "a string on the source")
    src.set("gone", "v", px=7_200_000)
    src.set("ttl-off", "v", px=3_600_000)
    src.set("ttl-removed", "v", px=3_600_000)
    src.set("ttl-added", "v")
    src.xadd("x", {"a": "1"}, id="1-1")
    if groups:
        src.xgroup_create("x", "g", id="0")


def differ(src: redis.Redis, dst) -> None:
    """Every kind of difference, by hand, on a target that was identical."""
    dst.delete("gone")                                   # missing
    dst.set("new", "v")                                  # extra
    dst.delete("t")
    dst.hset("t", "f", "v")                              # another type
    dst.hset("h", "b", "changed")                        # a changed hash field
    dst.srem("s", "y")                                   # a missing set member
    dst.zadd("z", {"b": 2.25})                           # a zset score
    dst.lset("l", 1, "Q")                                # a list element
    dst.setrange("str", 6, "W")                          # a string byte
    dst.xadd("x", {"b": "2"}, id="1-2")                  # a stream entry more
    dst.pexpire("ttl-off", src.pttl("ttl-off") - 5_000)  # TTL off by 5 s
    dst.persist("ttl-removed")                           # TTL removed
    dst.pexpire("ttl-added", 30_000)                     # TTL where the source has none


EXPECTED = {
    "gone": (MISSING, "source string, not on the target (expires in 1h 59m)"),
    "new": (EXTRA, "target string, not on the source (no expiry)"),
    "t": (TYPE, "source string, target hash"),
    "h": (VALUE, "hash of 3 fields on both sides, contents differ: 1 field with another value ('b')"),
    "s": (VALUE, "source set of 3 members, target 2 members: 1 member missing on the target ('y')"),
    "z": (VALUE, "1 member with another score ('b': 2.5 vs 2.25)"),
    "l": (VALUE, ("list of 3 elements on both sides, elements or their order differ: first difference at index 1 "
                  "(source '2', target 'Q')")),
    "str": (VALUE, "string of 11 bytes on both sides, bytes differ: first difference at byte 6"),
    "x": (VALUE, ("source stream of 1 entries, target 2 entries: the target has 1 entry more; last entry ID 1-1 on "
                  "the source, 1-2 on the target; last generated ID 1-1 on the source, 1-2 on the target")),
    "ttl-removed": (TTL, "source expires in 59m 5"),
    "ttl-added": (TTL, "source no expiry, target expires in "),
}


def text_lines(out: str) -> dict[str, str]:
    """The example lines by key: '  value   db0 'h': ...' -> {'h': "value   db0 'h': ..."}."""
    lines = {}
    for line in out.splitlines():
        found = re.match(r"  (\w+) +db\d+ '([^']*)': ", line)
        if found:
            lines[found.group(2)] = line.strip()
    return lines


# -- the text output ------------------------------------------------------------------------


def test_text_output_names_every_difference_with_field_detail_and_human_ttls(server_factory, capsys):
    source = server_factory("redis-7.0")
    target = server_factory("valkey-9.1")
    src, dst = source.client(), target.client()
    seed(src)
    copy(src, dst)
    assert verify_command(url(source), url(target), as_json=False, **OPTIONS) == EXIT_OK
    capsys.readouterr()
    differ(src, dst)

    assert verify_command(url(source), url(target), as_json=False, **OPTIONS) == EXIT_FAILURES
    out = capsys.readouterr().out
    assert "1 missing, 1 extra, 7 different, 3 TTL mismatches" in out.splitlines()[0]
    lines = text_lines(out)
    for key, (kind, text) in EXPECTED.items():
        assert key in lines, f"{key!r} not listed:\n{out}"
        assert lines[key].startswith(kind) and text in lines[key], lines[key]
    # The TTL that differs by 5 s says so in seconds, both expiries in hours and minutes.
    assert re.search(r"ttl +db0 'ttl-off': TTL differs by [45]\.\d s: source expires in (59m|1h 0m)", out), out
    assert "(tolerance 1.0 s)" in lines["ttl-off"]
    assert "target no expiry" in lines["ttl-removed"]
    assert re.search(r"target expires in (29\.\d|30\.0) s$", lines["ttl-added"]), lines["ttl-added"]

    # --json keeps the milliseconds and the types of both sides.
    assert verify_command(url(source), url(target), as_json=True, **OPTIONS) == EXIT_FAILURES
    document = json.loads(capsys.readouterr().out)
    examples = {example["key"]: example for example in document["examples"]}
    assert examples["t"]["source_type"] == "string" and examples["t"]["target_type"] == "hash"
    assert examples["gone"]["target_type"] == "" and examples["gone"]["target_ttl_ms"] is None
    assert 7_000_000 < examples["gone"]["source_ttl_ms"] <= 7_200_000
    assert examples["ttl-removed"]["target_ttl_ms"] == -1


def test_zset_and_stream_groups_and_big_keys_say_what_differs(server_factory, monkeypatch):
    source = server_factory("valkey-9.1")
    target = server_factory("valkey-9.1")
    src, dst = source.client(), target.client()
    src.zadd("z", {"a": 1, "b": 2, "c": 3})
    src.xadd("x", {"a": "1"}, id="1-1")
    src.xgroup_create("x", "g", id="0")
    src.hset("big", mapping={f"f{i}": i for i in range(50)})
    src.rpush("biglist", *range(50))
    copy(src, dst)
    dst.zrem("z", "a")
    dst.zadd("z", {"d": 4})
    dst.xgroup_destroy("x", "g")
    dst.xgroup_create("x", "other", id="0")
    dst.hset("big", "f7", "changed")
    dst.rpush("biglist", "one more")
    # Big keys above 10 elements: digests streamed in chunks, no element-by-element diff.
    monkeypatch.setattr(verify_mod, "BIG_ELEMENTS", 10)
    monkeypatch.setattr(verify_mod, "CHUNK_ELEMENTS", 7)
    details = {d.key: d.detail for d in verify(ConnectionSpec(source.host, source.port),
                                               ConnectionSpec(target.host, target.port)).differences}
    assert details[b"z"] == ("zset of 3 members on both sides, elements or their order differ: 1 member missing on "
                             "the target ('a'); 1 member only on the target ('d')")
    assert details[b"x"] == ("stream of 1 entries on both sides, entries, last ID or consumer groups differ: "
                             "1 consumer group missing on the target ('g'); 1 consumer group only on the target "
                             "('other')")
    assert details[b"big"] == ("hash of 50 fields on both sides, contents differ: a big hash: not compared field by "
                               "field above 10 fields")
    assert details[b"biglist"] == ("source list of 50 elements, target 51 elements: a big list: not compared element "
                                   "by element above 10 elements")


def test_field_detail_helpers():
    detail = verify_mod._field_detail
    assert detail("hash", [[b"a", b"1", b"b", b"2"]], [[b"b", b"2", b"a", b"9", b"c", b"3"]]) == \
        "1 field only on the target ('c'); 1 field with another value ('a')"
    many = [b"m%d" % i for i in range(10)]
    assert detail("set", [many], [many[:2]]) == "8 members missing on the target ('m2', 'm3', 'm4', ...)"
    # One score as Redis 7.0 and Valkey print it: not a difference.
    assert detail("zset", [[b"a", b"0.10000000000000001"]], [[b"a", b"0.1"]]) == ""
    assert detail("list", [[b"1", b"2"]], [[b"1", b"2", b"3"]]) == "the target has 1 element more at the end " \
                                                                    "(from index 2)"
    assert detail("list", [[b"1", b"2", b"3"]], [[b"1"]]) == "the target lacks the last 2 elements (from index 1)"
    assert detail("string", [b"abc"], [b"ab"]) == "the target holds the source's first 2 bytes only"
    long = bytes(100_000)
    assert detail("string", [long], [long[:77_777] + b"x" + long[77_778:]]) == "first difference at byte 77,777"
    assert detail("string", [b"a"], [None]) == ""  # gone while it was read: no detail
    assert verify_mod._show(b"k" * 100).endswith("...'") and verify_mod._show(b"\xff") == "'\\\\xff'"
    assert [human_duration(ms) for ms in (300, 4_200, 192_000, 7_380_000, 3 * 86_400_000 + 7_200_000)] == \
        ["0.3 s", "4.2 s", "3m 12s", "2h 3m", "3d 2h"]


# -- --out ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_out_file_has_every_difference(server_factory, tmp_path, capsys, monkeypatch, suffix):
    source = server_factory("redis-7.0")
    target = server_factory("redis-7.0", password="s3cret-pw")
    src, dst = source.client(), target.client()
    keys = fill(src, 300, binary=True)
    copy(src, dst)
    for key in keys[:150]:
        dst.delete(key)                      # 150 missing (binary keys among them)
    for i in range(60):
        dst.set(f"only-target:{i}", i, px=600_000)   # 60 extra, with a TTL
    password_file = tmp_path / "target.pw"
    password_file.write_text("s3cret-pw\n")
    out = tmp_path / f"differences.{suffix}"

    code = verify_command(url(source), url(target), as_json=False, **{**OPTIONS, "max_examples": 5},
                          target_password_file=str(password_file), out=str(out))
    assert code == EXIT_FAILURES
    printed = capsys.readouterr()
    assert f"every difference (210) is in {out}" in printed.out
    assert "s3cret" not in printed.out + printed.err + out.read_text()
    assert not out.with_name(out.name + ".tmp").exists()
    with open(out, newline="") as stream:
        rows = read_back(stream, suffix)
    assert len(rows) == 210  # not only the 5 examples
    assert {row["key"] for row in rows if row["kind"] == MISSING} == set(keys[:150])
    assert {row["key"] for row in rows if row["kind"] == EXTRA} == {f"only-target:{i}".encode() for i in range(60)}
    with open(out, newline="") as stream:
        header = stream.readline()
    if suffix == "csv":
        assert header.strip().split(",") == list(DIFFERENCE_COLUMNS)
    else:
        assert list(json.loads(header)) == list(DIFFERENCE_COLUMNS)
    extra = next(row for row in rows if row["kind"] == EXTRA)
    assert extra["target_type"] == "string" and 0 < int(extra["target_ttl_ms"]) <= 600_000
    assert extra["source_type"] == "" and extra["source_ttl_ms"] in (None, "")
    binary = next(row for row in rows if b"\xff" in row["key"])
    assert binary["key_base64"] and binary["db"] in (0, "0")

    # The same through main(): the password from the environment, --json says where the file is.
    monkeypatch.setenv("EVE_TARGET_PASSWORD", "s3cret-pw")
    assert main(["verify", "--source", url(source), "--target", url(target), "--json", "--out", str(out)]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["out"] == str(out) and document["missing"] == 150 and document["extra"] == 60
    # A file named neither .jsonl nor .csv is refused before anything connects.
    with pytest.raises(ConfigError, match="--out: .*name the file .jsonl or .csv"):
        verify_command(url(source), url(target), as_json=True, **OPTIONS, out=str(tmp_path / "d.txt"))


def test_on_difference_and_on_progress(server_factory):
    # The library streams every difference past max_differences, and reports its progress in counts.
    source = server_factory("valkey-9.1")
    target = server_factory("valkey-9.1")
    src = source.client()
    fill(src, 500)
    seen = []
    progress = []
    report = verify(ConnectionSpec(source.host, source.port), ConnectionSpec(target.host, target.port),
                    max_differences=3, scan_count=50, on_difference=seen.append, on_progress=progress.append)
    assert report.missing == 500 and len(report.differences) == 3 and len(seen) == 500
    assert {d.key for d in seen} == set(keys_of(src))
    assert progress[0].keys_scanned == 0 and progress[0].keys_expected == 500
    last = progress[-1]
    assert last.keys_scanned >= 500 and last.differences == 500 and last.keys_compared == 500
    assert [p.keys_scanned for p in progress] == sorted(p.keys_scanned for p in progress)
    assert last.keys_per_second > 0 and last.eta_seconds == 0
    # Under MATCH, INFO keyspace cannot say how many keys the pass looks at.
    filtered = []
    verify(ConnectionSpec(source.host, source.port), ConnectionSpec(target.host, target.port), match="k:hash:*",
           on_progress=filtered.append)
    assert filtered[-1].keys_expected is None and filtered[-1].eta_seconds is None


# -- --fix -------------------------------------------------------------------------------------


def test_fix_turns_the_target_into_a_clean_one(server_factory, tmp_path, capsys, monkeypatch):
    # Chunks of 7 keys: re-copied and compared again several times in the middle of both passes.
    monkeypatch.setattr(verify_mod, "FIX_CHUNK", 7)
    source = server_factory("redis-7.0")
    target = server_factory("valkey-9.1")
    src, dst = source.client(), target.client()
    seed(src)
    source.client(db=2).set("db2-key", "v")
    copy(src, dst)
    copy(source.client(db=2), target.client(db=2))
    differ(src, dst)
    target.client(db=2).delete("db2-key")
    for i in range(20):
        dst.set(f"stray:{i}", i)
    before = keys_of(src)
    out = tmp_path / "found.jsonl"

    code = verify_command(url(source), url(target), as_json=False, **{**OPTIONS, "max_examples": 5}, fix=True,
                          out=str(out))
    printed = capsys.readouterr().out
    assert code == EXIT_OK, printed
    # 11 keys of db 0 and one of db 2 copied again; 'new' and the strays deleted.
    assert "fix: 12 keys copied again from the source, 21 deleted on the target (not on the source), 0 refused" \
        in printed, printed
    assert "fix: clean: the target now equals the source" in printed
    found = [json.loads(line)["kind"] for line in out.read_text().splitlines()]  # before the fix
    assert sorted(found) == sorted([MISSING] * 2 + [EXTRA] * 21 + [TYPE] + [VALUE] * 6 + [TTL] * 3)
    # Verified again from scratch: clean, and key by key identical (values, TTLs), no stray key left.
    assert verify_command(url(source), url(target), as_json=False, **OPTIONS) == EXIT_OK
    assert "clean" in capsys.readouterr().out
    assert_same(src, dst)
    assert keys_of(dst) == before == keys_of(src)
    assert target.client(db=2).get("db2-key") == b"v"


def test_fix_on_a_cluster_target_through_logical_copies(server_factory, cluster_factory, capsys):
    # Valkey 9.1 payloads are refused by Redis 7.0: the re-copy falls back to logical copies, and
    # routes each key to the master that owns its slot.
    source = server_factory("valkey-9.1")
    cluster = cluster_factory("redis-7.0", masters=3)
    src, dst = source.client(), cluster.client()
    seed(src, groups=False)  # a logical copy carries no consumer group (eve.live.recopy)
    # Some keys on the target already, with other values, types or TTLs; the rest is missing.
    dst.set("str", "hello World")
    dst.hset("h", mapping={"a": "1", "b": "changed"})
    dst.sadd("s", "x")
    dst.hset("t", "f", "v")
    dst.set("ttl-removed", "v")
    for i in range(30):
        dst.set(f"stray:{i}", i)
    # A source key in db 1 has no place on a cluster: the fix is refused for it, and says so.
    source.client(db=1).set("elsewhere", "v")
    target_url = f"redis://{cluster.host}:{cluster.port}"

    assert verify_command(url(source), target_url, as_json=True, **OPTIONS, fix=True) == EXIT_FAILURES
    document = json.loads(capsys.readouterr().out)
    fix = document["fix"]
    assert not fix["clean"] and fix["failed"] == 1 and fix["deleted"] == 30
    assert fix["failures"][0]["key"] == "elsewhere" and fix["failures"][0]["db"] == 1
    assert fix["still_different"] == {"missing": 1, "extra": 0, "different": 0, "ttl_mismatch": 0}
    assert fix["recopied"] == len(keys_of(src))
    assert document["extra"] == 30 and document["different"] >= 4 and document["ttl_mismatch"] >= 1

    assert verify_command(url(source), target_url, as_json=False, **{**OPTIONS, "db": 0}) == EXIT_OK
    capsys.readouterr()
    # The progress total comes from INFO keyspace on every master of the cluster.
    progress = []
    verify(ConnectionSpec(source.host, source.port), ConnectionSpec(cluster.host, cluster.port), dbs=[0],
           on_progress=progress.append)
    assert progress[0].keys_expected == 2 * len(keys_of(src)) <= progress[-1].keys_scanned
    assert_same(src, dst)
    assert keys_of(dst) == keys_of(src)
    assert all(master.client().dbsize() > 0 for master in cluster.masters)


def test_fix_is_refused_on_one_server_and_on_a_replica(server_factory, capsys):
    server = server_factory("valkey-9.1")
    client = server.client()
    fill(client, 40)
    before = client.dbsize()
    # Another name for the same host and port: recognised by run_id, not by the URL text.
    other_name = f"redis://localhost:{server.port}"
    with pytest.raises(ConfigError, match=r"^--fix: refused, nothing was written: .*same server \(run_id"):
        verify_command(url(server), other_name, as_json=False, **OPTIONS, fix=True)
    assert main(["verify", "--source", url(server), "--target", other_name, "--fix"]) == EXIT_USAGE
    assert "same server" in capsys.readouterr().err
    assert client.dbsize() == before
    # Without --fix, comparing a server with itself is allowed (and clean).
    assert verify_command(url(server), other_name, as_json=False, **OPTIONS) == EXIT_OK
    capsys.readouterr()

    replica = server_factory("valkey-9.1")
    replica.client().replicaof(server.host, server.port)
    with pytest.raises(ConfigError, match=r"^--fix: refused.*replica"):
        verify_command(url(server), url(replica), as_json=False, **OPTIONS, fix=True)


def test_fix_in_chunks_during_both_passes(server_factory, monkeypatch):
    # Chunks of 25 keys over SCAN steps of 10: the differences are re-copied and compared again
    # while each pass goes on, the backlog never holds more than a chunk and a step.
    monkeypatch.setattr(verify_mod, "FIX_CHUNK", 25)
    source = server_factory("valkey-9.1")
    target = server_factory("valkey-9.1")
    src, dst = source.client(), target.client()
    fill(src, 100)
    for i in range(60):
        dst.set(f"stray:{i}", i)
    phases = []
    report = verify(ConnectionSpec(source.host, source.port), ConnectionSpec(target.host, target.port), fix=True,
                    scan_count=10, on_progress=phases.append)
    assert (report.missing, report.extra) == (100, 60)
    fix = report.fix
    assert fix is not None and fix.clean and (fix.recopied, fix.deleted, fix.failed) == (100, 60, 0)
    assert fix.recheck.keys_compared == 100 and fix.recheck.clean
    names = [p.phase for p in phases]
    # 160 differences in chunks of at least 25: a chunk is flushed after the SCAN step that fills
    # it, and a step's size varies while the target's table rehashes, so not an exact count.
    assert names.count(FIXING) >= 4
    after_first_fix = names[names.index(FIXING) + 1:]
    assert COMPARING in after_first_fix and EXTRA_KEYS in after_first_fix
    assert phases[-1].fixed == 160 and phases[-1].phase == EXTRA_KEYS
    # The target's share of the total is read when its pass starts, after the fix added 100 keys.
    # (SCAN may return a key twice while the target's table resizes: at least, not exactly.)
    assert phases[0].keys_expected == 160 and phases[-1].keys_expected == 260 <= phases[-1].keys_scanned
    assert_same(src, dst)
    assert keys_of(dst) == keys_of(src)


# -- progress ----------------------------------------------------------------------------------


def run_eve(args: list[str], *, stderr_on_pty: bool, timeout: float = 60.0) -> tuple[int, str, str]:
    """``eve`` in a child process, its stderr on a pseudo-terminal or a pipe: (exit code, stdout, stderr)."""
    command = [sys.executable, "-m", "eve.cli.main", *args]
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"}
    if not stderr_on_pty:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        return done.returncode, done.stdout, done.stderr
    master, slave = os.openpty()
    try:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=slave, env=env)
        os.close(slave)
        slave = -1
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif child.poll() is not None:
                break
        stdout = child.communicate(timeout=max(deadline - time.monotonic(), 1))[0].decode()
        return child.returncode, stdout, b"".join(chunks).decode("utf-8", "replace")
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)


def test_progress_only_on_a_terminal(server_factory):
    source = server_factory("valkey-9.1")
    target = server_factory("valkey-9.1")
    fill(source.client(), 2_000)
    # Paced so the bar is drawn a few times: 2,000 keys at 4,000 keys/s.
    args = ["verify", "--source", url(source), "--target", url(target), "--max-keys-per-second", "4000"]

    code, stdout, stderr = run_eve(args, stderr_on_pty=False)
    assert code == EXIT_FAILURES and "2,000 missing" in stdout
    assert stderr == "", stderr

    code, stdout, stderr = run_eve(args, stderr_on_pty=True)
    assert code == EXIT_FAILURES and "2,000 missing" in stdout
    assert "comparing" in stderr and "keys/s" in stderr and "differences" in stderr, stderr
    assert "\x1b[" not in stdout  # the summary stays plain text

    code, stdout, stderr = run_eve([*args, "--json"], stderr_on_pty=True)
    assert code == EXIT_FAILURES and json.loads(stdout)["missing"] == 2_000
    assert "keys/s" not in stderr
    code, stdout, stderr = run_eve([*args, "--no-progress"], stderr_on_pty=True)
    assert "keys/s" not in stderr
