"""A group's answer at a glance: one row per activation, its training runs pooled, and a forest plot of each
activation's change against ReLU. The numbers are ``seeds.seed_rows``' (mean over seeds; against ReLU, the
mean of the seed-paired differences with a Student-t interval over the seeds); where an activation has one
training run paired with ReLU's, the interval and p are that pair's, from the per-example outcomes
(Newcombe's interval, exact McNemar). The per-checkpoint tables follow below it in the report."""

from __future__ import annotations

import math
from pathlib import Path

from ..stats import compare_outcomes
from ..text import md
from .claims import rests_on, verdict
from .seeds import LABELS, by_seed, seed_rows

FOREST_METRICS = ("clean", "autoattack", "transfer")  # the panels of the forest plot
VERDICT_METRIC = ("autoattack", "best_known")
TABLE_HEAD = "| Activation | Seeds | "  # how the pooled table starts (the web page draws it in HTML instead)  # the robust accuracy a verdict rests on, first that is measured


def pooled(g, eps: str) -> list[dict]:
    """One row per activation (ReLU first): its training seeds and, per metric, the mean accuracy over them
    and, against ReLU, the change in points with its 95% interval and p (absent for ReLU or where no seed
    pairs with ReLU's)."""
    rows = seed_rows(g, eps)
    out: dict[str, dict] = {}
    for r in rows:
        row = out.setdefault(r["activation"], {"activation": r["activation"], "seeds": set(), "metrics": {}})
        row["seeds"] |= set(r["seeds"])
        cell = {"mean": r["mean"], "mean_low": r["mean_low"], "mean_high": r["mean_high"], "seeds": len(r["seeds"])}
        if "diff" in r:
            cell.update(diff=r["diff"], low=r["low"], high=r["high"], p=r["p"], pairs=len(r["paired"]))
            if len(r["paired"]) == 1:  # one pair of training runs: the interval over its test examples
                seed = r["paired"][0]
                runs = by_seed(g, eps, r["metric"])
                c = compare_outcomes(runs[r["activation"]][seed], runs["relu"][seed])
                cell.update(diff=c["diff"], low=c["low"], high=c["high"], p=c["p"])
        row["metrics"][r["metric"]] = cell
    relu_seeds = out["relu"]["seeds"] if "relu" in out else set()
    for row in out.values():
        act = row["activation"]
        row["seeds"] = sorted(row["seeds"])
        # the checkpoints its comparison with ReLU rests on: its own and ReLU's, of the seeds both have
        row["note"] = rests_on(g, (act, "relu"), sorted(set(row["seeds"]) & relu_seeds), eps) if act != "relu" else ""
        row["verdict"] = _verdict(row)
    return list(out.values())


def _verdict(row: dict) -> str:
    """Whether the activation is more robust than ReLU, from the first robust metric measured against ReLU
    (``row["answer"]``, ``row["answered_by"]``), with the reliability flags its checkpoints carry beside it."""
    row["answer"], row["answered_by"] = "", ""
    if row["activation"] == "relu":
        return "the reference"
    metric = next((m for m in VERDICT_METRIC if "diff" in row["metrics"].get(m, {})), None)
    if metric is None:
        return "not compared with ReLU"
    c = row["metrics"][metric]
    row["answer"], row["answered_by"] = verdict(c["low"], c["high"], c["p"]), LABELS[metric]
    text = f"more robust than ReLU ({LABELS[metric]}): {row['answer']}"
    return text + (f"; {row['note']}" if row["note"] else "")


def change(c: dict) -> str:
    """A pooled cell's change against ReLU as the report and the web pages write it: '+2.0 [+1.3, +2.8],
    p=0.0079'."""
    lo = "-inf" if math.isinf(c["low"]) else f"{c['low']:+.1f}"
    hi = "+inf" if math.isinf(c["high"]) else f"{c['high']:+.1f}"
    return f"{c['diff']:+.1f} [{lo}, {hi}], p={c['p']:.2g}"


def _cell(c: dict | None) -> str:
    if not c:
        return "-"
    text = f"{c['mean']:.1f} [{c['mean_low']:.1f}, {c['mean_high']:.1f}]"
    if "diff" in c:
        text += f" ({'**' + change(c) + '**' if c['p'] < 0.05 else change(c)})"
    return text


def section(g, eps: str, folder: Path, rows: list[dict] | None = None) -> tuple[list[str], list[Path]]:
    """The Markdown section that opens a group, and its forest plot (none without a ReLU to compare with);
    ``rows``: ``pooled(g, eps)`` where the caller has them."""
    rows = pooled(g, eps) if rows is None else rows
    if not rows:
        return [], []
    metrics = [m for m in LABELS if any(m in r["metrics"] for r in rows)]
    lines = [
        f"### Activations at a glance, {md(g.norm)} eps {md(eps)}",
        "",
        "Per activation, its training runs pooled: accuracy in % as the mean over its seeds with its 95% "
        "interval (Student-t over the seeds; for a single run, Wilson over its test examples), then its "
        "change against ReLU in points with its 95% interval and p (over the seed-paired differences; for "
        "a single pair of runs, over their test examples); **bold** where p < 0.05. The "
        "verdict says how many of the checkpoints it rests on carry a reliability flag. The per-checkpoint "
        "numbers follow below.",
        "",
        TABLE_HEAD + " | ".join(LABELS[m] for m in metrics) + " | Verdict |",
        "|---" * (len(metrics) + 3) + "|",
    ]
    for r in rows:
        cells = " | ".join(_cell(r["metrics"].get(m)) for m in metrics)
        lines.append(f"| {md(r['activation'])} | {len(r['seeds'])} | {cells} | {md(r['verdict'])} |")
    figures = []
    panels = [
        {
            "title": LABELS[m],
            "rows": [
                (r["activation"], c["diff"], c["low"], c["high"])
                for r in rows
                if "diff" in (c := r["metrics"].get(m, {}))
            ],
        }
        for m in FOREST_METRICS
    ]
    panels = [p for p in panels if p["rows"]]
    if panels:
        from .plots import forest

        fig = forest(folder / f"{g.slug}-forest.png", panels, f"Change against ReLU at {g.norm} eps {eps}: {g.title}")
        figures.append(fig)
        lines += [
            "",
            f"![Change against ReLU, per activation]({fig.name})",
            "",
            "Each activation's change against ReLU with its 95% interval, as in the table: blue where the "
            "interval lies above zero, red below, grey where it holds zero.",
        ]
    return [""] + lines, figures
