"""Black-box evaluation: `robench transfer` matrices, the crafted-example cache, ensembles, the leaderboard's
transfer column and heatmap, and query attacks (Square, Foolbox decision-based) through `robench eval`."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import robench
from robench.attacks.registry import create_transfer_attack
from robench.attacks.transfer import TransferAttack
from robench.cli import app
from robench.errors import RobenchError


@pytest.fixture(scope="module")
def second(tmp_path_factory, trained):
    """A second LeNet5, trained independently of ``trained`` (another seed, the same recipe)."""
    from helpers import train_fmnist

    path = tmp_path_factory.mktemp("zoo2") / "lenet5-silu.pt"
    train_fmnist(path, activation="silu", seed=1)
    return path


def test_transfer_lies_between_white_box_and_clean_and_the_cache_is_reused(trained, second, tmp_path, monkeypatch):
    store = tmp_path / "s.sqlite"
    events = []
    df = robench.api.transfer(
        all_checkpoints=[str(trained), str(second)],
        n=200,
        eps=["0.1"],
        store=store,
        device="cpu",
        progress=events.append,
    )
    assert len(df) == 4 and df.n.eq(200).all()
    crafted = [e for e in events if e["event"] == "craft"]
    assert len(crafted) == 2 and not any(e["cached"] for e in crafted)  # one crafting per source
    for target, block in df.groupby("target"):
        white = block[block.white_box].iloc[0]
        other = block[~block.white_box].iloc[0]
        assert white.robust_acc < other.robust_acc < other.clean_acc, block[["source", "robust_acc", "clean_acc"]]
        assert other.success_n == round(other.clean_acc * 2) and 0 < other.success_rate < 100
    # a new target costs no crafting: the examples come from the cache beside the store
    assert len(list((tmp_path / "transfer-cache").glob("*.safetensors"))) == 2
    monkeypatch.setattr(TransferAttack, "craft", lambda *a, **k: pytest.fail("crafted again"))
    events.clear()
    again = robench.api.transfer(
        [str(trained)], [str(second)], n=200, eps=["0.1"], store=store, device="cpu", force=True, progress=events.append
    )
    assert [e["cached"] for e in events if e["event"] == "craft"] == [True]
    before = df[(df.source == "lenet5-relu-test") & (df.target == "lenet5-silu-test")]
    assert again.robust_acc[0] == before.robust_acc.iloc[0]
    # stored per example like any evaluation: the leaderboard's transfer column and the report's heatmap
    out = tmp_path / "lb"
    robench.api.leaderboard(store, out)
    csv = pd.read_csv(out / "fashion-mnist_Linf.csv")
    row = csv[csv.name == "lenet5-silu-test"].iloc[0]
    assert row.transfer_acc == pytest.approx(again.robust_acc[0]) and row.transfer_n == 200
    assert row.transfer_from == "lenet5-relu-test"
    assert row.best_known_acc <= row.transfer_acc


def test_ensemble_surrogate_and_report_heatmap(trained, second, tmp_path):
    store = tmp_path / "s.sqlite"
    df = robench.api.transfer(
        [str(trained), str(second)],
        [str(second)],
        ensemble=True,
        attack="difgsm",
        n=60,
        eps=["0.1"],
        store=store,
        device="cpu",
    )
    assert list(df.source) == ["lenet5-relu-test + lenet5-silu-test"]
    budget = json.loads(df.budget[0])[0]
    assert budget["ensemble"] and budget["attack"]["name"] == "difgsm" and budget["attack"]["resize_rate"] == 0.9
    assert [s["model"] for s in budget["sources"]] == ["lenet5-relu-test", "lenet5-silu-test"]
    robench.api.transfer(all_checkpoints=[str(trained), str(second)], n=60, eps=["0.1"], store=store, device="cpu")
    robench.evaluate([str(trained), str(second)], n=60, eps=["0.1"], store=store, device="cpu")
    robench.api.leaderboard(store, tmp_path / "lb")
    text = (tmp_path / "lb" / "report.md").read_text()
    assert "### Transfer at Linf eps 0.1" in text and (tmp_path / "lb").glob("*-transfer.png")
    assert len(list((tmp_path / "lb").glob("*-transfer.png"))) == 1


def test_crafted_examples_do_not_depend_on_the_batch_size_and_stay_in_the_ball():
    from helpers import tiny_model

    model = tiny_model("relu", 0).eval()
    x, y = torch.rand(10, 1, 28, 28), torch.randint(0, 10, (10,))
    for spec in ("mifgsm", "difgsm(diversity_prob=1.0)", "pgd", "difgsm(resize_rate=1.2)"):
        atk = create_transfer_attack(spec)
        whole = atk.craft(model, x, y, torch.arange(10), 0.1, "Linf", 0)
        parts = torch.cat(
            [
                atk.craft(model, x[i : i + 3], y[i : i + 3], torch.arange(i, min(i + 3, 10)), 0.1, "Linf", 0)
                for i in range(0, 10, 3)
            ]
        )
        assert torch.allclose(whole, parts, atol=1e-6), spec
        assert (whole - x).abs().max() <= 0.1 + 1e-6 and whole.min() >= 0 and whole.max() <= 1
    l2 = create_transfer_attack("mifgsm").craft(model, x, y, torch.arange(10), 1.5, "L2", 0)
    assert (l2 - x).flatten(1).norm(dim=1).max() <= 1.5 + 1e-5


def test_sources_and_targets_must_share_a_dataset(tmp_path):
    from helpers import save_tiny

    save_tiny(tmp_path / "a.pt", "relu")
    model = robench.load_checkpoint(tmp_path / "a.pt").model
    robench.save_checkpoint(model, tmp_path / "b.pt", robench.model_meta("lenet5", "relu", "mnist"))
    r = CliRunner().invoke(
        app,
        [
            "transfer",
            "--source",
            str(tmp_path / "a.pt"),
            "--target",
            str(tmp_path / "b.pt"),
            "--store",
            str(tmp_path / "s.sqlite"),
        ],
    )
    assert r.exit_code == 2 and "must share a dataset" in r.output and "Traceback" not in r.output
    for bad, words in (
        (["--attack", "cw"], "cw"),
        (["--attack", "mifgsm(step=3)"], 'has no option "step"; did you mean steps'),
        (["--diversity-prob", "2"], "diversity-prob"),
    ):
        r = CliRunner().invoke(
            app, ["transfer", "--all", str(tmp_path / "a.pt"), "--all", str(tmp_path / "a.pt"), *bad]
        )
        assert r.exit_code == 2 and words in r.output, r.output
    with pytest.raises(RobenchError, match="at least two"):
        robench.api.transfer(all_checkpoints=[str(tmp_path / "a.pt")])


@pytest.mark.parametrize(
    "spec, budget_key, norm, eps",
    [
        ("square(queries=200)", "queries", "Linf", "0.1"),
        ("fb:BoundaryAttack(steps=100)", "steps", "L2", "1.5"),
        ("fb:HopSkipJumpAttack(steps=4,max_gradient_eval_steps=50,constraint='linf')", "steps", "Linf", "0.1"),
    ],
)
def test_query_attacks_through_eval_record_their_query_counts(trained, tmp_path, spec, budget_key, norm, eps):
    df = robench.evaluate(
        str(trained), n=12, norm=norm, eps=[eps], attacks=[spec], store=tmp_path / "s.sqlite", device="cpu"
    )
    name = spec.split("(")[0]
    budget = json.loads(df.budget[0])[0]
    if name == "square":
        assert budget["members"]["square"]["queries"] == 200
    else:
        assert budget[budget_key] == int(spec.split(f"{budget_key}=")[1].split(",")[0].rstrip(")"))
    queries = json.loads(df.queries[0])[name]
    clean = round(df.clean_acc[0] * 12 / 100)
    assert queries["examples"] == clean and queries["queries"] >= clean  # every attacked example was queried
    assert df.robust_acc[0] < df.clean_acc[0]  # a weak standard model falls to query attacks at eps 0.1
    r = CliRunner().invoke(
        app,
        [
            "eval",
            str(trained),
            "--n",
            "12",
            "--norm",
            norm,
            "--eps",
            eps,
            "--attack",
            spec,
            "--store",
            str(tmp_path / "s.sqlite"),
            "--out",
            str(tmp_path / "r.csv"),
        ],
    )
    assert r.exit_code == 0 and "queries" in pd.read_csv(tmp_path / "r.csv").columns


def test_ensemble_all_attacks_each_target_with_the_ensemble_of_the_others(trained, second, tmp_path):
    ck = robench.load_checkpoint(second)
    with torch.no_grad():  # a third model: the second with its weights nudged, so its own file and sha256
        for p in ck.model.parameters():
            p.mul_(1.05)
    third = robench.save_checkpoint(ck.model, tmp_path / "lenet5-third.safetensors", {**ck.meta, "name": "third"})
    paths = [str(trained), str(second), str(third)]
    out = tmp_path / "rows.json"
    res = CliRunner().invoke(
        app,
        [
            "transfer",
            "--ensemble",
            *[a for p in paths for a in ("--all", p)],
            "--n",
            "40",
            "--eps",
            "0.1",
            "--store",
            str(tmp_path / "s.sqlite"),
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = pd.read_json(out)
    names = {"lenet5-relu-test", "lenet5-silu-test", "third"}
    assert sorted(rows.target) == sorted(names) and not rows.white_box.any()
    for r in rows.itertuples():
        sources = [s["model"] for s in json.loads(r.budget)[0]["sources"]]
        assert sorted(sources) == sorted(names - {r.target})  # every other model, never the target itself
        assert r.source == " + ".join(sources) and json.loads(r.budget)[0]["ensemble"]
        assert r.n == 40 and r.robust_acc <= r.clean_acc
