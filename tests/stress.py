"""Reliability stress: kill `robench eval` and `robench leaderboard` at random points, run them concurrently
on one store, read the store while they write, and check that nothing is lost, doubled or half-written.

    .venv/bin/python tests/stress.py --kills 40          # the figures in docs/reliability.md
    .venv/bin/python tests/stress.py --kills 10 --n 120  # what the test suite runs

What it does, all on one results store:
1. reference: the eval command run once, uninterrupted, into a store of its own;
2. a chain of kill points: the same command started again and again, each time killed (SIGKILL or SIGINT,
   at a random moment) while a second eval of another checkpoint and leaderboard reads run beside it;
   every SIGINT must end in the one-line "Interrupted: ... run the same command again" message;
3. the command run to the end, twice at once (two processes finishing the same run);
4. the stored outcomes, flags, attack counts and checks compared row by row with the reference;
5. `robench leaderboard` killed at random points over an older output folder: every file left is whole
   (the old or the new version), and two full runs write byte-identical files.
Exits 1 and says what broke when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class StressFailure(AssertionError):
    pass


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise StressFailure(what)


def eval_cmd(ckpt: Path, store: Path, n: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "robench",
        "eval",
        str(ckpt),
        "--n",
        str(n),
        "--eps",
        "0.05",
        "--eps",
        "0.1",
        "--attack",
        "fgsm",
        "--attack",
        "pgd(steps=20)",
        "--batch-size",
        "10",
        "--store",
        str(store),
        "--quiet",
    ]


def leaderboard_cmd(store: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "robench", "leaderboard", "--store", str(store), "--out", str(out)]


def table(store: Path, query: str) -> list[tuple]:
    con = sqlite3.connect(store, timeout=60)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def stored(store: Path) -> dict[str, list[tuple]]:
    """Everything an outcome depends on, keyed by run key (run ids differ between stores)."""
    return {
        "runs": table(store, "SELECT key, status, n, eps, attacks FROM runs ORDER BY key"),
        "outcomes": table(
            store,
            "SELECT r.key, o.eps, o.idx, o.clean, o.robust, o.broken_by FROM outcomes o "
            "JOIN runs r USING (run_id) ORDER BY r.key, o.eps, o.idx",
        ),
        "flags": table(store, "SELECT r.key, f.flag FROM run_flags f JOIN runs r USING (run_id) ORDER BY 1, 2"),
        "attack_examples": table(
            store, "SELECT r.key, a.attack, a.examples FROM attack_stats a JOIN runs r USING (run_id) ORDER BY 1, 2"
        ),
        "checks": table(
            store, "SELECT sha256, dataset, norm, check_name, eps, status, evidence FROM checks ORDER BY 1, 2, 3, 4, 5"
        ),
    }


def snapshot_read(store: Path, n: int, n_eps: int) -> int:
    """Read the store as `robench leaderboard` does while others write: every finished run it sees must be
    complete. Returns the number of runs seen."""
    from robench.reporting.leaderboard import results
    from robench.store import Store

    if not store.exists():
        return 0
    db = Store(store, readonly=True)
    try:
        res = results(db)
    finally:
        db.close()
    for row in res.itertuples():
        _check(
            row.n == n and len(row.robust_by_idx) == n,
            f"a leaderboard read saw run {row.run_id} with {len(row.robust_by_idx)} of {n} outcomes",
        )
    return len(res) // max(n_eps, 1)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".tmp")
    }


def _whole(name: str, data: bytes) -> bool:
    if name.endswith(".png"):
        return data.startswith(b"\x89PNG") and data.rstrip().endswith(b"IEND\xaeB`\x82")
    if name.endswith(".json"):
        try:
            json.loads(data)
            return True
        except ValueError:
            return False
    return data.endswith(b"\n")


class Stress:
    """One stress session on one working folder; ``run()`` returns the figures."""

    def __init__(
        self,
        workdir: Path,
        kills: int = 10,
        n: int = 120,
        seed: int = 0,
        leaderboard_kills: int = 3,
        checkpoints: tuple[Path, Path] | None = None,
        log=print,
    ):
        self.rng, self.kills, self.n, self.lb_kills, self.log = random.Random(seed), kills, n, leaderboard_kills, log
        self.a, self.b = checkpoints or (
            ROOT / "checkpoints/lenet5-relu-pgd-at.safetensors",
            ROOT / "checkpoints/lenet5-silu-pgd-at.safetensors",
        )
        self.dir = workdir
        self.ref, self.work = workdir / "reference.sqlite", workdir / "stress.sqlite"
        self.procs: list[subprocess.Popen] = []
        self.figures = {
            "kill_points": 0,
            "sigkill": 0,
            "sigint": 0,
            "interrupt_messages": 0,
            "missed": 0,
            "concurrent_evals": 0,
            "snapshot_reads": 0,
            "rows_checked": 0,
            "duplicates": 0,
            "missing": 0,
            "leaderboard_kills": 0,
            "leaderboard_files_checked": 0,
        }

    def popen(self, cmd, **kw) -> subprocess.Popen:
        # Ctrl-C as in a terminal, even when this harness itself was started in the background (a shell
        # starts background jobs with SIGINT ignored, and a child inherits that)
        p = subprocess.Popen(cmd, env=ENV, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)
        self.procs.append(p)
        return p

    def run(self) -> dict:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.reference()
            self.chain()
            self.finish()
            self.compare()
            self.leaderboard()
        finally:
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return self.figures

    def reference(self) -> None:
        """1. The command, uninterrupted, for both checkpoints."""
        tic = time.perf_counter()
        for ck in (self.a, self.b):
            subprocess.run(eval_cmd(ck, self.ref, self.n), check=True, env=ENV, timeout=600)
        self.t_ref = (time.perf_counter() - tic) / 2
        self.log(f"reference: 2 evals, {self.t_ref:.1f} s each")

    def chain(self) -> None:
        """2. Kill points, with a concurrent eval of the other checkpoint and snapshot reads beside them."""
        f, n, other, attempts = self.figures, self.n, None, 0
        while f["kill_points"] < self.kills and attempts < 4 * self.kills:
            attempts += 1
            if other is None or other.poll() is not None:
                if other is not None:
                    _check(other.returncode == 0, f"the concurrent eval failed with exit code {other.returncode}")
                    f["concurrent_evals"] += 1
                other = self.popen(
                    eval_cmd(self.b, self.work, n) + ["--force"] * (f["concurrent_evals"] > 0),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            sig = self.rng.choice([signal.SIGKILL, signal.SIGINT])
            # half the kill points at a random moment (start-up, loading, attacking, diagnostics), half at a
            # random number of stored outcome rows (inside the batch loop, where most of the time goes)
            have = _rows_of(self.work, self.a) if self.work.exists() else 0
            if have >= 2 * n:
                _reset(self.work, self.a)
                have = 0
            by_rows = f["kill_points"] % 2 == 0 and have + 1 < 2 * n
            delay = self.rng.uniform(0.2, 1.1) * self.t_ref
            rows_at = self.rng.randrange(have + 1, 2 * n) if by_rows else 0
            proc = self.popen(eval_cmd(self.a, self.work, n), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            start = time.perf_counter()
            while proc.poll() is None and time.perf_counter() - start < (3 * self.t_ref if by_rows else delay):
                time.sleep(0.02)
                f["snapshot_reads"] += 1
                try:
                    snapshot_read(self.work, n, 2)
                    if by_rows and _rows_of(self.work, self.a) >= rows_at:
                        break
                except sqlite3.OperationalError as e:  # the store is being created this moment
                    if "no such table" not in str(e):
                        raise
            delay = time.perf_counter() - start
            if proc.poll() is not None:  # it finished before the kill: not a kill point; start over
                proc.communicate()
                f["missed"] += 1
                _reset(self.work, self.a)
                continue
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=120)
            if sig == signal.SIGINT and proc.returncode == 0:
                # the work was done and Python was shutting down when Ctrl-C landed: nothing to interrupt,
                # so not a kill point, but the run must be whole
                _check(_rows_of(self.work, self.a) == 2 * n, "SIGINT gave exit code 0 with the run unfinished")
                f["missed"] += 1
                _reset(self.work, self.a)
                continue
            f["kill_points"] += 1
            self._judge(sig, proc.returncode, err)
            self.log(
                f"kill point {f['kill_points']}: {sig.name} after {delay:.2f} s, "
                f"{_rows_of(self.work, self.a)} of {2 * n} outcome rows of the run stored"
            )
        _check(f["kill_points"] >= self.kills, f"only {f['kill_points']} kills landed in {attempts} tries")
        other.wait(timeout=600)
        _check(other.returncode == 0, f"the concurrent eval failed with exit code {other.returncode}")
        f["concurrent_evals"] += 1

    def _judge(self, sig, code: int, err: str) -> None:
        f = self.figures
        if sig == signal.SIGKILL:
            f["sigkill"] += 1
            _check(code == -signal.SIGKILL, f"SIGKILL gave exit code {code}")
            return
        f["sigint"] += 1
        if code == 130:
            lines = err.strip().splitlines()
            _check(
                len(lines) == 1 and lines[0].startswith("Interrupted") and "run the same command again" in lines[0],
                f"Ctrl-C printed {err!r}",
            )
            f["interrupt_messages"] += 1
        else:  # Ctrl-C during Python's own start-up, before robench's code runs, ends Python's way
            _check(
                code != 0 and "robench/engine" not in err and "robench/store" not in err,
                f"SIGINT gave exit code {code}: {err[-300:]}",
            )

    def finish(self) -> None:
        """3. The interrupted run finished by two processes at once."""
        pair = [self.popen(eval_cmd(self.a, self.work, self.n), stderr=subprocess.PIPE) for _ in range(2)]
        for p in pair:
            _, err = p.communicate(timeout=600)
            _check(p.returncode == 0, f"resuming failed: {err.decode()[-300:]}")
        self.figures["concurrent_evals"] += 2

    def compare(self) -> None:
        """4. Row by row against the uninterrupted reference."""
        f = self.figures
        want, got = stored(self.ref), stored(self.work)
        for name in want:
            f["rows_checked"] += len(got[name])
            f["duplicates"] += len(got[name]) - len(set(got[name]))
            f["missing"] += len(set(want[name]) - set(got[name]))
            _check(got[name] == want[name], f"the {name} after the kills differ from the uninterrupted run")
        self.log(f"{f['rows_checked']} rows identical to the uninterrupted run")

    def leaderboard(self) -> None:
        """5. `robench leaderboard` killed over an older output folder; then two full runs byte-identical."""
        f = self.figures
        lb, lb2, old_store = self.dir / "leaderboard", self.dir / "leaderboard-again", self.dir / "old.sqlite"
        quiet = dict(check=True, env=ENV, timeout=600, stdout=subprocess.DEVNULL)
        subprocess.run(eval_cmd(self.a, old_store, self.n // 2), **quiet)
        subprocess.run(leaderboard_cmd(old_store, lb), **quiet)
        old = _files(lb)
        tic = time.perf_counter()
        subprocess.run(leaderboard_cmd(self.work, lb2), **quiet)
        t_lb, new = time.perf_counter() - tic, _files(lb2)
        for _ in range(self.lb_kills):
            proc = self.popen(leaderboard_cmd(self.work, lb), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(self.rng.uniform(0.3, 1.0) * t_lb)
            proc.kill()
            proc.wait()
            f["leaderboard_kills"] += 1
            for name, data in _files(lb).items():
                f["leaderboard_files_checked"] += 1
                _check(
                    _whole(name, data) and data in (old.get(name), new.get(name)),
                    f"a killed leaderboard run left {name} half-written",
                )
        subprocess.run(leaderboard_cmd(self.work, lb), **quiet)
        _check(_files(lb) == new, "two leaderboard runs on the same store wrote different bytes")
        self.log(
            f"leaderboard: {f['leaderboard_kills']} kills, {f['leaderboard_files_checked']} files whole; "
            "a full rerun is byte-identical"
        )


def _rows_of(store: Path, ckpt: Path) -> int:
    from robench.files import sha256_file

    query = "SELECT COUNT(*) FROM outcomes JOIN runs USING (run_id) WHERE sha256=?"
    con = sqlite3.connect(store, timeout=60)
    try:
        return con.execute(query, (sha256_file(ckpt),)).fetchone()[0]
    finally:
        con.close()


def _reset(store: Path, ckpt: Path) -> None:
    """After a run finished before its kill, drop its stored outcomes so the next kill point lands mid-run
    (as `--force` would; the reference comparison at the end covers the rerun)."""
    con = sqlite3.connect(store, timeout=60)
    try:
        from robench.files import sha256_file

        sha = sha256_file(ckpt)
        with con:
            ids = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE sha256=?", (sha,))]
            for rid in ids:
                con.execute("DELETE FROM outcomes WHERE run_id=?", (rid,))
                con.execute("DELETE FROM run_flags WHERE run_id=?", (rid,))
                con.execute("DELETE FROM attack_stats WHERE run_id=?", (rid,))
                con.execute("UPDATE runs SET status='running' WHERE run_id=?", (rid,))
    finally:
        con.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=40, help="kill points of the eval chain")
    ap.add_argument("--leaderboard-kills", type=int, default=5)
    ap.add_argument("--n", type=int, default=200, help="examples per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="kept afterwards (default: a temp folder)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        try:
            figures = Stress(args.workdir or Path(tmp), args.kills, args.n, args.seed, args.leaderboard_kills).run()
        except StressFailure as e:
            print(f"FAILED: {e}")
            return 1
        figures["seconds"] = round(time.perf_counter() - tic, 1)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
