"""Results archives (`robench export` / `robench import`): what is committed gives back exactly the store's
leaderboard, byte for byte, and an archive can add results but never change a finished one."""

import filecmp
import gzip
import json
from pathlib import Path

import pytest
from helpers import save_tiny, store_rows, write_mnist_like
from typer.testing import CliRunner

import robench
from robench import api
from robench.cli import app
from robench.errors import RobenchError
from robench.store import Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_mnist_like(Path("data/fashion-mnist"), n_test=40)
    for act in ("relu", "silu"):
        save_tiny(f"{act}.pt", act, name=f"tiny-{act}")
    robench.evaluate(
        ["relu.pt", "silu.pt"], n=40, eps=["0.05", "0.1"], attacks=["fgsm", "square(queries=10)"], store="a.sqlite"
    )
    robench.evaluate(["relu.pt", "silu.pt"], n=30, attacks=["none"], store="a.sqlite")
    return Path("a.sqlite")


def _same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        filecmp.cmp(a / f, b / f, shallow=False) for f in files
    )


def test_an_archive_gives_back_the_same_leaderboard_and_the_same_archive(store):
    r = CliRunner().invoke(app, ["export", "results.jsonl.gz", "--store", str(store)])
    assert r.exit_code == 0 and "Wrote 4 runs" in r.output, r.output
    checks = api.export_results(store, "copy.jsonl.gz")["checks"]
    r = CliRunner().invoke(app, ["import", "results.jsonl.gz", "--store", "b.sqlite"])
    assert r.exit_code == 0 and "Imported 4 runs (0 already in the store)" in r.output, r.output
    api.leaderboard(store, "la")
    api.leaderboard("b.sqlite", "lb")
    assert _same_tree(Path("la"), Path("lb"))
    api.export_results("b.sqlite", "again.jsonl.gz")
    assert Path("again.jsonl.gz").read_bytes() == Path("results.jsonl.gz").read_bytes()
    assert api.import_results("results.jsonl.gz", "b.sqlite") == {
        "added": 0,
        "kept": 4,
        "checks": checks,
        "unfinished": 0,
    }


def test_a_folder_archive_gives_back_the_same_leaderboard_and_rewrites_only_new_runs(store):
    r = CliRunner().invoke(app, ["export", "committed", "--store", str(store)])
    assert r.exit_code == 0 and "Wrote 4 runs" in r.output and "files written" in r.output, r.output
    files = sorted(p.name for p in Path("committed").glob("*.jsonl.gz"))
    assert len([f for f in files if f.startswith("run-")]) == 4
    assert {p.name for p in Path("committed").iterdir()} == {*files, "order.txt"}
    assert api.import_results("committed", "b.sqlite")["added"] == 4
    api.leaderboard(store, "la")
    api.leaderboard("b.sqlite", "lb")
    assert _same_tree(Path("la"), Path("lb"))
    api.export_results("b.sqlite", "again")
    assert _same_tree(Path("committed"), Path("again"))
    # each file is an archive of its own, and the folder holds what the one-file archive holds
    api.export_results(store, "one.jsonl.gz")
    assert api.import_results("committed/" + files[-1], "c.sqlite")["added"] == 1
    single = sorted(gzip.decompress(Path("one.jsonl.gz").read_bytes()).decode().splitlines())
    parts = [line for f in files for line in gzip.decompress(Path("committed", f).read_bytes()).decode().splitlines()]

    def body(lines):  # each file's header says the oldest version that reads it: 2 where a model record is
        return sorted({line for line in lines if not line.startswith('{"format"')})

    assert body(parts) == body(single) and any('"model_record"' in line for line in single)
    # exporting again writes nothing; a new run writes its own file and touches no other
    before = {f: Path("committed", f).stat().st_mtime_ns for f in files}
    assert api.export_results(store, "committed")["written"] == 0
    robench.evaluate(["relu.pt"], n=20, attacks=["fgsm"], eps=["0.2"], store=str(store))
    api.export_results(store, "committed")
    changed = {f for f in files if Path("committed", f).stat().st_mtime_ns != before[f]}
    assert not any(f.startswith("run-") for f in changed)  # at most the model's checks file besides
    assert len(list(Path("committed").glob("run-*.jsonl.gz"))) == 5
    assert Path("committed/order.txt").read_text().split() == store_keys(store)
    assert api.import_results("committed", "b.sqlite") == {
        "added": 1,
        "kept": 4,
        "checks": len([line for line in single if '"check"' in line]),
        "unfinished": 0,
    }


def store_keys(store) -> list[str]:
    with Store(store, readonly=True) as db:
        return [db.run(int(i))["key"] for i in db.runs().run_id]


def test_a_folder_archive_with_one_bad_file_adds_nothing(store):
    api.export_results(store, "committed")
    assert Path("committed/order.txt").read_text().split() == store_keys(store)  # the store's order, kept
    Path("committed/run-forged.jsonl.gz").write_bytes(
        gzip.compress(b'{"format": "robench-results", "version": 1}\n{"key": 5}\n')
    )
    with pytest.raises(RobenchError, match="run-forged.jsonl.gz line 2"):
        api.import_results("committed", "b.sqlite")
    assert not Path("b.sqlite").exists()  # every file is checked before the store is opened
    with pytest.raises(RobenchError, match="a folder"):
        api.export_results(store, "results.zip")


def test_an_archive_never_changes_a_finished_run(store):
    api.export_results(store, "r.jsonl.gz")
    lines = gzip.decompress(Path("r.jsonl.gz").read_bytes()).decode().splitlines()
    run = json.loads(lines[1])
    eps = next(iter(run["outcomes"]["eps"]))
    run["outcomes"]["eps"][eps]["robust"] = run["outcomes"]["eps"][eps]["clean"]  # every clean-right one robust
    Path("forged.jsonl.gz").write_bytes(gzip.compress("\n".join([lines[0], json.dumps(run)]).encode()))
    before = store_rows(store)
    assert api.import_results("forged.jsonl.gz", store)["kept"] == 1
    assert store_rows(store) == before


@pytest.mark.parametrize(
    "text,fragment",
    [
        (b"not gzip", "not a readable results archive"),
        (gzip.compress(b'{"format": "robench-results", "version": 99}\n'), "newer robench"),
        (gzip.compress(b'{"format": "something else", "version": 1}\n'), "robench-results header"),
        (gzip.compress(b'{"format": "robench-results", "version": 1}\n{"key": 5}\n'), "line 2"),
        (gzip.compress(b'{"format": "robench-results", "version": 1}\n[' * 1 + b"]" + b"\n"), "not an object"),
        (gzip.compress(b""), "is empty"),
    ],
    ids=["not gzip", "newer", "other format", "bad run", "not an object", "empty"],
)
def test_a_malformed_archive_is_refused_before_anything_is_written(store, text, fragment):
    Path("bad.jsonl.gz").write_bytes(text)
    before = store_rows(store)
    with pytest.raises(RobenchError, match=fragment):
        api.import_results("bad.jsonl.gz", store)
    assert store_rows(store) == before


def test_an_import_of_some_models_writes_only_theirs_and_skips_the_rest(store):
    """What `robench check` reads from the archive beside a baseline: only the checked models' lines, so a
    gate on one model does not import the whole leaderboard (nor stop at another model's damaged line)."""
    from robench.archive import import_results

    api.export_results(store, "all.jsonl.gz")
    with Store(store, readonly=True) as db:
        runs = db.runs()
    relu, silu = (runs[runs.model == f"tiny-{a}"].sha256.iloc[0] for a in ("relu", "silu"))
    lines = gzip.decompress(Path("all.jsonl.gz").read_bytes()).decode().splitlines()
    damaged = [json.dumps({**json.loads(line), "eps": "not a list"}) if silu in line else line for line in lines]
    Path("some.jsonl.gz").write_bytes(gzip.compress(("\n".join(damaged) + "\n").encode()))
    with pytest.raises(RobenchError, match="not a valid robench results record"):
        api.import_results("some.jsonl.gz", "whole.sqlite")
    got = import_results("some.jsonl.gz", "some.sqlite", {relu})
    assert got["added"] == 2 and got["kept"] == 0
    with Store("some.sqlite", readonly=True) as db:
        assert set(db.runs().sha256) == {relu} and set(db.checks().sha256) <= {relu}


def test_the_committed_leaderboard_is_what_the_committed_results_give(tmp_path, monkeypatch):
    """The committed leaderboard is a function of its archive alone: imported into a store and rendered in a
    folder with no checkpoint files (reporting reads the store only), it comes out byte for byte; and `make
    leaderboard` on a fresh clone finds every evaluation of its suite in it."""
    archive = ROOT / "leaderboard" / "results"
    monkeypatch.chdir(tmp_path)  # no checkpoints/ here: the pages must not need them
    assert not Path("checkpoints").exists()
    api.import_results(archive, tmp_path / "s.sqlite")
    api.leaderboard(tmp_path / "s.sqlite", tmp_path / "lb")
    committed = ROOT / "leaderboard"
    made = sorted(p.relative_to(tmp_path / "lb") for p in (tmp_path / "lb").rglob("*") if p.is_file())
    kept = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file() and archive not in p.parents)
    assert made == kept, "leaderboard/ holds other files than the committed results give"
    for rel in made:
        assert filecmp.cmp(tmp_path / "lb" / rel, committed / rel, shallow=False), rel
    # and `make leaderboard` on a fresh clone finds every evaluation of its suite there, so it changes nothing
    import dataclasses

    monkeypatch.chdir(ROOT)  # the suite names its checkpoints relative to the repository

    from robench.api import _eval_config
    from robench.config import load_suite
    from robench.engine.evaluate import evaluate

    for run in load_suite(ROOT / "suites" / "leaderboard.toml"):
        cfg = _eval_config(run, None)
        for ck in cfg.checkpoints:
            one = dataclasses.replace(cfg, checkpoints=[ck], store=str(tmp_path / "s.sqlite"))
            assert evaluate(one, cached_only=True) is not None, (run, ck)


def test_an_unfinished_run_moves_to_another_store_and_resumes_there(tmp_path, monkeypatch):
    """A long evaluation stopped in one checkout goes on in another: `export --unfinished` carries its stored
    batches, `import` adds them as unfinished (nothing on the leaderboard), and `eval` resumes after them with
    the outcomes of an uninterrupted run."""
    monkeypatch.chdir(tmp_path)
    write_mnist_like(Path("data/fashion-mnist"), n_test=40)
    save_tiny("relu.pt", "relu", name="tiny-relu")
    kw = dict(n=40, eps=["0.1"], attacks=["fgsm"], batch_size=10)

    def stop_after_two_batches(e):
        if e["event"] == "batch" and e["done"] == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        robench.evaluate(["relu.pt"], store="a.sqlite", progress=stop_after_two_batches, **kw)
    r = CliRunner().invoke(app, ["export", "progress.jsonl.gz", "--unfinished", "--store", "a.sqlite"])
    assert r.exit_code == 0 and "Wrote 1 unfinished run, " in r.output, r.output
    r = CliRunner().invoke(app, ["import", "progress.jsonl.gz", "--store", "b.sqlite"])
    assert r.exit_code == 0 and "1 of the runs imported is unfinished" in r.output, r.output
    with Store("b.sqlite", readonly=True) as db:
        assert db.runs().empty and db.runs(None).status.tolist() == ["running"]
    # importing it again, or into the store it came from, keeps what is there
    assert api.import_results("progress.jsonl.gz", "b.sqlite")["kept"] == 1
    events = []
    resumed = robench.evaluate(["relu.pt"], store="b.sqlite", progress=events.append, **kw)
    start = next(e for e in events if e["event"] == "start")
    assert start["done"] == 20  # the imported batches are not attacked again
    whole = robench.evaluate(["relu.pt"], store="c.sqlite", **kw)
    cols = ["eps", "idx", "clean", "robust", "broken_by"]
    assert resumed.attrs["outcomes"][cols].equals(whole.attrs["outcomes"][cols])
    # the finished run, exported, replaces the unfinished one in the first store; a finished run is never
    # replaced by an unfinished one
    api.export_results("b.sqlite", "done.jsonl.gz")
    assert api.import_results("done.jsonl.gz", "a.sqlite")["added"] == 1
    assert api.import_results("progress.jsonl.gz", "a.sqlite") == {"added": 0, "kept": 1, "checks": 0, "unfinished": 0}
    assert api.export_results("a.sqlite", "none.jsonl.gz", unfinished=True)["runs"] == 0
    r = CliRunner().invoke(app, ["export", "committed", "--unfinished", "--store", "a.sqlite"])
    assert r.exit_code == 2 and "one .jsonl.gz file" in r.output and not Path("committed").exists(), r.output
    # an unfinished record that claims every example, a finished field that is not true or false, or stages
    # that are not base64 under a stage key, are refused
    lines = gzip.decompress(Path("progress.jsonl.gz").read_bytes()).decode().splitlines()
    for forged in (
        {"finished": "no"},
        {"n": 20},
        {"stages": {"0" * 32: "not base64!"}},
        {"stages": {"k": "AA=="}},
        {"stages": ["AA=="]},
    ):
        Path("forged.jsonl.gz").write_bytes(
            gzip.compress("\n".join([lines[0], json.dumps({**json.loads(lines[1]), **forged})]).encode())
        )
        with pytest.raises(RobenchError, match="not a valid robench results record"):
            api.import_results("forged.jsonl.gz", "d.sqlite")
