"""The GRPO recipe (`trainer: grpo`): reinforcement learning with verifiable rewards on multiple-choice questions,
usually continuing an SFT adapter.

    medreason train --config configs/smollm2-135m-grpo-cpu.yaml             # continues the CPU SFT adapter
    medreason train --config configs/qwen2.5-0.5b-grpo-gpu.yaml             # GPU scale (vLLM when installed)

Data: the questions of `dataset` (medreason.mcq.rl_items: `bundled-pool`, the bundled benchmark's pool split, or
`facts-taught`, the GRPO questions of the facts SFT taught), each as the chat prompt evaluation sends
(medreason.mcq.prompt_messages), with the `answer` and `options` columns the rewards read. Policy: the base model,
with `init_adapter` loaded trainable (no new LoRA then; with beta > 0 TRL copies it into a frozen "ref" adapter,
so the KL term pulls towards the SFT model) or a new LoRA. Trainer: TRL's GRPOTrainer with
`medreason.rewards.correctness_reward` and `format_reward`, its rollouts decoded by medreason.decode (TRL's
`rollout_func`, medreason.rollouts). Summary: mean reward, KL and lengths, and `signal_summary` (groups that
had something to learn from, truncation, the reward's trend) in medreason.json.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from trl import GRPOConfig

from medreason.errors import UserError
from medreason.recipe import Data, Policy, Recipe, register

log = logging.getLogger(__name__)


@dataclass
class GRPORecipeConfig(GRPOConfig):
    """TRL's GRPOConfig, the adapter it continues, and the checks of values that cannot train."""

    init_adapter: str | None = field(
        default=None,
        metadata={
            "help": "A medreason adapter folder to continue training (its LoRA stays trainable and is also the KL "
            "reference); unset: a new LoRA on the base model."
        },
    )

    medreason_rollouts: bool = field(
        default=True,
        metadata={
            "help": "Sample the rollouts with medreason's decode loop (handed to TRL as its rollout_func: the group's "
            "completions share one prefill, finished ones leave the batch); false: TRL's own model.generate."
        },
    )

    def __post_init__(self):
        if self.beta < 0:
            raise UserError(f"beta (the KL coefficient) must be >= 0, got {self.beta}")
        if self.max_completion_length is None or self.max_completion_length < 1:
            raise UserError(f"max_completion_length must be at least 1, got {self.max_completion_length}")
        if self.temperature <= 0:
            raise UserError(f"temperature must be positive for sampled rollouts, got {self.temperature}")
        if self.num_generations is not None and self.num_generations < 2:
            raise UserError(
                f"num_generations must be at least 2 (a group needs two answers), got {self.num_generations}"
            )
        super().__post_init__()


# TRL's log keys that the summary reads (compat.TRL_LOG_KEYS: checked against TRL's source by tests/test_compat.py)
SERIES = {
    "reward": "reward",
    "correctness": "rewards/correctness_reward/mean",
    "format": "rewards/format_reward/mean",
    "kl": "kl",
    "truncated": "completions/clipped_ratio",
    "mean_length": "completions/mean_length",
}
ZERO_STD = "frac_reward_zero_std"


@register
class GRPO(Recipe):
    name = "grpo"
    config_class = GRPORecipeConfig
    help = "reinforcement learning with verifiable MCQ rewards (TRL's GRPOTrainer)"
    logged_params = frozenset(
        {
            "init_adapter",
            "init_adapter_sha256",
            "num_generations",
            "max_completion_length",
            "beta",
            "epsilon",
            "scale_rewards",
            "temperature",
            "num_iterations",
        }
    )

    def hash_inputs(self, args, cfg, model_args) -> dict:
        from medreason.fingerprint import adapter_fingerprint

        init = cfg.init_adapter
        digest = adapter_fingerprint(init) if init and Path(init).is_dir() else None
        return {"init_adapter_weights_sha256": digest} if digest else {}

    def inputs(self, args, cfg, model_args) -> tuple:
        return (cfg.init_adapter,) if cfg.init_adapter else ()

    def check(self, run):
        if run.args.template != "think":
            raise UserError(
                f"template '{run.args.template}': the GRPO format reward checks <think>...</think> blocks: "
                f"use template: think"
            )
        if run.cfg.use_vllm:
            from medreason.distributed import check_vllm

            check_vllm()
        self.init = read_init_adapter(run)

    def check_resume(self, run, checkpoint):
        if not run.cfg.init_adapter:  # a continued adapter keeps its own shape, not the recipe's lora_* keys
            super().check_resume(run, checkpoint)

    def load_data(self, run) -> Data:
        from datasets import Dataset

        from medreason.mcq import prompt_messages

        items, record = rl_items(run.args.dataset, seed=run.args.facts_seed)
        if run.args.max_examples:
            items = items[: run.args.max_examples]
        rows = [
            {"prompt": prompt_messages(it, run.args.system_prompt), "answer": it.answer, "options": dict(it.options)}
            for it in items
        ]
        log.info(
            "GRPO prompts: %d questions of the %s; %d completions each",
            len(rows),
            record["description"],
            run.cfg.num_generations,
        )
        return Data(Dataset.from_list(rows), record=record, description=record["description"])

    def load_model(self, run) -> Policy:
        from medreason.models import load_base, peft_config

        model, tokenizer, provenance = load_base(run.model_args)
        if run.cfg.init_adapter:
            from medreason.adapter import load_adapter

            model = load_adapter(model, run.cfg.init_adapter, is_trainable=True)
            log.info(
                "continuing the adapter in %s (trainable; the recipe's LoRA keys are not used)", run.cfg.init_adapter
            )
            return Policy(model, tokenizer, None, provenance)
        return Policy(model, tokenizer, peft_config(run.model_args), provenance)

    def build_trainer(self, run, policy, data):
        from trl import GRPOTrainer

        from medreason.dense_head import use_dense_lm_head, wants_dense_head
        from medreason.rewards import correctness_reward, format_reward
        from medreason.rollouts import rollout_func

        trainer = GRPOTrainer(
            model=policy.model,
            reward_funcs=[correctness_reward, format_reward],
            args=run.cfg,
            train_dataset=data.train,
            processing_class=policy.tokenizer,
            peft_config=policy.peft_config,
            rollout_func=rollout_func(run.cfg) if run.cfg.medreason_rollouts else None,
        )
        # TRL's fused head on a CPU projects every position onto the vocabulary in tiles; the dense head scores
        # the completion tokens only. It has no temperature and no entropy gradient: otherwise TRL's head stays.
        if wants_dense_head(run.args.lm_head, trainer.args):
            if run.cfg.temperature != 1.0 or run.cfg.entropy_coef or run.cfg.use_adaptive_entropy:
                log.info(
                    "lm_head: TRL's fused head (temperature %g, entropy_coef %g)",
                    run.cfg.temperature,
                    run.cfg.entropy_coef,
                )
            else:
                use_dense_lm_head(trainer.model)
        return trainer

    def summarise(self, run, trainer, data):
        from medreason import compat

        compat.drop_reference_adapter(self.trained_model(trainer))  # TRL's frozen copy for the KL term: not saved
        init = self.init
        meta = {
            "rl_data": data.record,
            "init_adapter": init and init["path"],
            "started_from": init and init["path"],
            "init_adapter_sha256": init and init["sha256"],
            "rewards": ["correctness_reward", "format_reward"],
            "signal": signal_summary(trainer.state.log_history),
        }
        if init:  # what `medreason eval` rebuilds its corpus test split from: the SFT adapter's data
            meta |= {"dataset": init.get("dataset") or run.args.dataset, "data": init.get("data") or {}}
        return final_metrics(trainer.state.log_history), meta


def read_init_adapter(run) -> dict | None:
    """The adapter to continue: validated, its base model the recipe's, and its weights' hash."""
    from medreason.adapter import check_adapter_fits, read_adapter
    from medreason.fingerprint import adapter_fingerprint
    from medreason.models import same_model

    folder = run.cfg.init_adapter
    if not folder:
        return None
    if not Path(folder).is_dir():
        raise UserError(
            f"init_adapter {folder} does not exist: train the SFT adapter first "
            f"(medreason train --config configs/smollm2-135m-cpu.yaml), or remove init_adapter"
        )
    meta = read_adapter(folder)
    if not same_model(meta["base_model"], run.model_args.model_name_or_path):
        raise UserError(
            f"init_adapter {folder} was trained on {meta['base_model']}, but model_name_or_path is "
            f"{run.model_args.model_name_or_path}: use the same base model"
        )
    check_adapter_fits(folder, run.model_args.model_name_or_path)  # loads whole or not at all, before the weights
    trained = meta.get("system_prompt")
    if trained is not None and trained != run.args.system_prompt:
        raise UserError(
            f"init_adapter {folder} was trained with the system prompt {trained!r}, this recipe sends "
            f"{run.args.system_prompt!r}: set system_prompt to the adapter's, or its rewards measure another prompt"
        )
    return {
        "path": str(folder),
        "sha256": adapter_fingerprint(folder),
        "base_model": meta["base_model"],
        "trainer": meta.get("trainer", "sft"),
        "recipe_hash": meta.get("recipe_hash"),
        "dataset": meta.get("dataset"),
        "data": meta.get("data"),
    }


def final_metrics(log_history: list[dict]) -> dict[str, float]:
    """The training summary (train_runtime, train_loss, ...) plus the mean and last reward, KL and length."""
    from medreason.compat import log_key

    metrics = {k: float(v) for k, v in log_history[-1].items() if isinstance(v, (int, float))} if log_history else {}
    steps = [h for h in log_history if log_key("reward") in h]
    for key in SERIES.values():
        values = [h[log_key(key)] for h in steps if log_key(key) in h]
        if values:
            flat = key.replace("/", "_")
            metrics[f"mean_{flat}"] = sum(values) / len(values)
            metrics[f"last_{flat}"] = float(values[-1])
    return metrics


def signal_summary(log_history: list[dict]) -> dict:
    """What the run had to learn from: per step, the rewards, the share of groups whose completions did not all
    earn the same reward (`groups_with_signal` = 1 - TRL's `frac_reward_zero_std`: a group with one reward for all
    its completions has zero advantages and teaches nothing), the KL to the reference and the share of completions
    cut at max_completion_length; over the run, their means and the trend of the reward with a 95 % interval
    (medreason.stats.trend: rising, flat or falling)."""
    from medreason.compat import log_key
    from medreason.stats import trend

    steps = [h for h in log_history if log_key("reward") in h]
    per_step = {name: [float(h[log_key(key)]) for h in steps if log_key(key) in h] for name, key in SERIES.items()}
    per_step["groups_with_signal"] = [1.0 - float(h[log_key(ZERO_STD)]) for h in steps if log_key(ZERO_STD) in h]
    per_step["step"] = [int(h.get("step", i + 1)) for i, h in enumerate(steps)]
    out = {"steps": len(steps), "per_step": per_step}
    for name in ("groups_with_signal", "truncated", "correctness", "format", "reward", "kl"):
        if per_step[name]:
            out[f"mean_{name}"] = sum(per_step[name]) / len(per_step[name])
    for name in ("reward", "correctness"):
        if len(per_step[name]) >= 3:
            out[f"{name}_trend"] = trend(per_step[name])
    return out


def rl_items(dataset: str, seed: int) -> tuple[list, dict]:
    """(items, record) of a GRPO recipe's `dataset`: `bundled-pool`, the bundled benchmark's pool split (the
    held-out split is never trained on), or `facts-taught`, the GRPO questions (mcq_rl) of the facts the SFT data
    taught (medreason.facts, the taught half drawn with `seed`)."""
    from medreason.io import sha256_file
    from medreason.mcq import bundled_split
    from medreason.readers import bundled_path

    if dataset in ("bundled-pool", "bundled"):
        path = bundled_path("mcq.jsonl")
        items = bundled_split("pool")
        description = "bundled MCQ benchmark, pool split"
    elif dataset == "facts-taught":
        from medreason.facts import assign_halves, bundled_facts_path, load_facts, question_item

        path = bundled_facts_path()
        taught = assign_halves(load_facts(), seed)["taught"]
        items = [question_item(f, "mcq_rl") for f in taught]
        description = f"GRPO questions of the taught facts (seed {seed})"
    else:
        raise UserError(f"dataset '{dataset}' is not a GRPO question set: choose bundled-pool or facts-taught")
    record = {
        "description": description,
        "kind": "bundled",
        "dataset": dataset,
        "path": str(path),
        "sha256": sha256_file(path),
        "seed": seed if dataset == "facts-taught" else None,
        "rows": {"pool": len(items)},
    }
    return items, record
