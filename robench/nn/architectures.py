"""Architectures behind one registry. Each builder takes an activation factory (never a hard-coded ReLU).

Every model robench builds is ``Normalized(net, mean, std)``: inputs in [0, 1], normalization inside the
model as in RobustBench. The weights of ``net`` have exactly the key layout of the original architecture
(RobustBench's WideResNet: conv1, block1..3, bn1, fc); the model's own state dict adds the normalization
(normalize.mean, normalize.std), so a saved state dict keeps it. ``--arch path/to/file.py:Class`` builds the
user's own class (robench imports it: the user's code runs, by the user's choice).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import split_spec
from ..errors import RobenchError, unknown
from ..registry import Registry
from .activations import ActivationFactory

Factory = Callable[[int | None], nn.Module]


# ---------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ArchInfo:
    name: str
    build: Callable[..., nn.Module]
    description: str
    input: str  # the inputs it was designed for


# Names fold to lower case with "_" for "-" (preact-resnet18 is preact_resnet18); every architecture
# registers itself below, where it is defined. wrn-D-W stands for a family: resolve_arch reads D and W.
ARCHITECTURES: Registry[ArchInfo] = Registry("architecture", fold=lambda n: n.lower().replace("-", "_"))


def architecture(name: str, description: str, input: str):
    """Decorator: register a builder ``f(act, num_classes, in_channels, input_size, ...)`` under ``name``."""

    def add(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ARCHITECTURES.add(name, ArchInfo(name, build, description, input))
        return build

    return add


def _only(kw: dict) -> dict:
    return {k: kw[k] for k in ("num_classes", "in_channels", "depth", "width") if k in kw}


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None):
        super().__init__()
        self.enabled = mean is not None and std is not None
        m = torch.tensor(mean if self.enabled else [0.0]).view(1, -1, 1, 1)
        s = torch.tensor(std if self.enabled else [1.0]).view(1, -1, 1, 1)
        # in the state dict (normalize.mean, normalize.std), so torch.save(model.state_dict()) keeps the
        # normalisation and robench loads it back; robench's own checkpoints store it in their metadata
        self.register_buffer("mean", m)
        self.register_buffer("std", s)

    def forward(self, x):
        return (x - self.mean) / self.std if self.enabled else x


class Normalized(nn.Module):
    """``net(normalize(x))``: the form of every model robench evaluates."""

    def __init__(self, net: nn.Module, mean=None, std=None):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x):
        return self.net(self.normalize(x))


def _conv_bn_act(act: Factory, cin: int, cout: int, k: int, stride: int = 1, pad: int | None = None):
    pad = k // 2 if pad is None else pad
    return [nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout), act(cout)]


# -------------------------------------------------------------------------------------------- LeNet5
@architecture("lenet5", "LeNet-5 with batch norm (conv 6-16, fc 120-84)", "28x28 or 32x32")
def lenet5(act: Factory, num_classes: int, in_channels: int, input_size: int, **_) -> nn.Module:
    """LeNet-5 (conv 6-16, fc 120-84) with batch norm; 28x28 inputs are padded as in the MNIST variant."""
    pad = 2 if input_size == 28 else 0
    side = ((input_size + 2 * pad - 4) // 2 - 4) // 2
    return nn.Sequential(
        *_conv_bn_act(act, in_channels, 6, 5, pad=pad),
        nn.MaxPool2d(2),
        *_conv_bn_act(act, 6, 16, 5, pad=0),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.BatchNorm1d(120),
        act(120),
        nn.Linear(120, 84),
        nn.BatchNorm1d(84),
        act(84),
        nn.Linear(84, num_classes),
    )


# ------------------------------------------------------------------------------------------- All-CNN
@architecture("allcnn", "All-CNN-C with batch norm (96/192 channels)", "any, >= 28x28")
def allcnn(act: Factory, num_classes: int, in_channels: int, width: int = 96, **_) -> nn.Module:
    """All-CNN-C (Springenberg et al. 2015) with batch norm; `width` scales 96/192."""
    w1, w2 = width, 2 * width
    return nn.Sequential(
        *_conv_bn_act(act, in_channels, w1, 3),
        *_conv_bn_act(act, w1, w1, 3),
        *_conv_bn_act(act, w1, w1, 3, stride=2),
        *_conv_bn_act(act, w1, w2, 3),
        *_conv_bn_act(act, w2, w2, 3),
        *_conv_bn_act(act, w2, w2, 3, stride=2),
        *_conv_bn_act(act, w2, w2, 3, pad=0),
        *_conv_bn_act(act, w2, w2, 1),
        nn.Conv2d(w2, num_classes, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


# -------------------------------------------------------------------------------- Network in Network
@architecture("nin", "Network-in-Network with batch norm", "any, >= 28x28")
def nin(act: Factory, num_classes: int, in_channels: int, **_) -> nn.Module:
    """Network-in-Network (Lin et al. 2014) with batch norm."""
    return nn.Sequential(
        *_conv_bn_act(act, in_channels, 192, 5),
        *_conv_bn_act(act, 192, 160, 1),
        *_conv_bn_act(act, 160, 96, 1),
        nn.MaxPool2d(3, 2, 1),
        nn.Dropout(0.5),
        *_conv_bn_act(act, 96, 192, 5),
        *_conv_bn_act(act, 192, 192, 1),
        *_conv_bn_act(act, 192, 192, 1),
        nn.AvgPool2d(3, 2, 1),
        nn.Dropout(0.5),
        *_conv_bn_act(act, 192, 192, 3),
        *_conv_bn_act(act, 192, 192, 1),
        nn.Conv2d(192, num_classes, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


# ----------------------------------------------------------------------------------------- ResNets
class BasicBlock(nn.Module):
    def __init__(self, act: Factory, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = act(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = act(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-6n+2 for 32x32 inputs (He et al. 2016): 16/32/64 channels, n basic blocks per stage."""

    def __init__(self, act: Factory, num_classes: int, in_channels: int, depth: int = 20):
        super().__init__()
        if (depth - 2) % 6:
            raise RobenchError(f"A CIFAR ResNet needs depth 6n+2 (20, 32, 44, 56 ...), not {depth}.")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = act(16)
        layers, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            for j in range(n):
                layers.append(BasicBlock(act, cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        out = self.layers(self.act1(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


architecture("resnet20", "CIFAR ResNet-20 (16/32/64, 3 blocks per stage)", "32x32 (any)")(
    lambda act, **kw: CifarResNet(act, depth=20, **_only(kw))
)


class PreActBlock(nn.Module):
    def __init__(self, act: Factory, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = act(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = act(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        out = self.act1(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 (He et al. 2016), the layout used by RobustBench's PreActResNet entries."""

    def __init__(self, act: Factory, num_classes: int, in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        cin = 64
        for i, (cout, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2))):
            blocks = [PreActBlock(act, cin, cout, stride), PreActBlock(act, cout, cout, 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.bn = nn.BatchNorm2d(512)
        self.act = act(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.act(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


architecture("preact_resnet18", "PreAct ResNet-18", "32x32 (any)")(lambda act, **kw: PreActResNet18(act, **_only(kw)))


# ------------------------------------------------------------------------------------- WideResNet
class WideBlock(nn.Module):
    """Pre-activation wide block with RobustBench's parameter names (bn1, conv1, bn2, conv2, convShortcut)."""

    def __init__(self, act: Factory, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = act(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = act(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        return out + (x if self.equal else self.convShortcut(pre))


class NetworkBlock(nn.Module):
    def __init__(self, act: Factory, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[WideBlock(act, cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]
        )

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, act: Factory, num_classes: int, in_channels: int, depth: int = 28, width: int = 10):
        super().__init__()
        if (depth - 4) % 6:
            raise RobenchError(f"A WideResNet needs depth 6n+4 (16, 22, 28, 34, 40 ...), not {depth}.")
        if depth > 1000 or not 1 <= width <= 64:  # RobustBench's largest is WRN-106-16
            raise RobenchError(
                f"A WideResNet of depth {depth} and width {width} is beyond what robench builds "
                "(depth up to 1000, width 1 to 64); check the architecture name."
            )
        n = (depth - 4) // 6
        ch = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(act, n, ch[0], ch[1], 1)
        self.block2 = NetworkBlock(act, n, ch[1], ch[2], 2)
        self.block3 = NetworkBlock(act, n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = act(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


architecture("wrn-D-W", "WideResNet depth D, width W (RobustBench key layout), e.g. wrn-28-10", "32x32")(
    lambda act, **kw: WideResNet(act, **_only(kw))
)


# ------------------------------------------------------------------------------------ torchvision
TORCHVISION = ("resnet18", "resnet50", "wide_resnet50_2", "vgg16_bn", "mobilenet_v2", "efficientnet_b0")


def _torchvision(name: str):
    def build(act: Factory, num_classes: int, in_channels: int, **_) -> nn.Module:
        import torchvision

        if in_channels != 3:
            raise RobenchError(f"torchvision's {name} takes 3-channel images, not {in_channels}.")
        if getattr(act, "share", "layer") == "channel":
            raise RobenchError(
                f"torchvision's {name} reuses one activation module at sites of different "
                "widths, so share=channel is not supported there; use share=layer."
            )
        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        targets = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU)
        for parent in list(model.modules()):
            for child_name, child in parent.named_children():
                if isinstance(child, targets):
                    setattr(parent, child_name, act(None))
        return model

    return build


for _name in TORCHVISION:
    architecture(_name, f"torchvision {_name}, activations replaced", "224x224 RGB")(_torchvision(_name))


def is_import_path(arch: str) -> bool:
    """``path/to/file.py:Class`` or ``package.module:Class`` (with options: ``Class(width=8)``): the user's
    own class, which robench imports, running the user's code."""
    return ":" in str(arch)


_IMPORTED: dict[str, object] = {}  # modules imported for --arch, by file or module name: imported once


def _import_class(arch: str):
    import importlib
    import importlib.util

    target, _, rest = arch.strip().rpartition(":")
    cls_name, options = split_spec(rest, "architecture")
    if not target or not cls_name.isidentifier():
        raise RobenchError(
            f'Architecture "{arch}" is not an import path; write path/to/file.py:Class or package.module:Class.'
        )
    # a file is known by where it is, not by how it was named: x.py of another folder is another module
    key = str(Path(target).expanduser().resolve()) if target.endswith(".py") else target
    try:
        if key not in _IMPORTED:
            if target.endswith(".py"):
                path = Path(target).expanduser()
                if not path.is_file():
                    raise RobenchError(f"No such file: {target} (named by --arch {arch}).")
                spec = importlib.util.spec_from_file_location(f"robench_arch_{path.stem}", path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            else:
                module = importlib.import_module(target)
            _IMPORTED[key] = module
    except RobenchError:
        raise
    except Exception as e:  # the user's own code failed to import: say where, in one sentence
        raise RobenchError(
            f"Importing {target} for --arch {arch} failed ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else 'no message'})."
        ) from None
    cls = getattr(_IMPORTED[key], cls_name, None)
    if not callable(cls):
        raise RobenchError(f"{target} defines no class {cls_name} (named by --arch {arch}).")
    return cls, options


def _user_arch(arch: str) -> ArchInfo:
    """An ArchInfo for the user's own class: it gets num_classes, in_channels and input_size where its
    constructor takes them, the activation factory as ``act_layer`` (or ``activation``) where it takes one,
    and the options written after its name."""
    import inspect

    cls, options = _import_class(arch)

    def build(act, num_classes: int, in_channels: int, input_size: int, **_):
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            params = {}
        kw = {
            k: v
            for k, v in (("num_classes", num_classes), ("in_channels", in_channels), ("input_size", input_size))
            if k in params
        }
        slot = next((k for k in ("act_layer", "activation") if k in params), None)
        if slot and act is not None:
            kw[slot] = act
        elif act is not None and not slot and act.spec.name != "relu":
            raise RobenchError(
                f"{arch} takes no act_layer (or activation) argument, so robench cannot build it "
                f"with the activation {act.spec}; add one, or leave --activation out."
            )
        net = cls(**{**kw, **options})
        if not isinstance(net, nn.Module):
            raise RobenchError(f"{arch} built a {type(net).__name__}, not a torch.nn.Module.")
        return net

    return ArchInfo(arch, build, f"{cls.__name__}, your own class ({arch})", "yours")


def takes_activation(arch: str) -> bool:
    """Whether the user's class ``arch`` takes the activation as an argument (``act_layer`` or
    ``activation``), so that robench builds it with the one asked for."""
    import inspect

    cls, _ = _import_class(arch)
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return "act_layer" in params or "activation" in params


def resolve_arch(arch: str) -> tuple[ArchInfo, dict]:
    """The architecture ``arch`` names (a registered name, wrn-D-W with numbers, or an import path) and the
    options its name carries."""
    if is_import_path(arch):
        return _user_arch(arch), {}
    m = re.fullmatch(r"wrn[-_](\d+)[-_](\d+)", arch.strip().lower())
    if m:
        return ARCHITECTURES["wrn-D-W"], {"depth": int(m.group(1)), "width": int(m.group(2))}
    choices = [a for a in ARCHITECTURES if a != "wrn-D-W"] + ["wrn-28-10"]
    info = ARCHITECTURES.find(arch, choices)
    if info.name == "wrn-D-W":  # the family's own name: D and W must be numbers
        raise unknown("architecture", arch, choices)
    return info, {}


def create_model(
    arch: str,
    activation: str | ActivationFactory | None = "relu",
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_size: int | None = None,
    mean=None,
    std=None,
    *,
    dataset: str | None = None,
) -> Normalized:
    """Build ``arch`` with every activation site made by ``activation`` (a spec string or factory; None
    builds the user's own class with the activation its code chooses).

    ``dataset`` (say "fashion-mnist") fills the number of classes, input channels and size and the
    normalisation from that dataset; arguments given explicitly win. Without it: 10 classes, 3 x 32 x 32
    inputs, no normalisation."""
    if dataset is not None:
        from ..data import dataset_info

        info_ = dataset_info(dataset)
        num_classes = info_.num_classes if num_classes is None else num_classes
        in_channels = info_.shape[0] if in_channels is None else in_channels
        input_size = info_.shape[-1] if input_size is None else input_size
        mean = list(info_.mean) if mean is None else mean
        std = list(info_.std) if std is None else std
    num_classes, in_channels, input_size = num_classes or 10, in_channels or 3, input_size or 32
    info, extra = resolve_arch(arch)
    if activation is None and is_import_path(arch):
        act = None  # the user's class as it is written, with its own activation
    else:
        act = activation if isinstance(activation, ActivationFactory) else ActivationFactory(activation or "relu")
    net = info.build(act, num_classes=num_classes, in_channels=in_channels, input_size=input_size, **extra)
    return Normalized(net, mean, std)


def describe_architectures() -> list[dict]:
    return [{"name": a.name, "description": a.description, "input": a.input} for a in ARCHITECTURES.values()]
