"""Where a GRPO step's time goes on the CPU recipe: rollout generation vs the rest, and rollout speed vs plain
batched `generate` on the same prompts.

Usage (from the repository root):

    HF_HUB_OFFLINE=1 python benchmarks/grpo_step.py                    # the CPU GRPO recipe, 4 steps
    HF_HUB_OFFLINE=1 python benchmarks/grpo_step.py --steps 6 --config configs/smollm2-135m-grpo-cpu.yaml
    HF_HUB_OFFLINE=1 python benchmarks/grpo_step.py --init_adapter /tmp/me/adapters/SmolLM2-135M-Instruct
    HF_HUB_OFFLINE=1 python benchmarks/grpo_step.py --num_threads 1    # any other recipe key overrides it

The trainer is built exactly as `medreason train` builds it (medreason.grpo: recipe, runtime, pool prompts,
policy with the SFT adapter, rewards), as a subclass of TRL's GRPOTrainer that only times three of its methods:

- step: `training_step` (what TRL itself reports as step_time): the rollout of the step, then the update;
- rollout: `_generate_and_score_completions` (generation, rewards, advantages, the reference model's
  log-probabilities for the KL term);
- generation: `_generate_single_turn` (the policy's `generate` call), and the tokens it generated;
- update = step - rollout (the forward and backward passes of the loss and the optimizer step).

Plain generation: the same prompts (each repeated num_generations times, as GRPO samples them), the same
model with its adapter, the same sampling (temperature, top_p, max_completion_length, KV cache), one batched
`model.generate` call per step's prompts. Both rates are generated tokens (up to and including EOS) per second.
The goal is rollouts within 1.3x of plain generation. The first step is a warm-up and is not counted.

Figures go to results/benchmarks/grpo_step.json with the machine, the versions and the command. Nothing is
written to MLflow or lora_adapter/ (the trainer writes only to a temporary output folder).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_CONFIG = "configs/smollm2-135m-grpo-cpu.yaml"
DEFAULT_OUT = Path("results/benchmarks/grpo_step.json")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help="a GRPO recipe")
    p.add_argument("--steps", type=int, default=4, help="GRPO steps (the first is a warm-up)")
    p.add_argument("--init_adapter", default=None, help="override the recipe's init_adapter ('' = a new LoRA)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="where the JSON goes")
    args, rest = p.parse_known_args(argv)
    args.overrides = rest  # recipe keys (--num_threads 1, --max_completion_length 64, ...)
    return args


def build_trainer(args, work: Path):
    """medreason's GRPO trainer for the recipe, with timers on the three methods above."""
    import torch
    from trl import GRPOTrainer

    from medreason.config import parse_config
    from medreason.grpo import check_grpo, load_policy, pool_dataset, read_init_adapter, use_cpu_head
    from medreason.rewards import correctness_reward, format_reward
    from medreason.run import check_hyperparameters, physical_cores

    argv = [
        "--config",
        args.config,
        "--max_steps",
        str(args.steps),
        "--output_dir",
        str(work),
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
    ]
    if args.init_adapter is not None:
        argv += ["--init_adapter", args.init_adapter]
    argv += args.overrides
    margs, cfg, model_args = parse_config(argv)
    check_hyperparameters(margs, cfg, model_args)
    check_grpo(margs, cfg, model_args)
    init = read_init_adapter(margs, model_args)
    torch.set_num_threads(margs.num_threads or physical_cores())
    dataset, _ = pool_dataset(margs)
    model, tokenizer, peft_config, _ = load_policy(margs, model_args)
    timings = {"step": [], "rollout": [], "generation": [], "generated_tokens": [], "prompts": []}

    class TimedGRPOTrainer(GRPOTrainer):
        def training_step(self, *a, **kw):
            t = time.perf_counter()
            out = super().training_step(*a, **kw)
            timings["step"].append(time.perf_counter() - t)
            return out

        def _generate_and_score_completions(self, inputs):
            timings["prompts"].append([x["prompt"] for x in inputs])
            t = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            timings["rollout"].append(time.perf_counter() - t)
            return out

        def _generate_single_turn(self, *a, **kw):
            t = time.perf_counter()
            out = super()._generate_single_turn(*a, **kw)
            timings["generation"].append(time.perf_counter() - t)
            timings["generated_tokens"].append(sum(len(ids) for ids in out[0]))
            return out

    trainer = TimedGRPOTrainer(
        model=model,
        reward_funcs=[correctness_reward, format_reward],
        args=cfg,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    use_cpu_head(margs, cfg, trainer)  # as medreason.grpo does
    desc = f"{init['path']} (sha256 {init['sha256'][:12]})" if init else "a new LoRA (no init_adapter)"
    return trainer, tokenizer, cfg, model_args, timings, desc, torch


def plain_generate(trainer, tokenizer, cfg, prompts: list, torch) -> tuple[float, int]:
    """One batched `generate` over the step's prompts (already repeated per generation by the sampler), with
    the rollout's sampling settings. Returns (seconds, generated tokens up to and including EOS)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = side
    eos = tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **batch.to(model.device),
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k or None,
            max_new_tokens=cfg.max_completion_length,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
        )
    seconds = time.perf_counter() - t
    model.train(was_training)
    completion = out[:, batch["input_ids"].shape[1] :]
    tokens = 0
    for row in completion.tolist():
        tokens += row.index(eos) + 1 if eos in row else len(row)
    return seconds, tokens


def machine_info(model) -> dict:
    import peft
    import torch
    import transformers
    import trl

    from medreason.compat import cpu_supports_bf16

    cpu = None
    try:
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            None,
        )
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu or platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_supports_bf16(),
        "device": str(next(model.parameters()).device),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="medreason: %(message)s", stream=sys.stderr)
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2 (the first step is a warm-up)")
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="grpo-bench-") as work:
        trainer, tokenizer, cfg, model_args, t, adapter, torch = build_trainer(args, Path(work))
        trainer.train()
        # plain generation on each measured step's prompts, after training (the same weights do not matter
        # for speed; the lengths do, so both rates are per generated token)
        plain = [plain_generate(trainer, tokenizer, cfg, prompts, torch) for prompts in t["prompts"][1:]]
        model = trainer.accelerator.unwrap_model(trainer.model)
        machine = machine_info(model)

    n = len(t["step"]) - 1
    steps = t["step"][1:]
    rollout, generation = t["rollout"][1:], t["generation"][1:]
    gen_tokens = sum(t["generated_tokens"][1:])
    rollout_rate = gen_tokens / sum(generation)
    plain_rate = sum(tok for _, tok in plain) / sum(s for s, _ in plain)
    report = {
        "benchmark": "grpo_step",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", sys.argv[0], *argv]),
        "recipe": args.config,
        "model": model_args.model_name_or_path,
        "adapter": adapter,
        "machine": machine,
        "overrides": args.overrides,
        "settings": {
            "steps_measured": n,
            "warmup_steps": 1,
            "num_generations": cfg.num_generations,
            "completions_per_step": cfg.generation_batch_size,
            "max_completion_length": cfg.max_completion_length,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "beta": cfg.beta,
            "bf16": cfg.bf16,
        },
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "step_s_median": statistics.median(steps),
        "step_s": steps,
        "rollout_s": rollout,
        "generation_s": generation,
        "update_s": [s - r for s, r in zip(steps, rollout)],
        "generation_share": sum(generation) / sum(steps),
        "rollout_share": sum(rollout) / sum(steps),
        "generated_tokens": t["generated_tokens"][1:],
        "rollout_tokens_per_s": rollout_rate,
        "plain_generate": [{"seconds": s, "tokens": tok} for s, tok in plain],
        "plain_generate_tokens_per_s": plain_rate,
        "plain_over_rollout": plain_rate / rollout_rate,
        "goal": "rollouts within 1.3x of plain generation (plain_over_rollout <= 1.3)",
    }
    print(
        f"\nGRPO step on {machine['device']} ({machine['cpu']}; {machine['torch_threads']} threads; {machine['dtype']});"
        f" {cfg.generation_batch_size} completions/step of <= {cfg.max_completion_length} tokens; adapter: {adapter}"
    )
    print(
        f"step {report['step_s_median']:.1f} s (median of {n}): generation {report['generation_share']:.0%}, "
        f"rest of the rollout {report['rollout_share'] - report['generation_share']:.0%}, "
        f"update {1 - report['rollout_share']:.0%}"
    )
    print(
        f"rollout generation {rollout_rate:.1f} tokens/s; plain batched generate {plain_rate:.1f} tokens/s "
        f"(plain/rollout {report['plain_over_rollout']:.2f}x; goal <= 1.3x)"
    )
    from medreason.io import atomic_write_json

    atomic_write_json(args.out, report)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
