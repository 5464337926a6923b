"""The engine's shared core: targets (a checkpoint or module to attack), data slices, attack mode, logit
checks, query counting, one batch of a white-box cascade (attack_batch), run keys and fields, and the
summary of a stored run. evaluate, transfer and sanity build on it and never on each other's insides."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from .._version import __version__
from ..attacks.base import Attack, report_stage
from ..checkpoints import Checkpoint, load_checkpoint
from ..config import Eps, EvalConfig, parse_eps, validate_eps_range
from ..data import DatasetInfo, Split, dataset_info, load_split, select_indices
from ..errors import RobenchError
from ..nn.accelerate import accelerate
from ..nn.shapes import model_record
from ..norms import get_norm, project
from ..results.runs import summarize
from ..store import Store


@dataclass
class Target:
    """A model to evaluate with what identifies it."""

    model: nn.Module
    name: str
    checkpoint: str | None
    sha256: str
    meta: dict


@dataclass(frozen=True)
class Named:
    """A model or checkpoint path with the name the caller gave it (``evaluate({"relu": model})``)."""

    name: str
    item: object


def as_target(item, i: int, trust: bool, overrides: dict) -> Target:
    if isinstance(item, Named):
        t = as_target(item.item, i, trust, overrides)
        return Target(t.model, str(item.name), t.checkpoint, t.sha256, {**t.meta, "name": str(item.name)})
    if isinstance(item, nn.Module):
        h = hashlib.sha256()
        for k, v in item.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return Target(item.eval(), f"model{i}", None, h.hexdigest(), {})
    ck = item if isinstance(item, Checkpoint) else load_checkpoint(item, trust=trust, **overrides)
    path = str(ck.path) if ck.path else None
    return Target(ck.model, ck.name, path, ck.sha256, ck.meta)


def remember(db: Store | None, targets: list[Target]) -> None:
    """Record in the store what the models' pages need from them (their activations' parameters, curves
    and shapes), so that reports are drawn from the store alone."""
    for t in targets:  # computed only where the store has none: a model's record never changes
        if db is not None and not db.has_model(t.sha256):
            db.set_model(t.sha256, model_record(t.model))


@contextmanager
def attack_mode(model: nn.Module):
    """Eval mode and parameter gradients off for the duration; the caller's settings come back after.
    Yields the model for attacks: the same weights, with the faster equivalent layers of
    ``robench.nn.accelerate`` on the CPU (bit-identical forward pass)."""
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
        raise RobenchError(
            f"{name} returns outputs of shape {tuple(out.shape)}; robench needs logits of shape (batch, classes)."
        )
    if out.shape[1] != num_classes:
        raise RobenchError(
            f"{name} returns {out.shape[1]} outputs per example but the dataset has "
            f"{num_classes} classes; check --dataset."
        )
    if not torch.isfinite(out).all():
        raise RobenchError(f"{name} returns NaN or Inf outputs on clean inputs; it cannot be evaluated.")
    if (
        out.min() >= 0
        and out.max() <= 1
        and torch.allclose(out.sum(1), torch.ones(len(out), device=out.device), atol=1e-4)
    ):
        raise RobenchError(
            f"{name} returns probabilities (its outputs sum to 1), which hide gradients from "
            "attacks; remove the final softmax so that it returns logits."
        )


def run_key(t: Target, sl: Slice, cfg: EvalConfig, budgets: list[dict], batch_size: int) -> str:
    """What identifies a run: the model's weights, the data itself (a fingerprint of the examples read, not
    only the dataset's name and indices), the eps sweep, every attack's full budget and the batch size."""
    payload = {
        "sha256": t.sha256,
        "dataset": sl.info.name,
        "split": cfg.split,
        "subset": cfg.subset,
        "seed": cfg.seed,
        "examples": hashlib.sha256(sl.idx.numpy().tobytes()).hexdigest(),
        "data": sl.data_sha256,
        "norm": cfg.norm,
        "eps": [repr(e.value) for e in sl.eps],
        "attacks": budgets,
        "batch_size": batch_size,
        "meta": {k: t.meta.get(k) for k in ("mean", "std")},
    }
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
            report_stage(attack.name + (f" at eps {eps.text}" if len(eps_list) > 1 else ""), len(live), len(x))
            out = attack.run(counted, x[live], y[live], idx[live.cpu()], eps.value, norm, seed)
            per = queries.setdefault(attack.name, {})
            share = counted.queries / len(live)
            for i in idx[live.cpu()].tolist():
                e, q = per.get(i, (0, 0.0))
                per[i] = (e + 1, q + share)
            flags += [f for f in out.flags if f not in flags]
            x_adv = out.x_adv.to(x.device, torch.float32)
            excess = get_norm(norm).distance(x_adv - x[live]) - eps.value
            if (excess > 1e-6 * max(1.0, eps.value)).any() or x_adv.min() < 0 or x_adv.max() > 1:
                x_adv = project(x[live], x_adv, eps.value, norm)
            with torch.no_grad():
                hit = model(x_adv).argmax(1) != y[live]
            for j in hit.nonzero()[:, 0].tolist():
                i = int(live[j])
                broken_by[i] = out.broken_by[j] if out.broken_by and out.broken_by[j] else attack.name
            robust[live[hit]] = False
        for j in range(len(x)):
            rows.append(
                (
                    eps.text,
                    int(idx[j]),
                    int(clean[j]),
                    int(robust[j]),
                    broken_by[j] if not robust[j] and clean[j] else None,
                )
            )
    return rows, flags, queries


@dataclass
class Slice:
    """What a model is evaluated on: the dataset, its split, the example indices and the eps sweep."""

    info: DatasetInfo
    data: Split
    idx: torch.Tensor
    eps: list[Eps]

    @property
    def data_sha256(self) -> str:
        return self.data.fingerprint(self.idx)


def data_slice(t: Target, cfg: EvalConfig, splits: dict, eps_given: list[Eps] | None = None) -> Slice:
    """The dataset slice and eps sweep of ``cfg`` for ``t`` (its own dataset unless one is given); splits are
    loaded once into ``splits``."""
    norm, eps_given = cfg.norm, cfg.eps_values() if eps_given is None else eps_given
    ds = cfg.dataset or t.meta.get("dataset")
    if not ds:
        raise RobenchError(f"{t.checkpoint or t.name} carries no dataset; name it with --dataset.")
    info = dataset_info(ds)
    key = (info.name, cfg.split, str(cfg.data_dir))
    data = splits.get(key) or splits.setdefault(key, load_split(info.name, cfg.split, cfg.data_dir))
    eps_list = sorted(set(eps_given or [parse_eps(info.eps[norm])]))
    for e in eps_list:
        validate_eps_range(e, norm, math.prod(info.shape))
    return Slice(info, data, select_indices(len(data), cfg.n, cfg.seed, cfg.subset), eps_list)


def validate_model(model, sl: Slice, dev, name: str, input_shape=None) -> None:
    """Fail fast on a model that cannot take this dataset's images or does not return logits for it."""
    x0, _ = sl.data.batch(sl.idx[: min(len(sl.idx), 8)])
    want = tuple(input_shape or ())
    if tuple(x0.shape[1:]) != tuple(sl.info.shape) or (want and tuple(want) != tuple(x0.shape[1:])):
        have = "x".join(map(str, x0.shape[1:]))
        raise RobenchError(
            f"{name} takes inputs of shape {'x'.join(map(str, want or sl.info.shape))} but the "
            f"{sl.info.name} images are {have}; check --dataset."
        )
    try:
        with torch.no_grad():
            out = model(x0.to(dev))
    except Exception as e:  # a model from a file may raise anything on inputs it was not made for
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (
            "re-export it with a dynamic batch dimension (torch.export.Dim)"
            if "Guard failed" in first
            else "check --dataset and the model's input channels"
        )
        raise RobenchError(
            f"{name} fails on the {sl.info.name} images of shape {'x'.join(map(str, x0.shape[1:]))} "
            f"({first[:200]}); {hint}."
        ) from None
    check_logits(out, len(x0), sl.info.num_classes, name)


def run_fields(t: Target, sl: Slice, cfg: EvalConfig, budgets: list[dict], bs: int, dev) -> dict:
    """Everything a stored run records besides its outcomes."""
    return {
        "model": t.name,
        "checkpoint": t.checkpoint,
        "sha256": t.sha256,
        "dataset": sl.info.name,
        "split": cfg.split,
        "n": len(sl.idx),
        "subset": cfg.subset,
        "seed": cfg.seed,
        "norm": cfg.norm,
        "data_sha256": sl.data_sha256,
        "eps": [[e.text, e.value] for e in sl.eps],
        "attacks": budgets,
        "batch_size": bs,
        "device": str(dev),
        "dtype": "float32",
        "robench_version": __version__,
        "torch_version": torch.__version__,
        "model_meta": t.meta,
        "machine": machine(dev),
    }


def machine(dev) -> str:
    """The machine a run is computed on, as its provenance names it: the accelerator or CPU model, then the
    operating system and architecture (no host name)."""
    return _machine(str(dev))


@functools.lru_cache(maxsize=8)
def _machine(dev: str) -> str:
    import platform

    dev = torch.device(dev)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = platform.processor() or ""
        try:
            with open("/proc/cpuinfo") as f:
                name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
        except OSError:
            pass
    return ", ".join(p for p in (name, f"{platform.system()} {platform.machine()}") if p.strip())


class SavedStages:
    """The finished stages of the batch being attacked, kept in the store (``Store.save_stage``) under a
    hash of what each depends on; read back as tensors only (``weights_only``), a damaged one recomputed."""

    def __init__(self, db: Store, run_id: int):
        self.db, self.run_id = db, run_id

    @staticmethod
    def _key(parts) -> str:
        return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()

    def load(self, parts) -> dict | None:
        data = self.db.load_stage(self.run_id, self._key(parts))
        if data is None:
            return None
        try:
            return torch.load(io.BytesIO(data), weights_only=True)
        except Exception:
            return None

    def save(self, parts, tensors: dict) -> None:
        buf = io.BytesIO()
        torch.save(tensors, buf)
        self.db.save_stage(self.run_id, self._key(parts), buf.getvalue())


def open_run(
    db: Store,
    key: str,
    fields: dict,
    force: bool,
    sl: Slice,
    t: Target,
    attacks: list[str],
    notify: Callable[[dict], None],
) -> tuple[int, str, list[int]]:
    """Open the run ``key`` in the store (new, resumed where its stored batches end, or found finished) and
    announce it: (run_id, status, the example indices still to attack)."""
    run_id, status = db.open_run(key, fields, force=force)
    idx = sl.idx.tolist()
    done = db.done_indices(run_id, len(sl.eps)) if status != "done" else set(idx)
    robust = 0
    if done:  # a resumed run's progress counts what its stored batches left robust (at the largest eps)
        oc = db.outcomes(run_id)
        robust = int(oc.loc[(oc.eps == sl.eps[-1].text) & oc.idx.isin(list(done)), "robust"].sum())
    notify(
        {
            "event": "start",
            "model": t.name,
            "run_id": run_id,
            "store": str(db.path),
            "total": len(idx),
            "done": len(done),
            "robust": robust,
            "attacks": attacks,
            "resumed": bool(done) and status != "done",
            "cached": status == "done",
        }
    )
    return run_id, status, [i for i in idx if i not in done]


def close_run(
    db: Store, run_id: int, t: Target, notify: Callable[[dict], None], **columns
) -> tuple[list[dict], pd.DataFrame]:
    """A finished run's summary rows and per-example outcomes (with ``columns`` added), announced."""
    summary, per_example = summarize(db, run_id)
    notify({"event": "end", "model": t.name, "run_id": run_id, "rows": summary})
    return summary, per_example.assign(run_id=run_id, model=t.name, **columns)
