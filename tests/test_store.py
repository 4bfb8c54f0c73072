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
