"""The whole bundled benchmark in generate mode, base model and adapter, timed: the README's "whole bundled
benchmark" figures (wall time, peak memory, accuracies, the paired comparison), written whole to one file.

Usage (from the repository root, after the CPU recipe has trained its adapter; alone on the machine):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_whole_benchmark.py

It runs `medreason eval --mode generate` on every question of medreason/resources/mcq.jsonl (256 new tokens,
batches of 64, no answer cache) as a child process, measures its wall time and peak resident memory
(getrusage of the children), and writes results/benchmarks/eval_whole_benchmark.json: the evaluation's own
summary (results/<run>/eval.json) with the command, the machine, the date, the load average before and after,
the wall time and the peak memory, under a key naming the CPU kind (`avx2`, `bf16`...). Nothing in that file is
written by hand. The target (issue 29): at most 5 minutes on 2 cores with native bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_kind, load_average, machine, now, record  # noqa: E402

from medreason.distributed import inference_dtype  # noqa: E402

DEFAULT_ADAPTER = "lora_adapter/SmolLM2-135M-Instruct"
DEFAULT_OUT = Path("results/benchmarks/eval_whole_benchmark.json")
RUN_NAME = "bench-eval-whole"


def eval_command(adapter: str, max_new_tokens: int, batch_size: int) -> list[str]:
    medreason = str(Path(sys.executable).parent / "medreason")
    return [
        medreason, "eval", "--adapter", adapter, "--mode", "generate", "--mcq", "medreason/resources/mcq.jsonl",
        "--max-new-tokens", str(max_new_tokens), "--batch-size", str(batch_size), "--no-cache",
        "--run-name", RUN_NAME,
    ]  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", default=DEFAULT_ADAPTER)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    command = eval_command(args.adapter, args.max_new_tokens, args.batch_size)
    report = {
        "benchmark": "eval_whole_benchmark",
        "date": now(),
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python " + shlex.join(["benchmarks/eval_whole_benchmark.py", *(argv or sys.argv[1:])]),
        "eval_command": shlex.join(command),
        "machine": machine(inference_dtype()),
        "load_average_before": load_average(),
    }  # fmt: skip
    start = time.monotonic()
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")})
    report["wall_seconds"] = round(time.monotonic() - start, 2)
    # ru_maxrss: kilobytes on Linux; the largest child (the eval process)
    report["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6, 2)
    report["load_average_after"] = load_average()
    report["eval"] = json.loads(Path("results", RUN_NAME, "eval.json").read_text())
    label = cpu_kind(report["machine"])
    record(Path(args.out), label, report)
    print(f"{args.out} [{label}]: {report['wall_seconds']:.0f} s, peak {report['peak_rss_gb']} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
