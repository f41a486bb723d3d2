"""GRPO end to end on the 2-layer random Llama of conftest: the recipe parses into TRL's GRPOConfig, two steps
continue an adapter and save a GRPO adapter that inference loads, the trainer's metrics (rewards per function,
KL, completion lengths, clip ratios) reach MLflow under the names the chapter reads, a run resumes from its
checkpoint into the same MLflow run, and bad input fails before any model loads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "smollm2-135m-grpo-cpu.yaml"
GPU_RECIPE = ROOT / "configs" / "qwen2.5-0.5b-grpo-gpu.yaml"
# what the chapter and the README read from MLflow; a TRL rename would silently empty the curves
LOGGED = {
    "reward",
    "rewards/correctness_reward/mean",
    "rewards/format_reward/mean",
    "kl",
    "completions/mean_length",
    "completions/clipped_ratio",
    "clip_ratio/region_mean",
}


def grpo_args(model_dir: Path, work: Path, *extra: str, steps: int = 2) -> list[str]:
    """The CPU recipe on the tiny model: 2 questions x 2 completions of 8 tokens per step."""
    return [
        "--config",
        str(RECIPE),
        "--model_name_or_path",
        str(model_dir),
        "--max_steps",
        str(steps),
        "--max_examples",
        "8",
        "--num_generations",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--max_completion_length",
        "8",
        "--save_steps",
        "1",
        "--num_threads",
        "1",  # on a shared 2-core machine a second thread mostly waits for the first
        "--output_dir",
        str(work / "out"),
        "--adapter_root",
        str(work / "grpo"),
        *extra,
    ]


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory, tiny_model_dir):
    """A medreason adapter folder for the tiny model (random LoRA weights, saved the way SFT saves)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medreason.adapter import save_adapter

    folder = tmp_path_factory.mktemp("sft") / "tiny"
    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    save_adapter(
        model,
        AutoTokenizer.from_pretrained(tiny_model_dir),
        folder,
        {"base_model": str(tiny_model_dir), "template": "think", "trainer": "sft", "metrics": {}, "config": {}},
    )
    return folder


# --------------------------------------------------------------------------------------------- recipes


def test_recipes_parse_into_grpo_config(monkeypatch):
    from trl import GRPOConfig

    from medreason.config import parse_config

    monkeypatch.chdir(ROOT)
    args, cfg, _ = parse_config(["--config", str(RECIPE)])
    assert isinstance(cfg, GRPOConfig) and args.trainer == "grpo"
    # the CPU recipe continues the facts recipe's adapter (the knowledge chapter's), on the facts it taught
    facts_args, _, _ = parse_config(["--config", str(ROOT / "configs" / "smollm2-135m-facts-cpu.yaml")])
    assert cfg.init_adapter == f"{facts_args.adapter_root}/SmolLM2-135M-Instruct"
    assert (
        args.adapter_root not in ("lora_adapter", facts_args.adapter_root) and args.facts_seed == facts_args.facts_seed
    )
    assert cfg.beta > 0 and cfg.num_generations >= 2 and cfg.generation_batch_size % cfg.num_generations == 0
    args, gpu, _ = parse_config(["--config", str(GPU_RECIPE)])
    assert gpu.num_generations >= 8 and gpu.activation_checkpointing and gpu.vllm_mode == "colocate"
    assert not gpu.use_vllm  # on only where vllm is installed (the recipe's header shows the override)


@pytest.mark.parametrize(
    "installed, ok",
    [
        ("0.22.0", True),
        ("0.31.0", True),
        ("0.24.0+cu129", True),  # a local tag is the same release
        ("0.21.1", False),
        ("0.32.0", False),
        (None, False),  # None: not installed
    ],
)
def test_use_vllm_outside_trls_range_is_one_line(installed, ok, monkeypatch):
    import importlib.metadata

    from medreason.config import parse_config
    from medreason.distributed import check_vllm
    from medreason.errors import UserError

    def version(name):
        assert name == "vllm"
        if installed is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.chdir(ROOT)
    args, cfg, model_args = parse_config(["--config", str(GPU_RECIPE), "--use_vllm", "true"])
    assert cfg.use_vllm  # the GRPO recipe's check calls check_vllm for it
    if ok:
        check_vllm()
        return
    with pytest.raises(UserError) as e:
        check_vllm()
    assert "\n" not in str(e.value) and 'pip install -e ".[vllm]"' in str(e.value)
    assert (installed or "not installed") in str(e.value)


def test_vllm_range_is_trls_and_the_extras():
    """medreason's check, pyproject's `vllm` extra and TRL's own `vllm` extra name one range."""
    import importlib.metadata
    import tomllib

    from medreason.distributed import VLLM_RANGE

    low, high = VLLM_RANGE
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    assert extra == [f"vllm>={low},<={high}"]
    trl = [r for r in importlib.metadata.requires("trl") if r.startswith("vllm") and 'extra == "vllm"' in r]
    assert trl and all(f"<={high}" in r and f">={low}" in r for r in trl), trl


def test_gpu_recipe_comment_counts_questions_from_its_values(monkeypatch):
    """The max_steps comment of the GPU recipe (questions drawn, passes over the pool) is what TRL 1.16 does with
    the recipe's values: one generation batch (per_device_train_batch_size x steps_per_generation completions,
    steps_per_generation defaulting to gradient_accumulation_steps) every steps_per_generation x num_iterations
    micro-batches. One process."""
    import re

    from medreason.config import parse_config
    from medreason.mcq import bundled_split

    monkeypatch.chdir(ROOT)
    _, cfg, _ = parse_config(["--config", str(GPU_RECIPE)])
    assert cfg.steps_per_generation == cfg.gradient_accumulation_steps  # TRL's default, which the comment assumes
    micro_batches = cfg.max_steps * cfg.gradient_accumulation_steps
    generations = micro_batches / (cfg.steps_per_generation * cfg.num_iterations)
    questions = generations * cfg.generation_batch_size / cfg.num_generations
    pool = len(bundled_split("pool"))
    line = next(l for l in GPU_RECIPE.read_text().splitlines() if l.startswith("max_steps:"))
    m = re.search(
        r"([\d,]+) questions drawn \((\d+) steps x (\d+) questions / (\d+) iterations\), "
        r"about ([\d.]+) passes over the (\d+)-question pool",
        line,
    )
    assert m, line
    drawn, steps, per_step, iterations, passes, pool_size = m.groups()
    assert int(drawn.replace(",", "")) == questions
    assert (int(steps), int(per_step), int(iterations)) == (
        cfg.max_steps,
        cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps // cfg.num_generations,
        cfg.num_iterations,
    )
    assert int(pool_size) == pool and passes == f"{questions / pool:.1f}"


def test_gpu_recipe_continues_a_qlora_adapter_on_a_4bit_base(monkeypatch):
    """The GPU recipe's --init_adapter is the QLoRA recipe's adapter, which learned its update on the NF4 base:
    the GRPO recipe loads the same base with the same quantization."""
    from medreason.config import parse_config

    monkeypatch.chdir(ROOT)
    _, _, grpo = parse_config(["--config", str(GPU_RECIPE)])
    _, _, qlora = parse_config(["--config", str(ROOT / "configs" / "qwen2.5-0.5b-qlora-gpu.yaml")])
    assert grpo.model_name_or_path == qlora.model_name_or_path
    for key in ("load_in_4bit", "bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage", "dtype"):
        assert getattr(grpo, key) == getattr(qlora, key), key
    assert "--init_adapter lora_adapter/Qwen2.5-0.5B-Instruct" in GPU_RECIPE.read_text()


def test_sft_recipe_still_parses_into_sft_config():
    from trl import SFTConfig

    from medreason.config import parse_config

    args, cfg, _ = parse_config(["--config", str(ROOT / "configs" / "smollm2-135m-cpu.yaml")])
    assert isinstance(cfg, SFTConfig) and args.trainer == "sft"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max_length", "512"], "unknown option '--max_length'"),  # an SFT key, refused by GRPOConfig
        (["--trainer", "ppo"], "trainer 'ppo' is unknown"),
        (["--num_generations", "3"], "divisible by num_generations"),
    ],
)
def test_bad_grpo_options_are_one_line(argv, message, tmp_path):
    from medreason.config import parse_config
    from medreason.errors import UserError

    with pytest.raises(UserError, match=message):
        parse_config(["--config", str(RECIPE), *argv])


def test_sft_key_in_a_grpo_recipe_names_the_trainer(tmp_path):
    from medreason.config import parse_config
    from medreason.errors import UserError

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.read_text() + "max_length: 512\n")
    with pytest.raises(UserError, match="unknown config key 'max_length' .a sft key: this recipe is for trainer grpo"):
        parse_config(["--config", str(recipe)])


def test_init_adapter_needs_grpo():
    from medreason.config import parse_config
    from medreason.errors import UserError

    with pytest.raises(UserError, match="unknown option '--init_adapter' .a grpo key: this recipe is for trainer sft"):
        parse_config(["--config", str(ROOT / "configs" / "smollm2-135m-cpu.yaml"), "--init_adapter", "x"])


def test_missing_init_adapter_fails_before_the_model_loads(in_tmp, tiny_model_dir, capsys, monkeypatch):
    import medreason.models
    from medreason.cli import main

    monkeypatch.setattr(medreason.models, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["train", *grpo_args(tiny_model_dir, in_tmp, "--init_adapter", str(in_tmp / "nope"))]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medreason: error:")]
    assert len(err) == 1 and "init_adapter" in err[0] and "does not exist" in err[0]


def test_init_adapter_of_another_base_is_refused(in_tmp, sft_adapter, smollm2_dir):
    from medreason.errors import UserError
    from medreason.train import train

    with pytest.raises(UserError, match="was trained on .* but model_name_or_path is"):
        train(grpo_args(smollm2_dir, in_tmp, "--init_adapter", str(sft_adapter)))


# --------------------------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, tiny_model_dir, sft_adapter):
    """Two GRPO steps from the tiny SFT adapter, then --resume to a third step."""
    from medreason.train import train

    work = tmp_path_factory.mktemp("grpo-run")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        first = train(grpo_args(tiny_model_dir, work, "--init_adapter", str(sft_adapter)))
        first_meta = json.loads((first.adapter_dir / "medreason.json").read_text())
        resumed = train(grpo_args(tiny_model_dir, work, "--init_adapter", str(sft_adapter), "--resume", steps=3))
    return work, uri, first, first_meta, resumed


def test_two_steps_save_a_grpo_adapter(grpo_run, sft_adapter, tiny_model_dir):
    from medreason.adapter import read_adapter
    from medreason.fingerprint import adapter_fingerprint as adapter_hash

    work, _, first, meta, _ = grpo_run
    assert first.global_step == 2
    assert first.adapter_dir == work / "grpo" / tiny_model_dir.name
    assert meta["trainer"] == "grpo" and meta["init_adapter"] == str(sft_adapter)
    assert meta["init_adapter_sha256"] == adapter_hash(sft_adapter)
    assert meta["base_model"] == str(tiny_model_dir)
    assert read_adapter(first.adapter_dir)["peft_config"]["r"] == 4  # the SFT adapter continued, not a new LoRA
    assert not (first.adapter_dir / "ref").exists()  # TRL's frozen reference copy is not saved
    card = (first.adapter_dir / "README.md").read_text()
    assert "GRPO" in card and str(sft_adapter) in card


def test_trainer_metrics_reach_mlflow(grpo_run):
    from medreason.tracking import client

    _, uri, first, _, resumed = grpo_run
    run = client(uri).get_run(first.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert LOGGED <= set(run.data.metrics), sorted(LOGGED - set(run.data.metrics))
    history = client(uri).get_metric_history(first.mlflow_run_id, "rewards/correctness_reward/mean")
    assert sorted(m.step for m in history) == [1, 2, 3]  # one point per step, the resumed step included
    assert all(0.0 <= m.value <= 1.0 for m in history)
    assert run.data.params["trainer"] == "grpo" and run.data.params["beta"] == "0.04"
    assert resumed.mlflow_run_id == first.mlflow_run_id  # --resume reopens the same run


def test_resume_continues_from_the_checkpoint(grpo_run):
    work, _, _, _, resumed = grpo_run
    assert resumed.global_step == 3
    steps = [h["step"] for h in resumed.log_history if "reward" in h]
    assert steps == [1, 2, 3]  # steps 1-2 come from the checkpoint's state, step 3 was trained now


def test_grpo_adapter_loads_for_inference(grpo_run):
    from medreason.session import load_for_inference

    _, _, _, _, resumed = grpo_run
    session = load_for_inference(str(resumed.adapter_dir))
    assert session.adapter == str(resumed.adapter_dir) and session.template == "think"
    assert set(session.model.peft_config) == {"default"}


def test_new_lora_from_the_base_model(in_tmp, tiny_model_dir, monkeypatch):
    """Without init_adapter: a fresh LoRA from the recipe's LoRA keys; the reference is the base model."""
    from medreason.train import train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{in_tmp / 'mlflow.db'}")
    result = train(grpo_args(tiny_model_dir, in_tmp, "--init_adapter", "", "--save_strategy", "no", steps=1))
    meta = json.loads((result.adapter_dir / "medreason.json").read_text())
    assert meta["trainer"] == "grpo" and meta["init_adapter"] is None
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == 16
