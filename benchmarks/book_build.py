"""Time a cold build of the book, chapter by chapter, and record it with the machine's facts.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/book_build.py            # cold: clears the caches first
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/book_build.py --warm     # a rebuild with nothing changed

A cold build starts without `_build/`, the CPU recipe's adapter, the GRPO adapter, the MLflow store, the run
folders and the generation cache (all of which chapters would otherwise reuse), exactly as a fresh clone does,
but keeps the converted model in ~/.cache/medreason (a one-time cost of the machine, not of the book; pass
--with-model-cache to drop it too). The build is `make book`; each chapter's execution time comes from the
jupyter-cache records myst-nb writes. Figures go to results/benchmarks/book_build.json.

To stand in for an AVX2-only runner (GitHub's hosted machines) on a CPU with AVX512/AMX:
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python benchmarks/book_build.py --label avx2
(oneDNN then has no bf16 or AMX kernels, torch's own kernels use AVX2, and `precision: auto` picks fp32).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import cpu_kind, load_average, machine, now, record  # noqa: E402

COLD = [
    "_build",
    "lora_adapter/SmolLM2-135M-Instruct",
    "lora_adapter/grpo",
    "lora_adapter/grpo-short",
    "results/grpo-short",
    "results/mlflow.db",
    "results/mlartifacts",
    "results/smollm2-135m-cpu",
    "results/smollm2-135m-grpo-cpu",
    "results/cache",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warm", action="store_true", help="rebuild without clearing anything")
    p.add_argument("--with-model-cache", action="store_true", help="also drop the converted model cache")
    p.add_argument("--label", default=None, help="key in the JSON (default: the CPU kind)")
    args = p.parse_args()
    os.chdir(ROOT)
    if not args.warm:
        for rel in COLD:
            path = ROOT / rel
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        if args.with_model_cache:
            from medreason.models import cache_root

            shutil.rmtree(cache_root() / "models", ignore_errors=True)
    load_before = load_average()
    start = time.perf_counter()
    done = subprocess.run(["make", "book"], cwd=ROOT)
    total = time.perf_counter() - start
    chapters = chapter_times(ROOT / "_build" / ".jupyter_cache")
    from medreason.distributed import inference_dtype

    facts = machine(inference_dtype())
    label = (args.label or cpu_kind(facts)) + ("-warm" if args.warm else "-cold")
    out = ROOT / "results" / "benchmarks" / "book_build.json"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "book", "medreason"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())  # fmt: skip
    entry = {
        "command": " ".join(
            [
                "HF_HUB_OFFLINE=1",
                *(f"{k}={os.environ[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ),
                ".venv/bin/python",
                "benchmarks/book_build.py",
                *sys.argv[1:],
            ]
        ),
        "date": now(),
        "commit": commit + ("+changes" if dirty else ""),
        "exit_code": done.returncode,
        "total_seconds": round(total, 1),
        "chapter_seconds": chapters,
        "machine": facts,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    record(out, label, entry)
    print(f"{label}: {total:.0f} s in all (make book exit {done.returncode})")
    for name, seconds in chapters.items():
        print(f"  {name:<14}{seconds:>8.1f} s")
    print(f"written to {out.relative_to(ROOT)}")
    return done.returncode


def chapter_times(cache_dir: Path) -> dict[str, float]:
    """Seconds each chapter took to execute, from the jupyter-cache records (newest record per chapter)."""
    if not cache_dir.is_dir():
        return {}
    from jupyter_cache import get_cache

    times = {}
    for rec in sorted(get_cache(str(cache_dir)).list_cache_records(), key=lambda r: r.created):
        seconds = (rec.data or {}).get("execution_seconds")
        if seconds is not None:
            times[Path(rec.uri).stem] = round(float(seconds), 1)
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


if __name__ == "__main__":
    sys.exit(main())
