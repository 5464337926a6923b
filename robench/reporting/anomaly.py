"""Where a ranking flips with eps: members that lead their ReLU under PGD at the comparison eps but fall
significantly below it at the largest eps. The section lays every white-box attack run on those models at
both eps side by side (PGD-20, longer PGD with restarts, APGD-DLR, AutoAttack, best known) and says, from
the numbers, whether the lead survives the strongest attack and how far PGD-20 overstates robustness."""

from __future__ import annotations

import json

import pandas as pd

from ..stats import compare_outcomes, holm, wilson
from ..text import md
from .groups import comparable, compared, eps_value, reference
from .summary import ALPHA


def attack_label(budget_json: str) -> str:
    """A short name for one run's attacks: PGD-20, PGD-100 x 5 restarts, APGD-DLR, AutoAttack ..."""
    parts = []
    for a in json.loads(budget_json):
        name = a["name"]
        if name == "pgd":
            loss = "" if a.get("loss", "ce") == "ce" else f" ({a['loss']})"
            parts.append(
                f"PGD-{a.get('steps')}" + (f" x {a['restarts']} restarts" if a.get("restarts", 1) > 1 else "") + loss
            )
        elif name.startswith("autoattack"):
            parts.append("AutoAttack" + ("" if a.get("version", "standard") == "standard" else f" ({a['version']})"))
        else:
            parts.append(name.upper() if name.startswith("apgd") else name)
    return " + ".join(parts)


def flipped(g, eps: str) -> tuple[str, list] | None:
    """(far eps, members) where each member's PGD accuracy is significantly above its ReLU's at ``eps`` and
    significantly below at the largest eps measured (Holm-adjusted over the members at each eps)."""
    later = sorted({e for mb in g.members for e in mb.by_eps if eps_value(e) > eps_value(eps)}, key=eps_value)
    if not later:
        return None
    far = later[-1]

    def significant(at: str, sign: int) -> set[str]:
        rows = {
            mb.sha256: compare_outcomes(mb.by_eps[at]["pgd"], reference(g, mb).by_eps[at]["pgd"])
            for mb in compared(g)
            if "pgd" in mb.by_eps.get(at, {}) and "pgd" in reference(g, mb).by_eps.get(at, {})
        }
        adj = holm([c["p"] for c in rows.values()])
        return {k for (k, c), p in zip(rows.items(), adj) if p < ALPHA and sign * c["diff"] > 0}

    both = significant(eps, +1) & significant(far, -1)
    members = [mb for mb in compared(g) if mb.sha256 in both]
    return (far, members) if members else None


def _acc(d: dict) -> str:
    k, n = sum(d.values()), len(d)
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def section(res: pd.DataFrame, g, eps: str) -> list[str]:
    """The Markdown section, or nothing when no member's standing against ReLU flips between the eps."""
    found = flipped(g, eps)
    if not found:
        return []
    far, members = found
    refs = []
    for mb in members:
        r = reference(g, mb)
        if r not in refs:
            refs.append(r)
    shown = refs + members
    attacked = res[
        res.sha256.isin([mb.sha256 for mb in shown])
        & res.eps.isin([eps, far])
        & ~res.kind.isin(["clean", "transfer"])
        & (res.attacks != "transfer")
    ]
    labels = sorted({attack_label(b) for b in attacked.budget})
    lines = [
        "",
        f"### Does the lead at eps {md(eps)} survive stronger attacks? (eps {md(eps)} and {md(far)})",
        "",
        f"Under PGD, {', '.join(mb.label for mb in members)} {'lead' if len(members) > 1 else 'leads'} ReLU at "
        f"eps {md(eps)} but {'fall' if len(members) > 1 else 'falls'} significantly below it at eps {md(far)}. Every white-box attack run on these models at both budgets, robust accuracy in % "
        "[95% interval] (n); best known is the per-example worst case over all of them (transfer included):",
        "",
        "| Model | eps | " + " | ".join(labels) + " | Best known |",
        "|---" * (len(labels) + 3) + "|",
    ]
    for mb in shown:
        for e in (eps, far):
            runs = attacked[(attacked.sha256 == mb.sha256) & (attacked.eps == e)]
            cells = []
            for label in labels:
                r = runs[runs.budget.map(attack_label) == label].sort_values(["n", "run_id"])
                cells.append(f"{_acc(r.iloc[-1]['robust_by_idx'])} ({r.iloc[-1]['n']:,})" if len(r) else "-")
            best = mb.by_eps.get(e, {}).get("best_known")
            cells.append(f"{_acc(best)} ({len(best):,})" if best else "-")
            lines.append(f"| {mb.label} | {e} | " + " | ".join(cells) + " |")
    covered = {sha: c for sha, runs in attacked[attacked.eps == far].groupby("sha256") if (c := _covered(runs))}
    lines += [""] + [f"- {s}" for s in _findings(g, members, eps, far, covered)]
    return lines


def _covered(runs: pd.DataFrame) -> set | None:
    """The examples every attack other than the PGD sweep (the PGD run with the most examples) covered in
    ``runs`` (one model's at one eps); None when the sweep is all there is."""
    pgd = runs[runs.kind == "pgd"].sort_values(["n", "run_id"])
    sweep = attack_label(pgd.iloc[-1]["budget"]) if len(pgd) else None
    others = runs[runs.budget.map(attack_label) != sweep]
    return set.intersection(*(set(d) for d in others.robust_by_idx)) if len(others) else None


def _findings(g, members: list, eps: str, far: str, covered: dict) -> list[str]:
    """Per member: whether its lead over ReLU holds in best known accuracy at ``eps``, and how much the PGD
    sweep overstates robustness at ``far`` compared with the worst case, for it and for its ReLU: measured
    where both have had another attack than the sweep at ``far``, on the examples all of them cover
    (``covered``, by sha256), so that a sweep over more examples than the others does not dilute it."""
    out = []
    for mb in members:
        ref = reference(g, mb)
        a, b = mb.by_eps[eps].get("best_known"), ref.by_eps[eps].get("best_known")
        if a and b and comparable(mb, ref, eps):
            c = compare_outcomes(a, b)
            holds = "holds" if c["low"] > 0 else "does not hold" if c["high"] < 0 else "is not significant"
            out.append(
                f"{mb.label}: at eps {md(eps)} its lead over ReLU {holds} under the strongest attacks: best known "
                f"{c['diff']:+.1f} points [{c['low']:+.1f}, {c['high']:+.1f}] (exact McNemar p={c['p']:.3g}, "
                f"n={c['n']:,})."
            )
        if not {mb.sha256, ref.sha256} <= covered.keys():
            out.append(
                f"{mb.label}: at eps {md(far)} only the PGD sweep has run on it or on its ReLU so far, so how "
                "much the sweep overstates their robustness there is not yet measured."
            )
            continue
        gaps = []
        for m in (mb, ref):
            pgd, best = m.by_eps[far].get("pgd"), m.by_eps[far].get("best_known")
            if pgd and best:
                common = set(pgd) & set(best) & covered[m.sha256]
                if common:
                    gap = 100 * (sum(pgd[i] for i in common) - sum(best[i] for i in common)) / len(common)
                    gaps.append(f"{m.label} by {gap:.1f} points")
        if gaps:
            a, b = mb.by_eps[far].get("best_known"), ref.by_eps[far].get("best_known")
            c = compare_outcomes(a, b) if a and b and comparable(mb, ref, far) else None
            tail = (
                f"; in best known accuracy it is {c['diff']:+.1f} points [{c['low']:+.1f}, {c['high']:+.1f}] "
                f"against ReLU (n={c['n']:,})"
                if c
                else ""
            )
            out.append(
                f"{mb.label}: at eps {md(far)}, the PGD sweep overstates robust accuracy compared with the worst "
                f"case over all attacks: {', '.join(gaps)}{tail}."
            )
    return out
