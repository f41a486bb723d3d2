"""Training throughput on this machine: the original notebook's settings vs medreason's CPU recipe.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_throughput.py            # 4 optimizer steps each
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_throughput.py --steps 8
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_throughput.py --steps 8 --ablation   # + what each change buys

In one run, on the same bundled data, the same real SmolLM2-135M-Instruct and the same number of optimizer
steps, it trains:

  (a) baseline: the original notebook's SFTConfig/LoRA as they run on a CPU under stock TRL: bf16 (autocast
      over ModelConfig's default fp32 weights), gradient checkpointing on, `dft` loss, batch 4, attention-only
      LoRA r=16 with dropout 0.05, TRL's own (chunked) LM head; gradient accumulation 1 here, to keep the run
      short: accumulation does not change tokens per second;
  (b) configs/smollm2-135m-cpu.yaml as shipped: precision auto (bf16 frozen weights where the CPU has native
      bf16), no checkpointing, length-grouped batches, no LoRA dropout, and the dense LM head on CPUs
      (`--lm_head`, see medreason.compat.use_dense_lm_head).

It prints useful (non-padding) trained tokens per second for both (TRL's `num_tokens` over the trainer's
`train_runtime`), their ratio, and the fraction of this machine's measured matmul peak that (b) reaches, at
about 5.4e8 FLOP per trained token for this model (forward 2N plus the backward pass through activations 2N,
N = 134.5M; LoRA adds little). Writes results/benchmarks/train_throughput.json, under a key naming the CPU kind
(`avx2`, `bf16`, ...), with the command, the machine, the date and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import cpu_kind, load_average, machine, now, record  # noqa: E402

FLOP_PER_TOKEN = 5.4e8
RECIPE = "configs/smollm2-135m-cpu.yaml"
COMMON = [
    "--eval_strategy",
    "no",
    "--evaluate_test",
    "false",
    "--save_strategy",
    "no",
    "--logging_steps",
    "1",
    "--eval_on_start",
    "false",
]
BASELINE = [
    # stock TRL: fp32 weights under bf16 autocast (ModelConfig's default dtype), TRL's own LM head
    "--precision",
    "bf16",
    "--dtype",
    "float32",
    "--lm_head",
    "fused",
    "--activation_checkpointing",
    "true",
    "--loss_type",
    "dft",
    "--per_device_train_batch_size",
    "4",
    "--gradient_accumulation_steps",
    "1",
    "--lora_target_modules",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "--lora_r",
    "16",
    "--lora_alpha",
    "32",
    "--lora_dropout",
    "0.05",
    "--train_sampling_strategy",
    "random",
    "--learning_rate",
    "2e-5",
    "--lr_scheduler_type",
    "cosine_with_restarts",
]


# --ablation: the baseline with medreason's CPU changes added one at a time (each row keeps the ones above)
ABLATION = [
    ("+ bf16 frozen weights", ["--dtype", "bfloat16"]),
    ("+ dense LM head", ["--lm_head", "dense"]),
    ("+ no gradient checkpointing", ["--activation_checkpointing", "false"]),
]


def matmul_peak(dtype_name: str, n: int = 2048, reps: int = 3) -> float:
    """Best-of GFLOP/s of F.linear (what nn.Linear runs: oneDNN/MKL) on n x n operands in the given dtype."""
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, dtype_name)
    x, w = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    F.linear(x, w)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        F.linear(x, w)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def run(name: str, extra: list[str], steps: int, workdir: Path) -> dict:
    from medreason.train import train

    out = workdir / name
    result = train(
        [
            "--config",
            str(ROOT / RECIPE),
            *COMMON,
            "--max_steps",
            str(steps),
            "--output_dir",
            str(out / "run"),
            "--adapter_root",
            str(out / "adapter"),
            "--run_name",
            f"bench-{name}",
            *extra,
        ]
    )
    tokens = max(h.get("num_tokens", 0) for h in result.log_history)
    runtime = next(h["train_runtime"] for h in reversed(result.log_history) if "train_runtime" in h)
    row = {
        "steps": result.global_step,
        "tokens": int(tokens),
        "seconds": round(runtime, 1),
        "tokens_per_s": round(tokens / runtime, 1),
    }
    print(f"{name}: {row['tokens']} tokens in {row['seconds']} s = {row['tokens_per_s']} tokens/s", flush=True)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="optimizer steps for each variant")
    p.add_argument(
        "--ablation", action="store_true", help="also train the baseline with the CPU changes added one at a time"
    )
    args = p.parse_args()
    os.chdir(ROOT)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tempfile.mkdtemp()}/bench.db")
    import torch

    from medreason.compat import cpu_supports_bf16

    load_before = load_average()
    peaks = {"bf16": matmul_peak("bfloat16"), "fp32": matmul_peak("float32")}
    print(
        f"matmul peak: bf16 {peaks['bf16']:.1f} GFLOP/s, fp32 {peaks['fp32']:.1f} GFLOP/s "
        f"(native bf16: {cpu_supports_bf16()})",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        baseline = run("baseline", BASELINE, args.steps, Path(tmp))
        ablation, extra = {}, list(BASELINE)
        for i, (name, change) in enumerate(ABLATION if args.ablation else []):
            extra += change
            ablation[name] = run(f"ablation-{i}", extra, args.steps, Path(tmp))
        recipe = run("recipe", [], args.steps, Path(tmp))
    ratio = recipe["tokens_per_s"] / baseline["tokens_per_s"]
    recipe_dtype = "bf16" if cpu_supports_bf16() else "fp32"
    achieved = recipe["tokens_per_s"] * FLOP_PER_TOKEN / 1e9
    result = {
        "benchmark": "train_throughput",
        "date": now(),
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]),
        "machine": machine(torch.bfloat16 if cpu_supports_bf16() else torch.float32),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "matmul_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
        "baseline": baseline,
        **({"ablation": ablation} if ablation else {}),
        "recipe": recipe,
        "ratio": round(ratio, 2),
        "recipe_gflops": round(achieved, 1),
        "recipe_dtype": recipe_dtype,
        "fraction_of_bf16_peak": round(achieved / peaks["bf16"], 3),
        "fraction_of_recipe_dtype_peak": round(achieved / peaks[recipe_dtype], 3),
    }
    print(f"\nbaseline (notebook settings): {baseline['tokens_per_s']:.1f} tokens/s")
    for name, row in ablation.items():
        print(
            f"  {name:<27} {row['tokens_per_s']:.1f} tokens/s ({row['tokens_per_s'] / baseline['tokens_per_s']:.2f}x)"
        )
    print(f"recipe ({RECIPE}):            {recipe['tokens_per_s']:.1f} tokens/s")
    print(f"ratio recipe/baseline:        {ratio:.2f}x (target >= 3)")
    print(
        f"recipe reaches {achieved:.1f} GFLOP/s = {result['fraction_of_bf16_peak']:.1%} of the measured bf16 matmul "
        f"peak and {result['fraction_of_recipe_dtype_peak']:.1%} of the {recipe_dtype} peak it computes in"
    )
    out = ROOT / "results/benchmarks/train_throughput.json"
    if out.is_file() and "baseline" in out.read_text():  # the older layout: one machine's figures, no key
        import json

        if "baseline" in json.loads(out.read_text()):
            out.unlink()
    label = cpu_kind(result["machine"])
    record(out, label, result)
    print(f"written to {out.relative_to(ROOT)} [{label}]")


if __name__ == "__main__":
    main()
