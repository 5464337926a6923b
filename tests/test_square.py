"""robench's own Square Attack (Linf and L2), and `fast(square=robench)`, which runs it in the focus stage."""

import pytest
import torch
from helpers import Quantized
from test_attacks import linear_problem

from robench.attacks.autoattack import AutoAttack
from robench.attacks.registry import create_attack, spec_from_budget
from robench.attacks.square import side, square
from robench.errors import RobenchError
from robench.norms import get_norm


def quantized_problem():
    """A linear model behind an 8-level quantizer (no gradient anywhere) and the examples it classifies right."""
    linear, x, y, _ = linear_problem()
    model = Quantized(linear)
    keep = model(x).argmax(1) == y
    return model, x[keep], y[keep]


def quantized_image_problem(side=16, n=300):
    """The same kind of model on side x side images, big enough for AutoAttack's L2 Square (its start tiles
    the image in fifths), with each example's label the class it is given."""
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(side * side, 10)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(10, side * side, generator=g))
        lin.bias.copy_(torch.randn(10, generator=g))
    model = Quantized(torch.nn.Sequential(torch.nn.Flatten(), lin).eval().requires_grad_(False))
    x = torch.rand(n, 1, side, side, generator=g)
    return model, x, model(x).argmax(1)


def fooled(model, x, y):
    return model(x).argmax(1) != y


def test_the_window_shrinks_on_the_papers_schedule_rescaled_to_the_budget():
    assert side(0, 10000, 0.8, 28, 28) == 25  # 0.8 of 784 pixels
    assert side(11, 10000, 0.8, 28, 28) == 18  # halved after 10 of 10,000 queries
    assert side(2500, 5000, 0.8, 28, 28) == 2  # 0.8 / 64 of the pixels after 2,000 of 10,000, rescaled
    assert side(4999, 5000, 0.8, 28, 28) == 1 and side(0, 100, 0.8, 4, 5) == 4  # at least 1, at most the image


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.3)])
def test_square_stays_in_the_eps_ball_and_the_box_and_its_broken_points_fool_the_model(norm, eps):
    model, x, y = quantized_problem() if norm == "Linf" else quantized_image_problem()
    xa = square(model, x, y, eps, norm, queries=100, seed=0)
    assert xa.shape == x.shape and (xa >= 0).all() and (xa <= 1).all()
    assert (get_norm(norm).distance(xa - x) <= eps + 1e-5).all()
    broken = fooled(model, xa, y)
    assert 0 < broken.sum() < len(x)
    assert torch.equal(xa, square(model, x, y, eps, norm, queries=100, seed=0))  # the seed decides every draw


def test_square_draws_a_window_per_example_so_copies_side_by_side_run_independently():
    """AutoAttack's Square draws one window per query for the whole batch; robench's draws one per example,
    so eight copies of one example propose eight different changes at their first query."""
    seen = []

    class Recording(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.stack([100 - (x - 0.5).abs().sum((1, 2, 3)), torch.zeros(len(x))], 1)  # never fooled

    x = torch.full((8, 1, 12, 12), 0.5)
    square(Recording(), x, torch.zeros(8, dtype=torch.long), 0.1, queries=40, p_init=0.05, seed=0)  # 3x3
    changed = seen[1] != seen[0]  # the first proposals against the starting stripes
    assert changed.flatten(1).any(1).all()  # no query re-evaluates the point it had
    rows = {int(c.nonzero()[:, 1].min()) for c in changed}  # the top row of each change: its window's
    assert len(rows) > 2, rows  # one shared window would give one


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.3)])
def test_square_is_at_least_as_strong_as_autoattacks_at_the_same_budget(norm, eps):
    """On a model with no gradient, over three seeds at 100 queries, robench's Square breaks at least as many
    examples as the official one."""
    model, x, y = quantized_problem() if norm == "Linf" else quantized_image_problem()
    ours = theirs = 0
    for seed in range(3):
        ours += int(fooled(model, square(model, x, y, eps, norm, queries=100, seed=seed), y).sum())
        official = AutoAttack("standard", members=("square",), batch_size=len(x), queries=100)
        theirs += int(fooled(model, official.run(model, x, y, torch.arange(len(x)), eps, norm, seed).x_adv, y).sum())
    assert ours >= theirs > 0, (ours, theirs)


def test_fast_with_robench_square_runs_breaks_more_near_misses_than_the_official_runs():
    """fast(square=robench) leaves the APGD runs as they were; four of its Square runs side by side break more
    of the near misses than one, and more than four official runs, whose copies share every window."""
    model, x, y = quantized_problem()
    idx = torch.arange(len(x))
    spec = "fast(iters=5,focus=1.0,queries=10,focus_restarts=0,focus_share=1.0,square_runs={},square={})"
    outs = {
        (k, s): create_attack(spec.format(k, s)).run(model, x, y, idx, 0.1, "Linf", 0)
        for k in (1, 4)
        for s in ("official", "robench")
    }
    by_square = {key: sum(b == "square" for b in o.broken_by) for key, o in outs.items()}
    assert by_square[4, "robench"] > by_square[4, "official"] and by_square[4, "robench"] > by_square[1, "robench"] > 0
    out = outs[4, "robench"]
    hit = torch.tensor([b == "square" for b in out.broken_by])
    assert fooled(model, out.x_adv[hit], y[hit]).all()
    assert ((out.x_adv - x).abs().amax((1, 2, 3)) <= 0.1 + 1e-6).all()
    before_square = {key: [None if b == "square" else b for b in o.broken_by] for key, o in outs.items()}
    assert all(b == before_square[1, "official"] for b in before_square.values())


@pytest.mark.parametrize(
    "spec", ["fast", "fast(square=robench,square_runs=4)", "fast(focus=0.3,queries=300,square=robench)"]
)
def test_robench_square_is_recorded_in_the_budget_and_reads_back(spec):
    budget = create_attack(spec).budget()
    assert budget["focus"]["implementation"].startswith("robench")
    assert create_attack(spec_from_budget(budget)).budget() == budget
    assert create_attack("fast").budget() == create_attack("fast(square=robench)").budget()


def test_a_fast_budget_stored_with_autoattacks_square_reads_back_as_square_official():
    """robench's own Square became fast's default; a budget stored before (AutoAttack's Square, recorded by its
    implementation) keeps its run key and reads back as fast(square=official), never as today's default."""
    old = create_attack("fast(square=official)").budget()
    assert old["focus"]["implementation"].startswith("pyautoattack") and old != create_attack("fast").budget()
    assert spec_from_budget(old) == "fast(square=official)" and create_attack(spec_from_budget(old)).budget() == old
    assert spec_from_budget(create_attack("fast").budget()) == "fast"


def test_fast_runs_robench_square_at_l2_too():
    model, x, y = quantized_image_problem(n=60)
    spec = "fast(iters=5,focus=1.0,queries=20,focus_restarts=0,focus_share=1.0,square=robench)"
    out = create_attack(spec).run(model, x, y, torch.arange(len(x)), 0.3, "L2", 0)
    hit = torch.tensor([b == "square" for b in out.broken_by])
    assert hit.any() and fooled(model, out.x_adv[hit], y[hit]).all()
    assert (get_norm("L2").distance(out.x_adv - x) <= 0.3 + 1e-5).all()


def test_an_unknown_square_is_refused_in_one_sentence():
    with pytest.raises(RobenchError, match="official, robench"):
        create_attack("fast(square=mine)")
