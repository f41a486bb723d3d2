"""Generation speed of SmolLM2-135M-Instruct: base model vs with a LoRA adapter, batch 1 and batch 8.

Usage (from the repository root):

    python benchmarks/generate_throughput.py                        # the trained adapter, or a fresh LoRA
    python benchmarks/generate_throughput.py --adapter lora_adapter/SmolLM2-135M-Instruct
    python benchmarks/generate_throughput.py --max-new-tokens 64 --runs 3 --threads 2

The model loads as `medreason chat` loads it (`medreason.generate.load_for_inference`: bf16 where the
hardware multiplies it natively, fp32 elsewhere; KV cache on). The adapter is `--adapter DIR`, else
lora_adapter/SmolLM2-135M-Instruct when it exists, else a fresh LoRA (r=16 on every linear layer, random
non-zero weights) made in memory, so that the adapter's extra matmuls cost what a trained one costs.
The base model's figures are measured inside PEFT's `disable_adapter()`: one copy of the weights.

What is measured, after 1 warm-up run, as the median of `--runs` timed runs:

- time to first token (TTFT): `generate` with max_new_tokens=1 on questions from the bundled corpus in
  the chat template with medreason's system prompt (the prefill plus one greedy step);
- decode tokens/s: `generate` with min_new_tokens = max_new_tokens (so every sequence runs the full
  length; greedy, medreason's repetition penalty), rate = batch x (max_new_tokens - 1) / (total - TTFT):
  the tokens after the first, over the time after the first;
- what the KV cache buys: the same at batch 1 for a short generation with use_cache=False, as a ratio.

Figures go to results/benchmarks/generate_throughput.json with the machine, the versions and the exact
command. CPU timings move with anything else running on the machine: the load average before and after
is recorded so that a noisy run can be recognised.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from medreason.io import atomic_write_json

DEFAULT_ADAPTER = Path("lora_adapter/SmolLM2-135M-Instruct")
DEFAULT_OUT = Path("results/benchmarks/generate_throughput.json")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=None, help="base model (default: the adapter's base, or SmolLM2-135M-Instruct)")
    p.add_argument(
        "--adapter",
        default=None,
        help=f"a LoRA adapter folder (default {DEFAULT_ADAPTER} if it exists, "
        "else a fresh in-memory LoRA r=16 on all linear layers)",
    )
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per sequence in the decode runs")
    p.add_argument("--no-cache-tokens", type=int, default=16, help="tokens generated in the use_cache=False comparison")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--runs", type=int, default=3, help="timed runs per figure (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before each figure")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="where the JSON goes")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------- setup


def load(args):
    """A Session whose model is a PeftModel (the given/trained adapter, or a fresh random LoRA)."""
    from medreason.generate import load_for_inference

    adapter = args.adapter or (str(DEFAULT_ADAPTER) if (DEFAULT_ADAPTER / "adapter_config.json").is_file() else None)
    if adapter:
        session = load_for_inference(adapter, args.model)
        return session, f"{adapter} (trained)"
    import torch
    from peft import LoraConfig, get_peft_model

    session = load_for_inference(None, args.model)
    torch.manual_seed(0)
    config = LoraConfig(
        r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
    )
    session.model = get_peft_model(session.model, config).eval()
    session.adapter = "fresh in-memory LoRA"
    return session, "fresh in-memory LoRA: r=16, alpha=32, all-linear, random weights (init_lora_weights=False)"


def questions(n: int) -> list[str]:
    """The first n questions of the bundled corpus: typical prompts, not synthetic ones."""
    from medreason.data import bundled_path, read_file

    rows = read_file(bundled_path("corpus.jsonl"))
    return [r["Question"] for r in rows[:n]]


def encode(session, qs: list[str]):
    tok = session.tokenizer
    tok.padding_side = "left"
    prompts = [
        tok.apply_chat_template(
            [{"role": "system", "content": session.system_prompt}, {"role": "user", "content": q}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for q in qs
    ]
    return tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(session.model.device)


# --------------------------------------------------------------------------------------------- timing


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_generate(session, batch, new_tokens: int, use_adapter: bool, use_cache: bool = True) -> tuple[float, int]:
    """Seconds for one greedy `generate` of exactly `new_tokens` tokens per sequence; and the count made."""
    import torch

    from medreason.generate import Sampling

    kwargs = Sampling(greedy=True, max_new_tokens=new_tokens).kwargs()
    ctx = session.adapter_off() if not use_adapter else _Null()
    with ctx, torch.inference_mode():
        _sync()
        start = time.perf_counter()
        out = session.model.generate(
            **batch,
            **kwargs,
            min_new_tokens=new_tokens,
            use_cache=use_cache,
            pad_token_id=session.tokenizer.pad_token_id,
        )
        _sync()
        elapsed = time.perf_counter() - start
    made = out.shape[1] - batch["input_ids"].shape[1]
    assert made == new_tokens, f"generated {made} tokens, expected {new_tokens}"
    return elapsed, made


def median_of(fn, runs: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = [fn() for _ in range(runs)]
    return statistics.median(times), times


def measure(session, batch, batch_size: int, use_adapter: bool, args) -> dict:
    ttft, ttft_runs = median_of(lambda: timed_generate(session, batch, 1, use_adapter)[0], args.runs, args.warmup)
    total, total_runs = median_of(
        lambda: timed_generate(session, batch, args.max_new_tokens, use_adapter)[0], args.runs, args.warmup
    )
    decode_tokens = batch_size * (args.max_new_tokens - 1)
    return {
        "variant": "adapter" if use_adapter else "base",
        "batch_size": batch_size,
        "prompt_tokens": int(batch["attention_mask"].sum(dim=1).max()),
        "padded_prompt_tokens": int(batch["input_ids"].shape[1]),
        "new_tokens_per_sequence": args.max_new_tokens,
        "ttft_s": ttft,
        "total_s": total,
        "decode_tokens_per_s": decode_tokens / (total - ttft) if total > ttft else None,
        "end_to_end_tokens_per_s": batch_size * args.max_new_tokens / total,
        "ttft_runs_s": ttft_runs,
        "total_runs_s": total_runs,
    }


def measure_kv_cache(session, batch, use_adapter: bool, args) -> dict:
    n = args.no_cache_tokens
    with_cache, _ = median_of(lambda: timed_generate(session, batch, n, use_adapter, True)[0], args.runs, args.warmup)
    without, runs = median_of(lambda: timed_generate(session, batch, n, use_adapter, False)[0], args.runs, args.warmup)
    return {
        "variant": "adapter" if use_adapter else "base",
        "batch_size": 1,
        "new_tokens": n,
        "with_cache_s": with_cache,
        "without_cache_s": without,
        "without_cache_runs_s": runs,
        "speedup_from_cache": without / with_cache,
    }


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# --------------------------------------------------------------------------------------------- report


def machine_info(session) -> dict:
    import peft
    import torch
    import transformers

    from medreason.compat import cpu_supports_bf16

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu_model or platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_supports_bf16(),
        "device": str(session.model.device),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "dtype": str(session.model.dtype).replace("torch.", ""),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def print_table(report: dict):
    m = report["machine"]
    print(
        f"\n{report['model']} on {m['device']} ({m['cpu']}; {m['torch_threads']} threads; {m['dtype']}); "
        f"adapter: {report['adapter']}"
    )
    print(
        f"{'variant':<9}{'batch':>6}{'prompt tok':>12}{'TTFT ms':>10}{'decode tok/s':>14}{'e2e tok/s':>11}{'total s':>9}"
    )
    for r in report["results"]:
        decode = f"{r['decode_tokens_per_s']:.1f}" if r["decode_tokens_per_s"] else "n/a"
        print(
            f"{r['variant']:<9}{r['batch_size']:>6}{r['prompt_tokens']:>12}{r['ttft_s'] * 1000:>10.0f}"
            f"{decode:>14}{r['end_to_end_tokens_per_s']:>11.1f}{r['total_s']:>9.2f}"
        )
    for k in report["kv_cache"]:
        print(
            f"KV cache, {k['variant']}, batch 1, {k['new_tokens']} new tokens: {k['with_cache_s']:.2f} s with, "
            f"{k['without_cache_s']:.2f} s without ({k['speedup_from_cache']:.1f}x faster with the cache)"
        )
    print(
        f"median of {report['settings']['runs']} runs after {report['settings']['warmup']} warm-up; "
        f"load average before/after: {report['load_average_before']} / {report['load_average_after']}"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="medreason: %(message)s", stream=sys.stderr)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.max_new_tokens < 2:
        raise SystemExit("--max-new-tokens must be at least 2 (the first token is the TTFT)")
    load_before = load_average()
    session, adapter_desc = load(args)
    sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    qs = questions(max(sizes))
    results, kv = [], []
    for size in sizes:
        batch = encode(session, qs[:size])
        for use_adapter in (False, True):
            r = measure(session, batch, size, use_adapter, args)
            print(
                f"  {r['variant']}, batch {size}: TTFT {r['ttft_s'] * 1000:.0f} ms, "
                f"decode {r['decode_tokens_per_s'] or 0:.1f} tok/s",
                file=sys.stderr,
                flush=True,
            )
            results.append(r)
    batch = encode(session, qs[:1])
    for use_adapter in (False, True):
        kv.append(measure_kv_cache(session, batch, use_adapter, args))

    report = {
        "benchmark": "generate_throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", sys.argv[0], *argv]),
        "model": session.base_model,
        "adapter": adapter_desc,
        "machine": machine_info(session),
        "settings": {
            "max_new_tokens": args.max_new_tokens,
            "no_cache_tokens": args.no_cache_tokens,
            "batch_sizes": sizes,
            "runs": args.runs,
            "warmup": args.warmup,
            "decoding": "greedy",
            "repetition_penalty": 1.1,
            "use_cache": True,
            "prompt": "first questions of the bundled corpus in the chat template with medreason's system prompt",
            "decode_rate": "batch x (max_new_tokens - 1) / (total - TTFT)",
        },
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "results": results,
        "kv_cache": kv,
    }
    print_table(report)
    out = atomic_write_json(args.out, report)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
