"""Shared fixtures. Tests never touch the network: HF_HUB_OFFLINE is forced on before anything imports
huggingface_hub, and MLflow writes under a temporary folder."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "FALSE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from prerequisites import ENV_VAR as REQUIRE_TOOLS  # noqa: E402
from prerequisites import PREFIX as MISSING

ROOT = Path(__file__).resolve().parent.parent


def pytest_terminal_summary(terminalreporter):
    """One block naming each missing tool, the command that installs it and the tests it skipped: a skip in the
    short summary is easy to read past, and a test that did not run proved nothing."""
    missing: dict[str, list[str]] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if reason.startswith("Skipped: "):
            reason = reason[len("Skipped: ") :]
        if reason.startswith(MISSING):
            missing.setdefault(reason[len(MISSING) :], []).append(report.nodeid)
    if not missing:
        return
    terminalreporter.section("missing prerequisites: these tests did not run", sep="!", red=True, bold=True)
    for what, tests in missing.items():
        terminalreporter.line(f"{what} ({len(tests)} skipped, e.g. {tests[0]})", red=True)
    terminalreporter.line(f"Install them and run again; {REQUIRE_TOOLS}=1 (set by .ci/run) fails these tests instead.")


# MLflow's own default store is ./mlflow.db (and ./mlartifacts/) of the working directory, the repository's top under
# pytest. medreason always names its store; a test that lets MLflow fall back to the default writes there (issue 32:
# a leaked MLFLOW_TRACKING_URI did, and the store was committed). Checked once, after the whole session.
STRAYS = ("mlflow.db", "mlartifacts", "mlruns")


@pytest.fixture(scope="session", autouse=True)
def _no_mlflow_store_at_the_top():
    before = {name for name in STRAYS if (ROOT / name).exists()}
    yield
    made = sorted(name for name in STRAYS if (ROOT / name).exists() and name not in before)
    assert not made, f"the test session wrote {made} at the repository's top: a test let MLflow use its default store"


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M-Instruct checkpoint (converted from the bundled GGUF on first use)."""
    from pathlib import Path as P

    from medreason.models import DEFAULT_MODEL, convert_gguf_to_cache, resolve_model

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
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.save_pretrained(out)
    meta = {
        "base_model": str(tiny_model_dir),
        "vocab_size": len(tokenizer),
        "template": "think",
        "system_prompt": DEFAULT_SYSTEM_PROMPT,
        "dataset": "bundled",
        "run_name": "test",
        "metrics": {},
        "config": {},
    }
    (out / ADAPTER_META).write_text(json.dumps(meta, indent=2))
    return out


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a temporary working directory (results/, lora_adapter/ and the MLflow store land there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def check_adapter_equals_gathered():
    """For multi-process runs with MEDREASON_DUMP_GATHERED set (medreason.distributed): the adapter saved to
    `adapter_dir` holds exactly the tensors rank 0 gathered from the trained model, loads back with plain PEFT
    to the same values, and every other rank that dumped (a DDP replica) holds the same; training moved them."""

    def check(adapter_dir: Path, dump_dir: Path, model_dir: Path, ranks: int):
        import torch
        from peft import PeftModel, get_peft_model_state_dict
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        dumps = {p.stem: load_file(p) for p in sorted(dump_dir.glob("rank*.safetensors"))}
        assert sorted(dumps) == [f"rank{r}" for r in range(ranks)], sorted(dumps)
        gathered = dumps["rank0"]
        saved = load_file(adapter_dir / "adapter_model.safetensors")
        assert sorted(saved) == sorted(gathered) and saved
        for name, tensor in saved.items():
            assert tensor.shape == gathered[name].shape, name  # a shard would be half as long
            torch.testing.assert_close(tensor.float(), gathered[name], rtol=0, atol=0, msg=name)
        for rank, tensors in dumps.items():
            for name, tensor in tensors.items():
                torch.testing.assert_close(tensor, gathered[name], rtol=0, atol=0, msg=f"{rank} {name}")
        assert any(t.abs().sum() > 0 for n, t in saved.items() if "lora_B" in n)  # B starts at 0: it trained
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        loaded = get_peft_model_state_dict(PeftModel.from_pretrained(base, adapter_dir))
        assert sorted(loaded) == sorted(gathered)
        for name, tensor in loaded.items():
            torch.testing.assert_close(tensor.float(), gathered[name], rtol=0, atol=0, msg=name)
        return saved

    return check
