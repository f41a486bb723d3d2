"""medreason.stats against a worked example computed by hand.

Ten items; base right on 1, 2, 3, 8 (4/10); adapter right on 1, 3, 4, 5, 6, 8, 9 (7/10).
Discordant pairs: b = 1 (item 2: base right, adapter wrong), c = 4 (items 4, 5, 6, 9: adapter right only).
McNemar exact, two-sided: 2 * P(X <= 1 | X ~ Bin(5, 1/2)) = 2 * (1 + 5) / 32 = 0.375.
Per-item differences d = adapter - base: [0, -1, 0, 1, 1, 1, 0, 0, 1, 0], mean 0.3; the bootstrap mean has
standard deviation sqrt((0.5 - 0.3**2) / 10) = 0.2025, so the 95 % interval is about 0.3 +- 0.40, and on a grid of
0.1 (a mean over 10 resampled items) it is [-0.1, 0.7].
"""

import pytest

from medreason.stats import accuracy_by_group, mcnemar_exact, paired_bootstrap_ci, paired_comparison

BASE = [1, 1, 1, 0, 0, 0, 0, 1, 0, 0]
ADAPTER = [1, 0, 1, 1, 1, 1, 0, 1, 1, 0]
GROUPS = ["cardio", "cardio", "neuro", "neuro", "neuro", "renal", "renal", "renal", "renal", "cardio"]


def test_mcnemar_worked_example():
    assert mcnemar_exact(BASE, ADAPTER) == {"b": 1, "c": 4, "p_value": pytest.approx(0.375)}
    # symmetric: swapping the models swaps b and c, not the p-value
    assert mcnemar_exact(ADAPTER, BASE) == {"b": 4, "c": 1, "p_value": pytest.approx(0.375)}


def test_mcnemar_edge_cases():
    assert mcnemar_exact([1, 0, 1], [1, 0, 1])["p_value"] == 1.0  # no discordant pair: no evidence
    # 10 discordant items all one way: 2 * 0.5**10
    assert mcnemar_exact([0] * 10, [1] * 10)["p_value"] == pytest.approx(2 / 1024)


def test_bootstrap_worked_example():
    low, high = paired_bootstrap_ci(BASE, ADAPTER, seed=0)
    assert low == pytest.approx(-0.1) and high == pytest.approx(0.7)
    assert paired_bootstrap_ci(BASE, ADAPTER, seed=0) == (low, high)  # fixed seed: the same interval
    assert paired_bootstrap_ci(BASE, BASE) == (0.0, 0.0)  # identical answers: no difference at all


def test_paired_comparison_collects_everything():
    r = paired_comparison(BASE, ADAPTER)
    assert r["n"] == 10 and r["acc_a"] == pytest.approx(0.4) and r["acc_b"] == pytest.approx(0.7)
    assert r["diff"] == pytest.approx(0.3) and r["ci_low"] <= r["diff"] <= r["ci_high"]
    assert (r["b"], r["c"], r["p_value"]) == (1, 4, pytest.approx(0.375))


def test_pairing_narrows_the_interval():
    """The reason to pair: two models that agree on most items differ less than independent samples suggest."""
    base = [1] * 30 + [0] * 70
    adapter = [1] * 30 + [0] * 60 + [1] * 10  # right on everything base gets, plus 10 more
    low, high = paired_bootstrap_ci(base, adapter)
    assert low > 0  # every discordant item favours the adapter
    assert mcnemar_exact(base, adapter)["p_value"] == pytest.approx(2 / 1024)
    independent_se = (0.3 * 0.7 / 100 + 0.4 * 0.6 / 100) ** 0.5
    assert 0.1 - 1.96 * independent_se < 0  # unpaired, the same data would not exclude zero


def test_accuracy_by_group():
    assert accuracy_by_group(GROUPS, ADAPTER) == {
        "cardio": {"n": 3, "correct": 1, "accuracy": pytest.approx(1 / 3)},
        "neuro": {"n": 3, "correct": 3, "accuracy": 1.0},
        "renal": {"n": 4, "correct": 3, "accuracy": 0.75},
    }


def test_bad_inputs():
    with pytest.raises(ValueError, match="equal-length"):
        mcnemar_exact([1, 0], [1])
    with pytest.raises(ValueError, match="no items"):
        paired_comparison([], [])
    with pytest.raises(ValueError, match="results"):
        accuracy_by_group(["a"], [1, 0])


def test_wilson_interval_and_binomial_test_against_a_rate():
    from medreason.stats import against_rate, proportion_ci

    # Wilson 95 % interval of 7/10, by the formula: centre (7 + 1.96**2/2) / (10 + 1.96**2), half-width
    # 1.96 * sqrt(7*3/10 + 1.96**2/4) / (10 + 1.96**2)
    z = 1.959963984540054
    centre = (7 + z * z / 2) / (10 + z * z)
    half = z * ((7 * 3 / 10 + z * z / 4) ** 0.5) / (10 + z * z)
    assert proportion_ci(7, 10) == pytest.approx((centre - half, centre + half))
    # 10 of 10 against a rate of 1/2: two-sided exact p = 2 * 0.5**10
    assert against_rate(10, 10, 0.5) == pytest.approx(2 / 1024)
    assert against_rate(5, 10, 0.5) == pytest.approx(1.0)


def test_trend_slope_interval_and_verdict():
    from medreason.stats import trend

    # y = 2x exactly: slope 2, a zero-width interval, rising
    up = trend([0, 2, 4, 6, 8])
    assert up["slope"] == pytest.approx(2) and up["ci_low"] == pytest.approx(2) and up["verdict"] == "rising"
    assert trend([8, 6, 4, 2, 0])["verdict"] == "falling"
    # symmetric noise around a constant: slope 0, interval around it, flat
    flat = trend([1, 0, 1, 0, 1, 0, 1, 0])
    assert flat["ci_low"] < 0 < flat["ci_high"] and flat["verdict"] == "flat"
    # by hand: x = 0..3, y = [0, 1, 1, 2]: slope = sum((x-1.5)(y-1)) / sum((x-1.5)^2) = 3 / 5 = 0.6
    assert trend([0, 1, 1, 2])["slope"] == pytest.approx(0.6)
    with pytest.raises(ValueError):
        trend([1, 2])


# --------------------------------------------------------------------------------------------- pass@k, power, DiD


def test_pass_at_k_worked_example():
    """Chen et al. 2021's estimator by hand: 8 samples, 2 right. pass@1 = 2/8; pass@4 = 1 - C(6,4)/C(8,4) =
    1 - 15/70; 7 right of 8 leaves 1 wrong, so any 4 hold a right one; none right is 0."""
    from medreason.stats import pass_at_k

    assert pass_at_k(8, 2, 1) == pytest.approx(0.25)
    assert pass_at_k(8, 2, 4) == pytest.approx(1 - 15 / 70)
    assert pass_at_k(8, 2, 8) == 1.0 and pass_at_k(8, 7, 4) == 1.0 and pass_at_k(8, 0, 8) == 0.0
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 8)


def test_mcnemar_power_and_the_detectable_gain():
    """Connor 1987 by hand: n = 100, 15 % turn right and 5 % wrong: discordant 0.20, difference 0.10, z 1.96;
    power = Phi((0.10 * 10 - 1.96 * sqrt(0.20)) / sqrt(0.20 - 0.01)). The detectable gain is the smallest gain
    with power 0.8 and shrinks with more items."""
    from scipy.stats import norm

    from medreason.stats import detectable_gain, mcnemar_power

    by_hand = norm.cdf((0.10 * 10 - norm.ppf(0.975) * 0.20**0.5) / (0.20 - 0.01) ** 0.5)
    assert mcnemar_power(100, 0.15, 0.05) == pytest.approx(by_hand)
    assert mcnemar_power(100, 0.0, 0.0) == 0.0
    gain = detectable_gain(72, p_loss=0.03)
    assert mcnemar_power(72, gain, 0.03) >= 0.8 > mcnemar_power(72, gain - 0.001, 0.03)
    assert detectable_gain(300, p_loss=0.03) < gain


def test_difference_in_differences_worked_example():
    """Taught half: 1 of 4 right before, 3 after (+0.5); untaught: 1 of 4 before and after (0): the effect is
    +0.5; the interval holds it; shuffling which items were taught makes an effect this large rare but possible."""
    from medreason.stats import diff_in_diff

    out = diff_in_diff([1, 0, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0], n_boot=2000, n_perm=2000)
    assert out["effect"] == pytest.approx(0.5) and out["treated_change"] == pytest.approx(0.5)
    assert out["control_change"] == 0.0 and out["ci_low"] <= 0.5 <= out["ci_high"]
    # 8 changes, two of them +1: the split puts both in the taught half (or both out) in 2 * C(6,2)/C(8,4) = 30/70
    assert out["p_value"] == pytest.approx(30 / 70, abs=0.04)


def test_knowledge_effect_matches_rows_by_fact():
    """medreason.knowledge.effect pairs before and after by fact (an MCQ item's id is '<fact>:mcq'), in any
    order, and counts McNemar's gained and lost per half."""
    from medreason.knowledge import effect

    before = [{"id": f"f{i}:mcq", "correct": i == 0} for i in range(4)]
    after = [{"id": f"f{i}:mcq", "correct": i in (0, 1, 2)} for i in reversed(range(4))]
    out = effect(before, after, taught={"f0", "f1"})
    taught = {key: out["taught"][key] for key in ("n", "before", "after", "gained", "lost")}
    assert taught == {"n": 2, "before": 0.5, "after": 1.0, "gained": 1, "lost": 0}
    assert out["untaught"]["after"] == 0.5 and out["effect"] == pytest.approx(0.5 - 0.5)
