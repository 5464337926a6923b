import math

import numpy as np
import pytest
import torch

import robench
from robench.errors import RobenchError
from robench.nn.activations import ACTIVATIONS, activation_modules, create_activation

X = np.linspace(-6, 6, 241)


def sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def run(spec, x=X, **params):
    act = create_activation(spec)
    with torch.no_grad():
        for name, value in params.items():
            getattr(act, name).copy_(torch.as_tensor(value, dtype=torch.float32))
        return act(torch.tensor(x, dtype=torch.float64).float()).double().numpy()


def splash_ref(x, pos, neg, b):
    return sum(pos[k] * np.maximum(0, x - b[k]) + neg[k] * np.maximum(0, -x - b[k]) for k in range(len(b)))


# each formula against an independent numpy expression, with non-default parameters
CASES = [
    ("relu", {}, lambda x: np.maximum(0, x)),
    ("leaky_relu:slope=0.2", {}, lambda x: np.where(x > 0, x, 0.2 * x)),
    ("prelu", {"alpha": 0.3}, lambda x: np.where(x > 0, x, 0.3 * x)),
    ("elu", {}, lambda x: np.where(x > 0, x, np.exp(x) - 1)),
    ("pelu", {"alpha": 1.7}, lambda x: np.where(x > 0, x, 1.7 * (np.exp(x) - 1))),
    ("silu", {}, lambda x: x * sig(x)),
    ("swish", {}, lambda x: x * sig(x)),
    ("psilu", {"alpha": -2.0}, lambda x: x * sig(2.0 * x)),
    ("gelu", {}, lambda x: np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])),
    ("softplus", {}, lambda x: np.log1p(np.exp(x))),
    ("psoftplus", {"alpha": 3.0}, lambda x: np.log1p(np.exp(3.0 * x)) / 3.0),
    ("tanh", {}, np.tanh),
    ("sigmoid", {}, sig),
    ("pssilu", {"alpha": 1.5, "beta": -0.2}, lambda x: x * (sig(1.5 * x) - 0.2) / 0.8),
    (
        "splash",
        {"slopes_pos": [0.9, 0.3, -0.2, 0.5], "slopes_neg": [0.1, -0.4, 0.2, 0.7]},
        lambda x: splash_ref(x, [0.9, 0.3, -0.2, 0.5], [0.1, -0.4, 0.2, 0.7], np.linspace(0, 2.5, 4)),
    ),
    (
        "splash:hinges=3,hinge_max=1.0",
        {"slopes_pos": [1.0, 2.0], "slopes_neg": [0.5, -1.0]},
        lambda x: splash_ref(x, [1.0, 2.0], [0.5, -1.0], [0.0, 1.0]),
    ),
    (
        "apl",
        {"a": [0.5, -0.3], "b": [0.2, 1.5]},
        lambda x: np.maximum(0, x) + 0.5 * np.maximum(0, -x + 0.2) - 0.3 * np.maximum(0, -x + 1.5),
    ),
]


@pytest.mark.parametrize("spec,params,ref", CASES, ids=[c[0] for c in CASES])
def test_formula_matches_independent_expression(spec, params, ref):
    np.testing.assert_allclose(run(spec, **params), ref(X), rtol=1e-5, atol=1e-5)


def test_every_registered_activation_has_a_formula_test():
    tested = {robench.parse_activation(c[0]).name for c in CASES}
    assert tested == set(ACTIVATIONS)


@pytest.mark.parametrize("name", [n for n, c in ACTIVATIONS.items() if c.grounded])
def test_grounded_ones_map_zero_to_zero(name):
    assert run(name, x=np.array([0.0]))[0] == 0.0


def test_psoftplus_is_stable_for_large_inputs():
    out = run("psoftplus", x=np.array([-200.0, 200.0]), alpha=5.0)
    assert np.isfinite(out).all() and out[1] == pytest.approx(200.0) and out[0] == pytest.approx(0.0, abs=1e-30)


def test_splash_at_init_is_relu_and_has_fixed_symmetric_hinges():
    act = create_activation("splash")
    assert act.hinge_locations.tolist() == pytest.approx([0.0, 2.5 / 3, 5.0 / 3, 2.5])
    assert not act.hinge_locations.requires_grad
    assert act.slopes_pos.shape == (4,) and act.slopes_neg.shape == (4,)
    np.testing.assert_allclose(run("splash"), np.maximum(0, X), atol=1e-6)
    assert {n for n, _ in act.named_parameters()} == {"slopes_pos", "slopes_neg"}


def test_prelu_starts_at_zero_as_in_the_paper():
    assert create_activation("prelu").alpha.item() == 0.0


def test_pssilu_at_init_equals_silu():
    np.testing.assert_allclose(run("pssilu"), X * sig(X), atol=1e-6)
    act = create_activation("pssilu")
    assert act.alpha.item() == 1.0 and act.beta.item() == pytest.approx(1e-8)
    assert act.penalty().item() == pytest.approx(10 * 1e-8)


@pytest.mark.parametrize("name", [n for n, c in ACTIVATIONS.items() if c.learned])
@pytest.mark.parametrize("share", ["layer", "channel"])
def test_gradients_reach_every_parameter(name, share):
    act = create_activation(f"{name}:share={share}", channels=3)
    x = (torch.randn(4, 3, 5, 5) * 3).requires_grad_()
    act(x).sum().backward()
    for pname, p in act.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert (p.grad != 0).all(), f"{name}.{pname} gets no gradient"
    assert (x.grad != 0).any()


def act_params(model):
    return sum(p.numel() for m in activation_modules(model) for p in m.parameters())


# lenet5 has 4 activation sites with 6, 16, 120, 84 channels
@pytest.mark.parametrize(
    "spec,expected",
    [
        ("relu", 0),
        ("splash:share=network", 8),
        ("splash", 4 * 8),
        ("splash:share=channel", (6 + 16 + 120 + 84) * 8),
        ("pssilu", 2),
        ("pssilu:share=layer", 4 * 2),
        ("pssilu:share=channel", 226 * 2),
        ("prelu", 4),
        ("prelu:share=channel", 226),
        ("apl:hinges=3", 4 * 6),
    ],
)
def test_sharing_modes_give_the_right_parameter_counts(spec, expected):
    model = robench.create_model("lenet5", spec, in_channels=1, input_size=28)
    assert act_params(model) == expected
    # the total also counts shared parameters once
    base = sum(p.numel() for p in robench.create_model("lenet5", "relu", in_channels=1, input_size=28).parameters())
    assert sum(p.numel() for p in model.parameters()) == base + expected


def test_network_sharing_uses_one_instance_everywhere():
    model = robench.create_model("resnet20", "pssilu:share=network")
    assert len(activation_modules(model)) == 1


@pytest.mark.parametrize(
    "spec,fragment",
    [
        ("reluu", "did you mean relu"),
        ("splash:hinge=7", "hinges"),
        ("relu:share=channel", "no learned parameters"),
        ("splash:hinges=4", "odd number of hinges"),
        ("prelu:share=everything", "share mode"),
        ("splash:hinges", "key=value"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, fragment):
    with pytest.raises(RobenchError, match=fragment):
        create_activation(spec, channels=4)


def test_spec_round_trips_through_its_string():
    s = robench.parse_activation("SPLASH:share=channel,hinges=5")
    assert str(s) == "splash:hinges=5,share=channel"
    assert robench.parse_activation(str(s)) == s
