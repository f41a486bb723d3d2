"""Resuming a run: which checkpoint it continues from, and whether that checkpoint fits the run.

    from medreason.resume import last_checkpoint, resume_point
    last_checkpoint(Path("results/smollm2-135m-cpu"))     # the newest complete checkpoint, or None

The trainer writes a checkpoint folder in place and its trainer_state.json last, so a folder without that file is
one a kill interrupted: never resumed from.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from medreason.errors import UserError

log = logging.getLogger(__name__)


def resume_point(run) -> Path | None:
    """--resume: the newest complete checkpoint in output_dir (none: a log line, and the run starts anew).
    Without --resume, a folder that already holds checkpoints is refused rather than trained over."""
    found = last_checkpoint(run.output_dir)
    if run.args.resume and found is None:
        log.warning("--resume: no checkpoint in %s, starting from the beginning", run.output_dir)
    elif not run.args.resume and found is not None:
        raise UserError(
            f"{run.output_dir} already holds checkpoints: pass --resume to continue that run, "
            f"or choose another --output_dir / --run_name"
        )
    return found if run.args.resume else None


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint. The trainer writes a checkpoint in place and trainer_state.json
    last, so a folder without it is one that a kill interrupted: resuming from it would fail."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not output_dir.is_dir():
        return None
    complete = [
        p
        for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def checkpoint_step(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / "trainer_state.json").read_text()).get("global_step", 0))


# the LoRA settings that shape the adapter's tensors or how they are used: a checkpoint only resumes into the same
LORA_SHAPE = {
    "lora_r": "r",
    "lora_alpha": "lora_alpha",
    "use_dora": "use_dora",
    "use_rslora": "use_rslora",
    "lora_target_modules": "target_modules",
    "lora_modules_to_save": "modules_to_save",
}


def check_resume(checkpoint: Path, model_args):
    """--resume with other LoRA settings than the checkpoint's would fail after loading with a wall of 'size
    mismatch': compare PEFT's adapter_config.json of the checkpoint with this run's settings first."""
    config_file = checkpoint / "adapter_config.json"
    if not config_file.is_file():
        return
    saved = json.loads(config_file.read_text())
    for ours, theirs in LORA_SHAPE.items():
        new, old = getattr(model_args, ours, None), saved.get(theirs)
        if ours == "lora_target_modules":
            from medreason.models import lora_targets

            new = lora_targets(model_args)
            if new == "all-linear" or old is None:
                continue  # PEFT stores all-linear resolved to module names: not comparable by name
            new, old = sorted(new), sorted(old)
        elif ours == "lora_modules_to_save":
            new, old = sorted(new or []), sorted(old or [])
        if new != old:
            raise UserError(
                f"--resume: {checkpoint} was trained with {ours} {old}, this run has {new}; "
                f"resume with the checkpoint's settings, or start anew with another --output_dir"
            )
