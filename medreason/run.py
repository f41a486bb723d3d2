"""One training run, whatever its method: the fixed sequence every recipe goes through, and the `Run` value that
describes it, built once from the command line.

    from medreason.run import prepare, execute
    run = prepare(["--config", "configs/smollm2-135m-cpu.yaml", "--max_steps", "5"])   # the Run value
    result = execute(run)                                                               # medreason.train.train

The sequence (medreason.recipe names the phases a recipe provides):

    prepare     parse the recipe as written (its hash names the adapter), check what needs no model, settle it
                for this machine, find the resume point                                          -> Run
    load_data   the recipe's data, checked                     (before any model loads: bad data fails in a second)
    session     SIGTERM as Ctrl-C, one run per folder (locks), torch's CPU threads
    load_model  the base model (+ LoRA)                                                       -> recipe.Policy
    tracked     the MLflow run (rank 0): params, the resolved recipe, the provenance
    fit         build the trainer, train (or resume), summarise
    finish      gather (FSDP), save the adapter atomically with medreason.json, log the final metrics

Nothing here knows a method's keys: a recipe adds its own hash inputs, checks, logged params and metadata.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medreason.adapter import adapter_path, recipe_hash, save_adapter
from medreason.checkpoints import resume_point
from medreason.config import config_dict, parse_recipe, settle
from medreason.distributed import check_launch, gathered_state_dict, rank, world_size
from medreason.errors import UserError
from medreason.io import atomic_write_json, atomic_write_text, first_existing
from medreason.locks import run_locks
from medreason.models import lora_targets, model_config, module_names
from medreason.recipe import Recipe

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    adapter_dir: Path | None  # None on ranks other than 0, which do not save
    output_dir: Path
    metrics: dict
    mlflow_run_id: str | None
    global_step: int
    log_history: list


@dataclass(frozen=True)
class Run:
    """What one training run is: the settled recipe (medreason's keys, the method's TRL config, TRL's ModelConfig),
    its method, the hash of the recipe as written, the flat resolved config, and where it resumes from."""

    args: Any  # medreason.config.MedreasonArgs
    cfg: Any  # the recipe's TRL config (SFTConfig, GRPOConfig, ... with the recipe's own keys)
    model_args: Any  # trl.ModelConfig
    recipe: Recipe
    recipe_hash: str
    resolved: dict
    resume_from: Path | None = None

    @property
    def adapter_dir(self) -> Path:
        return adapter_path(self.args.adapter_root, self.model_args.model_name_or_path)

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    def model_config(self):
        """The base model's config, without its weights."""
        return model_config(self.model_args.model_name_or_path)


# the recipe keys every run logs as MLflow params (a recipe adds its own: Recipe.logged_params); the whole
# resolved recipe is logged as resolved_config.json
LOGGED_PARAMS = frozenset(
    {
        "model_name_or_path",
        "trainer",
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
        "bf16",
        "gradient_checkpointing",
        "seed",
    }
)


# --------------------------------------------------------------------------------------------- the sequence


def execute(run: Run) -> TrainResult:
    """Train the run: data, session, model, tracked run, trainer, fit, summary, save."""
    from medreason.progress import use_training_progress

    data = run.recipe.load_data(run)
    with session(run):
        policy = run.recipe.load_model(run)
        with tracked(run, data, policy) as tracking:
            from transformers import set_seed

            set_seed(run.cfg.seed)  # right before a new adapter's weights are drawn (and, for GRPO, rollouts)
            trainer = run.recipe.build_trainer(run, policy, data)
            use_training_progress(trainer)  # step/total, loss (or reward), tokens/s and ETA
            run.recipe.fit(run, trainer)
            metrics, fields = run.recipe.summarise(run, trainer, data)
            return finish(run, trainer, policy, data, metrics, fields, tracking)


def prepare(argv: list[str]) -> Run:
    """The Run of a command line: the recipe as written (hashed), checked, settled for this machine (precision,
    dtype, run name, report_to: medreason.config.settle), the launch checked, the resume point found."""
    from medreason import recipe as recipes

    written = parse_recipe(argv)
    method = recipes.get(written[0].trainer)
    digest = recipe_hash_of(*written)
    check_before_loading(*written, inputs=method.inputs(*written))
    args, cfg, model_args = settle(argv, *written)
    check_launch(cfg.use_cpu)  # several GPUs without a launcher: refused before anything loads
    run = Run(args, cfg, model_args, method, digest, config_dict(args, cfg, model_args))
    method.check(run)
    resume_from = resume_point(run)
    if resume_from is not None:
        method.check_resume(run, resume_from)
    return Run(args, cfg, model_args, method, digest, run.resolved, resume_from)


def recipe_hash_of(args, cfg, model_args) -> str:
    """The hash of what decides the adapter: the recipe as written (before the machine settles precision and dtype)
    and what its method adds (GRPO: the weights of the adapter it continues, so that a retrained SFT adapter also
    retrains what builds on it)."""
    from medreason import recipe as recipes

    method = recipes.get(args.trainer)
    return recipe_hash(
        config_dict(args, cfg, model_args) | method.hash_inputs(args, cfg, model_args), method.not_hashed
    )


def check_before_loading(args, cfg, model_args, inputs: tuple = ()) -> None:
    """Everything that fails in a second instead of after the model loads: values that cannot train, a run that
    would take no step, folders that cannot be written."""
    if not model_args.model_name_or_path:
        raise UserError("model_name_or_path is not set (the recipe names the base model)")
    if model_args.use_peft is False and (model_args.load_in_4bit or model_args.load_in_8bit):
        raise UserError(
            "use_peft is false with a quantized base: a 4-bit or 8-bit model trains through an adapter only"
        )
    checks = [
        (model_args.lora_r >= 1, f"lora_r must be a positive integer, got {model_args.lora_r}"),
        (model_args.lora_alpha > 0, f"lora_alpha must be positive, got {model_args.lora_alpha}"),
        (0 <= model_args.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {model_args.lora_dropout}"),
        (cfg.learning_rate > 0, f"learning_rate must be positive, got {cfg.learning_rate}"),
        (
            cfg.per_device_train_batch_size >= 1,
            f"per_device_train_batch_size must be at least 1, got {cfg.per_device_train_batch_size}",
        ),
        (
            cfg.gradient_accumulation_steps >= 1,
            f"gradient_accumulation_steps must be at least 1, got {cfg.gradient_accumulation_steps}",
        ),
        (not (model_args.load_in_4bit and model_args.load_in_8bit), "load_in_4bit and load_in_8bit are both set"),
        (cfg.max_steps != 0, "max_steps is 0: the run would train nothing; set max_steps >= 1, or -1 for epochs"),
        (
            cfg.max_steps > 0 or cfg.num_train_epochs > 0,
            f"num_train_epochs is {cfg.num_train_epochs:g} and max_steps is unset: the run would train nothing",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    targets = lora_targets(model_args)
    if targets != "all-linear":
        names = module_names(model_config(model_args.model_name_or_path))
        missing = [t for t in targets if t not in names]
        if missing:
            raise UserError(
                f"lora_target_modules: {model_args.model_name_or_path} has no module named "
                f"'{missing[0]}' (it has {', '.join(sorted(names))})"
            )
    check_folders(args, cfg, model_args, inputs)


def check_folders(args, cfg, model_args, inputs: tuple = ()):
    """Where the run writes: checked before anything loads, not when the adapter is saved after training."""
    import os

    from medreason.guards import inputs as input_paths
    from medreason.guards import refuse_saves_onto_inputs

    adapter = adapter_path(args.adapter_root, model_args.model_name_or_path)
    for name, folder in (
        ("output_dir", Path(cfg.output_dir)),
        ("adapter_root", Path(args.adapter_root)),
        ("adapter_root", adapter),
    ):
        p = first_existing(folder)
        if not p.is_dir():
            raise UserError(f"--{name} {folder}: {p} is a file, not a folder; choose another --{name}")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"--{name} {folder}: {p} is not writable; choose another --{name}")
    # a save that is, holds or sits inside what the run reads: the base model, the data, a recipe's own inputs
    refuse_saves_onto_inputs(
        {"--output_dir": cfg.output_dir, "--adapter_root": (args.adapter_root, adapter)},
        input_paths(model_args.model_name_or_path, *inputs, files=[args.dataset]),
    )


# --------------------------------------------------------------------------------------------- the session


@contextmanager
def session(run: Run):
    """For the duration of a run: SIGTERM acts as Ctrl-C, one run at a time holds its checkpoint and adapter
    folders, and torch uses the recipe's CPU threads; torch's thread count is put back afterwards."""
    import torch

    from medreason.distributed import physical_cores, precision_reason

    threads_before = torch.get_num_threads()
    with stop_on_sigterm(), run_locks(*locks(run)):
        on_gpu = torch.cuda.is_available() and not run.cfg.use_cpu
        if not on_gpu:
            torch.set_num_threads(max(1, (run.args.num_threads or physical_cores()) // world_size()))
        log.info(
            "precision: %s (%s); base weights %s; %s",
            "bf16" if run.cfg.bf16 else "fp16" if run.cfg.fp16 else "fp32",
            precision_reason(run.args.precision, on_gpu),
            run.model_args.dtype,
            "GPU" if on_gpu else f"{torch.get_num_threads()} CPU threads",
        )
        try:
            yield
        finally:
            torch.set_num_threads(threads_before)


def locks(run: Run) -> list[tuple[Path, str]]:
    """One run at a time per checkpoint folder and per adapter folder (rank 0 holds them for all ranks)."""
    if rank() != 0:
        return []
    adapter = run.adapter_dir
    return [
        (run.output_dir / ".medreason.lock", f"--output_dir {run.output_dir}"),
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


# --------------------------------------------------------------------------------------------- the tracked run


@contextmanager
def tracked(run: Run, data, policy):
    """The run's MLflow run on rank 0 (None elsewhere): a resumed run continues the run its checkpoints logged to.
    Beside the checkpoints it records that run's id, the store, the resolved config and the recipe hash; a new
    run logs its params (LOGGED_PARAMS, the recipe's own and the data and model provenance); every run logs the
    resolved config and the provenance as JSON. The trainer's MLflow callback logs the metrics into it."""
    from medreason import tracking

    run_id = previous_run_id(run.output_dir) if run.resume_from is not None else None
    store = tracking.resume_store(run.output_dir, run_id) if rank() == 0 else None  # the checkpoints' run, any cwd
    params = {k: v for k, v in run.resolved.items() if k in LOGGED_PARAMS | run.recipe.logged_params}
    with tracking.mlflow_run(
        run.args.mlflow_experiment, run_name=run.cfg.run_name, run_id=run_id, uri=store, enabled=rank() == 0
    ) as mlflow_run:
        if mlflow_run is not None:
            record_run(run, mlflow_run.info.run_id)
            if run_id is None:
                sources = flat_provenance(data.record, "data") | flat_provenance(policy.provenance, "model")
                tracking.log_params(params | sources)
                tracking.set_tags({"trainer": run.recipe.name})
            provenance = {"data": data.record, "model": policy.provenance}
            tracking.log_dicts({"resolved_config": run.resolved, "provenance": provenance})
        yield mlflow_run


def flat_provenance(record: dict, side: str) -> dict:
    """<side>_kind, _id, _path, _revision, _sha256, _quantization, and rows per split, as MLflow params."""
    out = {
        f"{side}_{k}": record[k] for k in ("kind", "id", "path", "revision", "sha256", "quantization") if record.get(k)
    }
    for name, n in (record.get("rows") or {}).items():
        out[f"{side}_rows_{name}"] = n
    for name, n in (record.get("dropped_over_max_length") or {}).items():
        out[f"{side}_dropped_over_max_length_{name}"] = n
    return out


def record_run(run: Run, run_id: str):
    """Beside the checkpoints: the MLflow run and store they log to (a resumed run continues it, from any working
    folder), the resolved config, and the recipe hash (ensure_adapter resumes checkpoints of the same recipe)."""
    import mlflow

    from medreason.tracking import remember_store

    run.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.output_dir / "mlflow_run_id", run_id)
    remember_store(run.output_dir, mlflow.get_tracking_uri())
    atomic_write_json(run.output_dir / "resolved_config.json", run.resolved)
    atomic_write_text(run.output_dir / "recipe_hash", run.recipe_hash)


def previous_run_id(output_dir: Path) -> str | None:
    """The MLflow run a resumed run continues (written next to its checkpoints)."""
    id_file = output_dir / "mlflow_run_id"
    return id_file.read_text().strip() or None if id_file.is_file() else None


# --------------------------------------------------------------------------------------------- finishing


def finish(run: Run, trainer, policy, data, metrics: dict, fields: dict, tracking_run) -> TrainResult:
    """Save the trained adapter (rank 0, atomically, with medreason.json), log the final metrics and the adapter
    folder to MLflow, and describe the run. Every rank calls it: under FSDP the weights are gathered from all
    ranks first (medreason.distributed), a collective."""
    from medreason import tracking
    from medreason.adapter import training_meta

    state_dict = gathered_state_dict(trainer)
    adapter_dir = None
    if trainer.is_world_process_zero():
        meta = training_meta(
            run.recipe.name,
            run.args,
            run.model_args,
            recipe=run.recipe_hash,
            resolved=run.resolved,
            model=policy.provenance,
            metrics=metrics,
            method_keys=sorted(run.recipe.logged_params),
            **({"data": data.record} | fields),
        )
        model = run.recipe.trained_model(trainer)
        adapter_dir = save_adapter(model, policy.tokenizer, run.adapter_dir, meta, state_dict=state_dict)
        if tracking_run is not None:
            tracking.log_final(metrics, adapter_dir)
    return TrainResult(
        adapter_dir=adapter_dir,
        output_dir=Path(trainer.args.output_dir),
        metrics=metrics,
        mlflow_run_id=tracking_run.info.run_id if tracking_run is not None else None,
        global_step=trainer.state.global_step,
        log_history=list(trainer.state.log_history),
    )
