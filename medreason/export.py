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

from medreason.errors import UserError
from medreason.io import atomic_dir

log = logging.getLogger(__name__)


def export(adapter: str, out: str, model: str | None = None) -> Path:
    import torch

    from medreason.generate import load_for_inference

    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise UserError(f"{out} exists and is not a model folder: choose an empty or new --out")
    session = load_for_inference(adapter, model, dtype=torch.float32)
    if getattr(session.model, "is_loaded_in_4bit", False) or getattr(session.model, "is_loaded_in_8bit", False):
        raise UserError("refusing to merge into a quantized base: load the base in full precision")
    merged = session.model.merge_and_unload()
    merged.config._name_or_path = session.base_model
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        session.tokenizer.save_pretrained(tmp)
        readme = Path(adapter) / "README.md"
        if readme.is_file():
            shutil.copy(readme, tmp / "README.md")
    log.info("merged model saved to %s", out_dir)
    return out_dir


def cli(args) -> int:
    path = export(args.adapter, args.out, args.model)
    print(f"merged model written to {path} (load it with AutoModelForCausalLM.from_pretrained)")
    return 0
