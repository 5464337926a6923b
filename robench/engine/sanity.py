"""Gradient-masking diagnostics: the checks of "On Evaluating Adversarial Robustness" (Carlini et al. 2019)
and AutoAttack's own, each stored per model with its evidence (``Store.set_checks``), status "ok" or "flag".

Cheap checks run after every evaluation and transfer: the model's outputs (probabilities, randomness, zero
input gradients) and what the store already holds (transfer or black-box attacks beating white-box ones,
robust accuracy rising with eps). ``checklist`` adds the checks that need their own attacks: an eps sweep
attacked eps by eps, a very large eps, a stronger PGD budget, and Square on what white-box attacks left.
"Beyond noise" is an exact test at ``ALPHA`` on the per-example outcomes (McNemar for paired outcomes,
binomial against a tolerated rate otherwise), so a single lucky example never raises a flag.
"""
from __future__ import annotations

import json
import dataclasses
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..attacks.autoattack import AutoAttack
from ..attacks.pgd import PGD
from ..attacks.registry import black_box
from ..config import Eps, EvalConfig, parse_norm
from ..norms import get_norm
from ..stats import binom_above, mcnemar_exact, wilson
from ..store import Store
from .core import ALPHA, SQUARE_MARGIN, Slice, attack_batch, attack_mode

ZERO_GRAD_SHARE = 0.05  # more than 5% of examples with an all-zero input gradient is "many"
TOLERANCE = 1.0  # points: a stronger budget must lower robust accuracy by more than this to flag


def _check(name: str, flag: bool, evidence: str, eps: str = "", **budget) -> dict:
    return {"check": name, "eps": eps, "status": "flag" if flag else "ok", "evidence": evidence, "budget": budget}


def _pct(k: int, n: int) -> str:
    return f"{100 * k / n:.1f}%" if n else "-"


# ------------------------------------------------------------------------------------------- the model
def probe(model, x: torch.Tensor, y: torch.Tensor, name: str) -> list[dict]:
    """Checks on the model's outputs for a batch: probabilities instead of logits, randomness at inference,
    all-zero input gradients (of the logit margin, which does not saturate as cross-entropy does)."""
    out = []
    with torch.no_grad():
        z1, z2 = model(x), model(x)
    probs = bool(z1.min() >= 0 and z1.max() <= 1 and torch.allclose(z1.sum(1), torch.ones_like(z1[:, 0]), atol=1e-4))
    out.append(_check("probabilities", probs,
                      f"{name} returns probabilities (outputs in [0, 1] summing to 1); the softmax flattens the "
                      "gradients attacks follow." if probs else f"{name} returns logits."))
    spread = float((z1 - z2).abs().max())
    scale = 1e-4 * (1 + float(z1.abs().max()))
    rand = not math.isfinite(spread) or spread > scale
    out.append(_check("randomized", rand,
                      f"{name} is randomized at inference: two passes over the same {len(x)} inputs differ by up "
                      f"to {spread:.3g}; attack it with EOT or report its randomness." if rand else
                      f"{name} is deterministic: two passes over {len(x)} inputs agree."))
    xg = x.clone().requires_grad_(True)
    z = model(xg)
    zy = z.gather(1, y[:, None])[:, 0]
    other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
    g = torch.autograd.grad((other - zy).sum(), xg, allow_unused=True)[0]
    if g is None:
        g = torch.zeros_like(x)
    dead = int(((g.flatten(1).abs().amax(1) == 0) | ~torch.isfinite(g.flatten(1)).all(1)).sum())
    many = dead / len(x) > ZERO_GRAD_SHARE
    out.append(_check("zero-gradients", many,
                      f"{name} has an all-zero (or non-finite) input gradient on {dead} of {len(x)} examples "
                      f"({_pct(dead, len(x))}): gradient attacks cannot move them (shattered gradients)." if many
                      else f"{dead} of {len(x)} examples have an all-zero input gradient."))
    return out


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
        for (text, value) in json.loads(runs.loc[runs.run_id == run_id, "eps"].iloc[0]):
            o = oc[oc.eps == text]
            if only_black:
                rob = dict(zip(o.idx.tolist(), o.robust.tolist()))
                _and(black.setdefault(text, {}), rob)
                names.setdefault(text, set()).update(
                    [f"transfer:{s['model']}" for s in transfer[0]["sources"]] if transfer else members)
            else:  # an example a black-box member of the cascade broke was left robust by the white-box ones
                rob = {i: int(r or (isinstance(b, str) and black_box(b))) for i, r, b in
                       zip(o.idx.tolist(), o.robust.tolist(), o.broken_by.tolist())}
                _and(white.setdefault(text, {}), rob)
            key = attacks_json
            cur = by_budget.setdefault(key, {}).setdefault(text, (value, {}))
            _and(cur[1], dict(zip(o.idx.tolist(), o.robust.tolist())))
    return white, black, names, by_budget


def _who(names: set[str]) -> str:
    """"transfer from a, b" / "transfer from 11 models" and the black-box attacks, in words."""
    sources = sorted(n.split(":", 1)[1] for n in names if n.startswith("transfer:"))
    others = sorted(n for n in names if not n.startswith("transfer:"))
    parts = ([f"transfer from {', '.join(sources) if len(sources) <= 3 else f'{len(sources)} models'}"]
             if sources else []) + others
    return " and ".join(parts)


def _and(acc: dict[int, int], new: dict[int, int]) -> None:
    for i, r in new.items():
        acc[i] = int(acc.get(i, 1) and r)


def cross_checks(db: Store, sha256: str, dataset: str, norm: str,
                 extra_white: dict[str, dict[int, int]] | None = None) -> list[dict]:
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
        checks.append(_check("transfer", flag,
                             f"At eps {eps}, {who} broke {only_w} of {n} examples the white-box attacks left robust "
                             f"(and missed {only_b} they broke): black-box robust accuracy {_pct(rb, n)} against "
                             f"white-box {_pct(rw, n)}, McNemar p={p:.2g}"
                             + ("; the white-box gradients are likely masked." if flag else "."), eps))
    for budget, per_eps in by_budget.items():
        ordered = sorted(per_eps.items(), key=lambda kv: kv[1][0])
        for (e1, (_, r1)), (e2, (_, r2)) in zip(ordered, ordered[1:]):
            common = sorted(set(r1) & set(r2))
            up = sum(1 for i in common if r2[i] and not r1[i])
            down = sum(1 for i in common if r1[i] and not r2[i])
            p = mcnemar_exact(up, down)
            if up > down and p < ALPHA:
                checks.append(_check("eps-monotone", True,
                                     f"Robust accuracy rises from eps {e1} to eps {e2} under the same attack "
                                     f"({_pct(sum(r1[i] for i in common), len(common))} to "
                                     f"{_pct(sum(r2[i] for i in common), len(common))}, McNemar p={p:.2g}): the "
                                     "attack fails where a smaller perturbation succeeded.", e2))
    db.clear_checks(sha256, dataset, norm, ["transfer"] + (["eps-monotone"] if by_budget else []))
    db.set_checks(sha256, dataset, norm, checks)
    return checks


# -------------------------------------------------------------------------------------- the checklist
def large_eps(norm: str, dims: int) -> Eps:
    """A budget that covers the whole [0, 1] box around mid-grey: Linf 0.5, L2 0.5 * sqrt(dims)."""
    value = 0.5 * get_norm(norm).diameter(dims)
    return Eps(value, f"{value:g}")


def checklist(model, sl: Slice, t, norm: str, dev, bs: int, seed: int, pgd: dict | None = None,
              strong_steps: int | None = None, strong_restarts: int = 3, square_queries: int = 1000,
              progress: Callable[[dict], None] | None = None) -> tuple[list[dict], dict]:
    """Every check on one model and slice (``sl.eps[-1]`` is the budget under test), and the white-box
    outcomes at that eps for cross_checks ({eps: {idx: robust}}): the probes; PGD at
    eps/4, eps/2, eps, 2 eps and the large eps, each attacked on its own; PGD with ``strong_steps`` (5x) and
    ``strong_restarts``; PGD with the other loss (DLR or cross-entropy); Square with ``square_queries`` on the
    examples every PGD left robust."""
    notify = progress or (lambda e: None)
    eps = sl.eps[-1]
    base = PGD(**{k: v for k, v in (pgd or {}).items() if v is not None})
    strong = PGD(**{**{k: v for k, v in (pgd or {}).items() if v is not None},
                    "steps": strong_steps or 5 * base.steps, "restarts": max(strong_restarts, base.restarts)})
    square = AutoAttack("standard", members=("square",), batch_size=bs, queries=square_queries)
    apgd = AutoAttack("standard", members=("apgd-ce", "apgd-t"), batch_size=bs)
    big = large_eps(norm, math.prod(sl.info.shape))
    grid = sorted({Eps(eps.value * f, f"{eps.value * f:.6g}") for f in (0.25, 0.5, 2.0) if eps.value * f < big.value}
                  | {eps, big}, key=lambda e: e.value)
    idx = sl.idx
    x_all, y_all = sl.data.batch(idx)
    checks: list[dict] = []
    outcomes: dict[str, dict[int, int]] = {}
    tic = time.perf_counter()
    with attack_mode(model) as fast:
        checks += probe(model, x_all[:64].to(dev), y_all[:64].to(dev), t.name)

        def attack(e: Eps, atk, subset=None) -> dict[int, int]:
            res = {}
            pick = torch.arange(len(idx)) if subset is None else subset
            for s in range(0, len(pick), bs):
                b = pick[s: s + bs]
                rows, _, _ = attack_batch(fast, x_all[b].to(dev), y_all[b].to(dev), idx[b], [e], [atk], norm, seed)
                res.update({r[1]: r[3] for r in rows})
            notify({"event": "check", "model": t.name, "attack": atk.name, "eps": e.text,
                    "robust": sum(res.values()), "n": len(res), "seconds": time.perf_counter() - tic})
            return res

        for e in grid:
            outcomes[e.text] = attack(e, base)
        strong_res = attack(eps, strong)
        other = PGD(**{**{k: v for k, v in (pgd or {}).items() if v is not None},
                       "loss": "dlr" if base.loss != "dlr" else "ce"})
        other_res = attack(eps, other)  # a second loss, as AutoAttack pairs cross-entropy with DLR
        left = torch.tensor([j for j, i in enumerate(idx.tolist())
                             if strong_res[i] and outcomes[eps.text][i] and other_res[i]], dtype=torch.long)
        square_res = attack(eps, square, left) if len(left) else {}
        # what Square broke is attacked again with AutoAttack's white-box members: only examples that resist
        # them as well show Square beating the white-box attacks (PGD alone is the weaker reference)
        pos = {i: j for j, i in enumerate(idx.tolist())}
        hit = torch.tensor([pos[i] for i, r in square_res.items() if not r], dtype=torch.long)
        apgd_res = attack(eps, apgd, hit) if len(hit) else {}
    n = len(idx)
    budget = base.budget()
    for a, b in zip(grid, grid[1:]):
        ra, rb = outcomes[a.text], outcomes[b.text]
        up = sum(1 for i in ra if rb[i] and not ra[i])
        down = sum(1 for i in ra if ra[i] and not rb[i])
        p = mcnemar_exact(up, down)
        flag = up > down and p < ALPHA
        checks.append(_check("eps-sweep", flag,
                             f"PGD robust accuracy {_pct(sum(ra.values()), n)} at eps {a.text} and "
                             f"{_pct(sum(rb.values()), n)} at eps {b.text} (n={n}, each attacked on its own; "
                             f"McNemar p={p:.2g})" + ("; it rises with eps, so the attack is failing." if flag else "."),
                             b.text, pgd=budget))
    k = sum(outcomes[big.text].values())
    classes = sl.info.num_classes
    p = binom_above(k, n, 1 / classes)
    lo, hi = wilson(k, n)
    flag = k / n > 1 / classes and p < ALPHA
    checks.append(_check("large-eps", flag,
                         f"At {norm} eps {big.text}, which reaches mid-grey from any image, PGD leaves "
                         f"{_pct(k, n)} [{100 * lo:.1f}, {100 * hi:.1f}] robust (n={n}; chance is {100 / classes:.1f}%"
                         f", p={p:.2g})" + ("; an unbounded attack should reach chance, so the attack is failing."
                                            if flag else "."), big.text, pgd=budget))
    r0, r1 = outcomes[eps.text], strong_res
    extra = sum(1 for i in r0 if r0[i] and not r1[i])
    back = sum(1 for i in r0 if r1[i] and not r0[i])
    p = mcnemar_exact(extra, back)
    drop = 100 * (sum(r0.values()) - sum(r1.values())) / n
    flag = drop > TOLERANCE and extra > back and p < ALPHA
    checks.append(_check("convergence", flag,
                         f"PGD with {strong.steps} steps x {strong.restarts} restarts: {_pct(sum(r1.values()), n)} "
                         f"robust against {_pct(sum(r0.values()), n)} with {base.steps} x {base.restarts} at eps "
                         f"{eps.text} (n={n}, change {-drop:+.1f} points, McNemar p={p:.2g})"
                         + ("; the default budget had not converged." if flag else "."), eps.text,
                         pgd=budget, strong=strong.budget()))
    white = {eps.text: {i: int(r0[i] and r1[i] and other_res[i]) for i in r0}}  # for cross_checks
    broke = sum(1 - v for v in square_res.values())
    k = sum(apgd_res.values())  # broken by Square, robust to APGD-CE and APGD-T
    p = binom_above(k, n, SQUARE_MARGIN)
    flag = k / n > SQUARE_MARGIN and p < ALPHA
    checks.append(_check("square", flag,
                         f"Square ({square_queries} queries) broke {broke} of the {len(square_res)} examples that PGD "
                         f"({base.loss} and {other.loss}, {strong.steps} x {strong.restarts} {strong.loss}) left robust "
                         f"at eps {eps.text}; {k} of them also resist APGD-CE and APGD-T ({_pct(k, n)} of n={n}; "
                         f"AutoAttack's margin 0.2%, p={p:.2g})"
                         + ("; a black-box attack beating white-box ones points to masked gradients." if flag else "."),
                         eps.text, square=square.budget(), apgd=apgd.budget()))
    return checks, white


def sanity(t, cfg: EvalConfig, strong_steps: int | None, strong_restarts: int, square_queries: int,
           progress: Callable[[dict], None] | None = None) -> dict:
    """The checklist on target ``t`` with the checked settings ``cfg`` (the largest eps is the one under
    test), stored with their evidence together with the store's cross-run checks."""
    import pandas as pd

    from .batching import auto_batch_size, parse_batch_size, resolve_device
    from .core import check_model, data_slice

    cfg = dataclasses.replace(cfg, norm=parse_norm(cfg.norm))
    dev = resolve_device(cfg.device)
    sl = data_slice(t, cfg, {})
    model = t.model.to(dev)
    with attack_mode(model):
        x0, _ = sl.data.batch(sl.idx[:8])
        with torch.no_grad():
            z = model(x0.to(dev))
        if z.dim() != 2 or z.shape[1] != sl.info.num_classes:  # wrong shapes are an error, not a finding
            check_model(model, sl, dev, t.checkpoint or t.name, t.meta.get("input_shape"))
        bs = parse_batch_size(cfg.batch_size) or auto_batch_size(model, sl.info.shape, dev, len(sl.idx))
    found, white = checklist(model, sl, t, cfg.norm, dev, bs, cfg.seed, pgd=cfg.pgd_options(), strong_steps=strong_steps,
                             strong_restarts=strong_restarts, square_queries=square_queries, progress=progress)
    db = Store(cfg.store)
    try:
        db.set_checks(t.sha256, sl.info.name, cfg.norm, found)
        found += cross_checks(db, t.sha256, sl.info.name, cfg.norm, extra_white=white)
    finally:
        db.close()
    df = pd.DataFrame(found)[["check", "eps", "status", "evidence"]]
    return {"model": t.name, "sha256": t.sha256, "checks": df, "flagged": bool((df.status == "flag").any())}
