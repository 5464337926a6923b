"""RobustBench-style leaderboards from the results store: one CSV per (dataset, norm), one model_info JSON
per model with RobustBench's field names, and a Markdown page. Deterministic: the same store gives
byte-identical files."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from ..data import dataset_info
from ..engine.evaluate import summarize
from ..store import Store
from .stats import wilson

COLUMNS = ["rank", "model_id", "name", "activation", "architecture", "training_method", "clean_acc",
           "autoattack_acc", "pgd_acc", "transfer_acc", "best_known_acc", "unreliable", "additional_data",
           "venue", "dataset", "norm", "eps", "n", "clean_n", "clean_ci95", "autoattack_n", "autoattack_ci95",
           "pgd_n", "pgd_ci95", "best_known_ci95", "best_known_by", "budget", "flags", "sha256"]


def attack_kind(names: list[str]) -> str:
    """autoattack (the official cascade in any version), pgd (robench PGD/FGSM only), or other."""
    if any(n.startswith("autoattack") for n in names):
        return "autoattack"
    if all(n in ("pgd", "fgsm") for n in names):
        return "pgd"
    return "other"


def model_id(meta: dict, name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", meta.get("name") or name).strip("-") or "model"


def results(db: Store) -> pd.DataFrame:
    """Every finished run x eps in the store, one row each, with the attack kind, the model metadata and
    the per-example outcomes ({idx: robust})."""
    rows = []
    for run_id in db.runs()["run_id"].tolist():
        summary, oc = summarize(db, int(run_id))
        meta = db.run(int(run_id))["model_meta"]
        for r in summary:
            o = oc[oc.eps == r["eps"]]
            rows.append({**r, "kind": attack_kind(r["attacks"].split("+")), "meta": meta,
                         "robust_by_idx": dict(zip(o.idx.tolist(), o.robust.tolist()))})
    return pd.DataFrame(rows)


def worst_case(runs: pd.DataFrame) -> tuple[int, int, str]:
    """Per-example worst case over every run: on the examples all runs share, an example is robust only
    if every attack left it robust. Returns (robust count, n, the attacks involved)."""
    common = set.intersection(*(set(d) for d in runs["robust_by_idx"]))
    robust = sum(all(d[i] for d in runs["robust_by_idx"]) for i in common)
    return robust, len(common), " + ".join(sorted(set(runs["attacks"])))


def _ci(row) -> str:
    return f"[{row['robust_ci_low']:.2f}, {row['robust_ci_high']:.2f}]"


def _fmt_ci(lo: float, hi: float) -> str:
    return f"[{100 * lo:.2f}, {100 * hi:.2f}]"


def _pick(runs: pd.DataFrame, kind: str):
    """The run of ``kind`` with the most examples (the latest on a tie), or None."""
    r = runs[runs.kind == kind].sort_values(["n", "run_id"])
    return r.iloc[-1] if len(r) else None


def _budget_summary(budget_json: str) -> str:
    parts = []
    for a in json.loads(budget_json):
        if a["name"].startswith("autoattack"):
            members = a.get("members", {})
            inner = ", ".join(f"{k} " + "x".join(str(v[f]) for f in ("targets", "iters", "queries") if f in v)
                              for k, v in members.items())
            parts.append(f"{a['name']} ({inner})" if inner else a["name"])
        elif a["name"] in ("pgd", "fgsm"):
            parts.append(f"{a['name']} {a.get('steps', 1)} steps x {a.get('restarts', 1)} restarts, "
                         f"step {a.get('step_size')}, {a.get('loss', 'ce')}")
        else:
            parts.append(a["name"] + (f"({', '.join(f'{k}={v}' for k, v in sorted(a.items()) if k != 'name')})"
                                      if len(a) > 1 else ""))
    return " + ".join(parts)


def leaderboards(db: Store) -> dict[tuple[str, str], pd.DataFrame]:
    """{(dataset, norm): leaderboard} with COLUMNS, ranked within each eps by best known robust accuracy."""
    res = results(db)
    out = {}
    if res.empty:
        return out
    for (dataset, norm), block in res.groupby(["dataset", "norm"], sort=True):
        rows = []
        for (eps_value, eps), runs in block.groupby(["eps_value", "eps"], sort=True):
            for sha, m in runs.groupby("sha256", sort=True):
                rows.append(_row(m, dataset, norm, eps, eps_value))
        df = pd.DataFrame(rows)
        df = df.sort_values(["eps_value", "best_known_acc", "clean_acc", "model_id"],
                            ascending=[True, False, False, True], kind="mergesort")
        df["rank"] = df.groupby("eps_value").cumcount() + 1
        out[(dataset, norm)] = df[COLUMNS].reset_index(drop=True)
    return out


def _row(m: pd.DataFrame, dataset: str, norm: str, eps: str, eps_value: float) -> dict:
    last = m.sort_values("run_id").iloc[-1]
    meta = last["meta"]
    aa, pgd = _pick(m, "autoattack"), _pick(m, "pgd")
    k, n, by = worst_case(m)
    if n == 0:  # the runs share no examples: fall back to the lowest single result
        low = m.sort_values(["robust_acc", "n", "run_id"], ascending=[True, False, True]).iloc[0]
        k, n, by = round(low["robust_acc"] * low["n"] / 100), int(low["n"]), low["attacks"]
    clean = m.sort_values(["n", "run_id"]).iloc[-1]
    flags = sorted({f for fl in m["flags"] for f in fl.split("; ") if f})
    return {
        "model_id": model_id(meta, last["model"]), "name": last["model"], "activation": meta.get("activation", ""),
        "architecture": meta.get("arch", ""), "training_method": meta.get("training_method", ""),
        "clean_acc": round(clean["clean_acc"], 2),
        "autoattack_acc": round(aa["robust_acc"], 2) if aa is not None else math.nan,
        "pgd_acc": round(pgd["robust_acc"], 2) if pgd is not None else math.nan,
        "transfer_acc": math.nan, "best_known_acc": round(100 * k / n, 2) if n else math.nan,
        "unreliable": bool(flags), "additional_data": bool(meta.get("additional_data", False)),
        "venue": meta.get("venue") or ("robench zoo" if meta.get("zoo_group") else ""),
        "dataset": dataset, "norm": norm, "eps": eps, "eps_value": eps_value, "n": n,
        "clean_n": int(clean["n"]), "clean_ci95": f"[{clean['clean_ci_low']:.2f}, {clean['clean_ci_high']:.2f}]",
        "autoattack_n": int(aa["n"]) if aa is not None else 0, "autoattack_ci95": _ci(aa) if aa is not None else "",
        "pgd_n": int(pgd["n"]) if pgd is not None else 0, "pgd_ci95": _ci(pgd) if pgd is not None else "",
        "best_known_ci95": _fmt_ci(*wilson(k, n)), "best_known_by": by,
        "budget": " | ".join(_budget_summary(b) for b in sorted(set(m["budget"]))),
        "flags": "; ".join(flags), "sha256": last["sha256"],
    }


def model_info(row: pd.Series) -> dict:
    """RobustBench's model_info fields (same names and types), then robench's own."""
    info = {
        "link": "", "name": row["name"], "authors": "", "additional_data": bool(row["additional_data"]),
        "number_forward_passes": 1, "dataset": row["dataset"], "venue": row["venue"],
        "architecture": row["architecture"], "eps": row["eps"], "clean_acc": _s(row["clean_acc"]),
        "reported": "", "autoattack_acc": _s(row["autoattack_acc"]), "external": _s(row["best_known_acc"]),
        "footnote": row["flags"], "unreliable": bool(row["unreliable"]),
    }
    info["robench"] = {k: _plain(v) for k, v in row.items() if k not in ("name", "dataset", "eps", "architecture")}
    return info


def _plain(v):
    """numpy scalars to Python ones, NaN to None (JSON null)."""
    v = v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and math.isnan(v) else v


def _s(v) -> str:
    """RobustBench stores accuracies as strings with two decimals; empty when not measured."""
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.2f}"


def default_eps(dataset: str, norm: str) -> str | None:
    try:
        return dataset_info(dataset).eps.get(norm)
    except Exception:
        return None


def markdown(boards: dict[tuple[str, str], pd.DataFrame], report: str | None = None) -> str:
    lines = ["# Leaderboards", "", "Written by `robench leaderboard` from the results store. Accuracies in %, "
             "with n and Wilson 95% intervals in the CSV files; ranked by best known robust accuracy (the "
             "lowest robust accuracy any attack reached)."]
    if report:
        lines += ["", f"The activation comparison is in [{report}]({report})."]
    for (dataset, norm), df in boards.items():
        for eps, block in df.groupby("eps", sort=False):
            lines += ["", f"## {dataset}, {norm}, eps {eps}", "",
                      "| Rank | Model | Activation | Architecture | Training | Clean | AutoAttack | PGD | Best known "
                      "| n | Unreliable |", "|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in block.itertuples():
                lines.append(f"| {r.rank} | {r.model_id} | {r.activation} | {r.architecture} | {r.training_method} | "
                             f"{_s(r.clean_acc) or '-'} | {_s(r.autoattack_acc) or '-'} | {_s(r.pgd_acc) or '-'} | "
                             f"{_s(r.best_known_acc)} | {r.n} | {'yes' if r.unreliable else 'no'} |")
    return "\n".join(lines) + "\n"
