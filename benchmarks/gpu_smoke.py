"""GPU smoke run: do the GPU recipes train on this machine, how fast, in how much memory? One NVIDIA GPU, < 10 min.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu_smoke.py              # 5 optimizer steps per SFT run
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu_smoke.py --steps 10

Four short runs, each through medreason's own entry point (`medreason.train.train`, the function behind
`medreason train`), each in its own process so that its peak memory is its own:

  sft-lora-bf16     configs/smollm2-135m-gpu.yaml: LoRA on SmolLM2-135M in bf16
  sft-qlora-4bit    configs/qwen2.5-0.5b-qlora-gpu.yaml: QLoRA, Qwen2.5-0.5B in 4-bit NF4 (bitsandbytes)
  grpo-4bit         configs/qwen2.5-0.5b-grpo-gpu.yaml: 2 GRPO steps, completions cut to 64 tokens, no vLLM
  fsdp-1-process    `accelerate launch --num_processes 1 --config_file configs/accelerate/fsdp.yaml`, the QLoRA
                    recipe with --load_in_4bit false (the command configs/accelerate/fsdp.yaml documents)

on the bundled data, with RANDOMLY INITIALISED models of the recipes' architectures: SmolLM2-135M's from the
converted bundled checkpoint's config, Qwen2.5-0.5B's written out below (the Hub is not needed). Random weights
measure speed and memory, nothing about quality. Qwen2.5 runs reuse SmolLM2's tokenizer (49,152 tokens, within
Qwen's 151,936-row embedding): the token ids, and so the sequence lengths, are SmolLM2's, not Qwen's, so its
tokens/s is per SmolLM2 token. GRPO's random policy writes gibberish to the length cap.

It prints, per run, trained tokens per second (TRL's `num_tokens` over `train_runtime`), peak GPU memory
(`torch.cuda.max_memory_allocated`) and the LM head the run chose, and writes results/benchmarks/gpu_smoke.json
(machine, library versions, command). Without a CUDA GPU it stops with one line (exit 2).

A machine without network needs these wheels (download them where there is network, for the target's Python and
CUDA; the torch index URL names the CUDA build, here CUDA 12.8):

    pip download -d wheels --index-url https://download.pytorch.org/whl/cu128 "torch==2.13.*"
    pip download -d wheels "transformers==5.24.*" "peft==0.21.*" "accelerate==1.15.*" "trl==1.16.*" \\
        "datasets>=4" "mlflow>=3,<4" "bitsandbytes>=0.49" "gguf>=0.17" "lm-eval>=0.4.9,<0.5" pyyaml pandas \\
        datasketch numpy scipy
    pip wheel --no-deps -w wheels .            # medreason itself, from this checkout
    # on the GPU machine:
    pip install --no-index --find-links wheels torch medreason

(`pip download` also fetches every dependency of those packages, for the Python it runs under: run it with the
target's Python version, or pass --python-version / --platform.) The bundled SmolLM2 GGUF that the tokenizer and
SmolLM2's config come from ships inside medreason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Qwen2.5-0.5B(-Instruct)'s published config.json, the values that shape compute and memory
QWEN25_05B = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 32768,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
}
COMMON = [
    "--dataset",
    "bundled",
    "--eval_strategy",
    "no",
    "--evaluate_test",
    "false",
    "--save_strategy",
    "no",
    "--logging_steps",
    "1",
    "--dataloader_num_workers",
    "0",
]


def plan(models: dict[str, Path], work: Path, steps: int) -> dict[str, dict]:
    """name -> {"argv": medreason train arguments, "launcher": "python" | "accelerate-fsdp"}."""

    def out(name):
        return [
            "--output_dir",
            str(work / name / "run"),
            "--adapter_root",
            str(work / name / "adapter"),
            "--run_name",
            f"gpu-smoke-{name}",
        ]

    qlora = ["--config", str(ROOT / "configs/qwen2.5-0.5b-qlora-gpu.yaml"), "--model_name_or_path", str(models["qwen"])]
    return {
        "sft-lora-bf16": {
            "launcher": "python",
            "argv": [
                "--config",
                str(ROOT / "configs/smollm2-135m-gpu.yaml"),
                "--model_name_or_path",
                str(models["smollm2"]),
                *COMMON,
                "--max_steps",
                str(steps),
                *out("sft-lora-bf16"),
            ],
        },
        "sft-qlora-4bit": {
            "launcher": "python",
            "argv": [*qlora, *COMMON, "--max_steps", str(steps), *out("sft-qlora-4bit")],
        },
        "grpo-4bit": {
            "launcher": "python",
            "argv": [
                "--config",
                str(ROOT / "configs/qwen2.5-0.5b-grpo-gpu.yaml"),
                "--model_name_or_path",
                str(models["qwen"]),
                "--max_steps",
                "2",
                "--max_completion_length",
                "64",
                "--log_completions",
                "false",
                "--save_strategy",
                "no",
                "--logging_steps",
                "1",
                "--dataloader_num_workers",
                "0",
                *out("grpo-4bit"),
            ],
        },
        "fsdp-1-process": {
            "launcher": "accelerate-fsdp",
            "argv": [*qlora, "--load_in_4bit", "false", *COMMON, "--max_steps", str(steps), *out("fsdp-1-process")],
        },
    }


def build_models(work: Path) -> dict[str, Path]:
    """Random-weight SmolLM2-135M and Qwen2.5-0.5B folders, each with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from medreason.models import DEFAULT_MODEL, convert_gguf_to_cache, resolve_model

    source = resolve_model(DEFAULT_MODEL)
    smollm2 = convert_gguf_to_cache(Path(source.path)) if source.kind == "gguf" else Path(source.path)
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    configs = {"smollm2": AutoConfig.from_pretrained(smollm2), "qwen": Qwen2Config(**QWEN25_05B)}
    assert len(tokenizer) <= configs["qwen"].vocab_size  # SmolLM2's ids index Qwen's embedding
    folders = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        folder = work / f"random-{name}"
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = folder
    return folders


def run(name: str, spec: dict, work: Path) -> dict:
    """One run in a child process (this script with --child); its figures come back through a JSON file."""
    spec_file, result_file = work / f"{name}.spec.json", work / f"{name}.result.json"
    spec_file.write_text(json.dumps({"argv": spec["argv"], "result": str(result_file)}))
    child = [str(Path(__file__).resolve()), "--child", str(spec_file)]
    if spec["launcher"] == "accelerate-fsdp":
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "1",
            "--config_file",
            str(ROOT / "configs/accelerate/fsdp.yaml"),
            *child,
        ]
    else:
        cmd = [sys.executable, *child]
    print(
        f"{name}: {'accelerate launch (FSDP, 1 process)' if spec['launcher'] != 'python' else 'python'} "
        f"{' '.join(spec['argv'][:2])}",
        flush=True,
    )
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    (work / f"{name}.log").write_text(output)
    row = json.loads(result_file.read_text()) if proc.returncode == 0 and result_file.is_file() else {}
    row["returncode"] = proc.returncode
    row["lm_head"] = lm_head(output)
    if proc.returncode:
        row["error_tail"] = output[-2000:]
    return row


def lm_head(output: str) -> str:
    """The head the run logged (medreason.sft); GRPO on a GPU keeps TRL's without a line."""
    if re.search(r"lm_head: dense", output):
        return "dense"
    if re.search(r"lm_head: (TRL's fused head|keeping TRL's fused head)", output):
        return "fused"
    return "fused (TRL's own, not replaced; no lm_head line)"


def child(spec_file: str) -> int:
    """Inside the child process: train, then write tokens/s and peak memory (rank 0)."""
    import torch

    from medreason.train import train

    spec = json.loads(Path(spec_file).read_text())
    torch.cuda.reset_peak_memory_stats()
    result = train(spec["argv"])
    if int(os.environ.get("RANK", "0")) == 0:
        tokens = max((h.get("num_tokens", 0) for h in result.log_history), default=0)
        runtime = next((h["train_runtime"] for h in reversed(result.log_history) if "train_runtime" in h), None)
        Path(spec["result"]).write_text(
            json.dumps(
                {
                    "steps": result.global_step,
                    "tokens": int(tokens),
                    "seconds": runtime and round(runtime, 2),
                    "tokens_per_s": round(tokens / runtime, 1) if runtime and tokens else None,
                    "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                    "adapter_saved": bool(
                        result.adapter_dir and (Path(result.adapter_dir) / "adapter_model.safetensors").is_file()
                    ),
                }
            )
        )
    return 0


def machine() -> dict:
    import importlib.metadata

    import torch

    versions = {}
    for package in ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets", "mlflow"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        **versions,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="optimizer steps of each SFT run (GRPO takes 2)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child)
    import torch

    if not torch.cuda.is_available():
        print(
            f"gpu_smoke: error: no CUDA GPU is visible (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda or 'none'}): this script measures GPU runs; run it on a machine with an NVIDIA GPU",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        runs = {}
        for name, spec in plan(build_models(work), work, args.steps).items():
            row = runs[name] = run(name, spec, work)
            if row["returncode"]:
                print(f"  FAILED (exit {row['returncode']}):\n{row['error_tail']}", flush=True)
            else:
                print(
                    f"  {row['tokens_per_s']} tokens/s, peak GPU memory {row['peak_gpu_memory_gib']} GiB, "
                    f"lm_head {row['lm_head']}, adapter saved {row['adapter_saved']}",
                    flush=True,
                )
    from medreason.io import atomic_write_json

    result = {
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu_smoke.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "weights": "random (speed and memory only)",
        "runs": runs,
    }
    out = atomic_write_json(ROOT / "results/benchmarks/gpu_smoke.json", result)
    print(f"written to {out.relative_to(ROOT)}")
    return 1 if any(r["returncode"] for r in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
