"""Which checkpoint `--resume` continues from: the newest one whose files load, with one log line for each newer
one it skipped and why.

    from medreason.checkpoints import newest_loadable
    found = newest_loadable(Path("results/smollm2-135m-cpu"))    # Path, or None when there is no checkpoint

The trainer writes a checkpoint in place and trainer_state.json last, so a folder without it is one that a kill
interrupted. A folder with it can still be damaged afterwards (a copy cut short, a full disk): a truncated
safetensors file, or a torch file (optimizer.pt, scheduler.pt, rng_state.pth: zip archives) whose archive does
not read back. Those are skipped too, named, rather than stopping the resume with a library error that names no
file while an older good checkpoint is there.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

from medreason.errors import UserError

log = logging.getLogger(__name__)

PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR


def checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-<step> folders, newest first."""
    if not Path(output_dir).is_dir():
        return []
    found = [p for p in Path(output_dir).glob(f"{PREFIX}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True)


def problem(checkpoint: Path) -> str | None:
    """Why `checkpoint` would not load, or None."""
    from medreason.adapter import check_safetensors

    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing (the run was stopped while saving it)"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        return f"{state.name} is not valid JSON ({e})"
    for path in sorted(checkpoint.iterdir()):
        if path.suffix == ".safetensors":
            try:
                check_safetensors(path)
            except UserError:
                return f"{path.name} is truncated or damaged"
        elif path.suffix in (".pt", ".pth", ".bin"):  # torch.save's zip format
            try:
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
            except (zipfile.BadZipFile, OSError, EOFError):
                return f"{path.name} is truncated or damaged"
            if bad is not None:
                return f"{path.name} is damaged ({bad} fails its checksum)"
        elif path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                return f"{path.name} is not valid JSON"
    return None


def newest_loadable(output_dir: Path) -> Path | None:
    """The newest checkpoint that loads; each newer one is skipped with a log line naming it and why. None when
    there is none, or only checkpoints a kill interrupted; complete checkpoints of which none loads are a
    UserError (starting over would write over them)."""
    skipped, damaged = [], False
    for checkpoint in checkpoints(output_dir):
        why = problem(checkpoint)
        if why is None:
            return checkpoint
        skipped.append(f"{checkpoint.name}: {why}")
        damaged = damaged or (checkpoint / "trainer_state.json").is_file()
        log.warning("--resume: skipping %s: %s", checkpoint, why)
    if damaged:  # only interrupted ones: the run starts anew, as with no checkpoint at all
        raise UserError(
            f"--resume: no checkpoint in {output_dir} loads ({'; '.join(skipped)}): move them aside, or start "
            f"anew with another --output_dir"
        )
    return None


# --------------------------------------------------------------------------------------------- resuming


def resume_point(run) -> Path | None:
    """--resume: the newest complete checkpoint in output_dir (none: a log line, and the run starts anew).
    Without --resume, a folder that already holds checkpoints is refused rather than trained over."""
    # with --resume, the newest checkpoint that loads (medreason.checkpoints names each newer one it skips)
    found = newest_loadable(run.output_dir) if run.args.resume else last_checkpoint(run.output_dir)
    if run.args.resume and found is None:
        log.warning("--resume: no checkpoint in %s, starting from the beginning", run.output_dir)
    elif not run.args.resume and found is not None:
        raise UserError(
            f"{run.output_dir} already holds checkpoints: pass --resume to continue that run, "
            f"or choose another --output_dir / --run_name"
        )
    return found if run.args.resume else None


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint (one with trainer_state.json, which the trainer writes last)."""
    return next((p for p in checkpoints(output_dir) if (p / "trainer_state.json").is_file()), None)


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
