import pytest
import torch
from torch import nn

import robench
from robench.errors import RobenchError
from robench.nn.activations import Activation, ActivationFactory

SMALL = [("lenet5", 1, 28), ("lenet5", 3, 32), ("allcnn", 1, 28), ("nin", 3, 32), ("resnet20", 3, 32),
         ("preact_resnet18", 3, 32), ("wrn-10-1", 3, 32)]


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
    for k in ("conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.conv1.weight",
              "block1.layer.0.convShortcut.weight", "block2.layer.3.conv2.weight",
              "block3.layer.0.convShortcut.weight", "bn1.running_mean", "fc.weight", "fc.bias"):
        assert k in keys
    assert "block1.layer.1.convShortcut.weight" not in keys
    n = sum(p.numel() for p in robench.create_model("wrn-28-10").parameters())
    assert n == 36_479_194  # RobustBench's WRN-28-10


def test_normalization_lives_inside_the_model_and_is_not_in_the_state_dict():
    model = robench.create_model("lenet5", in_channels=1, input_size=28, mean=[0.5], std=[0.25]).eval()
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(model(x), model.net((x - 0.5) / 0.25))
    assert not any(k.startswith("normalize") for k in model.state_dict())


@pytest.mark.parametrize("arch,fragment", [("resnet21", "did you mean resnet20"), ("wrn-27-10", "6n\\+4"),
                                           ("transformer", "Unknown architecture")])
def test_bad_architectures(arch, fragment):
    with pytest.raises(RobenchError, match=fragment):
        robench.create_model(arch)
