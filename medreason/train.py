"""`medreason train`: LoRA / QLoRA supervised fine-tuning with TRL's SFTTrainer, tracked in MLflow.

    medreason train --config configs/smollm2-135m-cpu.yaml                 # embedded default, minutes on a CPU
    medreason train --config configs/smollm2-135m-cpu.yaml --max_steps 5 --lora_r 8
    medreason train --config configs/smollm2-135m-cpu.yaml --resume        # continue after an interruption
    torchrun --nproc_per_node 2 -m medreason train --config configs/smollm2-135m-cpu.yaml   # DDP

    from medreason.train import train
    result = train(["--config", "configs/smollm2-135m-cpu.yaml"])   # what the book calls

Flow: recipe -> checks that need no model -> data -> base model -> PEFT adapter -> SFTTrainer.train ->
validation and test metrics -> adapter saved atomically to lora_adapter/<model name>/ (medreason.adapter) ->
MLflow artifact (medreason.tracking).
Checkpoints go to results/<run name>/ (the recipe's output_dir).
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from medreason.adapter import WEIGHTS, adapter_path, read_adapter, recipe_hash, save_adapter
from medreason.config import TEMPLATES, config_dict, parse_config
from medreason.distributed import check_launch, gathered_state_dict
from medreason.errors import UserError
from medreason.io import atomic_write_json, sha256_file
from medreason.locks import run_locks

log = logging.getLogger(__name__)


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
    check_launch(sft.use_cpu)
    recipe = run_recipe_hash(args, sft, model_args)  # before the machine adjusts anything
    check_hyperparameters(args, sft, model_args)
    check_steps(sft)
    check_folders(args, sft, model_args)
    output_dir = Path(sft.output_dir)
    resume_from = last_checkpoint(output_dir) if args.resume else None
    if args.resume and resume_from is None:
        log.warning("--resume: no checkpoint in %s, starting from the beginning", output_dir)
    elif not args.resume and last_checkpoint(output_dir) is not None:
        raise UserError(f"{output_dir} already holds checkpoints: pass --resume to continue that run, "
                        f"or choose another --output_dir / --run_name")
    if args.trainer == "grpo":  # rewards on the MCQ pool instead of the SFT corpus: medreason.grpo from here
        from medreason.grpo import train_grpo

        return train_grpo(args, sft, model_args, recipe, resume_from)
    if resume_from is not None:
        check_resume(resume_from, sft, model_args)

    from medreason.data import load_splits

    # the data is read and checked before anything is written or any model loads
    splits, report = load_splits(args.dataset, **data_args(args), with_report=True)
    splits, dropped = drop_over_long(splits, sft, model_args)
    if sft.eval_strategy != "no" and len(splits["validation"]) == 0:  # TRL would fail with a bare StopIteration
        raise UserError(f"the validation split is empty ({len(splits['train'])} training rows): use more rows "
                        f"(--max_examples) or turn evaluation off with --eval_strategy no")
    log.info("data: %s; %s", report.source.get("description", report.origin),
             ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    with stop_on_sigterm(), run_locks(*locks(args, sft, model_args)), runtime(args, sft, model_args):
        return _train(args, sft, model_args, splits, report, recipe, resume_from, dropped)


def _train(args, sft, model_args, splits, report, recipe, resume_from, dropped=None) -> TrainResult:
    import torch
    from transformers import set_seed
    from trl import get_peft_config, get_quantization_config

    from medreason.models import load_model_and_tokenizer, resolve_model
    from medreason.trainer import trainer_class
    from medreason.tracking import log_params, mlflow_run

    output_dir = Path(sft.output_dir)
    quantization = get_quantization_config(model_args)
    dtype = "auto" if model_args.dtype == "auto" else getattr(torch, model_args.dtype)  # runtime() set it
    model, tokenizer = load_model_and_tokenizer(
        model_args.model_name_or_path, dtype=dtype, quantization_config=quantization,
        attn_implementation=model_args.attn_implementation,
    )
    model_source = resolve_model(model_args.model_name_or_path).provenance(model)
    model.config.use_cache = False  # no KV cache while training
    # The seed is set right before the adapter's weights are drawn, so one seed gives one loss curve.
    set_seed(sft.seed)
    peft_config = get_peft_config(model_args)
    resolved = config_dict(args, sft, model_args)
    provenance = {"data": data_record(args, splits, report) | {"dropped_over_max_length": dropped or {}},
                  "model": model_source}

    rank0 = int(os.environ.get("RANK", "0")) == 0
    run_id = _previous_run_id(output_dir) if resume_from else None
    with mlflow_run(args.mlflow_experiment, run_name=sft.run_name, run_id=run_id, enabled=rank0) as run:
        if run is not None:
            record_run(output_dir, run.info.run_id, resolved, recipe)
            if run_id is None:
                log_params({k: v for k, v in resolved.items() if k in LOGGED_PARAMS} | flat_provenance(provenance))
            import mlflow

            mlflow.log_dict(resolved, "resolved_config.json")
            mlflow.log_dict(provenance, "provenance.json")
            sft.report_to = ["mlflow"]  # the trainer's MLflow callback logs its metrics into this run
        trainer = trainer_class()(
            model=model,
            args=sft,
            train_dataset=splits["train"],
            eval_dataset=splits["validation"] if sft.eval_strategy != "no" else None,
            processing_class=tokenizer,
            peft_config=peft_config,
            lm_head=args.lm_head,
        )
        if resume_from is not None and checkpoint_step(resume_from) >= sft.max_steps > 0:
            # Trainer.train runs one optimizer step before it checks max_steps, so a run resumed from its final
            # checkpoint (killed while evaluating or saving) would train past it: take the checkpoint as it is
            from transformers import TrainerState

            log.info("--resume: %s already reached max_steps %d: no further training; evaluating and saving it",
                     resume_from, sft.max_steps)
            trainer.model.load_adapter(str(resume_from), trainer.model.active_adapter, is_trainable=True)
            trainer.state = TrainerState.load_from_json(str(resume_from / "trainer_state.json"))
        else:
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        metrics = {k: v for k, v in trainer.state.log_history[-1].items() if isinstance(v, (int, float))}
        if sft.eval_strategy != "no":
            metrics.update(final_validation(trainer, splits["validation"]))
        if args.evaluate_test and len(splits["test"]):
            metrics.update(trainer.evaluate(splits["test"], metric_key_prefix="test"))
        adapter_dir = None
        state_dict = gathered_state_dict(trainer)  # a collective under FSDP: on every rank, before rank 0 saves
        if trainer.is_world_process_zero():
            meta = {
                "trainer": "sft",
                "base_model": model_args.model_name_or_path,
                "template": args.template,
                "system_prompt": args.system_prompt,
                "dataset": args.dataset,
                "run_name": sft.run_name,
                "recipe_hash": recipe,
                **provenance,
                "metrics": {k: float(v) for k, v in metrics.items()},
                "config": resolved,
            }
            adapter_dir = save_adapter(trainer.model, tokenizer, adapter_path(args.adapter_root,
                                                                             model_args.model_name_or_path), meta,
                                       state_dict=state_dict)
            if run is not None:
                import mlflow

                mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items()})
                mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")
    return TrainResult(adapter_dir=adapter_dir, output_dir=output_dir, metrics=metrics,
                       mlflow_run_id=run.info.run_id if run else None, global_step=trainer.state.global_step,
                       log_history=list(trainer.state.log_history))


def final_validation(trainer, validation) -> dict:
    """Validation metrics of the final weights: the trainer's own pass at the last step when it made one (a
    recipe whose max_steps is a multiple of eval_steps), else a pass now. Evaluating twice would cost a whole
    validation pass for the same numbers."""
    step = trainer.state.global_step
    done = [e for e in trainer.state.log_history if e.get("step") == step and "eval_loss" in e]
    if done:
        return {k: v for k, v in done[-1].items() if k.startswith("eval_") and isinstance(v, (int, float))}
    return trainer.evaluate(validation, metric_key_prefix="eval")


def data_args(args) -> dict:
    """Every argument that decides which rows land in which split: stored with the adapter so that `evaluate`
    rebuilds exactly the split the adapter was trained on."""
    return {"dataset_config": args.dataset_config, "template": args.template, "system_prompt": args.system_prompt,
            "skip_invalid": args.skip_invalid, "max_examples": args.max_examples}


def data_record(args, splits, report) -> dict:
    """What was really trained on: source kind, id or absolute path, sha256 or revision, rows per split."""
    dataset = report.source.get("path", args.dataset) if report.source.get("kind") == "file" else args.dataset
    return {**report.source, "dataset": dataset, "args": data_args(args),
            "rows": {name: len(ds) for name, ds in splits.items()}}


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


def run_recipe_hash(args, sft, model_args) -> str:
    """The hash of what decides the adapter: the resolved recipe and, for a run that continues an adapter
    (GRPO's init_adapter), that adapter's weights, so that a retrained SFT adapter also retrains what builds on it."""
    resolved = config_dict(args, sft, model_args)
    init = getattr(args, "init_adapter", None)
    if init and (Path(init) / WEIGHTS).is_file():
        resolved["init_adapter_weights_sha256"] = sha256_file(Path(init) / WEIGHTS)
    return recipe_hash(resolved)


def ensure_adapter(config: str = "configs/smollm2-135m-cpu.yaml", overrides: list[str] = ()) -> Path:
    """The adapter a recipe produces. Reused when its folder holds an adapter trained from the same resolved
    recipe (compared by `recipe_hash`); otherwise trained now into the recipe's own folder, with a log line that
    says why. Book chapters call this so that they run in any order."""
    args, sft, model_args = parse_config(["--config", config, *overrides])
    path = adapter_path(args.adapter_root, model_args.model_name_or_path)
    wanted = run_recipe_hash(args, sft, model_args)
    if path.is_dir():
        try:
            found = read_adapter(path).get("recipe_hash")
        except UserError as e:
            found, why = None, f"it is unusable ({e})"
        else:
            why = f"it was trained from another recipe (hash {found}, this recipe {wanted})"
        if found == wanted:
            log.info("using the adapter in %s (same recipe, hash %s)", path, wanted)
            return path
        log.info("retraining %s with %s: %s", path, config, why)
    else:
        log.info("no adapter in %s yet: training one with %s", path, config)
    extra = []
    output_dir = Path(sft.output_dir)
    if last_checkpoint(output_dir) is not None:
        recorded = output_dir / "recipe_hash"
        if recorded.is_file() and recorded.read_text().strip() == wanted:
            log.info("resuming the interrupted run of this recipe in %s", output_dir)
            extra = ["--resume", "true"]
        else:  # checkpoints of another recipe: kept, but out of the way of this one
            aside = output_dir.with_name(f"{output_dir.name}.superseded-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(output_dir, aside)
            log.info("%s held checkpoints of another recipe: moved to %s", output_dir, aside)
    return train(["--config", config, *overrides, *extra]).adapter_dir


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
    from medreason.config import print_train_help

    print_train_help()


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
    max_length = getattr(sft, "max_length", None)  # SFTConfig's; GRPOConfig has max_completion_length
    if max_length is not None and context is not None and max_length > context:
        raise UserError(f"max_length {max_length} is beyond the context of {model_args.model_name_or_path} ({context} tokens)")
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


def check_steps(sft):
    """A run that would take no optimizer step is refused, rather than saved as an untrained adapter."""
    if sft.max_steps == 0:
        raise UserError("max_steps is 0: the run would train nothing; set max_steps >= 1, or -1 to train "
                        "for num_train_epochs")
    if sft.max_steps < 0 and sft.num_train_epochs <= 0:
        raise UserError(f"num_train_epochs is {sft.num_train_epochs:g} and max_steps is unset: the run would train "
                        f"nothing; set num_train_epochs > 0 or max_steps >= 1")


def check_folders(args, sft, model_args):
    """Where the run writes: checked before anything loads, not when the adapter is saved after training."""
    checks = [("output_dir", Path(sft.output_dir)), ("adapter_root", Path(args.adapter_root)),
              ("adapter_root", adapter_path(args.adapter_root, model_args.model_name_or_path))]
    for name, folder in checks:
        for p in [folder, *folder.absolute().parents]:
            if p.exists():
                if not p.is_dir():
                    raise UserError(f"--{name} {folder}: {p} is a file, not a folder; choose another --{name}")
                if not os.access(p, os.W_OK | os.X_OK):
                    raise UserError(f"--{name} {folder}: {p} is not writable; choose another --{name}")
                break


def locks(args, sft, model_args) -> list[tuple[Path, str]]:
    """One run at a time per checkpoint folder and per adapter folder (rank 0 holds them for all ranks)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return []
    adapter = adapter_path(args.adapter_root, model_args.model_name_or_path)
    return [(Path(sft.output_dir) / ".medreason.lock", f"--output_dir {sft.output_dir}"),
            (adapter.parent / f".{adapter.name}.lock", f"the adapter folder {adapter}")]


@contextmanager
def stop_on_sigterm():
    """SIGTERM (what schedulers and containers send) raises `Terminated`, a KeyboardInterrupt: the MLflow run is
    marked KILLED, the checkpoints stay, and `--resume` continues, exactly as after Ctrl-C."""
    import signal
    import threading

    from medreason.errors import Terminated

    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return

    def handler(signum, frame):
        raise Terminated(signum)

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


# the LoRA settings that shape the adapter's tensors or how they are used: a checkpoint only resumes into the same
LORA_SHAPE = {"lora_r": "r", "lora_alpha": "lora_alpha", "use_dora": "use_dora", "use_rslora": "use_rslora",
              "lora_target_modules": "target_modules", "lora_modules_to_save": "modules_to_save"}


def check_resume(checkpoint: Path, sft, model_args):
    """--resume with other LoRA settings than the checkpoint's would fail after loading with a wall of 'size
    mismatch': compare PEFT's adapter_config.json of the checkpoint with this run's settings first."""
    import json

    config_file = checkpoint / "adapter_config.json"
    if config_file.is_file():
        saved = json.loads(config_file.read_text())
        for ours, theirs in LORA_SHAPE.items():
            new, old = getattr(model_args, ours, None), saved.get(theirs)
            if ours == "lora_target_modules":
                if new == "all-linear" or old is None:
                    continue  # PEFT stores all-linear resolved to module names: not comparable by name
                new, old = sorted([new] if isinstance(new, str) else new or []), sorted(old)
            elif ours == "lora_modules_to_save":
                new, old = sorted(new or []), sorted(old or [])
            if new != old:
                raise UserError(f"--resume: {checkpoint} was trained with {ours} {old}, this run has {new}; "
                                f"resume with the checkpoint's settings, or start anew with another --output_dir")


def checkpoint_step(checkpoint: Path) -> int:
    import json

    return int(json.loads((checkpoint / "trainer_state.json").read_text()).get("global_step", 0))


def drop_over_long(splits, sft, model_args):
    """Counts, and removes, the examples TRL's SFTTrainer would drop silently at max_length (see
    medreason.data.fit_max_length); the log and MLflow say how many. None left to train on is an error."""
    from medreason.data import fit_max_length
    from medreason.models import load_tokenizer

    if sft.max_length is None or sft.packing:
        return splits, {}
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    dropped = {}
    for name, ds in list(splits.items()):
        fit = fit_max_length(ds, tokenizer, sft.max_length, str(getattr(sft.truncation_mode, "value", sft.truncation_mode)),
                             sft.completion_only_loss)
        dropped[name] = fit["dropped"]
        if fit["dropped"]:
            keep = sorted(set(range(len(ds))) - set(fit["dropped_rows"]))
            splits[name] = ds.select(keep)
    if len(splits["train"]) == 0:
        raise UserError(f"max_length {sft.max_length}: the prompt alone fills it in every training example, so "
                        f"nothing would train; raise --max_length (`medreason data stats --max-length N` counts)")
    if any(dropped.values()):
        log.warning("max_length %d: %s examples dropped (%s), since their prompt alone fills max_length and TRL "
                    "would train on no token of them; raise --max_length to keep them", sft.max_length,
                    sum(dropped.values()), ", ".join(f"{k} {v}" for k, v in dropped.items()))
    return splits, dropped


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


@contextmanager
def runtime(args, sft, model_args):
    """Precision and threads that depend on the machine, for the duration of the block: torch's thread count
    is put back afterwards."""
    import torch

    threads_before = torch.get_num_threads()
    configure_runtime(args, sft, model_args)
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)


def configure_runtime(args, sft, model_args):
    """Precision, threads and run name that depend on the machine (see `runtime`)."""
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
    sft.report_to = []  # medreason owns the MLflow run (medreason.tracking); the trainer's callback logs into it


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


# --------------------------------------------------------------------------------------------- MLflow


def record_run(output_dir: Path, run_id: str, resolved: dict, recipe: str):
    """Beside the checkpoints: the MLflow run they log to (a resumed run continues it), the resolved config, and
    the recipe hash (ensure_adapter resumes checkpoints of the same recipe and moves others aside)."""
    from medreason.io import atomic_write_text

    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "mlflow_run_id", run_id)
    atomic_write_json(output_dir / "resolved_config.json", resolved)
    atomic_write_text(output_dir / "recipe_hash", recipe)


def _previous_run_id(output_dir: Path) -> str | None:
    """The MLflow run a resumed run continues (written next to its checkpoints)."""
    id_file = output_dir / "mlflow_run_id"
    return id_file.read_text().strip() or None if id_file.is_file() else None


LOGGED_PARAMS = {
    "model_name_or_path", "dataset", "template", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
    "use_rslora", "use_dora", "load_in_4bit", "learning_rate", "lr_scheduler_type", "warmup_ratio", "weight_decay",
    "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps", "max_length",
    "loss_type", "bf16", "gradient_checkpointing", "seed", "train_sampling_strategy", "packing", "padding_free",
}

