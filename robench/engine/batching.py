"""Devices and batch sizes."""

from __future__ import annotations

import torch

from ..config import parse_batch_size, validate_device_name
from ..errors import RobenchError

__all__ = ["resolve_device", "auto_batch_size", "parse_batch_size"]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu."""
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    validate_device_name(device)
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise RobenchError(f'Unknown device "{device}"; use auto, cpu, cuda, cuda:N or mps.') from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RobenchError(f"Device {device} was asked for but CUDA is not available here; use --device cpu.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RobenchError(f"Device {device} does not exist; this machine has {torch.cuda.device_count()} GPU(s).")
    return dev


def auto_batch_size(model, shape, device: torch.device, n: int, limit: int = 4096) -> int:
    """The largest batch (a power of two, at most ``limit`` and n) whose forward+backward fits; on CPU a
    fixed size by input size, where larger batches give no speed-up."""
    numel = 1
    for s in shape:
        numel *= s
    if device.type != "cuda":
        return max(1, min(n, 256 if numel <= 3 * 32 * 32 else 32))
    bs, best = 32, 0
    while bs <= min(limit, max(n, 32)):
        try:
            x = torch.zeros((bs, *shape), device=device, requires_grad=True)  # the caller's RNG stays untouched
            model(x).sum().backward()
            best = bs
            bs *= 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    if best == 0:
        raise RobenchError("Not even a batch of 32 fits in GPU memory; pass a smaller --batch-size.")
    return max(1, min(n, best // 2 if best >= 64 else best))  # leave room for the attack's own tensors
