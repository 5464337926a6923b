"""White-box evaluation: clean accuracy, a cascade of attacks over an ascending eps sweep, per-example worst
case, batch by batch into the store (resumable), summarised with n and Wilson 95% intervals.

Per batch: clean prediction; for each eps in ascending order, each attack in turn sees only the examples
still robust (a perturbation that works at eps also works at any larger eps, so an example broken at a
smaller eps is not attacked again). Every candidate from an attack is projected into the eps ball and
[0, 1] and re-checked with an fp32 forward pass before it counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from ..attacks.base import SAVED_STAGES, STAGE_HOOK
from ..attacks.registry import create_attack
from ..config import EvalConfig
from ..data import Split
from ..errors import RobenchError
from ..store import Store
from . import distributed
from .batching import auto_batch_size, parse_batch_size, resolve_device
from .core import (
    SavedStages,
    as_target,
    attack_batch,
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


def _target(memo: dict, item, i: int, cfg: EvalConfig):
    """``as_target``, loading a checkpoint file once per ``memo`` (with the same trust and overrides)."""
    if not isinstance(item, (str, Path)):
        return as_target(item, i, cfg.trust_checkpoint, cfg.overrides())
    key = (str(Path(item).resolve()), cfg.trust_checkpoint, repr(sorted(cfg.overrides().items())))
    cache = memo.setdefault("targets", {})
    if key not in cache:
        cache[key] = as_target(item, i, cfg.trust_checkpoint, cfg.overrides())
    return cache[key]


def evaluate(
    cfg: EvalConfig,
    progress: Callable[[dict], None] | None = None,
    cached_only: bool = False,
    memo: dict | None = None,
) -> pd.DataFrame | None:
    """Evaluate ``cfg.checkpoints`` (paths, Checkpoint objects or nn.Modules) with the checked settings
    ``cfg``. One row per model x eps; the per-example outcomes are in ``df.attrs["outcomes"]`` (a DataFrame
    keyed by run_id). With ``cached_only``, return None unless every run is already finished in the store
    (nothing is attacked). ``memo``, a dict kept between calls, keeps the loaded datasets and checkpoints
    (as the ``--jobs`` parent does, asking of unit after unit whether it is stored)."""
    checkpoints = cfg.checkpoints  # a list: robench.api made it one
    if not checkpoints:
        raise RobenchError("Name at least one checkpoint to evaluate.")
    norm, attacks, pgd = cfg.norm, cfg.attacks, cfg.pgd_options()
    if not attacks:
        raise RobenchError("Name at least one attack (e.g. --attack pgd), or none for clean accuracy only.")
    attacks = [a for a in attacks if str(a).strip().lower() != "none"] if len(attacks) == 1 else list(attacks)
    bs_given = parse_batch_size(cfg.batch_size)
    dev = resolve_device(cfg.device)
    eps_given = cfg.eps_values()
    for a in attacks:  # names, options and norms are checked before anything is loaded or stored
        create_attack(a, pgd=pgd, batch_size=bs_given or 1).check_norm(norm)
    memo = {} if memo is None else memo
    splits: dict[tuple, Split] = memo.setdefault("splits", {})
    rows, outcomes = [], []
    notify = progress or (lambda event: None)
    # every checkpoint and its data are checked before any attack runs, so a bad one fails fast
    targets = [_target(memo, c, i, cfg) for i, c in enumerate(checkpoints)]
    slices = [data_slice(t, cfg, splits, eps_given) for t in targets]
    group = distributed.current()
    dev = group.device(dev)
    db = Store(cfg.store) if group.main else None  # under torchrun only rank 0 touches the store
    run_id = None
    try:
        for t, sl in zip(targets, slices):
            run_id = None
            info, data, idx, eps_list = sl.info, sl.data, sl.idx, sl.eps
            model = t.model.to(dev)
            with attack_mode(model) as attacked:
                if not cached_only:  # (asking whether a run is stored needs no forward pass: see jobs)
                    validate_model(model, sl, dev, t.checkpoint or t.name, t.meta.get("input_shape"))
                bs = bs_given or auto_batch_size(attacked, info.shape, dev, len(idx))
                # the specs and norms were checked above; now built for this batch size
                atk = [create_attack(a, pgd=pgd, batch_size=bs) for a in attacks]
                budgets = [a.budget() for a in atk]
                key = run_key(t, sl, cfg, budgets, bs)
                if cached_only and (cfg.force or not db.is_done(key)):
                    return None
                remember(db, [t])  # a model that passed its checks (a stored run's did): its pages' record
                run_id = status = todo = None
                if group.main:
                    run_id, status, todo = open_run(
                        db,
                        key,
                        run_fields(t, sl, cfg, budgets, bs, dev),
                        cfg.force,
                        sl,
                        t,
                        [a.name for a in atk] or ["none"],
                        notify,
                    )
                run_id, status, todo = group.broadcast((run_id, status, todo))
                step = bs * group.world
                for start in range(0, len(todo), step):
                    b = torch.tensor(
                        distributed.shard(todo[start : start + step], group.rank, group.world), dtype=torch.long
                    )
                    tic = time.perf_counter()
                    part = ([], [], {})
                    if len(b):
                        x, y = data.batch(b)
                        done_before = len(idx) - len(todo) + start

                        def stage(name, robust, attacked, t=t, run_id=run_id, done_before=done_before):
                            notify(
                                {
                                    "event": "stage",
                                    "model": t.name,
                                    "run_id": run_id,
                                    "stage": name,
                                    "robust": robust,
                                    "attacked": attacked,
                                    "done": done_before,
                                    "total": len(idx),
                                }
                            )

                        token = STAGE_HOOK.set(stage if group.main else None)
                        kept = SAVED_STAGES.set(SavedStages(db, run_id) if group.world == 1 else None)
                        try:
                            part = attack_batch(attacked, x.to(dev), y.to(dev), b, eps_list, atk, norm, cfg.seed)
                        finally:
                            STAGE_HOOK.reset(token)
                            SAVED_STAGES.reset(kept)
                    parts = group.gather(part)
                    if group.main:
                        batch_rows = [r for p in parts for r in p[0]]
                        flags = list(dict.fromkeys(f for p in parts for f in p[1]))
                        queries = {
                            a: {i: v for p in parts for i, v in p[2].get(a, {}).items()}
                            for a in dict.fromkeys(a for p in parts for a in p[2])
                        }
                        db.add_batch(run_id, batch_rows, flags, time.perf_counter() - tic, queries)
                        notify(
                            {
                                "event": "batch",
                                "model": t.name,
                                "run_id": run_id,
                                "done": len(idx) - len(todo) + min(start + step, len(todo)),
                                "total": len(idx),
                                "robust": sum(r[3] for r in batch_rows if r[0] == eps_list[-1].text),
                            }
                        )
                if group.main and status != "done":
                    db.finish(run_id)
            if not group.main:
                continue
            if status != "done":  # a finished run read back keeps the checks stored with it, as transfer's do
                after_run(db, model, sl, t, norm, dev)
            model.to("cpu")
            summary, per_example = close_run(db, run_id, t, notify)
            rows += summary
            outcomes.append(per_example)
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
