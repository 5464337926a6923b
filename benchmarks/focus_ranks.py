"""Where do AutoAttack's breaks that fast's two APGD runs miss sit among those runs' survivors?

    python benchmarks/focus_ranks.py [--n 1000] [--batch-size 256] [--out benchmarks/results/focus-ranks.json]
                                     [CHECKPOINT ...]

For every checkpoint (default: the shipped PGD-AT LeNet5s, seeds included) at its training eps, on the first n
test images in batches as `robench eval` runs them on the CPU: fast's APGD-CE and MALT-targeted APGD
(`fast(focus=0)`), and per survivor the smallest margin they reached as a fraction of its clean margin, the
rank its focus stage orders by. AutoAttack's per-example outcomes are read from the stores never_weaker.py
reads (the study's runs). Per model it prints and records the survivors, how many fall below the focus
threshold (0.4) and how many the cap keeps (focus_share 0.1 of each batch's survivors), and each example
AutoAttack breaks that the two runs leave robust, with its fraction and its rank among the survivors (0 is the
closest). The focus stage can find only the examples it attacks: the cap costs the ones it leaves out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from never_weaker import autoattack_runs, flags, shown, training_eps  # noqa: E402

import robench  # noqa: E402
from robench.attacks.descent import closeness  # noqa: E402
from robench.attacks.registry import create_attack  # noqa: E402
from robench.engine.core import attack_mode  # noqa: E402
from robench.files import sha256_file  # noqa: E402

FOCUS, SHARE = 0.4, 0.1  # fast's defaults


def survivors(ck, n: int, bs: int) -> tuple[list[tuple[int, float, bool]], int, int]:
    """(index, smallest margin / clean margin, attacked by the capped focus stage) of each example fast's
    APGD runs leave robust; how many of them the focus stage attacks without and with its cap."""
    x, y = robench.load_split(ck.meta["dataset"]).batch(torch.arange(n))
    eps, atk = float(training_eps(ck.meta)), create_attack("fast(focus=0)")
    rows, below, capped = [], 0, 0
    with attack_mode(ck.model.eval()) as model:
        for s in range(0, n, bs):
            xb, yb = x[s : s + bs], y[s : s + bs]
            with torch.no_grad():
                z = model(xb)
            out = atk.run(model, xb, yb, torch.arange(s, s + len(xb)), eps, "Linf", 0)
            with torch.no_grad():
                robust = (model(out.x_adv).argmax(1) == yb) & (z.argmax(1) == yb)
            ratio = (out.closest / closeness(z, yb))[robust]
            rank = torch.argsort(torch.argsort(ratio, stable=True))  # within the batch, as the cap ranks
            kept = (ratio < FOCUS) & (rank < math.ceil(SHARE * len(ratio)))
            rows += zip((s + torch.nonzero(robust).flatten()).tolist(), ratio.tolist(), kept.tolist())
            below, capped = below + int((ratio < FOCUS).sum()), capped + int(kept.sum())
    return rows, below, capped


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="*", type=Path)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=256, help="eval's default on the CPU for these inputs")
    ap.add_argument("--reference", action="append", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "focus-ranks.json")
    args = ap.parse_args()
    refs = args.reference or [ROOT / "results" / "study.sqlite", ROOT / "results" / "leaderboard.sqlite"]
    cks = [p.resolve() for p in args.checkpoints] or sorted(
        p for p in (ROOT / "checkpoints").rglob("lenet5-*pgd-at*.safetensors")
    )
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    rows = {r["checkpoint"]: r for r in old.get("rows", []) if old.get("n") == args.n}
    for path in cks:
        ck = robench.load_checkpoint(path)
        meta = ck.meta
        eps = training_eps(meta)
        ref = autoattack_runs(refs, sha256_file(path), eps, args.n)
        if ref is None:
            print(f"{path.name}: no AutoAttack run of the first {args.n} stored; skipped")
            continue
        aa, aa_by = flags(ref[0], int(ref[1].run_id), eps, args.n)
        surv, below, capped = survivors(ck, args.n, args.batch_size)
        ranked = sorted(surv, key=lambda r: r[1])
        missed = [
            {"index": i, "member": aa_by[i], "fraction": round(f, 4), "rank": k, "in_capped_focus": c}
            for k, (i, f, c) in enumerate(ranked)
            if not aa.get(i, True)
        ]
        rows[shown(path)] = {
            "model": meta.get("name", path.stem),
            "checkpoint": shown(path),
            "eps": eps,
            "survivors": len(ranked),
            "below_focus": below,
            "focus_capped": capped,
            "autoattack_breaks_apgd_runs_miss": missed,
        }
        print(
            f"{path.stem:32s} survivors {len(ranked)}, below {FOCUS}: {below}, capped: {capped}; AutoAttack "
            "breaks: "
            + (
                " ".join(f"{m['index']} ({m['member']}, {m['fraction']:.2f}, rank {m['rank']})" for m in missed)
                or "none"
            ),
            flush=True,
        )
    allm = [m for r in rows.values() for m in r["autoattack_breaks_apgd_runs_miss"]]
    total = {
        "survivors": sum(r["survivors"] for r in rows.values()),
        "below_focus": sum(r["below_focus"] for r in rows.values()),
        "focus_capped": sum(r["focus_capped"] for r in rows.values()),
        "autoattack_breaks_apgd_runs_miss": len(allm),
        "of_them_below_focus": sum(m["fraction"] < FOCUS for m in allm),
        "of_them_in_capped_focus": sum(m["in_capped_focus"] for m in allm),
    }
    print(f"{len(rows)} checkpoints: {total}")
    args.out.write_text(
        json.dumps(
            {
                "n": args.n,
                "batch_size": args.batch_size,
                "focus": FOCUS,
                "share": SHARE,
                "total": total,
                "rows": list(rows.values()),
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {shown(args.out)}")


if __name__ == "__main__":
    main()
