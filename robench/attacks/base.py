"""The one small protocol every attack fits (as Foolbox 3's base does).

An attack gets the model (eval mode, parameter gradients off), a batch of clean examples that are still
robust, their dataset indices (for per-example seeding) and one eps; it returns candidate adversarial
inputs. It never decides success: the engine projects every candidate into the eps ball and [0, 1] and
re-checks it with an fp32 forward pass, so no attack can over-report.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch


@dataclass
class AttackOutput:
    x_adv: torch.Tensor
    broken_by: list[str] | None = None  # which member broke each example (for cascades such as AutoAttack)
    flags: list[str] = field(default_factory=list)  # warnings the attack raised (AutoAttack's checks)


class Attack(ABC):
    name: str = "attack"

    @abstractmethod
    def budget(self) -> dict:
        """The full budget: every setting that changes the result (steps, step size, restarts, queries...)."""

    @abstractmethod
    def run(self, model, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, eps: float, norm: str,
            seed: int) -> AttackOutput:
        """Candidate adversarial examples for ``x`` (shape preserved)."""

    def check_norm(self, norm: str) -> None:
        """Raise a RobenchError when this attack cannot run at ``norm``; called before a run opens."""

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.budget().items() if k != 'name')})"


def example_seed(*parts) -> int:
    """A 63-bit seed from any parts (seed, example index, restart ...), stable across runs and machines."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1
