"""Training: standard, PGD adversarial training (Madry et al.), TRADES (Zhang et al.) and fast AT (Wong et
al.), for any registered architecture and activation, on a local dataset.

A held-out slice at the end of the training split is the validation set. The returned metadata carries
the whole recipe, the per-epoch history and the final validation clean and PGD accuracy, so a saved
checkpoint says how it was made.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone

import torch
import torch.nn.functional as F
from torch import nn

from .._version import __version__
from ..attacks.descent import Ascent, labels_loss
from ..attacks.pgd import PGD
from ..checkpoints import model_meta
from ..config import TrainConfig, parse_eps, parse_norm, validate_eps_range
from ..data import dataset_info, load_split
from ..engine.batching import resolve_device
from ..engine.core import attack_batch
from ..errors import RobenchError, unknown
from ..nn.activations import activation_modules, activation_penalty, clip_activation_gradients, parse_activation
from ..nn.architectures import create_model, resolve_arch
from ..norms import random_starts

METHODS = ("standard", "pgd-at", "trades", "fast-at")
SCHEDULES = ("cosine", "step", "constant")
AUGMENT_DEFAULT = {"cifar10": "crop,flip", "cifar100": "crop,flip", "svhn": "crop", "imagenet": "flip"}


class Diverged(RobenchError):
    pass


def check(cfg: TrainConfig) -> TrainConfig:
    """Validate a recipe and fill in its defaults (eps, step size, augmentation); one sentence per error."""
    if cfg.method not in METHODS:
        raise unknown("training method", cfg.method, METHODS)
    if cfg.schedule not in SCHEDULES:
        raise unknown("learning-rate schedule", cfg.schedule, SCHEDULES)
    for key in ("epochs", "batch_size", "steps", "val_size", "val_pgd_n", "val_pgd_steps"):
        if int(getattr(cfg, key)) < 1:
            raise RobenchError(f"{key.replace('_', '-')} must be at least 1, not {getattr(cfg, key)}.")
    if not cfg.lr > 0 or cfg.momentum < 0 or cfg.weight_decay < 0 or cfg.trades_beta < 0:
        raise RobenchError("lr must be positive; momentum, weight decay and the TRADES beta zero or more.")
    resolve_arch(cfg.arch)
    parse_activation(cfg.activation)
    info = dataset_info(cfg.dataset)
    cfg.dataset, cfg.norm = info.name, parse_norm(cfg.norm)
    eps = parse_eps(cfg.eps if cfg.eps is not None else info.eps[cfg.norm])
    validate_eps_range(eps, cfg.norm, math.prod(info.shape))
    cfg.eps = eps.text
    if cfg.step_size is None and cfg.method != "standard":
        cfg.step_size = f"{1.25 if cfg.method == 'fast-at' else 2.5 / cfg.steps:.6g}*eps"
    if cfg.augment == "auto":
        cfg.augment = AUGMENT_DEFAULT.get(info.name, "none")
    if set(cfg.augment.split(",")) - {"none", "crop", "flip"}:
        raise RobenchError(f'Unknown augmentation "{cfg.augment}"; use none, crop, flip or crop,flip.')
    return cfg


def step_size(cfg: TrainConfig) -> float:
    """The attack step as a number: "0.25*eps" scales eps; anything else is an absolute size."""
    eps = parse_eps(cfg.eps).value
    text = str(cfg.step_size)
    return float(text[:-4]) * eps if text.endswith("*eps") else parse_eps(text).value


def _augment(x: torch.Tensor, kinds: str, g: torch.Generator) -> torch.Tensor:
    if "flip" in kinds:
        flip = (torch.rand(len(x), generator=g) < 0.5).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(3), x)
    if "crop" in kinds:  # pad by 1/8 of the side, crop back at a random offset
        pad, (h, w) = max(1, x.shape[-1] // 8), x.shape[-2:]
        xp = F.pad(x, (pad, pad, pad, pad))
        off = torch.randint(0, 2 * pad + 1, (len(x), 2), generator=g).tolist()
        x = torch.stack([xp[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(off)])
    return x


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    if cfg.schedule == "step":  # x0.1 at half and at three quarters of the run
        return cfg.lr * 0.1 ** ((step >= total // 2) + (step >= 3 * total // 4))
    return cfg.lr


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD; weight decay on conv and linear weights only, never on biases, batch norm or the learned
    activation parameters (decay would pull SPLASH slopes and PAF shapes away from what they learn)."""
    act = {id(p) for m in activation_modules(model) for p in m.parameters()}
    decay = [p for p in model.parameters() if p.ndim >= 2 and id(p) not in act]
    rest = [p for p in model.parameters() if not (p.ndim >= 2 and id(p) not in act)]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
    )


def _adversarial(model, x, y, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    """Training-time adversarial inputs, crafted with the model in eval mode (batch-norm statistics
    frozen, as in Madry et al. and TRADES)."""
    eps, alpha = parse_eps(cfg.eps).value, step_size(cfg)
    model.eval()
    if cfg.method == "trades":  # maximise KL(f(x') || f(x)) from a small Gaussian start
        with torch.no_grad():
            p_clean = F.softmax(model(x), 1)
        start = (x + 0.001 * torch.randn(x.shape, generator=g).to(x.device)).clamp(0, 1) - x

        def loss(z, live):
            return F.kl_div(F.log_softmax(z, 1), p_clean[live], reduction="none").sum(1)

        _, x_adv = Ascent(cfg.norm, eps, alpha, cfg.steps, loss).run(model, x, start)
    else:
        steps = 1 if cfg.method == "fast-at" else cfg.steps
        _, x_adv = Ascent(cfg.norm, eps, alpha, steps, labels_loss(y, "ce")).run(
            model, x, random_starts(x, eps, cfg.norm, g)
        )
    model.train()
    return x_adv


def _loss(model, x, y, x_adv, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(training loss, logits the batch accuracy is read from)."""
    if cfg.method == "standard":
        z = model(x)
        return F.cross_entropy(z, y), z
    if cfg.method == "trades":
        z_clean, z_adv = model(x), model(x_adv)
        kl = F.kl_div(F.log_softmax(z_adv, 1), F.softmax(z_clean, 1), reduction="batchmean")
        return F.cross_entropy(z_clean, y) + cfg.trades_beta * kl, z_adv
    z = model(x_adv)
    return F.cross_entropy(z, y), z


@torch.no_grad()
def _clean_correct(model, split, idx, device, batch: int) -> int:
    correct = 0
    for chunk in idx.split(batch):
        x, y = split.batch(chunk)
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return correct


def validate(model, split, val_idx, cfg: TrainConfig, device) -> dict:
    """Clean accuracy on the whole validation slice and PGD accuracy on its first val_pgd_n images."""
    model.eval()
    batch = max(cfg.batch_size, 256)
    clean = _clean_correct(model, split, val_idx, device, batch)
    eps = parse_eps(cfg.eps)
    pgd = PGD(steps=cfg.val_pgd_steps)
    pgd_idx = val_idx[: cfg.val_pgd_n]
    robust = 0
    for chunk in pgd_idx.split(batch):
        x, y = split.batch(chunk)
        rows, _, _ = attack_batch(model, x.to(device), y.to(device), chunk, [eps], [pgd], cfg.norm, cfg.seed)
        robust += sum(r[3] for r in rows)
    return {
        "n": len(val_idx),
        "clean_acc": round(100 * clean / len(val_idx), 2),
        "pgd": {
            "n": len(pgd_idx),
            "acc": round(100 * robust / len(pgd_idx), 2),
            "norm": cfg.norm,
            "eps": eps.text,
            "budget": pgd.budget(),
            "seed": cfg.seed,
        },
    }


def _slices(n_total: int, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.val_size >= n_total:
        raise RobenchError(
            f"The validation slice ({cfg.val_size} images) must be smaller than the training "
            f"split ({n_total}); lower val-size."
        )
    stop = n_total - cfg.val_size
    if cfg.train_images:
        stop = min(stop, int(cfg.train_images))
    return torch.arange(stop), torch.arange(n_total - cfg.val_size, n_total)


def fit(cfg: TrainConfig, progress: Callable[[dict], None] | None = None) -> tuple[nn.Module, dict]:
    """Train one network by ``cfg``; returns (model in eval mode, checkpoint metadata)."""
    cfg = check(cfg)
    emit = progress or (lambda event: None)
    info = dataset_info(cfg.dataset)
    device = resolve_device(cfg.device)
    split = load_split(cfg.dataset, "train", cfg.data_dir)
    train_idx, val_idx = _slices(len(split), cfg)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = create_model(
        cfg.arch,
        cfg.activation,
        num_classes=info.num_classes,
        in_channels=info.shape[0],
        input_size=info.shape[-1],
        mean=info.mean,
        std=info.std,
    ).to(device)
    opt = _optimizer(model, cfg)
    per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    total, step, history, started = cfg.epochs * per_epoch, 0, [], time.time()
    emit(
        {
            "event": "start",
            "epochs": cfg.epochs,
            "batches": per_epoch,
            "device": str(device),
            "train": len(train_idx),
            "val": len(val_idx),
        }
    )
    for epoch in range(1, cfg.epochs + 1):
        t0, loss_sum, correct, seen = time.time(), 0.0, 0, 0
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        for b, chunk in enumerate(order.split(cfg.batch_size), 1):
            x, y = split.batch(chunk)
            x = _augment(x, cfg.augment, g).to(device)
            y = y.to(device)
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, step, total)
            x_adv = None if cfg.method == "standard" else _adversarial(model, x, y, cfg, g)
            model.train()
            loss, z = _loss(model, x, y, x_adv, cfg)
            full = loss + activation_penalty(model)
            if not torch.isfinite(full):
                raise Diverged(
                    f"Training diverged: the loss became {full.item()} at epoch {epoch}, step {b}; "
                    "nothing was saved (try a lower --lr)."
                )
            opt.zero_grad(set_to_none=True)
            full.backward()
            clip_activation_gradients(model)
            opt.step()
            step += 1
            loss_sum += loss.item() * len(y)
            correct += int((z.argmax(1) == y).sum())
            seen += len(y)
            emit({"event": "batch", "epoch": epoch, "batch": b, "batches": per_epoch, "loss": loss.item()})
        val = validate(model, split, val_idx, cfg, device)
        history.append(
            {
                "epoch": epoch,
                "loss": round(loss_sum / seen, 4),
                "train_acc": round(100 * correct / seen, 2),
                "val_clean_acc": val["clean_acc"],
                "val_pgd_acc": val["pgd"]["acc"],
                "lr": round(opt.param_groups[0]["lr"], 6),
                "seconds": round(time.time() - t0, 1),
            }
        )
        emit(
            {
                "event": "epoch",
                **history[-1],
                "epochs": cfg.epochs,
                "train_kind": "clean" if cfg.method == "standard" else "adversarial",
            }
        )
    model.eval()
    return model, _meta(model, cfg, val, history, time.time() - started, device, train_idx, val_idx)


def _meta(model, cfg, val, history, seconds, device, train_idx, val_idx) -> dict:
    recipe = {
        k: v for k, v in asdict(cfg).items() if k not in ("data_dir", "device", "name", "arch", "activation", "dataset")
    }
    if cfg.method == "standard":
        for k in ("norm", "eps", "steps", "step_size", "trades_beta"):
            recipe.pop(k)
    else:
        recipe["attack"] = {
            "steps": 1 if cfg.method == "fast-at" else cfg.steps,
            "step_size": cfg.step_size,
            "step_size_value": round(step_size(cfg), 8),
            "loss": "kl" if cfg.method == "trades" else "ce",
            "start": "gaussian 0.001" if cfg.method == "trades" else "uniform",
            "batch_norm": "eval mode while crafting",
        }
        if cfg.method != "trades":
            recipe.pop("trades_beta")
    recipe["optimizer"] = {
        "name": "sgd",
        "lr": cfg.lr,
        "momentum": cfg.momentum,
        "nesterov": cfg.nesterov,
        "weight_decay": cfg.weight_decay,
        "decay_on": "conv/linear weights",
    }
    acts = activation_modules(model)
    recipe["activation_training"] = {
        "penalty": sorted({f"{m.name}: {m.penalty_formula.format(**m.opts)}" for m in acts if m.penalty() is not None}),
        "grad_clip": sorted({f"{m.name}.{p} <= {v}" for m in acts for p, v in m.grad_clip.items()}),
        "learned": sorted({f"{m.name}.{p}" for m in acts for p in m.learned}),
    }
    recipe["data"] = {
        "split": "train",
        "train_indices": f"0:{len(train_idx)}",
        "val_indices": f"{int(val_idx[0])}:{int(val_idx[-1]) + 1}",
    }
    recipe["trained"] = {
        "seconds": round(seconds, 1),
        "device": str(device),
        "torch": str(torch.__version__),
        "robench": __version__,
        "threads": torch.get_num_threads(),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    name = cfg.name or f"{cfg.arch}-{cfg.activation}-{cfg.method}"
    return model_meta(
        cfg.arch,
        cfg.activation,
        cfg.dataset,
        name=name,
        training_method=cfg.method,
        recipe=recipe,
        validation=val,
        history=history,
    )
