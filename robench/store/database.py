"""The results store: stdlib sqlite3 in WAL mode. Runs, per-example outcomes, resume.

A run is one model x data slice x norm x attack cascade x eps sweep x seed, keyed by a hash of all of them.
Outcomes are committed batch by batch, so a killed run resumes where it stopped; concurrent writers of the
same run insert the same rows, and the primary key keeps exactly one of each.

Schema 2 adds ``checks`` (gradient-masking diagnostics per model, with their evidence) and ``attack_stats``
(model queries per attack). Schema 3 adds ``runs.data_sha256``, a fingerprint of the examples a run read,
which is part of its key: runs stored before it cannot say which data they came from, so migration marks
them ``stale`` (kept, never read as results, recomputed by the next evaluation). Schema 4 adds provenance:
``runs.machine`` (the machine that computed the run) and ``runs.origin`` (JSON naming the archive a run was
imported from and when; empty for a run computed in this store). Schema 5 adds ``models``: what a model's
pages need from its checkpoint (learned activation parameters, curves, shape), recorded when it is
evaluated, so that reports are drawn from the store alone. An older store is migrated
in place when opened for writing, after a copy of it is kept beside it; a store from a newer robench is
refused and never written. Reading (``readonly``) works on a read-only file system too.

Over the ~400-line guide: one class holds the whole schema (runs, outcomes, stages, query counts, checks)
and its migrations, so that a change of the schema is made and migrated in one place.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from .errors import RobenchError

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


class Store:
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

    # ------------------------------------------------------------------------------------------ runs
    def open_run(self, key: str, fields: dict, force: bool = False) -> tuple[int, str]:
        """The run for ``key`` (created if new); with ``force`` its outcomes are cleared first."""

        def go():
            row = self.conn.execute("SELECT run_id, status FROM runs WHERE key=?", (key,)).fetchone()
            if row and not force and row[1] != "stale":  # a stale run's outcomes are recomputed, never resumed
                return row[0], row[1]
            if row:
                self.conn.execute("DELETE FROM outcomes WHERE run_id=?", (row[0],))
                self.conn.execute("DELETE FROM run_flags WHERE run_id=?", (row[0],))
                self.conn.execute("DELETE FROM attack_stats WHERE run_id=?", (row[0],))
                self.conn.execute("DELETE FROM stages WHERE run_id=?", (row[0],))
                self.conn.execute(
                    "UPDATE runs SET status='running', wall_time=0, finished=NULL, machine=?, origin=? WHERE run_id=?",
                    (fields.get("machine", ""), _sql(fields.get("origin", "")), row[0]),
                )
                return row[0], "running"
            vals = [_sql(fields[f]) for f in RUN_FIELDS] + [_sql(fields.get(f, "")) for f in PROVENANCE]
            names = (*RUN_FIELDS, *PROVENANCE)
            cur = self.conn.execute(
                f"INSERT INTO runs (key, created, {', '.join(names)}) VALUES (?, ?, {', '.join('?' * len(names))})",
                [key, time.time(), *vals],
            )
            return cur.lastrowid, "running"

        return self._write(go)

    def discard_if_empty(self, run_id: int) -> None:
        """Remove a run that failed before any batch (or stage of one) was stored, so nothing of it remains to
        be mistaken for a result (a run with stored batches or stages stays 'running' and resumes)."""

        def go():
            kept = (
                self.conn.execute("SELECT 1 FROM outcomes WHERE run_id=? LIMIT 1", (run_id,)).fetchone()
                or self.conn.execute("SELECT 1 FROM stages WHERE run_id=? LIMIT 1", (run_id,)).fetchone()
            )
            if not kept:
                self.conn.execute("DELETE FROM run_flags WHERE run_id=?", (run_id,))
                self.conn.execute("DELETE FROM attack_stats WHERE run_id=?", (run_id,))
                self.conn.execute("DELETE FROM runs WHERE run_id=? AND status != 'done'", (run_id,))

        self._write(go)

    def is_done(self, key: str) -> bool:
        row = self.conn.execute("SELECT status FROM runs WHERE key=?", (key,)).fetchone()
        return bool(row) and row[0] == "done"

    def stored_examples(self, run_id: int) -> int:
        """How many examples of a run have outcomes stored."""
        return self.conn.execute("SELECT COUNT(DISTINCT idx) FROM outcomes WHERE run_id=?", (run_id,)).fetchone()[0]

    def run_state(self, key: str) -> tuple[str, int, int] | None:
        """(status, examples stored, stages of the unfinished batch stored) of the run with ``key``, or None
        when the store lacks it."""
        row = self.conn.execute("SELECT run_id, status FROM runs WHERE key=?", (key,)).fetchone()
        return (row[1], self.stored_examples(row[0]), len(self.stages(row[0]))) if row else None

    def done_indices(self, run_id: int, n_eps: int) -> set[int]:
        rows = self.conn.execute(
            "SELECT idx FROM outcomes WHERE run_id=? GROUP BY idx HAVING COUNT(*)=?", (run_id, n_eps)
        ).fetchall()
        return {r[0] for r in rows}

    def add_batch(
        self,
        run_id: int,
        rows: list[tuple],
        flags: list[str],
        wall: float,
        queries: dict[str, dict[int, tuple[int, float]]] | None = None,
    ) -> None:
        """One batch, committed together: rows of (eps, idx, clean, robust, broken_by), the flags raised, and
        per attack and example index the (times attacked, model queries). Examples another process stored
        first (two processes finishing the same run) add no rows and count no queries or time."""

        def go():
            ids = sorted({r[1] for r in rows})
            old = (
                {
                    r[0]
                    for r in self.conn.execute(
                        f"SELECT DISTINCT idx FROM outcomes WHERE run_id=? AND idx IN ({','.join('?' * len(ids))})",
                        [run_id, *ids],
                    )
                }
                if ids
                else set()
            )
            self.conn.executemany(
                "INSERT OR IGNORE INTO outcomes VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, *r) for r in rows if r[1] not in old],
            )
            self.conn.executemany("INSERT OR IGNORE INTO run_flags VALUES (?, ?)", [(run_id, f) for f in flags])
            self.conn.execute("DELETE FROM stages WHERE run_id=?", (run_id,))  # the batch's stages are done
            new = 1 - len(old) / len(ids) if ids else 1.0
            self.conn.execute("UPDATE runs SET wall_time = wall_time + ? WHERE run_id=?", (wall * new, run_id))
            totals = {
                a: (
                    sum(e for i, (e, _) in per.items() if i not in old),
                    sum(q for i, (_, q) in per.items() if i not in old),
                )
                for a, per in (queries or {}).items()
            }
            self.conn.executemany(
                "INSERT INTO attack_stats VALUES (?, ?, ?, ?) ON CONFLICT (run_id, attack) DO UPDATE SET "
                "examples = examples + excluded.examples, queries = queries + excluded.queries",
                [(run_id, a, e, q) for a, (e, q) in totals.items()],
            )

        self._write(go)

    def save_stage(self, run_id: int, key: str, data: bytes) -> None:
        """Keep one finished stage of an unfinished batch (see STAGES)."""
        self._write(lambda: self.conn.execute("INSERT OR REPLACE INTO stages VALUES (?, ?, ?)", (run_id, key, data)))

    def stages(self, run_id: int) -> dict[str, bytes]:
        """Every stored stage of a run's unfinished batch, by key (none in a store never opened for writing
        since stages came, which lacks the table)."""
        if not self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='stages'").fetchone():
            return {}
        return dict(self.conn.execute("SELECT key, data FROM stages WHERE run_id=? ORDER BY key", (run_id,)))

    def load_stage(self, run_id: int, key: str) -> bytes | None:
        row = self.conn.execute("SELECT data FROM stages WHERE run_id=? AND key=?", (run_id, key)).fetchone()
        return row[0] if row else None

    def set_queries(self, run_id: int, counts: dict[str, tuple[int, int]]) -> None:
        """A run's {attack: (examples attacked, model queries)}, as an archive recorded them."""
        self._write(
            lambda: self.conn.executemany(
                "INSERT OR REPLACE INTO attack_stats VALUES (?, ?, ?, ?)",
                [(run_id, a, e, q) for a, (e, q) in counts.items()],
            )
        )

    def queries(self, run_id: int) -> dict[str, dict]:
        """{attack: {"examples": attacked, "queries": model queries}} of a run."""
        if self.version < 2:
            return {}
        rows = self.conn.execute(
            "SELECT attack, examples, queries FROM attack_stats WHERE run_id=? ORDER BY attack", (run_id,)
        ).fetchall()
        return {a: {"examples": e, "queries": int(round(q))} for a, e, q in rows}

    # ---------------------------------------------------------------------------------------- checks
    def set_checks(self, sha256: str, dataset: str, norm: str, checks: list[dict], replace: bool = True) -> None:
        """Store diagnostics of one model (dicts of check, eps, status "ok"/"flag", evidence, budget); a
        check already stored for the same model, check name and eps is replaced, or kept with ``replace``
        False (an archive's checks only fill gaps: they never overwrite the store's own)."""
        now = time.time()
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        self._write(
            lambda: self.conn.executemany(
                f"{verb} INTO checks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        sha256,
                        dataset,
                        norm,
                        c["check"],
                        c.get("eps", ""),
                        c["status"],
                        c["evidence"],
                        json.dumps(c.get("budget", {}), sort_keys=True),
                        now,
                    )
                    for c in checks
                ],
            )
        )

    def clear_checks(self, sha256: str, dataset: str, norm: str, names: list[str]) -> None:
        self._write(
            lambda: self.conn.executemany(
                "DELETE FROM checks WHERE sha256=? AND dataset=? AND norm=? AND check_name=?",
                [(sha256, dataset, norm, n) for n in names],
            )
        )

    def checks(self, sha256: str | None = None, dataset: str | None = None, norm: str | None = None) -> pd.DataFrame:
        cols = "sha256, dataset, norm, check_name AS 'check', eps, status, evidence, budget"
        if self.version < 2:
            return pd.DataFrame(columns=[c.split()[-1].strip("'") for c in cols.split(", ")])
        where, params = [], []
        for col, v in (("sha256", sha256), ("dataset", dataset), ("norm", norm)):
            if v is not None:
                where.append(f"{col}=?")
                params.append(v)
        q = f"SELECT {cols} FROM checks" + (" WHERE " + " AND ".join(where) if where else "")
        return pd.read_sql_query(q + " ORDER BY sha256, check_name, eps", self.conn, params=params)

    def set_model(self, sha256: str, record: dict) -> None:
        """Keep what the pages need from a model (``nn.shapes.model_record``) under its sha256; the first
        record stays (the record is a function of the weights, which the sha256 names)."""
        self._write(
            lambda: self.conn.execute(
                "INSERT OR IGNORE INTO models VALUES (?, ?, ?)",
                (sha256, json.dumps(record, sort_keys=True), time.time()),
            )
        )

    def has_model(self, sha256: str) -> bool:
        return self.version >= 5 and bool(
            self.conn.execute("SELECT 1 FROM models WHERE sha256=?", (sha256,)).fetchone()
        )

    def models(self) -> dict[str, dict]:
        """Every model record, by sha256 (none in a store from before schema 5)."""
        if self.version < 5:
            return {}
        return {sha: json.loads(rec) for sha, rec in self.conn.execute("SELECT sha256, record FROM models")}

    def finish(self, run_id: int) -> None:
        self._write(
            lambda: self.conn.execute("UPDATE runs SET status='done', finished=? WHERE run_id=?", (time.time(), run_id))
        )

    def run(self, run_id: int) -> dict:
        cur = self.conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,))
        cols = [c[0] for c in cur.description]
        d = dict(zip(cols, cur.fetchone()))
        for k in ("eps", "attacks", "model_meta"):
            try:
                d[k] = json.loads(d[k])
            except (TypeError, ValueError, RecursionError):
                raise RobenchError(
                    f"Run {run_id} in {self.path} is damaged (its {k} is not valid JSON); rerun its "
                    "evaluation with --force, or pass --store with another path."
                ) from None
        d["flags"] = [
            r[0] for r in self.conn.execute("SELECT flag FROM run_flags WHERE run_id=? ORDER BY flag", (run_id,))
        ]
        return d

    def runs(self, status: str | None = "done") -> pd.DataFrame:
        """The runs with ``status`` (all with None). A store not yet migrated to schema 3 (read read-only)
        has no finished runs: none of them can say which data it came from."""
        if self._version() is None or (status == "done" and self.version < 3):
            return pd.DataFrame(columns=["run_id", "key", "status"])
        q = "SELECT * FROM runs" + (" WHERE status=?" if status else "") + " ORDER BY run_id"
        return pd.read_sql_query(q, self.conn, params=(status,) if status else ())

    def outcomes(self, run_id: int) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT eps, idx, clean, robust, broken_by FROM outcomes WHERE run_id=? ORDER BY eps, idx",
            self.conn,
            params=(run_id,),
        )

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
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


def _sql(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list, tuple)) else v
