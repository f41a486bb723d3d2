"""Shared fixtures. Tests never touch the network: HF_HUB_OFFLINE is forced on before anything imports
huggingface_hub, and MLflow writes under a temporary folder."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "FALSE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from prerequisites import ENV_VAR as REQUIRE_TOOLS, PREFIX as MISSING  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def pytest_terminal_summary(terminalreporter):
    """One block naming each missing tool, the command that installs it and the tests it skipped: a skip in the
    short summary is easy to read past, and a test that did not run proved nothing."""
    missing: dict[str, list[str]] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if reason.startswith("Skipped: "):
            reason = reason[len("Skipped: "):]
        if reason.startswith(MISSING):
            missing.setdefault(reason[len(MISSING):], []).append(report.nodeid)
    if not missing:
        return
    terminalreporter.section("missing prerequisites: these tests did not run", sep="!", red=True, bold=True)
    for what, tests in missing.items():
        terminalreporter.line(f"{what} ({len(tests)} skipped, e.g. {tests[0]})", red=True)
    terminalreporter.line(f"Install them and run again; {REQUIRE_TOOLS}=1 (set by .ci/run) fails these tests instead.")


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M-Instruct checkpoint (converted from the bundled GGUF on first use)."""
    from medreason.models import DEFAULT_MODEL, resolve_model, convert_gguf_to_cache
    from pathlib import Path as P

    source = resolve_model(DEFAULT_MODEL)
    return convert_gguf_to_cache(P(source.path)) if source.kind == "gguf" else P(source.path)


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir):
    """A 2-layer random Llama with SmolLM2's real tokenizer and vocabulary, saved as a local folder:
    trains in seconds, exercises the same code paths as the real model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-llama")
    config = AutoConfig.from_pretrained(smollm2_dir)
    config.num_hidden_layers = 2
    config.hidden_size = 64
    config.intermediate_size = 128
    config.num_attention_heads = 4
    config.num_key_value_heads = 2
    config.head_dim = 16
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir):
    """A LoRA adapter for the tiny model, saved as `medreason train` saves one, without training: LoRA's B matrices
    start random (init_lora_weights=False), so the adapter changes the model's outputs. One per test module, so a
    module that damages its copy leaves the others' intact."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medreason.adapter import ADAPTER_META
    from medreason.config import DEFAULT_SYSTEM_PROMPT

    out = tmp_path_factory.mktemp("lora") / "adapter"
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.save_pretrained(out)
    meta = {"base_model": str(tiny_model_dir), "vocab_size": len(tokenizer), "template": "think",
            "system_prompt": DEFAULT_SYSTEM_PROMPT, "dataset": "bundled", "run_name": "test", "metrics": {},
            "config": {}}
    (out / ADAPTER_META).write_text(json.dumps(meta, indent=2))
    return out


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a temporary working directory (results/, lora_adapter/ and the MLflow store land there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path
