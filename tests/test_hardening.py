"""Hostile and broken input, one table: every case is a command a user could type, and each must end in exit
code 2 with one line that names the problem, no traceback, nothing stored, no hostile code run, and no file
of the user's changed."""

import json
import sqlite3
import struct
import zipfile

import numpy as np
import pytest
import torch
from helpers import Evil, assert_refused, tiny_model, write_cifar, write_idx, write_mnist_like
from torch import nn
from typer.testing import CliRunner

import robench
from robench.cli import app
from robench.data import DATASETS, DatasetInfo, Split, register_dataset

runner = CliRunner()


def _robench_pt(path, sd, meta=None):
    torch.save(
        {"robench_format": 1, "meta": meta or robench.model_meta("lenet5", "relu", "fashion-mnist"), "state_dict": sd},
        path,
    )


def _safetensors_raw(path, header: dict, body: bytes):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + body)


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained):
    d = tmp_path_factory.mktemp("hostile")
    marker = d / "PWNED"
    meta = robench.model_meta("lenet5", "relu", "fashion-mnist")
    sd = {k: v.clone() for k, v in tiny_model().net.state_dict().items()}
    first = next(iter(sd))
    # hostile pickles: each would write the marker if unpickled
    torch.save({"state_dict": sd, "extra": Evil(marker)}, d / "evil-legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"state_dict": sd, "extra": Evil(marker)}, d / "evil-zip.pt")
    torch.save({"state_dict": {"block": {"inner": Evil(marker)}}}, d / "evil-nested.pt")
    torch.save(tiny_model().net, d / "whole-module.pt")
    # broken files
    good = d / "good.pt"
    robench.save_checkpoint(tiny_model(), good, meta)
    (d / "trunc.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (d / "empty.pt").write_bytes(b"")
    (d / "text.pt").write_text("this is not a checkpoint\n")
    with zipfile.ZipFile(d / "zip.pt", "w") as z:
        z.writestr("hello.txt", "hi")
    (d / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    robench.save_checkpoint(tiny_model(), d / "good.safetensors", meta)
    data = (d / "good.safetensors").read_bytes()
    (d / "trunc.safetensors").write_bytes(data[: len(data) - 500])
    _safetensors_raw(
        d / "huge.safetensors",
        {
            "w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 4 << 40]},
            "__metadata__": {"robench": json.dumps(meta)},
        },
        b"\0" * 64,
    )
    (d / "huge-header.safetensors").write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    _robench_pt(d / "int.pt", {**sd, first: sd[first].long()})
    _robench_pt(d / "complex.pt", {**sd, first: sd[first].to(torch.complex64)})
    _robench_pt(d / "expand.pt", {**sd, first: torch.zeros(1).expand(10**12)})
    _robench_pt(d / "nan.pt", {**sd, first: sd[first].clone().fill_(float("nan"))})
    from safetensors.torch import save_file

    save_file(
        {**sd, first: sd[first].clone().fill_(float("inf"))},
        str(d / "inf.safetensors"),
        metadata={"robench": json.dumps(meta)},
    )
    _robench_pt(d / "not-tensors.pt", {**sd, first: [1.0, 2.0]})
    torch.save([1, 2, 3], d / "list.pt")
    torch.save({k: v for k, v in sd.items() if k != first}, d / "plain-sd.pt")
    (d / "plain-sd.pt.json").write_text(json.dumps({"arch": "resnet20", "dataset": "fashion-mnist"}))
    model = robench.load_checkpoint(trained).model
    torch.save(nn.Sequential(model, nn.Softmax(dim=1)), d / "probs.pt")
    seven = robench.create_model("lenet5", "relu", num_classes=7, in_channels=1, input_size=28)
    robench.save_checkpoint(seven, d / "seven.pt", {**meta, "num_classes": 7})
    # datasets
    write_mnist_like(d / "fm-corrupt", n_test=20)
    (d / "fm-corrupt" / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage, not gzip")
    write_mnist_like(d / "fm-trunc", n_test=20, gz=False)
    raw = (d / "fm-trunc" / "t10k-images-idx3-ubyte").read_bytes()
    (d / "fm-trunc" / "t10k-images-idx3-ubyte").write_bytes(raw[:-300])
    write_mnist_like(d / "fm-mismatch", n_test=20)
    write_idx(d / "fm-mismatch" / "t10k-labels-idx1-ubyte", np.zeros(7, np.uint8))
    write_cifar(d / "cifar" / "cifar-10-batches-py", ["test_batch"], n=20)
    # suites
    (d / "typo.toml").write_text(f'checkpoints = ["{trained}"]\nn = 10\nepz = ["0.1"]\n')
    (d / "typo-run.toml").write_text(
        f'checkpoints = ["{trained}"]\n[[run]]\nname = "a"\nattacks = ["pgd"]\npgd_stepz = 3\n'
    )
    (d / "broken.toml").write_text("n = [1, 2\n")
    # stores
    (d / "notes.sqlite").write_text("my notes, not a database\n" * 100)
    con = sqlite3.connect(d / "future.sqlite")
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    con.commit()
    con.close()
    con = sqlite3.connect(d / "other-app.sqlite")
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    con.execute("INSERT INTO notes (text) VALUES ('keep me')")
    con.commit()
    con.close()
    (d / "leaderboard.csv").write_text("not,a,leaderboard\n1,2,3\n")
    return d


@pytest.fixture(scope="module")
def custom_dataset():
    """A dataset of the user's own whose loader forgets to scale its images to [0, 1]."""
    labels = torch.arange(40) % 10
    info = DatasetInfo(
        "unscaled",
        10,
        (1, 28, 28),
        {"Linf": "0.1", "L2": "1.5"},
        ("unscaled",),
        (0.5,),
        (0.5,),
        "it is made by the test",
        lambda folder, split: Split("unscaled", split, labels, folder, loader=lambda i: torch.full((1, 28, 28), 255.0)),
    )
    register_dataset(info)
    yield info
    DATASETS.pop("unscaled")


E = ["eval", "{ckpt}", "--n", "20"]  # a valid eval command that the cases change one thing of
CASES = [
    # hostile checkpoints: refused without --trust-checkpoint, the marker never written
    ("pickle, legacy .pt", ["eval", "{d}/evil-legacy.pt"], "--trust-checkpoint"),
    ("pickle, zip .pt", ["eval", "{d}/evil-zip.pt"], "--trust-checkpoint"),
    ("pickle nested in a state dict", ["eval", "{d}/evil-nested.pt"], "--trust-checkpoint"),
    ("pickle via info", ["info", "{d}/evil-zip.pt"], "--trust-checkpoint"),
    ("pickled module", ["eval", "{d}/whole-module.pt"], "--trust-checkpoint"),
    # broken checkpoints
    ("missing checkpoint", ["eval", "{d}/nope.pt"], "No such checkpoint"),
    ("folder as checkpoint", ["eval", "{d}"], "is a folder"),
    ("truncated .pt", ["eval", "{d}/trunc.pt"], "not a readable PyTorch checkpoint"),
    ("zero-byte file", ["eval", "{d}/empty.pt"], "empty (0 bytes)"),
    ("text file", ["eval", "{d}/text.pt"], "not a readable PyTorch checkpoint"),
    ("zip of something else", ["eval", "{d}/zip.pt"], "not a readable PyTorch checkpoint"),
    ("corrupt safetensors header", ["eval", "{d}/bad.safetensors"], "not a readable safetensors"),
    ("truncated safetensors", ["eval", "{d}/trunc.safetensors"], "not a readable safetensors"),
    ("absurd tensor size (safetensors)", ["eval", "{d}/huge.safetensors"], "not a readable safetensors"),
    ("absurd header size", ["eval", "{d}/huge-header.safetensors"], "not a readable safetensors"),
    ("absurd tensor size (.pt view)", ["eval", "{d}/expand.pt"], "shape differs for 0.weight (1000000000000"),
    ("integer weights", ["eval", "{d}/int.pt"], "stores 0.weight as int64 but the model needs float32"),
    ("complex weights", ["eval", "{d}/complex.pt"], "stores 0.weight as complex64"),
    ("NaN weights", ["eval", "{d}/nan.pt"], "NaN or Inf values in its weights (first in 0.weight)"),
    ("Inf weights", ["eval", "{d}/inf.safetensors"], "NaN or Inf values in its weights"),
    ("non-tensor weights", ["eval", "{d}/not-tensors.pt"], "holds a list under 0.weight"),
    ("not a model", ["eval", "{d}/list.pt"], "not a model or a state dict"),
    ("state dict of another architecture", ["eval", "{d}/plain-sd.pt"], "does not fit resnet20"),
    (
        "probabilities, not logits",
        ["eval", "{d}/probs.pt", "--trust-checkpoint", "--dataset", "fashion-mnist"],
        "returns probabilities",
    ),
    ("wrong class count", ["eval", "{d}/seven.pt"], "7 outputs per example but the dataset has 10 classes"),
    # data
    ("missing dataset", E + ["--dataset", "cifar10"], "No cifar10 test files found"),
    ("unknown dataset", E + ["--dataset", "fasion-mnist"], 'Unknown dataset "fasion-mnist"; did you mean'),
    ("corrupt dataset file", E + ["--data-dir", "{d}/fm-corrupt"], "is corrupt or unreadable"),
    ("truncated dataset file", E + ["--data-dir", "{d}/fm-trunc"], "is truncated"),
    ("images and labels differ in count", E + ["--data-dir", "{d}/fm-mismatch"], "the files do not match"),
    (
        "images outside [0, 1] from a custom loader",
        E + ["--dataset", "unscaled", "--data-dir", "{d}"],
        "lie in [255, 255], outside [0, 1]",
    ),
    (
        "wrong channel count",
        E + ["--dataset", "cifar10", "--data-dir", "{d}/cifar"],
        "takes inputs of shape 1x28x28 but the cifar10 images are 3x32x32",
    ),
    ("n larger than the split", ["eval", "{ckpt}", "--n", "20000"], "only 10000"),
    ("n not a number", ["eval", "{ckpt}", "--n", "many"], "Invalid value for '--n'"),
    # eps, norm, attacks
    ("eps negative", E + ["--eps", "-0.1"], "zero or more"),
    ("eps above the input range", E + ["--eps", "1.5"], "above the largest meaningful Linf budget"),
    ("eps 8/0", E + ["--eps", "8/0"], 'Cannot read eps "8/0"'),
    ("eps not a number", E + ["--eps", "eight"], 'Cannot read eps "eight"'),
    ("eps NaN", E + ["--eps", "nan"], "finite number"),
    ("unknown norm", E + ["--norm", "L3"], 'Unknown norm "L3"'),
    ("unknown attack", E + ["--attack", "pgdd"], 'Unknown attack "pgdd"; did you mean pgd'),
    ("unknown attack option", E + ["--attack", "pgd(stepz=3)"], 'has no option "stepz"; did you mean steps'),
    ("bad attack option value", E + ["--attack", "pgd(steps=0)"], "at least one step"),
    ("unclosed attack options", E + ["--attack", "pgd(steps=3"], 'unclosed "("'),
    ("unknown Foolbox attack", E + ["--attack", "fb:NoSuchAttack"], 'Unknown Foolbox attack "NoSuchAttack"'),
    ("Foolbox attack of another norm", E + ["--attack", "fb:L2PGD"], "is an L2 attack; run it with --norm L2"),
    ("AutoAttack with options", E + ["--attack", "autoattack(n_iter=5)"], "takes no options"),
    ("batch size not a number", E + ["--batch-size", "zero"], "--batch-size"),
    ("unavailable device", E + ["--device", "cuda:3"], "CUDA is not available"),
    # configuration files and outputs
    ("TOML typo at the top", ["eval", "--config", "{d}/typo.toml"], 'unknown key "epz"; did you mean "eps"?'),
    (
        "TOML typo in a run",
        ["eval", "--config", "{d}/typo-run.toml"],
        'run "a": unknown key "pgd_stepz"; did you mean "pgd_steps"?',
    ),
    ("TOML syntax error", ["eval", "--config", "{d}/broken.toml"], "is not valid TOML"),
    ("missing suite file", ["eval", "--config", "{d}/nope.toml"], "No such file"),
    ("results file of unknown type", E + ["--out", "{d}/r.xlsx"], "--out must end in .csv or .json"),
    # stores
    (
        "store in a read-only folder",
        ["eval", "{ckpt}", "--n", "20", "--store", "{ro}/s.sqlite"],
        "Cannot write the results store",
    ),
    ("store that is not SQLite", ["eval", "{ckpt}", "--n", "20", "--store", "{d}/notes.sqlite"], "not a robench store"),
    (
        "store from a newer robench",
        ["eval", "{ckpt}", "--n", "20", "--store", "{d}/future.sqlite"],
        "newer robench (store schema 99)",
    ),
    (
        "store of another program",
        ["eval", "{ckpt}", "--n", "20", "--store", "{d}/other-app.sqlite"],
        "SQLite database of another program",
    ),
    (
        "leaderboard of a store that is not SQLite",
        ["leaderboard", "--store", "{d}/notes.sqlite", "--out", "{d}/lb"],
        "not a robench store",
    ),
    (
        "leaderboard of a missing store",
        ["leaderboard", "--store", "{d}/none.sqlite", "--out", "{d}/lb"],
        "No results store",
    ),
    ("check against a file that is not a leaderboard", ["check", "--baseline", "{d}/leaderboard.csv"], "leaderboard"),
    (
        "transfer on a missing dataset",
        ["transfer", "--source", "{ckpt}", "--target", "{d}/seven.pt", "--n", "20", "--dataset", "cifar10"],
        "No cifar10 test files found",
    ),
]


def test_there_are_at_least_30_distinct_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("name,args,fragment", CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_line_exit_2_and_changes_nothing(
    files, trained, custom_dataset, tmp_path, name, args, fragment
):
    assert_refused(app, args, fragment, files, trained, tmp_path)
