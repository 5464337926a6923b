"""robench's own PGD (Madry et al.) for Linf and L2; FGSM is its one-step case.

Random start, restarts, step size (default 2.5*eps/steps), losses ce / dlr / margin, untargeted or
targeted (each of the top-k wrong classes in turn, as APGD-T does), and ``precision=bf16`` for steps under
bf16 autocast (faster on GPUs and bf16-capable CPUs; an example counts as fooled only when the fp32 model
agrees, and the engine re-checks every final verdict in fp32 again). Success counts at any iterate: an
example leaves the batch the moment it is misclassified, and its adversarial point is kept.
"""

from __future__ import annotations

import torch

from .._version import __version__
from ..config import LOSSES
from ..errors import RobenchError
from ..norms import random_starts
from .base import Attack, AttackOutput, example_seed
from .descent import PRECISIONS, Ascent, labels_loss, rounds, target_classes
from .registry import ATTACKS


@ATTACKS.register("pgd")
class PGD(Attack):
    name = "pgd"

    def __init__(
        self,
        steps: int = 20,
        restarts: int = 1,
        step_size: float | None = None,
        rel_step_size: float = 2.5,
        loss: str = "ce",
        random_start: bool = True,
        targeted: bool = False,
        targets: int = 9,
        precision: str = "fp32",
        cycles: bool = True,
    ):
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
        self.cycles = cycles  # stop examples whose iterates cycle: exactly the same outcome, so not in the budget

    def budget(self) -> dict:
        size = self.step_size if self.step_size is not None else f"{self.rel_step_size:g}*eps/steps"
        b = {
            "name": self.name,
            "steps": self.steps,
            "restarts": self.restarts,
            "step_size": size,
            "loss": self.loss,
            "random_start": self.random_start,
            "targeted": self.targeted,
        }
        if self.targeted:
            b["targets"] = self.targets
        if self.precision != "fp32":  # fp32 budgets stay as they were, so stored runs keep their keys
            b["precision"] = self.precision
        b["version"] = f"robench {__version__}"
        return b

    @classmethod
    def defaults(cls, context: dict) -> dict:
        return context.get("pgd") or {}  # the --pgd-* flags

    @classmethod
    def spec_of(cls, budget: dict) -> str:
        size = budget["step_size"]
        step = f"rel_step_size={float(size.split('*')[0])!r}" if isinstance(size, str) else f"step_size={size!r}"
        opts = [
            f"steps={budget['steps']}",
            f"restarts={budget['restarts']}",
            step,
            f"loss={budget['loss']}",
            f"random_start={budget['random_start']}",
            f"targeted={budget['targeted']}",
        ]
        if budget.get("targeted"):
            opts.append(f"targets={budget['targets']}")
        if budget.get("precision"):
            opts.append(f"precision={budget['precision']}")
        return f"pgd({','.join(opts)})"

    def alpha(self, eps: float) -> float:
        return self.step_size if self.step_size is not None else self.rel_step_size * eps / self.steps

    def _start(self, x, idx, eps, norm, seed, restart):
        """A random start drawn per example from its own generator, so the result does not depend on how
        examples are batched."""
        if not self.random_start:
            return torch.zeros_like(x)
        return random_starts(x, eps, norm, [example_seed(seed, i, restart, norm, "pgd-start") for i in idx.tolist()])

    def run(self, model, x, y, idx, eps, norm, seed) -> AttackOutput:
        targets = target_classes(model, x, y, self.targets, "rank", norm) if self.targeted else None
        return AttackOutput(
            rounds(
                x,
                targets,
                self.restarts,
                lambda live, target, r: self._one_run(
                    model, x[live], y[live], target, idx[live.cpu()], eps, norm, seed, r
                ),
            )
        )

    def _one_run(self, model, x, y, target, idx, eps, norm, seed, restart):
        """One PGD run; returns (fooled mask, adversarial points) over the batch."""
        ascent = Ascent(
            norm,
            eps,
            self.alpha(eps),
            self.steps,
            labels_loss(y, self.loss, target),
            precision=self.precision,
            cycles=self.cycles,
        )
        return ascent.run(model, x, self._start(x, idx, eps, norm, seed, restart), stop=y)


@ATTACKS.register("fgsm")
class FGSM(PGD):
    """One step of size eps from the clean point (Goodfellow et al. 2015)."""

    name = "fgsm"

    def __init__(self, loss: str = "ce"):
        super().__init__(steps=1, restarts=1, rel_step_size=1.0, loss=loss, random_start=False)

    @classmethod
    def defaults(cls, context: dict) -> dict:
        return {}  # the --pgd-* flags are PGD's

    @classmethod
    def spec_of(cls, budget: dict) -> str:
        return f"fgsm(loss={budget['loss']})"
