"""Attack strength: exact answers on a linear model, AutoAttack identity, PGD vs Foolbox and torchattacks."""

import json

import pytest
import torch
from torch import nn

import robench
from robench.attacks.pgd import PGD
from robench.attacks.registry import create_attack, split_spec
from robench.config import parse_eps
from robench.data import load_split
from robench.engine.core import attack_batch
from robench.errors import RobenchError
from robench.norms import get_norm, random_starts


def linear_problem(n=300, d=20, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, classes)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(classes, d, generator=g))
        lin.bias.copy_(torch.randn(classes, generator=g))
    model = nn.Sequential(nn.Flatten(), lin).eval().requires_grad_(False)
    x = 0.3 + 0.4 * torch.rand(n, 1, 4, 5, generator=g)  # inside [eps, 1 - eps]: the box never binds
    z = model(x)
    y = z.argmax(1)  # every example is classified as its label
    w = lin.weight
    margins = z.gather(1, y[:, None]) - z  # z_y - z_k
    l1 = (w[y][:, None, :] - w[None, :, :]).abs().sum(-1)  # ||w_y - w_k||_1
    dist = (margins / l1).masked_fill(torch.nn.functional.one_hot(y, classes).bool(), float("inf")).amin(1)
    return model, x, y, dist


@pytest.mark.parametrize("eps", [0.01, 0.03, 0.06])
def test_targeted_pgd_flips_exactly_the_examples_a_linear_model_allows(eps):
    model, x, y, dist = linear_problem()
    atk = PGD(steps=20, loss="margin", targeted=True)  # each wrong class in turn, as APGD-T does
    rows, _, _ = attack_batch(model, x, y, torch.arange(len(x)), [parse_eps(eps)], [atk], "Linf", 0)
    robust = torch.tensor([r[3] for r in rows], dtype=torch.bool)
    assert (dist < eps).sum() > 10 and (dist > eps).sum() > 10  # both kinds are present
    assert not robust[dist < eps].any(), "PGD missed an example whose margin allows a flip"
    assert robust[dist > eps].all(), "an example was counted broken beyond its closed-form distance"


@pytest.mark.parametrize("eps", [0.01, 0.03, 0.06])
def test_default_pgd_never_over_reports_and_misses_only_near_the_boundary(eps):
    """Untargeted PGD follows the loss gradient towards one class, not always the nearest one, so on a
    10-class linear model it can miss points just inside eps; it never counts an impossible flip."""
    model, x, y, dist = linear_problem()
    rows, _, _ = attack_batch(model, x, y, torch.arange(len(x)), [parse_eps(eps)], [PGD(steps=20)], "Linf", 0)
    robust = torch.tensor([r[3] for r in rows], dtype=torch.bool)
    assert robust[dist > eps].all()
    assert not robust[dist < 0.7 * eps].any()
    assert int((robust & (dist < eps)).sum()) <= 0.10 * int((dist < eps).sum())


def test_l2_pgd_on_a_linear_model():
    model, x, y, _ = linear_problem()
    w = model[1].weight
    z = model(x)
    l2 = (w[y][:, None, :] - w[None, :, :]).norm(dim=-1)  # min L2 distance to class k: margin / ||w_y - w_k||_2
    dist = (
        ((z.gather(1, y[:, None]) - z) / l2)
        .masked_fill(torch.nn.functional.one_hot(y, 10).bool(), float("inf"))
        .amin(1)
    )
    eps = float(dist.median())
    atk = PGD(steps=50, loss="margin", targeted=True)
    rows, _, _ = attack_batch(model, x, y, torch.arange(len(x)), [parse_eps(eps)], [atk], "L2", 0)
    robust = torch.tensor([r[3] for r in rows], dtype=torch.bool)
    assert not robust[dist < 0.99 * eps].any() and robust[dist > eps].all()


def test_sweep_equals_separate_runs_on_a_linear_model():
    model, x, y, _ = linear_problem()
    idx = torch.arange(len(x))
    eps = [parse_eps(e) for e in ("0.02", "0.05", "0.1", "0.2")]
    sweep, _, _ = attack_batch(model, x, y, idx, eps, [PGD(steps=20)], "Linf", 0)
    for e in eps:
        alone, _, _ = attack_batch(model, x, y, idx, [e], [PGD(steps=20)], "Linf", 0)
        assert [r[3] for r in sweep if r[0] == e.text] == [r[3] for r in alone]


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_random_starts_do_not_depend_on_the_batch(norm):
    x = torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    x[:4] = 0  # starts that the [0, 1] box clips
    seeds = list(range(100, 140))
    batch = random_starts(x, 0.3, norm, seeds)
    for j in (0, 7, 39):  # each start is the draw of its own generator, as if it were alone
        alone = random_starts(x[j : j + 1], 0.3, norm, torch.Generator().manual_seed(seeds[j]))
        assert torch.equal(batch[j : j + 1], alone)
    assert torch.equal(random_starts(x[7:20], 0.3, norm, seeds[7:20]), batch[7:20])
    assert (
        (get_norm(norm).distance(batch) <= 0.3 + 1e-6).all() and ((x + batch) >= 0).all() and ((x + batch) <= 1).all()
    )
    model, xl, y, _ = linear_problem(n=60)
    eps, idx = [parse_eps("0.05")], torch.arange(60)
    whole, _, _ = attack_batch(model, xl, y, idx, eps, [PGD(steps=5)], norm, 0)
    parts = [
        attack_batch(model, xl[s], y[s], idx[s], eps, [PGD(steps=5)], norm, 0)[0] for s in (slice(0, 17), slice(17, 60))
    ]
    assert whole == parts[0] + parts[1]


def test_an_attack_that_cheats_is_projected_back():
    class Cheat(PGD):
        name = "cheat"

        def run(self, model, x, y, idx, eps, norm, seed):
            out = super().run(model, x, y, idx, 4 * eps, norm, seed)  # out of budget on purpose
            return out

    model, x, y, dist = linear_problem()
    rows, _, _ = attack_batch(model, x, y, torch.arange(len(x)), [parse_eps(0.05)], [Cheat()], "Linf", 0)
    robust = torch.tensor([r[3] for r in rows], dtype=torch.bool)
    assert robust[dist > 0.05].all()


def fmnist_batch(n):
    s = load_split("fashion-mnist")
    return s.batch(torch.arange(n))


def test_autoattack_equals_a_direct_pyautoattack_run(trained):
    from pyautoattack import AutoAttack

    n, eps = 24, 0.08
    df = robench.api.evaluate(
        [str(trained)], n=n, eps=["0.08"], attacks=["autoattack"], batch_size="24", store="s.sqlite", seed=3
    )
    ours = df.attrs["outcomes"].sort_values("idx")
    model = robench.load_checkpoint(trained).model
    x, y = fmnist_batch(n)
    _, y_adv = AutoAttack(
        model, device="cpu", eps=eps, norm="Linf", seed=3, version="standard"
    ).run_standard_evaluation(x, y, batch_size=24)
    assert ours.robust.tolist() == (y_adv == y).int().tolist()
    assert set(ours.broken_by.dropna()) <= {"apgd-ce", "apgd-t", "fab-t", "square"}
    budget = df.budget[0]
    assert '"queries": 5000' in budget and '"targets": 9' in budget and '"iters": 100' in budget


def test_our_pgd_is_at_least_as_strong_as_foolbox_and_torchattacks(trained):
    import foolbox as fb
    import torchattacks

    eps, steps, n = 0.05, 10, 300
    alpha = 2.5 * eps / steps
    model = robench.load_checkpoint(trained).model.requires_grad_(False)
    x, y = fmnist_batch(n)
    rows, _, _ = attack_batch(model, x, y, torch.arange(n), [parse_eps(eps)], [PGD(steps=steps)], "Linf", 0)
    ours = sum(r[3] for r in rows) / n
    torch.manual_seed(0)
    xa = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    ta = (model(xa).argmax(1) == y).float().mean().item()
    _, xf, _ = fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps)(
        fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=eps
    )
    fbr = (model(xf).argmax(1) == y).float().mean().item()
    noise = 1.5 / 100  # 1.5 points on 300 examples
    assert ours <= ta + noise and ours <= fbr + noise, (ours, ta, fbr)


def test_foolbox_attack_through_robench_records_its_budget(trained):
    df = robench.api.evaluate(
        [str(trained)], n=20, eps=["0.1"], attacks=["fb:LinfDeepFoolAttack(steps=30)"], store="s.sqlite"
    )
    assert df.robust_acc[0] <= df.clean_acc[0]
    assert '"steps": 30' in df.budget[0] and "foolbox 3.3.4" in df.budget[0]
    with pytest.raises(RobenchError, match="L2 attack; run it with norm='L2'"):
        robench.api.evaluate([str(trained)], n=5, attacks=["fb:L2CarliniWagnerAttack(steps=5)"], store="s.sqlite")


@pytest.mark.parametrize(
    "spec,fragment",
    [
        ("pgdd", "did you mean pgd"),
        ("pgd(stepz=3)", 'has no option "stepz"; did you mean steps'),
        ("fb:LinfPGDD", "Unknown Foolbox attack"),
        ("fb:LinfPGD(stepz=3)", "has no option stepz"),
        ("autoattack:turbo", "Unknown attack \"autoattack:turbo\"; did you mean autoattack"),
        ("autoattack(n=1)", "official budget"),
        ("pgd(loss=hinge)", "is not one of"),
        ("pgd(steps=3", "unclosed"),
    ],
)
def test_bad_attack_specs(spec, fragment):
    with pytest.raises(RobenchError, match=fragment):
        create_attack(spec)


def test_spec_options():
    assert split_spec("pgd(steps=100, loss=dlr, random_start=False)") == (
        "pgd",
        {"steps": 100, "loss": "dlr", "random_start": False},
    )
    a = create_attack("pgd(steps=7)", pgd={"steps": 20, "restarts": 2})
    assert a.budget()["steps"] == 7 and a.budget()["restarts"] == 2 and a.budget()["step_size"] == "2.5*eps/steps"
    assert create_attack("fgsm").budget()["steps"] == 1


def test_bf16_pgd_is_as_strong_and_every_success_holds_in_fp32(trained, tmp_path):
    kw = dict(n=120, eps=["0.05", "0.1"], store=tmp_path / "s.sqlite")
    full = robench.evaluate([str(trained)], attacks=["pgd(steps=10)"], **kw)
    low = robench.evaluate([str(trained)], attacks=["pgd(steps=10,precision=bf16)"], **kw)
    assert json.loads(low.budget[0])[0]["precision"] == "bf16" and "precision" not in json.loads(full.budget[0])[0]
    assert (low.robust_acc <= full.robust_acc + 2.5).all()  # at most 3 of 120 examples apart
    x, y = robench.load_split("fashion-mnist").batch(torch.arange(120))
    atk = create_attack("pgd(steps=10,precision=bf16)")
    model = robench.load_checkpoint(trained).model
    out = atk.run(model, x, y, torch.arange(120), 0.1, "Linf", 0)
    with torch.no_grad():
        fooled = model(out.x_adv).argmax(1) != y
    claimed = (out.x_adv != x).flatten(1).any(1)  # PGD returns a new point only for examples it fooled
    assert claimed.sum() >= 10 and fooled[claimed].all()  # each one holds for the fp32 model
    assert (out.x_adv - x).abs().amax() <= 0.1 + 1e-6


def test_fgsm_refuses_options_it_does_not_have():
    from robench.attacks.registry import create_attack
    from robench.errors import RobenchError

    assert create_attack("fgsm(loss=dlr)").loss == "dlr"
    with pytest.raises(RobenchError, match='has no option "steps"; its options are loss'):
        create_attack("fgsm(steps=50)")


@pytest.mark.parametrize(
    "spec",
    [
        "pgd",
        "pgd(steps=7,restarts=2,loss=dlr,precision=bf16)",
        "pgd(step_size=0.01,targeted=True,targets=3)",
        "fgsm(loss=margin)",
        "autoattack",
        "autoattack:plus",
        "apgd-t",
        "square(queries=100)",
        "fb:LinfPGD(steps=3)",
    ],
)
def test_a_stored_budget_rebuilds_its_attack(spec):
    """``robench check`` and the leaderboard re-run stored runs from their budgets: the registry's inverse
    gives a spec that builds the very same budget."""
    from robench.attacks.registry import spec_from_budget

    budget = create_attack(spec).budget()
    assert create_attack(spec_from_budget(budget)).budget() == budget


@pytest.mark.parametrize("spec", ["pgd", "mifgsm", "difgsm(steps=3,decay=0.5)", "pgd(random_start=False)"])
def test_a_stored_transfer_budget_rebuilds_its_attack(spec):
    from robench.attacks.registry import TRANSFER, create_transfer_attack

    budget = create_transfer_attack(spec).budget()
    assert create_transfer_attack(TRANSFER.spec(budget)).budget() == budget


def test_an_attack_registers_where_it_is_defined():
    """A new family needs no edit of the registry: the decorator makes its name a spec, with its options
    checked and unknown ones refused, and lists it in the unknown-name message."""
    from robench.attacks.base import Attack, AttackOutput
    from robench.attacks.registry import AttackRegistry

    reg = AttackRegistry("attack")

    @reg.register("noise")
    class Noise(Attack):
        name = "noise"

        def __init__(self, scale: float = 1.0):
            self.scale = scale

        def budget(self):
            return {"name": self.name, "scale": self.scale}

        def run(self, model, x, y, idx, eps, norm, seed):
            return AttackOutput(x)

    assert reg.create("noise(scale=0.5)").scale == 0.5
    assert reg.spec(reg.create("NOISE").budget()) == "noise"
    with pytest.raises(RobenchError, match='has no option "sigma"; its options are scale'):
        reg.create("noise(sigma=2)")
    with pytest.raises(RobenchError, match="must be a finite number"):
        reg.create("noise(scale='big')")
    with pytest.raises(RobenchError, match="did you mean noise"):
        reg.create("noize")
