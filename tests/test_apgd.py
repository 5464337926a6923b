"""robench's own APGD, MALT targets, the `fast` ensemble, and PGD's cycle detection."""

import pytest
import torch
from conftest import requires_fmnist
from test_attacks import linear_problem

from robench.attacks.apgd import APGD, checkpoints, target_classes
from robench.attacks.pgd import PGD
from robench.attacks.registry import create_attack, spec_from_budget
from robench.config import parse_eps
from robench.engine.core import attack_batch


def _robust(model, x, y, atk, eps, norm="Linf"):
    rows, _, queries = attack_batch(model, x, y, torch.arange(len(x)), [parse_eps(eps)], [atk], norm, 0)
    return torch.tensor([r[3] for r in rows], dtype=torch.bool), queries


def test_apgd_checkpoints_follow_the_papers_schedule():
    """After 22% of the iterations, then periods shrinking by 3% down to 6% (Croce and Hein 2020)."""
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_malt_picks_the_nearest_boundary_of_a_linear_model():
    """On a linear model MALT's linearised distance is the exact distance to each class boundary."""
    model, x, y, _ = linear_problem()
    w, b = model[1].weight, model[1].bias
    z = x.flatten(1) @ w.T + b
    dist = (z.gather(1, y[:, None]) - z) / (w[y][:, None, :] - w[None]).abs().sum(-1)
    dist[torch.arange(len(y)), y] = float("inf")
    assert torch.equal(target_classes(model, x, y, 1, "malt", "Linf")[:, 0], dist.argmin(1))
    ranked = target_classes(model, x, y, 3, "rank", "Linf")
    assert torch.equal(ranked, z.masked_fill(torch.nn.functional.one_hot(y, 10).bool(), -1e9).topk(3, 1).indices)


@pytest.mark.parametrize("spec", ["fast", "fast(focus=0)"])
@pytest.mark.parametrize("eps", [0.01, 0.03, 0.06])
def test_fast_breaks_exactly_the_examples_a_linear_model_allows(eps, spec):
    """The minimal Linf perturbation of a linear model is known in closed form: fast breaks every example
    within eps of a boundary and none beyond."""
    model, x, y, dist = linear_problem()
    robust, _ = _robust(model, x, y, create_attack(spec), eps)
    assert (dist < eps).sum() > 10 and (dist > eps).sum() > 10  # both kinds are present
    assert not robust[dist < eps].any(), "fast missed an example whose margin allows a flip"
    assert robust[dist > eps].all(), "an example was counted broken beyond its closed-form distance"


@pytest.mark.parametrize("norm, eps", [("Linf", 0.03), ("L2", 0.3)])
def test_apgd_stays_in_the_ball_and_leaves_the_broken_examples(norm, eps):
    """Every point APGD returns lies in the eps ball and [0, 1], and an example leaves the batch at its first
    success: the model answers fewer queries than the full schedule on every example would take."""
    from robench.engine.core import Counted
    from robench.norms import get_norm

    model, x, y, _ = linear_problem(n=120)
    counted = Counted(model)
    out = APGD("dlr", iters=30).run(counted, x, y, torch.arange(len(x)), eps, norm, 0).x_adv
    assert (get_norm(norm).distance(out - x) <= eps + 1e-5).all() and out.min() >= 0 and out.max() <= 1
    broken = model(out).argmax(1) != y
    assert 0 < broken.sum() < len(x)
    assert counted.queries < 31 * len(x) - 20 * int(broken.sum())


def test_apgd_reports_how_close_each_example_came():
    """APGD's closest margin: negative for the examples it broke, and for the others positive, no larger
    than the clean margin and never below the smallest margin the eps ball allows (closed form for a
    linear model: the clean margin minus eps times the l1 norm of the weight difference)."""
    model, x, y, dist = linear_problem()
    eps = 0.03
    out = APGD("ce", iters=20).run(model, x, y, torch.arange(len(x)), eps, "Linf", 0)
    broken = model(out.x_adv).argmax(1) != y
    z, w = model(x), model[1].weight
    margins = z.gather(1, y[:, None]) - z
    lowest = (
        (margins - eps * (w[y][:, None, :] - w[None]).abs().sum(-1))
        .masked_fill(torch.nn.functional.one_hot(y, 10).bool(), float("inf"))
        .amin(1)
    )
    clean = margins.masked_fill(torch.nn.functional.one_hot(y, 10).bool(), float("inf")).amin(1)
    assert 0 < broken.sum() < len(x)
    assert (out.closest[broken] < 0).all() and (out.closest[~broken] > 0).all()
    assert (out.closest <= clean + 1e-5).all() and (out.closest >= lowest - 1e-4).all()


def test_fast_focus_sends_the_near_misses_to_square():
    """On a model whose gradient is zero (its input quantized) the APGD runs only wander from their random
    starts; the focus stage runs Square on the survivors whose margin fell below the given fraction of the
    clean margin, breaks examples the APGD runs left, labels them square, and stays in the eps ball."""
    from helpers import Quantized

    linear, x, y, _ = linear_problem()
    model = Quantized(linear)
    keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    eps, idx = 0.1, torch.arange(len(x))
    plain = create_attack("fast(iters=5,focus=0)").run(model, x, y, idx, eps, "Linf", 0)
    focused = create_attack("fast(iters=5,focus=1.0,queries=200,focus_restarts=0,focus_share=1.0)").run(
        model, x, y, idx, eps, "Linf", 0
    )
    by_square = torch.tensor([b == "square" for b in focused.broken_by])
    plain_broken = model(plain.x_adv).argmax(1) != y
    assert torch.equal((model(focused.x_adv).argmax(1) != y) & ~by_square, plain_broken)  # the same APGD runs
    assert by_square.sum() > 0 and not (by_square & plain_broken).any()
    assert ((focused.x_adv - x).abs().amax((1, 2, 3)) <= eps + 1e-6).all()
    near = focused.closest < 1.0 * (
        model(x).gather(1, y[:, None])[:, 0]
        - model(x).masked_fill(torch.nn.functional.one_hot(y, 10).bool(), float("-inf")).amax(1)
    )
    assert not (by_square & ~near).any()  # Square ran only on the near misses


def test_fast_focus_takes_at_most_its_share_of_the_survivors_those_closest_to_the_boundary():
    """The focus stage's cost is capped: it attacks at most focus_share of the survivors of the APGD runs,
    those whose margin fell furthest as a fraction of their clean margin, so a model whose survivors all
    come near the boundary does not send all of them to Square."""
    from helpers import Quantized

    linear, x, y, _ = linear_problem()
    model = Quantized(linear)
    keep = model(x).argmax(1) == y
    x, y, eps, idx = x[keep], y[keep], 0.1, torch.arange(int(keep.sum()))
    with torch.no_grad():
        z = model(x)
    clean = z.gather(1, y[:, None])[:, 0] - z.masked_fill(torch.nn.functional.one_hot(y, 10).bool(), -1e9).amax(1)
    plain = create_attack("fast(iters=5,focus=0)").run(model, x, y, idx, eps, "Linf", 0)
    survivors = torch.nonzero(model(plain.x_adv).argmax(1) == y).flatten()
    ratio = plain.closest[survivors] / clean[survivors]
    ranked, near = survivors[torch.argsort(ratio, stable=True)], int((ratio < 1.0).sum())
    quarter = -(-len(survivors) // 4)
    assert quarter < near  # so the cap binds
    for share, attacked in ((0.25, quarter), (1.0, near)):
        atk = create_attack(f"fast(iters=5,focus=1.0,queries=50,focus_restarts=0,focus_share={share})")
        seen, stage = [], atk._square_stage
        atk._square_stage = lambda *a: (seen.append(len(a[4])), stage(*a))[1]  # the examples Square attacks
        out = atk.run(model, x, y, idx, eps, "Linf", 0)
        assert seen == [attacked]
        by_square = torch.tensor([b == "square" for b in out.broken_by])
        assert by_square.any() and set(torch.nonzero(by_square).flatten().tolist()) <= set(ranked[:attacked].tolist())


def test_fast_focus_retries_the_targeted_apgd_from_fresh_starts_first():
    """The focus stage first runs the targeted APGD again from new random starts on the near misses: on the
    quantized model, where only the starts matter, it breaks examples the first runs left, only near ones,
    before Square sees them; what the first runs broke stays broken by them."""
    from helpers import Quantized

    linear, x, y, _ = linear_problem()
    model = Quantized(linear)
    keep = model(x).argmax(1) == y
    x, y, eps, idx = x[keep], y[keep], 0.1, torch.arange(int(keep.sum()))
    plain = create_attack("fast(iters=5,focus=0)").run(model, x, y, idx, eps, "Linf", 0)
    out = create_attack("fast(iters=5,focus=0.5,queries=20,focus_restarts=2)").run(model, x, y, idx, eps, "Linf", 0)
    clean = model(x).gather(1, y[:, None])[:, 0] - model(x).masked_fill(
        torch.nn.functional.one_hot(y, 10).bool(), float("-inf")
    ).amax(1)
    plain_broken = model(plain.x_adv).argmax(1) != y
    retried = ~plain_broken & torch.tensor([b == "robench-apgd-t" for b in out.broken_by])
    assert retried.sum() > 0 and not (retried & ~(out.closest < 0.5 * clean)).any()
    assert plain_broken[(model(out.x_adv).argmax(1) != y)].sum() == plain_broken.sum()
    assert [b for b, p in zip(out.broken_by, plain_broken) if p] == [
        b for b, p in zip(plain.broken_by, plain_broken) if p
    ]


def test_fast_square_runs_side_by_side_break_more_of_the_near_misses():
    """square_runs=4 runs AutoAttack's Square four times in one batch of four copies of the near misses (each copy from its
    own starting stripes; the official Square shares its windows across the batch): it breaks more of them
    than one run at the same query budget, each broken example's point fools the
    model inside the eps ball, and the APGD runs before it are untouched."""
    from helpers import Quantized

    linear, x, y, _ = linear_problem()
    model = Quantized(linear)
    keep = model(x).argmax(1) == y
    x, y, eps, idx = x[keep], y[keep], 0.1, torch.arange(int(keep.sum()))
    outs, batches = {}, {}
    for runs in (1, 4):
        atk = create_attack(
            f"fast(iters=5,focus=1.0,queries=10,focus_restarts=0,focus_share=1.0,square_runs={runs},square=official)"
        )
        seen, square = [], atk._square
        atk._square = lambda bs: (seen.append(bs), square(bs))[1]
        outs[runs], batches[runs] = atk.run(model, x, y, idx, eps, "Linf", 0), seen
    assert batches[4] == [4 * batches[1][0]]
    by_square = {r: torch.tensor([b == "square" for b in o.broken_by]) for r, o in outs.items()}
    assert by_square[4].sum() > by_square[1].sum() > 0, (by_square[1].sum(), by_square[4].sum())
    out = outs[4]
    assert (model(out.x_adv[by_square[4]]).argmax(1) != y[by_square[4]]).all()
    assert ((out.x_adv - x).abs().amax((1, 2, 3)) <= eps + 1e-6).all()
    before_square = {r: [None if b == "square" else b for b in o.broken_by] for r, o in outs.items()}
    assert before_square[4] == before_square[1]


def test_pgd_cycle_detection_changes_no_outcome_and_saves_work():
    """With a fixed step, an iterate that repeats an earlier one repeats forever: stopping there gives the
    very same per-example outcome as the full run, with fewer model queries."""
    model, x, y, dist = linear_problem()
    runs = {
        c: _robust(model, x, y, PGD(steps=300, step_size=0.01, loss="margin", cycles=c), 0.03) for c in (True, False)
    }
    assert torch.equal(runs[True][0], runs[False][0])
    spent = {c: sum(q for _, q in runs[c][1]["pgd"].values()) for c in runs}
    assert spent[True] < spent[False] / 10, spent
    assert budget_of("pgd(cycles=False)") == budget_of("pgd")  # exact, so not part of the budget or run key


def budget_of(spec):
    return create_attack(spec).budget()


@pytest.mark.parametrize(
    "spec",
    [
        "fast",
        "fast(iters=50,targets=5,choice=rank)",
        "fast(focus=0)",
        "fast(targets=2,focus=0.5,queries=300)",
        "fast(focus_restarts=0)",
        "fast(focus=0.2,focus_restarts=1)",
        "fast(focus_share=1.0)",
        "fast(focus_share=0.25,focus_restarts=0)",
        "fast(square_runs=2)",
        "fast(focus=0.3,square_runs=4)",
        "apgd",
        "apgd(loss=dlr,restarts=2)",
        "apgd(targeted=True,targets=3,choice=rank)",
    ],
)
def test_apgd_budgets_rebuild_their_attack(spec):
    budget = budget_of(spec)
    assert budget_of(spec_from_budget(budget)) == budget


def test_a_fast_budget_stored_before_the_focus_stage_reads_as_fast_without_it():
    """fast's default gained the Square focus stage; a budget stored before has no "focus" and must not be
    read back as today's default."""
    old = budget_of("fast(focus=0)")
    assert "focus" not in old and spec_from_budget(old) == "fast(focus=0.0)"
    assert spec_from_budget(budget_of("fast")) == "fast" and budget_of("fast") != old


def test_a_fast_budget_stored_before_the_focus_restarts_reads_as_fast_without_them():
    """The focus stage gained fresh restarts of the targeted APGD; a focus budget stored before has no
    "apgd_t_fresh_restarts" and reads back as the stage without them, never as today's default."""
    old = budget_of("fast")
    del old["focus"]["apgd_t_fresh_restarts"]
    assert spec_from_budget(old) == "fast(focus_restarts=0)" and budget_of("fast(focus_restarts=0)") == old
    assert budget_of("fast")["focus"]["apgd_t_fresh_restarts"] == 3


def test_a_fast_budget_stored_before_the_focus_cap_reads_as_fast_without_it():
    """The focus stage gained its cap (focus_share, 0.1 of the survivors); a budget stored before has no
    "at_most_share_of_survivors" and reads back as the uncapped stage, never as today's default."""
    old = budget_of("fast")
    del old["focus"]["at_most_share_of_survivors"]
    assert spec_from_budget(old) == "fast(focus_share=1.0)" and budget_of("fast(focus_share=1.0)") == old
    assert budget_of("fast")["focus"]["at_most_share_of_survivors"] == 0.1


def test_one_square_run_keeps_the_budget_stored_before_square_runs():
    """square_runs=1 (the default) adds nothing to the budget, so runs stored before the option keep their run
    key and read back; more runs are recorded."""
    assert "square_runs" not in budget_of("fast")["focus"] and budget_of("fast(square_runs=1)") == budget_of("fast")
    assert budget_of("fast(square_runs=3)")["focus"]["square_runs"] == 3


@requires_fmnist
def test_apgd_ce_is_at_least_as_strong_as_the_official_one():
    """robench's APGD-CE leaves no more examples robust than the official APGD-CE at the same budget (100
    iterations, one restart) on a shipped PGD-AT LeNet5."""
    from pathlib import Path

    from robench.checkpoints import load_checkpoint
    from robench.data import load_split
    from robench.engine.core import attack_mode

    root = Path(__file__).resolve().parents[1]
    model = load_checkpoint(root / "checkpoints" / "lenet5-relu-pgd-at.safetensors").model
    x, y = load_split("fashion-mnist", "test").batch(range(64))
    with attack_mode(model) as fast:
        ours, _ = _robust(fast, x, y, create_attack("apgd", batch_size=64), 0.1)
        official, _ = _robust(fast, x, y, create_attack("apgd-ce", batch_size=64), 0.1)
    assert ours.sum() <= official.sum() < len(x)


def test_apgd_all_rounds_at_once_gives_the_rounds_outcomes():
    """run_at_once (every target and restart in one batch, as fast's focus stage runs them) draws the same
    random starts as the rounds run one after another, so it fools the model on the same examples."""
    model, x, y, _ = linear_problem()
    atk = APGD(iters=20, targeted=True, targets=3, restarts=2)
    idx = torch.arange(len(x))
    seq = atk.run(model, x, y, idx, 0.05, "Linf", 7).x_adv
    once = atk.run_at_once(model, x, y, idx, 0.05, "Linf", 7)
    fooled = model(seq).argmax(1) != y
    assert 0 < fooled.sum() < len(x)
    assert torch.equal(model(once).argmax(1) != y, fooled)
    assert torch.equal(once[~fooled], x[~fooled]) and ((once - x).abs().amax((1, 2, 3)) <= 0.05 + 1e-6).all()
