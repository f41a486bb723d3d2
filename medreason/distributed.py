"""How a run is launched across devices, what every rank must do alike, and the compute precision: decided
here, in one place.

    from medreason.distributed import rank, world_size, decide_precision, check_launch, gathered_state_dict
    rank(), world_size()                            # from the launcher's environment (torchrun, accelerate)
    decide_precision("auto", on_gpu=False)          # ("fp32", "auto: this CPU has no native bf16 matmul")
    check_launch(sft.use_cpu)                       # before anything loads: a launch that cannot train is refused
    state_dict = gathered_state_dict(trainer)       # on EVERY rank (a collective under FSDP), then rank 0 saves
    check_vllm()                                    # use_vllm: true needs a vLLM that TRL supports

1. **Several GPUs, no launcher.** `medreason train` alone on a machine with several visible GPUs would make
   transformers' Trainer wrap the model in `nn.DataParallel`, which TRL 1.16's SFTTrainer and GRPOTrainer refuse
   with a ValueError, after the model has loaded. Choosing one GPU for the user would mean setting
   CUDA_VISIBLE_DEVICES (process-wide, and too late once CUDA is initialised), so the run is refused at once
   with the three commands that work.
2. **Saving from sharded weights.** Under FSDP2 every parameter is a DTensor holding one rank's shard: PEFT's
   `save_pretrained` on rank 0 alone fails ("RuntimeError: Attempted to access the data pointer on an invalid
   python storage", torch 2.13, PEFT 0.21). The full weights are gathered first, on all ranks, and rank 0 saves
   those.
3. **One LM-head choice for all ranks** lives with the head itself, in `medreason.compat.wants_dense_head`:
   it follows the training arguments' device, which every rank computes alike.
4. **vLLM for GRPO** (`check_vllm`): installed, and within the versions TRL supports, or one line.

FSDP on CPUs: accelerate 1.15 turns `distributed_type: FSDP` into FSDP only on GPU-like devices (MULTI_GPU, NPU,
XPU...); with `use_cpu` the processes form a MULTI_CPU group over gloo and train as DDP, each holding the whole
model. `check_launch` says so in one line. FSDP2 itself runs on CPUs over gloo (`torch.distributed.fsdp.fully_shard`),
which is how `tests/test_distributed.py` exercises the gather-and-save path with real DTensors.
"""

from __future__ import annotations

import logging
import os

from medreason.errors import UserError

log = logging.getLogger(__name__)

# The vLLM releases TRL 1.16 supports: its `vllm` extra (`vllm>=0.22.0,<=0.31.0`) and trl/import_utils.py
# `is_vllm_available`, which only warns outside them; pyproject.toml's `vllm` extra pins the same range.
VLLM_RANGE = ("0.22.0", "0.31.0")

# Test-only: a folder where every rank writes the adapter tensors it holds after the final gather
# (`rank<N>.safetensors`), so that a 2-process test can compare them with the adapter that was saved.
DUMP_ENV = "MEDREASON_DUMP_GATHERED"


def rank() -> int:
    """This process's rank (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes the launcher started (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def decide_precision(requested: str = "auto", *, on_gpu: bool) -> tuple[str, str]:
    """(bf16, fp16 or fp32, and why): `auto` takes bf16 on GPUs that have it and on CPUs with native bf16 matmul
    (AVX512-BF16 or AMX), fp16 on other GPUs, and fp32 on other CPUs, where bf16 is emulated and several times
    slower than fp32 (benchmarks/decode.py measures both)."""
    if requested != "auto":
        return requested, "--precision"
    import torch

    from medreason.compat import cpu_supports_bf16

    if on_gpu:
        return ("bf16", "auto: GPU with bf16") if torch.cuda.is_bf16_supported() else ("fp16", "auto: GPU without bf16")
    if cpu_supports_bf16():
        return "bf16", "auto: CPU has native bf16"
    return "fp32", "auto: this CPU has no native bf16 matmul"


def precision_reason(requested: str, on_gpu: bool) -> str:
    return decide_precision(requested, on_gpu=on_gpu)[1]


def inference_dtype():
    """The dtype inference loads weights in: bf16 where the hardware multiplies it natively (GPUs, CPUs with
    native bf16), fp16 on GPUs without bf16, fp32 on other CPUs."""
    import torch

    precision, _ = decide_precision("auto", on_gpu=torch.cuda.is_available())
    return {"fp32": torch.float32, "fp16": torch.float16}.get(precision, torch.bfloat16)


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def launched() -> bool:
    """Started by torchrun / accelerate launch (which set LOCAL_RANK and WORLD_SIZE), even with one process."""
    return "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ


def check_launch(use_cpu: bool) -> None:
    """Refuse a plain launch on several visible GPUs (see the module docstring, 1); log one line when an FSDP
    launch on CPUs will in fact train as DDP."""
    import torch

    if not launched() and not use_cpu and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        n = torch.cuda.device_count()
        raise UserError(
            f"{n} GPUs are visible but medreason train was started as one process (TRL refuses nn.DataParallel): "
            f"use `torchrun --nproc_per_node {n} -m medreason train ...` or `accelerate launch --config_file "
            f"configs/accelerate/ddp.yaml -m medreason train ...`, or `CUDA_VISIBLE_DEVICES=0 medreason train ...` "
            f"for one GPU"
        )
    world = world_size()
    on_cpu = use_cpu or not torch.cuda.is_available()
    if world > 1 and on_cpu and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        log.warning(
            "FSDP: accelerate shards only across GPUs; on CPUs these %d processes train as DDP over gloo, "
            "each holding the whole model",
            world,
        )


def check_vllm() -> None:
    """`use_vllm: true` needs vLLM installed, in the range TRL was built against: otherwise one line now, not an
    import error or a warning lost in the log after the model has loaded."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    low, high = VLLM_RANGE
    try:
        installed = version("vllm")
    except PackageNotFoundError:
        raise UserError(
            'use_vllm is true but vllm is not installed: `pip install -e ".[vllm]"` (GPU only), or set use_vllm: false'
        ) from None
    # base_version drops a local tag such as "+cu129", which PEP 440 orders above the plain release
    if not Version(low) <= Version(Version(installed).base_version) <= Version(high):
        raise UserError(
            f"use_vllm is true but vllm {installed} is installed, and TRL supports {low} to {high}: "
            f'`pip install -e ".[vllm]"`, or set use_vllm: false'
        )


def full_state_dict(model) -> dict | None:
    """The model's full (unsharded) state dict on CPU when its parameters are FSDP2 DTensors, else None (its own
    tensors are already whole). A collective when sharded: every rank must call it, in the same order. Ranks
    other than 0 receive an empty dict (cpu_offload keeps the gathered copy on rank 0 only)."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # the same options as accelerate's Accelerator.get_state_dict for FSDP2 (accelerate 1.15)
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def gathered_state_dict(trainer) -> dict | None:
    """What rank 0 passes to `save_adapter(state_dict=...)`: the full weights of the trained model, gathered on
    every rank (call it on all of them, before any rank-0-only branch), or None where the model's own tensors
    are whole (one process, DDP). Writes the test-only dump when DUMP_ENV names a folder."""
    state_dict = full_state_dict(trainer.model)
    if os.environ.get(DUMP_ENV):
        _dump(trainer.accelerator.unwrap_model(trainer.model), state_dict, os.environ[DUMP_ENV])
    return state_dict


def _dump(model, state_dict, folder):
    """Every rank writes the adapter tensors it holds: rank 0 the gathered ones; other ranks under DDP their
    replica (under FSDP they hold only shards and write nothing)."""
    from pathlib import Path

    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    if state_dict is not None and not state_dict:
        return  # a rank other than 0 under FSDP: nothing gathered here
    tensors = get_peft_model_state_dict(model, state_dict=state_dict)
    Path(folder).mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    save_file(
        {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()},
        str(Path(folder) / f"rank{rank}.safetensors"),
    )
