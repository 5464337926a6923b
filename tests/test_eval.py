"""The evaluation engine, the store and `robench eval`: tables, read-back, suites, end to end (kills,
concurrency and bad input are in test_reliability.py and test_hardening.py)."""

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import Quantized, save_tiny, write_mnist_like
from typer.testing import CliRunner

import robench
from robench.cli import app
from robench.errors import RobenchError
from robench.stats import wilson

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def outcomes(store, run_id=None):
    con = sqlite3.connect(store)
    q = "SELECT run_id, eps, idx, clean, robust, broken_by FROM outcomes ORDER BY run_id, eps, idx"
    rows = con.execute(q).fetchall()
    con.close()
    return rows


def test_wilson_interval():
    lo, hi = wilson(80, 100)
    assert lo == pytest.approx(0.7112, abs=1e-3) and hi == pytest.approx(0.8666, abs=1e-3)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)


def test_eval_table_has_n_intervals_budget_and_worst_case(trained, tmp_path):
    df = robench.evaluate(
        [str(trained)], n=100, eps=["0.1", "0.02", "0.05"], attacks=["fgsm", "pgd"], store=tmp_path / "s.sqlite"
    )
    assert df.eps.tolist() == ["0.02", "0.05", "0.1"]  # ascending
    assert (df.n == 100).all() and df.clean_acc.nunique() == 1
    assert df.robust_acc.is_monotonic_decreasing  # never rises with eps
    assert (df.robust_ci_low <= df.robust_acc).all() and (df.robust_acc <= df.robust_ci_high).all()
    budget = json.loads(df.budget[0])
    assert [b["name"] for b in budget] == ["fgsm", "pgd"] and budget[1]["steps"] == 20
    oc = df.attrs["outcomes"]
    assert len(oc) == 300 and set(oc.broken_by.dropna()) <= {"fgsm", "pgd"}
    # the worst case: robust only if robust under every attack, clean-wrong counts as non-robust
    assert not ((oc.clean == 0) & (oc.robust == 1)).any()
    pgd_alone = robench.evaluate([str(trained)], n=100, eps=["0.05"], attacks=["pgd"], store=tmp_path / "s.sqlite")
    assert df.robust_acc[1] <= pgd_alone.robust_acc[0]
    row = df.iloc[0]
    assert row.sha256 and row.device == "cpu" and row["dtype"] == "float32" and row.torch_version == torch.__version__


def test_finished_run_is_read_back_and_force_recomputes(trained, tmp_path):
    store = tmp_path / "s.sqlite"
    a = robench.evaluate([str(trained)], n=40, eps=["0.05"], store=store)
    events = []
    checks = sqlite3.connect(store).execute("SELECT * FROM checks ORDER BY 1, 2, 3, 4, 5").fetchall()
    b = robench.evaluate([str(trained)], n=40, eps=["0.05"], store=store, progress=events.append)
    assert events[0]["cached"] and not any(e["event"] == "batch" for e in events)
    pd.testing.assert_frame_equal(a.drop(columns="wall_time_s"), b.drop(columns="wall_time_s"))
    # reading back writes nothing: the model's checks are those stored when the run ran, not run again
    assert checks and sqlite3.connect(store).execute("SELECT * FROM checks ORDER BY 1, 2, 3, 4, 5").fetchall() == checks
    events.clear()
    c = robench.evaluate([str(trained)], n=40, eps=["0.05"], store=store, force=True, progress=events.append)
    assert any(e["event"] == "batch" for e in events) and c.robust_acc[0] == a.robust_acc[0]
    assert len(outcomes(store)) == 40


def test_same_command_gives_the_same_numbers(trained, tmp_path):
    a = robench.evaluate([str(trained)], n=60, eps=["0.05"], store=tmp_path / "a.sqlite", seed=5)
    b = robench.evaluate([str(trained)], n=60, eps=["0.05"], store=tmp_path / "b.sqlite", seed=5)
    assert a.attrs["outcomes"].robust.tolist() == b.attrs["outcomes"].robust.tolist()


def test_suite_file_and_out_file(trained, tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(
        f'checkpoints = ["{trained}"]\nn = 30\neps = ["0.05", "8/255"]\nattacks = ["pgd"]\n'
        f'pgd_steps = 5\nstore = "{tmp_path / "s.sqlite"}"\n'
    )
    r = cli("eval", "--config", suite, "--out", tmp_path / "r.csv")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(tmp_path / "r.csv", dtype={"eps": str})
    assert df.eps.tolist() == ["8/255", "0.05"] and (df.n == 30).all()
    assert json.loads(df.budget[0])[0]["steps"] == 5 and "flags" in df.columns
    r = cli("eval", "--config", suite, "--json", "--n", "10")
    assert r.exit_code == 0 and [json.loads(line)["n"] for line in r.output.strip().splitlines()] == [10, 10]
    suite.write_text("n = 30\nepz = [0.1]\n")
    r = cli("eval", "--config", suite)
    assert r.exit_code == 2 and 'unknown key "epz"; did you mean "eps"?' in r.output


def test_dataset_defaults_come_from_the_checkpoint(tmp_path):
    write_mnist_like(tmp_path / "fm", n_test=40)
    save_tiny(tmp_path / "m.pt")
    df = robench.evaluate(
        [str(tmp_path / "m.pt")], data_dir=tmp_path / "fm", n=40, store=tmp_path / "s.sqlite", attacks=["fgsm"]
    )
    assert df.dataset[0] == "fashion-mnist" and df.eps[0] == "0.1" and df.norm[0] == "Linf"  # its default
    df = robench.evaluate(
        [str(tmp_path / "m.pt")],
        data_dir=tmp_path / "fm",
        n=40,
        norm="L2",
        attacks=["fgsm"],
        store=tmp_path / "s.sqlite",
    )
    assert df.eps[0] == "1.5"


def test_in_memory_models_can_be_evaluated(tmp_path):
    write_mnist_like(tmp_path / "fm", n_test=30)
    model = robench.create_model("lenet5", "splash", in_channels=1, input_size=28)
    df = robench.evaluate(
        model, dataset="fashion-mnist", data_dir=tmp_path / "fm", n=30, attacks=["fgsm"], store=tmp_path / "s.sqlite"
    )
    assert df.n[0] == 30 and model.training is False and all(p.requires_grad for p in model.parameters())
    with pytest.raises(RobenchError, match="dataset="):
        robench.evaluate(model, n=5, store=tmp_path / "s.sqlite")


def test_the_python_api_names_models_from_a_dict_shows_its_options_and_speaks_python(tmp_path):
    import dataclasses
    import inspect

    from robench.config import EvalConfig

    write_mnist_like(tmp_path / "fm", n_test=20)
    relu, silu = (robench.create_model("lenet5", act, dataset="fashion-mnist") for act in ("relu", "silu"))
    df = robench.evaluate(
        {"my-relu": relu, "my-silu": silu},
        dataset="fashion-mnist",
        data_dir=tmp_path / "fm",
        n=10,
        eps="0.1",
        attacks="fgsm",
        store=tmp_path / "s.sqlite",
    )
    assert list(df.model) == ["my-relu", "my-silu"]  # not model0, model1
    params = inspect.signature(robench.evaluate).parameters
    assert {f.name for f in dataclasses.fields(EvalConfig)} - {"checkpoints"} <= set(params)
    assert params["n"].default == 1000 and params["n"].kind == inspect.Parameter.KEYWORD_ONLY
    assert "trades_beta" in inspect.signature(robench.train).parameters
    # raised to Python, a message names Python arguments; through the CLI, the flags
    save_tiny(tmp_path / "m.pt")
    with pytest.raises(RobenchError) as e:
        robench.evaluate(
            str(tmp_path / "m.pt"),
            dataset="fashion-mnist",
            data_dir=tmp_path / "fm",
            n=10,
            eps="0.1",
            attacks="fb:L2CarliniWagnerAttack",
            store=tmp_path / "s.sqlite",
        )
    assert "norm='L2'" in str(e.value) and "--norm" not in str(e.value)
    r = CliRunner().invoke(
        app,
        [
            "eval",
            str(tmp_path / "m.pt"),
            "--data-dir",
            str(tmp_path / "fm"),
            "--n",
            "10",
            "--eps",
            "0.1",
            "--attack",
            "fb:L2CarliniWagnerAttack",
            "--store",
            str(tmp_path / "s.sqlite"),
        ],
    )
    assert r.exit_code == 2 and "--norm L2" in r.output


def test_end_to_end_cli_on_real_fashion_mnist(trained, tmp_path):
    r = cli(
        "eval",
        trained,
        "--n",
        "200",
        "--eps",
        "0.05",
        "--eps",
        "0.1",
        "--attack",
        "pgd",
        "--store",
        tmp_path / "s.sqlite",
        "--out",
        tmp_path / "r.json",
    )
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [row["eps"] for row in rows] == ["0.05", "0.1"] and rows[0]["n"] == 200
    assert 70 < rows[0]["clean_acc"] < 95  # one pass over 6000 images
    assert rows[1]["robust_acc"] < rows[0]["robust_acc"] < rows[0]["clean_acc"]
    assert "lenet5-relu-test" in r.output and "[" in r.output  # the table with intervals


def test_autoattack_checks_become_flags(trained, tmp_path):
    model = Quantized(robench.load_checkpoint(trained).model)
    df = robench.evaluate(
        model, dataset="fashion-mnist", n=8, eps=["0.1"], attacks=["apgd-t", "square"], store=tmp_path / "s.sqlite"
    )
    flags = df["flags"][0]
    assert "zero gradient" in flags and "all-zero (or non-finite) input gradient on 8 of 8" in flags, flags
    assert (
        "square (black-box) broke" in flags
        and "zero-gradients" not in flags
        and json.loads(df.broken_by[0]).get("square", 0) > 0
    )


def test_a_suite_of_runs_gives_the_same_outcomes_with_two_jobs(tmp_path, monkeypatch):
    from helpers import save_tiny, write_mnist_like

    write_mnist_like(Path("data/fashion-mnist"), n_test=40)
    save_tiny("m-a.pt", "relu", seed=0)
    save_tiny("m-b.pt", "silu", seed=1)
    Path("suite.toml").write_text(
        'checkpoints = ["m-*.pt"]\nseed = 3\n'
        '[[run]]\nname = "clean"\nattacks = ["none"]\nn = 40\n'
        '[[run]]\nname = "sweep"\nattacks = ["pgd(steps=3)"]\neps = ["0.05", "0.1"]\nn = 20\n'
    )
    one = robench.evaluate(None, config="suite.toml", store="one.sqlite")
    events = []
    two = robench.evaluate(None, config="suite.toml", store="two.sqlite", jobs=2, progress=events.append)
    assert len(one) == 2 + 4 and set(one.attacks) == {"none", "pgd"}
    # every task's state: the plan up front, then each worker's runs as they start, move and end
    plan = events[0]
    assert plan["event"] == "plan" and plan["total"] == 4 and plan["stored"] == 0 and len(plan["waiting"]) == 4
    assert {e["event"] for e in events} >= {"start", "batch", "end", "unit"}
    r = cli("eval", "--config", "suite.toml", "--store", "two.sqlite", "--jobs", "2")
    assert r.exit_code == 0 and "4 tasks: 4 already in the store, 0 to run on 2 workers." in r.output
    # asking of each of the 4 units whether it is stored reads each checkpoint and the dataset once
    from robench.engine import core

    loads = {"checkpoint": 0, "split": 0}

    def counted(kind, fn):
        return lambda *a, **k: loads.__setitem__(kind, loads[kind] + 1) or fn(*a, **k)

    monkeypatch.setattr(core, "load_checkpoint", counted("checkpoint", core.load_checkpoint))
    monkeypatch.setattr(core, "load_split", counted("split", core.load_split))
    robench.evaluate(None, config="suite.toml", store="two.sqlite", jobs=2)
    assert loads == {"checkpoint": 2, "split": 1}
    clean = one[one.attacks == "none"]
    assert (clean.n == 40).all() and (clean.robust_acc == clean.clean_acc).all()  # no attack: robust = clean
    key = ["model", "attacks", "eps"]
    cols = key + ["n", "clean_acc", "robust_acc"]
    pd.testing.assert_frame_equal(
        one[cols].sort_values(key).reset_index(drop=True), two[cols].sort_values(key).reset_index(drop=True)
    )
    oc = ["model", "eps", "idx", "clean", "robust"]
    a = one.attrs["outcomes"][oc].sort_values(oc).reset_index(drop=True)
    b = two.attrs["outcomes"][oc].sort_values(oc).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    Path("bad.toml").write_text('[[run]]\nattacks = ["none", "pgd"]\n')
    r = cli("eval", "m-a.pt", "--config", "bad.toml", "--n", "5")
    assert r.exit_code == 2 and "cannot be combined" in r.output
    Path("bad.toml").write_text('[[run]]\nname = "x"\nstep = 3\n')
    r = cli("eval", "m-a.pt", "--config", "bad.toml")
    assert r.exit_code == 2 and 'run "x": unknown key "step"' in r.output
    r = cli("eval", "nothing-*.pt")
    assert r.exit_code == 2 and "No checkpoint matches nothing-*.pt" in r.output
