"""`robench check`: compare a fresh evaluation with a committed leaderboard CSV, model by model and metric
by metric. A metric fails when it drops by more than the tolerance and the drop is significant: an exact
McNemar test on the baseline's per-example outcomes, found in the store or, failing that, in the archive
beside the baseline CSV (the ``results/`` of a committed leaderboard); a Fisher exact test on the counts
otherwise, which the result says."""

from __future__ import annotations

import json
import math
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

from ..checkpoints import Checkpoint, load_checkpoint
from ..config import CheckConfig, EvalConfig, parse_eps
from ..errors import RobenchError
from ..files import atomic_path
from ..results.names import model_id, origin_text
from ..results.runs import COLUMNS, METRICS, attack_kind, outcome_sets, results
from ..stats import compare_outcomes, fisher_exact, unpaired_diff_ci
from ..store import Store, store_path
from .jobs import evaluate_many

NEEDED = ("model_id", "name", "dataset", "norm", "eps", "sha256", "checkpoint", "config")
N_COLUMN = {
    "clean": "clean_n",
    "pgd": "pgd_n",
    "autoattack": "autoattack_n",
    "transfer": "transfer_n",
    "best_known": "n",
}
ACC_COLUMN = {
    "clean": "clean_acc",
    "pgd": "pgd_acc",
    "autoattack": "autoattack_acc",
    "transfer": "transfer_acc",
    "best_known": "best_known_acc",
}


def read_baseline(path: str | Path) -> pd.DataFrame:
    """A leaderboard CSV written by `robench leaderboard`; anything else is one sentence."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"eps": str, "checkpoint": str, "config": str, "sha256": str})
    except FileNotFoundError:
        raise RobenchError(f"No such baseline: {path}.") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise RobenchError(f"{path} is not a readable CSV ({str(e).splitlines()[0]}).") from None
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise RobenchError(
            f"{path} is not a robench leaderboard CSV (no {', '.join(missing)} column); "
            "write one with `robench leaderboard`."
        )
    if df.empty:
        raise RobenchError(f"{path} has no models.")
    for eps in df["eps"]:
        try:
            parse_eps(eps if isinstance(eps, str) else "nan")
        except RobenchError:
            raise RobenchError(
                f"{path} has a row whose eps is {str(eps)[:20]!r}, not a budget such as 0.1 or "
                "8/255; regenerate it with `robench leaderboard`."
            ) from None
    df["checkpoint"] = df["checkpoint"].fillna("")
    return df[[c for c in COLUMNS if c in df.columns]]


def runs_of(rows: pd.DataFrame) -> tuple[dict, list[dict]]:
    """The data slice and the distinct runs (n, eps, attack specs, batch size) behind a model's rows."""
    runs, first = [], None
    bad = RobenchError(
        "The baseline's config column is not a robench run configuration; regenerate it with `robench leaderboard`."
    )
    for text in rows["config"]:
        try:
            cfg = json.loads(text)
        except (TypeError, ValueError, RecursionError):
            raise bad from None
        if (
            not isinstance(cfg, dict)
            or not all(k in cfg for k in ("split", "subset", "seed"))
            or not isinstance(cfg.get("runs"), list)
            or not cfg["runs"]
            or not all(
                isinstance(r, dict)
                and isinstance(r.get("n"), int)
                and isinstance(r.get("eps"), list)
                and isinstance(r.get("attacks"), list)
                and "batch_size" in r
                for r in cfg["runs"]
            )
        ):
            raise bad
        first = first or cfg
        runs += [r for r in cfg["runs"] if r not in runs]
    return {k: first[k] for k in ("split", "subset", "seed")}, runs


def _baseline_sets(base: pd.DataFrame | None, row: pd.Series) -> dict:
    """Per-example outcomes of the baseline row from the store, when the store holds exactly its runs."""
    if base is None or base.empty:
        return {}
    m = base[
        (base.sha256 == row["sha256"])
        & (base.eps == row["eps"])
        & (base.dataset == row["dataset"])
        & (base.norm == row["norm"])
    ]
    if m.empty:
        return {}
    sets = outcome_sets(m)
    for metric, d in sets.items():  # the store must hold what the CSV reports, or it is not the baseline's
        acc = row.get(ACC_COLUMN[metric], math.nan)
        if (
            not d
            or math.isnan(acc)
            or len(d) != row[N_COLUMN[metric]]
            or round(100 * sum(d.values()) / len(d), 2) != acc
        ):
            return {}
    return sets


def compare(
    baseline: pd.DataFrame,
    now: pd.DataFrame,
    mapping: dict[str, str],
    base: pd.DataFrame | None,
    tolerance: float = 1.0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One row per baseline model x eps x metric: baseline, now, change in points with its 95% interval, p,
    test and verdict. ``now`` is ``results()`` of the fresh runs; ``mapping`` maps each fresh sha256 to the
    baseline model id it stands for."""
    out = []
    for _, row in baseline.iterrows():
        shas = [s for s, mid in mapping.items() if mid == row["model_id"]]
        if not shas:
            continue
        fresh = now[(now.sha256 == shas[0]) & (now.eps == row["eps"])]
        now_sets = outcome_sets(fresh) if len(fresh) else {}
        base_sets = _baseline_sets(base, row)
        for metric in METRICS:
            n0 = int(row.get(N_COLUMN[metric])) if not pd.isna(row.get(N_COLUMN[metric])) else 0  # older CSVs lack some
            if n0 == 0 or metric not in now_sets:
                continue
            acc0, d1 = float(row[ACC_COLUMN[metric]]), now_sets[metric]
            k1, n1 = sum(d1.values()), len(d1)
            if metric in base_sets:
                c = compare_outcomes(d1, base_sets[metric])
                change, low, high, p, test = c["diff"], c["low"], c["high"], c["p"], "paired (McNemar)"
                if c["n"] < n0:  # re-run on fewer examples (--n): the baseline on those same examples
                    b = base_sets[metric]
                    acc0, n0 = round(100 * sum(b[i] for i in d1 if i in b) / c["n"], 2) if c["n"] else math.nan, c["n"]
            else:
                k0 = round(acc0 * n0 / 100)
                d, lo, hi = unpaired_diff_ci(k0, n0, k1, n1)
                change, low, high, p, test = (
                    100 * d,
                    100 * lo,
                    100 * hi,
                    fisher_exact(k0, n0, k1, n1),
                    "unpaired (Fisher)",
                )
            drop = change < -tolerance and p < alpha
            out.append(
                {
                    "model_id": row["model_id"],
                    "eps": row["eps"],
                    "metric": metric,
                    "checkpoint": "same" if shas[0] == row["sha256"] else "changed",
                    "baseline": acc0,
                    "baseline_n": n0,
                    "now": round(100 * k1 / n1, 2),
                    "now_n": n1,
                    "change": round(change, 2),
                    "ci95": f"[{low:+.2f}, {high:+.2f}]",
                    "p": p,
                    "test": test,
                    "verdict": "fail" if drop else "pass",
                }
            )
    return pd.DataFrame(out)


def junit_xml(table: pd.DataFrame, tolerance: float, alpha: float) -> str:
    """JUnit XML: one test case per model x eps x metric, a failure for each significant drop."""
    suite = ET.Element(
        "testsuite",
        name="robench check",
        tests=str(len(table)),
        failures=str(int((table.verdict == "fail").sum())) if len(table) else "0",
    )
    for r in table.itertuples():
        case = ET.SubElement(suite, "testcase", classname=f"robench.{r.model_id}", name=f"{r.metric} at eps {r.eps}")
        if r.verdict == "fail":
            ET.SubElement(
                case,
                "failure",
                message=(
                    f"{r.metric} fell from {r.baseline:.2f}% to {r.now:.2f}% ({r.change:+.2f} points {r.ci95}, "
                    f"p={r.p:.3g}, {r.test}); the tolerance is {tolerance} points at alpha {alpha}"
                ),
            )
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def stand_in(spec: str, autoattack: str) -> str:
    """The attack a check re-runs for a baseline attack spec: robench's ``fast`` in place of AutoAttack
    standard when ``autoattack`` is "fast", the spec itself otherwise."""
    return "fast" if autoattack == "fast" and spec in ("autoattack", "autoattack:standard") else spec


def _planned(mid: str, sha256: str, run: dict, autoattack: str, n: int | None = None) -> dict:
    """One baseline run as check re-runs it (on its first ``n`` examples, if given): the attacks run now, the
    baseline's, and why they differ."""
    now = [stand_in(a, autoattack) for a in run["attacks"]]
    swapped = [a for a, b in zip(run["attacks"], now) if a != b]

    def names(specs):  # as the results name a run's attacks: pgd+fast, without each one's options
        return "+".join(a.split("(")[0] for a in specs) or "none"

    return {
        "model_id": mid,
        "sha256": sha256,
        "attacks": names(now),
        "baseline_attacks": names(run["attacks"]),
        "specs": now,
        "kind": attack_kind([a.split("(")[0] for a in run["attacks"]]),
        "n": min(run["n"], n or run["n"]),
        "baseline_n": run["n"],
        "eps": [str(e) for e in run["eps"]],
        "why": (
            f"robench's fast in place of {', '.join(swapped)}, about 5x quicker; --autoattack official runs it"
            if swapped
            else ""
        ),
    }


def run_check(baseline: str | Path, checkpoints: list | None, settings: CheckConfig, progress=None) -> dict:
    """``robench check``: the checkpoints re-evaluated as the baseline CSV recorded them, in a store of their
    own, and compared model by model (see robench.api.check). With ``settings.autoattack`` "fast" (the default)
    the baseline's AutoAttack standard runs are re-run with robench's ``fast`` and compared as the
    autoattack metric; with "official", with AutoAttack itself. With ``settings.n``, each run is re-run on at
    most that many of its examples (its first, in the baseline's order) and compared on them, paired."""
    tolerance, alpha, autoattack, store = settings.tolerance, settings.alpha, settings.autoattack, settings.store
    device, data_dir, trust, overrides = settings.device, settings.data_dir, settings.trust, settings.overrides()
    junit, json_out = settings.junit, settings.json_out
    base_csv = read_baseline(baseline)
    models: dict[str, Checkpoint] = {}  # baseline model id -> checkpoint to evaluate
    if checkpoints:
        for c in checkpoints:
            ck = load_checkpoint(c, trust=trust, **(overrides or {}))
            hit = base_csv[base_csv.sha256 == ck.sha256]
            if hit.empty:
                hit = base_csv[(base_csv.model_id == model_id(ck.meta, ck.name)) | (base_csv.name == ck.name)]
            if hit.empty:
                raise RobenchError(f"{c} matches no model of {baseline} by sha256 or by name.")
            models[hit.iloc[0]["model_id"]] = ck
    else:
        for mid, rows in base_csv.groupby("model_id", sort=True):
            path = rows.iloc[0]["checkpoint"]
            if not path or not Path(path).exists():
                raise RobenchError(
                    f"{baseline} records the checkpoint of {mid} as {path or 'unknown'}, which does "
                    "not exist here; name the checkpoints to check."
                )
            models[mid] = load_checkpoint(path, trust=trust, **(overrides or {}))
    with tempfile.TemporaryDirectory() as tmp:
        tasks, plan = [], []
        for mid, ck in models.items():
            rows = base_csv[base_csv.model_id == mid]
            data, runs = runs_of(rows)
            for run in runs:
                plan.append(_planned(mid, ck.sha256, run, autoattack, settings.n))
                cfg = EvalConfig.validated(
                    dict(
                        dataset=rows.iloc[0]["dataset"],
                        norm=rows.iloc[0]["norm"],
                        data_dir=data_dir,
                        n=plan[-1]["n"],
                        eps=run["eps"],
                        attacks=[stand_in(a, autoattack) for a in run["attacks"]],
                        batch_size=run["batch_size"],
                        device=device,
                        store=str(Path(tmp) / "check.sqlite"),
                        **{**data, "subset": run.get("subset", data["subset"])},
                    )
                )
                cfg.checkpoints = [ck]
                tasks.append(cfg)
        evaluate_many(tasks, progress=progress)
        with Store(Path(tmp) / "check.sqlite", readonly=True) as db:
            now = results(db)
        if len(now):  # a run measures what the baseline's run measured (fast standing in for AutoAttack)
            kinds = {(p["sha256"], p["attacks"]): p["kind"] for p in plan}
            now["kind"] = [kinds.get((r.sha256, r.attacks), r.kind) for r in now.itertuples()]
    base = None
    if store_path(store).exists():
        with Store(store, readonly=True) as db:
            base = results(db)
    wanted = set(base_csv[base_csv.model_id.isin(list(models))].sha256)
    beside = _archive_beside(baseline)
    outcomes_from = None
    if (base is None or not wanted <= set(base.sha256)) and beside is not None:
        base, outcomes_from = _outcomes_from_archive(beside, wanted), str(beside)
    mapping = {ck.sha256: mid for mid, ck in models.items()}
    table = compare(base_csv, now, mapping, base, tolerance, alpha)
    if table.empty:
        raise RobenchError(
            f"Nothing of {baseline} could be compared: the re-evaluation gave no row at the "
            "baseline's eps and metrics; regenerate the baseline with `robench leaderboard`."
        )
    provenance = baseline_provenance(base, set(mapping))
    for p in plan:
        got = table[table.model_id == p["model_id"]]
        p["compared"] = [m for m in METRICS if m in set(got.metric)]
    for mid in models:
        rows = base_csv[base_csv.model_id == mid]
        got = set(table[table.model_id == mid].metric)
        wanted_metrics = [m for m in METRICS if (rows[N_COLUMN[m]].fillna(0) > 0).any() and m not in got]
        if wanted_metrics and plan:
            next(p for p in plan if p["model_id"] == mid)["not_compared"] = wanted_metrics
    if junit:
        _write_report(junit, junit_xml(table, tolerance, alpha))
    if json_out:
        _write_report(
            json_out,
            json.dumps(
                {
                    "baseline": str(baseline),
                    "tolerance": tolerance,
                    "alpha": alpha,
                    "autoattack": autoattack,
                    "baseline_provenance": provenance,
                    "baseline_outcomes_from": outcomes_from,
                    "reran": plan,
                    "failed": bool((table.verdict == "fail").any()),
                    "rows": table.to_dict(orient="records"),
                },
                indent=2,
            )
            + "\n",
        )
    return {
        "table": table,
        "failed": bool((table.verdict == "fail").any()),
        "failures": sorted({f"{r.model_id} ({r.metric})" for r in table[table.verdict == "fail"].itertuples()}),
        "provenance": provenance,
        "outcomes_from": outcomes_from,
        "unpaired": int((table.test != "paired (McNemar)").sum()),
        "archive_beside": str(beside) if beside is not None else None,
        "models": {mid: ck.sha256 for mid, ck in models.items()},
        "reran": plan,
        "autoattack": autoattack,
    }


def _write_report(path, text: str) -> None:
    path = Path(path)
    if path.is_dir():
        raise RobenchError(f"{path} is a folder; name a file to write the report to.")
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    except OSError as e:
        raise RobenchError(f"Cannot write {path} ({e.strerror}).") from None


def _archive_beside(baseline: str | Path) -> Path | None:
    """The per-example outcomes `robench leaderboard` and `robench export` leave beside a committed leaderboard:
    a ``results/`` folder archive (or ``results.jsonl.gz``) next to the baseline CSV."""
    folder = Path(baseline).parent
    for candidate in (folder / "results", folder / "results.jsonl.gz"):
        if (candidate / "order.txt").is_file() or candidate.is_file():
            return candidate
    return None


def _outcomes_from_archive(archive: Path, models: set[str]) -> pd.DataFrame:
    """The baseline's results of ``models`` (sha256s) read from an archive, through a temporary store: their
    lines are checked field by field like any import, and nothing of the user's is written."""
    from ..archive import import_results

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "baseline.sqlite"
        import_results(archive, store, models)
        with Store(store, readonly=True) as db:
            return results(db)


def baseline_provenance(base: pd.DataFrame | None, shas: set[str]) -> list[str]:
    """Where the store's runs of the checked models came from: computed in the store, or imported from
    which archive and when, one line each with its count of runs."""
    if base is None or base.empty:
        return []
    mine = base[base.sha256.isin(list(shas))].drop_duplicates("run_id")
    counts: dict[str, int] = {}
    for origin in mine.get("origin", pd.Series(dtype=str)):
        counts[origin_text(origin)] = counts.get(origin_text(origin), 0) + 1
    return [f"{k} run{'s' * (k != 1)} {v}" for v, k in sorted(counts.items())]
