"""Every measured figure in README.md comes from a results file: the "Measured figures" section is exactly what
benchmarks/figures.py renders from results/benchmarks/*.json, and no measurement (a time, a rate, a size, a
ratio, a loss) is typed anywhere else in the README's prose. Model-free, under a second."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import benchmark_module

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```.*?^```\s*$", re.S | re.M)
# a number with a unit of measurement, a ratio, or a loss/accuracy reading
MEASUREMENT = re.compile(
    r"(?<![\w.])\d+(?:[.,]\d+)*\s*(?:s\b|ms\b|min\b|minutes?\b|seconds?\b|hours?\b|GB\b|MB\b|GiB\b|%|x\b|×|"
    r"tokens/s|q/s|GFLOP/s|GB/s|q/min)"
    r"|(?:loss|accuracy|p\s*=)\s*\d"
)
# where a number with a unit states a setting or a requirement, not a measurement
ALLOWED = re.compile(
    r"95 %"  # the confidence level of an interval
    r"|within 2 seconds"  # the progress delay's default (MEDREASON_PROGRESS_DELAY)
)


def test_the_measured_figures_section_is_rendered_from_the_results_files():
    figures = benchmark_module("figures")
    text = README.read_text(encoding="utf-8")
    start, end = text.index(figures.BEGIN), text.index(figures.END) + len(figures.END)
    assert text[start:end] == figures.render(), "run: .venv/bin/python benchmarks/figures.py --write"


def test_no_measurement_is_typed_outside_that_section():
    figures = benchmark_module("figures")
    text = README.read_text(encoding="utf-8")
    start, end = text.index(figures.BEGIN), text.index(figures.END) + len(figures.END)
    prose = text[:start] + text[end:]
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), prose)
    prose = re.sub(r"`[^`\n]*`", "", prose)  # inline code: commands and settings
    found = []
    for number, line in enumerate(prose.splitlines(), 1):
        for match in MEASUREMENT.finditer(line):
            if not ALLOWED.match(match.group(0)) and not ALLOWED.search(line[max(0, match.start() - 7) : match.end()]):
                found.append(f"README.md:{number}: {match.group(0)!r} in {line.strip()[:100]!r}")
    assert not found, "\n".join(found)


def test_the_renderer_states_a_missed_target_as_missed(monkeypatch):
    """A whole-benchmark run over the target reads 'not met', under it 'met'."""
    figures = benchmark_module("figures")
    entry = {
        "date": "2026-12-07T00:00:00+00:00",
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_whole_benchmark.py",
        "machine": {"cores": 2, "cpu": "a CPU", "native_bf16": True, "torch": "2.13.0"},
        "load_average_before": [0.1, 0.1, 0.1],
        "load_average_after": [2.0, 1.0, 0.5],
        "peak_rss_gb": 1.5,
        "eval": {
            "n_benchmark": 306,
            "settings": {"max_new_tokens": 256},
            "variants": {
                "base": {"accuracy": 0.2, "extraction_rate": 0.8},
                "adapter": {"accuracy": 0.25, "extraction_rate": 0.99},
            },
            "paired": {"diff": 0.05, "ci_low": 0.01, "ci_high": 0.09, "p_value": 0.02},
        },
    }
    for seconds, verdict in ((400, "**not met**"), (200, "**met**")):
        monkeypatch.setattr(figures, "load", lambda name, s=seconds: {"bf16": {**entry, "wall_seconds": s}})
        text = "\n".join(figures.eval_whole())
        assert f"Target 5 min with native bf16: {verdict}." in text
        assert "load average 0.10 before, 2.00 after" in text and entry["command"] in text
