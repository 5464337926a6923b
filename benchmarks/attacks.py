"""robench's attacks against torchattacks, Foolbox and direct pyautoattack on the same work, in one process.

    python benchmarks/attacks.py [--device cpu|cuda] [--model lenet5|resnet20|wrn-28-10] [--repeats 5]
                                 [--checkpoint checkpoints/resnet20-pssilu-pgd-at.safetensors]

Same model, inputs, batch size and budget for every library:
- PGD Linf, 10 and 100 steps (step 2.5*eps/steps, random start): robench (its engine: clean pass, PGD,
  fp32 re-check) vs torchattacks.PGD vs foolbox LinfPGD; robust accuracy beside each time;
- AutoAttack standard on one full batch: robench's `autoattack` vs pyautoattack's
  run_standard_evaluation, with the per-example outcomes compared;
- an eps sweep of 5 values: robench's one sweep vs Foolbox's run per eps;
- robench's `fast` vs official AutoAttack (both through robench) on one full batch, with the examples
  AutoAttack breaks and fast does not listed by index, and the reverse count;
- PGD with a fixed step (eps/4) at 1,000 steps with and without cycle detection, outcomes compared;
- scaling: robench PGD time and peak memory against n and against steps.
Prints medians over the repeats and ratios (their time / ours; the ratio of medians, and the range of the
ratios within each interleaved round, which a drifting machine disturbs least) and writes
benchmarks/results/<device>-<model>.json (<device>-<checkpoint stem>.json for a --checkpoint other than the
model's default: the ReLU PGD-AT one). On CUDA it adds a roofline line: attack FLOPs (forward +
input-gradient backward per step, counted by torch's FlopCounterMode) per second against the measured
bf16 and tf32 matmul rates.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import robench  # noqa: E402
from robench.attacks.registry import create_attack  # noqa: E402
from robench.config import parse_eps  # noqa: E402
from robench.engine.core import attack_batch, attack_mode  # noqa: E402

CHECKPOINTS = {
    "lenet5": "checkpoints/lenet5-relu-pgd-at.safetensors",
    "resnet20": "checkpoints/resnet20-relu-pgd-at.safetensors",
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fns: dict, device, repeats, warm_up=True) -> dict:
    """Per name, the median wall time of ``fns[name]()`` over ``repeats`` runs, its times and its last
    result. The runs are interleaved (one of each, then the next round), so a slow spell of a shared machine
    lands on every library alike instead of on whichever ran during it, and every other round runs them in
    reverse order, so that no library always pays the one-time costs (oneDNN kernels built for a new shape)
    that the others then reuse."""
    outs = {k: fn() if warm_up else None for k, fn in fns.items()}
    times = {k: [] for k in fns}
    for r in range(repeats):
        for k, fn in list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]:
            sync(device)
            tic = time.perf_counter()
            outs[k] = fn()
            sync(device)
            times[k].append(time.perf_counter() - tic)
    return {k: (statistics.median(times[k]), times[k], outs[k]) for k in fns}


def load(model_name: str, n: int, device, checkpoint: Path | None = None):
    if model_name == "wrn-28-10":
        torch.manual_seed(0)
        model = robench.create_model("wrn-28-10", "relu", num_classes=10, in_channels=3, input_size=32)
        x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        model = model.to(device).eval()
        with torch.no_grad():  # labels = the model's own predictions, so every example starts correct
            y = torch.cat([model(x[i : i + 256].to(device)).argmax(1).cpu() for i in range(0, n, 256)])
        return model, x, y, "random CIFAR-shaped inputs, random init", "8/255"
    ck = robench.load_checkpoint(checkpoint or ROOT / CHECKPOINTS[model_name])
    if ck.meta["arch"] != model_name:
        raise SystemExit(f"{checkpoint} is a {ck.meta['arch']}, not a {model_name}: pass --model {ck.meta['arch']}")
    split = robench.load_split(ck.meta["dataset"])
    x, y = split.batch(torch.arange(n))
    return ck.model.to(device).eval(), x, y, f"{ck.meta['dataset']} test, first {n}", "0.1"


def batches(x, y, bs):
    for s in range(0, len(x), bs):
        yield torch.arange(s, min(s + bs, len(x))), x[s : s + bs], y[s : s + bs]


# ----------------------------------------------------------------------------------------------- PGD
def robench_run(model, x, y, bs, device, attack, eps_list, norm="Linf"):
    """Per eps, the robust flags of every example, through robench's engine as `robench eval` runs it."""
    robust = {e.text: [] for e in eps_list}
    with attack_mode(model) as attacked:  # eval mode, parameter gradients off, robench.nn.accelerate's layers
        for idx, xb, yb in batches(x, y, bs):
            rows, _, _ = attack_batch(attacked, xb.to(device), yb.to(device), idx, eps_list, [attack], norm, 0)
            for e_text, _, _, r, _ in rows:
                robust[e_text].append(r)
    return {e: torch.tensor(v, dtype=torch.bool) for e, v in robust.items()}


def torchattacks_pgd(model, x, y, bs, device, eps, steps):
    import torchattacks

    atk = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    out = []
    for _, xb, yb in batches(x, y, bs):
        xb, yb = xb.to(device), yb.to(device)
        adv = atk(xb, yb)
        with torch.no_grad():
            out.append(((model(adv).argmax(1) == yb) & (model(xb).argmax(1) == yb)).cpu())
    return torch.cat(out)


def foolbox_pgd(model, x, y, bs, device, eps_values, steps):
    """Foolbox LinfPGD, one run per eps (how Foolbox handles a list of epsilons for this attack)."""
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=device)
    out = {e: [] for e in eps_values}
    for _, xb, yb in batches(x, y, bs):
        xb, yb = xb.to(device), yb.to(device)
        for e in eps_values:
            atk = fb.attacks.LinfPGD(abs_stepsize=2.5 * e / steps, steps=steps, random_start=True)
            _, _, success = atk(fmodel, xb, yb, epsilons=e)
            out[e].append((~success).cpu())
    return {e: torch.cat(v) for e, v in out.items()}


# --------------------------------------------------------------------------------------- AutoAttack
def direct_autoattack(model, x, y, bs, device, eps):
    from pyautoattack import AutoAttack

    adv = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0, device=device)
    xa, ya = adv.run_standard_evaluation(x.to(device), y.to(device), batch_size=bs)
    return ya.cpu() == y


# ---------------------------------------------------------------------------------------- roofline
def matmul_rate(device, dtype, size=8192, reps=20):
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    tic = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - tic)


def step_flops(model, x, device) -> float:
    """FLOPs of one attack step per example: forward + backward to the input."""
    from torch.utils.flop_counter import FlopCounterMode

    xb = x[:8].to(device).requires_grad_(True)
    with FlopCounterMode(display=False) as fc:
        loss = model(xb).logsumexp(1).sum()
        torch.autograd.grad(loss, xb)
    return fc.get_total_flops() / len(xb)


def peak_memory(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -------------------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="lenet5", choices=["lenet5", "resnet20", "wrn-28-10"])
    ap.add_argument("--n", type=int, default=None, help="examples [default: 1000 on CUDA, 500 on CPU]")
    ap.add_argument(
        "--aa-n",
        type=int,
        default=None,
        help="examples for AutoAttack [default: one full batch, so "
        "that it runs at the batch size of the other rows]; timed without warm-up",
    )
    ap.add_argument("--aa-repeats", type=int, default=3, help="AutoAttack runs of each library [default: 3]")
    ap.add_argument("--batch-size", type=int, default=None, help="[default: 250, 128 for wrn-28-10]")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds of PGD and the sweep [default: 5]")
    ap.add_argument("--skip", action="append", default=[], help="pgd, autoattack, sweep, fast, cycles or scaling")
    ap.add_argument(
        "--fast",
        action="append",
        help="a fast spec to time against AutoAttack, e.g. 'fast(focus=0.4)'; "
        "repeat to time several in the same rounds [default: fast]",
    )
    ap.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="a shipped checkpoint of the --model's architecture to measure instead of its ReLU PGD-AT one",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.checkpoint and args.model == "wrn-28-10":
        ap.error("--checkpoint takes a LeNet5 or ResNet-20 checkpoint; wrn-28-10 is measured at random init")
    device = torch.device(args.device)
    n = args.n or (1000 if device.type == "cuda" else 500)
    bs = args.batch_size or (128 if args.model == "wrn-28-10" else 250)
    # every library gets the model as loaded (parameters requiring gradients, as a user hands it over);
    # robench's engine turns parameter gradients off itself, which is one of its levers
    model, x, y, data, eps_text = load(args.model, n, device, args.checkpoint)
    eps = parse_eps(eps_text)
    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "model": args.model,
        "checkpoint": str(args.checkpoint or CHECKPOINTS.get(args.model, "none (random init)")),
        "data": data,
        "n": n,
        "batch_size": bs,
        "eps": eps.text,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "robench": robench.__version__,
        "results": {},
    }
    table = []

    def record(key, ours_name, ours, others, robust):
        entry = {"ours": {"name": ours_name, "median_s": ours[0], "times": ours[1], "robust_acc": robust[ours_name]}}
        for name, t in others.items():
            paired = [a / b for a, b in zip(t[1], ours[1])]  # same round: the same state of the machine
            entry[name] = {
                "median_s": t[0],
                "times": t[1],
                "robust_acc": robust.get(name),
                "ratio": t[0] / ours[0],
                "paired_ratios": paired,
                "median_paired_ratio": statistics.median(paired),
            }
        res["results"][key] = entry
        table.append((key, ours_name, ours[0], robust[ours_name], others, robust))

    if "pgd" not in args.skip:
        for steps in (10, 100):
            atk = create_attack(f"pgd(steps={steps})", batch_size=bs)
            low = create_attack(f"pgd(steps={steps},precision=bf16)", batch_size=bs)
            t = timed(
                {
                    "robench": lambda: robench_run(model, x, y, bs, device, atk, [eps]),
                    "torchattacks": lambda: torchattacks_pgd(model, x, y, bs, device, eps.value, steps),
                    "foolbox": lambda: foolbox_pgd(model, x, y, bs, device, [eps.value], steps),
                },
                device,
                args.repeats,
            )
            ours, ta, fb_ = t["robench"], t["torchattacks"], t["foolbox"]
            # bf16 is timed on its own: interleaved with them it slowed the fp32 runs of this process by up
            # to 30% (cause not found), which a user running one precision never sees
            bf = timed({"bf16": lambda: robench_run(model, x, y, bs, device, low, [eps])}, device, args.repeats)["bf16"]
            robust = {
                "robench": 100 * ours[2][eps.text].float().mean().item(),
                "robench-bf16": 100 * bf[2][eps.text].float().mean().item(),
                "torchattacks": 100 * ta[2].float().mean().item(),
                "foolbox": 100 * fb_[2][eps.value].float().mean().item(),
            }
            record(
                f"pgd-{steps}",
                "robench",
                ours[:2],
                {"robench-bf16": bf[:2], "torchattacks": ta[:2], "foolbox": fb_[:2]},
                robust,
            )
    if "sweep" not in args.skip:
        values = [eps.value * f for f in (0.25, 0.5, 1.0, 1.5, 2.0)]
        sweep = [parse_eps(f"{v:.6g}") for v in values]
        atk = create_attack("pgd(steps=20)", batch_size=bs)
        t = timed(
            {
                "robench": lambda: robench_run(model, x, y, bs, device, atk, sweep),
                "foolbox": lambda: foolbox_pgd(model, x, y, bs, device, [e.value for e in sweep], 20),
            },
            device,
            args.repeats,
        )
        ours, fb_ = t["robench"], t["foolbox"]
        robust = {
            "robench": [100 * ours[2][e.text].float().mean().item() for e in sweep],
            "foolbox": [100 * fb_[2][e.value].float().mean().item() for e in sweep],
        }
        record("eps-sweep-5 (pgd 20 steps)", "robench", ours[:2], {"foolbox": fb_[:2]}, robust)
    if "autoattack" not in args.skip:
        m = min(args.aa_n or bs, n)
        xa, ya = x[:m], y[:m]
        atk = create_attack("autoattack", batch_size=bs)
        t = timed(
            {
                "robench": lambda: robench_run(model, xa, ya, bs, device, atk, [eps]),
                "pyautoattack": lambda: direct_autoattack(model, xa, ya, bs, device, eps.value),
            },
            device,
            args.aa_repeats,
            warm_up=False,
        )
        ours, direct = t["robench"], t["pyautoattack"]
        same = bool(torch.equal(ours[2][eps.text], direct[2]))
        robust = {
            "robench": 100 * ours[2][eps.text].float().mean().item(),
            "pyautoattack": 100 * direct[2].float().mean().item(),
        }
        record(f"autoattack-standard (n={m})", "robench", ours[:2], {"pyautoattack": direct[:2]}, robust)
        res["results"][f"autoattack-standard (n={m})"]["identical_outcomes"] = same
    if "fast" not in args.skip:
        # robench's fast (APGD-CE, then APGD-T on MALT's targets) against official AutoAttack run through
        # robench: same model, examples and batch; the per-example outcomes compared both ways
        m = min(args.aa_n or bs, n)
        xa, ya = x[:m], y[:m]
        specs = args.fast or ["fast"]
        atks = {
            "autoattack": create_attack("autoattack", batch_size=bs),
            **{spec: create_attack(spec, batch_size=bs) for spec in specs},
        }
        t = timed(
            {k: (lambda a=a: robench_run(model, xa, ya, bs, device, a, [eps])) for k, a in atks.items()},
            device,
            args.aa_repeats,
            warm_up=False,
        )
        aa = t["autoattack"]
        r_aa = aa[2][eps.text]
        for spec in specs:
            ours = t[spec]
            r_fast = ours[2][eps.text]
            key = f"{spec}-vs-autoattack (n={m})" if spec != "fast" else f"fast-vs-autoattack (n={m})"
            record(
                key,
                spec,
                ours[:2],
                {"autoattack": aa[:2]},
                {spec: 100 * r_fast.float().mean().item(), "autoattack": 100 * r_aa.float().mean().item()},
            )
            res["results"][key]["autoattack_breaks_fast_not"] = (~r_aa & r_fast).nonzero()[:, 0].tolist()
            res["results"][key]["fast_breaks_autoattack_not"] = int((r_aa & ~r_fast).sum())
    if "cycles" not in args.skip:
        # PGD with a fixed step at 1,000 steps, with and without cycle detection: identical outcomes
        m = min(args.aa_n or bs, n)
        runs = {
            c: create_attack(f"pgd(steps=1000,step_size={eps.value / 4!r},cycles={c})", batch_size=bs)
            for c in (True, False)
        }
        t = timed(
            {
                f"cycles={c}": (lambda a=a: robench_run(model, x[:m], y[:m], bs, device, a, [eps]))
                for c, a in runs.items()
            },
            device,
            1,
        )
        on, off = t["cycles=True"], t["cycles=False"]
        key = f"pgd-1000-fixed-step-cycles (n={m})"
        record(
            key,
            "cycles=True",
            on[:2],
            {"cycles=False": off[:2]},
            {
                "cycles=True": 100 * on[2][eps.text].float().mean().item(),
                "cycles=False": 100 * off[2][eps.text].float().mean().item(),
            },
        )
        res["results"][key]["identical_outcomes"] = bool(torch.equal(on[2][eps.text], off[2][eps.text]))
    if "scaling" not in args.skip:
        rows = []
        for n_s, steps in ((n // 4, 20), (n // 2, 20), (n, 20), (n, 10), (n, 40)):
            atk = create_attack(f"pgd(steps={steps})", batch_size=bs)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = timed({"robench": lambda: robench_run(model, x[:n_s], y[:n_s], bs, device, atk, [eps])}, device, 1)
            rows.append({"n": n_s, "steps": steps, "seconds": t["robench"][0], "peak_mib": peak_memory(device)})
        res["scaling"] = rows
    if device.type == "cuda":
        per_step = step_flops(model, x, device)
        t = res["results"].get("pgd-100", {}).get("torchattacks", {}).get("median_s")
        rates = {"bf16": matmul_rate(device, torch.bfloat16), "tf32": None}
        torch.backends.cuda.matmul.allow_tf32 = True
        rates["tf32"] = matmul_rate(device, torch.float32)
        torch.backends.cuda.matmul.allow_tf32 = False
        work = per_step * n * 100  # every example, every step: the torchattacks schedule
        ours_t = res["results"].get("pgd-100", {}).get("ours", {}).get("median_s")
        res["roofline"] = {
            "flops_per_example_step": per_step,
            "bf16_matmul_tflops": rates["bf16"] / 1e12,
            "tf32_matmul_tflops": rates["tf32"] / 1e12,
            "torchattacks_tflops": work / t / 1e12 if t else None,
            "robench_effective_tflops": work / ours_t / 1e12 if ours_t else None,
        }
    stem = args.checkpoint.name.split(".")[0] if args.checkpoint else args.model
    out = args.out or ROOT / "benchmarks" / "results" / f"{device.type}-{stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(
        f"{res['device']} ({res['threads']} threads), {args.model} on {data}, batch {bs}, eps {eps.text}, "
        f"medians of {args.repeats} rounds ({args.aa_repeats} for AutoAttack)"
    )
    print(f"{'work':34} {'ours s':>8} {'robust %':>9}  others: time s, robust %, ratio (their time / ours)")
    for key, _, t, r, others, robust in table:
        r_txt = "/".join(f"{v:.1f}" for v in r) if isinstance(r, list) else f"{r:.1f}"
        parts = []
        for name, (tt, _) in others.items():
            rr = robust.get(name)
            rr = "/".join(f"{v:.1f}" for v in rr) if isinstance(rr, list) else f"{rr:.1f}"
            paired = res["results"][key][name]["paired_ratios"]
            parts.append(f"{name} {tt:.2f} s {rr}% x{tt / t:.2f} (rounds x{min(paired):.2f}-{max(paired):.2f})")
        print(f"{key:34} {t:8.2f} {r_txt:>9}  " + "; ".join(parts))
    for k, v in res["results"].items():
        if "identical_outcomes" in v:
            other = next(name for name in v if name not in ("ours", "identical_outcomes"))
            print(f"{k}: per-example outcomes identical to {other}: {v['identical_outcomes']}")
        if "autoattack_breaks_fast_not" in v:
            print(
                f"{k}: AutoAttack breaks and fast does not: {v['autoattack_breaks_fast_not'] or 'none'}; "
                f"fast breaks and AutoAttack does not: {v['fast_breaks_autoattack_not']}"
            )
    for row in res.get("scaling", []):
        print(
            f"scaling: n={row['n']:5d} steps={row['steps']:3d}  {row['seconds']:.2f} s  peak {row['peak_mib']:.0f} MiB"
        )
    if "roofline" in res:
        r = res["roofline"]
        print(
            f"roofline: {r['flops_per_example_step'] / 1e9:.2f} GFLOP per example-step; bf16 matmul "
            f"{r['bf16_matmul_tflops']:.0f} TFLOP/s, tf32 {r['tf32_matmul_tflops']:.0f}; robench effective "
            f"{r['robench_effective_tflops']:.1f} TFLOP/s"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
