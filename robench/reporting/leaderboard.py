"""RobustBench-style leaderboards from the results store: one CSV per (dataset, norm), one model_info JSON
per model with RobustBench's field names, and a Markdown page. Deterministic: the same store gives
byte-identical files."""

from __future__ import annotations

import json
import math

import pandas as pd

from ..config import FLAG_SEP
from ..data import dataset_info
from ..results.names import computed_by, csv_name
from ..results.runs import (  # noqa: F401  (results, outcome_sets and attack_kind: read through here too)
    COLUMNS,
    EXTRA,
    METRICS,
    attack_kind,
    fmt_ci,
    model_outcome_sets,
    outcome_sets,
    ranking_flags,
    results,
    run_config,
    run_flags,
    worst_case,
)
from ..stats import wilson
from ..text import http_link, md


def _budget_summary(budget_json: str) -> str:
    parts = []
    for a in json.loads(budget_json):
        if a["name"].startswith("autoattack"):
            members = a.get("members", {})
            inner = ", ".join(
                f"{k} " + "x".join(str(v[f]) for f in ("targets", "iters", "queries") if f in v)
                for k, v in members.items()
            )
            parts.append(f"{a['name']} ({inner})" if inner else a["name"])
        elif a["name"] in ("pgd", "fgsm"):
            parts.append(
                f"{a['name']} {a.get('steps', 1)} steps x {a.get('restarts', 1)} restarts, "
                f"step {a.get('step_size')}, {a.get('loss', 'ce')}"
            )
        elif a["name"] == "transfer":
            t = a["attack"]
            parts.append(
                f"transfer {t['name']} {t['steps']} steps (decay {t['decay']}) from "
                + " + ".join(s["model"] for s in a["sources"])
            )
        else:
            parts.append(
                a["name"]
                + (f"({', '.join(f'{k}={v}' for k, v in sorted(a.items()) if k != 'name')})" if len(a) > 1 else "")
            )
    return " + ".join(parts)


def leaderboards(res: pd.DataFrame, sets: dict | None = None) -> dict[tuple[str, str], pd.DataFrame]:
    """{(dataset, norm): leaderboard} with COLUMNS from ``results(db)``, ranked within each eps by best known
    robust accuracy (``sets``: ``model_outcome_sets(res)`` where the caller has them)."""
    out = {}
    if res.empty:
        return out
    sets = sets if sets is not None else model_outcome_sets(res)
    for (dataset, norm), block in res.groupby(["dataset", "norm"], sort=True):
        rows = []
        for (eps_value, eps), runs in block.groupby(["eps_value", "eps"], sort=True):
            for sha, m in runs.groupby("sha256", sort=True):
                rows.append(_row(m, dataset, norm, eps, eps_value, sets[(dataset, norm, sha, eps)]))
        df = pd.DataFrame(rows)
        # by best known robust accuracy, whatever attacks it rests on: a model without AutoAttack is not
        # pushed below standard-trained models at 0%; the tables mark its row instead (weaker_attacks_only)
        df = df.sort_values(
            ["eps_value", "best_known_acc", "clean_acc", "model_id"],
            ascending=[True, False, False, True],
            kind="mergesort",
            na_position="last",
        )
        df["rank"] = df.groupby("eps_value").cumcount() + 1
        out[(dataset, norm)] = df[COLUMNS + EXTRA].reset_index(drop=True)
    return out


def _acc(d: dict | None) -> tuple[float, int, str]:
    """(accuracy %, n, "[low, high]") of per-example outcomes; NaN, 0, "" when not measured."""
    if not d:
        return math.nan, 0, ""
    k, n = sum(d.values()), len(d)
    return round(100 * k / n, 2), n, fmt_ci(*wilson(k, n))


def _row(m: pd.DataFrame, dataset: str, norm: str, eps: str, eps_value: float, sets: dict) -> dict:
    last = m.sort_values("run_id").iloc[-1]
    meta = last["meta"]
    (clean, clean_n, clean_ci), (aa, aa_n, aa_ci), (pgd, pgd_n, pgd_ci), (tr, tr_n, tr_ci), (best, n, best_ci) = (
        _acc(sets.get(k)) for k in ("clean", "autoattack", "pgd", "transfer", "best_known")
    )
    attacked = m[m.kind != "clean"]
    flags = run_flags(m)
    return {
        "model_id": last["model_id"],
        "name": last["model"],
        "activation": meta.get("activation", ""),
        "architecture": meta.get("arch", ""),
        "training_method": meta.get("training_method", ""),
        "clean_acc": clean,
        "autoattack_acc": aa,
        "pgd_acc": pgd,
        "transfer_acc": tr,
        "best_known_acc": best,
        "unreliable": bool(ranking_flags(m)),
        "additional_data": bool(meta.get("additional_data", False)),
        "venue": meta.get("venue") or ("robench zoo" if meta.get("zoo_group") else ""),
        "dataset": dataset,
        "norm": norm,
        "eps": eps,
        "eps_value": eps_value,
        "n": n,
        "clean_n": clean_n,
        "clean_ci95": clean_ci,
        "autoattack_n": aa_n,
        "autoattack_ci95": aa_ci,
        "pgd_n": pgd_n,
        "pgd_ci95": pgd_ci,
        "transfer_n": tr_n,
        "transfer_ci95": tr_ci,
        "transfer_from": "; ".join(sorted(set(m.loc[m.kind == "transfer", "sources"]))),
        "best_known_ci95": best_ci,
        "best_known_by": " + ".join(sorted(set(attacked["attacks"]))),
        "budget": " | ".join(_budget_summary(b) for b in sorted(set(attacked["budget"]))),
        "flags": FLAG_SEP.join(flags),
        "computed_by": " | ".join(sorted(set(map(computed_by, m.to_dict("records"))))),
        "sha256": last["sha256"],
        "checkpoint": last["checkpoint"] or "",
        "config": json.dumps(run_config(m), sort_keys=True),
        # RobustBench's field: one pass gives a deterministic model's prediction; for a model the store found
        # randomized, or never checked, the store cannot say how many passes its prediction needs
        "number_forward_passes": 1 if m["deterministic"].eq(True).all() else None,
        # from the checkpoint's metadata or its model card (robench.metadata.DESCRIPTIVE)
        "link": http_link(meta.get("link")),
        "paper": meta.get("paper") or "",
        "authors": ", ".join(a) if isinstance(a := meta.get("authors") or "", list) else a,
    }


def model_info(row: pd.Series) -> dict:
    """RobustBench's model_info fields (same names and types), then robench's own."""
    info = {
        "link": row["link"],
        "name": row["name"],
        "authors": row["authors"],
        "additional_data": bool(row["additional_data"]),
        "number_forward_passes": None if pd.isna(row["number_forward_passes"]) else int(row["number_forward_passes"]),
        "dataset": row["dataset"],
        "venue": row["venue"],
        "architecture": row["architecture"],
        "eps": row["eps"],
        "clean_acc": _s(row["clean_acc"]),
        "reported": "",
        "autoattack_acc": _s(row["autoattack_acc"]),
        "external": _s(row["best_known_acc"]),
        "footnote": row["flags"],
        "unreliable": bool(row["unreliable"]),
    }
    info["robench"] = {
        k: _plain(v) for k, v in row.items() if k in COLUMNS and k not in ("name", "dataset", "eps", "architecture")
    }
    info["robench"]["paper"] = row["paper"]
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


def shown_eps(df: pd.DataFrame) -> list[str]:
    """The eps values worth a table: those with an AutoAttack result (all of them when none has one), the
    headline first (``headline_eps``), then the others in eps order."""
    with_aa = set(df.loc[df.autoattack_n > 0, "eps"])
    shown = [e for e in dict.fromkeys(df.eps) if not with_aa or e in with_aa]
    top = headline_eps(df)
    return [top] + [e for e in shown if e != top] if shown else shown


def headline_eps(df: pd.DataFrame) -> str | None:
    """The eps a reader should see first, as RobustBench shows one budget per threat model: the one at which
    the most models have AutoAttack; a tie goes to the dataset's standard eps (``default_eps``), then to the
    eps with the most models, then to the smaller eps."""
    if df.empty:
        return None
    std = default_eps(df.dataset.iloc[0], df.norm.iloc[0])
    key = {e: (int((block.autoattack_n > 0).sum()), e == std, len(block)) for e, block in df.groupby("eps", sort=False)}
    return max(dict.fromkeys(df.eps), key=key.__getitem__)


def weaker_attacks_only(row) -> bool:
    """A row whose best known accuracy rests on attacks weaker than AutoAttack (none ran at its eps)."""
    return not row.autoattack_n and bool(row.best_known_by)


def fewer_examples(block: pd.DataFrame) -> set[str]:
    """The model ids of a board's rows (one eps) whose ranked accuracy rests on fewer examples than the most any
    row has: their intervals are wider, so their rank is less certain than their neighbours'."""
    top = block["n"].max() if len(block) else 0
    return set(block.loc[block["n"] < top, "model_id"])


def fewer_note(block: pd.DataFrame) -> str:
    """The note under a board that marks rows with ``fewer_examples`` (‡)."""
    return (
        f"‡ Ranked on fewer examples than the {int(block['n'].max()):,} of the table's largest n: its interval "
        "is wider, so its rank is less certain; ranks whose intervals overlap are not told apart by the data."
    )


def measured(row, metric: str) -> tuple[float, int, str] | None:
    """A row's (accuracy %, n, "[low, high]") for ``metric`` (a row of ``leaderboards``, as a Series or a
    namedtuple), or None when it was not measured."""
    get = row.get if hasattr(row, "get") else lambda k: getattr(row, k)
    acc, n = get(f"{metric}_acc"), get("n" if metric == "best_known" else f"{metric}_n")
    return None if not n or acc != acc else (acc, int(n), get(f"{metric}_ci95"))


def cell(row, metric: str, digits: int = 2) -> str:
    """One accuracy with its Wilson 95% interval and n, as the tables print it; "-" when not measured."""
    m = measured(row, metric)
    return f"{m[0]:.{digits}f} {m[2]} n={m[1]}" if m else "-"


WEAKER_NOTE = (
    "† No AutoAttack result at this eps: the best known accuracy rests on weaker attacks only, so it may "
    "overstate robustness."
)


def markdown(boards: dict[tuple[str, str], pd.DataFrame], report: str | None = None) -> str:
    """The leaderboards in Markdown: per (dataset, norm), a table for every eps that has an AutoAttack result
    (every eps when none has); the CSV holds every eps."""
    lines = [
        "# Leaderboards",
        "",
        "Written by `robench leaderboard` from the results store. Accuracies in %, each with its Wilson 95% "
        "interval and its number of test examples n; ranked by best known robust accuracy (per example, the "
        "worst case over every attack run). The CSV files add the attack budgets, the configuration and the "
        "checkpoint sha256; index.html is the same leaderboard as a web page. The first table is the headline "
        "budget, the eps at which the most models have AutoAttack; the others follow in eps order.",
    ]
    if report:
        lines += ["", f"The activation comparison is in [{report}]({report})."]
    for (dataset, norm), df in boards.items():
        shown = shown_eps(df)
        others = [e for e in dict.fromkeys(df.eps) if e not in shown]
        for eps in shown:
            block = df[df.eps == eps]
            lines += [
                "",
                f"## {md(dataset)}, {md(norm)}, eps {md(eps)}",
                "",
                "| Rank | Model | Activation | Architecture | Training | Clean | AutoAttack | PGD | Transfer "
                "| Best known | Unreliable |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            fewer = fewer_examples(block)
            for r in block.itertuples():
                best = cell(r, "best_known") + (" †" if weaker_attacks_only(r) else "")
                lines.append(
                    f"| {r.rank}{' ‡' if r.model_id in fewer else ''} | {md(r.model_id)} | {md(r.activation)} | {md(r.architecture)} | "
                    f"{md(r.training_method)} | "
                    + " | ".join(cell(r, m) for m in ("clean", "autoattack", "pgd", "transfer"))
                    + f" | {best} | {'yes' if r.unreliable else 'no'} |"
                )
            if any(weaker_attacks_only(r) for r in block.itertuples()):
                lines += ["", WEAKER_NOTE]
            if fewer:
                lines += ["", fewer_note(block)]
        if others:
            lines += [
                "",
                f"Results at {md(norm)} eps {md(', '.join(others))} are in [{md(csv_name(dataset, norm))}]"
                f"({csv_name(dataset, norm)}).",
            ]
    return "\n".join(lines) + "\n"
