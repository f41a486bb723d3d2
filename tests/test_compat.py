"""medreason.compat: every reach into a library's private behaviour works on the installed versions, and on an
unverified version falls back (or fails) in one line instead of a traceback from inside the library."""

import argparse
import logging
import types

import pytest

from medreason import compat, dense_head


def test_every_reach_is_verified_on_the_installed_versions():
    """A bumped pin (requirements.lock) fails here until each reach is checked again on the new release and its
    version added to compat.REACHES."""
    unverified = {
        name: f"{r.library} {compat.version_of(r.library)} (checked {r.checked})"
        for name, r in compat.REACHES.items()
        if not compat.verified(name)
    }
    assert not unverified, unverified


@pytest.mark.parametrize(
    "installed, expected", [("1.16.0", True), ("1.16.3", True), ("1.17.0", False), ("1.1", False), ("11.16.0", False)]
)
def test_verified_matches_release_prefixes(installed, expected):
    assert compat.verified("dense_lm_head", installed) is expected


def test_no_private_names_outside_compat():
    """The private names compat wraps are reached nowhere else in the package."""
    import re
    from pathlib import Path

    names = [
        r"\b_commit_hash",
        r"(?<!\w)_name_or_path",
        r"_is_mkldnn_bf16_supported",
        r"\._actions\b",
        r"trainer\.state =",
        r'delete_adapter\("ref"\)',
        r"FusedCausalLMOutput",
        r"trl\.data_utils",
    ]
    package = Path(compat.__file__).parent
    offenders = [
        f"{p.name}: {n}"
        for p in package.glob("*.py")
        if p.name != "compat.py"
        for n in names
        if re.search(n, p.read_text(encoding="utf-8"))
    ]
    assert not offenders, offenders


def test_cpu_bf16_without_the_private_op_is_false_and_logged(monkeypatch, caplog):
    import torch

    assert isinstance(compat.cpu_supports_bf16(), bool)
    monkeypatch.setattr(torch, "ops", types.SimpleNamespace())
    with caplog.at_level(logging.INFO, logger="medreason.compat"):
        assert compat.cpu_supports_bf16() is False
    assert any("_is_mkldnn_bf16_supported" in r.getMessage() and "fp32" in r.getMessage() for r in caplog.records)


def test_hub_revision_reads_the_commit_hash():
    model = types.SimpleNamespace(config=types.SimpleNamespace(_commit_hash="abc123"))
    assert compat.hub_revision(model) == "abc123"
    assert compat.hub_revision(types.SimpleNamespace(config=types.SimpleNamespace())) is None


def test_set_name_or_path(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    compat.set_name_or_path(model, "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert model.config._name_or_path == model.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model.config.to_dict()["_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(RuntimeError, match="_name_or_path"):
        compat.set_name_or_path(types.SimpleNamespace(config=types.SimpleNamespace()), "x")


def test_load_trainer_state_takes_the_checkpoints(tmp_path):
    from transformers import TrainerState

    TrainerState(global_step=27, max_steps=27).save_to_json(str(tmp_path / "trainer_state.json"))
    trainer = types.SimpleNamespace(state=TrainerState())
    compat.load_trainer_state(trainer, tmp_path)
    assert trainer.state.global_step == 27


def test_drop_reference_adapter():
    deleted = []
    model = types.SimpleNamespace(peft_config={"default": 1, "ref": 2}, delete_adapter=deleted.append)
    compat.drop_reference_adapter(model)
    compat.drop_reference_adapter(types.SimpleNamespace(peft_config={"default": 1}, delete_adapter=deleted.append))
    assert deleted == ["ref"]


# the module of each method's TRL trainer; both subclass transformers' Trainer, which logs the loss and the
# learning rate and names its evaluation metrics `eval_<name>`
TRAINER_MODULES = {"sft": "trl.trainer.sft_trainer", "grpo": "trl.trainer.grpo_trainer"}


def _source(module: str) -> str:
    import importlib.util
    from pathlib import Path

    return Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")


def _logged_names(method: str) -> set[str]:
    """The metric names the installed trainer of `method` logs, read from its source: TRL's
    `self._metrics[mode]["name"]` (as `name` in training and `eval_name` in evaluation; `rewards/{reward_func_name}/mean`
    once for each reward function medreason's GRPO recipe passes), and transformers' `logs["name"] = ...` and
    `metrics[f"{metric_key_prefix}_name"]` under its default prefix, "eval"."""
    import re

    from medreason.rewards import correctness_reward, format_reward

    rewards = [f.__name__ for f in (correctness_reward, format_reward)]  # TRL names a function's metrics after it
    trl = re.findall(r'_metrics\[mode\]\[f?"([^"]+)"\]', _source(TRAINER_MODULES[method]))
    trl = {n.replace("{reward_func_name}", r) for n in trl for r in rewards}
    transformers = _source("transformers.trainer")
    assert 'metric_key_prefix: str = "eval"' in transformers  # evaluation's metrics are eval_<name>
    return (
        trl
        | {f"eval_{n}" for n in trl}
        | set(re.findall(r'\blogs\["(\w+)"\]\s*=', transformers))
        | {f"eval_{n}" for n in re.findall(r'metrics\[f"\{metric_key_prefix\}_(\w+)"\]', transformers)}
    )


@pytest.mark.parametrize("method", sorted(compat.TRL_LOG_KEYS))
def test_every_log_key_medreason_reads_is_one_trl_logs(method):
    """A TRL release that renames a metric fails here, by name, instead of emptying a summary or a chapter's plot:
    each name of compat.TRL_LOG_KEYS (what compat.log_key lets medreason read) is logged by the installed trainer."""
    missing = sorted(set(compat.TRL_LOG_KEYS[method]) - _logged_names(method))
    assert not missing, (
        f"TRL {compat.version_of('trl')}'s {method} trainer no longer logs {missing}: find their new names in "
        f"{TRAINER_MODULES[method]} and update compat.TRL_LOG_KEYS and what reads them"
    )


def test_the_grpo_summary_reads_only_checked_log_keys():
    """What the GRPO recipe's summary reads goes through compat.log_key, which refuses a name it has not checked
    (a KeyError at the end of a run): every such name is among the checked ones."""
    from medreason.recipes.grpo import SERIES, ZERO_STD

    assert {*SERIES.values(), ZERO_STD} <= set(compat.TRL_LOG_KEYS["grpo"])
    assert [compat.log_key(k) for k in sorted(SERIES.values())] == sorted(SERIES.values())


def test_log_key_refuses_an_unchecked_name():
    assert compat.log_key("frac_reward_zero_std") == "frac_reward_zero_std"
    with pytest.raises(KeyError, match="'rewards/invented_reward/mean' is not among the TRL log keys"):
        compat.log_key("rewards/invented_reward/mean")


def _trl_log(logs, start_time=None):  # what TRL 1.16's SFTTrainer.log does with its token metrics
    logs.update({"eval_mean_token_accuracy": 0.5, "eval_entropy": 1.0})


def test_prefixed_log_names_metrics_after_the_split(monkeypatch, caplog):
    logs = {"test_loss": 2.0}
    compat.prefixed_log(_trl_log, logs, "test")
    assert logs == {"test_loss": 2.0, "test_mean_token_accuracy": 0.5, "test_entropy": 1.0}
    monkeypatch.setattr(compat, "verified", lambda name, installed=None: False)
    logs = {"test_loss": 2.0}
    with caplog.at_level(logging.INFO, logger="medreason.compat"):
        compat.prefixed_log(_trl_log, logs, "test")
    assert "eval_mean_token_accuracy" in logs  # TRL's own names, and a line saying why
    assert any("TRL's own metric names" in r.getMessage() for r in caplog.records)


def test_dense_head_unverified_keeps_trls(monkeypatch, caplog):
    monkeypatch.setattr(compat, "verified", lambda name, installed=None: False)
    model = object()  # untouched: the check comes before anything reads the model
    with caplog.at_level(logging.INFO, logger="medreason.compat"):
        dense_head.use_dense_lm_head(model)
    assert any("keeping TRL's fused head" in r.getMessage() for r in caplog.records)


def test_float_fields_and_without_actions(caplog):
    parser = argparse.ArgumentParser()
    parser.add_argument("--learning_rate", type=float)
    parser.add_argument("--lora_r", type=int)
    assert compat.float_fields(parser) == {"learning_rate"}
    with caplog.at_level(logging.INFO, logger="medreason.compat"):
        assert compat.float_fields(types.SimpleNamespace()) == set()
    assert caplog.records


@pytest.mark.parametrize(
    "message, expected",
    [
        ("argument --lora_r/--lora-r: invalid int value: '8.5'", "--lora_r must be an integer, got 8.5"),
        (
            "argument --learning_rate/--learning-rate: invalid float value: 'fast'",
            "--learning_rate must be a number, got fast",
        ),
        ("unrecognized arguments: --x", "bad option: unrecognized arguments: --x (see `medreason train --help`)"),
    ],
)
def test_bad_option_message(message, expected):
    assert compat.bad_option_message(message) == expected


def test_real_argparse_error_text_is_reworded():
    """The wording compat parses is argparse's own on this Python."""
    from medreason.config import parse_config
    from medreason.errors import UserError

    with pytest.raises(UserError, match=r"^--lora_r must be an integer, got 8\.5$"):
        parse_config(["--config", "configs/smollm2-135m-cpu.yaml", "--lora_r", "8.5"])
