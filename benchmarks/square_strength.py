"""Is robench's own Square at least as strong as AutoAttack's (pyautoattack) at the same budget?

    python benchmarks/square_strength.py --checkpoint checkpoints/lenet5-relu-pgd-at.safetensors
                                         --norm L2 --eps 1.0 [--n 500] [--queries 1000] [--seeds 3]

On the first --n test images, the examples robench's APGD-CE (100 iterations) leaves robust (--every: all the
model classifies right) are attacked by
both Squares at the same query budget and p_init (0.8, AutoAttack's), one batch each, once per seed, the two
interleaved. Prints and writes, per seed, how many each breaks, how many only one of them breaks and the wall
times, to benchmarks/results/square-strength-<model>-<norm>[-every].json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from never_weaker import shown  # noqa: E402

import robench  # noqa: E402
from robench.attacks.apgd import APGD, SQUARE_P_INIT  # noqa: E402
from robench.attacks.autoattack import AutoAttack  # noqa: E402
from robench.attacks.square import square  # noqa: E402
from robench.engine.core import attack_mode  # noqa: E402
from robench.norms import get_norm  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--norm", default="Linf")
    ap.add_argument("--eps", type=float, required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--every",
        action="store_true",
        help="attack every example the model classifies right, not only APGD-CE's survivors",
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    ck = robench.load_checkpoint(args.checkpoint)
    split = robench.load_split(ck.meta["dataset"])
    idx = torch.arange(args.n)
    x, y = split.batch(idx)
    rows = []
    with attack_mode(ck.model.eval()) as model:
        with torch.no_grad():
            right = model(x).argmax(1) == y
        keep = right.nonzero()[:, 0]
        if not args.every:
            out = APGD("ce").run(model, x[keep], y[keep], idx[keep], args.eps, args.norm, 0)
            with torch.no_grad():
                keep = keep[model(out.x_adv).argmax(1) == y[keep]]
        xs, ys, ids = x[keep], y[keep], idx[keep]
        print(
            f"{ck.meta.get('name', args.checkpoint.stem)}: {len(ids)} of the first {args.n} "
            f"{'classified right' if args.every else 'survive APGD-CE'} at {args.norm} eps {args.eps}; "
            f"Square at {args.queries} queries",
            flush=True,
        )
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            official = AutoAttack("standard", members=("square",), batch_size=len(ids), queries=args.queries)
            xo = official.run(model, xs, ys, ids, args.eps, args.norm, seed).x_adv
            t1 = time.perf_counter()
            xr = square(model, xs, ys, args.eps, args.norm, args.queries, SQUARE_P_INIT, seed)
            t2 = time.perf_counter()
            with torch.no_grad():
                bo, br = model(xo).argmax(1) != ys, model(xr).argmax(1) != ys
            dist = get_norm(args.norm).distance(xr - xs).max().item()
            row = {
                "seed": seed,
                "official_breaks": int(bo.sum()),
                "robench_breaks": int(br.sum()),
                "only_official": int((bo & ~br).sum()),
                "only_robench": int((br & ~bo).sum()),
                "official_s": round(t1 - t0, 1),
                "robench_s": round(t2 - t1, 1),
                "robench_largest_distance": round(dist, 6),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = args.out or ROOT / "benchmarks" / "results" / (
        f"square-strength-{args.checkpoint.stem}-{args.norm}{'-every' if args.every else ''}.json"
    )
    out.write_text(
        json.dumps(
            {
                "checkpoint": str(args.checkpoint),
                "norm": args.norm,
                "eps": args.eps,
                "n": args.n,
                "every": args.every,
                "attacked": len(ids),
                "queries": args.queries,
                "p_init": SQUARE_P_INIT,
                "machine": platform.platform(),
                "torch": torch.__version__,
                "robench": robench.__version__,
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {shown(out)}")


if __name__ == "__main__":
    main()
