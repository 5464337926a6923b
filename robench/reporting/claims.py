"""The papers' claims, answered from the store: each claim the study can test, the measured effect with its
95% interval, the basis of that interval, and a verdict that follows from the interval alone.

Effects against ReLU pair each activation's training runs with ReLU's by training seed: with two or more
pairs, the interval is a Student-t interval over the per-seed differences (it includes the variation
between training runs); with one pair, Newcombe's paired interval on the shared test examples (it covers
the sampling of test examples only). The shape claims relate each checkpoint's learned activation, read
from its own parameters, to its robust accuracy (Spearman's rank correlation), and compare the learned
shapes of the same activation and seed under adversarial and standard training."""

from __future__ import annotations

import math

from ..stats import compare_outcomes, t_interval
from ..text import md
from .groups import eps_value

MIN_EFFECT = 1.0  # points: a gain smaller than this is not a gain a reader would act on
SPLASH = "Tavakoli et al. 2021 (SPLASH)"
DAI = "Dai et al. 2021 (PAFs)"
NAMES = {"pssilu": "PSSiLU", "psoftplus": "PSoftplus"}
KINK = float("inf")


# ------------------------------------------------------------------------------------------- effects
def runs(g, activation: str, metric: str, eps: str | None) -> dict:
    """{training seed: per-example outcomes} of the group's ``activation`` members; ``eps`` None takes each
    member's outcomes with the most examples over every eps (clean accuracy does not depend on eps). A
    member whose metadata records no seed counts as seed 0."""
    out = {}
    for mb in g.members:
        if mb.activation != activation:
            continue
        if eps is None:
            found = [s[metric] for s in mb.by_eps.values() if s.get(metric)]
            d = max(found, key=len) if found else None
        else:
            d = mb.by_eps.get(eps, {}).get(metric)
        if d:
            out[0 if mb.seed is None else mb.seed] = d
    return out


def _acc(d: dict) -> float:
    return 100 * sum(d.values()) / len(d)


def effect(g, activation: str, reference: str, metric: str, eps: str | None) -> dict | None:
    """``activation`` minus ``reference`` in points, paired by training seed (see the module text); None
    when no seed has both."""
    a, b = runs(g, activation, metric, eps), runs(g, reference, metric, eps)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    ns = sorted({len(set(a[s]) & set(b[s])) for s in seeds})
    out = {
        "seeds": seeds,
        "n": ns,
        "a": sum(_acc(a[s]) for s in seeds) / len(seeds),
        "b": sum(_acc(b[s]) for s in seeds) / len(seeds),
    }
    if len(seeds) > 1:
        diff, low, high, p = t_interval([_acc(a[s]) - _acc(b[s]) for s in seeds])
        return {
            **out,
            "diff": diff,
            "low": low,
            "high": high,
            "p": p,
            "test": "t-test",
            "basis": f"{len(seeds)} training runs each, seed-paired t-interval",
        }
    c = compare_outcomes(a[seeds[0]], b[seeds[0]])
    return {
        **out,
        "diff": c["diff"],
        "low": c["low"],
        "high": c["high"],
        "p": c["p"],
        "test": "exact McNemar",
        "basis": "one training run each: paired interval over test examples only",
    }


def verdict(low: float, high: float, p: float = 0.0, minimum: float = MIN_EFFECT) -> str:
    """From the 95% interval of an effect in the claimed direction and its p-value: supported when the
    interval lies above 0 (and p < 0.05: Newcombe's interval and the exact McNemar test can disagree near
    the edge), not supported when it lies below 0 or rules out an effect of ``minimum`` or more, otherwise
    inconclusive."""
    if low > 0 and p < 0.05:
        return "supported"
    if high < 0 and p < 0.05:
        return "not supported (significant the other way)"
    if high < minimum:
        return f"not supported (rules out a gain of {minimum:g} point or more)"
    return "inconclusive at this n"


def _ci(e: dict) -> str:
    lo = "-inf" if math.isinf(e["low"]) else f"{e['low']:+.1f}"
    hi = "+inf" if math.isinf(e["high"]) else f"{e['high']:+.1f}"
    return f"{e['diff']:+.1f} [{lo}, {hi}]"


def _n(e: dict) -> str:
    return "n = " + ", ".join(f"{n:,}" for n in e["n"])


def flag_note(flagged: int, total: int) -> str:
    """What a verdict says beside it when checkpoints it rests on carry a reliability flag."""
    if not flagged:
        return ""
    verb = "carries" if flagged == 1 else "carry"
    return f"{flagged} of the {total} checkpoint{'s' * (total != 1)} it rests on {verb} a reliability flag"


def rests_on(g, acts: tuple[str, ...], seeds: list[int] | None, eps: str | None) -> str:
    """The flag note for a claim measured at ``eps`` on the ``acts`` members of ``g`` of these training
    ``seeds`` (None: every seed); clean accuracy (``eps`` None) rests on no attack, so it carries none."""
    if eps is None:
        return ""
    used = [
        mb
        for mb in g.members
        if mb.activation in acts and (seeds is None or (0 if mb.seed is None else mb.seed) in seeds)
    ]
    return flag_note(sum(bool(mb.unreliable.get(eps)) for mb in used), len(used))


def _row(claim: str, setting: str, e: dict | None, missing: str, g=None, acts: tuple[str, ...] = (), eps=None) -> dict:
    """One claim's row; with the group ``g``, the activations ``acts`` compared and the ``eps`` attacked at,
    its ``note`` says how many of the checkpoints it rests on carry a reliability flag."""
    if e is None:
        return {
            "claim": claim,
            "setting": setting,
            "effect": "-",
            "basis": missing,
            "verdict": "not yet measured",
            "note": "",
        }
    return {
        "claim": claim,
        "setting": setting,
        "effect": f"{_ci(e)} ({e['a']:.1f}% vs {e['b']:.1f}%)",
        "basis": f"{e['basis']}; {_n(e)}; {e['test']} p={e['p']:.3g}",
        "verdict": verdict(e["low"], e["high"], e["p"]),
        "note": rests_on(g, acts, e["seeds"], eps) if g is not None else "",
    }


def _acts(g) -> set[str]:
    return {mb.activation for mb in g.members}


def _eps_with(g, metric: str, *acts: str) -> list[str]:
    found = [{e for mb in g.members if mb.activation == a for e, s in mb.by_eps.items() if s.get(metric)} for a in acts]
    return sorted(set.intersection(*found), key=eps_value) if found else []


def _adversarial(g) -> bool:
    return g.method not in ("", "standard")


# ------------------------------------------------------------------------------------------- shapes
def member_shapes(g) -> dict[str, dict]:
    """sha256 -> the shape of each member's learned activation, as the store recorded it when the model was
    evaluated (``nn.shapes.shape_stats``; a kink as curvature KINK); members without a record are left
    out, as in the shape figure."""
    out = {}
    for mb in g.members:
        stats = (mb.record or {}).get("shape")
        if isinstance(stats, dict):
            out[mb.sha256] = {**stats, "curvature": KINK if stats.get("kink") else stats.get("curvature")}
    return out


def _spearman(xs: list[float], ys: list[float]) -> tuple[float, float]:
    from scipy.stats import spearmanr

    r = spearmanr(xs, ys)
    return float(r.statistic), float(r.pvalue)


def _corr_row(claim: str, setting: str, pairs: list[tuple[float, float]], what: str, note: str = "") -> dict:
    if len(pairs) < 4 or len({x for x, _ in pairs}) < 2 or len({y for _, y in pairs}) < 2:
        return {
            "claim": claim,
            "setting": setting,
            "effect": "-",
            "basis": f"{len(pairs)} checkpoint{'s' * (len(pairs) != 1)} with {what}: too few to correlate",
            "verdict": "not yet measured",
            "note": "",
        }
    rho, p = _spearman([x for x, _ in pairs], [y for _, y in pairs])
    v = (
        "supported"
        if rho > 0 and p < 0.05
        else "not supported (significant the other way)"
        if rho < 0 and p < 0.05
        else "inconclusive at this n"
    )
    return {
        "claim": claim,
        "setting": setting,
        "effect": f"Spearman rho {rho:+.2f}, p={p:.3g}",
        "basis": f"{len(pairs)} checkpoints ({what}); checkpoints of one activation are not independent",
        "verdict": v,
        "note": note,
    }


# ------------------------------------------------------------------------------------------- the table
def claim_rows(found: list) -> list[dict]:
    """Every testable claim over the report's groups, in the papers' order."""
    rows: list[dict] = []
    with_relu = [g for g in found if "relu" in _acts(g)]
    # SPLASH: clean accuracy, then white-box and black-box robustness
    for g in with_relu:
        if "splash" in _acts(g):
            rows.append(
                _row(
                    "SPLASH improves clean accuracy over ReLU",
                    g.md_title,
                    effect(g, "splash", "relu", "clean", None),
                    "no clean accuracy",
                )
            )
    white = "SPLASH is more robust than ReLU to white-box attacks (AutoAttack)"
    for g in (g for g in with_relu if "splash" in _acts(g)):
        eps_list = _eps_with(g, "autoattack", "splash", "relu")
        shown = 0
        for eps in eps_list:
            e = effect(g, "splash", "relu", "autoattack", eps)
            if max(e["a"], e["b"]) == 0:
                continue  # both at 0%: a budget these models have no robustness at, so nothing to compare
            rows.append(_row(white, f"{g.md_title}, attacked at eps {md(eps)}", e, "", g, ("splash", "relu"), eps))
            shown += 1
        if not shown:
            rows.append(
                _row(
                    white,
                    g.md_title,
                    None,
                    "no AutoAttack run on both"
                    if not eps_list
                    else f"AutoAttack only at eps {md(', '.join(eps_list))}, where both are at 0%",
                )
            )
    for g in (g for g in with_relu if "splash" in _acts(g)):
        for eps in _eps_with(g, "transfer", "splash", "relu"):
            rows.append(
                _row(
                    "SPLASH is more robust than ReLU to black-box (transfer) attacks",
                    f"{g.md_title}, attacked at eps {md(eps)}",
                    effect(g, "splash", "relu", "transfer", eps),
                    "",
                    g,
                    ("splash", "relu"),
                    eps,
                )
            )
    # Dai et al.: smooth PAFs under adversarial training, PSSiLU most
    for g in (g for g in with_relu if _adversarial(g)):
        for act in ("pssilu", "psoftplus"):
            if act in _acts(g):
                rows.append(
                    _row(
                        f"Under adversarial training, {NAMES[act]} gives higher robust accuracy (AutoAttack) than ReLU",
                        f"{g.md_title}, attacked at eps {md(g.train_eps)}",
                        effect(g, act, "relu", "autoattack", g.train_eps),
                        "no AutoAttack run on both",
                        g,
                        (act, "relu"),
                        g.train_eps,
                    )
                )
        if {"pssilu", "psoftplus"} <= _acts(g):
            e = effect(g, "pssilu", "psoftplus", "autoattack", g.train_eps)
            row = _row(
                "Under adversarial training, PSSiLU gives the most robust accuracy of the smooth PAFs "
                "(PSSiLU minus PSoftplus)",
                f"{g.md_title}, attacked at eps {md(g.train_eps)}",
                e,
                "no AutoAttack run on both",
                g,
                ("pssilu", "psoftplus"),
                g.train_eps,
            )
            rank = _rank(g, "pssilu", "autoattack", g.train_eps)
            if rank:
                row["setting"] += f"; PSSiLU ranks {rank[0]} of {rank[1]} activations by mean AutoAttack accuracy"
            rows.append(row)
    # Dai et al.: shapes
    adversarial = [g for g in found if _adversarial(g)]
    shapes = {id(g): member_shapes(g) for g in found}
    for g in adversarial:
        robust = {
            mb.sha256: _acc(mb.by_eps[g.train_eps]["autoattack"])
            for mb in g.members
            if mb.by_eps.get(g.train_eps, {}).get("autoattack")
        }
        ns = sorted(
            {
                len(mb.by_eps[g.train_eps]["autoattack"])
                for mb in g.members
                if mb.by_eps.get(g.train_eps, {}).get("autoattack")
            }
        )
        on = f"; AutoAttack on n = {ns[0]:,}" + (f" to {ns[-1]:,}" if len(ns) > 1 else "") if ns else ""
        st = shapes[id(g)]
        flagged = {mb.sha256 for mb in g.members if mb.unreliable.get(g.train_eps)}
        neg_on = [s for s in robust if s in st]
        smooth_on = [s for s in robust if s in st and st[s]["curvature"] != KINK]
        rows.append(
            _corr_row(
                "Positive outputs on negative inputs go with higher robust accuracy (AutoAttack)",
                f"{g.md_title}, attacked at eps {md(g.train_eps)}",
                [(st[s]["negative_output"], robust[s]) for s in neg_on],
                "mean activation output on [-4, 0)" + on,
                flag_note(len(flagged & set(neg_on)), len(neg_on)),
            )
        )
        rows.append(
            _corr_row(
                "Higher finite curvature goes with higher robust accuracy (AutoAttack)",
                f"{g.md_title}, attacked at eps {md(g.train_eps)}",
                [(st[s]["curvature"], robust[s]) for s in smooth_on],
                "largest absolute f'' of the smooth activations" + on,
                flag_note(len(flagged & set(smooth_on)), len(smooth_on)),
            )
        )
    for g in adversarial:
        for std in found:
            if std.method == "standard" and std.arch == g.arch and std.dataset == g.dataset:
                rows += _movement_rows(g, std, shapes[id(g)], shapes[id(std)])
    return rows


def _rank(g, activation: str, metric: str, eps: str) -> tuple[int, int] | None:
    means = {}
    for act in sorted(_acts(g)):
        r = runs(g, act, metric, eps)
        if r:
            means[act] = sum(_acc(d) for d in r.values()) / len(r)
    if activation not in means:
        return None
    order = sorted(means, key=lambda a: -means[a])
    return order.index(activation) + 1, len(order)


def _movement_rows(adv, std, adv_shapes: dict, std_shapes: dict) -> list[dict]:
    """Learned parametric activations under adversarial minus standard training, paired by activation and
    seed: the change of the mean negative-input output and of the (finite) curvature."""

    def by_key(g, shapes):
        return {
            (mb.activation, 0 if mb.seed is None else mb.seed): shapes[mb.sha256]
            for mb in g.members
            if mb.sha256 in shapes and shapes[mb.sha256]["learned"]
        }

    a, s = by_key(adv, adv_shapes), by_key(std, std_shapes)
    keys = sorted(set(a) & set(s))
    setting = f"{adv.md_title} vs standard training"
    claim = "Adversarially trained PAFs move toward {}"
    rows = []
    for prop, what in (
        ("negative_output", "positive outputs on negative inputs (mean output on [-4, 0))"),
        ("curvature", "higher finite curvature (largest absolute f'')"),
    ):
        diffs = [a[k][prop] - s[k][prop] for k in keys if KINK not in (a[k][prop], s[k][prop])]
        acts = sorted({k[0] for k in keys if KINK not in (a[k][prop], s[k][prop])})
        if len(diffs) < 2:
            rows.append(
                {
                    "claim": claim.format(what),
                    "setting": setting,
                    "effect": "-",
                    "basis": f"{len(diffs)} paired training runs of parametric smooth activations",
                    "verdict": "not yet measured",
                    "note": "",
                }
            )
            continue
        d, lo, hi, p = t_interval(diffs)
        rows.append(
            {
                "claim": claim.format(what),
                "setting": setting,
                "effect": f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}], p={p:.3g}",
                "basis": f"{len(diffs)} runs paired by activation and seed ({', '.join(acts)}), t-interval",
                "verdict": "supported"
                if lo > 0
                else "not supported (significant the other way)"
                if hi < 0
                else "inconclusive at this n",
                "note": "",
            }
        )
    return rows


def section(found: list, rows: list[dict] | None = None) -> list[str]:
    """The Markdown section: one row per claim and setting (``rows``: claim_rows(found), where computed)."""
    rows = rows if rows is not None else claim_rows(found)
    if not rows:
        return []
    lines = [
        "",
        "## The papers' claims",
        "",
        f"Each claim of {SPLASH} and {DAI} that these models can test. Effects are in points against "
        "ReLU (or as stated), with 95% intervals: over training seeds where each activation has several "
        "(a Student-t interval over the seed-paired differences), otherwise over test examples only. "
        "Robust accuracy is official AutoAttack (standard). The verdict follows from the interval: "
        f"**supported** when it lies above 0 (with p < 0.05); **not supported** when it lies below 0 or below "
        f"+{MIN_EFFECT:g} point (it rules out a gain worth acting on); otherwise **inconclusive at this n**. Shape claims use "
        "Spearman's rank correlation (p < 0.05) or a t-interval over paired training runs. Beside a verdict, "
        "how many of the checkpoints it rests on carry a reliability flag at that eps (see their flags): "
        "their robust accuracy may be overstated.",
        "",
        "| Claim | Setting | Measured effect [95% CI] | Basis | Verdict |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['claim']} | {r['setting']} | {r['effect']} | {r['basis']} | {_verdict_cell(r)} |")
    return lines


def _verdict_cell(r: dict) -> str:
    """The verdict in bold, and beside it how many checkpoints it rests on carry a reliability flag."""
    return f"**{r['verdict']}**" + (f"; {r['note']}" if r.get("note") else "")


def group_section(found: list, g, rows: list[dict] | None = None) -> list[str]:
    """The claims that concern group ``g`` (those measured on it), repeated where its page opens."""
    mine = [r for r in (rows if rows is not None else claim_rows(found)) if r["setting"].startswith(g.md_title)]
    if not mine:
        return []
    lines = ["", "### The papers' claims on this group", "", "| Claim | Setting | Measured effect [95% CI] | Verdict |"]
    lines.append("|---|---|---|---|")
    for r in mine:
        lines.append(f"| {r['claim']} | {r['setting']} | {r['effect']} | {_verdict_cell(r)} |")
    return lines
