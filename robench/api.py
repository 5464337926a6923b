"""The Python API that the CLI and users call. Works and returns data; never prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .config import CheckConfig, EvalConfig, SanityConfig, TrainConfig

# torch and everything built on it are imported where a function needs them, so that `import robench.api`
# (and `robench --help`) is fast
if TYPE_CHECKING:
    from .checkpoints import Checkpoint


def _options_of(cls, *, skip: tuple[str, ...] = ()):
    """Decorator: a function taking ``**options`` (the fields of the settings dataclass ``cls``, which it
    checks by name) shows them in its signature, with their defaults, for help() and editors."""
    import dataclasses
    import inspect

    def wrap(fn):
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
        names = {p.name for p in params}
        for f in dataclasses.fields(cls):
            if f.name in names or f.name in skip:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=f.type))
        fn.__signature__ = sig.replace(parameters=params)
        return fn

    return wrap


def models() -> list[dict]:
    """Registered architectures: name, description, the inputs they were designed for."""
    from .nn.architectures import describe_architectures

    return describe_architectures()


def activations() -> list[dict]:
    """Registered activations: name, formula, learned parameters, options, default sharing."""
    from .nn.activations import describe_activations

    return describe_activations()


def info(path: str | Path, trust: bool = False, store: str | Path | None = None, **overrides) -> dict:
    """Metadata, parameter count and learned activation parameters of a checkpoint, and under "runs" the
    finished runs of it in ``store`` (when the store exists) with their provenance: who computed each and
    whether it was computed in this store or imported (from which archive, when)."""
    from .checkpoints import checkpoint_info, load_checkpoint
    from .store import Store, store_path

    d = checkpoint_info(load_checkpoint(path, trust=trust, **overrides))
    d["runs"] = []
    if store_path(store).is_file():
        from .results.names import computed_by, origin_text

        with Store(store, readonly=True) as db:
            runs = db.runs()
            for r in runs[runs.sha256 == d["sha256"]].to_dict("records") if len(runs) else []:
                d["runs"].append(
                    {
                        "run_id": int(r["run_id"]),
                        "attacks": "+".join(a["name"] for a in json.loads(r["attacks"])) or "none",
                        "n": int(r["n"]),
                        "eps": ", ".join(e[0] for e in json.loads(r["eps"])),
                        "computed_by": computed_by(r),
                        "origin": origin_text(r.get("origin") or ""),
                    }
                )
    return d


def load(path: str | Path, trust: bool = False, **overrides) -> Checkpoint:
    from .checkpoints import load_checkpoint

    return load_checkpoint(path, trust=trust, **overrides)


def is_main() -> bool:
    """False in the torchrun processes other than rank 0, which work but print and write nothing."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # one process: no need to import torch to know it
        return True
    from .engine.distributed import is_main as main

    return main()


@_options_of(EvalConfig, skip=("checkpoints",))
def evaluate(checkpoints, *, config: str | Path | None = None, progress=None, **options):
    """White-box evaluation; returns a DataFrame (one row per model x run x eps), per-example outcomes in
    ``df.attrs["outcomes"]``.

    ``checkpoints``: a path, a glob, an ``nn.Module`` (inputs in [0, 1], logits out), a list of these, or a
    dict ``{"name": model or path}`` naming each in the results. ``eps`` and ``attacks`` take one value or a
    list (``eps="8/255"``, ``attacks=["pgd", "autoattack"]``). ``config`` names a TOML suite (one
    evaluation, or several ``[[run]]`` tables) whose keys fill in what is not given; ``jobs`` > 1 spreads
    checkpoint x run tasks over processes; ``progress`` is called with each progress event."""
    from .config import load_suite

    given = {k: v for k, v in options.items() if v is not None}
    runs = load_suite(config) if config else [{}]
    cfgs = [_eval_config({**run, **given}, checkpoints) for run in runs]  # typos end here, before torch loads
    from .engine.jobs import evaluate_many

    out = cfgs[0].out
    if out:
        from .reporting.publish import check_table_path

        check_table_path(out)
    df = evaluate_many(cfgs, jobs=max(int(c.jobs) for c in cfgs), progress=progress)
    if out and is_main():  # under torchrun, rank 0 alone holds the results
        write_table(df, out)
    return df


def _eval_config(settings: dict, checkpoints):
    from .config import EvalConfig

    if isinstance(checkpoints, dict):  # {"name": model or path}: the tables name each as the caller did
        from .engine.core import Named

        checkpoints = [Named(name, item) for name, item in checkpoints.items()]
    if checkpoints:  # given here, they replace a suite's; one item or a list, made a list once
        items = list(checkpoints) if isinstance(checkpoints, (list, tuple)) else [checkpoints]
    else:
        items = settings.get("checkpoints") or []
    return EvalConfig.validated({**settings, "checkpoints": _expand(list(items))})


def _expand(items: list) -> list:
    """Checkpoint paths with glob patterns (checkpoints/*.safetensors) expanded, sorted."""
    import glob

    from .errors import RobenchError

    out, patterns = [], []
    for item in items:
        if isinstance(item, (str, Path)) and any(c in str(item) for c in "*?["):
            patterns.append(str(item))
            out += sorted(glob.glob(str(item)))
        else:
            out.append(item)
    if patterns and not out:  # one pattern of several may match nothing yet (a folder still being filled)
        raise RobenchError(f"No checkpoint matches {' or '.join(patterns)}.")
    return out


@_options_of(EvalConfig, skip=("checkpoints", "attacks", "out"))
def transfer(
    sources=None,
    targets=None,
    *,
    all_checkpoints=None,
    attack: str = "mifgsm",
    ensemble: bool = False,
    steps: int | None = None,
    decay: float | None = None,
    resize_rate: float | None = None,
    diversity_prob: float | None = None,
    out: str | Path | None = None,
    progress=None,
    **options,
):
    """Black-box transfer: examples crafted on each source (or their ensemble) with ``attack`` (pgd, mifgsm,
    difgsm, with inline options), scored on every target; ``all_checkpoints`` makes every checkpoint a
    source and a target. ``options`` are evaluate's (dataset, n, eps, seed, store ...). Returns one row per
    source x target x eps; the outcomes are stored per example like any evaluation."""
    from .attacks.registry import create_transfer_attack
    from .engine.transfer import transfer as run
    from .errors import RobenchError

    if all_checkpoints and (sources or targets):
        raise RobenchError("Use either --all or --source/--target, not both.")

    atk = create_transfer_attack(
        attack, steps=steps, decay=decay, resize_rate=resize_rate, diversity_prob=diversity_prob
    )
    cfg = _eval_config({k: v for k, v in options.items() if v is not None}, None)
    if out:
        from .reporting.publish import check_table_path

        check_table_path(out)
    src = _expand(list(all_checkpoints or sources or []))
    df = run(
        src,
        _expand(list(targets or [])),
        cfg,
        attack=atk,
        ensemble=ensemble,
        all_pairs=bool(all_checkpoints),
        progress=progress,
    )
    if out:
        write_table(df, out)
    return df


@_options_of(SanityConfig)
@_options_of(EvalConfig, skip=("checkpoints", "out", "jobs", "n"))
def sanity(checkpoint, *, progress=None, **options) -> dict:
    """The full gradient-masking checklist on one checkpoint (``options`` are SanityConfig's: n,
    strong_steps, strong_restarts, square_queries, and evaluate's: dataset, eps, seed, store, pgd_steps ...;
    the largest eps is the one under test). The checks are stored with their evidence, together with the
    store's cross-run checks; returns {"model", "checks": DataFrame, "flagged"}."""
    from .config import SanityConfig
    from .engine.core import as_target
    from .engine.sanity import sanity as run_checks

    own = {k: options.pop(k) for k in list(options) if k in SanityConfig.__dataclass_fields__}
    checks = SanityConfig.validated(own)
    cfg = _eval_config({k: v for k, v in options.items() if v is not None} | {"n": checks.n}, None)
    t = as_target(checkpoint, 0, cfg.trust_checkpoint, cfg.overrides())
    return run_checks(t, cfg, checks.strong_steps, checks.strong_restarts, checks.square_queries, progress)


@_options_of(TrainConfig)
def train(out: str | Path | None = None, *, overwrite: bool = False, progress=None, **options) -> Checkpoint:
    """Train one network (options are TrainConfig's fields) and save it to ``out`` (.pt or .safetensors)
    with the whole recipe in its metadata. An existing ``out`` is kept unless ``overwrite``."""
    from .checkpoints import Checkpoint, save_checkpoint
    from .config import TrainConfig, validate_counts, validate_keys, validate_types
    from .errors import RobenchError
    from .files import sha256_file
    from .training.train import check, fit

    settings = validate_keys(options, TrainConfig, "train")
    validate_types(settings, TrainConfig, "train", skip=("data_dir", "eps", "step_size"))
    validate_counts(settings, "train")
    cfg = check(TrainConfig(**settings))
    path = Path(out) if out else None
    if path is not None:
        if path.suffix not in (".pt", ".safetensors"):
            raise RobenchError(f"--out must end in .pt or .safetensors, not {path.name}.")
        if path.exists() and not overwrite:
            raise RobenchError(f"{path} already exists; pass --overwrite to replace it.")
    model, meta = fit(cfg, progress)
    if path is None:
        return Checkpoint(model, meta, "")
    save_checkpoint(model, path, meta)
    return Checkpoint(model, meta, sha256_file(path), path)


def build_zoo(
    zoo: str | Path,
    folder: str | Path | None = None,
    *,
    overwrite: bool = False,
    only: list[str] | None = None,
    progress=None,
) -> list[dict]:
    """Train the members of a zoo file missing from ``folder`` (all with ``overwrite``), then rewrite the
    table in ``folder``/README.md. Returns one row per member (file, group, status)."""
    from .training.zoo import build_zoo as build
    from .training.zoo import write_zoo_readme

    folder = Path(folder) if folder else Path(zoo).parent
    rows = build(zoo, folder, overwrite=overwrite, only=only, progress=progress)
    write_zoo_readme(folder)
    return rows


def leaderboard(store: str | Path | None = None, out: str | Path = "leaderboard", report: bool = True) -> dict:
    """Write RobustBench-style leaderboards from the store into ``out``: <dataset>_<norm>.csv,
    model_info/<dataset>/<norm>/<model id>.json, README.md, (with ``report``) the activation comparison
    report.md with its PNG figures, and the web site: index.html, models/<dataset>/<norm>/<model id>.html,
    groups/<group>.html and static/. Returns {"files": [...], "boards": {...}, "index": Path}."""
    from .reporting.publish import write_leaderboard

    return write_leaderboard(store, Path(out), report)


def export_results(store: str | Path | None, out: str | Path, unfinished: bool = False) -> dict:
    """Write the store's finished runs, per-example outcomes and model checks to an archive (the form in
    which results are committed and shared): one .jsonl.gz file, or a folder with a file per run, which
    git stores once however often the results are exported again. With ``unfinished``, the runs not yet
    finished instead, with their stored batches, to resume elsewhere. Returns {"runs", "checks", "path",
    "written" (files written)}."""
    from .archive import export_results as export

    return export(store, out, unfinished)


def import_results(archive: str | Path, store: str | Path | None = None) -> dict:
    """Add an archive's runs (a file or a folder archive) to the store (finished runs already there are
    kept; an unfinished run replaces only one that got less far, and `evaluate` resumes it). Returns
    {"added", "kept", "checks", "unfinished" (of the added)}."""
    from .archive import import_results as load

    return load(archive, store)


@_options_of(CheckConfig)
def check(baseline: str | Path, checkpoints=None, *, progress=None, **options) -> dict:
    """Re-evaluate checkpoints (all of the baseline's, or the ones named) with the configuration the baseline
    CSV recorded and compare model by model (``options`` are CheckConfig's). Returns {"table": DataFrame,
    "failed": bool, "failures": ["model (metric)", ...], "models": {...}, "reran": [...]}; a checkpoint with
    a new sha256 is matched by its model id and reported as changed. The baseline's per-example outcomes are
    read from ``store`` when it holds them, else from the archive beside the CSV (paired test). The
    baseline's AutoAttack standard runs are re-run with robench's ``fast`` (about 5x quicker; per example it
    misses under one AutoAttack break in two thousand, about as many as AutoAttack run again with another
    seed, and finds four times as many AutoAttack misses: see docs/performance.md), or with the official
    code when ``autoattack="official"``. ``arch``, ``activation`` and ``dataset`` describe plain state
    dicts, as for `evaluate`."""
    from .config import CheckConfig
    from .engine.gate import run_check

    cfg = CheckConfig.validated(options)
    single = isinstance(checkpoints, (str, Path))
    return run_check(baseline, [checkpoints] if single else checkpoints, cfg, progress=progress)


def write_table(df, path: str | Path) -> Path:
    """Write a results table as CSV or JSON, atomically (temp file + rename)."""
    from .reporting.publish import write_table as write

    return write(df, path)


def verify(
    source: str | Path,
    sample: float = 0.1,
    seed: int = 0,
    device: str = "auto",
    data_dir: str | None = None,
    trust: bool = False,
    runs: list[str] | None = None,
    progress=None,
) -> dict:
    """Re-compute a random ``sample`` (a fraction) of the batches of the runs in an archive or a store and
    compare them example by example with what it records (``runs``: only the runs whose key starts with, or
    whose model is, one of these). Returns {"runs": [per run: key, model, attacks,
    batches, rerun, examples, mismatches, note], "mismatches": total}."""
    from .archive import read_runs
    from .engine.verify import verify_runs

    runs = verify_runs(
        read_runs(source),
        sample=sample,
        seed=seed,
        device=device,
        data_dir=data_dir,
        trust=trust,
        only=runs,
        progress=progress,
    )
    return {"runs": runs, "mismatches": sum(len(r["mismatches"]) for r in runs)}
