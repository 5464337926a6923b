"""One's own model end to end, as a RobustBench user brings it: a class in a file, its state dict saved with
torch.save, the same model options on every command, and a CI gate that pairs by default."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import requires_fmnist
from torch import nn
from typer.testing import CliRunner

from robench.cli import MODEL_OPTIONS, app
from robench.nn.detect import detect_activation

# a class of one's own: a template classifier squashed by tanh, in a file robench imports by --arch
TANH_NET = textwrap.dedent(
    """
    from torch import nn


    class TanhNet(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.templates = nn.Linear(28 * 28, num_classes)
            self.squash = nn.Tanh()
            self.out = nn.Linear(num_classes, num_classes)

        def forward(self, x):
            return self.out(self.squash(self.templates(x.flatten(1))))
    """
)


def _templates(sd_path: Path, shuffle: bool = False) -> None:
    """The state dict of a TanhNet that trains nothing: a nearest-class-mean classifier (logit k is
    2 x.mu_k - |mu_k|^2, scaled into tanh's near-linear range), its class means read off the first 3,000
    training images; ``shuffle`` rolls the classes round by one (a broken model)."""
    from robench.data import load_split

    x, y = load_split("fashion-mnist", "train").batch(torch.arange(3000))  # images in [0, 1]
    x = x.flatten(1)
    mu = torch.stack([x[y == k].mean(0) for k in range(10)])
    if shuffle:
        mu = mu.roll(1, 0)
    s = 0.005
    sd = {
        "templates.weight": 2 * s * mu,
        "templates.bias": -s * (mu * mu).sum(1),
        "out.weight": torch.eye(10) * 20,
        "out.bias": torch.zeros(10),
    }
    torch.save(sd, sd_path)


@requires_fmnist
def test_own_model_eval_check_and_leaderboard_with_the_same_options(tmp_path, monkeypatch):
    """Write a model class, save a state dict, evaluate it, publish a leaderboard with its results/, then in a
    fresh folder holding only the committed files (as a CI runner's clone) check it: it passes, paired by
    the outcomes beside the baseline, and a broken model with the same options fails, paired too."""
    work, ci = tmp_path / "work", tmp_path / "clone"
    work.mkdir()
    (work / "tanh_net.py").write_text(TANH_NET)
    _templates(work / "mynet.pt")
    opts = ["--arch", "tanh_net.py:TanhNet", "--dataset", "fashion-mnist"]
    run = CliRunner()
    monkeypatch.chdir(work)
    monkeypatch.delenv("ROBENCH_STORE", raising=False)

    r = run.invoke(app, ["eval", "mynet.pt", *opts, "--n", "200", "--eps", "0.02", "--quiet"])
    assert r.exit_code == 0, r.output
    r = run.invoke(app, ["info", "mynet.pt", *opts])
    assert r.exit_code == 0 and "tanh" in r.output, r.output  # read from its forward pass, not a default relu
    r = run.invoke(app, ["leaderboard", "--out", "board"])
    assert r.exit_code == 0, r.output
    r = run.invoke(app, ["export", "board/results"])
    assert r.exit_code == 0, r.output
    board = pd.read_csv(work / "board/fashion-mnist_Linf.csv", dtype={"eps": str})
    row = board.iloc[0]
    assert row.activation == "tanh" and row.n == 200 and row.clean_acc > 50, row.to_dict()

    ci.mkdir()
    for name in ("tanh_net.py", "mynet.pt"):
        shutil.copy(work / name, ci / name)
    shutil.copytree(work / "board", ci / "board")
    monkeypatch.chdir(ci)
    gate = ["check", "--baseline", "board/fashion-mnist_Linf.csv", "mynet.pt", *opts]
    r = run.invoke(app, gate)
    assert r.exit_code == 0, r.output
    assert "paired (McNemar)" in r.output and "unpaired" not in r.output, r.output
    assert "read from board/results, beside the baseline" in r.output, r.output
    assert "Re-ran mynet: pgd on n=200 at eps 0.02. Compared: clean, pgd, best_known." in r.output, r.output
    assert not (ci / "results").exists()  # the gate's own runs live in a temporary store

    _templates(ci / "mynet.pt", shuffle=True)  # the same file name, a broken model
    r = run.invoke(app, [*gate, "--json", "check.json"])
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output and "mynet (changed)" in r.output, r.output
    result = pd.read_json(ci / "check.json", typ="series")
    assert {row["test"] for row in result["rows"]} == {"paired (McNemar)"}


def test_every_command_that_loads_checkpoints_takes_the_same_model_options():
    """eval, info, check, transfer and sanity take --arch, --activation, --dataset and --trust-checkpoint,
    each with the one help text written once."""
    import typer.main

    group = typer.main.get_command(app)
    helps: dict[str, set[str]] = {}
    for name in ("eval", "info", "check", "transfer", "sanity"):
        params = {opt: p for p in group.commands[name].params for opt in getattr(p, "opts", [])}
        for opt in MODEL_OPTIONS:
            assert opt in params, f"robench {name} lacks {opt}"
            helps.setdefault(opt, set()).add(params[opt].help)
    assert all(len(h) == 1 for h in helps.values()), helps


def test_the_activation_is_read_from_the_forward_pass():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return F.relu(self.fc(x)).relu()

    class Swish(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)
            return y * torch.sigmoid(y)

    class Gated(Swish):  # a sigmoid that gates something else is a sigmoid
        def forward(self, x):
            return self.fc(x) * torch.sigmoid(x)

    class Branchy(Swish):  # data-dependent control flow: cannot be read
        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    assert detect_activation(nn.Sequential(nn.Linear(4, 4), nn.Tanh())) == "tanh"
    assert detect_activation(Functional()) == "relu"
    assert detect_activation(Swish()) == "silu"
    assert detect_activation(Gated()) == "sigmoid"
    assert detect_activation(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.GELU())) == "gelu+relu"
    assert detect_activation(nn.Linear(4, 4)) == "none"
    assert detect_activation(Branchy()) is None


def test_a_state_dict_of_ones_own_class_is_labelled_with_what_it_computes(tmp_path, monkeypatch):
    """No --activation: the label is read from the class (tanh, never relu); an --activation that contradicts
    it is one sentence; a class whose forward pass cannot be traced takes --activation, else "unknown"."""
    import robench

    monkeypatch.chdir(tmp_path)
    Path("nets.py").write_text(
        TANH_NET
        + textwrap.dedent(
            """

            class Branchy(TanhNet):
                def forward(self, x):
                    y = self.templates(x.flatten(1))
                    return self.out(self.squash(y) if y.sum() > 0 else y)
            """
        )
    )
    torch.save({k: torch.zeros_like(v) for k, v in _sd().items()}, "z.pt")
    kw = dict(dataset="fashion-mnist")
    assert robench.load_checkpoint("z.pt", arch="nets.py:TanhNet", **kw).meta["activation"] == "tanh"
    with pytest.raises(robench.RobenchError, match="applies tanh, but"):
        robench.load_checkpoint("z.pt", arch="nets.py:TanhNet", activation="relu", **kw)
    assert robench.load_checkpoint("z.pt", arch="nets.py:Branchy", **kw).meta["activation"] == "unknown"
    got = robench.load_checkpoint("z.pt", arch="nets.py:Branchy", activation="tanh", **kw)
    assert got.meta["activation"] == "tanh"


def _sd() -> dict:
    return {
        "templates.weight": torch.zeros(10, 784),
        "templates.bias": torch.zeros(10),
        "out.weight": torch.zeros(10, 10),
        "out.bias": torch.zeros(10),
    }


def test_a_typo_in_an_option_is_reported_before_torch_is_imported(tmp_path):
    """Option values are checked first: a typo costs no torch import (seconds on a cold start)."""
    code = textwrap.dedent(
        """
        import sys
        from typer.testing import CliRunner
        from robench.cli import app
        for typo in (["--subset", "frist"], ["--device", "gpu"], ["--eps", "0.1x"], ["--batch-size", "x"],
                     ["--pgd-loss", "cee"], ["--attack", "pgd(steps=3"]):
            r = CliRunner().invoke(app, ["eval", "m.pt", *typo])
            assert r.exit_code == 2 and r.output.startswith("Error: "), r.output
        assert "torch" not in sys.modules, "torch was imported"
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
