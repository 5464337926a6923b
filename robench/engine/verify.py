"""`robench verify`: re-compute a random sample of stored runs' batches and compare them example by example.

A run's batches are its examples in order, ``batch_size`` at a time, as `robench eval` attacked them; every
attack is seeded by the run's seed and the examples' indices, so the same checkpoint, data, budget and
versions give the same outcomes. A batch that comes out otherwise is a mismatch: the run was not computed
as it says (a forged or damaged record, another robench or torch version, or a nondeterministic model).
Runs whose checkpoint or data are not here are skipped with the reason. A transfer run's batch is crafted
again on its source models, in the same batch, and scored on the target."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import torch

from .._version import __version__
from ..attacks.registry import TRANSFER, create_attack, create_transfer_attack, spec_from_budget
from ..attacks.transfer import Ensemble
from ..checkpoints import load_checkpoint
from ..config import EvalConfig
from ..errors import RobenchError
from .batching import resolve_device
from .core import as_target, attack_batch, attack_mode, data_slice, run_key
from .transfer import score_batch


def _batches(rows: list[tuple], size: int) -> list[list[int]]:
    idx = sorted({r[1] for r in rows})
    return [idx[i : i + size] for i in range(0, len(idx), size)]


def _why_not(rec: dict) -> str | None:
    if not rec.get("finished", True):
        return "unfinished"
    if any(b.get("name") == "transfer" for b in rec["attacks"]) and (
        len(rec["attacks"]) > 1 or not all(s.get("checkpoint") for s in rec["attacks"][0]["sources"])
    ):
        return "a transfer run whose sources name no checkpoint file"
    if not rec.get("checkpoint"):
        return "it names no checkpoint file"
    return None


def verify_runs(
    records: list[tuple[dict, list[tuple]]],
    sample: float = 0.1,
    seed: int = 0,
    device: str = "auto",
    data_dir: str | None = None,
    trust: bool = False,
    only: list[str] | None = None,
    progress: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Re-compute ``sample`` (a fraction, at least one batch) of the batches of ``records`` ((run record,
    outcome rows) as an archive holds them), chosen at random with ``seed`` among the runs that can be
    re-computed (with ``only``, among the runs whose key starts with, or whose model is, one of its
    entries). One dict per run: key, model, attacks, batches, rerun, examples (compared), mismatches
    [(eps, idx, stored (clean, robust), now (clean, robust))], seconds (re-computing), note (why a run was
    skipped or how its record differs from what re-computing it gives)."""
    if not 0 < sample <= 1:
        raise RobenchError("--sample must be a fraction above 0 and at most 1, such as 0.05.")
    notify = progress or (lambda event: None)
    report, units = [], []
    for k, (rec, rows) in enumerate(records):
        batches = _batches(rows, int(rec["batch_size"]))
        why = _why_not(rec)
        if only and not any(rec["key"].startswith(o) or rec["model"] == o for o in only):
            why = why or "not selected"
        report.append(
            {
                "key": rec["key"],
                "model": rec["model"],
                "attacks": "+".join(b["name"] for b in rec["attacks"]) or "none",
                "batches": len(batches),
                "rerun": 0,
                "examples": 0,
                "seconds": 0.0,
                "mismatches": [],
                "note": why or "",
            }
        )
        if why is None:
            units += [(k, b) for b in batches]
    if not units:
        raise RobenchError(
            "None of these runs can be re-computed here (unfinished runs, no checkpoint named, or "
            "none selected); nothing was verified."
        )
    rng = random.Random(seed)
    chosen: dict[int, list[list[int]]] = {}
    for k, b in sorted(rng.sample(units, max(1, round(sample * len(units))))):
        chosen.setdefault(k, []).append(b)
    dev = resolve_device(device)
    splits: dict = {}  # each dataset split read once for all runs
    for done, (k, batches) in enumerate(sorted(chosen.items())):
        rec, rows = records[k]
        entry = report[k]
        notify(
            {"event": "verify", "model": rec["model"], "run": done + 1, "runs": len(chosen), "batches": len(batches)}
        )
        try:
            _rerun(rec, rows, batches, entry, dev, data_dir, trust, splits)
        except RobenchError as e:
            entry["note"] = f"not re-computed: {str(e).rstrip('.')}"
    return report


def _loaded(path: str, sha256: str, trust: bool):
    ck = load_checkpoint(path, trust=trust)
    if ck.sha256 != sha256:
        raise RobenchError(f"{path} here is not the checkpoint the run evaluated (another sha256)")
    return as_target(ck, 0, trust, {})


def _rerun(
    rec: dict, rows: list[tuple], batches: list[list[int]], entry: dict, dev, data_dir, trust, splits: dict
) -> None:
    t = _loaded(rec["checkpoint"], rec["sha256"], trust)
    cfg = EvalConfig(
        dataset=rec["dataset"],
        data_dir=data_dir,
        split=rec["split"],
        n=int(rec["n"]),
        subset=rec["subset"],
        seed=int(rec["seed"]),
        norm=rec["norm"],
        eps=[text for text, _ in rec["eps"]],
        batch_size=int(rec["batch_size"]),
    )
    sl = data_slice(t, cfg, splits, cfg.eps_values())
    if sl.data_sha256 != rec["data_sha256"]:
        raise RobenchError(f"the {rec['dataset']} {rec['split']} examples here are not the ones the run read")
    bs, norm, seed = int(rec["batch_size"]), rec["norm"], int(rec["seed"])
    if rec["attacks"] and rec["attacks"][0]["name"] == "transfer":
        budget = rec["attacks"][0]
        sources = [_loaded(src["checkpoint"], src["sha256"], trust) for src in budget["sources"]]
        surrogate = Ensemble([m.model for m in sources]) if len(sources) > 1 else sources[0].model
        attack = create_transfer_attack(TRANSFER.spec(budget["attack"]))
        budgets = [
            {
                "name": "transfer",
                "attack": attack.budget(),
                "ensemble": len(sources) > 1,
                "sources": [{"model": m.name, "sha256": m.sha256, "checkpoint": m.checkpoint} for m in sources],
            }
        ]
        label = " + ".join(m.name for m in sources)

        def batch(model, x, y, idx):
            with attack_mode(surrogate.to(dev)) as crafted_on:
                adv = {e.text: attack.craft(crafted_on, x, y, idx, e.value, norm, seed) for e in sl.eps}
            return score_batch(model, x, y, idx, adv, sl.eps, norm, label)[0]
    else:
        atk = [create_attack(spec_from_budget(b), batch_size=bs) for b in rec["attacks"]]
        budgets = [a.budget() for a in atk]

        def batch(model, x, y, idx):
            return attack_batch(model, x, y, idx, sl.eps, atk, norm, seed)[0]

    if run_key(t, sl, cfg, budgets, bs) != rec["key"]:
        versions = (rec["robench_version"], rec["torch_version"]) != (__version__, torch.__version__)
        entry["note"] = (
            f"computed with robench {rec['robench_version']} and torch {rec['torch_version']} (here "
            f"{__version__} and {torch.__version__}): outcomes may differ by version"
            if versions
            else "its key does not match its own fields (the record was altered)"
        )
        if not versions:
            entry["mismatches"].append(("-", -1, "key", "fields"))
    stored = {(r[0], r[1]): (r[2], r[3]) for r in rows}
    model = t.model.to(dev)
    tic = time.perf_counter()
    with attack_mode(model) as attacked:
        for b in batches:
            idx = torch.tensor(b, dtype=torch.long)
            x, y = sl.data.batch(idx)
            for eps, i, clean, robust, _ in batch(attacked, x.to(dev), y.to(dev), idx):
                if stored.get((eps, i)) != (clean, robust):
                    entry["mismatches"].append((eps, i, stored.get((eps, i)), (clean, robust)))
            entry["rerun"] += 1
            entry["examples"] += len(b)
    entry["seconds"] = round(time.perf_counter() - tic, 3)
    model.to("cpu")
