import pytest
import torch
from torch import nn

import robench
from robench.errors import RobenchError
from robench.nn.activations import Activation, ActivationFactory

SMALL = [
    ("lenet5", 1, 28),
    ("lenet5", 3, 32),
    ("allcnn", 1, 28),
    ("nin", 3, 32),
    ("resnet20", 3, 32),
    ("preact_resnet18", 3, 32),
    ("wrn-10-1", 3, 32),
]


class Counting(ActivationFactory):
    def __init__(self, spec):
        super().__init__(spec)
        self.calls = []

    def __call__(self, channels=None):
        self.calls.append(channels)
        return super().__call__(channels)


@pytest.mark.parametrize("arch,cin,size", SMALL)
def test_every_activation_site_comes_from_the_factory(arch, cin, size):
    fac = Counting("psilu:share=channel")
    model = robench.create_model(arch, fac, num_classes=7, in_channels=cin, input_size=size).eval()
    assert fac.calls and all(c for c in fac.calls)
    fixed = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.ELU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.PReLU)
    assert not any(isinstance(m, fixed) for m in model.modules())
    assert sum(isinstance(m, Activation) for m in model.modules()) == len(fac.calls)
    assert model(torch.rand(2, cin, size, size)).shape == (2, 7)


def test_torchvision_model_has_its_activations_replaced():
    model = robench.create_model("resnet18", "splash", num_classes=5).eval()
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert any(isinstance(m, Activation) and m.name == "splash" for m in model.modules())
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 5)
    with pytest.raises(RobenchError, match="share=channel"):
        robench.create_model("resnet18", "splash:share=channel")


def test_wrn_uses_robustbench_parameter_names():
    keys = set(robench.create_model("wrn-28-10").net.state_dict())
    for k in (
        "conv1.weight",
        "block1.layer.0.bn1.weight",
        "block1.layer.0.conv1.weight",
        "block1.layer.0.convShortcut.weight",
        "block2.layer.3.conv2.weight",
        "block3.layer.0.convShortcut.weight",
        "bn1.running_mean",
        "fc.weight",
        "fc.bias",
    ):
        assert k in keys
    assert "block1.layer.1.convShortcut.weight" not in keys
    n = sum(p.numel() for p in robench.create_model("wrn-28-10").parameters())
    assert n == 36_479_194  # RobustBench's WRN-28-10


def test_normalization_lives_inside_the_model_and_its_state_dict_keeps_it(tmp_path):
    model = robench.create_model("lenet5", in_channels=1, input_size=28, mean=[0.5], std=[0.25]).eval()
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(model(x), model.net((x - 0.5) / 0.25))
    assert not any(k.startswith("normalize") for k in model.net.state_dict())  # the net keeps its own key layout
    # a user's torch.save(model.state_dict()) loads back with --arch, normalisation included
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    loaded = robench.load_checkpoint(tmp_path / "sd.pt", arch="lenet5", dataset="fashion-mnist").model
    assert torch.equal(loaded(x), model(x))


def test_create_model_takes_its_input_shape_classes_and_normalisation_from_a_dataset():
    model = robench.create_model("lenet5", "splash", dataset="fashion-mnist").eval()
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert model.normalize.mean.flatten().tolist() == pytest.approx([0.286], abs=1e-3)
    assert robench.create_model("lenet5", dataset="fashion-mnist", num_classes=3)(torch.rand(2, 1, 28, 28)).shape == (
        2,
        3,
    )


def test_your_own_class_by_import_path_with_options_and_the_activation(tmp_path, monkeypatch):
    """--arch file.py:Class(k=v) and package.module:Class build the user's class (their code, by their
    choice); a file whose metadata names such a path is refused unless the user names it or trusts it."""
    from typer.testing import CliRunner

    from robench.cli import app

    (tmp_path / "tinynets.py").write_text(
        "import torch.nn as nn\n"
        "class TinyNet(nn.Module):\n"
        "    def __init__(self, num_classes=10, in_channels=3, input_size=32, act_layer=None, width=16):\n"
        "        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size ** 2, width),\n"
        "                                  act_layer(width) if act_layer else nn.ReLU(), nn.Linear(width, num_classes))\n"
        "    def forward(self, x):\n"
        "        return self.body(x)\n"
        "class NoAct(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(784, 10)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1))\n"
    )
    arch = str(tmp_path / "tinynets.py") + ":TinyNet(width=8)"
    model = robench.create_model(arch, "psilu", dataset="fashion-mnist")
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10) and model.net.body[1].out_features == 8
    assert type(model.net.body[2]).__name__ != "ReLU"  # the activation factory reached the user's class
    monkeypatch.syspath_prepend(str(tmp_path))
    assert robench.create_model("tinynets:NoAct", dataset="fashion-mnist")(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(robench.RobenchError, match="takes no act_layer"):
        robench.create_model("tinynets:NoAct", "splash", dataset="fashion-mnist")
    with pytest.raises(robench.RobenchError, match="defines no class Missing"):
        robench.create_model("tinynets:Missing")
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    r = CliRunner().invoke(
        app, ["info", str(tmp_path / "tiny.pt"), "--arch", arch, "--activation", "psilu", "--dataset", "fashion-mnist"]
    )
    assert r.exit_code == 0 and "TinyNet(width=8)" in r.output
    (tmp_path / "tiny.pt.json").write_text(f'{{"arch": "{arch}", "activation": "psilu", "dataset": "fashion-mnist"}}')
    r = CliRunner().invoke(app, ["info", str(tmp_path / "tiny.pt")])
    assert r.exit_code == 2 and "would import and run" in r.output
    assert CliRunner().invoke(app, ["info", str(tmp_path / "tiny.pt"), "--trust-checkpoint"]).exit_code == 0
    r = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "250"})
    assert "file.py:Class" in r.output and "runs your code" in r.output


@pytest.mark.parametrize(
    "arch,fragment",
    [("resnet21", "did you mean resnet20"), ("wrn-27-10", "6n\\+4"), ("transformer", "Unknown architecture")],
)
def test_bad_architectures(arch, fragment):
    with pytest.raises(RobenchError, match=fragment):
        robench.create_model(arch)
