"""Any Foolbox 3 attack by class name: ``fb:NAME`` or ``fb:NAME(key=value, ...)``."""

from __future__ import annotations

import inspect

import torch

from ..errors import RobenchError, unknown
from .base import Attack, AttackOutput, example_seed
from .registry import ATTACKS

_DISTANCES = {"linf": "Linf", "l2": "L2", "l1": "L1", "l0": "L0"}
# Foolbox attacks that never read a gradient: decision-based (Boundary, HopSkipJump, Pointwise), the genetic
# GenAttack, and the noise, blur, contrast and search attacks
GRADIENT_FREE = (
    "BoundaryAttack",
    "HopSkipJumpAttack",
    "PointwiseAttack",
    "GenAttack",
    "GaussianBlurAttack",
    "SaltAndPepperNoiseAttack",
    "BinarizationRefinementAttack",
    "DatasetAttack",
    "InversionAttack",
    "SpatialAttack",
)


def gradient_free(cls_name: str) -> bool:
    return cls_name in GRADIENT_FREE or any(w in cls_name for w in ("Noise", "ContrastReduction"))


def _norm_of(attack) -> str | None:
    """The norm a Foolbox attack measures its eps in (its ``distance``: "Linf distance", "L2 distance")."""
    dist = getattr(attack, "distance", None)
    word = str(dist).split()[0].lower() if dist is not None else ""
    return _DISTANCES.get(word)


@ATTACKS.register(prefix="fb:")
class FoolboxAttack(Attack):
    def __init__(self, cls_name: str, options: dict):
        import foolbox.attacks as fa

        cls = getattr(fa, cls_name, None)
        names = [n for n in dir(fa) if n.endswith("Attack") or n.endswith("PGD") or n in ("FGSM", "FGM")]
        if not (inspect.isclass(cls) and issubclass(cls, fa.base.Attack)):
            raise unknown("Foolbox attack", cls_name, names)
        sig = inspect.signature(cls.__init__)
        bad = [k for k in options if k not in sig.parameters or k == "self"]
        if bad:
            valid = [p for p in sig.parameters if p not in ("self", "kwargs")]
            raise RobenchError(f"fb:{cls_name} has no option {bad[0]}; its options are {', '.join(valid)}.")
        for k, v in options.items():
            default = sig.parameters[k].default
            if not _same_kind(v, default):
                raise RobenchError(
                    f"fb:{cls_name} option {k} must be {_kind(default)} like its default {default!r}, not {v!r}."[:400]
                )
        try:
            self.attack = cls(**options)
        except (TypeError, ValueError) as e:
            raise RobenchError(f"fb:{cls_name} rejected its options ({e}).") from None
        self.cls_name, self.options = cls_name, options
        self.name = f"fb:{cls_name}"
        defaults = {
            k: p.default
            for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty and _plain(p.default)
        }
        self._budget = {**defaults, **options}
        self.norm = _norm_of(self.attack)

    @classmethod
    def from_spec(cls, name: str, opts: dict, spec: str, **context) -> FoolboxAttack:
        return cls(name[3:], opts)  # Foolbox's own signature checks the options

    @classmethod
    def spec_of(cls, budget: dict) -> str:
        opts = {k: v for k, v in budget.items() if k not in ("name", "norm", "implementation")}
        return f"{budget['name']}({','.join(f'{k}={v!r}' for k, v in opts.items())})" if opts else budget["name"]

    @classmethod
    def is_black_box(cls, name: str) -> bool:
        return gradient_free(name[3:].partition("(")[0])

    def budget(self) -> dict:
        import foolbox

        return {
            "name": self.name,
            **{k: v for k, v in self._budget.items()},
            "norm": self.norm,
            "implementation": f"foolbox {foolbox.__version__}",
        }

    def check_norm(self, norm: str) -> None:
        if self.norm and self.norm != norm:
            raise RobenchError(f"{self.name} is an {self.norm} attack; run it with --norm {self.norm}.")

    def run(self, model, x, y, idx, eps, norm, seed) -> AttackOutput:
        import foolbox as fb

        self.check_norm(norm)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # Foolbox draws from torch's global generator
            torch.manual_seed(example_seed(seed, int(idx[0]) if len(idx) else 0, self.name))
            fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=x.device)
            _, clipped, _ = self.attack(fmodel, x, y, epsilons=eps)
        return AttackOutput(clipped.detach())


def _same_kind(value, default) -> bool:
    """A value of the kind the option's default is: a bool for a bool, a whole number for an int, a number
    for a float, a string for a string; anything plain where the default is None or not plain."""
    if not _plain(value):
        return False
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) == isinstance(default, bool) or default is None
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def _kind(default) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(
        type(default), "a plain value"
    )


def _plain(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))
