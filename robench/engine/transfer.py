"""Black-box transfer: adversarial examples crafted on surrogates (each source, or the ensemble of the
sources), scored on targets. Every target sees the same examples, data slice, eps and seed; the crafted
examples are cached beside the store (keyed by the surrogate's sha256s, the attack budget, eps, data slice
and seed), so N targets cost one crafting and a rerun none. Each source x target pair is a run in the store
with per-example outcomes, like any evaluation: an example counts as robust at an eps only if the target
classifies it right clean and under the transfer examples of that eps and every smaller one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from ..attacks.transfer import Ensemble, TransferAttack
from ..config import EvalConfig
from ..errors import RobenchError
from ..files import atomic_path
from ..norms import project
from ..stats import wilson
from ..store import Store
from .batching import auto_batch_size, parse_batch_size, resolve_device
from .core import (
    Slice,
    Target,
    as_target,
    attack_mode,
    close_run,
    data_slice,
    open_run,
    remember,
    run_fields,
    run_key,
    validate_model,
)
from .masking import after_run


def transfer(
    sources,
    targets,
    cfg: EvalConfig,
    *,
    attack: TransferAttack,
    ensemble: bool = False,
    all_pairs: bool = False,
    progress: Callable[[dict], None] | None = None,
) -> pd.DataFrame:
    """The source x target matrix under the checked settings ``cfg``, one row per (source, target, eps) with
    clean and robust accuracy and the attack success rate over clean-correct examples, each with n and a
    Wilson interval. With ``all_pairs`` the checkpoints in ``sources`` are every source and every target (the
    diagonal is white-box); with ``ensemble`` the sources are one surrogate (with ``all_pairs``: for each
    target, the others)."""
    notify = progress or (lambda e: None)
    norm, seed, split = cfg.norm, cfg.seed, cfg.split
    if all_pairs:
        targets = list(sources)
    if not sources or not targets:
        raise RobenchError("Name at least one --source and one --target checkpoint (or --all with two or more).")
    if all_pairs and len(sources) < 2:
        raise RobenchError("--all needs at least two checkpoints.")
    loaded: dict[str, Target] = {}

    def load(item, i):
        key = str(item)
        if key not in loaded:
            loaded[key] = as_target(item, i, cfg.trust_checkpoint, cfg.overrides())
        return loaded[key]

    srcs = [load(s, i) for i, s in enumerate(sources)]
    tgts = [load(t, len(sources) + i) for i, t in enumerate(targets)]
    _same_dataset(srcs + tgts, cfg.dataset)
    dev = resolve_device(cfg.device)
    splits: dict = {}
    eps_given = cfg.eps_values()
    slices = {id(t): data_slice(t, cfg, splits, eps_given) for t in {id(t): t for t in srcs + tgts}.values()}
    _same_inputs(srcs + tgts, slices, dev)
    sl = slices[id(tgts[0])]
    bs_given = parse_batch_size(cfg.batch_size)

    if ensemble and all_pairs:
        pairs = [([s for s in srcs if s.sha256 != t.sha256], [t]) for t in tgts]
    elif ensemble:
        pairs = [(srcs, tgts)]
    else:
        pairs = [([s], tgts) for s in srcs]
    db = Store(cfg.store)
    remember(db, list(loaded.values()))
    cache = db.path.parent / "transfer-cache"
    rows, outcomes = [], []
    checked: dict[str, Target] = {}
    finished: list[tuple] = []
    run_id = None
    try:
        for members, tgt_list in pairs:
            surrogate = Ensemble([m.model for m in members]) if len(members) > 1 else members[0].model
            label = " + ".join(m.name for m in members)
            sources_meta = [{"model": m.name, "sha256": m.sha256, "checkpoint": m.checkpoint} for m in members]
            budget = {
                "name": "transfer",
                "attack": attack.budget(),
                "sources": sources_meta,
                "ensemble": len(members) > 1,
            }
            adv = None  # crafted lazily: only when some target's run is not already in the store
            for t in tgt_list:
                bs = bs_given or auto_batch_size(t.model.to(dev), sl.info.shape, dev, len(sl.idx))
                run_id = None
                run_id, status, todo = open_run(
                    db,
                    run_key(t, sl, cfg, [budget], bs),
                    run_fields(t, sl, cfg, [budget], bs, dev),
                    cfg.force,
                    sl,
                    t,
                    [f"transfer from {label}"],
                    notify,
                )
                if status != "done":
                    if adv is None:
                        adv = {
                            e.text: craft_cached(
                                surrogate, members, attack, sl, e, norm, split, seed, bs, dev, cache, notify, label
                            )
                            for e in sl.eps
                        }
                    _score(db, run_id, t, sl, todo, adv, norm, bs, dev, label, notify)
                    db.finish(run_id)
                    checked[t.sha256] = t
                finished.append((run_id, t, label, [m.sha256 for m in members]))
                t.model.to("cpu")
        for t in checked.values():  # the diagnostics once per target, over all its new results
            after_run(db, t.model, sl, t, norm, dev)
            t.model.to("cpu")
        for run_id, t, label, shas in finished:
            summary, per_example = close_run(db, run_id, t, notify, source=label)
            for r in summary:
                o = per_example[per_example.eps == r["eps"]]
                rows.append({"source": label, "target": t.name, "white_box": t.sha256 in shas, **_success(o), **r})
            outcomes.append(per_example)
    except Exception:
        if run_id is not None:
            db.discard_if_empty(run_id)  # a failure leaves no empty run behind; stored batches resume
        raise
    finally:
        db.close()
    df = pd.DataFrame(rows)
    df.attrs["outcomes"] = pd.concat(outcomes, ignore_index=True) if outcomes else pd.DataFrame()
    return df


def _same_dataset(models: list[Target], dataset: str | None) -> None:
    """Every source and target must be made for the same dataset (checked before any data is read)."""
    from ..data import dataset_info

    named = [(t, dataset or t.meta.get("dataset")) for t in models]
    for t, ds in named:
        if not ds:
            raise RobenchError(f"{t.checkpoint or t.name} carries no dataset; name it with --dataset.")
    (first, ds), *rest = [(t, dataset_info(d).name) for t, d in named]
    for t, other in rest:
        if other != ds:
            raise RobenchError(
                f"Sources and targets must share a dataset: {first.checkpoint or first.name} is "
                f"{ds} but {t.checkpoint or t.name} is {other}."
            )


def _same_inputs(models: list[Target], slices: dict, dev) -> None:
    """Every source and target must take the dataset's input shape and return logits."""
    for t in models:
        ds = slices[id(t)].info.name
        shape = t.meta.get("input_shape")
        if shape and tuple(shape) != tuple(slices[id(t)].info.shape):
            raise RobenchError(
                f"{t.checkpoint or t.name} takes inputs of shape {tuple(shape)}, not the "
                f"{tuple(slices[id(t)].info.shape)} of {ds}; sources and targets must share it."
            )
        with attack_mode(t.model.to(dev)):
            validate_model(t.model, slices[id(t)], dev, t.checkpoint or t.name, t.meta.get("input_shape"))


def cache_key(members: list[Target], attack: TransferAttack, sl: Slice, eps, norm: str, split: str, seed: int) -> str:
    payload = {
        "sources": sorted(m.sha256 for m in members),
        "attack": attack.budget(),
        "eps": repr(eps.value),
        "norm": norm,
        "dataset": sl.info.name,
        "split": split,
        "seed": seed,
        "examples": hashlib.sha256(sl.idx.numpy().tobytes()).hexdigest(),
        "data": sl.data_sha256,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def craft_cached(
    surrogate,
    members,
    attack: TransferAttack,
    sl: Slice,
    eps,
    norm: str,
    split: str,
    seed: int,
    bs: int,
    dev,
    cache: Path,
    notify,
    label: str,
) -> torch.Tensor:
    """The adversarial examples crafted on ``surrogate`` for the slice at ``eps``: read from the cache, or
    crafted batch by batch and written there atomically (safetensors, with the indices they belong to)."""
    from safetensors.torch import load_file, save_file

    key = cache_key(members, attack, sl, eps, norm, split, seed)
    path = cache / f"{key[:40]}.safetensors"
    if path.exists():
        try:
            stored = load_file(str(path))
            if torch.equal(stored["idx"], sl.idx):
                notify({"event": "craft", "source": label, "eps": eps.text, "cached": True, "path": str(path)})
                return stored["x_adv"]
        except Exception:
            pass  # a damaged cache file is crafted again and replaced
    tic = time.perf_counter()
    out = []
    with attack_mode(surrogate.to(dev)) as attacked:
        for start in range(0, len(sl.idx), bs):
            b = sl.idx[start : start + bs]
            x, y = sl.data.batch(b)
            out.append(attack.craft(attacked, x.to(dev), y.to(dev), b, eps.value, norm, seed).cpu())
    surrogate.to("cpu")
    x_adv = torch.cat(out).contiguous()
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(
            {"x_adv": x_adv, "idx": sl.idx.clone().contiguous()},
            str(tmp),
            metadata={
                "attack": json.dumps(attack.budget(), sort_keys=True),
                "eps": eps.text,
                "norm": norm,
                "sources": label,
            },
        )
    notify(
        {
            "event": "craft",
            "source": label,
            "eps": eps.text,
            "cached": False,
            "path": str(path),
            "seconds": time.perf_counter() - tic,
        }
    )
    return x_adv


def _score(
    db: Store,
    run_id: int,
    t: Target,
    sl: Slice,
    todo: list[int],
    adv: dict[str, torch.Tensor],
    norm: str,
    bs: int,
    dev,
    label: str,
    notify,
) -> None:
    """The target's clean and robust outcomes on the crafted examples ``todo`` (those the store does not hold
    yet), committed batch by batch."""
    pos = {i: j for j, i in enumerate(sl.idx.tolist())}
    with attack_mode(t.model.to(dev)) as model, torch.no_grad():
        for start in range(0, len(todo), bs):
            b = torch.tensor(todo[start : start + bs], dtype=torch.long)
            tic = time.perf_counter()
            x, y = sl.data.batch(b)
            rows, robust = score_batch(
                model,
                x.to(dev),
                y.to(dev),
                b,
                {e.text: adv[e.text][[pos[i] for i in b.tolist()]] for e in sl.eps},
                sl.eps,
                norm,
                label,
            )
            db.add_batch(
                run_id, rows, [], time.perf_counter() - tic, {"transfer": {int(i): (1, 2 * len(sl.eps)) for i in b}}
            )
            notify(
                {
                    "event": "batch",
                    "model": t.name,
                    "run_id": run_id,
                    "done": len(sl.idx) - len(todo) + start + len(b),
                    "total": len(sl.idx),
                    "robust": int(robust.sum()),
                }
            )


def score_batch(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    b: torch.Tensor,
    adv: dict[str, torch.Tensor],
    eps_list,
    norm: str,
    label: str,
) -> tuple[list[tuple], torch.Tensor]:
    """One batch of a target under transfer examples (``adv``: eps text -> the batch's crafted examples):
    the outcome rows (eps, idx, clean, robust, broken_by) and the robust flags at the largest eps. An example
    counts as robust at an eps only if the target is right clean and at that eps and every smaller one."""
    with torch.no_grad():
        robust = clean = model(x).argmax(1) == y
        rows = []
        for e in eps_list:  # ascending: an example fooled at a smaller eps stays fooled
            xa = project(x, adv[e.text].to(x.device, torch.float32), e.value, norm)
            robust = robust & (model(xa).argmax(1) == y)
            rows += [
                (e.text, int(i), int(c), int(r), f"transfer:{label}" if c and not r else None)
                for i, c, r in zip(b.tolist(), clean.tolist(), robust.tolist())
            ]
    return rows, robust


def _success(o: pd.DataFrame) -> dict:
    """Attack success rate over the clean-correct examples, with its Wilson interval, in percent."""
    k_clean = int(o.clean.sum())
    fooled = k_clean - int(o.robust.sum())
    lo, hi = wilson(fooled, k_clean)
    return {
        "success_rate": 100 * fooled / k_clean if k_clean else float("nan"),
        "success_n": k_clean,
        "success_ci_low": 100 * lo,
        "success_ci_high": 100 * hi,
    }
