"""One registry pattern for everything robench knows by name: activations, architectures, datasets, norms
and attacks. Each thing registers itself where it is defined (``@ACTIVATIONS.register()`` on a class,
``DATASETS.add(info)`` beside a table row) and every name is looked up through one method, ``find``, which
folds case, follows aliases and answers an unknown name with the closest known ones (did you mean ...?).

A registry reads like a read-only dict of canonical names (``name in REG``, ``REG[name]``, ``REG.items()``);
aliases and prefixes are found by ``find`` and ``lookup`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from .errors import unknown

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Things of one ``kind`` by name. A name as typed matches the registered name it ``fold``s to alike
    (case by default); ``aliases`` maps other folded spellings to registered names; a registered prefix
    (``fb:``, folded) answers every name that starts with it."""

    def __init__(
        self,
        kind: str,
        aliases: Mapping[str, str] | None = None,
        fold: Callable[[str], str] = str.lower,
    ):
        self.kind, self.fold = kind, fold
        self.aliases: dict[str, str] = dict(aliases or {})
        # folded once: a lookup (a norm's, inside attack loops) must not rebuild it
        self._aliases = {fold(a): fold(target) for a, target in self.aliases.items()}
        self._items: dict[str, T] = {}
        self._index: dict[str, str] = {}  # folded name -> registered name
        self._prefixes: dict[str, T] = {}

    # ------------------------------------------------------------------------------- registration
    def add(self, name: str, item: T, *, replace: bool = False) -> T:
        """Register ``item`` under ``name``; a name registered twice is a programming error unless
        ``replace`` (a user's plugin may redefine its own dataset)."""
        if name in self._items and not replace:
            raise ValueError(f"{self.kind} {name} is registered twice")
        self._items[name] = item
        self._index[self.fold(name)] = name
        return item

    def register(self, *names: str, prefix: str | None = None) -> Callable[[T], T]:
        """Decorator: the decorated thing answers to ``names`` (default: its ``name`` attribute) and to any
        name starting with ``prefix``."""

        def decorate(item: T) -> T:
            for name in names or ((getattr(item, "name"),) if not prefix else ()):
                self.add(name, item)
            if prefix:
                self._prefixes[prefix] = item
            return item

        return decorate

    # ------------------------------------------------------------------------------------- lookup
    def key(self, name: str) -> str | None:
        """The registered name that ``name`` (any case, or an alias) stands for, or None."""
        folded = self.fold(str(name).strip())
        return self._index.get(self._aliases.get(folded, folded))

    def lookup(self, name: str) -> T | None:
        """The thing of this name (exact, alias or prefix), or None."""
        key = self.key(name)
        if key is not None:
            return self._items[key]
        folded = self.fold(str(name).strip())
        return next((item for p, item in self._prefixes.items() if folded.startswith(p)), None)

    def find(self, name: str, choices: list[str] | None = None) -> T:
        """The thing of this name, or a RobenchError naming the closest known names (``choices``, when the
        names to offer differ from the registered ones, such as ``wrn-28-10`` for ``wrn-D-W``)."""
        item = self.lookup(name)
        if item is None:
            raise unknown(self.kind, name, self.names() if choices is None else choices)
        return item

    def names(self) -> list[str]:
        """Every name a user may type: registered names, aliases and prefixes."""
        return [*self._items, *self.aliases, *(f"{p}NAME(...)" for p in self._prefixes)]

    # ------------------------------------------------------------------------- the Mapping view
    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def pop(self, name: str) -> T:
        """Forget ``name`` (a test's or a plugin's temporary registration)."""
        self._index.pop(self.fold(name), None)
        return self._items.pop(name)
