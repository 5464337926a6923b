"""User-facing errors: one plain sentence, exit code 2 from the CLI."""
from __future__ import annotations

import difflib
from typing import Iterable


class RobenchError(Exception):
    """An error the user can cause and fix. Its message is one sentence that says what to do."""


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.5)


def unknown(kind: str, name: str, choices: Iterable[str]) -> RobenchError:
    """'unknown activation "reluu"; did you mean relu?' with the closest valid names."""
    choices = sorted(set(choices))
    near = closest(name, choices)
    hint = f"did you mean {' or '.join(near)}?" if near else f"choose one of {', '.join(choices)}."
    return RobenchError(f'Unknown {kind} "{name}"; {hint}')
