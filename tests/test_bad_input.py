"""Bad input on every subcommand: exit code 2, one line naming what is wrong, nothing written, no model loaded.

Each case runs `medreason.cli.main([...])` in process, in an empty working directory, with the weights loader
booby-trapped: a check that only happens after a model has loaded fails the case. What counts as "one line"
is everything the real command would print on stderr: the error line plus any log record emitted before it
(pytest's log capture takes the records the CLI's handler would have written).

Inputs live outside the working directory (`in/`); both folders, and the shared tiny adapter, are compared
before and after the command, so a case that writes a stray file or touches its inputs fails too.
Guards issue 11 (bad input refused up front) and issue 10 item 8 (both flag spellings).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from enum import Enum
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import error_lines

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "smollm2-135m-cpu.yaml"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, tiny_model_dir):
    """A real adapter of the tiny model, trained for one step by `medreason train` (read-only for the cases)."""
    from medreason.cli import main

    work = tmp_path_factory.mktemp("bad-input-adapter")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        rc = main(
            [
                "train",
                "--config",
                str(RECIPE),
                "--model_name_or_path",
                str(tiny_model_dir),
                "--max_steps",
                "1",
                "--max_examples",
                "16",
                "--max_length",
                "1024",
                "--eval_strategy",
                "no",
                "--save_strategy",
                "no",
                "--evaluate_test",
                "false",
                "--output_dir",
                str(work / "out"),
                "--adapter_root",
                str(work / "lora"),
            ]
        )
    assert rc == 0
    return work / "lora" / tiny_model_dir.name


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _recipe_with(folder: Path, name: str, extra: str) -> str:
    """The shipped recipe with the keys of `extra` set to its values (a key given twice is itself refused)."""
    keys = {line.split(":")[0] for line in extra.splitlines() if ":" in line}
    kept = [line for line in RECIPE.read_text().splitlines() if line.split(":")[0] not in keys]
    return _write(folder / f"{name}.yaml", "\n".join(kept) + "\n" + extra + "\n")


def _rows(n: int, question: str = "A 54-year-old man has crushing chest pain for an hour. What is the first test?"):
    return "".join(
        json.dumps(
            {
                "Question": f"{question} (case {i})",
                "Complex_CoT": "Chest pain with risk factors: an ECG within ten minutes comes first.",
                "Response": "A 12-lead ECG.",
            }
        )
        + "\n"
        for i in range(n)
    )


def _broken_adapter(ctx, how: str) -> str:
    """A copy of the tiny adapter with one file broken."""
    folder = ctx.inputs / f"adapter-{how}"
    shutil.copytree(ctx.adapter, folder)
    weights = folder / "adapter_model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif how == "no-weights":
        weights.unlink()
    elif how == "bad-meta":
        (folder / "medreason.json").write_text("{not json")
    return str(folder)


@pytest.fixture
def ctx(tmp_path, monkeypatch, tiny_model_dir, tiny_adapter):
    cwd, inputs = tmp_path / "cwd", tmp_path / "in"
    cwd.mkdir()
    inputs.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{cwd / 'mlflow.db'}")
    return SimpleNamespace(
        root=tmp_path,
        cwd=cwd,
        inputs=inputs,
        model=str(tiny_model_dir),
        adapter=tiny_adapter,
        a_file=_write(inputs / "a-file", "not a folder\n"),
    )


def snapshot(*folders: Path) -> dict[str, str]:
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _no_weights(monkeypatch):
    """Any from_pretrained of model weights (transformers or PEFT) fails the case: checks come first."""
    import peft
    import transformers

    def trap(*a, **kw):
        raise AssertionError("model weights were loaded before the input was checked")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(trap))
    monkeypatch.setattr(peft.PeftModel, "from_pretrained", classmethod(trap))


# --------------------------------------------------------------------------------------------- the cases
# id: (argv from ctx, text the error line must contain)

TRAIN = ["train", "--config", str(RECIPE)]


def _train(c, *extra):
    return [*TRAIN, "--model_name_or_path", c.model, "--max_examples", "8", *extra]


CASES = {
    # doctor
    "doctor unknown option": (lambda c: ["doctor", "--verbose"], "--verbose"),
    "doctor unknown model": (lambda c: ["doctor", "--model", "someone/unknown-model"], "someone/unknown-model"),
    # data stats
    "stats unknown template": (lambda c: ["data", "stats", "--template", "bogus"], "template"),
    "stats max_length zero": (lambda c: ["data", "stats", "--max-length", "0"], "max-length"),
    "stats max_length not an int": (lambda c: ["data", "stats", "--max_length", "1.5"], "must be an integer, got 1.5"),
    "stats missing dataset file": (
        lambda c: ["data", "stats", "--dataset", str(c.inputs / "nope.jsonl")],
        "nope.jsonl",
    ),
    "stats bad rows": (
        lambda c: [
            "data",
            "stats",
            "--dataset",
            _write(c.inputs / "bad.jsonl", '{"Question": "", "Complex_CoT": "x", "Response": "y"}\n'),
        ],
        "bad.jsonl",
    ),
    "stats unknown tokenizer": (
        lambda c: ["data", "stats", "--model", "someone/unknown-model"],
        "someone/unknown-model",
    ),
    # data validate
    "validate missing file": (lambda c: ["data", "validate", str(c.inputs / "missing.jsonl")], "missing.jsonl"),
    "validate unknown format": (lambda c: ["data", "validate", _write(c.inputs / "rows.docx", "x")], "rows.docx"),
    "validate broken json": (lambda c: ["data", "validate", _write(c.inputs / "broken.json", "[{")], "broken.json"),
    "validate no file": (lambda c: ["data", "validate"], "file"),
    # train: the recipe and its types
    "train no config": (lambda c: ["train", "--model_name_or_path", c.model], "--config"),
    "train missing config": (lambda c: ["train", "--config", str(c.inputs / "nope.yaml")], "nope.yaml"),
    "train yaml not a mapping": (
        lambda c: ["train", "--config", _write(c.inputs / "list.yaml", "- a\n- b\n")],
        "list.yaml",
    ),
    "train yaml syntax": (
        lambda c: ["train", "--config", _write(c.inputs / "syntax.yaml", "lora_r: [8\n")],
        "syntax.yaml",
    ),
    "train yaml unknown key": (
        lambda c: ["train", "--config", _recipe_with(c.inputs, "k", "lora_rankk: 8")],
        "lora_rankk",
    ),
    "train yaml float for int": (
        lambda c: ["train", "--config", _recipe_with(c.inputs, "r", "lora_r: 8.5"), "--model_name_or_path", c.model],
        "lora_r must be an integer, got 8.5",
    ),
    "train yaml string for float": (
        lambda c: ["train", "--config", _recipe_with(c.inputs, "lr", "learning_rate: fast")],
        "learning_rate must be a number",
    ),
    "train yaml int for bool": (
        lambda c: ["train", "--config", _recipe_with(c.inputs, "b", "packing: 1")],
        "packing must be true or false",
    ),
    "train yaml unknown scheduler": (
        lambda c: ["train", "--config", _recipe_with(c.inputs, "s", "lr_scheduler_type: fast")],
        "lr_scheduler_type",
    ),
    "train cli float for int (snake)": (lambda c: _train(c, "--lora_r", "8.5"), "--lora_r must be an integer"),
    "train cli float for int (kebab)": (lambda c: _train(c, "--lora-r", "8.5"), "--lora_r must be an integer"),
    "train cli not a bool": (lambda c: _train(c, "--resume", "maybe"), "--resume"),
    "train unknown option": (lambda c: _train(c, "--lora_rankk", "8"), "--lora_rankk"),
    "train lora_r zero": (lambda c: _train(c, "--lora-r", "0"), "lora_r"),
    "train negative learning rate": (lambda c: _train(c, "--learning_rate", "-1"), "learning_rate"),
    "train unknown template": (lambda c: _train(c, "--template", "bogus"), "template"),
    "train unknown precision": (lambda c: _train(c, "--precision", "fp8"), "precision"),
    "train unknown target module": (lambda c: _train(c, "--lora_target_modules", "foo_proj"), "foo_proj"),
    "train max_length beyond context": (lambda c: _train(c, "--max_length", "100000"), "max_length"),
    "train unknown model": (
        lambda c: [*TRAIN, "--model_name_or_path", "someone/unknown-model"],
        "someone/unknown-model",
    ),
    "train missing dataset": (lambda c: _train(c, "--dataset", str(c.inputs / "nope.jsonl")), "nope.jsonl"),
    "train zero steps": (lambda c: _train(c, "--max_steps", "0", "--num_train_epochs", "0"), "max_steps"),
    "train yaml max_steps 0": (
        lambda c: [
            "train",
            "--config",
            _recipe_with(c.inputs, "z", "max_steps: 0\nnum_train_epochs: 0"),
            "--model_name_or_path",
            c.model,
            "--max_examples",
            "8",
        ],
        "max_steps",
    ),
    "train yaml max_steps 0 alone": (
        lambda c: [
            "train",
            "--config",
            _recipe_with(c.inputs, "z", "max_steps: 0"),
            "--model_name_or_path",
            c.model,
            "--max_examples",
            "8",
        ],
        "max_steps is 0",
    ),
    "train zero epochs": (lambda c: _train(c, "--max_steps", "-1", "--num_train_epochs", "0"), "num_train_epochs"),
    "train output_dir under a file": (lambda c: _train(c, "--output_dir", c.a_file + "/out"), "output_dir"),
    "train empty validation split": (lambda c: _train(c, "--eval_strategy", "steps"), "validation split is empty"),
    "train output_dir is a file": (lambda c: _train(c, "--output_dir", c.a_file), "output_dir"),
    "train adapter_root is a file": (lambda c: _train(c, "--adapter_root", c.a_file), "adapter_root"),
    "train every prompt too long": (lambda c: _train(c, "--max_length", "8"), "max_length"),
    # chat
    "chat missing adapter": (lambda c: ["chat", "--adapter", str(c.inputs / "nope"), "--prompt", "hi"], "nope"),
    "chat negative repetition penalty": (
        lambda c: ["chat", "--model", c.model, "--repetition-penalty", "-1", "--prompt", "hi"],
        "repetition",
    ),
    "chat zero new tokens (snake)": (
        lambda c: ["chat", "--model", c.model, "--max_new_tokens", "0", "--prompt", "hi"],
        "--max-new-tokens must be at least 1",
    ),
    "chat top_p above one": (
        lambda c: ["chat", "--model", c.model, "--top_p", "2", "--prompt", "hi"],
        "--top-p must be",
    ),
    "chat empty prompt": (lambda c: ["chat", "--model", c.model, "--prompt", " "], "prompt"),
    "chat compare without adapter": (
        lambda c: ["chat", "--model", c.model, "--compare", "--prompt", "hi"],
        "--compare",
    ),
    "chat missing questions": (lambda c: ["chat", "--model", c.model, "--questions", str(c.inputs / "q.txt")], "q.txt"),
    "chat out is a folder": (
        lambda c: [
            "chat",
            "--model",
            c.model,
            "--questions",
            _write(c.inputs / "q.txt", "Why?\n"),
            "--out",
            str(c.inputs),
        ],
        "--out",
    ),
    "chat out under a file": (
        lambda c: [
            "chat",
            "--model",
            c.model,
            "--questions",
            _write(c.inputs / "q.txt", "Why?\n"),
            "--out",
            c.a_file + "/answers.jsonl",
        ],
        "--out",
    ),
    "chat truncated weights": (
        lambda c: ["chat", "--adapter", _broken_adapter(c, "truncated"), "--prompt", "hi"],
        "adapter_model.safetensors",
    ),
    "chat missing weights": (
        lambda c: ["chat", "--adapter", _broken_adapter(c, "no-weights"), "--prompt", "hi"],
        "adapter_model.safetensors",
    ),
    "chat invalid medreason.json": (
        lambda c: ["chat", "--adapter", _broken_adapter(c, "bad-meta"), "--prompt", "hi"],
        "medreason.json",
    ),
    # eval
    "eval limit zero": (lambda c: ["eval", "--adapter", str(c.adapter), "--limit", "0"], "limit"),
    "eval batch size zero": (lambda c: ["eval", "--adapter", str(c.adapter), "--batch_size", "0"], "batch"),
    "eval missing adapter": (lambda c: ["eval", "--adapter", str(c.inputs / "nope")], "nope"),
    "eval missing mcq": (lambda c: ["eval", "--model", c.model, "--mcq", str(c.inputs / "mcq.jsonl")], "mcq.jsonl"),
    "eval invalid medreason.json": (lambda c: ["eval", "--adapter", _broken_adapter(c, "bad-meta")], "medreason.json"),
    # export
    "export no out": (lambda c: ["export", "--adapter", str(c.adapter)], "--out"),
    "export missing adapter": (
        lambda c: ["export", "--adapter", str(c.inputs / "nope"), "--out", str(c.cwd / "m")],
        "nope",
    ),
    "export out is a file": (lambda c: ["export", "--adapter", str(c.adapter), "--out", c.a_file], "--out"),
    "export out is the adapter": (lambda c: ["export", "--adapter", str(c.adapter), "--out", str(c.adapter)], "--out"),
    "export out inside the adapter": (
        lambda c: ["export", "--adapter", str(c.adapter), "--out", str(c.adapter / "m")],
        "--out",
    ),
    "export out is the base model": (
        lambda c: ["export", "--adapter", str(c.adapter), "--model", c.model, "--out", c.model],
        "--out",
    ),
    "export out is the adapter, forced": (
        lambda c: ["export", "--adapter", str(c.adapter), "--out", str(c.adapter), "--force"],
        "is the adapter",
    ),
    "export out holds the adapter, forced": (
        lambda c: ["export", "--adapter", str(c.adapter), "--out", str(c.adapter.parent), "--force"],
        "contains the adapter",
    ),
    "export out is the base model, forced": (
        lambda c: ["export", "--adapter", str(c.adapter), "--model", c.model, "--out", c.model, "--force"],
        "base model",
    ),
    "export out not empty": (
        lambda c: [
            "export",
            "--adapter",
            str(c.adapter),
            "--out",
            str(Path(_write(c.inputs / "full" / "x.txt", "x")).parent),
        ],
        "--force",
    ),
    "export out holds a model": (
        lambda c: ["export", "--adapter", str(c.adapter), "--out", str(shutil.copytree(c.model, c.inputs / "earlier"))],
        "--force",
    ),
    "export truncated weights": (
        lambda c: ["export", "--adapter", _broken_adapter(c, "truncated"), "--out", str(c.cwd / "m")],
        "adapter_model.safetensors",
    ),
}


# --------------------------------------------------------------------------------------------- issue 32, by class
# Each case is named "<class>: <what>", so that the next defect of a class fails beside the others of its kind.
# The runner is the one above: exit 2, one line naming the value or file, nothing written, no weights loaded.


def _adapter_variant(ctx, how: str) -> str:
    """A copy of the tiny adapter that PEFT would load only in part, or not as LoRA."""
    from safetensors.torch import load_file, save_file

    folder = ctx.inputs / f"adapter-{how}"
    shutil.copytree(ctx.adapter, folder)
    weights = folder / "adapter_model.safetensors"
    config = folder / "adapter_config.json"
    tensors = load_file(weights)
    if how == "renamed":  # what a hand-edited or converted adapter looks like: PEFT fills none of its modules
        save_file({k.replace("lora_A", "lora_down"): v for k, v in tensors.items()}, weights)
    elif how == "missing":  # one module's weights gone: the rest would load, that one stays at its init
        save_file({k: v for k, v in tensors.items() if ".layers.0.self_attn.q_proj." not in k}, weights)
    elif how == "other-modules":
        data = json.loads(config.read_text())
        config.write_text(json.dumps({**data, "target_modules": ["query_key_value"]}))
    elif how == "ia3":
        config.write_text(json.dumps({**json.loads(config.read_text()), "peft_type": "IA3"}))
    return str(folder)


def _mcq(path: Path, groups: list[str], question: str = "Which drug treats condition X?") -> str:
    rows = [
        {"id": f"q{i}", "question": f"{question} ({i})", "options": {"A": "one", "B": "two"}, "answer": "A", "group": g}
        for i, g in enumerate(groups)
    ]
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


def _lock_symlink(ctx) -> str:
    """An output_dir whose lock file is a symlink to a file of the user's."""
    out = ctx.inputs / "out"
    out.mkdir()
    (out / ".medreason.lock").symlink_to(_write(ctx.inputs / "precious.txt", "keep me\n"))
    return str(out)


def _results_of_another_adapter(ctx) -> str:
    """results/<the adapter's folder name>/eval.json of another adapter with the same folder name."""
    _write(
        ctx.cwd / "results" / ctx.adapter.name / "eval.json",
        json.dumps({"owner": {"adapter": str(ctx.root / "elsewhere" / ctx.adapter.name)}, "variants": {}}),
    )
    return str(ctx.adapter)


def _adapter_in_results(ctx) -> str:
    """An adapter kept at results/mine/: `eval` would write results/mine/eval.json into it."""
    return str(shutil.copytree(ctx.adapter, ctx.cwd / "results" / "mine"))


def _beyond_free_memory(ctx) -> str:
    """A sparse JSONL file larger than the machine's memory: its size is known without reading it."""
    import psutil

    path = ctx.root / "huge.jsonl"  # outside the folders the runner hashes
    with open(path, "wb") as f:
        f.truncate(4 * psutil.virtual_memory().total)
    return str(path)


GRPO_RECIPE = ROOT / "configs" / "smollm2-135m-grpo-cpu.yaml"
LONG = "The patient reports a long history. " * 9000  # 324,000 characters, ~65,000 tokens


def _grpo(c, *extra):
    return [
        "train",
        "--config",
        str(GRPO_RECIPE),
        "--model_name_or_path",
        c.model,
        "--init_adapter",
        str(c.adapter),
        *extra,
    ]


DEFECTS = {
    # saves never land on an input (issue 32: training deleted the base's weights, GRPO replaced its init adapter)
    "save onto input: adapter_root puts the adapter onto the base model": (
        lambda c: _train(c, "--adapter_root", str(Path(c.model).parent)),
        "is the base model",
    ),
    "save onto input: output_dir holds the base model": (
        lambda c: _train(c, "--output_dir", str(Path(c.model).parent)),
        "contains the base model",
    ),
    "save onto input: output_dir inside the base model": (
        lambda c: _train(c, "--output_dir", str(Path(c.model) / "ckpt")),
        "is inside the base model",
    ),
    "save onto input: output_dir holds the dataset": (
        lambda c: _train(
            c, "--dataset", _write(c.inputs / "data" / "rows.jsonl", _rows(12)), "--output_dir", str(c.inputs / "data")
        ),
        "contains the input file",
    ),
    "save onto input: grpo saves onto its init_adapter": (
        lambda c: _grpo(c, "--adapter_root", str(c.adapter.parent), "--output_dir", str(c.cwd / "g")),
        "is the adapter",
    ),
    "save onto input: chat --out is the questions file": (
        lambda c: ["chat", "--model", c.model, "--questions", (q := _write(c.inputs / "q.txt", "Why?\n")), "--out", q],
        "is the input file",
    ),
    "save onto input: chat --out inside the adapter": (
        lambda c: [
            "chat",
            "--adapter",
            str(c.adapter),
            "--questions",
            _write(c.inputs / "q.txt", "Why?\n"),
            "--out",
            str(c.adapter / "answers.jsonl"),
        ],
        "is inside the adapter",
    ),
    "save onto input: eval results folder is the adapter": (
        lambda c: ["eval", "--adapter", _adapter_in_results(c), "--mode", "generate"],
        "is the adapter",
    ),
    "save onto input: eval replaces another adapter's results": (
        lambda c: ["eval", "--adapter", _results_of_another_adapter(c), "--mode", "generate"],
        "--force",
    ),
    # adapters load whole or not at all (issue 32: a partial adapter exported a copy of the base)
    "partial adapter: renamed tensors (chat)": (
        lambda c: ["chat", "--adapter", _adapter_variant(c, "renamed"), "--prompt", "hi"],
        "matches no LoRA module",
    ),
    "partial adapter: renamed tensors (eval)": (
        lambda c: ["eval", "--adapter", _adapter_variant(c, "renamed"), "--mode", "generate"],
        "matches no LoRA module",
    ),
    "partial adapter: renamed tensors (export)": (
        lambda c: ["export", "--adapter", _adapter_variant(c, "renamed"), "--out", str(c.cwd / "m")],
        "matches no LoRA module",
    ),
    "partial adapter: renamed tensors (grpo init_adapter)": (
        lambda c: [
            "train",
            "--config",
            str(GRPO_RECIPE),
            "--model_name_or_path",
            c.model,
            "--init_adapter",
            _adapter_variant(c, "renamed"),
            "--output_dir",
            str(c.cwd / "g"),
            "--adapter_root",
            str(c.cwd / "l"),
        ],
        "matches no LoRA module",
    ),
    "partial adapter: a module's tensors missing": (
        lambda c: ["chat", "--adapter", _adapter_variant(c, "missing"), "--prompt", "hi"],
        "is missing",
    ),
    "partial adapter: target modules the base does not have": (
        lambda c: ["export", "--adapter", _adapter_variant(c, "other-modules"), "--out", str(c.cwd / "m")],
        "query_key_value",
    ),
    "partial adapter: not a LoRA (peft_type)": (
        lambda c: ["eval", "--adapter", _adapter_variant(c, "ia3")],
        "peft_type 'IA3' is not LoRA",
    ),
    # numbers in range before the model loads (issue 32: ZeroDivisionError after loading)
    "numeric: gradient_accumulation_steps 0": (
        lambda c: _train(c, "--gradient_accumulation_steps", "0", "--eval_strategy", "no"),
        "gradient_accumulation_steps must be at least 1, got 0",
    ),
    "numeric: grpo num_generations 0": (
        lambda c: _grpo(c, "--num_generations", "0", "--output_dir", str(c.cwd / "g")),
        "num_generations must be at least 2, got 0",
    ),
    "numeric: learning_rate nan": (lambda c: _train(c, "--learning_rate", "nan"), "learning_rate must be above 0"),
    "numeric: chat temperature nan": (
        lambda c: ["chat", "--model", c.model, "--temperature", "nan", "--prompt", "hi"],
        "--temperature must be at least 0",
    ),
    "numeric: chat seed beyond what torch accepts": (
        lambda c: ["chat", "--model", c.model, "--seed", str(2**70), "--prompt", "hi"],
        "--seed must be in [0, 4294967295]",
    ),
    "numeric: eval seed negative": (
        lambda c: ["eval", "--model", c.model, "--seed", "-1"],
        "--seed must be in [0, 4294967295]",
    ),
    # every exit-1 path a bad input reached (issue 32) is one line naming the file or value
    "failure path: chat --questions not UTF-8": (
        lambda c: ["chat", "--model", c.model, "--questions", _write_bytes(c.inputs / "q.txt", b"\xff\xfe caf\xe9\n")],
        "q.txt: not UTF-8",
    ),
    "failure path: a folder that is not a model": (
        lambda c: ["chat", "--model", str(c.inputs), "--prompt", "hi"],
        "is not a model folder",
    ),
    "failure path: a config.json without model_type": (
        lambda c: ["chat", "--model", str(Path(_write(c.inputs / "m" / "config.json", "{}")).parent), "--prompt", "hi"],
        "model_type",
    ),
    # input sizes named (issue 32: a 300k-character question tried to allocate 10 GB)
    "size: a chat --prompt beyond the context": (
        lambda c: ["chat", "--model", c.model, "--prompt", LONG],
        "does not fit the 8,192-token context",
    ),
    "size: a --questions question beyond the context": (
        lambda c: ["chat", "--model", c.model, "--questions", _write(c.inputs / "q.txt", f"Why?\n{LONG}\n")],
        "question 2 of",
    ),
    "size: a benchmark question beyond the context": (
        lambda c: ["eval", "--model", c.model, "--mode", "generate", "--mcq", _mcq(c.inputs / "b.jsonl", ["g"], LONG)],
        "does not fit",
    ),
    "size: a data file beyond the free memory": (
        lambda c: ["data", "validate", _beyond_free_memory(c)],
        "GiB of memory free",
    ),
    # strings used as paths or MLflow names
    "name: eval --run-name with a path separator": (
        lambda c: ["eval", "--model", c.model, "--run-name", "../outside"],
        "--run-name '../outside' contains a path separator",
    ),
    "name: benchmark groups that become the same MLflow key": (
        lambda c: ["eval", "--model", c.model, "--mcq", _mcq(c.inputs / "b.jsonl", ["a/b", "a//b"])],
        "both become the MLflow key",
    ),
    # recipes that YAML reads differently from a person
    "recipe: a key given twice": (
        lambda c: ["train", "--config", _write(c.inputs / "twice.yaml", RECIPE.read_text() + "\nlora_r: 4\n")],
        "key 'lora_r' is given twice",
    ),
    "recipe: a YAML 1.1 boolean where text is wanted": (
        lambda c: [
            "train",
            "--config",
            _recipe_with(c.inputs, "no", "eval_strategy: no"),
            "--model_name_or_path",
            c.model,
        ],
        'quote it (eval_strategy: "no")',
    ),
    # error positions as an editor counts lines (issue 32: "row 3" was on line 6)
    "position: a JSONL row after blank lines": (
        lambda c: [
            "data",
            "stats",
            "--dataset",
            _write(c.inputs / "gaps.jsonl", "\n" + _rows(1) + "\n\n" + _rows(1) + "{oops\n"),
        ],
        "gaps.jsonl line 6: not valid JSON",
    ),
    "position: a benchmark row after blank lines": (
        lambda c: [
            "eval",
            "--model",
            c.model,
            "--mcq",
            _write(c.inputs / "b.jsonl", _mcq_text(["g"]) + "\n\n" + '{"question": "Why?", "answer": "A"}\n'),
        ],
        'b.jsonl line 4: field "options" is missing',
    ),
    "position: a CSV row after a cell that spans lines": (
        lambda c: [
            "data",
            "stats",
            "--dataset",
            _write(
                c.inputs / "rows.csv",
                'Question,Complex_CoT,Response\n"A 54-year-old man '
                'has chest pain.\nWhat is the first test?","Think about the ECG first, then troponin.","An ECG."\n'
                ',"Think about it step by step.","An ECG."\n',
            ),
        ],
        'rows.csv line 4: field "Question" is empty',
    ),
    "position: a JSON list element after blank lines": (
        lambda c: [
            "data",
            "stats",
            "--dataset",
            _write(
                c.inputs / "rows.json",
                "[\n"
                + _rows(1).strip()
                + ",\n\n"
                + json.dumps({"Question": "", "Complex_CoT": "x" * 30, "Response": "An ECG."})
                + "\n]\n",
            ),
        ],
        'rows.json line 4: field "Question" is empty',
    ),
    # one spelling of the README's "every option takes both spellings" that train read itself
    "spelling: train --config=FILE": (
        lambda c: ["train", f"--config={RECIPE}", f"--model_name_or_path={c.model}", "--max-steps=0"],
        "max_steps is 0",
    ),
}


def _write_bytes(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def _mcq_text(groups: list[str]) -> str:
    return "".join(
        json.dumps(
            {
                "id": f"q{i}",
                "question": f"Which drug treats X ({i})?",
                "options": {"A": "a", "B": "b"},
                "answer": "A",
                "group": g,
            }
        )
        + "\n"
        for i, g in enumerate(groups)
    )


CASES.update(DEFECTS)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, ctx, capsys, caplog, monkeypatch):
    from medreason.cli import main

    make_argv, expected = CASES[case]
    argv = make_argv(ctx)
    _no_weights(monkeypatch)
    before = snapshot(ctx.cwd, ctx.inputs, ctx.adapter)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        rc = main(argv)
    err = capsys.readouterr().err
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] + err.strip().splitlines()
    assert rc == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("medreason: error:") and expected in lines[0], lines
    assert snapshot(ctx.cwd, ctx.inputs, ctx.adapter) == before, "the command wrote or changed files"


# --------------------------------------------------------------------------------------------- bad input


def _bad_yaml(tmp: Path) -> str:
    path = tmp / "typo.yaml"
    path.write_text(RECIPE.read_text() + "\nlora_rankk: 8\n")
    return str(path)


def _bad_rows(tmp: Path) -> str:
    path = tmp / "bad.jsonl"
    rows = [
        {"Question": "", "Complex_CoT": "reasoning " * 5, "Response": "answer"},
        {"Question": "What is the first-line treatment of X?", "Response": "answer"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    return str(path)


BAD_INPUT = {
    "lora_r 0": (
        lambda t, m: ["--config", str(RECIPE), "--model_name_or_path", m, "--lora_r", "0"],
        "lora_r must be at least 1, got 0",
    ),
    "negative learning rate": (
        lambda t, m: ["--config", str(RECIPE), "--model_name_or_path", m, "--learning_rate", "-0.0001"],
        "learning_rate must be above 0, got -0.0001",
    ),
    "max_length beyond context": (
        lambda t, m: ["--config", str(RECIPE), "--model_name_or_path", m, "--max_length", "100000"],
        "max_length 100000 is beyond the context",
    ),
    "unknown target module": (
        lambda t, m: ["--config", str(RECIPE), "--model_name_or_path", m, "--lora_target_modules", "foo_proj"],
        "no module named 'foo_proj'",
    ),
    "unknown target among several": (
        lambda t, m: [
            "--config",
            str(RECIPE),
            "--model_name_or_path",
            m,
            "--lora_target_modules",
            "q_proj",
            "foo_proj",
        ],
        "no module named 'foo_proj'",
    ),
    "unknown yaml key": (
        lambda t, m: ["--config", _bad_yaml(t), "--model_name_or_path", m],
        "unknown config key 'lora_rankk'",
    ),
    "unknown option": (
        lambda t, m: ["--config", str(RECIPE), "--model_name_or_path", m, "--lora_rankk", "8"],
        "unknown option '--lora_rankk'",
    ),
    "missing config": (lambda t, m: ["--config", str(t / "nope.yaml")], "does not exist"),
    "no config": (lambda t, m: ["--model_name_or_path", m], "needs a recipe"),
    "unknown model offline": (
        lambda t, m: ["--config", str(RECIPE), "--model_name_or_path", "someone/unknown-model"],
        "'someone/unknown-model' cannot be loaded",
    ),
    "all rows invalid": (
        lambda t, m: ["--config", str(RECIPE), "--model_name_or_path", m, "--dataset", _bad_rows(t)],
        'line 1: field "Question" is empty (and 2 more',
    ),
    "all rows invalid, skipped": (
        lambda t, m: [
            "--config",
            str(RECIPE),
            "--model_name_or_path",
            m,
            "--dataset",
            _bad_rows(t),
            "--skip_invalid",
            "true",
        ],
        "no valid rows",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(case, in_tmp, capsys, monkeypatch, tiny_model_dir):
    import medreason.models
    from medreason.cli import main

    def no_model(*a, **kw):  # every one of these must fail before the weights load
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(medreason.models, "load_model_and_tokenizer", no_model)
    make_argv, expected = BAD_INPUT[case]
    assert main(["train", *make_argv(in_tmp, str(tiny_model_dir))]) == 2
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err
    assert not (in_tmp / "results" / "mlflow.db").exists()  # no MLflow run for input that cannot train


def test_bad_value_is_one_line_and_exit_2(in_tmp, capsys, tiny_model_dir):
    from medreason.cli import main

    assert (
        main(["train", "--config", str(RECIPE), "--model_name_or_path", str(tiny_model_dir), "--resume", "maybe"]) == 2
    )
    assert len(error_lines(capsys.readouterr().err)) == 1


def test_bool_options_parse_as_documented():
    from medreason.config import parse_config

    args, sft, _ = parse_config(["--config", str(RECIPE), "--resume"])
    assert args.resume is True and sft.evaluate_test is True
    args, sft, model_args = parse_config(
        ["--config", str(RECIPE), "--resume", "true", "--evaluate_test", "false", "--load_in_4bit", "true"]
    )
    assert args.resume is True and sft.evaluate_test is False and model_args.load_in_4bit is True


def test_single_target_module_becomes_a_list(tiny_model_dir):
    """`--lora_target_modules q_proj` arrives from the parser as a string, which PEFT would take as a regex
    over full module paths (matching nothing): the checks turn it into a list of one name."""
    from medreason.config import parse_config
    from medreason.models import lora_targets, peft_config
    from medreason.run import check_before_loading

    args, sft, model_args = parse_config(
        ["--config", str(RECIPE), "--model_name_or_path", str(tiny_model_dir), "--lora_target_modules", "q_proj"]
    )
    check_before_loading(args, sft, model_args)
    assert lora_targets(model_args) == ["q_proj"]
    assert peft_config(model_args).target_modules == {"q_proj"}


# --------------------------------------------------------------------------------------------- generated from the parsers
# The README promises that every option takes both spellings and that bad numbers are refused before the model
# loads. These tests read the options from the parsers themselves, so a new option is checked the day it appears.


def _subcommands():
    """(path, parser) of every subcommand of `medreason` that parses its own options (train's recipe parsers are
    taken from medreason.config: `train` hands its argv to them)."""
    import argparse

    from medreason.cli import build_parser

    def walk(p, path=()):
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs and path and path != ("train",):
            yield path, p
        for action in subs:
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))

    yield from walk(build_parser())


def _options(p):
    """The parser's optional actions that take a value or are flags (help and version aside)."""
    import argparse

    for action in p._actions:
        if action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            # keys typed as a class (dict, accelerate's ParallelismConfig) take no command-line text in any spelling
            kind, name = action.type, getattr(action.type, "__name__", "")
            enum = isinstance(kind, type) and issubclass(kind, Enum)  # TrainingArguments' debug: DebugOption values
            objects = not enum and (
                (isinstance(kind, type) and kind not in (str, int, float)) or name == "dict" or name[:1].isupper()
            )
            if action.dest not in ("help", "config") and not objects:
                yield action


def _spellings(action) -> list[tuple[str, ...]]:
    """Every spelling argparse accepts for the action's long names: --a_b / --a-b, `--key value` / `--key=value`."""
    names = set()
    for name in action.option_strings:
        if name.startswith("--"):
            names |= {name, "--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_")}
    takes_value = action.nargs != 0
    out = []
    for name in sorted(names):
        out.append((name,))
        if takes_value:
            out.append((f"{name}=",))  # the value is appended below
    return out


def _sample(action):
    """A value (text) the option accepts that differs from its default: what proves the spelling was understood."""
    from medreason.ranges import RANGES, Range

    default = action.default
    if action.nargs == 0:
        return None  # a flag
    choices = action.choices or getattr(action.type, "choices", None)
    if isinstance(action.type, type) and issubclass(action.type, Enum):
        choices = [member.value for member in action.type]
    if choices:
        return next(str(getattr(c, "value", c)) for c in choices if c != default and getattr(c, "value", c) != default)
    rule = action.type if isinstance(action.type, Range) else RANGES.get(action.dest)
    if rule is not None or action.type in (int, float):
        kind = int if (action.type is int or getattr(rule, "kind", None) is int) else float
        for v in (3, 2, 1, 7, 0.5, 0.25, 1.5, 0):
            v = kind(v)
            if v != default and (rule is None or rule.problem(v) is None):
                return str(v)
    if getattr(action.type, "__name__", "") in ("string_to_bool", "str2bool") or isinstance(default, bool):
        return "false" if default else "true"
    if getattr(action.type, "__name__", "") == "folder_to_write":
        return "spelled-out-folder"
    if getattr(action.type, "__name__", "") == "file_to_write":
        return "spelled-out.jsonl"
    return "spelled-out-value"


def _check_spellings(parse, action, default) -> int:
    """Parse the option in each spelling; every one must give the same value, and not the parser's default."""
    value = _sample(action)
    seen = {}
    for spelling in _spellings(action):
        if value is None:
            argv = list(spelling)
        else:
            argv = [spelling[0] + value] if spelling[0].endswith("=") else [spelling[0], value]
        ns, rest = parse(argv)
        assert not rest, (argv, rest)
        seen[" ".join(argv)] = getattr(ns, action.dest)
    assert len({repr(v) for v in seen.values()}) == 1, seen
    assert next(iter(seen.values())) != default, (action.dest, seen)
    return len(seen)


# what a subcommand needs besides the option under test (given first: the spelled option comes last and wins)
REQUIRED = {("data", "validate"): ["FILE"], ("export",): ["--adapter", "a", "--out", "o"]}


def test_spelling_every_option_of_every_subcommand_in_every_form(tmp_path, monkeypatch):
    """`--a_b v`, `--a-b v`, `--a_b=v`, `--a-b=v`: each option of each subcommand, as medreason.cli parses it."""
    from medreason.cli import build_parser

    monkeypatch.chdir(tmp_path)
    parser, checked = build_parser(), 0
    for path, sub in _subcommands():
        head = [*path, *REQUIRED.get(path, [])]
        for action in _options(sub):
            parse = functools.partial(lambda head, argv: parser.parse_known_args([*head, *argv]), head)
            checked += _check_spellings(parse, action, sub.get_default(action.dest))
    assert checked > 60


@pytest.mark.parametrize("trainer", ["sft", "grpo"])
def test_spelling_every_recipe_key_in_every_form(trainer):
    """The same for `medreason train`: every key of the recipe's classes (medreason's, TRL's, the model's)."""
    from medreason.config import parser

    p, checked = parser(trainer), 0
    for action in _options(p):
        checked += _check_spellings(p.parse_known_args, action, p.get_default(action.dest))
    assert checked > 400


def _numeric_fields(trainer: str) -> set[str]:
    import dataclasses
    import typing

    from medreason.config import _classes

    names = set()
    for cls in _classes(trainer):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            kinds = {kind, *typing.get_args(kind)}
            if kinds & {int, float} and bool not in kinds:
                names.add(f.name)
    return names


def test_numeric_every_option_has_a_range():
    """Every numeric option of every subcommand is typed with a range (ranges.Range), and every numeric key of
    both recipes' classes has one in ranges.RANGES: a new TRL field fails here until it is classified."""
    from medreason.ranges import RANGES, Range

    for path, sub in _subcommands():
        for action in _options(sub):
            assert action.type not in (int, float), f"{' '.join(path)} {action.option_strings[0]} has no range"
    ranged = [a for _, sub in _subcommands() for a in _options(sub) if isinstance(a.type, Range)]
    assert len(ranged) >= 10
    unclassified = (_numeric_fields("sft") | _numeric_fields("grpo")) - set(RANGES)
    assert not unclassified, f"numeric recipe keys without a range in medreason.ranges.RANGES: {sorted(unclassified)}"


def test_numeric_every_cli_option_out_of_range_is_one_line(capsys, tmp_path, monkeypatch):
    from medreason.cli import main
    from medreason.ranges import Range

    monkeypatch.chdir(tmp_path)
    checked = 0
    for path, sub in _subcommands():
        for action in _options(sub):
            if isinstance(action.type, Range):
                bad = action.type.outside()
                assert main([*path, *REQUIRED.get(path, []), f"{action.option_strings[-1]}={bad}"]) == 2
                (line,) = capsys.readouterr().err.strip().splitlines()
                assert line.startswith(f"medreason: error: {action.option_strings[0]} must be"), line
                checked += 1
    assert checked >= 10 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("trainer", ["sft", "grpo"])
def test_numeric_every_recipe_key_out_of_range_is_refused_before_trl_builds_its_config(trainer):
    """Out of range, each key is a UserError naming it, raised while parsing: GRPOConfig divides by
    num_generations, and the trainer by gradient_accumulation_steps, after the model has loaded."""
    from medreason.config import parse_recipe
    from medreason.errors import UserError
    from medreason.ranges import RANGES

    recipe = RECIPE if trainer == "sft" else ROOT / "configs" / "smollm2-135m-grpo-cpu.yaml"
    fields = sorted(_numeric_fields(trainer))
    for name in fields:
        bad = RANGES[name].outside()
        with pytest.raises(UserError, match=rf"^{name} must be .*, got {bad}$"):
            parse_recipe(["--config", str(recipe), f"--{name}", str(bad)])
    assert len(fields) > 30


def test_symlink_lock_file_is_not_followed(ctx, capsys, monkeypatch):
    """A lock file that is a symlink used to be followed: its target, a file of the user's, was truncated and
    overwritten with a PID. Now: one line naming it, exit 2, the target untouched, no weights loaded."""
    from medreason.cli import main

    _no_weights(monkeypatch)
    out = _lock_symlink(ctx)
    before = snapshot(ctx.inputs)
    assert main(_train(ctx, "--output_dir", out, "--eval_strategy", "no")) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "symbolic link" in line and ".medreason.lock" in line, line
    assert snapshot(ctx.inputs) == before and (ctx.inputs / "precious.txt").read_text() == "keep me\n"


# --------------------------------------------------------------------------------------------- after the model loads
# Two defects of issue 32 showed only after generation: they need the model, so they run whole evaluations.


def test_name_benchmark_groups_with_slashes_reach_mlflow(ctx, capsys):
    """A group such as 'x/../y' or '/lead' became an MLflow key that MLflow refuses, after all the generation
    was done (exit 1). Groups are mapped onto valid keys, one key each."""
    import mlflow

    from medreason.cli import main

    groups = ["cardio/renal", "/lead", "x/../y", "trail/"]
    argv = ["eval", "--model", ctx.model, "--mcq", _mcq(ctx.inputs / "b.jsonl", groups), "--mode", "generate"]
    assert main([*argv, "--max-new-tokens", "1", "--no-cache", "--batch-size", "4"]) == 0
    capsys.readouterr()
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("medreason-eval").experiment_id])
    keys = sorted(k for k in run.data.metrics if k.startswith("base_accuracy/"))
    assert keys == ["base_accuracy/cardio/renal", "base_accuracy/lead", "base_accuracy/trail", "base_accuracy/x/__/y"]


def test_failure_path_a_full_disk_during_eval_is_one_line(ctx, capsys):
    """A full disk while `eval` logged to MLflow printed SQLAlchemy's statement and parameters (97 lines, exit 1).
    SQLite is made to report a full disk for real (max_page_count at the store's current size)."""
    import mlflow
    import sqlalchemy

    from medreason.cli import main
    from medreason.tracking import mlflow_run

    with mlflow_run("medreason-eval", run_name="the store exists"):
        pass

    def full(dbapi_connection, record, proxy):
        cursor = dbapi_connection.cursor()
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {pages}")
        cursor.close()

    groups = [f"{'a very long specialty name that fills the metrics table ' * 3}{i}" for i in range(16)]
    argv = ["eval", "--model", ctx.model, "--mcq", _mcq(ctx.inputs / "b.jsonl", groups), "--mode", "generate"]
    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "checkout", full)
    try:
        rc = main([*argv, "--max-new-tokens", "1", "--no-cache", "--batch-size", "16", "--run-name", "full"])
    finally:
        sqlalchemy.event.remove(sqlalchemy.pool.Pool, "checkout", full)
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    # transformers' own weight-loading bar shows here because pytest's capture is no terminal to ask; the CLI turns
    # it off when stderr is no terminal (medreason.progress.library_bars)
    noise = ("medreason: model weights", "Loading weights")
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(noise)]
    assert len(lines) == 1 and lines[0].startswith("medreason: error: "), lines
    assert "mlflow.db: no space left" in lines[0], lines
    assert (ctx.cwd / "results" / "full" / "eval.json").is_file()  # written before MLflow: nothing is lost
    assert mlflow.active_run() is None


def test_results_owner_refuses_another_adapters_results_unless_forced(tmp_path):
    from medreason.errors import UserError
    from medreason.guards import check_results_owner, results_identity

    folder = tmp_path / "results" / "SmolLM2-135M-Instruct"
    folder.mkdir(parents=True)
    sft, grpo = tmp_path / "lora" / "SmolLM2-135M-Instruct", tmp_path / "lora" / "grpo" / "SmolLM2-135M-Instruct"
    (folder / "eval.json").write_text(json.dumps({"owner": results_identity(sft, None)}))
    check_results_owner(folder, results_identity(sft, None), force=False)  # the same adapter again: fine
    with pytest.raises(UserError, match="--force"):
        check_results_owner(folder, results_identity(grpo, None), force=False)
    check_results_owner(folder, results_identity(grpo, None), force=True)
