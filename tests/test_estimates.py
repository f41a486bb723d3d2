"""medreason.estimates (parameters, memory) and medreason.compute (steps, FLOPs, time), the plots that draw what
they are handed, the label mask in medreason.data and the MLflow reader in medreason.tracking. No real model: small
random Llamas."""

import pytest

from medreason import compute, estimates


def _llama(vocab=512, hidden=128, intermediate=256, layers=4, heads=4, kv_heads=2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def test_flop_factors():
    """6N full, 4N LoRA (no weight gradients of the frozen base), +2N for the recomputed forward."""
    assert compute.flop_per_token_param(lora=False, checkpointing=False) == 6
    assert compute.flop_per_token_param(lora=True, checkpointing=False) == 4
    assert compute.flop_per_token_param(lora=True, checkpointing=True) == 6
    assert compute.flop_per_token_param(lora=False, checkpointing=True) == 8


def test_lora_param_count_matches_peft():
    from peft import LoraConfig, get_peft_model

    model = _llama()
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert estimates.lora_param_count(model.config, 8) == peft_model.get_nb_trainable_parameters()[0]


def test_lora_param_table_counts_and_leaves_model_alone():
    model = _llama()
    before = sum(p.numel() for p in model.parameters())
    table = estimates.lora_param_table(model, ranks=(4, 8), target_presets=("attention", "all-linear"))
    assert sum(p.numel() for p in model.parameters()) == before
    rows = table.set_index(["targets", "rank r"])["trainable params"]
    assert rows[("all-linear", 8)] == 2 * rows[("all-linear", 4)] == estimates.lora_param_count(model.config, 8)
    assert rows[("attention", 4)] < rows[("all-linear", 4)]
    first = table.iloc[0]
    assert first["weights MB (fp32)"] * 2 == first["optimizer state MB (fp32)"]


def test_published_smollm2_architecture_has_its_parameter_count():
    config = estimates.published_config("SmolLM2-135M-Instruct")
    assert estimates.param_count(config) == 134_515_008  # 134.5M, as the real checkpoint


def test_activation_count_matches_what_autograd_saves():
    """The tensor count behind the memory tables stays within 25% of a measurement on a real (random) model
    with the recipe's precision: bf16 base, fp32 LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = _llama().to(torch.bfloat16)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    measured = estimates.saved_activation_bytes(peft_model, tokens=64)
    counted = sum(estimates.activation_bytes(model.config, tokens=64).values())
    assert abs(counted / measured - 1) < 0.25, (counted, measured)
    checkpointed = sum(estimates.activation_bytes(model.config, tokens=64, checkpointing=True).values())
    assert checkpointed < counted


def test_training_memory_table_full_fine_tuning_is_16_bytes_per_param():
    config = estimates.published_config("SmolLM2-135M-Instruct")
    n = estimates.param_count(config)
    table = estimates.training_memory_table(config, lora_params=1000, tokens=16)
    full = table.loc["full fine-tuning (bf16 + AdamW)"]
    state = full["weights GB"] + full["gradients GB"] + full["optimizer state GB"]
    assert state == pytest.approx(16 * n / 1e9)
    assert table.loc["QLoRA, NF4+DQ base", "weights GB"] < table.loc["LoRA, bf16 base", "weights GB"]
    assert (table["total GB"] > table["weights GB"]).all()


def test_q4_1_is_five_bits_per_weight():
    table = estimates.gguf_roundtrip_table(("Q8_0", "Q4_1"), shape=(64, 128))
    assert table.loc["Q4_1", "bits per weight"] == estimates.Q4_1_BITS == 5.0
    assert 0 < table.loc["Q8_0", "relative error"] < table.loc["Q4_1", "relative error"] < 0.2


def test_tokens_per_second_and_duration():
    assert compute.tokens_per_second([(2, 1000, 100.0), (4, 3000, 500.0)]) == 200.0
    assert compute.tokens_per_second([(2, 1000, 100.0)]) is None
    assert compute.duration(30) == "30 s" and compute.duration(600) == "10 min"
    assert compute.duration(7200) == "2.0 h"


def test_label_mask_trains_the_completion_only(tokenizer):
    from medreason.tokens import label_mask

    example = {
        "prompt": [{"role": "user", "content": "Which vitamin deficiency causes scurvy?"}],
        "completion": [{"role": "assistant", "content": "<think>\nCollagen.\n</think>\n\nVitamin C."}],
    }
    mask = label_mask(tokenizer, example)
    trained = [i for i, (_, carries) in enumerate(mask) if carries]
    assert trained == list(range(trained[0], trained[-1] + 1))
    assert "".join(t for t, _ in mask[: trained[0]]).rstrip().endswith("<|im_start|>assistant")
    assert "<|im_end|>" in [t for t, _ in mask[trained[-1] - 1 : trained[-1] + 1]]  # then the template's newline
    assert "scurvy" not in "".join(t for t, carries in mask if carries)


def test_plots_draw_what_they_are_handed():
    import matplotlib

    matplotlib.use("Agg")
    from medreason import plots

    fig = plots.loss_curves(
        {"loss": [(1, 3.0), (2, 2.5)], "eval_loss": [(0, 3.2), (2, 2.9)], "learning_rate": [(1, 1e-3), (2, 5e-4)]},
        title="run",
    )
    assert len(fig.axes[0].lines) == 2
    table = plots.runs_table(
        [
            {
                "run_id": "abcdef123456",
                "run_name": "r",
                "status": "FINISHED",
                "start_time": 0,
                "metrics": {"final_eval_loss": 2.9},
            }
        ]
    )
    assert table.loc["abcdef12", "final eval loss"] == 2.9
    assert plots.runs_table([]).empty


def test_tracking_reader_finds_runs(tmp_path):
    import mlflow

    from medreason import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.mlflow_run("exp", run_name="cpu", uri=uri) as run:
        for step, tokens in ((1, 100), (2, 300)):
            mlflow.log_metric("num_tokens", tokens, step=step)
    found = tracking.find_runs("exp", run_name="cpu", status="FINISHED", uri=uri)
    assert [r["run_id"] for r in found] == [run.info.run_id]
    points = tracking.metric_points(run.info.run_id, "num_tokens", uri=uri)
    assert [(s, v) for s, _, v in points] == [(1, 100), (2, 300)]
    assert tracking.find_runs("missing", uri=uri) == []


def test_recipe_tables_cover_every_shipped_recipe():
    """Every YAML in configs/ parses into the recipe table; the step estimate covers the SFT ones (GRPO's cost
    is mostly generation) and uses 6N for the QLoRA recipe's gradient checkpointing."""
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
    table = compute.recipe_table(recipes)
    assert list(table.columns) == [p.name for p in recipes]
    steps = compute.step_estimate_table(
        recipes,
        {"bundled": 100, estimates_dataset(): 1000},
        500,
        model_params={"SmolLM2-135M-Instruct": 1e8, "Qwen2.5-0.5B-Instruct": 5e8},
    )
    names = {recipe for recipe, _ in steps.index}
    assert names == {name for name in table.columns if table.loc["trainer", name] == "sft"}
    assert steps.loc[("qwen2.5-0.5b-qlora-gpu.yaml", 1), "FLOP / token"] == "6N"
    assert steps.loc[("smollm2-135m-cpu.yaml", 1), "FLOP / token"] == "4N"
    # tokens per example per dataset: the CPU recipe (bundled-mcq, 27 steps of 4) at 300 tokens an example
    per_dataset = compute.step_estimate_table(
        recipes,
        {"bundled-mcq": 108, "bundled": 180, estimates_dataset(): 1000},
        {"bundled-mcq": 300, "bundled": 600, estimates_dataset(): 600},
    )
    cpu = per_dataset.loc[("smollm2-135m-cpu.yaml", 1)]
    assert cpu["train rows"] == 108 and cpu["tokens (M)"] == round(27 * 4 * 300 / 1e6, 2) and cpu["epochs"] == 1.0


def estimates_dataset():
    from medreason.rows import HUB_DATASET

    return HUB_DATASET
