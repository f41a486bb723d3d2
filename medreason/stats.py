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
