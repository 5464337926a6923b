"""Results archives (`robench export` / `robench import`): what is committed gives back exactly the store's
leaderboard, byte for byte, and an archive can add results but never change a finished one."""
import filecmp
import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import robench
from robench import api
from robench.cli import app
from robench.errors import RobenchError

from helpers import save_tiny, store_rows, write_mnist_like

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_mnist_like(Path("data/fashion-mnist"), n_test=40)
    for act in ("relu", "silu"):
        save_tiny(f"{act}.pt", act, name=f"tiny-{act}")
    robench.evaluate(["relu.pt", "silu.pt"], n=40, eps=["0.05", "0.1"], attacks=["fgsm", "square(queries=10)"],
                     store="a.sqlite")
    robench.evaluate(["relu.pt", "silu.pt"], n=30, attacks=["none"], store="a.sqlite")
    return Path("a.sqlite")


def _same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        filecmp.cmp(a / f, b / f, shallow=False) for f in files)


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
    assert api.import_results("results.jsonl.gz", "b.sqlite") == {"added": 0, "kept": 4, "checks": checks}


def test_an_archive_never_changes_a_finished_run(store):
    api.export_results(store, "r.jsonl.gz")
    lines = gzip.decompress(Path("r.jsonl.gz").read_bytes()).decode().splitlines()
    run = json.loads(lines[1])
    eps = next(iter(run["outcomes"]["eps"]))
    run["outcomes"]["eps"][eps]["robust"] = "1" * len(run["outcomes"]["eps"][eps]["robust"])
    Path("forged.jsonl.gz").write_bytes(gzip.compress("\n".join([lines[0], json.dumps(run)]).encode()))
    before = store_rows(store)
    assert api.import_results("forged.jsonl.gz", store)["kept"] == 1
    assert store_rows(store) == before


@pytest.mark.parametrize("text,fragment", [
    (b"not gzip", "not a readable results archive"),
    (gzip.compress(b'{"format": "robench-results", "version": 99}\n'), "newer robench"),
    (gzip.compress(b'{"format": "something else", "version": 1}\n'), "robench-results header"),
    (gzip.compress(b'{"format": "robench-results", "version": 1}\n{"key": 5}\n'), "line 2"),
    (gzip.compress(b'{"format": "robench-results", "version": 1}\n[' * 1 + b"]" + b"\n"), "not an object"),
    (gzip.compress(b""), "is empty"),
], ids=["not gzip", "newer", "other format", "bad run", "not an object", "empty"])
def test_a_malformed_archive_is_refused_before_anything_is_written(store, text, fragment):
    Path("bad.jsonl.gz").write_bytes(text)
    before = store_rows(store)
    with pytest.raises(RobenchError, match=fragment):
        api.import_results("bad.jsonl.gz", store)
    assert store_rows(store) == before


def test_the_committed_leaderboard_is_what_the_committed_results_give(tmp_path, monkeypatch):
    archive = ROOT / "leaderboard" / "results.jsonl.gz"
    monkeypatch.chdir(ROOT)  # the stored checkpoint paths are relative to the repository
    api.import_results(archive, tmp_path / "s.sqlite")
    api.leaderboard(tmp_path / "s.sqlite", tmp_path / "lb")
    committed = ROOT / "leaderboard"
    made = sorted(p.relative_to(tmp_path / "lb") for p in (tmp_path / "lb").rglob("*") if p.is_file())
    kept = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file() and p != archive)
    assert made == kept, "leaderboard/ holds other files than the committed results give"
    for rel in made:
        assert filecmp.cmp(tmp_path / "lb" / rel, committed / rel, shallow=False), rel
    # and `make leaderboard` on a fresh clone finds every evaluation of its suite there, so it changes nothing
    import dataclasses

    from robench.api import _eval_config
    from robench.config import load_suite
    from robench.engine.evaluate import evaluate

    for run in load_suite(ROOT / "suites" / "leaderboard.toml"):
        cfg = _eval_config(run, None)
        for ck in cfg.checkpoints:
            one = dataclasses.replace(cfg, checkpoints=[ck], store=str(tmp_path / "s.sqlite"))
            assert evaluate(one, cached_only=True) is not None, (run, ck)
