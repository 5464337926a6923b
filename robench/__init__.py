"""robench: adversarial-robustness benchmark for PyTorch checkpoints.

The public API is imported on first use (PEP 562), so `import robench` and `robench --help` do not pay for
importing torch until something needs it."""

from ._version import __version__
from .errors import RobenchError

_LAZY = {
    "ActivationFactory": ".nn.activations",
    "create_activation": ".nn.activations",
    "parse_activation": ".nn.activations",
    "create_model": ".nn.architectures",
    "load_checkpoint": ".checkpoints",
    "model_meta": ".checkpoints",
    "save_checkpoint": ".checkpoints",
    "load_split": ".data",
    "build_zoo": ".api",
    "evaluate": ".api",
    "train": ".api",
}

__all__ = [
    "__version__",
    "RobenchError",
    "ActivationFactory",
    "create_activation",
    "parse_activation",
    "create_model",
    "load_checkpoint",
    "save_checkpoint",
    "model_meta",
    "load_split",
    "api",
    "evaluate",
    "train",
    "build_zoo",
]


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif name in (
        "api",
        "store",
        "checkpoints",
        "data",
        "config",
        "stats",
        "reporting",
        "engine",
        "attacks",
        "nn",
        "training",
        "cli",
        "archive",
        "metadata",
        "files",
    ):
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'robench' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
