"""robench check: the CI gate passes an unchanged checkpoint and fails (exit 1) a weakened one."""

import json
import shutil
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from conftest import requires_fmnist
from typer.testing import CliRunner

import robench
from robench.cli import app
from robench.engine.gate import compare
from robench.stats import fisher_exact, unpaired_diff_ci

ZOO = Path(__file__).resolve().parent.parent / "checkpoints"
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def baseline():
    """A leaderboard from the shipped PGD-AT ReLU LeNet5: clean on 300, PGD over two eps on 100."""
    shutil.copy(ZOO / "lenet5-relu-pgd-at.safetensors", "model.safetensors")
    robench.evaluate(["model.safetensors"], n=300, attacks=["none"], store="base.sqlite")
    robench.evaluate(["model.safetensors"], n=100, eps=["0.05", "0.1"], attacks=["pgd(steps=10)"], store="base.sqlite")
    robench.api.leaderboard("base.sqlite", "lb", report=False)
    return Path("lb/fashion-mnist_Linf.csv")


def _weaken():
    """The standard-trained twin's weights under the PGD-AT model's name: same model id, new sha256."""
    weak = robench.load_checkpoint(ZOO / "lenet5-relu-standard.safetensors").model
    meta = robench.load_checkpoint("model.safetensors").meta
    robench.save_checkpoint(weak, "weak.safetensors", meta)


@requires_fmnist
def test_an_unchanged_checkpoint_passes_with_the_paired_test(baseline):
    r = cli("check", "--baseline", baseline, "--store", "base.sqlite", "--junit", "j.xml", "--json", "c.json")
    assert r.exit_code == 0, r.output
    assert "All 6 checks passed." in r.output  # clean, pgd and best known at eps 0.05 and 0.1
    rows = json.loads(Path("c.json").read_text())["rows"]
    assert {r["test"] for r in rows} == {"paired (McNemar)"} and all(r["change"] == 0 for r in rows)
    assert {r["checkpoint"] for r in rows} == {"same"}
    suite = ET.parse("j.xml").getroot()
    assert suite.get("tests") == "6" and suite.get("failures") == "0"


@requires_fmnist
def test_n_rechecks_the_first_examples_against_the_baselines_own_on_them(baseline):
    """--n re-runs each baseline run on its first n examples only and sets them, paired, against the
    baseline's outcomes on those same examples: an unchanged model passes unchanged, a weakened one fails."""
    r = cli("check", "--baseline", baseline, "--store", "base.sqlite", "--n", 50, "--json", "c.json")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "on n=50 (the first of the baseline's 300)" in text and "(the first of the baseline's 100)" in text, text
    rows = pd.DataFrame(json.loads(Path("c.json").read_text())["rows"])
    assert len(rows) == 6 and set(rows.now_n) == {50} and set(rows.baseline_n) == {50} and set(rows.change) == {0}
    con = sqlite3.connect("base.sqlite")  # the baseline's PGD outcomes on the first 50, read independently
    (k,) = con.execute(
        "SELECT SUM(robust) FROM outcomes JOIN runs USING (run_id) WHERE attacks LIKE '%pgd%' "
        "AND outcomes.eps = '0.1' AND idx < 50"
    ).fetchone()
    pgd = rows[(rows.metric == "pgd") & (rows.eps == "0.1")].iloc[0]
    assert pgd.baseline == pgd.now == 2 * k
    _weaken()
    r = cli("check", "--baseline", baseline, "weak.safetensors", "--store", "base.sqlite", "--n", 50, "--quiet")
    assert r.exit_code == 1 and "lenet5-relu-pgd-at (pgd)" in r.output, r.output
    r = cli("check", "--baseline", baseline, "--store", "base.sqlite", "--n", 0)
    assert r.exit_code == 2 and "--n must be at least 1, not 0." in r.output, r.output


@requires_fmnist
def test_a_weakened_checkpoint_fails_with_exit_1(baseline):
    _weaken()
    r = cli(
        "check",
        "--baseline",
        baseline,
        "weak.safetensors",
        "--store",
        "base.sqlite",
        "--junit",
        "j.xml",
        "--json",
        "c.json",
        "--quiet",
    )
    assert r.exit_code == 1, r.output
    assert "checks failed" in r.output and "lenet5-relu-pgd-at (pgd)" in r.output
    assert "robench check against" not in r.output  # --quiet: the verdict without the table
    rows = pd.DataFrame(json.loads(Path("c.json").read_text())["rows"])
    assert set(rows.checkpoint) == {"changed"}
    pgd = rows[(rows.metric == "pgd") & (rows.eps == "0.1")].iloc[0]
    assert pgd.verdict == "fail" and pgd.now < 10 and pgd.baseline > 60 and pgd.p < 1e-6
    clean = rows[(rows.metric == "clean") & (rows.eps == "0.1")].iloc[0]
    assert clean.verdict == "pass" and clean.change > 0  # the standard model is cleaner: a rise passes
    failures = ET.parse("j.xml").getroot().findall("testcase/failure")
    assert failures and "fell from" in failures[0].get("message")


@requires_fmnist
def test_without_the_baselines_outcomes_the_counts_are_compared_and_it_says_so(baseline):
    r = cli("check", "--baseline", baseline, "--store", "elsewhere.sqlite", "--json", "c.json")
    assert r.exit_code == 0, r.output
    assert {r["test"] for r in json.loads(Path("c.json").read_text())["rows"]} == {"unpaired (Fisher)"}
    assert "Warning: 6 of 6 comparisons are unpaired" in " ".join(r.output.split())
    _weaken()
    r = cli("check", "--baseline", baseline, "weak.safetensors", "--store", "elsewhere.sqlite")
    assert r.exit_code == 1


def test_a_small_drop_or_one_within_noise_passes():
    base = pd.DataFrame(
        [
            {
                "model_id": "m",
                "eps": "0.1",
                "sha256": "a",
                "dataset": "d",
                "norm": "Linf",
                "clean_acc": 90.0,
                "clean_n": 100,
                "pgd_acc": 50.0,
                "pgd_n": 100,
                "autoattack_acc": float("nan"),
                "autoattack_n": 0,
                "best_known_acc": 50.0,
                "n": 100,
            }
        ]
    )

    def now(clean_right, robust_right):
        return pd.DataFrame(
            [
                {
                    "sha256": "b",
                    "eps": "0.1",
                    "kind": "pgd",
                    "n": 100,
                    "run_id": 1,
                    "robust_acc": 0.0,
                    "clean_by_idx": {i: int(i < clean_right) for i in range(100)},
                    "robust_by_idx": {i: int(i < robust_right) for i in range(100)},
                }
            ]
        )

    small = compare(base, now(90, 49), {"b": "m"}, None, tolerance=1.0)  # -1 point: within the tolerance
    assert set(small.verdict) == {"pass"}
    noisy = compare(base, now(90, 45), {"b": "m"}, None, tolerance=1.0)  # -5 points on n=100: not significant
    assert set(noisy.verdict) == {"pass"} and noisy[noisy.metric == "pgd"].p.iloc[0] > 0.05
    big = compare(base, now(90, 20), {"b": "m"}, None, tolerance=1.0)  # -30 points: significant
    assert big[big.metric == "pgd"].verdict.iloc[0] == "fail"


def test_unpaired_interval_and_fisher_match_known_values():
    # Newcombe (1998) table II, example (a): 56/70 vs 48/80, method 10 gives 0.0524 to 0.3339
    d, lo, hi = unpaired_diff_ci(48, 80, 56, 70)
    assert round(d, 4) == 0.2 and round(lo, 4) == 0.0524 and round(hi, 4) == 0.3339
    # Fisher's tea-tasting table [[3, 1], [1, 3]]: two-sided p = 0.4857
    assert round(fisher_exact(3, 4, 1, 4), 4) == 0.4857


def test_a_file_that_is_not_a_leaderboard_is_one_sentence():
    Path("x.csv").write_text("a,b\n1,2\n")
    r = cli("check", "--baseline", "x.csv")
    assert r.exit_code == 2 and "is not a robench leaderboard CSV" in r.output
    r = cli("check", "--baseline", "missing.csv")
    assert r.exit_code == 2 and "No such baseline" in r.output


@requires_fmnist
def test_autoattack_rows_are_rechecked_with_fast_unless_told_official(tmp_path, monkeypatch):
    """By default the AutoAttack row of the baseline is re-run with robench's fast (seconds instead of a
    quarter of an hour at n=1000) and compared as the autoattack metric, and the output and the JSON say so;
    a weakened model fails. --autoattack official re-runs AutoAttack itself."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(ZOO / "lenet5-relu-pgd-at.safetensors", "model.safetensors")
    robench.evaluate(["model.safetensors"], n=20, eps=["0.1"], attacks=["autoattack"], store="base.sqlite")
    robench.api.leaderboard("base.sqlite", "lb", report=False)
    base = Path("lb/fashion-mnist_Linf.csv")
    r = cli("check", "--baseline", base, "--store", "base.sqlite", "--json", "c.json")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "for the baseline's autoattack (robench's fast in place of autoattack" in text, text
    assert "Compared: clean, autoattack, best_known." in text, text
    out = json.loads(Path("c.json").read_text())
    rows = pd.DataFrame(out["rows"])
    aa = rows[rows.metric == "autoattack"].iloc[0]
    assert out["autoattack"] == "fast" and aa.test == "paired (McNemar)" and aa.verdict == "pass"
    assert abs(aa.change) <= 100 / 20
    r = cli("check", "--baseline", base, "--autoattack", "official", "--store", "base.sqlite", "--json", "o.json")
    assert r.exit_code == 0 and "in place of" not in r.output, r.output
    aa = pd.DataFrame(json.loads(Path("o.json").read_text())["rows"]).query("metric == 'autoattack'").iloc[0]
    assert aa.change == 0  # the official code with the baseline's seed and batches: the same outcomes
    _weaken()
    r = cli("check", "--baseline", base, "weak.safetensors", "--store", "base.sqlite")
    assert r.exit_code == 1 and "lenet5-relu-pgd-at (autoattack)" in r.output
    r = cli("check", "--baseline", base, "--autoattack", "best", "--store", "base.sqlite")
    assert r.exit_code == 2 and "--autoattack is fast or official" in r.output


@requires_fmnist
def test_a_cascade_with_autoattack_is_compared_on_autoattack_too(tmp_path, monkeypatch):
    """A baseline run of pgd then autoattack is re-run as pgd+fast and compared on the autoattack metric (it
    was compared on clean and best known only), and the output says what ran for which baseline run."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(ZOO / "lenet5-relu-pgd-at.safetensors", "model.safetensors")
    robench.evaluate(["model.safetensors"], n=20, eps=["0.1"], attacks=["pgd", "autoattack"], store="base.sqlite")
    robench.api.leaderboard("base.sqlite", "lb", report=False)
    r = cli("check", "--baseline", "lb/fashion-mnist_Linf.csv", "--store", "base.sqlite", "--json", "c.json")
    assert r.exit_code == 0, r.output
    rows = pd.DataFrame(json.loads(Path("c.json").read_text())["rows"])
    assert sorted(rows.metric) == ["autoattack", "best_known", "clean"] and set(rows.test) == {"paired (McNemar)"}
    text = " ".join(r.output.split())
    assert (
        "Re-ran lenet5-relu-pgd-at: pgd+fast on n=20 at eps 0.1 for the baseline's pgd+autoattack "
        "(robench's fast in place of autoattack, about 5x quicker; --autoattack official runs it). "
        "Compared: clean, autoattack, best_known." in text
    ), text


@requires_fmnist
def test_the_results_exported_beside_a_leaderboard_pair_the_test_without_a_store(baseline):
    """A committed leaderboard carries its per-example outcomes in results/ beside the CSV (as `make
    leaderboard` exports them): a fresh clone's `check`, with no store, reads them and pairs its test."""
    robench.api.export_results("base.sqlite", "lb/results")
    Path("base.sqlite").rename("moved-away.sqlite")
    r = cli("check", "--baseline", baseline, "--store", "fresh.sqlite", "--json", "c.json")
    assert r.exit_code == 0, r.output
    out = json.loads(Path("c.json").read_text())
    assert {row["test"] for row in out["rows"]} == {"paired (McNemar)"}
    assert out["baseline_outcomes_from"] == "lb/results"
    text = " ".join(r.output.split())
    assert "read from lb/results, beside the baseline" in text and "Warning" not in text
    assert not Path("fresh.sqlite").exists()  # the archive is read through a temporary store
    _weaken()
    r = cli("check", "--baseline", baseline, "weak.safetensors", "--store", "fresh.sqlite", "--json", "c.json")
    assert r.exit_code == 1
    pgd = [row for row in json.loads(Path("c.json").read_text())["rows"] if row["metric"] == "pgd"]
    assert pgd and {row["test"] for row in pgd} == {"paired (McNemar)"}
