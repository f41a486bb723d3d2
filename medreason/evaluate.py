"""`medreason eval`: what fine-tuning changed, measured. Base model vs base + adapter, one copy of the weights, on
the same items, compared as pairs.

    medreason eval --adapter lora_adapter/SmolLM2-135M-Instruct --mode generate      # let it think, extract, score
    medreason eval --adapter DIR --mode generate --samples 8                         # pass@1, pass@4, pass@8
    medreason eval --adapter DIR --mode generate --mcq my_exam.jsonl --max-new-tokens 512 --limit 100
    medreason eval --adapter DIR --mode loglik [--chat]                             # lm-eval, option log-likelihoods

    from medreason.evaluate import evaluate
    from medreason.modes import mode_for
    report = evaluate("lora_adapter/SmolLM2-135M-Instruct", mode=mode_for("generate", max_new_tokens=192), limit=48)

The mode (medreason.modes) decides how each variant answers and what it reports; this module does what every mode
shares: the items (a benchmark file or a split of the bundled one; `--limit` draws a subset stratified by group),
the no-knowledge baselines (medreason.baselines), each variant's accuracy with its Wilson interval and a paired
per-item test against the best rule, the paired comparison of adapter and base (a bootstrap interval of the
difference, and McNemar's exact test, or for sampled pass@1 a sign-flip permutation test), and the record:
results/<run>/eval.json, eval_items.jsonl and an MLflow run (experiment `medreason-eval`).
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from pathlib import Path

from medreason.errors import UserError
from medreason.io import atomic_open, atomic_write_json

log = logging.getLogger(__name__)


def evaluate(
    adapter: str | None = None,
    *,
    mode="loglik",
    samples: int | None = None,
    model: str | None = None,
    mcq: str | None = None,
    split: str = "heldout",
    items=None,
    benchmark: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    run_name: str | None = None,
    session=None,
    cache: bool = True,
    force: bool = False,
    **settings,
) -> dict:
    """Evaluate the base model and (when given) the adapter on the same items with `mode`: a medreason.modes object,
    or its name with its `settings` (`evaluate(a, mode="generate", max_new_tokens=256)`; with `samples` K, the
    samples mode: pass@k);
    write results/<run>/eval.json and eval_items.jsonl, log to MLflow. The items are `items` (MCQ items, named
    `benchmark`), else a benchmark file `mcq`, else the bundled benchmark's `split` ('heldout', 'pool' or 'all');
    `limit` draws a stratified subset with `seed`. results/<run>/ (the adapter folder's name by default) is refused
    when it holds another adapter's results, unless `force` (medreason.guards.eval_results)."""
    from medreason.baselines import trivial_baselines
    from medreason.guards import eval_results
    from medreason.mcq import SPLITS, bundled_split, chance, group_counts, stratified_subset
    from medreason.modes import mode_for
    from medreason.session import load_for_inference

    if isinstance(mode, str):
        mode = mode_for(mode, samples=samples, strict=True, **({"seed": seed} if samples else {}), **settings)
    elif settings or samples:
        raise TypeError("settings go with a mode's name; a mode object carries its own")
    # everything about the input fails here, before any model loads
    if items is None:
        all_items, source = benchmark_items(mcq, split)
    else:
        all_items, source = list(items), benchmark or "the given items"
    items = stratified_subset(all_items, limit, seed=seed)
    run, owner = eval_results(  # a safe run name, results/<run> no input's and no other adapter's, prompts that fit
        run_name,
        session.adapter if session else adapter,
        session.base_model if session else model,
        mcq,
        items,
        max_new_tokens=getattr(mode, "max_new_tokens", 0),
        force=force,
    )
    session = session or load_for_inference(adapter, model)
    variants = [("base", False)] + ([("adapter", True)] if session.adapter else [])
    # the majority label comes from the other split of the bundled benchmark, as a classifier's would
    prior = (
        bundled_split(next(s for s in SPLITS if s != split))
        if mcq is None and items is None and split in SPLITS
        else None
    )
    results = {
        "mode": mode.name,
        "base_model": session.base_model,
        "adapter": session.adapter,
        "benchmark": source,
        "n_mcq": len(items),
        "n_benchmark": len(all_items),
        "limit": limit,
        "seed": seed,
        "chance": chance(items),
        "groups": group_counts(items),
        "baselines": trivial_baselines(items, prior=prior),
        "settings": mode.settings(session),
        "variants": {},
        "owner": owner,  # whose results these are: another adapter's evaluation does not replace them silently
    }
    results |= mode.prepare(session, items, limit)
    rows = []
    for name, use_adapter in variants:
        with nullcontext() if use_adapter else session.adapter_off():
            scored, summary = mode.run(session, items, name, use_adapter, cache)
        rows += scored
        results["variants"][name] = {**summary, **against_baselines(scored, items, prior, mode.extracts)}
        log.info("%s: accuracy %.3f on %d items", name, summary["accuracy"], len(scored))
    if len(variants) == 2:
        results["paired"] = paired_figures(rows, "base", "adapter")
    folder = Path("results") / run
    write_items(folder / "eval_items.jsonl", rows)
    atomic_write_json(folder / "eval.json", results)
    results["path"], results["items_path"] = str(folder / "eval.json"), str(folder / "eval_items.jsonl")
    from medreason.report import log_mlflow

    log_mlflow(results, run, folder / "eval_items.jsonl")
    return results


def benchmark_items(mcq: str | None, split: str = "heldout"):
    """(items, description): a benchmark file (all its items), or the bundled benchmark's split."""
    from medreason.mcq import SPLITS, bundled_split, load_benchmark

    if mcq:
        return load_benchmark(mcq), str(mcq)
    if split == "all":
        return load_benchmark(), "bundled benchmark (all splits)"
    if split not in SPLITS:
        raise UserError(f"split '{split}' is unknown: choose {', '.join(SPLITS)} or all")
    return bundled_split(split), f"bundled benchmark ({split} split)"


def against_baselines(rows: list[dict], items, prior, extracts: bool) -> dict:
    """Accuracy with its Wilson 95 % interval, and a paired per-item comparison with the best rule that needs no
    knowledge (each item scored by the rule's own answer: medreason.baselines.rule_scores); where answers are read
    from text, also accuracy among the readable ones with its interval, which separates 'cannot state an answer'
    from 'states a wrong one'."""
    from medreason.baselines import rule_scores, trivial_baselines
    from medreason.stats import paired_values, proportion_ci

    correct = [float(r["correct"]) for r in rows]
    k = round(sum(correct))
    best = trivial_baselines(items, prior=prior)["best"]
    rule = rule_scores(items, best["rule"], prior=prior)
    paired = paired_values(rule, correct)
    out = {
        "accuracy_ci": proportion_ci(k, len(rows)),
        "vs_best_baseline": {
            "rule": best["rule"],
            "baseline": best["accuracy"],
            "diff": paired["diff"],
            "ci_low": paired["ci_low"],
            "ci_high": paired["ci_high"],
            "p_value": paired["p_value"],
            "test": "paired per item (sign-flip permutation)",
        },
    }
    if extracts and rows and not isinstance(rows[0].get("extracted"), list):
        readable = [r for r in rows if r["extracted"] is not None]
        right = sum(bool(r["correct"]) for r in readable)
        out["accuracy_when_extracted_ci"] = proportion_ci(right, len(readable)) if readable else None
    return out


def paired_figures(rows: list[dict], a: str, b: str) -> dict:
    """b minus a on the items both answered: the difference, its bootstrap interval, and McNemar's exact test
    (binary correctness) or a sign-flip permutation test (sampled pass@1, a fraction per item)."""
    from medreason.stats import paired_comparison, paired_values

    by = {v: {r["id"]: r["correct"] for r in rows if r["variant"] == v} for v in (a, b)}
    ids = [i for i in by[a] if i in by[b]]
    left, right = [by[a][i] for i in ids], [by[b][i] for i in ids]
    binary = all(isinstance(x, bool) for x in left + right)
    out = paired_comparison(left, right) if binary else paired_values(left, right)
    return {**out, "variant_a": a, "variant_b": b}


def write_items(path: Path, rows: list[dict]):
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def cli(args) -> int:
    from medreason.modes import mode_for
    from medreason.report import table

    mode = mode_for(
        args.mode,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        repetition_penalty=args.repetition_penalty,
        temperature=args.temperature,
        chat=args.chat,
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip() and t.strip() != "medreason_mcq"),
        batch_size=args.batch_size,
        seed=args.seed,
    )  # each mode takes the options it has (medreason.modes), the others are its siblings' defaults
    results = evaluate(
        args.adapter,
        mode=mode,
        model=args.model,
        mcq=args.mcq,
        split=args.split,
        limit=args.limit,
        seed=args.seed,
        run_name=args.run_name,
        cache=not args.no_cache,
        force=args.force,
    )
    print(table(results, mode))
    print(f"written to {results['path']} and {results['items_path']}")
    return 0
