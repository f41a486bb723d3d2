"""`medreason export`: merge a LoRA adapter into its full-precision base and save a standalone model.

    medreason export --adapter lora_adapter/SmolLM2-135M-Instruct --out results/merged/SmolLM2-135M-medreason

The merge always happens on full-precision weights (fp32, then saved in the base's dtype): merging into a
4-bit base would bake quantisation error into the result. Plain transformers loads the output:
`AutoModelForCausalLM.from_pretrained(out)`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from medreason.adapter import read_adapter
from medreason.compat import set_name_or_path
from medreason.errors import UserError
from medreason.io import atomic_dir, first_existing

log = logging.getLogger(__name__)


def export(adapter: str, out: str, model: str | None = None, force: bool = False) -> Path:
    import torch

    from medreason.session import load_for_inference

    out_dir = check_out(out)
    meta = read_adapter(adapter)  # a broken adapter folder: one line naming the file, before any weights load
    check_not_an_input(out_dir, adapter, model or meta["base_model"])
    check_replace(out_dir, force)
    session = load_for_inference(adapter, model, dtype=torch.float32)
    if getattr(session.model, "is_loaded_in_4bit", False) or getattr(session.model, "is_loaded_in_8bit", False):
        raise UserError("refusing to merge into a quantized base: load the base in full precision")
    merged = session.model.merge_and_unload()
    set_name_or_path(merged, session.base_model)
    with atomic_dir(out_dir) as tmp:  # with --force, the old folder stays until the new one is complete
        merged.save_pretrained(tmp, safe_serialization=True)
        session.tokenizer.save_pretrained(tmp)
        readme = Path(adapter) / "README.md"
        if readme.is_file():
            shutil.copy(readme, tmp / "README.md")
    log.info("merged model saved to %s", out_dir)
    return out_dir


def check_out(out: str) -> Path:
    """--out first: a file, or a path through a file, is refused before anything is read."""
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out} is a file: choose a new folder")
    parent = first_existing(out_dir.absolute().parent)
    if not parent.is_dir():
        raise UserError(f"--out {out}: {parent} is a file, not a folder")
    return out_dir


def check_replace(out_dir: Path, force: bool):
    """An existing folder is replaced only when it holds an earlier export and --force says so."""
    out = str(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / "config.json").is_file():  # someone's files, not an earlier export: never replaced
            raise UserError(
                f"--out {out} exists and is not a model folder: choose a new folder (--force replaces "
                f"only an earlier export)"
            )
        if not force:
            raise UserError(f"--out {out} already holds a model: choose a new folder, or pass --force to replace it")


def check_not_an_input(out_dir: Path, adapter: str, base: str):
    """The export replaces --out as a whole: it must not be, hold, or sit inside the adapter, the base model's
    folder or a model cache, which the replacement would destroy (medreason.guards)."""
    from medreason.guards import inputs, refuse_saves_onto_inputs

    refuse_saves_onto_inputs({"--out": out_dir}, inputs(base, adapter))


def cli(args) -> int:
    path = export(args.adapter, args.out, args.model, force=args.force)
    print(f"merged model written to {path} (load it with AutoModelForCausalLM.from_pretrained)")
    return 0
