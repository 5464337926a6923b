"""Runs: their rows, per-example outcomes and flags committed batch by batch, the stages of an unfinished
batch, and the model queries each attack made."""

from __future__ import annotations

import json
import time

import pandas as pd

from ..errors import RobenchError
from .database import PROVENANCE, RUN_FIELDS, Database, sql_value

OUTCOMES = "SELECT eps, idx, clean, robust, broken_by FROM outcomes WHERE run_id=? ORDER BY eps, idx"


class RunTables(Database):
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
                    (fields.get("machine", ""), sql_value(fields.get("origin", "")), row[0]),
                )
                return row[0], "running"
            vals = [sql_value(fields[f]) for f in RUN_FIELDS] + [sql_value(fields.get(f, "")) for f in PROVENANCE]
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
        return pd.read_sql_query(OUTCOMES, self.conn, params=(run_id,))

    def outcome_columns(self, run_id: int, eps: str) -> tuple[tuple, tuple, tuple, tuple]:
        """A run's outcomes at ``eps`` as columns (idx, clean, robust, broken_by), in example order: what the
        summaries of many runs read, without building a DataFrame per run."""
        rows = self.conn.execute(
            "SELECT idx, clean, robust, broken_by FROM outcomes WHERE run_id=? AND eps=? ORDER BY idx", (run_id, eps)
        ).fetchall()
        return tuple(zip(*rows)) if rows else ((), (), (), ())  # type: ignore[return-value]
