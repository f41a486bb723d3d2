"""`medreason doctor`: what this machine has, and where the default model would load from.

    medreason doctor
    HF_HUB_OFFLINE=1 medreason doctor

Nothing is downloaded or converted: the model source is resolved, not loaded.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform

PACKAGES = [
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "mlflow",
    "bitsandbytes",
    "lm_eval",
    "gguf",
]


def report(model: str | None = None) -> dict:
    import torch

    from medreason.compat import cpu_supports_bf16
    from medreason.errors import UserError
    from medreason.models import DEFAULT_MODEL, cache_root, resolve_model

    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name.replace("_", "-"))
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    cuda = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    model = model or DEFAULT_MODEL
    try:
        source = resolve_model(model).describe()
    except UserError as e:
        source = f"unavailable: {e}"
    return {
        "versions": versions,
        "hardware": {
            "cpu_threads": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "bf16_cpu": cpu_supports_bf16(),
            "cuda_devices": cuda or "none",
        },
        "model": {"id": model, "source": source, "cache": str(cache_root())},
        "generation": generation(bool(cuda)),
    }


def generation(on_gpu: bool) -> dict:
    """Which decode path and dtype eval, chat and GRPO's rollouts will run here, and why."""
    from medreason.compat import REACHES, verified, version_of
    from medreason.distributed import decide_precision

    precision, why = decide_precision("auto", on_gpu=on_gpu)
    dtype = {"fp32": "float32", "fp16": "float16"}.get(precision, "bfloat16")
    reach = REACHES["rollout_func"]
    if verified("rollout_func"):
        rollouts = "medreason.decode, handed to TRL as its rollout_func (one process, no vLLM)"
    else:
        rollouts = (
            f"TRL's own generate: rollout_func was checked on {reach.library} {', '.join(reach.checked)}, "
            f"this is {version_of(reach.library)}"
        )
    return {
        "eval_and_chat": "medreason.decode (sorted batches, in-place KV cache, finished rows leave the batch)",
        "grpo_rollouts": rollouts,
        "dtype": f"{dtype} ({why})",
        "benchmark": "HF_HUB_OFFLINE=1 python benchmarks/decode.py (this machine's step time against its roofline)",
    }


def run(args) -> int:
    r = report(args.model)
    width = max(len(k) for section in r.values() for k in section) + 2
    for title, section in r.items():
        print(f"[{title}]")
        for key, value in section.items():
            print(f"  {key:<{width}}{value}")
    source = r["model"]["source"]
    if args.model and source.startswith("unavailable: "):
        # the report above is still useful; the exit status says that the model asked about cannot load
        from medreason.errors import UserError

        raise UserError(source.removeprefix("unavailable: "))
    return 0
