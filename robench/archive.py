"""Results archives: a store's finished runs as gzipped JSON lines, small enough to commit and read back
into any store. Per-example outcomes are kept in full, column-wise (a string of 0s and 1s per eps, and
which attack broke each example), so an archive holds exactly what the leaderboard and report need to be
rebuilt. The same store gives the same bytes; importing validates every line and never replaces a
finished run, so an archive from a stranger can add results but not change or run anything.

An archive is one ``.jsonl.gz`` file (to share) or a folder of them, one file per run named by its key
and one per model's checks (to commit: a new export rewrites no file whose run is unchanged, so git keeps
each run once however often the results are committed again). Each file of a folder is itself an archive;
the folder's ``order.txt`` lists the run keys in the store's order, which a fresh store's import keeps (run
numbers and the order of runs on the pages come from it).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import time
from collections.abc import Collection
from pathlib import Path

from .archive_validate import Bad, validate_check, validate_model, validate_run
from .errors import RobenchError
from .files import sha256_file
from .store import RUN_FIELDS, Store

FORMAT = "robench-results"
VERSION = 2  # 2 adds model records; a file without one is still written as version 1, which any robench reads
MAX_ARCHIVE = 1 << 30  # bytes an archive may decompress to
MAX_LINE = 64 << 20  # one run's line: far above what 10,000 examples at a dozen eps take


def _ranges(idx: list[int]) -> list[list[int]]:
    """[0, 1, 2, 5, 6] -> [[0, 3], [5, 7]] (half-open runs of consecutive indices)."""
    out: list[list[int]] = []
    for i in idx:
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


ORDER = "order.txt"  # a folder archive's run keys in the store's order


def _header(version: int) -> str:
    return json.dumps({"format": FORMAT, "version": version}, sort_keys=True)


def _line(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _gzipped(lines: list[str]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:  # mtime 0: the same store, the same bytes
        # the oldest version that holds these lines: an older robench reads them, or says it is too old
        version = VERSION if any(line.startswith('{"model_record"') for line in lines) else 1
        gz.write(("\n".join([_header(version), *lines]) + "\n").encode())
    return buf.getvalue()


def _write(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` unless it already holds exactly that; True when written."""
    from .files import atomic_path

    try:
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as e:
        raise RobenchError(f"Cannot write {path} ({e.strerror}).") from None
    return True


def export_results(store: str | Path | None, out: str | Path, unfinished: bool = False) -> dict:
    """Write every finished run of ``store`` (with its outcomes, flags and query counts) and the model
        checks to ``out``: one .jsonl.gz file, or a folder with a file per run and per model's checks (files
        of runs the store lacks are left as they are). With ``unfinished``, write instead the runs not yet
        finished that have stored batches, with those batches, marked unfinished, so that another store (a new
        checkout, another machine) imports them and `robench eval` resumes them there after those batches. The
        finished stages of the batch under way stay behind: another store never reads work done elsewhere as a
        result, so it attacks that batch from the start. With the finished runs go the records of their models
    (what the pages show of each model's activations). Returns {"runs", "checks", "models", "path", "written"}."""
    out = Path(out)
    folder = not out.name.endswith(".jsonl.gz")
    if unfinished and folder:  # a folder's order.txt lists finished runs; unfinished ones travel apart
        raise RobenchError(f"Unfinished runs are written to one .jsonl.gz file, not to a folder ({out.name}).")
    if folder and (out.exists() and not out.is_dir() or not out.exists() and out.suffix):
        raise RobenchError(
            f"A results archive is a .jsonl.gz file or a folder (a name without an extension), not {out.name}."
        )
    with Store(store, readonly=True) as db, db.snapshot():
        if unfinished:
            runs = [
                {**_run_record(db, i), "finished": False}
                for i in map(int, db.runs("running")["run_id"].tolist())
                if db.stored_examples(i)
            ]
            checks, models = [], []
        else:
            runs = [_run_record(db, int(run_id)) for run_id in db.runs()["run_id"].tolist()]
            checks = db.checks().to_dict(orient="records")
        shas = {r["sha256"] for r in runs}  # what the pages need of each model whose runs are written
        models = [(sha, record) for sha, record in sorted(db.models().items()) if sha in shas]
    if not folder:
        lines = [_line(r) for r in runs] + [_line({"check": c}) for c in checks]
        lines += [_line({"model_record": {"sha256": sha, "record": record}}) for sha, record in models]
        _write(out, _gzipped(lines))
        return {"runs": len(runs), "checks": len(checks), "models": len(models), "path": out, "written": 1}
    parts = {f"run-{r['key'][:16]}.jsonl.gz": [_line(r)] for r in runs}
    for c in checks:  # one file per model (sha256, dataset, norm): its checks are replaced together
        group = hashlib.sha256(repr((c["sha256"], c["dataset"], c["norm"])).encode()).hexdigest()[:16]
        parts.setdefault(f"checks-{group}.jsonl.gz", []).append(_line({"check": c}))
    for sha, record in models:  # one file per model record: written once, as the model's weights never change
        parts[f"model-{sha[:16]}.jsonl.gz"] = [_line({"model_record": {"sha256": sha, "record": record}})]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RobenchError(f"Cannot write {out} ({e.strerror}).") from None
    written = sum(_write(out / name, _gzipped(lines)) for name, lines in sorted(parts.items()))
    written += _write(out / ORDER, "".join(r["key"] + "\n" for r in runs).encode())
    return {"runs": len(runs), "checks": len(checks), "models": len(models), "path": out, "written": written}


def _run_record(db: Store, run_id: int) -> dict:
    run = db.run(run_id)  # every column, JSON fields parsed, with the run's flags
    rec = {k: run[k] for k in ("key", "wall_time", "flags", *RUN_FIELDS)}
    if run.get("machine"):  # written where recorded, so archives of runs from before it keep their bytes
        rec["machine"] = run["machine"]
    oc = db.outcomes(run_id)
    idx = sorted(set(oc.idx.tolist()))
    pos = {i: p for p, i in enumerate(idx)}
    per_eps = {text: {"clean": "", "robust": "", "broken_by": {}} for text, _ in run["eps"]}  # none stored yet
    for eps, block in oc.groupby("eps", sort=True):
        clean, robust = ["0"] * len(idx), ["0"] * len(idx)
        broken: dict[str, list[int]] = {}
        for i, c, r, b in zip(block.idx, block.clean, block.robust, block.broken_by):
            clean[pos[i]], robust[pos[i]] = str(int(c)), str(int(r))
            if b is not None and b == b:
                broken.setdefault(b, []).append(pos[i])
        per_eps[eps] = {"clean": "".join(clean), "robust": "".join(robust), "broken_by": broken}
    rec["outcomes"] = {"idx": _ranges(idx), "eps": per_eps}
    rec["queries"] = db.queries(run_id)
    return rec


def _bad(path: Path, line: int, why: str) -> RobenchError:
    return RobenchError(f"{path} line {line} is not a valid robench results record ({why}); nothing was imported.")


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def import_results(archive: str | Path, store: str | Path | None = None, models: Collection[str] | None = None) -> dict:
    """Add the runs of ``archive`` (a file or a folder archive) to ``store``: a run the store already
    finished is kept as it is, any other is written whole, recorded as imported from this archive. Every
    line of every file is checked before anything is written, and the writes are one transaction: a refusal
    leaves the store as it was. An archive's checks only fill gaps (the store's own are never replaced), and
    the stages of an unfinished run are dropped (its batch under way is recomputed here: work from elsewhere
    never decides an outcome). With ``models`` (sha256s), only the runs, checks and records of those models
    are checked and written; the archive's other lines are skipped. Returns {"added", "kept", "checks",
    "unfinished"}."""
    archive = Path(archive)
    records, checks, records_of_models = _read_all(archive, models)
    if archive.is_dir() and (archive / ORDER).is_file():  # the exporting store's order; runs it lacks last
        try:
            with open(archive / ORDER, "rb") as f:  # 65 bytes a key: read no more than the runs need
                keys = f.read(65 * (len(records) + 100)).decode("ascii", "replace").split()
        except OSError as e:
            raise RobenchError(f"Cannot read {archive / ORDER} ({e.strerror}).") from None
        pos = {k: p for p, k in enumerate(keys)}
        records.sort(key=lambda rec: pos.get(rec[0]["key"], len(pos)))
    origin = {"archive": archive.name, "imported": round(time.time(), 3)}
    if archive.is_file():
        origin["sha256"] = sha256_file(archive)
    return _add(records, checks, records_of_models, store, origin)


def _read_all(archive: Path, only: Collection[str] | None = None) -> tuple[list, list, list]:
    """The checked run records (with their outcome rows), checks and model records of an archive file or
    folder (of the models ``only`` names, if given), one record per run: two records of one run that
    disagree are refused."""
    files = sorted(archive.glob("*.jsonl.gz")) if archive.is_dir() else [archive]
    if not files:
        raise RobenchError(f"{archive} holds no results archive (.jsonl.gz files).")
    records: dict[str, tuple] = {}
    checks, models, size = [], [], 0
    for path in files:
        r, c, m, n = _read(path, MAX_ARCHIVE - size, only)
        for rec, rows in r:
            same = records.get(rec["key"])
            if same is not None and _line(same[0]) != _line(rec):
                raise RobenchError(
                    f"{archive} holds two different records of run {rec['key'][:16]} (the second in "
                    f"{path}); an archive gives one result per run, so nothing was imported."
                )
            records[rec["key"]] = (rec, rows)
        checks += c
        models += m
        size += n
    return list(records.values()), checks, models


def _read(archive: Path, limit: int, only: Collection[str] | None = None) -> tuple[list, list, list, int]:
    """The checked run records (with their outcome rows), checks and model records of one archive file (of
    the models ``only`` names, if given), and its size."""
    try:
        with gzip.open(archive, "rb") as f:
            raw = f.read(limit + 1)
        if len(raw) > limit:
            raise RobenchError(
                f"The results archive is larger than 1 GiB (at {archive}); robench imports archives up to that."
            )
    except FileNotFoundError:
        raise RobenchError(f"No such results archive: {archive}.") from None
    except (OSError, EOFError) as e:
        raise RobenchError(f"{archive} is not a readable results archive (gzipped JSON lines): {e}.") from None
    records, checks, models = [], [], []
    for n, text in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        if not text.strip():
            continue
        if len(text) > MAX_LINE:
            raise _bad(archive, n, "the line is too long")
        try:
            rec = json.loads(text, parse_constant=_no_constant)  # NaN and Infinity are no result
        except (ValueError, RecursionError):
            raise _bad(archive, n, "not JSON") from None
        if not isinstance(rec, dict):
            raise _bad(archive, n, "not an object")
        if n == 1:
            if rec.get("format") != FORMAT or not isinstance(rec.get("version"), int):
                raise _bad(archive, n, "it does not start with the robench-results header")
            if rec["version"] > VERSION:
                raise RobenchError(
                    f"{archive} was written by a newer robench (archive version {rec['version']}); "
                    "upgrade robench to read it."
                )
            continue
        if only is not None and _model_of(rec) not in only:
            continue
        try:
            if "check" in rec:
                checks.append(validate_check(rec["check"]))
                continue
            if "model_record" in rec:  # (a run record has a "model" field: its name)
                models.append(validate_model(rec["model_record"]))
                continue
            records.append((rec, validate_run(rec)))
        except Bad as e:
            raise _bad(archive, n, str(e)) from None
    if not raw.strip():
        raise RobenchError(f"{archive} is empty; it is not a results archive.")
    return records, checks, models, len(raw)


def _model_of(rec: dict) -> str | None:
    """The sha256 a line of an archive speaks of (unchecked: it only decides which lines are read)."""
    inner = rec.get("check", rec.get("model_record", rec))
    sha = inner.get("sha256") if isinstance(inner, dict) else None
    return sha if isinstance(sha, str) else None


def _add(records: list, checks: list, models: list, store, origin: dict) -> dict:
    added = kept = unfinished = 0
    with Store(store) as db, db.transaction():  # all of it or, on any failure, nothing
        for rec, rows in records:
            finished = rec.get("finished", True)
            if not rows:  # an unfinished run whose only work was its dropped stages: nothing to import
                continue
            have = db.run_state(rec["key"])  # (status, examples stored, stages stored) or None
            # a finished run is never replaced; an unfinished one only by a run that got further
            if have and (
                have[0] == "done" or not finished and have[0] == "running" and have[1] >= len({r[1] for r in rows})
            ):
                kept += 1
                continue
            fields = {k: rec[k] for k in RUN_FIELDS}
            fields.update(machine=rec.get("machine", ""), origin=origin)
            run_id, _ = db.open_run(rec["key"], fields, force=True)
            db.add_batch(run_id, rows, [str(f) for f in rec["flags"]], float(rec["wall_time"]))
            db.set_queries(run_id, {a: (int(q["examples"]), int(q["queries"])) for a, q in rec["queries"].items()})
            if finished:
                db.finish(run_id)
            else:
                unfinished += 1
            added += 1
        by_model: dict[tuple, list[dict]] = {}
        for c in checks:
            by_model.setdefault((c["sha256"], c["dataset"], c["norm"]), []).append(
                {**c, "budget": json.loads(c.get("budget") or "{}")}
            )
        for (sha, dataset, norm), cs in by_model.items():
            db.set_checks(sha, dataset, norm, cs, replace=False)
        for m in models:  # like checks, a record only fills a gap: the store's own is kept
            db.set_model(m["sha256"], m["record"])
    return {"added": added, "kept": kept, "checks": len(checks), "unfinished": unfinished}


def read_runs(source: str | Path) -> list[tuple[dict, list[tuple]]]:
    """The finished and unfinished runs of an archive (a file or folder) or of a store (an SQLite file), each
    as (record, outcome rows), checked as an import checks them; nothing is written."""
    source = Path(source)
    if source.is_file() and not source.name.endswith(".jsonl.gz"):
        with Store(source, readonly=True) as db, db.snapshot():
            out = []
            for run_id in map(int, db.runs()["run_id"].tolist()):
                rec = _run_record(db, run_id)
                try:
                    out.append((rec, validate_run(rec)))
                except Bad as e:
                    raise RobenchError(f"Run {run_id} in {source} is damaged ({e}).") from None
            return out
    return _read_all(source)[0]
