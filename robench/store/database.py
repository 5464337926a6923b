"""The store's file: the schema, its versions and migrations, the connection (read-write in WAL mode, or
read-only), transactions and snapshots."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from ..errors import RobenchError

SCHEMA_VERSION = 5
DEFAULT_STORE = Path("results") / "robench.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL DEFAULT 'running',
    created REAL NOT NULL,
    finished REAL,
    model TEXT NOT NULL, checkpoint TEXT, sha256 TEXT NOT NULL,
    dataset TEXT NOT NULL, split TEXT NOT NULL, n INTEGER NOT NULL, subset TEXT NOT NULL, seed INTEGER NOT NULL,
    norm TEXT NOT NULL, eps TEXT NOT NULL, attacks TEXT NOT NULL,
    batch_size INTEGER NOT NULL, device TEXT NOT NULL, dtype TEXT NOT NULL,
    robench_version TEXT NOT NULL, torch_version TEXT NOT NULL,
    wall_time REAL NOT NULL DEFAULT 0,
    model_meta TEXT NOT NULL DEFAULT '{}',
    data_sha256 TEXT NOT NULL DEFAULT '',
    machine TEXT NOT NULL DEFAULT '',
    origin TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS outcomes (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    eps TEXT NOT NULL,
    idx INTEGER NOT NULL,
    clean INTEGER NOT NULL,
    robust INTEGER NOT NULL,
    broken_by TEXT,
    PRIMARY KEY (run_id, eps, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS run_flags (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    flag TEXT NOT NULL,
    PRIMARY KEY (run_id, flag)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checks (
    sha256 TEXT NOT NULL, dataset TEXT NOT NULL, norm TEXT NOT NULL,
    check_name TEXT NOT NULL, eps TEXT NOT NULL,
    status TEXT NOT NULL,
    evidence TEXT NOT NULL,
    budget TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    PRIMARY KEY (sha256, dataset, norm, check_name, eps)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS models (
    sha256 TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attack_stats (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    attack TEXT NOT NULL,
    examples INTEGER NOT NULL DEFAULT 0,
    queries INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, attack)
) WITHOUT ROWID;
"""

# Work inside an unfinished batch (an AutoAttack member's result on it), so Ctrl-C during a slow batch does
# not throw away the members that finished; dropped when the batch is stored. Not part of the schema
# version: a store without it gets it when opened for writing, and nothing reads it to report results.
STAGES = """CREATE TABLE IF NOT EXISTS stages (
    run_id INTEGER NOT NULL, key TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID"""

RUN_FIELDS = (
    "model",
    "checkpoint",
    "sha256",
    "dataset",
    "split",
    "n",
    "subset",
    "seed",
    "norm",
    "eps",
    "attacks",
    "batch_size",
    "device",
    "dtype",
    "robench_version",
    "torch_version",
    "model_meta",
    "data_sha256",
)
PROVENANCE = ("machine", "origin")  # where a run was computed, and where it came from (empty: computed here)


def store_path(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get("ROBENCH_STORE") or DEFAULT_STORE)


class Database:
    """A connection to one store file: opening (a new store gets the schema, an older one is migrated, a
    foreign or newer one is refused), transactions and snapshots. The tables' methods live in runs.py and
    models.py."""

    def __init__(self, path: str | Path | None = None, readonly: bool = False):
        self.path = store_path(path)
        if readonly and not self.path.exists():
            raise RobenchError(f"No results store at {self.path}; run `robench eval` first or pass --store.")
        if self.path.is_symlink() and self.path.exists() and self.path.stat().st_size == 0:
            raise RobenchError(
                f"{self.path} is a link to an empty file, not a robench store; robench does not "
                "turn a file of yours into a database, so pass --store with another path."
            )
        try:
            if not readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            else:
                self.conn = _connect_readonly(self.path)
            self.conn.execute("PRAGMA busy_timeout = 60000")
            version = self._version()
            if version is None:
                self._check_foreign()
            if version is not None and version > SCHEMA_VERSION:
                raise RobenchError(
                    f"{self.path} was written by a newer robench (store schema {version}); upgrade robench to use it."
                )
            if not readonly:
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = NORMAL")
                if version is None:
                    self.conn.executescript(SCHEMA)  # idempotent: every statement is IF NOT EXISTS
                    self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif version < SCHEMA_VERSION:
                    self._migrate(version)
                self.conn.execute(STAGES)
            self.version = self._version() or SCHEMA_VERSION
        except sqlite3.DatabaseError as e:
            raise RobenchError(self._explain(e)) from None
        except OSError as e:
            raise RobenchError(
                f"Cannot open the results store at {self.path} ({e.strerror}); pass --store with a writable path."
            ) from None

    def _check_foreign(self) -> None:
        """A store without robench's schema is either new (no tables yet, or robench's own half-created
        ones) or another program's database, which robench never writes into."""
        names = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        # with "stages": another robench may finish creating the store between our two reads of it
        ours = {
            "meta",
            "runs",
            "outcomes",
            "run_flags",
            "checks",
            "models",
            "attack_stats",
            "stages",
            "sqlite_sequence",
        }
        if names - ours:
            raise RobenchError(
                f"{self.path} is an SQLite database of another program, not a robench store; "
                "pass --store with another path."
            )

    def _migrate(self, version: int) -> None:
        """Bring an older store up to SCHEMA_VERSION in place, keeping a copy of it first."""
        backup = self.path.with_name(f"{self.path.name}.schema{version}.bak")
        if not backup.exists():
            copy = sqlite3.connect(backup)
            self.conn.backup(copy)
            copy.close()
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.conn.execute(statement)  # only the tables this store lacks are created
            columns = {r[1] for r in self.conn.execute("PRAGMA table_info(runs)")}
            if "data_sha256" not in columns:  # schema 3: runs that cannot name their data are not trusted
                self.conn.execute("ALTER TABLE runs ADD COLUMN data_sha256 TEXT NOT NULL DEFAULT ''")
                self.conn.execute("UPDATE runs SET status='stale' WHERE data_sha256=''")
            for column in ("machine", "origin"):  # schema 4: provenance (runs stored before: computed here)
                if column not in columns:
                    self.conn.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
            self.conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))

    def _explain(self, e: Exception) -> str:
        text = str(e)
        if "not a database" in text or "malformed" in text:
            return f"{self.path} is not a robench store (not an SQLite database); pass --store with another path."
        if "readonly" in text or "unable to open" in text or "read-only" in text:
            return f"Cannot write the results store at {self.path}; pass --store with a writable path."
        return f"The results store at {self.path} failed ({text})."

    def _version(self) -> int | None:
        has_meta = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            return None
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if not row:
            return None
        try:
            return int(row[0])
        except (TypeError, ValueError):
            raise RobenchError(
                f"{self.path} is a damaged robench store (its schema version is {str(row[0])[:20]!r}, "
                "not a number); pass --store with another path."
            ) from None

    def transaction(self):
        """One write transaction; inside another, part of it (a block of writes commits or rolls back whole)."""
        store = self

        class _Tx:
            def __enter__(self):
                self.outer = not store.conn.in_transaction
                if self.outer:
                    store.conn.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_):
                if self.outer:
                    store.conn.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()

    @contextmanager
    def snapshot(self):
        """Reads inside this block all see the store as it was at the first of them, whatever concurrent
        writers commit meanwhile (one SQLite read transaction; WAL lets the writers go on)."""
        self.conn.execute("BEGIN")
        try:
            yield self
        finally:
            if self.conn.in_transaction:  # a failed read may have ended it already
                self.conn.execute("COMMIT")

    def _write(self, fn):
        try:
            with self.transaction():
                return fn()
        except sqlite3.DatabaseError as e:
            raise RobenchError(self._explain(e)) from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection for reading. Where the WAL index cannot be created beside the store (a read-only file
    system, a folder the user may not write), the file is opened read-only, then as immutable."""
    uri = f"file:{quote(str(path.resolve()))}"
    for target, is_uri in ((str(path), False), (f"{uri}?mode=ro", True), (f"{uri}?immutable=1", True)):
        conn = None
        try:
            conn = sqlite3.connect(target, uri=is_uri, timeout=60, isolation_level=None)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            if conn is not None:
                conn.close()
    raise sqlite3.OperationalError("unable to open database file")


def sql_value(v):
    """A value as a column holds it: dicts and lists as sorted JSON."""
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list, tuple)) else v
