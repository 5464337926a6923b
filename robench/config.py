"""Run specifications: eps parsing, the evaluation config dataclass, TOML suite files."""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path

from .errors import RobenchError, closest, unknown

NORMS = ("Linf", "L2")


@dataclass(frozen=True, order=True)
class Eps:
    """An eps budget: the exact float and the string the user wrote ("8/255")."""

    value: float
    text: str = field(compare=False)

    def __str__(self) -> str:
        return self.text


def parse_eps(text: str | float | Eps) -> Eps:
    """Parse "8/255", "0.031" or "0.5"; negative, unparsable or division by zero is one sentence."""
    if isinstance(text, Eps):
        return text
    if isinstance(text, (int, float)):
        value, raw = float(text), repr(float(text)) if not float(text).is_integer() else str(text)
    else:
        raw = str(text).strip()
        try:
            if "/" in raw:
                num, den = raw.split("/", 1)
                value = float(Fraction(num.strip()) / Fraction(den.strip()))
            else:
                value = float(raw)
        except (ValueError, ZeroDivisionError):
            raise RobenchError(f'Cannot read eps "{raw}"; write it as a number such as 0.1 or a fraction '
                               'such as 8/255.') from None
    if not math.isfinite(value) or value < 0:
        raise RobenchError(f'eps "{raw}" must be a finite number of zero or more.')
    return Eps(value, raw)


def parse_norm(norm: str) -> str:
    for n in NORMS:
        if str(norm).lower() == n.lower():
            return n
    raise unknown("norm", norm, NORMS)


def check_eps_range(eps: Eps, norm: str, input_numel: int) -> None:
    """Inputs live in [0, 1]: an Linf eps above 1, or an L2 eps above the diameter of the cube, is an error."""
    limit = 1.0 if norm == "Linf" else math.sqrt(input_numel)
    if eps.value > limit:
        raise RobenchError(f"eps {eps} is above the largest meaningful {norm} budget ({limit:g}) for inputs "
                           "in [0, 1]; did you mean a fraction such as 8/255?")


@dataclass
class EvalConfig:
    """Everything `robench eval` needs; a TOML suite file holds the same keys."""

    checkpoints: list[str] = field(default_factory=list)
    dataset: str | None = None
    data_dir: str | None = None
    split: str = "test"
    n: int = 1000
    subset: str = "first"
    seed: int = 0
    norm: str = "Linf"
    eps: list[str] = field(default_factory=list)
    attacks: list[str] = field(default_factory=lambda: ["pgd"])
    pgd_steps: int = 20
    pgd_restarts: int = 1
    pgd_step_size: float | None = None
    pgd_loss: str = "ce"
    batch_size: str = "auto"
    device: str = "auto"
    store: str | None = None
    out: str | None = None
    force: bool = False
    trust_checkpoint: bool = False
    arch: str | None = None
    activation: str | None = None
    jobs: int = 1  # worker processes for a suite (each runs whole checkpoint x run tasks)


@dataclass
class TrainConfig:
    """Everything `robench train` needs: one recipe. A zoo file's groups hold the same keys."""

    arch: str = "lenet5"
    activation: str = "relu"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    method: str = "standard"  # standard | pgd-at | trades | fast-at
    norm: str = "Linf"
    eps: str | None = None  # the dataset's default for the norm
    steps: int = 10  # attack steps of pgd-at and trades
    step_size: str | None = None  # 2.5*eps/steps (pgd-at, trades); 1.25*eps (fast-at)
    trades_beta: float = 6.0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | constant, per step
    augment: str = "auto"  # none | flip | crop | crop,flip; auto picks the dataset's usual
    train_images: int | None = None  # train on the first N images only (quick runs)
    val_size: int = 5000  # held out from the end of the training split
    val_pgd_n: int = 1000
    val_pgd_steps: int = 20
    seed: int = 0
    device: str = "auto"
    name: str | None = None


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RobenchError(f"No such file: {path}.") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise RobenchError(f"{path} is not valid TOML ({e}).") from None


def check_keys(data: dict, cls, where: str, extra: tuple[str, ...] = ()) -> dict:
    """``data`` with dashes turned to underscores; an unknown key is one sentence naming the closest."""
    valid = {f.name for f in fields(cls)} | set(extra)
    out = {}
    for key, value in data.items():
        k = key.replace("-", "_")
        if k not in valid:
            near = closest(k, valid)
            hint = f'; did you mean "{near[0]}"?' if near else f"; valid keys are {', '.join(sorted(valid))}."
            raise RobenchError(f'{where}: unknown key "{key}"{hint}')
        out[k] = value
    return out


def load_suite(path: str | Path) -> list[dict]:
    """Read a TOML suite: top-level keys (or an [eval] table) named as EvalConfig's fields, and optionally
    ``[[run]]`` tables, each one evaluation with its own keys on top of the top-level ones (a run may carry
    a ``name``). Returns one settings dict per run."""
    data = read_toml(path)
    base = dict(data.get("eval", data))
    runs = base.pop("run", None)
    if runs is not None and (not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs)):
        raise RobenchError(f"{path}: write each run as a [[run]] table.")
    out = []
    for i, run in enumerate(runs or [{}], 1):
        run = dict(run)
        name = str(run.pop("name", f"run {i}"))
        where = f'{path} run "{name}"' if runs else str(path)
        settings = {**check_keys(base, EvalConfig, str(path)), **check_keys(run, EvalConfig, where)}
        for k in ("eps", "attacks", "checkpoints"):
            if k in settings and not isinstance(settings[k], list):
                settings[k] = [settings[k]]
        if "eps" in settings:
            settings["eps"] = [str(e) for e in settings["eps"]]
        out.append(settings)
    return out
