"""The projected-gradient ascent loop that robench's fixed-step gradient attacks share (as Foolbox 3's
gradient_descent_base does): evaluation PGD and FGSM, the transfer attacks (PGD/I-FGSM, MI-FGSM, DI-FGSM)
and the training-time attacks (PGD-AT, TRADES, fast AT). APGD (attacks/apgd.py) keeps a loop of its own:
its step size halves at checkpoints where progress stalls, going back to the best point found, and each
step carries momentum, as Croce and Hein's paper defines it, which a fixed-step loop with hooks does not
express.

The loop takes the norm (robench.norms), the loss to ascend and two optional hooks: ``grad`` turns the
gradient into the ascent direction (MI-FGSM's momentum) and ``inputs`` turns the iterate into the model's
input (DI-FGSM's diversity). Given the true labels as ``stop``, an example leaves the batch the moment it
is misclassified and its adversarial point is kept; without, every step runs and the last iterate returns.
Hooks and losses get ``live``, the positions in the batch still being attacked, so per-example state
(targets, momentum, seeds) stays aligned as examples leave.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..norms import Norm, ascend, get_norm

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


def closeness(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How close each example is to being misclassified: the margin of the true logit over the best other
    one (negative once the model is fooled)."""
    return -attack_loss(z, y, "margin")


def target_classes(model, x: torch.Tensor, y: torch.Tensor, k: int, choice: str, norm: str) -> torch.Tensor:
    """(batch, k) target classes per example, nearest first: by MALT's linearised distance or by logit rank
    (at most every class but the true one)."""
    if choice == "rank":
        with torch.no_grad():
            z = model(x)
        k = min(k, z.shape[1] - 1)
        return z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).topk(k, 1).indices
    xg = x.detach().clone().requires_grad_(True)
    z = model(xg)
    classes = z.shape[1]
    grads = torch.stack(
        [torch.autograd.grad(z[:, c].sum(), xg, retain_graph=c < classes - 1)[0].flatten(1) for c in range(classes)], 1
    )  # (batch, classes, inputs)
    rows = torch.arange(len(x), device=x.device)
    diff = grads[rows, y][:, None] - grads
    dual = get_norm(norm).dual(diff)
    z = z.detach()
    distance = (z[rows, y][:, None] - z) / dual.clamp_min(1e-12)
    distance[rows, y] = float("inf")
    return distance.topk(min(k, classes - 1), 1, largest=False).indices


def rounds(x: torch.Tensor, targets: torch.Tensor | None, restarts: int, one_run) -> torch.Tensor:
    """Restarts within each target in turn (one round without targets), each on the examples no earlier
    round fooled: ``one_run(live, target or None, round number)`` returns (fooled mask, points) over
    ``live``. Returns the adversarial points (the clean point where nothing fooled the model)."""
    x_adv = x.clone()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for t in range(targets.shape[1] if targets is not None else 1):
        for restart in range(restarts):
            live = (~fooled).nonzero()[:, 0]
            if len(live) == 0:
                return x_adv
            found, xa = one_run(live, targets[live, t] if targets is not None else None, restart + t * restarts)
            x_adv[live[found]] = xa[found]
            fooled[live[found]] = True
    return x_adv


def labels_loss(y: torch.Tensor, loss: str, target: torch.Tensor | None = None):
    """``attack_loss`` as a loop loss: the labels (and targets) of the examples still live."""
    return lambda z, live: attack_loss(z, y[live], loss, target[live] if target is not None else None)


_MULTIPLIERS: dict = {}
CYCLE_WINDOW = 32  # an iterate is compared with the last 32: a longer cycle runs on (slower, never wrong)


def _fingerprint(d: torch.Tensor) -> torch.Tensor:
    """(batch, 2) fingerprints of each example's perturbation: two random projections in float64. Equal
    perturbations give equal fingerprints; two different ones share both only by a coincidence of about
    2**-100, so no example is ever stopped by mistake."""
    key = (d[0].numel(), str(d.device))
    if key not in _MULTIPLIERS:
        g = torch.Generator().manual_seed(20251)
        _MULTIPLIERS[key] = torch.randn(key[0], 2, generator=g, dtype=torch.float64).to(d.device)
    return d.detach().flatten(1).double() @ _MULTIPLIERS[key]


@dataclass
class _Live:
    """The examples still attacked: their positions in the batch, inputs, labels and perturbations."""

    idx: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor | None
    delta: torch.Tensor

    def keep(self, mask: torch.Tensor) -> None:
        self.idx, self.x, self.delta = self.idx[mask], self.x[mask], self.delta[mask]
        self.y = self.y[mask] if self.y is not None else None


@dataclass
class Ascent:
    """``steps`` projected ascent steps of size ``alpha`` in the ``eps`` ball of ``norm``."""

    norm: Norm | str
    eps: float
    alpha: float
    steps: int
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, live) -> per-example loss
    grad: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # (gradient, live) -> direction
    inputs: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor] | None = None  # (x + d, step, live)
    precision: str = "fp32"
    cycles: bool = False  # with ``stop``: drop an example whose iterate repeats an earlier one (see run)

    def run(
        self, model, x: torch.Tensor, start: torch.Tensor, stop: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(fooled mask or None, adversarial points) from ``x + start``. With ``stop`` (the labels) an
        example stops at its first misclassified iterate (the final one included); the others end at the
        last iterate.

        With ``cycles`` (Doldo et al. 2025, "Stop Walking in Circles!"), an example leaves the batch, not
        fooled, as soon as its iterate equals one of its earlier iterates. Without hooks each step depends on
        the iterate alone, so from there the run would only repeat iterates already found correctly
        classified: the outcome is exactly that of the full run. Iterates are compared by fingerprints, each
        with the last ``CYCLE_WINDOW`` before it."""
        norm = get_norm(self.norm)
        out = x.clone()
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device) if stop is not None else None
        live = _Live(torch.arange(len(x), device=x.device), x, stop, start.detach())
        track = None
        if self.cycles and stop is not None and self.grad is None and self.inputs is None:
            track = torch.zeros(self.steps + 1, len(x), 2, dtype=torch.float64, device=x.device)
            track[0] = _fingerprint(live.delta)
        for step in range(self.steps + (stop is not None)):
            z, g = self._forward(model, live, step)
            if found is not None:
                hit = self._fooled(model, z, live)
                if hit.any():  # keep each fooled example's point and drop it from the batch
                    out[live.idx[hit]] = live.x[hit] + live.delta[hit]
                    found[live.idx[hit]] = True
                    if hit.all():
                        return found, out
                    live.keep(~hit)
                    g = g[~hit] if g is not None else None
            if g is None:  # the check after the last step
                break
            live.delta = ascend(
                live.x, live.delta, self.grad(g, live.idx) if self.grad else g, self.alpha, self.eps, norm
            )
            if track is not None:
                cycled = _cycled(track, step, live)
                if cycled.any():
                    if cycled.all():
                        return found, out
                    live.keep(~cycled)
        out[live.idx] = (live.x + live.delta).detach()
        return found, out

    def _forward(self, model, live: _Live, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The logits at the live iterates and, before the last step, the loss's gradient in the
        perturbation."""
        live.delta.requires_grad_(True)
        xin = self.inputs(live.x + live.delta, step, live.idx) if self.inputs else live.x + live.delta
        with torch.autocast(xin.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            z = model(xin).float()
        g = torch.autograd.grad(self.loss(z, live.idx).sum(), live.delta)[0] if step < self.steps else None
        live.delta = live.delta.detach()
        return z.detach(), g

    def _fooled(self, model, z: torch.Tensor, live: _Live) -> torch.Tensor:
        """Which live examples the logits ``z`` misclassify; a bf16 verdict is only a candidate that the
        fp32 model must confirm."""
        y = live.y
        assert y is not None  # run checks only with labels
        hit: torch.Tensor = z.argmax(1) != y
        if self.precision == "bf16" and hit.any():
            with torch.no_grad():
                hit[hit.clone()] = model((live.x + live.delta)[hit]).argmax(1) != y[hit]
        return hit


def _cycled(track: torch.Tensor, step: int, live: _Live) -> torch.Tensor:
    """Which live examples' new iterate equals one of their last ``CYCLE_WINDOW`` (``track`` keeps every
    example's fingerprint per step)."""
    h = _fingerprint(live.delta)
    cycled = (track[max(0, step + 1 - CYCLE_WINDOW) : step + 1, live.idx] == h).all(2).any(0)
    track[step + 1, live.idx] = h
    return cycled
