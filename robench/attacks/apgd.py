"""robench's own APGD (Croce and Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"), and ``fast``, an ensemble of it that targets by MALT.

APGD: a random start on the sphere of radius eps, a first step of size 2 eps, then steps with momentum
(0.75), and at checkpoints (after 22% of the iterations, then periods shrinking by 3% of them down to 6%)
the step size halves and the iterate returns to the best point so far wherever the loss rose in at most
75% of the steps since the last checkpoint, or the step was not halved at the last checkpoint and the
best loss has not risen since. Losses: cross-entropy or DLR untargeted, targeted DLR. Batched, for Linf
and L2, and an example leaves the batch the moment one of its iterates is misclassified.

Targets of the targeted run: AutoAttack's choice is the classes of highest logit ("rank"). MALT (Melamed,
Yehudai and Shamir 2024) orders them instead by the distance to each class boundary of the model
linearised at the input: the logit gap over the dual norm of the gradient of the gap ("malt"). The
targets of every example are computed in one batched pass (one backward pass per class).
"""

from __future__ import annotations

import math

import torch

from .._version import __version__
from ..errors import RobenchError, unknown
from ..norms import get_norm, project, random_points
from .base import Attack, AttackOutput, example_seed
from .descent import attack_loss, closeness, rounds, target_classes
from .registry import ATTACKS
from .square import square as robench_square

CHOICES = ("malt", "rank")  # target_classes' choices
SQUARES = ("official", "robench")  # fast's Square: AutoAttack's (pyautoattack) or robench.attacks.square
SQUARE_P_INIT = 0.8  # AutoAttack's


def checkpoints(iters: int) -> list[int]:
    """The iterations (1-based) after which APGD may halve its step."""
    period, shrink, shortest = max(int(0.22 * iters), 1), max(int(0.03 * iters), 1), max(int(0.06 * iters), 1)
    out, at = [], 0
    while at + period <= iters:
        at += period
        out.append(at)
        period = max(period - shrink, shortest)
    return out


@ATTACKS.register("apgd")
class APGD(Attack):
    """``loss`` ce or dlr; ``targeted`` runs targeted DLR against ``targets`` classes chosen by ``choice``."""

    name = "apgd"

    def __init__(
        self,
        loss: str = "ce",
        iters: int = 100,
        restarts: int = 1,
        targeted: bool = False,
        targets: int = 9,
        choice: str = "malt",
        rho: float = 0.75,
        momentum: float = 0.75,
    ):
        if loss not in ("ce", "dlr"):
            raise RobenchError(f'APGD loss "{loss}" is not one of ce, dlr (targeted runs use targeted DLR).')
        if choice not in CHOICES:
            raise unknown("APGD target choice", choice, CHOICES)
        if iters < 1 or restarts < 1 or targets < 1:
            raise RobenchError("APGD needs at least one iteration, one restart and one target.")
        if not 0 < rho <= 1 or not 0 < momentum <= 1:
            raise RobenchError("APGD's rho and momentum must lie in (0, 1].")
        self.loss, self.iters, self.restarts, self.targeted = loss, iters, restarts, targeted
        self.targets, self.choice, self.rho, self.momentum = targets, choice, rho, momentum

    def budget(self) -> dict:
        b = {
            "name": self.name,
            "loss": "dlr-targeted" if self.targeted else self.loss,
            "iters": self.iters,
            "restarts": self.restarts,
            "rho": self.rho,
            "momentum": self.momentum,
        }
        if self.targeted:
            b.update(targets=self.targets, choice=self.choice)
        b["version"] = f"robench {__version__}"
        return b

    @classmethod
    def spec_of(cls, budget: dict) -> str:
        opts = [
            f"iters={budget['iters']}",
            f"restarts={budget['restarts']}",
            f"rho={budget['rho']!r}",
            f"momentum={budget['momentum']!r}",
        ]
        if budget["loss"] == "dlr-targeted":
            opts += ["targeted=True", f"targets={budget['targets']}", f"choice={budget['choice']}"]
        else:
            opts.insert(0, f"loss={budget['loss']}")
        return f"apgd({','.join(opts)})"

    def run(self, model, x, y, idx, eps, norm, seed) -> AttackOutput:
        targets = target_classes(model, x, y, self.targets, self.choice, norm) if self.targeted else None
        closest = torch.full((len(x),), float("inf"), device=x.device)

        def one_run(live, target, r):
            starts = random_points(
                x[live], 1.0, norm, [example_seed(seed, i, r, norm, "apgd-start") for i in idx[live.cpu()].tolist()]
            )
            found, out, reached = self.descend(model, x[live], y[live], target, starts, eps, norm)
            closest[live] = torch.minimum(closest[live], reached)
            return found, out

        return AttackOutput(rounds(x, targets, self.restarts, one_run), closest=closest)

    def run_at_once(self, model, x, y, idx, eps, norm, seed) -> torch.Tensor:
        """The adversarial points of ``run`` (the same random starts, and per example the point of the first
        round in order that fools the model), with every round of every target in one batch: for the few
        examples of a focus stage the fixed cost of each iteration dominates, and one batch of all rounds
        pays it once instead of once per round. Rounds after an example's first success run on regardless
        (their points are discarded)."""
        targets = target_classes(model, x, y, self.targets, self.choice, norm) if self.targeted else None
        plan = [(t, r) for t in range(targets.shape[1] if targets is not None else 1) for r in range(self.restarts)]
        ids, xs = idx.tolist(), x.repeat(len(plan), *([1] * (x.dim() - 1)))
        starts = random_points(
            xs,
            1.0,
            norm,
            [example_seed(seed, i, r + t * self.restarts, norm, "apgd-start") for t, r in plan for i in ids],
        )
        tiled = torch.cat([targets[:, t] for t, _ in plan]) if targets is not None else None
        found, out, _ = self.descend(model, xs, y.repeat(len(plan)), tiled, starts, eps, norm)
        found, out = found.view(len(plan), len(x)), out.view(len(plan), *x.shape)
        first = found.float().argmax(0)  # the first successful round (0 where none: then x itself)
        x_adv = out[first, torch.arange(len(x), device=x.device)]
        return torch.where(found.any(0).view(-1, *([1] * (x.dim() - 1))), x_adv, x)

    def descend(self, model, x, y, target, starts, eps, norm):
        """One APGD run from ``x + eps * starts / |starts|`` (a random point of the eps sphere); returns
        (fooled mask, adversarial points, the closest each example came to being fooled) over the batch."""
        nm = get_norm(norm)
        view = (-1,) + (1,) * (x.dim() - 1)
        loss_name = "dlr" if target is not None else self.loss
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        reached = torch.full((len(x),), float("inf"), device=x.device)
        out = x.clone()
        s = {"live": torch.arange(len(x), device=x.device), "x": x, "y": y, "t": target}
        d = starts.to(x.device, x.dtype)
        s["xa"] = (x + eps * d / nm.distance(d).clamp_min(1e-12).view(view)).clamp(0, 1)

        def forward(xa):
            xa = xa.detach().requires_grad_(True)
            z = model(xa)
            loss = attack_loss(z, s["y"], loss_name, s["t"])
            (g,) = torch.autograd.grad(loss.sum(), xa)
            z = z.detach()
            reached[s["live"]] = torch.minimum(reached[s["live"]], closeness(z, s["y"]))
            return loss.detach(), g.detach(), z.argmax(1) != s["y"]

        def drop(hit):
            """Keep the fooled examples' points and remove them from every per-example tensor."""
            out[s["live"][hit]] = s["xa"][hit].detach()
            found[s["live"][hit]] = True
            keep = ~hit
            for key, v in list(s.items()):
                if isinstance(v, torch.Tensor):
                    s[key] = v[keep]
            return bool(keep.any())

        s["loss"], s["g"], hit = forward(s["xa"])
        s["step"] = torch.full((len(x),), 2.0 * eps, device=x.device)
        s["best"], s["x_best"], s["g_best"] = s["loss"].clone(), s["xa"].clone(), s["g"].clone()
        s["x_prev"], s["rises"] = s["xa"].clone(), torch.zeros(len(x), device=x.device)
        s["best_at_check"], s["halved"] = s["best"].clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        if hit.any() and not drop(hit):
            return found, out, reached
        checks, last = set(checkpoints(self.iters)), 0
        for i in range(self.iters):
            a = self.momentum if i > 0 else 1.0
            step = s["step"].view(view)
            zk = project(s["x"], s["xa"] + nm.step(s["g"], step), eps, nm)
            new = project(s["x"], s["xa"] + a * (zk - s["xa"]) + (1 - a) * (s["xa"] - s["x_prev"]), eps, nm)
            s["x_prev"], s["xa"] = s["xa"], new
            loss, s["g"], hit = forward(new)
            s["rises"] += (loss > s["loss"]).float()
            s["loss"] = loss
            better = loss > s["best"]
            s["best"] = torch.where(better, loss, s["best"])
            s["x_best"][better], s["g_best"][better] = new[better], s["g"][better]
            if hit.any() and not drop(hit):
                return found, out, reached
            if i + 1 in checks:
                period, last = i + 1 - last, i + 1
                halve = (s["rises"] <= self.rho * period) | (~s["halved"] & (s["best_at_check"] >= s["best"]))
                s["halved"], s["best_at_check"] = halve, s["best"].clone()
                s["step"] = torch.where(halve, s["step"] / 2, s["step"])
                s["xa"][halve], s["g"][halve] = s["x_best"][halve], s["g_best"][halve]
                s["rises"].zero_()
        return found, out, reached


@ATTACKS.register("fast")
class Fast(Attack):
    """robench's fast evaluation: APGD-CE, then APGD with targeted DLR against the ``targets`` classes MALT
    finds nearest, on what APGD-CE left (``choice=rank`` for AutoAttack's logit-rank targets instead).

    Then the focus stage, on the survivors that came closest to being fooled: those whose smallest margin
    reached by the two APGD runs is below ``focus`` times their clean margin (``focus=0`` leaves the stage
    out), at most the ``focus_share`` of the batch's survivors whose margin fell furthest (the fraction of
    the clean margin); the cap bounds the stage's cost on models where many survivors come near the
    boundary without crossing it. On them, the targeted APGD again from ``focus_restarts`` fresh random
    starts per target, then robench's own Square (``queries`` queries; robench.attacks.square) on what is
    left, ``square_runs`` runs of it side by side in one batch (an example is broken when any run breaks
    it). Every example draws its own windows there; ``square=official`` runs AutoAttack's Square instead
    (pyautoattack, the default before robench's own), which draws one window per query for the whole batch,
    so its runs side by side differ only in their starting stripes. The defaults of ``focus`` and
    ``focus_share`` come from where AutoAttack's breaks that the APGD runs miss sit among a batch's
    survivors (benchmarks/README.md and docs/performance.md have the measurements)."""

    name = "fast"

    def __init__(
        self,
        iters: int = 100,
        targets: int = 3,
        choice: str = "malt",
        restarts: int = 1,
        focus: float = 0.4,
        queries: int = 5000,
        focus_restarts: int = 3,
        focus_share: float = 0.1,
        square_runs: int = 1,
        square: str = "robench",
    ):
        if square not in SQUARES:
            raise unknown("fast's square", square, SQUARES)
        if not 0 <= focus <= 1 or queries < 1 or focus_restarts < 0 or not 0 < focus_share <= 1 or square_runs < 1:
            raise RobenchError(
                "fast's focus must lie in [0, 1] (a fraction of the clean margin), its "
                "queries be at least 1, its focus_restarts at least 0, its focus_share in "
                "(0, 1] (a fraction of the survivors) and its square_runs at least 1."
            )
        # named apart from AutoAttack's official members, so a stored outcome says whose attack broke it
        self.members = {
            "robench-apgd-ce": APGD("ce", iters=iters),
            "robench-apgd-t": APGD(iters=iters, targeted=True, targets=targets, choice=choice, restarts=restarts),
        }
        self.iters, self.targets, self.choice, self.restarts = iters, targets, choice, restarts
        self.focus, self.queries, self.focus_restarts, self.focus_share = focus, queries, focus_restarts, focus_share
        self.square_runs, self.square = square_runs, square
        self.retry = (
            APGD(iters=iters, targeted=True, targets=targets, choice=choice, restarts=focus_restarts)
            if focus_restarts
            else None
        )

    def _square(self, batch_size: int):
        from .autoattack import AutoAttack

        return AutoAttack("standard", members=("square",), batch_size=batch_size, queries=self.queries)

    def budget(self) -> dict:
        members = {}
        for name, atk in self.members.items():
            b = atk.budget()
            members[name] = {k: v for k, v in b.items() if k not in ("name", "version")}
        out = {"name": self.name, "members": members, "version": f"robench {__version__}"}
        if self.focus:
            if self.square == "official":
                sq = self._square(1).budget()
                sq, impl = sq["members"]["square"], sq["implementation"]
            else:
                sq = {"queries": self.queries, "p_init": SQUARE_P_INIT, "restarts": 1}
                impl = f"robench {__version__}"
            out["focus"] = {"below_clean_margin": self.focus, "attack": "square", **sq, "implementation": impl}
            if self.retry:  # absent from budgets stored before the stage retried the targeted APGD
                out["focus"]["apgd_t_fresh_restarts"] = self.focus_restarts
            if self.focus_share < 1:  # absent (no cap) from budgets stored before the cap
                out["focus"]["at_most_share_of_survivors"] = self.focus_share
            if self.square_runs > 1:  # absent (one run) from budgets stored before the option, and by default
                out["focus"]["square_runs"] = self.square_runs
        return out

    @classmethod
    def spec_of(cls, budget: dict) -> str:
        t = budget["members"]["robench-apgd-t"]
        opts = (
            []
            if (t["iters"], t["targets"], t["choice"], t["restarts"]) == (100, 3, "malt", 1)
            else [
                f"iters={t['iters']}",
                f"targets={t['targets']}",
                f"choice={t['choice']}",
                f"restarts={t['restarts']}",
            ]
        )
        f = budget.get("focus") or {"below_clean_margin": 0.0}  # stored before the focus stage: none
        if (f["below_clean_margin"], f.get("queries")) != (0.4, 5000):
            opts += [f"focus={f['below_clean_margin']!r}"] + ([f"queries={f['queries']}"] if "queries" in f else [])
        if f["below_clean_margin"] and f.get("apgd_t_fresh_restarts", 0) != 3:
            opts.append(f"focus_restarts={f.get('apgd_t_fresh_restarts', 0)}")
        if f["below_clean_margin"] and f.get("at_most_share_of_survivors", 1.0) != 0.1:
            opts.append(f"focus_share={f.get('at_most_share_of_survivors', 1.0)!r}")
        if f["below_clean_margin"] and f.get("square_runs", 1) != 1:
            opts.append(f"square_runs={f['square_runs']}")
        if f["below_clean_margin"] and not f.get("implementation", "").startswith("robench"):
            opts.append("square=official")  # AutoAttack's, the default before robench's own
        return f"fast({','.join(opts)})" if opts else "fast"

    def run(self, model, x, y, idx, eps, norm, seed) -> AttackOutput:
        x_adv, broken_by = x.clone(), [None] * len(x)
        remaining = torch.arange(len(x), device=x.device)
        closest = torch.full((len(x),), float("inf"), device=x.device)
        for name, atk in self.members.items():
            if len(remaining) == 0:
                break
            out = atk.run(model, x[remaining], y[remaining], idx[remaining.cpu()], eps, norm, seed)
            closest[remaining] = torch.minimum(closest[remaining], out.closest)
            remaining = self._keep(model, x, y, remaining, out.x_adv, name, x_adv, broken_by)
        flags = []
        if self.focus and len(remaining):
            with torch.no_grad():
                clean = closeness(model(x[remaining]), y[remaining])
            ratio = closest[remaining] / clean
            order = torch.argsort(ratio, stable=True)[: math.ceil(self.focus_share * len(remaining))]
            near = remaining[order[ratio[order] < self.focus].sort().values]  # in batch order, as before the cap
            if len(near) and self.retry:  # random starts the first targeted run did not draw
                xa = self.retry.run_at_once(
                    model, x[near], y[near], idx[near.cpu()], eps, norm, example_seed(seed, "fast-focus")
                )
                near = self._keep(model, x, y, near, xa, "robench-apgd-t", x_adv, broken_by)
            if len(near):
                flags = self._square_stage(model, x, y, idx, near, eps, norm, seed, x_adv, broken_by)
        return AttackOutput(x_adv, broken_by=broken_by, flags=flags, closest=closest)

    def _square_stage(self, model, x, y, idx, near, eps, norm, seed, x_adv, broken_by) -> list[str]:
        """Square on the rows ``near`` of the batch, ``square_runs`` runs side by side (row j * len(near) + i
        is run j on example near[i]); records what it breaks in ``x_adv`` and ``broken_by`` and returns the
        flags the official implementation raised."""
        rows, flags = near.repeat(self.square_runs), []
        if self.square == "robench":
            xa = robench_square(
                model,
                x[rows],
                y[rows],
                eps,
                norm,
                self.queries,
                SQUARE_P_INIT,
                example_seed(seed, "fast-square", idx[near.cpu()].tolist()),
            )
        else:
            out = self._square(len(rows)).run(model, x[rows], y[rows], idx[rows.cpu()], eps, norm, seed)
            flags, xa = out.flags, out.x_adv
        if self.square_runs > 1:
            with torch.no_grad():
                hit = (model(xa).argmax(1) != y[rows]).view(self.square_runs, len(near))
            first = hit.int().argmax(0)  # each example's first run that broke it (0 where none did)
            xa = xa.view(self.square_runs, len(near), *x.shape[1:])[first, torch.arange(len(near), device=x.device)]
        self._keep(model, x, y, near, xa, "square", x_adv, broken_by)
        return flags

    @staticmethod
    def _keep(model, x, y, rows, xa, name, x_adv, broken_by):
        """Record the points of ``xa`` (over ``rows``) that fool the model; returns the rows still robust."""
        with torch.no_grad():
            hit = model(xa).argmax(1) != y[rows]
        x_adv[rows[hit]] = xa[hit]
        for i in rows[hit].tolist():
            broken_by[i] = name
        return rows[~hit]
