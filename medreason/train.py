"""`medreason train`: parse a recipe, settle it for this machine, and run its method (SFT or GRPO).

    medreason train --config configs/smollm2-135m-cpu.yaml                 # embedded default, minutes on a CPU
    medreason train --config configs/smollm2-135m-cpu.yaml --max_steps 5 --lora_r 8
    medreason train --config configs/smollm2-135m-cpu.yaml --resume        # continue after an interruption
    torchrun --nproc_per_node 2 -m medreason train --config configs/smollm2-135m-cpu.yaml   # DDP

    from medreason.train import train, ensure_adapter
    result = train(["--config", "configs/smollm2-135m-cpu.yaml"])   # what the CLI calls
    path = ensure_adapter()                                          # what the book calls: reuse or train

The recipe's `trainer` key picks the method: `sft` (medreason.sft) or `grpo` (medreason.grpo). Both are built
from medreason.run (checks, resume, locks, base model, MLflow run, save) and neither imports the other.
Checkpoints go to results/<run name>/ (the recipe's output_dir); the adapter to lora_adapter/<model name>/.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from medreason.adapter import adapter_path, read_adapter
from medreason.config import parse_recipe, settle
from medreason.distributed import check_launch
from medreason.errors import UserError
from medreason.guards import option_value
from medreason.run import TrainResult, check_before_loading, last_checkpoint, recipe_hash_of

log = logging.getLogger(__name__)


def train(argv: list[str]) -> TrainResult:
    """Parse a recipe plus overrides and train; the same function serves the CLI and the book."""
    recipe_args = parse_recipe(argv)
    recipe = recipe_hash_of(*recipe_args)  # the recipe as written, before the machine settles anything
    check_before_loading(*recipe_args)  # what the machine settles (precision, dtype, run name) is not checked
    args, cfg, model_args = settle(argv, *recipe_args)
    check_launch(cfg.use_cpu)  # several GPUs without a launcher: refused before anything loads
    if args.trainer == "grpo":
        from medreason.grpo import train_grpo

        return train_grpo(args, cfg, model_args, recipe)
    from medreason.sft import train_sft

    return train_sft(args, cfg, model_args, recipe)


def ensure_adapter(config: str = "configs/smollm2-135m-cpu.yaml", overrides: list[str] = ()) -> Path:
    """The adapter a recipe produces. Reused when its folder holds an adapter trained from the same resolved
    recipe (compared by `recipe_hash`); otherwise trained now into the recipe's own folder, with a log line that
    says why. Book chapters call this so that they run in any order."""
    args, cfg, model_args = parse_recipe(["--config", config, *overrides])
    path = adapter_path(args.adapter_root, model_args.model_name_or_path)
    wanted = recipe_hash_of(args, cfg, model_args)
    if path.is_dir():
        try:
            found = read_adapter(path).get("recipe_hash")
        except UserError as e:
            found, why = None, f"it is unusable ({e})"
        else:
            why = f"it was trained from another recipe (hash {found}, this recipe {wanted})"
        if found == wanted:
            log.info("using the adapter in %s (same recipe, hash %s)", path, wanted)
            return path
        log.info("retraining %s with %s: %s", path, config, why)
    else:
        log.info("no adapter in %s yet: training one with %s", path, config)
    extra = []
    output_dir = Path(cfg.output_dir)
    if last_checkpoint(output_dir) is not None:
        recorded = output_dir / "recipe_hash"
        if recorded.is_file() and recorded.read_text().strip() == wanted:
            log.info("resuming the interrupted run of this recipe in %s", output_dir)
            extra = ["--resume", "true"]
        else:  # checkpoints of another recipe: kept, but out of the way of this one
            aside = output_dir.with_name(f"{output_dir.name}.superseded-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(output_dir, aside)
            log.info("%s held checkpoints of another recipe: moved to %s", output_dir, aside)
    return train(["--config", config, *overrides, *extra]).adapter_dir


def cli(args, rest: list[str]) -> int:
    if option_value(rest, "config") is None:  # --config FILE and --config=FILE alike
        raise UserError("medreason train needs a recipe: --config configs/<recipe>.yaml")
    result = train(rest)
    if result.adapter_dir:
        shown = {k: round(v, 4) for k, v in result.metrics.items() if "loss" in k or "perplexity" in k}
        print(f"adapter saved to {result.adapter_dir}  ({result.global_step} steps; {shown})")
    return 0
