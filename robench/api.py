"""The Python API that the CLI and users call. Works and returns data; never prints."""
from __future__ import annotations

import json
from pathlib import Path

from .checkpoints import Checkpoint, checkpoint_info, load_checkpoint
from .nn.activations import describe_activations
from .nn.architectures import describe_architectures


def models() -> list[dict]:
    """Registered architectures: name, description, the inputs they were designed for."""
    return describe_architectures()


def activations() -> list[dict]:
    """Registered activations: name, formula, learned parameters, options, default sharing."""
    return describe_activations()


def info(path: str | Path, trust: bool = False, **overrides) -> dict:
    """Metadata, parameter count and learned activation parameters of a checkpoint."""
    return checkpoint_info(load_checkpoint(path, trust=trust, **overrides))


def load(path: str | Path, trust: bool = False, **overrides) -> Checkpoint:
    return load_checkpoint(path, trust=trust, **overrides)


def evaluate(checkpoints, *, config: str | Path | None = None, **options):
    """White-box evaluation; returns a DataFrame (one row per model x eps), per-example outcomes in
    ``df.attrs["outcomes"]``. ``config`` names a TOML suite whose keys fill in what is not given."""
    from .config import EvalConfig, load_suite
    from .engine.evaluate import evaluate as run

    progress = options.pop("progress", None)
    settings = {**(load_suite(config) if config else {}), **{k: v for k, v in options.items() if v is not None}}
    valid = set(EvalConfig.__dataclass_fields__)
    for key in settings:
        if key not in valid:
            from .errors import unknown

            raise unknown("evaluation option", key, valid)
    cfg = EvalConfig(**settings)
    if cfg.out:
        _check_table_path(cfg.out)
    if checkpoints:
        from torch import nn

        single = isinstance(checkpoints, (str, Path, nn.Module))
        cfg.checkpoints = [checkpoints] if single else list(checkpoints)
    pgd = {"steps": cfg.pgd_steps, "restarts": cfg.pgd_restarts, "loss": cfg.pgd_loss}
    if cfg.pgd_step_size is not None:
        from .config import parse_eps

        pgd["step_size"] = parse_eps(cfg.pgd_step_size).value
    df = run(cfg.checkpoints, dataset=cfg.dataset, data_dir=cfg.data_dir, split=cfg.split, n=cfg.n,
               subset=cfg.subset, seed=cfg.seed, norm=cfg.norm, eps=cfg.eps, attacks=cfg.attacks, pgd=pgd,
               batch_size=cfg.batch_size, device=cfg.device, store=cfg.store, force=cfg.force,
               trust=cfg.trust_checkpoint, arch=cfg.arch, activation=cfg.activation,
               progress=progress)
    if cfg.out:
        write_table(df, cfg.out)
    return df


def train(out: str | Path | None = None, *, overwrite: bool = False, progress=None, **options) -> Checkpoint:
    """Train one network (options are TrainConfig's fields) and save it to ``out`` (.pt or .safetensors)
    with the whole recipe in its metadata. An existing ``out`` is kept unless ``overwrite``."""
    from .checkpoints import save_checkpoint, sha256_file
    from .config import TrainConfig, check_keys
    from .errors import RobenchError
    from .training.train import check, fit

    cfg = check(TrainConfig(**check_keys(options, TrainConfig, "train")))
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


def build_zoo(zoo: str | Path, folder: str | Path | None = None, *, overwrite: bool = False,
              only: list[str] | None = None, progress=None) -> list[dict]:
    """Train the members of a zoo file missing from ``folder`` (all with ``overwrite``), then rewrite the
    table in ``folder``/README.md. Returns one row per member (file, group, status)."""
    from .training.zoo import build_zoo as build

    folder = Path(folder) if folder else Path(zoo).parent
    rows = build(zoo, folder, overwrite=overwrite, only=only, progress=progress)
    write_zoo_readme(folder)
    return rows


ZOO_MARKERS = ("<!-- zoo table: written by robench train --zoo -->", "<!-- end zoo table -->")


def write_zoo_readme(folder: str | Path) -> Path:
    """Put the table of the checkpoints in ``folder`` (from their own metadata) into its README.md,
    between the zoo-table markers; the rest of the file is left as written."""
    from .checkpoints import atomic_path
    from .training.zoo import zoo_markdown, zoo_rows

    readme = Path(folder) / "README.md"
    table = f"{ZOO_MARKERS[0]}\n{zoo_markdown(zoo_rows(folder))}{ZOO_MARKERS[1]}"
    text = readme.read_text() if readme.exists() else "# Checkpoints\n\n"
    if ZOO_MARKERS[0] in text and ZOO_MARKERS[1] in text:
        head, rest = text.split(ZOO_MARKERS[0], 1)
        text = head + table + rest.split(ZOO_MARKERS[1], 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + table + "\n"
    with atomic_path(readme) as tmp:
        tmp.write_text(text)
    return readme


def leaderboard(store: str | Path | None = None, out: str | Path = "leaderboard") -> dict:
    """Write RobustBench-style leaderboards from the store into ``out``: <dataset>_<norm>.csv,
    model_info/<dataset>/<norm>/<model id>.json and README.md. Returns {"files": [...], "boards": {...}}."""
    from .checkpoints import atomic_path
    from .errors import RobenchError
    from .reporting.leaderboard import default_eps, leaderboards, markdown, model_info
    from .store import Store

    db = Store(store, readonly=True)
    try:
        boards = leaderboards(db)
    finally:
        db.close()
    if not boards:
        raise RobenchError(f"The store {db.path} holds no finished runs; run `robench eval` first.")
    out = Path(out)
    written = []

    def write(path: Path, text: str):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        written.append(path)

    for (dataset, norm), df in boards.items():
        write(out / f"{dataset}_{norm}.csv", df.to_csv(index=False, lineterminator="\n"))
        std = default_eps(dataset, norm)
        for mid, rows in df.groupby("model_id", sort=True):
            at_std = rows[rows.eps == std]
            row = (at_std if len(at_std) else rows).iloc[0]
            write(out / "model_info" / dataset / norm / f"{mid}.json",
                  json.dumps(model_info(row), indent=2, sort_keys=False, default=str) + "\n")
    report = "report.md" if (out / "report.md").exists() else None
    write(out / "README.md", markdown(boards, report))
    return {"files": written, "boards": boards}


def _check_table_path(path) -> Path:
    from .errors import RobenchError

    path = Path(path)
    if path.suffix not in (".csv", ".json"):
        raise RobenchError(f"--out must end in .csv or .json, not {path.name}.")
    return path


def write_table(df, path: str | Path) -> Path:
    """Write a results table as CSV or JSON, atomically (temp file + rename)."""
    from .checkpoints import atomic_path
    from .errors import RobenchError

    path = _check_table_path(path)
    try:
        with atomic_path(path) as tmp:
            if path.suffix == ".csv":
                df.to_csv(tmp, index=False)
            else:
                df.to_json(tmp, orient="records", indent=2)
    except OSError as e:
        raise RobenchError(f"Cannot write {path} ({e.strerror}).") from None
    return path
