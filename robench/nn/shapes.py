"""What a model's activations look like, read once when the model is evaluated and kept in the store with its
runs, so that the report's figures, claims and model pages are drawn from the store alone: the learned
parameters of each activation instance, its curve over [-4, 4] and the summary of its shape."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..config import CURVE_POINTS, SHAPE_RANGE
from .activations import Activation, activation_modules


def curve_x() -> np.ndarray:
    """The inputs at which a curve is recorded (and drawn): CURVE_POINTS points over [-SHAPE_RANGE, SHAPE_RANGE]."""
    return np.linspace(-SHAPE_RANGE, SHAPE_RANGE, CURVE_POINTS)


def _cpu64(act: Activation) -> Activation:
    """A float64 copy on the CPU (the model itself may be on a GPU, in float32)."""
    return copy.deepcopy(act).to("cpu", torch.float64)


def _apply(act: Activation, x: torch.Tensor) -> torch.Tensor:
    """The activation on a float64 copy, per-channel parameters averaged over the channels."""
    with torch.no_grad():
        return act(x.view(1, 1, -1).expand(1, act.channels, -1)).mean(1).view(-1) if act.channels else act(x)


def curve(act: Activation) -> list[float]:
    """One activation instance over curve_x(), in float64 and rounded far below a pixel: float32 kernels
    differ in the last bit between CPUs (vector widths), and the committed plots are compared byte for byte."""
    y = _apply(_cpu64(act), torch.as_tensor(curve_x(), dtype=torch.float64))
    return np.round(y.numpy(), 9).tolist()


def shape_stats(acts: list[Activation]) -> dict | None:
    """The learned activation, averaged over its instances (and channels), read over [-4, 4] in float64:
    mean output on negative inputs, the largest |f''| (``kink`` where the function has one, i.e. where the
    second difference keeps growing as the step shrinks; its curvature is then None), and whether it learns
    parameters. None for a model without a robench activation."""
    if not acts:
        return None
    negs, curvs, kink = [], [], False
    for act in acts:
        act = _cpu64(act)

        def f(h: float, act=act):
            x = torch.arange(-SHAPE_RANGE, SHAPE_RANGE + h / 2, h, dtype=torch.float64)
            return x, _apply(act, x)

        x, y = f(1e-3)
        negs.append(float(y[x < 0].mean()))
        peak = [
            float(((yy[2:] - 2 * yy[1:-1] + yy[:-2]).abs() / h**2).max())
            for h, (_, yy) in ((h, f(h)) for h in (1e-2, 1e-3))
        ]
        if peak[1] > 3 * peak[0] + 1e-6:
            kink = True
        curvs.append(peak[1])
    learned = any(p.numel() for act in acts for p in act.parameters())
    return {
        "negative_output": sum(negs) / len(negs),
        "curvature": None if kink else sum(curvs) / len(curvs),
        "kink": kink,
        "learned": learned,
    }


def learned_values(model: nn.Module) -> list[dict]:
    """Each activation instance that learns parameters: its module name, activation, sharing and values."""
    names = {id(m): n for n, m in model.named_modules()}
    return [
        {"module": names.get(id(m), "?"), "activation": m.name, "share": m.share, "values": m.learned_values()}
        for m in activation_modules(model)
        if m.learned
    ]


def model_record(model: nn.Module) -> dict:
    """What the store keeps about a model's activations for its pages: the learned parameters, one curve per
    activation instance (over curve_x()) and the shape summary."""
    acts = activation_modules(model)
    return {"learned": learned_values(model), "curves": [curve(a) for a in acts], "shape": shape_stats(acts)}
