"""Faster stand-ins for layers at attack time, for models in eval mode with frozen parameters.

`accelerate(model, device)` returns the same network (parameters and buffers shared, not copied) with
four kinds of layer replaced where oneDNN's own kernels are slow on the CPU (docs/performance.md has what
each one gains, and on which machine it was measured):

- ``Conv2d`` with stride 1 and at most 12 output channels, or a single input channel: the gradient with
  respect to the input is computed as a forward convolution with the flipped, transposed kernel instead
  of oneDNN's backward-data kernel, which is slow for so few channels (LeNet's 1->6 first layer).
  With a single input channel that convolution has a single output channel, which oneDNN pads to a block
  of 16, so it runs as one-row kernels (one output channel per kernel row) and a shifted sum of the rows,
  which avoids the padding. The forward
  pass is untouched; the input gradient equals the native one up to float rounding.
- ``MaxPool2d`` with kernel = stride and no padding. When no gradient is taken (clean passes, re-checks,
  Square's queries) the window maximum is taken as elementwise maxima of strided views (first over the
  window's rows, then over its columns), the same values as PyTorch's NCHW kernel
  (NaN wins, as in PyTorch; of a +0/-0 tie either may come out, which no later layer can tell apart).
  With gradients, 2x2 windows run as a tournament of three comparisons that sends the gradient to the
  element PyTorch's kernel picks (the first maximum in row-major order); other windows run PyTorch's
  kernel. Only a window holding NaN may send its gradient to
  another element than PyTorch does (its output, and so the loss, is NaN either way).
- ``BatchNorm2d`` in eval mode: PyTorch's forward, and as input gradient one multiplication by the
  per-channel scale it applies, instead of the general batch-norm backward, on large inputs.
- ``SPLASH``: its sum of hinges is a chain of about 30 elementwise operations, each a pass over the whole
  batch's activations. The stand-in runs the same operations on slices of the batch that stay in cache,
  and computes the input gradient itself in the order autograd would, so value and gradient are both
  bit-identical (benchmarks/layers.py times it against the module).

So the accelerated model's forward pass is bit-identical to the original's: clean accuracy and every
final verdict are unchanged, and only the attack's search direction can differ, at the level of float
rounding (as it does between two CPUs). On CUDA the model is returned as it is: cuDNN has none of these
problems.
"""

from __future__ import annotations

import copy
from functools import reduce

import torch
import torch.nn.functional as F
from torch import nn

from .activations import SPLASH, hinge_sum

SMALL_NORM = 2**17  # below this many elements PyTorch's batch-norm backward beats a Python-level one
SMALL_CONV = 12  # at most this many output channels: the flipped forward convolution wins (benchmarks)
SLICE = 1 << 16  # elements per slice of an elementwise chain: its temporaries stay in a core's L2 cache


class WindowMaxPool(nn.Module):
    """``MaxPool2d(k)`` (stride k, no padding). Without gradients the window maximum is elementwise maxima
    of strided views, over the window's rows and then its columns; with them a 2x2 window is a tournament
    (`_PairPool`) and a larger one PyTorch's own kernel, so the gradient picks the same element of each
    window as PyTorch does."""

    def __init__(self, pool: nn.MaxPool2d, k: int):
        super().__init__()
        self.pool, self.k = pool, k

    def forward(self, x):
        grad = x.requires_grad and torch.is_grad_enabled()
        if x.dim() != 4 or (grad and self.k != 2):
            return self.pool(x)
        if grad:
            return _PairPool.apply(x)
        n, c, h, w = x.shape
        k, ho, wo = self.k, h // self.k, w // self.k
        if (h, w) != (ho * k, wo * k):
            x = x[:, :, : ho * k, : wo * k]
        rows = reduce(torch.maximum, x.reshape(n, c, ho, k, wo * k).unbind(3))  # over the window's rows
        return reduce(torch.maximum, rows.reshape(n, c, ho, wo, k).unbind(4))  # then over its columns


class _PairPool(torch.autograd.Function):
    """``max_pool2d(x, 2)`` whose backward sends each window's gradient to its first maximum in row-major
    order, the element PyTorch's kernel picks: a tournament of the window's column pairs, then its rows,
    where a later element wins only if strictly greater (3 comparisons instead of computing flat indices)."""

    @staticmethod
    def forward(ctx, x):
        n, c, h, w = x.shape
        ho, wo = h // 2, w // 2
        v = x[:, :, : 2 * ho, : 2 * wo].reshape(n, c, ho, 2, wo, 2)
        a, b, c_, d = v[:, :, :, 0, :, 0], v[:, :, :, 0, :, 1], v[:, :, :, 1, :, 0], v[:, :, :, 1, :, 1]
        top, bottom = torch.maximum(a, b), torch.maximum(c_, d)
        ctx.save_for_backward(b > a, d > c_, bottom > top)
        ctx.shape = (n, c, h, w)
        return torch.maximum(top, bottom)

    @staticmethod
    def backward(ctx, g):
        right_top, right_bottom, lower = ctx.saved_tensors
        n, c, h, w = ctx.shape
        ho, wo = h // 2, w // 2
        g_bottom = g * lower
        g_top = g - g_bottom
        g_b, g_d = g_top * right_top, g_bottom * right_bottom
        out = g.new_zeros(n, c, h, w) if (h, w) != (2 * ho, 2 * wo) else g.new_empty(n, c, h, w)
        v = out[:, :, : 2 * ho, : 2 * wo].view(n, c, ho, 2, wo, 2)
        v[:, :, :, 0, :, 0] = g_top - g_b
        v[:, :, :, 0, :, 1] = g_b
        v[:, :, :, 1, :, 0] = g_bottom - g_d
        v[:, :, :, 1, :, 1] = g_d
        return out


class _FlippedGradConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(weight)
        ctx.padding, ctx.dtype = padding, x.dtype
        return F.conv2d(x, weight, bias, 1, padding)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        k_h, k_w = weight.shape[2:]
        p_h, p_w = ctx.padding
        flipped = weight.transpose(0, 1).flip(2, 3).to(grad.dtype)  # grad is bf16 after an autocast forward
        pad = (k_h - 1 - p_h, k_w - 1 - p_w)
        g = row_taps(grad, flipped, pad) if flipped.shape[0] == 1 and k_h > 1 else F.conv2d(grad, flipped, None, 1, pad)
        return g.to(ctx.dtype), None, None, None


def row_taps(grad: torch.Tensor, flipped: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """``conv2d(grad, flipped, padding=pad)`` for a single output channel, as a convolution with one-row
    kernels whose output channels are the kernel's rows, then the rows' shifted sum: oneDNN pads a single
    output channel to a block of 16, so giving it k_h channels instead halves the time (benchmarks)."""
    k_h = flipped.shape[2]
    rows = F.conv2d(grad, flipped[0].transpose(0, 1).unsqueeze(2), None, 1, pad)  # [n, k_h, h + k_h - 1, w]
    h = rows.shape[2] - k_h + 1
    return reduce(torch.add, (rows[:, a, a : a + h] for a in range(k_h))).unsqueeze(1)


class _AffineGrad(torch.autograd.Function):
    """An eval-mode batch norm: PyTorch's forward, and as backward the per-channel scale it applies."""

    @staticmethod
    def forward(ctx, x, bn):
        scale = (bn.running_var + bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight
        ctx.scale, ctx.dtype = scale.view((1, -1) + (1,) * (x.dim() - 2)), x.dtype
        return bn(x)

    @staticmethod
    def backward(ctx, grad):
        return (grad * ctx.scale.to(grad.dtype)).to(ctx.dtype), None


class FrozenBatchNorm(nn.Module):
    """A ``BatchNorm2d`` in eval mode whose input gradient is one multiplication by its per-channel scale
    instead of PyTorch's general batch-norm backward; below ``SMALL_NORM`` elements, where that pays less
    than the Python call costs, the native one runs."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.bn = bn

    def forward(self, x):
        bn = self.bn
        if (
            bn.training
            or x.numel() < SMALL_NORM
            or not (x.requires_grad and torch.is_grad_enabled())
            or any(p.requires_grad for p in bn.parameters())
        ):
            return bn(x)
        return _AffineGrad.apply(x, bn)


class FastSPLASH(nn.Module):
    """A frozen ``SPLASH``: the same chain of operations per element (hinge by hinge, in its order) and,
    as input gradient, the sum autograd forms from that chain (its terms in the order the engine adds
    them), both run over slices of the batch small enough for their temporaries to stay in cache and
    with few temporaries. Bit-identical to the module in value and input gradient. Trainable slopes, or an input whose dtype differs from the slopes', run the
    module itself; only a NaN or infinite input or gradient can make the two gradients differ."""

    def __init__(self, act: SPLASH):
        super().__init__()
        self.act = act

    def forward(self, x):
        a, grad = self.act, torch.is_grad_enabled()
        if x.dim() == 0 or x.dtype != a.slopes_pos.dtype or (grad and any(p.requires_grad for p in a.parameters())):
            return a(x)
        terms = a.terms(x)
        if grad and x.requires_grad:
            return _HingeSum.apply(x, terms)
        return in_slices(lambda c: hinge_sum(c, terms, inplace=True), x)


def in_slices(fn, x: torch.Tensor, *more: torch.Tensor) -> torch.Tensor:
    """``fn(x, *more)`` for an elementwise ``fn``, computed on slices of the batch of about ``SLICE``
    elements each (``more`` are shaped like ``x`` and sliced alike)."""
    rows = max(1, SLICE // max(1, x[0].numel()))
    if x.shape[0] <= rows:
        return fn(x, *more)
    out = torch.empty_like(x)
    for o, *parts in zip(out.split(rows), x.split(rows), *(m.split(rows) for m in more)):
        o.copy_(fn(*parts))
    return out


def hinge_grad(x, g, terms):
    """The input gradient autograd gives SPLASH's chain: each term's g*slope where its hinge is active
    (x > b, or -x > b for the mirrored term), added up from the last term to the first."""
    acc, mask = torch.zeros_like(x), torch.empty_like(x)
    for b, p, n in reversed(terms):
        acc.sub_(torch.mul(g, n).mul_(torch.lt(x, -b, out=mask)))  # comparisons into a float buffer: fast
        acc.add_(torch.mul(g, p).mul_(torch.gt(x, b, out=mask)))
    return acc


class _HingeSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, terms):
        ctx.save_for_backward(x)
        ctx.terms = terms
        return in_slices(lambda c: hinge_sum(c, terms, inplace=True), x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return in_slices(lambda c, gc: hinge_grad(c, gc, ctx.terms), x, g), None


class InputGradConv(nn.Module):
    """A stride-1 ``Conv2d`` whose input gradient is a forward convolution with the flipped kernel."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        c = self.conv
        if c.weight.requires_grad or (c.bias is not None and c.bias.requires_grad) or not x.requires_grad:
            return c(x)
        return _FlippedGradConv.apply(x, c.weight, c.bias, c.padding)


def _poolable(m: nn.Module) -> bool:
    if type(m) is not nn.MaxPool2d:
        return False

    def one(v):
        return v if isinstance(v, int) else v[0] if len(set(v)) == 1 else None

    k, s = one(m.kernel_size), one(m.stride if m.stride is not None else m.kernel_size)
    return (
        k is not None
        and k == s
        and one(m.padding) == 0
        and one(m.dilation) == 1
        and not m.ceil_mode
        and not m.return_indices
    )


def _normable(m: nn.Module) -> bool:
    return type(m) is nn.BatchNorm2d and m.running_var is not None


def _flippable(m: nn.Module) -> bool:
    if type(m) is not nn.Conv2d or m.padding_mode != "zeros" or isinstance(m.padding, str):
        return False
    k = m.kernel_size
    return (
        m.stride == (1, 1)
        and m.dilation == (1, 1)
        and m.groups == 1
        and (m.out_channels <= SMALL_CONV or (m.in_channels == 1 and k[0] > 1))
        and all(p <= kk - 1 for p, kk in zip(m.padding, k))
    )


def swap(m: nn.Module, skip: tuple[type, ...] = ()) -> nn.Module | None:
    """The stand-in for one layer, or None to keep it (or when its stand-in's type is in ``skip``)."""
    new = None
    if _poolable(m):
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        new = WindowMaxPool(m, k)
    elif _flippable(m):
        new = InputGradConv(m)
    elif _normable(m):
        new = FrozenBatchNorm(m)
    elif type(m) is SPLASH:
        new = FastSPLASH(m)
    return None if isinstance(new, skip) else new


def accelerate(model: nn.Module, device, skip: tuple[type, ...] = ()) -> nn.Module:
    """``model`` with faster equivalent layers for attacks on ``device`` (see the module docstring); the
    parameters and buffers are the same tensors, so nothing is copied and nothing can drift. ``skip``:
    stand-in types to leave out (benchmarks/layers.py times each one's share)."""
    if torch.device(device).type != "cpu":
        return model
    if not any(swap(m, skip) is not None for m in model.modules()):
        return model
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    try:
        fast = copy.deepcopy(model, memo)
    except Exception:  # a model that cannot be copied (one holding a file or a lock) runs as it is
        return model
    for parent in list(fast.modules()):
        for name, child in list(parent.named_children()):
            new = swap(child, skip)
            if new is not None:
                setattr(parent, name, new)
    return fast
