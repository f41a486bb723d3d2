"""Recipes: one YAML per recipe in configs/, parsed by TRL's own parser into three dataclasses.

    from medreason.config import parse_config
    args, sft, model = parse_config(["--config", "configs/smollm2-135m-cpu.yaml", "--max_steps", "5"])

`args` holds medreason's own fields (`MedreasonArgs`, below), `sft` is TRL's `SFTConfig` (the trainer's
fields) and `model` is TRL's `ModelConfig` (model id, LoRA and quantization fields). Any field of the
three can be set in the YAML or overridden as `--key value`; an unknown key is an error naming the key.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from medreason.errors import UserError
from medreason.fieldtypes import check_types
from medreason.template import TEMPLATES

# LoRA target presets: the original notebook adapted the attention projections only.
LORA_PRESETS = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "all-linear": "all-linear",  # PEFT's own shorthand: every linear layer but the output head
}
DEFAULT_SYSTEM_PROMPT = (
    "You are a medical reasoning assistant for education. Think through the question step by step, "
    "then give a concise final answer. Your answers are for teaching, not clinical advice."
)


@dataclass
class MedreasonArgs:
    """medreason's own fields; everything about the trainer and LoRA lives in TRL's classes."""

    dataset: str = field(
        default="bundled",
        metadata={
            "help": "'bundled' (the open-ended corpus shipped with medreason), 'bundled-mcq' (the shipped "
            "multiple-choice items with short reasoning, prompted as evaluation prompts them), a Hub dataset "
            "id, or a local JSON/JSONL/CSV/Parquet file with Question, Complex_CoT and Response columns "
            "(or question, options, answer and reasoning)."
        },
    )
    dataset_config: str = field(default="en", metadata={"help": "Hub dataset configuration name."})
    max_examples: int | None = field(
        default=None, metadata={"help": "Use at most this many rows (after validation), for quick runs."}
    )
    skip_invalid: bool = field(default=False, metadata={"help": "Drop invalid rows instead of failing."})
    template: str = field(
        default="think",
        metadata={
            "help": "How the reasoning and the answer are laid out in the completion: 'think' "
            "(<think>...</think> then the answer) or 'huatuo' (## Thinking / ## Final Response)."
        },
    )
    system_prompt: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "System message of every prompt."})
    lora_preset: str | None = field(
        default=None,
        metadata={
            "help": "Shorthand for lora_target_modules: 'attention' (q/k/v/o projections, as the "
            "original notebook) or 'all-linear'. Overrides lora_target_modules when set."
        },
    )
    adapter_root: str = field(
        default="lora_adapter", metadata={"help": "The final adapter goes to <adapter_root>/<model name>/."}
    )
    resume: bool = field(default=False, metadata={"help": "Continue from the last checkpoint in output_dir."})
    num_threads: int | None = field(
        default=None, metadata={"help": "torch intra-op threads (default: one per physical core)."}
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "'auto' (bf16 on GPUs and on CPUs with native bf16 matmul, else fp16 on GPUs and "
            "fp32 on CPUs), 'bf16', 'fp16' or 'fp32'. Sets SFTConfig's bf16/fp16; under bf16 with an "
            "adapter the frozen base weights load in bf16 unless --dtype says otherwise."
        },
    )
    lm_head: str = field(
        default="auto",
        metadata={
            "help": "How the loss reads the output layer: 'fused' (TRL's chunked head, which never builds "
            "the full logits: best on GPUs), 'dense' (the logits of the labelled positions at once: on CPUs, "
            "where TRL's chunked head falls back to slow torch code, the head takes a third of the time), or 'auto' "
            "(dense on CPUs, fused elsewhere)."
        },
    )
    mlflow_experiment: str = field(default="medreason", metadata={"help": "MLflow experiment name."})
    trainer: str = field(
        default="sft",
        metadata={
            "help": "The training method (a recipe of medreason/recipes/): 'sft' (TRL's SFTConfig: supervised "
            "fine-tuning) or 'grpo' (TRL's GRPOConfig: reinforcement learning with verifiable MCQ rewards)."
        },
    )
    facts_seed: int = field(
        default=20261207,
        metadata={
            "help": "Seed of the fact set's random taught/untaught split (medreason.facts.assign_halves), for the "
            "datasets that read it: bundled-facts (SFT) and facts-taught (GRPO)."
        },
    )
    facts_repeats: int = field(
        default=1,
        metadata={
            "help": "bundled-facts: how many times each taught statement appears in the training split (exposures "
            "per epoch), so that the facts can be seen many times while the rest of the data is seen once."
        },
    )
    facts_statements: int = field(
        default=4,
        metadata={
            "help": "bundled-facts: training statements per taught fact, in the order definition, vignette, "
            "question-answer, explanation (1 = the definition alone: the dose experiment's low arm)."
        },
    )

    def __post_init__(self):
        if self.template not in TEMPLATES:
            raise UserError(f"template '{self.template}' is unknown: choose one of {', '.join(TEMPLATES)}")
        if self.lora_preset is not None and self.lora_preset not in LORA_PRESETS:
            raise UserError(f"lora_preset '{self.lora_preset}' is unknown: choose one of {', '.join(LORA_PRESETS)}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise UserError(f"precision '{self.precision}' is unknown: choose auto, bf16, fp16 or fp32")
        if self.lm_head not in ("auto", "dense", "fused"):
            raise UserError(f"lm_head '{self.lm_head}' is unknown: choose auto, dense or fused")
        if self.max_examples is not None and self.max_examples < 1:
            raise UserError(f"max_examples must be at least 1, got {self.max_examples}")
        if self.num_threads is not None and self.num_threads < 1:
            raise UserError(f"num_threads must be at least 1, got {self.num_threads}")
        from medreason.recipe import get

        get(self.trainer)  # an unknown trainer is one line naming the known ones


def parser(trainer: str = "sft", parents: tuple = ()):
    p = _recipe_parser_class()(_classes(trainer), prog="medreason train", parents=list(parents))
    # SFTConfig defaults to bf16=True, which TrainingArguments refuses on a CPU without bf16 support.
    # medreason decides from `precision` (auto by default) once the hardware is known: `settle`.
    # ModelConfig's dtype defaults to float32; None lets `settle` derive it from the precision (bf16 frozen
    # weights under an adapter) while an explicit --dtype is kept as given.
    p.set_defaults(bf16=False, dtype=None)
    p.error = _bad_option  # argparse would print its whole usage text and exit; we want one line
    return p


def _bad_option(message: str):
    from medreason.compat import bad_option_message

    raise UserError(bad_option_message(message))


def print_train_help(trainer: str = "sft"):
    """`medreason train --help`: every key a recipe accepts, with `--config` first."""
    import argparse

    # help only: TrlParser takes --config out of argv itself, and an argument of that name would come back
    # from parse_args_into_dataclasses as an extra namespace. As a parent it is listed first.
    recipe = argparse.ArgumentParser(add_help=False)
    recipe.add_argument(
        "--config",
        metavar="FILE",
        help="The recipe: a YAML file of the keys below (configs/*.yaml); --key value overrides it.",
    )
    p = parser(trainer, parents=(recipe,))
    p.usage = "medreason train --config FILE [--key value ...]   (--snake_case and --kebab-case both work)"
    p.print_help()


def _recipe_parser_class():
    """TrlParser, with a recipe's float keys written as `2e-5` read as numbers: YAML 1.1 (PyYAML) reads a
    float without a decimal point as a string, which argparse would have converted on the command line."""
    from trl import TrlParser

    from medreason.compat import float_fields
    from medreason.ranges import check_ranges

    class RecipeParser(TrlParser):
        def parse_known_args(self, *args, **kwargs):
            namespace, rest = super().parse_known_args(*args, **kwargs)
            check_ranges(vars(namespace))  # before TRL's classes are built: some divide by a recipe's counts
            return namespace, rest

        def set_defaults_with_config(self, **kwargs):
            floats = float_fields(self)
            for key, value in kwargs.items():
                if key in floats and isinstance(value, (str, int)) and not isinstance(value, bool):
                    kwargs[key] = float(value)  # _check_yaml has already refused what does not parse
            return super().set_defaults_with_config(**kwargs)

    return RecipeParser


def parse_config(argv: list[str]):
    """(MedreasonArgs, SFTConfig or GRPOConfig, ModelConfig) from `--config FILE` plus `--key value` overrides,
    settled for this machine (`settle`): what a run trains with."""
    return settle(argv, *parse_recipe(argv))


def parse_recipe(argv: list[str]):
    """The recipe as written: `--config FILE` plus `--key value` overrides, nothing decided by the machine yet
    (its hash names the adapter it produces on any machine). The recipe's `trainer` key (or `--trainer`) picks
    TRL's config class, so each recipe is checked against the fields of the trainer it is for."""
    argv = _split_config_arg(argv)
    trainer = "sft"
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UserError("--config needs a file: --config configs/<recipe>.yaml")
        path = Path(argv[i + 1])
        if not path.is_file():
            raise UserError(f"config file {path} does not exist (recipes live in configs/)")
        trainer = _check_yaml(path, trainer_override(argv))
    else:
        trainer = trainer_override(argv) or trainer
    try:
        return tuple(parser(trainer).parse_args_and_config(argv))
    except ValueError as e:  # TRL and HfArgumentParser report unknown keys as ValueError
        raise UserError(_unknown_key_message(str(e), trainer)) from e


def settle(argv: list[str], args, cfg, model):
    """The recipe with what this machine decides, parsed once more with those decisions as overrides, so that
    TRL's classes validate the final values (nothing is patched into a parsed config afterwards):
    - precision `auto`: bf16 on GPUs with bf16 and on CPUs with native bf16 matmul, else fp16 on GPUs, fp32 on
      CPUs (SFTConfig's bf16/fp16, from which TrainingArguments derives the Accelerator's mixed precision);
    - dtype unset: bf16 frozen base weights under an adapter trained in bf16 and for QLoRA (as in the QLoRA
      paper), fp32 otherwise;
    - use_cpu without CUDA when training in bf16 (TrainingArguments refuses bf16 on a CPU otherwise) or with
      several processes (torchrun / accelerate launch: DDP over gloo instead of each process training alone);
    - run_name: the output folder's name; eval_on_start off without evaluation; report_to mlflow on rank 0
      (medreason owns the MLflow run, medreason.run.tracked; the trainer's callback logs into it), none elsewhere,
      unless the command line names report_to;
    - lora_preset: the target modules it stands for."""
    import torch

    from medreason.distributed import decide_precision, rank, world_size

    argv = _split_config_arg(argv)
    cuda = torch.cuda.is_available()
    precision, _ = decide_precision(args.precision, on_gpu=cuda and not cfg.use_cpu)
    decided = {"bf16": precision == "bf16", "fp16": precision == "fp16"}
    # TrainingArguments accepts bf16 without CUDA only with use_cpu; several processes need it for gloo
    if not cuda and not cfg.use_cpu and (world_size() > 1 or precision != "fp32"):
        decided["use_cpu"] = True
    if not any(a.startswith(("--report_to", "--report-to")) for a in argv):  # a caller's own choice stays
        decided["report_to"] = "mlflow" if rank() == 0 else "none"
    if model.dtype is None:
        frozen_bf16 = model.use_peft and precision == "bf16"
        decided["dtype"] = "bfloat16" if frozen_bf16 or model.load_in_4bit else "float32"
    if not cfg.run_name and model.model_name_or_path:
        decided["run_name"] = Path(cfg.output_dir).name
    if cfg.eval_strategy == "no" and getattr(cfg, "eval_on_start", False):
        decided["eval_on_start"] = False
    overrides = []
    for key, value in decided.items():
        overrides += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    if args.lora_preset is not None:
        preset = LORA_PRESETS[args.lora_preset]
        overrides += ["--lora_target_modules", *([preset] if isinstance(preset, str) else preset)]
    return parse_recipe(argv + overrides)


def _split_config_arg(argv: list[str]) -> list[str]:
    return [part for a in argv for part in (a.split("=", 1) if a.startswith("--config=") else [a])]


def config_dict(*dataclass_objs) -> dict:
    """The resolved configuration as one flat dict of plain values (saved with every run)."""
    out = {}
    for obj in dataclass_objs:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, (str, int, float, bool, type(None))):
                out[f.name] = value
            elif isinstance(value, (list, tuple)):
                out[f.name] = [v if isinstance(v, (str, int, float, bool)) else str(v) for v in value]
            elif isinstance(value, dict):
                out[f.name] = {str(k): str(v) for k, v in value.items()}
            else:
                out[f.name] = str(value)
    return out


def trainer_override(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--trainer" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--trainer="):
            return a.split("=", 1)[1]
    return None


def _check_yaml(path: Path, trainer: str | None = None) -> str:
    """Check the recipe's keys against the classes of its trainer; return that trainer's name."""
    from medreason.yamlfile import load_recipe, refuse_yaml11_booleans

    data, booleans = load_recipe(path)  # a key given twice is refused; `no`/`yes`/`on`/`off` remembered
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping of key: value")
    from medreason.recipe import names

    trainer = trainer or str(data.get("trainer", "sft"))
    if trainer not in names():
        raise UserError(f"{path}: trainer '{trainer}' is unknown: choose one of {', '.join(names())}")
    known = {f.name for cls in _classes(trainer) for f in dataclasses.fields(cls)} | {"env"}
    unknown = sorted(set(data) - known)
    if unknown:
        hint = _closest(unknown[0], known)
        other = [
            t for t in names() if t != trainer and unknown[0] in {f.name for f in dataclasses.fields(_classes(t)[1])}
        ]
        why = (
            f" (a {other[0]} key: this recipe is for trainer {trainer})"
            if other
            else (f" (did you mean '{hint}'?)" if hint else "")
        )
        raise UserError(f"{path}: unknown config key '{unknown[0]}'" + why)
    refuse_yaml11_booleans(path, booleans, _classes(trainer))  # `eval_strategy: no` is a boolean: say to quote it
    check_types(path, data, _classes(trainer))
    return trainer


def _classes(trainer: str = "sft"):
    """medreason's keys, the recipe's TRL config class (medreason.recipe registry), TRL's ModelConfig."""
    from trl import ModelConfig

    from medreason.recipe import get

    return (MedreasonArgs, type(get(trainer)).config_class, ModelConfig)


def _unknown_key_message(message: str, trainer: str) -> str:
    keys = re.findall(r"'--?([\w.-]+)'", message)
    if not keys:
        return message.splitlines()[0]
    return f"unknown option '--{keys[0]}'" + _other_method(
        keys[0].replace("-", "_"), trainer, "see `medreason train --help`"
    )


def _other_method(key: str, trainer: str, otherwise: str) -> str:
    """' (a grpo key: this recipe is for trainer sft)' when another recipe's config class has the key."""
    from medreason.recipe import names

    other = [t for t in names() if t != trainer and key in {f.name for f in dataclasses.fields(_classes(t)[1])}]
    return f" (a {other[0]} key: this recipe is for trainer {trainer})" if other else f" ({otherwise})"


def _closest(key: str, known: set[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return match[0] if match else None
