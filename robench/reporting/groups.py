"""Groups of models that differ only in their activation (same dataset, norm, architecture, training method
and training eps), built from the results store's rows, and which ReLU member each model is compared with.
The report's sections (compare, seeds, claims, anomaly) all read these."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ..results.names import safe_name
from ..text import md
from .leaderboard import model_outcome_sets, ranking_flags, run_flags


@dataclass
class Member:
    sha256: str
    model_id: str
    activation: str
    checkpoint: str
    by_eps: dict[str, dict[str, dict[int, int]]]  # eps -> metric -> {idx: right}
    # eps -> the flags of its rows at that eps: a flag belongs to the eps it was measured at
    flags: dict[str, list[str]] = field(default_factory=dict)
    # eps -> the flags that speak of its ranked accuracy there (leaderboard.ranking_flags)
    unreliable: dict[str, list[str]] = field(default_factory=dict)
    label: str = ""  # its name in the report: the activation, or the model id where two share one (Markdown-escaped)
    seed: object = None  # the training seed its metadata records (None when it records none)
    # what the store recorded about its activations (learned parameters, curves, shape); None: not recorded
    record: dict | None = None


@dataclass
class Group:
    dataset: str
    norm: str
    arch: str
    method: str
    train_eps: str
    members: list[Member] = field(default_factory=list)

    @property
    def slug(self) -> str:
        parts = [self.dataset, self.arch, self.method or "model"] + ([f"eps{self.train_eps}"] if self.train_eps else [])
        return safe_name(*parts).lower()

    @property
    def title(self) -> str:
        """The group's name as text (pages escape it as HTML; figures draw it as written)."""
        how = f"{self.method or 'unknown training'}" + (f" at eps {self.train_eps}" if self.train_eps else "")
        return f"{self.arch}, {how} ({self.dataset}, {self.norm})"

    @property
    def md_title(self) -> str:
        """The group's name inside Markdown (``text.md``: unchanged for ordinary names)."""
        return md(self.title)


def groups(res: pd.DataFrame, sets: dict | None = None) -> list[Group]:
    """Models grouped by what they share besides the activation; only groups of two or more (``sets``:
    ``model_outcome_sets(res)`` where the caller has them)."""
    if res.empty:
        return []
    sets = sets if sets is not None else model_outcome_sets(res)
    found: dict[tuple, Group] = {}
    for (dataset, norm, sha), m in res.groupby(["dataset", "norm", "sha256"], sort=True):
        last = m.sort_values("run_id").iloc[-1]
        meta = last["meta"]
        recipe = meta.get("recipe") or {}
        key = (
            dataset,
            norm,
            meta.get("arch", "?"),
            meta.get("training_method", ""),
            str(recipe.get("eps") or "") if meta.get("training_method") not in (None, "", "standard") else "",
        )
        group = found.setdefault(key, Group(*key))
        by_eps = {eps: sets[(dataset, norm, sha, eps)] for eps in sorted(m["eps"].unique())}
        group.members.append(
            Member(
                sha,
                last["model_id"],
                meta.get("activation", "?"),
                last["checkpoint"] or "",
                by_eps,
                {eps: run_flags(m[m.eps == eps]) for eps in by_eps},
                {eps: ranking_flags(m[m.eps == eps]) for eps in by_eps},
                seed=recipe.get("seed"),
                record=last.get("record"),
            )
        )
    out = []
    for key in sorted(found):
        g = found[key]
        if len(g.members) < 2:
            continue
        g.members.sort(key=lambda mb: (mb.activation != "relu", mb.activation, mb.model_id))
        acts = [mb.activation for mb in g.members]
        for mb in g.members:
            mb.label = md(mb.activation if acts.count(mb.activation) == 1 else mb.model_id)
        out.append(g)
    return out


def eps_value(text: str) -> float:
    from ..config import parse_eps

    return parse_eps(text).value


def comparison_eps(g: Group) -> str:
    """The eps the tables use: where the most members have AutoAttack, then where all have a best known
    result, preferring the training eps, then an eps at which some member keeps any robust accuracy (at one
    where every model is at 0% there is nothing to compare), then the largest."""
    all_eps = sorted({e for mb in g.members for e in mb.by_eps}, key=eps_value)

    def score(e):
        aa = sum("autoattack" in mb.by_eps.get(e, {}) for mb in g.members)
        known = sum("best_known" in mb.by_eps.get(e, {}) for mb in g.members)
        robust = any(any((mb.by_eps.get(e, {}).get("best_known") or {}).values()) for mb in g.members)
        return aa, known, e == g.train_eps, robust, eps_value(e)

    return max(all_eps, key=score)


def best_known(g: Group, mb: Member, eps: str) -> dict[int, int] | None:
    """``mb``'s best known outcomes at ``eps`` where they can stand beside the other members': when any member
    has AutoAttack at ``eps``, only those of a member that has it too. A best known accuracy without AutoAttack
    rests on weaker attacks, and set against one with it would favour the model that was attacked less."""
    s = mb.by_eps.get(eps, {})
    if "autoattack" not in s and any("autoattack" in m.by_eps.get(eps, {}) for m in g.members):
        return None
    return s.get("best_known")


def set_aside(g: Group, eps: str) -> list[Member]:
    """The members whose best known outcomes at ``eps`` exist but `best_known` sets aside (no AutoAttack where
    others have it): the report marks them † and names them."""
    return [mb for mb in g.members if mb.by_eps.get(eps, {}).get("best_known") and not best_known(g, mb, eps)]


def comparable(a: Member, b: Member, eps: str) -> bool:
    """Whether the best known accuracies of ``a`` and ``b`` at ``eps`` may be set against each other: both
    include AutoAttack or neither does (otherwise the one attacked less would look more robust)."""
    return ("autoattack" in a.by_eps.get(eps, {})) == ("autoattack" in b.by_eps.get(eps, {}))


def reference(g: Group, mb: Member) -> Member | None:
    """The ReLU member ``mb`` is compared with: the one trained with the same seed, else the first."""
    relus = [r for r in g.members if r.activation == "relu"]
    return next((r for r in relus if r.seed == mb.seed), relus[0] if relus else None)


def compared(g: Group) -> list[Member]:
    """The members compared against ReLU: every non-ReLU member, when the group has a ReLU member."""
    return [mb for mb in g.members if mb.activation != "relu"] if reference(g, g.members[0]) else []
