"""`medreason train`: LoRA / QLoRA supervised fine-tuning with TRL's SFTTrainer, tracked in MLflow.

    medreason train --config configs/smollm2-135m-cpu.yaml                 # embedded default, minutes on a CPU
    medreason train --config configs/smollm2-135m-cpu.yaml --max_steps 5 --lora_r 8
    medreason train --config configs/smollm2-135m-cpu.yaml --resume        # continue after an interruption
    torchrun --nproc_per_node 2 -m medreason train --config configs/smollm2-135m-cpu.yaml   # DDP

    from medreason.train import train
    result = train(["--config", "configs/smollm2-135m-cpu.yaml"])   # what the book calls

Flow: recipe -> checks that need no model -> data -> base model -> PEFT adapter -> SFTTrainer.train ->
test metrics -> adapter saved atomically to lora_adapter/<model name>/ -> MLflow artifact.
Checkpoints go to results/<run name>/ (the recipe's output_dir).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from medreason.config import TEMPLATES, config_dict, parse_config
from medreason.errors import UserError

log = logging.getLogger(__name__)

ADAPTER_META = "medreason.json"  # what generate/evaluate need to use an adapter: base model, template, prompt


@dataclass
class TrainResult:
    adapter_dir: Path
    output_dir: Path
    metrics: dict
    mlflow_run_id: str | None
    global_step: int
    log_history: list


# --------------------------------------------------------------------------------------------- entry point


def train(argv: list[str]) -> TrainResult:
    """Parse a recipe plus overrides and train; the same function serves the CLI and the book."""
    _use_cpu_for_multiprocess()
    args, sft, model_args = parse_config(argv)
    check_hyperparameters(args, sft, model_args)
    configure_runtime(args, sft, model_args)
    output_dir = Path(sft.output_dir)
    resume_from = last_checkpoint(output_dir) if args.resume else None
    if args.resume and resume_from is None:
        log.warning("--resume: no checkpoint in %s, starting from the beginning", output_dir)
    elif not args.resume and last_checkpoint(output_dir) is not None:
        raise UserError(f"{output_dir} already holds checkpoints: pass --resume to continue that run, "
                        f"or choose another --output_dir / --run_name")

    import torch
    from transformers import set_seed
    from trl import SFTTrainer, get_peft_config, get_quantization_config

    from medreason.data import load_splits
    from medreason.models import load_model_and_tokenizer

    splits = load_splits(args.dataset, dataset_config=args.dataset_config, template=args.template,
                         system_prompt=args.system_prompt, skip_invalid=args.skip_invalid,
                         max_examples=args.max_examples)
    log.info("data: %s", ", ".join(f"{k} {len(v)}" for k, v in splits.items()))

    quantization = get_quantization_config(model_args)
    dtype = "auto" if model_args.dtype == "auto" else getattr(torch, model_args.dtype)  # configure_runtime set it
    model, tokenizer = load_model_and_tokenizer(
        model_args.model_name_or_path, dtype=dtype, quantization_config=quantization,
        attn_implementation=model_args.attn_implementation,
    )
    model.config.use_cache = False  # no KV cache while training
    # The seed is set right before the adapter's weights are drawn, so one seed gives one loss curve.
    set_seed(sft.seed)
    peft_config = get_peft_config(model_args)

    run = start_mlflow_run(args, sft, model_args, output_dir, resume=resume_from is not None)
    try:
        trainer = SFTTrainer(
            model=model,
            args=sft,
            train_dataset=splits["train"],
            eval_dataset=splits["validation"] if sft.eval_strategy != "no" else None,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        if _wants_dense_head(args, trainer.model):
            use_dense_lm_head(trainer.model)
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        metrics = {k: v for k, v in trainer.state.log_history[-1].items() if isinstance(v, (int, float))}
        if sft.eval_strategy != "no":
            metrics.update(trainer.evaluate(splits["validation"], metric_key_prefix="eval"))
        if args.evaluate_test and len(splits["test"]):
            metrics.update(trainer.evaluate(splits["test"], metric_key_prefix="test"))
        adapter_dir = None
        if trainer.is_world_process_zero():
            adapter_dir = save_adapter(trainer, tokenizer, args, sft, model_args, metrics)
            _log_final(run, metrics, adapter_dir)
        end_mlflow_run(run, "FINISHED")
    except BaseException:
        end_mlflow_run(run, "KILLED" if _interrupted() else "FAILED")
        raise
    return TrainResult(adapter_dir=adapter_dir, output_dir=output_dir, metrics=metrics,
                       mlflow_run_id=run.info.run_id if run else None, global_step=trainer.state.global_step,
                       log_history=list(trainer.state.log_history))


def ensure_adapter(config: str = "configs/smollm2-135m-cpu.yaml", overrides: list[str] = ()) -> Path:
    """The adapter a recipe produces: reuse it when lora_adapter/<model>/ already holds one trained by
    medreason, else train it now. Book chapters call this so that they run in any order."""
    args, _, model_args = parse_config(["--config", config, *overrides])
    path = Path(args.adapter_root) / model_args.model_name_or_path.rstrip("/").split("/")[-1]
    if (path / "adapter_model.safetensors").is_file() and (path / ADAPTER_META).is_file():
        log.info("using the adapter in %s (delete it to train again)", path)
        return path
    log.info("no adapter in %s yet: training one with %s", path, config)
    return train(["--config", config, *overrides]).adapter_dir


def cli(args, rest: list[str]) -> int:
    if args.help:
        parser_help()
        return 0
    if "--config" not in rest:
        raise UserError("medreason train needs a recipe: --config configs/<recipe>.yaml")
    result = train(rest)
    if result.adapter_dir:
        shown = {k: round(v, 4) for k, v in result.metrics.items() if "loss" in k or "perplexity" in k}
        print(f"adapter saved to {result.adapter_dir}  ({result.global_step} steps; {shown})")
    return 0


def parser_help():
    from medreason.config import parser

    parser().print_help()


# --------------------------------------------------------------------------------------------- checks before loading


def check_hyperparameters(args, sft, model_args):
    """Fail in a second, not after the model loads: values that cannot train."""
    if not model_args.model_name_or_path:
        raise UserError("model_name_or_path is not set (the recipe names the base model)")
    if model_args.use_peft is False:
        raise UserError("use_peft is false: medreason trains LoRA adapters only (set use_peft: true)")
    if model_args.lora_r < 1:
        raise UserError(f"lora_r must be a positive integer, got {model_args.lora_r}")
    if model_args.lora_alpha <= 0:
        raise UserError(f"lora_alpha must be positive, got {model_args.lora_alpha}")
    if not 0 <= model_args.lora_dropout < 1:
        raise UserError(f"lora_dropout must be in [0, 1), got {model_args.lora_dropout}")
    if sft.learning_rate <= 0:
        raise UserError(f"learning_rate must be positive, got {sft.learning_rate}")
    if sft.per_device_train_batch_size < 1:
        raise UserError(f"per_device_train_batch_size must be at least 1, got {sft.per_device_train_batch_size}")
    if model_args.load_in_4bit and model_args.load_in_8bit:
        raise UserError("load_in_4bit and load_in_8bit are both set: choose one")
    if args.template not in TEMPLATES:
        raise UserError(f"template '{args.template}' is unknown")
    config = _model_config(model_args.model_name_or_path)
    context = getattr(config, "max_position_embeddings", None)
    if sft.max_length is not None and context is not None and sft.max_length > context:
        raise UserError(f"max_length {sft.max_length} is beyond the context of {model_args.model_name_or_path} ({context} tokens)")
    targets = model_args.lora_target_modules
    if isinstance(targets, str) and targets != "all-linear":
        # one value on the command line (`--lora_target_modules q_proj`) arrives as a string, which PEFT
        # would read as a regular expression matched against full module paths: make it a list of one name
        targets = model_args.lora_target_modules = [targets]
    if targets and targets != "all-linear":
        names = _module_names(config)
        missing = [t for t in targets if t not in names]
        if missing:
            raise UserError(f"lora_target_modules: {model_args.model_name_or_path} has no module named "
                            f"'{missing[0]}' (it has {', '.join(sorted(names))})")


def _model_config(name: str):
    """The model's config without its weights (for the GGUF route, the converted cache or the GGUF header)."""
    from transformers import AutoConfig

    from medreason.models import resolve_model

    source = resolve_model(name)
    if source.kind == "gguf":
        path = Path(source.path)
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    return AutoConfig.from_pretrained(source.path, local_files_only=source.kind != "hub")


def _module_names(config) -> set[str]:
    """Leaf linear-layer names of the architecture, from a weightless copy on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name.split(".")[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


# --------------------------------------------------------------------------------------------- runtime


def configure_runtime(args, sft, model_args):
    """Precision, threads and output paths that depend on the machine."""
    import torch

    from medreason.doctor import cpu_supports_bf16

    on_gpu = torch.cuda.is_available() and not sft.use_cpu
    if args.precision == "auto":
        bf16 = torch.cuda.is_bf16_supported() if on_gpu else cpu_supports_bf16()
        precision = "bf16" if bf16 else ("fp16" if on_gpu else "fp32")
        log.info("precision: %s (auto: %s)", precision,
                 "GPU" if on_gpu else ("CPU has native bf16" if bf16 else "this CPU has no native bf16 matmul"))
    else:
        precision = args.precision
    sft.bf16, sft.fp16 = precision == "bf16", precision == "fp16"
    # TrainingArguments derives `mixed_precision` (what the Accelerator autocasts to) from bf16/fp16 in
    # __post_init__, which ran when the recipe was parsed: without this the run would silently stay in fp32.
    sft.mixed_precision = precision if precision in ("bf16", "fp16") else "no"
    # dtype not given (config.parser defaults it to None): with an adapter under bf16 the frozen base weights are
    # stored in bf16 (the adapter's own weights stay fp32, PEFT's default), since fp32 frozen weights would only
    # be cast to bf16 again in every matmul; QLoRA computes in bf16 as in the QLoRA paper; fp32 otherwise.
    if model_args.dtype is None:
        frozen_bf16 = model_args.use_peft and precision == "bf16"
        model_args.dtype = "bfloat16" if frozen_bf16 or model_args.load_in_4bit else "float32"
    if not on_gpu:
        threads = args.num_threads or _physical_cores()
        world = int(os.environ.get("WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, threads // world))
    if model_args.model_name_or_path and not sft.run_name:
        sft.run_name = Path(sft.output_dir).name
    if sft.eval_strategy == "no":
        sft.eval_on_start = False  # a recipe's eval_on_start would otherwise evaluate with no eval set
    sft.report_to = []  # medreason owns the MLflow run (below); the trainer's callback logs into it


def _wants_dense_head(args, model) -> bool:
    if args.lm_head == "auto":
        return next(model.parameters()).device.type == "cpu"
    return args.lm_head == "dense"


def use_dense_lm_head(model):
    """Replace TRL's fused LM head with a dense one for the forward passes that compute the loss.

    TRL's SFTTrainer patches the model so that `model(..., fused_lm_head=True)` returns per-token
    log-probabilities, entropy and top-1 hits computed in vocabulary tiles, never building the full logits. On
    a GPU a Triton kernel does that in one pass; on a CPU it falls back to torch code that walks each tile
    several times in fp32. Here (SmolLM2-135M, 1,200 tokens, bf16) that fallback takes 1.8 s per step against
    0.5 s for the plain logits of the labelled positions and one log-softmax: a third of the whole step.
    This computes the same fields (in fp32, from bf16 logits) from the logits of the positions that carry a
    label only, and leaves every other call (generation, plain forwards) to the original forward. Models whose
    head scales or soft-caps its logits, or that add a router loss, keep TRL's head.
    """
    import functools

    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config()
    special = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
               "logits_scaling", "output_router_logits")
    if any(getattr(config, name, None) for name in special):
        log.info("lm_head: %s scales its logits or adds a router loss: keeping TRL's fused head",
                 config.model_type)
        return
    fused_forward = base.forward  # TRL's patched forward, kept for every call this does not handle

    @functools.wraps(type(base).forward)
    def forward(*args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or labels is None or shift_labels is not None:
            return fused_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                                 num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = base.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(hidden.device)
        mask = labels != -100
        targets = labels[mask]
        log_softmax = torch.log_softmax(base.get_output_embeddings()(hidden[mask]).float(), dim=-1)
        token_log_probs = log_softmax.gather(-1, targets[:, None]).squeeze(-1)
        with torch.no_grad():
            entropy = -(log_softmax.exp() * log_softmax).sum(-1)
            is_top1 = log_softmax.argmax(-1) == targets

        def per_position(values):  # zero where the label is -100, like TRL's head
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        log_probs = per_position(token_log_probs)
        denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / denominator, log_probs=log_probs,
                                   entropy=per_position(entropy), is_top1=per_position(is_top1), label_mask=mask)

    forward.dense_lm_head = True  # lets callers (and tests) see which head is in place
    base.forward = forward
    log.info("lm_head: dense (the logits of labelled positions; TRL's chunked head is for GPUs)")


def _use_cpu_for_multiprocess():
    """Under torchrun / accelerate launch on a machine without CUDA, DDP over gloo needs `use_cpu`: without
    it accelerate sees no accelerator and every process trains alone (and each saves its own adapter).
    The environment variable is read when SFTConfig is built, so it is set before the recipe is parsed."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint. The trainer writes a checkpoint in place and trainer_state.json
    last, so a folder without it is one that a kill interrupted: resuming from it would fail."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not output_dir.is_dir():
        return None
    complete = [p for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _interrupted() -> bool:
    import sys

    return isinstance(sys.exc_info()[1], KeyboardInterrupt)


# --------------------------------------------------------------------------------------------- MLflow


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store under results/."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    Path("results").mkdir(exist_ok=True)
    return f"sqlite:///{Path('results/mlflow.db').resolve()}"


def start_mlflow_run(args, sft, model_args, output_dir: Path, resume: bool):
    """Start (or, on --resume, reopen) this run's MLflow run on rank 0; other ranks log nothing."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    import mlflow
    from transformers.integrations import MLflowCallback  # noqa: F401  (the trainer logs metrics into our run)

    os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "FALSE")
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:") and mlflow.get_experiment_by_name(args.mlflow_experiment) is None:
        # a SQLite store keeps its artifacts beside it (MLflow's default is ./mlruns in the working directory)
        db = Path(uri.removeprefix("sqlite:///"))
        mlflow.create_experiment(args.mlflow_experiment, artifact_location=(db.parent / "mlartifacts").resolve().as_uri())
    mlflow.set_experiment(args.mlflow_experiment)
    id_file = output_dir / "mlflow_run_id"
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
    run = mlflow.start_run(run_id=run_id, run_name=sft.run_name)
    output_dir.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run.info.run_id)
    resolved = config_dict(args, sft, model_args)
    if run_id is None:
        # enum values as the trainer's MLflow callback logs them ('cosine', not 'SchedulerType.COSINE'):
        # MLflow refuses a param logged twice with different values, and drops the callback's whole batch
        mlflow.log_params({k: str(getattr(v, "value", v))[:500] for k, v in resolved.items() if k in LOGGED_PARAMS})
    mlflow.log_dict(resolved, "resolved_config.json")
    (output_dir / "resolved_config.json").write_text(json.dumps(resolved, indent=2))
    sft.report_to = ["mlflow"]
    return run


LOGGED_PARAMS = {
    "model_name_or_path", "dataset", "template", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
    "use_rslora", "use_dora", "load_in_4bit", "learning_rate", "lr_scheduler_type", "warmup_ratio", "weight_decay",
    "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps", "max_length",
    "loss_type", "bf16", "gradient_checkpointing", "seed", "train_sampling_strategy", "packing", "padding_free",
}


def _log_final(run, metrics: dict, adapter_dir: Path):
    if run is None:
        return
    import mlflow

    mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")


def end_mlflow_run(run, status: str):
    if run is None:
        return
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.end_run(status=status)
    else:  # the trainer's callback may have closed it already; set the final status explicitly
        mlflow.MlflowClient().set_terminated(run.info.run_id, status=status)


# --------------------------------------------------------------------------------------------- saving


def save_adapter(trainer, tokenizer, args, sft, model_args, metrics: dict) -> Path:
    """Adapter + tokenizer + model card + medreason.json into <adapter_root>/<model name>/, atomically:
    written to a temporary folder beside it, then swapped in, so a crash never leaves half an adapter."""
    name = model_args.model_name_or_path.rstrip("/").split("/")[-1]
    final = Path(args.adapter_root) / name
    final.parent.mkdir(parents=True, exist_ok=True)
    # a plain mkdir (mode from the umask), not mkdtemp: mkdtemp's 0700 would stay on the adapter folder
    tmp = final.with_name(f".{name}.tmp-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()
    old = final.with_name(f".{name}.old")
    try:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        meta = {
            "base_model": model_args.model_name_or_path,
            "vocab_size": len(tokenizer),
            "template": args.template,
            "system_prompt": args.system_prompt,
            "dataset": args.dataset,
            "run_name": sft.run_name,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "config": config_dict(args, sft, model_args),
        }
        (tmp / ADAPTER_META).write_text(json.dumps(meta, indent=2))
        (tmp / "README.md").write_text(model_card(meta))
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():  # failed between the two renames: put the previous one back
            os.replace(old, final)
        raise
    log.info("adapter saved to %s", final)
    return final


def model_card(meta: dict) -> str:
    c = meta["config"]
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(meta["metrics"].items()) if "loss" in k or "perplexity" in k)
    return f"""---
base_model: {meta['base_model']}
library_name: peft
tags: [lora, sft, trl, medical, medreason]
license: apache-2.0
---

# LoRA adapter for {meta['base_model']} (medreason)

**For teaching and research only. Not for clinical use: its answers are often wrong and must never guide
the care of a patient.**

- Base model: `{meta['base_model']}`
- Data: `{meta['dataset']}` (medreason's prompt-completion format, template `{meta['template']}`)
- LoRA: r={c.get('lora_r')}, alpha={c.get('lora_alpha')}, dropout={c.get('lora_dropout')}, targets={c.get('lora_target_modules')}, rsLoRA={c.get('use_rslora')}, DoRA={c.get('use_dora')}, 4-bit base={c.get('load_in_4bit')}
- Training: lr={c.get('learning_rate')}, batch={c.get('per_device_train_batch_size')} x accumulation {c.get('gradient_accumulation_steps')}, max_steps={c.get('max_steps')}, epochs={c.get('num_train_epochs')}, max_length={c.get('max_length')}, loss={c.get('loss_type')}, seed={c.get('seed')}
- Run: `{meta['run_name']}` (resolved config in `medreason.json`)

## Metrics

| metric | value |
|---|---|
{metrics}

## Use

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM
base = AutoModelForCausalLM.from_pretrained("{meta['base_model']}")
model = PeftModel.from_pretrained(base, "path/to/this/folder")
```

or `medreason chat --adapter path/to/this/folder`.
"""
