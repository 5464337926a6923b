"""What a stored run means: its summary per eps (accuracies with n and Wilson intervals, and every flag that
concerns it), the kind of attack behind it, the per-example outcomes behind each leaderboard metric, the
flags that make a model's ranked accuracy unreliable, and the configuration that reproduces a row. The
engine writes runs with these rules; reporting and the CI gate read them back with the same ones."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd

from ..attacks.registry import black_box, spec_from_budget
from ..config import FLAG_SEP, split_flags
from ..stats import binom_above, wilson
from ..store import Store
from ..text import visible
from .names import shown_meta, unique_ids

# the names of the gradient-masking checklist's checks (`robench sanity`), beside the probes every run makes
CHECKLIST = ("gradient-ascent", "eps-sweep", "large-eps", "convergence", "step-size", "square")

SQUARE_MARGIN = 0.002  # AutoAttack's own rule: Square lowering robust accuracy by > 0.2 pt is suspicious


ALPHA = 0.05


def black_box_flags(broken: Counter, n: int, white_box: list[str]) -> list[str]:
    """A black-box attack later in a cascade broke examples every white-box attack left robust: flagged
    when that share is above AutoAttack's 0.2-point margin beyond sampling noise (one-sided exact binomial
    test at 5%), so one lucky example in fifty is not a flag but a real masking pattern is."""
    if not n or not white_box:
        return []
    out = []
    for name, k in sorted(broken.items()):
        if black_box(name) and k / n > SQUARE_MARGIN and (p := binom_above(k, n, SQUARE_MARGIN)) < ALPHA:
            out.append(
                f"{name} (black-box) broke {k} of {n} examples ({k / n:.1%}) that the white-box attacks "
                f"({', '.join(white_box)}) left robust, above AutoAttack's 0.2% margin (p={p:.2g}); the "
                "white-box gradients may be masked."
            )
    return out


def tested_attack(check_budget: str | None) -> str | None:
    """The attack a stored check speaks of: the attack under test its budget names (the checklist's
    step-size, convergence, eps-sweep and large-eps checks of PGD or fast, which find that attack falling
    short on this model), or None for a check on the model itself (masked gradients, randomness,
    probabilities, transfer)."""
    try:
        budget = json.loads(check_budget or "{}")
    except (TypeError, ValueError, RecursionError):
        return None
    tested = (budget.get("pgd") or budget.get("attack")) if isinstance(budget, dict) else None
    return tested.get("name") if isinstance(tested, dict) and isinstance(tested.get("name"), str) else None


def concerns(check_budget: str | None, attacks: list[str]) -> bool:
    """Whether a stored check speaks of a run with these attacks: a check on the model concerns every run,
    one on an attack only the runs of that attack."""
    tested = tested_attack(check_budget)
    return tested is None or tested in attacks


def summarize(db: Store, run_id: int) -> tuple[list[dict], pd.DataFrame]:
    """One row per eps of a stored run (see `_summary`), and its per-example outcomes."""
    return _summary(db, run_id, db.run(run_id), None)[0], db.outcomes(run_id)


def _summary(
    db: Store, run_id: int, run: dict, checks: pd.DataFrame | None
) -> tuple[list[dict], dict[str, tuple[tuple, tuple, tuple, tuple]]]:
    """One row per eps of a stored run: accuracies in percent with n and Wilson 95% intervals; and its
    outcomes per eps as columns (idx, clean, robust, broken_by). ``checks`` (the model's) are read from
    ``db`` unless the caller, reading many runs, has them already."""
    columns = {text: db.outcome_columns(run_id, text) for text, _ in run["eps"]}
    names = [a["name"] for a in run["attacks"]]
    members = [m for a in run["attacks"] for m in (a.get("members") or {a["name"]: None})]
    white_box = [m for m in members if not black_box(m) and m not in ("none", "transfer")]
    if checks is None:
        checks = db.checks(run["sha256"], run["dataset"], run["norm"])
    flagged = checks[checks.status == "flag"]
    model_flags = [ev for ev, b in zip(flagged.evidence, flagged.budget) if concerns(b, names)]
    # of those, the checks that speak of an attack this run used rather than of the model
    attack_flags = [ev for ev, b in zip(flagged.evidence, flagged.budget) if tested_attack(b) in names]
    queries = db.queries(run_id)
    rows = []
    for text, value in run["eps"]:
        _, clean, robust, broken_by = columns[text]
        n = len(clean)
        k_clean, k_rob = sum(clean), sum(robust)
        c_lo, c_hi = wilson(k_clean, n)
        r_lo, r_hi = wilson(k_rob, n)
        broken = Counter(b for b in broken_by if b is not None)
        flags = list(run["flags"]) + black_box_flags(broken, n, white_box) + model_flags
        rows.append(
            {
                "model": run["model"],
                "checkpoint": run["checkpoint"],
                "sha256": run["sha256"],
                "arch": run["model_meta"].get("arch"),
                "activation": run["model_meta"].get("activation"),
                "dataset": run["dataset"],
                "split": run["split"],
                "norm": run["norm"],
                "eps": text,
                "eps_value": value,
                "attacks": "+".join(names) or "none",
                "n": n,
                "clean_acc": 100 * k_clean / n if n else float("nan"),
                "clean_ci_low": 100 * c_lo,
                "clean_ci_high": 100 * c_hi,
                "robust_acc": 100 * k_rob / n if n else float("nan"),
                "robust_ci_low": 100 * r_lo,
                "robust_ci_high": 100 * r_hi,
                "broken_by": json.dumps(dict(sorted(broken.items()))),
                "flags": FLAG_SEP.join(flags),
                "attack_flags": FLAG_SEP.join(attack_flags),
                "queries": json.dumps(queries, sort_keys=True),
                "budget": json.dumps(run["attacks"], sort_keys=True),
                "seed": run["seed"],
                "subset": run["subset"],
                "batch_size": run["batch_size"],
                "device": run["device"],
                "dtype": run["dtype"],
                "wall_time_s": round(run["wall_time"], 3),
                "robench_version": run["robench_version"],
                "torch_version": run["torch_version"],
                "machine": run.get("machine") or "",
                "origin": run.get("origin") or "",
                "run_id": run_id,
            }
        )
    return rows, columns


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
    """Every finished run x eps in the store, one row each, with the attack kind, the model metadata, the
    per-example outcomes ({idx: robust}) and the model's record (``Store.models``)."""
    rows, deterministic = [], {}
    with db.snapshot():  # one consistent view, even while evaluations write to the store
        records = db.models()
        every_check = db.checks()  # once for the store, each run and each model read once
        by_model = {k: c for k, c in every_check.groupby(["sha256", "dataset", "norm"], sort=False)}
        for run_id in db.runs()["run_id"].tolist():
            run = db.run(int(run_id))
            model = (run["sha256"], run["dataset"], run["norm"])
            checks = by_model.get(model, every_check.iloc[0:0])
            summary, columns = _summary(db, int(run_id), run, checks)
            meta, eps_list = shown_meta(run["model_meta"]), [text for text, _ in run["eps"]]
            if model not in deterministic:  # the "randomized" check: ok, flag, or never run
                status = checks.query("check == 'randomized'").status.tolist()
                deterministic[model] = status == ["ok"] if status else None
            for r in summary:
                idx, clean, robust, _ = columns[r["eps"]]
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
                        "robust_by_idx": dict(zip(idx, robust)),
                        "clean_by_idx": dict(zip(idx, clean)),
                        # what the store recorded about the model for its pages (None: evaluated before it did)
                        "record": records.get(run["sha256"]),
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


def fmt_ci(lo: float, hi: float) -> str:
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


def model_outcome_sets(res: pd.DataFrame) -> dict[tuple[str, str, str, str], dict[str, dict[int, int]]]:
    """``outcome_sets`` of every model at every eps of ``results(db)``, by (dataset, norm, sha256, eps):
    computed once for the leaderboard and the report, which both read them."""
    if res.empty:
        return {}
    return {key: outcome_sets(m) for key, m in res.groupby(["dataset", "norm", "sha256", "eps"], sort=True)}


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


def run_config(m: pd.DataFrame) -> dict:
    """What reproduces a leaderboard row: the data slice and every run behind it (n, eps sweep, attack specs,
    batch size), in run order."""
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
