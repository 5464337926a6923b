"""Small builders shared by the tests: real on-disk formats, tiny models."""

import gzip
import os
import pickle
import sqlite3
import struct
from pathlib import Path

import numpy as np
import torch

import robench


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_mnist_like(folder: Path, n_test: int = 50, n_train: int = 80, gz: bool = True, seed: int = 0):
    """IDX files with a learnable pattern: class k lights up row block k."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("t10k", n_test), ("train", n_train)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        imgs = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            imgs[i, 2 * k + 4 : 2 * k + 6, :] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte", imgs, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
        out[prefix] = (imgs, labels)
    return out


def write_cifar(folder: Path, files, n: int = 20, label_key: str = "labels", classes: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        d = {
            b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
            label_key.encode(): rng.integers(0, classes, n).tolist(),
        }
        with open(folder / f, "wb") as fh:
            pickle.dump(d, fh)


def tiny_model(activation="relu", seed=0):
    torch.manual_seed(seed)
    return robench.create_model(
        "lenet5", activation, num_classes=10, in_channels=1, input_size=28, mean=[0.286], std=[0.353]
    ).eval()


def save_tiny(path, activation="relu", seed=0, **extra):
    model = tiny_model(activation, seed)
    robench.save_checkpoint(model, path, robench.model_meta("lenet5", activation, "fashion-mnist", **extra))
    return model


def train_fmnist(path, activation="relu", n_train=6000, seed=0):
    """A LeNet5 trained by `robench train` for one pass over n_train real Fashion-MNIST images (seconds on CPU)."""
    return robench.api.train(
        path,
        arch="lenet5",
        activation=activation,
        epochs=1,
        train_images=n_train,
        val_size=1000,
        val_pgd_n=50,
        val_pgd_steps=5,
        seed=seed,
        name=f"lenet5-{activation}-test",
    ).model


class Evil:
    """Unpickling this runs a shell command that writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def readonly_dir(tmp: Path) -> Path:
    """A folder nobody may write in; as root (where chmod does not bind) sysfs, which refuses even root."""
    ro = tmp / "readonly"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    try:
        (ro / "probe").write_text("x")
    except OSError:
        return ro
    (ro / "probe").unlink()
    return Path("/sys")


def store_rows(store: Path) -> list[str]:
    con = sqlite3.connect(store)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(app, args, fragment, files: Path, ckpt: Path, tmp_path: Path):
    """The hostile-input contract: exit 2, one line naming the problem, no traceback, no hostile code run (no
    PWNED marker), the results store and every input file unchanged, nothing half-written left behind."""
    from typer.testing import CliRunner

    import robench

    store = tmp_path / "store.sqlite"
    if not store.exists():
        robench.evaluate([str(ckpt)], n=10, eps=["0.05"], attacks=["fgsm"], store=store)
    before_store, before_files = store_rows(store), snapshot(files)
    ro = readonly_dir(tmp_path)
    argv = [a.format(d=files, ckpt=ckpt, ro=ro) for a in args]
    if argv[0] in ("eval", "transfer", "import") and "--store" not in argv:
        argv += ["--store", str(store)]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2, r.output
    assert fragment in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (files / "PWNED").exists(), "hostile code ran"
    assert store_rows(store) == before_store and snapshot(files) == before_files
    assert not (files / "lb").exists() and not list(tmp_path.glob("*.tmp"))
    return r


class Quantized(torch.nn.Module):
    """Rounds its input to 8 levels before the network: the gradient is zero almost everywhere, a textbook
    case of gradient masking."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 8) / 8)


class Randomized(torch.nn.Module):
    """Adds fresh Gaussian noise to every input at inference."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x + 0.05 * torch.randn_like(x)).clamp(0, 1))
