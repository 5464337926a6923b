"""Faster stand-ins for layers at attack time, for models in eval mode with frozen parameters.

`accelerate(model, device)` returns the same network (parameters and buffers shared, not copied) with
two kinds of layer replaced where they pay on the CPU (measured on the shipped LeNet-5, batch 250: one
attack step 39 -> 20 ms):

- ``Conv2d`` with stride 1 and at most 12 output channels: the gradient with respect to the input is
  computed as a forward convolution with the flipped, transposed kernel instead of oneDNN's
  backward-data kernel, which is 2-8x slower for so few channels (LeNet's 1->6 first layer). The forward
  pass is untouched; the input gradient equals the native one up to float rounding.
- ``MaxPool2d`` with kernel = stride and no padding, when no gradient is taken (clean passes, re-checks,
  Square's queries): the window maximum is taken as elementwise maxima of strided views (first over the
  window's rows, then over its columns), 5-13x faster than PyTorch's NCHW kernel and the same values
  (NaN wins, as in PyTorch; of a +0/-0 tie either may come out, which no later layer can tell apart).
  With gradients PyTorch's kernel runs, so the gradient goes to the same element of each window.

So the accelerated model's forward pass is bit-identical to the original's: clean accuracy and every
final verdict are unchanged, and only the attack's search direction can differ, at the level of float
rounding (as it does between two CPUs). On CUDA the model is returned as it is: cuDNN has neither problem.
"""
from __future__ import annotations

import copy
from functools import reduce

import torch
import torch.nn.functional as F
from torch import nn

SMALL_CONV = 12  # at most this many output channels: the flipped forward convolution wins (benchmarks)


class WindowMaxPool(nn.Module):
    """``MaxPool2d(k)`` (stride k, no padding). Without gradients the window maximum is elementwise maxima
    of strided views, over the window's rows and then its columns; with them PyTorch's own kernel runs, so
    the gradient picks the same element of each window."""

    def __init__(self, pool: nn.MaxPool2d, k: int):
        super().__init__()
        self.pool, self.k = pool, k

    def forward(self, x):
        if x.dim() != 4 or (x.requires_grad and torch.is_grad_enabled()):
            return self.pool(x)
        n, c, h, w = x.shape
        k, ho, wo = self.k, h // self.k, w // self.k
        if (h, w) != (ho * k, wo * k):
            x = x[:, :, :ho * k, :wo * k]
        rows = reduce(torch.maximum, x.reshape(n, c, ho, k, wo * k).unbind(3))  # over the window's rows
        return reduce(torch.maximum, rows.reshape(n, c, ho, wo, k).unbind(4))  # then over its columns


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
        g = F.conv2d(grad, flipped, None, 1, (k_h - 1 - p_h, k_w - 1 - p_w))
        return g.to(ctx.dtype), None, None, None


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
    return (k is not None and k == s and one(m.padding) == 0
            and one(m.dilation) == 1 and not m.ceil_mode and not m.return_indices)


def _flippable(m: nn.Module) -> bool:
    if type(m) is not nn.Conv2d or m.padding_mode != "zeros" or isinstance(m.padding, str):
        return False
    k = m.kernel_size
    return (m.stride == (1, 1) and m.dilation == (1, 1) and m.groups == 1 and m.out_channels <= SMALL_CONV
            and all(p <= kk - 1 for p, kk in zip(m.padding, k)))


def swap(m: nn.Module) -> nn.Module | None:
    """The stand-in for one layer, or None to keep it."""
    if _poolable(m):
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        return WindowMaxPool(m, k)
    if _flippable(m):
        return InputGradConv(m)
    return None


def accelerate(model: nn.Module, device) -> nn.Module:
    """``model`` with faster equivalent layers for attacks on ``device`` (see the module docstring); the
    parameters and buffers are the same tensors, so nothing is copied and nothing can drift."""
    if torch.device(device).type != "cpu":
        return model
    if not any(_poolable(m) or _flippable(m) for m in model.modules()):
        return model
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    try:
        fast = copy.deepcopy(model, memo)
    except Exception:  # a model that cannot be copied (one holding a file or a lock) runs as it is
        return model
    for parent in list(fast.modules()):
        for name, child in list(parent.named_children()):
            new = swap(child)
            if new is not None:
                setattr(parent, name, new)
    return fast
