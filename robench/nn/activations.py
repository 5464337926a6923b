"""Activation functions behind one registry and one factory (as timm's create_act does).

A spec is a string: ``name`` or ``name:key=value,key=value``, e.g. ``splash:hinges=7,share=channel``.
Learned activations take ``share``:

- ``network``: one instance reused by every layer (the PSSiLU paper's default);
- ``layer``: one instance per activation site, scalar parameters;
- ``channel``: one instance per site, parameters per channel (dim 1 of the input).

Architectures never build activations themselves: they call an :class:`ActivationFactory` once per
activation site with the number of channels at that site.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RobenchError, unknown
from ..registry import Registry

SHARES = ("network", "layer", "channel")
ALIASES = {"swish": "silu", "lrelu": "leaky_relu"}
# every activation class registers itself below, under its ``name``
ACTIVATIONS: Registry[type[Activation]] = Registry("activation", aliases=ALIASES)


class Activation(nn.Module):
    """Base of every registered activation. Subclasses set the class attributes and ``forward``."""

    name: str = ""
    formula: str = ""
    options: dict = {}  # option -> default (besides ``share``)
    learned: tuple[str, ...] = ()  # names of learned parameters
    default_share: str = "layer"
    grounded: bool = False  # f(0) == 0 by definition
    grad_clip: dict = {}  # learned parameter -> max gradient norm during training

    def __init__(self, channels: int | None = None, share: str | None = None, **opts):
        super().__init__()
        share = share or self.default_share
        if share == "channel" and not channels:
            raise RobenchError(f"{self.name} with share=channel needs the channel count of its layer.")
        self.share = share
        self.channels = channels if share == "channel" else None
        self.opts = {**self.options, **opts}

    def _param(self, name: str, value, *extra: int) -> None:
        """Register a learned parameter, scalar or per channel, filled with ``value``."""
        shape = ((self.channels,) if self.channels else ()) + tuple(extra)
        self.register_parameter(name, nn.Parameter(torch.full(shape, float(value))))

    def _b(self, p: torch.Tensor, x: torch.Tensor, extra: int = 0) -> torch.Tensor:
        """View a parameter so that it broadcasts over ``x`` (channels on dim 1)."""
        if not self.channels:
            return p
        tail = p.shape[1:] if extra else ()
        return p.reshape((1, self.channels) + (1,) * (x.dim() - 2) + tuple(tail))

    def learned_values(self) -> dict[str, list[float] | float]:
        """The learned parameters as plain numbers, for `robench info` and reports."""
        out = {}
        for pname in self.learned:
            t = getattr(self, pname).detach().cpu()
            out[pname] = t.item() if t.numel() == 1 else [round(v, 6) for v in t.flatten().tolist()]
        return out

    penalty_formula: str | None = None  # what penalty() adds to the loss; {option} fills in the option's value

    def penalty(self) -> torch.Tensor | None:
        """A training-loss term the activation asks for (PSSiLU's lambda*|beta|); None for most."""
        return None

    def extra_repr(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.opts.items())
        return (
            f"share={self.share}"
            + (f", channels={self.channels}" if self.channels else "")
            + (f", {opts}" if opts else "")
        )


# ----------------------------------------------------------------------------------- fixed functions
class _Fixed(Activation):
    fn = staticmethod(F.relu)

    def forward(self, x):
        return self.fn(x)


# --------------------------------------------------------------------------------- learned functions
class _Alpha(Activation):
    """A learned function of one parameter, alpha, started at the option ``alpha0``."""

    options, learned = {"alpha0": 1.0}, ("alpha",)

    def __init__(self, channels=None, share=None, **opts):
        super().__init__(channels, share, **opts)
        self._param("alpha", self.opts["alpha0"])


@ACTIVATIONS.register()
class ReLU(_Fixed):
    name, formula, grounded = "relu", "max(0, x)", True
    fn = staticmethod(F.relu)


@ACTIVATIONS.register()
class LeakyReLU(Activation):
    name, formula, grounded = "leaky_relu", "x if x > 0 else slope*x", True
    options = {"slope": 0.01}

    def forward(self, x):
        return F.leaky_relu(x, self.opts["slope"])


@ACTIVATIONS.register()
class PReLU(_Alpha):
    name, formula, grounded = "prelu", "x if x > 0 else alpha*x", True
    options = {"alpha0": 0.0}

    def forward(self, x):
        return torch.where(x > 0, x, self._b(self.alpha, x) * x)


@ACTIVATIONS.register()
class ELU(Activation):
    name, formula, grounded = "elu", "x if x > 0 else alpha*(exp(x) - 1)", True
    options = {"alpha": 1.0}

    def forward(self, x):
        return F.elu(x, self.opts["alpha"])


@ACTIVATIONS.register()
class PELU(_Alpha):
    name, formula, grounded = "pelu", "x if x > 0 else alpha*(exp(x) - 1)", True

    def forward(self, x):
        return torch.where(x > 0, x, self._b(self.alpha, x) * torch.expm1(torch.clamp(x, max=0)))


@ACTIVATIONS.register()
class SiLU(_Fixed):
    name, formula, grounded = "silu", "x * sigmoid(x)", True
    fn = staticmethod(F.silu)


@ACTIVATIONS.register()
class PSiLU(_Alpha):
    name, formula, grounded = "psilu", "x * sigmoid(|alpha|*x)", True

    def forward(self, x):
        return x * torch.sigmoid(self._b(self.alpha, x).abs() * x)


@ACTIVATIONS.register()
class GELU(_Fixed):
    name, formula, grounded = "gelu", "x * Phi(x)", True
    fn = staticmethod(F.gelu)


@ACTIVATIONS.register()
class Softplus(Activation):
    name, formula = "softplus", "log(1 + exp(beta*x)) / beta"
    options = {"beta": 1.0}

    def forward(self, x):
        return F.softplus(x, beta=self.opts["beta"])


@ACTIVATIONS.register()
class PSoftplus(_Alpha):
    name, formula = "psoftplus", "log(1 + exp(|alpha|*x)) / |alpha|"

    def forward(self, x):
        a = self._b(self.alpha, x).abs()
        return -F.logsigmoid(-a * x) / a


@ACTIVATIONS.register()
class Tanh(_Fixed):
    name, formula, grounded = "tanh", "tanh(x)", True
    fn = staticmethod(torch.tanh)


@ACTIVATIONS.register()
class Sigmoid(_Fixed):
    name, formula = "sigmoid", "1 / (1 + exp(-x))"
    fn = staticmethod(torch.sigmoid)


@ACTIVATIONS.register()
class SPLASH(Activation):
    """Symmetric hinges at fixed locations b_k = linspace(0, hinge_max, K), K = (hinges+1)/2; learned slopes."""

    name, grounded = "splash", True
    formula = "sum_k a+_k*max(0, x - b_k) + a-_k*max(0, -x - b_k)"
    options, learned = {"hinges": 7, "hinge_max": 2.5}, ("slopes_pos", "slopes_neg")
    slopes_pos: torch.Tensor
    slopes_neg: torch.Tensor
    hinge_locations: torch.Tensor

    def __init__(self, channels=None, share=None, **opts):
        super().__init__(channels, share, **opts)
        s = int(self.opts["hinges"])
        if s < 1 or s % 2 == 0:
            raise RobenchError(f"splash needs an odd number of hinges (1, 3, 5, 7 ...), not {s}.")
        k = (s + 1) // 2
        self.register_buffer("hinge_locations", torch.linspace(0.0, float(self.opts["hinge_max"]), k))
        self._param("slopes_pos", 0.0, k)
        self._param("slopes_neg", 0.0, k)
        with torch.no_grad():
            self.slopes_pos[..., 0] = 1.0  # ReLU at init

    def terms(self, x: torch.Tensor) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
        """(b_k, a+_k, a-_k) per hinge, in order, the slopes viewed to broadcast over ``x``."""
        pos, neg = self._b(self.slopes_pos, x, 1), self._b(self.slopes_neg, x, 1)
        return [(b, pos[..., k], neg[..., k]) for k, b in enumerate(self.hinge_locations.tolist())]

    def forward(self, x):
        return hinge_sum(x, self.terms(x))


def hinge_sum(x: torch.Tensor, terms, inplace: bool = False) -> torch.Tensor:
    """SPLASH's value, ((0 + a+_0*relu(x - b_0)) + a-_0*relu(-x - b_0)) + ..., term by term in order: the
    one definition that the module and its attack-time stand-in (nn/accelerate.py) both run. ``inplace``
    computes the same operations into fewer temporaries, for inputs that need no autograd graph; the two
    give bit-identical values."""
    out = torch.zeros_like(x)
    for b, p, n in terms:
        if inplace:
            out.add_(torch.sub(x, b).relu_().mul_(p))
            out.add_(torch.neg(x).sub_(b).relu_().mul_(n))
        else:
            out = out + p * F.relu(x - b) + n * F.relu(-x - b)
    return out


@ACTIVATIONS.register()
class PSSiLU(Activation):
    name, formula, grounded = "pssilu", "x * (sigmoid(|alpha|*x) - |beta|) / (1 - |beta|)", True
    options, learned = {"alpha0": 1.0, "beta0": 1e-8, "lam": 10.0}, ("alpha", "beta")
    default_share = "network"
    grad_clip = {"beta": 0.01}  # as in the official PAF code

    def __init__(self, channels=None, share=None, **opts):
        super().__init__(channels, share, **opts)
        self._param("alpha", self.opts["alpha0"])
        self._param("beta", self.opts["beta0"])

    def forward(self, x):
        a, b = self._b(self.alpha, x).abs(), self._b(self.beta, x).abs()
        return x * (torch.sigmoid(a * x) - b) / (1 - b)

    penalty_formula = "lam*|beta|, lam={lam}"

    def penalty(self):
        return self.opts["lam"] * self.beta.abs().sum()


@ACTIVATIONS.register()
class APL(Activation):
    """Adaptive piecewise linear (Agostinelli et al. 2015): max(0,x) + sum_s a_s*max(0, -x + b_s)."""

    name, formula = "apl", "max(0, x) + sum_s a_s*max(0, -x + b_s)"
    options, learned = {"hinges": 2}, ("a", "b")

    def __init__(self, channels=None, share=None, **opts):
        super().__init__(channels, share, **opts)
        s = int(self.opts["hinges"])
        if s < 1:
            raise RobenchError(f"apl needs at least one hinge, not {s}.")
        self._param("a", 0.0, s)
        self._param("b", 0.0, s)
        with torch.no_grad():  # a fixed, seed-free start: small slopes, hinges spread over [0, 1]
            self.a.copy_(torch.full_like(self.a, 0.1))
            self.b.copy_(torch.linspace(0.0, 1.0, s).expand_as(self.b))

    def forward(self, x):
        a, b = self._b(self.a, x, 1), self._b(self.b, x, 1)
        out = F.relu(x)
        for s in range(a.shape[-1]):
            out = out + a[..., s] * F.relu(-x + b[..., s])
        return out


# ------------------------------------------------------------------------------------------- specs
def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class ActivationSpec:
    name: str
    options: dict = field(default_factory=dict)

    @property
    def cls(self) -> type[Activation]:
        return ACTIVATIONS[self.name]

    @property
    def share(self) -> str:
        return self.options.get("share", self.cls.default_share)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))


def parse_activation(spec: str | ActivationSpec) -> ActivationSpec:
    """Parse and validate ``name[:k=v,...]``; unknown names and options get the closest valid ones."""
    if isinstance(spec, ActivationSpec):
        return spec
    text = str(spec).strip()
    typed, _, rest = text.partition(":")
    cls = ACTIVATIONS.find(typed.strip().lower())
    name = cls.name
    valid = set(cls.options) | ({"share"} if cls.learned else set())
    options = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq:
            raise RobenchError(f'Activation option "{item}" in "{text}" needs the form key=value.')
        if key not in valid:
            if key == "share":
                raise RobenchError(f"{name} has no learned parameters, so share= does not apply to it.")
            raise unknown(f"option of {name}", key, valid or ["(none)"])
        options[key] = _value(val.strip())
    if options.get("share", "layer") not in SHARES:
        raise unknown("share mode", options["share"], SHARES)
    return ActivationSpec(name, options)


def create_activation(spec: str | ActivationSpec, channels: int | None = None) -> Activation:
    """One activation module from a spec string (``share=channel`` needs ``channels``)."""
    s = parse_activation(spec)
    opts = dict(s.options)
    share = opts.pop("share", None)
    return s.cls(channels=channels, share=share, **opts)


class ActivationFactory:
    """What architectures call at each activation site: ``factory(channels) -> nn.Module``.

    With ``share=network`` every call returns the same instance, so the whole network has one set of
    activation parameters."""

    def __init__(self, spec: str | ActivationSpec):
        self.spec = parse_activation(spec)
        self._shared: Activation | None = None

    @property
    def share(self) -> str:
        return self.spec.share

    def __call__(self, channels: int | None = None) -> Activation:
        if self.spec.cls.learned and self.share == "network":
            if self._shared is None:
                self._shared = create_activation(self.spec)
            return self._shared
        return create_activation(self.spec, channels if self.share == "channel" else None)


def activation_modules(model: nn.Module) -> list[Activation]:
    """The distinct activation instances of a model (a network-shared one appears once)."""
    seen, out = set(), []
    for m in model.modules():
        if isinstance(m, Activation) and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def activation_penalty(model: nn.Module) -> torch.Tensor | float:
    """Sum of the training penalties the model's activations ask for (0 when none)."""
    terms = [t for m in activation_modules(model) if (t := m.penalty()) is not None]
    return sum(terms) if terms else 0.0


def clip_activation_gradients(model: nn.Module) -> None:
    """Clip the gradient norm of the activation parameters that ask for it (PSSiLU's beta to 0.01)."""
    for m in activation_modules(model):
        for pname, max_norm in m.grad_clip.items():
            nn.utils.clip_grad_norm_([getattr(m, pname)], max_norm)


def describe_activations() -> list[dict]:
    """One row per registered activation: name, formula, learned parameters, options, default sharing."""
    rows = []
    for name, cls in ACTIVATIONS.items():
        aliases = [a for a, n in ALIASES.items() if n == name]
        rows.append(
            {
                "name": name,
                "aliases": aliases,
                "formula": cls.formula,
                "learned": list(cls.learned),
                "options": dict(cls.options),
                "share": cls.default_share if cls.learned else "-",
                "grounded": cls.grounded,
            }
        )
    return rows
