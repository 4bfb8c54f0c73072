"""Unit tests of the SQLite store: no servers."""

from __future__ import annotations

import sqlite3
import stat

import pytest

from eve.core.errors import AlreadyExistsError, ConfigError, NotFoundError, StateError
from eve.core.store import SCHEMA_VERSION, Store

pytestmark = pytest.mark.timeout(30)


def test_created_private_and_versioned(tmp_path):
    path = tmp_path / "state" / "eve.db"
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "the state file holds passwords"
    store.close()


def test_persists_across_reopen(tmp_path):
    path = tmp_path / "eve.db"
    store = Store(path)
    store.create_endpoint("src", "redis", {"target": {"host": "h", "password": "p"}}, "the source")
    store.create_interlay("live", "src", 6200, {"max_concurrent_connections": 5})
    store.close()
    store = Store(path)
    assert store.get_endpoint("src").config == {"target": {"host": "h", "password": "p"}}
    assert store.get_endpoint("src").description == "the source"
    assert store.get_interlay("live").port == 6200
    store.close()


def test_newer_schema_refused(tmp_path):
    path = tmp_path / "eve.db"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="newer than this Eve"):
        Store(path)


def test_not_a_state_file(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="not an Eve state file"):
        Store(path)


def test_constraints(tmp_path):
    store = Store(tmp_path / "eve.db")
    store.create_endpoint("src", "redis", {}, "")
    with pytest.raises(AlreadyExistsError):
        store.create_endpoint("src", "redis", {}, "")
    with pytest.raises(NotFoundError):
        store.get_endpoint("nope")
    with pytest.raises(NotFoundError):
        store.create_interlay("live", "nope", 6200, {})
    store.create_interlay("live", "src", 6200, {})
    with pytest.raises(AlreadyExistsError, match="port 6200"):
        store.create_interlay("other", "src", 6200, {})
    with pytest.raises(StateError, match="interlay 'live'"):
        store.delete_endpoint("src")
    store.set_interlay_state("live", "RUNNING")
    with pytest.raises(StateError, match="stop it"):
        store.delete_interlay("live")
    store.set_interlay_state("live", "STOPPED")
    store.delete_interlay("live")
    # A run that uses the endpoint also protects it.
    with store.transaction() as db:
        db.execute("INSERT INTO runs (id, state, create_time, update_time) VALUES ('r1', 'CONFIGURED', 0, 0)")
        db.execute("INSERT INTO run_endpoints VALUES ('r1', 'src', 'source')")
    with pytest.raises(StateError, match=r"run 'r1' \(source\)"):
        store.delete_endpoint("src")
    assert store.get_endpoint("src")
    store.close()


def test_run_endpoint_snapshot(tmp_path):
    store = Store(tmp_path / "eve.db")
    store.create_endpoint("src", "redis", {"target": {"host": "a", "password": "p1"}}, "")
    store.create_endpoint("dst", "redis", {"target": {"host": "b"}}, "")
    store.create_run("r", "CONFIGURED", {"source": "src", "target": "dst"}, endpoints={"src": "source"})
    store.set_run_setup("r", {"source": "src", "target": "dst"}, {"src": "source", "dst": "target"})
    before = store.run_endpoints("r")
    assert [(e.endpoint, e.role, e.snapshot) for e in before] == [("src", "source", None), ("dst", "target", None)]
    taken = store.snapshot_run_endpoints("r")
    assert [e.snapshot for e in taken] == [e.config for e in taken] == [{"target": {"host": "a", "password": "p1"}},
                                                                        {"target": {"host": "b"}}]
    store.update_endpoint("src", "redis", {"target": {"host": "a2", "password": "p1"}}, "")
    after = store.run_endpoints("r")[0]
    assert after.snapshot == {"target": {"host": "a", "password": "p1"}}, "the snapshot does not follow the endpoint"
    assert after.config == {"target": {"host": "a2", "password": "p1"}}
    # A new setup drops the old snapshot; a finished run drops its endpoints and snapshot.
    store.set_run_setup("r", {"source": "src", "target": "dst"}, {"src": "source", "dst": "target"})
    assert [e.snapshot for e in store.run_endpoints("r")] == [None, None]
    store.snapshot_run_endpoints("r")
    store.release_run_endpoints("r")
    assert store.run_endpoints("r") == []
    with store.transaction() as db:
        assert db.execute("SELECT COUNT(*) FROM run_snapshots").fetchone()[0] == 0
    store.close()


def test_update_endpoint_refused_while_a_run_uses_it(tmp_path):
    store = Store(tmp_path / "eve.db")
    store.create_endpoint("src", "redis", {"target": {"host": "a"}}, "")
    store.create_endpoint("m", "redis", {"target": {"host": "m"}}, "")
    store.create_run("r1", "COPYING", endpoints={"src": "source", "m": "mirror"})
    with pytest.raises(StateError, match=r"endpoint 'src' is the source of run 'r1', which is COPYING"):
        store.update_endpoint("src", "redis", {"target": {"host": "b"}}, "", refuse_in_run_states={"COPYING"})
    with pytest.raises(StateError, match=r"endpoint 'm' is the mirror target of run 'r1'"):
        store.update_endpoint("m", "redis", {"target": {"host": "b"}}, "", refuse_in_run_states={"COPYING"})
    assert store.get_endpoint("src").config == {"target": {"host": "a"}}, "nothing changed"
    # In other states (and without states to refuse) the update goes through.
    store.update_endpoint("src", "redis", {"target": {"host": "b"}}, "", refuse_in_run_states={"SYNCING"})
    store.update_endpoint("src", "redis", {"target": {"host": "c"}}, "")
    assert store.get_endpoint("src").config == {"target": {"host": "c"}}
    store.close()


def test_older_state_file_upgraded_in_place(tmp_path):
    """A state file of schema version 3 (before run snapshots) with a run in it."""
    path = tmp_path / "eve.db"
    store = Store(path)
    store.create_endpoint("src", "redis", {"target": {"host": "a"}}, "")
    store.create_run("old", "COPYING", {"source": "src", "target": "src"}, endpoints={"src": "source"})
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE run_snapshots")
        db.execute("PRAGMA user_version=3")
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION
    assert [(e.endpoint, e.snapshot) for e in store.run_endpoints("old")] == [("src", None)]
    assert store.snapshot_run_endpoints("old")[0].snapshot == {"target": {"host": "a"}}
    store.close()


def test_verification_differences_join_the_error_keys_once(tmp_path):
    from eve.core.frames import ErrorKeyRow

    store = Store(tmp_path / "s.db")
    store.create_run("r", "COPYING")
    store.add_error_keys("r", [ErrorKeyRow(b"big", 0, "127.0.0.1:7001", "string", 9, "OOM command not allowed", 3)])
    verified = [ErrorKeyRow(b"big", 0, "127.0.0.1:6379", "", 0, "verification: missing: not on the target", 1),
                ErrorKeyRow(b"other", 0, "127.0.0.1:6379", "", 0, "verification: value: differs", 1)]
    for _ in range(2):  # a second Verify replaces the first one's reason
        store.add_verification_differences("r", verified)
        rows = {row.key: row for row in store.error_keys("r")}
        assert sorted(rows) == [b"big", b"other"] and store.error_key_count("r") == 2
        assert rows[b"big"].reason == "OOM command not allowed; verification: missing: not on the target"
        assert rows[b"big"].node == "127.0.0.1:7001" and rows[b"big"].attempts == 3
        assert rows[b"other"].reason == "verification: value: differs"
    store.close()
