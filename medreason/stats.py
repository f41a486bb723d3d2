"""Paired statistics for two models answering the same items: McNemar's exact test, a paired-bootstrap interval
of the accuracy difference, and accuracy per group.

    from medreason.stats import paired_comparison, accuracy_by_group
    paired_comparison(base_correct, adapter_correct)     # {"diff", "ci_low", "ci_high", "p_value", "b", "c", ...}
    accuracy_by_group(groups, correct)                   # {"Cardiology": {"n": 7, "correct": 3, "accuracy": 0.43}, ...}

Why paired: base and adapter answer the *same* questions, so what varies between them is only the items on which
they disagree. Treating the two accuracies as independent samples ignores that and gives intervals that are too
wide (or, with a correlated pair, misleading). McNemar's test looks only at the discordant items: b (base right,
adapter wrong) and c (base wrong, adapter right); under "no difference" each discordant item is a fair coin, so
the exact two-sided p-value is a binomial test of c successes in b + c trials at 1/2. The bootstrap resamples
*items* (keeping each item's pair together) to give an interval for accuracy(adapter) - accuracy(base).
"""

from __future__ import annotations

from collections.abc import Sequence

BOOTSTRAP_SAMPLES = 10_000


def paired_comparison(
    a_correct: Sequence[bool],
    b_correct: Sequence[bool],
    *,
    level: float = 0.95,
    n_boot: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict:
    """B versus A on the same items (B - A): accuracies, difference, paired-bootstrap interval, McNemar."""
    a, b = _pair(a_correct, b_correct)
    low, high = paired_bootstrap_ci(a, b, level=level, n_boot=n_boot, seed=seed)
    test = mcnemar_exact(a, b)
    return {
        "n": len(a),
        "acc_a": float(a.mean()),
        "acc_b": float(b.mean()),
        "diff": float(b.mean() - a.mean()),
        "ci_low": low,
        "ci_high": high,
        "ci_level": level,
        "bootstrap_samples": n_boot,
        "seed": seed,
        **test,
    }


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict:
    """Exact two-sided McNemar test: {"b": A right & B wrong, "c": A wrong & B right, "p_value"}."""
    from scipy.stats import binomtest

    a, b = _pair(a_correct, b_correct)
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_b, only_a + only_b, 0.5).pvalue)
    return {"b": only_a, "c": only_b, "p_value": p}


def paired_bootstrap_ci(
    a_correct: Sequence[bool],
    b_correct: Sequence[bool],
    *,
    level: float = 0.95,
    n_boot: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of mean(B - A) over items resampled with replacement (pairs kept together)."""
    import numpy as np

    a, b = _pair(a_correct, b_correct)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = b.astype(np.int8) - a.astype(np.int8)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))
    means = d[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def proportion_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (good at small n and near 0 or 1, unlike k/n +- 1.96 se)."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def against_rate(k: int, n: int, rate: float) -> float:
    """Exact two-sided binomial p-value of k right out of n against a fixed accuracy `rate` (a baseline that
    needs no knowledge): is the model distinguishable from that rule at all?"""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan")
    return float(binomtest(k, n, min(max(rate, 0.0), 1.0)).pvalue)


def trend(values: Sequence[float], *, level: float = 0.95) -> dict:
    """Least-squares slope of `values` against their index (a training curve, one point per step) with its t
    interval, and a verdict: 'rising' or 'falling' when the interval excludes zero, else 'flat'. Steps of an RL run
    are noisy and autocorrelated; the interval assumes independent residuals, so read a borderline verdict as
    borderline."""
    import numpy as np
    from scipy import stats as st

    y = np.asarray(values, dtype=float)
    if len(y) < 3:
        raise ValueError(f"a trend needs at least 3 points, got {len(y)}")
    fit = st.linregress(np.arange(len(y)), y)
    half = float(st.t.ppf(0.5 + level / 2, len(y) - 2) * fit.stderr)
    low, high = float(fit.slope) - half, float(fit.slope) + half
    verdict = "rising" if low > 0 else "falling" if high < 0 else "flat"
    return {
        "n": len(y),
        "slope": float(fit.slope),
        "ci_low": low,
        "ci_high": high,
        "ci_level": level,
        "p_value": float(fit.pvalue),
        "first_half_mean": float(y[: len(y) // 2].mean()),
        "second_half_mean": float(y[len(y) // 2 :].mean()),
        "verdict": verdict,
    }


def paired_values(
    a_values: Sequence[float],
    b_values: Sequence[float],
    *,
    level: float = 0.95,
    n_boot: int = BOOTSTRAP_SAMPLES,
    n_perm: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict:
    """B versus A on the same items when each item has a score in [0, 1] (a sampled pass@1, a rule's credit with
    ties): the mean difference (B - A), a paired-bootstrap interval, and a two-sided sign-flip permutation test
    (under "no difference" each item's difference is as likely positive as negative). For 0/1 scores the test
    counts the same discordant items McNemar's does."""
    import numpy as np

    a = np.asarray(a_values, dtype=float)
    b = np.asarray(b_values, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired scores must be two equal-length non-empty lists, got {a.shape} and {b.shape}")
    d = b - a
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    observed = abs(d.mean())
    signs = rng.choice([-1.0, 1.0], size=(n_perm, len(d)))
    null = np.abs((signs * d).mean(axis=1))
    p = float((1 + np.sum(null >= observed - 1e-12)) / (1 + n_perm)) if np.any(d != 0) else 1.0
    return {
        "n": len(d),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "diff": float(d.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "ci_level": level,
        "p_value": p,
        "test": "sign-flip permutation",
        "b": int(np.sum(d < 0)),
        "c": int(np.sum(d > 0)),
    }


def diff_in_diff(
    base_treated: Sequence[float],
    after_treated: Sequence[float],
    base_control: Sequence[float],
    after_control: Sequence[float],
    *,
    level: float = 0.95,
    n_boot: int = BOOTSTRAP_SAMPLES,
    n_perm: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict:
    """The effect of a treatment read against a randomized control: (after - base) on the treated items minus
    (after - base) on the control items. Interval: a bootstrap that resamples items within each half (each
    item's before/after pair kept together). p-value: a permutation test that shuffles which items were treated
    (under "no effect", an item's change does not depend on its half), two-sided."""
    import numpy as np

    t = np.asarray(after_treated, dtype=float) - np.asarray(base_treated, dtype=float)
    c = np.asarray(after_control, dtype=float) - np.asarray(base_control, dtype=float)
    if len(t) == 0 or len(c) == 0:
        raise ValueError("both halves need items")
    effect = float(t.mean() - c.mean())
    rng = np.random.default_rng(seed)
    boot = t[rng.integers(0, len(t), (n_boot, len(t)))].mean(1) - c[rng.integers(0, len(c), (n_boot, len(c)))].mean(1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    pooled = np.concatenate([t, c])
    null = np.empty(n_perm)
    for i in range(n_perm):
        order = rng.permutation(len(pooled))
        null[i] = pooled[order[: len(t)]].mean() - pooled[order[len(t) :]].mean()
    p = float((1 + np.sum(np.abs(null) >= abs(effect) - 1e-12)) / (1 + n_perm))
    return {
        "effect": effect,
        "treated_change": float(t.mean()),
        "control_change": float(c.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "ci_level": level,
        "p_value": p,
        "n_treated": len(t),
        "n_control": len(c),
    }


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k from n samples of which c are right (Chen et al. 2021, "Evaluating Large
    Language Models Trained on Code"): 1 - C(n-c, k) / C(n, k), the chance that k of the n samples, drawn without
    replacement, hold at least one right answer; computed as a product, which stays exact for large n."""
    import numpy as np

    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mcnemar_power(n: int, p_gain: float, p_loss: float, alpha: float = 0.05) -> float:
    """Power of a two-sided McNemar test on n paired items when a share p_gain of them turns right and p_loss
    turns wrong (Connor 1987's normal approximation): the chance the test finds the change at level alpha."""
    from scipy.stats import norm

    discordant = p_gain + p_loss
    if discordant <= 0 or n <= 0:
        return 0.0
    diff = abs(p_gain - p_loss)
    z = norm.ppf(1 - alpha / 2)
    num = diff * (n**0.5) - z * discordant**0.5
    den = (discordant - diff**2) ** 0.5
    return float(norm.cdf(num / den)) if den > 0 else 1.0


def detectable_gain(n: int, p_loss: float = 0.0, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest share of items turning right (with `p_loss` turning wrong) that a McNemar test on n items
    finds with the given power: the effect a null result can rule out."""
    gain = 0.0
    while gain < 1 - p_loss:
        gain += 0.001
        if mcnemar_power(n, gain, p_loss, alpha) >= power:
            return round(gain, 3)
    return float("nan")


def accuracy_by_group(groups: Sequence[str], correct: Sequence[bool]) -> dict[str, dict]:
    """{group: {"n", "correct", "accuracy"}}, groups sorted by name."""
    if len(groups) != len(correct):
        raise ValueError(f"{len(groups)} groups but {len(correct)} results")
    out: dict[str, dict] = {}
    for g, ok in zip(groups, correct):
        row = out.setdefault(g, {"n": 0, "correct": 0})
        row["n"] += 1
        row["correct"] += int(bool(ok))
    for row in out.values():
        row["accuracy"] = row["correct"] / row["n"]
    return dict(sorted(out.items()))


def _pair(a_correct, b_correct):
    import numpy as np

    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired results must be two equal-length lists, got {a.shape} and {b.shape}")
    if len(a) == 0:
        raise ValueError("no items to compare")
    return a, b
