"""What medreason refuses before any work starts, in one place: each refusal is a `UserError` (one line, exit 2)
that names the value or the file.

    from medreason import guards
    guards.RANGES["gradient_accumulation_steps"].problem(0)     # 'at least 1'
    guards.check_ranges({"learning_rate": float("nan")})         # UserError: learning_rate must be above 0, got nan
    guards.refuse_saves_onto_inputs({"--out": out}, guards.inputs(model=m, adapter=a, files=[q]))
    guards.safe_name("../x", "--run-name")                       # UserError: a name, not a path
    guards.mlflow_key("adapter_accuracy/a//b")                   # 'adapter_accuracy/a/b'

- Numbers: every numeric option of every subcommand and every numeric key of a recipe has a range (`RANGES`,
  and the `Range` types of medreason.cli); NaN and infinities are never in range. A zero
  `gradient_accumulation_steps` would otherwise divide by zero after the model has loaded.
- Saves: nothing is saved onto what the run reads. A save target may not be, contain, or sit inside an input
  folder (the base model, an adapter, a model cache), nor be or contain an input file (a dataset, a benchmark,
  a questions file): replacing it would destroy the input, writing into it would change it.
- Names: a string that becomes a folder name (`eval --run-name`, an adapter's folder name) is a name, not a
  path; a string that becomes an MLflow metric key (a benchmark group) is mapped onto what MLflow accepts, and
  two groups that would share a key are refused.
- Sizes: an input file larger than the memory this machine has free, and a prompt that does not fit the
  model's context, are refused with their size named (a 300,000-character question would otherwise try to
  allocate gigabytes for attention).
- Results: `results/<run>/` belongs to one adapter: another adapter's evaluation is refused unless `--force`.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from medreason.errors import UserError

# --------------------------------------------------------------------------------------------- numbers


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


def option_value(argv: list[str], name: str) -> str | None:
    """The value of `--name` in any spelling argparse accepts (`--a_b v`, `--a-b v`, `--a_b=v`, `--a-b=v`), for the
    few places that read argv before a parser does; None when it is absent."""
    spellings = {f"--{name}", f"--{name.replace('_', '-')}"}
    for i, arg in enumerate(argv):
        key, eq, value = arg.partition("=")
        if key in spellings:
            if eq:
                return value
            return argv[i + 1] if i + 1 < len(argv) else ""
    return None


# --------------------------------------------------------------------------------------------- saves and inputs


def inputs(model: str | None = None, adapter: str | Path | None = None, files: list | tuple = ()) -> dict[str, Path]:
    """{what: path} of what a run reads: the base model's folder (a local folder, the converted GGUF copy, or the
    Hugging Face cache for a Hub id), the adapter folder, medreason's model cache, and the input files that exist
    (a name such as 'bundled' or a Hub dataset id is no file). `model` None: the adapter's base model, else the
    default model."""
    from medreason.models import cache_root, resolve_model

    found: dict[str, Path] = {"medreason's model cache": cache_root()}
    if adapter:
        found["the adapter"] = Path(adapter)
    source = resolve_model(base_model(model, adapter))
    if source.kind in ("local", "cache"):
        found["the base model"] = Path(source.path)
    elif source.kind == "gguf":
        found["the base model's GGUF folder"] = Path(source.path).parent
    else:
        from huggingface_hub.constants import HF_HUB_CACHE

        found["the Hugging Face cache"] = Path(HF_HUB_CACHE)
    for n, file in enumerate(f for f in files if f and Path(str(f)).expanduser().exists()):
        found["the input file" + (f" {n + 1}" if n else "")] = Path(str(file)).expanduser()
    return found


def base_model(model: str | None, adapter: str | Path | None) -> str:
    """The base model a command loads: --model, else the adapter's base, else the default model."""
    from medreason.models import DEFAULT_MODEL

    if model:
        return model
    if adapter and (Path(adapter) / "adapter_config.json").is_file():
        from medreason.adapter import read_adapter

        return read_adapter(adapter)["base_model"]
    return DEFAULT_MODEL


def refuse_saves_onto_inputs(targets: dict[str, tuple[str, Path] | str | Path], inputs: dict[str, Path]) -> None:
    """Refuse a save target that is, contains, or sits inside an input folder, or is or contains an input file.
    `targets`: {option: path}, or {option: (what the option said, the path it saves to)}."""
    for option, target in targets.items():
        given, path = target if isinstance(target, tuple) else (target, target)
        if path is None:
            continue
        t = Path(path).expanduser().resolve()
        for what, source in inputs.items():
            p = Path(source).expanduser().resolve()
            if t == p:
                relation = "is"
            elif p.is_relative_to(t):
                relation = "contains"
            elif p.is_dir() and t.is_relative_to(p):
                relation = "is inside"
            else:
                continue
            saves = "" if Path(str(given)).expanduser().resolve() == t else f" saves to {t}, which"
            raise UserError(
                f"{option} {given}{saves} {relation} {what} ({p}); this run reads it, and saving there would "
                f"overwrite it: choose another {option}"
            )


# --------------------------------------------------------------------------------------------- names


def safe_name(name: str, what: str) -> str:
    """A string that becomes one folder name: not empty, no path separator, not '.' or '..', no control
    characters, at most 100 characters."""
    problem = None
    if not name or not name.strip():
        problem = "is empty"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif name in (".", "..") or name.startswith("."):
        problem = "starts with a dot"
    elif any(ord(c) < 32 for c in name):
        problem = "contains a control character"
    elif len(name) > 100:
        problem = f"is {len(name)} characters long (at most 100)"
    if problem:
        raise UserError(f"{what} {name!r} {problem}: it names a folder under results/; use letters, digits, - and _")
    return name


def mlflow_key(text: str) -> str:
    """`text` as an MLflow metric or param key: letters, digits and _ - . / and spaces, no empty path part,
    no '.' or '..' part, no leading or trailing '/', at most 250 characters."""
    key = re.sub(r"[^\w\-./ ]", "_", text)
    parts = [p if p not in (".", "..") else p.replace(".", "_") for p in key.split("/") if p]
    return "/".join(parts)[:250] or "_"


def metric_keys(prefix: str, groups) -> dict[str, str]:
    """{group: MLflow key} for per-group metrics; two groups that would share a key are refused (one would
    silently replace the other in the run)."""
    out: dict[str, str] = {}
    for g in groups:
        key = mlflow_key(f"{prefix}/{g}")
        clash = next((other for other, k in out.items() if k == key and other != g), None)
        if clash is not None:
            raise UserError(
                f"benchmark groups {clash!r} and {g!r} both become the MLflow key {key!r}: rename one of them"
            )
        out[g] = key
    return out


# --------------------------------------------------------------------------------------------- sizes


def check_fits_in_memory(path: Path) -> None:
    """A file that is read whole must fit in half of the memory this machine has free."""
    size = Path(path).stat().st_size
    free = _free_memory()
    if free is not None and size > free // 2:
        raise UserError(
            f"{path}: {size / 2**30:.1f} GiB is more than this machine can read at once "
            f"({free / 2**30:.1f} GiB of memory free): split the file"
        )


def _free_memory() -> int | None:
    try:
        import psutil

        return psutil.virtual_memory().available
    except ImportError:
        return None


def check_prompt_sizes(texts, model: str | None, max_new_tokens: int, origin: str = "") -> None:
    """Each text, with `max_new_tokens` to generate, must fit the model's context: refused with its size in tokens
    and characters. Uses the tokenizer and config only, never the weights."""
    if not texts:
        return
    from medreason.models import DEFAULT_MODEL, load_tokenizer, model_config

    name = model or DEFAULT_MODEL
    context = getattr(model_config(name), "max_position_embeddings", None)
    if not context:
        return
    tokenizer = None
    for n, text in enumerate(texts, 1):
        if len(text.encode()) + max_new_tokens <= context:  # a byte-level tokenizer spends at most 1 token a byte
            continue
        tokenizer = tokenizer or load_tokenizer(name)
        tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokens + max_new_tokens > context:
            where = f"question {n} of {origin}" if origin else "the prompt"
            raise UserError(
                f"{where} is {tokens:,} tokens ({len(text):,} characters); with {max_new_tokens} new tokens it does "
                f"not fit the {context:,}-token context of {name}: shorten it"
            )


# --------------------------------------------------------------------------------------------- results


def results_identity(adapter: str | Path | None, model: str | None) -> dict:
    """What owns a results folder: the adapter folder (absolute), or for the base model alone, the model."""
    if adapter:
        return {"adapter": str(Path(adapter).expanduser().resolve())}
    from medreason.models import DEFAULT_MODEL

    name = model or DEFAULT_MODEL
    return {"model": str(Path(name).resolve()) if Path(name).expanduser().is_dir() else name}


def check_results_owner(folder: Path, identity: dict, force: bool) -> None:
    """results/<run>/eval.json of another adapter (or model) is not replaced without --force."""
    import json

    found = Path(folder) / "eval.json"
    if force or not found.is_file():
        return
    try:
        earlier = json.loads(found.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return  # not a results file medreason can read: atomic replacement keeps nothing worth guarding
    owner = earlier.get("owner")
    if owner is None:  # written before owners were recorded
        adapter = earlier.get("adapter")
        owner = results_identity(adapter, earlier.get("base_model")) if adapter else None
    if owner is not None and owner != identity:
        theirs = owner.get("adapter") or owner.get("model")
        raise UserError(
            f"{found} holds the results of {theirs}, not of {identity.get('adapter') or identity.get('model')}: "
            f"name this run with --run-name, or pass --force to replace them"
        )


def eval_results(
    run_name: str | None,
    adapter: str | Path | None,
    model: str | None,
    mcq: str | None,
    items,
    *,
    max_new_tokens: int,
    force: bool,
) -> tuple[str, dict]:
    """(run, owner) of an evaluation, every check before the model loads: the run is a safe folder name (the
    adapter folder's name by default); results/<run>/ neither is, holds nor sits inside an input, nor holds
    another adapter's results (unless `force`); each item's prompt fits the context with `max_new_tokens`; and
    the benchmark's groups map to distinct MLflow keys."""
    run = safe_name(run_name, "--run-name") if run_name else (Path(adapter).resolve().name if adapter else "base")
    if not run_name:
        safe_name(run, "the adapter folder's name (used as the run name)")
    owner = results_identity(adapter, base_model(model, adapter))
    folder = Path("results") / run
    refuse_saves_onto_inputs({"the results folder": folder}, inputs(model, adapter, [mcq]))
    check_results_owner(folder, owner, force)
    metric_keys("accuracy", sorted({item.group for item in items}))
    texts = [
        "\n".join([item.context, item.question, *item.options.values()]) if item.context else item.question
        for item in items
    ]
    check_prompt_sizes(texts, base_model(model, adapter), max_new_tokens, str(mcq or "the benchmark"))
    return run, owner
