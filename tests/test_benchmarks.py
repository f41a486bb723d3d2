"""The benchmarks run on the tiny model and write the figures they claim: every script in benchmarks/ that the
README quotes is exercised here with the smallest settings (the real figures come from running them on the real
model; timings are never asserted)."""

from __future__ import annotations

import json
import math

import pytest
from helpers import benchmark_module


def test_decode_benchmark_records_the_roofline_and_every_path(tiny_model_dir, tmp_path, monkeypatch):
    bench = benchmark_module("decode")
    out = tmp_path / "decode.json"
    argv = ["--model", str(tiny_model_dir), "--batch-sizes", "1,2", "--prompt-tokens", "24", "--new-tokens", "4"]
    assert bench.main([*argv, "--runs", "1", "--dtype", "float32", "--out", str(out)]) == 0
    whole = json.loads(out.read_text())
    (label,) = whole
    report = whole[label]
    assert label.endswith("-float32") and report["machine"]["dtype"] == "float32"
    assert report["command"].startswith("HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/decode.py")
    assert report["roofline"]["peak_gflops"] > 0 and report["roofline"]["bandwidth_gbs"] > 0
    assert [r["batch"] for r in report["results"]] == [1, 2]
    for r in report["results"]:
        assert r["roofline_ms"] > 0 and r["roofline_bound_by"] in ("compute", "memory")
        assert math.isclose(r["medreason_over_roofline"], r["medreason"]["step_ms"] / r["roofline_ms"])
        assert math.isclose(r["transformers_over_medreason"], r["transformers"]["step_ms"] / r["medreason"]["step_ms"])
        assert (
            r["tokens_compared"] == r["batch"] * 4 and 0 <= r["tokens_that_differ_from_transformers"] <= 4 * r["batch"]
        )
    llama = report["results"][0]["llama_cpp"]
    assert "skipped" in llama or llama["tokens_per_s"] > 0
    # a second kind of machine is filed beside the first, not over it
    whole["bf16-bfloat16"] = {"stays": True}
    out.write_text(json.dumps(whole))
    assert bench.main([*argv, "--runs", "1", "--dtype", "float32", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["bf16-bfloat16"] == {"stays": True}


@pytest.mark.parametrize("batch, context", [(1, 300), (64, 364)])
def test_decode_step_cost_is_counted_by_hand(batch, context):
    """SmolLM2-135M: 30 layers of 576 hidden, 9 heads of 64 (3 for keys and values), MLP 1536, vocabulary 49152."""
    from types import SimpleNamespace

    bench = benchmark_module("decode")
    config = SimpleNamespace(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=49152,
    )
    per_layer = 576 * 576 + 2 * 576 * 192 + 576 * 576 + 3 * 576 * 1536
    linear = 30 * per_layer + 576 * 49152
    cost = bench.step_cost(config, batch, context, 4)
    assert cost["flops"] == batch * (2 * linear + 4 * 30 * 9 * 64 * context)
    assert cost["bytes"] == linear * 4 + batch * context * 2 * 30 * 3 * 64 * 4
    assert 130e6 < linear < 140e6  # 134.5M: the 135M of the name, with the tied head counted once
