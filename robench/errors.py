"""User-facing errors: one plain sentence, exit code 2 from the CLI."""

from __future__ import annotations

import contextvars
import difflib
import re
from collections.abc import Iterable

# Set by the command line while a command runs: messages then name its flags (--trust-checkpoint); raised to
# a Python caller, they name the Python arguments instead (trust_checkpoint=True).
CLI = contextvars.ContextVar("robench_cli", default=False)
_ARG_NAMES = {"attack": "attacks", "examples": "n"}  # flags whose Python argument has another name
_SWITCHES = {"trust-checkpoint", "force", "overwrite"}  # flags that take no value: name=True
_CLI_ONLY = {"debug", "help", "json", "quiet", "open"}


class RobenchError(Exception):
    """An error the user can cause and fix. Its message is one sentence that says what to do. A message names
    command-line flags (``--arch``); a flag may carry its Python form in brackets right after it
    (``--trust-checkpoint (trust=True)``), which the CLI leaves out and a Python caller reads instead."""

    def __str__(self) -> str:
        text = super().__str__()
        return re.sub(r"(--[a-z][a-z0-9-]*) \([a-z_]+=[^)]*\)", r"\1", text) if CLI.get() else for_python(text)


def for_python(text: str) -> str:
    """A message's flags as the Python arguments they stand for: ``--pgd-steps`` -> ``pgd_steps=...``,
    ``--force`` -> ``force=True``; text in backticks (a command to run) is left as it is."""

    def arg(m: re.Match) -> str:
        flag, value = m.group(1), m.group(2)
        if flag in _CLI_ONLY:
            return m.group(0)
        name = _ARG_NAMES.get(flag, flag.replace("-", "_"))
        if value and value.lower() not in _WORDS and flag not in _SWITCHES:  # --norm L2 -> norm='L2', --n 10000
            return f"{name}={value if re.fullmatch(r'[0-9.]+', value) else repr(value)}"
        return f"{name}={'True' if flag in _SWITCHES else '...'}" + (f" {value}" if value else "")

    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside backticks
        parts[i] = re.sub(r"--([a-z][a-z0-9-]*) \(([a-z_]+=[^)]*)\)", r"\2", parts[i])
        parts[i] = re.sub(r"(?<![\w-])--([a-z][a-z0-9-]*)(?: ([^\s,;()]+?(?=[.,;)]?(?:\s|$))))?", arg, parts[i])
    return "`".join(parts)


_WORDS = {
    "and",
    "or",
    "with",
    "to",
    "if",
    "only",
    "for",
    "is",
    "in",
    "the",
    "a",
    "of",
    "yourself",
    "when",
    "on",
    "from",
    "as",
    "at",
    "that",
    "which",
    "must",
    "cannot",
    "needs",
    "under",
    "out",
    "are",
    "apply",
    "takes",
    "was",
    "were",
    "be",
    "do",
    "does",
    "so",
    "but",
    "instead",
    "again",
    "too",
    "here",
    "first",
    "then",
    "checkpoint",
    "it",
    "them",
    "this",
    "these",
    "not",
    "no",
    "every",
    "each",
    "one",
    "all",
    "before",
    "after",
    "where",
    "whose",
    "per",
    "by",
}


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.5)


def suggest(name: str, choices: Iterable[str], otherwise: str = "choose one of") -> str:
    """'did you mean relu?' with the closest valid names, or all of them after ``otherwise``."""
    choices = sorted(set(choices))
    near = closest(name, choices)
    return f"did you mean {' or '.join(near)}?" if near else f"{otherwise} {', '.join(choices)}."


def unknown(kind: str, name: str, choices: Iterable[str]) -> RobenchError:
    """'unknown activation "reluu"; did you mean relu?' with the closest valid names."""
    return RobenchError(f'Unknown {kind} "{name}"; {suggest(name, choices)}')
