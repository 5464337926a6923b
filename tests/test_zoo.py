"""The shipped checkpoint zoo (checkpoints/): complete, small, self-describing, and what its metadata says."""

from pathlib import Path

import pytest
import torch
from conftest import requires_fmnist

import robench
from robench.data import load_split
from robench.nn.accelerate import accelerate
from robench.training.zoo import read_zoo

ZOO = Path(__file__).resolve().parent.parent / "checkpoints"
MEMBERS = read_zoo(ZOO / "zoo.toml")
FILES = [ZOO / m.file for m in MEMBERS]


def test_every_zoo_member_is_shipped_and_small():
    missing = [f.name for f in FILES if not f.exists()]
    assert not missing, f"run `make checkpoints`; missing: {missing}"
    for f in FILES:
        limit = 1 << 20 if f.name.startswith("lenet5") else 2 << 20
        assert f.stat().st_size < limit, f.name
    assert sum(f.stat().st_size for f in FILES) < 30 << 20


@requires_fmnist
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_a_zoo_checkpoint_loads_alone_and_reproduces_its_validation_accuracy(path):
    """Run as an evaluation runs it: through `accelerate`'s stand-ins, whose forward pass is bit-identical
    (test_accelerate) and, for SPLASH on a CPU, about four times quicker."""
    ck = robench.load_checkpoint(path)  # nothing else given: the metadata rebuilds the model
    model = accelerate(ck.model, torch.device("cpu"))
    meta = ck.meta
    assert meta["name"] == path.stem and meta["dataset"] == "fashion-mnist"
    member = next(m for m in MEMBERS if ZOO / m.file == path)
    assert meta["recipe"]["epochs"] >= 1 and meta["recipe"]["seed"] == member.config.seed
    start, stop = map(int, meta["recipe"]["data"]["val_indices"].split(":"))
    split = load_split("fashion-mnist", "train")
    correct = 0
    with torch.no_grad():
        for chunk in torch.arange(start, stop).split(1000):
            x, y = split.batch(chunk)
            correct += int((model(x).argmax(1) == y).sum())
    assert abs(100 * correct / (stop - start) - meta["validation"]["clean_acc"]) <= 0.1


def _twins():
    by = {(m.config.arch, m.config.activation, m.config.method): ZOO / m.file for m in MEMBERS}
    return [
        (act, path, by[(arch, act, "standard")])
        for (arch, act, method), path in by.items()
        if method == "pgd-at" and (arch, act, "standard") in by
    ]


@requires_fmnist
def test_standard_lenet5s_reach_about_90_percent_on_the_test_set():
    test = load_split("fashion-mnist", "test")
    x, y = test.batch(torch.arange(len(test)))
    for m in MEMBERS:
        if m.config.arch == "lenet5" and m.config.method == "standard":
            model = accelerate(robench.load_checkpoint(ZOO / m.file).model, torch.device("cpu"))
            with torch.no_grad():  # in batches of 250, which stay in cache (3x quicker than one of 10,000)
                right = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(250), y.split(250)))
            acc = 100 * right / len(y)
            assert 88.5 <= acc <= 93, (m.file, acc)


@requires_fmnist
def test_each_pgd_at_network_beats_its_standard_twin_under_pgd():
    twins = _twins()
    assert len(twins) >= 8
    df = robench.evaluate(
        [str(p) for _, at, std in twins for p in (at, std)], n=500, eps=["0.1"], attacks=["pgd"], store="zoo.sqlite"
    )
    robust = dict(zip(df["checkpoint"].map(lambda p: Path(p).name), df["robust_acc"]))
    for act, at, std in twins:
        assert robust[at.name] > robust[std.name] + 20, (act, robust[at.name], robust[std.name])
