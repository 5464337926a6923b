"""Datasets from local files in their usual on-disk layouts. Nothing ever downloads.

Search order: ``--data-dir``, then ``$ROBENCH_DATA``, then ``./data``, then ``/usr/share/datasets/<name>/``
(where Debian's ``dataset-fashion-mnist`` puts its IDX files).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .config import validate_subset
from .errors import RobenchError, unknown
from .registry import Registry

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
    reader: Callable[[Path, str], Split] = field(repr=False, default=None)
    # whether a folder holds a split (default: the folder exists)
    present: Callable[[Path, str], bool] | None = field(repr=False, default=None, compare=False)


class Split:
    """One split of a dataset: labels in memory, images in memory (uint8) or loaded per batch."""

    def __init__(
        self,
        dataset: str,
        split: str,
        labels: torch.Tensor,
        source: Path,
        images: torch.Tensor | None = None,
        loader: Callable[[int], torch.Tensor] | None = None,
    ):
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

    def fingerprint(self, idx) -> str:
        """sha256 of the examples at ``idx``, images and labels as read: two folders whose files differ give
        different fingerprints, so a stored result is only ever reused for the same data. Images held in
        memory are hashed as stored; a split read per example hashes its files' bytes (``files``) or else
        the loaded images."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        key = hashlib.sha256(idx.numpy().tobytes()).hexdigest()
        cache = self.__dict__.setdefault("_fingerprints", {})
        if key not in cache:
            h = hashlib.sha256(b"robench-data-1")
            h.update(self.labels[idx].numpy().astype("<i8").tobytes())
            files = getattr(self, "files", None)
            for chunk in idx.split(1024):
                if self._images is not None:
                    h.update(self._images[chunk].contiguous().numpy().tobytes())
                elif files is not None:
                    for i in chunk.tolist():
                        h.update(Path(files[i]).read_bytes())
                else:
                    h.update(self.images(chunk).contiguous().numpy().astype("<f4").tobytes())
            cache[key] = h.hexdigest()
        return cache[key]


def check_images(x: torch.Tensor, source) -> torch.Tensor:
    """Images from a loader must be floats in [0, 1] (models normalize inside); anything else is refused."""
    if not x.is_floating_point():
        raise RobenchError(
            f"The images from {source} are {str(x.dtype).replace('torch.', '')}, not floats in "
            "[0, 1]; convert them in the loader (e.g. torchvision's ToTensor)."
        )
    lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
    if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
        raise RobenchError(
            f"The images from {source} lie in [{lo:g}, {hi:g}], outside [0, 1]; robench models "
            "take inputs in [0, 1] with normalization inside the model, so scale them in the loader."
        )
    return x


def check_split(data: Split, info: DatasetInfo) -> Split:
    """Refuse a split whose labels lie outside the dataset's classes or whose image and label counts
    differ, before anything is evaluated or stored."""
    if len(data) == 0:
        raise RobenchError(f"{data.source} holds no {info.name} {data.split} examples; replace it with a good copy.")
    lo, hi = int(data.labels.min()), int(data.labels.max())
    if lo < 0 or hi >= info.num_classes:
        bad = lo if lo < 0 else hi
        raise RobenchError(
            f"{data.source} has a {info.name} {data.split} label of {bad}, outside the dataset's "
            f"classes 0 to {info.num_classes - 1}; replace the label file with a good copy."
        )
    if data._images is not None and len(data._images) != len(data.labels):
        raise RobenchError(
            f"{data.source} has {len(data._images)} images but {len(data.labels)} labels; the files do not match."
        )
    return data


def select_indices(total: int, n: int | None, seed: int | None = None, subset: str = "first") -> torch.Tensor:
    """The examples to evaluate: the first n (RobustBench's rule), a seeded random subset, or ``from:K``, the
    n examples that follow the first K (to extend a first-n evaluation in chunks: ``--n 1000 --subset
    from:1000`` is examples 1000 to 1999)."""
    if n is None or n <= 0:
        n = total
    validate_subset(subset)
    start = int(subset[5:]) if subset.startswith("from:") else 0
    if start + n > total:
        where = f"examples {start} to {start + n - 1}" if start else f"n={n} examples"
        raise RobenchError(f"Asked for {where} but the split has only {total}; use --n {total - start} or less.")
    if subset == "first" or subset.startswith("from:"):
        return torch.arange(start, start + n)
    g = torch.Generator().manual_seed(int(seed or 0))
    return torch.randperm(total, generator=g)[:n].sort().values


# ------------------------------------------------------------------------------------------ readers
MAX_IDX_BYTES = 2 << 30  # an IDX file may declare up to 2 GiB of data (Fashion-MNIST's training images: 47 MB)


def _corrupt(path: Path, e: Exception) -> RobenchError:
    return RobenchError(f"{path} is corrupt or unreadable ({e}); replace it with a good copy.")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), plain or gzipped. The header is read first and bounds what is
    decompressed: a file that declares more than 2 GiB, or holds more than it declares, is refused."""

    def refuse(why: str) -> RobenchError:
        return RobenchError(f"{path} {why}; replace it with a good copy.")

    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:3] != b"\0\0\x08":
                raise refuse("is not an IDX file of unsigned bytes")
            ndim = head[3]
            if not 1 <= ndim <= 4:
                raise refuse(f"declares {ndim} dimensions, where an IDX file of images or labels has 1 to 4")
            raw = f.read(4 * ndim)
            if len(raw) < 4 * ndim:
                raise refuse(f"has a short header ({4 + len(raw)} of {4 + 4 * ndim} bytes)")
            dims = struct.unpack(">" + "I" * ndim, raw)
            if 0 in dims:
                raise refuse(f"declares a zero dimension ({'x'.join(map(str, dims))}), so it holds no examples")
            size = math.prod(dims)
            if size > MAX_IDX_BYTES:
                raise refuse(
                    f"declares {size / 2**30:.1f} GiB of data ({'x'.join(map(str, dims))}), more than "
                    "robench reads from one IDX file (2 GiB)"
                )
            body = f.read(size)
            if len(body) < size:
                raise RobenchError(f"{path} is truncated ({len(body)} of {size} bytes); replace it with a good copy.")
            if f.read(1):
                raise refuse(f"holds more data than its header declares ({'x'.join(map(str, dims))})")
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise _corrupt(path, e) from e
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


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
        return Split(
            name, split, torch.from_numpy(labels.copy()), folder, images=torch.from_numpy(imgs.copy()).unsqueeze(1)
        )

    return read


def _idx_present(folder: Path, split: str) -> bool:
    prefix = "t10k" if split == "test" else "train"
    return all(_find_file(folder, f"{prefix}-{k}-idx{d}-ubyte") for k, d in (("images", 3), ("labels", 1)))


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR's python batches: numpy arrays and plain containers only, no other code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

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
        X, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
        if X.ndim != 4 or X.shape[:3] != (32, 32, 3):
            raise ValueError(f"X has shape {'x'.join(map(str, X.shape))}, not 32x32x3xN")
    except NotImplementedError:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise RobenchError(
            f"{path} is a MATLAB v7.3 file, which robench cannot read; save it in the v5 format "
            "of the original SVHN release."
        ) from None
    except Exception as e:  # scipy raises many types for a file that is not a .mat
        raise RobenchError(f"{path} is not a readable SVHN .mat file ({e}); replace it with a good copy.") from None
    if X.dtype != np.uint8 or not np.issubdtype(y.dtype, np.integer):
        raise RobenchError(
            f"{path} stores its images as {X.dtype} and labels as {y.dtype}; SVHN's are unsigned "
            "bytes and whole numbers, so replace it with the original file."
        )
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise RobenchError(
            f"{path} has a label of {int(y.min() if y.min() < 1 else y.max())}; SVHN's labels are "
            "1 to 10 (10 for the digit 0), so replace it with the original file."
        )
    x = np.transpose(X, (3, 2, 0, 1))
    return Split(
        "svhn",
        split,
        torch.from_numpy(y.astype(np.int64) % 10),
        folder,  # 10 stands for the digit 0
        images=torch.from_numpy(np.ascontiguousarray(x)),
    )


IMAGENET_SUBSET = 5000


def _read_imagenet(folder: Path, split: str) -> Split:
    """ImageFolder layout (``val/<wnid>/*.JPEG``); resize 256, centre crop 224; a fixed, evenly spaced
    5000-image subset of the sorted validation set (5 per class on the full 50,000)."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    try:
        ds = datasets.ImageFolder(str(folder), transform=tf)
    except OSError as e:
        raise RobenchError(f"{folder} is not an ImageNet folder of class sub-folders ({e}).") from e
    total = len(ds.samples)
    keep = (
        list(range(total))
        if total <= IMAGENET_SUBSET
        else [i * total // IMAGENET_SUBSET for i in range(IMAGENET_SUBSET)]
    )
    samples = [ds.samples[i] for i in keep]
    labels = torch.tensor([s[1] for s in samples])

    def load(i: int) -> torch.Tensor:
        from PIL import Image

        path = samples[i][0]
        try:
            return tf(ds.loader(path))
        except Image.DecompressionBombError:
            raise RobenchError(
                f"{path} is an image of more than 178 million pixels, which robench refuses to "
                "decode (a decompression bomb); replace or remove it."
            ) from None
        except (OSError, ValueError, SyntaxError) as e:
            raise RobenchError(f"{path} is not a readable image ({e}); replace or remove it.") from e

    data = Split("imagenet", split, labels, folder, loader=load)
    data.files = [s[0] for s in samples]
    return data


IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _image_classes(folder: Path) -> bool:
    """A folder of class sub-folders that hold images (so D/imagenet/ itself, whose only sub-folder is val/,
    is not taken for a one-class dataset)."""
    for sub in folder.iterdir():
        if sub.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in sub.iterdir()):
            return True
    return False


def _files_present(files: dict[str, list[str]]):
    return lambda folder, split: all((folder / f).is_file() for f in files[split])


# Other spellings of the built-in names; every dataset registers itself through register_dataset below.
DATASETS: Registry[DatasetInfo] = Registry(
    "dataset",
    aliases={
        "fmnist": "fashion-mnist",
        "fashion_mnist": "fashion-mnist",
        "fashionmnist": "fashion-mnist",
        "cifar-10": "cifar10",
        "cifar-100": "cifar100",
    },
)


def register_dataset(info: DatasetInfo, present: Callable[[Path, str], bool] | None = None) -> DatasetInfo:
    """Make a dataset of your own known to robench under ``info.name`` (its reader returns a ``Split``,
    usually with a per-example ``loader``); ``present(folder, split)`` (or ``info.present``) says whether a
    folder holds it (default: the folder exists). Use it from Python, or from a plugin imported before the
    CLI runs; registering a name again replaces it."""
    if present is not None or info.present is None:
        info = replace(info, present=present or (lambda folder, split: folder.is_dir()))
    return DATASETS.add(info.name, info, replace=True)


# the built-in datasets: their sizes, default eps, where they are found, normalisation and readers
for _info in (
    DatasetInfo(
        "fashion-mnist",
        10,
        (1, 28, 28),
        {"Linf": "0.1", "L2": "1.5"},
        ("fashion-mnist", "FashionMNIST/raw", "fashion_mnist"),
        (0.2860,),
        (0.3530,),
        "run `apt-get install dataset-fashion-mnist` (Debian) or put the four IDX files in ./data/fashion-mnist/",
        _read_idx_split("fashion-mnist"),
        present=_idx_present,
    ),
    DatasetInfo(
        "mnist",
        10,
        (1, 28, 28),
        {"Linf": "0.3", "L2": "2.0"},
        ("mnist", "MNIST/raw"),
        (0.1307,),
        (0.3081,),
        "put the four MNIST IDX files in ./data/mnist/ (or MNIST/raw/ as torchvision keeps them)",
        _read_idx_split("mnist"),
        present=_idx_present,
    ),
    DatasetInfo(
        "cifar10",
        10,
        (3, 32, 32),
        {"Linf": "8/255", "L2": "0.5"},
        ("cifar-10-batches-py", "cifar10/cifar-10-batches-py"),
        (0.4914, 0.4822, 0.4465),
        (0.2471, 0.2435, 0.2616),
        "unpack cifar-10-python.tar.gz into ./data/ so that ./data/cifar-10-batches-py/ exists",
        _read_cifar("cifar10", CIFAR10_FILES, "labels"),
        present=_files_present(CIFAR10_FILES),
    ),
    DatasetInfo(
        "cifar100",
        100,
        (3, 32, 32),
        {"Linf": "8/255", "L2": "0.5"},
        ("cifar-100-python", "cifar100/cifar-100-python"),
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        "unpack cifar-100-python.tar.gz into ./data/ so that ./data/cifar-100-python/ exists",
        _read_cifar("cifar100", CIFAR100_FILES, "fine_labels"),
        present=_files_present(CIFAR100_FILES),
    ),
    DatasetInfo(
        "svhn",
        10,
        (3, 32, 32),
        {"Linf": "8/255", "L2": "0.5"},
        ("svhn", "SVHN"),
        (0.4377, 0.4438, 0.4728),
        (0.1980, 0.2010, 0.1970),
        "put test_32x32.mat (and train_32x32.mat) in ./data/svhn/",
        _read_svhn,
        present=lambda folder, split: (folder / f"{split}_32x32.mat").is_file(),
    ),
    DatasetInfo(
        "imagenet",
        1000,
        (3, 224, 224),
        {"Linf": "4/255", "L2": "3.0"},
        ("imagenet/val", "ImageNet/val", "imagenet"),
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        "put the validation set as ./data/imagenet/val/<wnid>/*.JPEG (torchvision's ImageFolder layout)",
        _read_imagenet,
        present=lambda folder, split: _image_classes(folder),
    ),
):
    register_dataset(_info)


def dataset_info(name: str) -> DatasetInfo:
    """The dataset of this name (any case, or an alias), or an error naming the closest known ones."""
    return DATASETS.find(name)


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
            present = folder.is_dir() and info.present(folder, split)
        except OSError:
            present = False
        if present:
            return check_split(info.reader(folder, split), info)
    looked = ", ".join(str(f) for f in dict.fromkeys(folders))
    raise RobenchError(f"No {info.name} {split} files found (looked in {looked}); {info.how_to_get}.")
