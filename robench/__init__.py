"""robench: adversarial-robustness benchmark for PyTorch checkpoints."""
from ._version import __version__

from .errors import RobenchError  # noqa: E402
from .nn.activations import ActivationFactory, create_activation, parse_activation  # noqa: E402
from .nn.architectures import create_model  # noqa: E402
from .checkpoints import load_checkpoint, model_meta, save_checkpoint  # noqa: E402
from .data import load_split  # noqa: E402
from . import api  # noqa: E402
from .api import build_zoo, evaluate, train  # noqa: E402

__all__ = ["__version__", "RobenchError", "ActivationFactory", "create_activation", "parse_activation",
           "create_model", "load_checkpoint", "save_checkpoint", "model_meta", "load_split", "api", "evaluate", "train", "build_zoo"]
