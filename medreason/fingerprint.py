"""The key of the generation cache (results/cache/generate/): everything that decides a generated answer, so that a
cached answer is served only to the model and settings that produced it.

    from medreason.fingerprint import generation_key
    key = generation_key(session, use_adapter=True, decoding={"max_new_tokens": 256, "decoding": "greedy", ...})

The key holds:
- the base model: its id and where its weights came from (the Hub, the Hugging Face cache, a local folder, or the
  bf16 copy converted from the offline Q4_1 GGUF, which is a different model than the Hub's bf16 weights even
  under the same id), and the sha256 of every file that loading reads from its folder (weights, config,
  generation config, tokenizer);
- the adapter: the sha256 of every file in its folder (weights in any format, config, tokenizer, medreason.json),
  never only the first `adapter_model.*` (a stray `.bin` beside the `.safetensors` hid a retrained adapter);
- the dtype and device the weights ran in, the decoding settings, and the versions of the libraries whose
  numerics or tokenisation decide the output (torch, transformers, peft, tokenizers).
The prompt is the other half of the key: each answer is stored under the sha256 of its rendered prompt.

Hashes are memoised per file (path, size, modification time, inode): an evaluation that builds several keys reads
each weight file once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from medreason.io import file_sha256, folder_sha256

NUMERIC_LIBRARIES = ("torch", "transformers", "peft", "tokenizers")


def base_model_fingerprint(name: str) -> dict:
    """{"source": kind, "files_sha256": ...} of the base model's folder as medreason.models resolves it now.
    A Hub id is hashed from its Hugging Face cache snapshot (where from_pretrained put the files)."""
    from medreason.models import converted_cache_dir, resolve_model

    source = resolve_model(name)
    folder: Path | None
    if source.kind in ("local", "cache"):
        folder = Path(source.path)
    elif source.kind == "gguf":  # loading converts it first; the converted copy is what answers
        folder = converted_cache_dir() if (converted_cache_dir() / "model.safetensors").is_file() else None
    else:
        folder = hub_snapshot(source.path)
    out = {"source": source.kind, "files_sha256": folder_sha256(folder) if folder is not None else None}
    if source.kind == "gguf" and folder is None:  # not converted yet: the GGUF itself names the weights
        out["files_sha256"] = file_sha256(Path(source.path))
    return out


def hub_snapshot(repo_id: str) -> Path | None:
    """The Hugging Face cache folder that holds `repo_id`'s files (None when nothing is cached)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # a malformed id is simply not cached
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def adapter_fingerprint(folder: str | Path) -> str | None:
    """sha256 over every file of the adapter folder."""
    return folder_sha256(Path(folder), every_file=True)


def library_versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in NUMERIC_LIBRARIES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def generation_key(session, use_adapter: bool, decoding: dict) -> dict:
    """The model half of a cached answer's key (the rendered prompt is the other half)."""
    param = next(session.model.parameters())
    return {
        "base_model": str(session.base_model),
        "base": base_model_fingerprint(str(session.base_model)),
        "adapter_sha256": adapter_fingerprint(session.adapter) if use_adapter and session.adapter else None,
        "dtype": str(param.dtype),
        "device": param.device.type,
        **decoding,
        "libraries": library_versions(),
    }


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
