"""Statistics behind every reported comparison, against published or hand-computed values."""

import pytest

from robench.stats import mcnemar_exact, paired_diff_ci, wilson


def test_wilson_matches_the_published_example():
    # Newcombe (1998, Statistics in Medicine 17:857), single proportion 81/263: 0.2553 to 0.3662
    lo, hi = wilson(81, 263)
    assert lo == pytest.approx(0.2553, abs=5e-5) and hi == pytest.approx(0.3662, abs=5e-5)


def test_exact_mcnemar_is_the_two_sided_binomial_on_discordant_pairs():
    assert mcnemar_exact(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 0.0386
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 7) == pytest.approx(2 / 2**7)


def test_paired_difference_interval_matches_newcombe_method_10():
    # Newcombe (1998, Statistics in Medicine 17:2635) example (a): 36 both, 12 A only, 2 B only, 0 neither:
    # difference 0.2, interval 0.0569 to 0.3404
    d, lo, hi = paired_diff_ci(36, 12, 2, 0)
    assert d == pytest.approx(0.2)
    assert lo == pytest.approx(0.0569, abs=5e-5) and hi == pytest.approx(0.3404, abs=5e-5)
    d2, lo2, hi2 = paired_diff_ci(36, 2, 12, 0)  # swapping the models mirrors the interval
    assert (d2, lo2, hi2) == pytest.approx((-d, -hi, -lo))
    d, lo, hi = paired_diff_ci(40, 5, 3, 52)  # no significant difference: the interval holds 0
    assert lo < 0 < hi and lo < d < hi and mcnemar_exact(5, 3) > 0.05
