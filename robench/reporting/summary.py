"""A group's plain-language summary: the range of robust accuracy, which checkpoints differ from ReLU
significantly (named one by one, or counted per activation when there are many), what AutoAttack does not
confirm, the largest eps measured, transfer, reliability flags, training runs and the checklist."""

from __future__ import annotations

import pandas as pd

from ..stats import compare_outcomes, holm
from ..text import md
from .groups import Group, best_known, compared, eps_value, reference, set_aside

ALPHA = 0.05  # significance level of the report's tests (Holm-adjusted where several)


LISTED = 5  # a sentence names at most this many checkpoints; more are counted and marked in the tables


def summary(g: Group, eps: str, dl: dict) -> list[str]:
    """Plain sentences: what the numbers support and what they do not."""
    lines = []
    best = {mb.label: best_known(g, mb, eps) for mb in g.members}
    known = {k: 100 * sum(v.values()) / len(v) for k, v in best.items() if v}
    aside = [mb.label for mb in set_aside(g, eps)]
    if known:
        hi, lo = max(known, key=lambda k: known[k]), min(known, key=lambda k: known[k])
        ns = sorted({len(v) for v in best.values() if v})
        if max(known.values()) == 0:
            lines.append(
                f"Every model is at 0% best known robust accuracy at {md(g.norm)} eps {md(eps)}: whatever the "
                "activation, these models have no robustness at this budget."
            )
        elif len(known) == 1:
            lines.append(
                f"At {md(g.norm)} eps {md(eps)}, best known robust accuracy is {known[hi]:.1f}% ({hi}), on n = "
                f"{ns[0]} examples" + (", the only member with AutoAttack at this eps." if aside else ".")
            )
        else:
            lines.append(
                f"At {md(g.norm)} eps {md(eps)}, best known robust accuracy runs from {known[lo]:.1f}% ({lo}) to "
                f"{known[hi]:.1f}% ({hi}), on n = {', '.join(map(str, ns))} examples"
                + (" (the members with AutoAttack at this eps)." if aside else ".")
            )
    if aside:
        lines.append(
            f"Not yet attacked with AutoAttack at this eps: {', '.join(aside)}. Their best known accuracy "
            "rests on weaker attacks only (marked †): it is left out of the sentence above, and compared "
            "with ReLU only where the ReLU model lacks AutoAttack too."
        )
    if not compared(g):
        lines.append("There is no ReLU member, so no change against ReLU is computed.")
    for metric in ("best_known", "pgd", "clean"):
        rows = dl.get(metric)
        if not rows or (metric == "best_known" and known and max(known.values()) == 0):
            continue
        sig = [(k, c) for k, c in rows.items() if c["significant"]]
        name = {"best_known": "best known robust accuracy", "pgd": "PGD robust accuracy", "clean": "clean accuracy"}[
            metric
        ]
        width = max(c["high"] - c["low"] for c in rows.values()) / 2
        acts = {mb.activation for mb in compared(g) if mb.label in rows}
        # with training-seed replicates each comparison is one checkpoint against the ReLU of its seed
        what = (
            "activations"
            if len(acts) == len(rows)
            else f"checkpoints ({len(acts)} activation{'s' * (len(acts) != 1)}, each checkpoint against the ReLU checkpoint of "
            "its training seed)"
        )
        if sig:
            head = (
                f"In {name}, {len(sig)} of {len(rows)} {what} differ from ReLU significantly "
                f"(exact McNemar, Holm-adjusted over {len(rows)} comparisons, alpha {ALPHA})"
            )
            if len(sig) <= LISTED:
                parts = ", ".join(f"{k} {c['diff']:+.1f} points [{c['low']:+.1f}, {c['high']:+.1f}]" for k, c in sig)
                lines.append(f"{head}: {parts}.")
            else:  # too many to read in a sentence: counted per activation, each bold in the change table below
                lines.append(f"{head}: {_per_activation(g, sig)} (each in bold in the change table below).")
        else:
            lines.append(
                f"In {name}, none of the {len(rows)} {what} differs from ReLU significantly (Holm-adjusted "
                f"exact McNemar, alpha {ALPHA}); the 95% intervals of the differences reach up to "
                f"±{width:.1f} points, so smaller differences are not ruled out."
            )
    pgd, aa = dl.get("pgd", {}), dl.get("autoattack", {})
    unconfirmed = [
        (k, aa[k])
        for k, c in pgd.items()
        if c["significant"] and c["diff"] > 0 and k in aa and not aa[k]["significant"]
    ]
    if unconfirmed:
        lines.append(
            "AutoAttack does not confirm the PGD lead of "
            + ", ".join(
                f"{k} ({c['diff']:+.1f} points [{c['low']:+.1f}, {c['high']:+.1f}] on n={c['n']})"
                for k, c in unconfirmed
            )
            + ": either the lead shrinks under the stronger attack or this n cannot show it."
        )
    lines += _far_eps(g, eps)
    lines += _transfer_sentence(g, eps)
    flagged = [mb.label for mb in g.members if mb.unreliable.get(eps)]
    if flagged:
        lines.append(
            f"Potentially unreliable at eps {md(eps)} (see the flags): {', '.join(flagged)}; their robust accuracy may be "
            "overstated, so a lead of theirs is not evidence of robustness until it survives stronger "
            "attacks."
        )
    lines.append(_seed_sentence(g))
    return lines


def _seed_sentence(g: Group) -> str:
    """How many training runs each activation has in the group, from the members' own metadata."""
    runs: dict[str, set] = {}
    for mb in g.members:
        runs.setdefault(mb.activation, set()).add(mb.seed if mb.seed is not None else mb.sha256)
    counts = sorted({len(v) for v in runs.values()})
    if counts == [1]:
        return (
            "Each activation was trained once, so the intervals cover the sampling of test examples only, "
            "not the variation between training runs: a difference here describes these checkpoints, not "
            "yet the activations in general."
        )
    many = "; ".join(f"{md(act)}: {len(v)}" for act, v in sorted(runs.items()))
    return (
        f"Training runs per activation ({many}): each interval above compares single checkpoints, so it "
        "covers the sampling of test examples only, not the variation between training runs."
    )


def checklist_sentence(g: Group, checks: pd.DataFrame | None) -> list[str]:
    """Which members the full gradient-masking checklist (`robench sanity`) has examined, and what it flagged:
    from the checks stored for each member (its evidence is on the model's page)."""
    from ..results.runs import CHECKLIST

    if checks is None:
        return []
    mine = checks[checks.check.isin(CHECKLIST) & (checks.dataset == g.dataset) & (checks.norm == g.norm)]
    ran = [mb for mb in g.members if mb.sha256 in set(mine.sha256)]
    text = (
        f"The full gradient-masking checklist (`robench sanity`: the attack under test at several eps and a "
        f"stronger budget, APGD-CE's step-size schedule, Square on what they leave) has examined "
        f"{'all ' if len(ran) == len(g.members) else ''}{len(ran)} of the {len(g.members)} members"
    )
    if not ran:
        return [text + "; the flags above come from the checks every evaluation runs."]
    flagged = {mb.label: sorted(set(mine[(mine.sha256 == mb.sha256) & (mine.status == "flag")].check)) for mb in ran}
    flagged = {k: v for k, v in flagged.items() if v}
    listed = "" if len(ran) == len(g.members) else f" ({', '.join(mb.label for mb in ran)})"
    if not flagged:
        return [text + listed + "; every check passed on each."]
    return [
        text
        + listed
        + "; it flags "
        + "; ".join(f"{k} on {md(', '.join(v))}" for k, v in flagged.items())
        + " (see the flags), and every other check passed."
    ]


def _transfer_sentence(g: Group, eps: str) -> list[str]:
    """Where transfer results exist: their range, and whether any model is more robust to white-box attacks
    than to transfer (a sign of masked gradients) or, as expected, less."""
    pairs = {
        mb.label: (mb.by_eps[eps]["transfer"], mb.by_eps[eps].get("best_known"))
        for mb in g.members
        if "transfer" in mb.by_eps.get(eps, {})
    }
    if not pairs:
        return []
    acc = {k: 100 * sum(t.values()) / len(t) for k, (t, _) in pairs.items()}
    lo, hi = min(acc, key=lambda k: acc[k]), max(acc, key=lambda k: acc[k])
    tests = {k: compare_outcomes(t, w) for k, (t, w) in pairs.items() if w}
    above = [k for k, c in tests.items() if c["diff"] < 0 and c["p"] < ALPHA]
    text = (
        f"Transfer attacks from the other members leave {acc[lo]:.1f}% ({lo}) to {acc[hi]:.1f}% ({hi}) robust "
        f"at eps {md(eps)}"
    )
    if above:
        return [
            text + f"; {', '.join(above)} fall lower under transfer than under white-box attacks, a sign of "
            "masked gradients."
        ]
    return [
        text + "; no model is significantly less robust to transfer than to white-box attacks, so the "
        "transfer results show no sign of gradient masking."
    ]


def _far_eps(g: Group, eps: str) -> list[str]:
    """A sentence on the largest eps measured beyond the comparison eps: which activations fall significantly
    below ReLU there (a ranking at one eps need not hold at another)."""
    later = sorted({e for mb in g.members for e in mb.by_eps if eps_value(e) > eps_value(eps)}, key=eps_value)
    if not compared(g) or not later:
        return []
    far = later[-1]
    refs = {mb.label: reference(g, mb) for mb in compared(g)}
    rows = {
        mb.label: compare_outcomes(mb.by_eps[far]["pgd"], ref.by_eps[far]["pgd"])
        for mb in compared(g)
        if (ref := refs[mb.label]) is not None and "pgd" in mb.by_eps.get(far, {}) and "pgd" in ref.by_eps.get(far, {})
    }
    if not rows:
        return []
    adj = dict(zip(rows, holm([c["p"] for c in rows.values()])))
    worse = [(k, c) for k, c in rows.items() if adj[k] < ALPHA and c["diff"] < 0]
    better = [(k, c) for k, c in rows.items() if adj[k] < ALPHA and c["diff"] > 0]
    relus = [mb.by_eps[far]["pgd"] for mb in g.members if mb.activation == "relu" and "pgd" in mb.by_eps.get(far, {})]
    base = sum(100 * sum(d.values()) / len(d) for d in relus) / len(relus)
    text = f"At the largest eps measured, {md(far)}, ReLU keeps {base:.1f}% under PGD" + (
        f" (mean of {len(relus)} training runs)" if len(relus) > 1 else ""
    )
    if not worse and not better:
        return [text + "; no activation differs from it significantly there."]
    if len(worse + better) <= LISTED:
        parts = ", ".join(f"{k} {c['diff']:+.1f} points" for k, c in worse + better)
    else:
        parts = _per_activation(g, worse + better)
    return [
        text + f"; significantly different there (Holm-adjusted): {parts}. A ranking at eps {md(eps)} "
        "does not carry over to larger budgets unless these agree."
    ]


def _per_activation(g: Group, found: list[tuple[str, dict]]) -> str:
    """Checkpoints (by label, with their change) counted per activation: 'higher: splash (3), tanh (2);
    lower: elu (1)'."""
    act = {mb.label: mb.activation for mb in g.members}
    out = []
    for word, keep in (("higher", lambda d: d > 0), ("lower", lambda d: d < 0)):
        counts: dict[str, int] = {}
        for label, c in found:
            if keep(c["diff"]):
                counts[act[label]] = counts.get(act[label], 0) + 1
        if counts:
            out.append(f"{word}: " + ", ".join(f"{md(a)} ({k})" for a, k in sorted(counts.items())))
    return "; ".join(out)
