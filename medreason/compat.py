"""Every place where medreason reaches into a library's private or undocumented behaviour, in one module.

    from medreason import compat
    compat.REACHES                      # each reach: what it touches, the versions it was checked against
    with compat.quiet_library_warnings():   # what `medreason <command>` runs inside
        ...

A reach is guarded: on a version it was not checked against it either falls back to documented behaviour with
one log line, or raises one clear line, never a traceback from inside the library. tests/test_compat.py tests
each one. Nothing else in medreason touches a private name of transformers, TRL, PEFT, torch or argparse.

| reach | library | checked | on other versions |
|---|---|---|---|
| dense LM head: wraps TRL's fused-head forward, builds `FusedCausalLMOutput` | TRL | 1.16 | TRL's fused head, logged |
| SFT metric names: TRL's `SFTTrainer.log` adds `eval_*` with `logs.update` | TRL | 1.16 | unprefixed names, logged |
| `Trainer.state` replaced by a checkpoint's (resumed at max_steps) | transformers | 5.24 | documented `TrainerState.load_from_json` |
| TRL's frozen `"ref"` adapter deleted before saving (GRPO, init_adapter) | TRL | 1.16 | nothing to delete |
| `argparse.ArgumentParser._actions` (float fields of a recipe) | argparse | 3.11-3.14 | no conversion: argparse checks |
| argparse's error text ("invalid int value") reworded | argparse | 3.11-3.14 | argparse's own words |
| `config._commit_hash` (the Hub revision a model loaded from) | transformers | 5.24 | revision not recorded, logged |
| `config._name_or_path` (the id PEFT writes into adapter_config.json) | transformers | 5.24 | raises one line |
| `torch.ops.mkldnn._is_mkldnn_bf16_supported` (native bf16 CPU) | torch | 2.13 | False: fp32, logged |
| warnings silenced by exact message (`LIBRARY_NOISE`) | transformers, PEFT, TRL, torch | listed | shown |
| TRL's log keys (`TRL_LOG_KEYS`: reward, kl, frac_reward_zero_std, num_tokens...) | TRL | 1.16 | read as named, logged |
| TRL's experimental `rollout_func` (GRPO rollouts decoded by medreason.decode) | TRL | 1.16 | TRL's own generate |
| the completion boundary TRL's SFTTrainer tokenises with (medreason.tokens) | TRL | 1.16 | the same rule, logged |
| lm-eval's per-sample fields (`doc`, `filtered_resps`, `doc_id`) | lm-eval | 0.4 | one clear error |
"""

from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Noise:
    category: type[Warning]
    message: str  # a regular expression matched at the start of the warning's text
    checked: str  # the library versions it was seen and checked with
    why: str


LIBRARY_NOISE = (
    Noise(
        FutureWarning,
        r"`is_gradient_checkpointing` is deprecated",
        "transformers 5.24.0, peft 0.21.2, trl 1.16.0",
        "PEFT (PeftModel.__init__) and TRL read transformers' deprecated alias whenever they wrap a model; "
        "medreason itself uses activation_checkpointing",
    ),
    Noise(
        UserWarning,
        r"Could not find a config file in .* - will assume that the vocabulary was not modified",
        "peft 0.21.2",
        "PEFT's save_pretrained looks the base model's config up by its Hub id to see whether the embeddings "
        "were resized; offline it cannot. medreason's LoRA never resizes them and saves the tokenizer beside "
        "the adapter",
    ),
    Noise(
        UserWarning,
        r"You are using 'rollout_func', which is an experimental feature",
        "trl 1.16.0",
        "medreason hands GRPO's rollouts to its own decode loop through this documented, experimental argument "
        "(medreason.rollouts); the reach is listed in REACHES and guarded by version",
    ),
    Noise(
        UserWarning,
        r"'pin_memory' argument is set as true but no accelerator is found",
        "torch 2.13.0, transformers 5.24.0",
        "transformers' Trainer asks for pinned memory by default; on a CPU torch ignores it and warns",
    ),
)


@contextmanager
def quiet_library_warnings():
    """Within this block, the warnings of LIBRARY_NOISE are dropped; every other warning is shown as usual."""
    with warnings.catch_warnings():
        for noise in LIBRARY_NOISE:
            warnings.filterwarnings("ignore", message=noise.message, category=noise.category)
        yield


# --------------------------------------------------------------------------------------------- versions


@dataclass(frozen=True)
class Reach:
    name: str
    library: str  # the distribution whose version is checked
    checked: tuple[str, ...]  # release prefixes it was verified on ("1.16" covers 1.16.x)


REACHES = {
    "dense_lm_head": Reach("dense LM head over TRL's fused-head forward", "trl", ("1.16",)),
    "sft_metric_prefix": Reach("SFTTrainer.log's eval_* metrics renamed to the evaluated split", "trl", ("1.16",)),
    "trainer_state": Reach("Trainer.state replaced by a checkpoint's TrainerState", "transformers", ("5.24",)),
    "grpo_ref_adapter": Reach("TRL's frozen 'ref' adapter dropped before saving", "trl", ("1.16",)),
    "argparse_actions": Reach(
        "argparse.ArgumentParser._actions and its error text", "python", ("3.11", "3.12", "3.13", "3.14")
    ),
    "commit_hash": Reach("config._commit_hash: the Hub revision a model loaded from", "transformers", ("5.24",)),
    "name_or_path": Reach("config._name_or_path: the model id PEFT records", "transformers", ("5.24",)),
    "mkldnn_bf16": Reach("torch.ops.mkldnn._is_mkldnn_bf16_supported", "torch", ("2.13",)),
    "trl_log_keys": Reach("the names TRL logs its metrics under", "trl", ("1.16",)),
    "rollout_func": Reach("GRPOTrainer's experimental rollout_func", "trl", ("1.16",)),
    "completion_boundary": Reach("where SFTTrainer starts the completion after tokenising", "trl", ("1.16",)),
    "lm_eval_samples": Reach("lm-eval's per-sample fields (doc, doc_id, filtered_resps)", "lm_eval", ("0.4",)),
    "argparse_error_text": Reach(
        "argparse's error messages (reworded to one line)", "python", ("3.11", "3.12", "3.13", "3.14")
    ),
}


# --------------------------------------------------------------------------------------------- TRL's log keys

# The metric names TRL 1.16's trainers log, as medreason reads them (the GRPO summary, the progress line, the
# book's plots). tests/test_compat.py checks every name here against what the installed trainers' source logs, and
# tests/test_grpo.py (slow) finds the chapter's curves in a tiny run's MLflow metrics: a rename fails there instead
# of emptying a plot.
TRL_LOG_KEYS = {
    "sft": ("loss", "learning_rate", "num_tokens", "mean_token_accuracy", "eval_loss"),
    "grpo": (
        "loss",
        "reward",
        "kl",
        "num_tokens",
        "frac_reward_zero_std",
        "rewards/correctness_reward/mean",
        "rewards/format_reward/mean",
        "completions/mean_length",
        "completions/clipped_ratio",
    ),
}


def log_key(name: str) -> str:
    """`name` as TRL logs it; a name medreason has not checked against TRL is a programming error."""
    if not any(name in keys for keys in TRL_LOG_KEYS.values()):
        raise KeyError(f"{name!r} is not among the TRL log keys medreason checks (medreason.compat.TRL_LOG_KEYS)")
    if not verified("trl_log_keys"):
        unverified("trl_log_keys", f"reading {name!r} as TRL 1.16 named it")
    return name


def version_of(library: str) -> str:
    if library == "python":
        import platform

        return platform.python_version()
    from importlib.metadata import version

    return version(library)


def verified(reach: str, installed: str | None = None) -> bool:
    """Whether the installed library is a release the reach was checked against."""
    r = REACHES[reach]
    installed = installed if installed is not None else version_of(r.library)
    return any(installed == v or installed.startswith(v + ".") for v in r.checked)


def unverified(reach: str, fallback: str):
    r = REACHES[reach]
    log.info(
        "%s: checked on %s %s, this is %s %s: %s",
        r.name,
        r.library,
        ", ".join(r.checked),
        r.library,
        version_of(r.library),
        fallback,
    )


# --------------------------------------------------------------------------------------------- torch


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX), where bf16 training pays off. torch has no
    public query for it; its oneDNN op is private (checked on torch 2.13). Missing: False (fp32), with a log line."""
    import torch

    query = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if query is None or not torch.backends.mkldnn.is_available():
        if query is None:
            unverified("mkldnn_bf16", "no such op: assuming no native bf16 (fp32 is the fast path)")
        return False
    try:
        return bool(query())
    except RuntimeError:
        return False


# --------------------------------------------------------------------------------------------- transformers


def hub_revision(model) -> str | None:
    """The commit a Hub model's files came from; transformers keeps it on the config as `_commit_hash`."""
    revision = getattr(getattr(model, "config", None), "_commit_hash", None)
    if revision is None and model is not None and not verified("commit_hash"):
        unverified("commit_hash", "the Hub revision is not recorded")
    return revision


def set_name_or_path(model, name: str):
    """Record `name` (a Hub id) as where the model came from: PEFT writes `config._name_or_path` into
    adapter_config.json as base_model_name_or_path, and export writes it into the merged config."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_name_or_path"):
        raise RuntimeError(
            f"this transformers ({version_of('transformers')}) has no config._name_or_path: "
            f"medreason cannot record the base model's id (checked on transformers 5.24)"
        )
    config._name_or_path = name
    if hasattr(model, "name_or_path"):
        model.name_or_path = name


def load_trainer_state(trainer, checkpoint):
    """Take a checkpoint's TrainerState as the trainer's own (a run resumed from its final checkpoint is not
    trained one step further: Trainer.train would take a step before it checks max_steps). `trainer.state` is a
    plain attribute in transformers 5.24; on other versions the state is still loaded the documented way."""
    from pathlib import Path

    from transformers import TrainerState

    if not verified("trainer_state"):
        unverified("trainer_state", "replacing trainer.state anyway (TrainerState.load_from_json is public)")
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))


# --------------------------------------------------------------------------------------------- TRL


def drop_reference_adapter(model):
    """GRPO continuing an adapter: TRL 1.16 copies it into a frozen adapter named "ref" for the KL term. It is not
    part of the trained adapter, so it is deleted before saving. Other versions: deleted if present, logged."""
    if "ref" in getattr(model, "peft_config", {}):
        if not verified("grpo_ref_adapter"):
            unverified("grpo_ref_adapter", "deleting an adapter named 'ref' before saving, as on 1.16")
        model.delete_adapter("ref")


class PrefixedLogs(dict):
    """The logs dict TRL's `SFTTrainer.log` adds its `eval_*` metrics to (with `update`), renaming them to
    `<prefix>_*`: evaluating the test split then reports `test_mean_token_accuracy`, not an `eval_*` figure that
    overwrites the validation one. Depends on TRL 1.16 calling `logs.update`; see `prefixed_log`."""

    def __init__(self, logs: dict, prefix: str):
        super().__init__(logs)
        self.prefix = prefix

    def update(self, other=(), **kw):
        items = dict(other, **kw).items()
        super().update({(f"{self.prefix}_{k[5:]}" if k.startswith("eval_") else k): v for k, v in items})


def prefixed_log(log_method, logs: dict, prefix: str, start_time=None):
    """Call SFTTrainer.log so that the metrics TRL adds take the evaluated split's prefix; returns nothing, and
    `logs` receives TRL's additions (Trainer.evaluate returns that dict). Unverified TRL: plain log, logged."""
    if not verified("sft_metric_prefix"):
        unverified("sft_metric_prefix", f"TRL's own metric names during the {prefix} evaluation")
        return log_method(logs, start_time)
    prefixed = PrefixedLogs(logs, prefix)
    log_method(prefixed, start_time)
    logs.update(dict(prefixed))


# --------------------------------------------------------------------------------------------- argparse


def float_fields(parser) -> set[str]:
    """The dests of a parser's float options; argparse keeps them only in the private `_actions` list
    (Python 3.11-3.14). Elsewhere: none, so YAML values are left to argparse and the recipe's type check."""
    actions = getattr(parser, "_actions", None)
    if actions is None:
        unverified("argparse_actions", "recipe floats such as 2e-5 are left as YAML read them")
        return set()
    return {a.dest for a in actions if a.type is float}


TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def bad_option_message(message: str) -> str:
    """argparse's error text, reworded as a recipe's type check words it: "argument --lora_r/--lora-r: invalid int
    value: '8.5'" -> "--lora_r must be an integer, got 8.5". Text of another shape is kept as argparse wrote it."""
    m = re.match(r"argument --([\w.]+)[^:]*: invalid (int|float) value: '(.*)'$", message)
    if m:
        return f"--{m[1]} must be {TYPE_WORDS[m[2]]}, got {m[3]}"
    return f"bad option: {message} (see `medreason train --help`)"


def fused_head_output(**fields):
    """TRL 1.16's private `FusedCausalLMOutput` (what its trainers read from a forward with fused_lm_head=True),
    built with `fields` (loss, log_probs, entropy, is_top1, label_mask): the dense LM head returns it."""
    from trl.trainer.utils import FusedCausalLMOutput

    return FusedCausalLMOutput(**fields)
