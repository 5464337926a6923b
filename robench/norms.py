"""The threat models robench's own attacks and checks know: each norm a small object with its distance,
projection into the eps ball, steepest-ascent step, random start and the diameter of the [0, 1] box
(as Foolbox 3's LinfBaseGradientDescent / L2BaseGradientDescent split them). The gradient attacks ask this
module for everything that depends on the norm. Two attacks choose per-norm code of their own by the norm's
name: Square's random search (a different proposal per norm, in attacks/square.py) and the official
AutoAttack, which robench runs for Linf and L2 only.
"""

from __future__ import annotations

import math

import torch

from .registry import Registry


def _view(t: torch.Tensor) -> tuple[int, ...]:
    return (-1,) + (1,) * (t.dim() - 1)


class Norm:
    name: str = ""

    def distance(self, d: torch.Tensor) -> torch.Tensor:
        """Per-example size of the perturbations ``d`` (first dimension: examples)."""
        raise NotImplementedError

    def project(self, d: torch.Tensor, eps: float) -> torch.Tensor:
        """``d`` moved into the eps ball (the closest point, per example)."""
        raise NotImplementedError

    def step(self, g: torch.Tensor, alpha: float) -> torch.Tensor:
        """A step of size ``alpha`` along the steepest-ascent direction of the gradient ``g``."""
        raise NotImplementedError

    def dual(self, g: torch.Tensor) -> torch.Tensor:
        """The dual norm of ``g`` along its last dimension: how far a linear function with gradient ``g`` can
        move per unit of this norm."""
        raise NotImplementedError

    def draw(self, shape: tuple[int, ...], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """The random draws of one start of ``shape`` (CPU, from ``generator``)."""
        raise NotImplementedError

    def start(self, draws: tuple[torch.Tensor, ...], eps: float) -> torch.Tensor:
        """A random point of the eps ball from ``draw``'s draws (concatenated over examples)."""
        raise NotImplementedError

    def diameter(self, numel: int) -> float:
        """The largest distance between two inputs in [0, 1]^numel."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


# every norm registers one instance of itself below, under its ``name``
NORMS: Registry[Norm] = Registry("norm")


def _registered(cls: type[Norm]) -> type[Norm]:
    NORMS.add(cls.name, cls())
    return cls


@_registered
class Linf(Norm):
    name = "Linf"

    def distance(self, d):
        return d.flatten(1).abs().amax(1)

    def project(self, d, eps):
        return d.clamp(-eps, eps)

    def step(self, g, alpha):
        return alpha * g.sign()

    def dual(self, g):
        return g.abs().sum(-1)  # L1

    def draw(self, shape, generator):
        return (torch.rand(shape, generator=generator),)

    def start(self, draws, eps):
        return (2 * draws[0] - 1) * eps  # uniform in the cube

    def diameter(self, numel):
        return 1.0


@_registered
class L2(Norm):
    name = "L2"

    def distance(self, d):
        return d.flatten(1).norm(dim=1)

    def project(self, d, eps):
        return d * (eps / self.distance(d).clamp_min(1e-12)).clamp(max=1.0).view(_view(d))

    def step(self, g, alpha):
        return alpha * g / self.distance(g).clamp_min(1e-12).view(_view(g))

    def dual(self, g):
        return g.norm(dim=-1)  # L2 is its own dual

    def draw(self, shape, generator):
        return torch.randn(shape, generator=generator), torch.rand(
            (shape[0],) + (1,) * (len(shape) - 1), generator=generator
        )

    def start(self, draws, eps):
        u, r = draws  # a uniform direction, a uniform radius
        return u / u.flatten(1).norm(dim=1).clamp_min(1e-12).view(r.shape) * eps * r

    def diameter(self, numel):
        return math.sqrt(numel)


def get_norm(name: str | Norm) -> Norm:
    """The norm of this name (any case), or a RobenchError naming the known ones."""
    return name if isinstance(name, Norm) else NORMS.find(name)


def project(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str | Norm) -> torch.Tensor:
    """``x_adv`` moved into the eps ball around ``x`` and into [0, 1]."""
    return (x + get_norm(norm).project(x_adv - x, eps)).clamp(0.0, 1.0)


def ascend(
    x: torch.Tensor, delta: torch.Tensor, g: torch.Tensor, alpha: float, eps: float, norm: str | Norm
) -> torch.Tensor:
    """One projected ascent step: ``delta`` moved along the steepest direction of ``g``, then back into the
    eps ball and the [0, 1] box."""
    norm = get_norm(norm)
    with torch.no_grad():
        return (x + norm.project(delta + norm.step(g, alpha), eps)).clamp(0, 1) - x


def random_starts(x: torch.Tensor, eps: float, norm: str | Norm, seeds: list[int] | torch.Generator) -> torch.Tensor:
    """Random starts ``x + d`` kept in [0, 1], as perturbations ``d``: one generator draws the whole batch, or
    each example draws from a generator of its own seed (so a start does not depend on how examples are
    batched; only the draws are per example, the arithmetic is batched). Drawn on the CPU, so CPU and GPU
    runs start alike."""
    d = random_points(x, eps, norm, seeds)
    return (x + d).clamp(0, 1) - x


def random_points(x: torch.Tensor, eps: float, norm: str | Norm, seeds: list[int] | torch.Generator) -> torch.Tensor:
    """``random_starts`` before the [0, 1] box: points of the eps ball, on ``x``'s device."""
    norm = get_norm(norm)
    if isinstance(seeds, torch.Generator):
        draws = norm.draw(tuple(x.shape), seeds)
    else:
        one = (1,) + tuple(x.shape[1:])
        per = [norm.draw(one, torch.Generator().manual_seed(s)) for s in seeds]
        draws = tuple(torch.cat(parts) for parts in zip(*per))
    return norm.start(draws, eps).to(x.device, x.dtype)
