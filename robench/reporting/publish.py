"""Writing what robench publishes: the leaderboard folder (CSVs, model_info JSON, README.md, report.md and
its figures, the web site) and results tables, each file atomically, never over a file robench did not write."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import RobenchError
from ..files import atomic_path
from ..results.names import csv_name, info_path
from ..store import Store
from .compare import report as compare_report
from .leaderboard import COLUMNS, default_eps, leaderboards, markdown, model_info, model_outcome_sets, results
from .site import write_site

OUTPUT_MARKER = ".robench-leaderboard"  # in every folder robench leaderboard writes: it may rewrite its files


def write_leaderboard(store: str | Path | None, out: Path, report: bool = True) -> dict:
    """The leaderboards of the store written into ``out``; {"files": [...], "boards": {...}, "index": path of
    the web site's index.html}."""
    _check_output_folder(out)
    with Store(store, readonly=True) as db:
        res = results(db)
        checks = db.checks()
    sets = model_outcome_sets(res)  # read by the tables and the report alike
    boards = leaderboards(res, sets)
    if not boards:
        if db.version < 3:
            raise RobenchError(
                f"The store {db.path} was written before robench recorded which data each run "
                "read, so none of its runs is trusted; run `robench eval` on it once to migrate it "
                "and recompute them."
            )
        raise RobenchError(f"The store {db.path} holds no finished runs; run `robench eval` first.")
    written = []

    def write(path: Path, text: str):
        try:
            with atomic_path(path) as tmp:
                tmp.write_text(text)
        except OSError as e:
            raise RobenchError(f"Cannot write {path} ({e.strerror}); pass --out with a writable folder.") from None
        written.append(path)

    write(out / OUTPUT_MARKER, "This folder is written by `robench leaderboard`; robench rewrites its files.\n")
    written.pop()  # first, so that a leaderboard stopped half-way still owns its folder; not a result file
    for (dataset, norm), df in boards.items():
        write(out / csv_name(dataset, norm), df[COLUMNS].to_csv(index=False, lineterminator="\n"))
        std = default_eps(dataset, norm)
        for mid, rows in df.groupby("model_id", sort=True):
            at_std = rows[rows.eps == std]
            row = (at_std if len(at_std) else rows).iloc[0]
            write(
                out / info_path(dataset, norm, mid),
                json.dumps(model_info(row), indent=2, sort_keys=False, default=str) + "\n",
            )
    parts = None
    if report:
        text, figures, parts = compare_report(res, out, checks, sets)
        written += figures
        write(out / "report.md", text)
    write(out / "README.md", markdown(boards, "report.md" if (out / "report.md").exists() else None))
    write_site(out, boards, res, checks, parts, write)
    return {"files": written, "boards": boards, "index": out / "index.html"}


def _check_output_folder(out: Path) -> None:
    """robench writes into a new or empty folder, or one it wrote before (it holds the marker file); it
    never overwrites a file of the user's."""
    if out.exists() and not out.is_dir():
        raise RobenchError(f"{out} is a file, not a folder; pass --out with a folder for the leaderboard.")
    if out.is_dir() and not (out / OUTPUT_MARKER).is_file() and any(out.iterdir()):
        raise RobenchError(
            f"{out} holds files that robench did not write, which a leaderboard would overwrite; "
            "pass --out with a new or empty folder."
        )


def check_table_path(path) -> Path:
    """A results table's path: .csv or .json."""
    path = Path(path)
    if path.suffix not in (".csv", ".json"):
        raise RobenchError(f"--out must end in .csv or .json, not {path.name}.")
    return path


def write_table(df, path: str | Path) -> Path:
    """Write a results table as CSV or JSON, atomically (temp file + rename)."""
    path = check_table_path(path)
    try:
        with atomic_path(path) as tmp:
            if path.suffix == ".csv":
                df.to_csv(tmp, index=False)
            else:
                df.to_json(tmp, orient="records", indent=2)
    except OSError as e:
        raise RobenchError(f"Cannot write {path} ({e.strerror}).") from None
    return path
