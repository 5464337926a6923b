"""Which of AutoAttack's breaks that `fast` misses does a stronger focus-stage Square recover, and at what cost?

    python benchmarks/square_runs.py [--variant official:1 --variant robench:4 ...]
                                     [--misses benchmarks/results/never-weaker-fast-cap-2000.json]
                                     [--out benchmarks/results/square-runs-2000-misses.json]

On every engine batch (256 test images, as `robench eval` runs `fast` on the CPU) that holds an example
AutoAttack breaks and `fast` leaves robust (the --misses file, written by never_weaker.py), `fast` runs up to
its Square: the examples that reach Square are the batch's Square set. Each variant (`square:runs`, the
`fast(square=..., square_runs=...)` options: `official` is AutoAttack's Square, `robench` robench's own with a
window per example) then runs the focus stage's Square on that set, as `fast` would, and the benchmark records
how many of the set it breaks, which misses it recovers and its time. `official:1` reproduces `fast` itself:
it recovers none. Misses outside every Square set lie outside the focus stage (above its threshold or beyond
its cap), where no Square variant can reach them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from never_weaker import shown  # noqa: E402

import robench  # noqa: E402
from robench.attacks.apgd import Fast  # noqa: E402
from robench.engine.core import attack_mode  # noqa: E402

BATCH = 256  # the CPU engine's batch size for fast


class UpToSquare(Fast):
    """`fast` that records the examples reaching its Square stage instead of running it."""

    def _square_stage(self, model, x, y, idx, near, eps, norm, seed, x_adv, broken_by):
        self.reached = (x, y, idx, near)
        return []


def square_sets(row: dict, misses: set[int]):
    """(model, [(x, y, idx, near)] per batch holding a miss) for one never_weaker.py row."""
    ck = robench.load_checkpoint(ROOT / row["checkpoint"])
    split = robench.load_split(ck.meta["dataset"])
    eps, out = float(row["eps"]), []
    model = ck.model.eval()
    for b in sorted({i // BATCH for i in misses}):
        idx = torch.arange(b * BATCH, min(row["n"], (b + 1) * BATCH))
        x, y = split.batch(idx)
        with attack_mode(model) as m, torch.no_grad():
            live = (m(x).argmax(1) == y).nonzero()[:, 0]
        atk = UpToSquare()
        with attack_mode(model) as m:
            atk.run(m, x[live], y[live], idx[live], eps, "Linf", 0)
        if hasattr(atk, "reached"):
            out.append(atk.reached)
    return model, eps, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", action="append", help="square:runs, e.g. robench:4 (repeat)")
    ap.add_argument("--misses", type=Path, default=ROOT / "benchmarks/results/never-weaker-fast-cap-2000.json")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/square-runs-2000-misses.json")
    args = ap.parse_args()
    variants = [(v.split(":")[0], int(v.split(":")[1])) for v in args.variant or ["official:1", "robench:1"]]
    torch.set_num_threads(1)
    rows = json.loads(args.misses.read_text())["rows"]
    names = [f"{s}:{k}" for s, k in variants]
    total = {v: {"broken": 0, "recovered": [], "seconds": 0.0} for v in names}
    reached, set_size, all_misses = [], 0, []
    for row in rows:
        misses = {int(i) for i in row["autoattack_breaks_fast_not"]}
        if not misses:
            continue
        all_misses += [(row["model"], i) for i in sorted(misses)]
        model, eps, sets = square_sets(row, misses)
        for x, y, idx, near in sets:
            set_size += len(near)
            ids = idx[near].tolist()
            reached += [(row["model"], i) for i in ids if i in misses]
            line = [f"{row['model']:28s} batch {ids[0] // BATCH} set {len(near):3d}"]
            for (square, k), name in zip(variants, names):
                x_adv, broken_by = x.clone(), [None] * len(x)
                t = time.perf_counter()
                with attack_mode(model) as m:
                    Fast(square=square, square_runs=k)._square_stage(
                        m, x, y, idx, near, eps, "Linf", 0, x_adv, broken_by
                    )
                total[name]["seconds"] += time.perf_counter() - t
                broken = {int(idx[j]) for j in near.tolist() if broken_by[j] == "square"}
                got = sorted(broken & misses)
                total[name]["broken"] += len(broken)
                total[name]["recovered"] += [[row["model"], i] for i in got]
                line.append(f"{name} {len(broken):2d} {got}")
            print("  ".join(line), flush=True)
    outside = [m for m in all_misses if m not in reached]
    for name in names:
        t = total[name]
        print(
            f"{name:12s} broke {t['broken']} of {set_size}, recovered {len(t['recovered'])} of the "
            f"{len(reached)} misses in the sets, {t['seconds']:.1f} s"
        )
    print(f"{len(outside)} of the {len(all_misses)} misses lie outside every Square set")
    args.out.write_text(
        json.dumps(
            {
                "misses_file": shown(args.misses),
                "misses": len(all_misses),
                "in_square_sets": len(reached),
                "outside_square_sets": [list(m) for m in outside],
                "square_set_examples": set_size,
                "machine_threads": 1,
                "variants": {n: {**t, "seconds": round(t["seconds"], 1)} for n, t in total.items()},
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {shown(args.out)}")


if __name__ == "__main__":
    main()
