"""Gradient-masking diagnostics: the checks of "On Evaluating Adversarial Robustness" (Carlini et al. 2019)
and AutoAttack's own, each stored per model with its evidence (``Store.set_checks``), status "ok" or "flag".

The cheap checks that run after every evaluation and transfer are in ``checks``. ``checklist`` adds a
probe of the gradient itself (a small step along it must raise the logit margin) and the checks that need
their own attacks, with PGD or robench's ``fast`` as the attack under test: an eps sweep attacked eps by
eps, a very large eps, a stronger budget, APGD-CE's step-size schedule on what the attack under test left
(a fixed step can stall where a step that starts at 2 eps and halves gets through), and Square on what
white-box attacks left.
"Beyond noise" is an exact test at ``ALPHA`` on the per-example outcomes (McNemar for paired outcomes,
binomial against a tolerated rate otherwise), so a single lucky example never raises a flag.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from ..attacks.apgd import Fast
from ..attacks.autoattack import AutoAttack
from ..attacks.pgd import PGD
from ..attacks.registry import create_attack
from ..config import Eps, EvalConfig
from ..errors import RobenchError
from ..norms import get_norm
from ..results.runs import ALPHA, SQUARE_MARGIN
from ..stats import binom_above, mcnemar_exact, wilson
from ..store import Store
from .core import Slice, attack_batch, attack_mode, remember
from .masking import TOLERANCE, ascent, cross_checks, finding, pct, probe

# -------------------------------------------------------------------------------------- the checklist
# the checks only the checklist runs (every evaluation runs the probes and the transfer check too)


def large_eps(norm: str, dims: int) -> Eps:
    """A budget that covers the whole [0, 1] box around mid-grey: Linf 0.5, L2 0.5 * sqrt(dims)."""
    value = 0.5 * get_norm(norm).diameter(dims)
    return Eps(value, f"{value:g}")


def white_box(attack: str | None, pgd: dict | None, bs: int, strong_steps: int | None, strong_restarts: int):
    """The white-box attack under test (PGD with ``pgd``'s options, or robench's ``fast``), its stronger
    budget, and the same attack with the other loss (None for ``fast``, which pairs cross-entropy with
    targeted DLR itself). ``fast`` runs without its Square focus stage here: the checklist compares what
    the white-box runs leave with its own Square check, which a black-box stage inside them would hide."""
    opts = {k: v for k, v in (pgd or {}).items() if v is not None}
    if attack in (None, "pgd"):
        base = PGD(**opts)
        strong = PGD(
            **{**opts, "steps": strong_steps or 5 * base.steps, "restarts": max(strong_restarts, base.restarts)}
        )
        return base, strong, PGD(**{**opts, "loss": "dlr" if base.loss != "dlr" else "ce"})
    base = create_attack(attack, batch_size=bs)
    if not isinstance(base, Fast):
        raise RobenchError(f'The checklist attacks with pgd or fast, not "{attack}".')
    return (
        Fast(iters=base.iters, targets=base.targets, choice=base.choice, restarts=base.restarts, focus=0.0),
        Fast(
            iters=strong_steps or 5 * base.iters,
            targets=max(9, base.targets),
            choice=base.choice,
            restarts=base.restarts,
            focus=0.0,
        ),
        None,
    )


def _words(atk, short: bool = False) -> str:
    """An attack's budget in the evidence: "100 steps x 3 restarts" (short: "100 x 3") or "500 iterations x
    9 targets"."""
    if isinstance(atk, PGD):
        return f"{atk.steps} x {atk.restarts}" if short else f"{atk.steps} steps x {atk.restarts} restarts"
    return f"{atk.iters} iterations x {atk.targets} targets"


def checklist(
    model,
    sl: Slice,
    t,
    norm: str,
    dev,
    bs: int,
    seed: int,
    pgd: dict | None = None,
    strong_steps: int | None = None,
    strong_restarts: int = 3,
    square_queries: int = 1000,
    progress: Callable[[dict], None] | None = None,
    attack: str | None = None,
) -> tuple[list[dict], dict]:
    """Every check on one model and slice (``sl.eps[-1]`` is the budget under test), and the white-box
    outcomes at that eps for cross_checks ({eps: {idx: robust}}): the probes; the attack under test (PGD,
    or ``attack="fast"``) at eps/4, eps/2, eps, 2 eps and the large eps, each attacked on its own; its
    stronger budget (``strong_steps``, 5x, and for PGD ``strong_restarts``); PGD with the other loss (DLR or
    cross-entropy); Square with ``square_queries`` on the examples every white-box run left robust: a
    white-box ensemble alone cannot see masked gradients, so the black-box check runs whatever the attack."""
    notify = progress or (lambda e: None)
    eps = sl.eps[-1]
    base, strong, other = white_box(attack, pgd, bs, strong_steps, strong_restarts)
    name = "PGD" if isinstance(base, PGD) else base.name
    key = "pgd" if isinstance(base, PGD) else "attack"  # what the stored checks call its budget
    square = AutoAttack("standard", members=("square",), batch_size=bs, queries=square_queries)
    apgd = AutoAttack("standard", members=("apgd-ce", "apgd-t"), batch_size=bs)
    apgd_ce = AutoAttack("standard", members=("apgd-ce",), batch_size=bs)
    big = large_eps(norm, math.prod(sl.info.shape))
    grid = sorted(
        {Eps(eps.value * f, f"{eps.value * f:.6g}") for f in (0.25, 0.5, 2.0) if eps.value * f < big.value}
        | {eps, big},
        key=lambda e: e.value,
    )
    idx = sl.idx
    x_all, y_all = sl.data.batch(idx)
    checks: list[dict] = []
    outcomes: dict[str, dict[int, int]] = {}
    tic = time.perf_counter()
    with attack_mode(model) as attacked:
        x64, y64 = x_all[:64].to(dev), y_all[:64].to(dev)
        checks += probe(model, x64, y64, t.name)
        checks.append(ascent(model, x64, y64, norm, t.name))

        def run(e: Eps, atk, subset=None) -> dict[int, int]:
            res = {}
            pick = torch.arange(len(idx)) if subset is None else subset
            for s in range(0, len(pick), bs):
                b = pick[s : s + bs]
                rows, _, _ = attack_batch(attacked, x_all[b].to(dev), y_all[b].to(dev), idx[b], [e], [atk], norm, seed)
                res.update({r[1]: r[3] for r in rows})
            notify(
                {
                    "event": "check",
                    "model": t.name,
                    "attack": _described(atk),
                    "eps": e.text,
                    "robust": sum(res.values()),
                    "n": len(res),
                    "seconds": time.perf_counter() - tic,
                }
            )
            return res

        for e in grid:
            outcomes[e.text] = run(e, base)
        strong_res = run(eps, strong)
        # a second loss, as AutoAttack pairs cross-entropy with DLR (fast does so itself)
        other_res = run(eps, other) if other is not None else outcomes[eps.text]
        left = torch.tensor(
            [j for j, i in enumerate(idx.tolist()) if strong_res[i] and outcomes[eps.text][i] and other_res[i]],
            dtype=torch.long,
        )
        # the official APGD-CE, whose step size starts at 2 eps and halves where progress stalls, on what the
        # attack under test left robust with every budget and loss
        schedule_res = run(eps, apgd_ce, left) if len(left) else {}
        square_res = run(eps, square, left) if len(left) else {}
        # what Square broke is attacked again with AutoAttack's white-box members: only examples that resist
        # them as well show Square beating the white-box attacks (PGD alone is the weaker reference)
        pos = {i: j for j, i in enumerate(idx.tolist())}
        hit = torch.tensor([pos[i] for i, r in square_res.items() if not r], dtype=torch.long)
        apgd_res = run(eps, apgd, hit) if len(hit) else {}
    n = len(idx)
    budget = base.budget()
    for a, b in zip(grid, grid[1:]):
        ra, rb = outcomes[a.text], outcomes[b.text]
        up = sum(1 for i in ra if rb[i] and not ra[i])
        down = sum(1 for i in ra if ra[i] and not rb[i])
        p = mcnemar_exact(up, down)
        flag = up > down and p < ALPHA
        checks.append(
            finding(
                "eps-sweep",
                flag,
                f"{name} robust accuracy {pct(sum(ra.values()), n)} at eps {a.text} and "
                f"{pct(sum(rb.values()), n)} at eps {b.text} (n={n}, each attacked on its own; "
                f"McNemar p={p:.2g})" + ("; it rises with eps, so the attack is failing." if flag else "."),
                b.text,
                **{key: budget},
            )
        )
    k = sum(outcomes[big.text].values())
    classes = sl.info.num_classes
    p = binom_above(k, n, 1 / classes)
    lo, hi = wilson(k, n)
    flag = k / n > 1 / classes and p < ALPHA
    checks.append(
        finding(
            "large-eps",
            flag,
            f"At {norm} eps {big.text}, which reaches mid-grey from any image, {name} leaves "
            f"{pct(k, n)} [{100 * lo:.1f}, {100 * hi:.1f}] robust (n={n}; chance is {100 / classes:.1f}%"
            f", p={p:.2g})" + ("; an unbounded attack should reach chance, so the attack is failing." if flag else "."),
            big.text,
            **{key: budget},
        )
    )
    r0, r1 = outcomes[eps.text], strong_res
    extra = sum(1 for i in r0 if r0[i] and not r1[i])
    back = sum(1 for i in r0 if r1[i] and not r0[i])
    p = mcnemar_exact(extra, back)
    drop = 100 * (sum(r0.values()) - sum(r1.values())) / n
    flag = drop > TOLERANCE and extra > back and p < ALPHA
    checks.append(
        finding(
            "convergence",
            flag,
            f"{name} with {_words(strong)}: {pct(sum(r1.values()), n)} "
            f"robust against {pct(sum(r0.values()), n)} with {_words(base, short=True)} at eps "
            f"{eps.text} (n={n}, change {-drop:+.1f} points, McNemar p={p:.2g})"
            + ("; the default budget had not converged." if flag else "."),
            eps.text,
            **{key: budget},
            strong=strong.budget(),
        )
    )
    white = {eps.text: {i: int(r0[i] and r1[i] and other_res[i]) for i in r0}}  # for cross_checks
    k = sum(1 - v for v in schedule_res.values())  # broken by APGD-CE, robust to every run of the attack
    p = binom_above(k, n, TOLERANCE / 100)
    flag = 100 * k / n > TOLERANCE and p < ALPHA
    runs_words = (
        f"{name} ({_words(base, short=True)} and {_words(strong, short=True)} {base.loss}, {base.steps} {other.loss})"
        if other is not None
        else f"{name} ({_words(base)}, then {_words(strong)})"
    )
    iters = apgd_ce.budget()["members"]["apgd-ce"]["iters"]
    checks.append(
        finding(
            "step-size",
            flag,
            f"APGD-CE ({iters} iterations, its step size starting at 2 eps and halving where progress "
            f"stalls) broke {k} of the {len(schedule_res)} examples {runs_words} left robust at eps "
            f"{eps.text} ({pct(k, n)} of n={n}; tolerated {TOLERANCE:g} point, p={p:.2g})"
            + (
                f"; {name} stalls on this model, so its robust accuracy overstates robustness: report AutoAttack."
                if flag
                else "."
            ),
            eps.text,
            **{key: budget},
            apgd=apgd_ce.budget(),
        )
    )
    white_words = (
        f"PGD ({base.loss} and {other.loss}, {strong.steps} x {strong.restarts} {strong.loss})"
        if other is not None
        else f"{name} ({_words(base)}, then {_words(strong)})"
    )
    broke = sum(1 - v for v in square_res.values())
    k = sum(apgd_res.values())  # broken by Square, robust to APGD-CE and APGD-T
    p = binom_above(k, n, SQUARE_MARGIN)
    flag = k / n > SQUARE_MARGIN and p < ALPHA
    checks.append(
        finding(
            "square",
            flag,
            f"Square ({square_queries} queries) broke {broke} of the {len(square_res)} examples that "
            f"{white_words} left robust at eps {eps.text}; {k} of them also resist APGD-CE and APGD-T ({pct(k, n)} of n={n}; "
            f"AutoAttack's margin 0.2%, p={p:.2g})"
            + ("; a black-box attack beating white-box ones points to masked gradients." if flag else "."),
            eps.text,
            square=square.budget(),
            apgd=apgd.budget(),
        )
    )
    return checks, white


def _one_attack(attacks: list[str]) -> str:
    if len(attacks) != 1:
        raise RobenchError("The checklist takes one white-box attack (pgd or fast), not several.")
    return attacks[0]


def sanity(
    t,
    cfg: EvalConfig,
    strong_steps: int | None,
    strong_restarts: int,
    square_queries: int,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """The checklist on target ``t`` with the checked settings ``cfg`` (the largest eps is the one under
    test), stored with their evidence together with the store's cross-run checks."""
    import pandas as pd

    from .batching import auto_batch_size, parse_batch_size, resolve_device
    from .core import data_slice, validate_model

    dev = resolve_device(cfg.device)
    sl = data_slice(t, cfg, {})
    model = t.model.to(dev)
    with attack_mode(model):
        x0, _ = sl.data.batch(sl.idx[:8])
        with torch.no_grad():
            z = model(x0.to(dev))
        if z.dim() != 2 or z.shape[1] != sl.info.num_classes:  # wrong shapes are an error, not a finding
            validate_model(model, sl, dev, t.checkpoint or t.name, t.meta.get("input_shape"))
        bs = parse_batch_size(cfg.batch_size) or auto_batch_size(model, sl.info.shape, dev, len(sl.idx))
    found, white = checklist(
        model,
        sl,
        t,
        cfg.norm,
        dev,
        bs,
        cfg.seed,
        pgd=cfg.pgd_options(),
        strong_steps=strong_steps,
        strong_restarts=strong_restarts,
        square_queries=square_queries,
        progress=progress,
        attack=_one_attack(cfg.attacks),
    )
    with Store(cfg.store) as db:
        remember(db, [t])
        db.set_checks(t.sha256, sl.info.name, cfg.norm, found)
        found += cross_checks(db, t.sha256, sl.info.name, cfg.norm, extra_white=white)
    df = pd.DataFrame(found)[["check", "eps", "status", "evidence"]]
    return {"model": t.name, "sha256": t.sha256, "checks": df, "flagged": bool((df.status == "flag").any())}


def _described(atk) -> str:
    """An attack as a progress line names it: its name and the budget that tells two runs of it apart."""
    b = atk.budget()
    steps = f"{b['steps']} steps" if "steps" in b else ""
    if steps and b.get("restarts", 1) > 1:
        steps += f" x {b['restarts']}"
    loss = f"{b['loss']} loss" if b.get("loss") not in (None, "ce") else ""
    shown = ", ".join(p for p in (steps, loss) if p)
    return f"{atk.name} ({shown})" if shown else atk.name
