"""The cheap gradient-masking checks that run after every evaluation and transfer (the run lifecycle's
last step), each stored per model with its evidence (``Store.set_checks``), status "ok" or "flag": the
model's outputs (probabilities, randomness, zero input gradients) and what the store already holds
(transfer or black-box attacks beating white-box ones, robust accuracy rising with eps). "Beyond noise" is
an exact test at ``ALPHA`` on the per-example outcomes (McNemar for paired outcomes, binomial against a
tolerated rate otherwise), so a single lucky example never raises a flag. ``sanity`` adds the checks that
need attacks of their own.
"""

from __future__ import annotations

import json
import math

import torch

from ..attacks.descent import attack_loss
from ..attacks.registry import black_box
from ..norms import get_norm
from ..results.runs import ALPHA
from ..stats import binom_above, mcnemar_exact
from ..store import Store
from .core import Slice, attack_mode

ZERO_GRAD_SHARE = 0.05  # more than 5% of examples with an all-zero input gradient is "many"
TOLERANCE = 1.0  # points: a stronger budget must lower robust accuracy by more than this to flag


def finding(name: str, flag: bool, evidence: str, eps: str = "", **budget) -> dict:
    """One stored check: its name, the eps it concerns, ok or flag, the evidence in words, the budget used."""
    return {"check": name, "eps": eps, "status": "flag" if flag else "ok", "evidence": evidence, "budget": budget}


def pct(k: int, n: int) -> str:
    return f"{100 * k / n:.1f}%" if n else "-"


# ------------------------------------------------------------------------------------------- the model
def probe(model, x: torch.Tensor, y: torch.Tensor, name: str) -> list[dict]:
    """Checks on the model's outputs for a batch: probabilities instead of logits, randomness at inference,
    all-zero input gradients (of the logit margin, which does not saturate as cross-entropy does)."""
    out = []
    with torch.no_grad():
        z1, z2 = model(x), model(x)
    probs = bool(z1.min() >= 0 and z1.max() <= 1 and torch.allclose(z1.sum(1), torch.ones_like(z1[:, 0]), atol=1e-4))
    out.append(
        finding(
            "probabilities",
            probs,
            f"{name} returns probabilities (outputs in [0, 1] summing to 1); the softmax flattens the "
            "gradients attacks follow."
            if probs
            else f"{name} returns logits.",
        )
    )
    spread = float((z1 - z2).abs().max())
    scale = 1e-4 * (1 + float(z1.abs().max()))
    rand = not math.isfinite(spread) or spread > scale
    out.append(
        finding(
            "randomized",
            rand,
            f"{name} is randomized at inference: two passes over the same {len(x)} inputs differ by up "
            f"to {spread:.3g}; attack it with EOT or report its randomness."
            if rand
            else f"{name} is deterministic: two passes over {len(x)} inputs agree.",
        )
    )
    _, g = margin_grad(model, x, y)
    dead = int(((g.flatten(1).abs().amax(1) == 0) | ~torch.isfinite(g.flatten(1)).all(1)).sum())
    many = dead / len(x) > ZERO_GRAD_SHARE
    out.append(
        finding(
            "zero-gradients",
            many,
            f"{name} has an all-zero (or non-finite) input gradient on {dead} of {len(x)} examples "
            f"({pct(dead, len(x))}): gradient attacks cannot move them (shattered gradients)."
            if many
            else f"{dead} of {len(x)} examples have an all-zero input gradient.",
        )
    )
    return out


def margin_grad(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logit margin (best other class over the true one) and its input gradient (zeros where the graph
    does not reach the input)."""
    xg = x.clone().requires_grad_(True)
    m = attack_loss(model(xg), y, "margin")
    g = torch.autograd.grad(m.sum(), xg, allow_unused=True)[0]
    return m.detach(), torch.zeros_like(x) if g is None else g


def ascent(model, x: torch.Tensor, y: torch.Tensor, norm: str, name: str, size: float = 1e-3) -> dict:
    """A small step along the input gradient must raise the logit margin (to first order it rises by
    ``size`` times the gradient's dual norm). Where it falls or stays put for most examples, the gradient an
    attack follows does not describe the model (a straight-through decoy, obfuscated gradients)."""
    m, g = margin_grad(model, x, y)
    with torch.no_grad():
        m2 = attack_loss(model((x + get_norm(norm).step(g, size)).clamp(0, 1)), y, "margin")
    n, rose = len(x), int((m2 > m).sum())
    p = binom_above(n - rose, n, 0.5)  # fewer than half rising, beyond noise
    flag = rose < n / 2 and p < ALPHA
    return finding(
        "gradient-ascent",
        flag,
        f"A step of {size:g} ({norm}) along {name}'s input gradient raised its logit margin on {rose} "
        f"of {n} examples (p={p:.2g})"
        + (
            "; the gradients attacks follow do not describe the model (masked or obfuscated gradients)."
            if flag
            else "."
        ),
    )


def after_run(db: Store, model, sl: Slice, t, norm: str, dev) -> None:
    """The cheap checks after an evaluation or transfer of ``t``: its outputs on the first examples, and the
    cross-run checks over what the store holds for it."""
    x, y = sl.data.batch(sl.idx[: min(len(sl.idx), 64)])
    with attack_mode(model):
        checks = probe(model, x.to(dev), y.to(dev), t.name)
    db.set_checks(t.sha256, sl.info.name, norm, checks)
    cross_checks(db, t.sha256, sl.info.name, norm)


# ------------------------------------------------------------------------------------------ the store
def _robust_sets(db: Store, sha256: str, dataset: str, norm: str):
    """Per eps: the white-box worst case ({idx: robust}), the black-box/transfer worst case (with the sources
    named), and per attack budget the worst case (for the eps-monotone check)."""
    runs = db.runs()
    runs = runs[(runs.sha256 == sha256) & (runs.dataset == dataset) & (runs.norm == norm)]
    white: dict[str, dict[int, int]] = {}
    black: dict[str, dict[int, int]] = {}
    names: dict[str, set[str]] = {}
    by_budget: dict[str, dict[str, tuple[float, dict[int, int]]]] = {}
    for run_id, attacks_json in zip(runs.run_id, runs.attacks):
        attacks = json.loads(attacks_json)
        members = [m for a in attacks for m in (a.get("members") or {a["name"]: None})]
        if not members:
            continue
        transfer = [a for a in attacks if a["name"] == "transfer"]
        if transfer and sha256 in [s["sha256"] for s in transfer[0]["sources"]]:
            continue  # the diagonal of a transfer matrix is a white-box attack with a transfer budget
        only_black = all(black_box(m) or m == "transfer" for m in members)
        oc = db.outcomes(int(run_id))
        for text, value in json.loads(runs.loc[runs.run_id == run_id, "eps"].iloc[0]):
            o = oc[oc.eps == text]
            if only_black:
                rob = dict(zip(o.idx.tolist(), o.robust.tolist()))
                _and(black.setdefault(text, {}), rob)
                names.setdefault(text, set()).update(
                    [f"transfer:{s['model']}" for s in transfer[0]["sources"]] if transfer else members
                )
            else:  # an example a black-box member of the cascade broke was left robust by the white-box ones
                rob = {
                    i: int(r or (isinstance(b, str) and black_box(b)))
                    for i, r, b in zip(o.idx.tolist(), o.robust.tolist(), o.broken_by.tolist())
                }
                _and(white.setdefault(text, {}), rob)
            key = attacks_json
            cur = by_budget.setdefault(key, {}).setdefault(text, (value, {}))
            _and(cur[1], dict(zip(o.idx.tolist(), o.robust.tolist())))
    return white, black, names, by_budget


def _who(names: set[str]) -> str:
    """ "transfer from a, b" / "transfer from 11 models" and the black-box attacks, in words."""
    sources = sorted(n.split(":", 1)[1] for n in names if n.startswith("transfer:"))
    others = sorted(n for n in names if not n.startswith("transfer:"))
    parts = (
        [f"transfer from {', '.join(sources) if len(sources) <= 3 else f'{len(sources)} models'}"] if sources else []
    ) + others
    return " and ".join(parts)


def _and(acc: dict[int, int], new: dict[int, int]) -> None:
    for i, r in new.items():
        acc[i] = int(acc.get(i, 1) and r)


def cross_checks(
    db: Store, sha256: str, dataset: str, norm: str, extra_white: dict[str, dict[int, int]] | None = None
) -> list[dict]:
    """Transfer or black-box attacks beating white-box ones beyond noise (exact McNemar on the examples both
    attacked), and robust accuracy rising with eps under one attack budget; stored, replacing earlier ones.
    ``extra_white`` adds white-box outcomes not in the store ({eps: {idx: robust}}, from the checklist)."""
    white, black, names, by_budget = _robust_sets(db, sha256, dataset, norm)
    for eps, rob in (extra_white or {}).items():
        _and(white.setdefault(eps, {}), rob)
    checks = []
    for eps in sorted(set(white) & set(black)):
        w, b = white[eps], black[eps]
        common = sorted(set(w) & set(b))
        only_w = sum(1 for i in common if w[i] and not b[i])  # black-box broke, white-box did not
        only_b = sum(1 for i in common if b[i] and not w[i])
        n = len(common)
        p = mcnemar_exact(only_w, only_b)
        rw, rb = sum(w[i] for i in common), sum(b[i] for i in common)
        flag = only_w > only_b and p < ALPHA
        who = _who(names[eps])
        checks.append(
            finding(
                "transfer",
                flag,
                f"At eps {eps}, {who} broke {only_w} of {n} examples the white-box attacks left robust "
                f"(and missed {only_b} they broke): black-box robust accuracy {pct(rb, n)} against "
                f"white-box {pct(rw, n)}, McNemar p={p:.2g}"
                + ("; the white-box gradients are likely masked." if flag else "."),
                eps,
            )
        )
    for budget, per_eps in by_budget.items():
        ordered = sorted(per_eps.items(), key=lambda kv: kv[1][0])
        for (e1, (_, r1)), (e2, (_, r2)) in zip(ordered, ordered[1:]):
            common = sorted(set(r1) & set(r2))
            up = sum(1 for i in common if r2[i] and not r1[i])
            down = sum(1 for i in common if r1[i] and not r2[i])
            p = mcnemar_exact(up, down)
            if up > down and p < ALPHA:
                checks.append(
                    finding(
                        "eps-monotone",
                        True,
                        f"Robust accuracy rises from eps {e1} to eps {e2} under the same attack "
                        f"({pct(sum(r1[i] for i in common), len(common))} to "
                        f"{pct(sum(r2[i] for i in common), len(common))}, McNemar p={p:.2g}): the "
                        "attack fails where a smaller perturbation succeeded.",
                        e2,
                    )
                )
    db.clear_checks(sha256, dataset, norm, ["transfer"] + (["eps-monotone"] if by_budget else []))
    db.set_checks(sha256, dataset, norm, checks)
    return checks
