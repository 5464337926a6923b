"""The official AutoAttack, run through the PyPI package ``pyautoattack`` at its official budgets.

The cascade is run one member at a time on the examples still robust, exactly as
``run_standard_evaluation`` orders it (same robust subsets, same order, same batches, the member's seed
reset before it runs), so the per-example outcomes equal a direct pyautoattack run on the same batch, and
robench also knows which member broke each example. AutoAttack's checks (randomness, softmax outputs,
zero gradients ...) are captured as flags instead of lost in a log.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from ..config import validate_types
from ..errors import RobenchError, unknown
from .base import SAVED_STAGES, Attack, AttackOutput, report_stage
from .registry import ATTACKS

MEMBERS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        msg = "AutoAttack: " + record.getMessage().split(" See flags_doc.md")[0]
        if msg not in self.messages:
            self.messages.append(msg)


@contextmanager
def _captured_warnings():
    logger = logging.getLogger("auto-attack")
    handler, old = _Capture(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = old


@ATTACKS.register("autoattack", *(f"autoattack:{v}" for v in VERSIONS), *MEMBERS)
class AutoAttack(Attack):
    """``version``: standard, plus or rand; ``members``: a subset run with the version's settings."""

    def __init__(
        self,
        version: str = "standard",
        members: tuple[str, ...] | None = None,
        batch_size: int = 250,
        queries: int | None = None,
    ):
        if version not in VERSIONS:
            raise unknown("AutoAttack version", version, VERSIONS)
        for m in members or ():
            if m not in MEMBERS:
                raise unknown("AutoAttack member", m, MEMBERS)
        self.version, self.members = version, tuple(members or VERSIONS[version])
        self.batch_size = batch_size
        if queries is not None and (self.members != ("square",) or int(queries) < 1):
            raise RobenchError("Only square on its own takes a query budget, e.g. square(queries=1000).")
        self.queries = int(queries) if queries is not None else None
        self.name = (
            "autoattack"
            if version == "standard" and members is None
            else f"autoattack:{version}"
            if members is None
            else "+".join(self.members)
        )

    @classmethod
    def from_spec(cls, name: str, opts: dict, spec: str, batch_size: int = 250, **context) -> AutoAttack:
        low = name.lower()
        if low in MEMBERS:
            if opts and (low != "square" or set(opts) != {"queries"}):
                raise RobenchError(
                    f"{low} runs at AutoAttack's official budget and takes no options"
                    + (" but queries=N." if low == "square" else ".")
                )
            validate_types(opts, cls, f'Attack "{spec}"')
            if opts and opts["queries"] < 1:
                raise RobenchError(f'Attack "{spec}": queries must be at least 1.')
            return cls(
                "plus" if low in ("apgd-dlr", "fab") else "standard", members=(low,), batch_size=batch_size, **opts
            )
        if opts:
            raise RobenchError(
                "AutoAttack runs at its official budget and takes no options; use pgd(...) for a custom budget."
            )
        return cls(low.partition(":")[2] or "standard", batch_size=batch_size)

    @classmethod
    def spec_of(cls, budget: dict) -> str:
        queries = budget.get("members", {}).get("square", {}).get("queries")
        if budget["name"] == "square" and queries != 5000:
            return f"square(queries={queries})"
        return budget["name"]  # autoattack, autoattack:VERSION and single members run at the official budget

    @classmethod
    def is_black_box(cls, name: str) -> bool:
        return name == "square"

    def _adversary(self, model, device, eps, norm, seed):
        from pyautoattack import AutoAttack as Official

        adv = Official(model, device=device, eps=eps, norm=norm, seed=seed, version=self.version)
        adv.attacks_to_run = list(self.members)
        if self.queries is not None:
            adv.square.n_queries = self.queries
        return adv

    def budget(self) -> dict:
        import pyautoattack

        adv = self._adversary(torch.nn.Identity(), "cpu", 0.0, "Linf", 0)
        sub = {
            "apgd-ce": {"iters": adv.apgd.n_iter, "restarts": adv.apgd.n_restarts, "eot": adv.apgd.eot_iter},
            "apgd-dlr": {"iters": adv.apgd.n_iter, "restarts": adv.apgd.n_restarts, "eot": adv.apgd.eot_iter},
            "apgd-t": {
                "iters": adv.apgd_targeted.n_iter,
                "targets": adv.apgd_targeted.n_target_classes,
                "restarts": adv.apgd_targeted.n_restarts,
            },
            "fab": {"iters": adv.fab.n_iter, "restarts": adv.fab.n_restarts},
            "fab-t": {"iters": adv.fab.n_iter, "targets": adv.fab.n_target_classes, "restarts": 1},
            "square": {"queries": adv.square.n_queries, "p_init": adv.square.p_init, "restarts": adv.square.n_restarts},
        }
        return {
            "name": self.name,
            "version": self.version,
            "members": {m: sub[m] for m in self.members},
            "batch_size": self.batch_size,
            "implementation": f"pyautoattack {pyautoattack.__version__}",
        }

    def run(self, model, x, y, idx, eps, norm, seed) -> AttackOutput:
        if norm not in ("Linf", "L2"):
            raise RobenchError(f"robench runs AutoAttack for Linf and L2, not {norm}.")
        x_adv, broken_by = x.clone(), [None] * len(x)
        remaining = torch.arange(len(x), device=x.device)
        devices = [x.device] if x.device.type == "cuda" else []
        with _captured_warnings() as flags, torch.random.fork_rng(devices=devices):
            adv = self._adversary(model, x.device, eps, norm, seed)
            saved = SAVED_STAGES.get()
            for member in self.members:
                if len(remaining) == 0:
                    break
                report_stage(f"{self.name}: {member}", len(remaining), len(x))
                parts = (
                    self.name,
                    member,
                    eps,
                    norm,
                    seed,
                    self.batch_size,
                    self.queries,
                    idx[remaining.cpu()].tolist(),
                )
                kept = saved.load(parts) if saved is not None else None
                if kept is not None and not _fits(kept, len(remaining), x):
                    kept = None  # not what this member leaves on these examples (a damaged or forged stage)
                if kept is not None:  # this member finished on these very examples before an interruption
                    hit, xa_hit = kept["hit"].to(x.device), kept["x"].to(x.device, x.dtype)
                else:
                    adv.attacks_to_run = [member]
                    xa, ya = adv.run_standard_evaluation(x[remaining], y[remaining], batch_size=self.batch_size)
                    hit = ya != y[remaining]
                    xa_hit = xa[hit].to(x.dtype)
                    if saved is not None:
                        saved.save(parts, {"hit": hit.cpu(), "x": xa_hit.cpu()})
                x_adv[remaining[hit]] = xa_hit
                for i in remaining[hit].tolist():
                    broken_by[i] = member
                remaining = remaining[~hit]
        return AttackOutput(x_adv, broken_by=broken_by, flags=list(flags))


def _fits(stage, n: int, x: torch.Tensor) -> bool:
    """Whether a stored stage is one member's result on ``n`` examples like ``x``: a boolean hit per example
    and one adversarial input per hit."""
    hit, xa = (stage.get("hit"), stage.get("x")) if isinstance(stage, dict) else (None, None)
    return (
        isinstance(hit, torch.Tensor)
        and hit.dtype == torch.bool
        and tuple(hit.shape) == (n,)
        and isinstance(xa, torch.Tensor)
        and xa.is_floating_point()
        and tuple(xa.shape) == (int(hit.sum()), *x.shape[1:])
    )
