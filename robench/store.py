"""The results store: stdlib sqlite3 in WAL mode. Runs, per-example outcomes, resume.

A run is one model x data slice x norm x attack cascade x eps sweep x seed, keyed by a hash of all of them.
Outcomes are committed batch by batch, so a killed run resumes where it stopped; concurrent writers of the
same run insert the same rows, and the primary key keeps exactly one of each.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pandas as pd

from .errors import RobenchError

SCHEMA_VERSION = 1
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
    model_meta TEXT NOT NULL DEFAULT '{}'
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
"""

RUN_FIELDS = ("model", "checkpoint", "sha256", "dataset", "split", "n", "subset", "seed", "norm", "eps",
              "attacks", "batch_size", "device", "dtype", "robench_version", "torch_version", "model_meta")


def store_path(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get("ROBENCH_STORE") or DEFAULT_STORE)


class Store:
    def __init__(self, path: str | Path | None = None, readonly: bool = False):
        self.path = store_path(path)
        if readonly and not self.path.exists():
            raise RobenchError(f"No results store at {self.path}; run `robench eval` first or pass --store.")
        try:
            if not readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout = 60000")
            version = self._version()
            if version is not None and version > SCHEMA_VERSION:
                raise RobenchError(f"{self.path} was written by a newer robench (store schema {version}); "
                                   "upgrade robench to use it.")
            if not readonly:
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = NORMAL")
                if version is None:
                    self.conn.executescript(SCHEMA)  # idempotent: every statement is IF NOT EXISTS
                    self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                      (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as e:
            raise RobenchError(self._explain(e)) from None
        except OSError as e:
            raise RobenchError(f"Cannot open the results store at {self.path} ({e.strerror}); "
                               "pass --store with a writable path.") from None

    def _explain(self, e: Exception) -> str:
        text = str(e)
        if "not a database" in text or "malformed" in text:
            return f"{self.path} is not a robench store (not an SQLite database); pass --store with another path."
        if "readonly" in text or "unable to open" in text or "read-only" in text:
            return f"Cannot write the results store at {self.path}; pass --store with a writable path."
        return f"The results store at {self.path} failed ({text})."

    def _version(self) -> int | None:
        has_meta = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            return None
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else None

    def transaction(self):
        store = self

        class _Tx:
            def __enter__(self):
                store.conn.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_):
                store.conn.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()

    def _write(self, fn):
        try:
            with self.transaction():
                return fn()
        except sqlite3.DatabaseError as e:
            raise RobenchError(self._explain(e)) from None

    # ------------------------------------------------------------------------------------------ runs
    def open_run(self, key: str, fields: dict, force: bool = False) -> tuple[int, str]:
        """The run for ``key`` (created if new); with ``force`` its outcomes are cleared first."""
        def go():
            row = self.conn.execute("SELECT run_id, status FROM runs WHERE key=?", (key,)).fetchone()
            if row and not force:
                return row[0], row[1]
            if row:
                self.conn.execute("DELETE FROM outcomes WHERE run_id=?", (row[0],))
                self.conn.execute("DELETE FROM run_flags WHERE run_id=?", (row[0],))
                self.conn.execute("UPDATE runs SET status='running', wall_time=0, finished=NULL WHERE run_id=?",
                                  (row[0],))
                return row[0], "running"
            vals = [_sql(fields[f]) for f in RUN_FIELDS]
            cur = self.conn.execute(
                f"INSERT INTO runs (key, created, {', '.join(RUN_FIELDS)}) VALUES (?, ?, "
                f"{', '.join('?' * len(RUN_FIELDS))})", [key, time.time(), *vals])
            return cur.lastrowid, "running"
        return self._write(go)

    def is_done(self, key: str) -> bool:
        row = self.conn.execute("SELECT status FROM runs WHERE key=?", (key,)).fetchone()
        return bool(row) and row[0] == "done"

    def done_indices(self, run_id: int, n_eps: int) -> set[int]:
        rows = self.conn.execute("SELECT idx FROM outcomes WHERE run_id=? GROUP BY idx HAVING COUNT(*)=?",
                                 (run_id, n_eps)).fetchall()
        return {r[0] for r in rows}

    def add_batch(self, run_id: int, rows: list[tuple], flags: list[str], wall: float) -> None:
        """One batch: rows of (eps, idx, clean, robust, broken_by), committed together."""
        def go():
            self.conn.executemany("INSERT OR IGNORE INTO outcomes VALUES (?, ?, ?, ?, ?, ?)",
                                  [(run_id, *r) for r in rows])
            self.conn.executemany("INSERT OR IGNORE INTO run_flags VALUES (?, ?)", [(run_id, f) for f in flags])
            self.conn.execute("UPDATE runs SET wall_time = wall_time + ? WHERE run_id=?", (wall, run_id))
        self._write(go)

    def finish(self, run_id: int) -> None:
        self._write(lambda: self.conn.execute(
            "UPDATE runs SET status='done', finished=? WHERE run_id=?", (time.time(), run_id)))

    def run(self, run_id: int) -> dict:
        cur = self.conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,))
        cols = [c[0] for c in cur.description]
        d = dict(zip(cols, cur.fetchone()))
        for k in ("eps", "attacks", "model_meta"):
            d[k] = json.loads(d[k])
        d["flags"] = [r[0] for r in self.conn.execute(
            "SELECT flag FROM run_flags WHERE run_id=? ORDER BY flag", (run_id,))]
        return d

    def runs(self, status: str | None = "done") -> pd.DataFrame:
        q = "SELECT * FROM runs" + (" WHERE status=?" if status else "") + " ORDER BY run_id"
        return pd.read_sql_query(q, self.conn, params=(status,) if status else ())

    def outcomes(self, run_id: int) -> pd.DataFrame:
        return pd.read_sql_query("SELECT eps, idx, clean, robust, broken_by FROM outcomes WHERE run_id=? "
                                 "ORDER BY eps, idx", self.conn, params=(run_id,))

    def close(self) -> None:
        self.conn.close()


def _sql(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list, tuple)) else v
