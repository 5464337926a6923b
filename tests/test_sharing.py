"""Trust where results are shared: the hostile tables of the sharing surfaces. Pages built from a stranger's
names are opened in the real Chromium and must run nothing; an archive is validated field by field and a
refusal holds to ``helpers.assert_refused``; stages from elsewhere never decide an outcome; imported runs
carry their provenance and `robench verify` re-computes them."""

import base64
import gzip
import io
import json
import os
from pathlib import Path

import pytest
import torch
from helpers import assert_refused, save_tiny, store_rows, write_mnist_like
from test_site import browser, requires_browser  # noqa: F401 (the browser fixture)
from typer.testing import CliRunner

import robench
from robench.cli import app
from robench.store import Store

X = '$\\frac{<img src=x onerror="document.title=\'PWNED\'">'  # also mathtext that would not parse


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]


def _archive(path: Path, records: list[dict]) -> Path:
    path.write_bytes(gzip.compress(("\n".join(json.dumps(r) for r in records) + "\n").encode()))
    return path


@pytest.fixture
def shared(tmp_path):
    """A store with a PGD run of a tiny model and its archive."""
    write_mnist_like(Path("data/fashion-mnist"), n_test=40)
    save_tiny("a.pt", "relu", seed=0, name="tiny-a")
    robench.evaluate(["a.pt"], n=20, eps=["0.05", "0.1"], attacks=["pgd(steps=3)"], batch_size=10, store="s.sqlite")
    robench.api.export_results("s.sqlite", "a.jsonl.gz")
    return tmp_path / "a.jsonl.gz"


# ------------------------------------------------------------------------------------------ pages
def _hostile_models():
    save_tiny(
        "e.pt",
        "relu",
        seed=0,
        name="evil" + X + "\u202e",
        zoo_group="g",
        training_method="pgd-at" + X,
        link="javascript:document.title='PWNED'",
        authors=["A" + X],
        paper="P" + X,
        recipe={"eps": "0.1" + X, "seed": 0, "note": X},
    )
    save_tiny(
        "f.pt",
        "silu",
        seed=1,
        name="x" * 5000,
        zoo_group="g",
        training_method="pgd-at" + X,
        link="data:text/html,<script>document.title='PWNED'</script>",
        recipe={"eps": "0.1" + X},
    )
    save_tiny(
        "g.pt", "tanh", seed=2, name="x" * 5000, zoo_group="g", training_method="pgd-at" + X, recipe={"eps": "0.1" + X}
    )


@requires_browser
@pytest.mark.parametrize("route", ["evaluated here", "imported from an archive"])
def test_a_strangers_names_run_no_script_on_any_page(browser, tmp_path, route):  # noqa: F811
    write_mnist_like(Path("data/fashion-mnist"), n_test=30)
    _hostile_models()
    robench.evaluate(["e.pt", "f.pt", "g.pt"], n=20, eps=["0.1"], attacks=["fgsm"], store="s.sqlite")
    store = "s.sqlite"
    if route == "imported from an archive":  # no checkpoint file is needed to publish it
        robench.api.export_results("s.sqlite", "x.jsonl.gz")
        for f in ("e.pt", "f.pt", "g.pt"):
            Path(f).unlink()
        robench.api.import_results("x.jsonl.gz", "t.sqlite")
        store = "t.sqlite"
    r = CliRunner().invoke(app, ["leaderboard", "--store", store, "--out", "lb"])
    assert r.exit_code == 0, r.output
    files = [p for p in Path("lb").rglob("*") if p.is_file()]
    assert all(len(p.name) < 200 for p in files)  # two 5,000-character names: two bounded, distinct pages
    assert len(list(Path("lb/models/fashion-mnist/Linf").glob("x*.html"))) == 2
    for md in ("README.md", "report.md"):
        text = Path("lb", md).read_text()
        assert "<img" not in text and "\u202e" not in text, md
    csv = Path("lb/fashion-mnist_Linf.csv").read_text()
    assert "\u202e" not in csv and "\\u202e" in csv  # shown, never obeyed
    pages = sorted(Path("lb").rglob("*.html"))
    assert len(pages) == 5
    for page in pages:
        html = page.read_text()
        assert "Content-Security-Policy" in html and "script-src 'self'" in html
        assert 'href="javascript:' not in html and 'href="data:text' not in html
        browser.get(page.resolve().as_uri())
        assert browser.title != "PWNED", page  # the payload would set the title to PWNED alone
        assert browser.execute_script("return document.querySelectorAll('img[onerror], script:not([src])').length") == 0
    model = next(Path("lb/models/fashion-mnist/Linf").glob("evil*.html"))
    browser.get(model.resolve().as_uri())
    assert "<img src=x" in browser.find_element("tag name", "body").text  # the name shown as written


def test_markdown_rendering_shows_raw_html_as_text_and_drops_script_links():
    from robench.reporting.site import _markdown

    html = str(
        _markdown([f"a {X} [x](javascript:alert(1)) ![i](data:text/html,x) [ok](https://e.org)", "", "<div>raw</div>"])
    )
    assert "<img src=x" not in html and "<div>" not in html and "&lt;div&gt;" in html
    assert "javascript:" not in html.replace("onerror=&quot;", "") and 'src="data:' not in html
    assert 'href="https://e.org"' in html and "<a>x</a>" in html  # the link kept its text, not its script


# ------------------------------------------------------------------------------------------ archives
# how each hostile record differs from a valid one: (field path, value)
MUTATIONS = {
    "dataset": (["dataset"], "../../../x/victim"),
    "norm": (["norm"], "../../victim"),
    "negative idx": (["outcomes", "idx"], [[-20, 0]]),
    "idx past the split": (["outcomes", "idx"], [[10**9, 10**9 + 20]]),
    "float idx": (["outcomes", "idx"], [[1e9, 1e9 + 20]]),
    "huge idx": (["outcomes", "idx"], [[0, 10**12]]),
    "attacks": (["attacks"], [1, {"x": 2}]),
    "eps": (["eps"], [["0.05", 0.05], ["abc", 0.1]]),
    "seed": (["seed"], 2**70),
    "robust but wrong clean": (["outcomes", "eps", "0.1", "clean"], "0" * 20),
    "n": (["n"], 10**30),
    "eps value lies": (["eps", 0, 1], 0.5),
    "transfer budget without sources": (
        ["attacks"],
        [{"name": "transfer", "attack": {"name": "mifgsm", "steps": 10, "decay": 1.0}}],
    ),
}


def _mutate(rec: dict, how: str) -> list:
    r = json.loads(json.dumps(rec))
    if how == "wall_time NaN":
        return [r, "NaN"]
    path, value = MUTATIONS[how]
    target = r
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return [r]


ARCHIVE_CASES = [
    ("dataset climbing out", "dataset", "known dataset or a safe name"),
    ("norm climbing out", "norm", "norm is not one of"),
    ("negative example indices", "negative idx", "out of range"),
    ("indices past the split", "idx past the split", "out of range"),
    ("indices as floats", "float idx", "not a whole number"),
    ("a trillion indices", "huge idx", "out of range"),
    ("attacks of the wrong shape", "attacks", "attack budget"),
    ("eps that is not a number", "eps", "not a number or fraction"),
    ("seed past SQLite", "seed", "out of range"),
    ("n of 10**30", "n", "out of range"),
    ("wall time NaN", "wall_time NaN", "not JSON"),
    ("eps whose value lies", "eps value lies", "does not have the value"),
    ("transfer budget without sources", "transfer budget without sources", "no source model"),
    ("robust examples that are wrong clean", "robust but wrong clean", "robust that is wrong on clean data"),
]


@pytest.mark.parametrize("name,how,fragment", ARCHIVE_CASES, ids=[c[0] for c in ARCHIVE_CASES])
def test_a_hostile_archive_is_refused_and_changes_nothing(shared, tmp_path, name, how, fragment):
    header, rec = _records(shared)[:2]
    hostile = tmp_path / "files"
    hostile.mkdir()
    recs = _mutate(rec, how)
    if recs[-1] == "NaN":
        text = json.dumps(recs[0]).replace(f'"wall_time": {json.dumps(recs[0]["wall_time"])}', '"wall_time": NaN')
        (hostile / "h.jsonl.gz").write_bytes(gzip.compress((json.dumps(header) + "\n" + text + "\n").encode()))
    else:
        _archive(hostile / "h.jsonl.gz", [header] + recs)
    assert_refused(app, ["import", "{d}/h.jsonl.gz"], fragment, hostile, Path("a.pt"), tmp_path)


def test_two_records_of_one_run_that_disagree_are_refused(shared, tmp_path):
    header, rec = _records(shared)[:2]
    other = json.loads(json.dumps(rec))
    d = other["outcomes"]["eps"]["0.1"]
    p = d["clean"].index("1")  # right on clean data: robust or not, both are valid records
    d["robust"] = d["robust"][:p] + ("0" if d["robust"][p] == "1" else "1") + d["robust"][p + 1 :]
    hostile = tmp_path / "files"
    hostile.mkdir()
    _archive(hostile / "h.jsonl.gz", [header, rec, other])
    assert_refused(app, ["import", "{d}/h.jsonl.gz"], "two different records", hostile, Path("a.pt"), tmp_path)


def test_an_archive_never_overwrites_the_stores_own_checks(shared):
    records = _records(shared)
    checks = [r for r in records if "check" in r]
    with Store("s.sqlite") as db:  # the checks the evaluation ran here
        before = db.checks()
    assert len(before) == len(checks) > 0
    forged = [
        {"check": {**c["check"], "status": "flag" if c["check"]["status"] == "ok" else "ok", "evidence": "forged"}}
        for c in checks
    ]
    _archive(Path("forged.jsonl.gz"), [records[0]] + forged)
    robench.api.import_results("forged.jsonl.gz", "s.sqlite")
    with Store("s.sqlite") as db:
        assert db.checks().equals(before) and "forged" not in set(db.checks().evidence)
    robench.api.import_results("forged.jsonl.gz", "fresh.sqlite")  # where the store has none, they fill the gap
    with Store("fresh.sqlite") as db:
        assert set(db.checks().evidence) == {"forged"}


def test_forged_stages_never_decide_an_outcome(tmp_path):
    """An unfinished run whose stages say no AutoAttack member hit anything, imported and resumed, ends with
    the outcomes of an uninterrupted run: the stages are dropped at import."""
    write_mnist_like(Path("data/fashion-mnist"), n_test=20)
    save_tiny("a.pt", "relu", seed=0, name="tiny-a")
    kw = dict(n=20, eps=["0.1"], attacks=["autoattack"], batch_size=10)
    whole = robench.evaluate(["a.pt"], store="whole.sqlite", **kw).attrs["outcomes"]
    robench.api.export_results("whole.sqlite", "w.jsonl.gz")
    header, rec = [r for r in _records(Path("w.jsonl.gz")) if "check" not in r][:2]
    buf = io.BytesIO()
    torch.save({"hit": torch.zeros(10, dtype=torch.bool), "x_adv": torch.zeros(10, 1, 28, 28)}, buf)
    forged = base64.b64encode(buf.getvalue()).decode()
    d = rec["outcomes"]["eps"]["0.1"]
    rec.update(
        finished=False,
        stages={f"{i:032x}": forged for i in range(4)},
        outcomes={
            "idx": [[0, 10]],
            "eps": {
                "0.1": {
                    "clean": d["clean"][:10],
                    "robust": d["robust"][:10],
                    "broken_by": {k: [p for p in v if p < 10] for k, v in d["broken_by"].items()},
                }
            },
        },
    )
    _archive(Path("u.jsonl.gz"), [header, rec])
    assert robench.api.import_results("u.jsonl.gz", "fresh.sqlite")["unfinished"] == 1
    with Store("fresh.sqlite") as db:
        assert db.stages(1) == {}
    resumed = robench.evaluate(["a.pt"], store="fresh.sqlite", **kw).attrs["outcomes"]
    assert resumed.robust.tolist() == whole.robust.tolist()


# ------------------------------------------------------------------------------------------ provenance
def test_an_imported_run_says_so_and_a_computed_one_names_its_machine(shared):
    with Store("s.sqlite") as db:
        run = db.run(1)
    assert run["machine"] and run["origin"] == ""
    robench.api.import_results(shared, "b.sqlite")
    info = robench.api.info("a.pt", store="b.sqlite")
    assert [r["origin"] for r in info["runs"]] == [
        f"imported from {shared.name} on " + r["origin"][-10:] for r in info["runs"]
    ]
    assert info["runs"][0]["computed_by"].endswith(run["machine"])
    assert robench.api.info("a.pt", store="s.sqlite")["runs"][0]["origin"] == "computed in this store"
    robench.api.leaderboard("b.sqlite", "lb")
    page = Path("lb/models/fashion-mnist/Linf/tiny-a.html").read_text()
    assert run["machine"] in page and shared.name not in page  # what the archive carries, not the import
    assert run["machine"] in Path("lb/fashion-mnist_Linf.csv").read_text()
    r = CliRunner().invoke(
        app, ["check", "--baseline", "lb/fashion-mnist_Linf.csv", "a.pt", "--store", "b.sqlite", "--quiet"]
    )
    assert r.exit_code == 0 and f"1 run imported from {shared.name} on" in r.output, r.output


def test_verify_passes_on_what_was_computed_and_names_a_flipped_example(shared):
    r = CliRunner().invoke(app, ["verify", str(shared), "--sample", "1"])
    assert r.exit_code == 0 and "Verified: 20 examples in 2 batches of 1 run match" in r.output, r.output
    assert CliRunner().invoke(app, ["verify", "s.sqlite", "--sample", "0.5"]).exit_code == 0
    header, rec, *rest = _records(shared)
    d = rec["outcomes"]["eps"]["0.05"]
    p = d["clean"].index("1")  # an example right on clean data, now recorded as misclassified
    d["clean"] = d["clean"][:p] + "0" + d["clean"][p + 1 :]
    d["robust"] = d["robust"][:p] + "0" + d["robust"][p + 1 :]
    _archive(Path("flipped.jsonl.gz"), [header, rec, *rest])
    r = CliRunner().invoke(app, ["verify", "flipped.jsonl.gz", "--sample", "1"])
    assert r.exit_code == 1, r.output
    assert f"Mismatch in run {rec['key'][:16]} (tiny-a): example {p} at eps 0.05" in r.output


# ------------------------------------------------------------------------------------------ also
def _baseline(tmp_path) -> Path:
    robench.api.leaderboard("s.sqlite", "lb")
    return Path("lb/fashion-mnist_Linf.csv")


def _with_config(src: Path, dst: Path, config: str | None, eps: str | None = None) -> None:
    import pandas as pd

    df = pd.read_csv(src, dtype=str)
    if config is not None:
        df["config"] = config
    if eps:
        df["eps"] = eps
    df.to_csv(dst, index=False)


CHECK_CASES = [
    (
        "config with no runs",
        json.dumps({"split": "test", "subset": "first", "seed": 0, "runs": []}),
        None,
        "not a robench run configuration",
    ),
    ("config that is a list", "[1, 2]", None, "not a robench run configuration"),
    ("config nested 100,000 deep", "[" * 100_000 + "]" * 100_000, None, "not a robench run configuration"),
    ("eps nan in a row", None, "nan", "not a budget such as 0.1"),
]


@pytest.mark.parametrize("name,config,eps,fragment", CHECK_CASES, ids=[c[0] for c in CHECK_CASES])
def test_a_hostile_baseline_config_is_refused(shared, tmp_path, name, config, eps, fragment):
    files = tmp_path / "files"
    files.mkdir()
    _with_config(_baseline(tmp_path), files / "b.csv", config, eps)
    assert_refused(app, ["check", "--baseline", "{d}/b.csv", "a.pt"], fragment, files, Path("a.pt"), tmp_path)


@pytest.mark.parametrize("flag", ["--junit", "--json"])
def test_check_reports_into_a_folder_or_an_unwritable_place_are_one_sentence(shared, tmp_path, flag):
    base = _baseline(tmp_path)
    for target, fragment in ((tmp_path, "is a folder"), (Path("/proc/x/report.xml"), "Cannot write")):
        r = CliRunner().invoke(app, ["check", "--baseline", str(base), "a.pt", flag, str(target), "--quiet"])
        assert r.exit_code == 2 and fragment in r.output and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output


def test_a_path_with_a_newline_is_one_line_in_an_error():
    r = CliRunner().invoke(app, ["info", "no\nsuch.pt"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "no\\nsuch.pt" in r.output, r.output


def test_a_safetensors_checkpoint_gets_the_usual_permissions():
    old = os.umask(0o022)
    try:
        save_tiny("m.safetensors")
        save_tiny("m.pt")
    finally:
        os.umask(old)
    assert oct(os.stat("m.safetensors").st_mode & 0o777) == oct(os.stat("m.pt").st_mode & 0o777) == "0o644"


def test_an_import_refused_half_way_leaves_the_store_as_it_was(shared):
    """Two good runs and a bad third: the store gains nothing (one transaction)."""
    robench.api.import_results(shared, "b.sqlite")
    before = store_rows(Path("b.sqlite"))
    header, rec = _records(shared)[:2]
    other = json.loads(json.dumps(rec))
    other["key"] = "f" * 64
    bad = json.loads(json.dumps(rec))
    bad["key"], bad["n"] = "e" * 64, 10**30
    _archive(Path("mixed.jsonl.gz"), [header, other, bad])
    r = CliRunner().invoke(app, ["import", "mixed.jsonl.gz", "--store", "b.sqlite"])
    assert r.exit_code == 2 and store_rows(Path("b.sqlite")) == before


@requires_browser
def test_the_model_page_of_an_imported_run_shows_who_computed_it(browser, shared):  # noqa: F811
    from test_site import SCREENSHOTS

    robench.api.import_results(shared, "b.sqlite")
    robench.api.leaderboard("b.sqlite", "lb")
    with Store("s.sqlite") as db:
        machine = db.run(1)["machine"]
    browser.get(Path("lb/models/fashion-mnist/Linf/tiny-a.html").resolve().as_uri())
    cells = browser.find_elements("css selector", "table.runs .provenance")
    assert cells and all(machine in c.text and c.text.startswith("robench ") for c in cells)
    browser.execute_script("arguments[0].scrollIntoView()", browser.find_element("css selector", "table.runs"))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "provenance.png"))


def test_verify_on_a_committed_run_passes_and_fails_when_one_outcome_is_flipped(tmp_path, monkeypatch):
    """A committed clean run of the real Fashion-MNIST (10,000 examples, 40 batches; the cheapest kind to
    re-compute) verifies; a copy with one outcome flipped fails and names the run and the example."""
    repo = Path(__file__).resolve().parent.parent
    if not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file() and not os.environ.get("CI"):
        pytest.skip("Fashion-MNIST is not installed")
    monkeypatch.chdir(repo)  # the run's checkpoint path is relative to the repository
    run = repo / "leaderboard" / "results" / "run-4d8fac384c98e685.jsonl.gz"
    r = CliRunner().invoke(app, ["verify", str(run), "--sample", "0.1"])
    assert r.exit_code == 0 and "Verified: 1024 examples in 4 batches of 1 run match" in r.output, r.output
    header, rec = _records(run)
    d = rec["outcomes"]["eps"]["0.1"]
    p = d["clean"].index("1")  # an example right on clean data, recorded as wrong
    d["clean"], d["robust"] = (s[:p] + "0" + s[p + 1 :] for s in (d["clean"], d["robust"]))
    flipped = _archive(tmp_path / "flipped.jsonl.gz", [header, rec])
    r = CliRunner().invoke(app, ["verify", str(flipped), "--sample", "1"])
    assert r.exit_code == 1, r.output
    assert f"Mismatch in run {rec['key'][:16]} (lenet5-silu-pgd-at-seed1): example {p} at eps 0.1" in r.output
