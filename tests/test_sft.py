"""The SFT recipe (medreason.recipes.sft) end to end, on the 2-layer random Llama of conftest (real SmolLM2 tokenizer).

What is checked: one seed gives one loss curve; the adapter folder (safetensors, tokenizer, model card,
medreason.json) loads with plain PEFT and is replaced atomically; QLoRA (bitsandbytes 4-bit) on the CPU; every
shipped recipe parses and documents its own command; precision reaches the accelerator; the dense LM head
equals TRL's. The runs are shortened (max_length 256, a few steps).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from helpers import (
    LORA_MODULES,
    NO_EVAL_NO_SAVE,
    RECIPE,
    ROOT,
    _mlflow_left_as_found,  # noqa: F401  (autouse: MLflow is left as found after each test)
    folder_digest,
    leftovers,
    loss_curve,
    run_status,
    tiny_args,
)

# --------------------------------------------------------------------------------------------- three runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Run A and run B with the same seed (B's adapter replaces A's in lora/), run C with another seed."""
    from medreason.train import train

    work = tmp_path_factory.mktemp("train-runs")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # MLflow's artifacts (./mlruns) land here, not in the repository
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        a = train(tiny_args(tiny_model_dir, work, "--output_dir", str(work / "out-a")))
        a_adapter = folder_digest(a.adapter_dir)
        b = train(tiny_args(tiny_model_dir, work, "--output_dir", str(work / "out-b")))
        c = train(
            tiny_args(
                tiny_model_dir,
                work,
                "--output_dir",
                str(work / "out-c"),
                "--seed",
                "7",
                "--adapter_root",
                str(work / "lora-c"),
            )
        )
    return SimpleNamespace(
        work=work, uri=uri, a=a, b=b, c=c, a_adapter=a_adapter, name=tiny_model_dir.name, model_dir=tiny_model_dir
    )


@pytest.mark.slow
def test_same_seed_same_loss_curve_other_seed_other_curve(runs):
    a, b, c = (loss_curve(runs.uri, r.mlflow_run_id) for r in (runs.a, runs.b, runs.c))
    assert [step for step, _ in a] == [1, 2, 3, 4]  # logging_steps 1, max_steps 4
    assert a == b
    assert a != c  # the seed matters: data order and adapter initialisation
    assert runs.a.global_step == runs.b.global_step == 4
    assert runs.a.metrics["train_loss"] == runs.b.metrics["train_loss"]
    assert "eval_loss" in runs.a.metrics  # eval_steps 2 and the final evaluation ran
    for r in (runs.a, runs.b, runs.c):
        assert run_status(runs.uri, r.mlflow_run_id) == "FINISHED"
    import mlflow

    params = mlflow.MlflowClient(runs.uri).get_run(runs.a.mlflow_run_id).data.params
    assert params["lora_r"] == "16" and params["seed"] == "42"
    # the trainer's MLflow callback logs its own params too: none of them may be refused
    assert params["lr_scheduler_type"] == "cosine"
    assert "vocab_size" in params and "logging_steps" in params


@pytest.mark.slow
def test_adapter_folder_is_complete_and_loads_with_plain_peft(runs):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    root = runs.work / "lora"
    final = root / runs.name
    assert runs.b.adapter_dir == final
    names = {p.name for p in final.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "medreason.json",
    } <= names
    assert not [n for n in names if n.endswith(".bin")]
    assert [p.name for p in root.iterdir()] == [runs.name]  # no .<name>.tmp-* nor .<name>.old left
    card = (final / "README.md").read_text()
    assert "Not for clinical use" in card and f"base_model: {runs.model_dir}" in card
    meta = json.loads((final / "medreason.json").read_text())
    assert meta["base_model"] == str(runs.model_dir) and meta["template"] == "think"
    assert meta["config"]["output_dir"].endswith("out-b")  # run B replaced run A's adapter
    assert meta["vocab_size"] == 49152
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["r"] == 16 and set(config["target_modules"]) == LORA_MODULES

    # same seed, same weights; the adapter is the model at the last step (= the last checkpoint)
    saved = load_file(final / "adapter_model.safetensors")
    assert folder_digest(final)["adapter_model.safetensors"] == runs.a_adapter["adapter_model.safetensors"]
    last = load_file(runs.work / "out-b" / "checkpoint-4" / "adapter_model.safetensors")
    assert saved.keys() == last.keys() and all(torch.equal(saved[k], last[k]) for k in saved)
    other = load_file(runs.c.adapter_dir / "adapter_model.safetensors")
    assert any(not torch.equal(saved[k], other[k]) for k in saved)

    base = AutoModelForCausalLM.from_pretrained(runs.model_dir)
    model = PeftModel.from_pretrained(base, final)
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved) == 2 * 2 * len(LORA_MODULES)  # A and B, 2 layers, 7 modules
    b_weights = [v for k, v in loaded.items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in b_weights)  # trained: B starts at zero
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 49152) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_failed_save_keeps_previous_adapter(runs, monkeypatch):
    """Retraining that fails while writing the adapter leaves the previous adapter untouched."""
    from peft import PeftModel

    from medreason.train import train

    monkeypatch.chdir(runs.work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", runs.uri)
    root = runs.work / "lora"
    before = folder_digest(root / runs.name)
    original = PeftModel.save_pretrained

    def half_then_fail(self, save_directory, *a, **kw):
        original(self, save_directory, *a, **kw)
        if Path(save_directory).name.startswith("."):  # the final save, not a checkpoint
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(PeftModel, "save_pretrained", half_then_fail)
    out = runs.work / "out-d"
    with pytest.raises(OSError, match="No space left"):
        train(tiny_args(runs.model_dir, runs.work, "--output_dir", str(out), *NO_EVAL_NO_SAVE, steps=1))
    assert folder_digest(root / runs.name) == before
    assert leftovers(root) == []
    assert run_status(runs.uri, (out / "mlflow_run_id").read_text().strip()) == "FAILED"


def test_failed_swap_puts_previous_adapter_back(in_tmp, monkeypatch, tiny_model_dir):
    """A failure between moving the old adapter aside and moving the new one in restores the old one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import medreason.io as mio
    from medreason.adapter import save_adapter

    name = tiny_model_dir.name
    root = in_tmp / "lora"
    final = root / name
    final.mkdir(parents=True)
    (final / "adapter_model.safetensors").write_bytes(b"the previous adapter")
    (final / "adapter_config.json").write_text('{"r": 16}')
    before = folder_digest(final)

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, target_modules=["q_proj"])
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    meta = {"base_model": str(tiny_model_dir), "metrics": {"train_loss": 1.0}}
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if Path(src).name.startswith(f".{name}.tmp-"):
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(mio.os, "replace", replace)
    with pytest.raises(OSError, match="Input/output"):
        save_adapter(model, tokenizer, final, meta)
    monkeypatch.undo()
    assert any(src == name and dst.startswith(f".{name}.old-") for src, dst in calls)  # moved aside first
    assert folder_digest(final) == before
    assert leftovers(root) == []

    # and a save that works replaces it, leaving nothing beside it
    assert save_adapter(model, tokenizer, final, meta) == final
    assert (final / "adapter_model.safetensors").read_bytes() != b"the previous adapter"
    assert (final / "medreason.json").is_file() and leftovers(root) == []
    plain = in_tmp / "plain"
    plain.mkdir()
    assert stat.S_IMODE(final.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)  # not mkdtemp's 0700


# --------------------------------------------------------------------------------------------- QLoRA, DDP


@pytest.mark.slow
def test_qlora_4bit_on_cpu(in_tmp, monkeypatch, tiny_model_dir):
    import bitsandbytes as bnb

    import medreason.models
    from medreason.train import train

    loaded = []
    original = medreason.models.load_model_and_tokenizer

    def spy(*a, **kw):
        model, tokenizer = original(*a, **kw)
        loaded.append(model)
        return model, tokenizer

    monkeypatch.setattr(medreason.models, "load_model_and_tokenizer", spy)
    result = train(
        tiny_args(
            tiny_model_dir,
            in_tmp,
            "--load_in_4bit",
            "true",
            "--use_bnb_nested_quant",
            "true",
            "--bnb_4bit_quant_type",
            "nf4",
            *NO_EVAL_NO_SAVE,
            steps=2,
        )
    )
    model = loaded[0]
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * len(LORA_MODULES)  # every linear layer of both blocks is 4-bit
    q = model.config.quantization_config
    q = q.to_dict() if hasattr(q, "to_dict") else q
    assert q["load_in_4bit"] and q["bnb_4bit_quant_type"] == "nf4" and q["bnb_4bit_use_double_quant"]
    assert result.global_step == 2
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    meta = json.loads((result.adapter_dir / "medreason.json").read_text())
    assert meta["config"]["load_in_4bit"] is True and meta["config"]["bnb_4bit_quant_type"] == "nf4"


# --------------------------------------------------------------------------------------------- shipped recipes


RECIPES = sorted((ROOT / "configs").glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def _header_commands(path: Path) -> list[str]:
    """The commands in the recipe's leading comment block."""
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if re.search(r"medreason train|accelerate launch|torchrun", text):
            commands.append(text)
    return commands


def _check_documented_command(command: str):
    """The `train` part of a documented command parses, and any accelerate config it names exists."""
    from medreason.config import parse_config

    words = shlex.split(command.split(" #")[0])
    if "--config_file" in words:
        assert (ROOT / words[words.index("--config_file") + 1]).is_file(), command
    assert "train" in words, command
    parse_config(words[words.index("train") + 1 :])  # overrides included, as written


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_parses_and_documents_its_command(recipe, monkeypatch):
    from medreason.config import parse_config

    monkeypatch.chdir(ROOT)  # the documented commands use paths relative to the repository
    args, sft, model_args = parse_config(["--config", str(recipe)])
    assert model_args.model_name_or_path and model_args.use_peft
    commands = _header_commands(recipe)
    assert any(f"--config configs/{recipe.name}" in c for c in commands), (
        f"{recipe.name}: the first comment lines must show the command that runs it"
    )
    for command in commands:
        _check_documented_command(command)


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=[p.name for p in ACCELERATE_CONFIGS])
def test_accelerate_config_is_yaml_with_distributed_type(config, monkeypatch):
    data = yaml.safe_load(config.read_text())
    assert isinstance(data, dict) and data.get("distributed_type")
    monkeypatch.chdir(ROOT)
    commands = [c for c in _header_commands(config) if f"--config_file configs/accelerate/{config.name}" in c]
    assert commands, f"{config.name}: the first comment lines must show the accelerate launch command"
    for command in commands:
        _check_documented_command(command)


# --------------------------------------------------------------------------------------------- CPU speed paths


@pytest.mark.parametrize(
    "argv, precision, dtype",
    [
        ([], "bf16", "bfloat16"),  # adapter under bf16: frozen base weights in bf16
        (["--dtype", "float32"], "bf16", "float32"),  # an explicit dtype is kept
        (["--use_peft", "false"], "bf16", "float32"),  # full fine-tuning keeps fp32 master weights
        ([], "fp32", "float32"),
    ],
)
def test_precision_reaches_the_accelerator_and_the_weights(argv, precision, dtype):
    """Regression: bf16 set after parsing never reached TrainingArguments.mixed_precision, and TRL's default
    dtype kept fp32 weights, so a 'bf16' run silently trained in fp32 at a third of the speed."""
    from medreason.config import parse_config

    args, sft, model_args = parse_config(["--config", str(RECIPE), "--precision", precision, *argv])
    assert sft.bf16 is (precision == "bf16")
    assert sft.mixed_precision == ("bf16" if precision == "bf16" else "no")
    assert model_args.dtype == dtype


@pytest.mark.parametrize("loss_outputs", ["log_probs", "entropy", "is_top1"])
def test_dense_lm_head_matches_trls_fused_head(loss_outputs, tiny_model_dir):
    """The dense head gives TRL's per-token log-probabilities, entropy and top-1 hits (zero where the label is
    -100), the same loss, and the same gradients."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from medreason.dense_head import use_dense_lm_head

    def model(dense: bool):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))
        peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        if dense:
            use_dense_lm_head(peft)
        assert getattr(peft.get_base_model().forward, "dense_lm_head", False) is dense
        return peft

    torch.manual_seed(1)
    input_ids = torch.randint(0, 49152, (2, 12))
    labels = input_ids.clone()
    labels[:, :4] = -100  # prompt
    labels[1, 9:] = -100  # padding
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    results = []
    for dense in (False, True):
        m = model(dense)
        out = m(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
        field = getattr(out, loss_outputs)
        out.loss.backward()
        grads = [p.grad.clone() for p in m.parameters() if p.requires_grad]
        results.append((out.loss.detach(), field.detach().float(), out.label_mask, grads))
    (loss_f, field_f, mask_f, grads_f), (loss_d, field_d, mask_d, grads_d) = results
    assert torch.equal(mask_f, mask_d)
    torch.testing.assert_close(loss_d, loss_f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(field_d, field_f, rtol=1e-4, atol=1e-4)
    assert (field_d[~mask_d] == 0).all()
    for g_d, g_f in zip(grads_d, grads_f):
        torch.testing.assert_close(g_d, g_f, rtol=1e-4, atol=1e-5)


def test_dense_lm_head_leaves_generation_alone(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from medreason.dense_head import use_dense_lm_head

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4]])
    before = model.generate(ids, max_new_tokens=5, do_sample=False)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    use_dense_lm_head(model)
    assert torch.equal(model.generate(ids, max_new_tokens=5, do_sample=False), before)
