import os
from pathlib import Path

import pytest
import torch

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def fmnist_available() -> bool:
    return (FMNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()


# The real embedded dataset must be there in CI (`make install` installs it); elsewhere its tests skip.
requires_fmnist = pytest.mark.skipif(
    not fmnist_available() and not os.environ.get("CI"),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    """Each test: its own cwd (so ./data and ./results are empty), no inherited robench settings."""
    monkeypatch.chdir(tmp_path)
    for var in ("ROBENCH_DATA", "ROBENCH_STORE", "ROBENCH_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A LeNet5 trained briefly on the real Fashion-MNIST, saved as a robench checkpoint."""
    if not fmnist_available():
        pytest.skip("Fashion-MNIST is not installed") if not os.environ.get("CI") else None
    from helpers import train_fmnist

    path = tmp_path_factory.mktemp("zoo") / "lenet5-relu.pt"
    train_fmnist(path)
    return path
