"""The one small protocol every attack fits (as Foolbox 3's base does).

An attack gets the model (eval mode, parameter gradients off), a batch of clean examples that are still
robust, their dataset indices (for per-example seeding) and one eps; it returns candidate adversarial
inputs. It never decides success: the engine projects every candidate into the eps ball and [0, 1] and
re-checks it with an fp32 forward pass, so no attack can over-report.
"""

from __future__ import annotations

import contextvars
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from ..config import validate_types


@dataclass
class AttackOutput:
    x_adv: torch.Tensor
    broken_by: list[str] | None = None  # which member broke each example (for cascades such as AutoAttack)
    flags: list[str] = field(default_factory=list)  # warnings the attack raised (AutoAttack's checks)
    # per example, the smallest margin of the true logit over the best other one that the attack reached
    # (descent.closeness; negative once fooled), for attacks that track it: a cascade can spend more on
    # the examples that came closest
    closest: torch.Tensor | None = None


class Attack(ABC):
    name: str = "attack"

    @abstractmethod
    def budget(self) -> dict:
        """The full budget: every setting that changes the result (steps, step size, restarts, queries...)."""

    @abstractmethod
    def run(
        self, model, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, eps: float, norm: str, seed: int
    ) -> AttackOutput:
        """Candidate adversarial examples for ``x`` (shape preserved)."""

    @classmethod
    def from_spec(cls, name: str, opts: dict, spec: str, **context) -> Attack:
        """The attack a spec names (``name(opts)``); ``context`` holds what the caller knows (the --pgd-*
        flags, the batch size), which each class reads or ignores. A wrong type is one sentence; an unknown
        option raises TypeError, which the registry words."""
        validate_types(opts, cls, f'Attack "{spec}"')
        return cls(**{**cls.defaults(context), **opts})

    @classmethod
    def defaults(cls, context: dict) -> dict:
        """Options the caller's context supplies where the spec is silent."""
        return {}

    @classmethod
    def spec_of(cls, budget: dict) -> str:
        """The inverse of ``budget``: a spec that builds this attack again."""
        return budget["name"]

    @classmethod
    def is_black_box(cls, name: str) -> bool:
        """Whether the attack of this name reads only the model's outputs (never a gradient)."""
        return False

    def check_norm(self, norm: str) -> None:
        """Raise a RobenchError when this attack cannot run at ``norm``; called before a run opens."""

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.budget().items() if k != 'name')})"


def example_seed(*parts) -> int:
    """A 63-bit seed from any parts (seed, example index, restart ...), stable across runs and machines."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


# Progress inside a batch: the engine sets a hook; an attack (or a stage of a cascade, such as an AutoAttack
# member) says which stage starts and how many of the batch's examples are still robust.
STAGE_HOOK: contextvars.ContextVar = contextvars.ContextVar("robench_stage_hook", default=None)


def report_stage(stage: str, robust: int, attacked: int) -> None:
    """``stage`` starts on the ``robust`` examples of the ``attacked`` in this batch that are still robust."""
    hook = STAGE_HOOK.get()
    if hook is not None:
        hook(stage, robust, attacked)


# Stages of an unfinished batch kept across an interruption: the engine sets an object with
# ``load(parts) -> dict of tensors | None`` and ``save(parts, tensors)``; a slow cascade (AutoAttack) keys each
# member's result by everything it depends on (eps, norm, seed, the member, the examples it ran on), so a
# resumed batch reuses exactly the results a full run would compute again.
SAVED_STAGES: contextvars.ContextVar = contextvars.ContextVar("robench_saved_stages", default=None)
