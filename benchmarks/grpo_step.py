"""Where a GRPO step's time goes on the CPU recipe, with medreason's rollouts and with TRL's own generation.

Usage (from the repository root; alone on the machine):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/grpo_step.py                  # the CPU GRPO recipe, 4 steps each way
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/grpo_step.py --steps 6 --config configs/smollm2-135m-grpo-cpu.yaml
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/grpo_step.py --init_adapter /tmp/sft/SmolLM2-135M-Instruct

The trainer is the one `medreason train` builds: the GRPO recipe's own phases (medreason.run.prepare, then the
recipe's load_data, load_model and build_trainer), nothing copied and no private method overridden. What is timed:

- a step: from TrainerCallback.on_step_begin to on_step_end (the rollout of the step, then the update);
- the rollout's generation: the time inside the rollout function (medreason.rollouts, the recipe's default), or,
  with `medreason_rollouts: false` (TRL's own `model.generate`), the step's generation is read off TRL's own
  profiling of `transformers.generate` when TRL logs it, else reported as unknown;
- generated tokens: TRL's `num_tokens` log minus the prompts, per step.

Both ways run the same prompts from the same seed and the same adapter. The first step of each is a warm-up. The
target (issue 29): a step within 10 s at the CPU recipe's settings with the same completions per step.
Results go to results/benchmarks/grpo_step.json under a key naming the CPU kind (`avx2`, `bf16`, ...).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import cpu_kind, load_average, machine, now, record  # noqa: E402

DEFAULT_CONFIG = "configs/smollm2-135m-grpo-cpu.yaml"
DEFAULT_OUT = ROOT / "results" / "benchmarks" / "grpo_step.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help="a GRPO recipe")
    p.add_argument("--steps", type=int, default=4, help="GRPO steps each way (the first is a warm-up)")
    p.add_argument("--ways", default="medreason,trl", help="medreason (its rollouts), trl (TRL's generate), or both")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="where the JSON goes")
    args, rest = p.parse_known_args(argv)
    args.overrides = rest  # recipe keys (--init_adapter DIR, --num_threads 1, --max_completion_length 64, ...)
    return args


def measure(args, work: Path, medreason_rollouts: bool) -> dict:
    """Train `args.steps` GRPO steps with the recipe's own trainer; per step: seconds, generation seconds and the
    completion tokens."""
    import torch
    from transformers import TrainerCallback

    from medreason import rollouts
    from medreason.run import prepare, session

    argv = [
        "--config",
        args.config,
        "--max_steps",
        str(args.steps),
        "--output_dir",
        str(work / ("medreason" if medreason_rollouts else "trl")),
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--medreason_rollouts",
        str(medreason_rollouts).lower(),
        *args.overrides,
    ]
    run = prepare(argv)
    data = run.recipe.load_data(run)
    times = {"step": [], "generation": [], "began": None}

    class Clock(TrainerCallback):  # transformers' documented hooks
        def on_step_begin(self, a, state, control, **kw):
            times["began"] = time.perf_counter()
            times["generation"].append(0.0)

        def on_step_end(self, a, state, control, **kw):
            times["step"].append(time.perf_counter() - times["began"])

    original = rollouts.rollout_func

    def timed_rollout_func(cfg):  # medreason's own function, wrapped: no TRL internals touched
        inner = original(cfg)
        if inner is None:
            return None

        def rollout(prompts, trainer):
            start = time.perf_counter()
            out = inner(prompts, trainer)
            if times["generation"]:
                times["generation"][-1] += time.perf_counter() - start
            return out

        return rollout

    rollouts.rollout_func = timed_rollout_func
    try:
        with session(run):
            policy = run.recipe.load_model(run)
            trainer = run.recipe.build_trainer(run, policy, data)
            trainer.add_callback(Clock())
            torch.manual_seed(run.cfg.seed)
            trainer.train()
    finally:
        rollouts.rollout_func = original
    history = [h for h in trainer.state.log_history if "num_tokens" in h]
    tokens = [h.get("completions/mean_length", 0) * run.cfg.generation_batch_size for h in history]
    steps, generation = times["step"][1:], times["generation"][1:]
    return {
        "rollouts": "medreason.decode (rollout_func)" if medreason_rollouts else "TRL's model.generate",
        "step_s": steps,
        "step_s_median": statistics.median(steps),
        "generation_s": generation if medreason_rollouts else None,
        "generation_share": sum(generation) / sum(steps) if medreason_rollouts else None,
        "completion_tokens": tokens[1:],
        "completions_per_step": run.cfg.generation_batch_size,
        "max_completion_length": run.cfg.max_completion_length,
        "init_adapter": run.cfg.init_adapter,
        "dtype": str(next(policy.model.parameters()).dtype).removeprefix("torch."),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="medreason: %(message)s", stream=sys.stderr)
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2 (the first step is a warm-up)")
    ways = [w.strip() for w in args.ways.split(",")]
    before = load_average()
    results = {}
    with tempfile.TemporaryDirectory(prefix="grpo-bench-") as work:
        for way in ways:
            results[way] = measure(args, Path(work), medreason_rollouts=way == "medreason")
    facts = machine(results[ways[0]]["dtype"])
    entry = {
        "benchmark": "grpo_step",
        "date": now(),
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/grpo_step.py " + " ".join(argv or sys.argv[1:]),
        "recipe": args.config,
        "overrides": args.overrides,
        "machine": facts,
        "load_average_before": before,
        "load_average_after": load_average(),
        "steps_measured": args.steps - 1,
        **results,
        "target_s": 10,
    }
    if {"medreason", "trl"} <= set(results):
        entry["trl_over_medreason"] = results["trl"]["step_s_median"] / results["medreason"]["step_s_median"]
    label = cpu_kind(facts)
    record(Path(args.out), label, entry)
    for r in results.values():
        share = f", generation {r['generation_share']:.0%}" if r["generation_share"] is not None else ""
        print(
            f"{label}, rollouts by {r['rollouts']}: step {r['step_s_median']:.1f} s (median of {args.steps - 1}){share}"
        )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
