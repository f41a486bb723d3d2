"""GRPO: reinforcement learning with verifiable rewards on the bundled multiple-choice pool, after SFT.

    medreason train --config configs/smollm2-135m-grpo-cpu.yaml             # from the SFT adapter, ~2 min on a CPU
    medreason train --config configs/smollm2-135m-grpo-cpu.yaml --resume    # continue after an interruption
    medreason train --config configs/qwen2.5-0.5b-grpo-gpu.yaml             # GPU scale (vLLM when installed)

    from medreason.train import train
    result = train(["--config", "configs/smollm2-135m-grpo-cpu.yaml"])   # `trainer: grpo` picks this recipe

Flow: recipe (TRL's GRPOConfig) -> checks that need no model -> prompts from the MCQ pool split (one prompt
builder, `medreason.mcq.prompt_messages`, the one generative evaluation uses) -> base model, plus the SFT
adapter loaded as trainable when `init_adapter` names one -> GRPOTrainer with `correctness_reward` and
`format_reward` -> adapter (only the trained LoRA) saved atomically with its model card and metadata
(trainer: grpo, the init adapter and its hash).

Continuing an adapter: with `init_adapter`, the LoRA is loaded with `is_trainable=True` and no `peft_config`
goes to the trainer. With beta > 0, TRL then copies that adapter into a frozen "ref" adapter, so the KL term
pulls towards the SFT model, not towards the base model. Without `init_adapter` a new LoRA starts at zero
(B = 0), and the reference is the base model with the adapter switched off.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from medreason import run
from medreason.adapter import check_adapter_fits, load_adapter, read_adapter, training_meta, weights_sha256
from medreason.config import config_dict
from medreason.errors import UserError

if TYPE_CHECKING:  # the config classes, for the signatures only: importing TRL here would slow `medreason --help`
    from trl import GRPOConfig, ModelConfig

    from medreason.config import MedreasonArgs

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- entry point


def train_grpo(args: MedreasonArgs, cfg: GRPOConfig, model_args: ModelConfig, recipe: str) -> run.TrainResult:
    """Train with GRPO from a settled recipe (MedreasonArgs, GRPOConfig, ModelConfig); `recipe` is its hash.
    `medreason.train.train` calls this for `trainer: grpo` after the checks every run shares."""
    check_grpo(args, cfg, model_args)
    init = read_init_adapter(args, model_args)
    resume_from = run.resume_point(args, cfg)
    if resume_from is not None and init is None:  # a continued adapter keeps its own shape, not the recipe's
        run.check_resume(resume_from, model_args)
    dataset, pool = pool_dataset(args)  # bad data fails here, before the model loads
    log.info(
        "GRPO prompts: %d questions of the %s; %d completions each",
        len(dataset),
        pool["description"],
        cfg.num_generations,
    )
    with run.session(args, cfg, model_args):
        return _train_grpo(args, cfg, model_args, recipe, resume_from, init, dataset, pool)


def _train_grpo(args, cfg, model_args, recipe, resume_from, init, dataset, pool) -> run.TrainResult:
    from transformers import set_seed
    from trl import GRPOTrainer

    from medreason import compat
    from medreason.progress import use_training_progress
    from medreason.rewards import correctness_reward, format_reward

    model, tokenizer, peft_config, model_source = load_policy(args, model_args)
    resolved = {**config_dict(args, cfg, model_args), "init_adapter_sha256": init and init["sha256"]}
    tags = {"trainer": "grpo", "init_adapter": init["path"] if init else "none"}
    with run.tracked(
        args,
        cfg,
        resolved,
        recipe,
        resumed=resume_from is not None,
        params=run.logged_params(resolved, GRPO_PARAMS),
        tags=tags,
    ) as tracking:
        set_seed(cfg.seed)  # right before a new adapter's weights are drawn, and the rollouts' sampling
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[correctness_reward, format_reward],
            args=cfg,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        use_cpu_head(args, cfg, trainer)
        use_training_progress(trainer)  # step/total, loss, reward, tokens/s and ETA
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        metrics = final_metrics(trainer.state.log_history)
        policy = trainer.accelerator.unwrap_model(trainer.model)
        compat.drop_reference_adapter(policy)  # TRL's frozen copy of the init adapter for the KL term: not saved
        meta = training_meta(
            "grpo",
            args,
            model_args,
            recipe=recipe,
            resolved=resolved,
            model=model_source,
            metrics=metrics,
            # what `medreason eval` rebuilds its corpus test split from: the SFT adapter's data, when continued
            dataset=(init or {}).get("dataset") or args.dataset,
            data=(init or {}).get("data") or {},
            rl_data=pool,
            init_adapter=init and init["path"],
            init_adapter_sha256=init and init["sha256"],
            rewards=["correctness_reward", "format_reward"],
            signal=signal_summary(trainer.state.log_history),
        )
        return run.finish(trainer, policy, tokenizer, args, model_args, meta, metrics, tracking)


GRPO_PARAMS = {
    "trainer",
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


# --------------------------------------------------------------------------------------------- checks before loading


def check_grpo(args, cfg, model_args):
    """GRPO values that cannot train, in one line each (GRPOConfig itself checks the group divisibility)."""
    if cfg.beta < 0:
        raise UserError(f"beta (the KL coefficient) must be >= 0, got {cfg.beta}")
    if cfg.max_completion_length is None or cfg.max_completion_length < 1:
        raise UserError(f"max_completion_length must be at least 1, got {cfg.max_completion_length}")
    if cfg.temperature <= 0:
        raise UserError(f"temperature must be positive for sampled rollouts, got {cfg.temperature}")
    if cfg.use_vllm:
        from medreason.distributed import check_vllm

        check_vllm()
    if args.template != "think":
        raise UserError(
            f"template '{args.template}': the GRPO format reward checks <think>...</think> blocks: use template: think"
        )


def read_init_adapter(args, model_args) -> dict | None:
    """The SFT adapter to continue: validated, its base model the recipe's, and its weights' hash."""
    if not args.init_adapter:
        return None
    folder = Path(args.init_adapter)
    if not folder.is_dir():
        raise UserError(
            f"init_adapter {folder} does not exist: train the SFT adapter first "
            f"(medreason train --config configs/smollm2-135m-cpu.yaml), or remove init_adapter"
        )
    meta = read_adapter(folder)
    from medreason.generate import same_model

    if not same_model(meta["base_model"], model_args.model_name_or_path):
        raise UserError(
            f"init_adapter {folder} was trained on {meta['base_model']}, but model_name_or_path is "
            f"{model_args.model_name_or_path}: use the same base model"
        )
    check_adapter_fits(folder, model_args.model_name_or_path)  # loads whole or not at all, before the weights
    return {
        "path": str(folder),
        "sha256": weights_sha256(folder),
        "base_model": meta["base_model"],
        "trainer": meta.get("trainer", "sft"),
        "run_name": meta.get("run_name"),
        "recipe_hash": meta.get("recipe_hash"),
        "dataset": meta.get("dataset"),
        "data": meta.get("data"),
    }


# --------------------------------------------------------------------------------------------- data and model


def pool_dataset(args):
    """(dataset, record): the RL prompts, every question of the bundled benchmark's pool split as the chat prompt
    that lists its options (the one generative evaluation uses), with the `answer` and `options` columns the
    rewards read (TRL passes a dataset's other columns to reward functions); and what it was, for the metadata.
    The held-out split is never seen here."""
    from datasets import Dataset

    from medreason.io import sha256_file
    from medreason.mcq import bundled_split, prompt_messages
    from medreason.readers import bundled_path

    items = bundled_split("pool")
    if args.max_examples:
        items = items[: args.max_examples]
    if not items:
        raise UserError("the bundled MCQ benchmark has no 'pool' split: GRPO needs questions to train on")
    path = bundled_path("mcq.jsonl")
    record = {
        "description": "bundled MCQ benchmark, pool split",
        "kind": "bundled",
        "path": str(path),
        "sha256": sha256_file(path),
        "split": "pool",
        "rows": {"pool": len(items)},
    }
    rows = [
        {
            "prompt": prompt_messages(it, args.system_prompt),
            "answer": it.answer,
            "options": dict(it.options),
            "id": it.id,
        }
        for it in items
    ]
    return Dataset.from_list(rows), record


def load_policy(args, model_args):
    """(model, tokenizer, peft_config, provenance): the base model, with the init adapter loaded trainable (and
    then no peft_config: GRPOTrainer refuses both) or a new LoRA described by the recipe."""
    model, tokenizer, source = run.load_base(model_args)
    if args.init_adapter:
        model = load_adapter(model, args.init_adapter, is_trainable=True)
        log.info("continuing the adapter in %s (trainable; the recipe's LoRA keys are not used)", args.init_adapter)
        return model, tokenizer, None, source
    return model, tokenizer, run.peft_config(model_args), source


def use_cpu_head(args, cfg, trainer):
    """GRPOTrainer scores completions through TRL's fused LM head, which on a CPU (no Triton) projects every
    position, prompt and completion alike, onto the whole vocabulary, in tiles, several passes each: on the
    tiny test model that was half of the step. SFT's dense head (medreason.compat.use_dense_lm_head) computes
    the same log-probabilities and entropies from the labelled positions only, the completion tokens. It has no temperature and its entropies carry no gradient: at a
    temperature other than 1, or with an entropy bonus, TRL's head stays."""
    from medreason.compat import use_dense_lm_head, wants_dense_head

    if not wants_dense_head(args.lm_head, trainer.args):
        return
    if cfg.temperature != 1.0 or cfg.entropy_coef or cfg.use_adaptive_entropy:
        log.info(
            "lm_head: keeping TRL's fused head (the dense head scores at temperature 1 without an entropy "
            "bonus; this run has temperature %g, entropy_coef %g)",
            cfg.temperature,
            cfg.entropy_coef,
        )
        return
    use_dense_lm_head(trainer.model)


# --------------------------------------------------------------------------------------------- tracking and saving


def final_metrics(log_history: list[dict]) -> dict[str, float]:
    """The training summary (train_runtime, train_loss, ...) plus the mean reward, KL and length over the run."""
    metrics = {k: float(v) for k, v in log_history[-1].items() if isinstance(v, (int, float))} if log_history else {}
    steps = [h for h in log_history if "reward" in h]
    for key in (
        "reward",
        "rewards/correctness_reward/mean",
        "rewards/format_reward/mean",
        "kl",
        "completions/mean_length",
        "completions/clipped_ratio",
    ):
        values = [h[key] for h in steps if key in h]
        if values:
            metrics[f"mean_{key.replace('/', '_')}"] = sum(values) / len(values)
            metrics[f"last_{key.replace('/', '_')}"] = float(values[-1])
    return metrics


SERIES = {
    "reward": "reward",
    "correctness": "rewards/correctness_reward/mean",
    "format": "rewards/format_reward/mean",
    "kl": "kl",
    "truncated": "completions/clipped_ratio",
    "mean_length": "completions/mean_length",
}


def signal_summary(log_history: list[dict]) -> dict:
    """What the run had to learn from: per step, the rewards, the share of groups whose completions did not all
    earn the same reward (`groups_with_signal` = 1 - TRL's `frac_reward_zero_std`: a group with one reward for all
    its completions has zero advantages and teaches nothing), the KL to the reference and the share of completions
    cut at max_completion_length; over the run, their means and the trend of the reward with a 95 % interval
    (medreason.stats.trend: rising, flat or falling)."""
    from medreason.stats import trend

    steps = [h for h in log_history if "reward" in h]
    per_step = {name: [float(h[key]) for h in steps if key in h] for name, key in SERIES.items()}
    per_step["groups_with_signal"] = [
        1.0 - float(h["frac_reward_zero_std"]) for h in steps if "frac_reward_zero_std" in h
    ]
    per_step["step"] = [int(h.get("step", i + 1)) for i, h in enumerate(steps)]
    out = {"steps": len(steps), "per_step": per_step}
    for name in ("groups_with_signal", "truncated", "correctness", "format", "reward", "kl"):
        if per_step[name]:
            out[f"mean_{name}"] = sum(per_step[name]) / len(per_step[name])
    for name in ("reward", "correctness"):
        if len(per_step[name]) >= 3:
            out[f"{name}_trend"] = trend(per_step[name])
    return out
