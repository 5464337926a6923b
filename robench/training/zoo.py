"""The checkpoint zoo: groups of recipes that differ only in the activation, read from a TOML file, trained
member by member (a finished member is kept unless asked to overwrite), and described in a Markdown table."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..checkpoints import load_checkpoint, save_checkpoint
from ..config import TrainConfig, read_toml, validate_counts, validate_keys, validate_types
from ..errors import RobenchError
from ..files import atomic_path
from ..nn.activations import parse_activation
from .train import fit


@dataclass
class Member:
    group: str
    file: str
    config: TrainConfig


def member_file(cfg: TrainConfig, suffix: str = ".safetensors") -> str:
    """``<arch>-<activation>-<method>``; a training seed other than 0 makes ``seeds/<...>-seed<N>``, so the
    replicates sit apart from the seed-0 zoo that the leaderboard's globs pick up."""
    act = re.sub(r"[^a-z0-9]+", "-", str(parse_activation(cfg.activation)).lower()).strip("-")
    if cfg.seed:
        return f"seeds/{cfg.arch}-{act}-{cfg.method}-seed{cfg.seed}{suffix}"
    return f"{cfg.arch}-{act}-{cfg.method}{suffix}"


def read_zoo(path: str | Path) -> list[Member]:
    """Every member of every ``[[group]]``: the group's recipe keys with one of its ``activations`` and,
    where the group lists ``seeds``, one of them (seeds vary slowest, so each seed's members come together)."""
    data = read_toml(path)
    groups = data.get("group")
    if not isinstance(groups, list) or not groups:
        raise RobenchError(f"{path} has no [[group]] tables; each holds a recipe and a list of activations.")
    members = []
    for i, group in enumerate(groups, 1):
        group = dict(group)
        name = str(group.pop("name", f"group {i}"))
        acts = group.pop("activations", None)
        if not isinstance(acts, list) or not acts:
            raise RobenchError(f'{path}: group "{name}" needs a non-empty list of activations.')
        seeds = group.pop("seeds", None)
        if seeds is not None and (
            "seed" in group
            or not isinstance(seeds, list)
            or not seeds
            or not all(type(s) is int and 0 <= s < 2**31 for s in seeds)
            or len(set(seeds)) != len(seeds)
        ):
            raise RobenchError(
                f'{path}: group "{name}" needs either one seed or a list of distinct '
                "whole-number seeds between 0 and 2**31 - 1."
            )
        recipe = validate_keys(group, TrainConfig, f'{path} group "{name}"')
        validate_types(recipe, TrainConfig, f'{path} group "{name}"', skip=("eps", "step_size"))
        validate_counts(recipe, f'{path} group "{name}"')
        for seed in seeds or [recipe.get("seed", TrainConfig.seed)]:
            for act in acts:
                cfg = TrainConfig(**{**recipe, "seed": seed, "activation": act})
                members.append(Member(name, member_file(cfg), cfg))
    return members


def build_zoo(
    path: str | Path,
    folder: str | Path | None = None,
    overwrite: bool = False,
    only: list[str] | None = None,
    progress: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train every member missing from ``folder`` (all of them with ``overwrite``); ``only`` picks
    members by file name or group. Returns one row per member: file, group, status."""
    path = Path(path)
    folder = Path(folder) if folder else path.parent
    emit = progress or (lambda event: None)
    rows = []
    for m in read_zoo(path):
        if only and m.file not in only and m.group not in only:
            continue
        target = folder / m.file
        if target.exists() and not overwrite:
            rows.append({"file": m.file, "group": m.group, "status": "kept"})
            continue
        emit({"event": "member", "file": m.file, "group": m.group})
        model, meta = fit(replace(m.config, name=target.stem), progress)
        save_checkpoint(model, target, {**meta, "zoo_group": m.group})
        rows.append({"file": m.file, "group": m.group, "status": "trained"})
    return rows


def zoo_rows(folder: str | Path) -> list[dict]:
    """One row per robench checkpoint in ``folder``, from its own metadata."""
    rows = []
    for f in sorted(Path(folder).glob("*.safetensors")) + sorted(Path(folder).glob("*.pt")):
        ck = load_checkpoint(f)
        meta, recipe, val = ck.meta, ck.meta.get("recipe", {}), ck.meta.get("validation", {})
        rows.append(
            {
                "file": f.name,
                "group": meta.get("zoo_group", ""),
                "arch": meta["arch"],
                "activation": meta["activation"],
                "method": meta.get("training_method", ""),
                "eps": recipe.get("eps", "-"),
                "epochs": recipe.get("epochs", ""),
                "val_clean": val.get("clean_acc"),
                "val_pgd": val.get("pgd", {}).get("acc"),
                "params": sum(p.numel() for p in ck.model.parameters()),
                "size_kb": round(f.stat().st_size / 1024),
                "train_s": recipe.get("trained", {}).get("seconds"),
                "sha256": ck.sha256[:12],
            }
        )
    return sorted(rows, key=lambda r: (r["group"], r["file"]))


def zoo_markdown(rows: list[dict]) -> str:
    head = (
        "| file | arch | activation | method | eps | epochs | val clean % | val PGD % | params | size KB "
        "| train s |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "".join(
        f"| {r['file']} | {r['arch']} | {r['activation']} | {r['method']} | {r['eps']} | {r['epochs']} | "
        f"{r['val_clean']:.2f} | {r['val_pgd']:.2f} | {r['params']:,} | {r['size_kb']} | {r['train_s']} |\n"
        for r in rows
    )


ZOO_MARKERS = ("<!-- zoo table: written by robench train --zoo -->", "<!-- end zoo table -->")


def write_zoo_readme(folder: str | Path) -> Path:
    """Put the table of the checkpoints in ``folder`` (from their own metadata) into its README.md,
    between the zoo-table markers; the rest of the file is left as written."""
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
