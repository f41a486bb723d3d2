"""What every benchmark records beside its figures, in one place: the machine (CPU kind, threads, native bf16,
versions), the load average (a busy machine makes every figure slower), and how a results file is updated.

    from common import machine, load_average, record
    record(Path("results/benchmarks/decode.json"), "avx2-float32", {... figures ...})   # one key per machine kind

The benchmarks run as scripts (`python benchmarks/<name>.py`), so this module is imported as `common`.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path


def cpu_name() -> str:
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name"))
        return line.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
        return set(line.split(":", 1)[1].split())
    except (OSError, StopIteration):
        return set()


def machine(dtype=None) -> dict:
    """The machine and the libraries a figure was measured with."""
    import peft
    import torch
    import transformers

    from medreason.compat import cpu_supports_bf16

    return {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "native_bf16": cpu_supports_bf16(),
        "avx512": "avx512f" in cpu_flags(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def cpu_kind(facts: dict) -> str:
    """'bf16' (native bf16 matmul), 'avx512' or 'avx2': the key a figure is filed under."""
    return "bf16" if facts["native_bf16"] else "avx512" if facts["avx512"] else "avx2"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def record(path: Path, label: str, entry: dict) -> dict:
    """Write `entry` under `label` in the JSON file at `path`, keeping the other labels (other machines' figures);
    atomically, so an interrupted benchmark never leaves half a file."""
    from medreason.io import atomic_write_json

    path = Path(path)
    whole = json.loads(path.read_text()) if path.is_file() else {}
    whole[label] = entry
    atomic_write_json(path, whole)
    return whole
