"""Is robench's `fast` never weaker than official AutoAttack? Per example, on the shipped checkpoints.

    python benchmarks/never_weaker.py [--n 1000] [--attack fast] [--eps E] [--seed 0] [--batch-size B]
                                      [--reference results/leaderboard.sqlite]
                                      [--store results/never-weaker.sqlite] [CHECKPOINT ...]

For every checkpoint (default: every shipped one, seeds included) at its training eps (the dataset's
leaderboard eps for standard training; `--eps` for another, such as the small eps where standard-trained
models are not yet at 0%), on the first n test images:
- official AutoAttack's per-example outcomes: read from the reference stores (the study's and the
  leaderboard's runs of `autoattack` standard: the largest run of the first images, continued by runs of
  `--subset from:K`) and, for the examples no stored run covers, run through robench into --store (as
  `--subset from:K` where the first K are stored: `--n 2000` costs AutoAttack only on 1000-1999 where
  the study ran the first 1,000);
- `fast` (or --attack) run through robench's engine into --store, as `robench eval` runs it (its default
  batch size; resumable, so an interrupted benchmark continues and a rerun costs nothing);
- the examples AutoAttack breaks and `fast` does not, by index (the target is none), and the reverse count.
`--attack autoattack --seed 1 --batch-size 1000` measures the floor: how many of AutoAttack's breaks (seed 0)
the same AutoAttack with other random draws misses, on the same batches. `--floor FILE` (that run's JSON)
sets the compared attack's misses beside the floor's on the examples both cover (the floor's models, its
first n images): the breaks only the attack misses, only AutoAttack seed 1 misses, both miss, and the exact
McNemar p of the first two counts. AutoAttack seed 0's lucky draws are the floor's misses; an attack that
misses no more of them than AutoAttack itself does is as strong, per example, as the reference can tell.
Prints one row per checkpoint and writes benchmarks/results/never-weaker-<attack>.json (or --out), keeping
the rows that file already has for other checkpoints of the same comparison (attack, n, seed). The wall times are
each run's own (the stored AutoAttack runs may have shared the machine); `benchmarks/attacks.py` measures
the speed ratio in one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import robench  # noqa: E402
from robench.files import sha256_file  # noqa: E402
from robench.store import Store  # noqa: E402


def training_eps(meta: dict) -> str:
    recipe = meta.get("recipe") or {}
    if recipe.get("method", "standard") != "standard" and recipe.get("eps"):
        return str(recipe["eps"])
    from robench.data import dataset_info

    return dataset_info(meta["dataset"]).eps["Linf"]  # the leaderboard's eps for the dataset


def shown(path: Path) -> str:
    """A path as committed results record it: relative to the repository where it lies inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def autoattack_runs(stores: list[Path], sha: str, eps: str, n: int, start: int = 0):
    """(store path, run) of the largest finished AutoAttack standard run (seed 0) at eps of at least n test
    images from `start` on (the first ones when start is 0, `--subset from:start` otherwise)."""
    best = None
    subset = f"from:{start}" if start else "first"
    for path in stores:
        if not path.exists():
            continue
        with Store(path, readonly=True) as st:
            runs = st.runs()
            for r in runs[
                (runs.sha256 == sha)
                & (runs.split == "test")
                & (runs.subset == subset)
                & (runs.n >= n)
                & (runs.seed == 0)
            ].itertuples():
                atk = json.loads(r.attacks)
                if (
                    len(atk) == 1
                    and atk[0]["name"] == "autoattack"
                    and atk[0].get("version") == "standard"
                    and eps in [e[0] for e in json.loads(r.eps)]
                    and (best is None or r.n > best[1].n)
                ):
                    best = (path, r)
    return best


def autoattack_cover(stores: list[Path], own: Path, path: Path, sha: str, eps: str, n: int):
    """AutoAttack's (robust, broken_by) per example of the first n test images and its wall time (scaled
    to the examples used): the largest stored run of the first images, continued by a stored `from:K` run,
    and, for what no stored run covers, AutoAttack run through robench into `own` (in batches of up to
    1,000, as the study runs it). Returns (robust, broken_by, wall seconds, the stores read)."""
    robust, by, wall, used, start = {}, {}, 0.0, [], 0
    while start < n:
        ref = autoattack_runs(stores + [own], sha, eps, 1, start)
        if ref is None:
            rest = n - start
            sub = {"subset": f"from:{start}"} if start else {}
            rid, w = evaluate(path, ["autoattack"], eps, rest, own, batch_size=min(rest, 1000), **sub)
            ref = (own, None)
        else:
            rid, w = int(ref[1].run_id), float(ref[1].wall_time)
            w *= min(1.0, (n - start) / ref[1].n)
        a, b = flags(ref[0], rid, eps, n)
        robust.update(a)
        by.update(b)
        wall += w
        used.append(shown(ref[0]))
        start = max(robust) + 1
    return robust, by, wall, sorted(set(used))


def flags(store: Path, run_id: int, eps: str, n: int) -> tuple[dict, dict]:
    """Per example index below n: robust (bool), and what broke it."""
    with Store(store, readonly=True) as st:
        o = st.outcomes(run_id)
    o = o[(o.eps == eps) & (o.idx < n)]
    return dict(zip(o.idx, o.robust.astype(bool))), dict(zip(o.idx, o.broken_by))


def evaluate(path: Path, attacks: list[str], eps: str, n: int, store: Path, **kw) -> tuple[int, float]:
    df = robench.evaluate([str(path)], n=n, eps=[eps], attacks=attacks, store=str(store), **kw)
    rid = int(df.run_id.iloc[0])
    with Store(store, readonly=True) as st:
        return rid, float(st.run(rid)["wall_time"])


def merged_rows(out: Path, label: str, n: int, seed: int, rows: list[dict]) -> int:
    """Put the rows an earlier run of the same comparison (attack, n, seed) wrote to `out` for other
    checkpoints before `rows`, so that models can be measured one session at a time; returns how many."""
    if not out.exists():
        return 0
    old = json.loads(out.read_text())
    if (old.get("attack"), old.get("n"), old.get("seed")) != (label, n, seed):
        return 0
    mine = {r["checkpoint"] for r in rows}
    kept = [r for r in old.get("rows", []) if r["checkpoint"] not in mine]
    rows[:0] = kept
    return len(kept)


def against_floor(rows: list[dict], floor: Path) -> dict:
    """The compared attack's misses (AutoAttack seed 0 breaks it leaves robust) beside AutoAttack seed 1's,
    per model of the floor's JSON, on the floor's first n images (both compare with the same seed-0 runs)."""
    from robench.stats import mcnemar_exact

    fl = json.loads(floor.read_text())
    theirs = {r["checkpoint"]: r for r in fl["rows"]}
    out = {"floor": shown(floor), "models": 0, "examples": 0, "only_attack": [], "only_floor": [], "both": []}
    for r in rows:
        f = theirs.get(r["checkpoint"])
        if f is None or r["eps"] != f["eps"]:
            continue
        n = min(f["n"], r["n"])
        ours = {int(i) for i in r["autoattack_breaks_fast_not"] if int(i) < n}
        base = {int(i) for i in f["autoattack_breaks_fast_not"] if int(i) < n}
        out["models"] += 1
        out["examples"] += n
        for key, idx in (("only_attack", ours - base), ("only_floor", base - ours), ("both", ours & base)):
            out[key] += [f"{r['model']}:{i}" for i in sorted(idx)]
    out["mcnemar_p"] = mcnemar_exact(len(out["only_attack"]), len(out["only_floor"]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="*", type=Path)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--attack", action="append", help="the attack to compare (default fast); repeat for a cascade")
    ap.add_argument("--eps", help="attack at this eps instead of each checkpoint's training eps")
    ap.add_argument("--seed", type=int, default=0, help="the compared attack's seed (the reference's is 0)")
    ap.add_argument("--batch-size", type=int, help="the compared attack's batch size (default: eval's)")
    ap.add_argument(
        "--reference",
        action="append",
        type=Path,
        help="a store to read AutoAttack runs from; repeat (default: results/study.sqlite and "
        "results/leaderboard.sqlite)",
    )
    ap.add_argument("--store", type=Path, default=ROOT / "results" / "never-weaker.sqlite")
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--floor",
        type=Path,
        help="AutoAttack seed 1's JSON (never-weaker-autoattack-seed1.json): "
        "set the misses beside its misses on the examples both cover",
    )
    args = ap.parse_args()
    attacks = args.attack or ["fast"]
    label = "+".join(attacks) + (f"-seed{args.seed}" if args.seed else "")
    refs = args.reference or [ROOT / "results" / "study.sqlite", ROOT / "results" / "leaderboard.sqlite"]
    cks = [p.resolve() for p in args.checkpoints] or sorted((ROOT / "checkpoints").rglob("*.safetensors"))
    rows = []
    print(
        f"{'model':32s} {'eps':>5s} {'n':>5s} {'AA rob':>7s} {label + ' rob':>9s} {'AA s':>7s} "
        f"{label + ' s':>7s}  AutoAttack breaks, {label} does not (index: member)  | reverse"
    )
    for path in cks:
        meta = robench.load_checkpoint(path).meta
        eps, sha = args.eps or training_eps(meta), sha256_file(path)
        aa, aa_by, aa_wall, ref_stores = autoattack_cover(refs, args.store, path, sha, eps, args.n)
        fid, f_wall = evaluate(path, attacks, eps, args.n, args.store, seed=args.seed, batch_size=args.batch_size)
        ours, _ = flags(args.store, fid, eps, args.n)
        common = sorted(set(aa) & set(ours))
        misses = [i for i in common if not aa[i] and ours[i]]
        reverse = [i for i in common if aa[i] and not ours[i]]
        row = {
            "model": meta.get("name", path.stem),
            "checkpoint": str(path.relative_to(ROOT)),
            "eps": eps,
            "n": len(common),
            "autoattack_robust": sum(aa[i] for i in common),
            "fast_robust": sum(ours[i] for i in common),
            "autoattack_wall_s": round(aa_wall, 1),
            "fast_wall_s": round(f_wall, 1),
            "autoattack_breaks_fast_not": {i: aa_by[i] for i in misses},
            "fast_breaks_autoattack_not": len(reverse),
            "autoattack_store": ", ".join(ref_stores),
        }
        rows.append(row)
        listed = ", ".join(f"{i}: {aa_by[i]}" for i in misses) or "none"
        print(
            f"{row['model']:32s} {eps:>5s} {row['n']:5d} {row['autoattack_robust']:7d} {row['fast_robust']:9d} "
            f"{aa_wall:7.1f} {f_wall:7.1f}  {listed}  | {len(reverse)}",
            flush=True,
        )
    out = args.out or ROOT / "benchmarks" / "results" / f"never-weaker-{label.split('(')[0].replace('+', '-')}.json"
    kept = merged_rows(out, label, args.n, args.seed, rows)
    if kept:
        print(f"kept the rows of {kept} other checkpoints already in {out.name}")
    total = sum(len(r["autoattack_breaks_fast_not"]) for r in rows)
    print(
        f"{len(rows)} checkpoints, {sum(r['n'] for r in rows)} examples: AutoAttack breaks and {label} "
        f"does not: {total}; {label} breaks and AutoAttack does not: "
        f"{sum(r['fast_breaks_autoattack_not'] for r in rows)}"
    )
    result = {
        "attack": label,
        "n": args.n,
        "seed": args.seed,
        "machine": platform.platform(),
        "torch": torch.__version__,
        "robench": robench.__version__,
        "misses": total,
        "rows": rows,
    }
    if args.floor:
        fl = result["against_floor"] = against_floor(rows, args.floor)
        a, b, both = len(fl["only_attack"]), len(fl["only_floor"]), len(fl["both"])
        print(
            f"beside AutoAttack seed 1 on {fl['examples']} examples of {fl['models']} models: {label} misses "
            f"{a + both}, AutoAttack seed 1 misses {b + both} ({both} both); {a} only {label}, {b} only "
            f"AutoAttack seed 1, exact McNemar p = {fl['mcnemar_p']:.2g}"
        )
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {shown(out)}")


if __name__ == "__main__":
    main()
