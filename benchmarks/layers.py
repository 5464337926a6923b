"""One attack step and one clean pass through robench.nn.accelerate's stand-ins, each kind's share measured.

    python benchmarks/layers.py [--checkpoint checkpoints/resnet20-splash-pgd-at.safetensors ...]
                                [--batch-size 256] [--repeats 5] [--skip FastSPLASH] [--out FILE]
                                [--attack fast --attack autoattack --attack-repeats 1]

For each checkpoint, on the first --batch-size Fashion-MNIST test images, three versions of the model:
PyTorch's own layers, `accelerate` without the stand-ins named by --skip (default: the SPLASH one), and
`accelerate` with every stand-in. Times, interleaved round by round (benchmarks/attacks.py's `timed`):
- a clean pass (no gradients: clean accuracy, re-checks, Square's queries);
- an attack step: forward, cross-entropy, gradient with respect to the input.
It checks that the three give the same logits bit for bit, and that the last two give the same input
gradient bit for bit when the skipped stand-ins claim that (SPLASH's does). With --attack, it also runs
each named attack through the engine (as `robench eval` does, at the checkpoint's training eps) on the
same batch with the last two versions, interleaved, and compares their per-example outcomes. Writes
benchmarks/results/<device>-layers.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attacks import timed  # noqa: E402

import robench  # noqa: E402
from robench.attacks.registry import create_attack  # noqa: E402
from robench.config import parse_eps  # noqa: E402
from robench.engine.core import attack_batch  # noqa: E402
from robench.nn import accelerate as stand_ins  # noqa: E402

DEFAULT = ["checkpoints/lenet5-splash-pgd-at.safetensors", "checkpoints/resnet20-splash-pgd-at.safetensors"]


def step(model, x, y):
    """One attack step's work: the logits and the loss's gradient with respect to the input."""
    x = x.clone().requires_grad_(True)
    z = model(x)
    (g,) = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), x)
    return z.detach(), g


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", action="append", help="repeat [default: the SPLASH LeNet5 and ResNet-20]")
    ap.add_argument("--batch-size", type=int, default=256, help="[default: 256, the engine's batch]")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--skip",
        action="append",
        help="a stand-in class of robench.nn.accelerate to time the model without [default: FastSPLASH]",
    )
    ap.add_argument("--attack", action="append", default=[], help="an attack spec to time through the engine")
    ap.add_argument("--attack-repeats", type=int, default=1, help="timed rounds of each --attack [default: 1]")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device("cpu")
    skip = tuple(getattr(stand_ins, name) for name in (args.skip or ["FastSPLASH"]))
    rows = []
    for path in args.checkpoint or DEFAULT:
        ck = robench.load_checkpoint(ROOT / path)
        model = ck.model.eval().requires_grad_(False)
        x, y = robench.load_split(ck.meta["dataset"]).batch(torch.arange(args.batch_size))
        versions = {
            "pytorch": model,
            "without": stand_ins.accelerate(model, device, skip),
            "all": stand_ins.accelerate(model, device),
        }
        with torch.no_grad():
            clean = timed({k: (lambda m=m: m(x)) for k, m in versions.items()}, device, args.repeats)
        steps = timed({k: (lambda m=m: step(m, x, y)) for k, m in versions.items()}, device, args.repeats)
        same_logits = all(
            torch.equal(clean[k][2], clean["pytorch"][2]) and torch.equal(steps[k][2][0], steps["pytorch"][2][0])
            for k in versions
        )
        same_grad = torch.equal(steps["all"][2][1], steps["without"][2][1])
        row = {
            "checkpoint": path,
            "batch": args.batch_size,
            "skipped": [c.__name__ for c in skip],
            "logits_identical": same_logits,
            "input_gradient_identical_to_without": same_grad,
        }
        for what, res in (("clean_ms", clean), ("step_ms", steps)):
            row[what] = {k: round(1000 * res[k][0], 1) for k in versions}
            row[what.replace("_ms", "_ratio_without_over_all")] = round(res["without"][0] / res["all"][0], 2)
            per_round = [a / b for a, b in zip(res["without"][1], res["all"][1])]
            row[what.replace("_ms", "_ratio_range")] = [round(min(per_round), 2), round(max(per_round), 2)]
        eps = [parse_eps(str(ck.meta["recipe"].get("eps", "0.1")))]
        for spec in args.attack:
            attack = create_attack(spec, batch_size=args.batch_size)
            idx = torch.arange(args.batch_size)
            res = timed(
                {
                    k: (
                        lambda m=versions[k]: torch.tensor(
                            [r[3] for r in attack_batch(m, x, y, idx, eps, [attack], "Linf", 0)[0]]
                        )
                    )
                    for k in ("without", "all")
                },
                device,
                args.attack_repeats,
                warm_up=False,
            )
            row.setdefault("attacks", {})[spec] = {
                "seconds": {k: round(res[k][0], 1) for k in res},
                "robust": int(res["all"][2].sum()),
                "ratio_without_over_all": round(res["without"][0] / res["all"][0], 2),
                "outcomes_identical": torch.equal(res["without"][2], res["all"][2]),
            }
            a = row["attacks"][spec]
            print(
                f"  {spec}: without {a['seconds']['without']} s, all {a['seconds']['all']} s "
                f"(x{a['ratio_without_over_all']}), {a['robust']} robust, "
                f"outcomes identical {a['outcomes_identical']}"
            )
        rows.append(row)
        print(
            f"{Path(path).stem:28s} batch {args.batch_size}: clean pass "
            + " / ".join(f"{k} {v:.1f} ms" for k, v in row["clean_ms"].items())
            + f" (x{row['clean_ratio_without_over_all']})"
            "; attack step "
            + " / ".join(f"{k} {v:.1f} ms" for k, v in row["step_ms"].items())
            + f" (x{row['step_ratio_without_over_all']}; rounds {row['step_ratio_range'][0]}-"
            f"{row['step_ratio_range'][1]}); logits identical {same_logits}, gradient identical {same_grad}"
        )
    out = args.out or ROOT / "benchmarks" / "results" / f"{device.type}-layers.json"
    out.write_text(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
