"""The hostile table, second part: the cases of the trust audit (code in exported programs, malformed
metadata and model cards, data files that lie about their contents, wrong types in suites and attack
options, damaged stores, resource bombs, other people's folders). Every case holds to the contract of
``helpers.assert_refused``: exit 2, one line, no traceback, no marker file, store and inputs unchanged."""

import gzip
import io
import json
import sqlite3
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import Evil, assert_refused, tiny_model, write_cifar, write_idx, write_mnist_like
from torch import nn

import robench
from robench.cli import app


def _pickled(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _rewrite_zip(src: Path, dst: Path, change, extra: dict | None = None) -> None:
    """Copy an archive member by member through ``change(name, data)``, adding ``extra`` members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        root = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            zout.writestr(info.filename, change(info.filename, zin.read(info.filename)))
        for name, data in (extra or {}).items():
            zout.writestr(f"{root}/{name}", data)


def _safetensors_with_meta(path: Path, meta_text: str, sd: dict | None = None) -> None:
    from safetensors.torch import save_file

    save_file(sd or dict(tiny_model().net.state_dict()), str(path), metadata={"robench": meta_text})


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels (the pixels themselves are never needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _svhn(path: Path, X, y) -> None:
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"X": X, "y": y})


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained):
    d = tmp_path_factory.mktemp("hostile2")
    marker = d / "PWNED"
    meta = robench.model_meta("lenet5", "relu", "fashion-mnist")
    # exported programs: a good one, then each way torch's loader would unpickle or load native code
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    dyn = ({0: torch.export.Dim("batch")},)
    torch.export.save(torch.export.export(net, (torch.rand(2, 1, 28, 28),), dynamic_shapes=dyn), d / "good.pt2")
    torch.export.save(torch.export.export(net, (torch.rand(2, 1, 28, 28),)), d / "fixed-batch.pt2")

    def pickled_weight(name, data):
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            config["config"]["1.bias"]["use_pickle"] = True
            return json.dumps(config).encode()
        return _pickled(Evil(marker)) if name.endswith("weights/weight_1") else data

    _rewrite_zip(d / "good.pt2", d / "evil-weight.pt2", pickled_weight)
    _rewrite_zip(
        d / "good.pt2",
        d / "evil-sample.pt2",
        lambda name, data: _pickled(Evil(marker)) if "sample_inputs" in name else data,
    )

    def opaque_constant(name, data):
        if name.endswith("model_constants_config.json"):
            return json.dumps(
                {
                    "config": {
                        "c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
                    }
                }
            ).encode()
        return data

    _rewrite_zip(
        d / "good.pt2",
        d / "evil-constant.pt2",
        opaque_constant,
        {"data/constants/opaque_obj_0": _pickled(Evil(marker))},
    )
    _rewrite_zip(
        d / "good.pt2", d / "aoti.pt2", lambda n, data: data, {"data/aotinductor/model/model.so": b"\x7fELF not really"}
    )
    _rewrite_zip(
        d / "good.pt2",
        d / "legacy-weights.pt2",
        lambda n, data: data,
        {"data/weights/model.pt": _pickled({"w": Evil(marker)})},
    )
    import os

    os.mkfifo(d / "pipe.pt")  # reading it would wait forever
    # robench metadata that is not what it claims
    _safetensors_with_meta(d / "meta-not-json.safetensors", "{arch: lenet5")
    _safetensors_with_meta(d / "meta-deep.safetensors", "[" * 10000 + "]" * 10000)
    _safetensors_with_meta(d / "meta-list.safetensors", json.dumps([meta]))
    _safetensors_with_meta(d / "meta-ten.safetensors", json.dumps({**meta, "num_classes": "ten"}))
    _safetensors_with_meta(d / "meta-negative.safetensors", json.dumps({**meta, "num_classes": -3}))
    _safetensors_with_meta(d / "meta-int-arch.safetensors", json.dumps({**meta, "arch": 5}))
    _safetensors_with_meta(d / "meta-huge-model.safetensors", json.dumps({**meta, "arch": "wrn-10000-1000"}))
    _safetensors_with_meta(d / "meta-huge-input.safetensors", json.dumps({**meta, "input_shape": [1, 4096, 4096]}))
    _safetensors_with_meta(d / "meta-63mb.safetensors", json.dumps({**meta, "history": ["x" * 1000] * 2100}))
    sd = dict(tiny_model().net.state_dict())
    torch.save({"robench_format": 1, "meta": [1, 2], "state_dict": sd}, d / "meta-list.pt")
    torch.save({"robench_format": "one", "meta": meta, "state_dict": sd}, d / "format-string.pt")
    # plain state dicts with a model card beside them
    cards = {
        "card-not-json": "{not json",
        "card-deep": "[" * 10000 + "]" * 10000,
        "card-list": "[1, 2]",
        "card-ten": json.dumps({"arch": "lenet5", "dataset": "fashion-mnist", "num_classes": "ten"}),
        "card-negative": json.dumps({"arch": "lenet5", "dataset": "fashion-mnist", "num_classes": -10}),
        "card-int-arch": json.dumps({"arch": 5, "dataset": "fashion-mnist"}),
        "card-huge-model": json.dumps({"arch": "wrn-10000-10", "dataset": "fashion-mnist"}),
    }
    torch.save(sd, d / "plain.pt")
    for name, text in cards.items():
        torch.save(sd, d / f"{name}.pt")
        (d / f"{name}.pt.json").write_text(text)
    # data files that lie
    write_mnist_like(d / "fm-label200", n_test=20)
    write_idx(d / "fm-label200" / "t10k-labels-idx1-ubyte", np.full(20, 200, np.uint8))
    write_mnist_like(d / "fm-short", n_test=20)
    (d / "fm-short" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 3, 0, 0])))
    write_mnist_like(d / "fm-zero", n_test=20)
    (d / "fm-zero" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + bytes(12)))
    write_mnist_like(d / "fm-bomb", n_test=20)
    with gzip.open(d / "fm-bomb" / "t10k-images-idx3-ubyte.gz", "wb") as f:  # declares 3 GiB
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">III", 1 << 22, 28, 28) + bytes(1 << 20))
    write_mnist_like(d / "fm-extra", n_test=20)
    with gzip.open(d / "fm-extra" / "t10k-labels-idx1-ubyte.gz", "wb") as f:  # 20 labels, then 8 MB more
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 20) + bytes(20) + bytes(8 << 20))
    write_cifar(d / "cifar-neg" / "cifar-10-batches-py", ["test_batch"], n=20)
    import pickle

    with open(d / "cifar-neg" / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((20, 3072), np.uint8), b"labels": [-1] + [0] * 19}, f)
    rng = np.random.default_rng(0)
    _svhn(d / "svhn-float" / "test_32x32.mat", rng.random((32, 32, 3, 20)), np.ones((20, 1)))
    _svhn(
        d / "svhn-label" / "test_32x32.mat",
        rng.integers(0, 255, (32, 32, 3, 20), dtype=np.uint8),
        np.full((20, 1), 11, np.uint8),
    )
    (d / "svhn-empty").mkdir()
    (d / "svhn-empty" / "test_32x32.mat").write_bytes(b"")
    (d / "svhn-73").mkdir()
    (d / "svhn-73" / "test_32x32.mat").write_bytes(b"MATLAB 7.3 MAT-file".ljust(124) + b"\x00\x02IM" + bytes(512))
    _png_header(d / "imagenet-bomb" / "val" / "n01440764" / "big.png", 20000, 20000)
    # suites with values of the wrong type
    ck = str(trained)
    suites = {
        "n-float": f'checkpoints = ["{ck}"]\nn = 20.5\n',
        "seed-str": f'checkpoints = ["{ck}"]\nseed = "x"\n',
        "jobs-str": f'checkpoints = ["{ck}"]\njobs = "2"\n',
        "attacks-int": f'checkpoints = ["{ck}"]\nattacks = 5\n',
        "checkpoints-int": "checkpoints = 5\nn = 10\n",
        "n-zero": f'checkpoints = ["{ck}"]\nn = 0\n',
        "eps-table": f'checkpoints = ["{ck}"]\neps = [{{a = 1}}]\n',
    }
    for name, text in suites.items():
        (d / f"{name}.toml").write_text(text)
    # stores: a schema version that is not a number, a run whose metadata is damaged, a link to a user file
    con = sqlite3.connect(d / "bad-version.sqlite")
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('schema_version', 'abc')")
    con.commit()
    con.close()
    robench.evaluate([ck], n=10, attacks=["none"], store=d / "damaged.sqlite")
    con = sqlite3.connect(d / "damaged.sqlite")
    con.execute("UPDATE runs SET model_meta = '{broken'")
    con.commit()
    con.close()
    (d / "my-notes.txt").write_text("")
    (d / "link.sqlite").symlink_to(d / "my-notes.txt")
    # results archives
    (d / "archive-text.jsonl.gz").write_text("hello")
    header = b'{"format": "robench-results", "version": 1}\n'
    (d / "archive-forged.jsonl.gz").write_bytes(gzip.compress(header + b'{"key": "x", "outcomes": [1]}\n'))
    (d / "archive-newer.jsonl.gz").write_bytes(gzip.compress(b'{"format": "robench-results", "version": 7}\n'))
    # a folder of the user's own
    (d / "mine").mkdir()
    (d / "mine" / "README.md").write_text("my own notes\n")
    return d


E = ["eval", "{ckpt}", "--n", "20"]
FM = ["--dataset", "fashion-mnist"]
CASES = [
    # exported programs: nothing in them is unpickled or loaded as native code without --trust-checkpoint
    ("pt2 pickled weight, info", ["info", "{d}/evil-weight.pt2"] + FM, "--trust-checkpoint"),
    ("pt2 pickled weight, eval", ["eval", "{d}/evil-weight.pt2", "--n", "20"] + FM, "--trust-checkpoint"),
    ("pt2 pickled sample inputs, info", ["info", "{d}/evil-sample.pt2"] + FM, "--trust-checkpoint"),
    ("pt2 pickled sample inputs, eval", ["eval", "{d}/evil-sample.pt2", "--n", "20"] + FM, "--trust-checkpoint"),
    ("pt2 opaque pickled constant", ["info", "{d}/evil-constant.pt2"] + FM, "--trust-checkpoint"),
    ("pt2 with compiled AOTInductor code", ["info", "{d}/aoti.pt2"] + FM, "AOTInductor"),
    ("pt2 with a legacy pickled weights file", ["info", "{d}/legacy-weights.pt2"] + FM, "legacy pickled"),
    (
        "pt2 exported for a fixed batch size",
        ["eval", "{d}/fixed-batch.pt2", "--n", "20"] + FM,
        "dynamic batch dimension",
    ),
    ("a device as checkpoint", ["info", "/dev/zero"], "not a regular file"),
    ("a pipe as checkpoint", ["eval", "{d}/pipe.pt", "--n", "20"], "not a regular file"),
    # checkpoint metadata
    ("metadata not JSON", ["info", "{d}/meta-not-json.safetensors"], "is not valid JSON"),
    ("metadata nested 10,000 deep", ["info", "{d}/meta-deep.safetensors"], "nested too deeply"),
    ("metadata a list", ["info", "{d}/meta-list.safetensors"], "JSON list where an object"),
    ("metadata num_classes a word", ["info", "{d}/meta-ten.safetensors"], "num_classes as 'ten'"),
    ("metadata num_classes negative", ["info", "{d}/meta-negative.safetensors"], "num_classes as -3"),
    ("metadata arch an integer", ["info", "{d}/meta-int-arch.safetensors"], "arch as 5"),
    ("metadata naming a 9 GB model", ["info", "{d}/meta-huge-model.safetensors"], "beyond what robench builds"),
    ("metadata naming a LeNet5 for 4096x4096 inputs", ["info", "{d}/meta-huge-input.safetensors"], "parameters"),
    ("metadata of 2 MB", ["info", "{d}/meta-63mb.safetensors"], "up to 1 MiB"),
    ("robench .pt metadata a list", ["info", "{d}/meta-list.pt"], "not an object of named fields"),
    ("robench .pt format a string", ["info", "{d}/format-string.pt"], "robench_format"),
    # model cards
    ("model card not JSON", ["info", "{d}/card-not-json.pt"], "is not valid JSON"),
    ("model card nested 10,000 deep", ["info", "{d}/card-deep.pt"], "nested too deeply"),
    ("model card a list", ["info", "{d}/card-list.pt"], "JSON list where an object"),
    ("model card num_classes a word", ["info", "{d}/card-ten.pt"], "num_classes as 'ten'"),
    ("model card negative classes", ["info", "{d}/card-negative.pt"], "num_classes as -10"),
    ("model card arch an integer", ["info", "{d}/card-int-arch.pt"], "arch as 5"),
    ("model card naming wrn-10000-10", ["info", "{d}/card-huge-model.pt"], "beyond what robench builds"),
    (
        "--arch naming a huge model",
        ["info", "{d}/plain.pt", "--arch", "wrn-10000-10"] + FM,
        "beyond what robench builds",
    ),
    # data files that lie about their contents
    ("IDX label 200 of 10 classes", E + ["--data-dir", "{d}/fm-label200"], "label of 200"),
    ("CIFAR label -1", E + ["--dataset", "cifar10", "--data-dir", "{d}/cifar-neg"], "label of -1"),
    ("IDX short header", E + ["--data-dir", "{d}/fm-short"], "short header"),
    ("IDX zero dimensions", E + ["--data-dir", "{d}/fm-zero"], "zero dimension"),
    ("IDX gzip bomb", E + ["--data-dir", "{d}/fm-bomb"], "declares 3.1 GiB of data"),
    ("IDX with more data than declared", E + ["--data-dir", "{d}/fm-extra"], "more data than its header"),
    ("SVHN float images", E + ["--dataset", "svhn", "--data-dir", "{d}/svhn-float"], "images as float64"),
    ("SVHN label 11", E + ["--dataset", "svhn", "--data-dir", "{d}/svhn-label"], "label of 11"),
    ("SVHN empty file", E + ["--dataset", "svhn", "--data-dir", "{d}/svhn-empty"], "not a readable SVHN"),
    ("SVHN MATLAB v7.3", E + ["--dataset", "svhn", "--data-dir", "{d}/svhn-73"], "MATLAB v7.3"),
    (
        "ImageNet image of 400 million pixels",
        ["eval", "{ckpt}", "--n", "1", "--dataset", "imagenet", "--data-dir", "{d}/imagenet-bomb"],
        "178 million pixels",
    ),
    # numbers and types in options and suites
    ("--n 0", ["eval", "{ckpt}", "--n", "0"], "n must be at least 1"),
    ("--n -5", ["eval", "{ckpt}", "--n", "-5"], "n must be at least 1"),
    ("--seed beyond the generator", E + ["--seed", str(2**64)], "seed must be a whole number from 0"),
    ("--seed negative", E + ["--seed", "-1"], "seed must be a whole number from 0"),
    ("suite n = 20.5", ["eval", "--config", "{d}/n-float.toml"], '"n" must be a whole number, not 20.5'),
    ("suite n = 0", ["eval", "--config", "{d}/n-zero.toml"], "n must be at least 1"),
    ("suite seed a word", ["eval", "--config", "{d}/seed-str.toml"], '"seed" must be a whole number'),
    ("suite jobs a string", ["eval", "--config", "{d}/jobs-str.toml"], '"jobs" must be a whole number'),
    ("suite attacks a number", ["eval", "--config", "{d}/attacks-int.toml"], '"attacks" must be a list of strings'),
    (
        "suite checkpoints a number",
        ["eval", "--config", "{d}/checkpoints-int.toml"],
        '"checkpoints" must be a list of strings',
    ),
    ("suite eps a table", ["eval", "--config", "{d}/eps-table.toml"], '"eps" must be numbers or strings'),
    ("pgd steps 10.5", E + ["--attack", "pgd(steps=10.5)"], '"steps" must be a whole number, not 10.5'),
    ("pgd steps 2.5", E + ["--attack", "pgd(steps=2.5)"], '"steps" must be a whole number'),
    ("pgd loss a number", E + ["--attack", "pgd(loss=3)"], '"loss" must be a string'),
    ("Foolbox option of the wrong type", E + ["--attack", 'fb:LinfPGD(steps="x")'], "must be a whole number"),
    ("attack spec of nested operators", E + ["--attack", "pgd(steps=" + "-" * 900 + "1)"], "pgd("),
    ("attack spec of 5,000 characters", E + ["--attack", "pgd(steps=" + "-" * 5000 + "1)"], "characters long"),
    ("square with no queries", E + ["--attack", "square(queries=0)"], "queries must be at least 1"),
    # stores
    (
        "store schema version not a number",
        ["eval", "{ckpt}", "--n", "20", "--store", "{d}/bad-version.sqlite"],
        "damaged robench store",
    ),
    (
        "leaderboard of a store with a damaged run",
        ["leaderboard", "--store", "{d}/damaged.sqlite", "--out", "{d}/lb"],
        "is damaged",
    ),
    (
        "store that links to a user's empty file",
        ["eval", "{ckpt}", "--n", "20", "--store", "{d}/link.sqlite"],
        "link to an empty file",
    ),
    ("results archive that is not gzip", ["import", "{d}/archive-text.jsonl.gz"], "not a readable results archive"),
    ("results archive with a forged run", ["import", "{d}/archive-forged.jsonl.gz"], "line 2"),
    ("results archive from a newer robench", ["import", "{d}/archive-newer.jsonl.gz"], "newer robench"),
    (
        "results archive of the wrong name",
        ["export", "{d}/results.zip", "--store", "{d}/damaged.sqlite"],
        "is a .jsonl.gz file",
    ),
    # other people's folders
    (
        "leaderboard into a folder of the user's",
        ["leaderboard", "--store", "{d}/damaged.sqlite", "--out", "{d}/mine"],
        "did not write",
    ),
]


def test_the_audit_adds_at_least_50_distinct_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 50


@pytest.mark.parametrize("name,args,fragment", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_changes_nothing(files, trained, tmp_path, name, args, fragment):
    assert_refused(app, args, fragment, files, trained, tmp_path)
