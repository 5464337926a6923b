"""`torchrun -m robench eval`: examples sharded over processes (gloo on the CPU), rank 0 writes the store,
and the outcomes equal a one-process run's."""

import os
import sqlite3
import subprocess
import sys

from robench.engine.distributed import Single, shard

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cmd(ckpt, store):
    return [
        "eval",
        str(ckpt),
        "--examples",
        "50",
        "--eps",
        "0.05",
        "--eps",
        "0.1",
        "--attack",
        "fgsm",
        "--attack",
        "pgd(steps=5)",
        "--batch-size",
        "8",
        "--store",
        str(store),
        "--device",
        "cpu",
        "--out",
        str(store.with_suffix(".csv")),
    ]


def _stored(store):
    con = sqlite3.connect(store)
    try:
        return (
            con.execute("SELECT eps, idx, clean, robust, broken_by FROM outcomes ORDER BY 1, 2").fetchall(),
            con.execute("SELECT attack, examples FROM attack_stats ORDER BY 1").fetchall(),
            con.execute("SELECT key, status, n FROM runs").fetchall(),
        )
    finally:
        con.close()


def test_two_gloo_processes_give_the_outcomes_of_one(trained, tmp_path):
    one, two = tmp_path / "one.sqlite", tmp_path / "two.sqlite"
    subprocess.run([sys.executable, "-m", "robench", *_cmd(trained, one), "--quiet"], check=True, env=ENV, timeout=300)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "robench",
            *_cmd(trained, two),
        ],
        env=ENV,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("robust % [95% CI]") == 1  # rank 0 alone prints the table
    outcomes, counts, runs = _stored(two)
    assert len(outcomes) == 100 and len(set((e, i) for e, i, *_ in outcomes)) == 100
    assert (outcomes, counts, runs) == _stored(one)
    assert (
        two.with_suffix(".csv").read_text().splitlines()[1:] != []
        and len(two.with_suffix(".csv").read_text().splitlines()) == 3
    )


def test_each_rank_takes_its_own_contiguous_part():
    chunk = list(range(10))
    parts = [shard(chunk, r, 3) for r in range(3)]
    assert parts == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and sum(parts, []) == chunk
    assert shard([1], 1, 2) == [] and Single().gather("x") == ["x"] and Single().main
