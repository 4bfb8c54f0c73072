"""The coordinator's state in SQLite: endpoints, interlays, runs (and, as later
schema versions add them, events, error keys and checkpoints).

Only the coordinator process opens the store. One connection, serialized by a
lock (gRPC handlers run on a thread pool); WAL so readers never wait on a
writer's fsync. The schema is versioned: ``MIGRATIONS[i]`` takes a database from
version ``i`` to ``i + 1``, so a newer Eve upgrades an older state file in place
and an older Eve refuses a newer one instead of corrupting it.

The file holds endpoint passwords, so it is created readable by its owner only.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from eve.errors import AlreadyExistsError, ConfigError, NotFoundError, StateError

__all__ = ["Store", "EndpointRecord", "InterlayRecord", "SCHEMA_VERSION"]

MIGRATIONS: list[str] = [
    # 0 -> 1: endpoints, interlays, runs and the endpoints each run uses.
    """
    CREATE TABLE endpoints (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        config TEXT NOT NULL,           -- JSON, passwords included (file is 0600)
        description TEXT NOT NULL DEFAULT '',
        create_time REAL NOT NULL,
        update_time REAL NOT NULL
    );
    CREATE TABLE interlays (
        id TEXT PRIMARY KEY,
        endpoint TEXT NOT NULL REFERENCES endpoints(name),
        port INTEGER NOT NULL,
        settings TEXT NOT NULL,         -- JSON
        state TEXT NOT NULL,            -- STOPPED, RUNNING, ... (the desired state survives restarts)
        last_error TEXT NOT NULL DEFAULT '',
        create_time REAL NOT NULL,
        update_time REAL NOT NULL
    );
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        setup TEXT,                     -- JSON, NULL until SubmitSetup
        description TEXT NOT NULL DEFAULT '',
        failure_reason TEXT NOT NULL DEFAULT '',
        create_time REAL NOT NULL,
        update_time REAL NOT NULL
    );
    CREATE TABLE run_endpoints (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        endpoint TEXT NOT NULL REFERENCES endpoints(name),
        role TEXT NOT NULL,             -- source, target, mirror
        PRIMARY KEY (run_id, endpoint)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class EndpointRecord:
    name: str
    kind: str
    config: dict[str, Any]
    description: str
    create_time: float
    update_time: float


@dataclass(frozen=True)
class InterlayRecord:
    id: str
    endpoint: str
    port: int
    settings: dict[str, Any]
    state: str
    last_error: str
    create_time: float
    update_time: float


class Store:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                # Create it private before SQLite writes a byte of state into it.
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{path} is not an Eve state file: {exc}", field="state") from exc
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.row_factory = sqlite3.Row
        self._migrate()

    # -- plumbing -----------------------------------------------------------------

    def _migrate(self) -> None:
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"state file {self.path} has schema version {version}, newer than this "
                    f"Eve understands ({SCHEMA_VERSION}); upgrade Eve")
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("PRAGMA user_version").fetchone()[0]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- endpoints ----------------------------------------------------------------

    @staticmethod
    def _endpoint(row: sqlite3.Row) -> EndpointRecord:
        return EndpointRecord(row["name"], row["kind"], json.loads(row["config"]), row["description"],
                              row["create_time"], row["update_time"])

    def create_endpoint(self, name: str, kind: str, config: dict[str, Any], description: str) -> EndpointRecord:
        now = time.time()
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM endpoints WHERE name = ?", (name,)).fetchone():
                raise AlreadyExistsError(f"endpoint {name!r} already exists")
            db.execute("INSERT INTO endpoints VALUES (?, ?, ?, ?, ?, ?)",
                       (name, kind, json.dumps(config), description, now, now))
        return EndpointRecord(name, kind, config, description, now, now)

    def get_endpoint(self, name: str) -> EndpointRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM endpoints WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"endpoint {name!r} not found")
        return self._endpoint(row)

    def list_endpoints(self) -> list[EndpointRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM endpoints ORDER BY name").fetchall()
        return [self._endpoint(row) for row in rows]

    def update_endpoint(self, name: str, kind: str, config: dict[str, Any], description: str) -> EndpointRecord:
        now = time.time()
        with self.transaction() as db:
            updated = db.execute(
                "UPDATE endpoints SET kind = ?, config = ?, description = ?, update_time = ? WHERE name = ?",
                (kind, json.dumps(config), description, now, name)).rowcount
            if not updated:
                raise NotFoundError(f"endpoint {name!r} not found")
        return self.get_endpoint(name)

    def endpoint_users(self, name: str) -> list[str]:
        """Who uses the endpoint, as "interlay X" / "run Y (source)" phrases."""
        with self._lock:
            interlays = self._db.execute("SELECT id FROM interlays WHERE endpoint = ? ORDER BY id", (name,)).fetchall()
            runs = self._db.execute(
                "SELECT run_id, role FROM run_endpoints WHERE endpoint = ? ORDER BY run_id", (name,)).fetchall()
        return [f"interlay {r['id']!r}" for r in interlays] + [f"run {r['run_id']!r} ({r['role']})" for r in runs]

    def delete_endpoint(self, name: str) -> None:
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM endpoints WHERE name = ?", (name,)).fetchone() is None:
                raise NotFoundError(f"endpoint {name!r} not found")
            users = self.endpoint_users(name)
            if users:
                raise StateError(f"endpoint {name!r} is in use by {', '.join(users)}")
            db.execute("DELETE FROM endpoints WHERE name = ?", (name,))

    # -- interlays ----------------------------------------------------------------

    @staticmethod
    def _interlay(row: sqlite3.Row) -> InterlayRecord:
        return InterlayRecord(row["id"], row["endpoint"], row["port"], json.loads(row["settings"]),
                              row["state"], row["last_error"], row["create_time"], row["update_time"])

    def create_interlay(self, id: str, endpoint: str, port: int, settings: dict[str, Any]) -> InterlayRecord:
        now = time.time()
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM interlays WHERE id = ?", (id,)).fetchone():
                raise AlreadyExistsError(f"interlay {id!r} already exists")
            if db.execute("SELECT 1 FROM endpoints WHERE name = ?", (endpoint,)).fetchone() is None:
                raise NotFoundError(f"endpoint {endpoint!r} not found")
            clash = db.execute("SELECT id FROM interlays WHERE port = ?", (port,)).fetchone()
            if clash:
                raise AlreadyExistsError(f"port {port} is already assigned to interlay {clash['id']!r}")
            db.execute("INSERT INTO interlays VALUES (?, ?, ?, ?, 'STOPPED', '', ?, ?)",
                       (id, endpoint, port, json.dumps(settings), now, now))
        return self.get_interlay(id)

    def get_interlay(self, id: str) -> InterlayRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM interlays WHERE id = ?", (id,)).fetchone()
        if row is None:
            raise NotFoundError(f"interlay {id!r} not found")
        return self._interlay(row)

    def list_interlays(self) -> list[InterlayRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM interlays ORDER BY id").fetchall()
        return [self._interlay(row) for row in rows]

    def set_interlay_state(self, id: str, state: str, last_error: str = "") -> InterlayRecord:
        with self.transaction() as db:
            if not db.execute("UPDATE interlays SET state = ?, last_error = ?, update_time = ? WHERE id = ?",
                              (state, last_error, time.time(), id)).rowcount:
                raise NotFoundError(f"interlay {id!r} not found")
        return self.get_interlay(id)

    def delete_interlay(self, id: str) -> None:
        with self.transaction() as db:
            row = db.execute("SELECT state FROM interlays WHERE id = ?", (id,)).fetchone()
            if row is None:
                raise NotFoundError(f"interlay {id!r} not found")
            if row["state"] not in ("STOPPED", "FAILED"):
                raise StateError(f"interlay {id!r} is {row['state']}; stop it before deleting it")
            db.execute("DELETE FROM interlays WHERE id = ?", (id,))
