"""`medreason train`: run a recipe (configs/*.yaml), whatever its method; and `ensure_adapter`, what the book and
the benchmarks call to reuse an adapter or train it.

    medreason train --config configs/smollm2-135m-cpu.yaml                 # embedded default, minutes on a CPU
    medreason train --config configs/smollm2-135m-cpu.yaml --max_steps 5 --lora_r 8
    medreason train --config configs/smollm2-135m-cpu.yaml --resume        # continue after an interruption
    torchrun --nproc_per_node 2 -m medreason train --config configs/smollm2-135m-cpu.yaml   # DDP

    from medreason.train import train, ensure_adapter
    result = train(["--config", "configs/smollm2-135m-cpu.yaml"])   # what the CLI calls
    path = ensure_adapter()                                          # reuse or train

The recipe's `trainer` key picks the method (medreason.recipe: one module of medreason/recipes/ each); every
method runs the same sequence (medreason.run). Checkpoints go to the recipe's output_dir; the adapter to
<adapter_root>/<model name>/.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from medreason.adapter import adapter_path, read_trained
from medreason.checkpoints import last_checkpoint
from medreason.config import parse_recipe
from medreason.errors import UserError
from medreason.run import TrainResult, execute, prepare, recipe_hash_of

log = logging.getLogger(__name__)


def train(argv: list[str]) -> TrainResult:
    """Parse a recipe plus overrides and train; the same function serves the CLI, the book and the benchmarks."""
    return execute(prepare(argv))


def ensure_adapter(config: str = "configs/smollm2-135m-cpu.yaml", overrides: list[str] = ()) -> Path:
    """The adapter a recipe produces. Reused when its folder holds an adapter trained from the same recipe
    (compared by `recipe_hash`); otherwise trained now into the recipe's own folder, with a log line that says
    why. Book chapters call this so that they run in any order."""
    args, cfg, model_args = parse_recipe(["--config", config, *overrides])
    path = adapter_path(args.adapter_root, model_args.model_name_or_path)
    wanted = recipe_hash_of(args, cfg, model_args)
    if path.is_dir():
        try:
            found = (read_trained(path) or {}).get("recipe_hash")
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
    from medreason.guards import option_value

    if option_value(rest, "config") is None:  # --config FILE and --config=FILE alike
        raise UserError("medreason train needs a recipe: --config configs/<recipe>.yaml")
    result = train(rest)
    if result.adapter_dir:
        shown = {k: round(v, 4) for k, v in result.metrics.items() if "loss" in k or "perplexity" in k}
        print(f"adapter saved to {result.adapter_dir}  ({result.global_step} steps; {shown})")
    return 0
