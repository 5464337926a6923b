"""Attack specs: ``none`` (clean accuracy only, on its own), ``pgd``, ``pgd(steps=100,loss=dlr)``, ``fgsm``, ``autoattack``, ``autoattack:plus``,
``apgd-ce`` ... ``square`` (AutoAttack members at its official budget), ``fb:NAME(key=value,...)``."""
from __future__ import annotations

import ast

from ..config import check_types
from ..errors import RobenchError, unknown
from .autoattack import MEMBERS, VERSIONS, AutoAttack
from .base import Attack
from .foolbox import FoolboxAttack, gradient_free
from .pgd import FGSM, PGD

NAMES = ["none", "pgd", "fgsm", "autoattack", *(f"autoattack:{v}" for v in VERSIONS), *MEMBERS, "fb:NAME(...)"]


def split_spec(spec: str) -> tuple[str, dict]:
    """``name(key=value, ...)`` -> (name, {key: value}); values are Python literals or bare words."""
    text = str(spec).strip()
    if len(text) > 1000:
        raise RobenchError(f'Attack spec "{text[:40]}..." is {len(text)} characters long; write it as '
                           "name(key=value, ...) in under 1000.")
    if "(" not in text:
        return text, {}
    if not text.endswith(")"):
        raise RobenchError(f'Attack "{spec}" has an unclosed "("; write it as name(key=value, ...).')
    name, args = text[: text.index("(")].strip(), text[text.index("(") + 1: -1]
    try:
        call = ast.parse(f"f({args})", mode="eval").body
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        raise RobenchError(f'Cannot read the options of attack "{spec}"; write them as key=value, ...') from None
    if call.args or any(kw.arg is None for kw in call.keywords):
        raise RobenchError(f'Attack "{spec}" takes options as key=value only.')
    opts = {}
    for kw in call.keywords:
        try:
            opts[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            if isinstance(kw.value, ast.Name):
                opts[kw.arg] = kw.value.id  # bare word: loss=dlr
            else:
                raise RobenchError(f'Option {kw.arg} of attack "{spec}" is not a plain value.') from None
    return name, opts


def create_attack(spec: str, pgd: dict | None = None, batch_size: int = 250) -> Attack:
    """Build one attack from its spec. ``pgd`` holds the --pgd-* flags (inline options win)."""
    name, opts = split_spec(spec)
    low = name.lower()
    if low == "none":
        raise RobenchError('The attack "none" (clean accuracy only) cannot be combined with other attacks.')
    if low.startswith("fb:"):
        return FoolboxAttack(name[3:], opts)
    try:
        if low in ("pgd", "fgsm"):
            cls = PGD if low == "pgd" else FGSM
            check_types(opts, cls, f'Attack "{spec}"')
            return cls(**{**(pgd or {}), **opts}) if low == "pgd" else cls(**opts)
        if low == "autoattack" or low.startswith("autoattack:"):
            version = low.partition(":")[2] or "standard"
            if opts:
                raise RobenchError("AutoAttack runs at its official budget and takes no options; "
                                   "use pgd(...) for a custom budget.")
            return AutoAttack(version, batch_size=batch_size)
        if low in MEMBERS:
            if opts and (low != "square" or set(opts) != {"queries"}):
                raise RobenchError(f"{low} runs at AutoAttack's official budget and takes no options"
                                   + (" but queries=N." if low == "square" else "."))
            check_types(opts, AutoAttack, f'Attack "{spec}"')
            if opts and opts["queries"] < 1:
                raise RobenchError(f'Attack "{spec}": queries must be at least 1.')
            return AutoAttack("plus" if low in ("apgd-dlr", "fab") else "standard", members=(low,),
                              batch_size=batch_size, **opts)
    except TypeError as e:
        raise RobenchError(f'Attack "{spec}" got an unknown option ({e}).'.replace("__init__() ", "")) from None
    raise unknown("attack", name, NAMES)


def black_box(name: str) -> bool:
    """Whether the attack (or AutoAttack member) of this name uses only the model's outputs."""
    return name == "square" or (name.startswith("fb:") and gradient_free(name[3:].partition("(")[0]))


def spec_from_budget(budget: dict) -> str:
    """The spec that rebuilds the attack a stored budget describes (``create_attack(spec).budget()`` gives
    the budget back, up to the implementation version)."""
    name = budget["name"]
    if name == "fgsm":
        return f"fgsm(loss={budget['loss']})"
    if name == "pgd":
        size = budget["step_size"]
        step = (f"rel_step_size={float(size.split('*')[0])!r}" if isinstance(size, str) else f"step_size={size!r}")
        opts = [f"steps={budget['steps']}", f"restarts={budget['restarts']}", step, f"loss={budget['loss']}",
                f"random_start={budget['random_start']}", f"targeted={budget['targeted']}"]
        if budget.get("targeted"):
            opts.append(f"targets={budget['targets']}")
        return f"pgd({','.join(opts)})"
    if name.startswith("fb:"):
        opts = {k: v for k, v in budget.items() if k not in ("name", "norm", "implementation")}
        return f"{name}({','.join(f'{k}={v!r}' for k, v in opts.items())})" if opts else name
    if name == "square" and budget.get("members", {}).get("square", {}).get("queries") != 5000:
        return f"square(queries={budget['members']['square']['queries']})"
    return name  # autoattack, autoattack:VERSION and single AutoAttack members run at the official budget
