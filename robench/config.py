"""Run specifications: eps parsing, the settings objects (EvalConfig, TrainConfig, CheckConfig,
SanityConfig), TOML suite files, and the checks of option values that need no torch.

Over the ~400-line guide on purpose: every settings object lives here with its defaults and the checks
they share (keys, types, counts, value syntax), so that a default is written once and the command line,
suite files and Python calls read the same one; split, the objects would import each other's checks."""

from __future__ import annotations

import ast
import math
import numbers
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from fractions import Fraction
from pathlib import Path

import tomllib

from .errors import RobenchError, closest, unknown


@dataclass(frozen=True, order=True)
class Eps:
    """An eps budget: the exact float and the string the user wrote ("8/255")."""

    value: float
    text: str = field(compare=False)

    def __str__(self) -> str:
        return self.text


# Between the flags of one result row (the "flags" of eval, transfer and leaderboard rows, RobustBench's
# "footnote"): a flag's own evidence often has "; " in it, so that cannot separate them.
FLAG_SEP = " | "


def split_flags(text: str | None) -> list[str]:
    """The flags of one result row, in order (none for an empty or missing cell)."""
    return [f for f in text.split(FLAG_SEP) if f] if isinstance(text, str) else []


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
            raise RobenchError(
                f'Cannot read eps "{raw}"; write it as a number such as 0.1 or a fraction such as 8/255.'
            ) from None
    if not math.isfinite(value) or value < 0:
        raise RobenchError(f'eps "{raw}" must be a finite number of zero or more.')
    return Eps(value, raw)


LOSSES = ("ce", "dlr", "margin")  # the losses robench's gradient attacks ascend
# an activation's shape is read, recorded and drawn over [-SHAPE_RANGE, SHAPE_RANGE], a curve at CURVE_POINTS points
SHAPE_RANGE = 4.0
CURVE_POINTS = 401


def parse_batch_size(value) -> int | None:
    """``auto`` -> None, else a positive int."""
    if value in (None, "auto"):
        return None
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError
        v = int(value)
    except (TypeError, ValueError, OverflowError):
        raise RobenchError(f'--batch-size must be "auto" or a positive whole number, not "{value}".') from None
    if v < 1:
        raise RobenchError(f"--batch-size must be at least 1, not {v}.")
    return v


def validate_device_name(device: str | None) -> None:
    """A device as torch names one (auto, cpu, cuda, cuda:N, mps, ...); whether it exists here is for torch."""
    import re

    if device not in (None, "", "auto") and not re.fullmatch(r"(cpu|cuda|mps|xpu|hip|meta)(:\d+)?", str(device)):
        raise RobenchError(f'Unknown device "{device}"; use auto, cpu, cuda, cuda:N or mps.')


def validate_subset(subset: str) -> None:
    """first, random or from:K."""
    if subset in ("first", "random"):
        return
    if str(subset).startswith("from:"):
        if not str(subset)[5:].isdigit():
            raise RobenchError(f"--subset {subset} needs a whole number of examples to skip, such as from:1000.")
        return
    raise unknown("subset rule", subset, ["first", "random", "from:K"])


def parse_norm(norm: str) -> str:
    from .norms import get_norm  # torch, imported when a norm is read (not by `robench --help`)

    return get_norm(norm).name


def validate_eps_range(eps: Eps, norm: str, input_numel: int) -> None:
    """Inputs live in [0, 1]: an Linf eps above 1, or an L2 eps above the diameter of the cube, is an error."""
    from .norms import get_norm

    limit = get_norm(norm).diameter(input_numel)
    if eps.value > limit:
        raise RobenchError(
            f"eps {eps} is above the largest meaningful {norm} budget ({limit:g}) for inputs "
            "in [0, 1]; did you mean a fraction such as 8/255?"
        )


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
    eps: list[str | float] = field(default_factory=list)
    attacks: list[str] = field(default_factory=lambda: ["pgd"])
    pgd_steps: int = 20
    pgd_restarts: int = 1
    pgd_step_size: str | float | None = None
    pgd_loss: str = "ce"
    batch_size: str | int = "auto"
    device: str = "auto"
    store: str | None = None
    out: str | None = None
    force: bool = False
    trust_checkpoint: bool = False
    arch: str | None = None
    activation: str | None = None
    jobs: int = 1  # worker processes for a suite (each runs whole checkpoint x run tasks)

    @classmethod
    def validated(cls, settings: dict) -> EvalConfig:
        """The settings from CLI keywords, a TOML run or Python keywords, checked: an unknown key, a wrong type,
        a count below 1 or an unknown norm is one sentence. The engine takes the result as it is."""
        valid = set(cls.__dataclass_fields__)
        for key in settings:
            if key not in valid:
                raise unknown("evaluation option", key, valid)
        settings = dict(settings)
        for key in ("eps", "attacks"):  # one budget or one attack given on its own: eps="0.1", attacks="fgsm"
            if isinstance(settings.get(key), (str, int, float)) and not isinstance(settings.get(key), bool):
                settings[key] = [settings[key]]
        validate_types(
            settings, cls, "evaluation options", skip=("checkpoints", "data_dir", "store", "out", "batch_size")
        )
        validate_counts(settings, "evaluation options")
        cfg = cls(**settings)
        cfg.precheck()
        cfg.norm = parse_norm(cfg.norm)
        return cfg

    def precheck(self) -> None:
        """The values a typo spoils, checked before torch is imported (seconds on a cold start): each eps, the
        batch size, the device's name, the subset rule, the PGD loss and each attack spec's syntax."""
        for e in self.eps or []:
            parse_eps(e)
        parse_batch_size(self.batch_size)
        validate_device_name(self.device)
        validate_subset(self.subset)
        if self.pgd_loss not in LOSSES:
            raise RobenchError(f'PGD loss "{self.pgd_loss}" is not one of {", ".join(LOSSES)}.')
        for a in self.attacks or []:
            split_spec(a)

    def eps_values(self) -> list[Eps]:
        """The eps sweep as given (empty: the dataset's standard budget), each parsed."""
        return [parse_eps(e) for e in self.eps or []]

    def overrides(self) -> dict:
        """What the user says about the checkpoints themselves (for files that do not say it)."""
        return {"arch": self.arch, "activation": self.activation, "dataset": self.dataset}

    def pgd_options(self) -> dict:
        """The --pgd-* flags as PGD's options (an attack's inline options win over them)."""
        pgd = {"steps": self.pgd_steps, "restarts": self.pgd_restarts, "loss": self.pgd_loss}
        if self.pgd_step_size is not None:
            pgd["step_size"] = parse_eps(self.pgd_step_size).value
        return pgd


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


@dataclass
class CheckConfig:
    """Everything `robench check` needs besides the baseline and the checkpoints: the gate's rule (a drop
    fails when larger than ``tolerance`` points and significant at ``alpha``), what re-runs AutoAttack
    (``fast`` or ``official``), how many of each run's examples to re-run (``n``: at most that many, the first of
    the baseline's; None: all), where the baseline's outcomes are, and what describes plain state dicts."""

    tolerance: float = 1.0
    alpha: float = 0.05
    autoattack: str = "fast"  # fast | official
    n: int | None = None
    store: str | None = None
    device: str = "auto"
    data_dir: str | None = None
    trust: bool = False
    arch: str | None = None
    activation: str | None = None
    dataset: str | None = None
    junit: str | None = None
    json_out: str | None = None

    @classmethod
    def validated(cls, settings: dict) -> CheckConfig:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in settings.items() if v is not None}
        settings = validate_keys(settings, cls, "check")
        validate_types(settings, cls, "check options")
        cfg = cls(**settings)
        if not 0 < cfg.alpha < 1 or cfg.tolerance < 0:
            raise RobenchError("--alpha must lie between 0 and 1 and --tolerance must be zero or more.")
        if cfg.n is not None and cfg.n < 1:
            raise RobenchError(f"--n must be at least 1, not {cfg.n}.")
        if cfg.autoattack not in ("fast", "official"):
            raise RobenchError(f'--autoattack is fast or official, not "{cfg.autoattack}".')
        return cfg

    def overrides(self) -> dict:
        """What the user says about the checkpoints themselves (for files that do not say it)."""
        return {"arch": self.arch, "activation": self.activation, "dataset": self.dataset}


@dataclass
class SanityConfig:
    """What `robench sanity` adds to an evaluation's settings: the stronger budget its checks compare with,
    Square's queries, and its own number of examples."""

    n: int = 200
    strong_steps: int | None = None  # steps (iterations for fast) of the stronger run: 5x those under test
    strong_restarts: int = 3
    square_queries: int = 1000

    @classmethod
    def validated(cls, settings: dict) -> SanityConfig:
        settings = {k: v for k, v in settings.items() if v is not None}
        validate_types(settings, cls, "sanity options")
        cfg = cls(**settings)
        if cfg.strong_restarts < 1 or cfg.square_queries < 1 or (cfg.strong_steps is not None and cfg.strong_steps < 1):
            raise RobenchError("--strong-steps, --strong-restarts and --square-queries must be at least 1.")
        return cfg


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RobenchError(f"No such file: {path}.") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise RobenchError(f"{path} is not valid TOML ({e}).") from None


def validate_keys(data: dict, cls, where: str, extra: tuple[str, ...] = ()) -> dict:
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


def _fits(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and (not args or all(_fits(v, args[0]) for v in value))
    return True


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is list:
        return f"a list of {_describe(args[0]).split(' ', 1)[1]}s" if args else "a list"
    return {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_types(values: dict, cls_or_fn, where: str, skip: tuple[str, ...] = ()) -> dict:
    """Each value must have the type its field (or parameter) is annotated with: one sentence otherwise."""
    target = cls_or_fn.__init__ if isinstance(cls_or_fn, type) and not is_dataclass(cls_or_fn) else cls_or_fn
    hints = typing.get_type_hints(target)
    for key, value in values.items():
        if key in hints and key not in skip and not _fits(value, hints[key]):
            raise RobenchError(f'{where}: "{key}" must be {_describe(hints[key])}, not {_show(value)}.')
    return values


MAX_SEED = 2**63 - 1


def validate_counts(
    values: dict,
    where: str,
    fields_at_least_1=(
        "n",
        "jobs",
        "pgd_steps",
        "pgd_restarts",
        "epochs",
        "steps",
        "batch_size",
        "val_pgd_n",
        "val_pgd_steps",
    ),
) -> None:
    """Counts must be at least 1 and seeds between 0 and 2**63 - 1 (the generators' range)."""
    for key in fields_at_least_1:
        v = values.get(key)
        if isinstance(v, numbers.Integral) and not isinstance(v, bool) and v < 1:
            raise RobenchError(f"{where}: {key} must be at least 1, not {v}.")
    seed = values.get("seed")
    if isinstance(seed, numbers.Integral) and not 0 <= seed <= MAX_SEED:
        raise RobenchError(f"{where}: seed must be a whole number from 0 to 2**63 - 1, not {seed}.")


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
        settings = {**validate_keys(base, EvalConfig, str(path)), **validate_keys(run, EvalConfig, where)}
        for k in ("eps", "attacks", "checkpoints"):
            if k in settings and not isinstance(settings[k], list):
                settings[k] = [settings[k]]
        if "eps" in settings:
            bad = [e for e in settings["eps"] if isinstance(e, bool) or not isinstance(e, (str, int, float))]
            if bad:
                raise RobenchError(f'{where}: "eps" must be numbers or strings such as "8/255", not {_show(bad[0])}.')
            settings["eps"] = [str(e) for e in settings["eps"]]
        validate_types(settings, EvalConfig, where)
        out.append(settings)
    return out


def split_spec(spec: str, kind: str = "attack") -> tuple[str, dict]:
    """``name(key=value, ...)`` -> (name, {key: value}); values are Python literals or bare words. ``kind``
    (attack, architecture) names what the spec describes in the error messages."""
    text = str(spec).strip()
    if len(text) > 1000:
        raise RobenchError(
            f'{kind.capitalize()} spec "{text[:40]}..." is {len(text)} characters long; write it as '
            "name(key=value, ...) in under 1000."
        )
    if "(" not in text:
        return text, {}
    if not text.endswith(")"):
        raise RobenchError(f'{kind.capitalize()} "{spec}" has an unclosed "("; write it as name(key=value, ...).')
    name, args = text[: text.index("(")].strip(), text[text.index("(") + 1 : -1]
    try:
        call = ast.parse(f"f({args})", mode="eval").body
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        raise RobenchError(f'Cannot read the options of {kind} "{spec}"; write them as key=value, ...') from None
    if call.args or any(kw.arg is None for kw in call.keywords):
        raise RobenchError(f'{kind.capitalize()} "{spec}" takes options as key=value only.')
    opts = {}
    for kw in call.keywords:
        try:
            opts[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            if isinstance(kw.value, ast.Name):
                opts[kw.arg] = kw.value.id  # bare word: loss=dlr
            else:
                raise RobenchError(f'Option {kw.arg} of {kind} "{spec}" is not a plain value.') from None
    return name, opts
