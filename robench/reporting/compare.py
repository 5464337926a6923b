"""The activation comparison report: for every group of models that differ only in their activation (same
dataset, norm, architecture, training method and training eps), accuracies with n and 95% intervals, the
change against the ReLU member with paired intervals and exact McNemar p-values from per-example outcomes,
robust accuracy against eps, the learned activation shapes, the gradient-masking flags and a plain summary.
Each group opens with its answer (``glance``: one row per activation, its training runs pooled) and puts the
per-checkpoint numbers in a section of their own below it. Deterministic: the same store gives the same Markdown and the same PNG bytes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..stats import compare_outcomes, holm, wilson
from ..text import md
from .anomaly import section as anomaly_section
from .claims import claim_rows
from .claims import group_section as claims_on
from .claims import section as claims_section
from .glance import pooled
from .glance import section as glance_section
from .groups import (
    Group,
    Member,
    comparable,
    compared,
    comparison_eps,
    eps_value,
    groups,
    reference,
    set_aside,
)
from .leaderboard import METRICS
from .seeds import section as seed_section
from .summary import ALPHA, checklist_sentence, summary

LABELS = {
    "clean": "Clean",
    "pgd": "PGD",
    "autoattack": "AutoAttack",
    "transfer": "Transfer",
    "best_known": "Best known",
}


def _cell(d: dict | None, with_n: bool) -> str:
    if not d:
        return "-"
    k, n = sum(d.values()), len(d)
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" + (f" (n={n})" if with_n else "")


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _delta(c: dict | None) -> str:
    if c is None:
        return "-"
    text = f"{c['diff']:+.1f} [{c['low']:+.1f}, {c['high']:+.1f}], {_p(c['p'])}"
    return f"**{text}**" if c["significant"] else text


def deltas(g: Group, eps: str) -> dict[str, dict[str, dict]]:
    """metric -> member label -> paired comparison against its ReLU member (same training seed where there
    is one), Holm-adjusted across members."""
    out: dict[str, dict[str, dict]] = {}
    for metric in METRICS:
        rows = {}
        for mb in compared(g):
            ref = reference(g, mb)
            ours, base = mb.by_eps.get(eps, {}).get(metric), ref.by_eps.get(eps, {}).get(metric)
            if base and ours and (metric != "best_known" or comparable(mb, ref, eps)):
                rows[mb.label] = compare_outcomes(ours, base)
        if not rows:
            continue
        for (label, c), adj in zip(rows.items(), holm([c["p"] for c in rows.values()])):
            c["p_holm"] = adj
            c["significant"] = adj < ALPHA
        out[metric] = rows
    return out


def curve_series(g: Group) -> tuple[str, list[dict]]:
    """(metric, series) for the robust accuracy against eps figure: PGD when every member has it at two
    eps or more (one attack, one n), otherwise best known. eps 0 is clean accuracy."""
    metric = "pgd" if all(sum("pgd" in s for s in mb.by_eps.values()) >= 2 for mb in g.members) else "best_known"
    series = []
    for mb in g.members:
        pts = sorted(((eps_value(e), s[metric]) for e, s in mb.by_eps.items() if metric in s), key=lambda t: t[0])
        clean = max((s["clean"] for s in mb.by_eps.values()), key=len)
        pts = [(0.0, {i: clean[i] for i in pts[0][1] if i in clean} if pts else clean)] + pts
        acc, low, high = [], [], []
        for _, d in pts:
            k, n = sum(d.values()), len(d)
            lo, hi = wilson(k, n)
            acc.append(100 * k / n), low.append(100 * lo), high.append(100 * hi)
        series.append(
            {
                "label": mb.label,
                "activation": mb.activation,
                "eps": [p[0] for p in pts],
                "acc": acc,
                "low": low,
                "high": high,
                "ref": mb.activation == "relu",
            }
        )
    return metric, series


def shape_panels(g: Group) -> list[dict]:
    """One panel per activation: each activation instance of each of its checkpoints as a function of x,
    as the store recorded it when the model was evaluated; colour by layer, line style by training seed."""
    styles = ["-", "-.", ":", (0, (5, 1)), (0, (1, 1))]
    by_act: dict[str, list[Member]] = {}
    for mb in g.members:
        by_act.setdefault(mb.activation, []).append(mb)
    panels = []
    for act_name, members in by_act.items():
        members = sorted(members, key=lambda mb: (mb.seed is None, mb.seed if mb.seed is not None else 0, mb.model_id))
        several = len(members) > 1
        curves, missing = [], []
        for k, mb in enumerate(members):
            recorded = (mb.record or {}).get("curves")
            if recorded is None:  # evaluated before the store kept curves: the panel says so
                missing.append(mb.label)
                continue
            for j, ys in enumerate(recorded):
                if len(recorded) == 1:  # one network-wide activation: a colour per training run
                    label = f"seed {mb.seed}" if several else act_name
                    curves.append((label, ys, {"linestyle": "-", "color_index": k}))
                else:  # a colour per layer, a line style per training run
                    curves.append(
                        (
                            f"layer {j + 1}" if k == 0 else None,
                            ys,
                            {"linestyle": styles[k % len(styles)], "color_index": j},
                        )
                    )
        title = act_name if not several else f"{act_name} ({len(members)} training runs)"
        panel = {"title": title if several else members[0].label, "curves": curves}
        if missing:
            panel["note"] = "shape not recorded: evaluate the checkpoint again"
        panels.append(panel)
    return panels


def transfer_matrix(res: pd.DataFrame, g: Group, eps: str) -> pd.DataFrame:
    """Robust accuracy (%) of the group's members (columns) under examples crafted on each source (rows) at
    ``eps``; the diagonal (a model attacked with examples crafted on itself) is white-box. Per pair, the run
    with the most examples."""
    shas = {mb.sha256: mb.label for mb in g.members}
    t = res[
        (res.attacks == "transfer")
        & (res.eps == eps)
        & res.sha256.isin(list(shas))
        & (res.dataset == g.dataset)
        & (res.norm == g.norm)
    ]
    if t.empty:
        return pd.DataFrame()
    t = t.sort_values(["n", "run_id"]).groupby(["sources", "sha256"], sort=True).tail(1)
    m = t.assign(target=t.sha256.map(shas)).pivot(index="sources", columns="target", values="robust_acc")
    order = [mb.label for mb in g.members if mb.label in m.columns]
    rows = [r for r in (mb.model_id for mb in g.members) if r in m.index] + sorted(
        r for r in m.index if r not in {mb.model_id for mb in g.members}
    )
    labels = {mb.model_id: mb.label for mb in g.members}  # rows named as the columns are
    return m.loc[rows, order].rename(index=lambda r: labels.get(r, r))


def first_runs(matrix: pd.DataFrame, g: Group) -> pd.DataFrame:
    """The block of a transfer matrix among the group's first training runs (seed 0, or none recorded)
    where the group holds several training seeds: each seed's replicates are attacked from the other
    members of their own seed, so the rest of the matrix is those blocks again and empty between them."""
    later = {mb.label for mb in g.members if mb.seed}
    if not later:
        return matrix
    return matrix.loc[[r for r in matrix.index if r not in later], [c for c in matrix.columns if c not in later]]


def _per_checkpoint(g: Group, eps: str, lines: list[str]) -> list[str]:
    """The per-checkpoint numbers as a section of their own: a heading, then their subsections one level
    down."""
    n = len(g.members)
    head = [
        "",
        f"### Per checkpoint at {md(g.norm)} eps {md(eps)}",
        "",
        f"The {n} checkpoints one by one: what the table above pools, each against the ReLU checkpoint of "
        "its training seed.",
        "",
    ]
    return head + [("#" + line if line.startswith("### ") else line) for line in lines]


def report(
    res: pd.DataFrame, folder: Path, checks: pd.DataFrame | None = None, sets: dict | None = None
) -> tuple[str, list[Path], dict]:
    """The report's Markdown and figures (written into ``folder``), and its parts for the web site (``sets``:
    ``model_outcome_sets(res)`` where the caller has them):
    {"intro": lines, "claims": lines, "groups": [{"group", "eps", "pooled", "lines", "detail", "after",
    "transfer", "figures"}, ...]}: per group its pooled rows, then its Markdown in three parts, the answer
    (pooled table, forest plot, claims), the per-checkpoint section (folded on the web page) and the figures
    after it (the Markdown is the concatenation of the parts)."""
    from .plots import activation_shapes, eps_curves, heatmap

    folder = Path(folder)
    lines = [
        "# Activation comparison",
        "",
        "Written by `robench leaderboard` from the results store. Each group holds models that differ only in "
        "their activation. Accuracies are in %, with Wilson 95% intervals in brackets. Changes are against the "
        "ReLU member, in points, on the same test examples: Newcombe's paired 95% interval and the exact "
        "McNemar p-value from the per-example outcomes; **bold** marks a change significant at alpha 0.05 "
        "after Holm's adjustment for the number of activations compared. \"Best known\" is, per example, the "
        "worst case over every attack run.",
    ]
    files: list[Path] = []
    found = groups(res, sets)
    if not found:
        lines += ["", "No group of two or more models differing only in activation is in the store."]
    claim_table = claim_rows(found)
    parts = {"intro": lines, "claims": claims_section(found, claim_table), "groups": []}
    for g in found:
        eps = comparison_eps(g)
        dl = deltas(g, eps)
        lines = ["", f"## {g.md_title}", ""]
        figures: list[tuple[Path, str]] = []
        part = {"group": g, "lines": lines, "eps": eps, "figures": figures}
        parts["groups"].append(part)
        part["pooled"] = pooled(g, eps)
        glance, forest = glance_section(g, eps, folder, part["pooled"])  # the answer first: one row per activation
        lines += glance[1:] + claims_on(found, g, claim_table)
        files += forest
        figures += [(f, "Change against ReLU, per activation") for f in forest]
        answer_end = len(lines)  # then the per-checkpoint numbers, in a section of their own (folded on the web)
        lines += [f"- {s}" for s in summary(g, eps, dl) + checklist_sentence(g, checks)]
        ns = {m: {len(mb.by_eps.get(eps, {}).get(m) or {}) for mb in g.members} - {0} for m in METRICS}
        head = [f"{LABELS[m]}" + (f" (n={next(iter(ns[m]))})" if len(ns[m]) == 1 else "") for m in METRICS]
        lines += [
            "",
            f"### Accuracy at {md(g.norm)} eps {md(eps)}",
            "",
            "| Activation | Seed | Model | " + " | ".join(head) + " | Flags |",
            "|---" * (len(METRICS) + 4) + "|",
        ]
        notes: list[str] = []
        aside = {m.label for m in set_aside(g, eps)}
        for mb in g.members:
            marks = []
            for f in mb.flags.get(eps, []):
                if f not in notes:
                    notes.append(f)
                marks.append(f"[{notes.index(f) + 1}]")
            cells = [_cell(mb.by_eps.get(eps, {}).get(m), len(ns[m]) > 1) for m in METRICS]
            if mb.label in aside:
                cells[-1] += " †"
            seed = "-" if mb.seed is None else mb.seed
            lines.append(
                f"| {md(mb.activation)} | {seed} | {md(mb.model_id)} | "
                + " | ".join(cells)
                + f" | {' '.join(marks) or '-'} |"
            )
        if notes:
            lines += [""] + [f"[{i}] At eps {md(eps)}: {md(n)}  " for i, n in enumerate(notes, 1)]
        if aside:
            lines += [
                "",
                "† No AutoAttack at this eps, where other members have it: this best known accuracy rests "
                "on weaker attacks only, and is compared with ReLU only where the ReLU model lacks "
                "AutoAttack too.",
            ]
        part["transfer"] = whole = transfer_matrix(res, g, eps)
        matrix = first_runs(whole, g)
        if matrix.empty:
            lines += ["", "Transfer: no transfer results are in the store for this group yet (`robench transfer`)."]
        else:
            fig = heatmap(
                folder / f"{g.slug}-transfer.png",
                matrix.values.tolist(),
                list(matrix.index),
                list(matrix.columns),
                f"Transfer at {md(g.norm)} eps {md(eps)}: robust accuracy of the target, %",
                "robust accuracy, %",
            )
            files.append(fig)
            lines += [
                "",
                f"### Transfer at {md(g.norm)} eps {md(eps)}",
                "",
                f"![Transfer matrix]({fig.name})",
                "",
                "Rows are the surrogates the examples were crafted on, columns the models attacked; a model "
                "attacked with its own examples is white-box. The Transfer column above is the worst case "
                "over every other source. Transfer accuracy below white-box accuracy would point to masked "
                "gradients (see the flags).",
            ]
            if matrix.shape != whole.shape:
                lines[-1] += (
                    " The matrix shows the first training runs (seed 0); each later seed's models are "
                    "attacked from the other models of their own seed, in their Transfer column."
                )
        lines += seed_section(g, eps)
        lines += anomaly_section(res, g, eps)
        if dl:
            shown = [m for m in METRICS if m in dl]
            same_seed = sum(mb.activation == "relu" for mb in g.members) > 1
            lines += ["", f"### Change against ReLU at {md(g.norm)} eps {md(eps)} (points)", ""]
            lines += ["Each model against the ReLU model trained with the same seed.", ""] if same_seed else []
            lines += ["| Activation | " + " | ".join(LABELS[m] for m in shown) + " |", "|---" * (len(shown) + 1) + "|"]
            for mb in compared(g):
                lines.append(f"| {mb.label} | " + " | ".join(_delta(dl[m].get(mb.label)) for m in shown) + " |")
        detail_end = len(lines)
        metric, series = curve_series(g)
        curve = eps_curves(
            folder / f"{g.slug}-eps.png",
            series,
            f"{g.title}: {LABELS[metric]} vs eps",
            g.norm,
            f"{LABELS[metric]} robust accuracy, %",
        )
        shapes = activation_shapes(
            folder / f"{g.slug}-activations.png", shape_panels(g), f"Learned activations: {g.title}"
        )
        files += [curve, shapes]
        figures += [(curve, f"{LABELS[metric]} robust accuracy against eps"), (shapes, "Learned activations")]
        n_curve = sorted(
            {len(d) for mb in g.members for e, d in ((e, s.get(metric)) for e, s in mb.by_eps.items()) if d}
        )
        lines += [
            "",
            f"### {LABELS[metric]} robust accuracy against eps",
            "",
            f"![{LABELS[metric]} robust accuracy against eps]({curve.name})",
            "",
            f"n = {', '.join(map(str, n_curve))} per point; eps 0 is clean accuracy on the same examples; "
            "one panel per activation, each against ReLU (black, dashed); shaded bands are 95% intervals.",
            "",
            "### Learned activation shapes",
            "",
            f"![Learned activations]({shapes.name})",
            "",
            "Each activation instance of each checkpoint, drawn from its own learned parameters over "
            "[-4, 4]; ReLU dashed."
            + (
                " One panel per activation; with several training runs, the line "
                "style marks the seed (solid, dash-dot, dotted in seed order)."
                if any(mb.seed not in (None, 0) for mb in g.members)
                else ""
            ),
        ]
        part["lines"], part["detail"], part["after"] = (
            lines[:answer_end],
            _per_checkpoint(g, eps, lines[answer_end:detail_end]),
            lines[detail_end:],
        )
    text = parts["intro"] + parts["claims"]
    text += [line for part in parts["groups"] for key in ("lines", "detail", "after") for line in part[key]]
    return "\n".join(text) + "\n", files, parts
