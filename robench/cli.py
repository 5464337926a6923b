"""The robench command line: parse, call robench.api, print with rich. No logic lives here.

Over the ~400-line guide on purpose: it is twelve thin commands whose typed options are the help screen's
text (what each flag takes, its default, its help); the options they share are written once as aliases
above them, and the tables they print live in ``cli_output``. Splitting the commands over modules would
spread one help screen's text over several files without moving any logic."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from typer.core import TyperGroup

from . import api
from ._version import __version__
from .cli_output import (
    WHERE,
    check_table,
    clean,
    err,
    esc,
    info_table,
    interrupted,
    leaderboard_tables,
    out,
    reran_lines,
    results_table,
    safe,
    track,
    transfer_tables,
    unpaired_warning,
    verify_table,
)
from .cli_progress import EvalProgress, TrainProgress
from .config import CheckConfig, EvalConfig, SanityConfig, TrainConfig, split_flags
from .errors import CLI, RobenchError
from .text import visible

# click's UsageError, reached through typer's public BadParameter (typer vendors click privately)
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class _Group(TyperGroup):
    """Turns a RobenchError into one plain sentence and exit code 2 (the traceback only with --debug)."""

    def invoke(self, ctx):
        token = CLI.set(True)  # messages name this command line's flags, not Python arguments
        try:
            return super().invoke(ctx)
        except RobenchError as e:
            if os.environ.get("ROBENCH_DEBUG"):
                raise
            err.print(f"Error: {visible(e)}", soft_wrap=True, markup=False)
            raise typer.Exit(2) from None
        except _UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError" or os.environ.get("ROBENCH_DEBUG"):
                raise
            command = f"robench {e.ctx.info_name} --help" if e.ctx and e.ctx.parent else "robench --help"
            text = " ".join(e.format_message().split()).rstrip(".")
            tail = f" See `{command}`." if text.endswith("?") else f"; see `{command}`."
            err.print(f"Error: {clean(text)}{tail}", soft_wrap=True, markup=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _interrupted()
        finally:
            CLI.reset(token)

    def make_context(self, *args, **kwargs):
        WHERE.clear()  # a new command (several run in one process under tests or a notebook)
        # Ctrl-C while the arguments are parsed: typer would end with exit code 130 and print nothing
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            _interrupted()


def _interrupted():
    """Ctrl-C (or SIGTERM/SIGHUP): one sentence saying where the run stopped, exit code 130."""
    if os.environ.get("ROBENCH_DEBUG"):
        raise
    err.print(interrupted(), soft_wrap=True, markup=False)
    raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Group,
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Adversarial-robustness benchmark for PyTorch checkpoints.",
)


def _version(value: bool):
    if value:
        out.print(f"robench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
):
    """Adversarial-robustness benchmark for PyTorch checkpoints."""
    if debug:
        os.environ["ROBENCH_DEBUG"] = "1"


# Options that several commands share, each written once (as sqlite-utils' shared option groups): the
# model options (every command that loads checkpoints takes all four: MODEL_OPTIONS), the data slice and the
# run settings. `_settings` turns them into robench.api's keywords.
def _default(name: str) -> str:
    """ "[default: X]" for an option whose default EvalConfig holds: written there once, shown here."""
    return f"[default: {EvalConfig.__dataclass_fields__[name].default}]"


Trust = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoint",
        help="Allow checkpoints that need arbitrary unpickling, and code that a file's own metadata names.",
    ),
]
ARCH_HELP = (
    "or your own class: path/to/file.py:Class or package.module:Class, with options as Class(width=8); "
    "robench imports it, which runs your code"
)
Arch = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="Architecture of a plain state dict (see `robench models`), " + ARCH_HELP + ": naming it here says "
        "the code is yours (a card or a baseline that names code is not imported unless you name it here).",
    ),
]
Activation = Annotated[
    str | None,
    typer.Option(
        "--activation",
        help="Activation spec of a plain state dict, e.g. splash:share=channel [default: read from your class's "
        "forward pass, else relu for robench's architectures].",
    ),
]
Dataset = Annotated[
    str | None, typer.Option("--dataset", help="Dataset the model takes and is tested on [default: the checkpoint's].")
]
MODEL_OPTIONS = ("--arch", "--activation", "--dataset", "--trust-checkpoint")
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Folder holding the dataset.")]
Examples = Annotated[
    int | None,
    typer.Option(
        "--n",
        "--examples",
        help=f"Number of test examples {_default('n')} (--examples under torchrun, whose own options take --n).",
    ),
]
Seed = Annotated[
    int | None,
    typer.Option("--seed", help=f"Seed for the subset, random starts, AutoAttack and Square {_default('seed')}."),
]
Norm = Annotated[str | None, typer.Option("--norm", help=f"Linf or L2 {_default('norm')}.")]
Sweep = Annotated[
    list[str] | None, typer.Option("--eps", metavar="EPS", help="Budget, e.g. 8/255; repeat for a sweep.")
]
BatchSize = Annotated[str | None, typer.Option("--batch-size", help=f"auto or a number {_default('batch_size')}.")]
Device = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
StorePath = Annotated[
    Path | None, typer.Option("--store", help="Results store [default: $ROBENCH_STORE or results/robench.sqlite].")
]
Table_ = Annotated[Path | None, typer.Option("--out", help="Also write the rows to FILE.csv or FILE.json.")]
Force = Annotated[bool, typer.Option("--force", help="Recompute runs that are already in the store.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress or table.")]
PgdSteps = Annotated[int | None, typer.Option("--pgd-steps", help=f"PGD steps {_default('pgd_steps')}.")]
PgdRestarts = Annotated[int | None, typer.Option("--pgd-restarts", help=f"PGD restarts {_default('pgd_restarts')}.")]


def _settings(trust: bool = False, force: bool = False, **given) -> dict:
    """The shared options as robench.api keywords: paths as strings, flags left unset unless given (so a
    suite file's value stands), the out file under its API name."""
    kw = {k: str(v) if isinstance(v, Path) else v for k, v in given.items()}
    if "out_file" in kw:
        kw["out"] = kw.pop("out_file")
    return dict(kw, trust_checkpoint=trust or None, force=force or None)


@app.command()
def models():
    """List the architectures robench can build."""
    t = Table("architecture", "description", "inputs")
    for m in api.models():
        t.add_row(m["name"], m["description"], m["input"])
    out.print(t)


@app.command()
def activations():
    """List the activation functions with formula, learned parameters and sharing."""
    t = Table("name", "formula", "learned", "options", "default share")
    for a in api.activations():
        name = a["name"] + (f" ({', '.join(a['aliases'])})" if a["aliases"] else "")
        opts = ", ".join(f"{k}={v}" for k, v in a["options"].items())
        t.add_row(name, a["formula"], ", ".join(a["learned"]) or "-", opts or "-", a["share"])
    out.print(t)
    out.print("Spec: name[:key=value,...], e.g. splash:hinges=7,share=channel; share is network, layer or channel.")


@app.command()
def info(
    checkpoint: Path = typer.Argument(..., help="Checkpoint file (.pt, .safetensors, .pt2)."),
    trust: Trust = False,
    arch: Arch = None,
    activation: Activation = None,
    dataset: Dataset = None,
    store: StorePath = None,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Show a checkpoint's metadata, parameter count, learned activation parameters and its runs in the store
    with their provenance."""
    d = api.info(
        checkpoint, trust=trust, store=str(store) if store else None, arch=arch, activation=activation, dataset=dataset
    )
    if as_json:
        out.print_json(json.dumps(d, default=str))
        return
    info_table(d)


@app.command("eval")
def eval_(
    checkpoints: list[Path] = typer.Argument(None, metavar="CHECKPOINT", help="Checkpoint files to evaluate."),
    dataset: Dataset = None,
    data_dir: DataDir = None,
    n: Examples = None,
    subset: str | None = typer.Option(
        None,
        "--subset",
        help="first (RobustBench's rule), random, or from:K "
        "(the n examples after the first K, to extend a run in chunks).",
    ),
    seed: Seed = None,
    norm: Norm = None,
    eps: Sweep = None,
    attack: list[str] | None = typer.Option(
        None,
        "--attack",
        metavar="SPEC",
        help="pgd, fgsm, apgd, fast, autoattack[:plus|:rand], apgd-ce ... square, fb:NAME(k=v); repeat for a cascade.",
    ),
    pgd_steps: PgdSteps = None,
    pgd_restarts: PgdRestarts = None,
    pgd_step_size: str | None = typer.Option(None, "--pgd-step-size", help="PGD step size [default: 2.5*eps/steps]."),
    pgd_loss: str | None = typer.Option(None, "--pgd-loss", help=f"ce, dlr or margin {_default('pgd_loss')}."),
    batch_size: BatchSize = None,
    device: Device = None,
    store: StorePath = None,
    out_file: Table_ = None,
    config: Path | None = typer.Option(
        None, "--config", help="TOML suite file with the same settings, or several [[run]] tables."
    ),
    jobs: int | None = typer.Option(
        None, "--jobs", help=f"Worker processes, each running whole checkpoint x run tasks {_default('jobs')}."
    ),
    force: Force = False,
    trust: Trust = False,
    arch: Arch = None,
    activation: Activation = None,
    quiet: Quiet = False,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON line per result row."),
):
    """Attack checkpoints white-box (PGD, AutoAttack, Foolbox) and report clean and robust accuracy."""
    opts = _settings(
        trust,
        force,
        dataset=dataset,
        data_dir=data_dir,
        n=n,
        subset=subset,
        seed=seed,
        norm=norm,
        eps=eps or None,
        attacks=attack or None,
        pgd_steps=pgd_steps,
        pgd_restarts=pgd_restarts,
        pgd_step_size=pgd_step_size,
        pgd_loss=pgd_loss,
        batch_size=batch_size,
        device=device,
        store=store,
        arch=arch,
        activation=activation,
        out_file=out_file,
        jobs=jobs,
    )
    ckpts = [str(c) for c in checkpoints] if checkpoints else None
    if not api.is_main():  # under torchrun, rank 0 prints; the others only work
        api.evaluate(ckpts, config=config, **opts)
        return
    if quiet or as_json:
        df = api.evaluate(ckpts, config=config, progress=track, **opts)
    else:
        with EvalProgress() as prog:
            df = api.evaluate(ckpts, config=config, progress=prog.update, **opts)
    if as_json:
        for row in df.to_dict(orient="records"):
            print(json.dumps(row, default=str))
    elif not quiet:
        out.print(results_table(df))
        if out_file:
            out.print(f"Wrote {out_file}")


@app.command()
def transfer(
    source: list[Path] | None = typer.Option(
        None, "--source", metavar="CHECKPOINT", help="Surrogate checkpoint; repeat."
    ),
    target: list[Path] | None = typer.Option(
        None, "--target", metavar="CHECKPOINT", help="Checkpoint to attack; repeat."
    ),
    all_: list[Path] | None = typer.Option(
        None, "--all", metavar="CHECKPOINT", help="Every one of these checkpoints as source and target; repeat."
    ),
    attack: str = typer.Option("mifgsm", "--attack", help="pgd, mifgsm or difgsm, with options as name(k=v)."),
    ensemble: bool = typer.Option(
        False,
        "--ensemble",
        help="One surrogate: the mean of the sources' logits (with --all: for each target, the others).",
    ),
    steps: int | None = typer.Option(None, "--steps", help="Attack steps [default: 10]."),
    decay: float | None = typer.Option(None, "--decay", help="Momentum decay [default: 1.0 for mifgsm, else 0]."),
    resize_rate: float | None = typer.Option(None, "--resize-rate", help="difgsm: resize factor [default: 0.9]."),
    diversity_prob: float | None = typer.Option(
        None, "--diversity-prob", help="difgsm: chance of the resize-and-pad at each step [default: 0.5]."
    ),
    eps: Sweep = None,
    dataset: Dataset = None,
    data_dir: DataDir = None,
    n: Examples = None,
    seed: Seed = None,
    norm: Norm = None,
    batch_size: BatchSize = None,
    device: Device = None,
    store: StorePath = None,
    out_file: Table_ = None,
    force: Force = False,
    trust: Trust = False,
    arch: Arch = None,
    activation: Activation = None,
    quiet: Quiet = False,
):
    """Black-box transfer: craft adversarial examples on surrogates, score them on targets (a source x target
    matrix; the diagonal is white-box)."""
    kw = _settings(
        trust,
        force,
        all_checkpoints=[str(c) for c in all_] if all_ else None,
        attack=attack,
        ensemble=ensemble,
        steps=steps,
        decay=decay,
        resize_rate=resize_rate,
        diversity_prob=diversity_prob,
        eps=eps or None,
        dataset=dataset,
        data_dir=data_dir,
        n=n,
        seed=seed,
        norm=norm,
        batch_size=batch_size,
        device=device,
        store=store,
        arch=arch,
        activation=activation,
        out_file=out_file,
    )
    srcs, tgts = [str(c) for c in source or []], [str(c) for c in target or []]
    if quiet:
        df = api.transfer(srcs, tgts, progress=track, **kw)
        return
    with EvalProgress() as prog:
        df = api.transfer(srcs, tgts, progress=prog.update, **kw)
    transfer_tables(df)
    flags = list(dict.fromkeys(f for row in df["flags"] for f in split_flags(row)))
    for i, f in enumerate(flags, 1):
        out.print(clean(f"[{i}] {f}"), markup=False)
    if out_file:
        out.print(f"Wrote {out_file}")


@app.command()
def sanity(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to check."),
    eps: str | None = typer.Option(None, "--eps", help="The budget under test [default: the dataset's]."),
    dataset: Dataset = None,
    data_dir: DataDir = None,
    n: int | None = typer.Option(SanityConfig.n, "--n", help="Number of test examples."),
    seed: Seed = None,
    norm: Norm = None,
    attack: str = typer.Option(
        "pgd", "--attack", help="The white-box attack under test: pgd (with --pgd-steps, --pgd-restarts) or fast."
    ),
    pgd_steps: PgdSteps = None,
    pgd_restarts: PgdRestarts = None,
    strong_steps: int | None = typer.Option(
        None, "--strong-steps", help="Steps (iterations for fast) of the stronger run [default: 5x those under test]."
    ),
    strong_restarts: int = typer.Option(
        SanityConfig.strong_restarts, "--strong-restarts", help="Restarts of the stronger PGD."
    ),
    square_queries: int = typer.Option(SanityConfig.square_queries, "--square-queries", help="Query budget of Square."),
    batch_size: BatchSize = None,
    device: Device = None,
    store: StorePath = None,
    trust: Trust = False,
    arch: Arch = None,
    activation: Activation = None,
):
    """Run the gradient-masking checklist (Carlini et al. 2019, AutoAttack's checks) on one checkpoint;
    exit 1 when a check flags it."""
    with EvalProgress() as prog:
        res = api.sanity(
            str(checkpoint),
            strong_steps=strong_steps,
            strong_restarts=strong_restarts,
            square_queries=square_queries,
            progress=prog.update,
            **_settings(
                trust,
                eps=[eps] if eps else None,
                dataset=dataset,
                data_dir=data_dir,
                n=n,
                seed=seed,
                norm=norm,
                attacks=[attack],
                pgd_steps=pgd_steps,
                pgd_restarts=pgd_restarts,
                batch_size=batch_size,
                device=device,
                store=store,
                arch=arch,
                activation=activation,
            ),
        )
    t = Table("check", "eps", "result", "evidence", title=f"Gradient-masking checks for {esc(res['model'])}")
    for r in res["checks"].itertuples():
        t.add_row(
            r.check, r.eps or "-", "[bold red]FLAG[/]" if r.status == "flag" else "[green]ok[/]", safe(r.evidence)
        )
    out.print(t)
    k = int((res["checks"].status == "flag").sum())
    if k:
        out.print(
            clean(f"{k} of {len(res['checks'])} checks flag {res['model']}: its robust accuracy may be overstated."),
            markup=False,
        )
        raise typer.Exit(1)
    out.print(f"All {len(res['checks'])} checks passed.")


@app.command()
def train(
    out_path: Path | None = typer.Option(
        None,
        "--out",
        help="Checkpoint to write (.safetensors or .pt); with --zoo, the folder [default: the zoo file's].",
    ),
    arch: str = typer.Option(
        TrainConfig.arch, "--arch", help="Architecture (see `robench models`), " + ARCH_HELP + "."
    ),
    activation: str = typer.Option(
        TrainConfig.activation, "--activation", help="Activation spec, e.g. splash or pssilu:share=layer."
    ),
    dataset: str = typer.Option(TrainConfig.dataset, "--dataset", help="Dataset (local files only)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder holding the dataset."),
    method: str = typer.Option(TrainConfig.method, "--method", help="standard, pgd-at, trades or fast-at."),
    norm: str = typer.Option(TrainConfig.norm, "--norm", help="Linf or L2 (adversarial methods)."),
    eps: str | None = typer.Option(
        None, "--eps", help="Training budget [default: the dataset's, 0.1 for Fashion-MNIST]."
    ),
    steps: int = typer.Option(TrainConfig.steps, "--steps", help="Attack steps of pgd-at and trades."),
    step_size: str | None = typer.Option(
        None, "--step-size", help="Attack step, e.g. 0.01 or 0.25*eps [default: 2.5*eps/steps; fast-at 1.25*eps]."
    ),
    trades_beta: float = typer.Option(TrainConfig.trades_beta, "--trades-beta", help="TRADES robustness weight."),
    epochs: int = typer.Option(TrainConfig.epochs, "--epochs"),
    batch_size: int = typer.Option(TrainConfig.batch_size, "--batch-size"),
    lr: float = typer.Option(TrainConfig.lr, "--lr", help="Peak learning rate (SGD)."),
    momentum: float = typer.Option(TrainConfig.momentum, "--momentum"),
    weight_decay: float = typer.Option(TrainConfig.weight_decay, "--weight-decay", help="On conv/linear weights only."),
    schedule: str = typer.Option(TrainConfig.schedule, "--schedule", help="cosine, step or constant."),
    augment: str = typer.Option(
        TrainConfig.augment, "--augment", help="none, crop, flip or crop,flip [default: the dataset's usual]."
    ),
    train_images: int | None = typer.Option(None, "--train-images", help="Train on the first N images only."),
    val_size: int = typer.Option(
        TrainConfig.val_size, "--val-size", help="Images held out from the end of the training split."
    ),
    seed: int = typer.Option(TrainConfig.seed, "--seed"),
    device: str = typer.Option(TrainConfig.device, "--device", help="auto, cpu, cuda, cuda:N or mps."),
    name: str | None = typer.Option(None, "--name", help="Model name stored in the checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing checkpoint."),
    zoo: Path | None = typer.Option(None, "--zoo", help="Train every member of a zoo TOML file instead."),
    only: list[str] | None = typer.Option(
        None, "--only", metavar="GROUP", help="With --zoo: only this group or file; repeat."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress."),
):
    """Train a network with any registered activation: standard, PGD-AT, TRADES or fast AT."""
    prog = None if quiet else TrainProgress()
    if zoo:
        rows = api.build_zoo(zoo, out_path, overwrite=overwrite, only=only, progress=prog and prog.update)
        t = Table("file", "group", "status")
        for r in rows:
            t.add_row(r["file"], r["group"], r["status"])
        out.print(t)
        return
    if out_path is None:
        raise RobenchError("Name the checkpoint to write with --out, e.g. --out checkpoints/lenet5-splash.safetensors.")
    ck = api.train(
        out_path,
        overwrite=overwrite,
        progress=prog and prog.update,
        arch=arch,
        activation=activation,
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        method=method,
        norm=norm,
        eps=eps,
        steps=steps,
        step_size=step_size,
        trades_beta=trades_beta,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        augment=augment,
        train_images=train_images,
        val_size=val_size,
        seed=seed,
        device=device,
        name=name,
    )
    val = ck.meta["validation"]
    out.print(
        f"Saved {ck.path} (sha256 {ck.sha256[:12]}): validation clean {val['clean_acc']:.2f}% (n={val['n']}), "
        f"PGD-{val['pgd']['budget']['steps']} {val['pgd']['acc']:.2f}% at {val['pgd']['norm']} eps "
        f"{val['pgd']['eps']} (n={val['pgd']['n']})"
    )


@app.command()
def leaderboard(
    store: StorePath = None,
    out_dir: Path = typer.Option(Path("leaderboard"), "--out", help="Folder to write."),
    open_: bool = typer.Option(False, "--open", help="Open the web leaderboard (index.html) in your browser."),
):
    """Write RobustBench-style leaderboards from the results store: CSV, model_info JSON, README.md, the
    activation report, and a static web site (index.html, one page per model) that works offline."""
    res = api.leaderboard(str(store) if store else None, out_dir)
    leaderboard_tables(res["boards"])
    out.print(f"Wrote {len(res['files'])} files to {out_dir}/; the web leaderboard is {res['index']}")
    if open_:
        import webbrowser

        if not webbrowser.open(res["index"].resolve().as_uri()):
            out.print(f"No web browser was found here; open {res['index']} in one.")


@app.command("export")
def export_(
    archive: Path = typer.Argument(
        ...,
        help="The archive to write: a .jsonl.gz file, or a folder with a "
        "file per run (to commit: unchanged runs keep their files).",
    ),
    store: StorePath = None,
    unfinished: bool = typer.Option(
        False,
        "--unfinished",
        help="Write the runs not yet finished instead, "
        "with the batches stored so far, so that `robench eval` resumes them in "
        "the store that imports the archive (a batch under way starts again there).",
    ),
):
    """Write the store's finished runs, with every per-example outcome, to a compressed archive to commit
    or share."""
    res = api.export_results(str(store) if store else None, archive, unfinished)
    changed = f" ({res['written']} files written)" if Path(res["path"]).is_dir() else ""
    what = ("unfinished run" if unfinished else "run") + ("" if res["runs"] == 1 else "s")
    out.print(
        clean(
            f"Wrote {res['runs']} {what}, {res['checks']} model checks and {res['models']} model "
            f"record{'' if res['models'] == 1 else 's'} to {res['path']}{changed}"
        ),
        markup=False,
    )


@app.command("import")
def import_(
    archive: Path = typer.Argument(..., help="An archive written by `robench export` (a file or a folder)."),
    store: StorePath = None,
):
    """Add the runs of an archive to the store; runs the store already finished are kept as they are."""
    res = api.import_results(archive, str(store) if store else None)
    out.print(
        f"Imported {res['added']} run{'' if res['added'] == 1 else 's'} ({res['kept']} already in the store) "
        f"and {res['checks']} model checks."
    )
    if res["added"] > res["unfinished"]:
        out.print(
            clean(
                f"They are recorded as imported from {archive.name}; `robench verify {archive}` re-computes "
                "a sample of their batches."
            ),
            markup=False,
        )
    if res["unfinished"]:
        k = res["unfinished"]
        out.print(
            f"{k} of the runs imported {'is' if k == 1 else 'are'} unfinished: `robench eval` with the same "
            "checkpoints and settings resumes " + ("it." if k == 1 else "them.")
        )


@app.command()
def verify(
    source: Path = typer.Argument(
        ..., help="An archive written by `robench export` (a file or a folder) or a results store (.sqlite)."
    ),
    sample: float = typer.Option(
        0.1, "--sample", help="Fraction of the batches to re-compute, chosen at random (at least one)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random choice of batches."),
    runs: list[str] | None = typer.Option(
        None,
        "--run",
        metavar="KEY|MODEL",
        help="Only this run (the start of its key) or this model's runs; repeat for several.",
    ),
    device: Device = None,
    data_dir: DataDir = None,
    trust: Trust = False,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Re-compute a random sample of the batches of an archive's or a store's runs and compare them example by
    example; exit 1 on any mismatch."""
    res = api.verify(
        source,
        sample=sample,
        seed=seed,
        device=device or "auto",
        data_dir=str(data_dir) if data_dir else None,
        trust=trust,
        runs=runs,
        progress=lambda ev: err.print(
            clean(
                f"Re-computing {ev['batches']} batch"
                f"{'es' if ev['batches'] != 1 else ''} of {ev['model']} "
                f"(run {ev['run']} of {ev['runs']})"
            ),
            markup=False,
        ),
    )
    if as_json:
        out.print_json(json.dumps(res, default=str))
    else:
        out.print(verify_table(res["runs"]))
        for r in res["runs"]:
            for eps, i, was, now in r["mismatches"][:20]:
                out.print(
                    clean(
                        f"Mismatch in run {r['key'][:16]} ({r['model']}): "
                        + (
                            "its key does not match its own fields."
                            if i < 0
                            else f"example {i} at eps {eps}: stored clean {was[0]} robust {was[1]}, re-computed clean {now[0]} "
                            f"robust {now[1]}."
                            if was
                            else f"example {i} at eps {eps} is not in the record."
                        )
                    ),
                    markup=False,
                )
    checked = [r for r in res["runs"] if r["rerun"]]
    if res["mismatches"]:
        out.print(
            f"{res['mismatches']} mismatch{'es' if res['mismatches'] != 1 else ''} in "
            f"{sum(bool(r['mismatches']) for r in res['runs'])} of {len(checked)} runs re-computed."
        )
        raise typer.Exit(1)
    batches = sum(r["rerun"] for r in checked)
    out.print(
        f"Verified: {sum(r['examples'] for r in checked)} examples in {batches} batch{'es' * (batches != 1)} "
        f"of {len(checked)} run{'s' * (len(checked) != 1)} match what the "
        f"{'store' if source.suffix == '.sqlite' else 'archive'} records."
    )


@app.command()
def check(
    checkpoints: list[Path] = typer.Argument(
        None, metavar="CHECKPOINT", help="Checkpoints to check [default: every one the baseline names]."
    ),
    baseline: Path = typer.Option(..., "--baseline", help="A leaderboard CSV written by `robench leaderboard`."),
    tolerance: float = typer.Option(CheckConfig.tolerance, "--tolerance", help="Largest drop in points that passes."),
    alpha: float = typer.Option(CheckConfig.alpha, "--alpha", help="Significance level a drop must reach to fail."),
    store: Path | None = typer.Option(
        None,
        "--store",
        help="Store holding the baseline's per-example outcomes for a paired test; without them there, the "
        "results/ archive beside the baseline CSV is read [default: $ROBENCH_STORE or results/robench.sqlite].",
    ),
    device: Device = None,
    data_dir: DataDir = None,
    junit: Path | None = typer.Option(None, "--junit", help="Also write JUnit XML for CI systems."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the comparison as JSON."),
    autoattack: str = typer.Option(
        CheckConfig.autoattack,
        "--autoattack",
        help="Re-run the baseline's AutoAttack rows "
        "with robench's fast (about 5x quicker) or with the official code: "
        "fast or official.",
    ),
    n: int | None = typer.Option(
        None,
        "--n",
        help="Re-run each of the baseline's runs on at most this many of its examples (its first), compared "
        "paired with the baseline on those: quicker, less sensitive [default: all of them].",
    ),
    trust: Trust = False,
    arch: Arch = None,
    activation: Activation = None,
    dataset: Dataset = None,
    quiet: Quiet = False,
):
    """Re-evaluate checkpoints as the baseline recorded them; exit 1 on a significant drop (the CI gate)."""
    ckpts = [str(c) for c in checkpoints] if checkpoints else None
    WHERE["discarded"] = "robench check"  # for the Ctrl-C message
    kw = dict(
        tolerance=tolerance,
        alpha=alpha,
        store=str(store) if store else None,
        device=device or "auto",
        data_dir=str(data_dir) if data_dir else None,
        trust=trust,
        arch=arch,
        activation=activation,
        dataset=dataset,
        junit=junit,
        json_out=json_out,
        autoattack=autoattack,
        n=n,
    )
    if quiet:
        res = api.check(baseline, ckpts, progress=track, **kw)
    else:
        with EvalProgress() as prog:
            res = api.check(baseline, ckpts, progress=prog.update, **kw)
    if not quiet:  # --quiet keeps the verdict (and the failures) without the table
        out.print(check_table(res["table"], baseline, tolerance, alpha))
    if res["provenance"] and res["unpaired"] < len(res["table"]):  # where the paired outcomes came from
        where = f"read from {res['outcomes_from']}, beside the baseline" if res["outcomes_from"] else "in the store"
        out.print(clean(f"The baseline's outcomes {where}: " + "; ".join(res["provenance"]) + "."), markup=False)
    if res["unpaired"]:
        out.print(clean(unpaired_warning(res)), markup=False)
    for line in reran_lines(res["reran"]):
        out.print(clean(line), markup=False)
    failed = int((res["table"].verdict == "fail").sum())
    if failed:
        out.print(clean(f"{failed} of {len(res['table'])} checks failed: " + ", ".join(res["failures"])), markup=False)
        raise typer.Exit(1)
    out.print(f"All {len(res['table'])} checks passed.")


def _stop_on_signal(signum, frame):
    """SIGTERM and SIGHUP stop robench the way Ctrl-C does: workers are stopped and the message says where
    the run stopped."""
    raise KeyboardInterrupt


def main():
    import signal

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _stop_on_signal)
    app()


if __name__ == "__main__":
    main()
