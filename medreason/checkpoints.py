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
