"""Read which activation functions a network of someone else's code applies, so that a model is labelled with
what it computes rather than with a default.

The network is traced with ``torch.fx`` (an exported program already is a graph); each activation it calls,
as a module (``nn.Tanh()``, robench's own), a function (``F.relu``, ``torch.tanh``) or a tensor method
(``x.relu()``), is named as robench's registry names it. ``x * sigmoid(x)`` counts as SiLU. A network whose
forward pass cannot be traced (data-dependent control flow) gives ``None``: its activation cannot be read."""

from __future__ import annotations

import operator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RobenchError
from .activations import Activation, parse_activation

MODULES: dict[type, str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.LeakyReLU: "leaky_relu",
    nn.PReLU: "prelu",
    nn.ELU: "elu",
    nn.SELU: "selu",
    nn.CELU: "celu",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.Mish: "mish",
    nn.Softplus: "softplus",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.Hardtanh: "hardtanh",
    nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Softsign: "softsign",
    nn.LogSigmoid: "logsigmoid",
    nn.Tanhshrink: "tanhshrink",
}
# functions and tensor methods by name (torch.relu, F.relu, x.relu(), relu_ in place; aten.relu in a graph)
NAMES = {name: name for name in MODULES.values()} | {"swish": "silu", "hardswish": "hardswish", "rrelu": "rrelu"}
FUNCTIONS = {getattr(F, n, None) for n in NAMES} | {getattr(torch, n, None) for n in NAMES}
FUNCTIONS.discard(None)


def _name(text: str) -> str | None:
    """robench's name for an activation function or method called ``text`` (relu_, aten.relu.default)."""
    base = text.split(".")[-2] if text.startswith("aten.") else text
    base = base.removesuffix("_")
    return NAMES.get(base)


def _graph(model: nn.Module):
    """The model's graph: its own when it is a graph already, else an fx trace; None when untraceable."""
    from torch import fx

    if isinstance(model, fx.GraphModule):
        return model

    class Tracer(fx.Tracer):  # robench's own activations are read as modules, not traced into
        def is_leaf_module(self, m, name):
            return isinstance(m, Activation) or super().is_leaf_module(m, name)

    try:
        return fx.GraphModule(model, Tracer().trace(model))
    except Exception:  # data-dependent control flow, unsupported calls: the activation cannot be read
        return None


def detect_activation(model: nn.Module) -> str | None:
    """The activation ``model`` applies: one name ("tanh"), several joined with "+" ("relu+sigmoid") when it
    mixes them, "none" for a network without one, or None when its forward pass cannot be read."""
    gm = _graph(model)
    if gm is None:
        return None
    modules = dict(gm.named_modules())
    found: list[str] = []
    for node in gm.graph.nodes:
        name = None
        if node.op == "call_module":
            m = modules.get(node.target)
            name = m.name if isinstance(m, Activation) else MODULES.get(type(m))
        elif node.op == "call_function" and node.target in FUNCTIONS:
            name = _name(node.target.__name__)
        elif node.op == "call_function" and str(node.target).startswith("aten."):
            name = _name(str(node.target))
        elif node.op == "call_method":
            name = _name(str(node.target))
        if name == "sigmoid" and _gates_own_input(node):
            name = "silu"
        if name and name not in found:
            found.append(name)
    return "+".join(sorted(found)) if found else "none"


def _gates_own_input(node) -> bool:
    """``x * sigmoid(x)``: the sigmoid's output multiplies the sigmoid's own input (SiLU written out)."""
    if not node.args:
        return False
    x = node.args[0]
    muls = {operator.mul, torch.mul, "mul"}
    for user in node.users:
        target = user.target if user.op == "call_function" else user.target if user.op == "call_method" else None
        if (target in muls or str(target).startswith("aten.mul")) and x in user.args:
            return True
    return False


def activation_label(net: nn.Module, meta: dict, path: Path, built: bool = False) -> str:
    """The label of a model of someone else's code: the activation read from its forward pass; where it
    cannot be read, the one the user or the card names (``meta["activation"]``); else "unknown", never a
    guess. ``built``: robench built it with the named activation (the class takes one as an argument). A
    named activation that contradicts the forward pass is one sentence."""
    given = meta.get("activation")
    if given and built:
        return str(given)
    seen = detect_activation(net)
    if seen is None:
        return str(given) if given else "unknown"
    if given and not _same(str(given), seen):
        raise RobenchError(
            f"{path} is a {meta.get('arch')} whose forward pass applies {seen}, but --activation (or its card) "
            f"says {given}; leave --activation out, or name the activation it applies."
        )
    return seen


def _same(given: str, seen: str) -> bool:
    try:
        name = parse_activation(given).name
    except RobenchError:
        name = given.split(":")[0].strip().lower()
    return name == seen
