"""The whole CPU curriculum, measured as one table: base model -> SFT -> SFT + GRPO on the bundled `heldout` split.

Usage (from the repository root):

    HF_HUB_OFFLINE=1 python benchmarks/curriculum.py              # trains what is missing, then evaluates
    HF_HUB_OFFLINE=1 python benchmarks/curriculum.py --limit 18   # a stratified subset, for a quick look

It trains (or reuses, by recipe hash, as the book does: `medreason.train.ensure_adapter`) the SFT adapter of
`configs/smollm2-135m-cpu.yaml` and the GRPO adapter of `configs/smollm2-135m-grpo-cpu.yaml`, then evaluates all
three variants on the same questions with `medreason.evaluate.evaluate`, the function behind `medreason eval`:

- generate mode, greedy, at the recipes' budget (`max_new_tokens` = the GRPO recipe's `max_completion_length`);
- log-likelihood mode with the chat template (`--chat`).

Per variant: accuracy (Wilson interval), extraction rate, truncation rate, accuracy among extracted answers (with
its interval), median and p95 output tokens. Per pair (SFT vs base, GRPO vs SFT): the paired difference, its
bootstrap interval and McNemar's exact p. Also the no-knowledge baselines of the benchmark file
(`medreason.mcq.trivial_baselines`), GRPO's groups with signal, truncation and reward trend (from the adapter's
`medreason.json`, written at the end of training), the CPU kind and this command.
Writes results/benchmarks/curriculum.json; the training, GRPO and evaluation chapters read their claims from it
or from their own runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine  # noqa: E402

from medreason.io import atomic_write_json  # noqa: E402

SFT_RECIPE = "configs/smollm2-135m-cpu.yaml"
GRPO_RECIPE = "configs/smollm2-135m-grpo-cpu.yaml"
DEFAULT_OUT = Path("results/benchmarks/curriculum.json")
VARIANT_KEYS = (
    "n",
    "accuracy",
    "accuracy_ci",
    "extraction_rate",
    "truncation_rate",
    "accuracy_when_extracted",
    "accuracy_when_extracted_ci",
    "tokens_median",
    "tokens_p95",
    "vs_best_baseline",
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--limit", type=int, default=None, help="a stratified subset of heldout (default: all of it)")
    p.add_argument("--batch-size", type=int, default=32, help="generation batch size")
    p.add_argument("--sft-recipe", default=SFT_RECIPE)
    p.add_argument("--grpo-recipe", default=GRPO_RECIPE)
    p.add_argument("--no-cache", action="store_true", help="generate again instead of reusing cached answers")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p.parse_args(argv)


def paired(rows_a: list[dict], rows_b: list[dict], a: str, b: str) -> dict:
    """b minus a on the items both answered (matched by id): difference, bootstrap interval, McNemar."""
    from medreason.stats import paired_comparison

    right_a = {r["id"]: r["correct"] for r in rows_a}
    right_b = {r["id"]: r["correct"] for r in rows_b}
    ids = [i for i in right_a if i in right_b]
    out = paired_comparison([right_a[i] for i in ids], [right_b[i] for i in ids])
    # b and c are McNemar's discordant counts (a right only, b right only), as medreason.stats names them
    return {
        "variant_a": a,
        "variant_b": b,
        **{k: out[k] for k in ("n", "acc_a", "acc_b", "diff", "ci_low", "ci_high", "p_value", "b", "c")},
    }


def read_rows(path: str, variant: str) -> list[dict]:
    import json

    return [r for r in map(json.loads, Path(path).read_text().splitlines()) if r["variant"] == variant]


def main(argv=None) -> int:
    args = parse_args(argv)
    from medreason.adapter import read_adapter
    from medreason.config import parse_config
    from medreason.evaluate import evaluate
    from medreason.generate import load_for_inference
    from medreason.io import sha256_file
    from medreason.train import ensure_adapter

    started = time.time()
    report = {
        "benchmark": "curriculum",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + shlex.join(sys.argv),
        "load_average_before": load_average(),
        "recipes": {"sft": args.sft_recipe, "grpo": args.grpo_recipe},
        "recipe_sha256": {
            name: sha256_file(path) for name, path in (("sft", args.sft_recipe), ("grpo", args.grpo_recipe))
        },
    }
    t0 = time.time()
    sft_dir = ensure_adapter(args.sft_recipe)
    grpo_dir = ensure_adapter(args.grpo_recipe)
    report["training_seconds_if_trained"] = round(time.time() - t0, 1)
    sft_meta, grpo_meta = read_adapter(sft_dir), read_adapter(grpo_dir)
    _, grpo_cfg, _ = parse_config(["--config", args.grpo_recipe])
    budget = int(grpo_cfg.max_completion_length)
    report["adapters"] = {
        "sft": {
            "path": str(sft_dir),
            "dataset": sft_meta.get("dataset"),
            "steps": sft_meta["metrics"].get("step") or sft_meta["metrics"].get("epoch"),
            "train_runtime": sft_meta["metrics"].get("train_runtime"),
        },
        "grpo": {
            "path": str(grpo_dir),
            "init_adapter": grpo_meta.get("init_adapter"),
            "train_runtime": grpo_meta["metrics"].get("train_runtime"),
        },
    }

    # generate mode: base vs SFT, then base (the same cached answers) vs SFT + GRPO
    common = dict(
        mode="generate", limit=args.limit, batch_size=args.batch_size, max_new_tokens=budget, cache=not args.no_cache
    )
    t0 = time.time()
    sessions = {"sft": load_for_inference(str(sft_dir)), "grpo": load_for_inference(str(grpo_dir))}
    report["machine"] = machine(next(sessions["sft"].model.parameters()).dtype)
    report["data_sha256"] = sft_meta.get("data", {}).get("sha256")
    gen_sft = evaluate(session=sessions["sft"], run_name="curriculum-generate-sft", **common)
    gen_grpo = evaluate(session=sessions["grpo"], run_name="curriculum-generate-grpo", **common)
    generate_seconds = time.time() - t0
    rows = {
        "base": read_rows(gen_sft["items_path"], "base"),
        "sft": read_rows(gen_sft["items_path"], "adapter"),
        "grpo": read_rows(gen_grpo["items_path"], "adapter"),
    }
    summaries = {
        "base": gen_sft["variants"]["base"],
        "sft": gen_sft["variants"]["adapter"],
        "grpo": gen_grpo["variants"]["adapter"],
    }
    report["generate"] = {
        "max_new_tokens": budget,
        "batch_size": args.batch_size,
        "decoding": "greedy",
        "seconds": round(generate_seconds, 1),
        "variants": {name: {k: s.get(k) for k in VARIANT_KEYS} for name, s in summaries.items()},
        "pairs": {
            "sft_vs_base": paired(rows["base"], rows["sft"], "base", "sft"),
            "grpo_vs_sft": paired(rows["sft"], rows["grpo"], "sft", "grpo"),
        },
    }
    report["n_items"], report["benchmark_split"] = gen_sft["n_mcq"], gen_sft["benchmark"]
    report["baselines"] = gen_sft["baselines"]

    # log-likelihood with the chat template: what each variant prefers among the options, no answer to state
    t0 = time.time()
    ll_sft = evaluate(
        session=sessions["sft"], mode="loglik", chat=True, limit=args.limit, run_name="curriculum-loglik-sft"
    )
    ll_grpo = evaluate(
        session=sessions["grpo"], mode="loglik", chat=True, limit=args.limit, run_name="curriculum-loglik-grpo"
    )
    ll_rows = {
        "base": read_rows(ll_sft["items_path"], "base"),
        "sft": read_rows(ll_sft["items_path"], "adapter"),
        "grpo": read_rows(ll_grpo["items_path"], "adapter"),
    }
    ll = {
        "base": ll_sft["variants"]["base"],
        "sft": ll_sft["variants"]["adapter"],
        "grpo": ll_grpo["variants"]["adapter"],
    }
    report["loglik_chat"] = {
        "seconds": round(time.time() - t0, 1),
        "variants": {
            name: {k: v.get(k) for k in ("n", "accuracy", "accuracy_ci", "vs_best_baseline")} for name, v in ll.items()
        },
        "pairs": {
            "sft_vs_base": paired(ll_rows["base"], ll_rows["sft"], "base", "sft"),
            "grpo_vs_sft": paired(ll_rows["sft"], ll_rows["grpo"], "sft", "grpo"),
        },
    }

    signal = grpo_meta.get("signal") or {}
    report["grpo"] = {
        k: signal.get(k)
        for k in (
            "steps",
            "mean_groups_with_signal",
            "mean_truncated",
            "mean_correctness",
            "mean_format",
            "mean_kl",
            "reward_trend",
            "correctness_trend",
            "per_step",
        )
    }
    report["seconds"] = round(time.time() - started, 1)
    out = Path(args.out)
    atomic_write_json(out, report)
    print(table(report))
    print(f"written to {out}")
    return 0


def table(report: dict) -> str:
    g = report["generate"]
    lines = [
        f"{report['n_items']} questions of the {report['benchmark_split']}; generate: greedy, "
        f"{g['max_new_tokens']} new tokens",
        f"{'':<6}{'accuracy':>10}{'extracted':>11}{'truncated':>11}{'acc|extr':>10}{'p50':>6}{'p95':>6}{'loglik':>9}",
    ]
    for name, v in g["variants"].items():
        ae = v["accuracy_when_extracted"]
        lines.append(
            f"{name:<6}{v['accuracy']:>10.3f}{v['extraction_rate']:>11.3f}{v['truncation_rate']:>11.3f}"
            f"{(f'{ae:.3f}' if ae is not None else '-'):>10}{v['tokens_median']:>6.0f}{v['tokens_p95']:>6.0f}"
            f"{report['loglik_chat']['variants'][name]['accuracy']:>9.3f}"
        )
    b = report["baselines"]["best"]
    lines.append(f"best no-knowledge baseline: {b['rule']} {b['accuracy']:.3f}")
    for mode in ("generate", "loglik_chat"):
        for name, p in report[mode]["pairs"].items():
            lines.append(
                f"{mode} {name}: {p['diff']:+.3f} (95% {p['ci_low']:+.3f} to {p['ci_high']:+.3f}), "
                f"McNemar p = {p['p_value']:.3g}"
            )
    s = report["grpo"]
    if s.get("reward_trend"):
        t = s["reward_trend"]
        lines.append(
            f"GRPO: {s['steps']} steps, groups with signal {s['mean_groups_with_signal']:.2f}, truncated "
            f"{s['mean_truncated']:.2f}, reward slope {t['slope']:+.4f}/step (95% {t['ci_low']:+.4f} to "
            f"{t['ci_high']:+.4f}): {t['verdict']}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
