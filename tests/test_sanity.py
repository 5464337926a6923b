"""Gradient-masking diagnostics: planted masked models built here are each flagged by the check that
targets them; honest models (and the shipped checkpoints) are not."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import requires_fmnist
from helpers import Quantized, Randomized
from typer.testing import CliRunner

import robench
from robench.cli import app
from robench.stats import binom_above
from robench.store import Store

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(dataset="fashion-mnist", n=60, eps=["0.1"], strong_restarts=2, square_queries=200, device="cpu")


class Softmax(torch.nn.Module):
    """Returns probabilities: the softmax flattens the loss surface attacks climb."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return F.softmax(self.net(x), dim=1)


class StraightThrough(torch.nn.Module):
    """Forward: the network's logits. Backward: the network's own gradient is cut (detached) and a straight-
    through decoy takes its place, the negated logits, so every gradient an attack follows points away from
    the decision boundary."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        z = self.net(x)
        decoy = -z
        return z.detach() + decoy - decoy.detach()


def _flags(res) -> dict[str, list[str]]:
    c = res["checks"]
    return {k: list(v.evidence) for k, v in c[c.status == "flag"].groupby("check")}


@pytest.fixture(scope="module")
def honest(trained):
    return robench.load_checkpoint(trained).model


def test_an_honest_model_passes_every_check(honest, tmp_path):
    res = robench.api.sanity(honest, store=tmp_path / "s.sqlite", **FAST)
    assert not res["flagged"], _flags(res)
    assert set(res["checks"].check) >= {
        "probabilities",
        "randomized",
        "zero-gradients",
        "eps-sweep",
        "large-eps",
        "convergence",
        "step-size",
        "square",
    }


def test_a_pgd_that_stalls_is_flagged_by_apgd_step_size_schedule(honest, tmp_path):
    """A fixed step too small to leave the start's neighbourhood (0.001 for 5 steps at eps 0.1, 25 in the
    stronger budget) leaves examples robust that APGD-CE, whose step starts at 2 eps, breaks: the check
    says so, since the PGD numbers would overstate robustness."""
    res = robench.api.sanity(honest, store=tmp_path / "s.sqlite", pgd_steps=5, pgd_step_size="0.001", **FAST)
    flags = _flags(res)
    assert "step-size" in flags, flags
    assert "stalls on this model" in flags["step-size"][0]
    # the flag speaks of PGD: it marks the model's PGD runs, and its leaderboard row while the row rests on
    # PGD; once AutoAttack has run, AutoAttack's number stands (the flag is still listed)
    kw = dict(dataset="fashion-mnist", n=20, eps=["0.1"], store=tmp_path / "s.sqlite", device="cpu")
    pgd = robench.evaluate({"honest": honest}, attacks=["pgd"], **kw)
    assert "stalls on this model" in pgd["flags"].iloc[0]

    def row():
        robench.api.leaderboard(tmp_path / "s.sqlite", tmp_path / "lb")
        df = pd.read_csv(tmp_path / "lb" / "fashion-mnist_Linf.csv")
        return df[df.name == "honest"].iloc[0]

    assert row()["unreliable"] and "stalls on this model" in row()["flags"]
    aa = robench.evaluate({"honest": honest}, attacks=["autoattack"], **kw)
    assert "stalls on this model" not in str(aa["flags"].iloc[0])
    assert not row()["unreliable"] and "stalls on this model" in row()["flags"]
    # a check on the model itself (here: a planted flag of the Square check) marks every run, AutoAttack's too
    square = res["checks"].set_index("check").loc["square"]
    with Store(tmp_path / "s.sqlite") as db:
        budget = db.checks(res["sha256"]).set_index("check").budget["square"]
        db.set_checks(
            res["sha256"],
            "fashion-mnist",
            "Linf",
            [
                {
                    "check": "square",
                    "eps": square.eps,
                    "status": "flag",
                    "evidence": "planted masking",
                    "budget": json.loads(budget),
                }
            ],
        )
    assert "planted masking" in robench.evaluate({"honest": honest}, attacks=["autoattack"], **kw)["flags"].iloc[0]
    assert row()["unreliable"]


@pytest.mark.parametrize(
    "wrapper, check",
    [
        (Softmax, "probabilities"),
        (Quantized, "zero-gradients"),
        (Randomized, "randomized"),
        (StraightThrough, "large-eps"),
    ],
)
def test_each_planted_masked_model_is_flagged_by_its_check(honest, tmp_path, wrapper, check):
    res = robench.api.sanity(wrapper(honest), store=tmp_path / "s.sqlite", **FAST)
    flags = _flags(res)
    assert check in flags, (check, flags)
    assert res["flagged"]
    # the checks are stored with their evidence, so the leaderboard and eval show them
    db = Store(tmp_path / "s.sqlite")
    stored = db.checks(res["sha256"])
    db.close()
    assert check in set(stored[stored.status == "flag"].check)


# fast at a small budget keeps these tests quick; the checks do not depend on the budget
WITH_FAST = {**FAST, "n": 30, "attacks": ["fast(iters=10)"], "strong_steps": 20}


# the probes (probabilities, randomized) run before any attack, so these two are the ones an attack could change
@pytest.mark.parametrize("wrapper, check", [(Quantized, "zero-gradients"), (StraightThrough, "gradient-ascent")])
def test_the_checklist_with_fast_still_flags_each_planted_masked_model(honest, tmp_path, wrapper, check):
    """fast alone (a white-box ensemble) cannot see masked gradients, and its random start and first step of
    2 eps break the straight-through decoy at the large eps where PGD stays stuck: with fast as the attack
    under test the checks still run, Square included, and flag every planted model."""
    res = robench.api.sanity(wrapper(honest), store=tmp_path / "s.sqlite", **WITH_FAST)
    flags = _flags(res)
    assert check in flags, (check, flags)
    assert set(res["checks"].check) >= {"eps-sweep", "large-eps", "convergence", "square"}
    assert "fast with 20 iterations x 9 targets" in res["checks"].set_index("check").evidence["convergence"]


def test_the_checklist_with_fast_passes_an_honest_model(honest, tmp_path):
    res = robench.api.sanity(honest, store=tmp_path / "s.sqlite", **WITH_FAST)
    assert not res["flagged"], _flags(res)


def test_a_step_along_the_gradient_raises_the_margin_of_honest_models_only(honest):
    """The gradient-ascent check: a straight-through decoy (and a zero gradient) fails it, honest models
    and the shipped checkpoints pass it, in both norms."""
    from robench.engine.masking import ascent

    split = robench.load_split("fashion-mnist")
    x, y = split.batch(torch.arange(64))
    models = {
        "honest": honest,
        "decoy": StraightThrough(honest),
        "quantized": Quantized(honest),
        **{p.stem: robench.load_checkpoint(p).model for p in sorted((ROOT / "checkpoints").glob("*.safetensors"))[::6]},
    }
    for name, model in models.items():
        for norm in ("Linf", "L2"):
            found = ascent(model.eval(), x, y, norm, name)
            assert (found["status"] == "flag") == (name in ("decoy", "quantized")), found["evidence"]


def test_transfer_beating_white_box_is_flagged_and_shown_by_eval(honest, trained, tmp_path):
    """The quantized copy resists PGD (no gradient) but not examples crafted on the honest network."""
    store = tmp_path / "s.sqlite"
    masked = Quantized(honest)
    wb = robench.evaluate(masked, dataset="fashion-mnist", n=100, eps=["0.1"], store=store, device="cpu")
    assert wb.robust_acc[0] > 30  # PGD is stuck: the masking works on it
    df = robench.api.transfer(
        [str(trained)], [masked], n=100, eps=["0.1"], store=store, device="cpu", dataset="fashion-mnist"
    )
    assert df.robust_acc[0] < wb.robust_acc[0] - 20
    assert "transfer from lenet5-relu-test broke" in df["flags"][0]
    again = robench.evaluate(masked, dataset="fashion-mnist", n=100, eps=["0.1"], store=store, device="cpu")
    assert "white-box gradients are likely masked" in again["flags"][0]


def test_robust_accuracy_rising_with_eps_across_runs_is_flagged(tmp_path):
    from robench.engine.masking import cross_checks

    db = Store(tmp_path / "s.sqlite")
    budget = [{"name": "pgd", "steps": 20}]
    for i, (eps, robust) in enumerate((("0.1", [0] * 40 + [1] * 10), ("0.2", [1] * 40 + [0] * 10))):
        fields = {
            "model": "m",
            "checkpoint": None,
            "sha256": "abc",
            "dataset": "fashion-mnist",
            "split": "test",
            "n": 50,
            "subset": "first",
            "seed": 0,
            "norm": "Linf",
            "eps": [[eps, float(eps)]],
            "attacks": budget,
            "batch_size": 50,
            "device": "cpu",
            "dtype": "float32",
            "robench_version": "x",
            "torch_version": "x",
            "model_meta": {},
            "data_sha256": "d",
        }
        run_id, _ = db.open_run(f"k{i}", fields)
        db.add_batch(run_id, [(eps, j, 1, r, None if r else "pgd") for j, r in enumerate(robust)], [], 0.0)
        db.finish(run_id)
    checks = cross_checks(db, "abc", "fashion-mnist", "Linf")
    db.close()
    assert [c["check"] for c in checks if c["status"] == "flag"] == ["eps-monotone"]
    assert "rises from eps 0.1 to eps 0.2" in checks[0]["evidence"]


def test_black_box_flag_in_a_cascade_needs_more_than_noise():
    from collections import Counter

    from robench.results.runs import black_box_flags

    assert black_box_flags(Counter(square=1), 50, ["apgd-ce"]) == []  # one lucky example in fifty
    assert black_box_flags(Counter(square=4), 50, ["apgd-ce"])  # 8% against a 0.2% margin
    assert black_box_flags(Counter(pgd=10), 50, ["pgd"]) == []  # white-box breaks are not the point
    assert black_box_flags(Counter(square=9), 50, []) == []  # Square alone: nothing to compare with
    assert binom_above(1, 50, 0.002) == pytest.approx(1 - 0.998**50)


@requires_fmnist
@pytest.mark.parametrize(
    "name",
    ["lenet5-relu-pgd-at", "lenet5-splash-pgd-at", "lenet5-tanh-pgd-at", "lenet5-prelu-pgd-at", "lenet5-relu-standard"],
)
def test_shipped_checkpoints_are_not_flagged(name, tmp_path):
    res = robench.api.sanity(
        ROOT / "checkpoints" / f"{name}.safetensors", store=tmp_path / "s.sqlite", **{**FAST, "n": 100}
    )
    assert not res["flagged"], _flags(res)


def test_sanity_cli_exits_1_on_a_flag_and_prints_the_evidence(honest, tmp_path):
    path = tmp_path / "quantized.pt"
    torch.save(Quantized(honest), path)  # a pickled module: loads only with --trust-checkpoint
    r = CliRunner().invoke(
        app,
        [
            "sanity",
            str(path),
            "--trust-checkpoint",
            "--dataset",
            "fashion-mnist",
            "--n",
            "40",
            "--square-queries",
            "100",
            "--strong-restarts",
            "1",
            "--store",
            str(tmp_path / "s.sqlite"),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 1, r.output
    assert "FLAG" in r.output and "zero-gradients" in r.output and "may be overstated" in r.output
    ok = CliRunner().invoke(
        app,
        [
            "sanity",
            str(ROOT / "checkpoints" / "lenet5-relu-standard.safetensors"),
            "--n",
            "40",
            "--square-queries",
            "100",
            "--strong-restarts",
            "1",
            "--store",
            str(tmp_path / "s.sqlite"),
            "--device",
            "cpu",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "checks passed." in ok.output and "large-eps" in ok.output
