"""Between training runs: where a group holds several training seeds per activation, each activation's
mean and spread over its seeds, and its difference from ReLU paired by seed, with a Student-t interval
over the seed-paired differences (so the interval includes the variation between training runs) and
each seed's exact McNemar test beside it (the sampling of test examples within one pair of runs)."""

from __future__ import annotations

import math

from ..stats import compare_outcomes, t_interval, wilson
from ..text import md
from .groups import best_known

SEED_METRICS = ("clean", "autoattack", "transfer", "best_known")
LABELS = {"clean": "Clean", "autoattack": "AutoAttack", "transfer": "Transfer", "best_known": "Best known"}


def _acc(d: dict[int, int]) -> float:
    return 100 * sum(d.values()) / len(d)


def by_seed(g, eps: str, metric: str) -> dict[str, dict]:
    """activation -> {seed: outcomes} for the members that have ``metric`` at ``eps``."""
    out: dict[str, dict] = {}
    for mb in g.members:
        d = best_known(g, mb, eps) if metric == "best_known" else mb.by_eps.get(eps, {}).get(metric)
        if d and mb.seed is not None:
            out.setdefault(mb.activation, {})[mb.seed] = d
    return out


def seed_rows(g, eps: str) -> list[dict]:
    """One row per activation and metric: seeds, mean, its 95% interval and sample SD over seeds; for the others, the
    seed-paired difference from ReLU (mean, t-interval, p) and the per-seed McNemar p-values."""
    rows = []
    for metric in SEED_METRICS:
        runs = by_seed(g, eps, metric)
        ref = runs.get("relu", {})
        for act, seeds in sorted(runs.items(), key=lambda kv: (kv[0] != "relu", kv[0])):
            accs = [_acc(seeds[s]) for s in sorted(seeds)]
            mean = sum(accs) / len(accs)
            sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else float("nan")
            row = {"metric": metric, "activation": act, "seeds": sorted(seeds), "mean": mean, "sd": sd}
            row["mean_low"], row["mean_high"] = _mean_interval(accs, seeds)
            paired = sorted(set(seeds) & set(ref)) if act != "relu" else []
            if paired:
                diffs = [_acc(seeds[s]) - _acc(ref[s]) for s in paired]
                row["diff"], row["low"], row["high"], row["p"] = t_interval(diffs)
                row["mcnemar"] = [compare_outcomes(seeds[s], ref[s])["p"] for s in paired]
                row["paired"] = paired
            rows.append(row)
    return rows


def _mean_interval(accs: list[float], seeds: dict) -> tuple[float, float]:
    """The 95% interval of the mean accuracy: Student-t over the seeds' accuracies (the variation between
    training runs), within [0, 100]; for a single run, Wilson's over its test examples."""
    if len(accs) > 1:
        _, low, high, _ = t_interval(accs)
        return max(0.0, low), min(100.0, high)
    (d,) = seeds.values()
    low, high = wilson(sum(d.values()), len(d))
    return 100 * low, 100 * high


def _num(v: float) -> str:
    return "-" if v != v or math.isinf(v) else f"{v:+.1f}"


def section(g, eps: str) -> list[str]:
    """The Markdown section, or nothing when no activation of the group has two training seeds."""
    rows = seed_rows(g, eps)
    if not any(len(r["seeds"]) > 1 for r in rows):
        return []
    lines = [
        "",
        f"### Between training runs at {md(g.norm)} eps {md(eps)}",
        "",
        "Per activation: accuracy in % as mean ± sample SD over its training seeds; against ReLU, the "
        "mean of the seed-paired differences in points with a Student-t 95% interval over the seeds (it "
        "includes the variation between training runs) and its p-value, then each seed's exact McNemar "
        "p-value on the shared test examples.",
        "",
        "| Metric | Activation | Seeds | Mean ± SD | Change vs ReLU [95% CI], p | Per-seed McNemar p |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = f"{r['mean']:.1f} ± {r['sd']:.1f}" if r["sd"] == r["sd"] else f"{r['mean']:.1f}"
        change = f"{r['diff']:+.1f} [{_num(r['low'])}, {_num(r['high'])}], p={r['p']:.3g}" if "diff" in r else "-"
        per = ", ".join(f"{p:.2g}" for p in r.get("mcnemar", [])) or "-"
        lines.append(
            f"| {LABELS[r['metric']]} | {md(r['activation'])} | {', '.join(map(str, r['seeds']))} | {spread} | "
            f"{change} | {per} |"
        )
    return lines
