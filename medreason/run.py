"""What every training run shares, whatever its method: the recipes (medreason.sft, medreason.grpo) are built
from these pieces and import nothing from each other.

    from medreason import run
    run.check_before_loading(args, cfg, model_args)   # values that cannot train, folders that cannot be written
    resume_from = run.resume_point(args, cfg)          # --resume: the newest complete checkpoint, or None
    with run.session(args, cfg, model_args):          # SIGTERM as Ctrl-C, one run per folder, torch threads
        model, tokenizer, source = run.load_base(model_args)
        with run.tracked(args, cfg, resolved, recipe, resumed=...) as tracking:   # the MLflow run (rank 0)
            ...train...
            return run.finish(trainer, tokenizer, args, model_args, meta, metrics, tracking)

The recipe's configuration arrives settled (medreason.config.parse_config: precision, dtype, run name,
report_to decided before TRL's classes validate), and nothing here changes it.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medreason.adapter import adapter_path, recipe_hash, save_adapter, weights_sha256
from medreason.checkpoints import newest_loadable
from medreason.config import config_dict
from medreason.errors import UserError
from medreason.guards import inputs, refuse_saves_onto_inputs
from medreason.io import atomic_write_json, atomic_write_text, first_existing
from medreason.locks import run_locks
from medreason.models import model_config  # moved to medreason.models (guards and adapter read it too)

if TYPE_CHECKING:  # the config classes, for the signatures only: importing TRL here would slow `medreason --help`
    from transformers import TrainingArguments
    from trl import ModelConfig

    from medreason.config import MedreasonArgs
from medreason.template import TEMPLATES

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    adapter_dir: Path | None  # None on ranks other than 0, which do not save
    output_dir: Path
    metrics: dict
    mlflow_run_id: str | None
    global_step: int
    log_history: list


# the recipe keys logged as MLflow params (the whole resolved recipe is logged as resolved_config.json)
LOGGED_PARAMS = {
    "model_name_or_path",
    "dataset",
    "template",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "use_rslora",
    "use_dora",
    "load_in_4bit",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_ratio",
    "weight_decay",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "max_length",
    "loss_type",
    "bf16",
    "gradient_checkpointing",
    "seed",
    "train_sampling_strategy",
    "packing",
    "padding_free",
}


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def recipe_hash_of(args, cfg, model_args) -> str:
    """The hash of what decides the adapter: the recipe as written (before the machine settles precision and
    dtype) and, for a run that continues an adapter (GRPO's init_adapter), that adapter's weights, so that a
    retrained SFT adapter also retrains what builds on it."""
    resolved = config_dict(args, cfg, model_args)
    init = getattr(args, "init_adapter", None)
    if init and weights_sha256(init):
        resolved["init_adapter_weights_sha256"] = weights_sha256(init)
    return recipe_hash(resolved)


# --------------------------------------------------------------------------------------------- checks before loading


def check_before_loading(args: MedreasonArgs, cfg: TrainingArguments, model_args: ModelConfig) -> None:
    """Everything that fails in a second instead of after the model loads."""
    check_hyperparameters(args, cfg, model_args)
    check_steps(cfg)
    check_folders(args, cfg, model_args)


def check_hyperparameters(args, cfg, model_args):
    """Values that cannot train."""
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
    if cfg.learning_rate <= 0:
        raise UserError(f"learning_rate must be positive, got {cfg.learning_rate}")
    if cfg.per_device_train_batch_size < 1:
        raise UserError(f"per_device_train_batch_size must be at least 1, got {cfg.per_device_train_batch_size}")
    if model_args.load_in_4bit and model_args.load_in_8bit:
        raise UserError("load_in_4bit and load_in_8bit are both set: choose one")
    if args.template not in TEMPLATES:
        raise UserError(f"template '{args.template}' is unknown")
    config = model_config(model_args.model_name_or_path)
    context = getattr(config, "max_position_embeddings", None)
    max_length = getattr(cfg, "max_length", None)  # SFTConfig's; GRPOConfig has max_completion_length
    if max_length is not None and context is not None and max_length > context:
        raise UserError(
            f"max_length {max_length} is beyond the context of {model_args.model_name_or_path} ({context} tokens)"
        )
    targets = lora_targets(model_args)
    if targets != "all-linear":
        names = module_names(config)
        missing = [t for t in targets if t not in names]
        if missing:
            raise UserError(
                f"lora_target_modules: {model_args.model_name_or_path} has no module named "
                f"'{missing[0]}' (it has {', '.join(sorted(names))})"
            )


def lora_targets(model_args) -> str | list[str]:
    """The LoRA target modules as PEFT must get them: "all-linear", or a list of module names. TRL's ModelConfig
    turns a list of one name into a bare string, which PEFT would read as a regular expression matched against
    whole module paths (`q_proj` then matches nothing)."""
    targets = model_args.lora_target_modules
    if targets is None or targets == "all-linear":
        return "all-linear" if targets else []
    return [targets] if isinstance(targets, str) else list(targets)


def peft_config(model_args):
    """TRL's LoraConfig from the recipe's lora_* fields, with the target modules as `lora_targets` reads them."""
    from trl import get_peft_config

    config = get_peft_config(model_args)
    if config is not None and model_args.lora_target_modules is not None:
        targets = lora_targets(model_args)
        config.target_modules = targets if isinstance(targets, str) else set(targets)
    return config


def check_steps(cfg):
    """A run that would take no optimizer step is refused, rather than saved as an untrained adapter."""
    if cfg.max_steps == 0:
        raise UserError(
            "max_steps is 0: the run would train nothing; set max_steps >= 1, or -1 to train for num_train_epochs"
        )
    if cfg.max_steps < 0 and cfg.num_train_epochs <= 0:
        raise UserError(
            f"num_train_epochs is {cfg.num_train_epochs:g} and max_steps is unset: the run would train "
            f"nothing; set num_train_epochs > 0 or max_steps >= 1"
        )


def check_folders(args, cfg, model_args):
    """Where the run writes: checked before anything loads, not when the adapter is saved after training."""
    checks = [
        ("output_dir", Path(cfg.output_dir)),
        ("adapter_root", Path(args.adapter_root)),
        ("adapter_root", adapter_path(args.adapter_root, model_args.model_name_or_path)),
    ]
    for name, folder in checks:
        p = first_existing(folder)
        if not p.is_dir():
            raise UserError(f"--{name} {folder}: {p} is a file, not a folder; choose another --{name}")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"--{name} {folder}: {p} is not writable; choose another --{name}")
    refuse_saves_onto_inputs(  # a save that is, holds or sits inside the base model, the init adapter, the data
        {"--output_dir": cfg.output_dir, "--adapter_root": (args.adapter_root, checks[2][1])},
        inputs(model_args.model_name_or_path, args.init_adapter, files=[args.dataset]),
    )


def module_names(config) -> set[str]:
    """Leaf linear-layer names of the architecture, from a weightless copy on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name.split(".")[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


# --------------------------------------------------------------------------------------------- resume


def resume_point(args: MedreasonArgs, cfg: TrainingArguments) -> Path | None:
    """--resume: the newest checkpoint in output_dir that loads (medreason.checkpoints names each newer one it
    skips; none: a log line, and the run starts anew).
    Without --resume, a folder that already holds checkpoints is refused rather than trained over."""
    output_dir = Path(cfg.output_dir)
    found = newest_loadable(output_dir) if args.resume else last_checkpoint(output_dir)  # skips damaged ones, named
    if args.resume and found is None:
        log.warning("--resume: no checkpoint in %s, starting from the beginning", output_dir)
    elif not args.resume and found is not None:
        raise UserError(
            f"{output_dir} already holds checkpoints: pass --resume to continue that run, "
            f"or choose another --output_dir / --run_name"
        )
    return found if args.resume else None


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint. The trainer writes a checkpoint in place and trainer_state.json
    last, so a folder without it is one that a kill interrupted: resuming from it would fail."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not output_dir.is_dir():
        return None
    complete = [
        p
        for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def checkpoint_step(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / "trainer_state.json").read_text()).get("global_step", 0))


# the LoRA settings that shape the adapter's tensors or how they are used: a checkpoint only resumes into the same
LORA_SHAPE = {
    "lora_r": "r",
    "lora_alpha": "lora_alpha",
    "use_dora": "use_dora",
    "use_rslora": "use_rslora",
    "lora_target_modules": "target_modules",
    "lora_modules_to_save": "modules_to_save",
}


def check_resume(checkpoint: Path, model_args):
    """--resume with other LoRA settings than the checkpoint's would fail after loading with a wall of 'size
    mismatch': compare PEFT's adapter_config.json of the checkpoint with this run's settings first."""
    config_file = checkpoint / "adapter_config.json"
    if not config_file.is_file():
        return
    saved = json.loads(config_file.read_text())
    for ours, theirs in LORA_SHAPE.items():
        new, old = getattr(model_args, ours, None), saved.get(theirs)
        if ours == "lora_target_modules":
            new = lora_targets(model_args)
            if new == "all-linear" or old is None:
                continue  # PEFT stores all-linear resolved to module names: not comparable by name
            new, old = sorted(new), sorted(old)
        elif ours == "lora_modules_to_save":
            new, old = sorted(new or []), sorted(old or [])
        if new != old:
            raise UserError(
                f"--resume: {checkpoint} was trained with {ours} {old}, this run has {new}; "
                f"resume with the checkpoint's settings, or start anew with another --output_dir"
            )


# --------------------------------------------------------------------------------------------- the session


@contextmanager
def session(args: MedreasonArgs, cfg: TrainingArguments, model_args: ModelConfig):
    """For the duration of a run: SIGTERM acts as Ctrl-C, one run at a time holds its checkpoint and adapter
    folders, and torch uses the recipe's CPU threads; torch's thread count is put back afterwards."""
    import torch

    threads_before = torch.get_num_threads()
    with stop_on_sigterm(), run_locks(*locks(args, cfg, model_args)):
        on_gpu = torch.cuda.is_available() and not cfg.use_cpu
        if not on_gpu:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            torch.set_num_threads(max(1, (args.num_threads or physical_cores()) // world))
        log.info(
            "precision: %s (%s); base weights %s; %s",
            "bf16" if cfg.bf16 else "fp16" if cfg.fp16 else "fp32",
            precision_reason(args, on_gpu),
            model_args.dtype,
            "GPU" if on_gpu else f"{torch.get_num_threads()} CPU threads",
        )
        try:
            yield
        finally:
            torch.set_num_threads(threads_before)


def precision_reason(args, on_gpu: bool) -> str:
    """Why the run has its precision (medreason.config.settle decided it)."""
    if args.precision != "auto":
        return "--precision"
    from medreason.compat import cpu_supports_bf16

    return (
        "auto: GPU"
        if on_gpu
        else ("auto: CPU has native bf16" if cpu_supports_bf16() else "auto: this CPU has no native bf16 matmul")
    )


def locks(args, cfg, model_args) -> list[tuple[Path, str]]:
    """One run at a time per checkpoint folder and per adapter folder (rank 0 holds them for all ranks)."""
    if rank() != 0:
        return []
    adapter = adapter_path(args.adapter_root, model_args.model_name_or_path)
    return [
        (Path(cfg.output_dir) / ".medreason.lock", f"--output_dir {cfg.output_dir}"),
        (adapter.parent / f".{adapter.name}.lock", f"the adapter folder {adapter}"),
    ]


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


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------- the base model


def load_base(model_args: ModelConfig):
    """(model, tokenizer, provenance) of the recipe's base model, in the settled dtype, quantized when the recipe
    says so (QLoRA), with the KV cache off for training. Provenance: what was really loaded (medreason.models)."""
    import torch
    from trl import get_quantization_config

    from medreason.models import load_model_and_tokenizer, resolve_model

    dtype = "auto" if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model, tokenizer = load_model_and_tokenizer(
        model_args.model_name_or_path,
        dtype=dtype,
        quantization_config=get_quantization_config(model_args),
        attn_implementation=model_args.attn_implementation,
    )
    model.config.use_cache = False
    return model, tokenizer, resolve_model(model_args.model_name_or_path).provenance(model)


# --------------------------------------------------------------------------------------------- the tracked run


@contextmanager
def tracked(
    args,
    cfg,
    resolved: dict,
    recipe: str,
    *,
    resumed: bool,
    params: dict,
    tags: dict | None = None,
    documents: dict | None = None,
):
    """The run's MLflow run on rank 0 (None elsewhere): a resumed run continues the run its checkpoints logged
    to. Beside the checkpoints it records that run's id, the resolved config and the recipe hash; a new run logs
    `params` (see `logged_params`) and `tags`; every run logs the resolved config and each document (name -> dict)
    as JSON.
    The trainer's MLflow callback (report_to: mlflow, settled on rank 0) logs the metrics into it."""
    from medreason.tracking import log_params, mlflow_run, remember_store, resume_store

    output_dir = Path(cfg.output_dir)
    run_id = previous_run_id(output_dir) if resumed else None
    store = resume_store(output_dir, run_id) if rank() == 0 else None  # where the checkpoints' run lives, any cwd
    with mlflow_run(
        args.mlflow_experiment, run_name=cfg.run_name, run_id=run_id, uri=store, enabled=rank() == 0
    ) as run:
        if run is not None:
            import mlflow

            record_run(output_dir, run.info.run_id, resolved, recipe)
            remember_store(output_dir, mlflow.get_tracking_uri())
            if run_id is None:
                log_params(params)
                if tags:
                    mlflow.set_tags(tags)
            for name, document in {"resolved_config": resolved, **(documents or {})}.items():
                mlflow.log_dict(document, f"{name}.json")
        yield run


def logged_params(resolved: dict, extra: set[str] = frozenset()) -> dict:
    """The MLflow params of a run: LOGGED_PARAMS, plus a recipe's `extra` keys, from the resolved recipe."""
    return {k: v for k, v in resolved.items() if k in LOGGED_PARAMS | set(extra)}


def record_run(output_dir: Path, run_id: str, resolved: dict, recipe: str):
    """Beside the checkpoints: the MLflow run they log to (a resumed run continues it), the resolved config, and
    the recipe hash (ensure_adapter resumes checkpoints of the same recipe and moves others aside)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "mlflow_run_id", run_id)
    atomic_write_json(output_dir / "resolved_config.json", resolved)
    atomic_write_text(output_dir / "recipe_hash", recipe)


def previous_run_id(output_dir: Path) -> str | None:
    """The MLflow run a resumed run continues (written next to its checkpoints)."""
    id_file = output_dir / "mlflow_run_id"
    return id_file.read_text().strip() or None if id_file.is_file() else None


# --------------------------------------------------------------------------------------------- finishing


def finish(
    trainer, model, tokenizer, args: MedreasonArgs, model_args: ModelConfig, meta: dict, metrics: dict, run
) -> TrainResult:
    """Save the trained adapter (rank 0, atomically, with `meta` as medreason.json), log the final metrics and
    the adapter folder to MLflow, and describe the run. Every rank calls it: under FSDP the weights are
    gathered from all ranks first (medreason.distributed), a collective."""
    from medreason.distributed import gathered_state_dict

    state_dict = gathered_state_dict(trainer)
    adapter_dir = None
    if trainer.is_world_process_zero():
        adapter_dir = save_adapter(
            model,
            tokenizer,
            adapter_path(args.adapter_root, model_args.model_name_or_path),
            meta,
            state_dict=state_dict,
        )
        if run is not None:
            import mlflow

            mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items()})
            mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")
    return TrainResult(
        adapter_dir=adapter_dir,
        output_dir=Path(trainer.args.output_dir),
        metrics=metrics,
        mlflow_run_id=run.info.run_id if run is not None else None,
        global_step=trainer.state.global_step,
        log_history=list(trainer.state.log_history),
    )
