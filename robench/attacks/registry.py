"""Attack registries (robench.registry's pattern): each attack class registers itself where it is defined
(as timm's models do), with the names its spec answers to. A spec is ``name`` or ``name(key=value, ...)``: ``pgd``, ``pgd(steps=100,loss=dlr)``,
``fgsm``, ``apgd`` and ``fast`` (robench's own APGD and its MALT-targeted ensemble), ``autoattack``,
``autoattack:plus``, ``apgd-ce`` ... ``square`` (AutoAttack members at its official budget),
``fb:NAME(key=value,...)``; transfer attacks ``pgd``, ``mifgsm``, ``difgsm``. The class builds
itself from the options (``Attack.from_spec``; an unknown option is an error) and rebuilds the spec from a
stored budget (``Attack.spec_of``, the inverse). ``none`` (clean accuracy only) is not an attack.
"""

from __future__ import annotations

from ..config import split_spec
from ..errors import RobenchError, suggest
from ..registry import Registry


def _options(cls) -> list[str]:
    """The keyword options an attack class takes, read from its constructor."""
    import inspect

    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


class AttackRegistry(Registry[type]):
    """Attack classes by the spec names they answer to (exact names, any case, or a prefix such as fb:);
    it also builds an attack from its spec and rebuilds the spec from a stored budget."""

    def __init__(self, kind: str, also: tuple[str, ...] = ()):
        super().__init__(kind)
        self.also = also  # names the spec language knows that build no attack

    def names(self) -> list[str]:
        return [*self.also, *super().names()]

    def create(self, spec: str, **context):
        """The attack a spec names; ``context`` holds what the caller knows (--pgd-* flags, batch size)."""
        name, opts = split_spec(spec)
        cls = self.find(name)
        try:
            return cls.from_spec(name, opts, spec, **context)
        except TypeError as e:
            options = _options(cls)
            bad = next((k for k in opts if f"'{k}'" in str(e)), None)
            if bad is None or bad in options:  # an option of the family that this member fixes (fgsm's steps)
                raise RobenchError(
                    f'{self.kind.capitalize()} "{spec}" got an unknown option ({e}).'.replace("__init__() ", "")
                ) from None
            hint = suggest(bad, options, "its options are")
            raise RobenchError(f'{self.kind.capitalize()} "{spec}" has no option "{bad}"; {hint}') from None

    def spec(self, budget: dict) -> str:
        """The spec that rebuilds the attack a stored budget describes (``create(spec).budget()`` gives the
        budget back, up to the implementation version)."""
        cls = self.lookup(budget["name"])
        return cls.spec_of(budget) if cls is not None else budget["name"]

    def black_box(self, name: str) -> bool:
        """Whether the attack (or AutoAttack member) of this name uses only the model's outputs."""
        cls = self.lookup(name)
        return cls is not None and cls.is_black_box(name)


ATTACKS = AttackRegistry("attack", also=("none",))
TRANSFER = AttackRegistry("transfer attack")


def create_attack(spec: str, pgd: dict | None = None, batch_size: int = 250):
    """Build one white-box or query attack from its spec. ``pgd`` holds the --pgd-* flags (inline options win)."""
    if split_spec(spec)[0].lower() == "none":
        raise RobenchError('The attack "none" (clean accuracy only) cannot be combined with other attacks.')
    return ATTACKS.create(spec, pgd=pgd, batch_size=batch_size)


def create_transfer_attack(spec: str, **flags):
    """``mifgsm``, ``difgsm(steps=20)``, ``pgd(steps=10,random_start=False)`` ...; ``flags`` (the CLI's
    --steps, --decay, --resize-rate, --diversity-prob) fill in what the spec leaves out."""
    return TRANSFER.create(spec, flags=flags)


spec_from_budget = ATTACKS.spec
black_box = ATTACKS.black_box
