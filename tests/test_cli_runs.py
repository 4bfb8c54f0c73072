"""`eve runs`, `eve endpoints` and `eve interlays` as subprocesses against a real coordinator
(`eve serve`) and real servers: a whole offline run and a whole live run (the flows of
docs/runbook.md and docs/runbook-online.md) with no grpcurl, their --json replies, exit codes
for bad input and wrong states, `watch` resuming after a coordinator restart without a gap,
TLS, and no password or token in any output."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from eve_process import EveServer
from keyspace import assert_same, fill, keys_of
from servers import free_port

from eve.cli.endpoints import apply_passwords, format_reply
from eve.cli.remote import STATUS_EXIT_CODES, exit_code_for_status
from eve.cli.runs import IN_SYNC, UntilCheck, setup_from_document
from eve.core.errors import ConfigError
from eve.v1 import common_pb2, workflows_pb2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
TOKEN = "tok-3f9a-cli-runs"
SOURCE_PASSWORD = "src-pw-7c1e"
OFFLINE_SETUP = """\
source = "redis-source"
target = "redis-target"
strategy = "OFFLINE"
mode = "AUTO"
conflict_policy = "REPLACE"
write_consistency = "SOURCE_AUTHORITATIVE"
preserve_ttl = true
rollback_window = "86400s"

[rate_limits]
max_keys_per_second = 50000
"""
ONLINE_SETUP = """\
source = "live-source"
target = "live-target"
strategy = "ONLINE_PHASED"
interlay = "app"
write_consistency = "SOURCE_AUTHORITATIVE"
conflict_policy = "REPLACE"
"""


class Cli:
    """``python -m eve ...`` against one coordinator; every output is kept, to look for secrets."""

    def __init__(self, eve: EveServer, *, token: str | None = None) -> None:
        self.env = {key: value for key, value in os.environ.items()
                    if key not in ("EVE_TOKEN", "EVE_ADDRESS", "COLUMNS")}
        self.env["EVE_ADDRESS"] = eve.address
        if token:
            self.env["EVE_TOKEN"] = token
        self.outputs: list[str] = []

    def __call__(self, *args: str, expect: int = 0, input: str | None = None, env: dict[str, str] | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "eve", *args], input=input, capture_output=True, text=True,
                                env={**self.env, **(env or {})}, timeout=timeout, check=False)
        self.outputs.append(result.stdout + result.stderr)
        assert result.returncode == expect, (f"eve {' '.join(args)} exited {result.returncode}, not {expect}:\n"
                                             f"{result.stdout}\n{result.stderr}")
        return result

    def endpoint(self, name: str, server: Any) -> None:
        """An endpoint in the `target` shape, its config on stdin."""
        self("endpoints", "create", name, "--file", "-",
             input=json.dumps({"target": {"host": "127.0.0.1", "port": server.port}}))

    def json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self(*args, "--json", **kw).stdout)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "eve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env)

    def collect(self, process: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        self.outputs.append(stdout + stderr)
        return stdout, stderr

    def assert_no_secret(self, *secrets: str, extra: str = "") -> None:
        for output in [*self.outputs, extra]:
            for secret in secrets:
                assert secret not in output, f"a secret was printed:\n{output}"


@pytest.fixture
def eve(tmp_path):
    server = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log", token=TOKEN).start()
    yield server
    server.stop()


def event_seqs(stdout: str) -> list[int]:
    return [json.loads(line)["seq"] for line in stdout.splitlines() if line.strip()]


def run_in_pty(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """``args`` with a terminal as stdout and stderr (rich draws its bars only on one)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(args, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL,
                               env={**env, "TERM": "xterm", "COLUMNS": "160"})
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        return process.wait(timeout=10), b"".join(chunks).decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)


# -- no servers ---------------------------------------------------------------------------


def test_setup_file_mirrors_run_setup(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(OFFLINE_SETUP + '\n[filters]\nkey_pattern = "user:*"\ndbs = [0, 2]\n')
    setup = setup_from_document(str(path))
    assert setup.strategy == workflows_pb2.OFFLINE and setup.rollback_window.seconds == 86400
    assert setup.rate_limits.max_keys_per_second == 50000 and list(setup.filters.dbs) == [0, 2]
    assert setup.HasField("preserve_ttl") and setup.preserve_ttl

    path.write_text(OFFLINE_SETUP + '\n[filters]\npattern = "user:*"\n')
    with pytest.raises(ConfigError) as caught:
        setup_from_document(str(path))
    assert "'filters.pattern'" in str(caught.value) and "key_pattern" in str(caught.value)
    path.write_text('sorce = "a"\n')
    with pytest.raises(ConfigError, match="'sorce'.*RunSetup has no such field"):
        setup_from_document(str(path))
    path.write_text('strategy = "SIDEWAYS"\n')
    with pytest.raises(ConfigError, match="SIDEWAYS"):
        setup_from_document(str(path))
    path.write_text('source = "a"\ntarget = \n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        setup_from_document(str(path))


def test_passwords_go_where_the_config_has_none(tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("EVE_TEST_PW", "from-the-env")
    config: dict[str, Any] = {"target": {"host": "h"}}
    assert apply_passwords(config, [("--password-file", str(secret))]) == ["from-a-file"]
    assert config["target"]["password"] == "from-a-file"

    config = {"read_conn": {"host": "h"}, "write_conn": {"host": "h", "password": "kept"}}
    apply_passwords(config, [("--password-env", "EVE_TEST_PW")])
    assert config["read_conn"]["password"] == "from-the-env" and config["write_conn"]["password"] == "kept"

    # Role credentials take it rather than the connection: the API refuses both at once.
    config = {"target": {"host": "h"}, "read_credentials": {"username": "r"}, "write_credentials": {"username": "w"}}
    apply_passwords(config, [("--password-file", f"write_credentials={secret}"), ("--password-env", "EVE_TEST_PW")])
    assert config["write_credentials"]["password"] == "from-a-file"
    assert config["read_credentials"]["password"] == "from-the-env" and "password" not in config["target"]

    with pytest.raises(ConfigError, match="already has a password"):
        apply_passwords({"target": {"host": "h", "password": "x"}}, [("--password-env", "target=EVE_TEST_PW")])
    with pytest.raises(ConfigError, match="EVE_TEST_UNSET is not set"):
        apply_passwords({"target": {"host": "h"}}, [("--password-env", "EVE_TEST_UNSET")])
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        apply_passwords({"target": {"host": "h"}}, [("--password-file", str(tmp_path / "empty"))])


def test_status_codes_map_to_exit_codes():
    expected = {grpc.StatusCode.OK: 0, grpc.StatusCode.INVALID_ARGUMENT: 2, grpc.StatusCode.NOT_FOUND: 2,
                grpc.StatusCode.UNAVAILABLE: 2, grpc.StatusCode.PERMISSION_DENIED: 2,
                grpc.StatusCode.UNAUTHENTICATED: 2, grpc.StatusCode.ALREADY_EXISTS: 2,
                grpc.StatusCode.FAILED_PRECONDITION: 5, grpc.StatusCode.INTERNAL: 70, grpc.StatusCode.UNKNOWN: 70}
    assert {code: exit_code_for_status(code) for code in expected} == expected
    assert set(STATUS_EXIT_CODES) <= {code.name for code in grpc.StatusCode}


def test_replies_print_as_redis_cli_does():
    value = common_pb2.RespValue
    reply = value(array=common_pb2.RespList(items=[
        value(bulk_string=b"a", text="a"), value(integer=3), value(nil=True),
        value(array=common_pb2.RespList(items=[value(simple_string="OK"), value(bulk_string=b"\xff")]))]))
    assert format_reply(reply) == '1) "a"\n2) (integer) 3\n3) (nil)\n4) 1) OK\n   2) "\\xff"'
    assert format_reply(value(error="ERR no")) == "(error) ERR no"
    assert format_reply(value(bulk_string=b"# Keyspace\r\ndb0:keys=1\r\n", text="# Keyspace\r\ndb0:keys=1\r\n")) \
        == "# Keyspace\ndb0:keys=1"
    assert format_reply(value(array=common_pb2.RespList())) == "(empty array)"


def _event(seq: int, state: str, type: str = "state", message: str = "") -> workflows_pb2.Event:
    return workflows_pb2.Event(seq=seq, state=workflows_pb2.RunState.Value(state), type=type, message=message)


def test_until_needs_the_state_reached_now_not_only_in_the_history():
    check = UntilCheck("READY")
    check.saw(_event(1, "READY"))
    assert check.verdict("PREPARING") is None  # prepared again since: that READY is history
    assert check.verdict("READY") == 0
    assert check.verdict("COPYING") == 0  # passed it on the way
    assert UntilCheck("CUT_OVER").verdict("CANCELLED") == 5
    assert UntilCheck(None).verdict("COMPLETED") == 0 and UntilCheck(None).verdict("FAILED") == 1
    assert UntilCheck(None).verdict("CUT_OVER") is None
    now = UntilCheck("CUT_OVER")
    now.seen.add("CUT_OVER")  # what eve runs watch does with the state GetRun reports at the start
    assert now.verdict("CUT_OVER") == 0

    in_sync = UntilCheck(IN_SYNC)
    in_sync.saw(_event(5, "SYNCING", "live", "in sync: writes go to every side"))
    assert in_sync.verdict("SYNCING") == 0
    in_sync.saw(_event(6, "SYNCING", "state", "coordinator restarted: comparing the sides"))
    assert in_sync.verdict("SYNCING") is None  # catching up again after the restart


# -- against a coordinator ----------------------------------------------------------------


@pytest.mark.integration
def test_offline_run_through_the_cli(tmp_path, server_factory, eve):
    """docs/runbook.md with `eve` commands alone."""
    source = server_factory("redis-7.0", password=SOURCE_PASSWORD)
    target = server_factory("valkey-9.1")
    fill(source.client(), 800)
    cli = Cli(eve, token=TOKEN)

    # 1. endpoints: the runbook's JSON through stdin, the password from the environment
    source_config = json.dumps({
        "read_conn": {"host": "127.0.0.1", "port": source.port, "tls": False, "protocol_version": 2},
        "write_conn": {"host": "127.0.0.1", "port": source.port, "tls": False, "protocol_version": 2},
        "connection_pool": {"multiplexed_connections": 1}})
    cli("endpoints", "create", "redis-source", "--file", "-", "--password-env", "SOURCE_PW",
        "--description", "Current Redis source", input=source_config, env={"SOURCE_PW": SOURCE_PASSWORD})
    (tmp_path / "target.toml").write_text(f'[target]\nhost = "127.0.0.1"\nport = {target.port}\n')
    created = cli.json("endpoints", "create", "redis-target", "--file", str(tmp_path / "target.toml"),
                       "--description", "New Valkey target")
    assert created["config"]["target"]["port"] == target.port and created["config"]["target"]["tls"] is False
    shown = cli.json("endpoints", "get", "redis-source")
    assert shown["config"]["read_conn"]["password"] == "<redacted>" and shown["description"] == "Current Redis source"
    assert "redis-target" in cli("endpoints", "list").stdout
    # get --json, edited, back through update: "<redacted>" keeps the stored password
    shown["description"] = "Redis 7.0, rack 4"
    (tmp_path / "source.json").write_text(json.dumps(shown))
    cli("endpoints", "update", "redis-source", "--file", str(tmp_path / "source.json"))
    assert cli.json("endpoints", "get", "redis-source")["description"] == "Redis 7.0, rack 4"
    assert "db0:keys=800" in cli("endpoints", "read", "redis-source", "INFO", "keyspace").stdout
    assert cli("endpoints", "read", "redis-target", "DBSIZE").stdout.strip() == "(integer) 0"
    assert cli.json("endpoints", "read", "redis-target", "DBSIZE")["reply"]["integer"] == 0
    # 2. the interlay (an offline run sends no traffic through it)
    cli("interlays", "create", "redis-live-interlay", "--endpoint", "redis-source", "--port", str(free_port()),
        "--max-connections", "512")
    interlay = cli.json("interlays", "get", "redis-live-interlay")
    assert interlay["state"] == "INTERLAY_STOPPED" and interlay["settings"]["max_concurrent_connections"] == 512
    assert "redis-live-interlay" in cli("interlays", "list").stdout

    # 3. run and setup; 4. the event log follows the whole run
    assert cli.json("runs", "create", "redis-offline-1", "--description", "Redis to Valkey")["state"] == "CREATED"
    (tmp_path / "run.toml").write_text(OFFLINE_SETUP)
    assert "OFFLINE" in cli("runs", "setup", "redis-offline-1", "--file", str(tmp_path / "run.toml")).stdout
    log = cli.popen("runs", "watch", "redis-offline-1", "--json")
    try:
        # 5. prepare waits for READY; 6. review, acknowledge
        prepared = cli("runs", "prepare", "redis-offline-1")
        assert "READY" in prepared.stdout
        review = cli("runs", "review", "redis-offline-1")
        for title in ("keyspace analysis", "test run"):
            assert title in review.stdout
        reviewed = cli.json("runs", "review", "redis-offline-1")
        assert set(reviewed) == {"compatibility", "analysis", "test_run"}
        assert sum(db["keys"] for db in reviewed["analysis"]["dbs"]) == 800
        assert reviewed["compatibility"]["compatible"] is True
        assert all(r["failed"] == 0 for r in reviewed["test_run"]["results"])
        cli("runs", "ack", "redis-offline-1", "--all", "--notes", "reviewed by ops")
        issues = cli.json("runs", "review", "redis-offline-1")["compatibility"]["issues"]
        assert all(issue["acknowledged"] for issue in issues if not issue["blocking"])
        # 7. approve; 8. watch until the copy is done, metrics and error keys
        approved = cli.json("runs", "approve", "redis-offline-1", "--notes", "change 4711 approved")
        assert approved["state"] in ("APPROVED", "COPYING", "CUT_OVER")
        watched = cli("runs", "watch", "redis-offline-1", "--until", "CUT_OVER")
        assert "reached CUT_OVER" in watched.stderr and "bulk copy finished" in watched.stdout
        shown = cli.json("runs", "show", "redis-offline-1")
        assert shown["run"]["state"] == "CUT_OVER"
        metrics = shown["metrics"]
        assert metrics["keys_restored"] == 800 and metrics["keys_failed"] == 0 and metrics["dirty_backlog"] == 0
        assert "800 of 800 keys scanned" in cli("runs", "show", "redis-offline-1").stdout
        assert "no error keys" in cli("runs", "errors", "redis-offline-1").stdout
        assert cli.json("runs", "errors", "redis-offline-1") == {"error_keys": [], "next_page_token": ""}
        cli("runs", "errors", "redis-offline-1", "--export", str(tmp_path / "error-keys.jsonl"))
        assert (tmp_path / "error-keys.jsonl").read_text() == ""
        # 9. verify, complete
        report = cli.json("runs", "verify", "redis-offline-1", "--ttl-tolerance-ms", "1000")
        assert report["clean"] is True and report["keys_compared"] == 800 and report["missing"] == 0
        completed = cli("runs", "complete", "redis-offline-1", "--notes", "target accepted")
        assert "COMPLETED" in completed.stdout
        # 10. the event log ended with the run, every event once and in order
        stdout, stderr = cli.collect(log)
    finally:
        if log.poll() is None:
            log.kill()
            log.communicate()
    assert log.returncode == 0, stderr
    seqs = event_seqs(stdout)
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 10
    assert json.loads(stdout.splitlines()[-1])["state"] == "COMPLETED"
    listed = cli.json("runs", "list")["runs"]
    assert [(run["id"], run["state"]) for run in listed] == [("redis-offline-1", "COMPLETED")]
    assert "redis-offline-1" in cli("runs", "list").stdout
    assert_same(source.client(), target.client())
    # A completed run releases its endpoints; an interlay never started goes as well.
    cli("interlays", "delete", "redis-live-interlay")
    cli("interlays", "get", "redis-live-interlay", expect=2)
    cli("endpoints", "delete", "redis-target")
    assert "redis-target" not in cli("endpoints", "list").stdout

    # On a terminal, the same numbers as progress bars: replayed, then the final metrics.
    status, screen = run_in_pty([sys.executable, "-m", "eve", "runs", "watch", "redis-offline-1"], cli.env)
    assert status == 0, screen
    assert "800/800" in screen and "copy" in screen
    cli.outputs.append(screen)
    cli.assert_no_secret(SOURCE_PASSWORD, TOKEN, extra=eve.log())


@pytest.mark.integration
def test_online_run_through_the_cli(tmp_path, server_factory, eve):
    """docs/runbook-online.md with `eve` commands alone, an application writing through the interlay."""
    source, target = server_factory("valkey-8.1"), server_factory("valkey-8.1")
    fill(source.client(), 500)
    cli = Cli(eve, token=TOKEN)
    cli.endpoint("live-source", source)
    cli.endpoint("live-target", target)
    app_port = free_port()
    cli("interlays", "create", "app", "--endpoint", "live-source", "--port", str(app_port), "--max-connections", "512")
    assert cli.json("interlays", "start", "app")["state"] == "INTERLAY_RUNNING"
    app = redis.Redis(host="127.0.0.1", port=app_port, socket_timeout=10)
    app.set("app:visits", 0)
    assert app.incr("app:visits") == 1

    (tmp_path / "online.toml").write_text(ONLINE_SETUP)
    created = cli.json("runs", "create", "live-1", "--description", "Redis to Valkey, live",
                       "--file", str(tmp_path / "online.toml"))
    assert created["state"] == "CONFIGURED" and created["setup"]["strategy"] == "ONLINE_PHASED"
    cli("runs", "prepare", "live-1")
    cli("runs", "ack", "live-1", "--all", "--notes", "reviewed")
    cli("runs", "approve", "live-1", "--notes", "change 4712")

    # The application keeps writing while the run copies and catches up.
    stop = threading.Event()

    def application() -> None:
        writer = redis.Redis(host="127.0.0.1", port=app_port, socket_timeout=10)
        while not stop.is_set():
            writer.incr("app:loop")
            stop.wait(0.05)

    writing = threading.Thread(target=application, daemon=True)
    writing.start()
    try:
        watched = cli("runs", "watch", "live-1", "--until", "IN_SYNC")
    finally:
        stop.set()
        writing.join(timeout=10)
    assert "in sync" in watched.stdout and "reached IN_SYNC" in watched.stderr
    shown = cli.json("runs", "show", "live-1")
    assert shown["run"]["state"] == "SYNCING" and shown["metrics"]["authoritative"] == "source"
    assert "live:" in cli("runs", "show", "live-1").stdout

    # Reads first, by key hash; then writes.
    assert cli.json("runs", "traffic", "live-1", "--reads", "50")["read_percent_target"] == 50
    app.incr("app:visits")
    cut = cli.json("runs", "traffic", "live-1", "--cutover")
    assert cut["state"] == "CUT_OVER" and cut["writes_on_target"] is True and cut["read_percent_target"] == 100
    assert app.incr("app:visits") == 3
    assert target.client().get("app:visits") == b"3"
    assert "dual writes to" in cli("interlays", "get", "app").stdout

    assert cli.json("runs", "verify", "live-1")["clean"] is True
    assert "COMPLETED" in cli("runs", "complete", "live-1", "--notes", "target accepted").stdout
    assert app.incr("app:visits") == 4
    assert target.client().get("app:visits") == b"4"
    cli("runs", "traffic", "live-1", "--reads", "10", expect=5)  # completed: nothing moves any more
    replayed = cli("runs", "watch", "live-1", "--json")
    seqs = event_seqs(replayed.stdout)
    assert seqs == list(range(1, len(seqs) + 1))
    assert any(json.loads(line)["message"].startswith("writes cut over") for line in replayed.stdout.splitlines())
    app.close()
    assert cli.json("interlays", "stop", "app")["state"] == "INTERLAY_STOPPED"
    assert keys_of(target.client()) >= keys_of(source.client())
    assert_same(source.client(), target.client(), keys=keys_of(source.client()) - {b"app:visits"})
    cli.assert_no_secret(TOKEN)


@pytest.mark.integration
def test_blocking_issues_and_error_keys_through_the_cli(tmp_path, server_factory, eve):
    """Redis 8.2 -> Redis 7.0 in DUMP_RESTORE: set-listpack and stream payloads cannot move. Only
    sets: blocking; a third of the keys: error keys, tolerated with max_error_ratio 1."""
    sets, source, target = server_factory("redis-8.2"), server_factory("redis-8.2"), server_factory("redis-7.0")
    sets.client().sadd("s1", "a", "b")
    fill(source.client(), 120)
    failing = 40
    cli = Cli(eve, token=TOKEN)
    cli.endpoint("sets", sets)
    cli.endpoint("src", source)
    cli.endpoint("dst", target)
    setup = tmp_path / "run.toml"
    setup.write_text('source = "sets"\ntarget = "dst"\nmode = "DUMP_RESTORE"\n')
    cli("runs", "create", "strict", "--file", str(setup))
    cli("runs", "prepare", "strict")
    review = cli("runs", "review", "strict", expect=1)
    assert "KEY_MOVEMENT" in review.stdout and "blocking issue" in review.stdout
    assert "blocking: fix them" in cli("runs", "ack", "strict", "--all", "--notes", "no").stdout
    assert "approval refused" in cli("runs", "approve", "strict", expect=5).stderr
    cli("runs", "cancel", "strict", "--reason", "wrong mode")

    setup.write_text('source = "src"\ntarget = "dst"\nmode = "DUMP_RESTORE"\nmax_error_ratio = 1\n')
    cli("runs", "create", "auto", "--file", str(setup))
    cli("runs", "prepare", "auto")
    issues = cli.json("runs", "review", "auto")["compatibility"]["issues"]
    mismatch = next(issue for issue in issues if issue["code"] == "KEY_MOVEMENT")
    assert mismatch["blocking"] is False and mismatch["acknowledged"] is False
    assert "unacknowledged" in cli("runs", "approve", "auto", expect=5).stderr
    acknowledged = cli.json("runs", "ack", "auto", *(issue["id"] for issue in issues),
                            "--notes", "logical copy comes later")
    assert [issue["id"] for issue in acknowledged] == [issue["id"] for issue in issues]
    assert all(issue["acknowledged"] and issue["notes"] == "logical copy comes later" for issue in acknowledged)
    cli("runs", "approve", "auto")
    cli("runs", "watch", "auto", "--until", "CUT_OVER")
    assert cli.json("runs", "show", "auto")["metrics"]["keys_failed"] == failing
    listed = cli.json("runs", "errors", "auto", "--limit", "0")
    assert len(listed["error_keys"]) == failing == len({error["key"] for error in listed["error_keys"]})
    page = cli.json("runs", "errors", "auto", "--limit", "25")
    assert len(page["error_keys"]) == 25 and page["next_page_token"]
    table = cli("runs", "errors", "auto", "--limit", "25")
    assert "error keys by reason" in table.stdout and "--export FILE has them all" in table.stdout
    cli("runs", "errors", "auto", "--export", str(tmp_path / "errors.csv"))
    assert len((tmp_path / "errors.csv").read_text().splitlines()) == failing + 1  # a header and the keys
    assert len(cli("runs", "errors", "auto", "--export", "-").stdout.splitlines()) == failing  # JSON Lines
    retried = cli("runs", "errors", "auto", "--retry", expect=1)
    assert f"{failing} still failing" in retried.stdout
    verified = cli("runs", "verify", "auto", expect=1)
    assert "differences found" in verified.stdout and f"{failing} missing" in verified.stdout
    assert cli.json("runs", "verify", "auto", expect=1)["clean"] is False
    cli("runs", "complete", "auto", expect=5)
    done = cli.json("runs", "complete", "auto", "--accept-differences", "--notes", "moving these by hand")
    assert done["state"] == "COMPLETED"
    cli.assert_no_secret(TOKEN)


@pytest.mark.integration
def test_watch_resumes_after_a_coordinator_restart(tmp_path, server_factory):
    source, target = server_factory("redis-7.0"), server_factory("valkey-8.1")
    fill(source.client(), 300)
    eve = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log").start()
    try:
        cli = Cli(eve)
        cli.endpoint("redis-source", source)
        cli.endpoint("redis-target", target)
        (tmp_path / "run.toml").write_text(OFFLINE_SETUP)
        cli("runs", "create", "r", "--file", str(tmp_path / "run.toml"))
        cli("runs", "prepare", "r")
        watch = cli.popen("runs", "watch", "r", "--json", "--until", "CUT_OVER", "--reconnect-seconds", "60")
        try:
            time.sleep(2)  # the watch has replayed the history up to READY and follows live
            assert watch.poll() is None
            eve.stop()
            time.sleep(1)
            eve = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log", listen=eve.address).start()
            cli("runs", "approve", "r")
            stdout, stderr = cli.collect(watch, timeout=120)
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.communicate()
        assert watch.returncode == 0, stderr
        assert "lost the coordinator" in stderr and "resuming after event #" in stderr
        seqs = event_seqs(stdout)
        assert seqs == list(range(1, len(seqs) + 1)), seqs  # no gap, nothing twice
        states = [json.loads(line)["state"] for line in stdout.splitlines()]
        assert "READY" in states and states[-1] == "CUT_OVER"
        # --after-seq: only what came later
        later = cli("runs", "watch", "r", "--json", "--until", "CUT_OVER", "--after-seq", str(seqs[-3]))
        assert event_seqs(later.stdout) == seqs[-2:]
    finally:
        eve.stop()


@pytest.mark.integration
def test_bad_input_and_wrong_states_exit_codes(tmp_path, eve):
    cli = Cli(eve, token=TOKEN)
    port = free_port()  # nothing listens: creating endpoints and runs does not connect
    cli("endpoints", "create", "src", "--file", "-", input=json.dumps({"target": {"host": "127.0.0.1", "port": port}}))
    cli("endpoints", "create", "dst", "--file", "-", input=json.dumps({"target": {"host": "127.0.0.1", "port": port}}))
    setup = tmp_path / "run.toml"

    # Bad input: 2, naming what is wrong.
    bad = cli("endpoints", "create", "x", "--file", "-", expect=2,
              input=json.dumps({"target": {"host": "h", "prot": 1}}))
    assert "'target.prot'" in bad.stderr
    bad = cli("endpoints", "create", "x", "--file", "-", expect=2,
              input=json.dumps({"target": {"host": "h", "password": 4711}}))
    assert "password" in bad.stderr
    cli("endpoints", "create", "src", "--file", "-", expect=2, input=json.dumps({"target": {"host": "h"}}))
    cli("endpoints", "create", "x", "--file", "-", "--password-env", "EVE_TEST_NOT_SET", expect=2,
        input=json.dumps({"target": {"host": "h"}}))
    cli("endpoints", "create", "x", "--file", str(tmp_path / "missing.json"), expect=2)
    cli("runs", "create", "r1")
    setup.write_text('source = "src"\ntarget = "dst"\n[filters]\npattern = "a*"\n')
    assert "'filters.pattern'" in cli("runs", "setup", "r1", "--file", str(setup), expect=2).stderr
    setup.write_text('source = "src"\ntarget = "dst"\nstrategy = "SIDEWAYS"\n')
    assert "SIDEWAYS" in cli("runs", "setup", "r1", "--file", str(setup), expect=2).stderr
    setup.write_text('source = "src"\ntarget = "nowhere"\n')
    cli("runs", "setup", "r1", "--file", str(setup), expect=2)  # the server refuses an unknown endpoint
    assert "not-a-run" in cli("runs", "show", "not-a-run", expect=2).stderr  # NOT_FOUND
    cli("runs", "create", "r1", expect=2)  # ALREADY_EXISTS
    cli("runs", "traffic", "r1", expect=2)  # says neither --reads nor --cutover
    cli("runs", "ack", "r1", "--notes", "n", expect=2)  # names no issue
    cli("runs", "watch", "r1", "--until", "NOWHERE", expect=2)

    # Wrong state: 5.
    cli("runs", "approve", "r1", expect=5)
    cli("runs", "review", "r1", expect=5)
    setup.write_text('source = "src"\ntarget = "dst"\nstrategy = "OFFLINE"\n')
    cli("runs", "setup", "r1", "--file", str(setup))
    cli("runs", "traffic", "r1", "--reads", "10", expect=5)  # an offline run
    cli("runs", "verify", "r1", expect=5)
    cli("runs", "complete", "r1", expect=5)
    assert "OFFLINE" in cli("runs", "watch", "r1", "--until", "IN_SYNC", expect=2).stderr
    cli("endpoints", "delete", "src", expect=5)  # run r1 uses it
    assert cli.json("runs", "cancel", "r1", "--reason", "test")["state"] == "CANCELLED"
    cli("runs", "cancel", "r1", expect=5)
    watched = cli("runs", "watch", "r1", "--until", "CUT_OVER", expect=5)  # it never will now
    assert "will not reach CUT_OVER" in watched.stderr

    # The coordinator unreachable, the token missing or wrong: 2, never echoing the token.
    nowhere = cli("runs", "list", "--address", f"127.0.0.1:{free_port()}", expect=2)
    assert "cannot reach the coordinator" in nowhere.stderr
    assert "needs a token" in cli("runs", "list", env={"EVE_TOKEN": ""}, expect=2).stderr
    refused = cli("runs", "list", env={"EVE_TOKEN": "wrong-token-91b2"}, expect=2)
    assert "refused" in refused.stderr and "wrong-token-91b2" not in refused.stderr
    (tmp_path / "token").write_text(TOKEN + "\n")
    cli("runs", "list", "--token-file", str(tmp_path / "token"), env={"EVE_TOKEN": ""})
    cli("runs", "list", "--token-file", str(tmp_path / "missing-token"), expect=2)
    cli.assert_no_secret(TOKEN)


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.integration
def test_tls_ca_builds_a_secure_channel(tmp_path, eve):
    """--tls-ca speaks TLS: it fails clearly against the plaintext `eve serve`, and works with a
    coordinator serving TLS (Eve's servicers on a TLS port, in this process, since `eve serve` has
    no TLS flags yet)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    from eve.api.server import build_server
    from eve.core.store import Store
    from eve.workflow.registry import Coordinator

    cert, key = _certificate(tmp_path, "server")
    other, _ = _certificate(tmp_path, "other")
    cli = Cli(eve, token=TOKEN)
    plaintext = cli("runs", "list", "--tls-ca", str(cert), expect=2)
    assert "over TLS" in plaintext.stderr and str(cert) in plaintext.stderr
    (tmp_path / "not-a-ca.pem").write_text("not a certificate\n")
    assert "no PEM CA certificate" in cli("runs", "list", "--tls-ca", str(tmp_path / "not-a-ca.pem"),
                                          expect=2).stderr
    cli("runs", "list", "--tls-ca", str(tmp_path / "missing.pem"), expect=2)

    store = Store(tmp_path / "tls.db")
    server = build_server(Coordinator(store), token=TOKEN)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        address = f"127.0.0.1:{port}"
        assert "no runs" in cli("runs", "list", "--address", address, "--tls-ca", str(cert)).stdout
        cli("runs", "create", "tls-1", "--address", address, "--tls-ca", str(cert))
        assert cli.json("runs", "list", "--address", address, "--tls-ca", str(cert))["runs"][0]["id"] == "tls-1"
        refused = cli("runs", "list", "--address", address, "--tls-ca", str(other), expect=2)
        assert "over TLS" in refused.stderr
        cli("runs", "list", "--address", address, expect=2)  # plaintext against TLS
    finally:
        server.stop(None)
        store.close()
    cli.assert_no_secret(TOKEN)
