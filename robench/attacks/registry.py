"""Attack specs: ``pgd``, ``pgd(steps=100,loss=dlr)``, ``fgsm``, ``autoattack``, ``autoattack:plus``,
``apgd-ce`` ... ``square`` (AutoAttack members at its official budget), ``fb:NAME(key=value,...)``."""
from __future__ import annotations

import ast

from ..errors import RobenchError, unknown
from .autoattack import MEMBERS, VERSIONS, AutoAttack
from .base import Attack
from .foolbox import FoolboxAttack
from .pgd import FGSM, PGD

NAMES = ["pgd", "fgsm", "autoattack", *(f"autoattack:{v}" for v in VERSIONS), *MEMBERS, "fb:NAME(...)"]


def split_spec(spec: str) -> tuple[str, dict]:
    """``name(key=value, ...)`` -> (name, {key: value}); values are Python literals or bare words."""
    text = spec.strip()
    if "(" not in text:
        return text, {}
    if not text.endswith(")"):
        raise RobenchError(f'Attack "{spec}" has an unclosed "("; write it as name(key=value, ...).')
    name, args = text[: text.index("(")].strip(), text[text.index("(") + 1: -1]
    try:
        call = ast.parse(f"f({args})", mode="eval").body
    except SyntaxError:
        raise RobenchError(f'Cannot read the options of attack "{spec}"; write them as key=value, ...') from None
    if call.args:
        raise RobenchError(f'Attack "{spec}" takes options as key=value only.')
    opts = {}
    for kw in call.keywords:
        try:
            opts[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            if isinstance(kw.value, ast.Name):
                opts[kw.arg] = kw.value.id  # bare word: loss=dlr
            else:
                raise RobenchError(f'Option {kw.arg} of attack "{spec}" is not a plain value.') from None
    return name, opts


def create_attack(spec: str, pgd: dict | None = None, batch_size: int = 250) -> Attack:
    """Build one attack from its spec. ``pgd`` holds the --pgd-* flags (inline options win)."""
    name, opts = split_spec(spec)
    low = name.lower()
    if low.startswith("fb:"):
        return FoolboxAttack(name[3:], opts)
    try:
        if low in ("pgd", "fgsm"):
            cls = PGD if low == "pgd" else FGSM
            return cls(**{**(pgd or {}), **opts}) if low == "pgd" else cls(**opts)
        if low == "autoattack" or low.startswith("autoattack:"):
            version = low.partition(":")[2] or "standard"
            if opts:
                raise RobenchError("AutoAttack runs at its official budget and takes no options; "
                                   "use pgd(...) for a custom budget.")
            return AutoAttack(version, batch_size=batch_size)
        if low in MEMBERS:
            if opts:
                raise RobenchError(f"{low} runs at AutoAttack's official budget and takes no options.")
            return AutoAttack("plus" if low in ("apgd-dlr", "fab") else "standard", members=(low,),
                              batch_size=batch_size)
    except TypeError as e:
        raise RobenchError(f'Attack "{spec}" got an unknown option ({e}).'.replace("__init__() ", "")) from None
    raise unknown("attack", name, NAMES)
