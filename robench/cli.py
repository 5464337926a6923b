"""The robench command line: parse, call robench.api, print with rich. No logic lives here."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from . import __version__, api
from .errors import RobenchError

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class _Group(TyperGroup):
    """Turns a RobenchError into one plain sentence and exit code 2 (the traceback only with --debug)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RobenchError as e:
            if os.environ.get("ROBENCH_DEBUG"):
                raise
            err.print(f"Error: {e}", soft_wrap=True, markup=False)
            raise typer.Exit(2) from None


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True,
                  help="Adversarial-robustness benchmark for PyTorch checkpoints.")


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


TRUST = typer.Option(False, "--trust-checkpoint", help="Allow checkpoints that need arbitrary unpickling.")
ARCH = typer.Option(None, "--arch", help="Architecture of a plain state dict (see `robench models`).")
ACT = typer.Option(None, "--activation", help="Activation spec of a plain state dict, e.g. splash:share=channel.")
DATASET = typer.Option(None, "--dataset", help="Dataset, for files that carry none.")


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
    out.print("Spec: name[:key=value,...], e.g. splash:hinges=7,share=channel; "
              "share is network, layer or channel.")


@app.command()
def info(
    checkpoint: Path = typer.Argument(..., help="Checkpoint file (.pt, .safetensors, .pt2)."),
    trust: bool = TRUST, arch: Optional[str] = ARCH, activation: Optional[str] = ACT,
    dataset: Optional[str] = DATASET,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Show a checkpoint's metadata, parameter count and learned activation parameters."""
    d = api.info(checkpoint, trust=trust, arch=arch, activation=activation, dataset=dataset)
    if as_json:
        out.print_json(json.dumps(d, default=str))
        return
    meta = d["meta"]
    t = Table(show_header=False, box=None)
    t.add_row("file", d["path"])
    t.add_row("sha256", d["sha256"])
    t.add_row("format", d["format"])
    t.add_row("parameters", f"{d['parameters']:,}")
    for key in ("name", "arch", "activation", "dataset", "num_classes", "input_shape", "mean", "std", "notes"):
        if meta.get(key) is not None:
            t.add_row(key, str(meta[key]))
    for key, val in (meta.get("recipe") or {}).items():
        t.add_row(f"recipe.{key}", str(val))
    out.print(t)
    for a in d["activations"]:
        vals = "; ".join(f"{k}={_short(v)}" for k, v in a["values"].items())
        out.print(f"  {a['module']}: {a['activation']} (share={a['share']}) {vals}")


def _short(v) -> str:
    if isinstance(v, list):
        head = ", ".join(f"{x:.4g}" for x in v[:8])
        return f"[{head}{', ...' if len(v) > 8 else ''}]"
    return f"{v:.4g}"


def main():
    app()


if __name__ == "__main__":
    main()
