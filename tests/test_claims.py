"""The report's claims table and its eps-anomaly section: effects, intervals and verdicts follow from the data."""

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import save_tiny, write_mnist_like
from scipy.integrate import quad
from scipy.stats import t

import robench
from robench.nn.activations import create_activation
from robench.reporting import anomaly, claims
from robench.reporting.groups import Group, Member
from robench.stats import compare_outcomes


def test_shape_statistics_are_read_from_the_activation_itself():
    """The shape the store records when a model is evaluated, read from the activation itself; the claims
    read a kink as infinite curvature."""
    from robench.nn.activations import activation_modules
    from robench.nn.shapes import model_record

    def shape(*mods):
        return model_record(torch.nn.Sequential(*mods))["shape"]

    relu = shape(create_activation("relu"))
    assert relu["negative_output"] == 0 and relu["kink"] and relu["curvature"] is None and not relu["learned"]
    soft = shape(create_activation("softplus"))
    area = quad(lambda x: math.log1p(math.exp(x)), -4, 0)[0] / 4
    assert soft["negative_output"] == pytest.approx(area, abs=2e-3)
    assert soft["curvature"] == pytest.approx(0.25, abs=1e-3) and not soft["kink"]  # max of sigmoid'
    assert shape(create_activation("tanh"))["curvature"] == pytest.approx(4 / (3 * math.sqrt(3)), abs=1e-3)
    splash = shape(create_activation("splash"))
    assert splash["kink"] and splash["learned"]  # hinges are kinks
    assert shape(torch.nn.Linear(2, 2)) is None
    # a curve per activation instance, on the grid the report draws
    record = model_record(torch.nn.Sequential(create_activation("relu"), create_activation("tanh")))
    assert len(record["curves"]) == len(activation_modules(torch.nn.Sequential(create_activation("relu")))) + 1
    assert record["curves"][0][0] == 0 and record["curves"][0][-1] == 4.0 and len(record["curves"][1]) == 401
    g = type("G", (), {"members": [_member("splash", 0)]})()
    g.members[0].record = {"shape": splash}
    assert claims.member_shapes(g)["splash-0"]["curvature"] == claims.KINK


def test_verdicts_follow_from_the_interval():
    assert claims.verdict(0.2, 5.0) == "supported"
    assert claims.verdict(0.2, 5.0, p=0.12) == "inconclusive at this n"  # the interval and the test disagree
    assert claims.verdict(-4.0, -0.5).startswith("not supported (significant the other way)")
    assert claims.verdict(-0.8, 0.6).startswith("not supported (rules out a gain of 1 point")
    assert claims.verdict(-3.0, 4.0) == "inconclusive at this n"


def _outcomes(right: int, n: int, offset: int = 0) -> dict[int, int]:
    return {i: int((i + offset) % n < right) for i in range(n)}


def _member(act, seed, **by_eps):
    return Member(
        sha256=f"{act}-{seed}",
        model_id=f"m-{act}-{seed}",
        activation=act,
        checkpoint="",
        by_eps=by_eps,
        flags={},
        label=f"m-{act}-{seed}",
        seed=seed,
    )


def test_claims_pair_training_runs_by_seed_and_give_a_verdict():
    # three seeds each; SPLASH above ReLU in AutoAttack by 10, 12 and 14 points on 500 examples
    g = Group("fashion-mnist", "Linf", "lenet5", "pgd-at", "0.1")
    for seed in range(3):
        g.members.append(
            _member("relu", seed, **{"0.1": {"clean": _outcomes(400, 500), "autoattack": _outcomes(300, 500)}})
        )
        g.members.append(
            _member(
                "splash",
                seed,
                **{"0.1": {"clean": _outcomes(400 + seed, 500), "autoattack": _outcomes(350 + 10 * seed, 500)}},
            )
        )
    rows = claims.claim_rows([g])
    white = next(r for r in rows if "white-box" in r["claim"])
    diffs = [10.0, 12.0, 14.0]
    half = t.ppf(0.975, 2) * statistics.stdev(diffs) / math.sqrt(3)
    assert white["effect"].startswith(f"+12.0 [{12 - half:+.1f}, {12 + half:+.1f}]")
    assert "3 training runs each, seed-paired t-interval" in white["basis"] and "n = 500" in white["basis"]
    p = 2 * t.sf(12 / (statistics.stdev(diffs) / math.sqrt(3)), 2)  # the verdict's test, shown beside it
    assert white["basis"].endswith(f"t-test p={p:.3g}")
    assert white["verdict"] == "supported"
    clean = next(r for r in rows if "clean accuracy" in r["claim"])
    assert clean["verdict"].startswith("not supported (rules out")  # +0.2 points at most, tightly
    # the PAF claims have no PSSiLU/PSoftplus member to test; the shape claims have no checkpoints to read
    assert not any("PSSiLU" in r["claim"] for r in rows)
    assert all(
        r["verdict"] == "not yet measured" for r in rows if "Spearman" in r["basis"] or "correlate" in r["basis"]
    )


def test_a_verdict_resting_on_flagged_checkpoints_says_so_beside_it():
    """Every SPLASH checkpoint carrying AutoAttack's own warning at eps 0.1 shows beside the white-box verdict
    at 0.1, in both claims tables; clean accuracy rests on no attack and carries no note."""
    g = Group("fashion-mnist", "Linf", "lenet5", "pgd-at", "0.1")
    for seed in range(3):
        g.members.append(
            _member("relu", seed, **{"0.1": {"clean": _outcomes(400, 500), "autoattack": _outcomes(300, 500)}})
        )
        splash = _member("splash", seed, **{"0.1": {"clean": _outcomes(410, 500), "autoattack": _outcomes(340, 500)}})
        splash.unreliable = {"0.1": ["AutoAttack's own reliability warning"]}
        g.members.append(splash)
    rows = claims.claim_rows([g])
    white = next(r for r in rows if "white-box" in r["claim"])
    assert white["note"] == "3 of the 6 checkpoints it rests on carry a reliability flag"
    assert next(r for r in rows if "clean accuracy" in r["claim"])["note"] == ""
    for table in (claims.section([g], rows), claims.group_section([g], g, rows)):
        line = next(x for x in table if x.startswith("| SPLASH is more robust than ReLU to white-box"))
        assert line.endswith("| **supported**; 3 of the 6 checkpoints it rests on carry a reliability flag |")


def test_a_single_training_run_gets_a_test_sampling_interval():
    g = Group("fashion-mnist", "Linf", "lenet5", "pgd-at", "0.1")
    g.members += [
        _member("relu", 0, **{"0.1": {"autoattack": _outcomes(100, 200)}}),
        _member("pssilu", 0, **{"0.1": {"autoattack": _outcomes(104, 200)}}),
    ]
    row = next(r for r in claims.claim_rows([g]) if "PSSiLU gives higher" in r["claim"])
    assert "one training run each" in row["basis"] and row["verdict"] == "inconclusive at this n"
    assert row["effect"].startswith("+2.0 [")
    p = compare_outcomes(g.members[1].by_eps["0.1"]["autoattack"], g.members[0].by_eps["0.1"]["autoattack"])["p"]
    assert row["basis"].endswith(f"exact McNemar p={p:.3g}") and p > 0.05


def test_the_report_carries_the_claims_table(tmp_path):
    write_mnist_like(Path("data/fashion-mnist"), n_test=30)
    files = []
    for act in ("relu", "splash"):
        for seed in (0, 1):
            files.append(f"{act}-{seed}.pt")
            save_tiny(files[-1], act, seed=seed, name=f"tiny-{act}-{seed}", recipe={"seed": seed})
    df = robench.evaluate(files, n=30, eps=["0.1"], attacks=["fgsm"], store="s.sqlite")
    robench.api.leaderboard("s.sqlite", "lb")
    text = Path("lb/report.md").read_text()
    assert "## The papers' claims" in text
    acc = {m: c for m, c in zip(df.model, df.clean_acc)}
    diffs = [acc[f"tiny-splash-{s}"] - acc[f"tiny-relu-{s}"] for s in (0, 1)]
    row = next(line for line in text.splitlines() if line.startswith("| SPLASH improves clean accuracy"))
    assert f"{statistics.mean(diffs):+.1f} [" in row and "2 training runs each" in row


def _res_rows(member, eps, label_budget, outcomes, run_id):
    kind = "autoattack" if "autoattack" in label_budget else "pgd"
    return {
        "sha256": member.sha256,
        "eps": eps,
        "kind": kind,
        "attacks": kind,
        "budget": label_budget,
        "n": len(outcomes),
        "run_id": run_id,
        "robust_by_idx": outcomes,
    }


def test_the_anomaly_section_lays_the_attacks_side_by_side():
    pgd20 = json.dumps([{"name": "pgd", "steps": 20, "restarts": 1, "loss": "ce"}])
    pgd100 = json.dumps([{"name": "pgd", "steps": 100, "restarts": 5, "loss": "ce"}])
    aa = json.dumps([{"name": "autoattack", "version": "standard"}])
    n = 400
    relu = _member("relu", 0)
    splash = _member("splash", 0)
    # PGD-20: splash leads at 0.1 (300 vs 240) but trails at 0.2 (20 vs 120); the stronger attacks take
    # splash down to ReLU's level at 0.1
    runs = [
        (relu, "0.1", {pgd20: _outcomes(240, n), pgd100: _outcomes(236, n), aa: _outcomes(235, n)}),
        (splash, "0.1", {pgd20: _outcomes(300, n), pgd100: _outcomes(240, n), aa: _outcomes(238, n)}),
        (relu, "0.2", {pgd20: _outcomes(120, n), aa: _outcomes(100, n)}),
        (splash, "0.2", {pgd20: _outcomes(20, n), aa: _outcomes(10, n)}),
    ]
    rows, run_id = [], 0
    for mb, eps, by in runs:
        for budget, out in by.items():
            run_id += 1
            rows.append(_res_rows(mb, eps, budget, out, run_id))
        best = {i: int(all(o[i] for o in by.values())) for i in range(n)}
        mb.by_eps[eps] = {"pgd": by[pgd20], "autoattack": by[aa], "best_known": best}
    g = Group("fashion-mnist", "Linf", "lenet5", "pgd-at", "0.1", [relu, splash])
    text = "\n".join(anomaly.section(pd.DataFrame(rows), g, "0.1"))
    assert "| Model | eps | AutoAttack | PGD-100 x 5 restarts | PGD-20 | Best known |" in text
    assert "| m-splash-0 | 0.1 | 59.5 [" in text and "(400)" in text
    assert "Under PGD, m-splash-0 leads ReLU at eps 0.1 but falls significantly below it at eps 0.2" in text
    assert (
        "m-splash-0: at eps 0.1 its lead over ReLU is not significant under the strongest attacks: best known +0.7 points [-0.1, +1.6]"
        in text
    )
    assert (
        "the PGD sweep overstates robust accuracy compared with the worst case over all attacks: m-splash-0 by "
        "2.5 points, m-relu-0 by 5.0 points" in text
    )
    # a second training run of SPLASH that only the PGD sweep has attacked at 0.2: the sweep cannot be said to
    # overstate its robustness there by 0 points, it is not yet measured
    later = _member("splash", 1)
    for eps, right in (("0.1", 300), ("0.2", 20)):
        run_id += 1
        rows.append(_res_rows(later, eps, pgd20, _outcomes(right, n), run_id))
        later.by_eps[eps] = {"pgd": _outcomes(right, n), "best_known": _outcomes(right, n)}
    g3 = Group("fashion-mnist", "Linf", "lenet5", "pgd-at", "0.1", [relu, splash, later])
    text = "\n".join(anomaly.section(pd.DataFrame(rows), g3, "0.1"))
    assert (
        "m-splash-1: at eps 0.2 only the PGD sweep has run on it or on its ReLU so far, so how much the sweep "
        "overstates their robustness there is not yet measured."
    ) in text
    assert "m-splash-1 by" not in text and "m-splash-0 by 2.5 points, m-relu-0 by 5.0 points" in text
    # PGD-100 on its first 100 only, breaking 10 of them more than the sweep: the sweep overstates by 10 points
    # there, not by the 2.5 that spreading those 10 over the sweep's 400 examples would say
    run_id += 1
    rows.append(_res_rows(later, "0.2", pgd100, _outcomes(10, 100), run_id))
    later.by_eps["0.2"]["best_known"] = _outcomes(10, n)
    text = "\n".join(anomaly.section(pd.DataFrame(rows), g3, "0.1"))
    assert "all attacks: m-splash-1 by 10.0 points, m-relu-0 by 5.0 points" in text, text
    # no flip, no section
    g2 = Group("fashion-mnist", "Linf", "lenet5", "pgd-at", "0.1", [relu, _member("tanh", 0, **relu.by_eps)])
    assert anomaly.section(pd.DataFrame(rows), g2, "0.1") == []


def test_the_pooled_table_is_what_the_per_example_outcomes_give(tmp_path, monkeypatch):
    """The group's first table pools each activation's training runs: its numbers equal a recomputation
    from the per-example outcomes (means over seeds and their intervals, a Student-t interval over the
    seed-paired differences, an exact McNemar test for a single pair), and the forest plot draws exactly
    the table's intervals."""
    from scipy.stats import binomtest
    from scipy.stats import t as student

    from robench.reporting import glance, plots

    g = Group("fashion-mnist", "Linf", "lenet5", "pgd-at", "0.1")
    acc = {("relu", 0): 60, ("relu", 1): 62, ("relu", 2): 61, ("splash", 0): 70, ("splash", 1): 66, ("splash", 2): 73}
    acc |= {("tanh", 0): 58}
    g.members = [
        _member(
            act, seed, **{"0.1": {m: _outcomes(k + (m == "clean") * 20, 200, seed) for m in ("clean", "autoattack")}}
        )
        for (act, seed), k in acc.items()
    ]
    g.members[-1].unreliable = {"0.1": ["square broke what the white-box attacks left"]}
    rows = {r["activation"]: r for r in glance.pooled(g, "0.1")}
    assert list(rows) == ["relu", "splash", "tanh"] and rows["splash"]["seeds"] == [0, 1, 2]
    for act, row in rows.items():
        for metric in ("clean", "autoattack"):

            def pct(a, s):
                d = next(mb for mb in g.members if (mb.activation, mb.seed) == (a, s)).by_eps["0.1"][metric]
                return 100 * sum(d.values()) / len(d)

            cell = row["metrics"][metric]
            accs = [pct(act, s) for s in row["seeds"]]
            assert cell["mean"] == pytest.approx(sum(accs) / len(accs))
            if len(accs) > 1:  # the mean's interval: Student-t over the seeds' accuracies
                m, sd = sum(accs) / len(accs), statistics.stdev(accs)
                half = student.ppf(0.975, len(accs) - 1) * sd / len(accs) ** 0.5
                assert (cell["mean_low"], cell["mean_high"]) == pytest.approx((max(0, m - half), min(100, m + half)))
            else:  # one run: Wilson over its test examples
                d = next(mb for mb in g.members if (mb.activation, mb.seed) == (act, 0)).by_eps["0.1"][metric]
                ci = binomtest(sum(d.values()), len(d)).proportion_ci(method="wilson")
                assert (cell["mean_low"], cell["mean_high"]) == pytest.approx((100 * ci.low, 100 * ci.high))
            if act == "splash":  # three seed-paired differences: Student-t over them
                diffs = [pct("splash", s) - pct("relu", s) for s in (0, 1, 2)]
                mean = sum(diffs) / 3
                se = (sum((x - mean) ** 2 for x in diffs) / 2) ** 0.5 / 3**0.5
                assert cell["diff"] == pytest.approx(mean)
                assert cell["low"] == pytest.approx(mean - student.ppf(0.975, 2) * se)
                assert cell["high"] == pytest.approx(mean + student.ppf(0.975, 2) * se)
            if act == "tanh":  # one pair of runs: exact McNemar over the test examples
                a = next(mb for mb in g.members if mb.activation == "tanh").by_eps["0.1"][metric]
                b = next(mb for mb in g.members if (mb.activation, mb.seed) == ("relu", 0)).by_eps["0.1"][metric]
                only_a, only_b = sum(a[i] and not b[i] for i in a), sum(b[i] and not a[i] for i in a)
                assert cell["diff"] == pytest.approx(pct("tanh", 0) - pct("relu", 0))
                assert cell["p"] == pytest.approx(binomtest(only_a, only_a + only_b).pvalue)
    assert rows["relu"]["verdict"] == "the reference"
    assert rows["splash"]["verdict"].startswith("more robust than ReLU (AutoAttack): ")
    # tanh's one run against ReLU's run of the same seed: two checkpoints, tanh's flagged
    assert rows["tanh"]["verdict"].endswith("; 1 of the 2 checkpoints it rests on carries a reliability flag")
    assert "reliability" not in rows["splash"]["verdict"]

    drawn = {}
    monkeypatch.setattr(plots, "forest", lambda path, panels, title: drawn.setdefault("panels", panels) and path)
    lines, _ = glance.section(g, "0.1", tmp_path)
    for panel in drawn["panels"]:
        metric = {"Clean": "clean", "AutoAttack": "autoattack"}[panel["title"]]
        for act, diff, low, high in panel["rows"]:
            cell = rows[act]["metrics"][metric]
            assert (diff, low, high) == (cell["diff"], cell["low"], cell["high"])
    assert any(line.startswith("| splash | 3 |") for line in lines)


def test_a_group_is_compared_where_its_models_keep_some_robustness():
    """Standard-trained models are all at 0% at eps 0.1: once AutoAttack covers a smaller eps as fully, the
    tables move there; until then the best covered eps stays (a comparison on fewer members is worse)."""
    from robench.reporting.groups import comparison_eps

    def member(act, seed, small_aa: bool):
        zero = {m: _outcomes(0, 100) for m in ("clean", "autoattack", "best_known")}
        zero["clean"] = _outcomes(90, 100)
        small = {"clean": _outcomes(90, 100), "best_known": _outcomes(30, 100)}
        small |= {"autoattack": _outcomes(30, 100)} if small_aa else {}
        return _member(act, seed, **{"0.1": zero, "0.02": small})

    g = Group("fashion-mnist", "Linf", "lenet5", "standard", None)
    g.members = [member("relu", 0, True), member("splash", 0, False)]
    assert comparison_eps(g) == "0.1"  # AutoAttack covers 0.1 for both, 0.02 for one
    g.members[1] = member("splash", 0, True)
    assert comparison_eps(g) == "0.02"  # covered alike: 0.02, where they keep 30%
