"""The coordinator's state in SQLite: endpoints, interlays, runs (and, as later
schema versions add them, events, error keys and checkpoints).

Only the coordinator process opens the store. One connection, serialized by a
lock (gRPC handlers run on a thread pool); WAL so readers never wait on a
writer's fsync. The schema is versioned: ``MIGRATIONS[i]`` takes a database from
version ``i`` to ``i + 1``, so a newer Eve upgrades an older state file in place
and an older Eve refuses a newer one instead of corrupting it.

The file holds endpoint passwords (and the copies runs snapshot of them), so it is created
readable by its owner only; with a key (``eve.core.secrets.StateKey``) they are sealed in it,
and a file that held them in clear is sealed (and scrubbed of the clear text: deleted
content is zeroed, the file vacuumed, the WAL truncated) when it is first opened with one.
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
from typing import Any, Callable, Collection, Iterator

from eve.core.errors import (
    AlreadyExistsError,
    ConfigError,
    NotFoundError,
    StateError,
    StorageError,
    StorageFullError,
)
from eve.core.secrets import KEY_ENV, SEALED_PREFIX, StateKey, is_sealed, map_passwords

__all__ = ["Store", "EndpointRecord", "InterlayRecord", "RunRecord", "RunEndpointRecord", "ErrorKeyRecord",
           "SCHEMA_VERSION", "COUNTER_FIELDS"]

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
    # 1 -> 2: the bulk copy's checkpoints, committed counters, error keys and conflicts.
    """
    CREATE TABLE checkpoints (
        run_id TEXT NOT NULL,
        node TEXT NOT NULL,             -- source node address
        db INTEGER NOT NULL,
        cursor INTEGER NOT NULL,        -- SCAN cursor after the last acknowledged batch
        done INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, node, db)
    );
    CREATE TABLE copy_counters (
        run_id TEXT PRIMARY KEY,
        scanned INTEGER NOT NULL DEFAULT 0,
        restored INTEGER NOT NULL DEFAULT 0,
        skipped INTEGER NOT NULL DEFAULT 0,
        conflicts INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE error_keys (
        run_id TEXT NOT NULL,
        db INTEGER NOT NULL,
        key BLOB NOT NULL,
        node TEXT NOT NULL,
        type TEXT NOT NULL,
        size INTEGER NOT NULL,
        reason TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        PRIMARY KEY (run_id, db, key, node)
    );
    CREATE TABLE conflict_keys (
        run_id TEXT NOT NULL,
        db INTEGER NOT NULL,
        key BLOB NOT NULL,
        type TEXT NOT NULL,
        reason TEXT NOT NULL,
        seen REAL NOT NULL,
        PRIMARY KEY (run_id, db, key)
    );
    """,
    # 2 -> 3: the guided workflow: events, compatibility issues, reports, traffic.
    """
    ALTER TABLE runs ADD COLUMN read_percent_target INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN writes_on_target INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE events (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        time REAL NOT NULL,
        type TEXT NOT NULL,
        message TEXT NOT NULL,
        state TEXT NOT NULL,
        attributes TEXT NOT NULL,       -- JSON object of strings
        PRIMARY KEY (run_id, seq)
    );
    CREATE TABLE run_issues (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        id TEXT NOT NULL,
        code TEXT NOT NULL,
        blocking INTEGER NOT NULL,
        message TEXT NOT NULL,
        evidence TEXT NOT NULL,         -- JSON object of strings
        acknowledged INTEGER NOT NULL DEFAULT 0,
        notes TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (run_id, id)
    );
    CREATE TABLE run_reports (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,             -- analysis, testrun, verify, ...
        body TEXT NOT NULL,             -- JSON
        PRIMARY KEY (run_id, kind)
    );
    """,
    # 3 -> 4: the endpoint configs a run works from, snapshotted when Prepare starts.
    """
    CREATE TABLE run_snapshots (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        endpoint TEXT NOT NULL,
        config TEXT NOT NULL,           -- JSON, passwords included (file is 0600)
        PRIMARY KEY (run_id, endpoint)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

# SQLite's primary result codes that say the file cannot be written (SQLITE_FULL aside).
_STORAGE_CODES = frozenset((sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY,
                            sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB))

COUNTER_FIELDS = ("scanned", "restored", "skipped", "conflicts", "failed", "bytes")


@dataclass(frozen=True)
class EndpointRecord:
    name: str
    kind: str
    config: dict[str, Any]
    description: str
    create_time: float
    update_time: float


@dataclass(frozen=True)
class RunRecord:
    id: str
    state: str
    setup: dict[str, Any] | None
    description: str
    failure_reason: str
    create_time: float
    update_time: float


@dataclass(frozen=True)
class RunEndpointRecord:
    """An endpoint a run uses: its role, the config the run works from (``snapshot``, taken
    when Prepare starts; None before) and the endpoint's config now."""

    endpoint: str
    role: str                        # source, target, mirror
    snapshot: dict[str, Any] | None
    config: dict[str, Any]


_ROLE_NAMES = {"mirror": "mirror target"}


@dataclass(frozen=True)
class ErrorKeyRecord:
    key: bytes
    db: int
    node: str
    type: str
    size: int
    reason: str
    attempts: int
    first_seen: float
    last_seen: float


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
    def __init__(self, path: str | os.PathLike[str], key: StateKey | None = None) -> None:
        """``key`` seals the passwords in the file; without one they are kept in clear (a file
        that holds sealed ones is then refused: StateError)."""
        self.path = Path(path)
        self._key = key
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
        # Deleted and overwritten content (a password before it was sealed) is zeroed, not left in free pages.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.row_factory = sqlite3.Row
        try:
            self._migrate()
            self._check_credentials()
        except BaseException:
            self._db.close()
            raise

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

    # -- credentials at rest ----------------------------------------------------

    @property
    def sealed(self) -> bool:
        """Whether the passwords written to the file are sealed (a key was given)."""
        return self._key is not None

    def _seal_config(self, config: dict[str, Any]) -> str:
        key = self._key
        if key is not None:
            config = map_passwords(config, lambda value: value if is_sealed(value) else key.seal(value))
        return json.dumps(config)

    def _open_config(self, text: str) -> dict[str, Any]:
        config = json.loads(text)
        return map_passwords(config, self._open_password) if SEALED_PREFIX in text else config

    def _open_password(self, value: str) -> str:
        if not is_sealed(value):
            return value
        if self._key is None:
            raise StateError(f"the state file {self.path} holds sealed credentials: give its key "
                             f"(--key-file or {KEY_ENV})")
        return self._key.open(value, f"the state file {self.path}")

    def _credential_rows(self, db: sqlite3.Connection) -> list[tuple[str, tuple[Any, ...], str]]:
        """(table, primary key, config) of every stored config that may hold passwords."""
        return [("endpoints", (r["name"],), r["config"]) for r in db.execute("SELECT name, config FROM endpoints")] + \
            [("run_snapshots", (r["run_id"], r["endpoint"]), r["config"])
             for r in db.execute("SELECT run_id, endpoint, config FROM run_snapshots")]

    def _reseal(self, opener: Callable[[str], str], sealer: Callable[[str], str] | None) -> int:
        """Every stored password opened with ``opener``, then sealed with ``sealer`` (None:
        kept as it is), in one transaction; how many configs were rewritten."""
        changed = 0
        with self.transaction() as db:
            for table, key, text in self._credential_rows(db):
                config = map_passwords(json.loads(text), opener)
                if sealer is None:
                    continue
                new_text = json.dumps(map_passwords(config, sealer))
                if new_text != text:
                    where = "name = ?" if table == "endpoints" else "run_id = ? AND endpoint = ?"
                    db.execute(f"UPDATE {table} SET config = ? WHERE {where}", (new_text, *key))
                    changed += 1
        return changed

    def _check_credentials(self) -> None:
        """At open: every sealed password opens with the key (a wrong key is an error now, not at
        the first use), and with a key, clear ones are sealed and their clear text scrubbed."""
        key = self._key
        if key is None:
            self._reseal(self._open_password, None)
            return
        if self._reseal(self._open_password, lambda value: value if is_sealed(value) else key.seal(value)):
            self._scrub()

    def rotate_key(self, new_key: StateKey | None) -> int:
        """Seal every password with ``new_key`` instead of this store's key (None: keep them in
        clear), in one transaction, then scrub what the old key sealed; how many configs changed."""
        changed = self._reseal(self._open_password, (lambda value: new_key.seal(value)) if new_key is not None
                               else (lambda value: value))
        self._key = new_key
        self._scrub()
        return changed

    def _scrub(self) -> None:
        """Rewrite the file so no page keeps a value overwritten since (VACUUM), and empty the WAL."""
        with self._lock:
            try:
                self._db.execute("VACUUM")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError as exc:
                storage = self._storage_error(exc)
                if storage is None:
                    raise
                raise storage from exc

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("PRAGMA user_version").fetchone()[0]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it or nothing. A state file that cannot be written (a
        full disk, an I/O error) is a StorageError naming it; the transaction is rolled back,
        so nothing of it was written, and the next one works once the disk does."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            except sqlite3.DatabaseError as exc:
                storage = self._storage_error(exc)
                if storage is None:
                    raise
                raise storage from exc

    def _rollback(self) -> None:
        # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR may end the
        # transaction themselves); a ROLLBACK that fails leaves nothing more to undo.
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _storage_error(self, exc: sqlite3.Error) -> StorageError | None:
        """The StorageError an SQLite error means, or None when it is not about the file."""
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if code is not None else None
        if primary == sqlite3.SQLITE_FULL:
            return StorageFullError(
                f"the state file {self.path} cannot be written: its disk is full; nothing of this change was "
                "written (free space and retry)", path=str(self.path))
        if primary in _STORAGE_CODES:
            return StorageError(f"the state file {self.path} cannot be written ({exc}); nothing of this change "
                                "was written", path=str(self.path))
        return None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- endpoints ----------------------------------------------------------------

    def _endpoint(self, row: sqlite3.Row) -> EndpointRecord:
        return EndpointRecord(row["name"], row["kind"], self._open_config(row["config"]), row["description"],
                              row["create_time"], row["update_time"])

    def create_endpoint(self, name: str, kind: str, config: dict[str, Any], description: str) -> EndpointRecord:
        now = time.time()
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM endpoints WHERE name = ?", (name,)).fetchone():
                raise AlreadyExistsError(f"endpoint {name!r} already exists")
            db.execute("INSERT INTO endpoints VALUES (?, ?, ?, ?, ?, ?)",
                       (name, kind, self._seal_config(config), description, now, now))
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

    def update_endpoint(self, name: str, kind: str, config: dict[str, Any], description: str, *,
                        refuse_in_run_states: Collection[str] = ()) -> EndpointRecord:
        """StateError, and nothing changed, when a run in one of ``refuse_in_run_states``
        uses the endpoint: checked in the same transaction as the update, so no run can
        reach such a state between the check and the write."""
        now = time.time()
        with self.transaction() as db:
            states = sorted(refuse_in_run_states)
            user = db.execute(
                "SELECT re.run_id, re.role, r.state FROM run_endpoints re JOIN runs r ON r.id = re.run_id "
                f"WHERE re.endpoint = ? AND r.state IN ({', '.join('?' * len(states))}) ORDER BY re.run_id LIMIT 1",
                (name, *states)).fetchone() if states else None
            if user is not None:
                raise StateError(
                    f"endpoint {name!r} is the {_ROLE_NAMES.get(user['role'], user['role'])} of run "
                    f"{user['run_id']!r}, which is {user['state']}; it cannot be changed until the run is "
                    "completed, rolled back, cancelled or has failed")
            updated = db.execute(
                "UPDATE endpoints SET kind = ?, config = ?, description = ?, update_time = ? WHERE name = ?",
                (kind, self._seal_config(config), description, now, name)).rowcount
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

    def set_interlay_endpoint(self, id: str, endpoint: str) -> InterlayRecord:
        """A completed online run leaves its interlay in front of the target."""
        with self.transaction() as tx:
            tx.execute("UPDATE interlays SET endpoint = ?, update_time = ? WHERE id = ?", (endpoint, time.time(), id))
        return self.get_interlay(id)

    def delete_interlay(self, id: str) -> None:
        with self.transaction() as db:
            row = db.execute("SELECT state FROM interlays WHERE id = ?", (id,)).fetchone()
            if row is None:
                raise NotFoundError(f"interlay {id!r} not found")
            if row["state"] not in ("STOPPED", "FAILED"):
                raise StateError(f"interlay {id!r} is {row['state']}; stop it before deleting it")
            db.execute("DELETE FROM interlays WHERE id = ?", (id,))

    # -- runs ---------------------------------------------------------------------

    @staticmethod
    def _run(row: sqlite3.Row) -> RunRecord:
        return RunRecord(row["id"], row["state"], json.loads(row["setup"]) if row["setup"] else None,
                         row["description"], row["failure_reason"], row["create_time"], row["update_time"])

    def create_run(self, id: str, state: str, setup: dict[str, Any] | None = None, description: str = "",
                   endpoints: dict[str, str] | None = None) -> RunRecord:
        """``endpoints`` maps endpoint names to their role in the run (protects them from deletion)."""
        now = time.time()
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM runs WHERE id = ?", (id,)).fetchone():
                raise AlreadyExistsError(f"run {id!r} already exists")
            db.execute("INSERT INTO runs (id, state, setup, description, failure_reason, create_time, update_time) "
                       "VALUES (?, ?, ?, ?, '', ?, ?)",
                       (id, state, json.dumps(setup) if setup is not None else None, description, now, now))
            for endpoint, role in (endpoints or {}).items():
                db.execute("INSERT INTO run_endpoints VALUES (?, ?, ?)", (id, endpoint, role))
        return self.get_run(id)

    def get_run(self, id: str) -> RunRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE id = ?", (id,)).fetchone()
        if row is None:
            raise NotFoundError(f"run {id!r} not found")
        return self._run(row)

    def list_runs(self) -> list[RunRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM runs ORDER BY create_time, id").fetchall()
        return [self._run(row) for row in rows]

    def set_run_state(self, id: str, state: str, failure_reason: str = "",
                      event: tuple[str, str, dict[str, str]] | None = None) -> RunRecord:
        """``event`` (type, message, attributes) is appended in the same transaction, so a
        subscriber that sees the new state also finds the event that announces it."""
        with self.transaction() as db:
            if not db.execute("UPDATE runs SET state = ?, failure_reason = ?, update_time = ? WHERE id = ?",
                              (state, failure_reason, time.time(), id)).rowcount:
                raise NotFoundError(f"run {id!r} not found")
            if event is not None:
                self._append_event(db, id, event[0], event[1], state, event[2])
        return self.get_run(id)

    # -- bulk copy progress -------------------------------------------------------

    def checkpoints(self, run_id: str) -> dict[tuple[str, int], tuple[int, bool]]:
        """(node, db) -> (cursor, done)."""
        with self._lock:
            rows = self._db.execute("SELECT node, db, cursor, done FROM checkpoints WHERE run_id = ?",
                                    (run_id,)).fetchall()
        return {(r["node"], r["db"]): (r["cursor"], bool(r["done"])) for r in rows}

    def commit_batches(self, run_id: str, node: str, db: int, cursor: int, done: bool,
                       counters: dict[str, int], error_keys: list[Any], conflict_keys: list[Any]) -> None:
        """One transaction: the new cursor, the counters and the keys of the acknowledged batches,
        so a crash never separates a checkpoint from what it accounts for."""
        now = time.time()
        with self.transaction() as tx:
            tx.execute("INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, node, db) "
                       "DO UPDATE SET cursor = excluded.cursor, done = excluded.done",
                       (run_id, node, db, cursor, int(done)))
            self._add_counters(tx, run_id, counters)
            self._add_error_keys(tx, run_id, error_keys, now)
            tx.executemany(
                "INSERT INTO conflict_keys VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, db, key) "
                "DO UPDATE SET type = excluded.type, reason = excluded.reason, seen = excluded.seen",
                [(run_id, c.db, c.key, c.type, c.reason, now) for c in conflict_keys])

    def restart_copy(self, run_id: str) -> None:
        """Forget a bulk copy's progress in one transaction (checkpoints, counters, error keys,
        conflicts): it starts again from the beginning, because a side restarted and may
        have lost what those numbers account for."""
        with self.transaction() as tx:
            for table in ("checkpoints", "copy_counters", "error_keys", "conflict_keys"):
                tx.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))

    @staticmethod
    def _add_counters(tx: sqlite3.Connection, run_id: str, counters: dict[str, int]) -> None:
        tx.execute("INSERT OR IGNORE INTO copy_counters (run_id) VALUES (?)", (run_id,))
        assignments = ", ".join(f"{name} = {name} + ?" for name in COUNTER_FIELDS)
        tx.execute(f"UPDATE copy_counters SET {assignments} WHERE run_id = ?",
                   (*(int(counters.get(name, 0)) for name in COUNTER_FIELDS), run_id))

    @staticmethod
    def _add_error_keys(tx: sqlite3.Connection, run_id: str, error_keys: list[Any], now: float) -> None:
        tx.executemany(
            "INSERT INTO error_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (run_id, db, key, node) DO UPDATE SET type = excluded.type, size = excluded.size, "
            "reason = excluded.reason, attempts = error_keys.attempts + excluded.attempts, "
            "last_seen = excluded.last_seen",
            [(run_id, e.db, e.key, e.node, e.type, e.size, e.reason, e.attempts, now, now) for e in error_keys])

    def add_error_keys(self, run_id: str, error_keys: list[Any]) -> None:
        with self.transaction() as tx:
            self._add_error_keys(tx, run_id, error_keys, time.time())

    def add_verification_differences(self, run_id: str, differences: list[Any], *,
                                     prefix: str = "verification: ") -> None:
        """Differences a Verify found, as error keys listed once per key: a key that is an error
        key already (its copy failed, under whichever node) gets the verification's reason added
        to its own; one found again replaces the previous verification's reason."""
        now = time.time()
        with self.transaction() as tx:
            fresh = []
            for row in differences:
                existing = tx.execute("SELECT node, reason FROM error_keys WHERE run_id = ? AND db = ? AND key = ?",
                                      (run_id, row.db, row.key)).fetchall()
                if not existing:
                    fresh.append(row)
                    continue
                for found in existing:
                    own = found["reason"].split(f"; {prefix}")[0]
                    reason = row.reason if own.startswith(prefix) else f"{own}; {row.reason}"
                    tx.execute("UPDATE error_keys SET reason = ?, last_seen = ? WHERE run_id = ? AND db = ? "
                               "AND key = ? AND node = ?", (reason, now, run_id, row.db, row.key, found["node"]))
            self._add_error_keys(tx, run_id, fresh, now)

    def counters(self, run_id: str) -> dict[str, int]:
        with self._lock:
            row = self._db.execute("SELECT * FROM copy_counters WHERE run_id = ?", (run_id,)).fetchone()
        return {name: (row[name] if row else 0) for name in COUNTER_FIELDS}

    def error_keys(self, run_id: str, *, limit: int | None = None, after: tuple[int, bytes, str] | None = None
                   ) -> list[ErrorKeyRecord]:
        """In (db, key, node) order; ``after`` pages from the last row of the previous page."""
        query = "SELECT * FROM error_keys WHERE run_id = ?"
        params: list[Any] = [run_id]
        if after is not None:
            query += " AND (db, key, node) > (?, ?, ?)"
            params += list(after)
        query += " ORDER BY db, key, node"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [ErrorKeyRecord(bytes(r["key"]), r["db"], r["node"], r["type"], r["size"], r["reason"],
                               r["attempts"], r["first_seen"], r["last_seen"]) for r in rows]

    def remove_error_key(self, run_id: str, db: int, key: bytes, node: str) -> None:
        with self.transaction() as tx:
            tx.execute("DELETE FROM error_keys WHERE run_id = ? AND db = ? AND key = ? AND node = ?",
                       (run_id, db, key, node))

    def error_key_count(self, run_id: str) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM error_keys WHERE run_id = ?", (run_id,)).fetchone()[0]

    def conflict_keys(self, run_id: str, limit: int | None = None) -> list[tuple[int, bytes, str, str]]:
        query = "SELECT db, key, type, reason FROM conflict_keys WHERE run_id = ? ORDER BY db, key"
        params: list[Any] = [run_id]
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        with self._lock:
            return [(r["db"], bytes(r["key"]), r["type"], r["reason"])
                    for r in self._db.execute(query, params).fetchall()]

    # -- the guided workflow ------------------------------------------------------

    def set_run_setup(self, id: str, setup: dict[str, Any], endpoints: dict[str, str]) -> RunRecord:
        with self.transaction() as tx:
            if not tx.execute("UPDATE runs SET setup = ?, update_time = ? WHERE id = ?",
                              (json.dumps(setup), time.time(), id)).rowcount:
                raise NotFoundError(f"run {id!r} not found")
            # Another setup: the snapshot of the previous one's endpoints means nothing now.
            tx.execute("DELETE FROM run_snapshots WHERE run_id = ?", (id,))
            tx.execute("DELETE FROM run_endpoints WHERE run_id = ?", (id,))
            tx.executemany("INSERT INTO run_endpoints VALUES (?, ?, ?)",
                           [(id, endpoint, role) for endpoint, role in endpoints.items()])
        return self.get_run(id)

    def set_traffic(self, id: str, read_percent_target: int, writes_on_target: bool) -> None:
        with self.transaction() as tx:
            tx.execute("UPDATE runs SET read_percent_target = ?, writes_on_target = ?, update_time = ? WHERE id = ?",
                       (read_percent_target, int(writes_on_target), time.time(), id))

    def traffic(self, id: str) -> tuple[int, bool]:
        with self._lock:
            row = self._db.execute("SELECT read_percent_target, writes_on_target FROM runs WHERE id = ?",
                                   (id,)).fetchone()
        return (row[0], bool(row[1])) if row else (0, False)

    def run_endpoints(self, id: str) -> list[RunEndpointRecord]:
        """The endpoints of the run, in the order SubmitSetup named them (source, target, mirrors)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT re.endpoint, re.role, s.config AS snapshot, e.config FROM run_endpoints re "
                "JOIN endpoints e ON e.name = re.endpoint "
                "LEFT JOIN run_snapshots s ON s.run_id = re.run_id AND s.endpoint = re.endpoint "
                "WHERE re.run_id = ? ORDER BY re.rowid", (id,)).fetchall()
        return [RunEndpointRecord(r["endpoint"], r["role"], self._open_config(r["snapshot"]) if r["snapshot"] else None,
                                  self._open_config(r["config"])) for r in rows]

    def snapshot_run_endpoints(self, id: str) -> list[RunEndpointRecord]:
        """Take the run's snapshot: the current config of each of its endpoints."""
        with self.transaction() as tx:
            tx.execute("DELETE FROM run_snapshots WHERE run_id = ?", (id,))
            tx.execute("INSERT INTO run_snapshots SELECT re.run_id, re.endpoint, e.config FROM run_endpoints re "
                       "JOIN endpoints e ON e.name = re.endpoint WHERE re.run_id = ?", (id,))
        return self.run_endpoints(id)

    def release_run_endpoints(self, id: str) -> None:
        """A finished run no longer holds its endpoints, nor the copy of their passwords."""
        with self.transaction() as tx:
            tx.execute("DELETE FROM run_snapshots WHERE run_id = ?", (id,))
            tx.execute("DELETE FROM run_endpoints WHERE run_id = ?", (id,))

    def append_event(self, run_id: str, type: str, message: str, state: str,
                     attributes: dict[str, str] | None = None) -> int:
        with self.transaction() as tx:
            return self._append_event(tx, run_id, type, message, state, attributes)

    @staticmethod
    def _append_event(tx: sqlite3.Connection, run_id: str, type: str, message: str, state: str,
                      attributes: dict[str, str] | None) -> int:
        seq = tx.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE run_id = ?", (run_id,)).fetchone()[0]
        tx.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (run_id, seq, time.time(), type, message, state, json.dumps(attributes or {})))
        return seq

    def events(self, run_id: str, after_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                                    (run_id, after_seq, limit)).fetchall()
        return [{"seq": r["seq"], "time": r["time"], "type": r["type"], "message": r["message"],
                 "state": r["state"], "attributes": json.loads(r["attributes"])} for r in rows]

    def replace_issues(self, run_id: str, issues: list[dict[str, Any]]) -> None:
        with self.transaction() as tx:
            tx.execute("DELETE FROM run_issues WHERE run_id = ?", (run_id,))
            tx.executemany("INSERT INTO run_issues VALUES (?, ?, ?, ?, ?, ?, 0, '')",
                           [(run_id, i["id"], i["code"], int(i["blocking"]), i["message"],
                             json.dumps(i["evidence"])) for i in issues])

    def issues(self, run_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM run_issues WHERE run_id = ? ORDER BY rowid", (run_id,)).fetchall()
        return [{"id": r["id"], "code": r["code"], "blocking": bool(r["blocking"]), "message": r["message"],
                 "evidence": json.loads(r["evidence"]), "acknowledged": bool(r["acknowledged"]),
                 "notes": r["notes"]} for r in rows]

    def acknowledge_issue(self, run_id: str, issue_id: str, notes: str) -> None:
        with self.transaction() as tx:
            if not tx.execute("UPDATE run_issues SET acknowledged = 1, notes = ? WHERE run_id = ? AND id = ?",
                              (notes, run_id, issue_id)).rowcount:
                raise NotFoundError(f"run {run_id!r} has no issue {issue_id!r}")

    def set_report(self, run_id: str, kind: str, body: Any) -> None:
        with self.transaction() as tx:
            tx.execute("INSERT INTO run_reports VALUES (?, ?, ?) ON CONFLICT (run_id, kind) "
                       "DO UPDATE SET body = excluded.body", (run_id, kind, json.dumps(body)))

    def report(self, run_id: str, kind: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT body FROM run_reports WHERE run_id = ? AND kind = ?",
                                   (run_id, kind)).fetchone()
        return json.loads(row[0]) if row else None
