"""The adapter folder `lora_adapter/<model name>/`: what is in it, how it is written, how it is read back.

    from medreason.adapter import read_adapter, save_adapter
    meta = read_adapter("lora_adapter/SmolLM2-135M-Instruct")   # validated; a broken folder is a one-line error
    meta["data"]      # every data argument, absolute paths and a content hash: rebuilds the exact split
    meta["model"]     # where the base weights came from (Hub revision, local folder, dequantized Q4_1 GGUF)

A folder holds PEFT's `adapter_config.json` + `adapter_model.safetensors`, the tokenizer, `medreason.json`
(written by `save_adapter`: base model, template, system prompt, data and model provenance, metrics, the
resolved recipe and its hash) and a model card `README.md`. It is written atomically (medreason.io), so a
crash never leaves half an adapter and the previous one stays until the new one is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from pathlib import Path

from medreason.errors import UserError
from medreason.io import atomic_dir

log = logging.getLogger(__name__)

ADAPTER_META = "medreason.json"
WEIGHTS = "adapter_model.safetensors"
# Keys of a resolved recipe that do not change the adapter a run produces: where things are written, how often
# it logs or saves, how the run is named, resumed or parallelised.
NOT_HASHED = {
    "output_dir",
    "logging_dir",
    "run_name",
    "adapter_root",
    "resume",
    "num_threads",
    "mlflow_experiment",
    "report_to",
    "disable_tqdm",
    "logging_steps",
    "logging_strategy",
    "logging_first_step",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "save_only_model",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "push_to_hub",
    "hub_model_id",
    "hub_token",
    "hub_strategy",
    "overwrite_output_dir",
    "eval_on_start",
    "include_num_input_tokens_seen",
}


def adapter_path(adapter_root: str | Path, model_name: str) -> Path:
    """<adapter_root>/<last part of the model id or folder>."""
    from medreason.models import model_name as name_of

    return Path(adapter_root) / name_of(model_name)


def recipe_hash(resolved: dict, ignore: frozenset[str] = frozenset()) -> str:
    """A short hash of the settings that determine the adapter (NOT_HASHED keys, a recipe's own `ignore`d keys
    and object reprs left out)."""
    skip = NOT_HASHED | ignore
    kept = {k: v for k, v in sorted(resolved.items()) if k not in skip and not (isinstance(v, str) and " at 0x" in v)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- writing


def training_meta(
    trainer: str, args, model_args, *, recipe: str, resolved: dict, model: dict, metrics: dict, **fields
) -> dict:
    """medreason.json of a trained adapter, the one schema both recipes write and `read_adapter` reads back:
    the method, base model, prompt format (template, system prompt), data and model provenance, final metrics,
    the resolved recipe and its hash; a recipe adds its own fields (medreason.recipe.Recipe.summarise)."""
    return {
        "trainer": trainer,
        "base_model": model_args.model_name_or_path,
        "template": args.template,
        "system_prompt": args.system_prompt,
        "dataset": args.dataset,
        "run_name": resolved.get("run_name"),
        "recipe_hash": recipe,
        "model": model,
        **fields,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "config": resolved,
    }


def save_adapter(model, tokenizer, folder: str | Path, meta: dict, state_dict: dict | None = None) -> Path:
    """PEFT weights (or, for a fully fine-tuned model, all its weights) + tokenizer + medreason.json + model card
    into `folder`, atomically. `state_dict`: the full weights when the model's own are sharded (gathered on every
    rank first; see medreason.run.finish)."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
        tokenizer.save_pretrained(tmp)
        meta = {**meta, "vocab_size": len(tokenizer)}
        (tmp / ADAPTER_META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        (tmp / "README.md").write_text(model_card(meta))
    log.info("adapter saved to %s", folder)
    return folder


def model_card(meta: dict) -> str:
    c = meta.get("config", {})
    data, model = meta.get("data", {}), meta.get("model", {})
    metrics = "\n".join(
        f"| {k} | {v:.4f} |"
        for k, v in sorted(meta.get("metrics", {}).items())
        if isinstance(v, (int, float)) and ("loss" in k or "perplexity" in k or "accuracy" in k or "reward" in k)
    )
    rows = ", ".join(f"{k} {v}" for k, v in data.get("rows", {}).items())
    trainer = meta.get("trainer", "sft")
    init = f"\n- Started from the adapter `{meta['started_from']}`" if meta.get("started_from") else ""
    if c.get("use_peft") is False:
        return _full_card(meta, trainer, model, data, rows, metrics, c)
    return f"""---
base_model: {meta["base_model"]}
library_name: peft
tags: [lora, {trainer}, trl, medical, medreason]
license: apache-2.0
---

# LoRA adapter for {meta["base_model"]} (medreason, {trainer.upper()})

**For teaching and research only. Not for clinical use: its answers are often wrong and must never guide
the care of a patient.**

- Base model: `{meta["base_model"]}`, weights from {model.get("description", "unknown")}
  ({_ident(model)})
- Data: {data.get("description", data.get("dataset", "unknown"))} ({_ident(data)}); rows: {rows or "n/a"};
  template `{meta.get("template")}`{init}
- LoRA: r={c.get("lora_r")}, alpha={c.get("lora_alpha")}, dropout={c.get("lora_dropout")}, targets={c.get("lora_target_modules")}, rsLoRA={c.get("use_rslora")}, DoRA={c.get("use_dora")}, 4-bit base={c.get("load_in_4bit")}
- Training: lr={c.get("learning_rate")}, batch={c.get("per_device_train_batch_size")} x accumulation {c.get("gradient_accumulation_steps")}, max_steps={c.get("max_steps")}, epochs={c.get("num_train_epochs")}, seed={c.get("seed")}{_own_keys(meta)}
- Run: `{meta.get("run_name")}`, recipe hash `{meta.get("recipe_hash")}` (resolved config in `medreason.json`)

## Metrics

| metric | value |
|---|---|
{metrics}

## Use

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM
base = AutoModelForCausalLM.from_pretrained("{meta["base_model"]}")
model = PeftModel.from_pretrained(base, "path/to/this/folder")
```

or `medreason chat --adapter path/to/this/folder`.
"""


def _full_card(meta, trainer, model, data, rows, metrics, c) -> str:
    """The card of a fully fine-tuned copy (use_peft: false): every weight trained, no adapter."""
    return f"""---
base_model: {meta["base_model"]}
library_name: transformers
tags: [full-fine-tune, {trainer}, trl, medical, medreason]
license: apache-2.0
---

# Fully fine-tuned {meta["base_model"]} (medreason, {trainer.upper()})

**For teaching and research only. Not for clinical use: its answers are often wrong and must never guide
the care of a patient.**

- Base model: `{meta["base_model"]}`, weights from {model.get("description", "unknown")} ({_ident(model)})
- Data: {data.get("description", data.get("dataset", "unknown"))} ({_ident(data)}); rows: {rows or "n/a"}
- Training: every parameter, lr={c.get("learning_rate")}, batch={c.get("per_device_train_batch_size")}, epochs={c.get("num_train_epochs")}, seed={c.get("seed")}{_own_keys(meta)}
- Run: `{meta.get("run_name")}`, recipe hash `{meta.get("recipe_hash")}` (resolved config in `medreason.json`)

## Metrics

| metric | value |
|---|---|
{metrics}

## Use

`medreason chat --model path/to/this/folder` or `AutoModelForCausalLM.from_pretrained("path/to/this/folder")`.
"""


def _own_keys(meta: dict) -> str:
    """The method's own keys (medreason.recipe.Recipe.logged_params), as the recipe logged them."""
    config = meta.get("config", {})
    return "".join(f", {k}={config.get(k)}" for k in meta.get("method_keys", []) if k in config)


def _ident(source: dict) -> str:
    if source.get("revision"):
        return f"revision {source['revision']}"
    if source.get("sha256"):
        return f"sha256 {source['sha256'][:16]}…"
    return "no revision or hash recorded"


# --------------------------------------------------------------------------------------------- reading


def read_trained(folder: str | Path) -> dict | None:
    """medreason.json of what a run saved in `folder` (an adapter, or a fully fine-tuned model, which has no
    adapter_config.json), or None when the folder holds neither."""
    path = Path(folder)
    if (path / "adapter_config.json").is_file():
        return read_adapter(path)
    meta = path / ADAPTER_META
    return _json(meta) if meta.is_file() and (path / "config.json").is_file() else None


def read_adapter(folder: str | Path) -> dict:
    """medreason.json (or what PEFT's config alone says) of a validated adapter folder. Every broken piece is a
    UserError naming the file and what is wrong with it, found before any model loads."""
    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"adapter folder {folder} does not exist (train one with `medreason train`)")
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"{folder} is not a LoRA adapter folder: adapter_config.json is missing")
    peft_config = _json(config_file)
    weights = path / WEIGHTS
    if not weights.is_file():
        if (path / "adapter_model.bin").is_file():
            raise UserError(
                f"{path / 'adapter_model.bin'}: pickle weights are not loaded; re-save the adapter as safetensors"
            )
        raise UserError(f"{weights} is missing: the adapter folder has no weights")
    check_safetensors(weights)
    meta_file = path / ADAPTER_META
    meta = _json(meta_file) if meta_file.is_file() else {}
    meta.setdefault("base_model", peft_config.get("base_model_name_or_path"))
    if not meta["base_model"]:
        raise UserError(f"{config_file} does not name its base model (base_model_name_or_path)")
    meta["peft_config"] = peft_config
    return meta


def check_safetensors(path: Path):
    """The header parses and the file is as long as the header says: a truncated copy fails here, in a
    millisecond, with its name, instead of inside safetensors with none."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                raise ValueError("header length beyond the end of the file")
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a valid safetensors file ({e}); retrain or copy the adapter again") from e
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise UserError(
            f"{path}: truncated ({size} bytes, the header describes {8 + n + end}); retrain or copy the adapter again"
        )


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({getattr(e, 'msg', e)}); retrain or restore the adapter") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


PEFT_TYPES = ("LORA",)  # what medreason trains and loads


def saved_shapes(path: Path) -> dict[str, list[int]]:
    """{tensor name: shape} from a safetensors header (checked by `check_safetensors` first), without torch."""
    check_safetensors(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def expected_shapes(folder: Path, base: str) -> dict[str, list[int]]:
    """{tensor name: shape} that PEFT expects to fill from `folder` on `base`: the adapter's own config applied to
    a weightless copy of the base on the meta device (no weights are read). A LoRA whose target modules the base
    lacks is a UserError."""
    import warnings

    import torch
    from peft import PeftConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from medreason.models import model_config

    config_file = folder / "adapter_config.json"
    base_config = model_config(base)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's remarks about the meta device and unused config keys
        model = AutoModelForCausalLM.from_config(base_config)
        names = [name for name, _ in model.named_modules()]
        targets = _json(config_file).get("target_modules")
        if isinstance(targets, list):  # PEFT matches a name by the end of a module's path
            missing = sorted(t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names))
            if missing:
                raise UserError(
                    f"{config_file}: the adapter targets {', '.join(missing)}, which {base} does not have: "
                    f"it was trained for another architecture"
                )
        try:
            peft_model = get_peft_model(model, PeftConfig.from_pretrained(str(folder)))
        except (ValueError, TypeError, KeyError) as e:
            raise UserError(f"{config_file} does not fit {base}: {str(e).splitlines()[0]}") from e
        return {k: list(v.shape) for k, v in get_peft_model_state_dict(peft_model).items()}


def check_adapter_fits(folder: str | Path, base: str) -> None:
    """Before any weights load: the adapter is a LoRA, its target modules exist in `base`, and every tensor in its
    weights file is one PEFT fills, with the shape it expects, and every tensor PEFT expects is in the file.
    Otherwise PEFT would load part of it (renamed keys), leave the rest at its initial values with a library
    warning, and the command would answer as the base model: a silent substitution."""
    path = Path(folder)
    config_file = path / "adapter_config.json"
    peft_type = _json(config_file).get("peft_type")
    if peft_type not in PEFT_TYPES:
        raise UserError(f"{config_file}: peft_type {peft_type!r} is not LoRA: medreason loads LoRA adapters only")
    saved = saved_shapes(path / WEIGHTS)
    expected = expected_shapes(path, base)
    _compare(path / WEIGHTS, saved, expected, base)


def _compare(weights: Path, saved: dict, expected: dict, base: str):
    unexpected = sorted(set(saved) - set(expected))
    if unexpected:
        raise UserError(
            f"{weights}: tensor {unexpected[0]} matches no LoRA module of {base} ({len(unexpected)} such tensors): "
            f"the adapter would load only in part; retrain or copy the adapter again"
        )
    missing = sorted(set(expected) - set(saved))
    if missing:
        raise UserError(
            f"{weights}: tensor {missing[0]} is missing ({len(missing)} of {len(expected)} expected): the adapter "
            f"would load only in part; retrain or copy the adapter again"
        )
    for name, shape in saved.items():
        if list(shape) != list(expected[name]):
            raise UserError(
                f"{weights}: tensor {name} has shape {shape}, {base} needs {expected[name]}: the adapter was "
                f"trained for another model"
            )


def load_adapter(model, folder: str | Path, is_trainable: bool = False):
    """PeftModel.from_pretrained, whole or not at all: after loading, the adapter's tensors in the model are
    exactly those of its weights file (`check_adapter_fits` says the same before the weights load)."""
    from peft import PeftModel, get_peft_model_state_dict

    path = Path(folder)
    try:
        peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=is_trainable)
    except RuntimeError as e:  # size mismatch: an adapter for another architecture
        raise UserError(f"adapter {folder} does not fit the base model: {str(e).splitlines()[0]}") from e
    except (ValueError, KeyError) as e:
        raise UserError(f"adapter {folder} cannot be loaded: {str(e).splitlines()[0]}") from e
    loaded = {k: list(v.shape) for k, v in get_peft_model_state_dict(peft_model).items()}
    _compare(path / WEIGHTS, saved_shapes(path / WEIGHTS), loaded, str(getattr(model, "name_or_path", "the base")))
    return peft_model
