"""What a recipe costs in compute before it runs: optimizer steps, sequences, tokens, training FLOPs and time.

    from medreason import compute
    compute.recipe_table(recipes)                                  # key settings of each recipe, as parsed
    compute.step_estimate_table(recipes, rows, tokens)             # steps, tokens, FLOPs and time per recipe
    compute.flop_per_token_param(lora=True, checkpointing=False)   # 4: training FLOPs per token and parameter
    compute.tokens_per_second(history)                             # measured throughput from MLflow's num_tokens
    compute.duration(5400)                                         # '1.5 h'

Memory and parameter counts are medreason.estimates'. Tables are pandas DataFrames for `medreason.plots` and the
book to show. Heavy imports stay inside functions.
"""

from __future__ import annotations

import math
from pathlib import Path


def recipe_table(paths):
    """Key settings of each recipe, parsed with the same parser `medreason train` uses."""
    import pandas as pd

    from medreason.config import parse_config

    rows = {}
    for path in paths:
        args, sft, model = parse_config(["--config", str(path)])
        targets = model.lora_target_modules
        rows[Path(path).name] = {
            "trainer": args.trainer,
            "model": model.model_name_or_path.split("/")[-1],
            "dataset": args.dataset if len(args.dataset) < 30 else args.dataset.split("/")[-1],
            "4-bit (QLoRA)": bool(model.load_in_4bit),
            "lora r / alpha": f"{model.lora_r} / {model.lora_alpha}",
            "targets": targets if isinstance(targets, str) else f"{len(targets)} modules",
            "rsLoRA / DoRA": f"{model.use_rslora} / {model.use_dora}",
            "learning rate": sft.learning_rate,
            "batch x accum": f"{sft.per_device_train_batch_size} x {sft.gradient_accumulation_steps}",
            "length": f"{sft.max_steps} steps" if sft.max_steps > 0 else f"{sft.num_train_epochs:g} epoch(s)",
            # GRPO's config has no max_length: its sequences are a prompt plus a generated completion
            "max_length": getattr(sft, "max_length", None) or f"{getattr(sft, 'max_completion_length', '?')} generated",
            "precision": args.precision,
            "grad. checkpointing": sft.gradient_checkpointing,
            "packing": getattr(sft, "packing", None),
        }
    return pd.DataFrame(rows)


# Training FLOPs per token and parameter (Kaplan et al. 2020; Chinchilla's 6N): the forward pass costs 2N
# (a multiply and an add per weight); the backward pass 2N for the gradients of the activations and 2N for
# the gradients of the weights. LoRA freezes the base, so the second 2N is (almost) skipped: 4N. Gradient
# checkpointing runs each layer's forward again during backward: +2N.
FLOP_PER_TOKEN = {"full": 6, "lora": 4}
RECOMPUTE_FLOP = 2


def flop_per_token_param(lora: bool, checkpointing: bool) -> int:
    """Training FLOPs per token per parameter: 6 (full) or 4 (LoRA), +2 with gradient checkpointing."""
    return FLOP_PER_TOKEN["lora" if lora else "full"] + (RECOMPUTE_FLOP if checkpointing else 0)


def step_estimate_table(
    paths,
    train_rows: dict[str, int],
    tokens_per_example: float | dict[str, float],
    world_sizes=(1,),
    model_params: dict[str, float] | None = None,
    cpu_tokens_per_second: float | None = None,
    gpu_flops: float = 100e12,
):
    """Optimizer steps, sequences and tokens per SFT recipe and number of processes, from each recipe's batch
    settings and the training-set size of its dataset (`train_rows`: dataset -> rows), and the mean tokens per
    example (one figure, or dataset -> figure like `train_rows`). With `model_params`
    (model name -> parameters): training compute, `flop_per_token_param` (4N for LoRA, 6N with the recipe's
    gradient checkpointing) times tokens, and the time that takes at `gpu_flops` per GPU, a lower bound
    (perfect scaling over `processes` GPUs). With `cpu_tokens_per_second` (measured): the time on that CPU,
    for the recipes whose model is the one measured (SmolLM2-135M)."""
    import pandas as pd

    from medreason.config import parse_config

    rows = []
    for path in paths:
        args, sft, model = parse_config(["--config", str(path)])
        if args.trainer != "sft":  # GRPO's cost is mostly generation: the 4N/6N training model does not apply
            continue
        name = model.model_name_or_path.rstrip("/").split("/")[-1]
        n_train = train_rows.get(args.dataset, train_rows.get("bundled"))
        per_example = (
            tokens_per_example.get(args.dataset, tokens_per_example.get("bundled"))
            if isinstance(tokens_per_example, dict)
            else tokens_per_example
        )
        n_params = (model_params or {}).get(name)
        per_token = flop_per_token_param(bool(model.use_peft), bool(sft.gradient_checkpointing))
        for world in world_sizes:
            per_step = sft.per_device_train_batch_size * sft.gradient_accumulation_steps * world
            if sft.max_steps > 0:
                steps = sft.max_steps
            else:
                steps = math.ceil(math.ceil(n_train / per_step) * sft.num_train_epochs)
            tokens = steps * per_step * min(per_example, sft.max_length or per_example)
            row = {
                "recipe": Path(path).name,
                "dataset": args.dataset.split("/")[-1],
                "processes": world,
                "train rows": n_train,
                "sequences / step": per_step,
                "optimizer steps": steps,
                "epochs": round(steps * per_step / n_train, 2),
                "tokens (M)": round(tokens / 1e6, 2),
            }
            if n_params:
                flops = per_token * n_params * tokens
                row["FLOP / token"] = f"{per_token}N"
                row["PFLOP"] = round(flops / 1e15, 2)
                row[f"GPU time at {gpu_flops / 1e12:.0f} TFLOP/s"] = duration(flops / (gpu_flops * world))
            if cpu_tokens_per_second:
                # processes on one CPU share its cores: no speed-up from more of them
                row["time on this CPU"] = (
                    duration(tokens / cpu_tokens_per_second) if name.lower().startswith("smollm2-135m") else "-"
                )
            rows.append(row)
    return pd.DataFrame(rows).set_index(["recipe", "processes"])


def tokens_per_second(history: list[tuple[int, float, float]]) -> float | None:
    """Training throughput from (step, timestamp in ms, cumulative tokens) points, e.g. TRL's `num_tokens`
    metric read from MLflow: tokens between the first and last logged step over the time between them, so
    evaluations before and after training do not count. None with fewer than two distinct times."""
    history = sorted(history)
    if len(history) < 2 or history[-1][1] <= history[0][1]:
        return None
    (_, t0, n0), (_, t1, n1) = history[0], history[-1]
    return (n1 - n0) / ((t1 - t0) / 1000)


def duration(seconds: float) -> str:
    """Seconds as a short human duration: '45 s', '12 min', '3.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
