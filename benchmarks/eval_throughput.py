"""Generate-mode evaluation speed: questions per minute for base and adapter, at batch 1 and 8, in the CPU's native
precision and in fp32.

Usage (from the repository root):

    python benchmarks/eval_throughput.py                                  # 16 heldout questions, 256 new tokens
    python benchmarks/eval_throughput.py --n 16 --max-new-tokens 256 --batch-sizes 1,8 --dtypes auto,float32

What runs is exactly `medreason eval --mode generate` without its cache: `medreason.evaluate.generate_outputs` on a
stratified subset (`medreason.mcq.stratified_subset`, seed 0) of the bundled benchmark's heldout split, prompts in
the adapter's chat template with the options listed, greedy, batched with the KV cache, base inside
`disable_adapter()` (one copy of the weights). Each figure is one timed pass after an untimed warm-up of one short
batch; questions per minute = n / minutes of that pass. A question that stops early costs less than one that runs
to the budget, so the truncation rate is recorded beside each figure.

`--dtypes auto,float32`: `auto` is what `medreason eval` uses (bf16 where the CPU multiplies it natively, as on
AVX512-BF16/AMX machines, else fp32); float32 stands in for AVX2-only machines, which have no native bf16 and run
fp32. The fp32 figure here is measured on this (bf16-capable) CPU: an AVX2-only CPU of the same clock and core count
is slower still, without AVX-512. The goal line extrapolates to the whole bundled benchmark (base and adapter) from
the fastest batch size: that is a projection from n questions, not a measurement.

Beside the end-to-end figures it records what one decoding step costs (milliseconds, base and adapter, at
--step-batch-sizes, default 1, 8 and 32: --step-tokens forced new tokens after the same prompts, KV cache, median of
two runs). That is the floor under any batch plan: a batch that runs to the budget costs max_new_tokens steps.

The adapter is lora_adapter/SmolLM2-135M-Instruct (the CPU recipe's, read-only) unless --adapter names another.
Figures go to results/benchmarks/eval_throughput.json with the machine, versions, load average and command.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_throughput import load_average, machine_info  # noqa: E402  (the sibling benchmark's machine facts)

from medreason.io import atomic_write_json  # noqa: E402

DEFAULT_ADAPTER = Path("lora_adapter/SmolLM2-135M-Instruct")
DEFAULT_OUT = Path("results/benchmarks/eval_throughput.json")
GOAL_MINUTES = 10  # issue 12: base and adapter over the whole bundled benchmark at 256 new tokens


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--adapter", default=str(DEFAULT_ADAPTER), help="the LoRA adapter folder")
    p.add_argument("--n", type=int, default=16, help="questions per figure (stratified subset of the heldout split)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--dtypes", default="auto,float32", help="comma-separated: auto, bfloat16, float32")
    p.add_argument("--step-batch-sizes", default="1,8,32", help="batch sizes of the decoding-step costs ('' skips)")
    p.add_argument("--step-tokens", type=int, default=48, help="forced new tokens per decoding-step measurement")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p.parse_args(argv)


def measure(session, items, batch_size: int, use_adapter: bool, max_new_tokens: int) -> dict:
    from medreason.evaluate import generate_outputs, score_outputs

    with session.adapter_off() if not use_adapter else nullcontext():
        generate_outputs(
            session, items[:batch_size], use_adapter=use_adapter, max_new_tokens=4, batch_size=batch_size, cache=False
        )  # warm-up: kernels, allocator
        start = time.perf_counter()
        outputs = generate_outputs(
            session, items, use_adapter=use_adapter, max_new_tokens=max_new_tokens, batch_size=batch_size, cache=False
        )
        seconds = time.perf_counter() - start
    rows = score_outputs(items, outputs, "adapter" if use_adapter else "base")
    tokens = sum(o["tokens"] for o in outputs)
    return {
        "variant": "adapter" if use_adapter else "base",
        "batch_size": batch_size,
        "n": len(items),
        "seconds": seconds,
        "questions_per_minute": len(items) / seconds * 60,
        "generated_tokens": tokens,
        "generated_tokens_per_s": tokens / seconds,
        "truncation_rate": sum(o["truncated"] for o in outputs) / len(outputs),
        "extraction_rate": sum(r["extracted"] is not None for r in rows) / len(rows),
    }


def step_costs(session, items, batch_sizes: list[int], new_tokens: int) -> list[dict]:
    """Milliseconds per decoding step (after the prefill) for base and adapter, forced to `new_tokens` tokens."""
    import statistics

    import torch

    from medreason.evaluate import mcq_prompts

    tok = session.tokenizer
    prompts = mcq_prompts(session, items)
    rows = []
    for b in batch_sizes:
        chosen = (prompts * (b // len(prompts) + 1))[:b]  # more rows than questions: the questions again
        side, tok.padding_side = tok.padding_side, "left"
        try:
            batch = tok(chosen, return_tensors="pt", padding=True, add_special_tokens=False).to(session.model.device)
        finally:
            tok.padding_side = side

        def timed(n, batch=batch):
            start = time.perf_counter()
            with torch.inference_mode():
                session.model.generate(
                    **batch,
                    do_sample=False,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    pad_token_id=tok.pad_token_id,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
            return time.perf_counter() - start

        for use_adapter in (False, True):
            with session.adapter_off() if not use_adapter else nullcontext():
                timed(2)  # warm-up
                prefill = statistics.median(timed(1) for _ in range(2))
                total = statistics.median(timed(new_tokens) for _ in range(2))
            rows.append(
                {
                    "variant": "adapter" if use_adapter else "base",
                    "batch_size": b,
                    "prompt_tokens": int(batch["input_ids"].shape[1]),
                    "ms_per_step": (total - prefill) / (new_tokens - 1) * 1000,
                    "ms_per_step_per_row": (total - prefill) / (new_tokens - 1) * 1000 / b,
                }
            )
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from medreason.generate import load_for_inference
    from medreason.mcq import bundled_split, load_benchmark, stratified_subset

    if not (Path(args.adapter) / "adapter_config.json").is_file():
        print(
            f"{args.adapter} is not an adapter folder: train the CPU recipe first "
            f"(medreason train --config configs/smollm2-135m-cpu.yaml) or pass --adapter",
            file=sys.stderr,
        )
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    items = stratified_subset(bundled_split("heldout"), args.n, seed=0)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    report = {
        "benchmark": "eval_throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + shlex.join(sys.argv),
        "adapter": args.adapter,
        "settings": {
            "n": len(items),
            "max_new_tokens": args.max_new_tokens,
            "batch_sizes": batch_sizes,
            "decoding": "greedy",
            "step_tokens": args.step_tokens,
            "items": "stratified subset (seed 0) of the heldout split",
        },
        "load_average_before": load_average(),
        "runs": {},
    }
    for name in args.dtypes.split(","):
        dtype = None if name == "auto" else getattr(torch, name)
        session = load_for_inference(args.adapter, dtype=dtype)
        machine = machine_info(session)
        report["machine"] = {k: v for k, v in machine.items() if k != "dtype"}
        results = []
        for b in batch_sizes:
            for use_adapter in (False, True):
                results.append(measure(session, items, b, use_adapter, args.max_new_tokens))
                report["runs"][name] = {"dtype": machine["dtype"], "results": results, "complete": False}
                atomic_write_json(args.out, report)  # what is measured so far survives an interruption
        steps = [int(b) for b in args.step_batch_sizes.split(",") if b.strip()]
        step_rows = step_costs(session, items, steps, args.step_tokens) if steps else []
        best = max(batch_sizes, key=lambda b: sum(r["questions_per_minute"] for r in results if r["batch_size"] == b))
        whole = len(load_benchmark())
        minutes = sum(whole / r["questions_per_minute"] for r in results if r["batch_size"] == best)
        report["runs"][name] = {
            "dtype": machine["dtype"],
            "results": results,
            "complete": True,
            "decoding_step_ms": step_rows,
            "projection": {
                "items": whole,
                "variants": 2,
                "batch_size": best,
                "minutes": minutes,
                "goal_minutes": GOAL_MINUTES,
                "meets_goal": minutes <= GOAL_MINUTES,
            },
        }
        del session
    report["load_average_after"] = load_average()
    atomic_write_json(args.out, report)
    print_table(report)
    print(f"written to {args.out}")
    return 0


def print_table(report: dict):
    m = report["machine"]
    s = report["settings"]
    print(
        f"\ngenerate-mode evaluation, {s['n']} questions, {s['max_new_tokens']} new tokens, greedy; "
        f"{m['cpu']} ({m['cpus_usable']} cores, native bf16: {m['cpu_native_bf16']}, {m['torch_threads']} threads)"
    )
    print(f"{'dtype':<10}{'variant':<9}{'batch':>6}{'q/min':>8}{'tok/s':>8}{'truncated':>11}{'extracted':>11}")
    for run in report["runs"].values():
        for r in run["results"]:
            print(
                f"{run['dtype']:<10}{r['variant']:<9}{r['batch_size']:>6}{r['questions_per_minute']:>8.1f}"
                f"{r['generated_tokens_per_s']:>8.1f}{r['truncation_rate']:>11.2f}{r['extraction_rate']:>11.2f}"
            )
        for r in run.get("decoding_step_ms", []):
            print(
                f"  decoding step, {r['variant']:<8} batch {r['batch_size']:>3}: {r['ms_per_step']:6.0f} ms "
                f"({r['ms_per_step_per_row']:.1f} ms per row)"
            )
        p = run["projection"]
        print(
            f"  projection ({run['dtype']}): whole bundled benchmark ({p['items']} items), base + adapter at batch "
            f"{p['batch_size']}: {p['minutes']:.1f} min (goal {p['goal_minutes']} min)"
        )
    print(f"load average before/after: {report['load_average_before']} / {report['load_average_after']}")


if __name__ == "__main__":
    sys.exit(main())
