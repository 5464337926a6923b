"""robench leaderboard: RobustBench's fields, per-example worst case, byte-identical regeneration."""

import json
import re
from pathlib import Path

import pandas as pd
from helpers import save_tiny, write_mnist_like
from typer.testing import CliRunner

import robench
from robench.cli import app
from robench.reporting.leaderboard import COLUMNS

RB_FIELDS = [
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "autoattack_acc",
    "external",
    "footnote",
    "unreliable",
]


def _store():
    write_mnist_like(Path("data/fashion-mnist"), n_test=60)
    save_tiny("a.pt", "relu", seed=0, name="tiny-relu", zoo_group="g")
    save_tiny("b.pt", "splash", seed=1, name="tiny-splash")
    robench.evaluate(["a.pt", "b.pt"], n=40, eps=["0.02", "0.1"], attacks=["pgd"], store="s.sqlite")
    robench.evaluate(["a.pt"], n=30, eps=["0.1"], attacks=["fgsm"], store="s.sqlite")
    return robench.api.leaderboard("s.sqlite", "lb")


def test_leaderboard_files_carry_robustbench_fields_and_the_worst_case():
    res = _store()
    df = pd.read_csv("lb/fashion-mnist_Linf.csv", dtype={"eps": str})
    assert list(df.columns) == COLUMNS
    assert sorted(df.eps.unique()) == ["0.02", "0.1"]
    for eps, block in df.groupby("eps"):
        assert list(block["rank"]) == [1, 2]
        assert list(block.best_known_acc) == sorted(block.best_known_acc, reverse=True)
    a = df[(df.model_id == "tiny-relu") & (df.eps == "0.1")].iloc[0]
    # FGSM ran on the first 30 examples, PGD on 40: the worst case is taken per example on PGD's 40 (the
    # larger run), FGSM adding its attack to the 30 it covers
    outcomes = robench.evaluate(["a.pt"], n=40, eps=["0.1"], attacks=["pgd"], store="s.sqlite").attrs["outcomes"]
    fgsm = robench.evaluate(["a.pt"], n=30, eps=["0.1"], attacks=["fgsm"], store="s.sqlite").attrs["outcomes"]
    pgd = outcomes.set_index("idx").robust
    worst = (pgd[pgd.index < 30] & fgsm.set_index("idx").robust).sum() + pgd[pgd.index >= 30].sum()
    assert a.n == 40 and a.best_known_acc == round(100 * worst / 40, 2)
    assert a.pgd_n == 40 and a.best_known_by == "fgsm + pgd" and a.venue == "robench zoo"
    assert "pgd 20 steps" in a.budget and "fgsm 1 steps" in a.budget
    info = json.loads(Path("lb/model_info/fashion-mnist/Linf/tiny-relu.json").read_text())
    assert list(info)[: len(RB_FIELDS)] == RB_FIELDS
    assert info["eps"] == "0.1" and info["external"] == f"{a.best_known_acc:.2f}"  # Fashion-MNIST's default eps
    assert isinstance(info["clean_acc"], str) and info["autoattack_acc"] == "" and info["unreliable"] is False
    assert info["robench"]["sha256"] == robench.load_checkpoint("a.pt").sha256
    readme = Path("lb/README.md").read_text()
    assert "## fashion-mnist, Linf, eps 0.1" in readme and "| 1 |" in readme
    # csv, 2 json, 2 png, report.md, README.md; the site: index, 2 model pages, 1 group page, script and style
    assert len(res["files"]) == 13 and "report.md" in readme
    assert (Path("lb") / "index.html").is_file() and res["index"] == Path("lb") / "index.html"


def test_the_same_store_gives_byte_identical_files():
    first = {p: p.read_bytes() for p in (_store() and Path("lb").rglob("*")) if p.is_file()}
    r = CliRunner().invoke(app, ["leaderboard", "--store", "s.sqlite", "--out", "lb"])
    assert r.exit_code == 0 and "tiny-splash" in r.output
    again = {p: p.read_bytes() for p in Path("lb").rglob("*") if p.is_file()}
    assert again == first


def test_chunks_of_one_evaluation_add_up_and_check_reruns_each_chunk():
    """`--subset from:K` extends an evaluation: the leaderboard counts both chunks (clean, PGD and best
    known on all 60), a run of the first 30 adds nothing beside them, and `robench check` re-runs each
    chunk on its own examples and pairs them with the stored ones."""
    write_mnist_like(Path("data/fashion-mnist"), n_test=60)
    save_tiny("a.pt", "relu", seed=0, name="tiny-relu")
    kw = dict(eps=["0.1"], attacks=["pgd"], store="s.sqlite")
    first = robench.evaluate(["a.pt"], n=40, **kw).attrs["outcomes"]
    more = robench.evaluate(["a.pt"], n=20, subset="from:40", **kw).attrs["outcomes"]
    robench.evaluate(["a.pt"], n=30, **kw)  # inside the first chunk: counted once
    assert sorted(more.idx) == list(range(40, 60))
    robench.api.leaderboard("s.sqlite", "lb", report=False)
    row = pd.read_csv("lb/fashion-mnist_Linf.csv", dtype={"eps": str}).iloc[0]
    both = pd.concat([first, more])
    assert row.pgd_n == row.clean_n == row.n == 60
    assert row.pgd_acc == round(100 * both.robust.sum() / 60, 2) == row.best_known_acc
    assert row.clean_acc == round(100 * both.clean.sum() / 60, 2)
    assert "from:40" in row.config
    res = robench.api.check("lb/fashion-mnist_Linf.csv", store="s.sqlite")
    pgd = res["table"].query("metric == 'pgd'").iloc[0]
    assert not res["failed"] and pgd.baseline_n == pgd.now_n == 60 and pgd.test == "paired (McNemar)"
    assert pgd.change == 0


def test_an_empty_or_missing_store_is_one_sentence():
    r = CliRunner().invoke(app, ["leaderboard", "--store", "none.sqlite"])
    assert r.exit_code == 2 and "No results store" in r.output
    robench.store.Store("empty.sqlite").close()
    r = CliRunner().invoke(app, ["leaderboard", "--store", "empty.sqlite"])
    assert r.exit_code == 2 and "holds no finished runs" in r.output


def test_the_report_compares_each_activation_with_relu_on_the_same_examples():
    from robench.stats import compare_outcomes

    _store()
    text = Path("lb/report.md").read_text()
    kw = dict(n=40, eps=["0.02", "0.1"], attacks=["pgd"], store="s.sqlite")
    a = robench.evaluate(["a.pt"], **kw).attrs["outcomes"]
    b = robench.evaluate(["b.pt"], **kw).attrs["outcomes"]
    # both tiny models are at 0% at eps 0.1, so the group is compared at 0.02, where they keep some robustness
    assert not a[a.eps == "0.1"].robust.any() and not b[b.eps == "0.1"].robust.any()
    at = lambda o, col: dict(zip(o[o.eps == "0.02"].idx, o[o.eps == "0.02"][col]))  # noqa: E731
    pgd = compare_outcomes(at(b, "robust"), at(a, "robust"))  # splash minus relu, paired on the 40 examples
    clean = compare_outcomes(at(b, "clean"), at(a, "clean"))
    change = text.split("#### Change against ReLU at Linf eps 0.02")[1]
    row = next(line for line in change.splitlines() if line.startswith("| splash |"))
    assert f"{pgd['diff']:+.1f} [{pgd['low']:+.1f}, {pgd['high']:+.1f}]" in row
    assert f"{clean['diff']:+.1f} [{clean['low']:+.1f}, {clean['high']:+.1f}]" in row
    # the per-checkpoint numbers in a section of their own; the activation column names the activation, not
    # the model id again
    assert text.index("### Per checkpoint at Linf eps 0.02") < text.index("#### Accuracy at Linf eps 0.02")
    assert "| relu | - | tiny-relu |" in text
    assert "Each activation was trained once" in text  # the summary says what the intervals do not cover
    for name in ("-eps.png", "-activations.png"):
        png = next(Path("lb").glob(f"*{name}"))
        assert f"]({png.name})" in text and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_known_with_autoattack_is_never_set_against_best_known_without():
    # ReLU and tanh carry AutoAttack at eps 0.1, SPLASH only PGD: SPLASH's best known (higher, because it was
    # attacked less) must not count as a lead over ReLU, while its PGD and clean changes still do
    from robench.reporting import compare, seeds, summary
    from robench.reporting.groups import Group, Member

    def member(act, seed, aa, pgd):
        s = {"clean": _right(90), "pgd": _right(pgd), "best_known": _right(60 if aa else pgd)}
        s.update({"autoattack": _right(60)} if aa else {})
        return Member(f"{act}{seed}", f"m-{act}-{seed}", act, "", {"0.1": s}, {}, label=f"{act}-{seed}", seed=seed)

    g = Group("fashion-mnist", "Linf", "lenet5", "pgd-at", "0.1")
    g.members = [
        member("relu", 0, True, 80),
        member("relu", 1, True, 80),
        member("splash", 0, False, 85),
        member("splash", 1, True, 80),
        member("tanh", 0, True, 80),
    ]
    dl = compare.deltas(g, "0.1")
    assert set(dl["best_known"]) == {"splash-1", "tanh-0"} and set(dl["pgd"]) == {"splash-0", "splash-1", "tanh-0"}
    text = " ".join(summary.summary(g, "0.1", dl))
    assert "Not yet attacked with AutoAttack at this eps: splash-0." in text
    assert "(the members with AutoAttack at this eps)" in text and "85.0%" not in text
    best = {r["activation"]: r["seeds"] for r in seeds.seed_rows(g, "0.1") if r["metric"] == "best_known"}
    assert best == {"relu": [0, 1], "splash": [1], "tanh": [0]}
    # where the ReLU model has no AutoAttack either, the two PGD-only best knowns are like for like
    g.members[0] = member("relu", 0, False, 80)
    assert set(compare.deltas(g, "0.1")["best_known"]) == {"splash-0", "splash-1"}


def test_the_report_says_which_members_the_checklist_examined_and_what_it_flagged():
    """The group summary names the members `robench sanity` has examined, from the checks stored for them,
    and its flags; the probes every evaluation runs do not count as the checklist."""
    from robench.reporting import summary
    from robench.reporting.groups import Group, Member

    g = Group("fashion-mnist", "Linf", "resnet20", "pgd-at", "0.1")
    g.members = [Member(act, f"m-{act}", act, "", {}, {}, label=act) for act in ("relu", "pssilu", "silu")]

    def check(sha, name, status="ok", dataset="fashion-mnist"):
        return {
            "sha256": sha,
            "dataset": dataset,
            "norm": "Linf",
            "check": name,
            "eps": "0.1",
            "status": status,
            "evidence": "...",
            "budget": "{}",
        }

    probes = [check(act, "zero-gradients") for act in ("relu", "pssilu", "silu")]
    assert (
        "has examined 0 of the 3 members; the flags above come from the checks every evaluation runs"
        in summary.checklist_sentence(g, pd.DataFrame(probes))[0]
    )
    checks = pd.DataFrame(
        probes
        + [
            check("relu", "step-size"),
            check("relu", "square"),
            check("silu", "square", "ok", "cifar10"),
            check("pssilu", "step-size", "flag"),
            check("pssilu", "square"),
        ]
    )
    text = summary.checklist_sentence(g, checks)[0]
    assert "has examined 2 of the 3 members (relu, pssilu); it flags pssilu on step-size (see the flags)" in text, text
    checks.loc[checks.status == "flag", "status"] = "ok"
    text = summary.checklist_sentence(g, checks)[0]
    assert text.endswith("has examined 2 of the 3 members (relu, pssilu); every check passed on each."), text


def test_only_a_check_on_a_weaker_attack_leaves_autoattacks_number_standing():
    """Where AutoAttack ran, a checklist flag on PGD alone does not make the row unreliable; a run's own flags
    (AutoAttack's warnings, also when a run of its members alone raised them) and model checks still do."""
    from robench.reporting.leaderboard import ranking_flags, run_flags

    def rows(*runs):
        return pd.DataFrame([{"kind": k, "flags": f, "attack_flags": a} for k, f, a in runs])

    stalls = "PGD stalls on this model"
    pgd_only = rows(("clean", "", ""), ("pgd", stalls, stalls))
    assert ranking_flags(pgd_only) == [stalls]
    with_aa = rows(("clean", "", ""), ("pgd", stalls, stalls), ("autoattack", "", ""))
    assert ranking_flags(with_aa) == [] and run_flags(with_aa) == [stalls]
    warned = rows(("pgd", stalls, stalls), ("autoattack", "", ""), ("other", "AutoAttack: zero gradient", ""))
    assert ranking_flags(warned) == ["AutoAttack: zero gradient"]
    masked = rows(("pgd", "masked | " + stalls, stalls), ("autoattack", "masked", ""))
    assert ranking_flags(masked) == ["masked"]
    # a flag's own "; " does not split it
    assert run_flags(rows(("pgd", "broke 7 (p=0.01); the gradients may be masked.", ""))) == [
        "broke 7 (p=0.01); the gradients may be masked."
    ]


def _right(k: int, n: int = 100) -> dict[int, int]:
    return {i: int(i < k) for i in range(n)}


def test_the_report_counts_training_runs_from_the_metadata(tmp_path):
    write_mnist_like(Path("data/fashion-mnist"), n_test=30)
    files = []
    for act, seeds in (("relu", (0, 1, 2)), ("splash", (0, 1, 2))):
        for seed in seeds:
            f = f"{act}-{seed}.pt"
            save_tiny(f, act, seed=seed, name=f"tiny-{act}-seed{seed}", recipe={"seed": seed})
            files.append(f)
    df = robench.evaluate(files, n=30, eps=["0.1"], attacks=["fgsm"], store="s.sqlite")
    robench.api.leaderboard("s.sqlite", "lb")
    text = Path("lb/report.md").read_text()
    assert "Training runs per activation (relu: 3; splash: 3)" in text
    # three splash checkpoints compared with the ReLU of their seed are three checkpoints, not three activations
    assert "3 checkpoints (1 activation, each checkpoint against the ReLU checkpoint of its training seed)" in text
    # the between-seed table: mean and SD over seeds, and the seed-paired change with a t-interval
    import statistics

    from scipy.stats import t

    acc = {(m.split("-")[1], int(m[-1])): (c, r) for m, c, r in zip(df.model, df.clean_acc, df.robust_acc)}
    for metric, col in (("Clean", 0), ("Best known", 1)):
        diffs = [acc[("splash", s)][col] - acc[("relu", s)][col] for s in range(3)]
        mean, half = statistics.mean(diffs), t.ppf(0.975, 2) * statistics.stdev(diffs) / 3**0.5
        vals = [acc[("splash", s)][col] for s in range(3)]
        row = next(line for line in text.splitlines() if line.startswith(f"| {metric} | splash | 0, 1, 2 |"))
        assert f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}" in row, row
        assert f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]" in row, row
    assert "### Between training runs at Linf eps 0.1" in text


def test_seed_replicates_are_attacked_by_transfer_within_their_own_seed():
    """With transfer run among the models of each training seed, the report draws the seed-0 matrix (the
    blocks between seeds would be empty), the between-seed table and the claims give transfer over the
    seeds, and each model's page lists the transfer pairs it has, none of the other seed."""
    write_mnist_like(Path("data/fashion-mnist"), n_test=30)
    files = {}
    for act in ("relu", "splash"):
        for seed in (0, 1):
            files[act, seed] = f"{act}-{seed}.pt"
            save_tiny(files[act, seed], act, seed=seed, name=f"tiny-{act}-seed{seed}", recipe={"seed": seed})
    robench.evaluate(list(files.values()), n=30, eps=["0.1"], attacks=["fgsm"], store="s.sqlite")
    for seed in (0, 1):
        robench.api.transfer(
            all_checkpoints=[files["relu", seed], files["splash", seed]], n=30, eps=["0.1"], store="s.sqlite", steps=2
        )
    robench.api.leaderboard("s.sqlite", "lb")
    text = Path("lb/report.md").read_text()
    assert "The matrix shows the first training runs (seed 0)" in text
    assert re.search(r"^\| Transfer \| splash \| 0, 1 \| [0-9.]+ ± [0-9.]+ \| [+-]", text, re.M), text
    claim = next(
        line for line in text.splitlines() if line.startswith("| SPLASH is more robust than ReLU to black-box")
    )
    assert "2 training runs each, seed-paired t-interval" in claim, claim
    page = Path("lb/models/fashion-mnist/Linf/tiny-splash-seed1.html").read_text()
    assert "<td>attacked by</td><td>tiny-relu-seed1</td>" in page, page
    assert "seed0" not in page.split("<h2>Transfer")[1].split("</table>")[0]
    assert "<td>-</td>" not in page.split("<h2>Transfer")[1].split("</table>")[0]


def test_number_forward_passes_comes_from_the_randomness_check():
    """RobustBench's number_forward_passes is 1 for a model the store found deterministic, and null for one
    it found randomized at inference (how many passes its prediction needs is not known)."""
    from helpers import Randomized, tiny_model

    write_mnist_like(Path("data/fashion-mnist"), n_test=40)
    robench.evaluate(
        [tiny_model("relu"), Randomized(tiny_model("relu", seed=1))],
        dataset="fashion-mnist",
        n=20,
        eps=["0.1"],
        attacks=["fgsm"],
        store="s.sqlite",
    )
    robench.api.leaderboard("s.sqlite", "lb")
    infos = {p.stem: json.loads(p.read_text()) for p in Path("lb/model_info/fashion-mnist/Linf").glob("*.json")}
    passes = {info["unreliable"]: info["number_forward_passes"] for info in infos.values()}
    assert passes == {False: 1, True: None}, passes
    assert all("number_forward_passes" not in info["robench"] for info in infos.values())


def test_the_headline_eps_comes_first_and_alone_unfolded():
    """The budget at which the most models have AutoAttack leads the Markdown and the web leaderboard, even
    when a smaller eps has AutoAttack on fewer models; the other eps follow, folded, saying their coverage."""
    write_mnist_like(Path("data/fashion-mnist"), n_test=40)
    save_tiny("a.pt", "relu", seed=0, name="tiny-a")
    save_tiny("b.pt", "relu", seed=1, name="tiny-b")
    robench.evaluate(["a.pt", "b.pt"], n=20, eps=["0.02", "0.05", "0.1"], attacks=["fgsm"], store="s.sqlite")
    robench.evaluate(["a.pt"], n=10, eps=["0.02"], attacks=["autoattack"], store="s.sqlite")
    robench.evaluate(["a.pt", "b.pt"], n=10, eps=["0.1"], attacks=["autoattack"], store="s.sqlite")
    robench.api.leaderboard("s.sqlite", "lb")
    heads = [line for line in Path("lb/README.md").read_text().splitlines() if line.startswith("## ")]
    assert heads == ["## fashion-mnist, Linf, eps 0.1", "## fashion-mnist, Linf, eps 0.02"]  # 0.05: no AutoAttack
    html = Path("lb/index.html").read_text()
    boards = re.findall(
        r'<details class="board" id="([^"]+)"( open)?>\s*<summary><h2>[^<]*</h2>.*?</summary>', html, re.S
    )
    assert [(i, bool(o)) for i, o in boards] == [
        ("fashion-mnist-linf-eps-0.1", True),
        ("fashion-mnist-linf-eps-0.02", False),
        ("fashion-mnist-linf-eps-0.05", False),
    ]
    assert "AutoAttack on 1 of 2" in html and "no AutoAttack at this eps" in html


def test_a_flag_belongs_to_the_eps_it_was_measured_at():
    """A finding at eps 0.2 does not make a member unreliable in the report's eps 0.1 comparison; at 0.2 it
    does, and the sentence says which eps."""
    from robench.reporting import compare, summary
    from robench.reporting.groups import Group, Member

    s = {"clean": _right(90), "pgd": _right(70), "best_known": _right(70)}
    finding = "square (black-box) broke 8 of 100 examples"
    g = Group("fashion-mnist", "Linf", "lenet5", "pgd-at", "0.1")
    g.members = [
        Member("r", "m-relu", "relu", "", {"0.1": s, "0.2": s}, {"0.2": [finding]}, {"0.2": [finding]}, label="relu"),
        Member("t", "m-tanh", "tanh", "", {"0.1": s, "0.2": s}, {}, {}, label="tanh"),
    ]
    at = {eps: " ".join(summary.summary(g, eps, compare.deltas(g, eps))) for eps in ("0.1", "0.2")}
    assert "unreliable" not in at["0.1"]
    assert "Potentially unreliable at eps 0.2 (see the flags): relu;" in at["0.2"]


def test_rows_ranked_on_fewer_examples_are_marked(tmp_path, monkeypatch):
    """A row whose ranked accuracy rests on fewer examples than its neighbours' carries ‡, with a note, in
    the Markdown and on the web page."""
    monkeypatch.chdir(tmp_path)
    write_mnist_like(Path("data/fashion-mnist"), n_test=40)
    save_tiny("a.pt", "relu", seed=0, name="big")
    save_tiny("b.pt", "relu", seed=1, name="small")
    kw = dict(eps=["0.1"], attacks=["pgd"], store="s.sqlite")
    robench.evaluate(["a.pt"], n=40, **kw)
    robench.evaluate(["b.pt"], n=10, **kw)
    robench.api.leaderboard("s.sqlite", "lb", report=False)
    text = Path("lb/README.md").read_text()
    rank = {line.split("|")[2].strip(): line.split("|")[1].strip() for line in text.splitlines() if "| relu |" in line}
    assert rank["small"].endswith("‡") and not rank["big"].endswith("‡"), rank
    assert "‡ Ranked on fewer examples than the 40 of the table's largest n" in text
    page = Path("lb/index.html").read_text()
    assert page.count("‡</span>") == 1 and "Ranked on fewer examples than the 40" in page


def test_a_model_page_shows_each_budget_as_a_row_a_reader_scans():
    """Budgets as stored (JSON) become rows: attack, steps, restarts, step size, queries; a cascade's
    members and a transfer attack's sources each named."""
    from robench.reporting.site import _budget_rows

    budget = [
        {"name": "pgd", "steps": 20, "restarts": 1, "step_size": "2.5*eps/steps", "loss": "ce"},
        {"name": "autoattack", "members": {"apgd-ce": {"iters": 100, "restarts": 1}, "square": {"queries": 5000}}},
        {"name": "transfer", "attack": {"name": "mifgsm", "steps": 10}, "sources": [{"model": "a"}, {"model": "b"}]},
    ]
    assert _budget_rows(budget) == [
        {"attack": "pgd", "steps": "20", "restarts": "1", "step": "2.5*eps/steps", "queries": "-"},
        {"attack": "autoattack: apgd-ce", "steps": "100", "restarts": "1", "step": "-", "queries": "-"},
        {"attack": "autoattack: square", "steps": "-", "restarts": "-", "step": "-", "queries": "5000"},
        {"attack": "mifgsm from a, b", "steps": "10", "restarts": "-", "step": "-", "queries": "-"},
    ]
    assert _budget_rows("not a list") == [] and _budget_rows([{"members": "x", "name": 3}]) == [
        {"attack": "3", "steps": "-", "restarts": "-", "step": "-", "queries": "-"}
    ]


def test_a_long_list_of_significant_checkpoints_is_counted_per_activation():
    """Up to five significant changes are named one by one; more are counted per activation, so a sentence
    stays readable with 30 checkpoints, and the change table marks each."""
    from robench.reporting import compare, summary
    from robench.reporting.groups import Group, Member

    def member(act, seed, right):
        s = {"clean": _right(right), "pgd": _right(right), "best_known": _right(right)}
        return Member(f"{act}{seed}", f"m-{act}-{seed}", act, "", {"0.1": s}, {}, label=f"{act}-{seed}", seed=seed)

    g = Group("fashion-mnist", "Linf", "lenet5", "pgd-at", "0.1")
    g.members = [member("relu", s, 50) for s in range(4)]
    g.members += [member("splash", s, 95) for s in range(4)] + [member("elu", s, 5) for s in range(2)]
    text = " ".join(summary.summary(g, "0.1", compare.deltas(g, "0.1")))
    assert "6 of 6 checkpoints" in text and "higher: splash (4); lower: elu (2)" in text
    g.members = g.members[:4] + g.members[4:6]  # two significant: named one by one
    text = " ".join(summary.summary(g, "0.1", compare.deltas(g, "0.1")))
    assert "splash-0 +45.0 points" in text and "higher: splash" not in text
