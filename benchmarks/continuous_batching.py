"""Continuous batching against padded batches for generate-mode evaluation on this machine.

Usage (from the repository root, after the CPU recipe has trained its adapter):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/continuous_batching.py            # 32 questions, 128 new tokens

`medreason eval --mode generate` decodes padded batches (`medreason.evaluate.generate_outputs`): a batch runs until
its longest answer ends, so rows that finished early wait. transformers' continuous batching
(`model.generate_batch`, paged KV cache, the model's own attention implementation) refills a finished row's slot at
once. This times both on the same questions (a stratified subset, seed 0, of the bundled benchmark's heldout split,
in the adapter's chat template with the options listed), greedy, for the base model (inside `disable_adapter()`)
and the adapter, and counts how many answers are identical. One timed pass each, after a short warm-up.
Figures go to results/benchmarks/continuous_batching.json with the machine's facts and the command.
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
DEFAULT_OUT = Path("results/benchmarks/continuous_batching.json")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", default=str(DEFAULT_ADAPTER))
    p.add_argument("--n", type=int, default=32, help="questions (all in one padded batch)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument(
        "--num-blocks",
        type=int,
        default=None,
        help="paged KV cache blocks (default: transformers sizes the cache from free memory, which on a CPU "
        "takes ~20 s to allocate; the test suite passes a small cache)",
    )
    args = p.parse_args(argv)

    import torch
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from medreason.evaluate import generate_outputs, mcq_prompts
    from medreason.generate import load_for_inference
    from medreason.mcq import bundled_split, stratified_subset

    if not (Path(args.adapter) / "adapter_config.json").is_file():
        print(
            f"{args.adapter} is not an adapter folder: train the CPU recipe first "
            f"(medreason train --config configs/smollm2-135m-cpu.yaml) or pass --adapter",
            file=sys.stderr,
        )
        return 2
    session = load_for_inference(args.adapter)
    tok = session.tokenizer
    items = stratified_subset(bundled_split("heldout"), args.n, seed=0)
    ids = [tok(prompt, add_special_tokens=False)["input_ids"] for prompt in mcq_prompts(session, items)]
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cb_config = ContinuousBatchingConfig(num_blocks=args.num_blocks) if args.num_blocks else None
    report = {
        "benchmark": "continuous_batching",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + shlex.join(sys.argv),
        "adapter": args.adapter,
        "settings": {
            "n": len(items),
            "max_new_tokens": args.max_new_tokens,
            "decoding": "greedy",
            "padded_batch_size": len(items),
            "num_blocks": args.num_blocks or "auto (transformers)",
            "attn_implementation": session.model.config._attn_implementation,
        },
        "load_average_before": load_average(),
        "results": [],
    }
    for use_adapter in (False, True):
        with session.adapter_off() if not use_adapter else nullcontext():
            generate_outputs(session, items[:2], use_adapter=use_adapter, max_new_tokens=4, batch_size=2, cache=False)
            start = time.perf_counter()
            padded = generate_outputs(
                session,
                items,
                use_adapter=use_adapter,
                max_new_tokens=args.max_new_tokens,
                batch_size=len(items),
                cache=False,
            )
            padded_s = time.perf_counter() - start
            with torch.inference_mode():
                session.model.generate_batch(
                    inputs=ids[:2],
                    generation_config=GenerationConfig(
                        max_new_tokens=4, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
                    ),
                    progress_bar=False,
                    continuous_batching_config=cb_config,
                )
                start = time.perf_counter()
                out = session.model.generate_batch(
                    inputs=ids, generation_config=config, progress_bar=False, continuous_batching_config=cb_config
                )
                continuous_s = time.perf_counter() - start
        texts = [
            tok.decode(out[f"req_{i}"].generated_tokens, skip_special_tokens=True).strip() for i in range(len(ids))
        ]
        report["results"].append(
            {
                "variant": "adapter" if use_adapter else "base",
                "padded_s": padded_s,
                "continuous_s": continuous_s,
                "continuous_over_padded": continuous_s / padded_s,
                "generated_tokens": sum(o["tokens"] for o in padded),
                "truncation_rate": sum(o["truncated"] for o in padded) / len(padded),
                "identical_answers": sum(a["output"] == b for a, b in zip(padded, texts)),
            }
        )
    report["machine"] = machine_info(session)
    report["load_average_after"] = load_average()
    atomic_write_json(args.out, report)
    print(f"{len(items)} questions, {args.max_new_tokens} new tokens, greedy, {report['machine']['dtype']}")
    for r in report["results"]:
        print(
            f"{r['variant']:<8} padded batch {r['padded_s']:6.1f} s   continuous batching {r['continuous_s']:6.1f} s "
            f"({r['continuous_over_padded']:.2f}x)   identical answers {r['identical_answers']}/{len(items)}   "
            f"run to the budget {r['truncation_rate']:.2f}"
        )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
