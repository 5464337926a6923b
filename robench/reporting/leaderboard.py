"""RobustBench-style leaderboards from the results store: one CSV per (dataset, norm), one model_info JSON
per model with RobustBench's field names, and a Markdown page. Deterministic: the same store gives
byte-identical files."""

from __future__ import annotations

import json
import math

import pandas as pd

from ..config import FLAG_SEP, split_flags
from ..data import dataset_info
from ..engine.core import summarize
from ..stats import wilson
from ..store import Store
from ..text import http_link, md, visible
from .names import computed_by, csv_name, shown_meta, unique_ids

COLUMNS = [
    "rank",
    "model_id",
    "name",
    "activation",
    "architecture",
    "training_method",
    "clean_acc",
    "autoattack_acc",
    "pgd_acc",
    "transfer_acc",
    "best_known_acc",
    "unreliable",
    "additional_data",
    "venue",
    "dataset",
    "norm",
    "eps",
    "n",
    "clean_n",
    "clean_ci95",
    "autoattack_n",
    "autoattack_ci95",
    "pgd_n",
    "pgd_ci95",
    "transfer_n",
    "transfer_ci95",
    "transfer_from",
    "best_known_ci95",
    "best_known_by",
    "budget",
    "flags",
    "computed_by",
    "sha256",
    "checkpoint",
    "config",
]
EXTRA = ["number_forward_passes", "link", "authors", "paper"]  # in model_info, not in the CSV
METRICS = ("clean", "pgd", "autoattack", "transfer", "best_known")


def attack_kind(names: list[str], budgets: list[dict] | None = None, sha256: str = "") -> str:
    """clean (no attack), autoattack (the official cascade in any version), pgd (robench PGD/FGSM only),
    transfer (examples crafted on other models; crafted on the model itself it is white-box: other), or
    other."""
    if names in ([], ["none"], [""]):
        return "clean"
    if names == ["transfer"]:
        sources = [s["sha256"] for b in budgets or [] for s in b.get("sources", [])]
        return "other" if sha256 in sources else "transfer"
    if any(n.startswith("autoattack") for n in names):
        return "autoattack"
    if all(n in ("pgd", "fgsm") for n in names):
        return "pgd"
    return "other"


def results(db: Store) -> pd.DataFrame:
    """Every finished run x eps in the store, one row each, with the attack kind, the model metadata and
    the per-example outcomes ({idx: robust})."""
    rows, deterministic = [], {}
    with db.snapshot():  # one consistent view, even while evaluations write to the store
        for run_id in db.runs()["run_id"].tolist():
            summary, oc = summarize(db, int(run_id))
            run = db.run(int(run_id))
            meta, eps_list = shown_meta(run["model_meta"]), [text for text, _ in run["eps"]]
            model = (run["sha256"], run["dataset"], run["norm"])
            if model not in deterministic:  # the "randomized" check: ok, flag, or never run
                status = db.checks(*model).query("check == 'randomized'").status.tolist()
                deterministic[model] = status == ["ok"] if status else None
            for r in summary:
                o = oc[oc.eps == r["eps"]]
                rows.append(
                    {
                        **r,
                        "model": visible(r["model"]),
                        "checkpoint": visible(r["checkpoint"] or ""),
                        "flags": visible(r["flags"]),
                        "attack_flags": visible(r["attack_flags"]),
                        "kind": attack_kind(r["attacks"].split("+"), run["attacks"], run["sha256"]),
                        "deterministic": deterministic[model],
                        "meta": meta,
                        "eps_list": eps_list,
                        "sources": visible(_sources(run["attacks"])),
                        "robust_by_idx": dict(zip(o.idx.tolist(), o.robust.tolist())),
                        "clean_by_idx": dict(zip(o.idx.tolist(), o.clean.tolist())),
                    }
                )
    unique_ids(rows)
    return pd.DataFrame(rows)


def _sources(budgets: list[dict]) -> str:
    return " + ".join(s["model"] for b in budgets if b["name"] == "transfer" for s in b["sources"])


def worst_case(runs: pd.DataFrame) -> dict[int, int]:
    """Per-example worst case over runs: on the examples of the base run (the AutoAttack run with the most
    examples, else the run with the most), an example is robust only if every run that attacked it left it
    robust. A smaller run (say AutoAttack on the first 50 beside PGD on 10,000) neither shrinks nor widens
    the set the accuracy is measured on; it only adds attacks to the examples it covers."""
    aa = runs[runs.kind == "autoattack"] if "kind" in runs else runs.iloc[0:0]
    base = _continued((aa if len(aa) else runs).sort_values(["n", "run_id"]))
    broken = {i for d in runs["robust_by_idx"] for i, robust in d.items() if not robust}
    return {i: int(i not in broken) for i in sorted(base)}


def outcome_sets(m: pd.DataFrame) -> dict[str, dict[int, int]]:
    """The per-example outcomes ({idx: 1 if right}) behind each accuracy of one model at one eps: clean from
    the run with the most examples; pgd and autoattack from their runs with the most examples (each
    continued by its chunks on further examples, see _continued); transfer, the
    worst case over every source (the strongest black-box result); best_known, the worst case over every
    attack run (see worst_case). A metric with no run is absent."""
    out = {"clean": _continued(m.sort_values(["n", "run_id"]), "clean_by_idx")}
    for kind in ("pgd", "autoattack"):
        got = _pick(m, kind)
        if got is not None:
            out[kind] = got
    transfer = m[m.kind == "transfer"]
    if len(transfer):
        out["transfer"] = worst_case(transfer)
    attacked = m[m.kind != "clean"]
    if len(attacked):
        out["best_known"] = worst_case(attacked)
    return out


def _fmt_ci(lo: float, hi: float) -> str:
    return f"[{100 * lo:.2f}, {100 * hi:.2f}]"


def _pick(runs: pd.DataFrame, kind: str) -> dict | None:
    """The per-example outcomes of ``kind``'s column: its run with the most examples (the latest on a tie),
    continued by the runs of the same budget on other examples (chunks run with ``--subset from:K``), or
    None. For PGD, the eps sweep comes first (the run over the most eps): a longer PGD run at one or two
    eps, say 100 steps with restarts against a suspected anomaly, feeds the best known accuracy but does not
    replace the sweep's attack in the PGD column, so every model's PGD column holds the same budget."""
    r = runs[runs.kind == kind].assign(
        _sweep=lambda d: d["eps_list"].map(len) if kind == "pgd" and "eps_list" in d else 0
    )
    r = r.sort_values(["_sweep", "n", "run_id"])
    return _continued(r) if len(r) else None


def _continued(r: pd.DataFrame, column: str = "robust_by_idx") -> dict[int, int]:
    """The outcomes of the last of the sorted runs ``r``, continued by those of the others with the same
    budget, seed (the row's config records one) and eps sweep on examples it does not cover: the chunks of
    one evaluation run with ``--subset from:K`` add up, where a run on the first n adds nothing to one on
    more."""
    keys = [k for k in ("budget", "seed", "_sweep") if k in r]
    rows = list(zip(r[column], *(r[k] for k in keys)))
    top = rows.pop()
    out = dict(top[0])
    for outcomes, *same in reversed(rows):
        if same == list(top[1:]) and out.keys().isdisjoint(outcomes):
            out.update(outcomes)
    return out


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


def model_outcome_sets(res: pd.DataFrame) -> dict[tuple[str, str, str, str], dict[str, dict[int, int]]]:
    """``outcome_sets`` of every model at every eps of ``results(db)``, by (dataset, norm, sha256, eps):
    computed once for the leaderboard and the report, which both read them."""
    if res.empty:
        return {}
    return {key: outcome_sets(m) for key, m in res.groupby(["dataset", "norm", "sha256", "eps"], sort=True)}


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


def run_flags(m: pd.DataFrame, column: str = "flags") -> list[str]:
    """Every flag the rows ``m`` carry (a run's own and the model's checks that concern it), once each."""
    return sorted({f for fl in m[column] for f in split_flags(fl)})


def ranking_flags(m: pd.DataFrame) -> list[str]:
    """The flags that make a model's ranked accuracy unreliable: every flag its runs carry, except, where
    AutoAttack ran, a check that speaks of another attack alone (the checklist finding that PGD stalls on
    the model). That leaves AutoAttack's number standing: the other attacks' breaks are verified, so they can
    only lower the best known accuracy. A run's own flags (AutoAttack's warnings, a black-box member beating
    the white-box ones) and the model's masking checks always count."""
    aa = m[m.kind == "autoattack"]
    if not len(aa) or "attack_flags" not in m:
        return run_flags(m)
    scoped = set(run_flags(m, "attack_flags")) - set(run_flags(aa))
    return [f for f in run_flags(m) if f not in scoped]


def _acc(d: dict | None) -> tuple[float, int, str]:
    """(accuracy %, n, "[low, high]") of per-example outcomes; NaN, 0, "" when not measured."""
    if not d:
        return math.nan, 0, ""
    k, n = sum(d.values()), len(d)
    return round(100 * k / n, 2), n, _fmt_ci(*wilson(k, n))


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


def run_config(m: pd.DataFrame) -> dict:
    """What reproduces a leaderboard row: the data slice and every run behind it (n, eps sweep, attack specs,
    batch size), in run order."""
    from ..attacks.registry import spec_from_budget

    first = m.sort_values("run_id").iloc[0]
    runs = []
    for _, r in m.sort_values("run_id").iterrows():
        if r["attacks"] == "transfer":
            continue  # made by `robench transfer` with other models; `robench check` re-runs evaluations
        spec = {
            "n": int(r["n"]),
            "eps": r["eps_list"],
            "attacks": [spec_from_budget(b) for b in json.loads(r["budget"])] or ["none"],
            "batch_size": int(r["batch_size"]),
        }
        if r["subset"] != first["subset"]:  # a chunk of a longer evaluation (--subset from:K)
            spec["subset"] = r["subset"]
        if spec not in runs:
            runs.append(spec)
    return {"split": first["split"], "subset": first["subset"], "seed": int(first["seed"]), "runs": runs}


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
