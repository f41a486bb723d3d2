"""The SFT recipe: LoRA / QLoRA supervised fine-tuning with TRL's SFTTrainer, tracked in MLflow.

    medreason train --config configs/smollm2-135m-cpu.yaml     # `trainer: sft` (the default) runs this recipe

    from medreason.train import train
    result = train(["--config", "configs/smollm2-135m-cpu.yaml"])

Flow: data (checked before any model loads; examples TRL would drop at max_length counted and removed) ->
base model (medreason.run.load_base) -> PEFT adapter -> MedreasonSFTTrainer.train -> validation and test
metrics -> adapter saved atomically with its metadata (medreason.run.finish, medreason.adapter).
The trainer is TRL's own with two overrides: the dense LM head on CPUs and metric names that follow the evaluated
split (both reaches into TRL live in medreason.compat).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from medreason import run
from medreason.adapter import training_meta
from medreason.config import config_dict
from medreason.errors import UserError

if TYPE_CHECKING:  # the config classes, for the signatures only: importing TRL here would slow `medreason --help`
    from trl import ModelConfig, SFTConfig

    from medreason.config import MedreasonArgs

log = logging.getLogger(__name__)


def train_sft(args: MedreasonArgs, cfg: SFTConfig, model_args: ModelConfig, recipe: str) -> run.TrainResult:
    """Train from a settled recipe (MedreasonArgs, SFTConfig, ModelConfig); `recipe` is its hash."""
    from medreason.data import load_splits

    resume_from = run.resume_point(args, cfg)
    if resume_from is not None:
        run.check_resume(resume_from, model_args)
    # the data is read and checked before anything is written or any model loads
    splits, report = load_splits(args.dataset, **data_args(args), with_report=True)
    splits, dropped = drop_over_long(splits, cfg, model_args)
    if cfg.eval_strategy != "no" and len(splits["validation"]) == 0:  # TRL would fail with a bare StopIteration
        raise UserError(
            f"the validation split is empty ({len(splits['train'])} training rows): use more rows "
            f"(--max_examples) or turn evaluation off with --eval_strategy no"
        )
    log.info(
        "data: %s; %s",
        report.source.get("description", report.origin),
        ", ".join(f"{k} {len(v)}" for k, v in splits.items()),
    )
    with run.session(args, cfg, model_args):
        return _train(args, cfg, model_args, splits, report, recipe, resume_from, dropped)


def _train(args, cfg, model_args, splits, report, recipe, resume_from, dropped) -> run.TrainResult:
    from transformers import set_seed

    from medreason import compat
    from medreason.progress import use_training_progress

    model, tokenizer, model_source = run.load_base(model_args)
    # The seed is set right before the adapter's weights are drawn, so one seed gives one loss curve.
    set_seed(cfg.seed)
    resolved = config_dict(args, cfg, model_args)
    provenance = {
        "data": data_record(args, splits, report) | {"dropped_over_max_length": dropped},
        "model": model_source,
    }
    with run.tracked(
        args,
        cfg,
        resolved,
        recipe,
        resumed=resume_from is not None,
        params=run.logged_params(resolved) | flat_provenance(provenance),
        documents={"provenance": provenance},
    ) as tracking:
        trainer = trainer_class()(
            model=model,
            args=cfg,
            train_dataset=splits["train"],
            eval_dataset=splits["validation"] if cfg.eval_strategy != "no" else None,
            processing_class=tokenizer,
            peft_config=run.peft_config(model_args),
            lm_head=args.lm_head,
        )
        use_training_progress(trainer)  # step/total, loss, tokens/s and ETA, as every long step reports
        if resume_from is not None and run.checkpoint_step(resume_from) >= cfg.max_steps > 0:
            # Trainer.train runs one optimizer step before it checks max_steps, so a run resumed from its final
            # checkpoint (killed while evaluating or saving) would train past it: take the checkpoint as it is
            log.info(
                "--resume: %s already reached max_steps %d: no further training; evaluating and saving it",
                resume_from,
                cfg.max_steps,
            )
            trainer.model.load_adapter(str(resume_from), trainer.model.active_adapter, is_trainable=True)
            compat.load_trainer_state(trainer, resume_from)
        else:
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        metrics = {k: v for k, v in trainer.state.log_history[-1].items() if isinstance(v, (int, float))}
        if cfg.eval_strategy != "no":
            metrics.update(final_validation(trainer, splits["validation"]))
        if args.evaluate_test and len(splits["test"]):
            metrics.update(trainer.evaluate(splits["test"], metric_key_prefix="test"))
        meta = training_meta(
            "sft",
            args,
            model_args,
            recipe=recipe,
            resolved=resolved,
            model=model_source,
            metrics=metrics,
            data=provenance["data"],
        )
        return run.finish(trainer, trainer.model, tokenizer, args, model_args, meta, metrics, tracking)


def trainer_class():
    """TRL's SFTTrainer with the dense LM head on CPUs (`lm_head`) and the evaluated split's metric prefix (built
    on first use, so that importing this module does not import TRL)."""
    from trl import SFTTrainer

    from medreason import compat

    class MedreasonSFTTrainer(SFTTrainer):
        _metric_prefix = "eval"

        def __init__(self, *args, lm_head: str = "auto", **kwargs):
            super().__init__(*args, **kwargs)
            if compat.wants_dense_head(lm_head, self.args):
                compat.use_dense_lm_head(self.model)
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
    recipe whose max_steps is a multiple of eval_steps), else a pass now. Evaluating twice would cost a whole
    validation pass for the same numbers."""
    step = trainer.state.global_step
    done = [e for e in trainer.state.log_history if e.get("step") == step and "eval_loss" in e]
    if done:
        return {k: v for k, v in done[-1].items() if k.startswith("eval_") and isinstance(v, (int, float))}
    return trainer.evaluate(validation, metric_key_prefix="eval")


# --------------------------------------------------------------------------------------------- data


def data_args(args) -> dict:
    """Every argument that decides which rows land in which split: stored with the adapter so that `evaluate`
    rebuilds exactly the split the adapter was trained on."""
    return {
        "dataset_config": args.dataset_config,
        "template": args.template,
        "system_prompt": args.system_prompt,
        "skip_invalid": args.skip_invalid,
        "max_examples": args.max_examples,
    }


def data_record(args, splits, report) -> dict:
    """What was really trained on: source kind, id or absolute path, sha256 or revision, rows per split."""
    dataset = report.source.get("path", args.dataset) if report.source.get("kind") == "file" else args.dataset
    return {
        **report.source,
        "dataset": dataset,
        "args": data_args(args),
        "rows": {name: len(ds) for name, ds in splits.items()},
    }


def flat_provenance(provenance: dict) -> dict:
    """data_* and model_* MLflow params: kind, id/path, revision/sha256, rows per split."""
    out = {}
    for side, record in provenance.items():
        for key in ("kind", "id", "path", "revision", "sha256", "quantization"):
            if record.get(key):
                out[f"{side}_{key}"] = record[key]
    for name, n in provenance["data"].get("rows", {}).items():
        out[f"data_rows_{name}"] = n
    for name, n in provenance["data"].get("dropped_over_max_length", {}).items():
        out[f"data_dropped_over_max_length_{name}"] = n
    return out


def drop_over_long(splits, cfg, model_args):
    """Counts, and removes, the examples TRL's SFTTrainer would drop silently at max_length (see
    medreason.data.fit_max_length); the log and MLflow say how many. None left to train on is an error."""
    from medreason.data import fit_max_length
    from medreason.models import load_tokenizer

    if cfg.max_length is None or cfg.packing:
        return splits, {}
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    dropped = {}
    for name, ds in list(splits.items()):
        fit = fit_max_length(
            ds,
            tokenizer,
            cfg.max_length,
            str(getattr(cfg.truncation_mode, "value", cfg.truncation_mode)),
            cfg.completion_only_loss,
        )
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
