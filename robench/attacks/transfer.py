"""Attacks that craft adversarial examples on a surrogate for transfer to other models: PGD/I-FGSM, MI-FGSM
(Dong et al. 2018, momentum on L1-normalised gradients) and DI-FGSM (Xie et al. 2019, random resize and pad
of the input at each step). All steps always run (stopping once the surrogate is fooled would make weaker
transfer examples), and every random draw comes from the example's own seed, so the crafted examples do
not depend on the batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._version import __version__
from ..config import LOSSES
from ..errors import RobenchError, unknown
from ..norms import random_starts
from .base import Attack, AttackOutput, example_seed
from .descent import Ascent, labels_loss
from .registry import TRANSFER

METHODS = ("pgd", "mifgsm", "difgsm")


class Ensemble(nn.Module):
    """The mean of the members' logits (the usual ensemble surrogate)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        return torch.stack([m(x) for m in self.members]).mean(0)


@TRANSFER.register(*METHODS)
class TransferAttack(Attack):
    """``pgd`` (random start, step 2.5*eps/steps), ``mifgsm`` (decay 1.0, step eps/steps) and ``difgsm``
    (diversity on, decay 0 unless given). ``decay`` > 0 adds momentum to any of them."""

    def __init__(
        self,
        method: str = "mifgsm",
        steps: int = 10,
        rel_step_size: float | None = None,
        decay: float | None = None,
        random_start: bool | None = None,
        resize_rate: float = 0.9,
        diversity_prob: float = 0.5,
        loss: str = "ce",
    ):
        if method not in METHODS:
            raise unknown("transfer attack", method, METHODS)
        if steps < 1:
            raise RobenchError("A transfer attack needs at least one step.")
        if not 0 <= diversity_prob <= 1 or resize_rate <= 0:
            raise RobenchError("--diversity-prob must lie in [0, 1] and --resize-rate must be positive.")
        if loss not in LOSSES:
            raise RobenchError(f'Transfer loss "{loss}" is not one of {", ".join(LOSSES)}.')
        self.method, self.steps, self.loss = method, steps, loss
        self.name = method
        self.rel_step_size = rel_step_size if rel_step_size is not None else (2.5 if method == "pgd" else 1.0)
        self.decay = decay if decay is not None else (1.0 if method == "mifgsm" else 0.0)
        self.random_start = random_start if random_start is not None else method == "pgd"
        self.diverse = method == "difgsm"
        self.resize_rate, self.diversity_prob = resize_rate, diversity_prob

    @classmethod
    def from_spec(cls, name: str, opts: dict, spec: str, flags: dict | None = None, **context) -> TransferAttack:
        given = {k: v for k, v in (flags or {}).items() if v is not None}
        return cls(name.lower(), **{**given, **opts})

    @classmethod
    def spec_of(cls, budget: dict) -> str:
        opts = {
            "steps": budget["steps"],
            "rel_step_size": float(budget["step_size"].split("*")[0]),
            "decay": budget["decay"],
            "random_start": budget["random_start"],
            "loss": budget["loss"],
        }
        opts.update({k: budget[k] for k in ("resize_rate", "diversity_prob") if k in budget})
        return f"{budget['name']}({','.join(f'{k}={v!r}' for k, v in opts.items())})"

    def budget(self) -> dict:
        b = {
            "name": self.method,
            "steps": self.steps,
            "step_size": f"{self.rel_step_size:g}*eps/steps",
            "decay": self.decay,
            "random_start": self.random_start,
            "loss": self.loss,
        }
        if self.diverse:
            b.update(resize_rate=self.resize_rate, diversity_prob=self.diversity_prob)
        b["version"] = f"robench {__version__}"
        return b

    def craft(
        self, model, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, eps: float, norm: str, seed: int
    ) -> torch.Tensor:
        """Adversarial examples for ``x`` on ``model`` (the last iterate)."""
        ids = idx.tolist()
        if self.random_start:
            start = random_starts(x, eps, norm, [example_seed(seed, i, norm, "transfer-start") for i in ids])
        else:
            start = torch.zeros_like(x)
        ascent = Ascent(
            norm,
            eps,
            self.rel_step_size * eps / self.steps,
            self.steps,
            labels_loss(y, self.loss),
            grad=self._momentum(x) if self.decay else None,
            inputs=(lambda xin, step, live: self._diversify(xin, [ids[i] for i in live.tolist()], seed, step))
            if self.diverse
            else None,
        )
        return ascent.run(model, x, start)[1]

    def run(self, model, x, y, idx, eps, norm, seed) -> AttackOutput:
        return AttackOutput(self.craft(model, x, y, idx, eps, norm, seed))

    def _momentum(self, x: torch.Tensor):
        """MI-FGSM's direction: the decayed sum of the L1-normalised gradients so far, per example."""
        momentum = torch.zeros_like(x)

        def direction(g, live):
            g = g / g.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            momentum[live] = self.decay * momentum[live] + g
            return momentum[live]

        return direction

    def _diversify(self, x: torch.Tensor, ids: list[int], seed: int, step: int) -> torch.Tensor:
        """Per example, with probability ``diversity_prob``: resize to a random size between the image size
        and ``resize_rate`` times it, pad at a random place to the larger of the two, and resize back to the
        input size (so any model takes it)."""
        size = x.shape[-1]
        other = max(1, int(size * self.resize_rate))
        low, high = min(size, other), max(size, other)
        out = x.clone()
        groups: dict[tuple[int, int, int], list[int]] = {}
        for j, i in enumerate(ids):
            g = torch.Generator().manual_seed(example_seed(seed, i, step, "diverse"))
            if torch.rand((), generator=g) >= self.diversity_prob:
                continue
            rnd = int(torch.randint(low, high + 1, (), generator=g))
            top = int(torch.randint(0, high - rnd + 1, (), generator=g))
            left = int(torch.randint(0, high - rnd + 1, (), generator=g))
            groups.setdefault((rnd, top, left), []).append(j)
        for (rnd, top, left), js in groups.items():
            part = F.interpolate(x[js], size=(rnd, rnd), mode="nearest")
            part = F.pad(part, (left, high - rnd - left, top, high - rnd - top))
            if high != size:
                part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False)
            out[js] = part
        return out
