"""What the store knows of a model, by its sha256: the gradient-masking checks run on it, with their
evidence, and its record (what its pages need from the checkpoint)."""

from __future__ import annotations

import json
import time

import pandas as pd

from .database import Database


class ModelTables(Database):
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
