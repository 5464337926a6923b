import pickle

import numpy as np
import pytest
import torch
from conftest import requires_fmnist
from helpers import write_cifar, write_idx, write_mnist_like

from robench.data import candidate_folders, load_split, select_indices
from robench.errors import RobenchError


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_load_from_data_dir(tmp_path, gz):
    written = write_mnist_like(tmp_path / "fm", gz=gz)
    s = load_split("fashion-mnist", "test", data_dir=tmp_path / "fm")
    imgs, labels = written["t10k"]
    assert len(s) == 50 and s.labels.tolist() == labels.tolist()
    x, y = s.batch([0, 3])
    assert x.shape == (2, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x[1, 0], torch.from_numpy(imgs[3]).float() / 255)
    assert len(load_split("fashion-mnist", "train", data_dir=tmp_path / "fm")) == 80


def test_search_order_env_then_cwd_data(tmp_path, monkeypatch):
    write_mnist_like(tmp_path / "data" / "mnist", n_test=5)
    write_mnist_like(tmp_path / "env" / "MNIST" / "raw", n_test=7, gz=False)
    assert len(load_split("mnist")) == 5  # ./data/mnist
    monkeypatch.setenv("ROBENCH_DATA", str(tmp_path / "env"))
    assert len(load_split("mnist")) == 7  # $ROBENCH_DATA wins over ./data
    write_mnist_like(tmp_path / "explicit", n_test=3)
    assert len(load_split("mnist", data_dir=tmp_path / "explicit")) == 3  # --data-dir wins over all


def test_cifar10_and_cifar100_python_batches(tmp_path):
    write_cifar(tmp_path / "data" / "cifar-10-batches-py", ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)])
    s = load_split("cifar10")
    assert len(s) == 20 and s.images([0]).shape == (1, 3, 32, 32)
    assert len(load_split("cifar10", "train")) == 100
    write_cifar(tmp_path / "data" / "cifar-100-python", ["test", "train"], label_key="fine_labels", classes=100)
    s = load_split("cifar100")
    assert s.labels.max() < 100 and len(s) == 20


def test_cifar_pickle_with_code_is_refused(tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(RobenchError, match="not a readable CIFAR"):
        load_split("cifar10")
    assert not marker.exists()


def test_svhn_mat_maps_label_10_to_digit_0(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (32, 32, 3, 6)).astype(np.uint8)
    y = np.array([[10], [1], [2], [10], [9], [3]])
    (tmp_path / "data" / "svhn").mkdir(parents=True)
    scipy.io.savemat(tmp_path / "data" / "svhn" / "test_32x32.mat", {"X": X, "y": y})
    s = load_split("svhn")
    assert s.labels.tolist() == [0, 1, 2, 0, 9, 3]
    x = s.images([4])
    assert torch.equal(x[0, 2], torch.from_numpy(X[:, :, 2, 4]).float() / 255)


def test_imagenet_folder_is_resized_and_cropped(tmp_path):
    from PIL import Image

    for c in ("n01440764", "n01443537"):
        d = tmp_path / "data" / "imagenet" / "val" / c
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((300, 260, 3), 40 * i, np.uint8)).save(d / f"img{i}.JPEG", format="PNG")
    s = load_split("imagenet")
    assert len(s) == 6 and s.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert s.images([0, 4]).shape == (2, 3, 224, 224)


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(RobenchError) as e:
        load_split("cifar10", data_dir=tmp_path / "nowhere")
    msg = str(e.value)
    assert "nowhere" in msg and "data/cifar-10-batches-py" in msg and "cifar-10-python.tar.gz" in msg
    assert "\n" not in msg


def test_truncated_idx_file_is_reported(tmp_path):
    write_mnist_like(tmp_path / "fm")
    imgs = tmp_path / "fm" / "t10k-images-idx3-ubyte.gz"
    write_idx(imgs.with_name("t10k-images-idx3-ubyte"), np.zeros((3, 28, 28)), gz=True)
    import gzip

    data = gzip.decompress(imgs.read_bytes())
    imgs.write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(RobenchError, match="truncated"):
        load_split("fashion-mnist", data_dir=tmp_path / "fm")


def test_unknown_dataset_suggests():
    with pytest.raises(RobenchError, match="did you mean cifar10"):
        load_split("cifar11")


def test_select_indices():
    assert select_indices(100, 5).tolist() == [0, 1, 2, 3, 4]  # RobustBench: the first n
    a = select_indices(100, 10, seed=3, subset="random")
    assert torch.equal(a, select_indices(100, 10, seed=3, subset="random")) and len(set(a.tolist())) == 10
    assert not torch.equal(a, select_indices(100, 10, seed=4, subset="random"))
    with pytest.raises(RobenchError, match="only 100"):
        select_indices(100, 101)


def test_a_from_subset_continues_the_first_n_where_it_stopped():
    first, more = select_indices(100, 30), select_indices(100, 30, subset="from:30")
    assert more.tolist() == list(range(30, 60)) and not set(first.tolist()) & set(more.tolist())
    with pytest.raises(RobenchError, match="examples 90 to 119 but the split has only 100"):
        select_indices(100, 30, subset="from:90")
    with pytest.raises(RobenchError, match="whole number"):
        select_indices(100, 30, subset="from:x")
    with pytest.raises(RobenchError, match='Unknown subset rule "last"'):
        select_indices(100, 30, subset="last")


def test_candidate_folders_end_with_the_system_folder():
    assert str(candidate_folders("fashion-mnist")[-1]) == "/usr/share/datasets/fashion-mnist"


@requires_fmnist
def test_real_fashion_mnist():
    s = load_split("fashion-mnist")
    assert len(s) == 10_000 and str(s.source) == "/usr/share/datasets/fashion-mnist"
    assert torch.bincount(s.labels).tolist() == [1000] * 10
    x = s.images(torch.arange(1000))
    assert x.min() == 0 and x.max() == 1
    assert 0.27 < x.mean().item() < 0.30  # Fashion-MNIST's pixel mean is about 0.286
    assert len(load_split("fashion-mnist", "train")) == 60_000
