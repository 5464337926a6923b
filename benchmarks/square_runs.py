"""On the engine batches holding fast's misses at 2000: the focus stage's Square set, then Square with k runs
side by side on it (k = 1 reproduces fast; `fast(square_runs=k)` runs exactly this). Which of AutoAttack's
extra breaks (benchmarks/results/never-weaker-fast-cap-2000.json) does each k recover?

    python benchmarks/square_runs.py > benchmarks/results/square-runs-2000-misses.txt
"""
import json, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from robench.checkpoints import load_checkpoint
from robench.data import load_split
from robench.engine.core import attack_mode, Counted
from robench.attacks import apgd
from robench.attacks.autoattack import AutoAttack
torch.set_num_threads(1)
d = json.load(open(ROOT / "benchmarks/results/never-weaker-fast-cap-2000.json"))
split = load_split("fashion-mnist", "test")
class Stop(Exception): pass
def capture(self, n):  # stop fast where its Square would start
    raise Stop


apgd.Fast._square = capture
orig_keep = apgd.Fast._keep
res = {k: [] for k in (1, 2, 4)}; secs = {k: 0.0 for k in res}; total = {k: 0 for k in res}; nsq = 0
for row in d["rows"]:
    miss = {int(k): v for k, v in row["autoattack_breaks_fast_not"].items()}
    if not miss:
        continue
    ck = load_checkpoint(ROOT / row["checkpoint"])
    for b in sorted({i // 256 for i in miss}):
        idx = torch.arange(b * 256, min(2000, (b + 1) * 256))
        x, y = split.batch(idx)
        with attack_mode(ck.model) as m:
            with torch.no_grad():
                clean = m(x).argmax(1) == y
            live = clean.nonzero()[:, 0]
            # run fast up to Square: record the near set as _keep returns it after the retry
            seen = {}
            def keep(model, xx, yy, rows, xa, name, x_adv, broken_by):
                out = orig_keep(model, xx, yy, rows, xa, name, x_adv, broken_by)
                seen[name] = out
                return out
            apgd.Fast._keep = staticmethod(keep)
            try:
                apgd.Fast().run(Counted(m), x[live], y[live], idx[live], 0.1, "Linf", 0)
                near = None
            except Stop:
                near = seen["robench-apgd-t"]  # the last _keep before Square: the retry's survivors
            apgd.Fast._keep = orig_keep
            if near is None:
                continue
            rows = live[near]
            nsq += len(rows)
            for k in res:
                t = time.perf_counter()
                out = AutoAttack("standard", members=("square",), batch_size=k * len(rows)).run(
                    m, x[rows].repeat(k, 1, 1, 1), y[rows].repeat(k), idx[rows].repeat(k), 0.1, "Linf", 0)
                secs[k] += time.perf_counter() - t
                with torch.no_grad():
                    hit = (m(out.x_adv).argmax(1) != y[rows].repeat(k)).view(k, -1).any(0)
                broken = set(idx[rows][hit].tolist())
                total[k] += len(broken)
                got = [i for i in miss if i // 256 == b and i in broken]
                res[k] += [(row["model"], i, miss[i]) for i in got]
                print(row["model"], b, "k", k, "square set", len(rows), "broken", len(broken), "misses recovered", got, flush=True)
print("square sets", nsq, "broken", total, "seconds", {k: round(v, 1) for k, v in secs.items()})
print("misses recovered", {k: len(v) for k, v in res.items()})
