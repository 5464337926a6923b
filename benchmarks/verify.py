"""What `robench verify` costs per re-computed batch, on the committed results (leaderboard/results/): one
batch of one run of each kind (clean, the PGD sweep, AutoAttack on a PGD-AT and on a standard LeNet5, the PGD
sweep on a ResNet-20, transfer), then a random sample of every run's batches as a user would ask for it. Run from the
repository root; writes a JSON file with the version and the machine it was taken on."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from robench import api
from robench._version import __version__
from robench.archive import read_runs
from robench.engine.core import machine
from robench.engine.verify import verify_runs

# one committed run of each kind: (what, key prefix)
KINDS = [
    ("clean, LeNet5 (SiLU, PGD-AT), 256 examples", "4d8fac384c98e685"),
    ("PGD-20 sweep over 6 eps, LeNet5 (SPLASH, PGD-AT), 256 examples", "24cb28c7ad9e4c05"),
    ("AutoAttack standard at eps 0.2, LeNet5 (ReLU, PGD-AT), 1,000 examples", "a0ab70d734793672"),
    ("AutoAttack standard at eps 0.1, LeNet5 (SiLU, standard), 1,000 examples", "0eedc531859993ac"),
    ("PGD-20 sweep over 6 eps, ResNet-20 (PSSiLU, PGD-AT), 256 examples", "5d7efbb682c5719c"),
    ("transfer MI-FGSM-10 from one LeNet5, the run's last batch (244 examples)", "0020b84e72db1f2e"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--archive", default="leaderboard/results")
    ap.add_argument("--sample", type=float, default=0.003, help="the random sample's fraction of all batches")
    ap.add_argument("--out", default="benchmarks/results/verify-committed.json")
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    args = ap.parse_args()
    torch.set_num_threads(1)
    records = read_runs(args.archive)
    rows = []
    for what, key in KINDS:
        rec, outcomes = next((r, o) for r, o in records if r["key"].startswith(key))
        batches = -(-len({o[1] for o in outcomes}) // rec["batch_size"])
        tic = time.perf_counter()  # exactly one of the run's batches
        run = verify_runs([(rec, outcomes)], sample=1 / batches)[0]
        rows.append(
            {
                "what": what,
                "run": key,
                "examples": run["examples"],
                "batch_seconds": run["seconds"],
                "command_seconds": round(time.perf_counter() - tic, 2),
                "mismatches": len(run["mismatches"]),
            }
        )
        print(rows[-1], flush=True)
    tic = time.perf_counter()
    res = api.verify(args.archive, sample=args.sample, seed=0)
    done = [r for r in res["runs"] if r["rerun"]]
    sample = {
        "sample": args.sample,
        "seed": 0,
        "runs": len(done),
        "batches": sum(r["rerun"] for r in done),
        "examples": sum(r["examples"] for r in done),
        "mismatches": res["mismatches"],
        "seconds": round(time.perf_counter() - tic, 1),
    }
    print(sample)
    out = {
        "robench": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": machine("cpu"),
        "threads": 1,
        "note": args.note,
        "per_batch": rows,
        "random_sample": sample,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
