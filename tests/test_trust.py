"""No model changes silently and no stored result is trusted beyond what it can prove: round trips keep
logits bit for bit, stored runs are keyed by the data itself, failures leave no result behind, signals stop
every worker, and robench never writes over other people's files or prints their escape codes."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import requires_fmnist
from helpers import write_mnist_like
from typer.testing import CliRunner

import robench
from robench.cli import app
from robench.errors import RobenchError
from robench.store import Store

runner = CliRunner()
X = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _logits(model):
    with torch.no_grad():
        return model.eval()(X)


def _models():
    """Every kind of model the docs save: with its own normalization, without any, and a bare network."""
    torch.manual_seed(0)
    return {
        "own normalization": robench.create_model("lenet5", "pssilu", 10, 1, 28, mean=[0.5], std=[0.25]),
        "no normalization": robench.create_model("lenet5", "splash", 10, 1, 28),
        "bare network": robench.create_model("lenet5", "relu", 10, 1, 28).net,
    }


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("kind", ["own normalization", "no normalization", "bare network"])
def test_load_of_save_gives_bit_identical_logits(tmp_path, kind, suffix):
    model = _models()[kind].eval()
    act = {"own normalization": "pssilu", "no normalization": "splash", "bare network": "relu"}[kind]
    # the dataset's mean and std in the metadata never override the model's own normalization (or its absence)
    path = robench.save_checkpoint(model, tmp_path / f"m{suffix}", robench.model_meta("lenet5", act, "fashion-mnist"))
    assert torch.equal(_logits(robench.load_checkpoint(path).model), _logits(model))


@requires_fmnist
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_trained_checkpoint_round_trips(tmp_path, suffix):
    ck = robench.api.train(
        tmp_path / f"t{suffix}",
        arch="lenet5",
        activation="apl",
        epochs=1,
        train_images=256,
        val_size=256,
        val_pgd_n=8,
        val_pgd_steps=1,
    )
    assert torch.equal(_logits(robench.load_checkpoint(ck.path).model), _logits(ck.model))


def test_metadata_that_describes_another_model_is_refused_and_nothing_is_written(tmp_path):
    model = robench.create_model("lenet5", "silu", 10, 1, 28).eval()
    for suffix in (".pt", ".safetensors"):
        with pytest.raises(RobenchError, match="describes another model"):
            robench.save_checkpoint(
                model, tmp_path / f"m{suffix}", robench.model_meta("lenet5", "relu", "fashion-mnist")
            )
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with 20 synthetic Fashion-MNIST-shaped test images in ./data and an untrained LeNet5 m.pt."""
    monkeypatch.chdir(tmp_path)
    write_mnist_like(Path("data/fashion-mnist"), n_test=20)
    robench.save_checkpoint(
        robench.create_model("lenet5", "relu", 10, 1, 28), "m.pt", robench.model_meta("lenet5", "relu", "fashion-mnist")
    )
    return tmp_path


@pytest.fixture
def evaluated(workdir):
    """``workdir`` with the clean accuracy of m.pt stored in s.sqlite."""
    robench.evaluate(["m.pt"], n=20, attacks=["none"], store="s.sqlite")
    return workdir


def test_a_stored_run_is_never_reused_for_other_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_mnist_like(Path("data/fashion-mnist"), n_test=30, seed=0)
    write_mnist_like(Path("other/fashion-mnist"), n_test=30, seed=1)
    model = robench.create_model("lenet5", "relu", 10, 1, 28).eval()
    robench.save_checkpoint(model, "m.pt", robench.model_meta("lenet5", "relu", "fashion-mnist"))
    a = robench.evaluate(["m.pt"], n=30, attacks=["none"], store="s.sqlite", data_dir="other")
    b = robench.evaluate(["m.pt"], n=30, attacks=["none"], store="s.sqlite")
    db = Store("s.sqlite")
    runs = db.runs()
    db.close()
    assert len(runs) == 2 and runs.data_sha256.nunique() == 2 and a.run_id[0] != b.run_id[0]
    labels = {d: robench.data.load_split("fashion-mnist", "test", d).labels for d in ("other", None)}
    x, _ = robench.data.load_split("fashion-mnist", "test").batch(torch.arange(30))
    with torch.no_grad():
        preds = model(x).argmax(1)
    assert not torch.equal(labels["other"], labels[None])  # each folder's clean accuracy is its own
    assert b.clean_acc[0] == pytest.approx(100 * (preds == labels[None]).float().mean().item())


def test_a_failed_run_leaves_nothing_that_could_pass_for_a_result(workdir, monkeypatch):
    import robench.engine.evaluate as ev

    def broken(*args, **kwargs):
        raise RuntimeError("an attack broke")

    monkeypatch.setattr(ev, "attack_batch", broken)
    with pytest.raises(RuntimeError):
        robench.evaluate(["m.pt"], n=20, attacks=["fgsm"], store="s.sqlite")
    con = sqlite3.connect("s.sqlite")
    assert con.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    con.close()


def test_a_store_is_read_where_it_cannot_be_written(evaluated, monkeypatch):
    """On a read-only file system the WAL index cannot be made; the leaderboard still reads the store."""
    real = sqlite3.connect
    opened = []

    def no_writes(target, *args, uri=False, **kwargs):  # what a read-only mount does to every writable open
        opened.append(target)
        if not uri or "immutable=1" not in target:  # no WAL index can be made: SQLite cannot open it
            raise sqlite3.OperationalError("unable to open database file")
        return real(target, *args, uri=uri, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", no_writes)
    res = robench.api.leaderboard("s.sqlite", "lb", report=False)
    assert len(opened) == 3 and res["boards"]
    assert not Path("s.sqlite-shm").exists()


def test_written_files_get_the_usual_permissions_and_a_users_folder_is_left_alone(evaluated):
    old = os.umask(0o022)
    try:
        robench.api.leaderboard("s.sqlite", "lb", report=False)
        robench.api.leaderboard("s.sqlite", "lb", report=False)  # its own folder: written again
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in Path("lb").rglob("*") if p.is_file()}
    assert modes and set(modes.values()) == {0o644}, modes
    assert oct(Path("m.pt").stat().st_mode & 0o777) == oct(0o644)
    Path("mine").mkdir()
    Path("mine/report.md").write_text("mine")
    with pytest.raises(RobenchError, match="did not write"):
        robench.api.leaderboard("s.sqlite", "mine", report=False)
    assert Path("mine/report.md").read_text() == "mine" and len(list(Path("mine").iterdir())) == 1


def test_names_from_files_are_printed_as_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_mnist_like(Path("data/fashion-mnist"), n_test=20)
    name = "evil\x1b[2J\x07[bold red]boom[/]"
    robench.save_checkpoint(
        robench.create_model("lenet5", "relu", 10, 1, 28),
        "m.pt",
        robench.model_meta("lenet5", "relu", "fashion-mnist", name=name),
    )
    robench.save_checkpoint(
        robench.create_model("lenet5", "silu", 10, 1, 28),
        "n.pt",
        robench.model_meta("lenet5", "silu", "fashion-mnist", name=name + "2"),
    )
    for argv in (
        ["eval", "m.pt", "--n", "20", "--attack", "none", "--store", "s.sqlite"],
        ["info", "m.pt"],
        ["transfer", "--source", "m.pt", "--target", "n.pt", "--n", "20", "--store", "s.sqlite"],
    ):
        r = runner.invoke(app, argv)
        assert r.exit_code == 0, r.output
        assert "\x1b" not in r.output and "\x07" not in r.output
        assert "[bold red]boom[/]" in r.output and "\\x1b[2J" in r.output


def test_imagenet_in_the_readme_layout_keeps_its_classes(tmp_path):
    from PIL import Image

    for k, wnid in enumerate(("n01440764", "n01443537")):
        folder = tmp_path / "imagenet" / "val" / wnid
        folder.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (256, 256), (k * 200, i * 50, 0)).save(folder / f"{i}.JPEG")
    split = robench.data.load_split("imagenet", "test", tmp_path)
    assert split.labels.tolist() == [0, 0, 1, 1] and split.source == tmp_path / "imagenet" / "val"


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_sigterm_stops_the_workers_and_says_where_the_run_stopped(tmp_path):
    write_mnist_like(tmp_path / "data" / "fashion-mnist", n_test=400)
    for act in ("relu", "silu"):
        robench.save_checkpoint(
            robench.create_model("lenet5", act, 10, 1, 28),
            tmp_path / f"{act}.pt",
            robench.model_meta("lenet5", act, "fashion-mnist"),
        )
    (tmp_path / "suite.toml").write_text(
        'checkpoints = ["relu.pt", "silu.pt"]\nn = 400\njobs = 2\nattacks = ["pgd(steps=2000)"]\nbatch_size = "8"\n'
    )
    robench_bin = Path(sys.executable).with_name("robench")
    proc = subprocess.Popen(
        [str(robench_bin), "eval", "--config", "suite.toml", "--store", "s.sqlite"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def children() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            try:
                worker = b"spawn_main" in (stat.parent / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == proc.pid and worker:
                found.append(int(stat.parent.name))
        return found

    def stored() -> int:  # outcome rows the workers have committed
        try:
            con = sqlite3.connect(tmp_path / "s.sqlite")
            try:
                return con.execute("SELECT count(*) FROM outcomes").fetchone()[0]
            finally:
                con.close()
        except sqlite3.Error:
            return 0

    deadline = time.time() + 180
    while (len(children()) < 2 or not stored()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    workers = children()
    assert len(workers) == 2 and stored(), "the workers never started attacking"
    time.sleep(1)  # the progress of the stored batch reaches the parent
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "Interrupted:" in output and "stopped at" in output and "Traceback" not in output
    time.sleep(1)

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    alive = [w for w in workers if running(w)]
    assert not alive, f"workers still running after SIGTERM: {alive}"


def test_a_stale_run_is_recomputed_not_resumed(evaluated):
    db = Store("s.sqlite")
    run = db.runs().iloc[0]
    db.conn.execute("UPDATE runs SET status='stale'")
    assert db.open_run(run.key, {}) == (run.run_id, "running")
    assert db.outcomes(int(run.run_id)).empty
    db.close()
