"""Numbers: every numeric option of every subcommand and every numeric key of a recipe has a range, and NaN and
infinities are never in range. A zero `gradient_accumulation_steps` would otherwise divide by zero after the model
has loaded; a refusal is a `UserError` (one line, exit 2) naming the value.

    from medreason.ranges import RANGES, Range, check_ranges
    RANGES["gradient_accumulation_steps"].problem(0)     # 'at least 1'
    check_ranges({"learning_rate": float("nan")})         # UserError: learning_rate must be above 0, got nan
    Range(">= 1")("0")                                    # argparse.ArgumentTypeError: must be at least 1, got 0

`RANGES` holds the recipe keys' ranges (medreason.config checks them as it parses); medreason.cli types its
subcommands' numeric options with `Range`.
"""

from __future__ import annotations

import argparse
import math
import re

from medreason.errors import UserError


class Range:
    """A numeric range written as ">= 1", "> 0", ">= -1", "[0, 1)", "(0, 1]", "[0, 4294967295]" or "finite".
    NaN and infinities are outside every range. An instance is also an argparse `type`: it converts the text
    with `kind` (int or float) and refuses what is out of range with a message that medreason.cli's parser turns
    into `--option must be ..., got ...`."""

    _INTERVAL = re.compile(r"^([\[(])\s*(-?[\d.e+]+)\s*,\s*(-?[\d.e+]+)\s*([\])])$")

    def __init__(self, spec: str, kind: type = int):
        self.spec, self.kind = spec, kind
        self.low = self.high = None
        self.low_open = self.high_open = False
        if spec == "finite":
            pass
        elif spec.startswith((">=", ">")):
            self.low_open = not spec.startswith(">=")
            self.low = float(spec.lstrip(">=").strip())
        elif m := self._INTERVAL.match(spec):
            self.low, self.high = float(m[2]), float(m[3])
            self.low_open, self.high_open = m[1] == "(", m[4] == ")"
        else:
            raise ValueError(f"unknown range {spec!r}")
        self.__name__ = "int" if kind is int else "float"  # what argparse names in its own messages

    def words(self) -> str:
        """'at least 1', 'above 0', 'in [0, 1)', 'a finite number'."""
        if self.spec == "finite":
            return "a finite number"
        if self.high is None:
            low = _number(self.low)
            return f"above {low}" if self.low_open else f"at least {low}"
        return f"in {self.spec}"

    def problem(self, value) -> str | None:
        """What `value` should be, or None when it is in range."""
        if isinstance(value, str):  # a field of type `int | str` (pad_to_multiple_of) keeps a number as text
            try:
                value = float(value)
            except ValueError:
                return None  # 'auto'
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None  # types are checked elsewhere (medreason.config)
        if not math.isfinite(value):
            return self.words()
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return self.words()
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return self.words()
        return None

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if self.kind is int else 'a number'}, got {text}"
            ) from None
        problem = self.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(f"must be {problem}, got {text}")
        return value

    def outside(self):
        """A value outside the range, for the tests that feed every option a bad value."""
        if self.low is not None:
            bad = self.low - 1 if not self.low_open else self.low
            return int(bad) if self.kind is int else bad
        if self.high is not None:
            return self.high + 1
        return float("nan")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


SEED = "[0, 4294967295]"  # numpy's seeds; torch's manual_seed refuses larger ones after the model has loaded

# Every numeric key a recipe can carry (MedreasonArgs, TRL's SFTConfig and GRPOConfig, ModelConfig), with its range.
# tests/test_bad_input.py fails on a numeric key that is not here, so a new TRL field is classified when it appears.
RANGES: dict[str, Range] = {
    # medreason
    "max_examples": Range(">= 1"),
    "facts_seed": Range(SEED),
    "facts_statements": Range("[1, 4]"),
    "facts_repeats": Range(">= 1"),
    "num_threads": Range(">= 1"),
    # the trainer (transformers' TrainingArguments, TRL's SFTConfig)
    "per_device_train_batch_size": Range(">= 1"),
    "per_device_eval_batch_size": Range(">= 1"),
    "gradient_accumulation_steps": Range(">= 1"),
    "eval_accumulation_steps": Range(">= 1"),
    "num_train_epochs": Range(">= 0", float),
    "max_steps": Range(">= -1"),  # -1: train for num_train_epochs (0 is refused by medreason.run.check_steps)
    "learning_rate": Range("> 0", float),
    "warmup_steps": Range(">= 0", float),  # below 1: a fraction of the steps
    "weight_decay": Range(">= 0", float),
    "adam_beta1": Range("[0, 1)", float),
    "adam_beta2": Range("[0, 1)", float),
    "adam_epsilon": Range("> 0", float),
    "max_grad_norm": Range(">= 0", float),  # 0: no clipping
    "label_smoothing_factor": Range("[0, 1)", float),
    "neftune_noise_alpha": Range(">= 0", float),
    "torch_empty_cache_steps": Range(">= 1"),
    "logging_steps": Range("> 0", float),
    "eval_steps": Range("> 0", float),
    "eval_delay": Range(">= 0", float),
    "save_steps": Range("> 0", float),
    "save_total_limit": Range(">= 1"),
    "seed": Range(SEED),
    "data_seed": Range(SEED),
    "dataloader_num_workers": Range(">= 0"),
    "dataloader_prefetch_factor": Range(">= 1"),
    "ddp_bucket_cap_mb": Range(">= 1"),
    "ddp_timeout": Range(">= 1"),
    "local_rank": Range(">= -1"),  # set by launchers; -1 is none
    "router_aux_loss_coef": Range(">= 0", float),
    "dataset_num_proc": Range(">= 1"),
    "max_length": Range(">= 1"),
    "pad_to_multiple_of": Range(">= 1"),
    # LoRA (TRL's ModelConfig)
    "lora_r": Range(">= 1"),
    "lora_alpha": Range("> 0"),
    "lora_dropout": Range("[0, 1)", float),
    # GRPO (TRL's GRPOConfig)
    "num_generations": Range(">= 2"),  # advantages are relative to the group: one completion teaches nothing
    "num_generations_eval": Range(">= 1"),
    "max_completion_length": Range(">= 1"),
    "generation_batch_size": Range(">= 1"),
    "steps_per_generation": Range(">= 1"),
    "temperature": Range("> 0", float),
    "top_p": Range("(0, 1]", float),
    "top_k": Range(">= 0"),  # 0: no top-k filtering
    "min_p": Range("[0, 1]", float),
    "repetition_penalty": Range("> 0", float),
    "vllm_server_port": Range("[1, 65535]"),
    "vllm_group_port": Range("[1, 65535]"),
    "vllm_server_timeout": Range("> 0", float),
    "vllm_gpu_memory_utilization": Range("(0, 1]", float),
    "vllm_max_model_length": Range(">= 1"),
    "vllm_tensor_parallel_size": Range(">= 1"),
    "beta": Range(">= 0", float),
    "num_iterations": Range(">= 1"),
    "epsilon": Range(">= 0", float),
    "delta": Range("> 0", float),
    "epsilon_high": Range(">= 0", float),
    "sapo_temperature_neg": Range("> 0", float),
    "sapo_temperature_pos": Range("> 0", float),
    "vespo_k_pos": Range("finite", float),  # exponents and scales of VESPO's weighting: TRL sets no bound
    "vespo_lambda_pos": Range("finite", float),
    "vespo_k_neg": Range("finite", float),
    "vespo_lambda_neg": Range("finite", float),
    "ref_model_mixup_alpha": Range("[0, 1]", float),
    "ref_model_sync_steps": Range(">= 1"),
    "top_entropy_quantile": Range("[0, 1]", float),
    "entropy_coef": Range(">= 0", float),
    "entropy_coef_min": Range(">= 0", float),
    "entropy_coef_max": Range(">= 0", float),
    "entropy_coef_delta": Range(">= 0", float),
    "entropy_target": Range(">= 0", float),
    "max_tool_calling_iterations": Range(">= 0"),
    "vllm_importance_sampling_clip_max": Range("> 0", float),
    "vllm_importance_sampling_clip_min": Range(">= 0", float),
    "vllm_importance_sampling_cap": Range("> 0", float),
    "off_policy_mask_threshold": Range(">= 0", float),
    "num_completions_to_print": Range(">= 0"),
}


def check_ranges(values: dict) -> None:
    """The first recipe value outside its range, as a UserError. Called on the parsed values before TRL's classes
    are built from them (GRPOConfig divides by num_generations in its own checks)."""
    for name, value in values.items():
        rule = RANGES.get(name)
        problem = rule.problem(value) if rule is not None and value is not None else None
        if problem:
            raise UserError(f"{name} must be {problem}, got {value}")
