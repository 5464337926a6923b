"""robench.nn.accelerate: the accelerated model computes the same function, with the same weights."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robench
from robench.engine.core import attack_mode
from robench.nn.accelerate import FastSPLASH, FrozenBatchNorm, InputGradConv, WindowMaxPool, accelerate, swap
from robench.nn.activations import SPLASH


def frozen(arch, act, seed=0, **kw):
    torch.manual_seed(seed)
    model = robench.create_model(arch, act, num_classes=10, **kw).eval()
    for m in model.modules():  # non-trivial batch-norm statistics, as a trained model has
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.requires_grad_(False)


def input_grad(model, x, y):
    x = x.clone().requires_grad_(True)
    z = model(x)
    (g,) = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), x)
    return z.detach(), g


@pytest.mark.parametrize("act", ["relu", "splash", "prelu", "silu", "pssilu"])
def test_lenet_forward_is_bit_identical_and_the_input_gradient_agrees(act):
    model = frozen("lenet5", act, in_channels=1, input_size=28)
    fast = accelerate(model, "cpu")
    kinds = {type(m) for m in fast.modules()}
    assert InputGradConv in kinds and WindowMaxPool in kinds  # LeNet's first conv and both pools are swapped
    x = torch.rand(37, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (37,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(x), fast(x))
    z0, g0 = input_grad(model, x, y)
    z1, g1 = input_grad(fast, x, y)
    assert torch.equal(z0, z1)
    assert torch.allclose(g0, g1, rtol=1e-4, atol=1e-6 * g0.abs().max())
    assert (g0.sign() == g1.sign()).float().mean() > 0.999  # what a Linf step uses


def test_weights_are_shared_not_copied_and_settings_come_back():
    model = frozen("lenet5", "prelu", in_channels=1, input_size=28).requires_grad_(True).train()
    with attack_mode(model) as fast:
        assert fast is not model and not model.training
        assert {id(p) for p in fast.parameters()} == {id(p) for p in model.parameters()}
        assert {id(b) for b in fast.buffers()} == {id(b) for b in model.buffers()}
        assert not any(p.requires_grad for p in model.parameters())
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_window_pool_equals_max_pool_in_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    for shape, k in [
        ((3, 4, 28, 28), 2),
        ((2, 3, 9, 11), 2),
        ((2, 2, 10, 10), 3),
        ((1, 16, 4, 4), 4),
        ((2, 3, 6, 6), 1),
    ]:
        x = torch.randn(shape, generator=g)
        x[0, 0, 0, 0] = float("nan")
        x[0, 1, :2, :2] = 0.5  # a tie
        x[-1, -1, :k, :k] = float("-inf")
        x[-1, 0] = x[-1, 0].clamp_min(0)  # after a ReLU most windows tie at zero
        if k == 2:  # a channels-last input (a model converted for speed) pools the same
            x = x.contiguous(memory_format=torch.channels_last)
        pool = WindowMaxPool(nn.MaxPool2d(k), k)
        with torch.no_grad():
            torch.testing.assert_close(pool(x), F.max_pool2d(x, k), rtol=0, atol=0, equal_nan=True)
        xg = x.nan_to_num().requires_grad_(True)  # the gradient goes to the element PyTorch picks
        go = torch.randn(F.max_pool2d(xg, k).shape, generator=g)
        assert torch.equal(
            torch.autograd.grad(pool(xg), xg, go)[0], torch.autograd.grad(F.max_pool2d(xg, k), xg, go)[0]
        )


def test_flipped_gradient_conv_matches_autograd_for_every_padding_and_under_bf16():
    g = torch.Generator().manual_seed(0)
    for cin, cout, k, pad in [
        (1, 6, 5, 2),
        (3, 8, 3, 1),
        (6, 12, 5, 0),
        (2, 4, (3, 5), (1, 2)),
        (1, 32, 3, 1),
        (1, 5, (5, 3), (1, 0)),
        (1, 4, (1, 3), 0),
    ]:  # one input channel: row taps
        conv = nn.Conv2d(cin, cout, k, padding=pad, bias=True).requires_grad_(False)
        x = torch.randn(5, cin, 13, 12, generator=g, requires_grad=True)
        go = torch.randn(conv(x).shape, generator=g)
        ref = torch.autograd.grad(conv(x), x, go)[0]
        assert swap(conv) is not None
        got = torch.autograd.grad(InputGradConv(conv)(x), x, go)[0]
        assert torch.allclose(ref, got, rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = InputGradConv(conv)(x)
        (gb,) = torch.autograd.grad(out.float(), x, go)
        assert gb.dtype == torch.float32 and torch.allclose(ref, gb, rtol=0.05, atol=0.05 * ref.abs().max())


def test_frozen_batch_norm_forward_is_identical_and_its_gradient_is_the_scale():
    g = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm2d(6)
    bn.running_mean.uniform_(-1, 1, generator=g)
    bn.running_var.uniform_(0.5, 2, generator=g)
    bn.weight.data.uniform_(-2, 2, generator=g)
    bn.eval().requires_grad_(False)
    fast = accelerate(nn.Sequential(bn), "cpu")[0]
    assert isinstance(fast, FrozenBatchNorm)
    x = torch.randn(64, 6, 28, 28, generator=g, requires_grad=True)
    go = torch.randn(x.shape, generator=g)
    assert torch.equal(fast(x), bn(x))
    ref = torch.autograd.grad(bn(x), x, go)[0]
    torch.testing.assert_close(torch.autograd.grad(fast(x), x, go)[0], ref, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x.bfloat16())
    assert torch.autograd.grad(out.float(), x, go)[0].dtype == torch.float32
    fast.train()  # in training mode it is the plain batch norm: batch statistics, running stats updated
    before = bn.running_mean.clone()
    torch.testing.assert_close(fast(x), F.batch_norm(x, None, None, bn.weight, bn.bias, True), rtol=0, atol=0)
    assert not torch.equal(bn.running_mean, before)


@pytest.mark.parametrize("share", ["layer", "channel", "network"])
def test_the_splash_stand_in_gives_the_same_bits_in_value_and_input_gradient(share):
    gen = torch.Generator().manual_seed(0)
    for shape in [(300, 6, 24, 24), (3, 6, 5, 5), (40, 16)]:  # the first runs in several slices
        act = SPLASH(channels=shape[1], share=share)
        for p in (act.slopes_pos, act.slopes_neg):
            p.data.copy_(torch.randn(p.shape, generator=gen))
        act.requires_grad_(False)
        fast = swap(act)
        assert isinstance(fast, FastSPLASH)
        x = 2 * torch.randn(shape, generator=gen)
        h = act.hinge_locations
        x.view(-1)[: 2 * len(h) + 2] = torch.cat([h, -h, torch.tensor([0.0, -0.0])])  # on the hinges
        with torch.no_grad():
            assert torch.equal(fast(x), act(x))
        x.requires_grad_(True)
        go = torch.randn(shape, generator=gen)
        y0, y1 = act(x), fast(x)
        assert torch.equal(y1, y0)
        assert torch.equal(torch.autograd.grad(y1, x, go)[0], torch.autograd.grad(y0, x, go)[0])
        assert torch.equal(torch.autograd.grad(fast(x).sum(), x)[0], torch.autograd.grad(act(x).sum(), x)[0])


def test_a_splash_model_keeps_its_bits_and_learning_slopes_take_the_module():
    model = frozen("resnet20", "splash", in_channels=1, input_size=28)
    for m in model.modules():
        if isinstance(m, SPLASH):
            m.slopes_pos.data.normal_(0.5, 0.5, generator=torch.Generator().manual_seed(3))
            m.slopes_neg.data.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(4))
    fast, without = accelerate(model, "cpu"), accelerate(model, "cpu", skip=(FastSPLASH,))
    assert sum(isinstance(m, FastSPLASH) for m in fast.modules()) == 19
    assert not any(isinstance(m, FastSPLASH) for m in without.modules())
    x = torch.rand(48, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.arange(48) % 10
    (z0, g0), (z1, g1) = input_grad(without, x, y), input_grad(fast, x, y)
    assert torch.equal(z1, z0) and torch.equal(g1, g0)  # the same search direction, bit for bit
    act = SPLASH(share="layer")  # slopes that learn, or another dtype: the module itself, with its gradients
    x = torch.randn(8, 3, requires_grad=True)
    FastSPLASH(act)(x).sum().backward()
    assert act.slopes_pos.grad is not None and x.grad is not None
    assert torch.equal(FastSPLASH(act.requires_grad_(False))(x.double()), act(x.double()))


def test_trainable_weights_and_other_devices_run_the_native_layers():
    conv = nn.Conv2d(1, 6, 5, padding=2)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    InputGradConv(conv)(x).sum().backward()
    assert conv.weight.grad is not None and x.grad is not None  # parameters that learn take the native path
    model = frozen("lenet5", "relu", in_channels=1, input_size=28)
    assert accelerate(model, "meta") is model  # only the CPU gets stand-ins
    wide = frozen("resnet20", "relu", in_channels=3, input_size=32)
    fast = accelerate(wide, "cpu")  # RGB and 16 channels and up: only the batch norms are swapped
    assert InputGradConv not in {type(m) for m in fast.modules()}
    assert sum(isinstance(m, FrozenBatchNorm) for m in fast.modules()) == 21  # 19 + 2 in shortcuts
    x = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # large enough to swap
    y = torch.arange(32) % 10
    z0, g0 = input_grad(wide, x, y)
    z1, g1 = input_grad(fast, x, y)
    assert torch.equal(z0, z1)
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6 * g0.abs().max().item())
