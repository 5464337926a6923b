"""The Python API that the CLI and users call. Works and returns data; never prints."""
from __future__ import annotations

from pathlib import Path

from .checkpoints import Checkpoint, checkpoint_info, load_checkpoint
from .nn.activations import describe_activations
from .nn.architectures import describe_architectures


def models() -> list[dict]:
    """Registered architectures: name, description, the inputs they were designed for."""
    return describe_architectures()


def activations() -> list[dict]:
    """Registered activations: name, formula, learned parameters, options, default sharing."""
    return describe_activations()


def info(path: str | Path, trust: bool = False, **overrides) -> dict:
    """Metadata, parameter count and learned activation parameters of a checkpoint."""
    return checkpoint_info(load_checkpoint(path, trust=trust, **overrides))


def load(path: str | Path, trust: bool = False, **overrides) -> Checkpoint:
    return load_checkpoint(path, trust=trust, **overrides)
