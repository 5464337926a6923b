"""White-box evaluation: clean accuracy, a cascade of attacks over an ascending eps sweep, per-example worst
case, batch by batch into the store (resumable), summarised with n and Wilson 95% intervals.

Per batch: clean prediction; for each eps in ascending order, each attack in turn sees only the examples
still robust (a perturbation that works at eps also works at any larger eps, so an example broken at a
smaller eps is not attacked again). Every candidate from an attack is projected into the eps ball and
[0, 1] and re-checked with an fp32 forward pass before it counts.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .. import __version__
from ..attacks.base import Attack, lp_norm, project
from ..attacks.registry import black_box, create_attack
from ..checkpoints import Checkpoint, load_checkpoint
from ..config import Eps, check_eps_range, parse_eps, parse_norm
from ..data import Split, dataset_info, load_split, select_indices
from ..errors import RobenchError
from ..nn.fast import accelerate
from ..reporting.stats import binom_above, wilson
from ..store import Store
from . import distributed
from .batching import auto_batch_size, parse_batch_size, resolve_device

SQUARE_MARGIN = 0.002  # AutoAttack's own rule: Square lowering robust accuracy by > 0.2 pt is suspicious
ALPHA = 0.05


def black_box_flags(broken: Counter, n: int, white_box: list[str]) -> list[str]:
    """A black-box attack later in a cascade broke examples every white-box attack left robust: flagged
    when that share is above AutoAttack's 0.2-point margin beyond sampling noise (one-sided exact binomial
    test at 5%), so one lucky example in fifty is not a flag but a real masking pattern is."""
    if not n or not white_box:
        return []
    out = []
    for name, k in sorted(broken.items()):
        if black_box(name) and k / n > SQUARE_MARGIN and (p := binom_above(k, n, SQUARE_MARGIN)) < ALPHA:
            out.append(f"{name} (black-box) broke {k} of {n} examples ({k / n:.1%}) that the white-box attacks "
                       f"({', '.join(white_box)}) left robust, above AutoAttack's 0.2% margin (p={p:.2g}); the "
                       "white-box gradients may be masked.")
    return out


@dataclass
class Target:
    """A model to evaluate with what identifies it."""

    model: nn.Module
    name: str
    checkpoint: str | None
    sha256: str
    meta: dict


def as_target(item, i: int, trust: bool, overrides: dict) -> Target:
    if isinstance(item, nn.Module):
        h = hashlib.sha256()
        for k, v in item.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return Target(item.eval(), f"model{i}", None, h.hexdigest(), {})
    ck = item if isinstance(item, Checkpoint) else load_checkpoint(item, trust=trust, **overrides)
    return Target(ck.model, ck.name, str(ck.path) if ck.path else None, ck.sha256, ck.meta)


@contextmanager
def attack_mode(model: nn.Module):
    """Eval mode and parameter gradients off for the duration; the caller's settings come back after.
    Yields the model for attacks: the same weights, with the faster equivalent layers of
    ``robench.nn.fast`` on the CPU (bit-identical forward pass)."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield accelerate(model, next(iter(model.parameters()), torch.empty(0)).device)
    finally:
        for p, r in flags:
            p.requires_grad_(r)
        model.train(was_training)


def check_logits(out: torch.Tensor, batch: int, num_classes: int, name: str) -> None:
    """The model must return finite logits of shape (batch, num_classes), not probabilities."""
    if out.dim() != 2 or out.shape[0] != batch:
        raise RobenchError(f"{name} returns outputs of shape {tuple(out.shape)}; robench needs logits of "
                           f"shape (batch, classes).")
    if out.shape[1] != num_classes:
        raise RobenchError(f"{name} returns {out.shape[1]} outputs per example but the dataset has "
                           f"{num_classes} classes; check --dataset.")
    if not torch.isfinite(out).all():
        raise RobenchError(f"{name} returns NaN or Inf outputs on clean inputs; it cannot be evaluated.")
    if out.min() >= 0 and out.max() <= 1 and torch.allclose(out.sum(1), torch.ones(len(out), device=out.device),
                                                            atol=1e-4):
        raise RobenchError(f"{name} returns probabilities (its outputs sum to 1), which hide gradients from "
                           "attacks; remove the final softmax so that it returns logits.")


def run_key(t: Target, sl: "Slice", split: str, subset: str, seed: int, norm: str, budgets: list[dict],
            batch_size: int) -> str:
    """What identifies a run: the model's weights, the data itself (a fingerprint of the examples read, not
    only the dataset's name and indices), the eps sweep, every attack's full budget and the batch size."""
    payload = {"sha256": t.sha256, "dataset": sl.info.name, "split": split, "subset": subset, "seed": seed,
               "examples": hashlib.sha256(sl.idx.numpy().tobytes()).hexdigest(), "data": sl.data_sha256,
               "norm": norm,
               "eps": [repr(e.value) for e in sl.eps], "attacks": budgets,
               "batch_size": batch_size, "meta": {k: t.meta.get(k) for k in ("mean", "std")}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class Counted(nn.Module):
    """The model as an attack sees it: every forward pass adds its batch size to ``queries``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.queries = model, 0
        self.train(model.training)

    def forward(self, x):
        self.queries += int(x.shape[0])
        return self.model(x)


def attack_batch(model, x, y, idx, eps_list: list[Eps], attacks: list[Attack], norm: str, seed: int):
    """Clean and per-eps robust flags for one batch, which attack broke each example, the flags raised, and
    per attack and example index the (times attacked, model queries: the example's share of its batch's)."""
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    robust = clean.clone()
    rows, flags, queries = [], [], {}
    broken_by: list[str | None] = [None] * len(x)
    for eps in eps_list:
        for attack in attacks:
            live = robust.nonzero()[:, 0]
            if len(live) == 0:
                break
            counted = Counted(model)
            out = attack.run(counted, x[live], y[live], idx[live.cpu()], eps.value, norm, seed)
            per = queries.setdefault(attack.name, {})
            share = counted.queries / len(live)
            for i in idx[live.cpu()].tolist():
                e, q = per.get(i, (0, 0.0))
                per[i] = (e + 1, q + share)
            flags += [f for f in out.flags if f not in flags]
            x_adv = out.x_adv.to(x.device, torch.float32)
            excess = lp_norm(x_adv - x[live], norm) - eps.value
            if (excess > 1e-6 * max(1.0, eps.value)).any() or x_adv.min() < 0 or x_adv.max() > 1:
                x_adv = project(x[live], x_adv, eps.value, norm)
            with torch.no_grad():
                hit = model(x_adv).argmax(1) != y[live]
            for j in hit.nonzero()[:, 0].tolist():
                i = int(live[j])
                broken_by[i] = (out.broken_by[j] if out.broken_by and out.broken_by[j] else attack.name)
            robust[live[hit]] = False
        for j in range(len(x)):
            rows.append((eps.text, int(idx[j]), int(clean[j]), int(robust[j]),
                         broken_by[j] if not robust[j] and clean[j] else None))
    return rows, flags, queries


@dataclass
class Slice:
    """What a model is evaluated on: the dataset, its split, the example indices and the eps sweep."""

    info: object
    data: Split
    idx: torch.Tensor
    eps: list[Eps]

    @property
    def data_sha256(self) -> str:
        return self.data.fingerprint(self.idx)


def data_slice(t: Target, dataset: str | None, split: str, data_dir, splits: dict, eps_given: list[Eps], norm: str,
               n: int, seed: int, subset: str) -> Slice:
    """The dataset slice and eps sweep for ``t`` (its own dataset unless one is given); splits are loaded
    once into ``splits``."""
    ds = dataset or t.meta.get("dataset")
    if not ds:
        raise RobenchError(f"{t.checkpoint or t.name} carries no dataset; name it with --dataset.")
    info = dataset_info(ds)
    data = splits.get(info.name) or splits.setdefault(info.name, load_split(info.name, split, data_dir))
    eps_list = sorted(set(eps_given or [parse_eps(info.eps[norm])]))
    for e in eps_list:
        check_eps_range(e, norm, math.prod(info.shape))
    return Slice(info, data, select_indices(len(data), n, seed, subset), eps_list)


def check_model(model, sl: Slice, dev, name: str, input_shape=None) -> None:
    """Fail fast on a model that cannot take this dataset's images or does not return logits for it."""
    x0, _ = sl.data.batch(sl.idx[: min(len(sl.idx), 8)])
    want = tuple(input_shape or ())
    if tuple(x0.shape[1:]) != tuple(sl.info.shape) or (want and tuple(want) != tuple(x0.shape[1:])):
        have = "x".join(map(str, x0.shape[1:]))
        raise RobenchError(f"{name} takes inputs of shape {'x'.join(map(str, want or sl.info.shape))} but the "
                           f"{sl.info.name} images are {have}; check --dataset.")
    try:
        with torch.no_grad():
            out = model(x0.to(dev))
    except Exception as e:  # a model from a file may raise anything on inputs it was not made for
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ("re-export it with a dynamic batch dimension (torch.export.Dim)" if "Guard failed" in first
                else "check --dataset and the model's input channels")
        raise RobenchError(f"{name} fails on the {sl.info.name} images of shape {'x'.join(map(str, x0.shape[1:]))} "
                           f"({first[:200]}); {hint}.") from None
    check_logits(out, len(x0), sl.info.num_classes, name)


def run_fields(t: Target, sl: Slice, split: str, subset: str, seed: int, norm: str, budgets: list[dict],
               bs: int, dev) -> dict:
    """Everything a stored run records besides its outcomes."""
    return {"model": t.name, "checkpoint": t.checkpoint, "sha256": t.sha256, "dataset": sl.info.name,
            "split": split, "n": len(sl.idx), "subset": subset, "seed": seed, "norm": norm,
            "data_sha256": sl.data_sha256,
            "eps": [[e.text, e.value] for e in sl.eps], "attacks": budgets, "batch_size": bs, "device": str(dev),
            "dtype": "float32", "robench_version": __version__, "torch_version": torch.__version__,
            "model_meta": t.meta}


def evaluate(checkpoints, *, dataset: str | None = None, data_dir=None, split: str = "test", n: int = 1000,
             subset: str = "first", seed: int = 0, norm: str = "Linf", eps=None, attacks=("pgd",),
             pgd: dict | None = None, batch_size="auto", device: str = "auto", store=None, force: bool = False,
             trust: bool = False, arch: str | None = None, activation: str | None = None,
             progress: Callable[[dict], None] | None = None, cached_only: bool = False) -> pd.DataFrame | None:
    """Evaluate checkpoints (paths, Checkpoint objects or nn.Modules). One row per model x eps; the
    per-example outcomes are in ``df.attrs["outcomes"]`` (a DataFrame keyed by run_id). With
    ``cached_only``, return None unless every run is already finished in the store (nothing is attacked)."""
    if isinstance(checkpoints, (str, Path, nn.Module, Checkpoint)):
        checkpoints = [checkpoints]
    if not checkpoints:
        raise RobenchError("Name at least one checkpoint to evaluate.")
    norm = parse_norm(norm)
    if not attacks:
        raise RobenchError("Name at least one attack (e.g. --attack pgd), or none for clean accuracy only.")
    attacks = [a for a in attacks if str(a).strip().lower() != "none"] if len(attacks) == 1 else list(attacks)
    bs_given = parse_batch_size(batch_size)
    dev = resolve_device(device)
    eps_given = [parse_eps(e) for e in (eps or [])]
    for a in attacks:  # names, options and norms are checked before anything is loaded or stored
        create_attack(a, pgd=pgd, batch_size=bs_given or 1).check_norm(norm)
    overrides = {"arch": arch, "activation": activation, "dataset": dataset}
    splits: dict[str, Split] = {}
    rows, outcomes = [], []
    notify = progress or (lambda event: None)
    # every checkpoint and its data are checked before any attack runs, so a bad one fails fast
    targets = [as_target(c, i, trust, overrides) for i, c in enumerate(checkpoints)]
    slices = [data_slice(t, dataset, split, data_dir, splits, eps_given, norm, n, seed, subset) for t in targets]
    group = distributed.current()
    dev = group.device(dev)
    db = Store(store) if group.main else None  # under torchrun only rank 0 touches the store
    run_id = None
    try:
        for t, sl in zip(targets, slices):
            run_id = None
            info, data, idx, eps_list = sl.info, sl.data, sl.idx, sl.eps
            model = t.model.to(dev)
            with attack_mode(model) as fast:
                check_model(model, sl, dev, t.checkpoint or t.name, t.meta.get("input_shape"))
                bs = bs_given or auto_batch_size(fast, info.shape, dev, len(idx))
                atk = [create_attack(a, pgd=pgd, batch_size=bs) for a in attacks]
                for a in atk:
                    a.check_norm(norm)
                budgets = [a.budget() for a in atk]
                key = run_key(t, sl, split, subset, seed, norm, budgets, bs)
                if cached_only and (force or not db.is_done(key)):
                    return None
                run_id = status = todo = None
                if group.main:
                    fields = run_fields(t, sl, split, subset, seed, norm, budgets, bs, dev)
                    run_id, status = db.open_run(key, fields, force=force)
                    done = db.done_indices(run_id, len(eps_list)) if status != "done" else set(idx.tolist())
                    todo = [i for i in idx.tolist() if i not in done]
                    notify({"event": "start", "model": t.name, "run_id": run_id, "store": str(db.path),
                            "total": len(idx), "done": len(done), "attacks": [a.name for a in atk] or ["none"],
                            "resumed": bool(done) and status != "done", "cached": status == "done"})
                run_id, status, todo = group.broadcast((run_id, status, todo))
                step = bs * group.world
                for start in range(0, len(todo), step):
                    b = torch.tensor(distributed.shard(todo[start: start + step], group.rank, group.world),
                                     dtype=torch.long)
                    tic = time.perf_counter()
                    part = ([], [], {})
                    if len(b):
                        x, y = data.batch(b)
                        part = attack_batch(fast, x.to(dev), y.to(dev), b, eps_list, atk, norm, seed)
                    parts = group.gather(part)
                    if group.main:
                        batch_rows = [r for p in parts for r in p[0]]
                        flags = list(dict.fromkeys(f for p in parts for f in p[1]))
                        queries = {a: {i: v for p in parts for i, v in p[2].get(a, {}).items()}
                                   for a in dict.fromkeys(a for p in parts for a in p[2])}
                        db.add_batch(run_id, batch_rows, flags, time.perf_counter() - tic, queries)
                        notify({"event": "batch", "model": t.name, "run_id": run_id,
                                "done": len(idx) - len(todo) + min(start + step, len(todo)), "total": len(idx),
                                "robust": sum(r[3] for r in batch_rows if r[0] == eps_list[-1].text)})
                if group.main and status != "done":
                    db.finish(run_id)
            if not group.main:
                continue
            from .sanity import after_run

            after_run(db, model, sl, t, norm, dev)
            model.to("cpu")
            summary, per_example = summarize(db, run_id)
            rows += summary
            outcomes.append(per_example.assign(run_id=run_id, model=t.name))
            notify({"event": "end", "model": t.name, "run_id": run_id, "rows": summary})
    except Exception:
        if db is not None and run_id is not None:
            db.discard_if_empty(run_id)  # a failure leaves no empty run behind; stored batches resume
        raise
    finally:
        if db is not None:
            db.close()
    df = pd.DataFrame(rows)
    df.attrs["outcomes"] = pd.concat(outcomes, ignore_index=True) if outcomes else pd.DataFrame()
    return df


def summarize(db: Store, run_id: int) -> tuple[list[dict], pd.DataFrame]:
    """One row per eps of a stored run: accuracies in percent with n and Wilson 95% intervals."""
    run = db.run(run_id)
    oc = db.outcomes(run_id)
    names = [a["name"] for a in run["attacks"]]
    members = [m for a in run["attacks"] for m in (a.get("members") or {a["name"]: None})]
    white_box = [m for m in members if not black_box(m) and m not in ("none", "transfer")]
    checks = db.checks(run["sha256"], run["dataset"], run["norm"])
    model_flags = checks.loc[checks.status == "flag", "evidence"].tolist()
    queries = db.queries(run_id)
    rows = []
    for text, value in run["eps"]:
        o = oc[oc.eps == text]
        n = len(o)
        k_clean, k_rob = int(o.clean.sum()), int(o.robust.sum())
        c_lo, c_hi = wilson(k_clean, n)
        r_lo, r_hi = wilson(k_rob, n)
        broken = Counter(o.broken_by.dropna())
        flags = list(run["flags"]) + black_box_flags(broken, n, white_box) + model_flags
        rows.append({
            "model": run["model"], "checkpoint": run["checkpoint"], "sha256": run["sha256"],
            "arch": run["model_meta"].get("arch"), "activation": run["model_meta"].get("activation"),
            "dataset": run["dataset"], "split": run["split"], "norm": run["norm"], "eps": text,
            "eps_value": value, "attacks": "+".join(names) or "none", "n": n,
            "clean_acc": 100 * k_clean / n if n else float("nan"), "clean_ci_low": 100 * c_lo,
            "clean_ci_high": 100 * c_hi,
            "robust_acc": 100 * k_rob / n if n else float("nan"), "robust_ci_low": 100 * r_lo,
            "robust_ci_high": 100 * r_hi,
            "broken_by": json.dumps(dict(sorted(broken.items()))), "flags": "; ".join(flags),
            "queries": json.dumps(queries, sort_keys=True),
            "budget": json.dumps(run["attacks"], sort_keys=True), "seed": run["seed"], "subset": run["subset"],
            "batch_size": run["batch_size"], "device": run["device"], "dtype": run["dtype"],
            "wall_time_s": round(run["wall_time"], 3), "robench_version": run["robench_version"],
            "torch_version": run["torch_version"], "run_id": run_id,
        })
    return rows, oc
