"""Datasets from local files in their usual on-disk layouts. Nothing ever downloads.

Search order: ``--data-dir``, then ``$ROBENCH_DATA``, then ``./data``, then ``/usr/share/datasets/<name>/``
(where Debian's ``dataset-fashion-mnist`` puts its IDX files).
"""
from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import RobenchError, unknown

SYSTEM_DIR = Path("/usr/share/datasets")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    shape: tuple[int, int, int]  # C, H, W as the model sees it
    eps: dict  # default eps per norm, as strings
    folders: tuple[str, ...]  # candidate folders under a data root
    mean: tuple[float, ...]
    std: tuple[float, ...]
    how_to_get: str
    reader: Callable[[Path, str], "Split"] = field(repr=False, default=None)


class Split:
    """One split of a dataset: labels in memory, images in memory (uint8) or loaded per batch."""

    def __init__(self, dataset: str, split: str, labels: torch.Tensor, source: Path,
                 images: torch.Tensor | None = None, loader: Callable[[int], torch.Tensor] | None = None):
        self.dataset, self.split, self.labels, self.source = dataset, split, labels.long(), source
        self._images, self._loader = images, loader

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, idx: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Float images in [0, 1] for the given indices, shape (n, C, H, W)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        if self._images is not None:
            return self._images[idx].float().div_(255.0)
        return check_images(torch.stack([torch.as_tensor(self._loader(int(i))) for i in idx]), self.source)

    def batch(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return self.images(idx), self.labels[idx]


def check_images(x: torch.Tensor, source) -> torch.Tensor:
    """Images from a loader must be floats in [0, 1] (models normalize inside); anything else is refused."""
    if not x.is_floating_point():
        raise RobenchError(f"The images from {source} are {str(x.dtype).replace('torch.', '')}, not floats in "
                           "[0, 1]; convert them in the loader (e.g. torchvision's ToTensor).")
    lo, hi = float(x.min()), float(x.max()) if x.numel() else (0.0, 0.0)
    if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
        raise RobenchError(f"The images from {source} lie in [{lo:g}, {hi:g}], outside [0, 1]; robench models "
                           "take inputs in [0, 1] with normalization inside the model, so scale them in the loader.")
    return x


def select_indices(total: int, n: int | None, seed: int | None = None, subset: str = "first") -> torch.Tensor:
    """The examples to evaluate: the first n (RobustBench's rule) or a seeded random subset."""
    if n is None or n <= 0:
        n = total
    if n > total:
        raise RobenchError(f"Asked for n={n} examples but the split has only {total}; use --n {total} or less.")
    if subset == "first":
        return torch.arange(n)
    if subset == "random":
        g = torch.Generator().manual_seed(int(seed or 0))
        return torch.randperm(total, generator=g)[:n].sort().values
    raise unknown("subset rule", subset, ["first", "random"])


# ------------------------------------------------------------------------------------------ readers
def _open(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise RobenchError(f"{path} is corrupt or unreadable ({e}); replace it with a good copy.") from e


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), plain or gzipped."""
    data = _open(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise RobenchError(f"{path} is not an IDX file of unsigned bytes; replace it with a good copy.")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise RobenchError(f"{path} is truncated ({body.size} of {int(np.prod(dims))} bytes); "
                           "replace it with a good copy.")
    return body.reshape(tuple(dims))


def _find_file(folder: Path, stem: str) -> Path | None:
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def _read_idx_split(name: str) -> Callable[[Path, str], Split]:
    def read(folder: Path, split: str) -> Split:
        prefix = "t10k" if split == "test" else "train"
        imgs = read_idx(_find_file(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_file(folder, f"{prefix}-labels-idx1-ubyte"))
        if len(imgs) != len(labels):
            raise RobenchError(f"{folder} has {len(imgs)} images but {len(labels)} labels; the files do not match.")
        return Split(name, split, torch.from_numpy(labels.copy()), folder,
                     images=torch.from_numpy(imgs.copy()).unsqueeze(1))
    return read


def _idx_present(folder: Path, split: str) -> bool:
    prefix = "t10k" if split == "test" else "train"
    return all(_find_file(folder, f"{prefix}-{k}-idx{d}-ubyte") for k, d in (("images", 3), ("labels", 1)))


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR's python batches: numpy arrays and plain containers only, no other code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a dataset file")


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _ArraysOnly(f, encoding="latin1").load()
        d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[label_key], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, AttributeError, TypeError) as e:
        raise RobenchError(f"{path} is not a readable CIFAR python batch ({e}); replace it with a good copy.") from e
    return x, y


def _read_cifar(name: str, files: dict[str, list[str]], label_key: str):
    def read(folder: Path, split: str) -> Split:
        parts = [_read_cifar_batch(folder / f, label_key) for f in files[split]]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return Split(name, split, torch.from_numpy(y), folder, images=torch.from_numpy(x))
    return read


CIFAR10_FILES = {"test": ["test_batch"], "train": [f"data_batch_{i}" for i in range(1, 6)]}
CIFAR100_FILES = {"test": ["test"], "train": ["train"]}


def _read_svhn(folder: Path, split: str) -> Split:
    import scipy.io

    path = folder / f"{split}_32x32.mat"
    try:
        mat = scipy.io.loadmat(path)
        x = np.transpose(mat["X"], (3, 2, 0, 1)).astype(np.uint8)
        y = mat["y"].astype(np.int64).reshape(-1) % 10  # SVHN stores digit 0 as label 10
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RobenchError(f"{path} is not a readable SVHN .mat file ({e}); replace it with a good copy.") from e
    return Split("svhn", split, torch.from_numpy(y), folder, images=torch.from_numpy(np.ascontiguousarray(x)))


IMAGENET_SUBSET = 5000


def _read_imagenet(folder: Path, split: str) -> Split:
    """ImageFolder layout (``val/<wnid>/*.JPEG``); resize 256, centre crop 224; a fixed, evenly spaced
    5000-image subset of the sorted validation set (5 per class on the full 50,000)."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    try:
        ds = datasets.ImageFolder(str(folder), transform=tf)
    except (OSError, FileNotFoundError) as e:
        raise RobenchError(f"{folder} is not an ImageNet folder of class sub-folders ({e}).") from e
    total = len(ds.samples)
    keep = (list(range(total)) if total <= IMAGENET_SUBSET
            else [i * total // IMAGENET_SUBSET for i in range(IMAGENET_SUBSET)])
    samples = [ds.samples[i] for i in keep]
    labels = torch.tensor([s[1] for s in samples])

    def load(i: int) -> torch.Tensor:
        path = samples[i][0]
        try:
            return tf(ds.loader(path))
        except OSError as e:
            raise RobenchError(f"{path} is not a readable image ({e}); replace or remove it.") from e

    return Split("imagenet", split, labels, folder, loader=load)


def _files_present(files: dict[str, list[str]]):
    return lambda folder, split: all((folder / f).is_file() for f in files[split])


DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (
    DatasetInfo("fashion-mnist", 10, (1, 28, 28), {"Linf": "0.1", "L2": "1.5"},
                ("fashion-mnist", "FashionMNIST/raw", "fashion_mnist"), (0.2860,), (0.3530,),
                "run `apt-get install dataset-fashion-mnist` (Debian) or put the four IDX files in ./data/fashion-mnist/",
                _read_idx_split("fashion-mnist")),
    DatasetInfo("mnist", 10, (1, 28, 28), {"Linf": "0.3", "L2": "2.0"},
                ("mnist", "MNIST/raw"), (0.1307,), (0.3081,),
                "put the four MNIST IDX files in ./data/mnist/ (or MNIST/raw/ as torchvision keeps them)",
                _read_idx_split("mnist")),
    DatasetInfo("cifar10", 10, (3, 32, 32), {"Linf": "8/255", "L2": "0.5"},
                ("cifar-10-batches-py", "cifar10/cifar-10-batches-py"),
                (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616),
                "unpack cifar-10-python.tar.gz into ./data/ so that ./data/cifar-10-batches-py/ exists",
                _read_cifar("cifar10", CIFAR10_FILES, "labels")),
    DatasetInfo("cifar100", 100, (3, 32, 32), {"Linf": "8/255", "L2": "0.5"},
                ("cifar-100-python", "cifar100/cifar-100-python"),
                (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                "unpack cifar-100-python.tar.gz into ./data/ so that ./data/cifar-100-python/ exists",
                _read_cifar("cifar100", CIFAR100_FILES, "fine_labels")),
    DatasetInfo("svhn", 10, (3, 32, 32), {"Linf": "8/255", "L2": "0.5"}, ("svhn", "SVHN"),
                (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                "put test_32x32.mat (and train_32x32.mat) in ./data/svhn/",
                _read_svhn),
    DatasetInfo("imagenet", 1000, (3, 224, 224), {"Linf": "4/255", "L2": "3.0"},
                ("imagenet/val", "ImageNet/val", "imagenet"), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                "put the validation set as ./data/imagenet/val/<wnid>/*.JPEG (torchvision's ImageFolder layout)",
                _read_imagenet),
)}

_PRESENT = {
    "fashion-mnist": _idx_present, "mnist": _idx_present,
    "cifar10": _files_present(CIFAR10_FILES), "cifar100": _files_present(CIFAR100_FILES),
    "svhn": lambda folder, split: (folder / f"{split}_32x32.mat").is_file(),
    "imagenet": lambda folder, split: folder.is_dir() and any(p.is_dir() for p in folder.iterdir()),
}
ALIASES = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
           "cifar-10": "cifar10", "cifar-100": "cifar100"}


def register_dataset(info: DatasetInfo, present: Callable[[Path, str], bool] | None = None) -> DatasetInfo:
    """Make a dataset of your own known to robench under ``info.name`` (its reader returns a ``Split``,
    usually with a per-example ``loader``); ``present(folder, split)`` says whether a folder holds it
    (default: the folder exists). Use it from Python, or from a plugin imported before the CLI runs."""
    DATASETS[info.name] = info
    _PRESENT[info.name] = present or (lambda folder, split: folder.is_dir())
    return info


def dataset_info(name: str) -> DatasetInfo:
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in DATASETS:
        raise unknown("dataset", name, list(DATASETS))
    return DATASETS[key]


def candidate_folders(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Every folder robench looks in for ``name``, in order."""
    info = dataset_info(name)
    out: list[Path] = []
    if data_dir:
        d = Path(data_dir)
        out += [d] + [d / f for f in info.folders]
        if info.name == "imagenet":
            out.insert(1, d / "val")
    for root in filter(None, (os.environ.get("ROBENCH_DATA"), "data")):
        out += [Path(root) / f for f in info.folders]
    out.append(SYSTEM_DIR / info.name)
    return out


def load_split(name: str, split: str = "test", data_dir: str | Path | None = None) -> Split:
    """Load a split from the first folder that holds it; a missing dataset says where robench looked."""
    info = dataset_info(name)
    if split not in ("test", "train"):
        raise unknown("split", split, ["test", "train"])
    if info.name == "imagenet" and split == "train":
        raise RobenchError("robench evaluates ImageNet on its validation set only; use split test.")
    folders = candidate_folders(info.name, data_dir)
    for folder in folders:
        try:
            present = folder.is_dir() and _PRESENT[info.name](folder, split)
        except OSError:
            present = False
        if present:
            return info.reader(folder, split)
    looked = ", ".join(str(f) for f in dict.fromkeys(folders))
    raise RobenchError(f"No {info.name} {split} files found (looked in {looked}); {info.how_to_get}.")
