"""Interrupted, concurrent and repeated runs: nothing lost, nothing doubled, the same bytes every time."""

import io
import sqlite3
from pathlib import Path

import pytest
import torch
from conftest import requires_fmnist
from helpers import save_tiny, write_mnist_like
from stress import Stress

import robench
from robench.reporting.leaderboard import results
from robench.store import SCHEMA_VERSION, Store


@requires_fmnist
def test_kills_concurrent_evals_and_snapshot_reads_lose_nothing(tmp_path):
    """The stress script with a small budget: 10 kill points (SIGKILL and SIGINT) of `robench eval` on the
    shipped PGD-AT LeNet5 while another eval writes the same store and leaderboard reads run beside them,
    then the run finished by two processes at once, then killed `robench leaderboard` runs."""
    lines = []
    f = Stress(tmp_path, kills=10, n=80, leaderboard_kills=2, log=lines.append).run()
    assert f["kill_points"] == f["sigkill"] + f["sigint"] >= 10 and f["sigkill"] and f["sigint"]
    assert f["interrupt_messages"] >= 1  # Ctrl-C said where the run stopped and how to continue
    assert f["rows_checked"] > 160 and f["duplicates"] == 0 and f["missing"] == 0
    assert f["snapshot_reads"] > 10 and f["concurrent_evals"] >= 3
    assert f["leaderboard_kills"] == 2 and "byte-identical" in lines[-1]


def _fresh_run(folder: Path, monkeypatch) -> dict[str, bytes]:
    folder.mkdir()
    monkeypatch.chdir(folder)
    write_mnist_like(Path("data/fashion-mnist"), n_test=50)
    save_tiny("relu.pt", "relu", seed=0, name="tiny-relu", zoo_group="g")
    save_tiny("splash.pt", "splash", seed=1, name="tiny-splash", zoo_group="g")
    robench.evaluate(["relu.pt", "splash.pt"], n=40, eps=["0.02", "0.1"], attacks=["fgsm", "pgd"], store="s.sqlite")
    robench.evaluate(["relu.pt", "splash.pt"], n=20, eps=["0.1"], attacks=["apgd-ce"], store="s.sqlite")
    robench.api.leaderboard("s.sqlite", "lb")
    return {str(p.relative_to("lb")): p.read_bytes() for p in sorted(Path("lb").rglob("*")) if p.is_file()}


def test_the_same_commands_twice_give_byte_identical_tables_and_report(tmp_path, monkeypatch):
    first = _fresh_run(tmp_path / "one", monkeypatch)
    torch.manual_seed(1234)  # whatever the caller's generator holds must not matter
    second = _fresh_run(tmp_path / "two", monkeypatch)
    assert first == second
    assert {"fashion-mnist_Linf.csv", "report.md", "README.md"} <= set(first)
    assert any(name.endswith(".png") for name in first)


def test_attacks_leave_the_callers_random_generator_alone(tmp_path, monkeypatch):
    """AutoAttack and Foolbox reseed torch's global generator; robench runs them inside a forked RNG."""
    monkeypatch.chdir(tmp_path)
    write_mnist_like(Path("data/fashion-mnist"), n_test=20)
    save_tiny("m.pt")
    torch.manual_seed(7)
    expected = torch.rand(5)
    torch.manual_seed(7)
    robench.evaluate(
        ["m.pt"],
        n=8,
        eps=["0.1"],
        attacks=["apgd-ce", "square(queries=20)", "fb:LinfPGD(steps=3)", "pgd"],
        store="s.sqlite",
    )
    assert torch.equal(torch.rand(5), expected)


def test_an_older_store_is_migrated_in_place_with_a_backup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_mnist_like(Path("data/fashion-mnist"), n_test=20)
    save_tiny("m.pt")
    before = robench.evaluate(["m.pt"], n=10, eps=["0.1"], attacks=["fgsm"], store="s.sqlite")
    con = sqlite3.connect("s.sqlite")  # the schema-1 layout: no checks, no attack counts, no data fingerprints
    con.executescript(
        "DROP TABLE checks; DROP TABLE attack_stats; ALTER TABLE runs DROP COLUMN data_sha256; "
        "UPDATE runs SET key = 'before data fingerprints ' || key; "  # older robench keyed runs so
        "UPDATE meta SET value='1' WHERE key='schema_version';"
    )
    con.close()
    v1 = sqlite3.connect("s.sqlite").execute("SELECT * FROM outcomes ORDER BY idx").fetchall()
    Store("s.sqlite", readonly=True).close()  # reading never migrates
    assert not Path("s.sqlite.schema1.bak").exists()
    after = robench.evaluate(["m.pt"], n=10, eps=["0.1"], attacks=["fgsm"], store="s.sqlite")
    assert after.robust_acc.tolist() == before.robust_acc.tolist()
    backup = sqlite3.connect("s.sqlite.schema1.bak")
    assert backup.execute("SELECT value FROM meta").fetchone() == ("1",)
    assert backup.execute("SELECT * FROM outcomes ORDER BY idx").fetchall() == v1
    db = Store("s.sqlite")
    # the old run cannot name its data, so it was kept as stale and computed again, not trusted
    assert db.version == SCHEMA_VERSION and len(results(db)) == 1
    assert db.runs(None).status.tolist() == ["stale", "done"]
    db.close()


def test_ctrl_c_in_a_slow_autoattack_batch_keeps_its_finished_members(tmp_path, monkeypatch):
    """Interrupted while APGD-T runs on a batch, AutoAttack resumes that batch without running APGD-CE again
    (its result on those examples was kept in the store), and the outcomes equal an uninterrupted run."""
    import pyautoattack

    class Oracle(torch.nn.Module):  # right on every synthetic example, and robust at eps 0.1
        def forward(self, x):
            return torch.stack([x[:, 0, 2 * k + 4 : 2 * k + 6].mean((1, 2)) for k in range(10)], 1) * 10

    monkeypatch.chdir(tmp_path)
    write_mnist_like(Path("data/fashion-mnist"), n_test=8)
    runs = []
    real = pyautoattack.AutoAttack.run_standard_evaluation

    def counted(self, x, y, **kw):
        runs.append(self.attacks_to_run[0])
        return real(self, x, y, **kw)

    monkeypatch.setattr(pyautoattack.AutoAttack, "run_standard_evaluation", counted)
    # AutoAttack's first two members (Square and FAB make the test slow, not different)
    kw = dict(dataset="fashion-mnist", n=8, eps="0.1", attacks=["apgd-ce", "apgd-t"], batch_size=8, device="cpu")

    def stop_at_apgd_t(ev):
        if ev["event"] == "stage" and ev["stage"] == "apgd-t: apgd-t":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        robench.evaluate({"oracle": Oracle()}, store="s.sqlite", progress=stop_at_apgd_t, **kw)
    assert runs == ["apgd-ce"]
    # the finished member stays in this store: work done elsewhere never decides an outcome in another (a
    # forged stage could), so a run with no stored batch has nothing to move
    assert robench.api.export_results("s.sqlite", "moved.jsonl.gz", unfinished=True)["runs"] == 0
    assert robench.api.import_results("moved.jsonl.gz", "moved.sqlite")["added"] == 0
    runs.clear()
    resumed = robench.evaluate({"oracle": Oracle()}, store="s.sqlite", **kw).attrs["outcomes"]
    assert runs == ["apgd-t"]  # APGD-CE's result on the batch was read back from this store
    whole = robench.evaluate({"oracle": Oracle()}, store="other.sqlite", **kw).attrs["outcomes"]
    cols = ["eps", "idx", "clean", "robust", "broken_by"]
    assert resumed[cols].equals(whole[cols])
    runs.clear()
    moved = robench.evaluate({"oracle": Oracle()}, store="moved.sqlite", **kw).attrs["outcomes"]
    assert runs == ["apgd-ce", "apgd-t"] and moved[cols].equals(whole[cols])  # attacked from the start there
    # a stage of this store that is not this member's result on these examples (here: hits for 3 examples of
    # 8) is recomputed, never read as one
    with pytest.raises(KeyboardInterrupt):
        robench.evaluate({"oracle": Oracle()}, store="forged.sqlite", progress=stop_at_apgd_t, **kw)
    buf = io.BytesIO()
    torch.save({"hit": torch.ones(3, dtype=torch.bool), "x": torch.zeros(3, 1, 28, 28)}, buf)
    with robench.store.Store("forged.sqlite") as db:
        for key in db.stages(1):
            db.save_stage(1, key, buf.getvalue())
    runs.clear()
    forged = robench.evaluate({"oracle": Oracle()}, store="forged.sqlite", **kw).attrs["outcomes"]
    assert runs == ["apgd-ce", "apgd-t"] and forged[cols].equals(whole[cols])
    with robench.store.Store("s.sqlite", readonly=True) as db:  # stored batch: its stages are dropped
        assert db.conn.execute("SELECT COUNT(*) FROM stages").fetchone()[0] == 0
