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

import hashlib
import json
import logging
import os
import shutil
import time
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
    return _write(folder / f"{name}.yaml", RECIPE.read_text() + "\n" + extra + "\n")


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
        "its own input",
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
        "lora_r must be a positive integer",
    ),
    "negative learning rate": (
        lambda t, m: ["--config", str(RECIPE), "--model_name_or_path", m, "--learning_rate", "-0.0001"],
        "learning_rate must be positive",
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
        'row 1: field "Question" is empty (and 2 more',
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
    started = time.monotonic()
    assert main(["train", *make_argv(in_tmp, str(tiny_model_dir))]) == 2
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err
    assert time.monotonic() - started < 30
    assert not (in_tmp / "results" / "mlflow.db").exists()  # no MLflow run for input that cannot train


def test_bad_value_is_one_line_and_exit_2(in_tmp, capsys, tiny_model_dir):
    from medreason.cli import main

    assert (
        main(["train", "--config", str(RECIPE), "--model_name_or_path", str(tiny_model_dir), "--resume", "maybe"]) == 2
    )
    assert len(error_lines(capsys.readouterr().err)) == 1


def test_bool_options_parse_as_documented():
    from medreason.config import parse_config

    args, _, _ = parse_config(["--config", str(RECIPE), "--resume"])
    assert args.resume is True and args.evaluate_test is True
    args, _, model_args = parse_config(
        ["--config", str(RECIPE), "--resume", "true", "--evaluate_test", "false", "--load_in_4bit", "true"]
    )
    assert args.resume is True and args.evaluate_test is False and model_args.load_in_4bit is True


def test_single_target_module_becomes_a_list(tiny_model_dir):
    """`--lora_target_modules q_proj` arrives from the parser as a string, which PEFT would take as a regex
    over full module paths (matching nothing): the checks turn it into a list of one name."""
    from medreason.config import parse_config
    from medreason.run import check_hyperparameters, lora_targets, peft_config

    args, sft, model_args = parse_config(
        ["--config", str(RECIPE), "--model_name_or_path", str(tiny_model_dir), "--lora_target_modules", "q_proj"]
    )
    check_hyperparameters(args, sft, model_args)
    assert lora_targets(model_args) == ["q_proj"]
    assert peft_config(model_args).target_modules == {"q_proj"}
