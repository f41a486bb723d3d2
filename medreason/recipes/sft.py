"""The SFT recipe (`trainer: sft`, the default): LoRA / QLoRA supervised fine-tuning with TRL's SFTTrainer.

    medreason train --config configs/smollm2-135m-cpu.yaml                  # the embedded default, minutes on a CPU
    medreason train --config configs/smollm2-135m-cpu.yaml --max_steps 5    # any key overrides the recipe

Data: medreason.data.load_splits (checked before any model loads; examples TRL would drop at max_length counted
and removed, medreason.tokens.fit_max_length). Trainer: TRL's SFTTrainer with two overrides, the dense LM head on
CPUs (medreason.dense_head) and metric names that follow the evaluated split (medreason.compat.prefixed_log).
Summary: the last training log, the validation metrics of the final weights and the test split's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl import SFTConfig

from medreason.errors import UserError
from medreason.recipe import Data, Recipe, register

log = logging.getLogger(__name__)


@dataclass
class SFTRecipeConfig(SFTConfig):
    """TRL's SFTConfig, plus the SFT recipe's own key."""

    evaluate_test: bool = field(default=True, metadata={"help": "Report final metrics on the test split."})


@register
class SFT(Recipe):
    name = "sft"
    config_class = SFTRecipeConfig
    help = "supervised fine-tuning on prompt/completion pairs (TRL's SFTTrainer)"
    logged_params = frozenset({"max_length", "loss_type", "packing", "padding_free", "train_sampling_strategy"})
    not_hashed = frozenset({"evaluate_test"})

    def check(self, run):
        context = getattr(run.model_config(), "max_position_embeddings", None)
        if run.cfg.max_length is not None and context is not None and run.cfg.max_length > context:
            raise UserError(
                f"max_length {run.cfg.max_length} is beyond the context of "
                f"{run.model_args.model_name_or_path} ({context} tokens)"
            )

    def load_data(self, run) -> Data:
        from medreason.data import data_args, data_record, load_splits

        args, cfg = run.args, run.cfg
        splits, report = load_splits(args.dataset, **data_args(args), with_report=True)
        splits, dropped = drop_over_long(splits, cfg, run.model_args)
        if cfg.eval_strategy != "no" and len(splits["validation"]) == 0:  # TRL would fail with a bare StopIteration
            raise UserError(
                f"the validation split is empty ({len(splits['train'])} training rows): use more rows "
                f"(--max_examples) or turn evaluation off with --eval_strategy no"
            )
        description = report.source.get("description", report.origin)
        log.info("data: %s; %s", description, ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
        record = data_record(args, splits, report) | {"dropped_over_max_length": dropped}
        return Data(splits["train"], splits["validation"], splits["test"], record=record, description=description)

    def build_trainer(self, run, policy, data):
        return trainer_class()(
            model=policy.model,
            args=run.cfg,
            train_dataset=data.train,
            eval_dataset=data.eval if run.cfg.eval_strategy != "no" else None,
            processing_class=policy.tokenizer,
            peft_config=policy.peft_config,
            lm_head=run.args.lm_head,
        )

    def fit(self, run, trainer):
        from medreason import compat
        from medreason.checkpoints import checkpoint_step

        resume = run.resume_from
        if resume is not None and checkpoint_step(resume) >= run.cfg.max_steps > 0:
            # Trainer.train runs one optimizer step before it checks max_steps, so a run resumed from its final
            # checkpoint (killed while evaluating or saving) would train past it: take the checkpoint as it is
            log.info("--resume: %s already reached max_steps %d: evaluating and saving it", resume, run.cfg.max_steps)
            trainer.model.load_adapter(str(resume), trainer.model.active_adapter, is_trainable=True)
            compat.load_trainer_state(trainer, resume)
            return
        super().fit(run, trainer)

    def summarise(self, run, trainer, data):
        metrics = {k: v for k, v in trainer.state.log_history[-1].items() if isinstance(v, (int, float))}
        if run.cfg.eval_strategy != "no":
            metrics.update(final_validation(trainer, data.eval))
        if run.cfg.evaluate_test and len(data.test):
            metrics.update(trainer.evaluate(data.test, metric_key_prefix="test"))
        return metrics, {}


def trainer_class():
    """TRL's SFTTrainer with the dense LM head on CPUs (`lm_head`) and the evaluated split's metric prefix."""
    from trl import SFTTrainer

    from medreason import compat
    from medreason.dense_head import use_dense_lm_head, wants_dense_head

    class MedreasonSFTTrainer(SFTTrainer):
        _metric_prefix = "eval"

        def __init__(self, *args, lm_head: str = "auto", **kwargs):
            super().__init__(*args, **kwargs)
            if wants_dense_head(lm_head, self.args):
                use_dense_lm_head(self.model)
            else:
                log.info("lm_head: TRL's fused head (lm_head %s on %s)", lm_head, self.args.device.type)

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
            self._metric_prefix = metric_key_prefix
            try:
                return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            finally:
                self._metric_prefix = "eval"

        def log(self, logs: dict, start_time=None):
            if self._metric_prefix == "eval" or self.model.training:
                return super().log(logs, start_time)
            compat.prefixed_log(super().log, logs, self._metric_prefix, start_time)

    return MedreasonSFTTrainer


def final_validation(trainer, validation) -> dict:
    """Validation metrics of the final weights: the trainer's own pass at the last step when it made one (a
    recipe whose max_steps is a multiple of eval_steps), else a pass now: evaluating twice would cost a whole
    validation pass for the same numbers."""
    step = trainer.state.global_step
    done = [e for e in trainer.state.log_history if e.get("step") == step and "eval_loss" in e]
    if done:
        return {k: v for k, v in done[-1].items() if k.startswith("eval_") and isinstance(v, (int, float))}
    return trainer.evaluate(validation, metric_key_prefix="eval")


def drop_over_long(splits, cfg, model_args):
    """Counts, and removes, the examples TRL's SFTTrainer would drop silently at max_length (see
    medreason.tokens.fit_max_length); the log and MLflow say how many. None left to train on is an error."""
    from medreason.models import load_tokenizer
    from medreason.tokens import fit_max_length

    if cfg.max_length is None or cfg.packing:
        return splits, {}
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    dropped = {}
    for name, ds in list(splits.items()):
        mode = str(getattr(cfg.truncation_mode, "value", cfg.truncation_mode))
        fit = fit_max_length(ds, tokenizer, cfg.max_length, mode, cfg.completion_only_loss)
        dropped[name] = fit["dropped"]
        if fit["dropped"]:
            keep = sorted(set(range(len(ds))) - set(fit["dropped_rows"]))
            splits[name] = ds.select(keep)
    if len(splits["train"]) == 0:
        raise UserError(
            f"max_length {cfg.max_length}: the prompt alone fills it in every training example, so "
            f"nothing would train; raise --max_length (`medreason data stats --max-length N` counts)"
        )
    if any(dropped.values()):
        log.warning(
            "max_length %d: %s examples dropped (%s), since their prompt alone fills max_length and TRL "
            "would train on no token of them; raise --max_length to keep them",
            cfg.max_length,
            sum(dropped.values()),
            ", ".join(f"{k} {v}" for k, v in dropped.items()),
        )
    return splits, dropped
