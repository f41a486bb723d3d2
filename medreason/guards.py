"""What medreason refuses before any work starts: each refusal is a `UserError` (one line, exit 2) that names the
value or the file. The ranges of numbers live in medreason.ranges.

    from medreason import guards
    guards.refuse_saves_onto_inputs({"--out": out}, guards.inputs(model=m, adapter=a, files=[q]))
    guards.safe_name("../x", "--run-name")                       # UserError: a name, not a path
    guards.mlflow_key("adapter_accuracy/a//b")                   # 'adapter_accuracy/a/b'

- Numbers: medreason.ranges (every numeric option and recipe key has a range; NaN and infinities are never in it).
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

import re
from pathlib import Path

from medreason.errors import UserError

# --------------------------------------------------------------------------------------------- argv


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
