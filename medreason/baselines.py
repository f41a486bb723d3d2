"""What needs no knowledge: the accuracy of rules that answer a multiple-choice benchmark without reading the
questions, computed from the benchmark file alone. Every accuracy medreason reports is read against them.

    from medreason.baselines import trivial_baselines
    trivial_baselines(heldout, prior=bundled_split("pool"))   # chance, majority label, same label, longest option
"""

from __future__ import annotations

from collections import Counter

from medreason.mcq import MCQItem, chance

# how the rules of trivial_baselines read in prose and tables
BASELINE_NAMES = {
    "chance": "chance",
    "majority_label": "majority label",
    "same_label": "best same label",
    "longest_option": "longest option",
}


def trivial_baselines(items: list[MCQItem], prior: list[MCQItem] | None = None) -> dict:
    """Accuracy on `items` of rules that need no medical knowledge, computed from the benchmark file alone: what
    any accuracy has to beat before it says the model knows something.

    - chance: guessing uniformly, 1/k per item, averaged;
    - majority_label: always answer the label most often correct in `prior` (the benchmark's other split, e.g.
      the pool when scoring heldout, as a majority-class baseline learns from training labels); without a prior,
      the most common label among `items` themselves (then it is the same as the best same label);
    - same_label: always answer one label (A, or "yes"), for each label, and the best of them: an oracle upper
      bound on every constant answer, since it picks the label after seeing the answers;
    - longest_option: answer the option with the most characters (a known cue of hand-written items: the right
      answer is often the most qualified); ties share the credit (1/t when the answer is one of t tied options).
    `best` names the highest of these rules, chance included (a tie goes to the one listed first)."""
    if not items:
        raise ValueError("no items")
    n = len(items)
    labels = list(dict.fromkeys(label for item in items for label in item.options))
    same = {label: sum(item.answer == label for item in items) / n for label in labels}
    best_label = max(labels, key=lambda label: (same[label], -labels.index(label)))
    counts = Counter(item.answer for item in (prior or items))
    top = max(counts.values())
    majority = next(label for label in (labels + list(counts)) if counts.get(label) == top)
    longest = 0.0
    for item in items:
        size = max(len(text) for text in item.options.values())
        tied = [label for label, text in item.options.items() if len(text) == size]
        longest += (item.answer in tied) / len(tied)
    rules = {
        "chance": {"accuracy": chance(items)},
        "majority_label": {
            "label": majority,
            "accuracy": sum(item.answer == majority for item in items) / n,
            "label_from": f"{len(prior)} other items of the benchmark" if prior else "the scored items themselves",
        },
        "same_label": {"label": best_label, "accuracy": same[best_label], "by_label": same},
        "longest_option": {"accuracy": longest / n},
    }
    best = max(rules, key=lambda name: rules[name]["accuracy"])
    return {"n": n, **rules, "best": {"rule": best, "accuracy": rules[best]["accuracy"]}}


def rule_scores(items: list[MCQItem], rule: str, prior: list[MCQItem] | None = None) -> list[float]:
    """Each item's credit under one rule of `trivial_baselines` (1 right, 0 wrong, 1/t for a tie of t options;
    chance is 1/k): the per-item answers a model is compared with, item by item."""
    if rule == "chance":
        return [item.chance for item in items]
    if rule in ("majority_label", "same_label"):
        label = trivial_baselines(items, prior=prior)[rule]["label"]
        return [float(item.answer == label) for item in items]
    if rule == "longest_option":
        out = []
        for item in items:
            size = max(len(text) for text in item.options.values())
            tied = [label for label, text in item.options.items() if len(text) == size]
            out.append((item.answer in tied) / len(tied))
        return out
    raise ValueError(f"unknown rule {rule!r}")
