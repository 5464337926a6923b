"""robench's own PGD (Madry et al.) for Linf and L2; FGSM is its one-step case.

Random start, restarts, step size (default 2.5*eps/steps), losses ce / dlr / margin, untargeted or
targeted (each of the top-k wrong classes in turn, as APGD-T does), and ``precision=bf16`` for steps under
bf16 autocast (faster on GPUs and bf16-capable CPUs; an example counts as fooled only when the fp32 model
agrees, and the engine re-checks every final verdict in fp32 again). Success counts at any iterate: an
example leaves the batch the moment it is misclassified, and its adversarial point is kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._version import __version__
from ..errors import RobenchError
from .base import Attack, AttackOutput, example_seed, lp_norm

LOSSES = ("ce", "dlr", "margin")
PRECISIONS = ("fp32", "bf16")  # bf16: attack steps under autocast, every success confirmed in fp32


def _others_max(z: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    return z.masked_fill(F.one_hot(cls, z.shape[1]).bool(), float("-inf")).amax(1)


def attack_loss(z: torch.Tensor, y: torch.Tensor, loss: str, target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example loss to ascend. Untargeted: push away from y; targeted: pull towards ``target``."""
    zy = z.gather(1, y[:, None])[:, 0]
    if target is None:
        if loss == "ce":
            return F.cross_entropy(z, y, reduction="none")
        if loss == "margin":
            return _others_max(z, y) - zy
        s = z.sort(1, descending=True).values  # DLR (Croce & Hein 2020)
        return -(zy - _others_max(z, y)) / (s[:, 0] - s[:, 2] + 1e-12)
    zt = z.gather(1, target[:, None])[:, 0]
    if loss == "ce":
        return -F.cross_entropy(z, target, reduction="none")
    if loss == "margin":
        return zt - _others_max(z, target)
    s = z.sort(1, descending=True).values  # targeted DLR
    return -(zy - zt) / (s[:, 0] - 0.5 * (s[:, 2] + s[:, 3]) + 1e-12)


@torch.no_grad()
def ascend(x: torch.Tensor, delta: torch.Tensor, g: torch.Tensor, alpha: float, eps: float,
           norm: str) -> torch.Tensor:
    """One projected ascent step: move ``delta`` along the gradient's steepest direction for ``norm``,
    then back into the eps ball and the [0, 1] box."""
    view = (-1,) + (1,) * (x.dim() - 1)
    if norm == "Linf":
        delta = (delta + alpha * g.sign()).clamp(-eps, eps)
    else:
        delta = delta + alpha * g / lp_norm(g, norm).clamp_min(1e-12).view(view)
        delta = delta * (eps / lp_norm(delta, norm).clamp_min(1e-12)).clamp(max=1).view(view)
    return (x + delta).clamp(0, 1) - x


def random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A uniform draw from the Linf ball, or a random direction with a uniform radius in the L2 ball
    (drawn on the CPU from ``generator``, so CPU and GPU runs start from the same points)."""
    if norm == "Linf":
        return _into_ball(x, torch.rand(x.shape, generator=generator), None, eps, norm)
    u = torch.randn(x.shape, generator=generator)
    return _into_ball(x, u, torch.rand((len(x),) + (1,) * (x.dim() - 1), generator=generator), eps, norm)


def random_starts(x: torch.Tensor, eps: float, norm: str, seeds: list[int]) -> torch.Tensor:
    """``random_start`` per example, each drawn from its own generator seeded by ``seeds[j]`` (so a start
    does not depend on how examples are batched); only the draws are per example, the arithmetic is batched."""
    one = (1,) + tuple(x.shape[1:])
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    if norm == "Linf":
        return _into_ball(x, torch.cat([torch.rand(one, generator=g) for g in gens]), None, eps, norm)
    draws = [(torch.randn(one, generator=g), torch.rand((1,) * len(one), generator=g)) for g in gens]
    return _into_ball(x, torch.cat([u for u, _ in draws]), torch.cat([r for _, r in draws]), eps, norm)


def _into_ball(x, u, r, eps, norm):
    """The start ``x + d`` kept in [0, 1], as a perturbation: ``d`` from uniform draws ``u`` (Linf), or from
    normal draws ``u`` and uniform radii ``r`` (L2)."""
    if norm == "Linf":
        d = (2 * u - 1) * eps
    else:
        d = u / u.flatten(1).norm(dim=1).clamp_min(1e-12).view(r.shape) * eps * r
    d = d.to(x.device, x.dtype)
    return (x + d).clamp(0, 1) - x


def perturb(model, x: torch.Tensor, loss_fn, eps: float, norm: str, steps: int, alpha: float,
            start: torch.Tensor) -> torch.Tensor:
    """Plain projected gradient ascent on ``loss_fn(logits)`` (a per-example loss) from ``x + start``;
    returns the last iterate. Training uses it (Madry PGD-AT, TRADES, fast AT); evaluation uses PGD."""
    delta = start
    for _ in range(steps):
        delta = delta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn(model(x + delta)).sum(), delta)
        delta = ascend(x, delta.detach(), g, alpha, eps, norm)
    return (x + delta).detach()


class PGD(Attack):
    name = "pgd"

    def __init__(self, steps: int = 20, restarts: int = 1, step_size: float | None = None,
                 rel_step_size: float = 2.5, loss: str = "ce", random_start: bool = True,
                 targeted: bool = False, targets: int = 9, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise RobenchError(f'PGD precision "{precision}" is not one of {", ".join(PRECISIONS)}.')
        if loss not in LOSSES:
            raise RobenchError(f'PGD loss "{loss}" is not one of {", ".join(LOSSES)}.')
        if steps < 1 or restarts < 1 or targets < 1:
            raise RobenchError("PGD needs at least one step, one restart and one target.")
        if step_size is not None and step_size <= 0:
            raise RobenchError("The PGD step size must be positive.")
        self.steps, self.restarts, self.step_size, self.rel_step_size = steps, restarts, step_size, rel_step_size
        self.loss, self.random_start, self.targeted, self.targets = loss, random_start, targeted, targets
        self.precision = precision

    def budget(self) -> dict:
        size = self.step_size if self.step_size is not None else f"{self.rel_step_size:g}*eps/steps"
        b = {"name": self.name, "steps": self.steps, "restarts": self.restarts, "step_size": size,
             "loss": self.loss, "random_start": self.random_start, "targeted": self.targeted}
        if self.targeted:
            b["targets"] = self.targets
        if self.precision != "fp32":  # fp32 budgets stay as they were, so stored runs keep their keys
            b["precision"] = self.precision
        b["version"] = f"robench {__version__}"
        return b

    def alpha(self, eps: float) -> float:
        return self.step_size if self.step_size is not None else self.rel_step_size * eps / self.steps

    def _start(self, x, idx, eps, norm, seed, restart):
        """A random start drawn per example from its own generator, so the result does not depend on how
        examples are batched."""
        if not self.random_start:
            return torch.zeros_like(x)
        return random_starts(x, eps, norm, [example_seed(seed, i, restart, norm, "pgd-start") for i in idx.tolist()])

    def run(self, model, x, y, idx, eps, norm, seed) -> AttackOutput:
        x_adv = x.clone()
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        targets = None
        if self.targeted:
            with torch.no_grad():
                z = model(x)
            k = min(self.targets, z.shape[1] - 1)
            targets = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).topk(k, 1).indices
        rounds = [(r, t) for t in range(targets.shape[1] if targets is not None else 1)
                  for r in range(self.restarts)]
        for restart, t in rounds:
            live = (~fooled).nonzero()[:, 0]
            if len(live) == 0:
                break
            tgt = targets[live, t] if targets is not None else None
            found, xa = self._one_run(model, x[live], y[live], tgt, idx[live.cpu()], eps, norm, seed,
                                      restart + t * self.restarts)
            x_adv[live[found]] = xa[found]
            fooled[live[found]] = True
        return AttackOutput(x_adv)

    def _one_run(self, model, x, y, target, idx, eps, norm, seed, restart):
        """One PGD run; returns (fooled mask, adversarial points) over the batch."""
        alpha = self.alpha(eps)
        delta = self._start(x, idx, eps, norm, seed, restart)
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        best = x.clone()
        live = torch.arange(len(x), device=x.device)
        xl, yl, tl = x, y, target
        low = self.precision == "bf16"
        for step in range(self.steps + 1):
            delta.requires_grad_(True)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=low):
                z = model(xl + delta).float()
            hit = z.argmax(1) != yl
            if low and hit.any():  # a bf16 verdict is only a candidate: the fp32 model must agree
                with torch.no_grad():
                    hit[hit.clone()] = model((xl + delta)[hit].detach()).argmax(1) != yl[hit]
            if step < self.steps:
                (g,) = torch.autograd.grad(attack_loss(z, yl, self.loss, tl).sum(), delta)
            delta = delta.detach()
            if hit.any():  # keep the adversarial point and drop the example from the batch
                best[live[hit]] = xl[hit] + delta[hit]
                found[live[hit]] = True
                keep = ~hit
                if not keep.any():
                    break
                live, xl, yl, delta = live[keep], xl[keep], yl[keep], delta[keep]
                tl = tl[keep] if tl is not None else None
                if step < self.steps:
                    g = g[keep]
            if step == self.steps:
                break
            delta = ascend(xl, delta, g, alpha, eps, norm)
        return found, best


class FGSM(PGD):
    """One step of size eps from the clean point (Goodfellow et al. 2015)."""

    name = "fgsm"

    def __init__(self, loss: str = "ce"):
        super().__init__(steps=1, restarts=1, rel_step_size=1.0, loss=loss, random_start=False)
